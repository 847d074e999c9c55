"""Launchers: the same planned runs, executed sequentially, in parallel on one machine, or as SLURM job arrays.

Every launcher writes each run's ``config.yaml`` into its store folder and starts it through the CLI contract
(``fit --config <complete yaml>``, which writes ``record.json`` and ``final.pth`` into ``run.dir``), so results
from any launcher land in the same store and the tables render from it alike.  Finished runs are skipped,
interrupted ones resume from ``last.ckpt``, a run whose dependency failed is skipped, a failed run leaves
``failed.json`` and does not stop the others.

Every run is claimed in the store before it is trained (:mod:`benchmarks.store`), by the process that trains it,
so any number of launchers may share a store; a run another runner holds is waited for (see :class:`Launcher`).
SIGINT / SIGTERM stop the whole launch: lanes and child processes are told to stop (the signal, and for lanes an
event), each running run saves a resumable checkpoint after its current step (:mod:`benchmarks.resume`), nothing
new starts, and the report says how many runs were finished and left (:meth:`LaunchReport.interrupted_line`).
Lanes and children are started with SIGINT/SIGTERM blocked until they have their own handlers, so a Ctrl-C while
they import torch cannot kill them half-way.

* :class:`SequentialLauncher` — one run after the other, in this process (the default; ``make demo``).
* :class:`ParallelLauncher` — every visible GPU runs ``--per-gpu`` runs at a time, each a subprocess
  (``python -m benchmarks.execute <config>``) pinned with ``CUDA_VISIBLE_DEVICES``; a run whose preset asks for
  ``trainer.devices = n > 1`` (Lightning DDP) gets ``n`` whole GPUs.  On a machine without GPUs it keeps
  ``--jobs`` worker processes ("lanes") alive for the whole launch and hands them runs one at a time: a smoke run
  trains for a second, less than starting a Python process with torch and Lightning, so per-run processes would
  cost more than the runs.  Each run gets the CPU threads divided among the runs that can go at its start, so a run
  that everything else waits for (the teacher) uses every core instead of one lane's share.
* :class:`SubmititLauncher` — SLURM job arrays through submitit: the runs are grouped into dependency levels
  (teachers, then stages, then students) and each level is one array per resource shape.  By default the
  launcher waits for a level before submitting the next; with ``wait=False`` (``--no-wait``, SLURM only) it
  submits every level at once, chained with ``--dependency=afterany:<previous arrays>``, and returns.
  ``cluster="local"`` runs the same arrays as local processes (how it is tested), ``"debug"`` in this process.
  Each job is a :class:`SubmititRun` (``submitit.helpers.Checkpointable``): pre-empted, it saves a checkpoint and
  submitit requeues it; requeued, it resumes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from benchmarks import interrupts
from benchmarks.errors import KDBenchError
from benchmarks.execute import RunOutcome, execute_config, execute_run, failure_kind, failure_message, write_config
from benchmarks.plan import RunSpec
from benchmarks.store import RunStore
from benchmarks.tables import REPO_ROOT

__all__ = [
    "LaunchReport",
    "Launcher",
    "SequentialLauncher",
    "ParallelLauncher",
    "SubmititLauncher",
    "SubmititRun",
    "visible_gpus",
]

Printer = Callable[[str], None]


def _print(line: str) -> None:
    print(line, flush=True)


#: Seconds between two looks at a run that another runner holds (its claim), waiting for it to finish or die.
ELSEWHERE_POLL_SECONDS = float(os.environ.get("KDBENCH_ELSEWHERE_POLL", "5"))
#: How a run ended, in the order the summary lists them.
STATUSES = ("finished", "skipped", "failed", "diverged", "blocked", "interrupted", "busy", "submitted")


@dataclass
class LaunchReport:
    """How the runs ended (``finished`` = trained now, ``skipped`` = already finished, by anyone).

    ``interrupted_by`` is the stop signal when the launch was interrupted; ``left`` the runnable runs it did not
    get to finish then; ``elsewhere`` the runs that other runners still held when it ended (run id -> owner).
    """

    counts: dict[str, int] = field(default_factory=lambda: {status: 0 for status in STATUSES})
    outcomes: dict[str, RunOutcome] = field(default_factory=dict)
    interrupted_by: int | None = None
    left: list[str] = field(default_factory=list)
    elsewhere: dict[str, str] = field(default_factory=dict)
    runnable: int = 0

    def add(self, outcome: RunOutcome) -> None:
        previous = self.outcomes.get(outcome.run_id)
        if previous is not None:
            self.counts[previous.status] -= 1
        self.outcomes[outcome.run_id] = outcome
        self.counts[outcome.status] = self.counts.get(outcome.status, 0) + 1

    def ok(self, run_id: str) -> bool:
        outcome = self.outcomes.get(run_id)
        return outcome is not None and outcome.status in ("finished", "skipped")

    @property
    def finished(self) -> int:
        """Runs of this launch that have a record now (trained now or before)."""
        return self.counts["finished"] + self.counts["skipped"]

    def summary(self, seconds: float) -> str:
        c = self.counts
        text = f"{c['finished']} trained, {c['skipped']} already finished, {c['failed']} failed"
        if c.get("diverged"):
            text += f", {c['diverged']} diverged"
        text += f", {c['blocked']} blocked"
        if c.get("interrupted"):
            text += f", {c['interrupted']} interrupted"
        if self.elsewhere:
            text += f", {len(self.elsewhere)} running elsewhere"
        if c.get("submitted"):
            text += f", {c['submitted']} submitted"
        return text + f", in {seconds:.0f}s"

    def interrupted_line(self) -> str:
        assert self.interrupted_by is not None
        elsewhere = f" ({len(self.elsewhere)} of them running elsewhere)" if self.elsewhere else ""
        return (
            f"interrupted ({interrupts.signal_name(self.interrupted_by)}): {self.finished} finished, {len(self.left)} left"
            f"{elsewhere}; run the same command to resume"
        )


def _describe(spec: RunSpec, outcome: RunOutcome, store: RunStore, metric: str = "best_top1") -> str:
    prefix = f"{spec.kind} {spec.label}"
    if outcome.status == "skipped":
        return f"{prefix}: already finished ({spec.run_id})"
    if outcome.status == "finished":
        record = store.record(spec.run_id) or {}
        top1 = record.get("metrics", {}).get(metric)
        value = f", {metric} {top1:.2f}" if isinstance(top1, (int, float)) else ""
        resumed = " (resumed)" if outcome.resumed else ""
        return f"{prefix}: done in {outcome.seconds:.1f}s{resumed}{value} ({spec.run_id})"
    if outcome.status == "blocked":
        return f"{prefix}: skipped, {outcome.message}"
    if outcome.status == "interrupted":
        saved = "checkpoint saved, resumable" if "resumable" in outcome.message else "resumable"
        return f"{prefix}: interrupted, {saved} ({spec.run_id})"
    if outcome.status == "busy":
        return f"{prefix}: running elsewhere ({outcome.message}); coming back to it ({spec.run_id})"
    label = "DIVERGED" if outcome.status == "diverged" else "FAILED"
    return f"{prefix}: {label} ({outcome.message}); see {store.run_dir(spec.run_id)}/failed.json"


class Launcher(ABC):
    """Runs planned runs (in dependency order) into a store.

    Every launcher claims a run before training it (:mod:`benchmarks.store`): a run another runner holds is
    reported as running elsewhere and looked at again every ``ELSEWHERE_POLL_SECONDS`` seconds; when its owner
    finishes it counts as finished (its dependants then go), when its owner dies its claim is taken over and the
    run resumed here.  So a launch ends when every runnable run has a record, failed, or was interrupted — also
    when other runners shared the work.  A stop signal (SIGINT, SIGTERM) stops the whole launch: no run is started
    any more, running ones save a checkpoint and stop, and the report says how many were finished and left.
    """

    def __init__(self, printer: Printer = _print) -> None:
        self.printer = printer

    @abstractmethod
    def launch(self, runs: list[RunSpec], store: RunStore) -> LaunchReport:
        """Run what is runnable and not finished; report how each run ended."""

    def _unrunnable(self, spec: RunSpec, report: LaunchReport, store: RunStore) -> RunOutcome | None:
        """The outcome of a run that must not start (blocked, or a dependency did not finish), else None."""
        if spec.blocked:
            return RunOutcome(spec.run_id, "blocked", message=spec.blocked)
        failed = [
            d
            for d in spec.depends_on
            if d in report.outcomes and not report.ok(d) and report.outcomes[d].status not in ("interrupted", "busy")
        ]
        if failed:
            return RunOutcome(spec.run_id, "blocked", message=f"its dependency {failed[0]} did not finish")
        if store.is_finished(spec.run_id):
            return RunOutcome(spec.run_id, "skipped")
        return None

    def _schedule(
        self,
        runs: list[RunSpec],
        store: RunStore,
        start: Callable[[RunSpec, list[RunSpec], LaunchReport], Any | None],
        poll: Callable[[Any], RunOutcome | None],
        stop_running: Callable[[int], None],
        poll_seconds: float = 0.2,
    ) -> LaunchReport:
        """The scheduling loop every local launcher shares.

        ``start(spec, pending, report)`` starts a run and returns a handle, or None when no slot is free;
        ``poll(handle)`` returns the run's outcome once it ended; ``stop_running(signum)`` tells every running
        run to stop (called once, when a stop signal arrives).
        """
        report = LaunchReport(runnable=sum(1 for spec in runs if not spec.blocked))
        pending = list(runs)
        planned = {s.run_id for s in runs}
        running: dict[str, tuple[Any, RunSpec]] = {}
        look_again: dict[str, float] = {}
        elsewhere: dict[str, str] = {}
        done = 0
        stopping = False

        def finish(spec: RunSpec, outcome: RunOutcome) -> None:
            nonlocal done
            report.add(outcome)
            elsewhere.pop(spec.run_id, None)
            if not spec.blocked:
                done += 1
                self.printer(f"[{done}/{report.runnable}] " + _describe(spec, outcome, store))

        def ready(spec: RunSpec) -> bool:
            return all(report.ok(d) for d in spec.depends_on if d in planned)

        while pending or running:
            progressed = False
            stop = interrupts.requested()
            if stop is not None and not stopping:
                stopping = True
                report.interrupted_by = stop
                stop_running(stop)
            if not stopping:
                for spec in list(pending):
                    outcome = self._unrunnable(spec, report, store)
                    if outcome is not None:
                        pending.remove(spec)
                        finish(spec, outcome)
                        progressed = True
                        continue
                    if not ready(spec) or look_again.get(spec.run_id, 0.0) > time.monotonic():
                        continue
                    owner = store.claim_owner(spec.run_id)
                    if owner is not None:
                        self._elsewhere(spec, owner.describe(), elsewhere, look_again)
                        continue
                    handle = start(spec, pending, report)
                    if handle is None:
                        break  # no free slot
                    running[spec.run_id] = (handle, spec)
                    pending.remove(spec)
                    progressed = True
                    if interrupts.requested() is not None:
                        break
            for run_id, (handle, spec) in list(running.items()):
                outcome = poll(handle)
                if outcome is None:
                    continue
                del running[run_id]
                progressed = True
                if outcome.status == "busy":  # claimed by another runner between our look and our claim
                    pending.insert(0, spec)
                    self._elsewhere(spec, outcome.message, elsewhere, look_again)
                    continue
                if outcome.status == "interrupted":
                    report.add(outcome)
                    self.printer(_describe(spec, outcome, store))
                    if not stopping:  # a run was stopped by a signal sent to it alone: the launch stops too
                        interrupts.request_stop(outcome.signum or signal.SIGINT)
                    continue
                finish(spec, outcome)
            if stopping and not running:
                break
            if not progressed:
                time.sleep(poll_seconds)
        if stopping:
            report.left = [
                s.run_id for s in runs if not s.blocked and not report.ok(s.run_id) and not store.is_finished(s.run_id)
            ]
            # leave pending runs out of the counts; they are "left"
            report.elsewhere = {run_id: owner for run_id, owner in elsewhere.items() if run_id not in report.outcomes}
        return report

    def _elsewhere(self, spec: RunSpec, owner: str, elsewhere: dict[str, str], look_again: dict[str, float]) -> None:
        if spec.run_id not in elsewhere:
            self.printer(f"{spec.kind} {spec.label}: running elsewhere ({owner}); coming back to it ({spec.run_id})")
        elsewhere[spec.run_id] = owner
        look_again[spec.run_id] = time.monotonic() + ELSEWHERE_POLL_SECONDS


class SequentialLauncher(Launcher):
    """One run after the other, in this process."""

    def launch(self, runs: list[RunSpec], store: RunStore) -> LaunchReport:
        done: dict[str, RunOutcome] = {}

        def start(spec: RunSpec, pending: list[RunSpec], report: LaunchReport) -> Any:
            done[spec.run_id] = execute_run(spec, store, note="sequential launcher")
            return spec.run_id

        with interrupts.installed():
            return self._schedule(runs, store, start, done.pop, lambda signum: None, poll_seconds=0.05)


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries ([] on a machine without GPUs)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no usable CUDA means no GPUs
        return []


class ParallelLauncher(Launcher):
    """Several runs at once on this machine, each in its own process.

    Args:
        per_gpu: concurrent runs per GPU (K).
        jobs: concurrent runs on a machine without GPUs (default: one per CPU core).
        gpus: the GPUs to use (default: every visible one).
        poll_seconds: how often finished processes are collected.
        command: the command a run is started with, its config path appended
            (default ``python -m benchmarks.execute``); given, every run is its own process.
        lanes: on a machine without GPUs, run in ``jobs`` long-lived worker processes (default: yes, unless
            ``command`` is given).
    """

    def __init__(
        self,
        per_gpu: int = 1,
        jobs: int | None = None,
        gpus: list[str] | None = None,
        poll_seconds: float = 0.2,
        printer: Printer = _print,
        command: list[str] | None = None,
        lanes: bool | None = None,
    ) -> None:
        super().__init__(printer)
        self.lanes = command is None if lanes is None else lanes
        self.command = command or [sys.executable, "-m", "benchmarks.execute"]
        if per_gpu < 1:
            raise KDBenchError(f"--per-gpu must be at least 1, got {per_gpu}")
        self.gpus = visible_gpus() if gpus is None else gpus
        self.per_gpu = per_gpu
        self.jobs = jobs if jobs is not None else (os.cpu_count() or 1)
        if self.jobs < 1:
            raise KDBenchError(f"--jobs must be at least 1, got {self.jobs}")
        self.poll_seconds = poll_seconds
        self.peak_running = 0  # most runs at once in the last launch (reported, and checked by the tests)
        self.thread_shares: dict[str, int] = {}  # run id -> CPU threads its lane ran it with (last launch)

    def _capacity(self) -> dict[str, int]:
        if self.gpus:
            return {gpu: self.per_gpu for gpu in self.gpus}
        return {"cpu": self.jobs}

    def _claim(self, free: dict[str, int], devices: int) -> list[str] | None:
        if devices <= 1 or not self.gpus:  # without GPUs free is {"cpu": lanes left}
            best = max(free, key=lambda g: free[g])
            return [best] if free[best] > 0 else None
        whole = [g for g in self.gpus if free[g] == self.per_gpu]
        if devices > len(self.gpus):
            raise KDBenchError(f"a run needs {devices} GPUs but only {len(self.gpus)} are visible")
        return whole[:devices] if len(whole) >= devices else None

    def _environment(self, claimed: list[str]) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(claimed)
        else:
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.jobs)))
        return env

    def launch(self, runs: list[RunSpec], store: RunStore) -> LaunchReport:
        if self.gpus or not self.lanes:
            return self._launch(runs, store, None, None)
        threads = max(1, (os.cpu_count() or 1) // self.jobs)
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
        stop = (context.Event(), context.Value("i", 0))
        with ProcessPoolExecutor(
            self.jobs, mp_context=context, initializer=_lane_init, initargs=(threads, *stop)
        ) as lanes:
            return self._launch(runs, store, lanes, stop)

    def _thread_share(self, sharing: int) -> int:
        """CPU threads for a lane run that starts while ``sharing`` runs (itself included) can go at once.

        Dividing by the runs that can actually go, not by ``--jobs``, keeps a lone run (the teacher every student
        waits for, or a stage) from training on one core while the others idle.  The share is fixed at the run's
        start: a run that ends up sharing the machine later (the tail of the launch) keeps it.
        """
        return max(1, (os.cpu_count() or 1) // max(1, min(self.jobs, sharing)))

    def _start(
        self, spec: RunSpec, config_path: Path, claimed: list[str], lanes: ProcessPoolExecutor | None, sharing: int
    ) -> Any:
        log_path = config_path.parent / "launcher.log"
        if lanes is not None:
            threads = self._thread_share(sharing)
            self.thread_shares[spec.run_id] = threads
            # A lane may be spawned by this submit: it inherits SIGINT/SIGTERM blocked, so that a Ctrl-C while it
            # imports torch cannot kill it (the lane ignores them once started; this process gets them afterwards).
            with _stop_signals_blocked():
                return lanes.submit(_lane_run, str(config_path), str(log_path), threads)
        # the child holds the log (this process closes its copy) and gets the signals blocked until its handlers
        with open(log_path, "ab") as log, _stop_signals_blocked():
            return subprocess.Popen(
                [*self.command, str(config_path)],
                cwd=os.getcwd(),
                env=self._environment(claimed),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def _launch(
        self, runs: list[RunSpec], store: RunStore, lanes: ProcessPoolExecutor | None, stop: tuple[Any, Any] | None
    ) -> LaunchReport:
        self.thread_shares = {}
        free = self._capacity()
        planned = {s.run_id for s in runs}
        active: dict[str, tuple[Any, RunSpec, list[str], float]] = {}

        def start(spec: RunSpec, pending: list[RunSpec], report: LaunchReport) -> str | None:
            claimed = self._claim(free, spec.devices)
            if claimed is None:
                return None
            for gpu in claimed:
                free[gpu] -= 1
            sharing = len(active) + 1 + sum(1 for other in pending if self._ready(other, spec, report, planned, store))
            handle = self._start(spec, write_config(spec, store), claimed, lanes, sharing)
            active[spec.run_id] = (handle, spec, claimed, time.perf_counter())
            self.peak_running = max(self.peak_running, len(active))
            return spec.run_id

        def poll(run_id: str) -> RunOutcome | None:
            handle, spec, claimed, started = active[run_id]
            if isinstance(handle, Future):
                if not handle.done():
                    return None
                try:
                    outcome: RunOutcome = handle.result()
                except Exception as error:  # noqa: BLE001 - a lane that died (killed, out of memory)
                    outcome = self._outcome(spec, store, 1, time.perf_counter() - started)
                    stop = interrupts.requested()
                    if stop is not None and outcome.status == "failed" and failure_message(store, spec.run_id) is None:
                        outcome = RunOutcome(
                            spec.run_id, "interrupted", outcome.seconds, "its lane stopped", signum=stop
                        )
                    else:
                        outcome.message = f"its lane died ({type(error).__name__}: {error})"
            else:
                returncode = handle.poll()
                if returncode is None:
                    return None
                outcome = self._outcome(spec, store, returncode, time.perf_counter() - started)
            del active[run_id]
            for gpu in claimed:
                free[gpu] += 1
            return outcome

        def stop_running(signum: int) -> None:
            if stop is not None:
                stop[1].value = int(signum)
                stop[0].set()
            for handle, _, _, _ in list(active.values()):
                if isinstance(handle, subprocess.Popen) and handle.poll() is None:
                    with contextlib.suppress(OSError):
                        handle.send_signal(signum)
            for process in list(getattr(lanes, "_processes", {}).values()) if lanes is not None else []:
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    os.kill(process.pid, signum)

        with interrupts.installed():
            return self._schedule(runs, store, start, poll, stop_running, poll_seconds=self.poll_seconds)

    @staticmethod
    def _ready(spec: RunSpec, starting: RunSpec, report: LaunchReport, planned: set[str], store: RunStore) -> bool:
        """Whether ``spec`` (another pending run than ``starting``) would train now: unfinished, dependencies done."""
        if spec is starting or spec.blocked or store.is_finished(spec.run_id):
            return False
        return all(report.ok(d) for d in spec.depends_on if d in planned)

    @staticmethod
    def _outcome(spec: RunSpec, store: RunStore, returncode: int, seconds: float) -> RunOutcome:
        """How a run in a child process ended, from its exit status and what it left in the store."""
        if store.is_finished(spec.run_id):
            return RunOutcome(spec.run_id, "finished", seconds)
        if returncode in (130, 143) or returncode in (-2, -15):
            signum = returncode - 128 if returncode > 0 else -returncode
            return RunOutcome(spec.run_id, "interrupted", seconds, "interrupted, resumable", signum=signum)
        if returncode == 75:
            owner = store.claim_owner(spec.run_id)
            return RunOutcome(spec.run_id, "busy", seconds, owner.who if owner else "another runner")
        message = failure_message(store, spec.run_id) or f"process exited with status {returncode}"
        return RunOutcome(spec.run_id, failure_kind(store, spec.run_id), seconds, message)


@contextlib.contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """SIGINT and SIGTERM blocked for the duration (a process started meanwhile inherits them blocked)."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _lane_init(threads: int, stop_event: Any = None, stop_signal: Any = None) -> None:
    """A lane's start: its share of the CPU threads, set before any run builds a thread pool.

    On Linux the lane also asks to be killed with its parent: a launcher killed half-way (SIGKILL, OOM) must not
    leave lanes finishing runs behind the back of the next launch, which resumes those runs itself.  An idle lane
    ignores SIGINT and SIGTERM (its parent decides when the launch stops; a run installs its own handlers), and
    a run in it stops when the parent sets ``stop_event`` (with the signal in ``stop_signal``).
    """
    import torch

    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, int(signal.SIGKILL))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})  # blocked by the parent's submit
    _LANE_STOP[:] = [stop_event, stop_signal]
    torch.set_num_threads(threads)
    os.environ.setdefault("WANDB_SILENT", "true")


