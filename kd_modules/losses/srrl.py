"""SRRL: Yang et al., "Knowledge Distillation via Softmax Regression Representation Learning" (ICLR 2021)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["srrl_losses"]


def srrl_losses(
    student_feature: Tensor, teacher_feature: Tensor, student_through_teacher_head: Tensor, teacher_logits: Tensor
) -> tuple[Tensor, Tensor]:
    r"""SRRL's two terms (paper Eqs. 2 and 4): feature matching and softmax regression.

    .. math::  L_{FM} = \mathrm{MSE}(h_s, h_t), \qquad L_{SR} = \mathrm{MSE}(W_t h_s, z_t)

    :math:`h_s` is the connector's (B, C_t) output, :math:`h_t` the teacher's pooled feature, :math:`W_t h_s` the
    student feature through the frozen teacher classifier and :math:`z_t` the teacher's logits.  Both are means over
    every element (``nn.MSELoss()`` in the SimKD toolbox; ``(a - b).pow(2).mean()`` in the official code).  The
    paper's softmax-regression loss is stated on softmax outputs, but both codes regress logits with MSE, which is
    what produced the published numbers.
    """
    if student_feature.shape != teacher_feature.shape:
        raise ValueError(
            f"SRRL feature shapes differ: student {tuple(student_feature.shape)} vs teacher {tuple(teacher_feature.shape)}"
        )
    return F.mse_loss(student_feature, teacher_feature), F.mse_loss(student_through_teacher_head, teacher_logits)
