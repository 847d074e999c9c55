"""Running one planned run: write its config, claim it, start (or resume) it through the CLI, report how it ended.

How a run can end (:attr:`RunOutcome.status`):

* ``finished`` — trained now, ``record.json`` written; ``skipped`` — it was finished already (by anyone);
* ``failed`` — an error; ``failed.json`` beside the run holds the message and the traceback; ``diverged`` — the
  divergence guard stopped it (a non-finite loss), also in ``failed.json``;
* ``interrupted`` — a stop signal: the run saved a resumable ``last.ckpt`` and is *not* failed;
* ``busy`` — another runner holds the run's claim (:mod:`benchmarks.store`): it trains it right now.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks import interrupts
from benchmarks.interrupts import ClaimLost, RunInterrupted
from benchmarks.plan import RunSpec
from benchmarks.store import Claim, RunStore, atomic_write_bytes, store_of

__all__ = [
    "RunOutcome",
    "execute_run",
    "execute_config",
    "quiet_lightning",
    "write_config",
    "failure_message",
    "failure_kind",
]

FAILED = "failed.json"


@dataclass
class RunOutcome:
    run_id: str
    status: str  # finished | skipped (already finished) | failed | diverged | blocked | interrupted | busy
    seconds: float = 0.0
    message: str = ""
    resumed: bool = False
    signum: int | None = None  # interrupted: the stop signal


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's per-run banners and advice so a table run prints one line per run."""
    os.environ.setdefault("WANDB_SILENT", "true")
    names = ["lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning"]
    previous = {n: logging.getLogger(n).level for n in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"lightning\..*")
        warnings.filterwarnings("ignore", message=r".*treespec.*")
        try:
            yield
        finally:
            for name, level in previous.items():
                logging.getLogger(name).setLevel(level)


class _ConfigDumper(yaml.SafeDumper):
    """PyYAML writes ``123e4567`` unquoted (a string for its YAML 1.1 reader), but jsonargparse reads such a
    scalar as the float inf: a run id made of digits and one ``e`` (about 1 in 1,000) broke its run's config."""