_LANE_STOP: list[Any] = [None, None]


def _watch_parent_stop(done: threading.Event) -> None:
    event, value = _LANE_STOP
    while event is not None and not done.is_set():
        if event.wait(0.2):
            interrupts.request_stop(int(value.value) or 15)
            return


def _lane_run(config_path: str, log_path: str, threads: int) -> RunOutcome:
    """One run in a lane with ``threads`` CPU threads, its output appended to the run's ``launcher.log``."""
    import torch

    torch.set_num_threads(threads)
    done = threading.Event()
    watcher = threading.Thread(target=_watch_parent_stop, args=(done,), daemon=True)
    watcher.start()
    try:
        with open(log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            return execute_config(config_path, note="parallel launcher lane")
    finally:
        done.set()


class SubmititRun(submitit.helpers.Checkpointable):
    """One planned run as a submitit job that survives pre-emption (submitit's own checkpoint/requeue mechanism).

    submitit installs a handler for its pre-emption signal (``USR2`` unless ``SUBMITIT_PREEMPT_SIGNAL`` says
    otherwise) that calls :meth:`checkpoint`, requeues the job and exits — right away, in the middle of whatever
    the job was doing.  This job takes that signal over for the duration of the run and hands it to submitit's
    handler at the next safe point instead: the run first saves a resumable ``last.ckpt`` after the current
    optimiser step (:mod:`benchmarks.resume`), then submitit checkpoints (this same callable: the run's state is
    on disk, not in the pickle), requeues and exits; the requeued job resumes from ``last.ckpt``.  SIGTERM, which
    submitit bypasses because SLURM sends it ahead of the pre-emption signal, saves a checkpoint and lets the run
    go on; SIGINT stops it (resumable, not requeued).
    """

    def __init__(self, config_path: str) -> None:
        self.config_path = str(config_path)

    def __call__(self) -> dict[str, Any]:
        preempt = submitit.JobEnvironment._usr_sig()
        requeue = signal.getsignal(preempt)  # submitit's checkpoint_and_try_requeue while inside a job
        outcome = execute_config(
            self.config_path,
            note="submitit job",
            stop_signals=(signal.SIGINT, preempt),
            checkpoint_signals=(signal.SIGTERM,),
        )
        if outcome.status == "interrupted" and outcome.signum == preempt and callable(requeue):
            requeue(preempt, None)  # checkpoint() + requeue + exit (raises when it cannot requeue)
        return vars(outcome)


def _levels(runs: list[RunSpec]) -> list[list[RunSpec]]:
    """Runs grouped by dependency depth: level k depends only on levels < k."""
    level: dict[str, int] = {}
    ids = {s.run_id for s in runs}
    for spec in runs:  # runs arrive in dependency order
        level[spec.run_id] = 1 + max((level[d] for d in spec.depends_on if d in ids), default=-1)
    grouped: list[list[RunSpec]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for spec in runs:
        grouped[level[spec.run_id]].append(spec)
    return grouped


class SubmititLauncher(Launcher):
    """SLURM job arrays (or submitit's local / debug executors) over the planned runs.

    Args:
        folder: where submitit keeps its job scripts and logs.
        cluster: ``None`` (SLURM when ``srun`` exists, else local processes), ``"slurm"``, ``"local"``, ``"debug"``.
        parameters: submitit executor parameters for every array (``timeout_min``, ``slurm_partition``,
            ``cpus_per_task``, ``mem_gb``, ``slurm_array_parallelism``, ...); ``gpus_per_node`` and
            ``tasks_per_node`` are set per run from its ``trainer.devices`` when it uses GPUs.
        gpu: whether runs get GPUs (``gpus_per_node`` = devices).
        wait: wait for each dependency level before submitting the next (required by the local executors).
    """

    def __init__(
        self,
        folder: str | Path,
        cluster: str | None = None,
        parameters: dict[str, Any] | None = None,
        gpu: bool = True,
        wait: bool = True,
        printer: Printer = _print,
    ) -> None:
        super().__init__(printer)
        self.folder = Path(folder)
        self.cluster = cluster
        self.parameters = dict(parameters or {})
        self.gpu = gpu
        self.wait = wait

    def _executor(self, devices: int, dependency: str | None) -> Any:
        executor = submitit.AutoExecutor(folder=str(self.folder / "%j"), cluster=self.cluster)
        parameters: dict[str, Any] = {"name": "kdbench", "timeout_min": 24 * 60, **self.parameters}
        if self.gpu:
            parameters.update(gpus_per_node=devices, tasks_per_node=devices)
        if dependency:
            extra = dict(parameters.pop("slurm_additional_parameters", {}) or {})
            extra["dependency"] = dependency
            parameters["slurm_additional_parameters"] = extra
        executor.update_parameters(**parameters)
        if not self.wait and executor.cluster != "slurm":
            raise KDBenchError(
                f"--no-wait chains SLURM arrays by job dependency; the {executor.cluster} executor cannot"
            )
        return executor

    def launch(self, runs: list[RunSpec], store: RunStore) -> LaunchReport:
        # Array tasks import kdbench: make sure they find it however the launcher itself was started.
        paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if str(REPO_ROOT) not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO_ROOT), *paths] if p)
        report = LaunchReport(runnable=sum(1 for spec in runs if not spec.blocked))
        with interrupts.installed():
            self._launch_levels(runs, store, report)
        if report.interrupted_by is not None:
            report.left = [s.run_id for s in runs if not s.blocked and not store.is_finished(s.run_id)]
            self.printer(
                "submitted jobs keep running (scancel them to stop them); their runs are claimed, so a "
                "relaunch waits for them"
            )
        return report

    def _submit(self, specs: list[RunSpec], store: RunStore, devices: int, dependency: str | None) -> list[Any]:
        executor = self._executor(devices, dependency)
        paths = [str(write_config(spec, store).resolve()) for spec in specs]
        with executor.batch():
            jobs = [executor.submit(SubmititRun(path)) for path in paths]
        self.printer(f"submitted {len(jobs)} run(s) as array {jobs[0].job_id.split('_')[0]} ({executor.cluster})")
        return jobs

    def _launch_levels(self, runs: list[RunSpec], store: RunStore, report: LaunchReport) -> None:
        previous_arrays: list[str] = []
        for level in _levels(runs):
            submit: dict[int, list[RunSpec]] = {}
            for spec in level:
                outcome = self._unrunnable(spec, report, store) if self.wait or spec.blocked else None
                if outcome is None and store.is_finished(spec.run_id):
                    outcome = RunOutcome(spec.run_id, "skipped")
                if outcome is not None:
                    report.add(outcome)
                    if not spec.blocked:
                        self.printer(_describe(spec, outcome, store))
                    continue
                submit.setdefault(spec.devices, []).append(spec)
            arrays: list[tuple[list[RunSpec], list[Any], int]] = []
            for devices, specs in submit.items():
                dependency = f"afterany:{':'.join(previous_arrays)}" if previous_arrays and not self.wait else None
                arrays.append((specs, self._submit(specs, store, devices, dependency), devices))
            if not self.wait:
                previous_arrays = [jobs[0].job_id.split("_")[0] for _, jobs, _ in arrays] or previous_arrays
                report.counts["submitted"] += sum(len(specs) for specs, _, _ in arrays)
                continue
            waiting = [
                (spec, job, devices) for specs, jobs, devices in arrays for spec, job in zip(specs, jobs, strict=True)
            ]
            while waiting:
                if interrupts.requested() is not None:
                    report.interrupted_by = interrupts.requested()
                    return
                still = []
                for spec, job, devices in waiting:
                    if not job.done():
                        still.append((spec, job, devices))
                        continue
                    try:
                        outcome = RunOutcome(**job.result())
                    except Exception as error:  # noqa: BLE001 - a crashed array task is one failed run
                        outcome = RunOutcome(spec.run_id, "failed", message=f"{type(error).__name__}: {error}"[:300])
                    if outcome.status == "busy":  # another runner trains it: wait for its record or its death
                        if store.is_finished(spec.run_id):
                            outcome = RunOutcome(spec.run_id, "skipped")
                        else:
                            self.printer(_describe(spec, outcome, store))
                            later = _Later(spec, store, lambda s=spec, d=devices: self._submit([s], store, d, None)[0])
                            still.append((spec, later, devices))
                            continue
                    report.add(outcome)
                    self.printer(_describe(spec, outcome, store))
                waiting = still
                if waiting:
                    time.sleep(0.5)


class _Later:
    """A run another runner holds, as a job-like handle: done once it has a record, or resubmitted (and then that
    job's handle) once its claim is free."""

    def __init__(self, spec: RunSpec, store: RunStore, resubmit: Callable[[], Any]) -> None:
        self.spec, self.store, self.resubmit = spec, store, resubmit
        self.job: Any = None
        self.next_look = time.monotonic() + ELSEWHERE_POLL_SECONDS

    def done(self) -> bool:
        if self.job is not None:
            return bool(self.job.done())
        if self.store.is_finished(self.spec.run_id):
            return True
        if time.monotonic() >= self.next_look:
            self.next_look = time.monotonic() + ELSEWHERE_POLL_SECONDS
            if self.store.claim_owner(self.spec.run_id) is None:
                self.job = self.resubmit()
        return False

    def result(self) -> dict[str, Any]:
        if self.job is not None:
            return dict(self.job.result())
        return {"run_id": self.spec.run_id, "status": "skipped"}
