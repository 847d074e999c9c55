"""ND / dino-loss: Wang et al., "Improving Knowledge Distillation via Regularizing Feature Direction and Norm"
(ECCV 2024), and the feature regularisers of its ablations (Tables 4 and 5).

The functions take the *embedding* (pooled penultimate feature, B x D) of the student — already projected to the
teacher's width when the widths differ — and, where needed, the teacher's embedding of the same images, the
teacher's class centres (C x D: the teacher class means, unnormalised, or another set of class vectors) and the
labels, and return a scalar.

``reduction`` chooses how per-sample terms are averaged:

* ``"batch"``: the plain mini-batch mean — what the official code computes (``DirectNormLoss``: a sum over the
  batch divided by the batch size) and what produced the published numbers;
* ``"class_balanced"``: the paper's Eq. 1-3 and 7, ``(1/C) sum_k (1/|I_k|) sum_{i in I_k}``, over the classes
  present in the mini-batch (a mini-batch of 128 never holds every class of CIFAR-100).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "REDUCTIONS",
    "Reduction",
    "reduce_per_sample",
    "dino_loss",
    "dino_per_sample",
    "cosine_direction_loss",
    "infonce_direction_loss",
    "l2_feature_loss",
    "sifn_loss",
    "classifier_weight_l2_loss",
]

Reduction = Literal["batch", "class_balanced"]
REDUCTIONS: tuple[str, ...] = ("batch", "class_balanced")


def reduce_per_sample(values: Tensor, labels: Tensor, num_classes: int, reduction: Reduction = "batch") -> Tensor:
    """Average per-sample ``values`` (B,) over the batch, or class-balanced over the classes present in it.

    The class-balanced mean accumulates per-class sums and counts with ``index_add_`` and masks empty classes,
    so it needs no host synchronisation.
    """
    if reduction == "batch":
        return values.mean()
    if reduction != "class_balanced":
        raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")
    sums = values.new_zeros(num_classes).index_add_(0, labels, values)
    counts = values.new_zeros(num_classes).index_add_(0, labels, torch.ones_like(values))
    present = counts > 0
    per_class = sums / counts.clamp(min=1)
    return (per_class * present).sum() / present.sum()


def dino_loss(
    student_embedding: Tensor,
    teacher_embedding: Tensor,
    centers: Tensor,
    labels: Tensor,
    reduction: Reduction = "batch",
) -> Tensor:
    r"""The dino-loss (ND loss), paper Eq. 5-7 with the official code's constant and reduction.

    .. math::  \ell_i = 1 - \frac{f^s_i \cdot e_{y_i}}{\max(\|f^s_i\|_2, \|f^t_i\|_2)}, \qquad e_k = c_k / \|c_k\|_2

    While the student's feature is shorter than the teacher's, the denominator is the (constant) teacher norm and
    the gradient ``-e/||f^t||`` grows the student's projection on the class direction (Eq. 5: norm and
    direction); once it is longer, the loss is ``1 - cos(f^s, c)`` (Eq. 6: direction only).  The choice between
    the two norms is the official per-sample ``max`` of two scalars: the student's norm wins ties, and the
    gradient flows through it only when it is the larger one.  Eq. 7 drops the constant 1, the code keeps it
    (no effect on gradients); we keep it, so the value lies in [0, 2].
    """
    values = dino_per_sample(student_embedding, teacher_embedding, F.normalize(centers, dim=1)[labels])
    return reduce_per_sample(values, labels, centers.shape[0], reduction)


def dino_per_sample(student_embedding: Tensor, teacher_embedding: Tensor, directions: Tensor) -> Tensor:
    """The (B,) dino terms ``1 - f^s_i . e_i / max(||f^s_i||, ||f^t_i||)`` against unit direction vectors ``e``
    (B, D): :func:`dino_loss` before its reduction, also DeiT++'s (:mod:`kd_modules.losses.deitpp`)."""
    student_norm = student_embedding.norm(dim=1)
    teacher_norm = teacher_embedding.norm(dim=1)
    denominator = torch.where(student_norm >= teacher_norm, student_norm, teacher_norm)
    return 1.0 - (student_embedding * directions).sum(dim=1) / denominator


def cosine_direction_loss(
    student_embedding: Tensor, centers: Tensor, labels: Tensor, reduction: Reduction = "batch"
) -> Tensor:
    r"""Table 4a "cosine", paper Eq. 1: :math:`1 - \cos(f^s_i, c_{y_i})` (direction only, no norm term)."""
    values = 1.0 - F.cosine_similarity(student_embedding, centers[labels], dim=1)
    return reduce_per_sample(values, labels, centers.shape[0], reduction)


def infonce_direction_loss(
    student_embedding: Tensor, centers: Tensor, labels: Tensor, reduction: Reduction = "batch"
) -> Tensor:
    r"""Table 4a "InfoNCE", paper Eq. 2: cross-entropy over the cosine similarities to every class centre.

    .. math::  \ell_i = -\log \frac{\exp\cos(f^s_i, c_{y_i})}{\sum_j \exp\cos(f^s_i, c_j)}

    No temperature, as Eq. 2 is written (the paper gives none).
    """
    similarities = F.normalize(student_embedding, dim=1) @ F.normalize(centers, dim=1).t()
    values = F.cross_entropy(similarities, labels, reduction="none")
    return reduce_per_sample(values, labels, centers.shape[0], reduction)


def l2_feature_loss(
    student_embedding: Tensor,
    teacher_embedding: Tensor,
    labels: Tensor,
    num_classes: int,
    reduction: Reduction = "batch",
) -> Tensor:
    r"""Table 4b "L2", paper Eq. 3: squared distance between student and teacher features, divided by D.

    .. math::  \ell_i = \|f^s_i - f^t_i\|_2^2 / D

    Eq. 3 has no ``1/D``; it is the constant of ``F.mse_loss`` that the feature-distillation methods the paper
    cites for this loss use (FitNet, ReviewKD), and keeps the term on the dino-loss's scale so that the same
    weight is meaningful for both.  (Any other scale is a weight change.)
    """
    values = (student_embedding - teacher_embedding).pow(2).mean(dim=1)
    return reduce_per_sample(values, labels, num_classes, reduction)


def sifn_loss(student_embedding: Tensor, step: float = 1.0) -> Tensor:
    r"""Table 4b "SIFN", paper Eq. 4: pull each feature norm towards its own previous value plus a step ``r``.

    .. math::  L = \frac{1}{B} \sum_i \big(\|f^s_i\|_2 - (\mathrm{sg}[\|f^s_i\|_2] + r)\big)^2

    The paper cites stepwise adaptive feature norm (Xu et al., ICCV 2019, "Larger Norm More Transferable") and
    gives neither ``r`` nor the checkpoint interval.  We follow the cited method: the "previous checkpoint" is
    the parameters before this step (the feature under stop-gradient ``sg``) and the distance is between norms.
    The value is always ``r^2``; the gradient ``-2 r f/||f|| / B`` enlarges every norm at a steady rate.
    """
    norms = student_embedding.norm(dim=1)
    target = norms.detach() + step
    return (norms - target).pow(2).mean()


def classifier_weight_l2_loss(student_weight: Tensor, teacher_weight: Tensor) -> Tensor:
    r"""Table 5 "L2 of cls weights": mean squared distance between the classifiers' weight matrices (C x D).

    The paper describes it in one sentence ("an L2 loss to guide the student to output classifier weights similar
    to those of the teacher"); ``F.mse_loss`` over all entries is our reading.
    """
    return F.mse_loss(student_weight, teacher_weight)
