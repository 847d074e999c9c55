"""CRD's instance sampling (Tian et al., ICLR'20): for each training sample, its positive and K negatives.

RepDistiller's ``CIFAR100InstanceSample`` returns ``sample_idx = [pos] + K negatives`` per image: the positive is
the image's own index (mode ``exact``) or a random image of the same class (``relax``); the negatives are drawn
**without replacement** from the images of all *other* classes (with replacement only when K exceeds that pool).
The ImageNet and Tiny-ImageNet variants (RepDistiller ``ImageFolderSample``, mdistiller
``ImageFolderInstanceSample``) always draw **with replacement** (``replacement=True`` here).  Here the draw is
batched and comes from the run's seeded generator, so it is reproducible.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["ContrastSampler"]


class ContrastSampler:
    """Draws ``contrast_indices`` (B, K+1): column 0 the positive, columns 1..K negatives of other classes.

    Args:
        labels: (N,) class of every training sample.
        k: negatives per sample.
        mode: ``exact`` (the positive is the sample itself) or ``relax`` (a random sample of its class).
        replacement: draw negatives with replacement (the reference ImageNet/Tiny-ImageNet samplers); default:
            only when ``k`` exceeds the smallest negative pool (the reference CIFAR sampler).
    """

    def __init__(
        self,
        labels: Tensor,
        k: int,
        mode: Literal["exact", "relax"] = "exact",
        replacement: bool | None = None,
    ) -> None:
        if mode not in ("exact", "relax"):
            raise ValueError(f"contrast mode {mode!r} is not one of: exact, relax")
        if k <= 0:
            raise ValueError(f"the number of CRD negatives must be positive, got {k}")
        self.labels = labels.cpu()
        self.k = k
        self.mode = mode
        self.num_classes = int(self.labels.max()) + 1
        # Samples sorted by class: class c occupies positions [start[c], start[c] + count[c]) of ``by_class``.
        self.by_class = torch.argsort(self.labels, stable=True)
        self.count = torch.bincount(self.labels, minlength=self.num_classes)
        self.start = torch.cumsum(self.count, 0) - self.count
        smallest_pool = int(self.labels.shape[0] - self.count[self.count > 0].max())
        self.replacement = (k > smallest_pool) if replacement is None else replacement

    def __call__(self, indices: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        indices = indices.cpu()
        labels = self.labels[indices]
        if self.replacement:
            negatives = self._negatives_with_replacement(labels, generator)
        else:
            other_class = (self.labels[None, :] != labels[:, None]).to(torch.float32)  # (B, N) negative pools
            negatives = torch.multinomial(other_class, self.k, replacement=False, generator=generator)
        if self.mode == "exact":
            positives = indices
        else:
            offset = (torch.rand(labels.shape[0], generator=generator, dtype=torch.float64) * self.count[labels]).long()
            positives = self.by_class[self.start[labels] + offset]
        return {"contrast_indices": torch.cat([positives[:, None], negatives], dim=1)}

    def _negatives_with_replacement(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        """Uniform draws from the other classes: a uniform position in the class-sorted order, skipping the block
        of the sample's own class (O(B*K), no (B, N) matrix: usable on ImageNet's 1.28M images)."""
        pool = (self.labels.shape[0] - self.count[labels])[:, None]  # (B, 1)
        position = (torch.rand(labels.shape[0], self.k, generator=generator, dtype=torch.float64) * pool).long()
        start, count = self.start[labels][:, None], self.count[labels][:, None]
        position = position + (position >= start) * count
        return self.by_class[position]
