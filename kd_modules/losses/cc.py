"""CC: Peng et al., "Correlation Congruence for Knowledge Distillation" (ICCV 2019), as RepDistiller runs it."""

from __future__ import annotations

from torch import Tensor

__all__ = ["cc_loss"]


def cc_loss(emb_s: Tensor, emb_t: Tensor) -> Tensor:
    r"""RepDistiller's ``Correlation`` loss (code the CC authors gave the CRD authors), on embedded features.

    .. math::  \delta = |u - v|,\qquad L_{CC} = \frac{1}{B-1} \sum_{b=0}^{B-2} \sum_d \delta_{b,d}\,\delta_{b+1,d}

    with :math:`u, v` the student's and teacher's (B, d) embeddings.  This is a product of *consecutive samples
    in batch order* — not the paper's Taylor-kernel correlation matrix (Eq. 5-9); the published CRD-table number
    comes from this form, so it is the one implemented.  A batch of one sample has no pair (NaN, as the reference).
    """
    delta = (emb_s - emb_t).abs()
    return (delta[:-1] * delta[1:]).sum(1).mean()
