"""RKD: Park et al., "Relational Knowledge Distillation" (CVPR 2019)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from kd_modules.base import Batch, TeacherConfig
from kd_modules.feature_distillation import FeatureDistillation
from kd_modules.losses.rkd import rkd_angle_loss, rkd_distance_loss
from models import FeatureOutput


class RKD(FeatureDistillation):
    """Distance- and angle-wise relational distillation on the penultimate vectors (``feat[-1]``).

    RepDistiller ``RKDLoss(w_d=25, w_a=50)`` with ``-b 1``; mdistiller the same (``PDIST.EPSILON 1e-12``, not
    squared).  The two terms are logged separately (``rkd_distance``, ``rkd_angle``), each already multiplied by
    its weight and by ``feat_weight``.

    Args:
        student: network name.
        teacher: the frozen teacher.
        feat_weight: β, the weight of the whole RKD term (RepDistiller ``-b``; 1).
        distance_weight: weight of the distance term (25).
        angle_weight: weight of the angle term (50).
        squared: use squared distances (both references: no).
        eps: clamp of the squared distances before the square root (1e-12).
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        feat_weight: float = 1.0,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        squared: bool = False,
        eps: float = 1e-12,
        **kwargs: Any,
    ) -> None:
        super().__init__(student, teacher, feat_weight=feat_weight, **kwargs)

    def feature_losses(self, student: FeatureOutput, teacher: FeatureOutput, batch: Batch) -> dict[str, Tensor]:
        e_s, e_t = student.embedding, teacher.embedding
        return {
            "rkd_distance": self.distance_weight * rkd_distance_loss(e_s, e_t, self.squared, self.eps),
            "rkd_angle": self.angle_weight * rkd_angle_loss(e_s, e_t),
        }
