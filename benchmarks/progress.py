"""Progress of a launch: runs done / running / left with an ETA, and the current runs' steps.

Two halves that meet in the result store, so that they work alike for runs in this process, in worker lanes and
in subprocesses:

* :class:`StepProgress` — a Lightning callback every CLI run carries: it keeps ``<run dir>/progress.json`` up to
  date (phase ``preparing`` while the method builds its offline stages, ``training`` with the optimiser step and
  the run's total, ``evaluating``, ``done``), rewritten at most once a second, from host-side counters only (no
  device sync).
* :class:`LaunchProgress` — what the runner shows: it is the launchers' ``printer`` (one line per finished run,
  ``[k/n] ...``) and, in a background thread, reads the progress files of the planned runs.  On a terminal it keeps
  one live line at the bottom (``3/9 done · 2 running · 4 left · ETA 1m40s │ KD resnet14→resnet8 120/300 …``);
  elsewhere (a log file, CI) it prints plain lines: one when a run starts and a summary every ``log_every``
  seconds.

**ETA.**  Each run's share of the work is the cost model's estimate (:func:`benchmarks.cost.estimate_gpu_seconds`,
a relative weight); the work done is the weight of the runs finished in this launch plus, for the running ones,
their weight times the fraction of their steps done.  Work done per wall second so far (which folds in how many
runs go in parallel and how fast this machine is) gives the time left: a cost model calibrated by measured times.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from lightning.pytorch.callbacks import Callback

from benchmarks.store import RECORD

__all__ = ["PROGRESS", "StepProgress", "LaunchProgress", "Snapshot", "read_progress", "format_seconds"]

PROGRESS = "progress.json"
FAILED = "failed.json"


# ------------------------------------------------------------------------------------------ the run's side
class StepProgress(Callback):
    """Writes ``progress.json`` into a run's folder while it trains (see the module docstring).

    Args:
        path: the file to keep up to date.
        every: seconds between two rewrites while training (phase changes are written at once).
    """

    def __init__(self, path: str | Path, every: float = 1.0) -> None:
        self.path = Path(path)
        self.every = every
        self._last = 0.0
        self._started = time.time()
        self._cpu_start = time.process_time()
        self._total: int | None = None
        self._phase = "preparing"

    def _write(self, trainer: Any, phase: str | None = None, force: bool = False) -> None:
        if phase is not None:
            force = force or phase != self._phase
            self._phase = phase
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        if getattr(trainer, "global_rank", 0) != 0:
            return
        state = {
            "phase": self._phase,
            "step": int(trainer.global_step),
            "total": self._total,
            "started": self._started,
            "updated": time.time(),
            "cpu_seconds": round(time.process_time() - self._cpu_start, 3),
        }
        # progress is a display aid: a full or read-only disk must not fail the run
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(state))
            tmp.replace(self.path)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._started, self._cpu_start = time.time(), time.process_time()
        self._write(trainer, "preparing", force=True)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        try:
            total = trainer.estimated_stepping_batches
            self._total = int(total) if total is not None and total != float("inf") else None
        except Exception:  # noqa: BLE001 - an unknown length only hides the total
            self._total = None
        self._write(trainer, "training", force=True)

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        self._write(trainer)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._write(trainer, "evaluating")

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._write(trainer, "training")

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._write(trainer, "done", force=True)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._write(trainer, "stopped", force=True)


def read_progress(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / PROGRESS).read_text())
    except (OSError, ValueError):
        return None


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# ------------------------------------------------------------------------------------- the launcher's side
@dataclass
class Running:
    label: str
    phase: str
    step: int
    total: int | None

    def describe(self) -> str:
        if self.phase == "preparing":
            return f"{self.label} preparing"
        steps = f"{self.step}/{self.total}" if self.total else f"step {self.step}"
        return f"{self.label} {steps}" + (" evaluating" if self.phase == "evaluating" else "")


@dataclass
class Snapshot:
    done: int
    total: int
    running: list[Running] = field(default_factory=list)
    eta: float | None = None
    elapsed: float = 0.0
    started: list[str] = field(default_factory=list)  # runs seen running for the first time by this snapshot

    @property
    def left(self) -> int:
        return max(0, self.total - self.done - len(self.running))

    def summary(self) -> str:
        eta = f"ETA {format_seconds(self.eta)}" if self.eta is not None else "ETA …"
        return f"{self.done}/{self.total} done · {len(self.running)} running · {self.left} left · {eta}"


_COUNTER = re.compile(r"^\[(\d+)/(\d+)\]")


class LaunchProgress:
    """The runner's progress display and the launchers' printer (see the module docstring).

    Args:
        runs: the planned runs (``RunSpec``: ``run_id``, ``label``, ``blocked``).
        store: the result store they run into.
        weights: run id -> relative cost (the cost model's estimate); runs without one count as the mean.
        stream: where to write (default stdout).
        live: keep a live line (default: when ``stream`` is a terminal and ``TERM`` is not ``dumb``).
        interval: seconds between two reads of the progress files.
        log_every: without a live line, seconds between two summary lines.
        clock: wall clock (tests pass a fake one).
    """

    def __init__(
        self,
        runs: Iterable[Any],
        store: Any,
        weights: dict[str, float | None] | None = None,
        stream: TextIO | None = None,
        live: bool | None = None,
        interval: float = 0.5,
        log_every: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stream = stream or sys.stdout
        # a live line on a terminal whose TERM is not dumb
        self.live = (self.stream.isatty() and os.environ.get("TERM", "") != "dumb") if live is None else live
        self.interval = interval
        self.log_every = log_every
        self.clock = clock
        self.store = store
        self.started = clock()
        self.runs = [r for r in runs if not r.blocked]
        self.total = len(self.runs)
        self.todo = [r for r in self.runs if not store.is_finished(r.run_id)]  # not finished before the launch
        known = [w for w in (weights or {}).values() if w]
        default = sum(known) / len(known) if known else 1.0
        self.weights = {r.run_id: float((weights or {}).get(r.run_id) or default) for r in self.runs}
        self.done = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._announced: set[str] = set()
        self._last_log = self.started
        self._drawn = False
        self._snapshot: Snapshot | None = None

    # -- the printer the launchers call, one line per finished run
    def __call__(self, line: str) -> None:
        match = _COUNTER.match(line)
        with self._lock:
            if match:
                self.done, self.total = int(match.group(1)), max(self.total, int(match.group(2)))
            elif not line.startswith("submitted"):
                self.done += 1
            if self._snapshot is not None:  # redrawn at once with the new count (the store is read next tick)
                self._snapshot.done, self._snapshot.total = self.done, self.total
            self._clear()
            self.stream.write(line + "\n")
            self._draw()
            self.stream.flush()

    # -- reading the store
    def _state(self, spec: Any) -> tuple[str, dict[str, Any] | None]:
        """("finished" | "failed" | "running" | "waiting", progress) of a run not finished before the launch."""
        run_dir = Path(self.store.run_dir(spec.run_id))
        if (run_dir / RECORD).is_file():
            return "finished", None
        progress = read_progress(run_dir)
        if progress is None or float(progress.get("updated", 0)) < self.started - 1.0:
            return "waiting", None
        failed = run_dir / FAILED
        if progress.get("phase") in ("done", "stopped") or (
            failed.is_file() and failed.stat().st_mtime >= float(progress.get("started", 0))
        ):
            return "failed", progress
        return "running", progress

    def snapshot(self) -> Snapshot:
        now = self.clock()
        running: list[Running] = []
        work = sum(self.weights[r.run_id] for r in self.todo)
        work_done = 0.0
        starts: list[str] = []
        for spec in self.todo:
            state, progress = self._state(spec)
            weight = self.weights[spec.run_id]
            if state in ("finished", "failed"):
                work_done += weight
            elif state == "running" and progress is not None:
                total = progress.get("total")
                step = int(progress.get("step") or 0)
                phase = str(progress.get("phase") or "training")
                running.append(Running(spec.label, phase, step, int(total) if total else None))
                if total:
                    work_done += weight * min(1.0, step / max(1, int(total)))
                if spec.run_id not in self._announced:
                    self._announced.add(spec.run_id)
                    starts.append(spec.label)
        elapsed = now - self.started
        eta = max(0.0, (work - work_done) * elapsed / work_done) if work_done > 0 and elapsed > 2.0 else None
        return Snapshot(self.done, self.total, running, eta, elapsed, starts)

    # -- drawing
    def status_line(self, snapshot: Snapshot) -> str:
        parts = [snapshot.summary()] + [r.describe() for r in snapshot.running]
        line = " │ ".join(parts)
        width = max(40, shutil.get_terminal_size((120, 24)).columns - 1)
        return line if len(line) <= width else line[: width - 1] + "…"

    def _clear(self) -> None:
        if self.live and self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False

    def _draw(self) -> None:
        if self.live and self._snapshot is not None:
            self.stream.write(self.status_line(self._snapshot))
            self._drawn = True

    def refresh(self) -> Snapshot:
        """Read the store once and update the display (the background thread calls this)."""
        snapshot = self.snapshot()
        with self._lock:
            self._snapshot = snapshot
            if self.live:
                self._clear()
                self._draw()
            else:
                for label in snapshot.started:
                    self.stream.write(f"started {label}\n")
                if self.clock() - self._last_log >= self.log_every:
                    self._last_log = self.clock()
                    running = "; ".join(r.describe() for r in snapshot.running)
                    self.stream.write(f"progress: {snapshot.summary()}" + (f" ({running})" if running else "") + "\n")
            self.stream.flush()
        return snapshot

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # the display must never stop a launch
                self.refresh()

    def __enter__(self) -> LaunchProgress:
        self._thread = threading.Thread(target=self._loop, name="kdbench-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            self._clear()
            self.stream.flush()
