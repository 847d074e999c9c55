"""FSP: Yim et al., "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and Transfer
Learning" (CVPR 2017)."""

from __future__ import annotations

import torch
from torch import Tensor

from kd_modules.losses.common import pool_to_smaller

__all__ = ["fsp_matrix", "fsp_loss"]


def fsp_matrix(bottom: Tensor, top: Tensor) -> Tensor:
    r"""The flow matrix of two maps (paper Eq. 1): :math:`G_{ji} = \frac{1}{HW}\sum_x top_j(x)\,bottom_i(x)`,
    (B, C_top, C_bottom); the taller map is average-pooled to the other's height first (RepDistiller)."""
    bottom, top = pool_to_smaller(bottom, top)
    b = bottom.shape[0]
    return torch.einsum("bjx,bix->bji", top.reshape(b, top.shape[1], -1), bottom.reshape(b, bottom.shape[1], -1)) / (
        bottom.shape[-1] * bottom.shape[-2]
    )


def fsp_loss(students: list[Tensor], teachers: list[Tensor]) -> Tensor:
    """Sum over consecutive feature pairs of the mean squared difference of the flow matrices (RepDistiller ``FSP``,
    summed as its init stage does; the paper's Eq. 2 weights pairs equally and sums over matrix entries)."""
    terms = []
    for k in range(len(students) - 1):
        g_s = fsp_matrix(students[k], students[k + 1])
        g_t = fsp_matrix(teachers[k], teachers[k + 1])
        if g_s.shape != g_t.shape:
            raise ValueError(f"FSP matrices differ in shape at pair {k}: {tuple(g_s.shape)} vs {tuple(g_t.shape)}")
        terms.append((g_s - g_t).pow(2).mean())
    return torch.stack(terms).sum()
