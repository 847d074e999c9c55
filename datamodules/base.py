"""The shared LightningDataModule: one class per dataset, one batch format for every method.

Batches are dicts: ``images`` (normalised float32 after augmentation), ``labels`` (int64), ``indices`` (position
of each sample in its split) plus whatever a method asks the data for (CRD's contrast indices).

Small datasets (CIFAR, Tiny-ImageNet, Fashion-MNIST) live in memory as uint8 tensors — on the accelerator when
there is one — and are augmented batch-wise after transfer (:meth:`InMemoryDataModule.on_after_batch_transfer`),
with no per-image Python.
"""

from __future__ import annotations

import os
from abc import ABCMeta, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor

from datamodules.augment import normalize
from datamodules.contrast import ContrastSampler
from datamodules.errors import DatasetError
from datamodules.loaders import BatchAugmentation, CropFlip, InMemoryBatches

__all__ = ["KDDataModule", "InMemoryDataModule", "CropFlipDataModule", "TrainViews", "pipeline_settings"]


def pipeline_settings(
    dataset: str, pipelines: Mapping[str, Mapping[str, Any]], name: str, **explicit: Any
) -> dict[str, Any]:
    """The augmentation settings of reference pipeline ``name``, with every explicitly given (non-None) override.

    Each datamodule lists the pipelines of the repositories it reproduces (``PIPELINES``); a config picks one by
    name (``--data.pipeline letkd``) and may still override single settings (``--data.flip false``).
    """
    if name not in pipelines:
        raise DatasetError(f"unknown {dataset} pipeline {name!r}; valid: {', '.join(pipelines)}")
    settings = dict(pipelines[name])
    settings.update({key: value for key, value in explicit.items() if value is not None})
    return settings


def files_fingerprint(root: str | Path, files: Sequence[str | Path]) -> dict[str, Any]:
    """``name+size+mtime`` fingerprint of ``files`` (read under ``root``): SHA-256 over each file's path relative to
    ``root``, its size and its modification time — not the contents (ImageNet is 150 GB)."""
    import hashlib

    root = Path(root).resolve()
    sha = hashlib.sha256()
    count = total = 0
    for file in sorted(str(f) for f in files):
        path = Path(file)
        try:
            stat = path.stat()
        except OSError:
            continue
        try:
            name = str(path.resolve().relative_to(root))
        except ValueError:
            name = str(path.resolve())
        sha.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        count += 1
        total += stat.st_size
    return {
        "root": str(root),
        "files": count,
        "bytes": total,
        "fingerprint": sha.hexdigest()[:16],
        "method": "sha256 of relative path, size and mtime of each file read",
    }


class KDDataModule(pl.LightningDataModule):
    """Base of every dataset.

    Args:
        root: folder holding the dataset in its official layout.
        batch_size: training batch size.
        eval_batch_size: evaluation batch size (does not change results: BN is in eval mode).
        seed: seed of the per-epoch shuffling and augmentation; default: the run's ``seed_everything``.
        drop_last: drop the last incomplete training batch.
        contrast_k: when > 0, training batches carry ``contrast_indices`` (B, K+1) for CRD: the positive, then
            K negatives from other classes (:class:`datamodules.contrast.ContrastSampler`).
        contrast_mode: CRD's positive: ``exact`` (the sample itself) or ``relax`` (a random same-class sample).
    """

    #: Name tables use for the dataset (``dataset: cifar100``).
    dataset_name: str
    #: Where ``download=True`` fetches the dataset from (None: it cannot be downloaded by kdbench).
    download_url: str | None = None
    num_classes: int
    train_size: int  # images in the full training split (for cost estimates)
    mean: Sequence[float]
    std: Sequence[float]

    @classmethod
    def is_available(cls, root: str) -> bool:
        """Whether the full real dataset is present under ``root``."""
        return False

    @classmethod
    def check_root(cls, root: str, download: bool = False) -> None:
        """Raise :class:`DatasetError` (naming what is expected where) when the dataset is not under ``root``.

        Cheap existence checks only, so that a run refuses a wrong root before it loads or writes anything.
        """

    def source_files(self) -> tuple[Path, list[Path]]:
        """The folder the data is read from and the files that make it up (for the record's fingerprint)."""
        return Path(self.root), []

    def data_provenance(self) -> dict[str, Any]:
        """Where the data was actually read from, and a fingerprint of the files (see benchmarks.provenance)."""
        folder, files = self.source_files()
        return {"dataset": self.dataset_name, "configured_root": str(self.root), **files_fingerprint(folder, files)}

    def __init__(
        self,
        root: str = "data",
        batch_size: int = 64,
        eval_batch_size: int = 500,
        seed: int | None = None,
        drop_last: bool = False,
        contrast_k: int = 0,
        contrast_mode: Literal["exact", "relax"] = "exact",
    ) -> None:
        super().__init__()
        self.root = root
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self._seed = seed
        self.drop_last = drop_last
        self.contrast_k = contrast_k
        self.contrast_mode = contrast_mode

    @property
    def seed(self) -> int:
        return self._seed if self._seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))

    def _current_epoch(self) -> int | None:
        trainer = getattr(self, "trainer", None)
        return None if trainer is None else trainer.current_epoch


