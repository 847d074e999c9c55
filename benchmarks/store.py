"""The result store: one folder per run, one ``record.json`` per finished run, a claim before a run is trained.

Layout (``results/`` by default)::

    results/runs/<run_id>/config.yaml     the complete config the run was started with
    results/runs/<run_id>/claims/         who trains the run: <generation>.json (+ <generation>.released)
    results/runs/<run_id>/checkpoints/    last.ckpt (resume) and best.ckpt
    results/runs/<run_id>/final.pth       the final network (teachers are read from here)
    results/runs/<run_id>/record.json     written once, when fit finishes: the run's result
    results/runs/<run_id>/csv, wandb/     logs
    results/claims.log                    one JSON line per claim, take-over, release and lost claim

**Records.**  A run is finished when its ``record.json`` reads as a JSON object with metrics.  A record that does
not (truncated by a crash of an older version, edited by hand, written by a zero-length run) is reported with its
path, moved aside as ``record.json.<reason>-<time>`` (never deleted) and the run is trained again.

**Claims.**  Any number of runners may share a store: local lanes, several processes, SLURM array tasks, several
machines on one shared filesystem.  Before training a run, a runner creates the next *generation* of the run's
claim, ``claims/<n>.json``, with ``O_CREAT | O_EXCL``: of several runners that try the same generation exactly one
succeeds, on a local disk as on NFS.  The file names the owner (host, boot id, pid and the pid's start time) and
its modification time is the owner's heartbeat, refreshed by a thread while the run trains.  Generation ``n`` is

* *released* when ``claims/<n>.released`` exists (the run finished, failed or was interrupted cleanly);
* *stale* when its owner is a dead process on this machine (or a pid now used by another process), or when its
  heartbeat is older than :data:`CLAIM_TIMEOUT` seconds (a runner on another machine that died or hangs);
* *live* otherwise: another runner trains the run, and this one moves on and comes back to it later.

Taking over a stale claim is the same exclusive create of generation ``n + 1``, so it is race-free too: two
runners that both find generation 3 stale both try to create ``4.json`` and one of them wins.  Generation numbers
are never reused.  An owner whose heartbeat thread finds a higher generation than its own has been taken over
(it looked dead to someone); it stops without writing a record (:class:`benchmarks.interrupts.ClaimLost`).

Every claim, take-over, release and lost claim is appended to ``claims.log`` as one JSON line (one ``write`` of
less than a page with ``O_APPEND``), so a test or an operator can check that each run was trained by one runner at
a time.  Tables are rendered from the records alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, BinaryIO

from benchmarks.provenance import git

__all__ = [
    "RunStore",
    "SingleRunStore",
    "store_of",
    "Claim",
    "ClaimOwner",
    "write_record",
    "read_record",
    "record_problem",
    "software_versions",
    "atomic_file",
    "atomic_write_bytes",
    "CLAIM_TIMEOUT",
    "HEARTBEAT_SECONDS",
]

RECORD = "record.json"
CLAIMS = "claims"
CLAIM_LOG = "claims.log"
#: Seconds without a heartbeat after which a claim counts as abandoned (env ``KDBENCH_CLAIM_TIMEOUT``).  Generous
#: on purpose: NFS caches file attributes for up to a minute.
CLAIM_TIMEOUT = float(os.environ.get("KDBENCH_CLAIM_TIMEOUT", "180"))
#: Seconds between two heartbeats of a claim's owner (env ``KDBENCH_HEARTBEAT_SECONDS``).
HEARTBEAT_SECONDS = float(os.environ.get("KDBENCH_HEARTBEAT_SECONDS", "15"))


# ---------------------------------------------------------------------------------------------- atomic files
@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """A file to write ``path`` through, so that readers see the old content or the new one, never a part: it is
    a ``<name>.tmp-<pid>-<hex>`` file beside ``path``, renamed into place once written (a kill mid-write leaves at
    most that file behind; :meth:`RunStore.sweep_temporaries` removes it)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # Fault injection for the chaos test: KDBENCH_CHAOS_WRITE_DELAY seconds between writing the temporary file
        # and renaming it into place, so that a randomly timed kill can land inside the write.
        if os.environ.get("KDBENCH_CHAOS_WRITE_DELAY"):
            time.sleep(float(os.environ["KDBENCH_CHAOS_WRITE_DELAY"]))
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``path`` atomically (:func:`atomic_file`)."""
    with atomic_file(path) as handle:
        handle.write(data)
    return Path(path)


# ---------------------------------------------------------------------------------------------- versions
def software_versions() -> dict[str, str]:
    import lightning
    import torch
    import torchvision

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightning": lightning.__version__,
        "cuda": str(torch.version.cuda),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
    }
    sha = git("rev-parse", "--short", "HEAD")
    if sha is not None:
        versions["kdbench"] = sha.stdout.decode().strip()
    return versions


# ----------------------------------------------------------------------------------------------- records
def write_record(
    run_dir: str | Path,
    *,
    run_id: str | None,
    info: Any,
    config: str,
    tracked: dict[str, float],
    epochs: int,
    steps: int,
    fit_seconds: float,
    fast_dev_run: bool,
    limited: bool,
    resumes: int = 0,
    provenance: dict[str, Any] | None = None,
    diverged: str | None = None,
    **extra: Any,
) -> Path:
    """Write ``record.json`` atomically (a crash mid-write never leaves a half record that looks finished).

    ``resumes`` counts how often the run was resumed from a checkpoint; ``provenance`` says what it was made from
    (:func:`benchmarks.provenance.provenance`); ``diverged``: the divergence that ended a run recorded under
    ``run.on_divergence: record`` (smoke runs); further keyword arguments are stored as they are.
    """
    import torch

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "run_id": run_id,
        "info": asdict(info) if is_dataclass(info) else dict(info),
        "metrics": dict(tracked),
        "epochs": epochs,
        "steps": steps,
        "wall_seconds": round(fit_seconds, 3),
        "cpu_threads": torch.get_num_threads(),  # wall_seconds on a CPU depends on it (the launcher shares the cores)
        "smoke": bool(fast_dev_run or limited),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": software_versions(),
        "config": config,
        "resumes": int(resumes),
        "provenance": dict(provenance or {}),
        **extra,
    }
    if diverged:
        record["diverged"] = diverged
    return atomic_write_bytes(run_dir / RECORD, json.dumps(record, indent=2, sort_keys=True).encode())


class UnreadableRecord(ValueError):
    """A ``record.json`` that exists but is not a finished run's record."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def record_problem(record: Any) -> str | None:
    """Why a parsed record is not a finished run's record, or None."""
    if not isinstance(record, dict):
        return f"holds a JSON {type(record).__name__}, not an object"
    metrics = record.get("metrics")
    if record.get("diverged") and isinstance(metrics, dict):
        return None  # recorded as diverged (run.on_divergence: record), perhaps before its first evaluation
    if not isinstance(metrics, dict) or not metrics:
        return "has no metrics (the run never evaluated)"
    return None


