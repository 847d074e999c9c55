"""VID: Ahn et al., "Variational Information Distillation for Knowledge Transfer" (CVPR 2019)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["vid_log_scale_init", "vid_variance", "vid_loss"]


def vid_log_scale_init(init_variance: float = 5.0, eps: float = 1e-5) -> float:
    """The ``log_scale`` value whose variance :func:`vid_variance` equals ``init_variance`` (the references:
    ``log(exp(init_pred_var - eps) - 1)``)."""
    return math.log(math.exp(init_variance - eps) - 1.0)


def vid_variance(log_scale: Tensor, eps: float = 1e-5) -> Tensor:
    r"""Per-channel variance :math:`\sigma_c^2 = \log(1 + e^{\alpha_c}) + \epsilon` (Eq. 6: softplus)."""
    return torch.log(1.0 + torch.exp(log_scale)) + eps


def vid_loss(pred_mean: Tensor, target: Tensor, log_scale: Tensor, eps: float = 1e-5) -> Tensor:
    r"""Gaussian negative log-likelihood of the teacher map under the student's prediction (Eq. 5-6).

    .. math::  \ell = \frac{1}{BCHW} \sum \tfrac12 \Big( \frac{(\mu - t)^2}{\sigma_c^2} + \log \sigma_c^2 \Big)

    The mean over every element, without the :math:`\tfrac12\log 2\pi` constant — RepDistiller ``VIDLoss`` and
    mdistiller ``vid_loss``.  ``pred_mean`` is the regressor's output on the (pooled) student map, ``target`` the
    (pooled) teacher map, ``log_scale`` the (C,) variance parameter.
    """
    variance = vid_variance(log_scale, eps).view(1, -1, 1, 1).to(pred_mean)
    return (0.5 * ((pred_mean - target) ** 2 / variance + torch.log(variance))).mean()
