"""PKT: Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer" (ECCV 2018)."""

from __future__ import annotations

from torch import Tensor

from kd_modules.base import Batch, OptimConfig, TeacherConfig
from kd_modules.feature_distillation import FeatureDistillation
from kd_modules.losses.pkt import pkt_loss
from models import FeatureOutput


class PKT(FeatureDistillation):
    """Probabilistic knowledge transfer: KL between the batch's cosine-affinity distributions of the
    penultimate vectors (``feat[-1]``).  RepDistiller/mdistiller weight 30000 (the loss is a mean over B^2).

    Args:
        student: network name.
        teacher: the frozen teacher.
        num_classes: classifier width (linked from the data).
        optim: optimiser and schedule.
        ce_weight: γ, the cross-entropy weight (RepDistiller ``-r``).
        kd_weight: α, the Hinton-KD weight (RepDistiller ``-a``; 0 disables the term).
        temperature: KD temperature (RepDistiller ``--kd_T``).
        feat_weight: β, the PKT loss weight (RepDistiller ``-b``; 30000).
        eps: added to the norms and inside the log ratio (1e-7).
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
        feat_weight: float = 30000.0,
        eps: float = 1e-7,
    ) -> None:
        super().__init__(student, teacher, num_classes, optim, ce_weight, kd_weight, temperature, feat_weight)
        self.eps = eps

    def feature_losses(self, student: FeatureOutput, teacher: FeatureOutput, batch: Batch) -> dict[str, Tensor]:
        return {"pkt": pkt_loss(student.embedding, teacher.embedding, self.eps)}
