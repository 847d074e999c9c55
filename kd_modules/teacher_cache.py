"""The exact teacher-output cache: the teacher's outputs for every training view, computed once per teacher.

The teacher is frozen and in eval mode, so its output for an image depends only on the image's *view*: CIFAR's
``RandomCrop(32, 4)`` + ``RandomHorizontalFlip`` gives every image exactly (2*4+1)^2 * 2 = 162 possible inputs.
For a method that reads only the teacher's logits (KD, DKD, DIST) or also its pooled embedding (CRD), the
outputs of all N x 162 views are computed once, stored (float16 by default) as an offline stage keyed like the
others (:func:`kd_modules.offline.load_or_compute`: teacher checkpoint digest, data fingerprint, augmentation,
normalisation, fields, storage dtype), kept on the device, and the training step looks its batch up by
``indices * views + view`` instead of running the teacher.  Every run with the same teacher and data shares it.

Exactness: a cached row is the teacher's output for that very input (same augmentation function, same
normalisation, teacher in eval mode, float32 arithmetic even under bf16 autocast), rounded to the storage dtype:
float16 keeps it within 1e-3 relative, float32 storage gives the teacher's float32 values (up to the last bits a
convolution may change with the batch it is computed in).  ``tests/kd_modules/test_teacher_cache.py`` compares
cached values with a live teacher on random views.

Where the cache does not apply, the run says why and runs the teacher: a method not in :data:`CACHEABLE` (it
reads stage maps, or runs the teacher on other inputs), an augmentation without enumerable views (Tiny-ImageNet's
rotations, ImageNet's RandomResizedCrop), or a cache larger than the memory budget (e.g. CIFAR last-stage maps:
50k x 162 x 256 x 8 x 8 x 2 B = 265 GB).

Cost: N x V teacher forwards once (CIFAR: 8.1 M, about 0.7 of one 240-epoch run's teacher forwards), then an
index-select per step; worth it as soon as two runs share a teacher.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from kd_modules.offline import data_fingerprint, load_or_compute, progress, teacher_digest

if TYPE_CHECKING:  # pragma: no cover
    from kd_modules.base import DistillationModule

__all__ = [
    "CACHEABLE",
    "FIELDS",
    "TeacherOutputCache",
    "CachedTeacherFeatures",
    "TeacherCacheMiss",
    "cacheable_fields",
    "build_teacher_cache",
    "compute_teacher_outputs",
]

#: The teacher outputs a cache can hold: name -> width(teacher, num_classes) per view.
FIELDS: dict[str, Callable[[Any], int]] = {
    "logits": lambda teacher: int(teacher.num_classes),
    "embedding": lambda teacher: int(teacher.embedding_dim),
    "final_map": lambda teacher: math.prod(teacher.final_shape.chw),
}

#: Methods whose training step reads nothing of the teacher but these outputs of the batch's own images.
#: Listed by class name here (not in the method files): a method not listed always runs its teacher.
CACHEABLE: dict[str, tuple[str, ...]] = {
    "KD": ("logits",),
    "DKD": ("logits",),
    "DIST": ("logits",),
    # FeatureDistillation reads the teacher's logits when kd_weight != 0, and CRD's term its pooled embedding.
    "CRD": ("logits", "embedding"),
    "CRDKD": ("logits", "embedding"),
}


def cacheable_fields(method: str) -> tuple[str, ...] | None:
    """The teacher outputs ``method`` (class name) reads, when a teacher cache can serve all of them."""
    return CACHEABLE.get(method)


class TeacherCacheMiss(RuntimeError):
    """A method read a teacher output that its cache does not hold (a wrong :data:`CACHEABLE` entry)."""


class CachedTeacherFeatures:
    """Stands in for :class:`models.FeatureOutput` of the teacher with the cached fields only; reading any other
    field raises :class:`TeacherCacheMiss` instead of returning something wrong."""

    def __init__(self, values: dict[str, Tensor], method: str) -> None:
        self.__dict__.update(values)
        self._method = method
        self._held = tuple(values)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise TeacherCacheMiss(
            f"{self._method} read the teacher's {name!r}, but its teacher cache holds only {', '.join(self._held)}: "
            f"correct kd_modules.teacher_cache.CACHEABLE[{self._method!r}] (or run without numerics.teacher_cache)"
        )


@dataclass
class TeacherOutputCache:
    """Per-view teacher outputs: ``tables[field]`` is (N, V, width) in the storage dtype, on the run's device."""

    tables: dict[str, Tensor]
    views: int

    def lookup(self, indices: Tensor, views: Tensor) -> dict[str, Tensor]:
        """float32 outputs of the samples ``indices`` (positions in the training split) seen as ``views``: one
        index-select per field, no host sync."""
        flat = indices.long() * self.views + views.long()
        return {
            name: table.reshape(-1, table.shape[-1]).index_select(0, flat).float()
            for name, table in self.tables.items()
        }

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tables.values())


