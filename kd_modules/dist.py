"""DIST: Huang et al., "Knowledge Distillation from A Stronger Teacher" (NeurIPS 2022)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kd_modules.base import LogitDistillation, OptimConfig, TeacherConfig
from kd_modules.losses.dist import dist_loss


class DIST(LogitDistillation):
    """``ce_weight·CE + kd_weight·τ²·(β·inter + γ·intra)`` on the logits' softmax at temperature τ.

    DIST's repository (image_classification_sota at the commit DIST_KD pins), CIFAR-100 strategy
    ``dist_cifar.yaml``: ``kd: dist_t4`` (τ 4, β = γ = 1), ``ori_loss_weight`` 1, ``kd_loss_weight`` 2.
    ImageNet (``kd: dist``): τ 1, same weights.  The intra-class term correlates each class's probabilities across
    the batch, so it depends on the (per-device) batch.

    Args:
        student: network name.
        teacher: the frozen teacher.
        num_classes: classifier width (linked from the data).
        optim: optimiser and schedule.
        ce_weight: cross-entropy weight (``ori_loss_weight`` 1).
        kd_weight: weight of the DIST term (``kd_loss_weight`` 2).
        beta: weight of the inter-class relation (1).
        gamma: weight of the intra-class relation (1).
        tau: softmax temperature (4 on CIFAR, 1 on ImageNet).
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        num_classes: int = 100,
        optim: OptimConfig = OptimConfig(),
        ce_weight: float = 1.0,
        kd_weight: float = 2.0,
        beta: float = 1.0,
        gamma: float = 1.0,
        tau: float = 4.0,
    ) -> None:
        super().__init__(student=student, num_classes=num_classes, teacher=teacher, optim=optim)

    def logit_losses(
        self, logits: Tensor, teacher_logits: Tensor, labels: Tensor, ramp: float = 1.0
    ) -> dict[str, Tensor]:
        """``ce_weight * CE + kd_weight * ramp * DIST`` (DIST++ passes ND's ramp)."""
        return {
            "ce": self.ce_weight * F.cross_entropy(logits, labels),
            "dist": self.kd_weight * ramp * dist_loss(logits, teacher_logits, self.beta, self.gamma, self.tau),
        }
