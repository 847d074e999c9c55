"""DeiT++ (ND's CNN -> ViT distillation, official ``ImageNet/DeiT``): DeiT's distillation-token loss and the
dino-loss against class centres mixed as the images are.

DeiT (Touvron et al., ICML 2021), hard distillation: the distillation token's head learns the teacher's top-1,

.. math::  L_{dist} = \\mathrm{CE}(z^{dist}_s, \\arg\\max_k z_{t,k})

ND's DeiT++ adds the dino-loss (:func:`kd_modules.losses.nd.dino_loss`) with the class centre of a mixed image
mixed like its targets (the official ``Dataset/data.py::mixup_center``): with label smoothing ``eps`` over ``K``
classes, ``c1_i = (1 - eps + eps/K) C[y_i] + (eps/K) sum_{j != i} C[y_j]`` over the batch, and
``c_i = lam c1_i + (1 - lam) c1_{B-1-i}`` (the batch's reverse is the mixing partner):

.. math::  \\ell_i = 1 - \\frac{f^s_i \\cdot c_i / \\lVert c_i \\rVert}{\\max(\\lVert f^s_i\\rVert, \\lVert f^t_i\\rVert)}
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kd_modules.losses.nd import dino_per_sample

__all__ = ["hard_distillation_loss", "mixed_centers", "dino_loss_to_centers"]


def hard_distillation_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """``CE(student, argmax(teacher))`` (DeiT's ``distillation_type="hard"``, ND's DeiT ``KDLoss``)."""
    return F.cross_entropy(student_logits, teacher_logits.argmax(dim=1))


def mixed_centers(centers: Tensor, labels: Tensor, lam: float | Tensor, smoothing: float) -> Tensor:
    """Per-image class centres mixed as the images and smoothed as the targets (module docs), (B, D)."""
    batch = centers[labels]
    num_classes = centers.shape[0]
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    # sm @ C[y] with sm = off everywhere but `on` on the diagonal, without building the B x B matrix.
    smoothed = off * batch.sum(0, keepdim=True) + (on - off) * batch
    return lam * smoothed + (1.0 - lam) * smoothed.flip(0)


def dino_loss_to_centers(student_embedding: Tensor, teacher_embedding: Tensor, centers: Tensor) -> Tensor:
    """The dino-loss against per-image centre vectors (B, D), averaged over the batch (ND ``project_center_v2``)."""
    return dino_per_sample(student_embedding, teacher_embedding, F.normalize(centers, dim=1)).mean()
