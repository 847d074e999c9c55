"""NORM: Liu et al., "NORM: Knowledge Distillation via N-to-One Representation Matching" (ICLR 2023).

The student gets one feature transform (FT) after its last convolutional stage, *in* its forward path: a 1x1
conv C_s -> N·C_t with BatchNorm (the expanded map F_se), a 1x1 conv N·C_t -> C_s with BatchNorm, and an
identity shortcut around both ("default FT"; "plain FT" has no shortcut).  F_se is split sequentially into N
segments of C_t channels and every segment is pulled towards the frozen teacher's last-stage map.  Nothing in
the FT is non-linear, so after training it folds into the classifier (:func:`fold_feature_transform`,
``python -m benchmarks.export``) and the deployed student has exactly its plain architecture.

Where the FT goes (spec methods-seed.md §1.2, from the released ``models/cifar/*_student.py``) is a property of
the student family, looked up in :data:`STUDENT_PLACEMENTS` by network name:

===============  ===========================================================  ========
family           FT input (= insertion point)                                 foldable
===============  ===========================================================  ========
resnet*          last stage, post-ReLU (CIFAR layer3; ImageNet/CIFAR-R50 layer4)  yes
wrn_*            last stage = raw block3 sum, *before* the final BN-ReLU          no
vgg*             last block, post-ReLU (block4)                                   yes
MobileNetV2      neck: after the 1x1 conv to 1280 + BN + ReLU                     yes
MobileNet(V1)    last depthwise-separable unit, post-ReLU                         yes
ShuffleV1        last stage, post-ReLU                                            yes
ShuffleV2        neck: after the 1x1 conv to 1024 + BN + ReLU                     yes
===============  ===========================================================  ========

The teacher map is always the teacher's last stage as the network contract reports it (``stages_post[-1]``:
post-ReLU, or for WRN the raw block3 sum — the released code's ``feat[3]``), max-pooled to the student's spatial
size when larger (VGG13/ResNet50 -> MobileNetV2, ResNet32x4/WRN-40-2 -> ShuffleNets).  Channel counts come from
``feature_shapes()``; nothing runs a dummy forward.

**Two formulations, one switch** (``formulation``), because the released code (which produced the published
numbers) and the paper differ:

* ``"code"`` (default, ``helper/loops.py::train_distill``):
  ``L = r·CE(z̃_s, y) + a·KD(z̃_s, z̃_t) + λ(epoch)·b·Σ_i MSE(F_se^i, F_t)`` — the NORM term is N x the mean
  MSE against the teacher tiled N times (sum over segments), student and teacher logits are standardised per
  sample and scaled by 2.5 (z̃ = 2.5·LayerNorm(z)) before CE and KD, and λ is the hard-coded per-epoch ramp
  0.1/0.5/1/0.5/0.1 (CIFAR; ImageNet 0.1/0.5/0.9/0.5/0.1).  Defaults r = 0.1, b = 1 (README example:
  ``-r 0.1 -a 0 -b 1.0 -s 8``).
* ``"paper"`` (Eq. 3-5): ``L = CE + α·(1/N)·Σ_i ||F_se^i − F_t||² (+ β·KD)`` with α = 10, β = 4, raw logits,
  no ramp.

Each knob the switch sets (``ce_weight``, ``norm_weight``, ``logit_scale``, ``ramp``) can still be given
explicitly; ``None`` means "the formulation's value".  The segment reduction (sum vs mean) always follows the
switch.  Accuracy is unaffected by the logit standardisation (monotone per sample).

Variants (NORM Tables 1/2/7/8, Figs. 2/4) are init arguments: ``ft`` (``default``/``plain``, or ``none`` = match
the raw tap, what the code does at N = 1), ``n_segments`` (N), ``segments_used`` (the first k of N),
``distance`` (``l2``/``l1``/``mmd``), ``kd_weight`` (NORM+KD), ``contract_teacher`` (reversed NORM, Table 7).
The "Student w/ plain / default FT (CE only)" rows are :class:`FTStudent`.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_modules.base import Batch, DistillationModule, OptimConfig, TeacherConfig
from kd_modules.errors import MethodConfigError
from kd_modules.losses.kd import kd_loss
from kd_modules.losses.norm import Distance, align_spatial, norm_loss, norm_ramp, standardize_logits
from models import FeatureOutput, KDNet, create_model

__all__ = [
    "NORM",
    "FTStudent",
    "NORMConfigError",
    "NORMFeatureTransform",
    "StudentPlacement",
    "STUDENT_PLACEMENTS",
    "FoldError",
    "check_foldable",
    "fold_error",
    "fold_feature_transform",
    "placement_for",
    "feature_transform_at",
]

FTKind = Literal["default", "plain", "none"]


class NORMConfigError(MethodConfigError):
    """NORM was asked for something it cannot build (unknown student family, N that does not fit, ...)."""


class FoldError(NORMConfigError):
    """The FT of a trained student cannot be folded into its classifier (WRN placement, no FT, BN in train mode)."""


# --------------------------------------------------------------------------------------------- placements
@dataclass(frozen=True)
class StudentPlacement:
    """Where NORM's FT goes in one student family.

    Args:
        family: display name.
        pattern: regular expression matched (case-insensitively, whole name) against the network's registry name.
        point: ``last_stage`` (after the last stage's ``post`` tap: the ``stage<k>`` insertion point) or ``neck``
            (the map entering global pooling).
        foldable: whether only global average pooling and the classifier follow the FT (so it folds into them).
        init: FT conv initialisation of the released student: ``kaiming`` (normal, fan_out, ReLU gain: ResNet,
            WRN, VGG, MobileNetV2 students) or ``default`` (PyTorch's: ShuffleNets, ImageNet MobileNet).
        note: what the tensor is, in the reference's words.
    """

    family: str
    pattern: str
    point: Literal["last_stage", "neck"]
    foldable: bool
    init: Literal["kaiming", "default"]
    note: str

    def insertion_point(self, network: KDNet) -> str:
        return f"stage{network.num_stages}" if self.point == "last_stage" else "neck"


STUDENT_PLACEMENTS: tuple[StudentPlacement, ...] = (
    StudentPlacement(
        "WRN",
        r"wrn[_-]?\d+[_-]\d+",
        "last_stage",
        False,
        "kaiming",
        "raw block3 residual sum; the FT sits before the final BN-ReLU, which then sits between FT and pooling",
    ),
    StudentPlacement(
        "ResNet",
        r"resnet\d+.*",
        "last_stage",
        True,
        "kaiming",
        "last stage post-ReLU (CIFAR layer3; CIFAR ResNet50, ImageNet ResNets and ResNet50-1/4 layer4)",
    ),
    StudentPlacement("VGG", r"vgg\d+.*", "last_stage", True, "kaiming", "last block (block4) post-ReLU"),
    StudentPlacement(
        "MobileNetV2",
        r"(mobilenet[_-]?v2.*|mobile_half)",
        "neck",
        True,
        "kaiming",
        "after the 1x1 conv to 1280 + BN + ReLU (NORM's own MobileNetV2 drops that ReLU: spec §1.7 gotcha 9)",
    ),
    StudentPlacement(
        "MobileNet(V1)",
        r"mobilenet([_-]?v1.*)?",
        "last_stage",
        True,
        "default",
        "last depthwise-separable unit post-ReLU (1024 ch)",
    ),
    StudentPlacement(
        "ShuffleNetV1", r"shuffle(net)?[_-]?v1.*", "last_stage", True, "default", "last stage post-ReLU (960 ch)"
    ),
    StudentPlacement(
        "ShuffleNetV2",
        r"shuffle(net)?[_-]?v2.*",
        "neck",
        True,
        "default",
        "after the 1x1 conv to 1024 + BN + ReLU (the released student's broken residual is replaced by the intended one)",
    ),
)


def placement_for(arch: str) -> StudentPlacement:
    """The placement of ``arch``'s family; a clear error for a network NORM has no placement for."""
    for placement in STUDENT_PLACEMENTS:
        if re.fullmatch(placement.pattern, arch, flags=re.IGNORECASE):
            return placement
    families = ", ".join(f"{p.family} ({p.pattern})" for p in STUDENT_PLACEMENTS)
    raise NORMConfigError(
        f"NORM has no FT placement for student network {arch!r}; known families: {families}. "
        "Add a row to kd_modules.norm.STUDENT_PLACEMENTS saying where the FT goes."
    )


# ------------------------------------------------------------------------------------------------ the FT
class NORMFeatureTransform(nn.Module):
    """NORM's student FT: ``F_se = BN(conv1x1(x))`` (C -> N·C_t), ``out = BN(conv1x1(F_se)) (+ x)``.

    ``forward`` returns ``(out, F_se)`` so that the network contract puts F_se into ``FeatureOutput.extras``.
    The ``residual`` buffer records the variant in the checkpoint, so an exported student can be folded without
    its run config.
    """

    def __init__(
        self,
        in_channels: int,
        expanded_channels: int,
        residual: bool = True,
        init: Literal["kaiming", "default"] = "kaiming",
    ) -> None:
        super().__init__()
        self.expand = nn.Sequential(
            nn.Conv2d(in_channels, expanded_channels, kernel_size=1, bias=False), nn.BatchNorm2d(expanded_channels)
        )
        self.contract = nn.Sequential(
            nn.Conv2d(expanded_channels, in_channels, kernel_size=1, bias=False), nn.BatchNorm2d(in_channels)
        )
        # A Python flag for the forward (no device sync); the buffer only describes the checkpoint.
        self.has_residual = residual
        self.register_buffer("residual", torch.tensor(residual))
        if init == "kaiming":
            for block in (self.expand, self.contract):
                nn.init.kaiming_normal_(block[0].weight, mode="fan_out", nonlinearity="relu")

    @property
    def in_channels(self) -> int:
        return self.expand[0].in_channels

    @property
    def expanded_channels(self) -> int:
        return self.expand[0].out_channels

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        expanded = self.expand(x)
        out = self.contract(expanded)
        if self.has_residual:
            out = out + x
        return out, expanded

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        flag = state_dict.get(prefix + "residual")
        if flag is not None and bool(flag) != self.has_residual:
            kind = "default (residual)" if bool(flag) else "plain"
            raise NORMConfigError(f"checkpoint holds a {kind} NORM FT, but this FT was built the other way")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def affine_map(self) -> tuple[Tensor, Tensor]:
        """``(A, d)`` in float64 with ``FT(x) = A x + d`` per pixel, BatchNorm in eval mode (running statistics).

        With ``a_k = γ_k / sqrt(σ²_k + ε)`` and ``c_k = β_k − a_k μ_k``:
        ``A = diag(a_2) W_2 diag(a_1) W_1 (+ I)`` and ``d = diag(a_2) W_2 c_1 + c_2`` (spec §1.5).
        """
        scales, shifts = [], []
        for block in (self.expand, self.contract):
            bn = block[1]
            gamma, beta = bn.weight.double(), bn.bias.double()  # affine, with running statistics (built above)
            scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
            scales.append(scale)
            shifts.append(beta - scale * bn.running_mean.double())
        w1 = self.expand[0].weight.double().flatten(1)  # (N·C_t, C)
        w2 = self.contract[0].weight.double().flatten(1)  # (C, N·C_t)
        matrix = scales[1][:, None] * (w2 @ (scales[0][:, None] * w1))
        if self.has_residual:
            matrix = matrix + torch.eye(matrix.shape[0], dtype=torch.float64, device=matrix.device)
        offset = scales[1] * (w2 @ shifts[0]) + shifts[1]
        return matrix, offset


def feature_transform_at(network: KDNet) -> tuple[str, NORMFeatureTransform] | None:
    """The NORM FT inserted in ``network`` and its insertion point, or None."""
    for point, key in network._insert_points.items():
        module = network.inserted[key]
        if isinstance(module, NORMFeatureTransform):
            return point, module
    return None


def check_foldable(arch: str) -> None:
    """Raise :class:`FoldError` when the FT of an ``arch`` student cannot be folded into its classifier."""
    placement = placement_for(arch)
    if not placement.foldable:
        raise FoldError(
            f"cannot fold the NORM FT of {arch}: in {placement.family} students the FT input is the {placement.note}, "
            "so the FT cannot be absorbed into the classifier (the student keeps it at inference)"
        )


@torch.no_grad()
def fold_feature_transform(network: KDNet, arch: str, *, check: bool = True) -> KDNet:
    """A copy of ``network`` with its NORM FT folded into the classifier: ``W' = W·A``, ``b' = b + W·d``.

    Valid because the FT is affine per pixel in eval mode and only global *average* pooling (which commutes
    with per-pixel affine maps) and the classifier follow it — true for every family of
    :data:`STUDENT_PLACEMENTS` marked foldable, not for WRN (BN-ReLU after the FT).  The result has exactly
    the plain ``arch`` structure and state-dict keys.  ``check`` compares the logits of both networks in
    eval mode on a random batch and refuses a fold that changes them (relative error above 1e-4), so a network
    whose head is not "average pool + linear" can never be exported silently wrong.
    """
    check_foldable(arch)
    found = feature_transform_at(network)
    if found is None:
        raise FoldError(f"this {arch} has no NORM FT inserted: nothing to fold")
    point, ft = found
    folded = copy.deepcopy(network).eval()
    folded.remove_insert(point)
    classifier = folded.classifier
    if classifier.bias is None:
        raise FoldError(f"the classifier of {arch} has no bias to absorb the FT's offset")
    if classifier.in_features != ft.in_channels:
        raise FoldError(
            f"the NORM FT at {point!r} of {arch} maps {ft.in_channels} channels but the classifier reads "
            f"{classifier.in_features}: it does not sit directly before global pooling"
        )
    matrix, offset = ft.affine_map()
    weight = classifier.weight.double()  # copy_ rounds back to the classifier's dtype
    classifier.bias.copy_(classifier.bias.double() + weight @ offset.to(weight.device))
    classifier.weight.copy_(weight @ matrix.to(weight.device))
    if check:
        error = fold_error(network, folded)
        if error > 1e-4:
            raise FoldError(
                f"folding the NORM FT of {arch} at {point!r} changes its logits (relative error {error:.2e}): the "
                "network's head is not global average pooling + linear after that point"
            )
    return folded


@torch.no_grad()
def fold_error(original: KDNet, folded: KDNet, batch: int = 4, seed: int = 0) -> float:
    """max |logits_original − logits_folded| / max |logits_original| on a random batch, both in eval mode."""
    parameter = next(original.parameters())
    generator = torch.Generator().manual_seed(seed)
    channels = next((m.in_channels for m in original.modules() if isinstance(m, nn.Conv2d)), 3)
    images = torch.randn(batch, channels, original.input_size, original.input_size, generator=generator)
    images = images.to(device=parameter.device, dtype=parameter.dtype)
    was_training = original.training
    original.eval()
    try:
        reference = original(images)
    finally:
        original.train(was_training)
    folded_logits = folded.eval()(images)
    return float((reference - folded_logits).abs().max() / reference.abs().max().clamp_min(1e-12))


# ----------------------------------------------------------------------------------------------- helpers
_FORMULATIONS = {
    # formulation: (ce_weight, norm_weight, logit_scale, ramp, segment reduction)
    "code": (0.1, 1.0, 2.5, "cifar", "sum"),
    "paper": (1.0, 10.0, None, "none", "mean"),
}


def _insert_ft(student: KDNet, arch: str, expanded_channels: int, ft: FTKind) -> tuple[str, int]:
    """Insert the FT (unless ``ft == "none"``) where ``arch``'s family wants it; return (point, C_s)."""
    placement = placement_for(arch)
    point = placement.insertion_point(student)
    shapes = student.feature_shapes()
    if point not in shapes:
        raise NORMConfigError(f"{arch} has no {point!r} tap in feature_shapes(); valid: {', '.join(shapes)}")
    channels = shapes[point].channels
    if ft != "none":
        student.insert(
            point, NORMFeatureTransform(channels, expanded_channels, residual=ft == "default", init=placement.init)
        )
    return point, channels


# -------------------------------------------------------------------------------------------------- NORM
class NORM(DistillationModule):
    """N-to-one representation matching: one FT in the student, its N expanded segments each match the teacher.

    See the module docstring for the two formulations and the placements.  Rows of NORM's tables:
    NORM = defaults; NORM (w/ plain FT) = ``ft="plain"``; NORM+KD = ``kd_weight > 0``; Fig. 2 = ``n_segments``
    (N = 1 with ``ft="none"``, as the code removes the FT at N = 1); Fig. 4 = ``segments_used``; Table 8 =
    ``distance``; Table 7 (reversed NORM) = ``contract_teacher=True, ft="none"``.  NORM+CRD is
    :class:`kd_modules.norm_crd.NORMCRD`, which returns the CRD term from :meth:`extra_losses`.

    Args:
        student: network name (its family must be in ``STUDENT_PLACEMENTS``).
        teacher: the frozen teacher; its last stage is the target.
        num_classes: classifier width (linked from the data).
        optim: optimiser and schedule.
        formulation: ``code`` (released code: sum over segments, logits standardised x2.5, per-epoch ramp,
            CE weight r = 0.1, NORM weight b = 1) or ``paper`` (Eq. 3-5: mean over segments, raw logits, no
            ramp, CE weight 1, α = 10).
        n_segments: N, the expansion factor (8 in every main result; the code's flag default is 4).
        ft: ``default`` (residual FT), ``plain`` (no shortcut) or ``none`` (no FT: the raw student tap is matched
            and must have N·C_t channels — the released code at N = 1).
        segments_used: match only the first k of the N segments (Fig. 4); None = all.
        distance: per-segment distance: ``l2`` (MSE), ``l1`` (mean absolute error) or ``mmd`` (NST's
            polynomial-kernel MMD) — Table 8.
        ce_weight: weight of the cross-entropy term (code ``-r``); None = the formulation's (0.1 / 1).
        norm_weight: weight of the NORM term (code ``-b``, paper α); None = the formulation's (1 / 10).
        kd_weight: weight of the KD term (code ``-a``, paper β); 0 = plain NORM.
        temperature: KD temperature (``--kd_T`` = 4).
        logit_scale: standardise logits and scale them by this before CE/KD (code ``--ceta`` = 2.5); None = the
            formulation's (2.5 / off); 0 turns it off explicitly.
        ramp: per-epoch weight on the NORM term: ``cifar``, ``imagenet`` or ``none``; None = the formulation's
            (``cifar`` / ``none``).  ImageNet recipes set ``imagenet``.
        ramp_stretch: stretch the ramp's epoch boundaries to the run's length in the epochs the ramp reads
            (``optim.loss_schedule_epochs`` when set, else ``max_epochs``); the released code uses fixed boundaries.
        contract_teacher: reversed NORM (Table 7): a trainable 1x1 conv contracts the teacher map to C_s/N
            channels and the N segments of the raw student map match it; requires ``ft="none"``.
    """

    requires_teacher = True
    teacher: KDNet  # loaded by the base module (requires_teacher)

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        num_classes: int = 100,
        optim: OptimConfig = OptimConfig(),
        formulation: Literal["code", "paper"] = "code",
        n_segments: int = 8,
        ft: FTKind = "default",
        segments_used: int | None = None,
        distance: Distance = "l2",
        ce_weight: float | None = None,
        norm_weight: float | None = None,
        kd_weight: float = 0.0,
        temperature: float = 4.0,
        logit_scale: float | None = None,
        ramp: Literal["cifar", "imagenet", "none"] | None = None,
        ramp_stretch: bool = False,
        contract_teacher: bool = False,
    ) -> None:
        super().__init__(student=student, num_classes=num_classes, teacher=teacher, optim=optim)
        if n_segments < 1:
            raise NORMConfigError(f"n_segments (N) must be at least 1, got {n_segments}")
        if segments_used is not None and not 1 <= segments_used <= n_segments:
            raise NORMConfigError(f"segments_used must be in 1..{n_segments} (N), got {segments_used}")
        default_ce, default_norm, default_scale, default_ramp, reduction = _FORMULATIONS[formulation]
        self.reduction = reduction
        self.ce_weight = default_ce if ce_weight is None else ce_weight
        self.norm_weight = default_norm if norm_weight is None else norm_weight
        self.logit_scale = default_scale if logit_scale is None else (logit_scale or None)
        self.ramp = default_ramp if ramp is None else ramp

        teacher_channels = self.teacher.stage_channels[-1]
        if contract_teacher and ft != "none":
            raise NORMConfigError(
                f"contract_teacher (reversed NORM) matches the raw student map: set ft='none' (got ft={ft!r})"
            )
        self.point, student_channels = _insert_ft(self.student, student, n_segments * teacher_channels, ft)
        self.teacher_contraction: nn.Conv2d | None = None
        if contract_teacher:
            if student_channels % n_segments:
                raise NORMConfigError(
                    f"reversed NORM splits the student's {student_channels} channels into N={n_segments} segments: "
                    "N must divide them"
                )
            self.teacher_contraction = nn.Conv2d(teacher_channels, student_channels // n_segments, 1, bias=False)
            if placement_for(student).init == "kaiming":
                nn.init.kaiming_normal_(self.teacher_contraction.weight, mode="fan_out", nonlinearity="relu")
        elif ft == "none" and student_channels != n_segments * teacher_channels:
            raise NORMConfigError(
                f"ft='none' matches the raw {student} map ({student_channels} channels) against N={n_segments} x "
                f"{teacher_channels} teacher channels: they must be equal (use the FT, or N = C_s / C_t)"
            )

    # ------------------------------------------------------------------------------------------- pieces
    def ramp_weight(self) -> float:
        """λ(epoch) of the current epoch (plain Python: no device sync)."""
        stretch_to = None
        if self.ramp_stretch and self.optim.loss_schedule_epochs > 0:
            stretch_to = self.optim.loss_schedule_epochs
        elif self.ramp_stretch and self._trainer is not None and (self.trainer.max_epochs or 0) > 0:
            stretch_to = int(self.trainer.max_epochs)
        return norm_ramp(self.schedule_epoch, self.ramp, stretch_to)

    def student_map(self, out: FeatureOutput) -> Tensor:
        """The student tensor NORM matches: the FT's expanded map, or the raw tap without FT."""
        if self.point in out.extras:
            return out.extras[self.point]  # type: ignore[return-value]
        if self.point == "neck":
            return out.final_map
        return out.stages_post[int(self.point.removeprefix("stage")) - 1]

    def extra_losses(self, batch: Batch, student: FeatureOutput, teacher: FeatureOutput) -> dict[str, Tensor]:
        """Further weighted terms of a combined method (NORM+CRD); plain NORM has none."""
        return {}

    def training_losses(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        images, labels = batch["images"], batch["labels"]
        teacher_out = self.teacher_features(images)
        student_out = self.student.forward_features(images)
        logits = student_out.logits
        scaled = standardize_logits(logits, self.logit_scale) if self.logit_scale else logits
        losses = {"ce": self.ce_weight * F.cross_entropy(scaled, labels)}
        if self.kd_weight > 0:
            teacher_logits = teacher_out.logits
            if self.logit_scale:
                teacher_logits = standardize_logits(teacher_logits, self.logit_scale)
            losses["kd"] = self.kd_weight * kd_loss(scaled, teacher_logits, self.temperature)
        if self.norm_weight > 0:
            student_map, target = align_spatial(self.student_map(student_out), teacher_out.stages_post[-1])
            if self.teacher_contraction is not None:
                target = self.teacher_contraction(target)
            matching = norm_loss(
                student_map, target, self.n_segments, self.segments_used, self.distance, self.reduction
            )
            losses["norm"] = (self.norm_weight * self.ramp_weight()) * matching
        losses.update(self.extra_losses(batch, student_out, teacher_out))
        return logits, losses

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.log("train/norm_ramp", self.ramp_weight(), on_step=False, on_epoch=True)

    def deploy_student(self) -> KDNet:
        """The student with its FT folded into the classifier (see :func:`fold_feature_transform`)."""
        if feature_transform_at(self.student) is None:
            return copy.deepcopy(self.student).eval()
        return fold_feature_transform(self.student, self.hparams["student"])


# ----------------------------------------------------------------------------------------------- FT only
class FTStudent(DistillationModule):
    """The student with NORM's FT inserted, trained alone with cross-entropy ("Student w/ 1 plain / default FT").

    The FT is sized as in the NORM run of the same pair (C_s -> N·C_t -> C_s), so only the teacher's
    *architecture* is needed, never its weights: the table runner passes ``teacher_arch`` (see
    ``sized_by_teacher_arch``).  The released code has no script for these rows; plain CE on raw logits is
    used, like the "Student (our reproduced)" rows (``logit_scale`` adds the code's standardisation if wanted).
    The trained student folds like a NORM student (``python -m benchmarks.export``).

    Args:
        student: network name.
        num_classes: classifier width (linked from the data).
        teacher: accepted so that a table can run this row with the shared config; only its ``arch`` is used.
        optim: optimiser and schedule.
        teacher_arch: the network whose last-stage width C_t sizes the FT.
        teacher_channels: C_t given directly (instead of ``teacher_arch``).
        n_segments: N.
        ft: ``default`` (residual) or ``plain``.
        logit_scale: standardise logits and scale them by this before CE; None = raw logits.
    """

    #: The table runner passes ``teacher_arch = <pair's teacher>`` to methods that set this (no weights needed).
    sized_by_teacher_arch = True

    def __init__(
        self,
        student: str,
        num_classes: int = 100,
        teacher: TeacherConfig | None = None,
        optim: OptimConfig = OptimConfig(),
        teacher_arch: str | None = None,
        teacher_channels: int | None = None,
        n_segments: int = 8,
        ft: Literal["default", "plain"] = "default",
        logit_scale: float | None = None,
    ) -> None:
        super().__init__(student=student, num_classes=num_classes, teacher=None, optim=optim)
        if teacher_arch is None and teacher is not None:
            teacher_arch = teacher.arch
        if (teacher_arch is None) == (teacher_channels is None):
            raise NORMConfigError(
                "FTStudent sizes its FT by the teacher's last-stage width: give exactly one of teacher_arch "
                f"(got {teacher_arch!r}) and teacher_channels (got {teacher_channels!r})"
            )
        if n_segments < 1:
            raise NORMConfigError(f"n_segments (N) must be at least 1, got {n_segments}")
        if teacher_channels is None:  # the last-stage width of teacher_arch, built on the meta device (no weights)
            with torch.device("meta"):
                teacher_channels = create_model(teacher_arch, num_classes).stage_channels[-1]
        self.point, _ = _insert_ft(self.student, student, n_segments * teacher_channels, ft)
        self.logit_scale = logit_scale or None

    def training_losses(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        logits = self.student(batch["images"])
        scaled = standardize_logits(logits, self.logit_scale) if self.logit_scale else logits
        return logits, {"ce": F.cross_entropy(scaled, batch["labels"])}

    def deploy_student(self) -> KDNet:
        return fold_feature_transform(self.student, self.hparams["student"])
