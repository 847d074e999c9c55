"""ND / dino-loss: Wang et al., "Improving Knowledge Distillation via Regularizing Feature Direction and Norm"
(ECCV 2024) — KD++, ReviewKD++ and the feature-regulariser ablations of the paper's Tables 4 and 5.

Every "++" method is an existing distillation loss plus the dino-loss (ND loss) on the pooled penultimate
embedding (paper Eq. 8)::

    L = ce_weight * CE + kd_weight * min(1, epoch / warmup_epochs) * L_kd + nd_weight * L_dino

with 0-based epochs, so the first epoch has no ``L_kd`` (official ``min(1.0, epoch / warm_up)``; the paper calls it
"a linear warm-up for the first 20 epochs"; 5 on ImageNet).  :class:`NDDistillation` holds everything the "++"
methods share — the teacher's class centres (the offline class-mean stage, :mod:`kd_modules.class_means`), the
EmbTrans projection when the embedding widths differ, the KD-weight ramp and the dino term — so a new "++" method
is its base loss plus one call to :meth:`NDDistillation.nd_losses`.

Per-pair weights (official scripts, CE weight always 1; the table files set them with ``pair_init_args``):

========================  =============  ==============  ===================  =================
CIFAR-100 pair            KD++ kd / nd   DIST++ kd / nd  DKD++ a / b / nd     ReviewKD++ kd / nd
========================  =============  ==============  ===================  =================
resnet56->resnet20        1.0 / 2.0      2.0 / 1.0       2.5 / 4.0 / 3.5      1.2 / 1.0
resnet32x4->resnet8x4     3.5 / 2.0      1.5 / 4.0       2.0 / 8.0 / 0.5      8.0 / 1.0
wrn_40_2->wrn_40_1        1.0 / 1.5      2.5 / 3.0       1.0 / 6.0 / 1.0      5.0 / 4.0
resnet50->mobilenetv2     3.0 / 0.5      7.0 / 1.0       0.5 / 8.0 / 1.0      6.0 / 2.0
resnet32x4->shufflenetv1  2.5 / 1.5      2.5 / 3.0       0.5 / 8.0 / 4.0      7.0 / 1.0
resnet32x4->shufflenetv2  4.0 / 0.5      3.0 / 4.0       0.5 / 6.0 / 0.5      8.0 / 1.5
========================  =============  ==============  ===================  =================

ImageNet (T = 1, warm-up 5 epochs, ``projection_init="imagenet"``): KD++ R34->R18 2.5 / 1.0, R50->R18 4.0 / 1.0,
R101->R18 3.5 / 4.0, R152->R18 4.0 / 2.0, R50->MobileNetV1 4.0 / 1.0; ReviewKD++ R34->R18 1.0 / 3.0, R50->R18
3.0 / 2.0, R101->R18 3.0 / 1.0, R152->R18 3.0 / 1.0, R50->MobileNetV1 8.0 / 4.0 (README; the script shows 6.0 /
1.0); DKD++ (alpha / beta / nd) R34->R18 0.8 / 0.5 / 1.0, R50->R18 0.6 / 0.5 / 2.0, R101->R18 0.8 / 0.5 / 1.0 (the
README example uses nd 2.0), R152->R18 1.0 / 1.0 / 1.0, R50->MobileNetV1 0.8 / 1.0 / 1.0, with the ND term ramped
too (``nd_ramp=True``, ``ImageNet/train_dkd.py``).  DKD++ and DIST++ reuse the pure DKD and DIST losses
(:mod:`kd_modules.losses.dkd`, :mod:`kd_modules.losses.dist`) under ND's 0-based ramp.

Official-code facts reproduced: the plain batch mean of the dino term (the paper's class-balanced Eq. 7 is
``nd_reduction="class_balanced"``); class means from one augmented pass over the training split (a clean pass is
``class_mean_transform="clean"``); the EmbTrans head BN1d - Dropout(0.5) - Linear only when the widths differ,
trained with the student and dropped at export; Nesterov SGD and batch 128 come from the ND recipe
(``configs/recipes/nd_cifar100.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_modules.base import Batch, DistillationModule, MethodConfigError, OptimConfig, TeacherConfig
from kd_modules.class_means import TRANSFORMS, MeanTransform, pooled_tap, tap_channels, teacher_class_means
from kd_modules.losses.dist import dist_loss
from kd_modules.losses.dkd import nckd_loss, tckd_loss
from kd_modules.losses.kd import kd_loss
from kd_modules.losses.nd import (
    REDUCTIONS,
    Reduction,
    classifier_weight_l2_loss,
    cosine_direction_loss,
    dino_loss,
    infonce_direction_loss,
    l2_feature_loss,
    sifn_loss,
)
from kd_modules.reviewkd import ReviewConnector, loss_ramp
from models import FeatureOutput, KDNet

__all__ = [
    "CenterSource",
    "ProjectionInit",
    "EmbeddingProjection",
    "DinoTap",
    "dino_taps",
    "NDDistillation",
    "KDPlusPlus",
    "DKDPlusPlus",
    "DISTPlusPlus",
    "ReviewKDPlusPlus",
    "KDFeatureRegularizer",
]

CenterSource = Literal["class_means", "classifier_weights"]
CENTER_SOURCES = ("class_means", "classifier_weights")
ProjectionInit = Literal["cifar", "imagenet"]
PROJECTION_INITS = ("cifar", "imagenet")


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise MethodConfigError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")


class EmbeddingProjection(nn.Sequential):
    """ND's EmbTrans head: BatchNorm1d(D_s) - Dropout(0.5) - Linear(D_s -> D_t), applied to the student embedding
    for the ND loss only (the classifier still reads the unprojected embedding).

    Initialisation: BN weight 1, bias 0; Linear bias 0 and PyTorch's default weight (``init="cifar"``,
    ``CIFAR/Models/embtrans_cifar.py``) or weight and bias N(0, 0.01^2) (``init="imagenet"``,
    ``ImageNet/Models/embtrans.py``).  The dropout also acts on the norm compared in the dino-loss's max (as in
    the official code).
    """

    def __init__(self, in_dim: int, out_dim: int, init: ProjectionInit = "cifar", dropout: float = 0.5) -> None:
        _check_choice("projection init", init, PROJECTION_INITS)
        super().__init__(nn.BatchNorm1d(in_dim), nn.Dropout(dropout), nn.Linear(in_dim, out_dim))
        nn.init.ones_(self[0].weight)
        nn.init.zeros_(self[0].bias)
        linear = self[2]
        if init == "imagenet":
            nn.init.normal_(linear.weight, mean=0.0, std=0.01)
            nn.init.normal_(linear.bias, mean=0.0, std=0.01)
        else:
            nn.init.zeros_(linear.bias)


@dataclass(frozen=True)
class DinoTap:
    """Where a dino term is applied: a pooled student tap, the teacher tap it is compared with, a loss-term name."""

    name: str
    student_tap: str
    teacher_tap: str


def _earlier_tap(network: KDNet, steps_back: int) -> str:
    index = network.num_stages - steps_back  # stage number; 0 is the stem
    if index < 0:
        raise MethodConfigError(
            f"{type(network).__name__} has {network.num_stages} stages and a stem: no layer {steps_back} "
            f"stages before its last stage (nd_layers can be at most {network.num_stages})"
        )
    return "stem" if index == 0 else f"stage{index}"


def dino_taps(student: KDNet, teacher: KDNet, nd_layers: int = 0) -> list[DinoTap]:
    """The embedding, then ``nd_layers`` earlier layers (Table 5 "layer-x").

    Our reading of "the x layers right before the penultimate layer": the outputs of the x stages before the last
    one, counted back from it (the last stage's output is the map the embedding pools: for ResNets its pooled
    form *is* the embedding), then the stem; each is global-average pooled, and the student's and the teacher's
    layers are matched counting back from their last stages.  The paper gives no code for this ablation.
    """
    if nd_layers < 0:
        raise MethodConfigError(f"nd_layers must be >= 0, got {nd_layers}")
    taps = [DinoTap("nd", "embedding", "embedding")]
    for back in range(1, nd_layers + 1):
        taps.append(DinoTap(f"nd_layer{back}", _earlier_tap(student, back), _earlier_tap(teacher, back)))
    return taps


class NDDistillation(DistillationModule):
    """Shared machinery of the ND methods (abstract): class centres, EmbTrans projections, KD-weight ramp.

    Subclasses call ``super().__init__`` with their regularised taps and implement ``training_losses``.

    Args:
        student: network name.
        teacher: the frozen teacher.
        num_classes: classifier width.
        optim: optimiser and schedule.
        warmup_epochs: KD-weight ramp length, ``min(1, epoch / warmup_epochs)`` with 0-based epochs.
        nd_reduction: ``batch`` (official code) or ``class_balanced`` (paper Eq. 7).
        centers: ``class_means`` (the teacher's class means, ND's method) or ``classifier_weights`` (the rows of
            the teacher's classifier, Table 5 "w/ weights").
        class_mean_transform: ``train`` (one augmented view per training image, official) or ``clean``.
        class_mean_seed: seed of the augmented class-mean pass (one artefact per teacher shared by all trials).
        projection_init: EmbTrans initialisation, ``cifar`` or ``imagenet``.
        taps: where the features are regularised (``dino_taps``).
        use_centers: whether the method reads class centres.
        use_projection: whether the student features are projected to the teacher's width where they differ.
    """

    requires_teacher = True

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        num_classes: int,
        optim: OptimConfig,
        *,
        warmup_epochs: float,
        nd_reduction: Reduction,
        centers: CenterSource,
        class_mean_transform: MeanTransform,
        class_mean_seed: int,
        projection_init: ProjectionInit,
        nd_layers: int = 0,
        use_centers: bool = True,
        use_projection: bool = True,
    ) -> None:
        super().__init__(student=student, num_classes=num_classes, teacher=teacher, optim=optim)
        assert self.teacher is not None
        _check_choice("nd_reduction", nd_reduction, REDUCTIONS)
        _check_choice("centers", centers, CENTER_SOURCES)
        _check_choice("class_mean_transform", class_mean_transform, TRANSFORMS)
        self.teacher_config = teacher
        self.warmup_epochs = warmup_epochs
        self.nd_reduction: Reduction = nd_reduction
        self.center_source: CenterSource = centers
        self.class_mean_transform: MeanTransform = class_mean_transform
        self.class_mean_seed = class_mean_seed
        self.use_centers = use_centers
        self.taps = dino_taps(self.student, self.teacher, nd_layers)
        if centers == "classifier_weights" and nd_layers > 0:
            raise MethodConfigError(
                "centers='classifier_weights' has class vectors for the embedding only; use nd_layers=0"
            )

        # EmbTrans heads, one per tap whose widths differ (registered: optimised, checkpointed, never exported).
        self.projections = nn.ModuleDict()
        if use_projection:
            for tap in self.taps:
                s_dim = tap_channels(self.student, tap.student_tap)
                t_dim = tap_channels(self.teacher, tap.teacher_tap)
                if s_dim != t_dim:
                    self.projections[tap.name] = EmbeddingProjection(s_dim, t_dim, projection_init)

        # Class centres: non-persistent buffers (they follow the module's device; a checkpoint never carries them,
        # they always come from the cached artefact of *this* teacher).
        for tap in self.taps:
            self.register_buffer(f"centers_{tap.name}", torch.empty(0), persistent=False)
        if use_centers and centers == "classifier_weights":
            self.centers_nd = self.teacher.classifier.weight.detach().clone()

    # ------------------------------------------------------------------------------------- class centres
    @property
    def needs_class_means(self) -> bool:
        return self.use_centers and self.center_source == "class_means"

    def centers_for(self, tap: DinoTap) -> Tensor:
        centers = getattr(self, f"centers_{tap.name}")
        if centers.numel() == 0:
            raise RuntimeError(
                f"{type(self).__name__}: the teacher class means are not loaded; train through a Trainer with a "
                f"datamodule (setup() computes them) or call prepare_class_means(datamodule) first"
            )
        return centers

    def prepare_class_means(self, datamodule: object, device: torch.device | str | None = None) -> None:
        """Load (or compute once and cache) the teacher's class means on ``datamodule``'s training split."""
        if not self.needs_class_means:
            return
        assert self.teacher is not None
        device = torch.device(device) if device is not None else next(self.teacher.parameters()).device
        self.teacher.to(device)
        means = teacher_class_means(
            self.teacher,
            self.teacher_config.checkpoint,
            datamodule,
            self.hparams["num_classes"],
            transform=self.class_mean_transform,
            seed=self.class_mean_seed,
            device=device,
            teacher_arch=self.teacher_config.arch,
        )
        for tap in self.taps:
            setattr(self, f"centers_{tap.name}", means[tap.teacher_tap].to(device))

    def setup(self, stage: str) -> None:
        if stage != "fit" or not self.needs_class_means or self.centers_nd.numel() > 0:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            raise MethodConfigError(
                f"{type(self).__name__} computes the teacher class means from the training split: pass a "
                f"datamodule to Trainer.fit (or call prepare_class_means(datamodule) before fitting)"
            )
        # The pass runs on the training device (the strategy moves the rest of the module there next).
        self.prepare_class_means(datamodule, self.trainer.strategy.root_device)

    # -------------------------------------------------------------------------------------------- pieces
    def kd_ramp(self) -> float:
        """``min(1, epoch / warmup_epochs)``, 0-based epochs: the first epoch has no KD-type term."""
        return loss_ramp(self.schedule_epoch, self.warmup_epochs)

    def tap_features(self, student: FeatureOutput, teacher: FeatureOutput, tap: DinoTap) -> tuple[Tensor, Tensor]:
        """The (projected) pooled student feature and the teacher's pooled feature at ``tap``."""
        student_feature = pooled_tap(student, tap.student_tap)
        if tap.name in self.projections:
            student_feature = self.projections[tap.name](student_feature)
        return student_feature, pooled_tap(teacher, tap.teacher_tap)

    def nd_losses(
        self, student: FeatureOutput, teacher: FeatureOutput, labels: Tensor, weight: float
    ) -> dict[str, Tensor]:
        """``weight * L_dino`` at every tap (``nd``, then ``nd_layer1`` ... for Table 5's layer-x)."""
        losses = {}
        for tap in self.taps:
            student_feature, teacher_feature = self.tap_features(student, teacher, tap)
            value = dino_loss(student_feature, teacher_feature, self.centers_for(tap), labels, self.nd_reduction)
            losses[tap.name] = weight * value
        return losses

    def both_features(self, images: Tensor) -> tuple[FeatureOutput, FeatureOutput]:
        """Student features (with gradients) and teacher features (inference mode) of the same images."""
        return self.student.forward_features(images), self.teacher_features(images)


class KDPlusPlus(NDDistillation):
    """KD++: ``CE + kd_weight * ramp(epoch) * T^2 KL(p_t || p_s) + nd_weight * L_dino`` (paper Eq. 8).

    Defaults are the official script's (CE 1, KD 1, ND 1, T 4, warm-up 20); the per-pair weights are in the module
    docs and ``configs/methods/kdpp.yaml``.  Table 4d: ``kd_weight=0`` is "CE + dino", ``ce_weight=0`` "KL + dino".
    Table 5: ``centers="classifier_weights"`` is "w/ weights", ``nd_layers=x`` is "layer-x".

    Args:
        student: network name.
        teacher: the frozen teacher.
        num_classes: classifier width (linked from the data).
        optim: optimiser and schedule (ND: Nesterov, lr 0.1 / 0.02, batch 128 — the ``nd_cifar100`` recipe).
        ce_weight: weight of the cross-entropy term.
        kd_weight: weight of the KD term (ramped).
        nd_weight: weight of the dino term (not ramped), the same at every tap.
        temperature: KD temperature (4 on CIFAR, 1 on ImageNet).
        warmup_epochs: KD-weight ramp length in epochs (20 on CIFAR, 5 on ImageNet; 0: none).
        nd_reduction: ``batch`` (official) or ``class_balanced`` (paper Eq. 7).
        centers: ``class_means`` (ND) or ``classifier_weights`` (Table 5 "w/ weights").
        nd_layers: also apply the dino term at this many earlier layers (Table 5 "layer-x"; 0: embedding only).
        class_mean_transform: ``train`` (official: one augmented view per image) or ``clean``.
        class_mean_seed: seed of the augmented class-mean pass.
        projection_init: EmbTrans initialisation, ``cifar`` or ``imagenet``.
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        num_classes: int = 100,
        optim: OptimConfig = OptimConfig(),
        ce_weight: float = 1.0,
        kd_weight: float = 1.0,
        nd_weight: float = 1.0,
        temperature: float = 4.0,
        warmup_epochs: float = 20.0,
        nd_reduction: Reduction = "batch",
        centers: CenterSource = "class_means",
        nd_layers: int = 0,
        class_mean_transform: MeanTransform = "train",
        class_mean_seed: int = 0,
        projection_init: ProjectionInit = "cifar",
    ) -> None:
        super().__init__(
            student,
            teacher,
            num_classes,
            optim,
            warmup_epochs=warmup_epochs,
            nd_reduction=nd_reduction,
            centers=centers,
            class_mean_transform=class_mean_transform,
            class_mean_seed=class_mean_seed,
            projection_init=projection_init,
            nd_layers=nd_layers,
        )
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
        self.nd_weight = nd_weight
        self.temperature = temperature

    def training_losses(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        images, labels = batch["images"], batch["labels"]
        student, teacher = self.both_features(images)
        losses: dict[str, Tensor] = {}
        if self.ce_weight:
            losses["ce"] = self.ce_weight * F.cross_entropy(student.logits, labels)
        if self.kd_weight:
            kd = kd_loss(student.logits, teacher.logits, self.temperature)
            losses["kd"] = self.kd_weight * self.kd_ramp() * kd
        losses.update(self.nd_losses(student, teacher, labels, self.nd_weight))
        return student.logits, losses


class DKDPlusPlus(NDDistillation):
    """DKD++: ``CE + ramp(epoch) * (alpha * TCKD + beta * NCKD) + nd_weight * [ramp(epoch)] * L_dino``
    (ND's ``CIFAR/train_cifar_dkd.py``, ``ImageNet/train_dkd.py``).

    The DKD terms are mdistiller's (:func:`kd_modules.losses.dkd.tckd_loss` / ``nckd_loss``: binary target /
    non-target KL and the non-target KL with the ground-truth logit masked by -1000, both x T^2 / B), as ND's
    ``DKDLoss``.  Unlike the DKD baseline (mdistiller counts epochs from 1, so its first epoch has factor
    1/warm-up), ND's ramp is ``min(1, epoch / warm_up)`` with 0-based epochs: the first epoch has no DKD term.
    On ImageNet the official script multiplies the dino term by the same ramp (``nd_ramp=True``,
    ``configs/methods/dkdpp_imagenet.yaml``); on CIFAR it does not.

    Defaults are the official script's argparse defaults (CE 1, alpha 1, beta 1, ND 1, T 4, warm-up 20); the
    per-pair weights (ND spec §2.5) are in the module docs and ``configs/methods/dkdpp.yaml``.

    Args:
        student: network name.
        teacher: the frozen teacher.
        num_classes: classifier width (linked from the data).
        optim: optimiser and schedule (ND: Nesterov, lr 0.1 / 0.02, batch 128 — the ``nd_cifar100`` recipe).
        ce_weight: weight of the cross-entropy term (``--cls_loss_factor``).
        alpha: weight of TCKD (``--dkd_alpha``), ramped.
        beta: weight of NCKD (``--dkd_beta``), ramped.
        nd_weight: weight of the dino term (``--nd_loss_factor``).
        temperature: DKD temperature (4 on CIFAR, 1 on ImageNet).
        warmup_epochs: ramp length in epochs (20 on CIFAR, 5 on ImageNet; 0: none).
        nd_ramp: multiply the dino term by the ramp too (official ImageNet DKD++).
        nd_reduction: ``batch`` (official) or ``class_balanced`` (paper Eq. 7).
        centers: ``class_means`` (ND) or ``classifier_weights``.
        class_mean_transform: ``train`` (official: one augmented view per image) or ``clean``.
        class_mean_seed: seed of the augmented class-mean pass.
        projection_init: EmbTrans initialisation, ``cifar`` or ``imagenet``.
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        num_classes: int = 100,
        optim: OptimConfig = OptimConfig(),
        ce_weight: float = 1.0,
        alpha: float = 1.0,
        beta: float = 1.0,
        nd_weight: float = 1.0,
        temperature: float = 4.0,
        warmup_epochs: float = 20.0,
        nd_ramp: bool = False,
        nd_reduction: Reduction = "batch",
        centers: CenterSource = "class_means",
        class_mean_transform: MeanTransform = "train",
        class_mean_seed: int = 0,
        projection_init: ProjectionInit = "cifar",
    ) -> None:
        super().__init__(
            student,
            teacher,
            num_classes,
            optim,
            warmup_epochs=warmup_epochs,
            nd_reduction=nd_reduction,
            centers=centers,
            class_mean_transform=class_mean_transform,
            class_mean_seed=class_mean_seed,
            projection_init=projection_init,
        )
        self.ce_weight = ce_weight
        self.alpha = alpha
        self.beta = beta
        self.nd_weight = nd_weight
        self.temperature = temperature
        self.nd_ramp = nd_ramp

    def training_losses(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        images, labels = batch["images"], batch["labels"]
        student, teacher = self.both_features(images)
        ramp = self.kd_ramp()
        logits, teacher_logits = student.logits, teacher.logits
        losses = {
            "ce": self.ce_weight * F.cross_entropy(logits, labels),
            "tckd": ramp * self.alpha * tckd_loss(logits, teacher_logits, labels, self.temperature),
            "nckd": ramp * self.beta * nckd_loss(logits, teacher_logits, labels, self.temperature),
        }
        nd_weight = self.nd_weight * ramp if self.nd_ramp else self.nd_weight
        losses.update(self.nd_losses(student, teacher, labels, nd_weight))
        return logits, losses


class DISTPlusPlus(NDDistillation):
    """DIST++: ``CE + kd_weight * ramp(epoch) * tau^2 (beta * inter + gamma * intra) + nd_weight * L_dino``
    (ND's ``CIFAR/DIST++/train_dist.py``; CIFAR only).

    The DIST term is :func:`kd_modules.losses.dist.dist_loss` with ND's instantiation ``DIST(beta=1, gamma=1,
    tau=4)``: the pair-specific weight is ``kd_weight`` (``--kd_loss_factor``) outside it, not DIST's own CIFAR
    weight 2 (spec §2.8 gotcha 7).  0-based ramp as every ND method; the dino term is not ramped.

    Defaults are the official script's (CE 1, KD 1, ND 1, tau 4, warm-up 20); per-pair weights in the module docs
    and ``configs/methods/distpp.yaml``.

    Args:
        student: network name.
        teacher: the frozen teacher.
        num_classes: classifier width (linked from the data).
        optim: optimiser and schedule (ND: Nesterov, lr 0.1 / 0.02, batch 128 — the ``nd_cifar100`` recipe).
        ce_weight: weight of the cross-entropy term (``--cls_loss_factor``).
        kd_weight: weight of the DIST term (``--kd_loss_factor``), ramped.
        nd_weight: weight of the dino term (``--nd_loss_factor``).
        beta: weight of DIST's inter-class relation (1).
        gamma: weight of DIST's intra-class relation (1).
        tau: DIST's softmax temperature (``--t`` 4).
        warmup_epochs: ramp length in epochs (20; 0: none).
        nd_reduction: ``batch`` (official) or ``class_balanced`` (paper Eq. 7).
        centers: ``class_means`` (ND) or ``classifier_weights``.
        class_mean_transform: ``train`` (official: one augmented view per image) or ``clean``.
        class_mean_seed: seed of the augmented class-mean pass.
        projection_init: EmbTrans initialisation, ``cifar`` or ``imagenet``.
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        num_classes: int = 100,
        optim: OptimConfig = OptimConfig(),
        ce_weight: float = 1.0,
        kd_weight: float = 1.0,
        nd_weight: float = 1.0,
        beta: float = 1.0,
        gamma: float = 1.0,
        tau: float = 4.0,
        warmup_epochs: float = 20.0,
        nd_reduction: Reduction = "batch",
        centers: CenterSource = "class_means",
        class_mean_transform: MeanTransform = "train",
        class_mean_seed: int = 0,
        projection_init: ProjectionInit = "cifar",
    ) -> None:
        super().__init__(
            student,
            teacher,
            num_classes,
            optim,
            warmup_epochs=warmup_epochs,
            nd_reduction=nd_reduction,
            centers=centers,
            class_mean_transform=class_mean_transform,
            class_mean_seed=class_mean_seed,
            projection_init=projection_init,
        )
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
        self.nd_weight = nd_weight
        self.beta = beta
        self.gamma = gamma
        self.tau = tau

    def training_losses(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        images, labels = batch["images"], batch["labels"]
        student, teacher = self.both_features(images)
        relation = dist_loss(student.logits, teacher.logits, self.beta, self.gamma, self.tau)
        losses = {
            "ce": self.ce_weight * F.cross_entropy(student.logits, labels),
            "dist": self.kd_weight * self.kd_ramp() * relation,
        }
        losses.update(self.nd_losses(student, teacher, labels, self.nd_weight))
        return student.logits, losses


class ReviewKDPlusPlus(NDDistillation):
    """ReviewKD++: ``CE + review_weight * ramp(epoch) * HCL + nd_weight * L_dino`` (ND's ``train_reviewkd.py``).

    The ABF stack is :class:`kd_modules.reviewkd.ReviewConnector` (teacher pre-activation stage features and
    pooled embedding, student post-activation features); no logit-KD term.  Per-pair weights in the module docs.

    Args:
        student: network name.
        teacher: the frozen teacher.
        num_classes: classifier width (linked from the data).
        optim: optimiser and schedule.
        ce_weight: weight of the cross-entropy term.
        review_weight: weight of the HCL term (ramped; the official ``kd_loss_factor``).
        nd_weight: weight of the dino term.
        warmup_epochs: HCL-weight ramp length in epochs (0-based epochs, as the official script).
        student_preact: use the student's pre-activation stage features.
        max_mid_channels: upper bound of the ABF middle width.
        nd_reduction: ``batch`` (official) or ``class_balanced`` (paper Eq. 7).
        centers: ``class_means`` (ND) or ``classifier_weights``.
        class_mean_transform: ``train`` (official) or ``clean``.
        class_mean_seed: seed of the augmented class-mean pass.
        projection_init: EmbTrans initialisation, ``cifar`` or ``imagenet``.
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        num_classes: int = 100,
        optim: OptimConfig = OptimConfig(),
        ce_weight: float = 1.0,
        review_weight: float = 1.0,
        nd_weight: float = 1.0,
        warmup_epochs: float = 20.0,
        student_preact: bool = False,
        max_mid_channels: int = 512,
        nd_reduction: Reduction = "batch",
        centers: CenterSource = "class_means",
        class_mean_transform: MeanTransform = "train",
        class_mean_seed: int = 0,
        projection_init: ProjectionInit = "cifar",
    ) -> None:
        super().__init__(
            student,
            teacher,
            num_classes,
            optim,
            warmup_epochs=warmup_epochs,
            nd_reduction=nd_reduction,
            centers=centers,
            class_mean_transform=class_mean_transform,
            class_mean_seed=class_mean_seed,
            projection_init=projection_init,
        )
        assert self.teacher is not None
        self.ce_weight = ce_weight
        self.review_weight = review_weight
        self.nd_weight = nd_weight
        self.review = ReviewConnector(self.student, self.teacher, max_mid_channels, student_preact)

    def training_losses(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        images, labels = batch["images"], batch["labels"]
        student, teacher = self.both_features(images)
        losses = {
            "ce": self.ce_weight * F.cross_entropy(student.logits, labels),
            "review": self.review_weight * self.kd_ramp() * self.review.loss(student, teacher),
        }
        losses.update(self.nd_losses(student, teacher, labels, self.nd_weight))
        return student.logits, losses


Direction = Literal["none", "cosine", "infonce"]
DIRECTIONS = ("none", "cosine", "infonce")
Norm = Literal["none", "l2", "sifn"]
NORMS = ("none", "l2", "sifn")


class KDFeatureRegularizer(NDDistillation):
    """KD plus the separate feature direction / norm regularisers ND compares its dino-loss with (Tables 4a-c),
    and the classifier-weight L2 of Table 5::

        L = ce_weight * CE + kd_weight * ramp(epoch) * KD + direction_weight * L_dir + norm_weight * L_norm
            + classifier_l2_weight * L2(W_s, W_t)

    * ``direction``: ``cosine`` (Eq. 1) or ``infonce`` (Eq. 2) towards the teacher class means;
    * ``norm``: ``l2`` (Eq. 3, to the teacher's feature of the same image) or ``sifn`` (Eq. 4, a steady norm
      increase; see :func:`kd_modules.losses.nd.sifn_loss`);
    * ``classifier_l2_weight > 0``: "L2 of cls weights" — the student's classifier weights (mapped to the
      teacher's width by a trained linear map when the widths differ) pulled towards the teacher's.

    The paper publishes none of these weights; the table rows use the pair's KD++ ND weight for the direction and
    L2 terms (they are on the dino-loss's scale) and the cited SIFN method's weight 0.05 with step 1.0.  Student
    features are projected by EmbTrans for the direction and L2 terms when the widths differ; SIFN acts on the
    student's own embedding.

    Args:
        student: network name.
        teacher: the frozen teacher.
        num_classes: classifier width (linked from the data).
        optim: optimiser and schedule.
        ce_weight: weight of the cross-entropy term.
        kd_weight: weight of the KD term (ramped).
        temperature: KD temperature.
        warmup_epochs: KD-weight ramp length in epochs.
        direction: ``none``, ``cosine`` or ``infonce``.
        direction_weight: weight of the direction term.
        norm: ``none``, ``l2`` or ``sifn``.
        norm_weight: weight of the norm term.
        sifn_step: SIFN's norm step ``r``.
        classifier_l2_weight: weight of the classifier-weight L2 (0: off).
        nd_reduction: ``batch`` or ``class_balanced`` averaging of the direction and L2 terms.
        centers: ``class_means`` or ``classifier_weights`` for the direction term.
        class_mean_transform: ``train`` or ``clean``.
        class_mean_seed: seed of the augmented class-mean pass.
        projection_init: EmbTrans initialisation, ``cifar`` or ``imagenet``.
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        num_classes: int = 100,
        optim: OptimConfig = OptimConfig(),
        ce_weight: float = 1.0,
        kd_weight: float = 1.0,
        temperature: float = 4.0,
        warmup_epochs: float = 20.0,
        direction: Direction = "cosine",
        direction_weight: float = 1.0,
        norm: Norm = "none",
        norm_weight: float = 1.0,
        sifn_step: float = 1.0,
        classifier_l2_weight: float = 0.0,
        nd_reduction: Reduction = "batch",
        centers: CenterSource = "class_means",
        class_mean_transform: MeanTransform = "train",
        class_mean_seed: int = 0,
        projection_init: ProjectionInit = "cifar",
    ) -> None:
        _check_choice("direction", direction, DIRECTIONS)
        _check_choice("norm", norm, NORMS)
        if direction == "none" and norm == "none" and classifier_l2_weight == 0:
            raise MethodConfigError(
                "KDFeatureRegularizer with direction='none', norm='none' and classifier_l2_weight=0 is plain KD: "
                "choose a direction (cosine, infonce), a norm (l2, sifn) or a classifier_l2_weight > 0"
            )
        super().__init__(
            student,
            teacher,
            num_classes,
            optim,
            warmup_epochs=warmup_epochs,
            nd_reduction=nd_reduction,
            centers=centers,
            class_mean_transform=class_mean_transform,
            class_mean_seed=class_mean_seed,
            projection_init=projection_init,
            use_centers=direction != "none",
            use_projection=direction != "none" or norm == "l2",
        )
        assert self.teacher is not None
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
        self.temperature = temperature
        self.direction = direction
        self.direction_weight = direction_weight
        self.norm = norm
        self.norm_weight = norm_weight
        self.sifn_step = sifn_step
        self.classifier_l2_weight = classifier_l2_weight
        self.classifier_projection: nn.Linear | None = None
        s_dim, t_dim = self.student.embedding_dim, self.teacher.embedding_dim
        if classifier_l2_weight and s_dim != t_dim:
            self.classifier_projection = nn.Linear(s_dim, t_dim, bias=False)

    def training_losses(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        images, labels = batch["images"], batch["labels"]
        student, teacher = self.both_features(images)
        tap = self.taps[0]
        projected, teacher_embedding = self.tap_features(student, teacher, tap)
        num_classes = student.logits.shape[1]
        losses: dict[str, Tensor] = {}
        if self.ce_weight:
            losses["ce"] = self.ce_weight * F.cross_entropy(student.logits, labels)
        if self.kd_weight:
            kd = kd_loss(student.logits, teacher.logits, self.temperature)
            losses["kd"] = self.kd_weight * self.kd_ramp() * kd
        if self.direction == "cosine":
            value = cosine_direction_loss(projected, self.centers_for(tap), labels, self.nd_reduction)
            losses["direction"] = self.direction_weight * value
        elif self.direction == "infonce":
            value = infonce_direction_loss(projected, self.centers_for(tap), labels, self.nd_reduction)
            losses["direction"] = self.direction_weight * value
        if self.norm == "l2":
            value = l2_feature_loss(projected, teacher_embedding, labels, num_classes, self.nd_reduction)
            losses["norm"] = self.norm_weight * value
        elif self.norm == "sifn":
            losses["norm"] = self.norm_weight * sifn_loss(student.embedding, self.sifn_step)
        if self.classifier_l2_weight:
            assert self.teacher is not None
            student_weight = self.student.classifier.weight
            if self.classifier_projection is not None:
                student_weight = self.classifier_projection(student_weight)
            value = classifier_weight_l2_loss(student_weight, self.teacher.classifier.weight)
            losses["classifier_l2"] = self.classifier_l2_weight * value
        return student.logits, losses
