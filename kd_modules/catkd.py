"""CAT-KD: Guo et al., "Class Attention Transfer Based Knowledge Distillation" (CVPR 2023), official code
GzyAftermath/CAT-KD (built on mdistiller)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kd_modules.base import Batch, DistillationModule, OptimConfig, TeacherConfig
from kd_modules.errors import MethodConfigError
from kd_modules.losses.catkd import cat_loss
from models import KDNet


class CATKD(DistillationModule):
    """``ce_weight·CE + beta·MSE(ν(φ_r(CAM_s)), ν(φ_r(CAM_t)))``: transfer of the teacher's class activation maps.

    A network's CAMs are its classifier weight applied as a bias-free 1x1 conv to the map that enters global
    pooling (``FeatureOutput.final_map``: post-ReLU for ResNets, after BN-ReLU for WRNs, after the 1x1 neck for
    MobileNetV2) — the official ``<net>_test`` networks (``if_test: True``) compute ``conv_test(relu(feat))``
    there for teacher and student alike.  The student's CAMs use the student's own classifier, so the channels of
    the two maps need not match (only the K classes do); both are average-pooled to ``resolution`` x
    ``resolution``.  The teacher's classifier bias is not part of its CAMs (official: ``fc.weight`` is copied into
    ``conv_test``, the bias dropped).

    Student head (official quirk): the official student is built as ``<net>_test``, whose head is a bias-free
    1x1 conv followed by global pooling, i.e. a linear classifier *without bias*.  By default the student's
    classifier bias is therefore zeroed and frozen; ``student_bias=True`` keeps kdbench's ordinary biased head
    (the CAMs stay bias-free).  With ``ce_weight=0`` the loss is the paper's CAT alone (official ``onlyCAT``).
    The official exploration switches (``IF_BINARIZE``, ``IF_OnlyTransferPartialCAMs``) belong to the paper's
    CAT analysis, not to CAT-KD's published numbers, and are not provided.

    Official settings (``configs/cifar100/CAT_KD/*.yaml``, ``configs/imagenet/CAT-KD/*.yaml``; CE weight 1):
    beta / resolution / normalize = 15 / 2 / no for resnet32x4→resnet8x4 (the default), 0.7 / 2 / no
    resnet56→resnet20, 1.8 / 2 / no resnet110→resnet32, 12 / 2 / no wrn_40_2→wrn_16_2, 1.5 / 2 / no
    wrn_40_2→wrn_40_1, 4.5 / 2 / no vgg13→vgg8, 15 / 2 / yes vgg13→MobileNetV2, 40 / 2 / yes ResNet50→MobileNetV2,
    600 / 4 / yes resnet32x4→ShuffleV1 and →ShuffleV2, 80 / 4 / yes wrn_40_2→ShuffleV1; ImageNet 0.5 / 4 / no
    ResNet34→ResNet18, 10 / 2 / yes ResNet50→MobileNetV1 (mdistiller's "MobileNetV2" is MobileNetV1).

    Args:
        student: network name.
        teacher: the frozen teacher.
        num_classes: classifier width (linked from the data).
        optim: optimiser and schedule.
        ce_weight: cross-entropy weight (``CAT_KD.LOSS.CE_WEIGHT`` 1; 0 drops the term, official ``onlyCAT``).
        beta: β, the CAT loss weight (``CAT_KD.LOSS.CAT_loss_weight``; per pair).
        resolution: side of the pooled CAMs (``CAT_KD.LOSS.CAM_RESOLUTION``; 2 or 4).
        normalize: L2-normalise each pooled CAM over its cells (``CAT_KD.IF_NORMALIZE``; per pair).
        student_bias: keep a trainable bias in the student's classifier (False: zeroed and frozen, as the
            official bias-free student head).
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
        beta: float = 15.0,
        resolution: int = 2,
        normalize: bool = False,
        student_bias: bool = False,
    ) -> None:
        super().__init__(student=student, num_classes=num_classes, teacher=teacher, optim=optim)
        if resolution < 1:
            raise MethodConfigError(f"CATKD resolution must be a positive number of cells, got {resolution}")
        bias = self.student.classifier.bias
        if not student_bias and bias is not None:
            with torch.no_grad():
                bias.zero_()
            bias.requires_grad_(False)

    def training_losses(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        images, labels = batch["images"], batch["labels"]
        teacher, student = self.teacher_and_student(images)
        losses = {}
        if self.ce_weight:
            losses["ce"] = self.ce_weight * F.cross_entropy(student.logits, labels)
        losses["cat"] = self.beta * cat_loss(
            student.final_map,
            self.student.classifier.weight,
            teacher.final_map,
            self.teacher.classifier.weight,
            self.resolution,
            self.normalize,
        )
        return student.logits, losses
