"""MGD: Yang et al., "Masked Generative Distillation" (ECCV 2022), as the official code (yzd-v/MGD,
``cls/mmcls/distillation/losses/mgd.py``, ``MGDLoss.get_dis_loss``) computes it for image classification."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MaskKind", "random_mask", "mgd_loss"]

MaskKind = Literal["channel", "pixel"]


def random_mask(
    shape: torch.Size | tuple[int, ...],
    ratio: float,
    kind: MaskKind = "channel",
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""MGD's random binary mask :math:`M` for an (N, C, H, W) map: 0 (masked) with probability ``ratio`` (λ).

    .. math::  M = \mathbb{1}[R \ge \lambda], \qquad R \sim \mathcal{U}[0, 1)

    ``channel`` (the official classification code): one draw per sample and channel, ``R`` of shape (N, C, 1, 1),
    so a masked channel is zero at every position (``mat = torch.rand((N, C, 1, 1))``, ``torch.where(mat < λ, 0,
    1)``).  ``pixel`` (the paper's Eq. 2, and the official detection / segmentation code): one draw per sample and
    position, shared by all channels, ``R`` of shape (N, 1, H, W).  Both broadcast against the map.

    The draws come from torch's generator of ``device`` (its default one unless ``generator`` is given): on a GPU
    the mask is made on the device, with no host copy or sync (the official code draws on the host and copies).
    """
    n, c, h, w = shape
    size = (n, c, 1, 1) if kind == "channel" else (n, 1, h, w)
    draws = torch.rand(size, device=device, generator=generator)
    return (draws >= ratio).to(dtype)


def mgd_loss(student: Tensor, teacher: Tensor, mask: Tensor, generation: Callable[[Tensor], Tensor]) -> Tensor:
    r"""The masked generative distillation loss: the teacher's map generated from the masked student map.

    .. math::  L_{MGD} = \frac{1}{N} \sum_{n=1}^{N} \sum_{k=1}^{C} \sum_{i=1}^{H} \sum_{j=1}^{W}
               \bigl(T_{n,k,i,j} - \mathcal{G}(f_{align}(S) \odot M)_{n,k,i,j}\bigr)^2

    ``student`` is :math:`f_{align}(S)`, the student's map already brought to the teacher's C channels (the 1x1
    ``align`` conv, applied by the caller when the channel counts differ), ``mask`` :math:`M` from
    :func:`random_mask` (it broadcasts), and ``generation`` :math:`\mathcal{G}` the generation block (the official
    conv3x3-ReLU-conv3x3 on C channels).  The reduction is the official ``nn.MSELoss(reduction='sum')`` divided by
    the batch size N: the paper's Eq. 4 (a sum over C, H, W) averaged over the batch.  The weight α
    (``alpha_mgd``) is applied by the caller.
    """
    generated = generation(student * mask)
    if generated.shape != teacher.shape:
        raise ValueError(
            f"MGD's generated map {tuple(generated.shape)} does not match the teacher's {tuple(teacher.shape)}"
        )
    return F.mse_loss(generated, teacher, reduction="sum") / teacher.shape[0]
