"""Batches sliced from a split held in memory (host or accelerator) as uint8 tensors.

Per-epoch shuffling and the augmentation parameters come from a generator seeded with ``(seed, epoch)``, so a
given pair always produces the same batches, whatever the device and however the run was interrupted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["CropFlip", "InMemoryBatches", "epoch_generator"]


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for ``(seed, epoch, stream)``; independent streams for independent draws."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


@dataclass(frozen=True)
class CropFlip:
    """Random crop with ``padding`` pixels of padding (``mode`` zero/reflect) plus a horizontal flip."""

    padding: int = 4
    mode: str = "zero"
    flip: bool = True

    def draw(self, count: int, generator: torch.Generator) -> dict[str, Tensor]:
        offsets = torch.randint(0, 2 * self.padding + 1, (count, 2), generator=generator, dtype=torch.int16)
        if self.flip:
            flips = torch.rand(count, generator=generator) < 0.5
        else:
            flips = torch.zeros(count, dtype=torch.bool)
        return {"crop_offsets": offsets, "flips": flips}


class InMemoryBatches:
    """One pass over ``images``/``labels`` in batches, re-iterable once per epoch.

    Each batch is a dict with ``images`` (uint8, un-augmented), ``labels``, ``indices`` (positions in the split)
    and, when ``augment`` is set, that epoch's augmentation parameters for the batch; the datamodule applies them
    after the batch reaches its device.  ``sample_extra(indices, generator)`` may add keys per batch (CRD's contrast indices).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        seed: int,
        current_epoch: Callable[[], int | None],
        augment: CropFlip | None = None,
        sample_extra: Callable[[Tensor, torch.Generator], dict[str, Tensor]] | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.current_epoch = current_epoch
        self.augment = augment
        self.sample_extra = sample_extra
        self._own_epoch = 0

    def __len__(self) -> int:
        count = self.labels.shape[0]
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    def _epoch(self) -> int:
        epoch = self.current_epoch()
        if epoch is None:  # used outside a Trainer: count passes ourselves
            epoch = self._own_epoch
            self._own_epoch += 1
        return epoch

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        epoch = self._epoch()
        count = self.labels.shape[0]
        generator = epoch_generator(self.seed, epoch)
        order = torch.randperm(count, generator=generator) if self.shuffle else torch.arange(count)
        params = self.augment.draw(count, generator) if self.augment is not None else {}
        device = self.images.device
        order_on_device = order.to(device)
        for b in range(len(self)):
            positions = slice(b * self.batch_size, (b + 1) * self.batch_size)
            index = order_on_device[positions]
            batch = {"images": self.images[index], "labels": self.labels[index], "indices": index}
            for key, value in params.items():
                batch[key] = value[positions].to(device)
            if self.sample_extra is not None:
                batch.update({k: v.to(device) for k, v in self.sample_extra(order[positions], generator).items()})
            yield batch
