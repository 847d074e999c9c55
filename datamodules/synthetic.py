"""Small datasets written in the real on-disk formats, for tests and the offline smoke preset.

The files go through the same readers as the real datasets, so the readers are what the tests exercise.
Images are class-dependent colour patterns plus noise, so a few optimisation steps can learn something, but
nothing trained on them says anything about real accuracy.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from datamodules.cifar import CIFAR100_FOLDER

__all__ = ["write_cifar100", "synthetic_images"]


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
