"""ReviewKD: Chen et al., "Distilling Knowledge via Knowledge Review" (CVPR 2021) — the hierarchical context loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

__all__ = ["hcl_loss"]


def hcl_loss(
    student_maps: Sequence[Tensor], teacher_maps: Sequence[Tensor], pool_sizes: Sequence[int] = (4, 2, 1)
) -> Tensor:
    r"""Hierarchical context loss, summed over the review levels.

    For a level with student map ``R`` and teacher map ``F`` of spatial height ``h``:

    .. math::  \ell = \frac{\mathrm{MSE}(R, F) + \sum_j 2^{-j}\, \mathrm{MSE}(\mathrm{pool}_{l_j}(R), \mathrm{pool}_{l_j}(F))}
                          {1 + \sum_j 2^{-j}}

    where ``l_1, l_2, ...`` are the pool sizes of ``(4, 2, 1)`` *smaller than h*, in that order, and the weights
    halve only over the sizes that are used (h >= 8: 1, .5, .25, .125; h = 4: 1, .5, .25; h = 2: 1, .5; h = 1: MSE
    alone).  MSE is the mean over all elements; pooling is adaptive average pooling.  Official ``hcl`` of
    dvlab-research/ReviewKD and of mdistiller, reproduced exactly.
    """
    if len(student_maps) != len(teacher_maps):
        raise ValueError(
            f"HCL needs as many student as teacher levels, got {len(student_maps)} and {len(teacher_maps)}"
        )
    total: Tensor | float = 0.0
    for student, teacher in zip(student_maps, teacher_maps):
        height = student.shape[2]
        level = F.mse_loss(student, teacher)
        weight, weight_sum = 1.0, 1.0
        for size in pool_sizes:
            if size >= height:
                continue
            weight /= 2.0
            pooled = F.mse_loss(F.adaptive_avg_pool2d(student, size), F.adaptive_avg_pool2d(teacher, size))
            level = level + weight * pooled
            weight_sum += weight
        total = total + level / weight_sum
    return total  # type: ignore[return-value]
