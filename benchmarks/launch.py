"""Launchers: the same planned runs, executed sequentially, in parallel on one machine, or as SLURM job arrays.

Every launcher writes each run's ``config.yaml`` into its store folder and starts it through the CLI contract
(``fit --config <complete yaml>``, which writes ``record.json`` and ``final.pth`` into ``run.dir``), so results
from any launcher land in the same store and the tables render from it alike.  Finished runs are skipped,
interrupted ones resume from ``last.ckpt``, a run whose dependency failed is skipped, a failed run leaves
``failed.json`` and does not stop the others.

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
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.errors import KDBenchError
from benchmarks.execute import RunOutcome, execute_config, execute_run, write_config
from benchmarks.plan import RunSpec
from benchmarks.store import RunStore
from benchmarks.tables import REPO_ROOT

__all__ = [
    "LaunchReport",
    "Launcher",
    "SequentialLauncher",
    "ParallelLauncher",
    "SubmititLauncher",
    "submitit_job",
    "visible_gpus",
]

Printer = Callable[[str], None]


def _print(line: str) -> None:
    print(line, flush=True)


@dataclass
class LaunchReport:
    """How the runs ended (``finished`` = trained now, ``skipped`` = already finished)."""

    counts: dict[str, int] = field(
        default_factory=lambda: {"finished": 0, "skipped": 0, "failed": 0, "blocked": 0, "submitted": 0}
    )
    outcomes: dict[str, RunOutcome] = field(default_factory=dict)

    def add(self, outcome: RunOutcome) -> None:
        self.outcomes[outcome.run_id] = outcome
        self.counts[outcome.status] = self.counts.get(outcome.status, 0) + 1

    def ok(self, run_id: str) -> bool:
        outcome = self.outcomes.get(run_id)
        return outcome is not None and outcome.status in ("finished", "skipped")

    def summary(self, seconds: float) -> str:
        c = self.counts
        text = f"{c['finished']} trained, {c['skipped']} already finished, {c['failed']} failed, {c['blocked']} blocked"
        if c.get("submitted"):
            text += f", {c['submitted']} submitted"
        return text + f", in {seconds:.0f}s"


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
    return f"{prefix}: FAILED ({outcome.message}); see {store.run_dir(spec.run_id)}/failed.json"


class Launcher(ABC):
    """Runs planned runs (in dependency order) into a store."""

    def __init__(self, printer: Printer = _print) -> None:
        self.printer = printer

    @abstractmethod
    def launch(self, runs: list[RunSpec], store: RunStore) -> LaunchReport:
        """Run what is runnable and not finished; report how each run ended."""

    def _unrunnable(self, spec: RunSpec, report: LaunchReport, store: RunStore) -> RunOutcome | None:
        """The outcome of a run that must not start (blocked, or a dependency did not finish), else None."""
        if spec.blocked:
            return RunOutcome(spec.run_id, "blocked", message=spec.blocked)
        failed = [d for d in spec.depends_on if d in report.outcomes and not report.ok(d)]
        if failed:
            return RunOutcome(spec.run_id, "blocked", message=f"its dependency {failed[0]} did not finish")
        if store.is_finished(spec.run_id):
            return RunOutcome(spec.run_id, "skipped")
        return None


class SequentialLauncher(Launcher):
    def launch(self, runs: list[RunSpec], store: RunStore) -> LaunchReport:
        report = LaunchReport()
        runnable = sum(1 for spec in runs if not spec.blocked)
        index = 0
        for spec in runs:
            outcome = self._unrunnable(spec, report, store)
            if outcome is None:
                outcome = execute_run(spec, store)
            report.add(outcome)
            if not spec.blocked:
                index += 1
                self.printer(f"[{index}/{runnable}] " + _describe(spec, outcome, store))
        return report


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
        if not self.gpus:
            return ["cpu"] if free["cpu"] > 0 else None
        if devices <= 1:
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
            return self._launch(runs, store, None)
        threads = max(1, (os.cpu_count() or 1) // self.jobs)
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
        with ProcessPoolExecutor(self.jobs, mp_context=context, initializer=_lane_init, initargs=(threads,)) as lanes:
            return self._launch(runs, store, lanes)

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
            return lanes.submit(_lane_run, str(config_path), str(log_path), threads)
        log = open(log_path, "ab")  # noqa: SIM115 - the child holds it; closed when the parent's copy is dropped
        try:
            return subprocess.Popen(
                [*self.command, str(config_path)],
                cwd=os.getcwd(),
                env=self._environment(claimed),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()

    @staticmethod
    def _returncode(handle: Any) -> int | None:
        """None while the run is going on, else its exit status (a lane's run: 0 when it finished)."""
        if isinstance(handle, Future):
            if not handle.done():
                return None
            try:
                return 0 if handle.result().status in ("finished", "skipped") else 1
            except Exception:  # noqa: BLE001 - a lane that died (killed, out of memory) fails only its run
                return 1
        return handle.poll()

    def _launch(self, runs: list[RunSpec], store: RunStore, lanes: ProcessPoolExecutor | None) -> LaunchReport:
        report = LaunchReport()
        self.thread_shares = {}
        free = self._capacity()
        pending = list(runs)
        planned = {s.run_id for s in runs}
        running: dict[str, tuple[Any, RunSpec, list[str], float]] = {}
        done = 0
        total = sum(1 for spec in runs if not spec.blocked)
        while pending or running:
            for spec in list(pending):
                outcome = self._unrunnable(spec, report, store)
                if outcome is not None:
                    pending.remove(spec)
                    report.add(outcome)
                    if not spec.blocked:
                        done += 1
                        self.printer(f"[{done}/{total}] " + _describe(spec, outcome, store))
                    continue
                if any(d not in report.outcomes for d in spec.depends_on if d in planned):
                    continue  # a dependency is still pending or running
                claimed = self._claim(free, spec.devices)
                if claimed is None:
                    continue
                for gpu in claimed:
                    free[gpu] -= 1
                sharing = (
                    len(running) + 1 + sum(1 for other in pending if self._ready(other, spec, report, planned, store))
                )
                handle = self._start(spec, write_config(spec, store), claimed, lanes, sharing)
                running[spec.run_id] = (handle, spec, claimed, time.perf_counter())
                self.peak_running = max(self.peak_running, len(running))
                pending.remove(spec)
            for run_id, (handle, spec, claimed, started) in list(running.items()):
                returncode = self._returncode(handle)
                if returncode is None:
                    continue
                del running[run_id]
                for gpu in claimed:
                    free[gpu] += 1
                outcome = self._outcome(spec, store, returncode, time.perf_counter() - started)
                report.add(outcome)
                done += 1
                self.printer(f"[{done}/{total}] " + _describe(spec, outcome, store))
            if running:
                time.sleep(self.poll_seconds)
        return report

    @staticmethod
    def _ready(spec: RunSpec, starting: RunSpec, report: LaunchReport, planned: set[str], store: RunStore) -> bool:
        """Whether ``spec`` (another pending run than ``starting``) would train now: unfinished, dependencies done."""
        if spec is starting or spec.blocked or store.is_finished(spec.run_id):
            return False
        return all(d in report.outcomes for d in spec.depends_on if d in planned)

    @staticmethod
    def _outcome(spec: RunSpec, store: RunStore, returncode: int, seconds: float) -> RunOutcome:
        from benchmarks.execute import failure_message

        if store.is_finished(spec.run_id):
            return RunOutcome(spec.run_id, "finished", seconds)
        message = failure_message(store, spec.run_id) or f"process exited with status {returncode}"
        return RunOutcome(spec.run_id, "failed", seconds, message)


def _lane_init(threads: int) -> None:
    """A lane's start: its share of the CPU threads, set before any run builds a thread pool.

    On Linux the lane also asks to be killed with its parent: a launcher killed half-way (SIGKILL, OOM) must not
    leave lanes finishing runs behind the back of the next launch, which resumes those runs itself.
    """
    import torch

    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, int(signal.SIGKILL))

    torch.set_num_threads(threads)
    os.environ.setdefault("WANDB_SILENT", "true")


