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
from typing import Any, Literal

import torch
from torch import Tensor, nn

from kd_modules.base import Batch, MethodConfigError, OptimConfig, SettingsGroup, TeacherConfig, loss_ramp
from kd_modules.class_means import MeanTransform, pooled_tap, tap_channels, teacher_class_means
from kd_modules.dist import DIST
from kd_modules.dkd import DKD
from kd_modules.kd import KD
from kd_modules.losses.nd import (
    Reduction,
    classifier_weight_l2_loss,
    cosine_direction_loss,
    dino_loss,
    infonce_direction_loss,
    l2_feature_loss,
    sifn_loss,
)
from kd_modules.reviewkd import ReviewKD
from models import FeatureOutput, KDNet

__all__ = [
    "CenterSource",
    "ProjectionInit",
    "NDSettings",
    "EmbeddingProjection",
    "DinoTap",
    "dino_taps",
    "load_class_means",
    "NDDistillation",
    "KDPlusPlus",
    "DKDPlusPlus",
    "DISTPlusPlus",
    "ReviewKDPlusPlus",
    "KDFeatureRegularizer",
]

CenterSource = Literal["class_means", "classifier_weights"]
ProjectionInit = Literal["cifar", "imagenet"]


@dataclass(frozen=True)
class NDSettings(SettingsGroup):
    """ND's settings shared by every "++" method and the feature-regulariser ablations (``nd: {...}`` in YAML).

    Args:
        warmup_epochs: ramp length of the base method's distillation term, ``min(1, epoch / warmup_epochs)`` with
            0-based epochs (official ``min(1.0, epoch / warm_up)``: 20 on CIFAR, 5 on ImageNet; 0: none).
        nd_reduction: averaging of the dino term over the batch: ``batch`` (official code) or ``class_balanced``
            (paper Eq. 7).
        centers: ``class_means`` (the teacher's class means, ND's method) or ``classifier_weights`` (the rows of
            the teacher's classifier, Table 5 "w/ weights").
        class_mean_transform: ``train`` (one augmented view per training image, official) or ``clean``.
        class_mean_seed: seed of the augmented class-mean pass (one artefact per teacher shared by all trials).
        projection_init: EmbTrans initialisation, ``cifar`` or ``imagenet``.
    """

    warmup_epochs: float = 20.0
    nd_reduction: Reduction = "batch"
    centers: CenterSource = "class_means"
    class_mean_transform: MeanTransform = "train"
    class_mean_seed: int = 0
    projection_init: ProjectionInit = "cifar"


class EmbeddingProjection(nn.Sequential):
    """ND's EmbTrans head: BatchNorm1d(D_s) - Dropout(0.5) - Linear(D_s -> D_t), applied to the student embedding
    for the ND loss only (the classifier still reads the unprojected embedding).

    Initialisation: BN weight 1, bias 0 (PyTorch's); Linear bias 0 and PyTorch's default weight (``init="cifar"``,
    ``CIFAR/Models/embtrans_cifar.py``) or weight and bias N(0, 0.01^2) (``init="imagenet"``,
    ``ImageNet/Models/embtrans.py``).  The dropout also acts on the norm compared in the dino-loss's max (as in
    the official code).
    """

    def __init__(self, in_dim: int, out_dim: int, init: ProjectionInit = "cifar", dropout: float = 0.5) -> None:
        super().__init__(nn.BatchNorm1d(in_dim), nn.Dropout(dropout), nn.Linear(in_dim, out_dim))
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


def load_class_means(
    module: Any, datamodule: object, device: torch.device | str | None, transform: MeanTransform, seed: int
) -> dict[str, Tensor]:
    """The class means of ``module``'s teacher on ``datamodule``'s training split
    (:func:`kd_modules.class_means.teacher_class_means`: computed once, then loaded from its cache), from a pass on
    ``device`` (None: the teacher's); the teacher and the means are moved there."""
    device = torch.device(device) if device is not None else next(module.teacher.parameters()).device
    config: TeacherConfig = module.teacher_config
    means = teacher_class_means(
        module.teacher.to(device),
        config.checkpoint,
        datamodule,
        int(module.hparams["num_classes"]),
        transform=transform,
        seed=seed,
        device=device,
        teacher_arch=config.arch,
    )
    return {name: value.to(device) for name, value in means.items()}


