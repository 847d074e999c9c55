"""ImageNet (ILSVRC-2012) in ``ImageFolder`` layout, decoded and augmented in DataLoader worker processes.

Layout, as every reference repository reads it with ``torchvision.datasets.ImageFolder``::

    <root>/imagenet/train/<wnid>/*.JPEG     1,281,167 images in 1000 class folders
    <root>/imagenet/val/<wnid>/*.JPEG       50,000 images, 50 per class (sorted into folders by the valprep step)

Class indices are the sorted wnid folder names (``ImageFolder.find_classes``), sample order ``make_dataset``'s.

Pipelines (spec architectures-and-recipes.md §D.3): training ``RandomResizedCrop(224)`` + ``RandomHorizontalFlip``
in every repository's code; NORM's paper text describes Resize(256) + RandomCrop(224) + flip instead
(``pipeline='norm_paper'``).  ``pipeline='deit'`` is the ViT recipes' (DeiT, MAE, ND's DeiT++ through timm's
``create_transform``): bicubic ``RandomResizedCrop(224)`` + flip + RandAugment ``rand-m9-mstd0.5-inc1`` in the
workers, random erasing (p 0.25, per-pixel normal noise, one box) on the device after normalisation, and a bicubic
evaluation resize.  Evaluation ``Resize(256)`` + ``CenterCrop(224)``.  Workers return uint8 tensors (a
quarter of the bytes of float32 through the pinned-memory copy); normalisation with the ImageNet mean/std runs on
the device in ``on_after_batch_transfer``.

Reproducibility: the shuffling comes from a generator seeded with ``(seed, epoch)`` and every sample's random
augmentation from a seed of ``(seed, epoch, index)``, so a (seed, epoch) pair gives the same batches whatever the
number of workers.

Loaders are built by a *backend* (``BACKENDS``): ``torchvision`` (PIL decode + torchvision transforms in worker
processes, the default) or ``gpu_decode`` (workers read the files' bytes; nvJPEG decodes them on the GPU, crops and
resizes run there: :mod:`datamodules.gpu_decode`); a DALI or FFCV backend only needs to yield the same batch dicts.
"""

from __future__ import annotations

import os
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms.functional import pil_to_tensor

from datamodules.augment import normalize
from datamodules.base import KDDataModule, pipeline_settings
from datamodules.contrast import ContrastSampler
from datamodules.errors import DatasetError
from datamodules.images import IMAGE_EXTENSIONS, open_rgb
from datamodules.loaders import epoch_generator

__all__ = ["ImageNet", "BACKENDS", "ImageNetBackend", "find_imagenet", "imagenet_samples", "sample_seed"]

IMAGENET_SIZES = {"train": 1_281_167, "val": 50_000}
VALPREP_HINT = (
    "sort the validation images into val/<wnid>/ class folders first, e.g. with the usual valprep.sh from "
    "soumith/imagenetloader.torch, or torchvision.datasets.ImageNet(root, split='val'), which does it from the devkit"
)


def find_imagenet(root: str | Path) -> Path:
    """The folder holding ``train/`` and ``val/``: ``<root>/imagenet``, ``<root>/ILSVRC2012`` or ``root`` itself."""
    root = Path(root)
    for folder in (root / "imagenet", root / "ILSVRC2012", root):
        if (folder / "train").is_dir() and (folder / "val").is_dir():
            return folder
    from datamodules.download import imagenet_steps

    raise DatasetError(
        f"ImageNet not found: expected train/<wnid>/*.JPEG and val/<wnid>/*.JPEG class folders in {root / 'imagenet'} "
        f"(or {root / 'ILSVRC2012'}, or {root}), as torchvision's ImageFolder reads them. {imagenet_steps(root)}"
    )


