"""ImageNet's ``gpu_decode`` backend gives the PIL backend's batches: same samples, same crops and flips.

On generated JPEGs in ImageFolder layout, the backend (decoding on the CPU here, libjpeg-turbo) is compared with
the default PIL backend for the same seed: identical labels and indices, and pixels within one grey level (both
decoders are libjpeg-based; tensor and PIL bilinear resampling differ in rounding).  The nvJPEG path runs only
where a CUDA device is present.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from datamodules import ImageNet
from datamodules.gpu_decode import EncodedSamples, decode_batch


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from datamodules.synthetic import write_imagenet

    root = tmp_path_factory.mktemp("imagenet_gpu_decode")
    folder = write_imagenet(root, classes=3, train_per_class=4, val_per_class=2, seed=1)
    # Files nvJPEG cannot take, as ImageNet has a few: a PNG and a CMYK JPEG under .JPEG names.
    train = sorted((folder / "train").iterdir())
    png, cmyk = sorted(train[0].iterdir())[:2]
    with Image.open(png) as image:
        rgb = image.convert("RGB")
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    png.write_bytes(buffer.getvalue())
    rgb.convert("CMYK").save(cmyk, format="JPEG", quality=90)
    return root


def _batches(root: Path, backend: str, loader: str, **kwargs) -> list[dict[str, torch.Tensor]]:  # type: ignore[no-untyped-def]
    dm = ImageNet(root=str(root), batch_size=4, eval_batch_size=4, seed=5, num_workers=0, backend=backend, **kwargs)
    dm.setup("fit")
    return list(getattr(dm, loader)())


@pytest.mark.parametrize("pipeline", ["torchvision", "norm_paper"])
@pytest.mark.parametrize("loader", ["train_dataloader", "val_dataloader"])
def test_same_samples_crops_and_flips_as_the_pil_backend(imagenet_root: Path, pipeline: str, loader: str) -> None:
    pil = _batches(imagenet_root, "torchvision", loader, pipeline=pipeline)
    ours = _batches(imagenet_root, "gpu_decode", loader, pipeline=pipeline)
    assert len(pil) == len(ours) and len(ours) >= 2
    for a, b in zip(pil, ours):
        assert set(a) == set(b) == {"images", "labels", "indices"}
        assert b["images"].shape == a["images"].shape and b["images"].dtype == torch.uint8
        assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["indices"], b["indices"])
        difference = (a["images"].float() - b["images"].float()).abs()
        assert difference.max() <= 2 and difference.mean() < 0.05, (difference.max(), difference.mean())


def test_a_wrong_crop_would_show(imagenet_root: Path) -> None:
    """The comparison above can fail: another seed's crops differ by far more than a grey level."""
    a = _batches(imagenet_root, "torchvision", "train_dataloader")[0]["images"].float()
    dm = ImageNet(root=str(imagenet_root), batch_size=4, seed=6, num_workers=0, backend="gpu_decode")
    b = next(iter(dm.train_dataloader()))["images"].float()
    assert (a - b).abs().mean() > 5


def test_files_nvjpeg_cannot_decode_come_decoded_from_the_worker(imagenet_root: Path) -> None:
    dm = ImageNet(root=str(imagenet_root), num_workers=0, backend="gpu_decode")
    samples = dm.backend.samples("train")  # type: ignore[attr-defined]
    dataset = EncodedSamples(samples, dm, train=True, seed=0)
    kinds = ["jpeg" if "jpeg" in dataset[(0, k)] else "pixels" for k in range(len(samples))]
    assert kinds[:2] == ["pixels", "pixels"] and set(kinds[2:]) == {"jpeg"}


def test_batches_with_contrast_indices_and_workers(imagenet_root: Path) -> None:
    dm = ImageNet(root=str(imagenet_root), batch_size=4, seed=5, num_workers=2, backend="gpu_decode", contrast_k=3)
    batch = next(iter(dm.train_dataloader()))
    assert batch["contrast_indices"].shape == (4, 4)
    assert torch.equal(batch["contrast_indices"][:, 0], batch["indices"])
    same = next(
        iter(
            ImageNet(
                root=str(imagenet_root), batch_size=4, seed=5, num_workers=0, backend="gpu_decode"
            ).train_dataloader()
        )
    )
    assert torch.equal(batch["images"], same["images"])  # workers do not change the batches
    normalised = dm.on_after_batch_transfer(batch, 0)
    assert normalised["images"].dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG needs a CUDA device")
def test_nvjpeg_decodes_like_libjpeg(imagenet_root: Path) -> None:
    dm = ImageNet(root=str(imagenet_root), batch_size=4, seed=5, num_workers=0, backend="gpu_decode")
    dataset = EncodedSamples(dm.backend.samples("train"), dm, train=True, seed=5)  # type: ignore[attr-defined]
    from datamodules.gpu_decode import _collate

    raw = _collate([dataset[(0, k)] for k in range(len(dataset))])
    on_gpu = decode_batch(raw, torch.device("cuda"))
    on_cpu = decode_batch(raw, torch.device("cpu"))
    assert on_gpu.is_cuda and on_gpu.shape == on_cpu.shape
    difference = (on_gpu.cpu().float() - on_cpu.float()).abs()
    assert difference.mean() < 1.0, difference.mean()