class NDDistillation:
    """The "++" term (mixin, as :class:`kd_modules.crd.ContrastiveTerm`): ND's dino term added to a base method.

    ``KDPlusPlus(NDDistillation, KD)`` is KD's own loss assembly (``logit_losses``) under ND's 0-based ramp plus
    :meth:`nd_losses`; the mixin holds the teacher's class centres (the offline class-mean stage,
    :mod:`kd_modules.class_means`, computed in ``setup``), the EmbTrans projections where the widths differ and the
    ramp.  A new "++" method is its base class, this mixin and a constructor that calls :meth:`build_nd`.
    """

    #: Multiply the dino term by the ramp too (DKD++ on ImageNet sets it).
    nd_ramp: bool = False
    student: KDNet
    teacher: KDNet

    def build_nd(
        self,
        nd: NDSettings,
        nd_weight: float = 0.0,
        nd_layers: int = 0,
        *,
        use_centers: bool = True,
        use_projection: bool = True,
    ) -> None:
        """Taps, EmbTrans heads and centre buffers; ``use_centers`` / ``use_projection``: whether the method reads
        class centres / projects student features to the teacher's width where they differ."""
        self.nd, self.nd_weight, self.use_centers = nd, nd_weight, use_centers
        self.taps = dino_taps(self.student, self.teacher, nd_layers)
        if nd.centers == "classifier_weights" and nd_layers > 0:
            raise MethodConfigError(
                "centers='classifier_weights' has class vectors for the embedding only; use nd_layers=0"
            )
        # EmbTrans heads, one per tap whose widths differ (registered: optimised, checkpointed, never exported).
        self.projections = nn.ModuleDict()
        for tap in self.taps if use_projection else []:
            s_dim = tap_channels(self.student, tap.student_tap)
            t_dim = tap_channels(self.teacher, tap.teacher_tap)
            if s_dim != t_dim:
                self.projections[tap.name] = EmbeddingProjection(s_dim, t_dim, nd.projection_init)
        # Class centres: non-persistent buffers (they follow the module's device; a checkpoint never carries them,
        # they always come from the cached artefact of *this* teacher).
        for tap in self.taps:
            self.register_buffer(f"centers_{tap.name}", torch.empty(0), persistent=False)  # type: ignore[attr-defined]
        if use_centers and nd.centers == "classifier_weights":
            self.centers_nd = self.teacher.classifier.weight.detach().clone()

    # ------------------------------------------------------------------------------------- class centres
    @property
    def needs_class_means(self) -> bool:
        return self.use_centers and self.nd.centers == "class_means"

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
        means = load_class_means(self, datamodule, device, self.nd.class_mean_transform, self.nd.class_mean_seed)
        for tap in self.taps:
            setattr(self, f"centers_{tap.name}", means[tap.teacher_tap])

    def setup(self, stage: str) -> None:
        if stage != "fit" or not self.needs_class_means or self.centers_nd.numel() > 0:
            return
        datamodule = getattr(self.trainer, "datamodule", None)  # type: ignore[attr-defined]
        if datamodule is None:
            raise MethodConfigError(
                f"{type(self).__name__} computes the teacher class means from the training split: pass a "
                f"datamodule to Trainer.fit (or call prepare_class_means(datamodule) before fitting)"
            )
        # The pass runs on the training device (the strategy moves the rest of the module there next).
        self.prepare_class_means(datamodule, self.trainer.strategy.root_device)  # type: ignore[attr-defined]

    # -------------------------------------------------------------------------------------------- the loss
    def kd_ramp(self) -> float:
        """``min(1, epoch / warmup_epochs)``, 0-based epochs: the first epoch has no KD-type term."""
        return loss_ramp(self.schedule_epoch, self.nd.warmup_epochs)  # type: ignore[attr-defined]

    def tap_features(self, student: FeatureOutput, teacher: FeatureOutput, tap: DinoTap) -> tuple[Tensor, Tensor]:
        """The (projected) pooled student feature and the teacher's pooled feature at ``tap``."""
        student_feature = pooled_tap(student, tap.student_tap)
        if tap.name in self.projections:
            student_feature = self.projections[tap.name](student_feature)
        return student_feature, pooled_tap(teacher, tap.teacher_tap)

    def base_losses(self, student: FeatureOutput, teacher: FeatureOutput, labels: Tensor) -> dict[str, Tensor]:
        """The base method's own terms under ND's ramp (its ``logit_losses``)."""
        return self.logit_losses(student.logits, teacher.logits, labels, self.kd_ramp())  # type: ignore[attr-defined]

    def nd_losses(self, student: FeatureOutput, teacher: FeatureOutput, labels: Tensor) -> dict[str, Tensor]:
        """``nd_weight * L_dino`` at every tap (``nd``, then ``nd_layer1`` ... for Table 5's layer-x)."""
        weight = self.nd_weight * self.kd_ramp() if self.nd_ramp else self.nd_weight
        losses = {}
        for tap in self.taps:
            student_feature, teacher_feature = self.tap_features(student, teacher, tap)
            value = dino_loss(student_feature, teacher_feature, self.centers_for(tap), labels, self.nd.nd_reduction)
            losses[tap.name] = weight * value
        return losses

    def training_losses(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        images, labels = batch["images"], batch["labels"]
        teacher, student = self.teacher_and_student(images)  # type: ignore[attr-defined]
        losses = self.base_losses(student, teacher, labels)
        losses.update(self.nd_losses(student, teacher, labels))
        return student.logits, losses


class KDPlusPlus(NDDistillation, KD):
    """KD++: ``CE + kd_weight * ramp(epoch) * T^2 KL(p_t || p_s) + nd_weight * L_dino`` (paper Eq. 8).

    Defaults are the official script's (CE 1, KD 1, ND 1, T 4, warm-up 20); the per-pair weights are in the module
    docs and ``configs/methods/kdpp.yaml``; KD's other arguments (``temperature``: 4 on CIFAR, 1 on ImageNet) and the
    recipe's optimiser (ND: Nesterov, lr 0.1 / 0.02, batch 128 — the ``nd_cifar100`` recipe) are KD's.  Table 4d: ``kd_weight=0`` is "CE + dino", ``ce_weight=0`` "KL + dino".
    Table 5: ``nd.centers="classifier_weights"`` is "w/ weights", ``nd_layers=x`` is "layer-x".

    Args:
        student: network name.
        teacher: the frozen teacher.
        ce_weight: weight of the cross-entropy term.
        kd_weight: weight of the KD term (ramped).
        nd_weight: weight of the dino term (not ramped), the same at every tap.
        nd_layers: also apply the dino term at this many earlier layers (Table 5 "layer-x"; 0: embedding only).
        nd: ND's shared settings (:class:`NDSettings`: ramp length, reduction, centres, class-mean pass, EmbTrans).
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        ce_weight: float = 1.0,
        kd_weight: float = 1.0,
        nd_weight: float = 1.0,
        nd_layers: int = 0,
        nd: NDSettings = NDSettings(),
        **kwargs: Any,
    ) -> None:
        super().__init__(student, teacher, ce_weight=ce_weight, kd_weight=kd_weight, **kwargs)
        self.build_nd(nd, nd_weight, nd_layers)


class DKDPlusPlus(NDDistillation, DKD):
    """DKD++: ``CE + ramp(epoch) * (alpha * TCKD + beta * NCKD) + nd_weight * [ramp(epoch)] * L_dino``
    (ND's ``CIFAR/train_cifar_dkd.py``, ``ImageNet/train_dkd.py``).

    The DKD terms are DKD's own assembly (:meth:`kd_modules.dkd.DKD.logit_losses`: mdistiller's binary target /
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
        nd_ramp: multiply the dino term by the ramp too (official ImageNet DKD++).
        nd: ND's shared settings (:class:`NDSettings`).
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
        nd_ramp: bool = False,
        nd: NDSettings = NDSettings(),
    ) -> None:
        super().__init__(student, teacher, num_classes, optim, ce_weight, alpha, beta, temperature, nd.warmup_epochs)
        self.build_nd(nd, nd_weight)


class DISTPlusPlus(NDDistillation, DIST):
    """DIST++: ``CE + kd_weight * ramp(epoch) * tau^2 (beta * inter + gamma * intra) + nd_weight * L_dino``
    (ND's ``CIFAR/DIST++/train_dist.py``; CIFAR only).

    The DIST term is DIST's own (:func:`kd_modules.losses.dist.dist_loss`) with ND's instantiation ``DIST(beta=1,
    gamma=1, tau=4)``: the pair-specific weight is ``kd_weight`` (``--kd_loss_factor``) outside it, not DIST's own
    CIFAR weight 2 (spec §2.8 gotcha 7).  0-based ramp as every ND method; the dino term is not ramped.

    Defaults are the official script's (CE 1, KD 1, ND 1, tau 4, warm-up 20: DIST's ``ce_weight``, ``beta``, ``gamma``
    and ``tau`` as DIST declares them); per-pair weights in the module docs and ``configs/methods/distpp.yaml``.

    Args:
        student: network name.
        teacher: the frozen teacher.
        kd_weight: weight of the DIST term (``--kd_loss_factor``), ramped.
        nd_weight: weight of the dino term (``--nd_loss_factor``).
        nd: ND's shared settings (:class:`NDSettings`).
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        kd_weight: float = 1.0,
        nd_weight: float = 1.0,
        nd: NDSettings = NDSettings(),
        **kwargs: Any,
    ) -> None:
        super().__init__(student, teacher, kd_weight=kd_weight, **kwargs)
        self.build_nd(nd, nd_weight)


class ReviewKDPlusPlus(NDDistillation, ReviewKD):
    """ReviewKD++: ``CE + review_weight * ramp(epoch) * HCL + nd_weight * L_dino`` (ND's ``train_reviewkd.py``).

    The ABF stack and the HCL are ReviewKD's (:meth:`kd_modules.reviewkd.ReviewKD.review_losses`: teacher
    pre-activation stage features and pooled embedding, student post-activation features) under ND's 0-based ramp;
    no logit-KD term.  Per-pair weights in the module docs.

    Args:
        student: network name.
        teacher: the frozen teacher.
        num_classes: classifier width (linked from the data).
        optim: optimiser and schedule.
        ce_weight: weight of the cross-entropy term.
        review_weight: weight of the HCL term (ramped; the official ``kd_loss_factor``).
        nd_weight: weight of the dino term.
        student_preact: use the student's pre-activation stage features.
        max_mid_channels: upper bound of the ABF middle width.
        nd: ND's shared settings (:class:`NDSettings`).
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
        student_preact: bool = False,
        max_mid_channels: int = 512,
        nd: NDSettings = NDSettings(),
    ) -> None:
        args = (ce_weight, review_weight, nd.warmup_epochs, False, student_preact, max_mid_channels)
        super().__init__(student, teacher, num_classes, optim, *args)
        self.build_nd(nd, nd_weight)

    def base_losses(self, student: FeatureOutput, teacher: FeatureOutput, labels: Tensor) -> dict[str, Tensor]:
        return self.review_losses(student, teacher, labels, self.kd_ramp())


