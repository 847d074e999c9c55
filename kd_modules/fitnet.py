"""FitNet: Romero et al., "FitNets: Hints for Thin Deep Nets" (ICLR 2015), single-stage as RepDistiller runs it."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from kd_modules.base import Batch, TeacherConfig
from kd_modules.connectors import ConvReg
from kd_modules.errors import MethodConfigError
from kd_modules.feature_distillation import FeatureDistillation
from kd_modules.losses.fitnet import hint_loss
from models import FeatureOutput


class FitNet(FeatureDistillation):
    """Hint learning: a ``ConvReg`` (conv + BN + ReLU) maps the student's hint map onto the teacher's; MSE.

    As RepDistiller ``--distill hint`` and mdistiller ``FitNet``: one stage (not the paper's two-stage
    hint-then-KD), hint layer ``feat[2]`` = the output of stage 2 (16x16 on CIFAR ResNets), CE weight 1 and hint
    weight 100.  SimKD's toolbox uses ``hint_layer=1`` and adds KD (``kd_weight=1``).  The regressor is trained
    with the student (weight decay included) and is not part of the exported student.

    Args:
        student: network name.
        teacher: the frozen teacher.
        feat_weight: β, the hint loss weight (RepDistiller ``-b``; 100).
        hint_layer: which feature is the hint, in RepDistiller's ``feat`` indexing: 0 = the stem, k = the output of
            stage k (RepDistiller/mdistiller default 2, SimKD's toolbox 1).
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        feat_weight: float = 100.0,
        hint_layer: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(student, teacher, feat_weight=feat_weight, **kwargs)
        if not 0 <= hint_layer <= self.num_stage_pairs:
            raise MethodConfigError(
                f"FitNet hint_layer={hint_layer} is out of range: valid are 0 (stem) to {self.num_stage_pairs} "
                f"(stage outputs of {student} and {teacher.arch})"
            )
        tap = "stem" if hint_layer == 0 else f"stage{hint_layer}"
        self.regressor = ConvReg(self.student.feature_shapes()[tap], self.teacher.feature_shapes()[tap])

    def hint(self, features: FeatureOutput) -> Tensor:
        """RepDistiller ``feat[hint_layer]``."""
        return features.stem if self.hint_layer == 0 else features.stages_post[self.hint_layer - 1]

    def feature_losses(self, student: FeatureOutput, teacher: FeatureOutput, batch: Batch) -> dict[str, Tensor]:
        return {"hint": hint_loss(self.regressor(self.hint(student)), self.hint(teacher))}
