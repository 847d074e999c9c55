"""AT: Zagoruyko & Komodakis, "Paying More Attention to Attention" (ICLR 2017)."""

from __future__ import annotations

from torch import Tensor

from kd_modules.base import Batch, OptimConfig, TeacherConfig
from kd_modules.feature_distillation import FeatureDistillation
from kd_modules.losses.at import at_loss_layers
from models import FeatureOutput


class AT(FeatureDistillation):
    """Attention transfer on every stage output (RepDistiller ``feat[1:-1]``, mdistiller ``feats[1:]``).

    Stages pair by position from the start; the larger map of a pair is pooled to the smaller's height; the
    per-stage terms are summed (RepDistiller ``Attention(p=2)``, weight 1000; mdistiller the same).

    Args:
        student: network name.
        teacher: the frozen teacher.
        num_classes: classifier width (linked from the data).
        optim: optimiser and schedule.
        ce_weight: γ, the cross-entropy weight (RepDistiller ``-r``).
        kd_weight: α, the Hinton-KD weight (RepDistiller ``-a``; 0 disables the term).
        temperature: KD temperature (RepDistiller ``--kd_T``).
        feat_weight: β, the attention loss weight (RepDistiller ``-b``; 1000).
        p: exponent of the attention map (2).
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
        feat_weight: float = 1000.0,
        p: float = 2.0,
    ) -> None:
        super().__init__(student, teacher, num_classes, optim, ce_weight, kd_weight, temperature, feat_weight)
        self.p = p

    def feature_losses(self, student: FeatureOutput, teacher: FeatureOutput, batch: Batch) -> dict[str, Tensor]:
        return {"at": at_loss_layers(student.stages_post, teacher.stages_post, self.p)}
