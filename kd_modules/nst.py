"""NST: Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer" (2017)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from kd_modules.base import Batch, TeacherConfig
from kd_modules.feature_distillation import FeatureDistillation
from kd_modules.losses.nst import nst_loss_layers
from models import FeatureOutput


class NST(FeatureDistillation):
    """Neuron selectivity transfer (polynomial-kernel MMD) on every stage output (``feat[1:-1]``), stages paired
    from the start, larger map pooled; summed over stages.  RepDistiller/mdistiller weight 50.

    Args:
        student: network name.
        teacher: the frozen teacher.
        feat_weight: β, the NST loss weight (RepDistiller ``-b``; 50).
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        feat_weight: float = 50.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(student, teacher, feat_weight=feat_weight, **kwargs)

    def feature_losses(self, student: FeatureOutput, teacher: FeatureOutput, batch: Batch) -> dict[str, Tensor]:
        return {"nst": nst_loss_layers(student.stages_post, teacher.stages_post)}
