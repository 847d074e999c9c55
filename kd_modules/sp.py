"""SP: Tung & Mori, "Similarity-Preserving Knowledge Distillation" (ICCV 2019)."""

from __future__ import annotations

from torch import Tensor

from kd_modules.base import Batch, OptimConfig, TeacherConfig
from kd_modules.feature_distillation import FeatureDistillation
from kd_modules.losses.sp import sp_loss
from models import FeatureOutput


class SP(FeatureDistillation):
    """Similarity preservation on the last stage's output (RepDistiller ``feat[-2]``, mdistiller ``feats[-1]``).

    ``feat[-2]`` is the last *stage* output, which for MobileNetV2 and ShuffleNetV2 is not the map the pooled
    vector comes from (they add a 1x1 conv); the batch's B x B similarity matrices are compared, so the two maps
    may differ in channels and size.  RepDistiller/mdistiller weight 3000.

    Args:
        student: network name.
        teacher: the frozen teacher.
        num_classes: classifier width (linked from the data).
        optim: optimiser and schedule.
        ce_weight: γ, the cross-entropy weight (RepDistiller ``-r``).
        kd_weight: α, the Hinton-KD weight (RepDistiller ``-a``; 0 disables the term).
        temperature: KD temperature (RepDistiller ``--kd_T``).
        feat_weight: β, the similarity loss weight (RepDistiller ``-b``; 3000).
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        num_classes: int = 100,
        optim: OptimConfig = OptimConfig(),
        ce_weight: float = 1.0,
        kd_weight: float = 0.0,
        temperature: float = 4.0,
        feat_weight: float = 3000.0,
    ) -> None:
        super().__init__(student, teacher, num_classes, optim, ce_weight, kd_weight, temperature, feat_weight)

    def feature_losses(self, student: FeatureOutput, teacher: FeatureOutput, batch: Batch) -> dict[str, Tensor]:
        return {"sp": sp_loss(student.stages_post[-1], teacher.stages_post[-1])}
