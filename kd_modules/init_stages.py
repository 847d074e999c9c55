"""Shared pieces of RepDistiller's two-stage baselines (AB, FSP; FT's paraphraser stage is similar): the
initialisation stage as a prerequisite run of the planner, and the cross-entropy-only main stage."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from kd_modules.base import Batch, DistillationModule

__all__ = ["init_stage", "cross_entropy_step"]


def init_stage(
    name: str,
    method: str,
    pass_as: str,
    epochs: int,
    description: str,
    init_args: dict[str, Any] | None = None,
    lr: float | None = None,
    output: str = "final.pth",
) -> list[dict[str, Any]]:
    """The prerequisite declaration of an initialisation stage: ``epochs`` epochs at a constant learning rate
    (RepDistiller's ``init``: a fresh SGD without decay, ``--init_epochs`` 30), the recipe's rate unless ``lr``.
    No stage for ``epochs <= 0``."""
    if epochs <= 0:
        return []
    overrides: dict[str, Any] = {"trainer.max_epochs": epochs, "model.init_args.optim.schedule": "constant"}
    if lr is not None:
        overrides["model.init_args.optim.lr"] = float(lr)
    return [
        {
            "name": name,
            "method": method,
            "pass_as": pass_as,
            "output": output,
            "init_args": dict(init_args or {}),
            "overrides": overrides,
            "description": f"{description}, {epochs} epochs",
        }
    ]


def cross_entropy_step(module: DistillationModule, batch: Batch, weight: float) -> tuple[Tensor, dict[str, Tensor]]:
    """RepDistiller's main stage of AB and FSP (their distillation term is zeroed there): cross-entropy only, so the
    teacher is not run."""
    logits = module.student(batch["images"])
    return logits, {"ce": weight * F.cross_entropy(logits, batch["labels"])}
