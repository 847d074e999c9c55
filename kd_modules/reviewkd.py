"""ReviewKD: Chen et al., "Distilling Knowledge via Knowledge Review" (CVPR 2021).

The student's stage features and its pooled embedding are fused deep-to-shallow by attention-based fusion (ABF)
modules and compared, level by level, with the teacher's pre-activation stage features and pooled embedding
through the hierarchical context loss (:func:`kd_modules.losses.reviewkd.hcl_loss`).

Levels, channels and sizes come from the network contract, not from per-model tables.  The official
``build_review_kd`` (dvlab-research/ReviewKD, mdistiller, ND's ReviewKD++) lists, per pair, ``in_channels``,
``out_channels``, ``shapes`` and ``out_shapes``; every entry of those tables follows one rule, which is what this
module implements:

* levels: the deepest ``min(student stages, teacher stages)`` stages of each network, plus the pooled embedding
  as a 1x1 map (CIFAR ResNets: 3 stages + pooled = 4 ABFs; ImageNet ResNets: 4 + 1 = 5);
* ``in_channels`` / ``out_channels``: the student's / teacher's channels at those levels (WRN-40-1 -> WRN-40-2:
  [16, 32, 64, 64] -> [32, 64, 128, 128]; ShuffleV1 -> ResNet32x4: [240, 480, 960, 960] -> [64, 128, 256, 256]);
* ``shapes``: the student's own spatial size at each level (where the deeper residual is upsampled to);
  ``out_shapes``: the teacher's spatial size at the matching level (ShuffleNets: [1, 4, 8, 16] -> [1, 8, 16, 32]).
  Both are read from the actual tensors, so other input sizes work too.  (ND's released R50 -> MobileNetV2 entry
  sets ``out_shapes = shapes`` = the student's sizes, which cannot match its teacher's maps in the MSE; the rule
  above is the only setting under which that pair's HCL is defined.)
* mid channels: ``min(max_mid_channels, in_channels[-1])`` with 512 (mdistiller; the official ImageNet
  MobileNet setting is 256).

Defaults are the official CIFAR ones: CE weight 1, HCL weight 1 with per-pair overrides (official CIFAR
``--kd-loss-weight``: 5.0 for wrn40_2->wrn16_2/wrn40_1/shufflev1 and resnet32x4->resnet8x4/shufflev1, 8.0 for
resnet32x4->shufflev2, 0.6 for resnet56->resnet20, 1.0 for resnet110->resnet32; mdistiller: 5.0 for
resnet32x4->resnet8x4, 1.0 otherwise, 8.0 for ImageNet R50->MobileNetV1), a linear HCL-weight warm-up over 20
epochs (official CIFAR: ``min(1, epoch/20)`` with 0-based epochs, so the first epoch has no HCL term; mdistiller
passes 1-based epochs: ``warmup_one_based``; mdistiller ImageNet warms up over 1 epoch), post-activation student
features (mdistiller ImageNet uses the student's pre-activation ones: ``student_preact``).

Deviation kept on purpose: the official CIFAR script leaves the teacher in train mode (its BN uses batch
statistics); every kdbench teacher is frozen in eval mode, as in mdistiller.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_modules.base import Batch, DistillationModule, OptimConfig, TeacherConfig, loss_ramp
from kd_modules.losses.reviewkd import hcl_loss
from models import FeatureOutput, KDNet

__all__ = ["loss_ramp", "AttentionBasedFusion", "ReviewConnector", "ReviewKD"]


class AttentionBasedFusion(nn.Module):
    """ABF: a 1x1 conv-BN on the student feature, attention-weighted fusion with the deeper level's output,
    resizing to the teacher's size, then a 3x3 conv-BN to the teacher's channels.

    ``conv1`` = Conv1x1(in -> mid, no bias) + BN; ``conv2`` = Conv3x3(mid -> out, pad 1, no bias) + BN; with
    ``fuse``, ``att_conv`` = Conv1x1(2 mid -> 2, bias) + sigmoid.  The two conv weights are initialised with
    ``kaiming_uniform_(a=1)``, everything else with PyTorch defaults (official ABF).
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False), nn.BatchNorm2d(mid_channels)
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, kernel_size=1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Return ``(output, new residual)``; the residual is the fused map before ``conv2``, at ``out_size``."""
        x = self.conv1(x)
        if self.att_conv is not None:  # every level but the deepest (ReviewConnector), so with a residual
            residual = F.interpolate(residual, size=tuple(x.shape[-2:]), mode="nearest")
            attention = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * attention[:, 0:1] + residual * attention[:, 1:2]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.conv2(x), x


class ReviewConnector(nn.Module):
    """The ABF stack of one teacher-student pair, built from the two networks' contracts (see module docs).

    Args:
        student: the student network (channels are read from it; it is not stored).
        teacher: the teacher network (idem).
        max_mid_channels: upper bound of the ABFs' middle width.
        student_preact: feed the student's pre-activation stage features instead of the post-activation ones.
    """

    def __init__(self, student: KDNet, teacher: KDNet, max_mid_channels: int = 512, student_preact: bool = False):
        super().__init__()
        self.num_stage_levels = min(student.num_stages, teacher.num_stages)
        self.student_preact = student_preact
        stages = self.num_stage_levels
        in_channels = student.stage_channels[-stages:] + [student.embedding_dim]
        out_channels = teacher.stage_channels[-stages:] + [teacher.embedding_dim]
        mid_channels = min(max_mid_channels, in_channels[-1])
        # Built shallow-to-deep (the official order, so initialisation draws the same random numbers), every one
        # but the deepest fuses; stored deep-to-shallow, the order they run in.
        built = [
            AttentionBasedFusion(c_in, mid_channels, c_out, fuse=index < len(in_channels) - 1)
            for index, (c_in, c_out) in enumerate(zip(in_channels, out_channels))
        ]
        self.abfs = nn.ModuleList(built[::-1])
        self.in_channels, self.out_channels, self.mid_channels = in_channels, out_channels, mid_channels

    def student_levels(self, features: FeatureOutput) -> list[Tensor]:
        """The student's review levels, shallow to deep: the deepest stages, then the embedding as a 1x1 map."""
        stages = features.stages_pre if self.student_preact else features.stages_post
        embedding = features.embedding
        return list(stages[-self.num_stage_levels :]) + [embedding.view(*embedding.shape, 1, 1)]

    def teacher_levels(self, features: FeatureOutput) -> list[Tensor]:
        """The teacher's targets, shallow to deep: pre-activation stage features, then the pooled embedding."""
        embedding = features.embedding
        return list(features.stages_pre[-self.num_stage_levels :]) + [embedding.view(*embedding.shape, 1, 1)]

    def forward(self, student_levels: list[Tensor], out_sizes: list[tuple[int, int]]) -> list[Tensor]:
        """Fuse deep-to-shallow; return one map per level, shallow to deep, at the sizes ``out_sizes``."""
        results: list[Tensor] = []
        residual: Tensor | None = None
        for abf, features, size in zip(self.abfs, student_levels[::-1], out_sizes[::-1]):
            output, residual = abf(features, residual, size)
            results.insert(0, output)
        return results

    def loss(self, student: FeatureOutput, teacher: FeatureOutput) -> Tensor:
        """HCL between the fused student levels and the teacher's levels."""
        targets = self.teacher_levels(teacher)
        outputs = self(self.student_levels(student), [tuple(t.shape[-2:]) for t in targets])
        return hcl_loss(outputs, targets)


