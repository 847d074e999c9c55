"""AB: Heo et al., "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons" (AAAI 2019),
two-stage as RepDistiller runs it (``--distill abound``, ``helper/pretrain.py::init``; spec methods-baselines §10).

Stage 1 (:class:`ABInit`, a prerequisite run of the planner): the student's layers (all but its classifier) and the
connectors are trained on the AB loss alone, 30 epochs at a constant learning rate.  Stage 2 (:class:`AB`): the
student starts from stage 1's weights and is trained with cross-entropy (RepDistiller sets the AB term of the main
stage to 0, so ``-b`` is a no-op there).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from kd_modules.base import Batch, DistillationModule, OptimConfig, TeacherConfig
from kd_modules.connectors import ConvReg
from kd_modules.init_stages import TwoStageDistillation
from kd_modules.losses.ab import ab_loss
from models import FeatureOutput, KDNet

__all__ = ["AB", "ABInit", "ab_connectors"]


def ab_connectors(student: KDNet, teacher: KDNet) -> nn.ModuleList:
    """RepDistiller ``Connector``: per paired stage, identity when channels and height match, else ``ConvReg`` without
    its ReLU (conv + BN)."""
    return nn.ModuleList(
        nn.Identity() if s.chw[:2] == t.chw[:2] else ConvReg(s, t, use_relu=False)
        for s, t in zip(student.stage_shapes, teacher.stage_shapes)
    )


def _ab_term(connectors: nn.ModuleList, student: FeatureOutput, teacher: FeatureOutput, margin: float) -> Tensor:
    n = len(connectors)
    students = [c(s) for c, s in zip(connectors, student.stages_pre[:n])]
    return ab_loss(students, list(teacher.stages_pre[:n]), margin)


class ABInit(DistillationModule):
    """AB's initialisation stage: the student's layers and the connectors trained on the AB loss of the pre-ReLU
    stage outputs, nothing else (RepDistiller ``init``: the student's classifier is not trained).  Run it as the
    prerequisite stage of :class:`AB` (30 epochs, constant learning rate); its ``final.pth`` starts the main stage.

    Args:
        student: network name.
        teacher: the frozen teacher.
        num_classes: classifier width (linked from the data).
        optim: optimiser and schedule (RepDistiller: constant learning rate).
        margin: the AB margin m (RepDistiller 1.0).
    """

    requires_teacher = True
    teacher: KDNet  # loaded by the base module (requires_teacher)

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        num_classes: int = 100,
        optim: OptimConfig = OptimConfig(),
        margin: float = 1.0,
    ) -> None:
        super().__init__(student=student, num_classes=num_classes, teacher=teacher, optim=optim)
        self.connectors = ab_connectors(self.student, self.teacher)
        self.student.classifier.requires_grad_(False)  # RepDistiller trains get_feat_modules() only

    def training_losses(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        images = batch["images"]
        teacher, student = self.teacher_and_student(images)
        return student.logits, {"ab": _ab_term(self.connectors, student, teacher, self.margin)}


class AB(TwoStageDistillation):
    """AB's main stage (:class:`kd_modules.init_stages.TwoStageDistillation`): the student, initialised by
    :class:`ABInit`, trained with cross-entropy; RepDistiller ``-r 1 -a 0 -b 1`` with the AB term zeroed in the main
    stage (a non-zero ``feat_weight`` keeps the AB loss during the main stage, through fresh connectors).

    Args:
        student: network name.
        teacher: the frozen teacher.
        margin: the AB margin m (1.0), of both stages.
    """

    init_method, init_name = "ABInit", "ab_init"
    init_description = "AB initialisation: student layers + connectors on AB"

    def __init__(self, student: str, teacher: TeacherConfig, margin: float = 1.0, **kwargs: Any) -> None:
        super().__init__(student, teacher, **kwargs)
        self.connectors = ab_connectors(self.student, self.teacher) if self.feat_weight != 0 else None

    @classmethod
    def init_args_of(cls, init_args: dict[str, Any]) -> dict[str, Any]:
        return {"margin": float(init_args.get("margin", 1.0))}

    def feature_losses(self, student: FeatureOutput, teacher: FeatureOutput, batch: Batch) -> dict[str, Tensor]:
        if self.connectors is None:  # the main stage with Hinton KD only
            return {}
        return {"ab": _ab_term(self.connectors, student, teacher, self.margin)}
