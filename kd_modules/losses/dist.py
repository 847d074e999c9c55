"""DIST: Huang et al., "Knowledge Distillation from A Stronger Teacher" (NeurIPS 2022)."""

from __future__ import annotations

from torch import Tensor

__all__ = ["pearson_correlation", "inter_class_relation", "intra_class_relation", "dist_loss"]


def pearson_correlation(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    r"""Row-wise Pearson correlation :math:`\frac{\langle a-\bar a, b-\bar b\rangle}{\lVert a-\bar a\rVert
    \lVert b-\bar b\rVert + \epsilon}` (eps added to the *product* of the norms, as DIST's code)."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def inter_class_relation(y_s: Tensor, y_t: Tensor) -> Tensor:
    """Eq. (5): ``1 - mean_b pearson(y_s[b, :], y_t[b, :])`` — per sample, across classes."""
    return 1.0 - pearson_correlation(y_s, y_t).mean()


def intra_class_relation(y_s: Tensor, y_t: Tensor) -> Tensor:
    """Eq. (7): ``1 - mean_k pearson(y_s[:, k], y_t[:, k])`` — per class, across the batch."""
    return inter_class_relation(y_s.t(), y_t.t())


def dist_loss(
    student_logits: Tensor, teacher_logits: Tensor, beta: float = 1.0, gamma: float = 1.0, tau: float = 4.0
) -> Tensor:
    r"""Eq. (8): :math:`\tau^2 (\beta\,L_{inter} + \gamma\,L_{intra})` on :math:`y = \mathrm{softmax}(z/\tau)`
    (DIST's ``DIST`` loss at the pinned image_classification_sota commit; tau 4 for CIFAR, 1 for ImageNet)."""
    y_s = (student_logits / tau).softmax(dim=1)
    y_t = (teacher_logits / tau).softmax(dim=1)
    return tau**2 * (beta * inter_class_relation(y_s, y_t) + gamma * intra_class_relation(y_s, y_t))
