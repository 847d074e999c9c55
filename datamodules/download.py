"""Fetching the datasets that may be fetched: ``--data.download true`` and ``python -m benchmarks.fetch data``.

* **CIFAR-100**: torchvision's archive and MD5 (:func:`datamodules.cifar.download_cifar100`).
* **Tiny-ImageNet**: the official ``tiny-imagenet-200.zip`` (cs231n), downloaded resumably through a ``.part`` file
  (:func:`models.download.download`; the zip has no published checksum: every member's CRC-32 is checked as it
  is extracted, and the tree must hold ``wnids.txt``), extracted into a
  temporary folder that is renamed into place, and its validation images sorted into class folders,
  ``val/<wnid>/images/val_<k>.JPEG``, the layout mdistiller's and letKD's ``ImageFolder`` read.
  ``val/val_annotations.txt`` stays (the reader takes the labels from it either way).  The zip is deleted once
  the tree is complete.
* **Fashion-MNIST**: torchvision's ``FashionMNIST(download=True)`` (its mirrors and MD5s) into
  ``<root>/FashionMNIST/raw``, one of the folders the reader looks in.
* **ImageNet** is never downloaded (its licence requires a login): :func:`prepare_imagenet` prints the exact steps,
  and when the three official archives are in ``<root>/imagenet`` it unpacks and sorts them with torchvision's own
  ``parse_*_archive`` functions into the ``train/<wnid>`` / ``val/<wnid>`` folders the reader takes.

Without network access every failure is one line naming the URL and the manual step.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path

from datamodules.errors import DatasetError

__all__ = [
    "IMAGENET_ARCHIVES",
    "TINY_IMAGENET_URL",
    "download_fashion_mnist",
    "download_tiny_imagenet",
    "prepare_imagenet",
    "sort_tiny_val",
]

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_FOLDER = "tiny-imagenet-200"  # the zip's top folder (datamodules.tiny_imagenet reads it)
TINY_ZIP = "tiny-imagenet-200.zip"
IMAGENET_ARCHIVES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz")


def sort_tiny_val(folder: Path) -> int:
    """Move ``val/images/<file>`` to ``val/<wnid>/images/<file>`` as ``val/val_annotations.txt`` says; return how
    many moved (0 when already sorted)."""
    annotations = folder / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise DatasetError(f"Tiny-ImageNet {annotations} is missing: cannot sort the validation images")
    moved = 0
    for number, line in enumerate(annotations.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DatasetError(f"{annotations} line {number} is corrupt: {line!r}")
        source = folder / "val" / "images" / fields[0]
        target = folder / "val" / fields[1] / "images" / fields[0]
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            source.replace(target)
            moved += 1
    images = folder / "val" / "images"
    if images.is_dir() and not any(images.iterdir()):
        images.rmdir()
    return moved


def download_tiny_imagenet(root: str | Path, url: str | None = None, timeout: float = 60.0) -> Path:
    """``<root>/tiny-imagenet-200`` from the official zip (see the module docstring); returns the folder."""
    from models.download import DownloadError, download

    url = url or TINY_IMAGENET_URL
    root = Path(root)
    folder = root / TINY_FOLDER
    if (folder / "wnids.txt").is_file():
        if (folder / "val" / "images").is_dir():
            sort_tiny_val(folder)
        return folder
    archive = root / TINY_ZIP
    if not archive.is_file():
        try:
            download(url, archive, timeout=timeout, manual=f"without network access, download {url} into {root}")
        except DownloadError as error:
            raise DatasetError(str(error)) from None
    if not zipfile.is_zipfile(archive):
        archive.unlink()
        raise DatasetError(f"{archive} is not a zip archive (deleted; run again to download it anew)")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".tiny-imagenet-") as scratch:
        try:
            with zipfile.ZipFile(archive) as handle:
                handle.extractall(scratch)  # checks every member's CRC-32
        except (zipfile.BadZipFile, OSError) as error:
            archive.unlink()
            raise DatasetError(f"{archive} is corrupt ({error}); deleted, run again to download it anew") from None
        extracted = Path(scratch) / TINY_FOLDER
        if not (extracted / "wnids.txt").is_file():
            raise DatasetError(f"{archive} holds no {TINY_FOLDER}/wnids.txt: it is not the Tiny-ImageNet zip")
        sort_tiny_val(extracted)
        extracted.replace(folder)
    archive.unlink()
    return folder


def download_fashion_mnist(root: str | Path) -> Path:
    """``<root>/FashionMNIST/raw`` through torchvision (its mirrors and MD5 checks); returns the folder."""
    from torchvision.datasets import FashionMNIST

    root = Path(root)
    try:
        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except Exception as error:  # torchvision raises RuntimeError/URLError after trying each mirror
        mirror = FashionMNIST.mirrors[0]
        reason = " ".join(str(error).split())[:200]
        raise DatasetError(
            f"cannot download Fashion-MNIST from {mirror} ({reason}); without network access: "
            "apt-get install dataset-fashion-mnist (Debian/Ubuntu), or put the four idx .gz files in "
            f"{root / 'fashion-mnist'}"
        ) from None
    return root / "FashionMNIST" / "raw"


def imagenet_steps(root: str | Path) -> str:
    folder = Path(root) / "imagenet"
    return (
        "ImageNet (ILSVRC-2012) cannot be downloaded for you (its licence needs an image-net.org login): "
        f"1. log in at https://image-net.org and download {', '.join(IMAGENET_ARCHIVES)}; "
        f"2. put the three files in {folder}; "
        f"3. run python -m benchmarks.fetch data imagenet --data-root {root} (unpacks and sorts them with "
        f"torchvision into {folder}/train/<wnid>/ and {folder}/val/<wnid>/)"
    )


def prepare_imagenet(root: str | Path) -> Path:
    """Unpack the official archives in ``<root>/imagenet`` into class folders, or raise with the exact steps."""
    from torchvision.datasets.imagenet import parse_devkit_archive, parse_train_archive, parse_val_archive

    folder = Path(root) / "imagenet"
    if (folder / "train").is_dir() and (folder / "val").is_dir():
        return folder
    missing = [name for name in IMAGENET_ARCHIVES if not (folder / name).is_file()]
    if missing:
        raise DatasetError(f"{', '.join(missing)} not in {folder}. {imagenet_steps(root)}")
    try:
        parse_devkit_archive(str(folder))
        parse_val_archive(str(folder))
        parse_train_archive(str(folder))
    except Exception as error:  # torchvision checks each archive's MD5
        raise DatasetError(f"cannot unpack the ImageNet archives in {folder}: {error}") from None
    shutil.rmtree(folder / "ILSVRC2012_devkit_t12", ignore_errors=True)
    return folder
