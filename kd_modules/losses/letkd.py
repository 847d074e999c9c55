"""letKD (Gorgun et al., BMVC 2023) and QuEST (Jain et al., ECCV 2020): per-location targets and their KL loss.

Both methods turn the teacher's feature map into a distribution over "words" at every spatial location and ask
the student to predict it:

* penultimate words (QuEST, letKD-1, letKD-2): a frozen K-means codebook {rho_k} of teacher feature vectors;
  the teacher's soft assignment is ``p_T(i) = softmax_k(-tau * ||F_t(i) - rho_k||^2)`` (letKD supplement,
  Algorithm 1, with the minus sign that the official ``VectorQuantizerEMA`` applies and the supplement omits);
* intermediate sub-classes (letKD-2): teacher features projected by LDA, the nearest K-means centroid *among the
  sub-classes of the image's own class* picks a row of the teacher's sub-class score matrix s_T (supplement,
  Algorithm 2, online part; official ``valueLayer_subclass.valueLayer.forward``).

The loss is ``KL(p_T(i) || softmax(S(i)))`` summed over words and averaged over all B*H*W locations (official
``quest_dense_prediction``: ``F.kl_div(log_softmax(S), p_T, reduction="batchmean")`` on (B*H*W, K) rows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["squared_distances", "codebook_assignment", "subclass_assignment", "location_kl"]


def squared_distances(vectors: Tensor, centroids: Tensor) -> Tensor:
    """``||v_n - c_k||^2`` for (N, D) vectors and (K, D) centroids, as (N, K), via the expanded form
    ``||v||^2 + ||c||^2 - 2 v.c`` (one matrix product, as the official vector quantiser computes it)."""
    return vectors.pow(2).sum(1, keepdim=True) + centroids.pow(2).sum(1).unsqueeze(0) - 2.0 * vectors @ centroids.t()


def _locations(feature_map: Tensor) -> Tensor:
    """(B, D, H, W) -> (B*H*W, D), locations in (b, h, w) order."""
    return feature_map.permute(0, 2, 3, 1).reshape(-1, feature_map.shape[1])


def codebook_assignment(teacher_map: Tensor, centroids: Tensor, temperature: float = 1.0) -> Tensor:
    r"""The teacher's soft word assignment at every location.

    .. math:: p_T(i)_k = \frac{\exp(-\tau \lVert F_t(i) - \rho_k \rVert^2)}{\sum_j \exp(-\tau \lVert F_t(i) - \rho_j \rVert^2)}

    Args:
        teacher_map: (B, D, H, W) teacher features (already pooled for cross-architecture pairs).
        centroids: (K, D) frozen codebook.
        temperature: tau; the official configs use 1 (no normalisation of features or centroids).

    Returns:
        (B, H, W, K) probabilities.
    """
    b, _, h, w = teacher_map.shape
    distances = squared_distances(_locations(teacher_map), centroids)
    return torch.softmax(-temperature * distances, dim=1).view(b, h, w, -1)


def subclass_assignment(lda_map: Tensor, labels: Tensor, centroids: Tensor, score_matrix: Tensor) -> Tensor:
    """letKD-2's intermediate target: a row of s_T chosen by the class-constrained nearest sub-class centroid.

    For a location of an image of class y, ``k* = argmin_k ||z(i) - rho_y^k||^2`` over the K_inter K-means
    centroids of class y only, and ``p_T(i) = s_T[y * K_inter + k*]`` (supplement Algorithm 2, online; the
    official code takes the argmax of ``mask_y * (rowmax - d)``, the same choice).

    Args:
        lda_map: (B, d, H, W) teacher features after the LDA projection.
        labels: (B,) image labels.
        centroids: (C, K_inter, d) per-class K-means centroids (sub-class index = y * K_inter + k).
        score_matrix: (C * K_inter, C * K_inter) s_T, rows summing to one.

    Returns:
        (B, H, W, C * K_inter) target distributions.
    """
    b, _, h, w = lda_map.shape
    per_class = centroids.shape[1]
    location_labels = labels.repeat_interleave(h * w)
    class_centroids = centroids[location_labels]  # (B*H*W, K_inter, d)
    distances = (_locations(lda_map).unsqueeze(1) - class_centroids).pow(2).sum(-1)
    chosen = location_labels * per_class + distances.argmin(1)
    return score_matrix[chosen].view(b, h, w, -1)


def location_kl(scores: Tensor, targets: Tensor) -> Tensor:
    """``KL(p_T || softmax(S))`` per location, summed over words, averaged over all B*H*W locations.

    Args:
        scores: (B, K, H, W) the student's word scores S (the KD layer's first, normalised 1x1 conv).
        targets: (B, H, W, K) the teacher's distributions p_T.
    """
    log_q = F.log_softmax(_locations(scores), dim=1)
    return F.kl_div(log_q, targets.reshape(log_q.shape), reduction="batchmean")
