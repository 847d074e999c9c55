"""ImageNet's ``deit`` pipeline (the ViT recipes'): RandAugment seeded per sample, random erasing on the device."""

from __future__ import annotations

from pathlib import Path

import torch

from datamodules import ImageNet
from datamodules.augment import normalize


def test_deit_pipeline_is_deterministic_and_erases_training_batches(imagenet_root: Path) -> None:
    def first_batch(**kwargs):  # type: ignore[no-untyped-def]
        dm = ImageNet(root=str(imagenet_root), num_workers=0, batch_size=4, seed=3, pipeline="deit", **kwargs)
        return dm, next(iter(dm.train_dataloader()))

    dm, a = first_batch()
    _, b = first_batch()
    assert torch.equal(a["images"], b["images"]) and a["images"].dtype == torch.uint8  # RandAugment seeded
    assert "erase_seed" in a
    erased = dm.on_after_batch_transfer({k: v.clone() for k, v in a.items()}, 0)
    assert "erase_seed" not in erased
    plain = normalize(a["images"], ImageNet.mean, ImageNet.std)
    changed = (erased["images"] != plain).flatten(1).any(1)
    assert changed.any()  # p 0.25 per image, seeded: this batch has at least one erased image
    again = dm.on_after_batch_transfer({k: v.clone() for k, v in a.items()}, 0)
    assert torch.equal(again["images"], erased["images"])
    val = next(iter(dm.val_dataloader()))
    assert "erase_seed" not in val
