"""Batched image augmentation on uint8 tensors, on whatever device the batch lives on.

The random parameters of an epoch (crop offsets, rotation angles, flips) are drawn once per epoch from a seeded
CPU generator (:mod:`datamodules.loaders`) and travel with each batch; the functions here only apply them, so the
same (seed, epoch) gives bit-identical batches on a CPU and on a GPU.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["random_crop_flip", "rotate_flip", "normalize", "PaddingMode"]

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


@functools.lru_cache(maxsize=32)
def _crop_flip_tables(
    height: int, width: int, padding: int, mode: PaddingMode, device: torch.device
) -> tuple[Tensor, Tensor | None]:
    """Source-pixel index of every output pixel for each of the (2p+1)^2 x 2 crop/flip patterns, and (zero mode)
    the in-image mask of each offset: pattern ``(top * (2p+1) + left) * 2 + flip``.

    CIFAR has 81 x 2 = 162 patterns of 1024 pixels: 1.3 MB of indices, built once per device, after which a batch
    costs one table lookup and one gather instead of a dozen small index computations.
    """
    span = 2 * padding + 1
    top = torch.arange(span).repeat_interleave(span * 2)
    left = torch.arange(span).repeat_interleave(2).repeat(span)
    flip = torch.arange(2).repeat(span * span).bool()
    rows = top[:, None] - padding + torch.arange(height)  # (P, H) source rows
    cols = left[:, None] - padding + torch.arange(width)  # (P, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    rows, row_inside = _source_index(rows, height, mode)
    cols, col_inside = _source_index(cols, width, mode)
    index = (rows[:, :, None] * width + cols[:, None, :]).reshape(-1, height * width)
    mask = None
    if row_inside is not None and col_inside is not None:
        mask = (row_inside[:, :, None] & col_inside[:, None, :]).reshape(-1, 1, height * width).to(device, torch.uint8)
    return index.to(device), mask


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

    The output has the input's size and dtype.  One gather through a precomputed per-pattern index table (the flip
    folded into it), no padded copy of the batch; zero padding is a multiply by the pattern's in-image mask.
    """
    batch, channels, height, width = images.shape
    device = images.device
    index_table, mask_table = _crop_flip_tables(height, width, padding, mode, device)
    offsets = offsets.to(device=device, dtype=torch.long)
    pattern = (offsets[:, 0] * (2 * padding + 1) + offsets[:, 1]) * 2 + flips.to(device=device, dtype=torch.long)
    index = index_table[pattern][:, None, :].expand(batch, channels, -1)
    out = images.reshape(batch, channels, height * width).gather(2, index)
    if mask_table is not None:
        out = out * mask_table[pattern].to(out.dtype)
    return out.reshape(batch, channels, height, width)


def rotation_grid(angles: Tensor, height: int, width: int, flips: Tensor | None = None) -> Tensor:
    """Sampling grids (B, H, W, 2) of ``torchvision.transforms.functional.rotate`` for each angle, in one go.

    Reproduces torchvision's tensor path (``_get_inverse_affine_matrix`` with centre = image centre, no translation,
    scale 1, no shear, then ``_gen_affine_grid``): output pixel centres at ``(j + 0.5 - W/2, i + 0.5 - H/2)`` are mapped
    through the inverse rotation and rescaled to ``grid_sample``'s [-1, 1] frame (``align_corners=False``).  The
    positive angle turns the image counter-clockwise, as in torchvision and PIL.  ``flips`` mirrors the grid
    horizontally, i.e. ``hflip(rotate(x))``: the order of ``RandomRotation`` then ``RandomHorizontalFlip``.
    """
    device = angles.device
    # torchvision builds the inverse matrix of rotate(angle) from -angle in double precision, then uses float32.
    radians = torch.deg2rad(-angles.to(torch.float64))
    cos, sin = radians.cos(), radians.sin()
    zero = torch.zeros_like(cos)
    theta = torch.stack([cos, sin, zero, -sin, cos, zero], dim=1).to(torch.float32).view(-1, 2, 3)
    xs = torch.linspace(-width * 0.5 + 0.5, width * 0.5 - 0.5, steps=width, device=device)  # pixel centres
    ys = torch.linspace(-height * 0.5 + 0.5, height * 0.5 - 0.5, steps=height, device=device)
    scale = torch.tensor([0.5 * width, 0.5 * height], dtype=torch.float32, device=device)
    rescaled = (theta.transpose(1, 2) / scale)[:, :, :, None, None]  # (B, 3, 2, 1, 1): rows multiply x, y and 1
    # torchvision multiplies (1, HW, 3) by (1, 3, 2) with bmm; the same three products summed in the same order,
    # elementwise, give bit-identical grids (the tests compare with torchvision's rotate) at a fraction of the
    # cost of a batched GEMM with k = 3.  Each coordinate is computed as a contiguous (B, H, W) plane.
    x, y = xs[None, None, :], ys[None, :, None]
    x_row = rescaled[:, 0]
    if flips is not None:
        # Mirroring the output reads column W-1-j for column j; the pixel centres are symmetric (xs[W-1-j] ==
        # -xs[j] exactly: half-integers or integers), so negating x's coefficient gives the mirrored grid exactly.
        x_row = torch.where(flips.to(device)[:, None, None, None], -x_row, x_row)
    grid_x = x * x_row[:, 0] + y * rescaled[:, 1, 0] + rescaled[:, 2, 0]
    grid_y = x * x_row[:, 1] + y * rescaled[:, 1, 1] + rescaled[:, 2, 1]
    return torch.stack([grid_x, grid_y], dim=-1)


def rotate_flip(images: Tensor, angles: Tensor, flips: Tensor | None = None) -> Tensor:
    """``RandomRotation(degrees)`` (nearest, zero fill, about the centre, no expand) + ``RandomHorizontalFlip``.

    Args:
        images: (B, C, H, W) uint8.
        angles: (B,) rotation angles in degrees (counter-clockwise), as ``RandomRotation.get_params`` draws them.
        flips: (B,) bool, True where the rotated image is mirrored horizontally (None: no flips).

    One ``grid_sample`` in nearest mode, bit-identical to torchvision's per-image tensor ``rotate`` (every output
    pixel is an exact copy of a source pixel or 0).  Returns float32 pixel values (0..255, integral): the
    normalisation that follows needs floats anyway, so there is no round trip through uint8.
    """
    batch, _, height, width = images.shape
    grid = rotation_grid(angles.to(images.device), height, width, flips)
    return F.grid_sample(images.to(torch.float32), grid, mode="nearest", padding_mode="zeros", align_corners=False)


@functools.lru_cache(maxsize=32)
def _scale_shift(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return scale, shift


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Pixel values [0, 255] (uint8, or float) -> float32 ``(x / 255 - mean) / std`` per channel (``ToTensor`` +
    ``Normalize``).

    Computed as one fused multiply-add, ``x * 1/(255 std) + (-mean/std)`` (equal up to float rounding, < 1e-6).
    """
    scale, shift = _scale_shift(tuple(mean), tuple(std), images.device)
    return torch.addcmul(shift, images.to(torch.float32), scale)
