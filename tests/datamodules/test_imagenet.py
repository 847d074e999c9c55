"""ImageNet reader on a generated ImageFolder tree with real JPEGs, and its worker-process loaders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.transforms.functional import pil_to_tensor

from datamodules import DatasetError, ImageNet
from datamodules.augment import normalize
from datamodules.imagenet import imagenet_samples
from datamodules.synthetic import write_imagenet


def test_samples_are_imagefolders(imagenet_root: Path) -> None:
    for split in ("train", "val"):
        samples, classes = imagenet_samples(imagenet_root, split)
        reference = ImageFolder(str(imagenet_root / "imagenet" / split))
        assert samples == reference.samples and classes == reference.classes
    assert len(imagenet_samples(imagenet_root, "train")[0]) == 20


def test_flat_val_points_to_valprep(tmp_path: Path) -> None:
    write_imagenet(tmp_path, classes=2, train_per_class=1, val_per_class=2, flat_val=True)
    with pytest.raises(DatasetError, match=r"val.* is flat \(4 images, no class folders\).*valprep"):
        imagenet_samples(tmp_path, "val")


def test_missing_dataset_says_where(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"train/<wnid>/\*.JPEG and val/<wnid>/\*.JPEG class folders in .*imagenet"):
        imagenet_samples(tmp_path, "train")


def test_val_classes_must_match_train(imagenet_root: Path, tmp_path: Path) -> None:
    shutil.copytree(imagenet_root / "imagenet", tmp_path / "imagenet")
    (tmp_path / "imagenet" / "val" / "n00000001").mkdir()
    with pytest.raises(DatasetError, match=r"differ from train's: not in train \['n00000001'\]"):
        imagenet_samples(tmp_path, "val")


def test_evaluation_batches_are_resize_center_crop(imagenet_root: Path) -> None:
    dm = ImageNet(root=str(imagenet_root), num_workers=0, eval_batch_size=3)
    batch = next(iter(dm.val_dataloader()))
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape == (3, 3, 224, 224)
    path, label = imagenet_samples(imagenet_root, "val")[0][1]
    with Image.open(path) as image:
        expected = pil_to_tensor(T.CenterCrop(224)(T.Resize(256)(image.convert("RGB"))))
    assert torch.equal(batch["images"][1], expected) and batch["labels"][1] == label
    normalised = dm.on_after_batch_transfer(batch, 0)["images"]
    assert torch.allclose(normalised[1], normalize(expected[None], ImageNet.mean, ImageNet.std)[0])


def test_training_batches_with_crd_indices(imagenet_root: Path) -> None:
    dm = ImageNet(root=str(imagenet_root), num_workers=0, batch_size=8, seed=0, contrast_k=40)
    dm.setup("fit")
    assert dm.num_train_samples == 20
    batches = [dm.on_after_batch_transfer(b, 0) for b in dm.train_dataloader()]
    assert [b["images"].shape[0] for b in batches] == [8, 8, 4]
    assert batches[0]["images"].shape[1:] == (3, 224, 224) and batches[0]["images"].dtype == torch.float32
    indices = torch.cat([b["indices"] for b in batches])
    assert torch.equal(indices.sort().values, torch.arange(20))
    labels = torch.tensor([label for _, label in imagenet_samples(imagenet_root, "train")[0]])
    for batch in batches:
        contrast = batch["contrast_indices"]
        assert contrast.shape == (batch["indices"].shape[0], 41)
        assert torch.equal(contrast[:, 0], batch["indices"])  # exact mode
        assert (labels[contrast[:, 1:]] != batch["labels"][:, None]).all()
    # 40 negatives from 15 other-class images: with replacement, as the reference ImageNet sampler draws them.
    assert all(len(set(row.tolist())) <= 15 for row in batches[0]["contrast_indices"][:, 1:])


def test_train_eval_pass_is_deterministic_and_unaugmented(imagenet_root: Path) -> None:
    dm = ImageNet(root=str(imagenet_root), num_workers=0, eval_batch_size=20)
    first, second = next(iter(dm.train_eval_dataloader())), next(iter(dm.train_eval_dataloader()))
    assert torch.equal(first["indices"], torch.arange(20)) and torch.equal(first["images"], second["images"])


def test_norm_paper_pipeline_and_bad_names() -> None:
    assert ImageNet(pipeline="norm_paper").train_crop == "resize_random"
    with pytest.raises(DatasetError, match="unknown ImageNet backend 'dali'; valid: torchvision"):
        ImageNet(backend="dali")
    with pytest.raises(DatasetError, match="unknown imagenet pipeline 'ffcv'; valid: torchvision, norm_paper"):
        ImageNet(pipeline="ffcv")  # type: ignore[arg-type]
