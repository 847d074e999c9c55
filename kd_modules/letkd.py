"""letKD: "Knowledge Distillation Layer that Lets the Student Decide" (Gorgun, Gurbuz, Alatan; BMVC 2023), and
QuEST: "Quantized Embedding Space for Transferring Knowledge" (Jain et al., ECCV 2020), the method it builds on.

The teacher's feature map is turned into a distribution over "words" at every spatial location
(:mod:`kd_modules.losses.letkd`): K-means codewords of the teacher's penultimate map (QuEST, letKD-1, letKD-2) and
LDA sub-classes of the output of the first block of its last stage (letKD-2).  The student predicts these
distributions with a normalised 1x1 convolution and is trained with ``CE + sum of per-location KL`` terms.

* **QuEST** keeps the predictor beside the network: it only supervises the student's penultimate map and is
  dropped at inference.
* **letKD's KD layer** (:class:`KDLayer`, spec §3.2) puts the predictor *into* the student: its word scores go
  through BN-ReLU and a second normalised 1x1 convolution back to the feature width, and the result is added to
  the features, ``x_hat = alpha * v + x``.  The layer stays in the student at inference (it is inserted with
  :meth:`models.contract.KDNet.insert`, so ``final.pth`` and the student's parameter count include it).

Where the official code (adagorgun/letKD-framework) and the supplement differ, the code is followed: the teacher
assignment is ``softmax(-tau * d^2)`` (the supplement drops the minus sign); the student's classifier is the
network's own GAP+FC.  The offline stages live in :mod:`kd_modules.letkd_offline`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_modules.base import Batch, DistillationModule, OptimConfig, SettingsGroup, TeacherConfig
from kd_modules.letkd_offline import (
    LetKDSetupError,
    build_codebook,
    build_subclasses,
    collect_location_vectors,
)
from kd_modules.losses.letkd import codebook_assignment, location_kl, subclass_assignment
from kd_modules.offline import load_or_compute, normalised_train_batches, teacher_digest, training_data_fingerprint
from models import KDNet

__all__ = [
    "CosineConv1x1",
    "KDLayer",
    "FeatureTap",
    "TargetsConfig",
    "KDLayerSettings",
    "InterKDLayerSettings",
    "QuEST",
    "LetKD1",
    "LetKD2",
    "LetKDSetupError",
]

#: Bumped whenever the offline computation changes, so that stale cached artefacts are not reused.
_OFFLINE_VERSION = 1


# ---------------------------------------------------------------------------------------------- the modules
class CosineConv1x1(nn.Module):
    """Normalised 1x1 convolution with a learnable scale (official ``tools.Conv2dCos``, no bias).

    ``out_k(i) = scale * <x(i) / ||x(i)||, w_k / ||w_k||>``: each location's input vector and each kernel are L2
    normalised (eps 1e-12), so the output is a scaled cosine similarity and does not change when the input is
    multiplied by a positive factor.  Kernels start from N(0, 2 / in_channels) as in the reference.
    """

    def __init__(self, in_channels: int, out_channels: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels) * math.sqrt(2.0 / in_channels))
        self.scale = nn.Parameter(torch.full((1,), float(scale)))

    def forward(self, x: Tensor) -> Tensor:
        kernels = F.normalize(self.weight, dim=1, eps=1e-12) * self.scale
        return F.conv2d(F.normalize(x, dim=1, eps=1e-12), kernels[:, :, None, None])


class KDLayer(nn.Module):
    """letKD's KD layer (spec §3.2; official ``BoW_predictor`` + ``valueLayer``).

    ``S = cos1x1_{scale 3}(x)`` (the word scores the KD loss supervises), ``v = cos1x1_{scale 1}(ReLU(BN(S)))``,
    output ``x_hat = alpha * v + x``.  Returns ``(x_hat, S)`` so that, inserted into a network, ``S`` lands in
    ``FeatureOutput.extras``.  ``alpha`` (the paper's alpha_inter / alpha_penult, the configs' ``value_ratio``)
    is a buffer, so an exported student carries it; ``alpha = 0`` keeps the loss but removes the feature update.

    Args:
        channels: width C of the feature map.
        num_words: K (4096 codewords at the penultimate location, classes * K_inter sub-classes intermediate).
        alpha: residual scale of the value branch.
        predictor_scale: initial scale of the scoring convolution.
        value_scale: initial scale of the value convolution.
    """

    alpha: Tensor

    def __init__(
        self, channels: int, num_words: int, alpha: float, predictor_scale: float = 3.0, value_scale: float = 1.0
    ) -> None:
        super().__init__()
        self.predictor = CosineConv1x1(channels, num_words, predictor_scale)
        self.bn = nn.BatchNorm2d(num_words)
        self.value = CosineConv1x1(num_words, channels, value_scale)
        self.register_buffer("alpha", torch.tensor(float(alpha)))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        scores = self.predictor(x)
        value = self.value(F.relu(self.bn(scores)))
        return x + self.alpha * value, scores


class FeatureTap(nn.Module):
    """Identity that hands its input out through ``FeatureOutput.extras`` (a tap inside a stage, no hooks)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x, x


