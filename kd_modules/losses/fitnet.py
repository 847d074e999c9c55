"""FitNet: Romero et al., "FitNets: Hints for Thin Deep Nets" (ICLR 2015)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["hint_loss"]


def hint_loss(regressed_student: Tensor, teacher_feature: Tensor) -> Tensor:
    r"""The hint loss between the regressed student map and the teacher's hint map.

    .. math::  L_{hint} = \frac{1}{B C_t H_t W_t} \lVert r(F_s) - F_t \rVert_2^2

    The paper's Eq. (3) is :math:`\tfrac12 \lVert \cdot \rVert^2` summed; RepDistiller's ``HintLoss`` and
    mdistiller's FitNet use ``nn.MSELoss()`` (mean over every element), which is what this computes.  The
    regressor :math:`r` (``ConvReg``) is applied by the caller.
    """
    if regressed_student.shape != teacher_feature.shape:
        raise ValueError(
            f"FitNet hint shapes differ: regressed student {tuple(regressed_student.shape)} vs teacher "
            f"{tuple(teacher_feature.shape)}"
        )
    return F.mse_loss(regressed_student, teacher_feature)
