"""NORM: Liu et al., "NORM: Knowledge Distillation via N-to-One Representation Matching" (ICLR 2023).

Pure functions: the many-to-one matching loss (paper Eq. 3) with the official code's and the paper's
normalisations, the three distances of Table 8, the logit standardisation and the loss-weight ramp that the
released training loop (``helper/loops.py::train_distill``) applies and the paper does not mention.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Distance",
    "Reduction",
    "RAMPS",
    "align_spatial",
    "mmd_poly2",
    "norm_loss",
    "norm_ramp",
    "segment_distances",
    "standardize_logits",
]

Distance = Literal["l2", "l1", "mmd"]
Reduction = Literal["sum", "mean"]


def standardize_logits(logits: Tensor, scale: float = 2.5, eps: float = 1e-7) -> Tensor:
    r"""The released code's logit "LayerNorm": :math:`c \cdot (z - \mu(z)) / \sqrt{\sigma^2(z) + \epsilon}`.

    Mean and (biased) variance are taken per sample over the class dimension, no affine parameters,
    ``eps = 1e-7`` and ``c = --ceta = 2.5``.  The released loop applies it to student *and* teacher logits before
    both CE and KD; it is monotone per sample, so accuracy is unchanged, but the losses are computed on it.
    """
    return F.layer_norm(logits, logits.shape[-1:], None, None, eps) * scale


def align_spatial(student_map: Tensor, teacher_map: Tensor) -> tuple[Tensor, Tensor]:
    """Max-pool whichever map is spatially larger to the other's size (kernel = stride = the integer ratio).

    The CIFAR loop pools the teacher (``pool_size = H_t // H_s``, e.g. VGG13 4x4 -> MobileNetV2 2x2); the
    ImageNet loop pools the student when it is the larger one.  A non-integer ratio has no reference behaviour.
    """
    (hs, ws), (ht, wt) = student_map.shape[-2:], teacher_map.shape[-2:]
    if (hs, ws) == (ht, wt):
        return student_map, teacher_map
    teacher_larger = ht > hs
    (bh, bw), (sh, sw) = ((ht, wt), (hs, ws)) if teacher_larger else ((hs, ws), (ht, wt))
    if bh % sh or bw % sw or bh // sh != bw // sw:
        raise ValueError(
            f"NORM cannot align a student map of spatial size {(hs, ws)} with a teacher map of size {(ht, wt)}: "
            "one must be an integer multiple of the other, by the same factor in both dimensions"
        )
    ratio = bh // sh
    if teacher_larger:
        return student_map, F.max_pool2d(teacher_map, ratio, ratio)
    return F.max_pool2d(student_map, ratio, ratio), teacher_map


def mmd_poly2(student: Tensor, teacher: Tensor) -> Tensor:
    r"""Per-sample polynomial-kernel MMD between the channel sets of two maps (NST, Huang & Wang 2017).

    ``student``: (B, S, C, HW), ``teacher``: (B, 1 or S, C, HW) — S segments.  Each channel's HW vector is
    L2-normalised; with :math:`k(a, b) = (a^\top b)^2` the value per segment is
    :math:`\overline{k(t,t)} + \overline{k(s,s)} - 2\,\overline{k(s,t)}`, each mean over its own B·C·C
    entries (NST's normalisation).  Returns (S,).  NORM's Table 8 names "MMD" and cites NST; the exact
    kernel NORM used is not released, so NST's is taken.
    """
    s = F.normalize(student, dim=-1)
    t = F.normalize(teacher, dim=-1)
    k_ss = torch.matmul(s, s.transpose(-1, -2)).pow(2).mean(dim=(0, 2, 3))
    k_tt = torch.matmul(t, t.transpose(-1, -2)).pow(2).mean(dim=(0, 2, 3))
    k_st = torch.matmul(s, t.transpose(-1, -2)).pow(2).mean(dim=(0, 2, 3))
    return k_tt + k_ss - 2.0 * k_st


def segment_distances(
    expanded: Tensor,
    target: Tensor,
    n_segments: int,
    segments_used: int | None = None,
    distance: Distance = "l2",
) -> Tensor:
    """Distance of each of the first ``segments_used`` channel segments of ``expanded`` to ``target``.

    ``expanded``: (B, N·C, H, W), split *sequentially* into N segments of C channels (channels
    ``[i·C, (i+1)·C)``, paper Eq. 3); ``target``: (B, C, H, W).  ``l2`` is the mean squared error over all
    B·C·H·W elements of a segment (``F.mse_loss``), ``l1`` the mean absolute error, ``mmd``
    :func:`mmd_poly2`.  Returns a (segments_used,) tensor; no tiling of the target is materialised.
    """
    batch, channels, height, width = expanded.shape
    if target.shape[0] != batch or target.shape[-2:] != expanded.shape[-2:]:
        raise ValueError(
            f"NORM: expanded map {tuple(expanded.shape)} and target {tuple(target.shape)} differ in batch or size"
        )
    if channels != n_segments * target.shape[1]:
        raise ValueError(
            f"NORM: the expanded map has {channels} channels, not n_segments x target channels = "
            f"{n_segments} x {target.shape[1]}"
        )
    used = n_segments if segments_used is None else segments_used
    if not 1 <= used <= n_segments:
        raise ValueError(f"segments_used must be in 1..{n_segments}, got {segments_used}")
    segments = expanded.reshape(batch, n_segments, target.shape[1], height, width)[:, :used]
    reference = target.unsqueeze(1)
    if distance == "l2":
        return (segments - reference).pow(2).mean(dim=(0, 2, 3, 4))
    if distance == "l1":
        return (segments - reference).abs().mean(dim=(0, 2, 3, 4))
    if distance == "mmd":
        return mmd_poly2(segments.flatten(-2), reference.flatten(-2))
    raise ValueError(f"unknown NORM distance {distance!r}; valid: l2, l1, mmd")


def norm_loss(
    expanded: Tensor,
    target: Tensor,
    n_segments: int,
    segments_used: int | None = None,
    distance: Distance = "l2",
    reduction: Reduction = "sum",
) -> Tensor:
    r"""N-to-one representation matching loss.

    Paper (Eq. 3): :math:`L_{norm} = \frac{1}{N} \sum_{i=1}^{N} \lVert F^i_{se} - F_t \rVert_2^2`
    (``reduction="mean"``, reading the squared norm as a per-element mean).

    Released code: ``F.mse_loss(F_se, F_t.repeat(1, N, 1, 1)) * N`` — the teacher tiled N times, the mean
    over all elements times N, which is :math:`\sum_{i=1}^{N} \mathrm{MSE}(F^i_{se}, F_t)`
    (``reduction="sum"``, N times the paper's value).

    With ``segments_used = k < N`` only the first k segments are matched (Fig. 4) and the sum/mean runs over
    those k.  ``target`` is used as given: the caller stops its gradient when it is the frozen teacher's map.
    """
    per_segment = segment_distances(expanded, target, n_segments, segments_used, distance)
    if reduction == "sum":
        return per_segment.sum()
    if reduction == "mean":
        return per_segment.mean()
    raise ValueError(f"unknown NORM reduction {reduction!r}; valid: sum, mean")


#: The released loop's piecewise-constant weight on the NORM term (``opt.beta1``, overwriting ``-b1``):
#: ``(epochs the schedule was written for, [(first epoch of the piece, weight), ...])``.  0-based epochs.
RAMPS: dict[str, tuple[int, list[tuple[int, float]]]] = {
    # CIFAR: 0-9 0.1, 10-19 0.5, 20-179 1, 180-209 0.5, 210-239 0.1; epoch 240 (the 241st) keeps 0.1.
    "cifar": (240, [(0, 0.1), (10, 0.5), (20, 1.0), (180, 0.5), (210, 0.1)]),
    # ImageNet: 0-4 0.1, 5-14 0.5, 15-59 0.9, 60-79 0.5, 80-99 0.1; epoch 100 keeps 0.1.
    "imagenet": (100, [(0, 0.1), (5, 0.5), (15, 0.9), (60, 0.5), (80, 0.1)]),
}


def norm_ramp(epoch: int, schedule: str, max_epochs: int | None = None) -> float:
    """Weight of the NORM term at ``epoch`` (0-based) under ``schedule`` (``cifar``, ``imagenet``, ``none``).

    With ``max_epochs`` given, the pieces are stretched proportionally from the schedule's own length (240 or
    100 epochs) to ``max_epochs`` — for short runs (e.g. a few Fashion-MNIST epochs) that should still see the
    whole ramp; the released code uses the fixed boundaries (``max_epochs=None``).
    """
    if schedule == "none":
        return 1.0
    if schedule not in RAMPS:
        raise ValueError(f"unknown NORM ramp {schedule!r}; valid: {', '.join([*RAMPS, 'none'])}")
    length, pieces = RAMPS[schedule]
    stretch = 1.0 if max_epochs is None else max_epochs / length
    weight = pieces[0][1]
    for start, value in pieces:
        if epoch >= start * stretch:
            weight = value
    return weight
