"""PKT: Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer" (ECCV 2018)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["cosine_affinity", "pkt_loss"]


def cosine_affinity(embeddings: Tensor, eps: float = 1e-7) -> Tensor:
    r"""Row-stochastic (B, B) affinities from cosine similarities (Eq. 8-9 with the cosine kernel):
    :math:`\hat x = x / (\lVert x\rVert + \epsilon)` (NaN -> 0), :math:`S = (\hat x \hat x^\top + 1)/2`,
    :math:`P = S / \mathrm{rowsum}(S)`.  The eps is added to the norm (this is not ``F.normalize``)."""
    x = embeddings.flatten(1)
    x = x / (x.pow(2).sum(1, keepdim=True).sqrt() + eps)
    x = torch.where(torch.isnan(x), torch.zeros_like(x), x)
    similarity = (x @ x.t() + 1.0) / 2.0
    return similarity / similarity.sum(1, keepdim=True)


def pkt_loss(emb_s: Tensor, emb_t: Tensor, eps: float = 1e-7) -> Tensor:
    r"""Eq. (10): :math:`L_{PKT} = \frac{1}{B^2} \sum_{i,j} Q_{ij} \log \frac{Q_{ij} + \epsilon}{P_{ij} + \epsilon}`
    with :math:`Q` the teacher's and :math:`P` the student's affinities — the *mean* over all B^2 entries,
    diagonal included, eps inside both terms of the ratio (RepDistiller ``PKT.cosine_similarity_loss``,
    mdistiller ``pkt_loss``)."""
    p = cosine_affinity(emb_s, eps)
    q = cosine_affinity(emb_t, eps)
    return (q * torch.log((q + eps) / (p + eps))).mean()
