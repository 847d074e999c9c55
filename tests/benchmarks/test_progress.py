"""Progress of a launch: the runs' progress files, done / running / left with an ETA, live line or plain lines."""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.launch import SequentialLauncher
from benchmarks.plan import build_plan, load_preset
from benchmarks.progress import LaunchProgress, format_seconds, read_progress
from benchmarks.store import RunStore
from benchmarks.tables import load_table


@dataclass
class Spec:
    run_id: str
    label: str
    blocked: str | None = None


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _progress(store: RunStore, run_id: str, **state: object) -> None:
    folder = store.run_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "progress.json").write_text(json.dumps(state))


def test_counts_and_eta_from_the_cost_model_calibrated_by_progress(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    clock = Clock(1000.0)
    runs = [Spec("a", "teacher"), Spec("b", "KD"), Spec("c", "CRD"), Spec("d", "blocked", blocked="no network")]
    stream = io.StringIO()
    progress = LaunchProgress(runs, store, {"a": 1.0, "b": 1.0, "c": 2.0}, stream=stream, live=False, clock=clock)
    clock.now = 1010.0  # 10 s later: a finished, b half way, c not started
    store.run_dir("a").mkdir(parents=True)
    (store.run_dir("a") / "record.json").write_text("{}")
    _progress(store, "b", phase="training", step=50, total=100, started=1001.0, updated=1009.5)
    progress("[1/3] teacher: done in 9s")
    snapshot = progress.snapshot()
    assert (snapshot.done, snapshot.total, snapshot.left) == (1, 3, 1)  # the blocked run is not counted
    assert [r.describe() for r in snapshot.running] == ["KD 50/100"]
    # work 4 (1 + 1 + 2), done 1.5 in 10 s -> 2.5 left at 0.15 per second: 16.7 s
    assert snapshot.eta == pytest.approx(2.5 * 10 / 1.5)
    assert snapshot.summary() == "1/3 done · 1 running · 1 left · ETA 17s"
    # a progress file older than the launch (a run of an earlier, killed launch) is not a running run
    _progress(store, "c", phase="training", step=5, total=10, started=900.0, updated=950.0)
    assert [r.label for r in progress.snapshot().running] == ["KD"]


def test_plain_output_announces_runs_and_prints_summaries(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    clock = Clock(0.0)
    stream = io.StringIO()
    progress = LaunchProgress(
        [Spec("a", "teacher resnet14")], store, {}, stream=stream, live=False, log_every=30, clock=clock
    )
    clock.now = 5.0
    _progress(store, "a", phase="preparing", step=0, total=None, started=1.0, updated=4.0)
    progress.refresh()
    clock.now = 31.0
    _progress(store, "a", phase="training", step=120, total=300, started=1.0, updated=30.0)
    progress.refresh()
    progress.refresh()  # nothing new, no summary due
    lines = stream.getvalue().splitlines()
    assert lines == [
        "started teacher resnet14",
        f"progress: 0/1 done · 1 running · 0 left · ETA {format_seconds(31 * 180 / 120)} (teacher resnet14 120/300)",
    ]
    assert "\r" not in stream.getvalue()


def test_live_line_is_redrawn_below_the_finished_runs(tmp_path: Path) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    store = RunStore(tmp_path)
    stream = Terminal()
    progress = LaunchProgress([Spec("a", "KD"), Spec("b", "DKD")], store, {}, stream=stream, clock=Clock(0.0))
    assert progress.live
    _progress(store, "a", phase="training", step=3, total=10, started=0.0, updated=0.0)
    progress.refresh()
    progress("[1/2] student DKD: done in 1.0s")
    text = stream.getvalue()
    assert text.startswith("0/2 done · 1 running · 1 left")
    assert "│ KD 3/10" in text
    # the live line is cleared, the finished run printed on its own line, the live line drawn again
    assert "\r\x1b[K[1/2] student DKD: done in 1.0s\n1/2 done" in text


def test_a_launch_writes_progress_files_and_reports_runs_as_they_start(cifar_root: Path, tmp_path: Path) -> None:
    store = RunStore(tmp_path / "store")
    preset = load_preset("smoke")
    preset.wandb = "disabled"
    plan = build_plan(
        load_table("table1"),
        preset,
        store,
        data_root=str(cifar_root),
        pairs=["resnet56->resnet20"],
        methods=["Vanilla"],
    )
    runs = plan.ordered()
    stream = io.StringIO()
    with LaunchProgress(runs, store, {}, stream=stream, live=False, interval=0.05, log_every=0.0) as progress:
        report = SequentialLauncher(printer=progress).launch(runs, store)
        time.sleep(0.2)
    assert report.counts["finished"] == 1
    (spec,) = runs
    state = read_progress(store.run_dir(spec.run_id))
    assert state is not None and state["phase"] == "done" and state["step"] == state["total"] == 2
    assert state["cpu_seconds"] > 0
    out = stream.getvalue()
    assert f"started {spec.label}" in out and f"[1/1] {spec.kind} {spec.label}: done in" in out
