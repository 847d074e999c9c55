"""Rendering from the store (markdown, CSV, PNG), W&B import through a fake public API, and the coverage summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from benchmarks import run as run_module
from benchmarks.plan import build_plan, load_preset
from benchmarks.render import collect, write_table
from benchmarks.store import RunStore
from benchmarks.tables import PaperRef, Row, load_table
from benchmarks.wandb_import import import_wandb
from kd_modules import method_names

PAIRS = ["resnet56->resnet20", "resnet110->resnet32"]


def _record(store: RunStore, run_id: str, best: float, last: float | None = None) -> None:
    folder = store.run_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    metrics = {"best_top1": best, "best_top5": best + 20, "last_top1": last if last is not None else best - 1}
    (folder / "record.json").write_text(json.dumps({"run_id": run_id, "metrics": metrics, "smoke": False}))


def _plan(store: RunStore):  # type: ignore[no-untyped-def]
    table = load_table("table1")
    table.rows.append(Row("Future", "NoSuchMethodYet", paper=[PaperRef("norm.T1", "crd")]))
    return build_plan(
        table,
        load_preset("full"),
        store,
        data_root="data",
        pairs=PAIRS,
        methods=["Teacher", "Vanilla", "KD", "DistPro", "Future"],
        teachers="trained",  # teachers trained here: the teacher cells are runs of the plan
    )


def test_cells_show_ours_beside_the_paper_and_mark_best_failed_missing_blocked(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "store")
    plan = _plan(store)
    kd = plan.cells[("KD", PAIRS[0])]
    for run_id, value in zip(kd, (70.0, 71.0, 72.0), strict=True):
        _record(store, run_id, value)
    _record(store, plan.cells[("Vanilla", PAIRS[0])][0], 69.0)  # 1 of 3 trials: partial
    _record(store, plan.cells[("KD", PAIRS[1])][0], 73.5)
    teacher = plan.cells[("Teacher", PAIRS[1])][0]
    store.run_dir(teacher).mkdir(parents=True)
    (store.run_dir(teacher) / "failed.json").write_text(json.dumps({"error": "RuntimeError: out of memory"}))

    frame = collect(plan)
    kd_cell = frame[(frame["row"] == "KD") & (frame["pair"] == PAIRS[0])].iloc[0]
    assert kd_cell["mean"] == pytest.approx(71.0) and kd_cell["std"] == pytest.approx(1.0) and kd_cell["n"] == 3
    assert kd_cell["paper"] == pytest.approx(70.66) and kd_cell["delta"] == pytest.approx(0.34)

    path, text = write_table(plan, tmp_path / "out")
    lines = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "**71.00 ± 1.00** (3) / 70.66 / +0.34" in lines["KD (paper: NORM T1)"]  # best of ours in the column
    assert "73.50 (1/3) / 73.08 / +0.42" in lines["KD (paper: NORM T1)"]  # alone in its column: not marked
    assert "69.00 (1/3) / 69.53 / -0.53" in lines["Vanilla (paper: NORM T1 (NORM-reproduced student))"]
    assert "not run / 71.56" in lines["Vanilla (paper: NORM T1 (NORM-reproduced student))"]
    assert lines["Teacher (paper: NORM T1)"].endswith("| failed[1] / 74.31 |")
    assert "n/a[2] / **71.16** | n/a[2] / **73.48** |" in lines["Future (paper: NORM T1)"]  # best published numbers
    assert "[1] RuntimeError: out of memory" in text and "[2] method NoSuchMethodYet is not implemented yet" in text
    assert "DistPro — quoted only: NORM T1" in text and "↳ KD: LETKD supp-T1" in text

    table_csv = pd.read_csv(tmp_path / "out" / "table1.csv")
    assert {"table", "row", "pair", "metric", "mean", "std", "n", "paper", "delta", "status", "run_ids"} <= set(
        table_csv.columns
    )
    assert set(table_csv["status"]) == {"ok", "partial", "missing", "failed", "blocked"}
    png = tmp_path / "out" / "table1.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_run_shows_no_spread_and_ci_uses_students_t(tmp_path: Path) -> None:
    """n = 1 prints no ±; --ci prints t(0.975, n-1) * s / sqrt(n): for 70, 71, 72 (s = 1), 4.3027 / sqrt(3) = 2.48."""
    store = RunStore(tmp_path / "store")
    plan = _plan(store)
    for run_id, value in zip(plan.cells[("KD", PAIRS[0])], (70.0, 71.0, 72.0), strict=True):
        _record(store, run_id, value)
    _record(store, plan.cells[("KD", PAIRS[1])][0], 73.5)
    frame = collect(plan)
    one = frame[(frame["row"] == "KD") & (frame["pair"] == PAIRS[1])].iloc[0]
    assert one["n"] == 1 and pd.isna(one["std"]) and pd.isna(one["ci95"])
    _, text = write_table(plan, tmp_path / "out", ci=True)
    line = next(row for row in text.splitlines() if row.startswith("| KD (paper"))
    assert "71.00 ± 2.48 (3) / 70.66 / +0.34" in line and "73.50 (1/3) / 73.08" in line, line
    assert "95% confidence interval" in text and "± 0.00" not in text


def test_records_made_under_an_older_config_still_render_marked_with_the_difference(tmp_path: Path) -> None:
    """A record names the cells it serves: after a default changed the cell's identity, the old run still renders,
    marked with the setting that differs, until the current run exists (which then wins)."""
    import yaml

    store = RunStore(tmp_path / "store")
    plan = build_plan(
        load_table("table1"),
        load_preset("full"),
        store,
        data_root="data",
        pairs=[PAIRS[0]],
        methods=["KD"],
        teachers="trained",
    )
    current = plan.cells[("KD", PAIRS[0])][0]
    spec = plan.runs[current]
    assert {"table": "table1", "row": "KD", "pair": PAIRS[0], "trial": 0} in spec.config["run"]["cells"]
    old_config = json.loads(json.dumps(spec.config))
    old_config["model"]["init_args"]["temperature"] = 3.0  # as if T had defaulted to 3 when it ran
    old_id = "0123456789abcdef"
    folder = store.run_dir(old_id)
    folder.mkdir(parents=True)
    record = {
        "run_id": old_id,
        "info": spec.config["run"],
        "metrics": {"best_top1": 70.5, "best_top5": 90.0},
        "config": yaml.safe_dump(old_config),
        "finished_at": "2026-01-01T00:00:00+0000",
    }
    (folder / "record.json").write_text(json.dumps(record))
    _, text = write_table(plan, tmp_path / "out")
    line = next(row for row in text.splitlines() if row.startswith("| KD (paper"))
    assert "70.50 (1/3)†[1]" in line, line
    assert (
        "[1] † from a run made with another config than the table now plans: run 0123456789abcdef: "
        "temperature 3.0 -> 4.0" in text
    )
    _record(store, current, 71.25)  # the current run exists: it is shown, unmarked
    _, text = write_table(plan, tmp_path / "out")
    line = next(row for row in text.splitlines() if row.startswith("| KD (paper"))
    assert "71.25 (1/3) /" in line and "†" not in text


def test_a_quoted_only_row_is_planned_once_its_method_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding a method needs no table edit: the quoted-only rows that name it become ordinary planned rows."""
    import kd_modules

    store = RunStore(tmp_path)
    plan = build_plan(load_table("table1"), load_preset("full"), store, data_root="data", pairs=[PAIRS[0]])
    assert not any(row == "DistPro" for row, _ in plan.cells)
    _, text = write_table(plan, tmp_path / "out")
    assert "DistPro — quoted only: NORM T1" in text
    monkeypatch.setitem(kd_modules._METHODS, "DistPro", kd_modules.KD)  # a stand-in implementation
    plan = build_plan(load_table("table1"), load_preset("full"), store, data_root="data", pairs=[PAIRS[0]])
    assert plan.blocked_cells[("DistPro", PAIRS[0])] == "method config configs/methods/distpro.yaml not written yet"
    _, text = write_table(plan, tmp_path / "out")
    assert "DistPro — quoted only" not in text and "| DistPro (paper: NORM T1) | n/a[" in text