def read_record(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's record; None when there is none; :class:`UnreadableRecord` when it is not a finished record."""
    path = Path(run_dir) / RECORD
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        # cut short: the parser ran out of text (inside a string it reports where that string began)
        cut = isinstance(error, json.JSONDecodeError) and (
            error.pos >= len(text) - 1 or error.msg.startswith("Unterminated string")
        )
        kind = "truncated" if text and cut else ""
        raise UnreadableRecord(path, f"unreadable{' (' + kind + ')' if kind else ''}: {error}") from None
    problem = record_problem(record)
    if problem:
        raise UnreadableRecord(path, problem)
    return record


# ------------------------------------------------------------------------------------------------- claims
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


HOST = socket.gethostname()
BOOT_ID = _boot_id()
#: What a claim file says about its owner (the fields of :class:`ClaimOwner` written at claim time).
OWNER_FIELDS = ("host", "boot_id", "pid", "pid_start", "token", "claimed_at", "note")


def _process_stat(pid: int, field: int) -> str | None:
    """A field of ``/proc/<pid>/stat`` (Linux) counted after the command name: 0 the state (``Z``: a zombie),
    19 the start time in clock ticks since boot (to tell a pid from its reuse)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[field]
    except (OSError, IndexError):
        return None


def process_alive(pid: int, start: str | None = None) -> bool:
    """Whether ``pid`` is a running process on this machine (zombies are dead; with ``start``, the same process)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists: another user's process
    if _process_stat(pid, 0) == "Z":
        return False
    return start is None or _process_stat(pid, 19) in (None, start)


@dataclass
class ClaimOwner:
    """A claim generation as read from its file."""

    run_id: str
    generation: int
    path: Path
    host: str = "?"
    boot_id: str = ""
    pid: int = -1
    pid_start: str | None = None
    token: str = ""
    claimed_at: float = 0.0
    note: str = ""
    heartbeat: float = 0.0
    released: bool = False

    @property
    def who(self) -> str:
        return f"{self.host}:{self.pid}"

    def describe(self) -> str:
        since = time.strftime("%H:%M:%S", time.localtime(self.claimed_at)) if self.claimed_at else "?"
        return f"claimed by {self.who} since {since}"

    def stale_reason(self, timeout: float = CLAIM_TIMEOUT, now: float | None = None) -> str | None:
        """Why this (unreleased) claim is abandoned, or None while its owner lives."""
        now = time.time() if now is None else now
        if self.host == HOST and (not self.boot_id or self.boot_id == BOOT_ID):
            if self.pid > 0 and not process_alive(self.pid, self.pid_start):
                return f"its owner {self.who} is dead"
        elif self.host == HOST and self.boot_id != BOOT_ID:
            return f"its owner {self.who} ran before this machine rebooted"
        age = now - self.heartbeat
        if age > timeout:
            return f"its owner {self.who} sent no heartbeat for {age:.0f}s"
        return None


class Claim:
    """This process's claim on a run: keep it alive while training, release it when done."""

    def __init__(self, store: RunStore, owner: ClaimOwner, taken_from: ClaimOwner | None = None) -> None:
        self.store = store
        self.owner = owner
        self.taken_from = taken_from
        self.lost = False  # another runner took the run over (see :meth:`check`)
        self._released = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def generation(self) -> int:
        return self.owner.generation

    def check(self) -> bool:
        """Whether the claim is still ours (no later generation exists); marks it lost otherwise."""
        if not self.lost and self.store._generations(self.owner.run_id)[-1:] != [self.generation]:
            self.lost = True
            self.store._log("lost", self.owner)
        return not self.lost

    def beat(self) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.owner.path)
        self.check()

    def start_heartbeat(self, interval: float = HEARTBEAT_SECONDS) -> Claim:
        if self._thread is None:
            self._thread = threading.Thread(target=self._heartbeat, args=(interval,), daemon=True, name="kdbench-claim")
            self._thread.start()
        return self

    def _heartbeat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.beat()

    def release(self, outcome: str) -> None:
        """Mark the generation released (``outcome``: finished, failed, interrupted ...); idempotent."""
        if self._released:
            return
        self._released = True
        self._stop.set()
        if self.lost:
            return  # another runner owns the run now: its claim must stay as it is
        marker = self.owner.path.with_suffix(".released")
        with contextlib.suppress(OSError):
            atomic_write_bytes(marker, json.dumps({"outcome": outcome, "at": time.time()}).encode())
        self.store._log("release", self.owner, outcome=outcome)


