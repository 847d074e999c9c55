"""KDSVD: Lee et al., "Self-supervised Knowledge Distillation Using Singular Value Decomposition" (ECCV 2018).

Two reference implementations exist and give different numbers (spec methods-baselines §14):

* ``repdistiller``: each map is reshaped to (B, H*W, C) — rows are positions, columns channels — so the right
  singular vectors live in channel space and student and teacher need **equal channels** per layer.
  (RepDistiller writes ``H*H``, assuming square maps; H*W here, the same for every square map.)
* ``mdistiller``: each map is reshaped to (B, C*H, W) — the right singular vectors live along the **width**, so
  the networks need equal widths per layer, not equal channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["KDSVDLayout", "svd_factors", "align_singular_vectors", "kdsvd_loss"]

KDSVDLayout = Literal["repdistiller", "mdistiller"]


def _finite(x: Tensor) -> Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _as_matrices(feature: Tensor, layout: KDSVDLayout) -> Tensor:
    b, c, h, w = feature.shape
    if layout == "repdistiller":
        return feature.reshape(b, c, h * w).transpose(1, 2)
    if layout == "mdistiller":
        return feature.reshape(b, c * h, w).float()
    raise ValueError(f"KDSVD layout {layout!r} is not one of: repdistiller, mdistiller")


def svd_factors(feature: Tensor, n: int, layout: KDSVDLayout = "repdistiller") -> tuple[Tensor, Tensor]:
    """The first ``n`` singular values (B, n) and right singular vectors (B, D, n) of each sample's matrix.

    Non-finite entries are zeroed; both are L2-normalised along dim 1 (so the kept singular values of a sample
    have unit norm, and so does every kept vector), as the references' ``svd``.  ``torch.linalg.svd`` returns
    V^H; it is transposed back to V (``torch.svd``'s convention, which the references use).

    The SVD's backward divides by differences of singular values, so repeated ones (ReLU maps of 1x1 / 2x2
    spatial size, e.g. VGG's last stages) give non-finite gradients; the references let them poison the
    student's weights.  Here non-finite gradient entries at the SVD input are zeroed, the backward analogue of
    the forward's zeroing of non-finite values.
    """
    matrices = _as_matrices(feature, layout)
    if matrices.requires_grad:
        matrices.register_hook(_finite)
    _, s, vh = torch.linalg.svd(matrices, full_matrices=False)
    v = _finite(vh.transpose(-2, -1))
    s = _finite(s)
    return F.normalize(s[:, :n], dim=1), F.normalize(v[:, :, :n], dim=1)


def align_singular_vectors(v_s: Tensor, v_t: Tensor) -> Tensor:
    """For each teacher vector, the student vector with the largest |cosine|, sign-corrected (B, D, n_t).

    ``cos = V_s^T V_t``; the mask keeps, per teacher column, the entry whose |cos| equals the column maximum
    (all tied entries, as the reference's ``torch.eq``) with the sign of the cosine; ``V_s @ mask``.
    """
    cosine = v_s.transpose(-2, -1) @ v_t
    magnitude = cosine.abs()
    best = magnitude.max(dim=1, keepdim=True).values
    mask = torch.where(magnitude == best, torch.sign(cosine), torch.zeros_like(cosine))
    return v_s @ mask


def kdsvd_loss(
    feats_s: Sequence[Tensor], feats_t: Sequence[Tensor], k: int = 1, layout: KDSVDLayout = "repdistiller"
) -> Tensor:
    r"""Sum over consecutive layer pairs of the squared difference of RBF-kernel correlation maps (Eq. 3-5).

    Per layer: teacher factors with ``n = k``, student with ``n = k + 3``; the student vectors are aligned to
    the teacher's; both are scaled by the **teacher's** normalised singular values.  For layers i >= 1:

    .. math::  R[b,p,q,j] = \exp\!\big(-(V^{(i)}_{b,p,j} - V^{(i-1)}_{b,q,j})^2 / 8\big),\qquad
               \ell_i = \sum (R_s - R_t)^2 \ \ (\text{non-finite terms} \to 0)

    and the result is :math:`\sum_i \ell_i / B`.  Layers pair by position (``zip`` from the start).
    """
    previous_s: Tensor | None = None
    previous_t: Tensor | None = None
    total = feats_s[0].new_zeros(())
    for f_s, f_t in zip(feats_s, feats_t):
        s_t, v_t = svd_factors(f_t, k, layout)
        _, v_s = svd_factors(f_s, k + 3, layout)
        if v_s.shape[1] != v_t.shape[1]:
            axis = "channels" if layout == "repdistiller" else "widths"
            raise ValueError(
                f"KDSVD ({layout} layout) needs equal {axis} per layer: student {tuple(f_s.shape[1:])} vs "
                f"teacher {tuple(f_t.shape[1:])}"
            )
        v_s = align_singular_vectors(v_s, v_t)
        scale = s_t.unsqueeze(1)
        v_t = v_t * scale
        v_s = v_s * scale
        if previous_s is not None and previous_t is not None:
            r_s = torch.exp(-(v_s.unsqueeze(2) - previous_s.unsqueeze(1)).pow(2) / 8)
            r_t = torch.exp(-(v_t.unsqueeze(2) - previous_t.unsqueeze(1)).pow(2) / 8)
            total = total + _finite((r_s - r_t.detach()).pow(2)).sum()
        previous_s, previous_t = v_s, v_t
    return total / feats_s[0].shape[0]
