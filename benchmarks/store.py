"""The result store: one folder per run, one ``record.json`` per finished run.

Layout (``results/`` by default)::

    results/runs/<run_id>/config.yaml     the complete config the run was started with
    results/runs/<run_id>/checkpoints/    last.ckpt (resume) and best.ckpt
    results/runs/<run_id>/final.pth       the final network (teachers are read from here)
    results/runs/<run_id>/record.json     written once, when fit finishes: the run's result
    results/runs/<run_id>/csv, wandb/     logs

Runs from any launcher (sequential, parallel, SLURM) write only into their own folder, so the store needs no
locking; tables are rendered from the records alone.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

__all__ = ["RunStore", "write_record", "read_record", "software_versions"]

RECORD = "record.json"


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
    try:
        root = Path(__file__).resolve().parent.parent
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if sha.returncode == 0:
            versions["kdbench"] = sha.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return versions


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


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
    diverged: str | None = None,
) -> Path:
    """Write ``record.json`` atomically (a crash mid-write never leaves a half record that looks finished).

    ``diverged``: the divergence that ended a run recorded under ``run.on_divergence: record`` (smoke runs).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "run_id": run_id,
        "info": asdict(info) if is_dataclass(info) else dict(info),
        "metrics": dict(tracked),
        "epochs": epochs,
        "steps": steps,
        "wall_seconds": round(fit_seconds, 3),
        "cpu_threads": _torch_threads(),  # wall_seconds on a CPU depends on it (the launcher shares the cores)
        "smoke": bool(fast_dev_run or limited),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": software_versions(),
        "config": config,
    }
    if diverged:
        record["diverged"] = diverged
    tmp = run_dir / (RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    tmp.replace(run_dir / RECORD)
    return run_dir / RECORD


def read_record(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / RECORD
    if not path.is_file():
        return None
    return json.loads(path.read_text())


class RunStore:
    """A folder of runs addressed by run id."""

    def __init__(self, root: str | Path = "results") -> None:
        self.root = Path(root)

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def record(self, run_id: str) -> dict[str, Any] | None:
        return read_record(self.run_dir(run_id))

    def is_finished(self, run_id: str) -> bool:
        return (self.run_dir(run_id) / RECORD).is_file()

    def last_checkpoint(self, run_id: str) -> Path | None:
        path = self.run_dir(run_id) / "checkpoints" / "last.ckpt"
        return path if path.is_file() else None

    def final_weights(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "final.pth"

    def records(self) -> Iterator[dict[str, Any]]:
        runs = self.root / "runs"
        if not runs.is_dir():
            return
        for run_dir in sorted(runs.iterdir()):
            record = read_record(run_dir)
            if record is not None:
                yield record
