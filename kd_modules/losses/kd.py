"""Hinton et al., "Distilling the Knowledge in a Neural Network" (2015)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    r"""Soft-target distillation loss.

    .. math::  L_{KD} = T^2 \cdot \frac{1}{B} \sum_b \sum_k p^t_{bk} (\log p^t_{bk} - \log p^s_{bk}),
               \quad p = \mathrm{softmax}(z / T)

    The KL divergence is summed over classes and averaged over the batch ("batchmean"), then multiplied by
    T^2 once — RepDistiller's ``DistillKL`` (sum / B) and mdistiller's ``kd_loss`` (per-sample sum, batch mean)
    compute exactly this.  The teacher side uses a plain softmax, terms with p^t = 0 contribute 0.
    """
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * temperature**2
