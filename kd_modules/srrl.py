"""SRRL: Yang et al., "Knowledge Distillation via Softmax Regression Representation Learning" (ICLR 2021).

References: the SimKD toolbox (DefangChen/SimKD ``models/util.py::SRRL``, CIFAR) and the authors' ImageNet code
(jingyang2017/KD_SRRL, ``train_imagenet_distillation.py``); spec methods-baselines §22.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

from kd_modules.base import Batch, TeacherConfig
from kd_modules.errors import MethodConfigError
from kd_modules.feature_distillation import FeatureDistillation
from kd_modules.losses.srrl import srrl_losses
from models import FeatureOutput

__all__ = ["SRRL"]

VARIANTS = ("toolbox", "official")


class SRRL(FeatureDistillation):
    """Softmax regression representation learning: a connector (1x1 conv + BN + ReLU) maps the student's feature to
    the teacher's width; it is matched to the teacher's pooled feature (L_FM) and, through the frozen teacher
    classifier, to the teacher's logits (L_SR).  Gradients flow through the teacher classifier.

    Two references differ in where the connector sits:

    * ``toolbox`` (SimKD toolbox, CIFAR; default): on the student's *pooled* embedding viewed as a 1x1 map;
      ``-c 1 -d 1 -b 1`` (CE 1, KD 1 with T 4, both SRRL terms weight 1);
    * ``official`` (authors' ImageNet code): on the student's last *spatial* map, pooled afterwards (BN and ReLU
      do not commute with pooling, so values differ); CE + L_FM + L_SR, no KD; connector conv initialised
      N(0, 2/C_t).

    Args:
        student: network name.
        teacher: the frozen teacher (its classifier is reused).
        kd_weight: Hinton-KD weight (toolbox 1; official 0).
        feat_weight: weight of the feature-matching term L_FM (1).
        sr_weight: weight of the softmax-regression term L_SR (1).
        variant: ``toolbox`` or ``official`` (see above).
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        kd_weight: float = 1.0,
        feat_weight: float = 1.0,
        sr_weight: float = 1.0,
        variant: Literal["toolbox", "official"] = "toolbox",
        **kwargs: Any,
    ) -> None:
        super().__init__(student, teacher, kd_weight=kd_weight, feat_weight=feat_weight, **kwargs)
        if variant not in VARIANTS:
            raise MethodConfigError(f"SRRL variant={variant!r} is not valid: choose one of {', '.join(VARIANTS)}")
        c_s = self.student.embedding_dim
        c_t = self.teacher.embedding_dim
        head = self.teacher.classifier
        if getattr(head, "in_features", c_t) != c_t:
            raise MethodConfigError(
                f"SRRL feeds the teacher classifier with a {c_t}-d feature, but {teacher.arch}'s takes "
                f"{head.in_features}"
            )
        conv = nn.Conv2d(c_s, c_t, kernel_size=1, bias=False)
        if variant == "official":
            nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / c_t))
        self.connector = nn.Sequential(conv, nn.BatchNorm2d(c_t), nn.ReLU(inplace=True))

    def student_feature(self, student: FeatureOutput) -> Tensor:
        """The connector's (B, C_t) output: on the pooled embedding (toolbox) or on the last map, then pooled."""
        if self.variant == "toolbox":
            return self.connector(student.embedding[:, :, None, None]).flatten(1)
        return torch.flatten(self.connector(student.final_map).mean(dim=(2, 3)), 1)

    def _terms(self, student: FeatureOutput, teacher: FeatureOutput) -> tuple[Tensor, Tensor]:
        h_s = self.student_feature(student)
        return srrl_losses(h_s, teacher.embedding, self.teacher.classifier(h_s), teacher.logits)

    def feature_losses(self, student: FeatureOutput, teacher: FeatureOutput, batch: Batch) -> dict[str, Tensor]:
        """L_FM + (sr_weight / feat_weight) L_SR before ``feat_weight``, i.e. ``feat_weight`` L_FM + ``sr_weight``
        L_SR after it; :meth:`weighted_feature_losses` logs the two terms separately."""
        fm, sr = self._terms(student, teacher)
        return {"srrl": fm + sr * (self.sr_weight / self.feat_weight if self.feat_weight else 0.0)}

    def weighted_feature_losses(
        self, student: FeatureOutput, teacher: FeatureOutput, batch: Batch
    ) -> dict[str, Tensor]:
        """``feat_weight`` L_FM and ``sr_weight`` L_SR, logged as ``srrl_fm`` and ``srrl_sr``."""
        fm, sr = self._terms(student, teacher)
        return {"srrl_fm": self.feat_weight * fm, "srrl_sr": self.sr_weight * sr}
