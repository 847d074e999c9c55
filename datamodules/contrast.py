"""CRD's instance sampling (Tian et al., ICLR'20): for each training sample, its positive and K negatives.

RepDistiller's ``CIFAR100InstanceSample`` returns ``sample_idx = [pos] + K negatives`` per image: the positive is
the image's own index (mode ``exact``) or a random image of the same class (``relax``); the negatives are drawn
**without replacement** from the images of all *other* classes (with replacement only when K exceeds that pool,
as its ImageNet/Tiny-ImageNet variants always do).  Here the draw is batched and comes from the run's seeded
generator, so it is reproducible.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["ContrastSampler"]


class ContrastSampler:
    """Draws ``contrast_indices`` (B, K+1): column 0 the positive, columns 1..K negatives of other classes."""

    def __init__(self, labels: Tensor, k: int, mode: Literal["exact", "relax"] = "exact") -> None:
        if mode not in ("exact", "relax"):
            raise ValueError(f"contrast mode {mode!r} is not one of: exact, relax")
        if k <= 0:
            raise ValueError(f"the number of CRD negatives must be positive, got {k}")
        self.labels = labels.cpu()
        self.k = k
        self.mode = mode
        self.num_classes = int(self.labels.max()) + 1

    def __call__(self, indices: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        indices = indices.cpu()
        labels = self.labels[indices]
        other_class = self.labels[None, :] != labels[:, None]  # (B, N): the negative pool of each sample
        pool = int(other_class.sum(1).min())
        weights = other_class.to(torch.float32)
        negatives = torch.multinomial(weights, self.k, replacement=self.k > pool, generator=generator)
        if self.mode == "exact":
            positives = indices
        else:
            same_class = (~other_class).to(torch.float32)
            positives = torch.multinomial(same_class, 1, generator=generator)[:, 0]
        return {"contrast_indices": torch.cat([positives[:, None], negatives], dim=1)}