def _lane_run(config_path: str, log_path: str, threads: int) -> RunOutcome:
    """One run in a lane with ``threads`` CPU threads, its output appended to the run's ``launcher.log``."""
    import torch

    torch.set_num_threads(threads)
    with open(log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        return execute_config(config_path)


def submitit_job(config_path: str) -> dict[str, Any]:
    """What one SLURM array task runs: the run whose config the launcher wrote (importable by the workers)."""
    return vars(execute_config(config_path))


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
        import submitit

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
        report = LaunchReport()
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
            arrays: list[tuple[list[RunSpec], list[Any]]] = []
            for devices, specs in submit.items():
                dependency = f"afterany:{':'.join(previous_arrays)}" if previous_arrays and not self.wait else None
                executor = self._executor(devices, dependency)
                paths = [str(write_config(spec, store).resolve()) for spec in specs]
                jobs = executor.map_array(submitit_job, paths)
                arrays.append((specs, jobs))
                self.printer(
                    f"submitted {len(jobs)} run(s) as array {jobs[0].job_id.split('_')[0]} ({executor.cluster})"
                )
            if not self.wait:
                previous_arrays = [jobs[0].job_id.split("_")[0] for _, jobs in arrays] or previous_arrays
                for specs, _ in arrays:
                    report.counts["submitted"] += len(specs)
                continue
            for specs, jobs in arrays:
                for spec, job in zip(specs, jobs, strict=True):
                    try:
                        outcome = RunOutcome(**job.result())
                    except Exception as error:  # noqa: BLE001 - a crashed array task is one failed run
                        outcome = RunOutcome(spec.run_id, "failed", message=f"{type(error).__name__}: {error}"[:300])
                    report.add(outcome)
                    self.printer(_describe(spec, outcome, store))
        return report
