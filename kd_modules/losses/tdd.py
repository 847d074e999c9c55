"""TDD: Song et al., "Tree-like Decision Distillation" (CVPR 2021): the per-layer decision constraint, as the
official code (zju-vipa/KamalEngine, ``kamal/core/tasks/loss/hierarchical_loss.py``, ``HierarchicalLoss``)
computes it."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

__all__ = ["group_weights", "decision_loss"]


def group_weights(group_of_class: Tensor, num_groups: int) -> Tensor:
    r"""The official class weight of every coarse group: :math:`w_g = 1 / |g|` (``_get_cluster_weight``).

    ``group_of_class`` (K,) maps each fine class to its group; the result is (G,) float32.
    """
    sizes = group_of_class.bincount(minlength=num_groups).to(group_of_class.device)
    return 1.0 / sizes.clamp(min=1).float()


def decision_loss(
    layer_logits: Sequence[Tensor],
    labels: Tensor,
    groups: Sequence[Tensor],
    weights: Sequence[Tensor | None],
) -> Tensor:
    r"""The tree-like decision constraint: at every constrained layer l, the student's coarse decision must be the
    teacher's coarse class group of the label.

    .. math::  L_{TDD} = \sum_l \frac{\sum_b w^l_{g_l(y_b)}\,
               \bigl(-\log \mathrm{softmax}(z^l_b)_{g_l(y_b)}\bigr)}{\sum_b w^l_{g_l(y_b)}},
               \qquad z^l_b = W_l\,\mathrm{GAP}(F^S_l(x_b)) + c_l

    :math:`g_l` maps a fine class to its coarse group at layer l (the teacher's merged cluster tree of that
    layer), :math:`w^l_g` is the group weight (officially :math:`1/|g|`: :func:`group_weights`; None: 1, a plain
    batch mean).  The normalisation by :math:`\sum_b w` is PyTorch's weighted ``CrossEntropyLoss(weight=...)``
    mean, which the official ``nn.CrossEntropyLoss(weight=...)`` uses.  The layers' terms are summed unweighted
    (``sum(losses)``); the method weights the sum (official ``other_loss_weight`` 0.1).

    Args:
        layer_logits: per layer, the (B, G_l) logits of the student's coarse classifier.
        labels: (B,) fine labels.
        groups: per layer, the (K,) group of every fine class.
        weights: per layer, the (G_l,) group weights, or None.
    """
    total = labels.new_zeros((), dtype=layer_logits[0].dtype)
    for logits, group_of_class, weight in zip(layer_logits, groups, weights, strict=True):
        total = total + F.cross_entropy(logits, group_of_class[labels], weight=weight)
    return total
