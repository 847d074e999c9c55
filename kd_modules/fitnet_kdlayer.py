"""FitNet with letKD's KD layer (letKD supplement Table 6: is the gain the layer's capacity or its supervision?)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kd_modules.base import Batch, OptimConfig, TeacherConfig
from kd_modules.connectors import ConvReg
from kd_modules.errors import MethodConfigError
from kd_modules.letkd import KDLayerSettings, TargetsConfig, _WordDistillation
from kd_modules.losses.fitnet import hint_loss
from kd_modules.losses.letkd import codebook_assignment, location_kl
from models import FeatureOutput


class FitNetKDLayer(_WordDistillation):
    """FitNet (the hint at the output of stage 2, :class:`kd_modules.fitnet.FitNet`) with letKD-1's KD layer at the
    penultimate location (the map entering global pooling), with or without the KD layer's own loss::

        L = ce_weight * CE + feat_weight * MSE(ConvReg(F_S^2), F_T^2) [+ layers.penult_weight * KL_penult]

    ``supervised=false`` is supplement Table 6's "FitNet + KD layer without supervision": the layer (the capacity
    it adds) is trained by CE alone and no codebook is built; ``supervised=true`` adds letKD-1's per-location KL
    against the teacher's K-means codeword assignment ("with supervision").  The KD layer stays in the exported
    student (as letKD's); the FitNet regressor does not.  letKD states only "FitNet using the stage-2 outputs" and
    "our KD layer at the output of the penultimate layer": the FitNet part is RepDistiller's (CE 1, hint 100, no
    KD term) and the layer is letKD-1's (K 4096, alpha 1), the official components.

    Args:
        student: network name.
        teacher: the frozen teacher.
        num_classes: classifier width (linked from the data).
        optim: optimiser and schedule.
        targets: the codebook (K, tau, K-means; used when ``supervised``).
        supervised: add the KD layer's KL loss (True) or train the layer by CE only (False).
        layers: letKD-1's penultimate KD layer and its KL weight (:class:`~kd_modules.letkd.KDLayerSettings`:
            alpha_penult, predictor_scale 3, value_scale 1, penult_weight).
        ce_weight: cross-entropy weight.
        feat_weight: FitNet's hint weight (RepDistiller ``-b`` 100).
        hint_layer: the hint, in RepDistiller's ``feat`` indexing (2: the output of stage 2).
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        num_classes: int = 100,
        optim: OptimConfig = OptimConfig(),
        targets: TargetsConfig = TargetsConfig(),
        supervised: bool = True,
        layers: KDLayerSettings = KDLayerSettings(),
        ce_weight: float = 1.0,
        feat_weight: float = 100.0,
        hint_layer: int = 2,
    ) -> None:
        super().__init__(student, teacher, num_classes, optim, targets, penultimate=supervised)
        stages = min(self.student.num_stages, self.teacher.num_stages)
        if not 0 <= hint_layer <= stages:
            raise MethodConfigError(f"hint_layer={hint_layer} is out of range: valid are 0 (stem) to {stages}")
        tap = "stem" if hint_layer == 0 else f"stage{hint_layer}"
        self.regressor = ConvReg(self.student.feature_shapes()[tap], self.teacher.feature_shapes()[tap])
        self.student.insert("neck", layers.penultimate_layer(self.student_shapes["neck"][0], targets.num_clusters))

    def hint(self, features: FeatureOutput) -> Tensor:
        return features.stem if self.hint_layer == 0 else features.stages_post[self.hint_layer - 1]

    def training_losses(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        images, labels = batch["images"], batch["labels"]
        teacher, out = self.teacher_and_student(images)
        losses = {
            "ce": self.ce_weight * F.cross_entropy(out.logits, labels),
            "hint": self.feat_weight * hint_loss(self.regressor(self.hint(out)), self.hint(teacher)),
        }
        if self.penultimate:
            if self.codebook is None:
                self.teacher_targets(images, labels)  # raises the "targets not built" message
            penult = F.avg_pool2d(teacher.final_map, 2, 2) if self.pool_penult else teacher.final_map
            with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
                target = codebook_assignment(penult.float(), self.codebook, self.targets.temperature)
            losses["penult"] = self.layers.penult_weight * location_kl(out.extras["neck"], target)  # type: ignore[arg-type]
        return out.logits, losses
