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


def test_split_fingerprint_and_the_class_mean_pass(imagenet_root: Path, tmp_path: Path) -> None:
    import shutil

    from kd_modules.offline import training_data_fingerprint

    dm = ImageNet(root=str(imagenet_root), num_workers=0, eval_batch_size=5, seed=0)
    assert training_data_fingerprint(dm) == ImageNet(root=str(imagenet_root)).split_fingerprint("train")
    copy = tmp_path / "copy"
    shutil.copytree(imagenet_root, copy)
    moved = sorted((copy / "imagenet" / "train").glob("*/*.JPEG"))[0]
    other = sorted(p for p in (copy / "imagenet" / "train").iterdir() if p != moved.parent)[0]
    moved.rename(other / moved.name)  # one image relabelled
    assert ImageNet(root=str(copy)).split_fingerprint("train") != dm.split_fingerprint("train")
    # One augmented view per image, in split order, the same for the same seed, another for another seed.
    first = [b["labels"] for b in dm.class_mean_dataloader(seed=1)]
    assert torch.cat(first).tolist() == [label for _, label in dm.backend.samples("train")]
    a = next(iter(dm.class_mean_dataloader(seed=1)))["images"]
    b = next(iter(dm.class_mean_dataloader(seed=1)))["images"]
    c = next(iter(dm.class_mean_dataloader(seed=2)))["images"]
    assert torch.equal(a, b) and not torch.equal(a, c)
