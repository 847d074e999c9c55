"""ND's ViT tables (Table 6's ViT columns, the README's ViT -> CNN and CNN -> DeiT rows): columns of one CSV pair told
apart by note and recipe (pair variants), rows with cells in some columns only, each column under its own recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmarks.errors import KDBenchError
from benchmarks.plan import build_plan, load_preset
from benchmarks.render import _paper_value
from benchmarks.store import RunStore
from benchmarks.tables import Pair, load_table


def test_pair_variants() -> None:
    pair = Pair.parse("resnet152->vit_b@mae")
    assert (pair.teacher, pair.student, pair.variant) == ("resnet152", "vit_b", "mae")
    assert pair.label == "resnet152->vit_b@mae" and pair.display == "resnet152→vit_b (mae)"
    assert Pair.parse("a->b").label == "a->b"
    with pytest.raises(KDBenchError, match="teacher->student@variant"):
        Pair.parse("a->b@")


def test_vit_b_and_vit_b_dagger_are_two_columns_with_their_own_numbers_and_recipes(tmp_path: Path) -> None:
    table = load_table("nd.t6")
    columns = {c.key: c for c in table.columns()}
    kd_plus = table.row("KD++ (ViT)").paper[0]
    assert _paper_value(kd_plus, columns["resnet152->vit_b"])[1] == "79.85"
    assert _paper_value(kd_plus, columns["resnet152->vit_b@mae"])[1] == "82.92"
    assert _paper_value(table.row("Student (ViT)").paper[0], columns["resnet152->vit_s"])[1] == "74.64"
    plan = build_plan(table, load_preset("full"), RunStore(tmp_path), data_root="data")
    (plain,) = plan.cells[("KD++ (ViT)", "resnet152->vit_b")]
    (mae,) = plan.cells[("KD++ (ViT)", "resnet152->vit_b@mae")]
    assert plain != mae
    optim = plan.runs[mae].config["model"]["init_args"]["optim"]
    assert (optim["optimizer"], optim["mixup_alpha"], optim["betas"]) == ("adamw", 0.8, [0.9, 0.95])
    assert plan.runs[mae].config["data"]["init_args"]["pipeline"] == "deit"
    assert plan.runs[plain].config["model"]["init_args"]["optim"]["dropout"] == 0.1
    # ViT rows have cells in the ViT columns only, CNN rows in the CNN columns only.
    assert ("KD++", "resnet152->vit_b") not in plan.cells and ("KD++ (ViT)", "resnet152->resnet18") not in plan.cells
    assert ("Teacher", "resnet152->vit_b@mae") in plan.cells


def test_readme_tables_plan_their_rows(tmp_path: Path) -> None:
    cnn2vit = build_plan(load_table("nd.readme_cnn2vit"), load_preset("full"), RunStore(tmp_path), data_root="data")
    assert {pair for row, pair in cnn2vit.cells if row == "Student (DeiT-B)"} == {"regnety_16gf->vit_b"}
    (deitpp,) = cnn2vit.cells[("DeiT++", "regnety_16gf->deit_b_distilled")]
    args = cnn2vit.runs[deitpp].config["model"]["init_args"]
    assert (args["kd_weight"], args["nd_weight"], args["teacher"]["arch"]) == (0.5, 1.5, "regnety_16gf")
    from kd_modules.deitpp import DeiTPlusPlus

    assert [n for n, _ in DeiTPlusPlus.offline_stages(args)] == ["nd_class_means"]  # the teacher's class means
    assert DeiTPlusPlus.offline_stages({**args, "nd_weight": 0.0}) == []
    vit2cnn = build_plan(load_table("nd.readme_vit2cnn"), load_preset("full"), RunStore(tmp_path), data_root="data")
    (kdpp,) = vit2cnn.cells[("KD++", "vit_b->resnet18")]
    args = vit2cnn.runs[kdpp].config["model"]["init_args"]
    assert (args["kd_weight"], args["nd_weight"]) == (2.0, 1.0)
    # The two Student cells are one run (the student does not see the teacher).
    assert vit2cnn.cells[("Student", "vit_s->resnet18")] == vit2cnn.cells[("Student", "vit_b->resnet18")]


def test_a_row_restricted_to_an_unknown_column_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import tables

    raw = yaml.safe_load((tables.TABLES_DIR / "nd.readme_cnn2vit.yaml").read_text())
    raw["rows"][1]["pairs"] = ["regnety_16gf->resnet18"]
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(tables, "TABLES_DIR", tmp_path)
    with pytest.raises(KDBenchError, match="per-pair settings name pair 'regnety_16gf->resnet18'"):
        tables.load_table("x")