class InMemoryDataModule(KDDataModule, metaclass=ABCMeta):
    """A dataset small enough to hold as uint8 tensors; subclasses implement :meth:`load_split`.

    Args (beyond :class:`KDDataModule`'s, in the order the datasets declare them):
        on_device: keep the splits on the accelerator.
        download: fetch the dataset (:meth:`download_dataset`) in :meth:`prepare_data` when it is missing.
    """

    #: CRD negatives with replacement (the reference ImageNet/Tiny samplers); None: only when the pool is too small.
    contrast_replacement: bool | None = None

    def __init__(
        self,
        root: str = "data",
        batch_size: int = 64,
        eval_batch_size: int = 500,
        seed: int | None = None,
        drop_last: bool = False,
        on_device: bool = True,
        contrast_k: int = 0,
        contrast_mode: Literal["exact", "relax"] = "exact",
        download: bool = False,
    ) -> None:
        super().__init__(root, batch_size, eval_batch_size, seed, drop_last, contrast_k, contrast_mode)
        self.on_device = on_device
        self.download = download
        self._splits: dict[str, tuple[Tensor, Tensor]] = {}
        self._carry_views = False  # training batches carry "views" (set by train_views: the teacher cache)

    # ------------------------------------------------------------------------------------------ to implement
    @abstractmethod
    def load_split(self, split: str) -> tuple[Tensor, Tensor]:
        """Return (N, C, H, W) uint8 images and (N,) int64 labels of ``split`` ('train' or 'test')."""

    def train_augmentation(self) -> BatchAugmentation | None:
        """The training augmentation (drawn per epoch, applied after transfer); None: none."""
        return None

    def to_network_input(self, images: Tensor) -> Tensor:
        """Map normalised images to the input the networks take (default: unchanged)."""
        return images

    def eval_splits(self) -> tuple[str, str]:
        """Names of the splits the validation and test loaders read (default: both the labelled test split)."""
        return "test", "test"

    # ------------------------------------------------------------------------------------------------ splits
    def prepare_data(self) -> None:
        if self.download:
            self.download_dataset(self.root)  # type: ignore[attr-defined]

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        images, labels = self.load_split_checked(name)
        trainer = getattr(self, "trainer", None)
        device = torch.device("cpu") if trainer is None else trainer.strategy.root_device
        if self.on_device and images.device != device:
            images, labels = images.to(device), labels.to(device)
            self._splits[name] = (images, labels)
        return images, labels

    @property
    def num_train_samples(self) -> int:
        """Images in the training split as read from disk (CRD's memory bank is sized with it)."""
        return int(self.load_split_checked("train")[1].shape[0])

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.load_split_checked("train")
        for name in set(self.eval_splits()):
            self.load_split_checked(name)

    def load_split_checked(self, name: str) -> tuple[Tensor, Tensor]:
        """Split ``name`` as loaded once (where :meth:`split` last moved it)."""
        if name not in self._splits:
            self._splits[name] = self.load_split(name)
        return self._splits[name]

    def _batches(self, name: str, train: bool = False) -> InMemoryBatches:
        """Training batches (shuffled, augmented, CRD indices) or a deterministic evaluation pass over ``name``."""
        images, labels = self.split(name)
        sampler = None
        if train and self.contrast_k > 0:
            sampler = ContrastSampler(labels, self.contrast_k, self.contrast_mode, self.contrast_replacement)
        return InMemoryBatches(
            images,
            labels,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train and self.drop_last,
            seed=self.seed,
            current_epoch=self._current_epoch,
            augment=self.train_augmentation() if train else None,
            sample_extra=sampler,
        )

    def train_dataloader(self) -> InMemoryBatches:
        return self._batches("train", train=True)

    def val_dataloader(self) -> InMemoryBatches:
        return self._batches(self.eval_splits()[0])

    def test_dataloader(self) -> InMemoryBatches:
        return self._batches(self.eval_splits()[1])

    def train_eval_dataloader(self) -> InMemoryBatches:
        """A deterministic pass over the training split without augmentation (offline stages use it)."""
        return self._batches("train")

    # ---------------------------------------------------------------------------------------- augmentation
    def on_after_batch_transfer(self, batch: dict[str, Tensor], dataloader_idx: int) -> dict[str, Tensor]:
        """Augment (training batches carry their parameters), normalise, and shape for the network.

        After :meth:`train_views` was called, augmented batches also carry ``views`` (B,) int64: which of the
        augmentation's enumerable views each sample is (with ``indices``, the key of the teacher-output cache).
        """
        images = batch["images"]
        if images.dtype != torch.uint8:  # not from our loaders' uint8 splits: already network input
            return batch
        augment = self.train_augmentation()
        if augment is not None and augment.param_keys[0] in batch:
            if self._carry_views and getattr(augment, "view_count", None) is not None:
                batch["views"] = augment.view_ids(batch)  # type: ignore[attr-defined]
            images = augment.apply(images, batch)
        elif self._carry_views and augment is None and "indices" in batch:
            batch["views"] = torch.zeros_like(batch["indices"])
        batch["images"] = self.network_input(images)
        return batch

    def network_input(self, pixels: Tensor) -> Tensor:
        """Augmented pixel values (0..255, uint8 or float) -> what the networks take: normalised, shaped."""
        return self.to_network_input(normalize(pixels, self.mean, self.std))

    def train_views(self) -> TrainViews | None:
        """The training augmentation's views as an enumerable set (None: not enumerable, e.g. rotation angles).

        From this call on, augmented training batches carry ``views``.
        """
        augment = self.train_augmentation()
        count = 1 if augment is None else getattr(augment, "view_count", None)
        if count is None:
            return None
        self._carry_views = True
        return TrainViews(self, augment, int(count))


