"""SemCKD: Chen et al., "Cross-Layer Distillation with Semantic Calibration" (AAAI 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["semckd_attention", "semckd_loss"]


def semckd_attention(queries: Tensor, keys: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-sample attention of each student layer over the teacher layers (paper Eq. 4).

    Args:
        queries: (S, B, d) student-layer embeddings (unit vectors).
        keys: (T, B, d) teacher-layer embeddings.
        temperature: the official ``--soft`` (1.0).

    Returns:
        (B, S, T), softmax over the teacher layers.
    """
    logits = torch.einsum("sbd,tbd->bst", queries, keys) / temperature
    return torch.softmax(logits, dim=-1)


def semckd_loss(attention: Tensor, pair_errors: Tensor) -> Tensor:
    r"""The calibrated loss (paper Eq. 5, official ``SemCKDLoss``):

    .. math::  L = \frac{1}{B S} \sum_{b, s, t} \alpha_{b,s,t} \, \mathrm{MSE}_b(P_{st}(f_s), f_t)

    ``pair_errors`` (B, S, T) holds each sample's mean squared error of every projected student layer against every
    teacher layer; ``attention`` has the same shape.
    """
    if attention.shape != pair_errors.shape:
        raise ValueError(
            f"SemCKD shapes differ: attention {tuple(attention.shape)} vs errors {tuple(pair_errors.shape)}"
        )
    b, s, _ = attention.shape
    return (attention * pair_errors).sum() / (b * s)
