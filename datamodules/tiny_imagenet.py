"""Tiny-ImageNet (200 classes, 64x64) from the official ``tiny-imagenet-200`` folder or zip, decoded once into memory.

Official layout (the zip holds the same tree under ``tiny-imagenet-200/``)::

    tiny-imagenet-200/wnids.txt                          200 WordNet ids; class index = position in sorted order
    tiny-imagenet-200/train/<wnid>/images/*.JPEG         500 per class
    tiny-imagenet-200/val/images/val_<k>.JPEG            10,000, flat
    tiny-imagenet-200/val/val_annotations.txt            "<file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>": the val labels
    tiny-imagenet-200/test/images/*.JPEG                 unlabelled (not used)

mdistiller and letKD read ``train/`` and a re-organised ``val/<wnid>/`` with ``ImageFolder``; here the val labels
come straight from ``val_annotations.txt`` (a re-organised ``val/<wnid>/`` tree is read too when the annotation
file is absent).  Sample order is ``ImageFolder``'s: by class index, then by file name.

Decoding 110,000 JPEGs takes ~20 s per core, so it runs in parallel worker processes once; the decoded uint8
tensors are cached beside the data under a fingerprint of the source (file names with sizes and modification
times, or the zip's CRCs, plus ``wnids.txt`` and the annotations), and later runs load them in seconds.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import pickle
import warnings
import zipfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from datamodules.base import InMemoryDataModule, pipeline_settings
from datamodules.download import TINY_FOLDER, TINY_ZIP
from datamodules.errors import DatasetError
from datamodules.images import IMAGE_EXTENSIONS, open_rgb
from datamodules.loaders import BatchAugmentation, RotateFlip

__all__ = ["TinyImageNet", "TinySource", "find_tiny_imagenet", "tiny_imagenet_index", "read_tiny_imagenet_split"]

TINY_SIZE = 64
TINY_SIZES = {"train": 100_000, "val": 10_000}
_CACHE_FORMAT = "kdbench-tiny-v1"
_DECODE_CHUNK = 2_000
_TEXT_FILES = ("wnids.txt", "val/val_annotations.txt")


@dataclass(frozen=True)
class TinySource:
    """Where the files are: an extracted folder (``kind='folder'``) or the official zip (``kind='zip'``)."""

    kind: Literal["folder", "zip"]
    path: Path  # the tiny-imagenet-200 folder, or the zip file
    prefix: str = ""  # zip only: the members' common top folder, "tiny-imagenet-200/" in the official zip

    def describe(self) -> str:
        return f"{self.path}" if self.kind == "folder" else f"{self.path} (zip)"


def _expected(root: Path) -> str:
    return (
        f"expected the official layout ({TINY_FOLDER}/wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, "
        f"val/val_annotations.txt) in {root / TINY_FOLDER}, or the official {TINY_ZIP} in {root}"
    )


def find_tiny_imagenet(root: str | Path) -> TinySource:
    """The extracted folder if there is one, else the zip (``<root>/tiny-imagenet-200[.zip]``, or root itself)."""
    root = Path(root)
    for folder in (root / TINY_FOLDER, root):
        if (folder / "wnids.txt").is_file():
            return TinySource("folder", folder)
    if (root / TINY_ZIP).is_file() and not zipfile.is_zipfile(root / TINY_ZIP):
        raise DatasetError(f"{root / TINY_ZIP} is corrupt (not a readable zip archive); {_expected(root)}")
    for archive in (root / TINY_ZIP, root):
        if archive.is_file() and zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as handle:
                names = handle.namelist()
            wnids = [n for n in names if n == "wnids.txt" or n.endswith("/wnids.txt")]
            if not wnids:
                raise DatasetError(f"{archive} has no wnids.txt: it is not the Tiny-ImageNet zip; {_expected(root)}")
            return TinySource("zip", archive, min(wnids, key=len)[: -len("wnids.txt")])
    raise DatasetError(f"Tiny-ImageNet not found: {_expected(root)}")


# --------------------------------------------------------------------------------------------------- listing
class _Listing:
    """Names, sizes and text files of a source, read once (relative paths with '/' separators)."""

    def __init__(self, source: TinySource) -> None:
        self.source = source
        self.files: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns or CRC)
        self._by_folder: dict[int, dict[str, list[str]]] = {}
        self._texts: dict[str, bytes] = {}
        if source.kind == "zip":
            with zipfile.ZipFile(source.path) as handle:  # parsing the directory of 120k members takes a while: once
                for info in handle.infolist():
                    if not info.is_dir() and info.filename.startswith(source.prefix):
                        self.files[info.filename[len(source.prefix) :]] = (info.file_size, info.CRC)
                for name in _TEXT_FILES:
                    if name in self.files:
                        self._texts[name] = handle.read(source.prefix + name)
        else:
            for directory, _, names in os.walk(source.path):
                relative = os.path.relpath(directory, source.path).replace(os.sep, "/")
                for name in names:
                    stat = os.stat(os.path.join(directory, name))
                    path = name if relative == "." else f"{relative}/{name}"
                    self.files[path] = (stat.st_size, stat.st_mtime_ns)

    def read_text(self, relative: str) -> str:
        if relative not in self.files:
            raise DatasetError(f"Tiny-ImageNet file {relative} is missing from {self.source.describe()}")
        if relative not in self._texts:
            self._texts[relative] = (self.source.path / relative).read_bytes()
        data = self._texts[relative]
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise DatasetError(f"Tiny-ImageNet file {relative} in {self.source.describe()} is not text") from None

    def images_under(self, folder: str) -> list[str]:
        """Image files anywhere below ``folder``, sorted (files grouped once per folder depth: O(files))."""
        depth = folder.rstrip("/").count("/") + 1
        if depth not in self._by_folder:
            groups: dict[str, list[str]] = {}
            for path in self.files:
                parts = path.split("/", depth)
                if len(parts) > depth and path.lower().endswith(IMAGE_EXTENSIONS):
                    groups.setdefault("/".join(parts[:depth]), []).append(path)
            self._by_folder[depth] = {key: sorted(paths) for key, paths in groups.items()}
        return self._by_folder[depth].get(folder.rstrip("/"), [])


def _index(listing: _Listing, split: str) -> list[tuple[str, int]]:
    """(relative file, class index) of ``split`` ('train' or 'val') in ImageFolder order."""
    where = listing.source.describe()
    wnids = sorted({line.strip() for line in listing.read_text("wnids.txt").splitlines() if line.strip()})
    if not wnids:
        raise DatasetError(f"{where}/wnids.txt lists no classes")
    class_of = {wnid: i for i, wnid in enumerate(wnids)}
    samples: list[tuple[str, int]] = []
    if split == "train":
        for wnid in wnids:
            files = listing.images_under(f"train/{wnid}/images")
            if not files:
                raise DatasetError(f"Tiny-ImageNet class {wnid} has no images in {where}/train/{wnid}/images/")
            samples.extend((f, class_of[wnid]) for f in files)
        return samples
    if split != "val":
        raise DatasetError(f"unknown Tiny-ImageNet split {split!r}; valid: train, val")
    if "val/val_annotations.txt" in listing.files:
        for number, line in enumerate(listing.read_text("val/val_annotations.txt").splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in class_of:
                raise DatasetError(
                    f"{where}/val/val_annotations.txt line {number} is corrupt: {line!r} "
                    "(expected '<file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>' with a wnid from wnids.txt)"
                )
            flat, sorted_ = f"val/images/{fields[0]}", f"val/{fields[1]}/images/{fields[0]}"
            # the official flat folder, or the class folders `--data.download true` sorts it into
            samples.append(
                (flat if flat in listing.files or sorted_ not in listing.files else sorted_, class_of[fields[1]])
            )
        if not samples:
            raise DatasetError(f"{where}/val/val_annotations.txt lists no images")
    else:  # re-organised val/<wnid>/[images/]*.JPEG, as the repos' ImageFolder reads it
        for wnid in wnids:
            samples.extend((f, class_of[wnid]) for f in listing.images_under(f"val/{wnid}"))
        if not samples:
            raise DatasetError(
                f"Tiny-ImageNet val labels not found: expected {where}/val/val_annotations.txt "
                f"(official layout) or class folders {where}/val/<wnid>/"
            )
    return sorted(samples, key=lambda s: (s[1], s[0]))


def tiny_imagenet_index(root: str | Path, split: str) -> list[tuple[str, int]]:
    """(file relative to the tiny-imagenet-200 folder, class index) of ``split`` ('train' or 'val')."""
    return _index(_Listing(find_tiny_imagenet(root)), split)


# -------------------------------------------------------------------------------------------------- decoding
_WORKER_ARCHIVES: dict[Path, zipfile.ZipFile] | None = None  # set in decoding worker processes only


def _start_decoding_worker() -> None:
    """Pool initializer: a worker keeps each zip open across its chunks (opening parses 120k directory entries)."""
    global _WORKER_ARCHIVES
    _WORKER_ARCHIVES = {}


def _decode_chunk(source: TinySource, members: Sequence[str]) -> np.ndarray:
    """(n, 3, 64, 64) uint8 from ``members``; runs in a worker process or, for small jobs, in this one."""
    out = np.empty((len(members), 3, TINY_SIZE, TINY_SIZE), dtype=np.uint8)
    archive = None
    if source.kind == "zip":
        if _WORKER_ARCHIVES is None:
            archive = zipfile.ZipFile(source.path)
        elif source.path in _WORKER_ARCHIVES:
            archive = _WORKER_ARCHIVES[source.path]
        else:
            archive = _WORKER_ARCHIVES[source.path] = zipfile.ZipFile(source.path)
    try:
        for i, member in enumerate(members):
            name = f"{source.describe()}/{member}"
            if archive is not None:
                try:
                    data: bytes | Path = archive.read(source.prefix + member)
                except KeyError:
                    raise DatasetError(f"image file {name} is missing") from None
                except (zipfile.BadZipFile, OSError) as error:
                    raise DatasetError(f"image file {name} is corrupt ({error})") from None
            else:
                data = source.path / member
            image = open_rgb(data, name)
            if image.size != (TINY_SIZE, TINY_SIZE):
                raise DatasetError(f"image file {name} is {image.size[0]}x{image.size[1]}, expected 64x64")
            out[i] = np.asarray(image).transpose(2, 0, 1)
    finally:
        if archive is not None and _WORKER_ARCHIVES is None:
            archive.close()
    return out


def decode_images(source: TinySource, members: Sequence[str], workers: int | None = None) -> np.ndarray:
    """Decode ``members`` into one (N, 3, 64, 64) uint8 array, in ``workers`` processes (default: all cores)."""
    workers = workers if workers is not None else (os.cpu_count() or 1)
    chunks = [members[i : i + _DECODE_CHUNK] for i in range(0, len(members), _DECODE_CHUNK)]
    if workers <= 1 or len(chunks) <= 1:
        return _decode_chunk(source, members)
    # fork: the workers need neither torch nor a re-import, and start instantly.
    context = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
    with ProcessPoolExecutor(
        max_workers=min(workers, len(chunks)), mp_context=context, initializer=_start_decoding_worker
    ) as pool:
        return np.concatenate(list(pool.map(_decode_chunk, [source] * len(chunks), chunks)))


# ----------------------------------------------------------------------------------------------------- cache
def _fingerprint(listing: _Listing, split: str, samples: list[tuple[str, int]]) -> str:
    sha = hashlib.sha256(f"{_CACHE_FORMAT}|{split}|{listing.source.kind}".encode())
    for name in _TEXT_FILES:
        if name in listing.files:
            sha.update(listing.read_text(name).encode())
    for member, label in samples:
        size, stamp = listing.files.get(member, (-1, -1))
        sha.update(f"{member}|{label}|{size}|{stamp}\n".encode())
    return sha.hexdigest()[:16]


def read_tiny_imagenet_split(
    root: str | Path, split: str, cache_dir: str | None = None, workers: int | None = None, use_cache: bool = True
) -> tuple[Tensor, Tensor]:
    """``split`` ('train' or 'val') as (N, 3, 64, 64) uint8 images and (N,) int64 labels, decoded or from the cache.

    The cache (``<beside the data>/tiny-imagenet-200.kdbench-cache/<split>-<fingerprint>.pt``, or ``cache_dir``) is
    written atomically; when it cannot be written the split is still returned, with a warning.
    """
    source = find_tiny_imagenet(root)
    listing = _Listing(source)
    samples = _index(listing, split)
    members = [m for m, _ in samples]
    missing = [m for m in members if m not in listing.files]
    if missing:
        raise DatasetError(
            f"{len(missing)} Tiny-ImageNet {split} images are missing from {source.describe()}, e.g. {missing[0]}"
        )
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    folder = Path(cache_dir) if cache_dir else source.path.parent / f"{TINY_FOLDER}.kdbench-cache"
    cache = folder / f"{split}-{_fingerprint(listing, split, samples)}.pt"
    if use_cache and cache.is_file():
        try:
            cached = torch.load(cache, map_location="cpu", weights_only=True)
            if torch.equal(cached["labels"], labels) and cached["images"].shape == (len(samples), 3, 64, 64):
                return cached["images"], labels
        except (OSError, RuntimeError, KeyError, EOFError, ValueError, pickle.UnpicklingError):
            pass  # an unreadable cache is rebuilt below
    images = torch.from_numpy(decode_images(source, members, workers))
    if use_cache:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            partial = cache.with_suffix(f".{os.getpid()}.tmp")
            torch.save({"images": images, "labels": labels}, partial)
            partial.replace(cache)
        except OSError as error:
            warnings.warn(f"could not cache decoded Tiny-ImageNet {split} at {cache}: {error}", stacklevel=2)
    return images, labels


def val_halves(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Positions of the first and second half of every class in the class-sorted val split (25/25 of 50)."""
    count = torch.bincount(labels)
    start = torch.cumsum(count, 0) - count
    rank = torch.arange(labels.shape[0]) - start[labels]
    first = rank < (count[labels] + 1) // 2
    return first.nonzero()[:, 0], (~first).nonzero()[:, 0]


