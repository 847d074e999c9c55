"""FSP: Yim et al., "A Gift from Knowledge Distillation" (CVPR 2017), two-stage as RepDistiller runs it
(``--distill fsp``, ``helper/pretrain.py::init``; spec methods-baselines §12).

Stage 1 (:class:`FSPInit`, a prerequisite run of the planner): the student's layers (all but its classifier) are
trained on the FSP loss alone, 30 epochs at a constant learning rate.  Stage 2 (:class:`FSP`): cross-entropy from
stage 1's weights (RepDistiller zeroes the FSP term in the main stage).  FSP compares flow matrices channel by
channel, so it needs equal channel counts at the stem and every stage: other pairs are "n/a" in the papers, and the
planner shows them as not runnable with the reason.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from kd_modules.base import Batch, DistillationModule, OptimConfig, TeacherConfig
from kd_modules.errors import MethodConfigError
from kd_modules.init_stages import TwoStageDistillation
from kd_modules.losses.fsp import fsp_loss
from models import FeatureOutput, KDNet, create_model

__all__ = ["FSP", "FSPInit", "fsp_channel_problem"]


def _channels(network: KDNet) -> list[int]:
    return [network.feature_shapes()["stem"].chw[0]] + [s.chw[0] for s in network.stage_shapes]


def fsp_channel_problem(student: KDNet, teacher: KDNet, student_name: str, teacher_name: str) -> str | None:
    """Why FSP is undefined for this pair (RepDistiller raises the same), or None."""
    s, t = _channels(student), _channels(teacher)
    if s != t:
        return (
            f"FSP needs equal channel counts at the stem and every stage (RepDistiller raises otherwise; the papers "
            f"print n/a): {student_name} has {s}, {teacher_name} has {t}"
        )
    return None


def _features(features: FeatureOutput) -> list[Tensor]:
    """RepDistiller ``feat[:-1]``: the stem and every stage output (post-activation)."""
    return [features.stem, *features.stages_post]


class FSPInit(DistillationModule):
    """FSP's initialisation stage: the student's layers trained on the FSP loss alone (RepDistiller ``init``; the
    classifier is not trained).  Run it as the prerequisite stage of :class:`FSP`; its ``final.pth`` starts the main
    stage.

    Args:
        student: network name.
        teacher: the frozen teacher (equal channel counts at the stem and every stage).
        num_classes: classifier width (linked from the data).
        optim: optimiser and schedule (RepDistiller: constant learning rate).
    """

    requires_teacher = True
    teacher: KDNet  # loaded by the base module (requires_teacher)

    def __init__(
        self, student: str, teacher: TeacherConfig, num_classes: int = 100, optim: OptimConfig = OptimConfig()
    ) -> None:
        super().__init__(student=student, num_classes=num_classes, teacher=teacher, optim=optim)
        problem = fsp_channel_problem(self.student, self.teacher, student, teacher.arch)
        if problem:
            raise MethodConfigError(problem)
        self.student.classifier.requires_grad_(False)

    def training_losses(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        images = batch["images"]
        teacher, student = self.teacher_and_student(images)
        return student.logits, {"fsp": fsp_loss(_features(student), _features(teacher))}


class FSP(TwoStageDistillation):
    """FSP's main stage (:class:`kd_modules.init_stages.TwoStageDistillation`): the student, initialised by
    :class:`FSPInit`, trained with cross-entropy (RepDistiller ``-r 1 -a 0 -b 50`` with the FSP term zeroed in the
    main stage; a non-zero ``feat_weight`` keeps the FSP loss in the main stage).

    Args:
        student: network name.
        teacher: the frozen teacher (equal channel counts at the stem and every stage).
    """

    init_method, init_name, init_description = "FSPInit", "fsp_init", "FSP initialisation: student layers on FSP"

    def __init__(self, student: str, teacher: TeacherConfig, **kwargs: Any) -> None:
        super().__init__(student, teacher, **kwargs)
        problem = fsp_channel_problem(self.student, self.teacher, student, teacher.arch)
        if problem:
            raise MethodConfigError(problem)

    @classmethod
    def pair_problem(cls, student: str, teacher: str, init_args: dict[str, Any]) -> str | None:
        """Planner hook: FSP is undefined for pairs whose channel counts differ."""
        with torch.device("meta"):
            s, t = create_model(student, 100), create_model(teacher, 100)
        return fsp_channel_problem(s, t, student, teacher)

    def feature_losses(self, student: FeatureOutput, teacher: FeatureOutput, batch: Batch) -> dict[str, Tensor]:
        return {"fsp": fsp_loss(_features(student), _features(teacher))} if self.feat_weight != 0 else {}
