"""AB: Heo et al., "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons" (AAAI 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ab_layer_loss", "ab_loss"]


def ab_layer_loss(student: Tensor, teacher: Tensor, margin: float = 1.0) -> Tensor:
    r"""The alternative (hinge-squared) activation-transfer loss of one layer (paper Eq. 6), summed over every element.

    .. math::  \sum \big[(s + m)^2 \, 1(s > -m \wedge t \le 0) + (s - m)^2 \, 1(s \le m \wedge t > 0)\big]

    on pre-ReLU maps: the student is pushed below :math:`-m` where the teacher neuron is inactive and above :math:`m`
    where it is active (RepDistiller ``ABLoss.criterion_alternative_L2``).
    """
    if student.shape != teacher.shape:
        raise ValueError(f"AB shapes differ: student {tuple(student.shape)} vs teacher {tuple(teacher.shape)}")
    active = teacher > 0
    off = (student + margin).pow(2) * ((student > -margin) & ~active)
    on = (student - margin).pow(2) * ((student <= margin) & active)
    return (off + on).sum()


def ab_loss(students: list[Tensor], teachers: list[Tensor], margin: float = 1.0) -> Tensor:
    """RepDistiller's ``ABLoss``: layer i of n weighted 2^(i-n+1) (deepest 1, then 1/2, 1/4), each divided by
    batch / 1000 * 3 ... i.e. ``sum_i w_i l_i / B / 1000 * 3``."""
    n = len(students)
    batch = students[0].shape[0]
    terms = [ab_layer_loss(s, t, margin) * 2.0 ** (i - n + 1) for i, (s, t) in enumerate(zip(students, teachers))]
    return torch.stack(terms).sum() / batch / 1000.0 * 3.0