def _class_folders(folder: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def imagenet_samples(root: str | Path, split: str) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, class index) of every image of ``split`` ('train' or 'val') in ImageFolder order, and the class names.

    Both splits use the training split's classes, so an index means the same class in both.
    """
    from torchvision.datasets.folder import make_dataset

    if split not in ("train", "val"):
        raise DatasetError(f"unknown ImageNet split {split!r}; valid: train, val")
    folder = find_imagenet(root)
    classes = _class_folders(folder / "train")
    if not classes:
        raise DatasetError(f"ImageNet train split {folder / 'train'} has no class folders (expected train/<wnid>/)")
    target = folder / split
    if split == "val":
        val_classes = _class_folders(target)
        flat = [e.name for e in os.scandir(target) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)]
        if flat and not val_classes:
            raise DatasetError(
                f"ImageNet val split {target} is flat ({len(flat)} images, no class folders): {VALPREP_HINT}"
            )
        if val_classes != classes:
            unknown = sorted(set(val_classes) - set(classes))[:3]
            absent = sorted(set(classes) - set(val_classes))[:3]
            raise DatasetError(
                f"ImageNet val class folders in {target} differ from train's: not in train {unknown}, "
                f"missing {absent} ({len(val_classes)} vs {len(classes)} folders)"
            )
    try:
        samples = make_dataset(str(target), {c: i for i, c in enumerate(classes)}, extensions=IMAGE_EXTENSIONS)
    except FileNotFoundError as error:
        raise DatasetError(f"ImageNet {split} split in {target} is incomplete: {error}") from None
    return samples, classes


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentation in one epoch (``SeedSequence`` of the three numbers, as the
    in-memory loaders' epoch generators; ~20 us, nothing next to decoding a JPEG)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


class EpochKeys(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` keys: a ``(seed, epoch)``-seeded permutation, or the identity order.

    The epoch travels with each key, so augmentation in (persistent) worker processes knows the epoch.
    """

    def __init__(self, count: int, shuffle: bool, seed: int, current_epoch: Callable[[], int | None]) -> None:
        self.count = count
        self.shuffle = shuffle
        self.seed = seed
        self.current_epoch = current_epoch
        self._own_epoch = 0

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.current_epoch()
        if epoch is None:
            epoch, self._own_epoch = self._own_epoch, self._own_epoch + 1
        generator = epoch_generator(self.seed, epoch)
        order = torch.randperm(self.count, generator=generator).tolist() if self.shuffle else range(self.count)
        yield from ((epoch, index) for index in order)


class KeyedSamples(Dataset):
    """Samples read per ``(epoch, index)`` key; every item carries its label, its index and (CRD) its contrast
    indices, drawn from the sample's seed."""

    def __init__(self, samples: list[tuple[str, int]], seed: int, contrast: ContrastSampler | None = None) -> None:
        self.paths = np.array([path for path, _ in samples])  # one numpy array: no per-item refcount copy-on-write
        self.labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
        self.seed = seed
        self.contrast = contrast

    def __len__(self) -> int:
        return len(self.paths)

    def fields(self, index: int, seed: int | None) -> dict[str, Tensor]:
        """``labels``, ``indices`` and, with a contrast sampler, ``contrast_indices`` of sample ``index``."""
        item = {"labels": self.labels[index], "indices": torch.tensor(index)}
        if self.contrast is not None:
            generator = torch.Generator().manual_seed(int(seed or 0) ^ 0x5DEECE66D)
            item["contrast_indices"] = self.contrast(torch.tensor([index]), generator)["contrast_indices"][0]
        return item


class ImageFolderSamples(KeyedSamples):
    """Decodes and transforms one sample per ``(epoch, index)`` key: uint8 image, label, index[, CRD indices]."""

    def __init__(
        self,
        samples: list[tuple[str, int]],
        transform: Callable[[Any], Any] | None,
        seed: int,
        contrast: ContrastSampler | None = None,
        erase_seed: bool = False,
    ) -> None:
        super().__init__(samples, seed, contrast)
        self.erase_seed = erase_seed  # training samples that the device erases: carry the sample's seed
        self.transform = transform

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Tensor]:
        epoch, index = key
        image = open_rgb(str(self.paths[index]))
        seed = sample_seed(self.seed, epoch, index)
        if self.transform is not None:
            with torch.random.fork_rng(devices=[]):  # the transforms draw from the global generator
                torch.manual_seed(seed)
                # timm's crops and RandAugment draw from Python's and numpy's global generators too.
                state, np_state = random.getstate(), np.random.get_state()
                random.seed(seed)
                np.random.seed(seed & 0xFFFFFFFF)
                try:
                    image = self.transform(image)
                finally:
                    random.setstate(state)
                    np.random.set_state(np_state)
        item = {"images": pil_to_tensor(image), **self.fields(index, seed)}
        if self.erase_seed:
            item["erase_seed"] = torch.tensor(seed & 0x7FFFFFFF)
        return item


