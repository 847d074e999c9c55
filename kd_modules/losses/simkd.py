"""SimKD: Chen et al., "Knowledge Distillation with the Reused Teacher Classifier" (CVPR 2022)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kd_modules.losses.common import pool_to_smaller

__all__ = ["align_spatial", "simkd_loss"]


def align_spatial(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """The official SimKD alignment: a taller student map is average-pooled to the teacher's height, otherwise the
    teacher map is pooled to the student's (square targets, as the official ``adaptive_avg_pool2d(x, (h, h))``)."""
    return pool_to_smaller(student, teacher)


def simkd_loss(projected_student: Tensor, teacher_feature: Tensor) -> Tensor:
    r"""SimKD's Eq. (2): :math:`\lVert P(f_s) - f_t \rVert_2^2`, as the official code's ``nn.MSELoss()`` (mean over
    every element of the last-stage map)."""
    if projected_student.shape != teacher_feature.shape:
        raise ValueError(
            f"SimKD shapes differ: projected student {tuple(projected_student.shape)} vs teacher "
            f"{tuple(teacher_feature.shape)}"
        )
    return F.mse_loss(projected_student, teacher_feature)
