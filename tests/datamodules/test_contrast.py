"""CRD's instance sampling: positives and without-replacement negatives from other classes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from scipy import stats

from datamodules import CIFAR100
from datamodules.contrast import ContrastSampler


@pytest.mark.parametrize("mode", ["exact", "relax"])
def test_contrast_indices_in_training_batches(cifar_root: Path, mode: str) -> None:
    dm = CIFAR100(root=str(cifar_root), batch_size=32, seed=0, contrast_k=200, contrast_mode=mode)
    dm.setup("fit")
    _, labels = dm.split("train")
    batch = next(iter(dm.train_dataloader()))
    contrast = batch["contrast_indices"]
    assert contrast.shape == (32, 201) and contrast.dtype == torch.int64
    if mode == "exact":
        assert torch.equal(contrast[:, 0], batch["indices"])
    else:
        assert torch.equal(labels[contrast[:, 0]], batch["labels"])
    negatives = contrast[:, 1:]
    assert (labels[negatives] != batch["labels"][:, None]).all(), "a negative of the sample's own class"
    assert all(len(set(row.tolist())) == 200 for row in negatives), "negatives must be drawn without replacement"
    # Evaluation batches do not carry them.
    assert "contrast_indices" not in next(iter(dm.val_dataloader()))


def test_with_replacement_only_when_the_pool_is_too_small() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2])
    sampler = ContrastSampler(labels, k=4)
    out = sampler(torch.tensor([0, 4]), torch.Generator().manual_seed(0))["contrast_indices"]
    assert (labels[out[0, 1:]] != 0).all() and (labels[out[1, 1:]] != 2).all()


def test_bad_mode_is_named() -> None:
    with pytest.raises(ValueError, match="'loose' is not one of: exact, relax"):
        ContrastSampler(torch.tensor([0, 1]), k=1, mode="loose")  # type: ignore[arg-type]


@pytest.mark.parametrize("replacement", [False, True])
def test_negatives_are_uniform_over_the_other_classes(replacement: bool) -> None:
    labels = torch.arange(100) % 5  # pools of 80 other-class samples
    sampler = ContrastSampler(labels, k=30, replacement=replacement)
    draws = sampler(torch.zeros(2000, dtype=torch.long), torch.Generator().manual_seed(0))["contrast_indices"][:, 1:]
    if not replacement:
        assert all(len(set(row.tolist())) == 30 for row in draws[:50])
    counts = torch.bincount(draws.flatten(), minlength=100)
    assert (counts[labels == 0] == 0).all()
    assert stats.chisquare(counts[labels != 0].numpy()).pvalue > 1e-3


def test_too_many_distinct_negatives_is_refused() -> None:
    with pytest.raises(
        ValueError, match="cannot draw 4 distinct negatives: the smallest pool of other-class samples is 3"
    ):
        ContrastSampler(torch.tensor([0, 0, 1, 1, 2]), k=4, replacement=False)
