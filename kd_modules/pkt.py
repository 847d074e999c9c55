"""PKT: Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer" (ECCV 2018)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from kd_modules.base import Batch, TeacherConfig
from kd_modules.feature_distillation import FeatureDistillation
from kd_modules.losses.pkt import pkt_loss
from models import FeatureOutput


class PKT(FeatureDistillation):
    """Probabilistic knowledge transfer: KL between the batch's cosine-affinity distributions of the
    penultimate vectors (``feat[-1]``).  RepDistiller/mdistiller weight 30000 (the loss is a mean over B^2).

    Args:
        student: network name.
        teacher: the frozen teacher.
        feat_weight: β, the PKT loss weight (RepDistiller ``-b``; 30000).
        eps: added to the norms and inside the log ratio (1e-7).
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        feat_weight: float = 30000.0,
        eps: float = 1e-7,
        **kwargs: Any,
    ) -> None:
        super().__init__(student, teacher, feat_weight=feat_weight, **kwargs)

    def feature_losses(self, student: FeatureOutput, teacher: FeatureOutput, batch: Batch) -> dict[str, Tensor]:
        return {"pkt": pkt_loss(student.embedding, teacher.embedding, self.eps)}
