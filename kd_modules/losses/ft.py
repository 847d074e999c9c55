"""FT: Kim et al., "Paraphrasing Complex Network: Network Compression via Factor Transfer" (NeurIPS 2018)."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from kd_modules.losses.common import pool_to_smaller

__all__ = ["ft_factor", "ft_loss"]


def ft_factor(factor: Tensor, mode: Literal["repdistiller", "paper"] = "repdistiller") -> Tensor:
    """The normalised factor that is compared.

    ``repdistiller``: channels collapsed by the mean of squares, then L2-normalised over positions (RepDistiller
    ``FactorTransfer.factor``, p1 = 2) — what the CRD-table FT numbers were produced with; ``paper``: the factor
    flattened over C·H·W and L2-normalised (paper Eq. 3).
    """
    b = factor.shape[0]
    if mode == "repdistiller":
        return F.normalize(factor.pow(2).mean(dim=1).reshape(b, -1))
    return F.normalize(factor.reshape(b, -1))


def ft_loss(
    student_factor: Tensor, teacher_factor: Tensor, mode: Literal["repdistiller", "paper"] = "repdistiller"
) -> Tensor:
    """Mean absolute difference of the normalised factors (p = 1); the taller map is average-pooled first."""
    student_factor, teacher_factor = pool_to_smaller(student_factor, teacher_factor)
    s, t = ft_factor(student_factor, mode), ft_factor(teacher_factor, mode)
    if s.shape != t.shape:
        raise ValueError(f"FT factor shapes differ: student {tuple(s.shape)} vs teacher {tuple(t.shape)}")
    return (s - t).abs().mean()
