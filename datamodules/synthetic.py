"""Small datasets written in the real on-disk formats, for tests and the offline smoke preset.

The files go through the same readers as the real datasets, so the readers are what the tests exercise.  This
module imports the readers' layout constants; the readers never import it (no import circle):
:func:`write_fixture` is how the runner's smoke preset and the tests get a dataset by its table name.
Images are class-dependent colour patterns plus noise, so a few optimisation steps can learn something, but
nothing trained on them says anything about real accuracy.
"""

from __future__ import annotations

import gzip
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

from datamodules.cifar import CIFAR100_FOLDER

__all__ = [
    "FIXTURE_WRITERS",
    "synthetic_images",
    "write_cifar100",
    "write_fashion_mnist",
    "write_fixture",
    "write_imagenet",
    "write_tiny_imagenet",
]


def synthetic_images(labels: np.ndarray, size: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """(N, 3, size, size) uint8 images: a per-class colour gradient plus noise."""
    class_colours = np.random.default_rng(12345).integers(30, 226, size=(num_classes, 3, 2))
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    start = class_colours[labels, :, 0][:, :, None, None].astype(np.float32)
    end = class_colours[labels, :, 1][:, :, None, None].astype(np.float32)
    base = start + (end - start) * ramp[None, None, :, None]
    noise = rng.normal(0.0, 25.0, size=(labels.shape[0], 3, size, size))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_cifar100(root: str | Path, train_per_class: int = 10, test_per_class: int = 2, seed: int = 0) -> Path:
    """Write ``<root>/cifar-100-python/{train,test,meta}`` exactly as the official archive lays them out."""
    folder = Path(root) / CIFAR100_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    fine_names = [f"class_{i:02d}" for i in range(100)]
    coarse_names = [f"superclass_{i:02d}" for i in range(20)]
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = np.repeat(np.arange(100), per_class)
        rng.shuffle(labels)
        images = synthetic_images(labels, 32, 100, rng)
        entry = {
            "filenames": [f"synthetic_{split}_{i}.png" for i in range(labels.size)],
            "batch_label": f"synthetic {split} batch",
            "fine_labels": labels.tolist(),
            "coarse_labels": (labels // 5).tolist(),
            "data": images.reshape(labels.size, -1),
        }
        with open(folder / split, "wb") as handle:
            pickle.dump(entry, handle, protocol=2)
    with open(folder / "meta", "wb") as handle:
        pickle.dump({"fine_label_names": fine_names, "coarse_label_names": coarse_names}, handle, protocol=2)
    return folder


def _wnids(count: int, rng: np.random.Generator) -> list[str]:
    """``count`` distinct WordNet-style ids (``n`` + 8 digits), in random (not sorted) order."""
    numbers = rng.choice(np.arange(1_000_000, 15_000_000), size=count, replace=False)
    return [f"n{int(n):08d}" for n in numbers]


def _jpeg_bytes(image: np.ndarray, grayscale: bool = False) -> bytes:
    """JPEG-encode a (3, H, W) uint8 array (as a single-channel file when ``grayscale``)."""
    from PIL import Image

    pil = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))
    if grayscale:
        pil = pil.convert("L")
    buffer = io.BytesIO()
    pil.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_tiny_imagenet(
    root: str | Path,
    classes: int = 10,
    train_per_class: int = 8,
    val_per_class: int = 4,
    as_zip: bool = False,
    seed: int = 0,
) -> Path:
    """Write the official ``tiny-imagenet-200`` tree (or ``tiny-imagenet-200.zip`` holding it) with real JPEGs.

    Val files are numbered in a shuffled class order, so their labels can only come from ``val_annotations.txt``;
    every 7th image is stored as a grayscale JPEG (the real set has a few).  Returns the folder or the zip.
    """
    from datamodules.tiny_imagenet import TINY_FOLDER, TINY_ZIP

    rng = np.random.default_rng(seed)
    wnids = _wnids(classes, rng)
    files: dict[str, bytes] = {
        "wnids.txt": "".join(f"{w}\n" for w in wnids).encode(),
        "words.txt": "".join(f"{w}\tsynthetic class {i}\n" for i, w in enumerate(wnids)).encode(),
    }
    class_index = {w: i for i, w in enumerate(sorted(wnids))}
    counter = 0
    for wnid in wnids:
        labels = np.full(train_per_class, class_index[wnid])
        boxes = []
        for k, image in enumerate(synthetic_images(labels, 64, classes, rng)):
            name = f"{wnid}_{k}.JPEG"
            files[f"train/{wnid}/images/{name}"] = _jpeg_bytes(image, grayscale=counter % 7 == 3)
            boxes.append(f"{name}\t0\t0\t63\t63\n")
            counter += 1
        files[f"train/{wnid}/{wnid}_boxes.txt"] = "".join(boxes).encode()
    val_wnids = np.repeat(np.array(wnids), val_per_class)
    rng.shuffle(val_wnids)
    val_labels = np.array([class_index[w] for w in val_wnids])
    annotations = []
    val_images = (
        image
        for start in range(0, len(val_labels), 500)
        for image in synthetic_images(val_labels[start : start + 500], 64, classes, rng)
    )
    for k, (wnid, image) in enumerate(zip(val_wnids, val_images)):
        files[f"val/images/val_{k}.JPEG"] = _jpeg_bytes(image, grayscale=k % 7 == 5)
        annotations.append(f"val_{k}.JPEG\t{wnid}\t{k % 10}\t{k % 5}\t60\t61\n")
    files["val/val_annotations.txt"] = "".join(annotations).encode()
    for k, image in enumerate(synthetic_images(rng.integers(0, classes, 3), 64, classes, rng)):
        files[f"test/images/test_{k}.JPEG"] = _jpeg_bytes(image)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if as_zip:
        target = root / TINY_ZIP
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as archive:
            archive.writestr(f"{TINY_FOLDER}/", b"")
            for name, data in files.items():
                archive.writestr(f"{TINY_FOLDER}/{name}", data)
        return target
    folder = root / TINY_FOLDER
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def write_imagenet(
    root: str | Path,
    classes: int = 4,
    train_per_class: int = 5,
    val_per_class: int = 2,
    flat_val: bool = False,
    seed: int = 0,
) -> Path:
    """Write ILSVRC-2012 in ``ImageFolder`` layout, ``<root>/imagenet/{train,val}/<wnid>/*.JPEG``, with real JPEGs.

    Image sizes vary (between 40 and 120 pixels a side, portrait and landscape) so the resize/crop paths are
    exercised.  ``flat_val`` writes val as the raw archive unpacks it (``val/ILSVRC2012_val_*.JPEG``, no classes).
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    wnids = sorted(_wnids(classes, rng))
    folder = Path(root) / "imagenet"
    counter = 0
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for label, wnid in enumerate(wnids):
            target = folder / split if split == "val" and flat_val else folder / split / wnid
            target.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                height, width = (int(v) for v in rng.integers(40, 121, size=2))
                square = synthetic_images(np.array([label]), max(height, width), classes, rng)[0]
                image = Image.fromarray(np.ascontiguousarray(square[:, :height, :width].transpose(1, 2, 0)))
                counter += 1
                name = f"ILSVRC2012_val_{counter:08d}.JPEG" if split == "val" else f"{wnid}_{k}.JPEG"
                image.save(target / name, format="JPEG", quality=90)
    return folder


def _idx_bytes(array: np.ndarray) -> bytes:
    """The idx encoding of a uint8 array: 0x0000, dtype 0x08, ndim, big-endian uint32 sizes, then the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_fashion_mnist(
    root: str | Path, train_per_class: int = 10, test_per_class: int = 4, compress: bool = True, seed: int = 0
) -> Path:
    """Write the four Fashion-MNIST idx files (``.gz`` as distributed, or raw) into ``root``."""
    from datamodules.fashion_mnist import FASHION_MNIST_FILES

    rng = np.random.default_rng(seed)
    folder = Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = np.repeat(np.arange(10), per_class)
        rng.shuffle(labels)
        images = synthetic_images(labels, 28, 10, rng)[:, 0]
        for name, array in zip(FASHION_MNIST_FILES[split], (images, labels.astype(np.uint8))):
            data = _idx_bytes(array)
            if compress:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
            else:
                (folder / name).write_bytes(data)
    return folder


#: Table dataset name -> the writer of its small fixture (default sizes).
FIXTURE_WRITERS = {
    "cifar100": write_cifar100,
    "tiny-imagenet": write_tiny_imagenet,
    "imagenet": write_imagenet,
    "fashion-mnist": write_fashion_mnist,
}


def write_fixture(dataset: str, root: str | Path) -> Path:
    """Write a small ``dataset`` (a table's dataset name) in the real on-disk format under ``root``."""
    from datamodules.errors import DatasetError

    if dataset not in FIXTURE_WRITERS:
        raise DatasetError(f"no generated fixture for dataset {dataset!r}; valid: {', '.join(FIXTURE_WRITERS)}")
    return FIXTURE_WRITERS[dataset](root)
