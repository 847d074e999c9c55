"""CRD: Tian, Krishnan & Isola, "Contrastive Representation Distillation" (ICLR 2020).

The pieces of RepDistiller's ``CRDLoss`` / ``ContrastMemory`` / ``ContrastLoss`` as pure functions; the memory
bank and its normalisation constants live in :class:`kd_modules.crd.ContrastMemory`.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["l2_normalize", "contrast_scores", "nce_loss", "momentum_update"]


def l2_normalize(x: Tensor) -> Tensor:
    r""":math:`x / (\sum x^2)^{1/2}` along dim 1 *without* an eps (CRD's ``Normalize`` layer)."""
    return x / x.pow(2).sum(1, keepdim=True).pow(0.5)


def contrast_scores(memory: Tensor, contrast_indices: Tensor, embedding: Tensor, temperature: float) -> Tensor:
    r"""Unnormalised scores :math:`\exp(\langle m_{idx[b,k]}, v_b \rangle / T)`, shape (B, K+1).

    ``memory`` (N, D) is the *other* network's bank (its rows carry no gradient), ``embedding`` (B, D) this
    network's unit-norm embedding, ``contrast_indices`` (B, K+1) the positive then K negatives.

    RepDistiller gathers the (B, K+1, D) rows and multiplies them batch-wise (537 MB per side at B=64,
    K=16384); the same dot products are taken here from the dense (B, N) product with the whole bank and then
    gathered — N*B numbers instead of B*(K+1)*D, one matrix product, identical values up to summation order.
    The product keeps ``memory`` for the backward pass: do not modify the bank in place before it.
    """
    dots = embedding @ memory.detach().t()  # (B, N)
    return torch.exp(torch.gather(dots, 1, contrast_indices) / temperature)


def nce_loss(scores: Tensor, num_data: int, eps: float = 1e-7) -> Tensor:
    r"""NCE objective of CRD (Eq. 18) on Z-normalised scores ``x`` (B, K+1), positive in column 0.

    With noise probability :math:`P_n = 1/N` and :math:`K` negatives:

    .. math::  L = -\frac{1}{B}\Big[\sum_b \log\frac{x_{b0}}{x_{b0} + K P_n + \epsilon}
               + \sum_{b,k\ge1} \log\frac{K P_n}{x_{bk} + K P_n + \epsilon}\Big]

    exactly RepDistiller's ``ContrastLoss`` (eps 1e-7; a scalar here where the reference returns shape [1]).
    """
    batch, negatives = scores.shape[0], scores.shape[1] - 1
    noise = negatives / float(num_data)
    positive = scores[:, 0]
    log_d1 = torch.log(positive / (positive + noise + eps))
    log_d0 = torch.log(noise / (scores[:, 1:] + noise + eps))
    return -(log_d1.sum() + log_d0.sum()) / batch


def momentum_update(rows: Tensor, embeddings: Tensor, momentum: float) -> Tensor:
    r"""New memory rows :math:`\mathrm{l2norm}(m \cdot \text{rows} + (1 - m) \cdot v)` (no eps), as
    ``ContrastMemory`` writes back at the batch's dataset indices."""
    return l2_normalize(rows * momentum + embeddings * (1.0 - momentum))