# -------------------------------------------------------------------------------------- network helpers
def first_block_of_last_stage(net: KDNet) -> str:
    """The insertion point after the first block of the last stage (``stage<L>`` when that stage has one block)."""
    last = net.num_stages
    return f"stage{last}.0" if len(net.stages[-1]) > 1 else f"stage{last}"


def _input_channels(net: KDNet) -> int:
    first_conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    return 3 if first_conv is None else first_conv.in_channels


def probe_shapes(net: KDNet, points: list[str]) -> dict[str, tuple[int, int, int]]:
    """(C, H, W) of the tensor at each insertion point (``"neck"`` = the map entering global pooling), from one
    forward of a zero image at the network's native size (eval mode, no gradients, nothing left behind)."""
    inside = [p for p in dict.fromkeys(points) if p != "neck"]
    for point in inside:
        net.insert(point, FeatureTap())
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            probe = torch.zeros(1, _input_channels(net), net.input_size, net.input_size)
            out = net.forward_features(probe)
    finally:
        for point in inside:
            net.remove_insert(point)
        net.train(was_training)
    maps = {**{p: out.extras[p] for p in inside}, "neck": out.final_map}
    return {p: tuple(maps[p].shape[1:]) for p in points}  # type: ignore[misc]


def _check_point(net: KDNet, point: str, role: str) -> str:
    valid = net.insertion_points()
    if point not in valid:
        raise LetKDSetupError(f"{role} {point!r} is not an insertion point of {type(net).__name__}; valid: {valid}")
    return point


