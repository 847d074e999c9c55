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

    The draw runs on the device of ``labels`` with the generator it is given (a device generator for a split held
    on an accelerator), so a CRD step does not wait for the host.  Without replacement, each row is an independent
    uniformly random K-subset of its pool (the K smallest of uniform random keys, as ``np.random.choice(...,
    replace=False)`` draws it in distribution); with replacement, K independent uniform draws.

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
        self.labels = labels
        self.k = k
        self.mode = mode
        self.num_classes = int(labels.max()) + 1
        # Samples sorted by class: class c occupies positions [start[c], start[c] + count[c]) of ``by_class``, and
        # the negative pool of class c is every position outside that block.
        self.by_class = torch.argsort(labels, stable=True)
        self.count = torch.bincount(labels, minlength=self.num_classes)
        self.start = torch.cumsum(self.count, 0) - self.count
        present = self.count[self.count > 0]
        self.largest_pool = int(labels.shape[0] - present.min())
        smallest_pool = int(labels.shape[0] - present.max())
        self.replacement = (k > smallest_pool) if replacement is None else replacement
        if not self.replacement and k > smallest_pool:
            raise ValueError(
                f"cannot draw {k} distinct negatives: the smallest pool of other-class samples is {smallest_pool}"
            )

    def __call__(self, indices: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        device = self.labels.device
        indices = indices.to(device)
        labels = self.labels[indices]
        pool = (self.labels.shape[0] - self.count[labels])[:, None]  # (B, 1) size of each sample's negative pool
        if self.replacement:
            uniform = torch.rand(labels.shape[0], self.k, generator=generator, device=device, dtype=torch.float64)
            position = (uniform * pool).long()
        else:
            keys = torch.rand(labels.shape[0], self.largest_pool, generator=generator, device=device)
            keys.masked_fill_(torch.arange(self.largest_pool, device=device) >= pool, 2.0)  # beyond this pool
            position = keys.topk(self.k, dim=1, largest=False, sorted=False).indices
        start, count = self.start[labels][:, None], self.count[labels][:, None]
        negatives = self.by_class[position + (position >= start) * count]  # skip the sample's own class block
        if self.mode == "exact":
            positives = indices
        else:
            uniform = torch.rand(labels.shape[0], generator=generator, device=device, dtype=torch.float64)
            positives = self.by_class[self.start[labels] + (uniform * self.count[labels]).long()]
        return {"contrast_indices": torch.cat([positives[:, None], negatives], dim=1)}
