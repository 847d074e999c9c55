"""Batched image augmentation on uint8 tensors, on whatever device the batch lives on.

The random parameters of an epoch (crop offsets, flips) are drawn once per epoch from a seeded CPU generator
(:mod:`datamodules.loaders`) and travel with each batch; the functions here only apply them, so the same
(seed, epoch) gives bit-identical batches on a CPU and on a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = ["random_crop_flip", "normalize", "PaddingMode"]

PaddingMode = Literal["zero", "reflect"]


def _source_index(position: Tensor, size: int, mode: PaddingMode) -> tuple[Tensor, Tensor | None]:
    """Map padded-frame coordinates (may fall outside ``[0, size)``) to source coordinates.

    ``reflect`` mirrors without repeating the edge pixel (``torch``/``numpy`` "reflect", torchvision's
    ``padding_mode='reflect'``); ``zero`` clamps and returns the mask of positions that fall inside the image.
    """
    if mode == "reflect":
        position = position.abs()
        position = torch.where(position >= size, 2 * (size - 1) - position, position)
        return position, None
    inside = (position >= 0) & (position < size)
    return position.clamp(0, size - 1), inside


def random_crop_flip(
    images: Tensor, offsets: Tensor, flips: Tensor, padding: int, mode: PaddingMode = "zero"
) -> Tensor:
    """``RandomCrop(size, padding, padding_mode)`` followed by ``RandomHorizontalFlip`` for a whole batch.

    Args:
        images: (B, C, H, W) uint8 (or any dtype).
        offsets: (B, 2) integer top-left corner of each crop in the padded frame, each in ``[0, 2*padding]``.
        flips: (B,) bool, True where the crop is mirrored horizontally.
        padding: pixels of padding on every side.
        mode: ``zero`` (CRD, mdistiller, NORM, ND, KCD) or ``reflect`` (letKD).

    The output has the input's size and dtype.  One gather, no padded copy of the batch.
    """
    batch, channels, height, width = images.shape
    device = images.device
    offsets = offsets.to(device=device, dtype=torch.long)
    flips = flips.to(device=device)
    rows = offsets[:, :1] - padding + torch.arange(height, device=device)  # (B, H) in source coordinates
    cols = offsets[:, 1:] - padding + torch.arange(width, device=device)  # (B, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    rows, row_inside = _source_index(rows, height, mode)
    cols, col_inside = _source_index(cols, width, mode)
    index = (rows[:, :, None] * width + cols[:, None, :]).reshape(batch, 1, height * width)
    out = images.reshape(batch, channels, height * width).gather(2, index.expand(batch, channels, -1))
    out = out.reshape(batch, channels, height, width)
    if row_inside is not None and col_inside is not None:
        inside = (row_inside[:, :, None] & col_inside[:, None, :])[:, None]
        out = out * inside.to(out.dtype)
    return out


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 [0, 255] -> float32 ``(x / 255 - mean) / std`` per channel (``ToTensor`` + ``Normalize``)."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images.to(torch.float32) / 255.0 - mean_t) / std_t