def _teacher_alignment(
    where: str, teacher_shape: tuple[int, int, int], student_shape: tuple[int, int, int], teacher_pooling: bool | None
) -> bool:
    """Whether the teacher map at ``where`` ((C, H, W), as :func:`probe_shapes` gives it) is 2x2 average-pooled
    (stride 2) to match the student's locations.

    ``teacher_pooling=None`` pools exactly when the teacher map is twice the student's size (the cross-architecture
    pairs of spec §3.3: RN32x4/WRN-40-2 8x8 -> ShuffleNets 4x4, RN50 4x4 -> MobileNetV2 2x2); True/False force it.
    """
    teacher_hw, student_hw = teacher_shape[1:], student_shape[1:]
    pool = teacher_hw == (2 * student_hw[0], 2 * student_hw[1]) if teacher_pooling is None else teacher_pooling
    aligned = (teacher_hw[0] // 2, teacher_hw[1] // 2) if pool else teacher_hw
    if aligned != student_hw:
        raise LetKDSetupError(
            f"{where}: the teacher map is {teacher_hw[0]}x{teacher_hw[1]}"
            + (" (after 2x2 pooling: {}x{})".format(*aligned) if pool else "")
            + f" but the student map is {student_hw[0]}x{student_hw[1]}; the KL is per location, so they must match "
            f"(teacher_pooling: None = pool when the teacher map is twice the student's, true = always, false = never)"
        )
    return pool


# ---------------------------------------------------------------------------------------------- the methods
@dataclass(frozen=True)
class TargetsConfig:
    """How the teacher's per-location targets are built (the offline stages and the soft assignment).

    Args:
        num_clusters: K_penult, codewords of the penultimate codebook (4096 in QuEST and letKD).
        temperature: tau of the teacher's soft assignment softmax(-tau * ||F_t - rho_k||^2) (official: 1).
        teacher_pooling: 2x2 average pooling of the teacher maps before quantisation; null = exactly when the
            teacher map is twice the student's (the cross-architecture pairs), true / false = always / never.
        kmeans_iterations: Lloyd iterations of every K-means (official: 20).
        kmeans_seed: faiss seed (the official seed is random per build).
        kmeans_max_points_per_centroid: the codebook K-means trains on at most K times this many vectors (a random
            subsample, faiss's mechanism); 128 keeps the CIFAR-size codebook to minutes on two CPU cores,
            10000000 uses every vector as the official build does.
        offline_max_images: use only the first N images of the un-augmented training pass for the offline stages
            (null: all of them, as the official code; small values are for smoke runs).
    """

    num_clusters: int = 4096
    temperature: float = 1.0
    teacher_pooling: bool | None = None
    kmeans_iterations: int = 20
    kmeans_seed: int = 1234
    kmeans_max_points_per_centroid: int = 128
    offline_max_images: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_clusters", "kmeans_iterations", "kmeans_max_points_per_centroid"):
            if getattr(self, name) < 1:
                raise LetKDSetupError(f"targets.{name} must be at least 1, got {getattr(self, name)}")
        if self.offline_max_images is not None and self.offline_max_images < 1:
            raise LetKDSetupError(
                f"targets.offline_max_images must be at least 1 or null (all images), got {self.offline_max_images}"
            )


class _WordDistillation(DistillationModule):
    """Shared machinery: teacher taps and alignment, the offline stages in ``setup``, the teacher targets."""

    requires_teacher = True
    teacher: KDNet  # loaded by the base module (requires_teacher)

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        num_classes: int,
        optim: OptimConfig,
        targets: TargetsConfig,
        *,
        penultimate: bool = True,
        intermediate: bool = False,
        student_inter_point: str | None = None,
        teacher_inter_point: str | None = None,
        subclasses_per_class: int = 8,
        lda_components: int = 60,
    ) -> None:
        super().__init__(student=student, num_classes=num_classes, teacher=teacher, optim=optim)
        for name, value in (("subclasses_per_class", subclasses_per_class), ("lda_components", lda_components)):
            if value < 1:
                raise LetKDSetupError(f"{name} must be at least 1, got {value}")

        # Where the words live.  The penultimate location is the map entering global pooling ("neck": the last
        # stage's post-activation map for ResNets and ShuffleNetV1, after the final BN-ReLU for WRNs, after the
        # 1x1 conv neck for ShuffleNetV2 / MobileNetV2 — spec §3.5); teacher side always its final map.
        student_points = ["neck"]
        self.teacher_inter_point: str | None = None
        if intermediate:
            self.student_inter_point = _check_point(
                self.student, student_inter_point or first_block_of_last_stage(self.student), "student_inter_point"
            )
            self.teacher_inter_point = _check_point(
                self.teacher, teacher_inter_point or first_block_of_last_stage(self.teacher), "teacher_inter_point"
            )
            student_points.append(self.student_inter_point)
        self.student_shapes = probe_shapes(self.student, student_points)
        teacher_points = ["neck"] + ([self.teacher_inter_point] if self.teacher_inter_point else [])
        self.teacher_shapes = probe_shapes(self.teacher, teacher_points)
        pooling = targets.teacher_pooling
        t_penult, s_penult = self.teacher_shapes["neck"], self.student_shapes["neck"]
        self.pool_penult = _teacher_alignment("penultimate location", t_penult, s_penult, pooling)
        self.pool_inter = False
        if self.teacher_inter_point is not None:
            t_inter = self.teacher_shapes[self.teacher_inter_point]
            s_inter = self.student_shapes[self.student_inter_point]
            self.pool_inter = _teacher_alignment("intermediate location", t_inter, s_inter, pooling)
            # One teacher forward gives both the final map and, through this tap, the intermediate map.
            self.teacher.insert(self.teacher_inter_point, FeatureTap())

        # Offline artefacts: filled in `setup` (or `prepare_targets`); buffers so that they follow the device, not
        # persistent because they are rebuilt (from the cache) from the teacher and the data, never trained.
        for name in ("codebook", "lda_weight", "lda_bias", "subclass_centroids", "score_matrix"):
            self.register_buffer(name, None, persistent=False)

    # ------------------------------------------------------------------------------------- teacher targets
    def teacher_maps(self, images: Tensor) -> dict[str, Tensor]:
        """The teacher's maps at the distilled locations, pooled where the pair needs it (call without grad)."""
        out = self.teacher.forward_features(images)
        maps = {}
        if self.penultimate:
            maps["penult"] = F.avg_pool2d(out.final_map, 2, 2) if self.pool_penult else out.final_map
        if self.teacher_inter_point is not None:
            inter = out.extras[self.teacher_inter_point]
            assert isinstance(inter, Tensor)
            maps["inter"] = F.avg_pool2d(inter, 2, 2) if self.pool_inter else inter
        return maps

    def teacher_targets(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Per-location target distributions, (B, H, W, K) each: ``penult`` and, for letKD-2, ``inter``."""
        if (self.penultimate and self.codebook is None) or (self.intermediate and self.score_matrix is None):
            raise LetKDSetupError(
                f"{type(self).__name__}: the teacher targets are not built; Trainer.fit builds them in setup(), "
                f"outside a Trainer call prepare_targets(datamodule) first"
            )
        with torch.inference_mode():
            maps = self.teacher_maps(images)
        with torch.no_grad():
            # Inference-mode tensors cannot take part in autograd (the KL saves its target): copy the small maps.
            # Squared distances to codewords of norm ~24 (spec gotcha 3) need float32 even under mixed precision.
            with torch.autocast(images.device.type, enabled=False):
                maps = {name: feature_map.float().clone() for name, feature_map in maps.items()}
                targets = {}
                if self.penultimate:
                    targets["penult"] = codebook_assignment(maps["penult"], self.codebook, self.targets.temperature)
                if "inter" in maps:
                    z = torch.einsum("bdhw,dn->bnhw", maps["inter"], self.lda_weight)
                    z = z + self.lda_bias[None, :, None, None]
                    targets["inter"] = subclass_assignment(z, labels, self.subclass_centroids, self.score_matrix)
        return targets

    def training_losses(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """letKD's loss: CE plus each KD layer's per-location KL to its teacher targets (QuEST has its own)."""
        images, labels = batch["images"], batch["labels"]
        targets = self.teacher_targets(images, labels)
        out = self.student.forward_features(images)
        losses = {"ce": F.cross_entropy(out.logits, labels)}
        if self.intermediate:
            inter = location_kl(out.extras[self.student_inter_point], targets["inter"])  # type: ignore[arg-type]
            losses["inter"] = self.layers.inter_weight * inter
        if self.penultimate:
            penult = location_kl(out.extras["neck"], targets["penult"])  # type: ignore[arg-type]
            losses["penult"] = self.layers.penult_weight * penult
        return out.logits, losses

    # ------------------------------------------------------------------------------------- offline stages
    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.prepare_targets(self.trainer.datamodule, self.trainer.strategy.root_device)

    def prepare_targets(self, datamodule: Any, device: torch.device | str | None = None) -> None:
        """Build (or load from the cache) the codebook and, for letKD-2, the sub-class supervision.

        The teacher runs in eval mode over ``datamodule.train_eval_dataloader()`` (the un-augmented training pass;
        ``on_after_batch_transfer`` normalises each batch), at most once however many stages are missing.
        """
        if not hasattr(datamodule, "train_eval_dataloader"):
            raise LetKDSetupError(
                f"{type(self).__name__} builds its targets from a datamodule's un-augmented training pass "
                f"(train_eval_dataloader); {type(datamodule).__name__} has none"
            )
        device = torch.device(device) if device is not None else next(self.teacher.parameters()).device
        self.teacher.to(device).eval()
        common = {
            "teacher": teacher_digest(self.teacher_config.checkpoint),
            "teacher_arch": self.teacher_config.arch,
            "data": training_data_fingerprint(datamodule),
            "dataset": type(datamodule).__name__,
            "normalisation": {"mean": list(datamodule.mean), "std": list(datamodule.std)},
            "max_images": self.targets.offline_max_images,
            "version": _OFFLINE_VERSION,
        }

        @functools.cache
        def teacher_pass() -> tuple[dict[str, Any], dict[str, Any]]:
            # Shared by both stages: whichever misses the cache first runs the teacher, the other reuses it.
            batches, total = normalised_train_batches(datamodule, device, self.targets.offline_max_images)
            return collect_location_vectors(batches, total, self.teacher_maps)

        # Every K-means setting is both an input of the cached artefact and an argument of its build.
        kmeans = {"iterations": self.targets.kmeans_iterations, "seed": self.targets.kmeans_seed}
        if self.penultimate:
            codebook_args = {**kmeans, "max_points_per_centroid": self.targets.kmeans_max_points_per_centroid}
            inputs = {**common, "tap": "final_map", "pool": self.pool_penult, "num_clusters": self.targets.num_clusters}
            codebook = load_or_compute(
                "letkd_codebook",
                {**inputs, **codebook_args},
                lambda: build_codebook(teacher_pass()[0]["penult"], self.targets.num_clusters, **codebook_args),
            )
            self.codebook = codebook["centroids"].to(device)
        if self.intermediate:
            sizes = {"num_classes": self.hparams["num_classes"], "lda_components": self.lda_components}
            inputs = {**common, "tap": self.teacher_inter_point, "pool": self.pool_inter, **sizes, **kmeans}
            subclasses = load_or_compute(
                "letkd_subclasses",
                {**inputs, "subclasses_per_class": self.subclasses_per_class},
                lambda: build_subclasses(
                    teacher_pass()[0]["inter"],
                    teacher_pass()[1]["inter"],
                    per_class=self.subclasses_per_class,
                    **sizes,
                    **kmeans,
                ),
            )
            self.lda_weight = subclasses["lda_weight"].to(device)
            self.lda_bias = subclasses["lda_bias"].to(device)
            self.subclass_centroids = subclasses["centroids"].to(device)
            self.score_matrix = subclasses["score_matrix"].to(device)


class QuEST(_WordDistillation):
    """QuEST (Jain et al., ECCV 2020) as the letKD framework runs it (``ClassificationQUEST``).

    A normalised 1x1 predictor (scale 3) *beside* the student maps its penultimate map to scores over the
    teacher's K-means codewords; ``L = CE + quest_weight * mean_i KL(p_T(i) || softmax(S(i)))``.  The predictor
    is training-only: the student's forward and its exported weights are the plain network.  This is letKD-1
    without the value branch; letKD's Table 5 row "Penult. alpha=0" (71.84) equals its QuEST number.

    Choice documented: QuEST's paper text was not available here; the letKD framework's ``ClassificationQUEST``
    (the code the letKD authors compared with) is what this reproduces: soft targets with tau = 1, cosine
    predictor with a learnable scale, KL averaged over locations, weight 1, no added Hinton-KD term.

    Args:
        student: network name.
        teacher: the frozen teacher.
        num_classes: classifier width (linked from the data).
        optim: optimiser and schedule.
        targets: the codebook and the offline stages (K, tau, K-means, teacher pooling).
        predictor_scale: initial scale of the normalised predictor.
        quest_weight: weight of the KL term (official ``quest_loss_coef`` 1).
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        num_classes: int = 100,
        optim: OptimConfig = OptimConfig(),
        targets: TargetsConfig = TargetsConfig(),
        predictor_scale: float = 3.0,
        quest_weight: float = 1.0,
    ) -> None:
        super().__init__(student, teacher, num_classes, optim, targets)
        self.predictor = CosineConv1x1(self.student_shapes["neck"][0], targets.num_clusters, predictor_scale)

    def training_losses(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        images, labels = batch["images"], batch["labels"]
        targets = self.teacher_targets(images, labels)
        out = self.student.forward_features(images)
        scores = self.predictor(out.final_map)
        return out.logits, {
            "ce": F.cross_entropy(out.logits, labels),
            "quest": self.quest_weight * location_kl(scores, targets["penult"]),
        }


@dataclass(frozen=True)
class KDLayerSettings(SettingsGroup):
    """letKD's KD layers (:class:`KDLayer`) and their loss weights, shared by letKD-1 and letKD-2
    (``layers: {...}``; official ``quest_value`` / ``subclass_quest_value``).

    Args:
        alpha_penult: residual scale of the penultimate KD layer's value branch (1 for every pair except
            RN50 -> MobileNetV2: 0.1 on CIFAR-100, 0.5 on Tiny-ImageNet; 0: loss only, no feature update).
        predictor_scale: initial scale of the KD layers' scoring convolutions (official 3).
        value_scale: initial scale of the KD layers' value convolutions (official 1).
        penult_weight: weight of the penultimate KL term (official ``quest_loss_coef`` 1).
    """

    alpha_penult: float = 1.0
    predictor_scale: float = 3.0
    value_scale: float = 1.0
    penult_weight: float = 1.0

    def kd_layer(self, channels: int, num_words: int, alpha: float) -> KDLayer:
        return KDLayer(channels, num_words, alpha, self.predictor_scale, self.value_scale)

    def penultimate_layer(self, channels: int, num_words: int) -> KDLayer:
        return self.kd_layer(channels, num_words, self.alpha_penult)


@dataclass(frozen=True)
class InterKDLayerSettings(KDLayerSettings):
    """letKD-2's KD layers: :class:`KDLayerSettings` plus the intermediate layer's.

    Args:
        alpha_inter: residual scale of the intermediate KD layer (1; 0.2 for RN50 -> MobileNetV2 on CIFAR-100).
        inter_weight: weight of the intermediate KL term (official ``sub_loss_coef`` 1).
    """

    alpha_inter: float = 1.0
    inter_weight: float = 1.0


class LetKD1(_WordDistillation):
    """letKD-1: one KD layer at the penultimate location (spec §3.4; official ``quest_value``).

    The student's map entering global pooling goes through :class:`KDLayer` (K_penult = 4096 words) before the
    network's own GAP + FC; ``L = CE + penult_weight * mean_i KL(p_T(i) || softmax(S(i)))``.

    Args:
        student: network name.
        teacher: the frozen teacher.
        num_classes: classifier width (linked from the data).
        optim: optimiser and schedule.
        targets: the codebook and the offline stages (K, tau, K-means, teacher pooling).
        layers: the KD layer and its loss weight (:class:`KDLayerSettings`).
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        num_classes: int = 100,
        optim: OptimConfig = OptimConfig(),
        targets: TargetsConfig = TargetsConfig(),
        layers: KDLayerSettings = KDLayerSettings(),
    ) -> None:
        super().__init__(student, teacher, num_classes, optim, targets)
        self.student.insert("neck", layers.penultimate_layer(self.student_shapes["neck"][0], targets.num_clusters))


class LetKD2(_WordDistillation):
    """letKD-2: an intermediate KD layer on LDA sub-classes plus the penultimate KD layer (spec §3.3-3.4;
    official ``subclass_quest_value``).

    The intermediate layer sits after the first block of the student's last stage (``stage<L>.0``, or
    ``stage<L>`` when that stage has a single block, e.g. resnet8x4) and predicts ``classes * K_inter``
    sub-classes; its target is the row of the teacher's score matrix s_T chosen by the class-constrained nearest
    sub-class centroid of the teacher's LDA-projected features at the same tap.
    ``L = CE + inter_weight * KL_inter + penult_weight * KL_penult``.  ``penultimate: false`` keeps only the
    intermediate layer (supplement Table 5, rows without "Penult.").

    Args:
        student: network name.
        teacher: the frozen teacher.
        num_classes: classifier width (linked from the data).
        optim: optimiser and schedule.
        targets: the codebook and the offline stages (K, tau, K-means, teacher pooling).
        layers: both KD layers and their loss weights (:class:`InterKDLayerSettings`).
        penultimate: include the penultimate KD layer and its loss.
        subclasses_per_class: K_inter, K-means clusters per class in LDA space (8).
        lda_components: LDA dimensions (60; clamped to classes - 1, e.g. 9 on a 10-class dataset).
        student_inter_point: insertion point of the intermediate layer in the student (null: first block of the
            last stage).
        teacher_inter_point: the teacher's tap for the sub-class targets (null: first block of its last stage).
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        num_classes: int = 100,
        optim: OptimConfig = OptimConfig(),
        targets: TargetsConfig = TargetsConfig(),
        layers: InterKDLayerSettings = InterKDLayerSettings(),
        penultimate: bool = True,
        subclasses_per_class: int = 8,
        lda_components: int = 60,
        student_inter_point: str | None = None,
        teacher_inter_point: str | None = None,
    ) -> None:
        points = {"student_inter_point": student_inter_point, "teacher_inter_point": teacher_inter_point}
        sizes = {"subclasses_per_class": subclasses_per_class, "lda_components": lda_components}
        super().__init__(
            student, teacher, num_classes, optim, targets, penultimate=penultimate, intermediate=True, **points, **sizes
        )
        inter_channels = self.student_shapes[self.student_inter_point][0]
        inter_layer = layers.kd_layer(inter_channels, num_classes * subclasses_per_class, layers.alpha_inter)
        self.student.insert(self.student_inter_point, inter_layer)
        if penultimate:
            self.student.insert("neck", layers.penultimate_layer(self.student_shapes["neck"][0], targets.num_clusters))
