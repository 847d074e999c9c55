"""Running one planned run: write its config, start (or resume) it through the CLI, report how it ended."""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks.plan import RunSpec
from benchmarks.store import RunStore

__all__ = ["RunOutcome", "execute_run", "quiet_lightning"]

FAILED = "failed.json"


@dataclass
class RunOutcome:
    run_id: str
    status: str  # "finished" | "skipped" (already finished) | "failed" | "blocked"
    seconds: float = 0.0
    message: str = ""
    resumed: bool = False


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


def write_config(spec: RunSpec, store: RunStore) -> Path:
    run_dir = store.run_dir(spec.run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(spec.config, sort_keys=False))
    return path


def cli_args(config_path: Path, resume_from: Path | None) -> list[str]:
    args = ["fit", "--config", str(config_path)]
    if resume_from is not None:
        args += ["--ckpt_path", str(resume_from)]
    return args


def execute_run(spec: RunSpec, store: RunStore) -> RunOutcome:
    """Run ``spec`` in this process unless its record exists; resume from ``last.ckpt`` when there is one.

    A failure is written to ``failed.json`` beside the run (the table shows the cell as failed) and does not
    stop the caller: other runs, and everything already finished, are kept.
    """
    from benchmarks.cli import KDBenchCLI

    if store.is_finished(spec.run_id):
        return RunOutcome(spec.run_id, "skipped")
    config_path = write_config(spec, store)
    resume_from = store.last_checkpoint(spec.run_id)
    failed_marker = store.run_dir(spec.run_id) / FAILED
    failed_marker.unlink(missing_ok=True)
    started = time.perf_counter()
    try:
        with quiet_lightning():
            KDBenchCLI(args=cli_args(config_path, resume_from))
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # noqa: BLE001 - one run's failure must not lose the others
        message = f"{type(error).__name__}: {error}".strip().splitlines()[0]
        failed_marker.write_text(json.dumps({"error": message, "traceback": traceback.format_exc()}, indent=2))
        return RunOutcome(spec.run_id, "failed", time.perf_counter() - started, message, resume_from is not None)
    seconds = time.perf_counter() - started
    if not store.is_finished(spec.run_id):
        return RunOutcome(spec.run_id, "failed", seconds, "fit ended without a result record (interrupted?)")
    return RunOutcome(spec.run_id, "finished", seconds, resumed=resume_from is not None)


def failure_message(store: RunStore, run_id: str) -> str | None:
    path = store.run_dir(run_id) / FAILED
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return str(data.get("error", "failed"))
