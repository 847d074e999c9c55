"""DKD: Zhao et al., "Decoupled Knowledge Distillation" (CVPR 2022), as mdistiller computes it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["tckd_loss", "nckd_loss", "dkd_loss"]

# mdistiller removes the target class from the non-target distributions by subtracting 1000 from its logit
# (after the division by T); exp(-1000) underflows to exactly 0 in float32.
_MASK_OFFSET = 1000.0


def _binary(probabilities: Tensor, target_mask: Tensor) -> Tensor:
    """(B, 2): [p_target, sum of the other classes' p] (mdistiller ``cat_mask``)."""
    target = (probabilities * target_mask).sum(1, keepdim=True)
    others = (probabilities * ~target_mask).sum(1, keepdim=True)
    return torch.cat([target, others], dim=1)


def _target_mask(logits: Tensor, labels: Tensor) -> Tensor:
    # scatter (mdistiller's way) rather than F.one_hot, which validates the labels on the host on CPU
    return torch.zeros_like(logits, dtype=torch.bool).scatter_(1, labels.reshape(-1, 1), True)


def tckd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float = 4.0) -> Tensor:
    r"""Target-class KD (Eq. 1/4): KL between the binary distributions :math:`b = [p_{gt}, 1 - p_{gt}]`,
    times :math:`T^2`, summed and divided by B.

    As mdistiller: the student's log is taken of the *summed probabilities* (``torch.log``), not via log-softmax.
    """
    mask = _target_mask(student_logits, labels)
    b_s = _binary(F.softmax(student_logits / temperature, dim=1), mask)
    b_t = _binary(F.softmax(teacher_logits / temperature, dim=1), mask)
    return F.kl_div(torch.log(b_s), b_t, reduction="sum") * temperature**2 / labels.shape[0]


def nckd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float = 4.0) -> Tensor:
    r"""Non-target-class KD: KL between the distributions over the non-target classes,
    :math:`\hat p = \mathrm{softmax}(z/T - 1000\cdot g)`, times :math:`T^2`, summed and divided by B."""
    offset = _MASK_OFFSET * _target_mask(student_logits, labels)
    p_t = F.softmax(teacher_logits / temperature - offset, dim=1)
    log_p_s = F.log_softmax(student_logits / temperature - offset, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="sum") * temperature**2 / labels.shape[0]


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> Tensor:
    r"""Eq. (6): :math:`L_{DKD} = \alpha\,\mathrm{TCKD} + \beta\,\mathrm{NCKD}` (mdistiller ``dkd_loss``).

    KD itself is :math:`\mathrm{TCKD} + (1 - p^t_{gt})\,\mathrm{NCKD}` per sample (Eq. 3 of the paper).
    """
    return alpha * tckd_loss(student_logits, teacher_logits, labels, temperature) + beta * nckd_loss(
        student_logits, teacher_logits, labels, temperature
    )
