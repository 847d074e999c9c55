"""CIFAR-100 in torchvision's on-disk layout: ``<root>/cifar-100-python/{train,test,meta}`` python pickles.

Each split pickle is a dict with ``data`` (N x 3072 uint8, channel-major rows of 32x32 images) and
``fine_labels`` (N ints); the original files were written by Python 2, so they are read with
``encoding="latin1"`` exactly as torchvision does.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from datamodules.errors import DatasetError

__all__ = ["CIFAR100_URL", "CIFAR100_MD5", "CIFAR100_FOLDER", "read_cifar100_split", "download_cifar100"]

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR100_SIZES = {"train": 50_000, "test": 10_000}


def _expected(root: Path) -> str:
    return (
        f"expected torchvision's CIFAR-100 layout at {root / CIFAR100_FOLDER}/{{train,test,meta}} "
        f"(unpack {CIFAR100_URL} into {root}, or pass --data.download true where the network is reachable)"
    )


def read_cifar100_split(root: str | Path, split: str) -> tuple[Tensor, Tensor]:
    """Read ``split`` ('train' or 'test') as (N, 3, 32, 32) uint8 images and (N,) int64 fine labels."""
    root = Path(root)
    path = root / CIFAR100_FOLDER / split
    if not path.is_file():
        raise DatasetError(f"CIFAR-100 {split} split not found: {_expected(root)}")
    try:
        with open(path, "rb") as handle:
            entry = pickle.load(handle, encoding="latin1")
        entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry["fine_labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, AttributeError, TypeError) as error:
        raise DatasetError(
            f"CIFAR-100 file {path} is corrupt ({type(error).__name__}: {error}); {_expected(root)}"
        ) from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"CIFAR-100 file {path} is corrupt: data has shape {data.shape} for {labels.shape[0]} labels "
            f"(expected N x 3072); {_expected(root)}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= 100):
        raise DatasetError(f"CIFAR-100 file {path} is corrupt: fine labels outside 0..99")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels)


def download_cifar100(root: str | Path) -> None:
    """Download and unpack the official archive (checked against its MD5) unless the files are already there."""
    root = Path(root)
    if all((root / CIFAR100_FOLDER / s).is_file() for s in ("train", "test", "meta")):
        return
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(CIFAR100_URL, download_root=str(root), md5=CIFAR100_MD5)
    except Exception as error:
        raise DatasetError(
            f"could not download CIFAR-100 ({type(error).__name__}: {error}); {_expected(root)}"
        ) from None


# ------------------------------------------------------------------------------------------------ datamodule
from typing import Literal  # noqa: E402

from datamodules.base import CropFlipDataModule  # noqa: E402


class CIFAR100(CropFlipDataModule):
    """CIFAR-100 (50,000 train / 10,000 test, 32x32, 100 classes), evaluated on the test split as every paper does.

    Training augmentation: ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip`` with zero padding (CRD,
    mdistiller, NORM, ND, KCD) or reflect padding (letKD); normalisation with the CIFAR-100 statistics that every
    reference repository uses (ND's code also lists CIFAR-10's, for CIFAR-10 only).

    Args:
        root: folder containing ``cifar-100-python/``.
        download: fetch and unpack the official archive when the files are missing.
        pipeline: the reference repository whose training augmentation to reproduce (see ``PIPELINES``):
            ``crd``/``mdistiller``/``norm``/``nd``/``kcd`` zero-pad 4 + flip, ``letkd`` reflect-pad 4 + flip.
        padding_mode: ``zero`` or ``reflect`` padding of the random crop (default: the pipeline's).
        crop_padding: pixels of padding of the random crop, 0 disables cropping (default: the pipeline's).
        flip: random horizontal flips (default: the pipeline's).
        batch_size: training batch size (64 in the CRD recipe, 128 in ND's).
        eval_batch_size: evaluation batch size.
        seed: seed of shuffling and augmentation (default: the run's seed).
        drop_last: drop the last incomplete training batch (letKD does).
        on_device: keep the splits on the accelerator.
        contrast_k: CRD negatives per sample (0: no contrast indices in the batches).
        contrast_mode: CRD positive: ``exact`` or ``relax``.
    """

    dataset_name = "cifar100"
    num_classes = 100
    train_size = 50_000
    mean = (0.5071, 0.4867, 0.4408)
    std = (0.2675, 0.2565, 0.2761)

    #: Training augmentation of each reference repository (spec architectures-and-recipes.md §D.1).
    PIPELINES = {
        "crd": {"padding_mode": "zero", "crop_padding": 4, "flip": True},  # RepDistiller RandomCrop(32, 4)
        "mdistiller": {"padding_mode": "zero", "crop_padding": 4, "flip": True},
        "norm": {"padding_mode": "zero", "crop_padding": 4, "flip": True},
        "nd": {"padding_mode": "zero", "crop_padding": 4, "flip": True},  # Pad(4) + RandomCrop(32): the same
        "kcd": {"padding_mode": "zero", "crop_padding": 4, "flip": True},  # no code: the common CIFAR recipe
        "letkd": {"padding_mode": "reflect", "crop_padding": 4, "flip": True},  # RandomCrop(..., 'reflect')
    }

    def __init__(
        self,
        root: str = "data",
        download: bool = False,
        pipeline: Literal["crd", "mdistiller", "norm", "nd", "kcd", "letkd"] = "crd",
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

    download_url = CIFAR100_URL

    @classmethod
    def is_available(cls, root: str) -> bool:
        """Whether both split files hold the full 50,000 / 10,000 images (a generated fixture does not)."""
        try:
            return all(read_cifar100_split(root, s)[1].shape[0] == n for s, n in CIFAR100_SIZES.items())
        except DatasetError:
            return False

    @classmethod
    def check_root(cls, root: str, download: bool = False) -> None:
        if download:
            return  # prepare_data fetches it
        folder = Path(root) / CIFAR100_FOLDER
        missing = [split for split in ("train", "test") if not (folder / split).is_file()]
        if missing:
            raise DatasetError(
                f"CIFAR-100 not found under {root} (no {', '.join(missing)} split): {_expected(Path(root))}"
            )

    def source_files(self) -> tuple[Path, list[Path]]:
        folder = Path(self.root) / CIFAR100_FOLDER
        return folder, [folder / split for split in ("train", "test") if (folder / split).is_file()]

    @classmethod
    def download_dataset(cls, root: str) -> Path:
        download_cifar100(root)
        return Path(root) / CIFAR100_FOLDER

    def load_split(self, split: str) -> tuple[Tensor, Tensor]:
        return read_cifar100_split(self.root, split)
