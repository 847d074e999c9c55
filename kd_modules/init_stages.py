"""Shared pieces of RepDistiller's two-stage baselines (AB, FSP; FT's paraphraser stage is similar): the
initialisation stage as a prerequisite run of the planner, and the main stage that starts from its output."""

from __future__ import annotations

from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor

from kd_modules.base import Batch, DistillationModule, OptimConfig, TeacherConfig
from kd_modules.feature_distillation import FeatureDistillation

__all__ = ["init_stage", "TwoStageDistillation"]


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


class TwoStageDistillation(FeatureDistillation):
    """The main stage of a RepDistiller two-stage baseline (AB, FSP): the student, initialised by the method's
    initialisation stage (a prerequisite run of ``init_method``, its ``final.pth`` passed as ``student_init``), trained
    with cross-entropy.  RepDistiller zeroes the method's term in the main stage (``feat_weight`` 0 here); then the
    teacher is not run at all.  A non-zero ``feat_weight`` (or ``kd_weight``) keeps the term in the main stage.

    Args:
        student: network name.
        teacher: the frozen teacher.
        num_classes: classifier width (linked from the data).
        optim: optimiser and schedule.
        ce_weight: cross-entropy weight (1).
        kd_weight: Hinton-KD weight (0).
        temperature: KD temperature.
        feat_weight: weight of the method's loss in the main stage (RepDistiller: 0).
        init_epochs: length of the initialisation stage (RepDistiller ``--init_epochs`` 30).
        student_init: the initialisation stage's student (set by the planner; None trains from scratch).
    """

    #: The initialisation stage: its method, its name in the plan and what ``--dry-run`` says about it.
    init_method: ClassVar[str]
    init_name: ClassVar[str]
    init_description: ClassVar[str]

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        num_classes: int = 100,
        optim: OptimConfig = OptimConfig(),
        ce_weight: float = 1.0,
        kd_weight: float = 0.0,
        temperature: float = 4.0,
        feat_weight: float = 0.0,
        init_epochs: int = 30,
        student_init: str | None = None,
    ) -> None:
        # The base module starts the student from student_init; FeatureDistillation's own arguments are set here.
        DistillationModule.__init__(self, student, num_classes, teacher, optim, student_init)

    @classmethod
    def init_args_of(cls, init_args: dict[str, Any]) -> dict[str, Any]:
        """The initialisation stage's own arguments, from the main stage's."""
        return {}

    @classmethod
    def prerequisites(cls, init_args: dict[str, Any]) -> list[dict[str, Any]]:
        epochs = int(init_args.get("init_epochs", 30))
        stage_args = cls.init_args_of(init_args)
        return init_stage(cls.init_name, cls.init_method, "student_init", epochs, cls.init_description, stage_args)

    def training_losses(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        if self.feat_weight != 0 or self.kd_weight != 0:
            return super().training_losses(batch)
        logits = self.student(batch["images"])  # cross-entropy only: the teacher is not run
        return logits, {"ce": self.ce_weight * F.cross_entropy(logits, batch["labels"])}