class FakeRun:
    def __init__(self, run_id: str, state: str, history: list[dict[str, float]], summary: dict[str, float]) -> None:
        self.id = run_id
        self.name = f"name-{run_id}"
        self.state = state
        self.config = {"table": "table1", "pair": PAIRS[0], "method": "KD", "trial": 0, "recipe": "crd_cifar100"}
        self.summary = summary
        self._history = history

    def scan_history(self, keys: list[str]) -> Any:
        return (row for row in self._history if all(k in row for k in keys))


class FakeApi:
    """The part of ``wandb.Api`` the import uses: ``runs(path, filters=...)`` with a ``name $in`` filter."""

    def __init__(self, runs: list[FakeRun]) -> None:
        self._runs = runs
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def runs(self, path: str, filters: dict[str, Any]) -> list[FakeRun]:
        self.calls.append((path, filters))
        return [r for r in self._runs if r.id in filters["name"]["$in"]]


def test_tables_rebuild_from_wandb_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import wandb

    store = RunStore(tmp_path / "store")
    plan = build_plan(
        load_table("table1"),
        load_preset("full"),
        store,
        data_root="data",
        pairs=PAIRS[:1],
        methods=["KD"],
        teachers="trained",
    )
    kd = plan.cells[("KD", PAIRS[0])]
    history = [
        {"val/top1": 50.0, "val/top5": 80.0},
        {"val/top1": 61.0, "val/top5": 85.0},
        {"val/top1": 61.0, "val/top5": 86.0},  # ties keep the first best epoch
        {"val/top1": 58.0, "val/top5": 84.0},
    ]
    api = FakeApi(
        [
            FakeRun(kd[0], "finished", history, {}),
            FakeRun(kd[1], "finished", [], {"val/top1_best": 60.0, "val/top1": 57.0, "val/top5": 83.0}),
            FakeRun(kd[2], "crashed", history, {}),
            FakeRun("ffffffffffffffff", "finished", history, {}),  # not part of the plan
        ]
    )
    monkeypatch.setattr(wandb, "Api", lambda: api)
    monkeypatch.setattr(run_module, "RESULTS_DIR", tmp_path / "out")
    args = [
        "table1",
        "--pairs",
        PAIRS[0],
        "--methods",
        "KD",
        "--from-wandb",
        "team/kdbench",
        "--store",
        str(store.root),
        "--teachers",
        "trained",
    ]
    assert run_module.main(args) == 3  # one trial crashed: not every requested cell finished
    out = capsys.readouterr().out
    assert "not every cell finished: 1 not run (of 1 cells)" in out
    assert (store.root / "tables" / "table1.only-KD-resnet56_resnet20.md").is_file()  # the store's own tables
    assert (
        "W&B team/kdbench: 2 run(s) imported, 0 kept from the store, 1 not finished, 0 without accuracies, 0 not logged"
        in out
    )
    first = store.record(kd[0])
    assert first is not None and first["source"] == f"wandb:team/kdbench/{kd[0]}"
    assert first["metrics"]["best_top1"] == 61.0 and first["metrics"]["best_top5"] == 85.0
    assert first["metrics"]["last_top1"] == 58.0
    assert "60.50 ± 0.71 (2/3) / 70.66 / -10.16" in out  # mean of 61 and 60 against NORM T1's KD
    assert api.calls[0][0] == "team/kdbench" and set(api.calls[0][1]["name"]["$in"]) == set(
        kd
    )  # the runs of the table's cells

    # A record already in the store is kept, never overwritten by an import.
    report = import_wandb("team/kdbench", kd, store, api=api)
    assert report.kept == kd[:2] and report.imported == []


def test_status_summarises_coverage_of_every_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = RunStore(tmp_path / "store")
    plan = build_plan(
        load_table("table1"),
        load_preset("full"),
        store,
        data_root="data",
        pairs=PAIRS[:1],
        methods=["KD"],
        teachers="trained",
    )
    for run_id, value in zip(plan.cells[("KD", PAIRS[0])], (70.5, 70.9, 70.7), strict=True):
        _record(store, run_id, value)
    assert run_module.main(["status", "--store", str(store.root), "--teachers", "trained"]) == 0
    out = capsys.readouterr().out
    row = next(line.split() for line in out.splitlines() if line.strip().startswith("table1 "))
    cells, runnable, ran, compared, within = map(int, row[1:])
    rows = load_table("table1").rows
    quoted = sum(r.quoted_only and r.method not in method_names() for r in rows)  # rows of methods kdbench lacks
    assert cells == 7 * len(rows) - 7 * quoted
    assert runnable < cells and (ran, compared, within) == (1, 1, 1)  # 70.70 vs 70.66: within 0.5 pt
    assert "nd.t2" in out and "kcd.t8" in out and out.count("\n") > 30