class ImageNetBackend(Protocol):
    """Builds the loaders of one split; each batch is a dict with uint8 ``images`` (B, 3, 224, 224), ``labels``,
    ``indices`` and, when asked, ``contrast_indices``; normalisation happens after transfer."""

    def __init__(self, datamodule: ImageNet) -> None: ...

    def loader(
        self, split: str, *, train: bool, shuffle: bool, batch_size: int, drop_last: bool, seed: int | None = None
    ) -> Any: ...

    def num_samples(self, split: str) -> int: ...


class FolderBackend(ABC):
    """What the ImageNet backends share: the datamodule, each split's sample list (listed once), CRD's sampler
    and the DataLoader over ``(epoch, index)`` keys in ``num_workers`` processes (persistent for training); a
    backend says what the workers read (:meth:`dataset`) and what becomes of their batches (:meth:`batches`)."""

    #: Batches go through pinned memory on their way to a GPU; None: torch's default collate.
    pin_memory = True
    collate_fn: Callable[[list[Any]], Any] | None = None

    def __init__(self, datamodule: ImageNet) -> None:
        self.datamodule = datamodule
        self._samples: dict[str, list[tuple[str, int]]] = {}

    def samples(self, split: str) -> list[tuple[str, int]]:
        if split not in self._samples:
            self._samples[split] = imagenet_samples(self.datamodule.root, split)[0]
        return self._samples[split]

    def num_samples(self, split: str) -> int:
        return len(self.samples(split))

    def contrast(self, samples: list[tuple[str, int]], train: bool) -> ContrastSampler | None:
        """CRD's sampler for a training loader, with replacement as the reference ImageNet sampler (else None)."""
        dm = self.datamodule
        if not train or dm.contrast_k <= 0:
            return None
        labels = torch.tensor([label for _, label in samples])
        return ContrastSampler(labels, dm.contrast_k, dm.contrast_mode, replacement=True)

    @abstractmethod
    def dataset(self, samples: list[tuple[str, int]], train: bool, seed: int) -> KeyedSamples:
        """What the workers read per ``(epoch, index)`` key (each backend its own)."""

    def batches(self, loader: DataLoader) -> Any:
        """The batches the datamodule hands out, from the worker loader (default: the loader itself)."""
        return loader

    def loader(
        self, split: str, *, train: bool, shuffle: bool, batch_size: int, drop_last: bool, seed: int | None = None
    ) -> Any:
        """``seed`` (a one-off pass, e.g. the class means of an augmented view): augmentation seeds from it, epoch 0,
        instead of the datamodule's seed and the current epoch."""
        dm = self.datamodule
        samples = self.samples(split)
        workers = dm.num_workers
        loader = DataLoader(
            self.dataset(samples, train, dm.seed if seed is None else seed),
            batch_size=batch_size,
            sampler=EpochKeys(len(samples), shuffle, dm.seed, dm._current_epoch if seed is None else lambda: 0),
            num_workers=workers,
            collate_fn=self.collate_fn,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            drop_last=drop_last,
            persistent_workers=workers > 0 and train,
            prefetch_factor=4 if workers > 0 else None,
        )
        return self.batches(loader)


class TorchvisionBackend(FolderBackend):
    """PIL decoding and torchvision transforms in ``num_workers`` DataLoader processes."""

    def transform(self, train: bool) -> Callable[[Any], Any]:
        from torchvision import transforms as T

        dm = self.datamodule
        if dm.pipeline == "deit":
            return deit_transform(train, dm.crop_size, dm.resize_size, dm.flip)
        if not train:
            return T.Compose([T.Resize(dm.resize_size), T.CenterCrop(dm.crop_size)])
        steps: list[Any] = []
        if dm.train_crop == "random_resized":
            steps.append(T.RandomResizedCrop(dm.crop_size))
        else:
            steps += [T.Resize(dm.resize_size), T.RandomCrop(dm.crop_size)]
        if dm.flip:
            steps.append(T.RandomHorizontalFlip())
        return T.Compose(steps)

    def dataset(self, samples: list[tuple[str, int]], train: bool, seed: int) -> KeyedSamples:
        erase = train and self.datamodule.random_erasing > 0
        return ImageFolderSamples(samples, self.transform(train), seed, self.contrast(samples, train), erase)


