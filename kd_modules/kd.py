"""KD: Hinton et al., "Distilling the Knowledge in a Neural Network" (2015)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kd_modules.base import LogitDistillation, OptimConfig, TeacherConfig
from kd_modules.losses.kd import kd_loss


class KD(LogitDistillation):
    """Cross-entropy plus the temperature-scaled KL divergence to the teacher's soft targets.

    ``L = ce_weight * CE(z_s, y) + kd_weight * T^2 * KL(softmax(z_t/T) || softmax(z_s/T))``.
    Defaults are the CRD table's (RepDistiller ``-r 0.1 -a 0.9``, T=4; mdistiller's CIFAR config is the same).
    mdistiller's ImageNet setting is ``ce_weight=0.5, kd_weight=0.5, temperature=1``.

    Args:
        student: network name.
        teacher: the frozen teacher.
        num_classes: classifier width (linked from the data).
        optim: optimiser and schedule.
        ce_weight: weight of the cross-entropy term.
        kd_weight: weight of the distillation term.
        temperature: softmax temperature T.
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        num_classes: int = 100,
        optim: OptimConfig = OptimConfig(),
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
        temperature: float = 4.0,
    ) -> None:
        super().__init__(student=student, num_classes=num_classes, teacher=teacher, optim=optim)

    def logit_losses(
        self, logits: Tensor, teacher_logits: Tensor, labels: Tensor, ramp: float = 1.0
    ) -> dict[str, Tensor]:
        """``ce_weight * CE + kd_weight * ramp * KD``; a term whose weight is 0 is left out (KD++'s CE+dino)."""
        losses = {}
        if self.ce_weight:
            losses["ce"] = self.ce_weight * F.cross_entropy(logits, labels)
        if self.kd_weight:
            losses["kd"] = self.kd_weight * ramp * kd_loss(logits, teacher_logits, self.temperature)
        return losses
