"""Helpers shared by the feature losses."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["pool_to_smaller"]


def pool_to_smaller(f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the spatially larger of two maps down to the other's height, as RepDistiller/mdistiller do.

    The references compare heights only and always build a *square* target ``(h, h)`` from the smaller map's
    height (AT, NST, VID, SimKD...); nothing is ever upsampled.  Equal heights leave both maps untouched.
    """
    h_s, h_t = f_s.shape[2], f_t.shape[2]
    if h_s > h_t:
        f_s = F.adaptive_avg_pool2d(f_s, (h_t, h_t))
    elif h_s < h_t:
        f_t = F.adaptive_avg_pool2d(f_t, (h_s, h_s))
    return f_s, f_t
