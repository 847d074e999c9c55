"""The objective shared by RepDistiller's feature and relation baselines: ``γ·CE + α·KD_T + β·L_method``.

RepDistiller (``train_student.py``) builds every baseline's loss as ``-r`` x cross-entropy + ``-a`` x Hinton KD
(T = ``--kd_T``) + ``-b`` x the method's own term; the published CRD-table baselines use ``-r 1 -a 0`` and the
method's ``-b`` (CRD+KD: ``-a 1``).  mdistiller's distillers are ``CE_WEIGHT·CE + FEAT_WEIGHT·L_method`` (no KD
term).  SimKD's toolbox runs every baseline with ``-c 1 -d 1`` (KD on).  :class:`FeatureDistillation` exposes
the three weights, so each of these settings is a config.

Where features come from (spec methods-baselines §1.3, RepDistiller ``feat`` list ↔ the network contract):

* ``feat[0]`` (stem) → ``FeatureOutput.stem``;
* ``feat[1:-1]`` (stage outputs, post-activation; raw residual sums for pre-activation WRNs) →
  ``stages_post``;  ``feat[k]`` → ``stages_post[k-1]``;
* ``feat[-2]`` (the last stage's output — *not* the neck's map for MobileNetV2 / ShuffleNetV2, whose pooled
  vector comes from an extra conv) → ``stages_post[-1]``;
* ``feat[-1]`` (the pooled penultimate vector) → ``embedding``.

Stage lists of networks with different numbers of stages pair by position from the start (``zip``), as the
references do.
"""

from __future__ import annotations

from abc import abstractmethod

import torch.nn.functional as F
from torch import Tensor

from kd_modules.base import Batch, DistillationModule, OptimConfig, TeacherConfig
from kd_modules.losses.kd import kd_loss
from models import FeatureOutput, FeatureShape, KDNet

__all__ = ["FeatureDistillation"]


class FeatureDistillation(DistillationModule):
    """Base of the feature/relation baselines: CE, an optional Hinton-KD term, and the method's term(s).

    Subclasses implement :meth:`feature_losses`, returning the method's terms (already carrying any weights
    internal to the method, e.g. RKD's 25/50); each is multiplied by ``feat_weight`` and logged under its name.

    Args:
        student: network name.
        teacher: the frozen teacher.
        num_classes: classifier width (linked from the data).
        optim: optimiser and schedule.
        ce_weight: γ, the cross-entropy weight (RepDistiller ``-r``).
        kd_weight: α, the Hinton-KD weight (RepDistiller ``-a``; 0 disables the term).
        temperature: KD temperature (RepDistiller ``--kd_T``).
        feat_weight: β, the method term's weight (RepDistiller ``-b``, mdistiller ``FEAT_WEIGHT``).

    A method passes the arguments it does not change on with ``**kwargs`` (``AT(student, teacher, feat_weight=1000)``
    keeps γ = 1, α = 0, T = 4); its ``feat_weight`` default is its own.
    """

    requires_teacher = True
    teacher: KDNet  # loaded by the base module (requires_teacher)

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        num_classes: int = 100,
        optim: OptimConfig = OptimConfig(),
        ce_weight: float = 1.0,
        kd_weight: float = 0.0,
        temperature: float = 4.0,
        feat_weight: float = 1.0,
    ) -> None:
        super().__init__(student=student, num_classes=num_classes, teacher=teacher, optim=optim)

    # --------------------------------------------------------------------------------------- feature access
    @property
    def num_stage_pairs(self) -> int:
        """How many stages pair up (the shorter network's stage count)."""
        return min(self.student.num_stages, self.teacher.num_stages)

    def stage_shape_pairs(self) -> list[tuple[FeatureShape, FeatureShape]]:
        """(student, teacher) shapes of the paired stage outputs (RepDistiller ``feat[1:-1]``), no forward pass."""
        return list(zip(self.student.stage_shapes, self.teacher.stage_shapes))

    # ----------------------------------------------------------------------------------------- the objective
    @abstractmethod
    def feature_losses(self, student: FeatureOutput, teacher: FeatureOutput, batch: Batch) -> dict[str, Tensor]:
        """The method's named terms (before ``feat_weight``), from both networks' features of this batch."""

    def training_losses(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        images, labels = batch["images"], batch["labels"]
        teacher, student = self.teacher_and_student(images)
        losses = {"ce": self.ce_weight * F.cross_entropy(student.logits, labels)}
        if self.kd_weight != 0:
            losses["kd"] = self.kd_weight * kd_loss(student.logits, teacher.logits, self.temperature)
        losses.update(self.weighted_feature_losses(student, teacher, batch))
        return student.logits, losses

    def weighted_feature_losses(
        self, student: FeatureOutput, teacher: FeatureOutput, batch: Batch
    ) -> dict[str, Tensor]:
        """The method's logged terms: each of :meth:`feature_losses` times ``feat_weight``."""
        return {name: self.feat_weight * value for name, value in self.feature_losses(student, teacher, batch).items()}