def _memory_budget(device: torch.device) -> int:
    """Bytes a cache may take on ``device``: half the free GPU memory, or a quarter of the host's RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.25)
    except (ValueError, OSError):  # pragma: no cover - non-POSIX
        return 4 << 30


def compute_teacher_outputs(
    teacher: Any,
    images: Tensor,
    render: Callable[[Tensor, Tensor], Tensor],
    views: int,
    fields: tuple[str, ...],
    dtype: torch.dtype,
    batch_size: int,
    channels_last: bool = False,
    show_progress: bool = True,
) -> dict[str, Tensor]:
    """The teacher's ``fields`` for every (image, view): ``{field: (N, V, width)}`` in ``dtype`` on the images'
    device.  Float32 arithmetic (autocast off), eval mode, inference mode."""
    count = images.shape[0]
    device = images.device
    tables = {name: torch.empty(count, views, FIELDS[name](teacher), dtype=dtype, device=device) for name in fields}
    per_chunk = max(1, batch_size // views)
    starts = range(0, count, per_chunk)
    items = progress(starts, len(starts), "teacher outputs per view") if show_progress else starts
    was_training = teacher.training
    teacher.eval()
    with torch.inference_mode(), torch.autocast(device.type, enabled=False):
        for start in items:
            chunk = images[start : start + per_chunk]
            n = chunk.shape[0]
            image_ids = torch.arange(n, device=device).repeat_interleave(views)
            view_ids = torch.arange(views, device=device).repeat(n)
            inputs = render(chunk[image_ids], view_ids)
            if channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            out = teacher.forward_features(inputs)
            for name in fields:
                value = getattr(out, name).float().reshape(n, views, -1)
                tables[name][start : start + n] = value.to(dtype)
    teacher.train(was_training)
    return tables


def build_teacher_cache(module: DistillationModule) -> tuple[TeacherOutputCache | None, str]:
    """The cache for ``module``'s fit, or None and why it does not apply (the caller runs the teacher then)."""
    method = type(module).__name__
    fields = cacheable_fields(method)
    if module.teacher is None:
        return None, f"{method} has no teacher"
    if fields is None:
        return None, f"{method} reads teacher outputs beyond its logits and pooled embedding (not in the cache)"
    datamodule = getattr(getattr(module, "_trainer", None), "datamodule", None)
    views_of = getattr(datamodule, "train_views", None)
    views = views_of() if callable(views_of) else None
    if views is None:
        name = type(datamodule).__name__ if datamodule is not None else "this run's data"
        return None, f"{name}'s training augmentation has no enumerable views (continuous or too many to cache)"
    images, labels = views.split()
    dtype = torch.float16 if module.numerics.teacher_cache_dtype == "float16" else torch.float32
    widths = {name: FIELDS[name](module.teacher) for name in fields}
    size = images.shape[0] * views.count * sum(widths.values()) * torch.empty((), dtype=dtype).element_size()
    device = module.device
    budget = _memory_budget(device)
    if size > budget:
        return None, (
            f"a teacher cache of {', '.join(fields)} for {images.shape[0]} images x {views.count} views needs "
            f"{size / 2**30:.1f} GiB, more than the {budget / 2**30:.1f} GiB budget on {device.type}"
        )
    inputs = {
        "teacher": teacher_digest(module.teacher_config.checkpoint),
        "arch": module.teacher_config.arch,
        "num_classes": int(module.teacher.num_classes),
        "data": data_fingerprint(images, labels),
        "views": views.describe(),
        "fields": list(fields),
        "dtype": str(dtype).removeprefix("torch."),
        "version": 1,
    }
    batch = 2048 if device.type == "cuda" else 324
    artefact = load_or_compute(
        "teacher_outputs",
        inputs,
        lambda: compute_teacher_outputs(
            module.teacher, images, views.render, views.count, fields, dtype, batch, module.numerics.channels_last
        ),
    )
    tables = {name: artefact[name].to(device) for name in fields}
    cache = TeacherOutputCache(tables, views.count)
    return cache, (
        f"teacher cache: {', '.join(fields)} of {images.shape[0]} images x {views.count} views "
        f"({cache.nbytes / 2**20:.0f} MiB {inputs['dtype']} on {device.type})"
    )


def notice(message: str) -> None:
    """One line on stderr (a run's log), as the offline stages report themselves."""
    print(f"[kdbench] {message}", file=sys.stderr)
