"""The teacher class-mean stage: correct on a fixture with a known answer, computed once per key, then reused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from datamodules.base import InMemoryDataModule
from datamodules.loaders import CropFlip
from kd_modules.class_means import teacher_class_means
from models import FeatureOutput

NUM_CLASSES = 10
PER_CLASS = 3
MEAN, STD = 0.5, 0.25


class ConstantImages(InMemoryDataModule):
    """Every training image of class k is the constant 20 k (all channels); test split = train split."""

    dataset_name = "constant-images"
    num_classes = NUM_CLASSES
    train_size = NUM_CLASSES * PER_CLASS
    mean = (MEAN, MEAN, MEAN)
    std = (STD, STD, STD)

    def __init__(self, missing_class: int | None = None) -> None:
        super().__init__(root="unused", batch_size=4, eval_batch_size=7, seed=0, on_device=False)
        self.missing_class = missing_class

    def load_split(self, split: str) -> tuple[Tensor, Tensor]:
        labels = torch.arange(NUM_CLASSES).repeat(PER_CLASS)
        if self.missing_class is not None:
            labels = labels[labels != self.missing_class]
        images = (labels * 20).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 32, 32).contiguous()
        return images, labels

    def train_augmentation(self) -> CropFlip:
        return CropFlip(padding=4, mode="zero", flip=True)


class CenterPixelTeacher(nn.Module):
    """A fake teacher: embedding = (centre pixel, 2 x centre pixel) of the normalised image; counts its forwards.

    A random crop with 4 pixels of padding and a flip never moves a pixel of the padding onto the centre of a
    32 x 32 image, so the embedding of an augmented image equals that of the clean one: the class means are known.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.forwards = 0

    def forward_features(self, x: Tensor) -> FeatureOutput:
        self.forwards += 1
        centre = x[:, :, 16, 16] * self.scale
        embedding = torch.cat([centre, 2 * centre], dim=1)
        return FeatureOutput(x, [x], [x], x, embedding, embedding)


def _expected_embedding_means() -> Tensor:
    value = (torch.arange(NUM_CLASSES) * 20 / 255 - MEAN) / STD
    return torch.stack([value, value, value, 2 * value, 2 * value, 2 * value], dim=1)


@pytest.fixture()
def checkpoints(tmp_path: Path) -> tuple[str, str]:
    first, second = tmp_path / "teacher_a.pth", tmp_path / "teacher_b.pth"
    torch.save({"w": torch.ones(2)}, first)
    torch.save({"w": torch.zeros(2)}, second)
    return str(first), str(second)


@pytest.mark.parametrize("transform", ["train", "clean"])
def test_means_are_the_known_per_class_averages(transform: str, tmp_path: Path, checkpoints) -> None:  # type: ignore[no-untyped-def]
    means = teacher_class_means(
        CenterPixelTeacher(), checkpoints[0], ConstantImages(), NUM_CLASSES, transform=transform, root=str(tmp_path)
    )  # type: ignore[arg-type]
    torch.testing.assert_close(means["embedding"], _expected_embedding_means())
    assert means["counts"].tolist() == [PER_CLASS] * NUM_CLASSES
    if transform == "clean":  # the pooled stage tap of a constant image is the constant itself
        torch.testing.assert_close(means["stage1"], _expected_embedding_means()[:, :3])


def test_computed_once_per_teacher_data_and_transform(tmp_path: Path, checkpoints) -> None:  # type: ignore[no-untyped-def]
    teacher, data = CenterPixelTeacher(), ConstantImages()
    batches = -(-NUM_CLASSES * PER_CLASS // data.eval_batch_size)  # one pass = 5 forwards of 7 images

    def means(checkpoint: str, transform: str = "train", datamodule: InMemoryDataModule = data) -> Tensor:
        result = teacher_class_means(
            teacher, checkpoint, datamodule, NUM_CLASSES, transform=transform, root=str(tmp_path)
        )  # type: ignore[arg-type]
        return result["embedding"]

    first = means(checkpoints[0])
    assert teacher.forwards == batches
    again = means(checkpoints[0])
    assert teacher.forwards == batches, "the cached artefact must be reused"
    assert torch.equal(first, again)
    means(checkpoints[0], "clean")
    assert teacher.forwards == 2 * batches, "another transform is another artefact"
    means(checkpoints[1])
    assert teacher.forwards == 3 * batches, "another teacher checkpoint is another artefact"
    means(checkpoints[0], datamodule=ConstantImages(missing_class=None))
    assert teacher.forwards == 3 * batches, "the same data (by content) reuses the artefact"


def test_train_transform_is_augmented_and_reproducible(tmp_path: Path, checkpoints) -> None:  # type: ignore[no-untyped-def]
    def stem_means(seed: int, transform: str, cache: str) -> Tensor:
        result = teacher_class_means(
            CenterPixelTeacher(),
            checkpoints[0],
            ConstantImages(),
            NUM_CLASSES,
            transform=transform,
            seed=seed,
            root=str(tmp_path / cache),
        )  # type: ignore[arg-type]
        return result["stem"]

    clean = stem_means(0, "clean", "a")
    augmented = stem_means(0, "train", "b")
    # The zero padding of the random crops enters the pooled stem (it is not a centre pixel).
    assert not torch.allclose(augmented, clean)
    assert torch.equal(augmented, stem_means(0, "train", "c")), "same seed, same views, same means"
    assert not torch.equal(augmented, stem_means(1, "train", "d"))


def test_a_class_without_images_is_a_clear_error(tmp_path: Path, checkpoints) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=r"no image of 1 of 10 classes \(3\)"):
        teacher_class_means(
            CenterPixelTeacher(), checkpoints[0], ConstantImages(missing_class=3), NUM_CLASSES, root=str(tmp_path)
        )  # type: ignore[arg-type]


def test_unknown_transform_names_the_choices(tmp_path: Path, checkpoints) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="unknown class-mean transform 'val'; valid: train, clean"):
        teacher_class_means(
            CenterPixelTeacher(), checkpoints[0], ConstantImages(), NUM_CLASSES, transform="val", root=str(tmp_path)
        )  # type: ignore[arg-type]