Direction = Literal["none", "cosine", "infonce"]
Norm = Literal["none", "l2", "sifn"]


class KDFeatureRegularizer(NDDistillation, KD):
    """KD plus the separate feature direction / norm regularisers ND compares its dino-loss with (Tables 4a-c),
    and the classifier-weight L2 of Table 5, in place of the dino term::

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
    student's own embedding.  ``nd.nd_reduction`` averages the direction and L2 terms, ``nd.centers`` are the
    direction's targets.

    Args:
        student: network name.
        teacher: the frozen teacher.
        ce_weight: weight of the cross-entropy term.
        kd_weight: weight of the KD term (ramped; KD's ``temperature``).
        direction: ``none``, ``cosine`` or ``infonce``.
        direction_weight: weight of the direction term.
        norm: ``none``, ``l2`` or ``sifn``.
        norm_weight: weight of the norm term.
        sifn_step: SIFN's norm step ``r``.
        classifier_l2_weight: weight of the classifier-weight L2 (0: off).
        nd: ND's shared settings (:class:`NDSettings`).
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        ce_weight: float = 1.0,
        kd_weight: float = 1.0,
        direction: Direction = "cosine",
        direction_weight: float = 1.0,
        norm: Norm = "none",
        norm_weight: float = 1.0,
        sifn_step: float = 1.0,
        classifier_l2_weight: float = 0.0,
        nd: NDSettings = NDSettings(),
        **kwargs: Any,
    ) -> None:
        if direction == "none" and norm == "none" and classifier_l2_weight == 0:
            raise MethodConfigError(
                "KDFeatureRegularizer with direction='none', norm='none' and classifier_l2_weight=0 is plain KD: "
                "choose a direction (cosine, infonce), a norm (l2, sifn) or a classifier_l2_weight > 0"
            )
        super().__init__(student, teacher, ce_weight=ce_weight, kd_weight=kd_weight, **kwargs)
        self.build_nd(nd, use_centers=direction != "none", use_projection=direction != "none" or norm == "l2")
        self.classifier_projection: nn.Linear | None = None
        s_dim, t_dim = self.student.embedding_dim, self.teacher.embedding_dim
        if classifier_l2_weight and s_dim != t_dim:
            self.classifier_projection = nn.Linear(s_dim, t_dim, bias=False)

    def nd_losses(self, student: FeatureOutput, teacher: FeatureOutput, labels: Tensor) -> dict[str, Tensor]:
        """The regularisers that replace the dino term."""
        tap = self.taps[0]
        projected, teacher_embedding = self.tap_features(student, teacher, tap)
        reduction, losses = self.nd.nd_reduction, {}
        if self.direction != "none":
            loss = cosine_direction_loss if self.direction == "cosine" else infonce_direction_loss
            losses["direction"] = self.direction_weight * loss(projected, self.centers_for(tap), labels, reduction)
        if self.norm == "l2":
            num_classes = student.logits.shape[1]
            value = l2_feature_loss(projected, teacher_embedding, labels, num_classes, reduction)
            losses["norm"] = self.norm_weight * value
        elif self.norm == "sifn":
            losses["norm"] = self.norm_weight * sifn_loss(student.embedding, self.sifn_step)
        if self.classifier_l2_weight:
            student_weight = self.student.classifier.weight
            if self.classifier_projection is not None:
                student_weight = self.classifier_projection(student_weight)
            value = classifier_weight_l2_loss(student_weight, self.teacher.classifier.weight)
            losses["classifier_l2"] = self.classifier_l2_weight * value
        return losses
