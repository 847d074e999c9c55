"""Batched augmentations against torchvision, and their statistics over many samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from scipy import stats
from torchvision.transforms import InterpolationMode

from datamodules import CIFAR100, DatasetError, TinyImageNet
from datamodules.augment import rotate_flip
from datamodules.loaders import RotateFlip


def _position_coded(count: int) -> torch.Tensor:
    """Images whose channel 0 holds row + 1 and channel 1 column + 1, so a crop reveals its offset and flip."""
    rows = torch.arange(1, 33, dtype=torch.uint8)[:, None].expand(32, 32)
    cols = torch.arange(1, 33, dtype=torch.uint8)[None, :].expand(32, 32)
    image = torch.stack([rows, cols, torch.full((32, 32), 7, dtype=torch.uint8)])
    return image.expand(count, -1, -1, -1).contiguous()


def test_crops_cover_all_81_offsets_and_flip_half_the_time(cifar_root: Path) -> None:
    """Through the real datamodule path (epoch draws, batching, on_after_batch_transfer), 10 epochs of 2,000."""
    dm = CIFAR100(root=str(cifar_root), batch_size=1000, seed=0)
    count = 2000
    dm._splits["train"] = (_position_coded(count), torch.arange(count) % 100)
    loader = dm.train_dataloader()
    mean, std = torch.tensor(CIFAR100.mean)[:2], torch.tensor(CIFAR100.std)[:2]
    tops, lefts, flips = [], [], []
    for _ in range(10):
        for batch in loader:
            images = dm.on_after_batch_transfer(batch, 0)["images"][:, :2]
            pixels = torch.round((images * std[:, None, None] + mean[:, None, None]) * 255).long()
            source_row = pixels[:, 0, 16, 16] - 1  # the centre is inside the image for every offset
            source_col = pixels[:, 1, 16, 16] - 1
            flipped = pixels[:, 1, 16, 17] < pixels[:, 1, 16, 16]
            # Unflipped output column j reads source column j + left - 4; flipped, 31 - j + left - 4.
            tops.append(source_row - 12)
            lefts.append(torch.where(flipped, source_col - 11, source_col - 12))
            flips.append(flipped)
    top, left, flip = torch.cat(tops), torch.cat(lefts), torch.cat(flips)
    assert top.numel() == 20_000
    counts = torch.bincount(top * 9 + left, minlength=81)
    assert counts.numel() == 81 and (counts > 0).all(), "some of the 9 x 9 crop offsets never occur"
    assert stats.chisquare(counts.numpy()).pvalue > 1e-3  # uniform over the 81 offsets
    assert abs(flip.float().mean().item() - 0.5) < 0.02


def test_rotation_angles_are_uniform_and_flips_half() -> None:
    params = RotateFlip(degrees=20).draw(20_000, torch.Generator().manual_seed(0))
    angles = params["rotation_angles"]
    assert angles.dtype == torch.float32 and angles.min() >= -20 and angles.max() <= 20
    assert stats.kstest(angles.numpy(), stats.uniform(loc=-20, scale=40).cdf).pvalue > 1e-3
    assert abs(params["flips"].float().mean().item() - 0.5) < 0.02


def test_batched_rotation_equals_torchvision_rotate() -> None:
    generator = torch.Generator().manual_seed(0)
    count = 48
    images = torch.randint(0, 256, (count, 3, 64, 64), dtype=torch.uint8, generator=generator)
    fixed = torch.tensor([20.0, -20.0, 0.0, 7.5, -13.25, 90.0])
    angles = torch.cat([fixed, torch.empty(count - 6).uniform_(-20, 20, generator=generator)])
    flips = torch.arange(count) % 2 == 1
    out = rotate_flip(images, angles, flips)
    assert out.dtype == torch.float32  # integral pixel values, normalised next
    pil_mismatch = []
    for i in range(count):
        expected = TF.rotate(images[i], float(angles[i]), InterpolationMode.NEAREST, fill=[0.0, 0.0, 0.0])
        expected = TF.hflip(expected) if flips[i] else expected
        assert torch.equal(out[i], expected.float()), f"angle {angles[i].item()} flip {bool(flips[i])}"
        # The reference repos rotate PIL images: same geometry, PIL rounds a few boundary pixels differently.
        pil = TF.rotate(Image.fromarray(images[i].permute(1, 2, 0).numpy()), float(angles[i]), fill=0)
        pil_tensor = torch.from_numpy(np.array(pil)).permute(2, 0, 1)
        pil_tensor = TF.hflip(pil_tensor) if flips[i] else pil_tensor
        pil_mismatch.append((pil_tensor.float() != out[i]).any(0).float().mean().item())
    assert max(pil_mismatch) < 0.005


def test_tiny_imagenet_batches_are_rotated_after_transfer(tiny_root: Path) -> None:
    dm = TinyImageNet(root=str(tiny_root), batch_size=16, seed=1)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    raw, angles, flips = batch["images"].clone(), batch["rotation_angles"].clone(), batch["flips"].clone()
    out = dm.on_after_batch_transfer(batch, 0)
    assert set(out) == {"images", "labels", "indices"}
    expected = (rotate_flip(raw, angles, flips) / 255 - torch.tensor(dm.mean)[:, None, None]) / torch.tensor(dm.std)[
        :, None, None
    ]
    assert torch.allclose(out["images"], expected, atol=1e-5)


def test_cifar_pipelines_per_repository() -> None:
    assert CIFAR100().padding_mode == "zero" and CIFAR100(pipeline="nd").padding_mode == "zero"
    letkd = CIFAR100(pipeline="letkd")
    assert (letkd.padding_mode, letkd.crop_padding, letkd.flip) == ("reflect", 4, True)
    assert CIFAR100(pipeline="letkd", padding_mode="zero").padding_mode == "zero"  # an explicit setting wins
    with pytest.raises(DatasetError, match="padding mode 'mirror' is not one of: zero, reflect"):
        CIFAR100(padding_mode="mirror")  # type: ignore[arg-type]
    with pytest.raises(
        DatasetError, match="unknown cifar100 pipeline 'dkd'; valid: crd, mdistiller, norm, nd, kcd, letkd"
    ):
        CIFAR100(pipeline="dkd")  # type: ignore[arg-type]
