"""OFD: Heo et al., "A Comprehensive Overhaul of Feature Distillation" (ICCV 2019)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["ofd_margin", "ofd_partial_l2", "ofd_loss"]


def ofd_margin(bn_weight: Tensor, bn_bias: Tensor, min_tail: float = 1e-3) -> Tensor:
    r"""Per-channel margin of OFD, Eq. (3): the expected value of a teacher pre-ReLU response given it is negative.

    The teacher's pre-ReLU response of channel :math:`c` is modelled as :math:`x \sim N(\mu, \sigma^2)` with
    :math:`\mu = \beta_c` and :math:`\sigma = |\gamma_c|` — the affine parameters of the BatchNorm just before the
    ReLU (official ``get_margin_from_BN``; not its running statistics).  Then

    .. math::  m_c = E[x \mid x < 0] = \mu - \sigma \frac{\phi(\mu/\sigma)}{\Phi(-\mu/\sigma)}

    where the tail mass :math:`\Phi(-\mu/\sigma)` exceeds ``min_tail`` (0.001), and :math:`-3\sigma` otherwise.
    """
    std = bn_weight.detach().abs().double()
    mean = bn_bias.detach().double()
    z = mean / std
    tail = torch.special.ndtr(-z)
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    conditional = mean - std * pdf / tail.clamp_min(torch.finfo(torch.float64).tiny)
    margin = torch.where(tail > min_tail, conditional, -3.0 * std)
    return margin.to(bn_weight.dtype)


def ofd_partial_l2(student: Tensor, teacher: Tensor, margin: Tensor) -> Tensor:
    r"""OFD's partial L2 distance (Eq. 4) of one stage, summed over every element and divided by the batch.

    The teacher target is :math:`t' = \max(t, m)` (the margin ReLU); a position counts unless the student is
    already below a non-positive target (:math:`s \le t' \le 0`).  ``margin`` is per channel.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"OFD stage shapes differ: student {tuple(student.shape)} vs teacher {tuple(teacher.shape)}")
    target = torch.maximum(teacher, margin.view(1, -1, 1, 1).to(teacher.dtype))
    counted = (student > target) | (target > 0)
    return ((student - target).pow(2) * counted).sum() / student.shape[0]


def ofd_loss(students: list[Tensor], teachers: list[Tensor], margins: list[Tensor]) -> Tensor:
    """Sum over stages of the partial L2, the deepest stage weighted 1, the one before 1/2, then 1/4 ...

    (official ``Distiller.forward``: ``loss_distill / 2 ** (feat_num - i - 1)``).
    """
    n = len(students)
    terms = [ofd_partial_l2(s, t, m) / 2 ** (n - 1 - i) for i, (s, t, m) in enumerate(zip(students, teachers, margins))]
    return torch.stack(terms).sum()