class ReviewKD(DistillationModule):
    """Knowledge review: ``L = ce_weight * CE + review_weight * ramp(epoch) * HCL(ABF(student), teacher)``.

    The ABFs are trained with the student and dropped at export (the student's inference path is unchanged).

    Args:
        student: network name.
        teacher: the frozen teacher.
        num_classes: classifier width (linked from the data).
        optim: optimiser and schedule.
        ce_weight: weight of the cross-entropy term.
        review_weight: weight of the HCL term (official CIFAR per-pair values in the module docs).
        warmup_epochs: epochs of the linear HCL-weight warm-up (20 on CIFAR; 0: none).
        warmup_one_based: count epochs from 1 in the warm-up (mdistiller) instead of 0 (official CIFAR).
        student_preact: use the student's pre-activation stage features (mdistiller ImageNet).
        max_mid_channels: upper bound of the ABF middle width (512; official ImageNet MobileNet: 256).
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
        review_weight: float = 1.0,
        warmup_epochs: float = 20.0,
        warmup_one_based: bool = False,
        student_preact: bool = False,
        max_mid_channels: int = 512,
    ) -> None:
        super().__init__(student=student, num_classes=num_classes, teacher=teacher, optim=optim)
        self.review = ReviewConnector(self.student, self.teacher, max_mid_channels, student_preact)

    def training_losses(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        images, labels = batch["images"], batch["labels"]
        teacher, student = self.teacher_and_student(images)
        ramp = loss_ramp(self.schedule_epoch, self.warmup_epochs, self.warmup_one_based)
        return student.logits, self.review_losses(student, teacher, labels, ramp)

    def review_losses(
        self, student: FeatureOutput, teacher: FeatureOutput, labels: Tensor, ramp: float
    ) -> dict[str, Tensor]:
        """``ce_weight * CE + review_weight * ramp * HCL`` (ReviewKD++ passes ND's ramp)."""
        return {
            "ce": self.ce_weight * F.cross_entropy(student.logits, labels),
            "review": self.review_weight * ramp * self.review.loss(student, teacher),
        }
