"""AT: Zagoruyko & Komodakis, "Paying More Attention to Attention" (ICLR 2017)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from kd_modules.base import Batch, TeacherConfig
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
        feat_weight: β, the attention loss weight (RepDistiller ``-b``; 1000).
        p: exponent of the attention map (2).
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        feat_weight: float = 1000.0,
        p: float = 2.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(student, teacher, feat_weight=feat_weight, **kwargs)

    def feature_losses(self, student: FeatureOutput, teacher: FeatureOutput, batch: Batch) -> dict[str, Tensor]:
        return {"at": at_loss_layers(student.stages_post, teacher.stages_post, self.p)}
