"""What a CLI run logs to W&B so that the W&B run stands alone (used by :mod:`benchmarks.cli`).

* :func:`wandb_config` — the run's W&B config: its identity (run id, table, pair, method, trial, recipe, preset, the
  cells it serves), the complete resolved config (``trainer``, ``data``, ``model`` with its ``optim``, the seed),
  the teacher checkpoint's content digest and identity, the numerics (precision, determinism, float32 matmul
  precision, CPU threads) and the software versions.
* :func:`wandb_summary` — the run's result as summary keys when it finishes: best and last top-1/top-5 and their
  epochs, wall time, steps, epochs.
* :func:`lr_interval` — Lightning's ``LearningRateMonitor`` logs the learning rate per step when the schedule moves
  per step (``optim.unit: step``), else per epoch.
* :func:`finish_wandb_run` — writes the summary, notes the W&B run (id, URL when online, folder) in
  ``<run dir>/wandb.json`` for the report's links, and closes the run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["WANDB_RUN", "lr_interval", "wandb_config", "wandb_summary", "finish_wandb_run"]

#: Written beside ``record.json`` when the run logged to W&B: its id, URL (online), folder and mode.
WANDB_RUN = "wandb.json"


def lr_interval(config: dict[str, Any]) -> str:
    """``step`` when the learning-rate schedule moves every optimiser step (``optim.unit: step``), else ``epoch``."""
    optim = ((config.get("model") or {}).get("init_args") or {}).get("optim") or {}
    return "step" if optim.get("unit") == "step" else "epoch"


def wandb_config(info: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Everything a W&B run needs to stand alone: the run's identity and bookkeeping, the complete resolved
    config (trainer, data, model with its optimiser, seed), the teacher's content digest and the numerics."""
    import torch

    from benchmarks.plan import teacher_identity
    from benchmarks.provenance import teacher_digest
    from benchmarks.store import software_versions

    resolved = {k: v for k, v in config.items() if k not in ("run", "config")}
    teacher = ((config.get("model") or {}).get("init_args") or {}).get("teacher") or {}
    checkpoint = teacher.get("checkpoint") if isinstance(teacher, dict) else None
    trainer = resolved.get("trainer") or {}
    identity = ("run_id", "table", "pair", "method", "trial", "recipe", "preset", "cells")
    return {
        **{key: getattr(info, key) for key in identity},
        "seed": config.get("seed_everything"),
        **resolved,
        "teacher_digest": teacher_digest(str(checkpoint)) if checkpoint else None,
        "teacher_identity": teacher_identity(str(checkpoint)) if checkpoint else None,
        "numerics": {
            "precision": trainer.get("precision"),
            "deterministic": trainer.get("deterministic"),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cpu_threads": torch.get_num_threads(),
        },
        "versions": software_versions(),
    }


def wandb_summary(tracked: dict[str, float], wall_seconds: float, steps: int, epochs: int) -> dict[str, Any]:
    """The run's result as W&B summary keys: best and last top-1/top-5 (and their epochs), wall time, length."""
    keys = ("best_top1", "best_top5", "best_epoch", "last_top1", "last_top5", "last_epoch", "test_top1", "test_top5")
    return {k: tracked[k] for k in keys if k in tracked} | {
        "wall_seconds": round(wall_seconds, 3),
        "steps": steps,
        "epochs": epochs,
    }


def finish_wandb_run(
    experiment: Any,
    tracked: dict[str, float],
    wall_seconds: float,
    trainer: Any,
    run_dir: Path,
    diverged: str | None = None,
) -> None:
    """Write the summary (with the divergence of a run recorded as diverged), note the run in ``wandb.json`` and
    close it (the next in-process run starts its own)."""
    experiment.summary.update(wandb_summary(tracked, wall_seconds, trainer.global_step, trainer.current_epoch))
    if diverged:
        experiment.summary["diverged"] = diverged
    note = {"id": experiment.id, "url": experiment.url, "dir": experiment.dir, "offline": bool(experiment.offline)}
    (Path(run_dir) / WANDB_RUN).write_text(json.dumps(note))
    experiment.finish()
