"""Offline stages: what a method computes before training (teacher class means, codebooks, channel matchings).

Each stage's artefact is cached on disk under a key that names *exactly* what it was computed from — the teacher
checkpoint's content digest, a fingerprint of the data split, the transform, the stage's settings — so a cached
artefact can never be paired with another teacher or data by accident, and every run that needs the same artefact
reuses it.  Concurrent runs (parallel launchers, SLURM arrays) wait on a per-key file lock instead of computing it
twice.

    artefact = load_or_compute(
        "nd_class_means",
        {"teacher": teacher_digest(path), "data": data_fingerprint(images, labels), "transform": "train"},
        compute=lambda: {"means": ...},
    )
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from kd_modules.errors import MethodConfigError
from models.checkpoints import file_digest

__all__ = [
    "stage_key",
    "load_or_compute",
    "teacher_digest",
    "data_fingerprint",
    "training_data_fingerprint",
    "progress",
    "normalised_train_batches",
]

T = TypeVar("T")


def stage_key(inputs: dict[str, Any]) -> str:
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@lru_cache(maxsize=64)
def _digest_cached(path: str, size: int, mtime_ns: int) -> str:
    return file_digest(path)


def teacher_digest(checkpoint: str | Path) -> str:
    """Content digest of a checkpoint file (memoised per path, size and modification time)."""
    stat = os.stat(checkpoint)
    return _digest_cached(str(Path(checkpoint).resolve()), stat.st_size, stat.st_mtime_ns)


def data_fingerprint(images: Tensor, labels: Tensor) -> str:
    """A digest of a whole split's labels and a strided sample of its pixels (cheap, changes with the data)."""
    sha = hashlib.sha256()
    sha.update(str((tuple(images.shape), str(images.dtype))).encode())
    sha.update(labels.detach().cpu().numpy().tobytes())
    step = max(1, images.shape[0] // 256)
    sha.update(images[::step].detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()[:16]


def training_data_fingerprint(datamodule: Any) -> str:
    """:func:`data_fingerprint` of a datamodule's training split: in memory (``split``), or as a streaming
    datamodule (ImageNet) fingerprints its files (``split_fingerprint``)."""
    if hasattr(datamodule, "split"):
        return data_fingerprint(*datamodule.split("train"))
    if hasattr(datamodule, "split_fingerprint"):
        return str(datamodule.split_fingerprint("train"))
    raise MethodConfigError(
        f"{type(datamodule).__name__} can fingerprint neither an in-memory training split (split) nor its files "
        f"(split_fingerprint): the offline stages cannot key their cache"
    )


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, however the block ends
        yield


def load_or_compute(
    name: str,
    inputs: dict[str, Any],
    compute: Callable[[], dict[str, Tensor]],
    root: str | Path | None = None,
) -> dict[str, Tensor]:
    """The artefact of stage ``name`` for ``inputs``: loaded when cached, else computed once and saved.

    ``inputs`` must name everything the artefact depends on; it is stored beside the artefact (``inputs.json``).
    Artefacts live under ``root``, else ``$KDBENCH_CACHE``, else ``results/cache``.
    """
    folder = Path(root or os.environ.get("KDBENCH_CACHE", "results/cache")) / name / stage_key(inputs)
    artefact = folder / "artefact.pt"
    with _locked(folder.with_suffix(".lock")):
        if artefact.is_file():
            return torch.load(artefact, map_location="cpu", weights_only=True)
        started = time.perf_counter()
        result = compute()
        folder.mkdir(parents=True, exist_ok=True)
        tmp = artefact.with_suffix(".tmp")
        torch.save({k: v.detach().cpu() for k, v in result.items()}, tmp)
        tmp.replace(artefact)
        meta = {"stage": name, "inputs": inputs, "seconds": round(time.perf_counter() - started, 3)}
        (folder / "inputs.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        return result


def progress(items: Iterable[T], total: int | None, description: str) -> Iterator[T]:
    """Iterate with a progress bar on stderr (tqdm), so long offline passes show how far they are."""
    from tqdm.auto import tqdm

    yield from tqdm(items, total=total, desc=description, file=sys.stderr, mininterval=2.0, leave=False)


def normalised_train_batches(
    datamodule: Any, device: torch.device | str, limit: int | None, loader: Any = None
) -> tuple[Any, int]:
    """The un-augmented training split's batches on ``device``, normalised as the networks see them, and their count.

    Only the first ``limit`` images when ``limit`` is set (smoke runs, quick diagnostics).  ``loader``: another of
    the data module's loaders instead of ``train_eval_dataloader()`` (the diagnostics' evaluation pass).
    """
    loader = datamodule.train_eval_dataloader() if loader is None else loader

    def batches() -> Any:
        seen = 0
        for batch in loader:
            if limit is not None and seen >= limit:
                return
            if limit is not None and seen + batch["labels"].shape[0] > limit:
                batch = {k: v[: limit - seen] for k, v in batch.items()}
            batch = datamodule.on_after_batch_transfer({k: v.to(device) for k, v in batch.items()}, 0)
            seen += batch["labels"].shape[0]
            yield batch

    total = len(loader) if limit is None else min(len(loader), math.ceil(limit / loader.batch_size))
    return batches(), total
