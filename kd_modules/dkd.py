"""DKD: Zhao et al., "Decoupled Knowledge Distillation" (CVPR 2022), mdistiller's implementation."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kd_modules.base import LogitDistillation, OptimConfig, TeacherConfig, loss_ramp
from kd_modules.errors import MethodConfigError
from kd_modules.losses.dkd import nckd_loss, tckd_loss


class DKD(LogitDistillation):
    """``ce_weight·CE + min(epoch / warmup_epochs, 1)·(alpha·TCKD + beta·NCKD)``, logits only.

    mdistiller's CIFAR settings: CE 1, alpha 1, T 4, warm-up 20 epochs, and beta **per pair** (8 for
    resnet32x4→resnet8x4 and the ShuffleNet/ResNet50 students, 6 for the WRN and VGG pairs, 2 for
    resnet56→resnet20 and resnet110→resnet32; table files set it with ``pair_init_args``).  ImageNet: beta 0.5
    (R34→R18) or 2 (R50→MV1), T 1, warm-up 1.

    Warm-up off-by-one: mdistiller counts epochs from 1, so its first epoch already has factor 1/20; Lightning
    counts from 0, and the default here uses ``current_epoch + 1`` to match mdistiller.  ``warmup_zero_based``
    uses ``current_epoch`` itself (factor 0 in the first epoch, like ReviewKD's and ND's own code).
    The factor depends on the epoch only (not the step), as the reference.

    Args:
        student: network name.
        teacher: the frozen teacher.
        num_classes: classifier width (linked from the data).
        optim: optimiser and schedule.
        ce_weight: cross-entropy weight (mdistiller ``DKD.CE_WEIGHT`` 1).
        alpha: weight of the target-class term TCKD (``DKD.ALPHA`` 1).
        beta: weight of the non-target-class term NCKD (``DKD.BETA``: 8 by default, per pair in the tables).
        temperature: softmax temperature (``DKD.T`` 4).
        warmup_epochs: epochs of the linear ramp of the DKD term (``DKD.WARMUP`` 20; 0: no ramp).
        warmup_zero_based: ramp from factor 0 in the first epoch instead of mdistiller's 1/warmup_epochs.
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        num_classes: int = 100,
        optim: OptimConfig = OptimConfig(),
        ce_weight: float = 1.0,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup_epochs: int = 20,
        warmup_zero_based: bool = False,
    ) -> None:
        super().__init__(student=student, num_classes=num_classes, teacher=teacher, optim=optim)
        if warmup_epochs < 0:
            raise MethodConfigError(f"DKD warmup_epochs must be 0 (no ramp) or positive, got {warmup_epochs}")

    def warmup_factor(self, epoch: int) -> float:
        """The ramp factor in (0-based) training epoch ``epoch``."""
        return loss_ramp(epoch, self.warmup_epochs, one_based=not self.warmup_zero_based)

    def logit_ramp(self) -> float:
        return self.warmup_factor(self.schedule_epoch)

    def logit_losses(self, logits: Tensor, teacher_logits: Tensor, labels: Tensor, ramp: float) -> dict[str, Tensor]:
        """``ce_weight * CE + ramp * (alpha * TCKD + beta * NCKD)`` (DKD++ passes ND's 0-based ramp)."""
        return {
            "ce": self.ce_weight * F.cross_entropy(logits, labels),
            "tckd": ramp * self.alpha * tckd_loss(logits, teacher_logits, labels, self.temperature),
            "nckd": ramp * self.beta * nckd_loss(logits, teacher_logits, labels, self.temperature),
        }
