"""Batches sliced from a split held in memory (host or accelerator) as uint8 tensors.

Per-epoch shuffling and the augmentation parameters come from a generator seeded with ``(seed, epoch)``, so a
given pair always produces the same batches, whatever the device and however the run was interrupted.  The
training loader is *stateful* in Lightning's sense (``state_dict`` / ``load_state_dict``): a checkpoint saved
after batch ``k`` of an epoch records ``(epoch, k + 1)``, and the resumed run continues that epoch with batch
``k + 1`` of the same order, the same augmentation parameters and the same per-batch extras.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import KW_ONLY, dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from datamodules.augment import random_crop_flip, rotate_flip
from datamodules.errors import DatasetError

__all__ = ["BatchAugmentation", "CropFlip", "RotateFlip", "InMemoryBatches", "epoch_generator"]


def epoch_generator(seed: int, epoch: int, stream: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for ``(seed, epoch, stream)`` on ``device``; independent streams for independent draws."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state))


class BatchAugmentation(Protocol):
    """A training augmentation split into a seeded draw of per-sample parameters and a batched application.

    ``draw`` runs once per epoch on the CPU generator (so the parameters never depend on the device);
    ``apply`` runs on the batch's device after transfer, maps uint8 images to pixel values of the same size
    (uint8, or float32 holding 0..255) and removes its parameters from the batch.
    """

    #: Batch keys of the parameters (their presence marks a batch to augment).
    param_keys: tuple[str, ...]

    def draw(self, count: int, generator: torch.Generator) -> dict[str, Tensor]: ...

    def apply(self, images: Tensor, batch: dict[str, Tensor]) -> Tensor: ...

    # Enumerable views (optional, for the exact teacher-output cache, ``kd_modules.teacher_cache``): an augmentation
    # with finitely many outcomes per image numbers them ``0 .. view_count - 1``.
    #   view_count: int | None         -- how many (None: a continuous or too large space, e.g. rotation angles)
    #   view_ids(batch) -> Tensor      -- (B,) int64 view of each sample, from the batch's parameters (not popped)
    #   view_params(view_ids) -> dict  -- the parameters that ``apply`` turns into exactly those views


def _draw_flips(count: int, flip: bool, generator: torch.Generator) -> Tensor:
    """``RandomHorizontalFlip(0.5)``: True with probability 1/2 (all False when flips are off)."""
    if flip:
        return torch.rand(count, generator=generator) < 0.5
    return torch.zeros(count, dtype=torch.bool)


@dataclass(frozen=True)
class CropFlip:
    """Random crop with ``padding`` pixels of padding (``mode`` zero/reflect) plus a horizontal flip."""

    padding: int = 4
    mode: str = "zero"
    flip: bool = True
    param_keys = ("crop_offsets", "flips")

    def __post_init__(self) -> None:
        if self.mode not in ("zero", "reflect"):
            raise DatasetError(f"padding mode {self.mode!r} is not one of: zero, reflect")
        if self.padding < 0:
            raise DatasetError(f"crop padding must be >= 0 pixels, got {self.padding}")

    def draw(self, count: int, generator: torch.Generator) -> dict[str, Tensor]:
        offsets = torch.randint(0, 2 * self.padding + 1, (count, 2), generator=generator, dtype=torch.int16)
        return {"crop_offsets": offsets, "flips": _draw_flips(count, self.flip, generator)}

    def apply(self, images: Tensor, batch: dict[str, Tensor]) -> Tensor:
        offsets, flips = batch.pop("crop_offsets"), batch.pop("flips")
        return random_crop_flip(images, offsets, flips, self.padding, self.mode)  # type: ignore[arg-type]

    # ------------------------------------------------------------------------- enumerable views (teacher cache)
    @property
    def view_count(self) -> int:
        """``(2p+1)^2`` crop offsets, times 2 with flips: CIFAR's 162 = 9 x 9 x 2 views of each image."""
        span = 2 * self.padding + 1
        return span * span * (2 if self.flip else 1)

    def view_ids(self, batch: dict[str, Tensor]) -> Tensor:
        """``(top * (2p+1) + left) * 2 + flip`` (flips on) or ``top * (2p+1) + left`` (off), int64, on the batch's
        device; computed with tensor ops only (no host sync)."""
        offsets = batch["crop_offsets"].long()
        view = offsets[:, 0] * (2 * self.padding + 1) + offsets[:, 1]
        return view * 2 + batch["flips"].long() if self.flip else view

    def view_params(self, view_ids: Tensor) -> dict[str, Tensor]:
        span = 2 * self.padding + 1
        ids = view_ids.long()
        flips = (ids % 2).bool() if self.flip else torch.zeros_like(ids, dtype=torch.bool)
        crop = ids // 2 if self.flip else ids
        offsets = torch.stack([crop // span, crop % span], dim=1).to(torch.int16)
        return {"crop_offsets": offsets, "flips": flips}


@dataclass(frozen=True)
class RotateFlip:
    """``RandomRotation(degrees)`` then ``RandomHorizontalFlip`` (mdistiller's and letKD's Tiny-ImageNet pipeline).

    Angles are uniform in ``[-degrees, degrees]`` and float32, as ``RandomRotation.get_params`` draws them;
    nearest interpolation, zero fill, rotation about the image centre, output the input's size.
    """

    degrees: float = 20.0
    flip: bool = True
    param_keys = ("rotation_angles", "flips")

    def __post_init__(self) -> None:
        if not 0 <= self.degrees <= 180:
            raise DatasetError(f"rotation range must be within [0, 180] degrees, got {self.degrees}")

    def draw(self, count: int, generator: torch.Generator) -> dict[str, Tensor]:
        angles = torch.empty(count, dtype=torch.float32).uniform_(-self.degrees, self.degrees, generator=generator)
        return {"rotation_angles": angles, "flips": _draw_flips(count, self.flip, generator)}

    def apply(self, images: Tensor, batch: dict[str, Tensor]) -> Tensor:
        angles, flips = batch.pop("rotation_angles"), batch.pop("flips")
        return rotate_flip(images, angles, flips if self.flip else None)

    # ------------------------------------------------------------------------- enumerable views (teacher cache)
    @property
    def view_count(self) -> int | None:
        """None while angles are drawn (a continuous range: not enumerable); else 2 (flips) or 1."""
        if self.degrees > 0:
            return None
        return 2 if self.flip else 1

    def view_ids(self, batch: dict[str, Tensor]) -> Tensor:
        flips = batch["flips"].long()
        return flips if self.flip else torch.zeros_like(flips)

    def view_params(self, view_ids: Tensor) -> dict[str, Tensor]:
        ids = view_ids.long()
        flips = ids.bool() if self.flip else torch.zeros_like(ids, dtype=torch.bool)
        return {"rotation_angles": torch.zeros(ids.shape[0], dtype=torch.float32, device=ids.device), "flips": flips}


@dataclass(eq=False, repr=False)
class InMemoryBatches:
    """One pass over ``images``/``labels`` in batches, re-iterable once per epoch.

    Each batch is a dict with ``images`` (uint8, un-augmented), ``labels``, ``indices`` (positions in the split)
    and, when ``augment`` is set, that epoch's augmentation parameters for the batch; the datamodule applies them
    after the batch reaches its device.  ``sample_extra(indices, generator)`` may add keys per batch (CRD's contrast indices).
    """

    images: Tensor
    labels: Tensor
    _: KW_ONLY
    batch_size: int
    shuffle: bool
    drop_last: bool
    seed: int
    current_epoch: Callable[[], int | None]
    augment: BatchAugmentation | None = None
    sample_extra: Callable[[Tensor, torch.Generator], dict[str, Tensor]] | None = None

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        self._own_epoch = 0
        self._served = (-1, 0)  # (epoch, batches handed out in it) of the current pass
        self._resume: tuple[int, int] | None = None

    def __len__(self) -> int:
        count = self.labels.shape[0]
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    def state_dict(self) -> dict[str, int]:
        """Where the current pass is: its epoch and how many batches it handed out (Lightning saves it)."""
        return {"epoch": self._served[0], "batches": self._served[1]}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue the pass of ``state["epoch"]`` after its first ``state["batches"]`` batches (next pass only)."""
        self._resume = (int(state["epoch"]), int(state["batches"]))

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        epoch = self.current_epoch()
        if epoch is None:  # used outside a Trainer: count passes ourselves
            epoch, self._own_epoch = self._own_epoch, self._own_epoch + 1
        resume, self._resume = self._resume, None  # a restored position applies to this pass only
        skip = resume[1] if resume is not None and resume[0] == epoch else 0
        self._served = (epoch, skip)
        count = self.labels.shape[0]
        generator = epoch_generator(self.seed, epoch)
        order = torch.randperm(count, generator=generator) if self.shuffle else torch.arange(count)
        params = self.augment.draw(count, generator) if self.augment is not None else {}
        device = self.images.device
        order_on_device = order.to(device)
        params = {key: value.to(device) for key, value in params.items()}
        # Per-batch extras (CRD indices) are drawn where the labels live, from their own stream of the epoch.
        extra_generator = epoch_generator(self.seed, epoch, 1, self.labels.device) if self.sample_extra else None
        for b in range(len(self)):
            positions = slice(b * self.batch_size, (b + 1) * self.batch_size)
            index = order_on_device[positions]
            extra = {} if extra_generator is None else self.sample_extra(index.to(self.labels.device), extra_generator)
            if b < skip:  # resumed mid-epoch: batches trained before the checkpoint, drawn but not handed out
                continue
            batch = {"images": self.images[index], "labels": self.labels[index], "indices": index}
            batch.update({key: value[positions] for key, value in params.items()})
            batch.update({k: v.to(device) for k, v in extra.items()})
            self._served = (epoch, b + 1)
            yield batch
