"""SP: Tung & Mori, "Similarity-Preserving Knowledge Distillation" (ICCV 2019)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from kd_modules.base import Batch, TeacherConfig
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
        feat_weight: β, the similarity loss weight (RepDistiller ``-b``; 3000).
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        feat_weight: float = 3000.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(student, teacher, feat_weight=feat_weight, **kwargs)

    def feature_losses(self, student: FeatureOutput, teacher: FeatureOutput, batch: Batch) -> dict[str, Tensor]:
        return {"sp": sp_loss(student.stages_post[-1], teacher.stages_post[-1])}
