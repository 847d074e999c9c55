"""Analysis tables (KCD T10/T11, letKD supp. T4): diagnostic rows measure the very runs other tables train, and the
renderer shows their recorded metrics beside the paper's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.errors import KDBenchError
from benchmarks.plan import Prerequisite, build_plan, load_preset
from benchmarks.render import best_cells, collect, render_markdown
from benchmarks.store import RunStore
from benchmarks.tables import cell_metric, higher_is_better, load_table


def _plan(name: str, store: RunStore, preset: str = "smoke"):  # type: ignore[no-untyped-def]
    return build_plan(load_table(name), load_preset(preset), store, data_root="data")


def test_diagnostics_measure_the_runs_of_the_tables_that_train_them(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    t4, t5 = _plan("letkd.t4", store), _plan("letkd.t5", store)
    for row, t5_row in (
        ("letKD-2 (alpha_inter 0), x = x_hat", "Inter. (alpha 0) + Penult. (alpha 1)"),
        ("letKD-2 (alpha_inter 1), x", "Inter. (alpha 1) + Penult. (alpha 1)"),
        ("letKD-2 (alpha_inter 1), x_hat", "Inter. (alpha 1) + Penult. (alpha 1)"),
    ):
        for trial, run_id in enumerate(t4.cells[(row, "resnet56->resnet20")]):
            probe = t4.runs[run_id]
            trained = t5.cells[(t5_row, "resnet56->resnet20")][trial]
            assert trained in probe.depends_on, row
            assert probe.config["model"]["init_args"]["checkpoint"] == str(store.final_weights(trained))
    t11, t8 = _plan("kcd.t11", store), _plan("kcd.t8", store)
    pair = "resnet50->mobilenetv2_050"
    for row in ("FitNet", "KCD+FitNet", "AB", "KCD+AB", "RKD", "KCD+RKD", "RCO", "KCD+RCO"):
        (diagnostic,) = t11.cells[(row, pair)]
        (trained,) = t8.cells[(row, pair)]
        assert trained in t11.runs[diagnostic].depends_on, row
        assert not t11.runs[diagnostic].blocked, row
    (baseline,) = t11.cells[("Baseline (T vs trained S)", pair)]
    assert t8.cells[("Student (baseline)", pair)][0] in t11.runs[baseline].depends_on
    # S1 vs S2 of Table 10: the plain student and the seed-1 plain student, two different runs.
    t10 = _plan("kcd.t10", store)
    (s1_s2,) = t10.cells[("S1 vs S2", pair)]
    args = t10.runs[s1_s2].config["model"]["init_args"]
    assert args["checkpoint"] != args["reference_checkpoint"]


def test_a_prerequisite_can_name_a_method_config() -> None:
    parsed = Prerequisite.parse(
        {"name": "trained", "method": "KCD", "config": "configs/methods/kcd_fitnet.yaml", "pass_as": "checkpoint"}, "X"
    )
    assert parsed.config == "configs/methods/kcd_fitnet.yaml"
    with pytest.raises(KDBenchError, match="teacher-network prerequisite"):
        Prerequisite.parse({"name": "t", "network": "teacher", "config": "c.yaml", "pass_as": "x"}, "X")


def test_analysis_metrics_are_record_keys_and_distances_prefer_small() -> None:
    assert cell_metric("last_top1", "kl_div") == "kl_div" and cell_metric("best_top1", "top5") == "best_top5"
    assert not higher_is_better("l2_dist") and higher_is_better("overlap_top10") and higher_is_better("top1")


def test_an_analysis_table_renders_its_recorded_metrics(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    plan = _plan("kcd.t11", store, preset="full")
    pair = "resnet50->mobilenetv2_050"
    measured = {"Baseline (T vs trained S)": (0.95, 250.0), "KCD+FitNet": (0.5, 30.0), "FitNet": (0.7, 60.0)}
    for row, (kl, l2) in measured.items():
        (run_id,) = plan.cells[(row, pair)]
        run_dir = store.run_dir(run_id)
        run_dir.mkdir(parents=True)
        record = {"run_id": run_id, "metrics": {"kl_div": kl, "l2_dist": l2}, "info": {}, "config": ""}
        (run_dir / "record.json").write_text(json.dumps(record))
    plan.blocked_cells.clear()  # the released teacher is absent here: render as if it were in place
    frame = collect(plan)
    cell = frame[(frame["row"] == "KCD+FitNet") & (frame["metric"] == "l2_dist")].iloc[0]
    assert (
        cell["mean"] == 30.0 and cell["paper"] == pytest.approx(45.72) and cell["delta"] == pytest.approx(30.0 - 45.72)
    )
    best_ours, best_paper = best_cells(frame, plan)
    assert ("KCD+FitNet", pair, "kl_div") in best_ours  # the smallest distance is the best
    assert ("Baseline (T vs trained S)", pair, "kl_div") not in best_ours
    assert ("KCD+RKD", pair, "kl_div") in best_paper  # 0.58, the smallest published KL
    text = render_markdown(plan, frame)
    assert "`kl_div`: KL divergence" in text and "**0.50** (1) / 0.71 / -0.21" in text  # one run: no spread
