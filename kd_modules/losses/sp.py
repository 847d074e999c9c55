"""SP: Tung & Mori, "Similarity-Preserving Knowledge Distillation" (ICCV 2019)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["similarity_matrix", "sp_loss"]


def similarity_matrix(feature: Tensor) -> Tensor:
    r""":math:`\tilde G = \mathrm{rownorm}(Q Q^\top)` with :math:`Q` the (B, C*H*W) flattened map (Eq. 2-3):
    each row of the B x B Gram matrix is L2-normalised (``F.normalize(G)``, dim 1)."""
    q = feature.flatten(1)
    return F.normalize(q @ q.t(), dim=1)


def sp_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    r"""Eq. (4): :math:`L_{SP} = \frac{1}{B^2} \lVert \tilde G_t - \tilde G_s \rVert_F^2`.

    RepDistiller ``Similarity`` / mdistiller ``sp_loss`` compute exactly this (they return shape [1]; here a
    scalar).  Student and teacher maps may differ in channels and size: only the B x B matrices are compared.
    """
    b = f_s.shape[0]
    return (similarity_matrix(f_t) - similarity_matrix(f_s)).pow(2).sum() / (b * b)