# ------------------------------------------------------------------------------------------------ datamodule
class TinyImageNet(InMemoryDataModule):
    """Tiny-ImageNet (100,000 train / 10,000 labelled val, 64x64, 200 classes), held in memory as uint8.

    Training augmentation (mdistiller and letKD alike): ``RandomRotation(20)`` (nearest, zero fill, about the
    centre) + ``RandomHorizontalFlip``, no crop, applied batch-wise on the device; normalisation with mean
    (0.4802, 0.4481, 0.3975), std (0.2302, 0.2265, 0.2262).  Evaluation is on the official val split, as both
    repositories report.  CRD negatives are drawn with replacement (mdistiller ``ImageFolderInstanceSample``).

    letKD's supplement splits the 50 labelled val images per class into 25 validation + 25 test images; the split
    itself was not released.  ``val_split='halves'`` reproduces the protocol with a fixed split of our own: per
    class, the first 25 files by name validate (``val_dataloader``) and the other 25 test (``test_dataloader``).

    Args:
        root: folder holding ``tiny-imagenet-200/`` or ``tiny-imagenet-200.zip``.
        pipeline: ``mdistiller`` / ``letkd`` (RandomRotation(20) + flip) or ``none``.
        rotation_degrees: rotation range in degrees, 0 disables (default: the pipeline's).
        flip: random horizontal flips (default: the pipeline's).
        val_split: ``full`` (validate and test on the 10,000 val images) or ``halves`` (25/25 per class).
        download: fetch the official zip when the data is missing, extract it and sort the validation images into
            class folders (:func:`datamodules.download.download_tiny_imagenet`).
        cache_dir: folder for the decoded-tensor cache (default: beside the data).
        decode_workers: processes decoding the JPEGs on first use (default: all cores).
        batch_size: training batch size.
        eval_batch_size: evaluation batch size.
        seed: seed of shuffling and augmentation (default: the run's seed).
        drop_last: drop the last incomplete training batch.
        on_device: keep the splits on the accelerator (1.2 GB of uint8 for the training split).
        contrast_k: CRD negatives per sample (0: no contrast indices in the batches).
        contrast_mode: CRD positive: ``exact`` or ``relax``.
    """

    dataset_name = "tiny-imagenet"
    num_classes = 200
    train_size = 100_000
    mean = (0.4802, 0.4481, 0.3975)
    std = (0.2302, 0.2265, 0.2262)
    contrast_replacement = True

    #: Training augmentation of each reference repository (spec architectures-and-recipes.md §D.2).
    PIPELINES = {
        "mdistiller": {"rotation_degrees": 20.0, "flip": True},
        "letkd": {"rotation_degrees": 20.0, "flip": True},
        "none": {"rotation_degrees": 0.0, "flip": False},
    }

    def __init__(
        self,
        root: str = "data",
        pipeline: Literal["mdistiller", "letkd", "none"] = "mdistiller",
        rotation_degrees: float | None = None,
        flip: bool | None = None,
        val_split: Literal["full", "halves"] = "full",
        download: bool = False,
        cache_dir: str | None = None,
        decode_workers: int | None = None,
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
        if val_split not in ("full", "halves"):
            raise DatasetError(f"Tiny-ImageNet val_split {val_split!r} is not one of: full, halves")
        settings = pipeline_settings(
            self.dataset_name, self.PIPELINES, pipeline, rotation_degrees=rotation_degrees, flip=flip
        )
        self.pipeline = pipeline
        self.rotation_degrees = float(settings["rotation_degrees"])
        self.flip = bool(settings["flip"])
        self.val_split = val_split
        self.cache_dir = cache_dir
        self.decode_workers = decode_workers
        self.train_augmentation()

    @classmethod
    def is_available(cls, root: str) -> bool:
        """Whether the official 100,000 train and 10,000 labelled val images are listed (a fixture has fewer)."""
        try:
            listing = _Listing(find_tiny_imagenet(root))
            return all(len(_index(listing, split)) == n for split, n in TINY_SIZES.items())
        except DatasetError:
            return False

    @classmethod
    def check_root(cls, root: str, download: bool = False) -> None:
        if download:
            return  # prepare_data fetches it
        find_tiny_imagenet(root)

    def source_files(self) -> tuple[Path, list[Path]]:
        """The zip, or the extracted folder's index files (the images are not listed: 110,000 files)."""
        source = find_tiny_imagenet(self.root)
        if source.kind == "zip":
            return source.path.parent, [source.path]
        index = [source.path / "wnids.txt", source.path / "val" / "val_annotations.txt"]
        return source.path, [f for f in index if f.is_file()]

    @classmethod
    def download_dataset(cls, root: str) -> Path:
        from datamodules import download

        return download.download_tiny_imagenet(root)

    def load_split(self, split: str) -> tuple[Tensor, Tensor]:
        """``train``; ``test`` = the official labelled val split; ``val_half1``/``val_half2`` = its 25/25 halves."""
        if split in ("val_half1", "val_half2"):
            images, labels = self.split("test")
            index = val_halves(labels.cpu())[0 if split == "val_half1" else 1].to(labels.device)
            return images[index], labels[index]
        source_split = {"train": "train", "test": "val"}.get(split)
        if source_split is None:
            raise DatasetError(f"unknown Tiny-ImageNet split {split!r}; valid: train, test, val_half1, val_half2")
        return read_tiny_imagenet_split(self.root, source_split, self.cache_dir, self.decode_workers)

    def eval_splits(self) -> tuple[str, str]:
        return ("val_half1", "val_half2") if self.val_split == "halves" else ("test", "test")

    def train_augmentation(self) -> BatchAugmentation | None:
        if self.rotation_degrees == 0 and not self.flip:
            return None
        return RotateFlip(degrees=self.rotation_degrees, flip=self.flip)
