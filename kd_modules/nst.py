"""NST: Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer" (2017)."""

from __future__ import annotations

from torch import Tensor

from kd_modules.base import Batch, OptimConfig, TeacherConfig
from kd_modules.feature_distillation import FeatureDistillation
from kd_modules.losses.nst import nst_loss_layers
from models import FeatureOutput


class NST(FeatureDistillation):
    """Neuron selectivity transfer (polynomial-kernel MMD) on every stage output (``feat[1:-1]``), stages paired
    from the start, larger map pooled; summed over stages.  RepDistiller/mdistiller weight 50.

    Args:
        student: network name.
        teacher: the frozen teacher.
        num_classes: classifier width (linked from the data).
        optim: optimiser and schedule.
        ce_weight: γ, the cross-entropy weight (RepDistiller ``-r``).
        kd_weight: α, the Hinton-KD weight (RepDistiller ``-a``; 0 disables the term).
        temperature: KD temperature (RepDistiller ``--kd_T``).
        feat_weight: β, the NST loss weight (RepDistiller ``-b``; 50).
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
        feat_weight: float = 50.0,
    ) -> None:
        super().__init__(student, teacher, num_classes, optim, ce_weight, kd_weight, temperature, feat_weight)

    def feature_losses(self, student: FeatureOutput, teacher: FeatureOutput, batch: Batch) -> dict[str, Tensor]:
        return {"nst": nst_loss_layers(student.stages_post, teacher.stages_post)}
