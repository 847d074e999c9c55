"""NST: Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer" (2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kd_modules.losses.common import pool_to_smaller

__all__ = ["polynomial_kernel", "nst_loss", "nst_loss_layers"]


def polynomial_kernel(a: Tensor, b: Tensor) -> Tensor:
    r"""Degree-2 polynomial kernel (c = 0) between the channel rows of two (B, C, N) tensors:
    ``k[b, j, i] = <b[b, j], a[b, i]>^2``, shape (B, C_b, C_a).

    The references broadcast a (B, C_b, C_a, N) product and sum it; a batched matrix product gives the same
    numbers without that memory.
    """
    return torch.bmm(b, a.transpose(1, 2)).pow(2)


def nst_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    r"""Squared MMD with the polynomial kernel between the two networks' channel activation patterns (Eq. 6-7).

    Each channel map is flattened over H*W and L2-normalised; then

    .. math::  \ell = \overline{k(F_t, F_t)} + \overline{k(F_s, F_s)} - 2\,\overline{k(F_s, F_t)}

    where every bar is the mean over *its own* matrix (B*C_t^2, B*C_s^2, B*C_s*C_t entries) — the references'
    normalisation, not one common MMD constant.  The teacher term is a constant (detached) but part of the value.
    """
    f_s, f_t = pool_to_smaller(f_s, f_t)
    s = F.normalize(f_s.flatten(2), dim=2)
    t = F.normalize(f_t.flatten(2), dim=2)
    return polynomial_kernel(t, t).mean().detach() + polynomial_kernel(s, s).mean() - 2 * polynomial_kernel(s, t).mean()


def nst_loss_layers(feats_s: Sequence[Tensor], feats_t: Sequence[Tensor]) -> Tensor:
    """Sum of :func:`nst_loss` over layers paired by position (``zip`` from the start)."""
    return torch.stack([nst_loss(s, t) for s, t in zip(feats_s, feats_t)]).sum()
