"""RKD: Park et al., "Relational Knowledge Distillation" (CVPR 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pairwise_distances", "rkd_distance_loss", "rkd_angle_loss", "rkd_loss"]


def pairwise_distances(embeddings: Tensor, squared: bool = False, eps: float = 1e-12) -> Tensor:
    r"""(B, B) Euclidean distances :math:`\sqrt{\max(\lVert e_i\rVert^2 + \lVert e_j\rVert^2 - 2 e_i\cdot e_j,\ \epsilon)}`
    with a zero diagonal (set after the square root), as the references' ``_pdist``.

    The clamp comes *before* the square root, so two identical off-diagonal samples are 1e-6 apart, not 0.
    """
    square = embeddings.pow(2).sum(1)
    distances = (square[:, None] + square[None, :] - 2 * embeddings @ embeddings.t()).clamp(min=eps)
    if not squared:
        distances = distances.sqrt()
    eye = torch.eye(distances.shape[0], dtype=torch.bool, device=distances.device)
    return distances.masked_fill(eye, 0.0)


def _normalised_by_positive_mean(distances: Tensor) -> Tensor:
    # mean(d[d > 0]) written without boolean indexing, which would synchronise with the host.
    positive = distances > 0
    return distances / ((distances * positive).sum() / positive.sum())


def rkd_distance_loss(emb_s: Tensor, emb_t: Tensor, squared: bool = False, eps: float = 1e-12) -> Tensor:
    r"""Distance-wise term (Eq. 4-5): smooth-L1 between the distance matrices, each divided by the mean of its
    positive entries (:math:`\mu`), averaged over all B^2 entries (the zero diagonal included).

    The teacher side carries no gradient (the references compute it under ``no_grad``).
    """
    with torch.no_grad():
        d_t = _normalised_by_positive_mean(pairwise_distances(emb_t.flatten(1), squared, eps))
    d_s = _normalised_by_positive_mean(pairwise_distances(emb_s.flatten(1), squared, eps))
    return F.smooth_l1_loss(d_s, d_t)


def _angles(embeddings: Tensor) -> Tensor:
    # difference[i, j] = e_j - e_i; normalised along the feature axis (zero vectors stay zero: eps 1e-12).
    difference = embeddings[None, :, :] - embeddings[:, None, :]
    unit = F.normalize(difference, p=2, dim=2)
    return torch.bmm(unit, unit.transpose(1, 2)).flatten()


def rkd_angle_loss(emb_s: Tensor, emb_t: Tensor) -> Tensor:
    r"""Angle-wise term (Eq. 6-7): smooth-L1 between :math:`\cos\angle e_i e_j e_k = \langle
    \tfrac{e_i - e_j}{\lVert e_i - e_j\rVert}, \tfrac{e_k - e_j}{\lVert e_k - e_j\rVert} \rangle` of the two
    networks over all B^3 triplets (degenerate ones are 0 on both sides).  Teacher side without gradient."""
    with torch.no_grad():
        a_t = _angles(emb_t.flatten(1))
    a_s = _angles(emb_s.flatten(1))
    return F.smooth_l1_loss(a_s, a_t)


def rkd_loss(
    emb_s: Tensor,
    emb_t: Tensor,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
    squared: bool = False,
    eps: float = 1e-12,
) -> Tensor:
    """``distance_weight * L_distance + angle_weight * L_angle`` (RepDistiller ``RKDLoss(25, 50)``, mdistiller
    ``rkd_loss`` with ``PDIST.EPSILON 1e-12, SQUARED False``)."""
    return distance_weight * rkd_distance_loss(emb_s, emb_t, squared, eps) + angle_weight * rkd_angle_loss(emb_s, emb_t)
