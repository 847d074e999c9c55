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
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor

from datamodules.augment import normalize
from datamodules.contrast import ContrastSampler
from datamodules.errors import DatasetError
from datamodules.loaders import BatchAugmentation, CropFlip, InMemoryBatches

__all__ = ["KDDataModule", "InMemoryDataModule", "CropFlipDataModule", "pipeline_settings"]


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


class KDDataModule(pl.LightningDataModule):
    """Base of every dataset.

    Args:
        root: folder holding the dataset in its official layout.
        batch_size: training batch size.
        eval_batch_size: evaluation batch size (does not change results: BN is in eval mode).
        seed: seed of the per-epoch shuffling and augmentation; default: the run's ``seed_everything``.
        drop_last: drop the last incomplete training batch.
    """

    #: Name tables use for the dataset (``dataset: cifar100``).
    dataset_name: str
    num_classes: int
    train_size: int  # images in the full training split (for cost estimates)
    mean: Sequence[float]
    std: Sequence[float]

    @classmethod
    def is_available(cls, root: str) -> bool:
        """Whether the full real dataset is present under ``root``."""
        return False

    @classmethod
    def download(cls, root: str) -> str | None:
        """Fetch the real dataset into ``root`` where a download exists; the reason it could not, else None."""
        return f"{cls.__name__} has no download"

    @classmethod
    def write_fixture(cls, root: str) -> None:
        """Write a small dataset in the real on-disk format under ``root`` (tests, offline smoke runs)."""
        raise DatasetError(f"{cls.__name__} has no generated fixture")

    def __init__(
        self,
        root: str = "data",
        batch_size: int = 64,
        eval_batch_size: int = 500,
        seed: int | None = None,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        self.root = root
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self._seed = seed
        self.drop_last = drop_last

    @property
    def seed(self) -> int:
        if self._seed is not None:
            return self._seed
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def _current_epoch(self) -> int | None:
        trainer = getattr(self, "trainer", None)
        return None if trainer is None else trainer.current_epoch


class InMemoryDataModule(KDDataModule, metaclass=ABCMeta):
    """A dataset small enough to hold as uint8 tensors; subclasses implement :meth:`load_split`.

    Args (beyond :class:`KDDataModule`'s):
        on_device: keep the splits on the accelerator.
        contrast_k: when > 0, training batches carry ``contrast_indices`` (B, K+1) for CRD: the positive, then
            K negatives from other classes (:class:`datamodules.contrast.ContrastSampler`).
        contrast_mode: CRD's positive: ``exact`` (the sample itself) or ``relax`` (a random same-class sample).
    """

    #: CRD negatives with replacement (the reference ImageNet/Tiny samplers); None: only when the pool is too small.
    contrast_replacement: bool | None = None

    def __init__(
        self,
        *args: Any,
        on_device: bool = True,
        contrast_k: int = 0,
        contrast_mode: Literal["exact", "relax"] = "exact",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.on_device = on_device
        self.contrast_k = contrast_k
        self.contrast_mode = contrast_mode
        self._splits: dict[str, tuple[Tensor, Tensor]] = {}

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
    def split(self, name: str) -> tuple[Tensor, Tensor]:
        if name not in self._splits:
            self._splits[name] = self.load_split(name)
        images, labels = self._splits[name]
        device = self._device()
        if self.on_device and images.device != device:
            images, labels = images.to(device), labels.to(device)
            self._splits[name] = (images, labels)
        return images, labels

    def _device(self) -> torch.device:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return torch.device("cpu")
        return trainer.strategy.root_device

    @property
    def num_train_samples(self) -> int:
        """Images in the training split as read from disk (CRD's memory bank is sized with it)."""
        self.load_split_checked("train")
        return int(self._splits["train"][1].shape[0])

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.load_split_checked("train")
        for name in set(self.eval_splits()):
            self.load_split_checked(name)

    def load_split_checked(self, name: str) -> None:
        if name not in self._splits:
            self._splits[name] = self.load_split(name)

    def _batches(
        self,
        name: str,
        *,
        batch_size: int,
        shuffle: bool,
        augment: BatchAugmentation | None,
        drop_last: bool,
        contrast: bool = False,
    ) -> InMemoryBatches:
        images, labels = self.split(name)
        sampler = None
        if contrast and self.contrast_k > 0:
            sampler = ContrastSampler(labels, self.contrast_k, self.contrast_mode, self.contrast_replacement)
        return InMemoryBatches(
            images,
            labels,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            seed=self.seed,
            current_epoch=self._current_epoch,
            augment=augment,
            sample_extra=sampler,
        )

    def train_dataloader(self) -> InMemoryBatches:
        return self._batches(
            "train",
            batch_size=self.batch_size,
            shuffle=True,
            augment=self.train_augmentation(),
            drop_last=self.drop_last,
            contrast=True,
        )

    def val_dataloader(self) -> InMemoryBatches:
        name = self.eval_splits()[0]
        return self._batches(name, batch_size=self.eval_batch_size, shuffle=False, augment=None, drop_last=False)

    def test_dataloader(self) -> InMemoryBatches:
        name = self.eval_splits()[1]
        return self._batches(name, batch_size=self.eval_batch_size, shuffle=False, augment=None, drop_last=False)

    def train_eval_dataloader(self) -> InMemoryBatches:
        """A deterministic pass over the training split without augmentation (offline stages use it)."""
        return self._batches("train", batch_size=self.eval_batch_size, shuffle=False, augment=None, drop_last=False)

    # ---------------------------------------------------------------------------------------- augmentation
    def on_after_batch_transfer(self, batch: dict[str, Tensor], dataloader_idx: int) -> dict[str, Tensor]:
        """Augment (training batches carry their parameters), normalise, and shape for the network."""
        images = batch["images"]
        if images.dtype != torch.uint8:  # not from our loaders' uint8 splits: already network input
            return batch
        augment = self.train_augmentation()
        if augment is not None and augment.param_keys[0] in batch:
            images = augment.apply(images, batch)
        batch["images"] = self.to_network_input(normalize(images, self.mean, self.std))
        return batch


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