class TrainViews:
    """Every view a training image can take under an enumerable augmentation (CIFAR's crop + flip: 162).

    ``render(images, view_ids)`` produces exactly the network input that a training batch with those views holds:
    the same augmentation function, normalisation and input mapping as :meth:`InMemoryDataModule.on_after_batch_transfer`.
    """

    def __init__(self, datamodule: InMemoryDataModule, augment: BatchAugmentation | None, count: int) -> None:
        self.datamodule = datamodule
        self.augment = augment
        self.count = count

    def split(self) -> tuple[Tensor, Tensor]:
        """The training split's uint8 images and labels (on the accelerator when the data module keeps it there)."""
        return self.datamodule.split("train")

    def describe(self) -> dict[str, Any]:
        """What the rendered views depend on, for cache keys."""
        dm = self.datamodule
        return {
            "datamodule": f"{type(dm).__module__}.{type(dm).__qualname__}",
            "augmentation": repr(self.augment),
            "views": self.count,
            "mean": list(dm.mean),
            "std": list(dm.std),
        }

    def render(self, images: Tensor, view_ids: Tensor) -> Tensor:
        """Network input of ``images`` (uint8, B x C x H x W) seen as ``view_ids`` (B,)."""
        pixels = images
        if self.augment is not None:
            params = self.augment.view_params(view_ids.to(images.device))  # type: ignore[attr-defined]
            pixels = self.augment.apply(images, params)
        return self.datamodule.network_input(pixels)


class CropFlipDataModule(InMemoryDataModule):
    """An in-memory dataset trained with ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip`` (CIFAR-style).

    Subclasses list their reference pipelines in ``PIPELINES`` (settings ``padding_mode``, ``crop_padding``,
    ``flip``) and call :meth:`configure_crop_flip` from ``__init__``.
    """

    PIPELINES: dict[str, dict[str, Any]]

    def configure_crop_flip(
        self, pipeline: str, padding_mode: str | None, crop_padding: int | None, flip: bool | None
    ) -> None:
        settings = pipeline_settings(
            self.dataset_name, self.PIPELINES, pipeline, padding_mode=padding_mode, crop_padding=crop_padding, flip=flip
        )
        self.pipeline = pipeline
        self.padding_mode: str = settings["padding_mode"]
        self.crop_padding: int = settings["crop_padding"]
        self.flip: bool = settings["flip"]
        self.train_augmentation()  # validates the settings now rather than at the first batch

    def train_augmentation(self) -> BatchAugmentation | None:
        if self.crop_padding == 0 and not self.flip:
            return None
        return CropFlip(padding=self.crop_padding, mode=self.padding_mode, flip=self.flip)
