"""AT: Zagoruyko & Komodakis, "Paying More Attention to Attention" (ICLR 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kd_modules.losses.common import pool_to_smaller

__all__ = ["attention_map", "at_loss", "at_loss_layers"]


def attention_map(feature: Tensor, p: float = 2.0) -> Tensor:
    r"""Spatial attention :math:`Q = \mathrm{normalize}(\mathrm{mean}_c |A_c|^p)` flattened to (B, H*W).

    The paper uses the channel *sum* of :math:`|A_c|^p`; the references (RepDistiller ``Attention.at``,
    mdistiller ``at``) use the channel mean of ``f.pow(p)`` — the constant factor vanishes in the L2
    normalisation (``F.normalize``, eps 1e-12).  ``pow`` without ``abs`` as the references: for p=2 the same.
    """
    return F.normalize(feature.pow(p).mean(1).flatten(1), dim=1)


def at_loss(f_s: Tensor, f_t: Tensor, p: float = 2.0) -> Tensor:
    r"""One layer's attention-transfer term, Eq. (2) of the paper as the references compute it.

    .. math::  \ell = \frac{1}{B\,HW} \sum_{b} \lVert Q_s^{(b)} - Q_t^{(b)} \rVert_2^2

    i.e. the *mean* of squared differences (no :math:`\beta/2` factor, no square root); the spatially larger
    map is first average-pooled to the smaller one's height.
    """
    f_s, f_t = pool_to_smaller(f_s, f_t)
    return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


def at_loss_layers(feats_s: Sequence[Tensor], feats_t: Sequence[Tensor], p: float = 2.0) -> Tensor:
    """Sum of :func:`at_loss` over layers paired by position (``zip``: the shorter list wins, aligned from the
    start, as RepDistiller/mdistiller)."""
    return torch.stack([at_loss(s, t, p) for s, t in zip(feats_s, feats_t)]).sum()
