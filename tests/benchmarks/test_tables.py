"""Table files: every published number resolves to exactly the CSV's, every table plans, bad files fail clearly."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from benchmarks.errors import KDBenchError
from benchmarks.run import main as run_main
from benchmarks.tables import (
    PAPER_CSV,
    REPO_ROOT,
    TABLES_DIR,
    Pair,
    list_tables,
    load_table,
    lookup_paper,
    paper_name,
)

# The shared reference lies beside the checkout (CI clones next to a copy of shared/); a git worktree one level
# deeper (<project>/wt/<name>) finds it one folder further up.
SHARED_CANDIDATES = [REPO_ROOT.parent / "shared", REPO_ROOT.parent.parent / "shared"]
SHARED_CSV = next(
    (c / "reference" / "paper_tables.csv" for c in SHARED_CANDIDATES if (c / "reference").is_dir()),
    SHARED_CANDIDATES[0] / "reference" / "paper_tables.csv",
)

# The tables the papers print, as kdbench names them, plus kdbench's own unified tables.
EXPECTED_TABLES = {
    "table1", "table2", "table3", "table4", "fmnist", "demo",
    "norm.t1", "norm.t2", "norm.t3", "norm.t6", "norm.f2", "norm.f4", "norm.t8",
    "letkd.t1", "letkd.t2", "letkd.t3", "letkd.t4", "letkd.t5", "letkd.t6",
    "nd.t1", "nd.t2", "nd.t4a", "nd.t4b", "nd.t4c", "nd.t4d", "nd.t5", "nd.t6", "nd.f5", "nd.readme_cnn2vit", "nd.readme_vit2cnn",
    "kcd.t1", "kcd.t2", "kcd.t3a", "kcd.t3b", "kcd.t4", "kcd.t5", "kcd.t6", "kcd.t7", "kcd.t8", "kcd.t10", "kcd.t11",
}  # fmt: skip

# CSV (paper, table) groups that no table file references, and why.  Anything else unreferenced fails the test.
UNREFERENCED = {
    ("nd", "T3"): "COCO detection (Faster R-CNN): kdbench is classification only",
    ("kcd", "T9"): "COCO detection (FPN)",
}


def _csv_rows() -> list[dict[str, str]]:
    with open(PAPER_CSV, newline="") as handle:
        return list(csv.DictReader(handle))


def _key(row: dict[str, str]) -> tuple[str, ...]:
    return tuple(row[k] for k in ("paper", "table", "metric", "teacher", "student", "method", "note"))


def test_every_table_of_the_issue_is_listed(capsys: pytest.CaptureFixture[str]) -> None:
    assert set(list_tables()) == EXPECTED_TABLES
    assert run_main(["--list"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    assert listed == EXPECTED_TABLES


def test_the_tables_csv_is_the_reference_transcription() -> None:
    if not SHARED_CSV.is_file():
        # CI always has ../shared beside its clone: there a missing reference is a failure, never a skip.
        assert not os.environ.get("CI"), f"the shared reference CSV is missing: {SHARED_CSV}"
        pytest.skip(f"no shared reference beside this checkout ({' or '.join(map(str, SHARED_CANDIDATES))})")
    assert PAPER_CSV.read_bytes() == SHARED_CSV.read_bytes()


def test_every_paper_reference_resolves_to_exactly_the_csv_numbers() -> None:
    """Each reference gives exactly one CSV row per column and metric, except where it says the paper has none."""
    csv_by_key = {_key(r): r for r in _csv_rows()}
    referenced: set[tuple[str, ...]] = set()
    resolved_cells = 0
    for name in list_tables():
        table = load_table(name)
        columns = table.columns()
        for row in table.rows:
            for ref in row.paper:
                hits = 0
                for column in columns:
                    found = lookup_paper(ref, column)
                    where = f"{name} row {row.label!r} ref {ref.display} column {column.label}"
                    if column.key in ref.absent:
                        assert found == [], f"{where}: listed as absent but the CSV has {[n.value for n in found]}"
                        continue
                    assert len(found) == 1, f"{where}: {len(found)} CSV rows (expected exactly 1)"
                    number = found[0]
                    # The number shown is the CSV's, character for character.
                    source = csv_by_key[number.key]
                    assert (number.value, number.std, number.trials) == (
                        source["value"],
                        source["std"],
                        source["trials"],
                    )
                    assert float(source["value"]) == number.number
                    referenced.add(number.key)
                    hits += 1
                assert hits, f"{name} row {row.label!r}: reference {ref.display} resolves to no cell at all"
                resolved_cells += hits
    assert resolved_cells > 1000
    unreferenced = [k for k in csv_by_key if k not in referenced]
    groups = sorted({(k[0], k[1]) for k in unreferenced})
    print(f"\n{len(referenced)} of {len(csv_by_key)} CSV rows are referenced; unreferenced groups:")
    for paper, table in groups:
        count = sum(1 for k in unreferenced if (k[0], k[1]) == (paper, table))
        print(f"  {paper} {table}: {count} rows ({UNREFERENCED.get((paper, table), 'NOT EXPLAINED')})")
    partly = [g for g in groups if g not in UNREFERENCED]
    assert not partly, f"CSV rows of these tables are referenced by no table file: {partly}"
    # Every group listed as deliberately unreferenced really is wholly unreferenced.
    for paper, table in UNREFERENCED:
        assert not any(k[:2] == (paper, table) for k in referenced), (paper, table)


def test_quoted_only_rows_and_columns_never_plan_runs(tmp_path: Path) -> None:
    """Quoted-only rows of methods kdbench lacks plan nothing (a row whose method exists is planned, as documented:
    tests/benchmarks/test_render.py)."""
    from benchmarks.plan import build_plan, load_preset
    from benchmarks.store import RunStore
    from kd_modules import method_names

    for name in ("norm.t1", "nd.t2", "table3"):
        table = load_table(name)
        plan = build_plan(table, load_preset("full"), RunStore(tmp_path), data_root="x")
        quoted = {r.label for r in table.rows if r.quoted_only and r.method not in method_names()}
        assert quoted, name
        assert not any(row in quoted for row, _ in plan.cells)
        assert not any(spec.row in quoted for spec in plan.ordered())
    # A quoted column (a column kdbench does not run) has numbers and no cells; no table needs one any more since
    # ND Table 6's ViT columns are runs: a copy of it with ViT-S quoted.
    import dataclasses

    from benchmarks.tables import QuotedColumn

    nd6 = load_table("nd.t6")
    quoted_nd6 = dataclasses.replace(
        nd6,
        pairs=[p for p in nd6.pairs if p.student != "vit_s"],
        quoted_columns=[QuotedColumn("R152→ViT-S", ("resnet152", "vit_s"))],
    )
    assert [c.key for c in quoted_nd6.columns() if c.quoted] == ["R152→ViT-S"]
    plan = build_plan(quoted_nd6, load_preset("full"), RunStore(tmp_path), data_root="x")
    assert not any(pair == "R152→ViT-S" or "vit_s" in pair for _, pair in plan.cells)
    # Rows restricted to some columns (``pairs``) have cells there only.
    plan = build_plan(nd6, load_preset("full"), RunStore(tmp_path), data_root="x")
    assert {pair for row, pair in plan.cells if row == "KD++ (ViT)"} == {
        "resnet152->vit_s", "resnet152->vit_b", "resnet152->vit_b@mae"
    }  # fmt: skip
    assert ("KD++", "resnet152->vit_s") not in plan.cells and ("KD++", "resnet152->resnet50") in plan.cells


def test_paper_names_translate_kdbench_networks() -> None:
    assert paper_name("ShuffleV1") == "shufflenetv1"
    assert paper_name("ShuffleV1_tiny") == "shufflenetv1"  # Tiny-ImageNet networks print under their CIFAR names
    assert paper_name("resnet56") == "resnet56"
    letkd = load_table("letkd.t2")  # letKD prints ResNet50 -> MobileNet(V1) as "mobilenetv2"
    column = next(c for c in letkd.columns() if c.key == "resnet50->mobilenetv1")
    assert (column.paper_teacher, column.paper_student) == ("resnet50", "mobilenetv2")


def test_multi_metric_tables_show_top5_from_the_same_runs() -> None:
    table = load_table("nd.t2")
    keys = [(c.key, c.metric) for c in table.columns()]
    assert keys == [
        ("resnet34->resnet18", "top1"),
        ("resnet34->resnet18", "top5"),
        ("resnet50->mobilenetv1", "top1"),
        ("resnet50->mobilenetv1", "top5"),
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "title: x\ndataset: cifar100\nrecipe: crd_cifar100\npairs: [a->b]\nrows: []\nmetrc: best_top1\n",
            "unknown key 'metrc'",
        ),
        ("dataset: cifar100\nrecipe: r\npairs: [a->b]\nrows: []\nmetric: top1\n", "metric 'top1' is not one of"),
        (
            "dataset: cifar100\nrecipe: r\npairs: [a->b]\nrows: [{label: A, method: KD}, {label: A, method: KD}]\n",
            "row label 'A' is used twice",
        ),
        (
            "dataset: cifar100\nrecipe: r\npairs: [a->b]\n"
            "rows: [{label: A, method: KD, paper: [{source: norm.T1, method: kd, absent: [c->d]}]}]\n",
            "names column 'c->d'",
        ),
        (
            "dataset: cifar100\nrecipe: r\npairs: [a->b]\nrows: [{label: A, method: KD, pair_init_args: {x->y: {}}}]\n",
            "per-pair settings name pair 'x->y'",
        ),
        ("dataset: cifar100\nrecipe: r\npairs: [a]\nrows: []\n", "is not of the form 'teacher->student'"),
        ("dataset: cifar100\nrecipe: r\npairs: [a->b]\nrows: []\npreset: gpu\n", "preset 'gpu' is not one of cpu,"),
    ],
)
def test_malformed_table_files_fail_with_one_clear_message(
    text: str, message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import benchmarks.tables as tables

    monkeypatch.setattr(tables, "TABLES_DIR", tmp_path)
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(KDBenchError, match=message.replace("(", r"\(")):
        tables.load_table("bad")


def test_dry_run_works_for_every_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(["all", "--dry-run", "--store", str(tmp_path), "--data-root", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    for name in EXPECTED_TABLES:
        assert f"plan for {name} (" in out, name
    assert f"distinct runs over {len(EXPECTED_TABLES)} tables" in out and "needed by several tables" in out
    assert "dependency graph" in out and "GPU-hours" in out
    # Cells that cannot run are planned as blocked with the reason, not dropped: here the ImageNet cells whose
    # released torchvision teacher is not on disk, and FSP where the networks' channels differ (n/a in the papers).
    assert "cells that cannot run yet" in out
    assert "released resnet34 teacher weights not found" in out and "FSP needs equal channel counts" in out
    assert not list(tmp_path.glob("runs/*")), "a dry run trains nothing"


def test_pairs_parse_both_arrows() -> None:
    assert Pair.parse("resnet56→resnet20") == Pair.parse(" resnet56 -> resnet20 ")
    assert TABLES_DIR.joinpath("paper_names.yaml").is_file()
