"""Fashion-MNIST (Xiao et al., 2017) from its idx files: the real, small dataset for offline mini-benchmarks.

The four files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (gzip-compressed ``.gz`` or raw) are looked for in
the configured root, ``<root>/fashion-mnist`` and torchvision's ``<root>/FashionMNIST/raw`` — nowhere else: a root
without them is an error, never a silent fallback to another copy (the record names the folder actually read).
Debian's ``dataset-fashion-mnist`` package installs them in ``/usr/share/datasets/fashion-mnist``; the fmnist
table lists that folder among its ``data_roots``, and ``--data.root /usr/share/datasets/fashion-mnist`` reads it.

idx format (LeCun's MNIST page): a big-endian header ``0x00 0x00 <dtype> <ndim>`` (dtype 0x08 = unsigned byte),
then ``ndim`` big-endian uint32 sizes, then the row-major data.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from datamodules.base import CropFlipDataModule
from datamodules.errors import DatasetError

__all__ = ["FashionMNIST", "DEBIAN_FASHION_MNIST", "find_fashion_mnist", "read_idx", "read_fashion_mnist_split"]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_SIZES = {"train": 60_000, "test": 10_000}
#: Pixels of zero border added on every side: 28x28 -> the 32x32 the CIFAR-family networks take.
FRAME_PADDING = 2
_IDX_DTYPES = {0x08: np.uint8}
_GZIP_MAGIC = b"\x1f\x8b"


def candidate_folders(root: str | Path) -> list[Path]:
    """Where the idx files are looked for, in order (under ``root`` only)."""
    root = Path(root)
    return [root, root / "fashion-mnist", root / "FashionMNIST" / "raw"]


def _file_in(folder: Path, name: str) -> Path | None:
    return next((file for file in (folder / f"{name}.gz", folder / name) if file.is_file()), None)


def _expected(root: str | Path) -> str:
    places = ", ".join(str(folder) for folder in candidate_folders(root))
    names = ", ".join(f"{n}[.gz]" for pair in FASHION_MNIST_FILES.values() for n in pair)
    return (
        f"expected the Fashion-MNIST idx files ({names}) in one of: {places} "
        f"(Debian/Ubuntu: apt-get install dataset-fashion-mnist puts them in {DEBIAN_FASHION_MNIST}; pass that "
        "folder as the root)"
    )


def find_fashion_mnist(root: str | Path) -> Path:
    """The first candidate folder that holds all four idx files."""
    for folder in candidate_folders(root):
        if all(_file_in(folder, name) is not None for pair in FASHION_MNIST_FILES.values() for name in pair):
            return folder
    raise DatasetError(f"Fashion-MNIST not found: {_expected(root)}")


def read_idx(path: str | Path) -> np.ndarray:
    """Read one idx file (gzip-compressed or raw, recognised by its magic bytes) into a numpy array."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as error:
        raise DatasetError(f"idx file {path} is corrupt ({type(error).__name__}: {error})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(f"idx file {path} is corrupt: bad header {raw[:4].hex()} (expected 0000 08 <ndim>)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"idx file {path} is corrupt: truncated header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[raw[2]]
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if len(raw) - header != expected:
        raise DatasetError(
            f"idx file {path} is corrupt: {len(raw) - header} data bytes for shape {shape} (expected {expected})"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def read_fashion_mnist_split(root: str | Path, split: str) -> tuple[Tensor, Tensor]:
    """``split`` ('train' or 'test') as (N, 1, 28, 28) uint8 images and (N,) int64 labels."""
    folder = find_fashion_mnist(root)
    image_name, label_name = FASHION_MNIST_FILES[split]
    image_path, label_path = _file_in(folder, image_name), _file_in(folder, label_name)
    assert image_path is not None and label_path is not None
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DatasetError(
            f"Fashion-MNIST file {image_path} is corrupt: images of shape {images.shape}, not N x 28 x 28"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DatasetError(
            f"Fashion-MNIST files disagree: {image_path} holds {images.shape[0]} images, {label_path} "
            f"{labels.shape} labels"
        )
    if labels.size and labels.max() >= 10:
        raise DatasetError(f"Fashion-MNIST file {label_path} is corrupt: labels outside 0..9")
    return torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64))


class FashionMNIST(CropFlipDataModule):
    """Fashion-MNIST (60,000 train / 10,000 test, 10 classes), shaped for the CIFAR-family networks.

    Mapping to the 3x32x32 input of the CIFAR networks: each 28x28 image gets a 2-pixel **zero border** (32x32) — no
    interpolation, and seamless because Fashion-MNIST backgrounds are black — and the grey channel is
    **replicated** to three channels after normalisation (networks run unchanged; storage and augmentation stay
    single-channel).  Normalisation uses the statistics of the padded 32x32 training images, so inputs have zero
    mean and unit variance as the networks see them: mean 0.2190, std 0.3318 (the raw 28x28 statistics, for
    reference, are 0.2860 / 0.3530).

    Augmentation (pipeline ``cifar``, the default): the CIFAR recipe itself, ``RandomCrop(32, padding=4)`` with zero
    padding + ``RandomHorizontalFlip``.  The flip is label-preserving for all ten classes (garments and bags are
    left-right symmetric as categories, and a mirrored shoe is still a shoe) and it is the common Fashion-MNIST
    recipe (e.g. Zhong et al., Random Erasing, AAAI'20); above all it makes this dataset exercise exactly the
    augmentation the CIFAR tables use.  ``none`` turns augmentation off.

    Args:
        root: folder holding the idx files (else the candidates in ``candidate_folders``, ending with Debian's).
        pipeline: ``cifar`` (zero-pad-4 crop + flip) or ``none``.
        download: fetch the idx files through torchvision into ``<root>/FashionMNIST/raw`` when none are found.
        padding_mode: ``zero`` or ``reflect`` padding of the random crop (default: the pipeline's).
        crop_padding: pixels of padding of the random crop, 0 disables cropping (default: the pipeline's).
        flip: random horizontal flips (default: the pipeline's).
        batch_size: training batch size.
        eval_batch_size: evaluation batch size.
        seed: seed of shuffling and augmentation (default: the run's seed).
        drop_last: drop the last incomplete training batch.
        on_device: keep the splits on the accelerator.
        contrast_k: CRD negatives per sample (0: no contrast indices in the batches).
        contrast_mode: CRD positive: ``exact`` or ``relax``.
    """

    dataset_name = "fashion-mnist"
    num_classes = 10
    train_size = 60_000
    mean = (0.2190,)
    std = (0.3318,)

    PIPELINES = {
        "cifar": {"padding_mode": "zero", "crop_padding": 4, "flip": True},
        "none": {"padding_mode": "zero", "crop_padding": 0, "flip": False},
    }

    def __init__(
        self,
        root: str = "data",
        pipeline: Literal["cifar", "none"] = "cifar",
        download: bool = False,
        padding_mode: Literal["zero", "reflect"] | None = None,
        crop_padding: int | None = None,
        flip: bool | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 500,
        seed: int | None = None,
        drop_last: bool = False,
        on_device: bool = True,
        contrast_k: int = 0,
        contrast_mode: Literal["exact", "relax"] = "exact",
    ) -> None:
        super().__init__(
            root, batch_size, eval_batch_size, seed, drop_last, on_device, contrast_k, contrast_mode, download
        )
        self.configure_crop_flip(pipeline, padding_mode, crop_padding, flip)

    @classmethod
    def is_available(cls, root: str) -> bool:
        """Whether the files found hold the full 60,000 / 10,000 images (a generated fixture does not)."""
        try:
            return all(read_fashion_mnist_split(root, s)[1].shape[0] == n for s, n in FASHION_MNIST_SIZES.items())
        except DatasetError:
            return False

    @classmethod
    def check_root(cls, root: str, download: bool = False) -> None:
        if download:
            return  # prepare_data fetches it
        find_fashion_mnist(root)

    def source_files(self) -> tuple[Path, list[Path]]:
        folder = find_fashion_mnist(self.root)
        files = [_file_in(folder, name) for pair in FASHION_MNIST_FILES.values() for name in pair]
        return folder, [f for f in files if f is not None]

    @classmethod
    def download_dataset(cls, root: str) -> Path:
        from datamodules.download import download_fashion_mnist

        try:
            return find_fashion_mnist(root)
        except DatasetError:
            return download_fashion_mnist(root)

    def load_split(self, split: str) -> tuple[Tensor, Tensor]:
        """(N, 1, 32, 32) uint8: the 28x28 images inside a zero border of ``FRAME_PADDING`` pixels."""
        images, labels = read_fashion_mnist_split(self.root, split)
        return torch.nn.functional.pad(images, (FRAME_PADDING,) * 4), labels

    def to_network_input(self, images: Tensor) -> Tensor:
        """Grey -> RGB by replication: (B, 1, 32, 32) -> (B, 3, 32, 32)."""
        return images.expand(-1, 3, -1, -1).contiguous()