# --------------------------------------------------------------------------------------------------- store
class RunStore:
    """A folder of runs addressed by run id."""

    def __init__(self, root: str | Path = "results") -> None:
        self.root = Path(root)
        self._reported: set[Path] = set()

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    # ----------------------------------------------------------------------------------------- records
    def _report(self, message: str, path: Path) -> None:
        if path not in self._reported:
            self._reported.add(path)
            print(f"kdbench: {message}", file=sys.stderr, flush=True)

    def record(self, run_id: str) -> dict[str, Any] | None:
        """The run's record, or None (missing, or unreadable: then reported once with its path)."""
        try:
            return read_record(self.run_dir(run_id))
        except UnreadableRecord as problem:
            self._report(f"record {problem.path} {problem.reason}; the run counts as not finished", problem.path)
            return None

    def is_finished(self, run_id: str) -> bool:
        return self.record(run_id) is not None

    def heal(self, run_id: str) -> str | None:
        """Move an unreadable or metric-less ``record.json`` aside (never deleted) so the run is redone.

        Returns the line that says so, or None when there was nothing to heal.
        """
        try:
            read_record(self.run_dir(run_id))
            return None
        except UnreadableRecord as problem:
            tag = "unreadable" if problem.reason.startswith("unreadable") else "incomplete"
            aside = problem.path.with_name(f"{RECORD}.{tag}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
            try:
                os.replace(problem.path, aside)
            except FileNotFoundError:
                return None  # another runner moved it first
            message = f"record {problem.path} {problem.reason}: moved to {aside.name}; the run is trained again"
            self._reported.add(problem.path)
            print(f"kdbench: {message}", file=sys.stderr, flush=True)
            return message

    def sweep_temporaries(self, run_id: str) -> int:
        """Remove the temporary files that writers killed mid-write left in the run's folder (``*.tmp`` and
        ``*.tmp-<pid>...`` of a dead pid); call it holding the run's claim.  Returns how many were removed."""
        import re

        removed = 0
        pattern = re.compile(r"\.tmp(?:-(\d+))?(?:-[0-9a-f]+)?$")
        for path in self.run_dir(run_id).rglob("*.tmp*"):  # nothing when the folder does not exist
            match = pattern.search(path.name)
            if match is None or not path.is_file():
                continue
            pid = match.group(1)
            if pid is not None and int(pid) != os.getpid() and process_alive(int(pid)):
                continue
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
        return removed

    def last_checkpoint(self, run_id: str) -> Path | None:
        path = self.run_dir(run_id) / "checkpoints" / "last.ckpt"
        return path if path.is_file() else None

    def final_weights(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "final.pth"

    def records(self) -> Iterator[dict[str, Any]]:
        for run_dir in sorted((self.root / "runs").glob("*")):  # nothing when there is no runs folder
            record = self.record(run_dir.name)
            if record is not None:
                yield record

    # ------------------------------------------------------------------------------------------ claims
    def _claims_dir(self, run_id: str) -> Path:
        return self.run_dir(run_id) / CLAIMS

    def _generations(self, run_id: str) -> list[int]:
        try:
            names = os.listdir(self._claims_dir(run_id))
        except FileNotFoundError:
            return []
        return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())

    def _read_claim(self, run_id: str, generation: int) -> ClaimOwner:
        path = self._claims_dir(run_id) / f"{generation:06d}.json"
        owner = ClaimOwner(run_id, generation, path)
        try:
            owner.heartbeat = path.stat().st_mtime
            data = json.loads(path.read_text() or "{}")
        except FileNotFoundError:
            owner.released = True
            return owner
        except (OSError, ValueError):
            data = {}  # being written right now (or its writer died at once): judged by its heartbeat alone
        for key in data.keys() & set(OWNER_FIELDS):
            setattr(owner, key, data[key])
        owner.released = path.with_suffix(".released").exists()
        return owner

    def claim_owner(self, run_id: str, timeout: float | None = None) -> ClaimOwner | None:
        """The live owner of the run's current claim, or None when anyone may claim it."""
        generations = self._generations(run_id)
        if not generations:
            return None
        owner = self._read_claim(run_id, generations[-1])
        if owner.released or owner.stale_reason(CLAIM_TIMEOUT if timeout is None else timeout) is not None:
            return None
        return owner

    def claim(self, run_id: str, note: str = "", timeout: float | None = None) -> Claim | ClaimOwner:
        """Claim the run for this process: a :class:`Claim` (call ``start_heartbeat``), or the live
        :class:`ClaimOwner` that holds it."""
        timeout = CLAIM_TIMEOUT if timeout is None else timeout
        folder = self._claims_dir(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            generations = self._generations(run_id)
            previous: ClaimOwner | None = None
            reason = None
            if generations:
                previous = self._read_claim(run_id, generations[-1])
                if not previous.released:
                    reason = previous.stale_reason(timeout)
                    if reason is None:
                        return previous
            generation = generations[-1] + 1 if generations else 1
            path = folder / f"{generation:06d}.json"
            mine = ClaimOwner(
                run_id,
                generation,
                path,
                host=HOST,
                boot_id=BOOT_ID,
                pid=os.getpid(),
                pid_start=_process_stat(os.getpid(), 19),
                token=uuid.uuid4().hex,
                claimed_at=time.time(),
                note=note,
            )
            # Written aside, then hard-linked into place: the link appears with its content (a reader never sees
            # a half-written claim) and fails when another runner created this generation first.
            aside = folder / f".{generation:06d}.{mine.token}.tmp"
            aside.write_text(json.dumps({k: getattr(mine, k) for k in OWNER_FIELDS}))
            try:
                os.link(aside, path)
            except FileExistsError:
                continue  # look again
            finally:
                aside.unlink()
            mine.heartbeat = time.time()
            if reason is not None:
                self._log("takeover", mine, previous=previous, reason=reason)
                return Claim(self, mine, previous)
            self._log("claim", mine)
            return Claim(self, mine)
        raise RuntimeError(f"could not claim run {run_id}: its claims folder {folder} keeps changing")

    def _log(self, event: str, owner: ClaimOwner, previous: ClaimOwner | None = None, **fields: Any) -> None:
        entry: dict[str, Any] = {
            "t": time.time(),
            "event": event,
            "run": owner.run_id,
            "gen": owner.generation,
            "host": owner.host,
            "pid": owner.pid,
            "token": owner.token,
            **fields,
        }
        if previous is not None:
            entry["previous"] = {"gen": previous.generation, "host": previous.host, "pid": previous.pid}
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        with contextlib.suppress(OSError):
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / CLAIM_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    def claim_log(self) -> list[dict[str, Any]]:
        """Every entry of ``claims.log`` in order (lines a crash cut short are skipped)."""
        path = self.root / CLAIM_LOG
        if not path.is_file():
            return []
        entries = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
        return entries


class SingleRunStore(RunStore):
    """A run folder outside any store (``python -m benchmarks.execute /somewhere/config.yaml``): its claims and
    claim log live in the folder itself (it is the store's root)."""

    def run_dir(self, run_id: str) -> Path:
        return self.root


def store_of(run_dir: str | Path) -> RunStore:
    """The store a run folder belongs to (``<store>/runs/<run id>``), else a :class:`SingleRunStore`."""
    run_dir = Path(run_dir)
    return RunStore(run_dir.parent.parent) if run_dir.parent.name == "runs" else SingleRunStore(run_dir)