_NUMBER_LIKE = re.compile(r"[-+]?(\.\d+|\d+(\.\d*)?)([eE][-+]?\d+)?|[-+]?\.?(inf|nan)", re.IGNORECASE)


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "'" if _NUMBER_LIKE.fullmatch(value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ConfigDumper.add_representer(str, _represent_str)


def dump_config(config: dict[str, Any], sort_keys: bool = False) -> str:
    """A run config as YAML that reads back with every string a string (number-like strings quoted)."""
    return yaml.dump(config, Dumper=_ConfigDumper, sort_keys=sort_keys)


def write_config(spec: RunSpec, store: RunStore) -> Path:
    """``<run dir>/config.yaml``, replaced atomically (another runner may be reading it right now)."""
    run_dir = store.run_dir(spec.run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    text = dump_config(spec.config).encode()
    if not path.is_file() or path.read_bytes() != text:
        atomic_write_bytes(path, text)
    return path


def execute_run(spec: RunSpec, store: RunStore, note: str = "") -> RunOutcome:
    """Run ``spec`` in this process unless its record exists; resume from ``last.ckpt`` when there is one.

    A failure is written to ``failed.json`` beside the run (the table shows the cell as failed) and does not
    stop the caller: other runs, and everything already finished, are kept.
    """
    if store.is_finished(spec.run_id):
        return RunOutcome(spec.run_id, "skipped")
    return execute_config(write_config(spec, store), note=note)


def _write_failure(path: Path, message: str, kind: str, trace: str | None = None) -> None:
    data: dict[str, Any] = {"error": message, "kind": kind}
    if trace:
        data["traceback"] = trace
    atomic_write_bytes(path, json.dumps(data, indent=2).encode())


def _usable_checkpoint(run_dir: Path) -> Path | None:
    """``last.ckpt`` when it is readable; a truncated or corrupt one is moved aside (reported) and the run restarts."""
    from benchmarks.resume import checkpoint_problem

    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return None
    problem = checkpoint_problem(last)
    if problem is None:
        return last
    aside = last.with_name(f"last.ckpt.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    os.replace(last, aside)
    print(f"kdbench: {problem}: moved to {aside.name}; the run starts over", flush=True)
    return None


def execute_config(
    config_path: str | Path,
    note: str = "",
    stop_signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM),
    checkpoint_signals: tuple[int, ...] = (),
) -> RunOutcome:
    """Run the config written at ``<run dir>/config.yaml`` (how every launcher starts runs).

    The run's folder is the config's own folder (its store is two levels up); its run id is ``run.run_id`` in the
    config.  The run is claimed first: when another runner holds the claim the outcome is ``busy`` and nothing is
    touched.  Stop signals (default SIGINT and SIGTERM) interrupt it at the next optimiser step with a resumable
    checkpoint (outcome ``interrupted``); ``checkpoint_signals`` only save one.
    """
    from benchmarks.cli import KDBenchCLI

    config_path = Path(config_path)
    run_dir = config_path.parent
    run_id = str((yaml.safe_load(config_path.read_text()) or {}).get("run", {}).get("run_id") or run_dir.name)
    store = store_of(run_dir)
    if store.is_finished(run_id):
        return RunOutcome(run_id, "skipped")
    held = store.claim(run_id, note=note or f"pid {os.getpid()}")
    if not isinstance(held, Claim):
        return RunOutcome(run_id, "busy", message=held.describe())
    claim = held.start_heartbeat()
    outcome = RunOutcome(run_id, "failed", message="did not start")
    started = time.perf_counter()
    resume_from: Path | None = None
    failed_marker = run_dir / FAILED
    try:
        store.sweep_temporaries(run_id)
        store.heal(run_id)
        if store.is_finished(run_id):  # finished by the runner whose claim we followed
            outcome = RunOutcome(run_id, "skipped")
            return outcome
        if interrupts.requested() is not None:  # the launch stopped while this run was being handed out
            signum = interrupts.requested()
            outcome = RunOutcome(run_id, "interrupted", 0.0, "interrupted before it started", signum=signum)
            return outcome
        resume_from = _usable_checkpoint(run_dir)
        failed_marker.unlink(missing_ok=True)
        args = ["fit", "--config", str(config_path)] + (["--ckpt_path", str(resume_from)] if resume_from else [])
        with interrupts.installed(stop=stop_signals, checkpoint=checkpoint_signals), quiet_lightning():
            KDBenchCLI(args=args, claim=claim)
        seconds = time.perf_counter() - started
        if not store.is_finished(run_id):
            message = "fit ended without a result record"
            _write_failure(failed_marker, message, "failed")
            outcome = RunOutcome(run_id, "failed", seconds, message)
        else:
            outcome = RunOutcome(run_id, "finished", seconds, resumed=resume_from is not None)
    except RunInterrupted as stop:
        outcome = RunOutcome(
            run_id, "interrupted", time.perf_counter() - started, str(stop), resume_from is not None, stop.signum
        )
    except ClaimLost as lost:
        outcome = RunOutcome(run_id, "busy", time.perf_counter() - started, str(lost))
    except BaseException as error:  # noqa: BLE001 - one run's failure must not lose the others
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        seconds = time.perf_counter() - started
        if isinstance(error, (SIGTERMException, KeyboardInterrupt)):
            signum = signal.SIGTERM if isinstance(error, SIGTERMException) else signal.SIGINT
            message = f"interrupted by {interrupts.signal_name(signum)}"
            outcome = RunOutcome(run_id, "interrupted", seconds, message, resume_from is not None, signum)
        else:
            from benchmarks.errors import find_cause
            from kd_modules.base import TrainingDivergedError

            kind = "diverged" if find_cause(error, TrainingDivergedError) else "failed"
            cause = find_cause(error) or error
            message = (f"{type(cause).__name__}: {cause}".strip().splitlines() or [type(cause).__name__])[0]
            _write_failure(failed_marker, message, kind, traceback.format_exc())
            outcome = RunOutcome(run_id, kind, seconds, message, resume_from is not None)
    finally:
        from benchmarks.cli import close_wandb

        close_wandb(outcome.status)
        claim.release(outcome.status)
    return outcome


def _read_failure(path: Path) -> dict[str, Any] | None:
    """``failed.json`` as a dict (empty when it holds no object); None when it cannot be read."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else {}


def failure_message(store: RunStore, run_id: str) -> str | None:
    path = store.run_dir(run_id) / FAILED
    if not path.is_file():
        return None
    data = _read_failure(path)
    return f"failed ({path} is unreadable)" if data is None else str(data.get("error", "failed"))


def failure_kind(store: RunStore, run_id: str) -> str:
    """``diverged`` or ``failed`` (from ``failed.json``)."""
    return str((_read_failure(store.run_dir(run_id) / FAILED) or {}).get("kind", "failed"))


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.execute <run dir>/config.yaml``: run one planned run; exit 0 when it finished."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.execute", description=main.__doc__)
    parser.add_argument("config", help="the config.yaml the runner wrote into the run's folder")
    args = parser.parse_args(argv)
    outcome = execute_config(args.config)
    print(json.dumps(vars(outcome)), file=sys.stdout, flush=True)
    if outcome.status == "interrupted" and outcome.signum:
        return interrupts.exit_status(outcome.signum)
    return {"finished": 0, "skipped": 0, "busy": 75}.get(outcome.status, 1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
