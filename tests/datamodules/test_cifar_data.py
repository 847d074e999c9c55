"""CIFAR-100 reader on a generated fixture in the real pickle layout, and the batched augmentation."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from datamodules import CIFAR100, DatasetError
from datamodules.augment import normalize, random_crop_flip
from datamodules.cifar import read_cifar100_split
from datamodules.loaders import CropFlip, epoch_generator


def test_reader_on_generated_fixture(cifar_root: Path) -> None:
    images, labels = read_cifar100_split(cifar_root, "train")
    assert images.shape == (1000, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.shape == (1000,) and set(labels.tolist()) == set(range(100))
    # Channel-major rows, as the official files: the first 1024 bytes of a row are the red plane.
    with open(cifar_root / "cifar-100-python" / "train", "rb") as handle:
        raw = pickle.load(handle, encoding="latin1")
    assert torch.equal(images[0, 0].flatten(), torch.as_tensor(raw["data"][0][:1024]))
    assert labels[7].item() == raw["fine_labels"][7]


def test_missing_dataset_says_where(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"cifar-100-python.*cifar-100-python.tar.gz"):
        read_cifar100_split(tmp_path, "train")


def test_corrupt_file_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="corrupt"):
        read_cifar100_split(tmp_path, "train")


def _reference_crop_flip(image: torch.Tensor, top: int, left: int, flip: bool, padding: int, mode: str) -> torch.Tensor:
    """torchvision's own functional ops: pad then crop then flip (the PIL pipeline's order)."""
    padded = TF.pad(image, [padding] * 4, fill=0, padding_mode="constant" if mode == "zero" else "reflect")
    out = TF.crop(padded, top, left, image.shape[-2], image.shape[-1])
    return TF.hflip(out) if flip else out


@pytest.mark.parametrize("mode", ["zero", "reflect"])
def test_batched_crop_flip_equals_torchvision(mode: str) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=generator)
    params = CropFlip(padding=4, mode=mode).draw(40, generator)
    out = random_crop_flip(images, params["crop_offsets"], params["flips"], 4, mode)  # type: ignore[arg-type]
    for i in range(40):
        top, left = params["crop_offsets"][i].tolist()
        expected = _reference_crop_flip(images[i], top, left, bool(params["flips"][i]), 4, mode)
        assert torch.equal(out[i], expected), i


def test_normalize_matches_to_tensor_and_normalize() -> None:
    image = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    mean, std = CIFAR100.mean, CIFAR100.std
    expected = TF.normalize(image.float() / 255.0, list(mean), list(std))
    assert torch.allclose(normalize(image, mean, std), expected, atol=1e-6)


def test_epoch_covers_every_sample_once(cifar_root: Path) -> None:
    dm = CIFAR100(root=str(cifar_root), batch_size=64, seed=0)
    dm.setup("fit")
    seen = torch.cat([b["indices"] for b in dm.train_dataloader()])
    assert torch.equal(seen.sort().values, torch.arange(1000))
    assert len(dm.train_dataloader()) == 16  # ceil(1000 / 64), no drop_last


def test_evaluation_batches_are_plain(cifar_root: Path) -> None:
    dm = CIFAR100(root=str(cifar_root), eval_batch_size=50)
    dm.setup("test")
    batch = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    images, _ = read_cifar100_split(cifar_root, "test")
    assert torch.allclose(batch["images"], normalize(images[:50], CIFAR100.mean, CIFAR100.std))


def test_generator_streams_are_independent() -> None:
    a = torch.rand(4, generator=epoch_generator(0, 0, 0))
    b = torch.rand(4, generator=epoch_generator(0, 0, 1))
    assert not torch.equal(a, b)
    assert torch.equal(a, torch.rand(4, generator=epoch_generator(0, 0, 0)))


def test_zero_padding_uses_black_pixels_before_normalisation() -> None:
    image = torch.full((1, 3, 4, 4), 200, dtype=torch.uint8)
    out = random_crop_flip(image, torch.tensor([[0, 0]]), torch.tensor([False]), 2, "zero")
    assert out[0, :, 0, 0].tolist() == [0, 0, 0]  # top-left corner comes from the padding
    assert out[0, :, 2, 2].tolist() == [200, 200, 200]
    assert F.pad(image, (2, 2, 2, 2))[0, :, :4, :4].equal(out[0])