def deit_transform(train: bool, crop_size: int, resize_size: int, flip: bool) -> Callable[[Any], Any]:
    """The ViT recipes' PIL transforms (timm ``create_transform``, as ND's ``ImageNet/DeiT/Dataset/ImageNet.py``):
    bicubic RandomResizedCrop + flip + RandAugment ``rand-m9-mstd0.5-inc1`` for training (random erasing runs on
    the device: :func:`random_erasing`), bicubic Resize + CenterCrop for evaluation; PIL images out."""
    from timm.data import create_transform
    from torchvision import transforms as T

    if not train:
        return T.Compose([T.Resize(resize_size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(crop_size)])
    primary, secondary, _ = create_transform(
        crop_size,
        is_training=True,
        auto_augment="rand-m9-mstd0.5-inc1",
        interpolation="bicubic",
        hflip=0.5 if flip else 0.0,
        color_jitter=None,
        re_prob=0.0,
        separate=True,
    )
    return T.Compose([*primary.transforms, *secondary.transforms])


def random_erasing(images: Tensor, seeds: Tensor, probability: float) -> Tensor:
    """timm's ``RandomErasing(probability, mode="pixel", max_count=1)`` on normalised images, each image's box
    drawn from its own sample seed (timm draws from Python's ``random``, reseeded here per image)."""
    from timm.data.random_erasing import RandomErasing

    eraser = RandomErasing(probability, mode="pixel", max_count=1, device=str(images.device))
    state = random.getstate()
    with torch.random.fork_rng(devices=[images.device] if images.device.type == "cuda" else []):
        try:
            for image, seed in zip(images, seeds.tolist()):
                random.seed(seed)
                torch.manual_seed(seed)
                eraser(image)  # in place
        finally:
            random.setstate(state)
    return images


#: Loader backends by name (``--data.backend``): ``torchvision`` (PIL, the default) and ``gpu_decode`` (JPEGs
#: decoded on the GPU with nvJPEG, crops drawn as the PIL backend draws them: :mod:`datamodules.gpu_decode`, which
#: imports this module and registers itself here; the package ``__init__`` imports it).
BACKENDS: dict[str, type[ImageNetBackend]] = {"torchvision": TorchvisionBackend}


class ImageNet(KDDataModule):
    """ImageNet ILSVRC-2012 (1000 classes), evaluated on the 50,000 val images as every paper does.

    Args:
        root: folder holding ``imagenet/`` (or ``ILSVRC2012/``) with ``train/`` and ``val/`` class folders.
        pipeline: ``torchvision`` (RandomResizedCrop(224) + flip; the code of every reference repository),
            ``norm_paper`` (Resize(256) + RandomCrop(224) + flip, as NORM's paper text describes) or ``deit`` (the
            ViT recipes': bicubic crops, RandAugment m9-mstd0.5, random erasing 0.25; module docs).
        flip: random horizontal flips (default: the pipeline's).
        backend: loader implementation (see ``BACKENDS``).
        num_workers: decoding worker processes (default: the machine's cores, at most 8).
        batch_size: training batch size.
        eval_batch_size: evaluation batch size.
        seed: seed of shuffling and augmentation (default: the run's seed).
        drop_last: drop the last incomplete training batch.
        contrast_k: CRD negatives per sample, drawn with replacement as the reference ImageNet sampler does
            (0: no contrast indices in the batches).
        contrast_mode: CRD positive: ``exact`` or ``relax``.
    """

    dataset_name = "imagenet"
    num_classes = 1000
    train_size = IMAGENET_SIZES["train"]
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)
    crop_size = 224
    resize_size = 256

    PIPELINES = {
        "torchvision": {"train_crop": "random_resized", "flip": True, "random_erasing": 0.0},
        "norm_paper": {"train_crop": "resize_random", "flip": True, "random_erasing": 0.0},
        "deit": {"train_crop": "random_resized", "flip": True, "random_erasing": 0.25},
    }

    def __init__(
        self,
        root: str = "data",
        pipeline: Literal["torchvision", "norm_paper", "deit"] = "torchvision",
        flip: bool | None = None,
        backend: str = "torchvision",
        num_workers: int | None = None,
        batch_size: int = 256,
        eval_batch_size: int = 250,
        seed: int | None = None,
        drop_last: bool = False,
        contrast_k: int = 0,
        contrast_mode: Literal["exact", "relax"] = "exact",
    ) -> None:
        super().__init__(root, batch_size, eval_batch_size, seed, drop_last, contrast_k, contrast_mode)
        settings = pipeline_settings(self.dataset_name, self.PIPELINES, pipeline, flip=flip)
        self.pipeline = pipeline
        self.train_crop: str = settings["train_crop"]
        self.flip: bool = settings["flip"]
        self.random_erasing: float = settings["random_erasing"]
        if backend not in BACKENDS:
            raise DatasetError(f"unknown ImageNet backend {backend!r}; valid: {', '.join(BACKENDS)}")
        if contrast_mode not in ("exact", "relax"):
            raise DatasetError(f"contrast mode {contrast_mode!r} is not one of: exact, relax")
        self.backend_name = backend
        self.backend: ImageNetBackend = BACKENDS[backend](self)
        self.num_workers = num_workers if num_workers is not None else min(8, os.cpu_count() or 1)

    @classmethod
    def check_root(cls, root: str, download: bool = False) -> None:
        find_imagenet(root)

    def source_files(self) -> tuple[Path, list[Path]]:
        """The train/val class folders (their modification times change when files are added or removed)."""
        folder = find_imagenet(self.root)
        return folder, [folder / split / name for split in ("train", "val") for name in _class_folders(folder / split)]

    @classmethod
    def is_available(cls, root: str) -> bool:
        """Whether train and val both hold the 1000 class folders (files are not counted: that takes minutes)."""
        try:
            folder = find_imagenet(root)
        except DatasetError:
            return False
        return all(len(_class_folders(folder / split)) == 1000 for split in ("train", "val"))

    @classmethod
    def download_dataset(cls, root: str) -> Path:
        """Never a download (licence): unpack the official archives if they are there, else the exact steps."""
        from datamodules.download import prepare_imagenet

        return prepare_imagenet(root)

    @property
    def num_train_samples(self) -> int:
        """Images in the training split (CRD's memory bank is sized with it)."""
        return self.backend.num_samples("train")

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.backend.num_samples("train")
        self.backend.num_samples("val")

    def train_dataloader(self) -> Any:
        return self.backend.loader(
            "train", train=True, shuffle=True, batch_size=self.batch_size, drop_last=self.drop_last
        )

    def val_dataloader(self) -> Any:
        return self.backend.loader("val", train=False, shuffle=False, batch_size=self.eval_batch_size, drop_last=False)

    def test_dataloader(self) -> Any:
        return self.val_dataloader()

    def class_mean_dataloader(self, seed: int) -> Any:
        """One augmented view of every training image, in split order, augmentation seeds drawn from ``seed``
        (the teacher class means of ND's "++" methods, as their official scripts compute them)."""
        return self.backend.loader(
            "train", train=True, shuffle=False, batch_size=self.eval_batch_size, drop_last=False, seed=seed
        )

    def split_fingerprint(self, split: str) -> str:
        """A digest of a split's sample list (relative paths, labels) and file sizes: the offline stages' data key
        (cheap next to hashing 150 GB of JPEGs; changes when files are added, removed, relabelled or rewritten)."""
        import hashlib

        cached = getattr(self.backend, "samples", None)
        samples = cached(split) if cached is not None else imagenet_samples(self.root, split)[0]
        base = find_imagenet(self.root)
        sha = hashlib.sha256()
        for path, label in samples:
            sha.update(f"{Path(path).relative_to(base).as_posix()}\t{label}\t{os.path.getsize(path)}\n".encode())
        return sha.hexdigest()[:16]

    def train_eval_dataloader(self) -> Any:
        """A deterministic pass over the training split with the evaluation transform (offline stages use it)."""
        return self.backend.loader(
            "train", train=False, shuffle=False, batch_size=self.eval_batch_size, drop_last=False
        )

    def on_after_batch_transfer(self, batch: dict[str, Tensor], dataloader_idx: int) -> dict[str, Tensor]:
        """uint8 -> normalised float32 on the device (then random erasing of the training batches that ask for it)."""
        if batch["images"].dtype == torch.uint8:
            batch["images"] = normalize(batch["images"], self.mean, self.std)
        seeds = batch.pop("erase_seed", None)
        if seeds is not None:
            batch["images"] = random_erasing(batch["images"], seeds, self.random_erasing)
        return batch
