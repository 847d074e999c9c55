"""Every dataset: registry, generated fixture through the real reader, batch format, reproducibility."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from datamodules import DATASETS, DatasetError, KDDataModule, datamodule_for

FIXTURE_ROOTS = {
    "cifar100": "cifar_root",
    "tiny-imagenet": "tiny_zip_root",
    "imagenet": "imagenet_root",
    "fashion-mnist": "fashion_root",
}
INPUT_SHAPES = {
    "cifar100": (3, 32, 32),
    "tiny-imagenet": (3, 64, 64),
    "imagenet": (3, 224, 224),
    "fashion-mnist": (3, 32, 32),
}


#: Training batch sizes giving a few batches per epoch on each fixture (1000, 80, 20 and 100 images).
BATCH_SIZES = {"cifar100": 250, "tiny-imagenet": 20, "imagenet": 8, "fashion-mnist": 25}


def _datamodule(name: str, root: Path, **kwargs: Any) -> KDDataModule:
    if name == "imagenet":
        kwargs.setdefault("num_workers", 0)
    kwargs.setdefault("batch_size", BATCH_SIZES[name])
    return DATASETS[name](root=str(root), eval_batch_size=250, **kwargs)  # type: ignore[call-arg]


def test_registry_names() -> None:
    assert set(DATASETS) == {"cifar100", "tiny-imagenet", "imagenet", "fashion-mnist"}
    assert all(cls.dataset_name == name for name, cls in DATASETS.items())
    with pytest.raises(DatasetError, match="unknown dataset 'mnist'; valid: cifar100, fashion-mnist, imagenet, tiny"):
        datamodule_for("mnist")


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_write_fixture_is_read_by_the_real_reader(name: str, tmp_path: Path) -> None:
    from datamodules.synthetic import write_fixture

    cls = DATASETS[name]
    write_fixture(name, str(tmp_path))
    dm = _datamodule(name, tmp_path, seed=0, batch_size=8)
    dm.setup("fit")
    assert 0 < dm.num_train_samples < cls.train_size
    assert not cls.is_available(str(tmp_path))  # a fixture is never taken for the full dataset
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert set(batch) == {"images", "labels", "indices"}
    assert batch["images"].shape == (8, *INPUT_SHAPES[name]) and batch["images"].dtype == torch.float32
    assert (
        batch["labels"].dtype == torch.int64 and 0 <= batch["labels"].min() and batch["labels"].max() < cls.num_classes
    )
    evaluation = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert evaluation["images"].shape[1:] == INPUT_SHAPES[name]
    train_eval = [dm.on_after_batch_transfer(b, 0) for b in dm.train_eval_dataloader()]
    assert torch.equal(torch.cat([b["indices"] for b in train_eval]), torch.arange(dm.num_train_samples))


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_same_seed_and_epoch_give_identical_batches(name: str, request: pytest.FixtureRequest) -> None:
    root = request.getfixturevalue(FIXTURE_ROOTS[name])

    def epoch(seed: int, number: int, **kwargs: Any) -> list[dict[str, torch.Tensor]]:
        dm = _datamodule(name, root, seed=seed, contrast_k=5, **kwargs)
        dm.setup("fit")
        loader = dm.train_dataloader()
        dm._current_epoch = lambda: number  # type: ignore[method-assign]
        if hasattr(loader, "current_epoch"):
            loader.current_epoch = lambda: number
        else:  # ImageNet's DataLoader: the epoch comes from its key sampler
            loader.sampler.current_epoch = lambda: number
        return [dm.on_after_batch_transfer(b, 0) for b in loader]

    extra = {"num_workers": 2} if name == "imagenet" else {}
    a, b = epoch(1, 3), epoch(1, 3, **extra)  # ImageNet: also independent of the number of worker processes
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys() == {"images", "labels", "indices", "contrast_indices"}
        assert all(torch.equal(x[k], y[k]) for k in x), "same seed and epoch gave different batches"
    assert not torch.equal(a[0]["indices"], epoch(2, 3)[0]["indices"]), "another trial must get another order"
    other_epoch = epoch(1, 4)
    assert not torch.equal(a[0]["indices"], other_epoch[0]["indices"])
