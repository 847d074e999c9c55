"""Tiny-ImageNet reader on generated fixtures in the official folder and zip layouts, and its datamodule."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import datamodules.tiny_imagenet as tiny
from datamodules import DatasetError, TinyImageNet
from datamodules.tiny_imagenet import find_tiny_imagenet, read_tiny_imagenet_split, tiny_imagenet_index


def _class_colours(classes: int) -> np.ndarray:
    """Mean colour of each synthetic class: (start + end) / 2 of the generator's per-class gradient."""
    return np.random.default_rng(12345).integers(30, 226, size=(classes, 3, 2)).mean(2)


def test_reader_reads_the_official_folder(tiny_root: Path) -> None:
    images, labels = read_tiny_imagenet_split(tiny_root, "train", use_cache=False)
    assert images.shape == (80, 3, 64, 64) and images.dtype == torch.uint8
    assert torch.equal(labels, torch.arange(10).repeat_interleave(8))  # ImageFolder order: by class, then file
    wnids = sorted((tiny_root / "tiny-imagenet-200" / "wnids.txt").read_text().split())
    first = tiny_imagenet_index(tiny_root, "train")[0][0]
    assert first.startswith(f"train/{wnids[0]}/images/")  # class index = position in sorted wnids.txt


def test_val_labels_come_from_val_annotations(tiny_root: Path, tmp_path: Path) -> None:
    images, labels = read_tiny_imagenet_split(tiny_root, "val", use_cache=False)
    assert images.shape == (40, 3, 64, 64) and torch.equal(labels.bincount(), torch.full((10,), 4))
    # The files are numbered in shuffled class order, so only the annotations can give the labels; each image's
    # mean colour identifies the class it was drawn from (grayscale files carry no colour and are skipped).
    colour = images.double().mean((2, 3)).numpy()
    grayscale = (images[:, 0] == images[:, 1]).flatten(1).all(1).numpy()
    drawn_from = np.linalg.norm(colour[:, None] - _class_colours(10)[None], axis=2).argmin(1)
    assert grayscale.sum() < 10 and (drawn_from[~grayscale] == labels.numpy()[~grayscale]).all()
    # Relabel two classes in the annotation file: the labels follow it (and the cache is not reused).
    copy = tmp_path / "tiny"
    shutil.copytree(tiny_root, copy)
    annotations = copy / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    wnids = sorted((copy / "tiny-imagenet-200" / "wnids.txt").read_text().split())
    text = annotations.read_text().replace(wnids[0], "SWAP").replace(wnids[1], wnids[0]).replace("SWAP", wnids[1])
    annotations.write_text(text)
    index = dict(tiny_imagenet_index(tiny_root, "val"))
    swapped = dict(tiny_imagenet_index(copy, "val"))
    swap = {0: 1, 1: 0}
    assert all(swapped[name] == swap.get(label, label) for name, label in index.items())


def test_zip_and_folder_give_the_same_split(tiny_root: Path, tiny_zip_root: Path) -> None:
    assert find_tiny_imagenet(tiny_zip_root).kind == "zip"
    for split in ("train", "val"):
        from_folder = read_tiny_imagenet_split(tiny_root, split, use_cache=False)
        from_zip = read_tiny_imagenet_split(tiny_zip_root, split, use_cache=False)
        assert torch.equal(from_folder[0], from_zip[0]) and torch.equal(from_folder[1], from_zip[1])


def test_grayscale_files_become_rgb(tiny_root: Path) -> None:
    images, _ = read_tiny_imagenet_split(tiny_root, "train", use_cache=False)
    grayscale = (images[:, 0] == images[:, 1]).flatten(1).all(1) & (images[:, 1] == images[:, 2]).flatten(1).all(1)
    assert grayscale.sum() == len(range(3, 80, 7))  # the writer stores every 7th training image as grayscale


def test_parallel_decoding_equals_serial(tiny_root: Path, tiny_zip_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiny, "_DECODE_CHUNK", 16)  # 5 chunks over 2 worker processes
    for root in (tiny_root, tiny_zip_root):
        source = find_tiny_imagenet(root)
        members = [m for m, _ in tiny_imagenet_index(root, "train")]
        serial = tiny.decode_images(source, members, workers=1)
        assert np.array_equal(tiny.decode_images(source, members, workers=2), serial), source.kind


def test_decoded_split_is_cached_and_reused(
    tiny_zip_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = read_tiny_imagenet_split(tiny_zip_root, "val", cache_dir=str(tmp_path))
    assert len(list(tmp_path.glob("val-*.pt"))) == 1

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again instead of loading the cache")

    monkeypatch.setattr(tiny, "decode_images", no_decoding)
    second = read_tiny_imagenet_split(tiny_zip_root, "val", cache_dir=str(tmp_path))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_default_cache_lives_beside_the_data(tiny_root: Path) -> None:
    read_tiny_imagenet_split(tiny_root, "val")
    assert list((tiny_root / "tiny-imagenet-200.kdbench-cache").glob("val-*.pt"))


def test_missing_dataset_says_what_is_expected_where(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"tiny-imagenet-200/wnids.txt.*val_annotations.txt.*tiny-imagenet-200.zip"):
        read_tiny_imagenet_split(tmp_path, "train")


def test_corrupt_image_is_named(tiny_root: Path, tmp_path: Path) -> None:
    copy = tmp_path / "tiny"
    shutil.copytree(tiny_root / "tiny-imagenet-200", copy / "tiny-imagenet-200")
    victim = sorted((copy / "tiny-imagenet-200" / "val" / "images").iterdir())[3]
    victim.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DatasetError, match=rf"{victim.name} is corrupt"):
        read_tiny_imagenet_split(copy, "val", use_cache=False)


def test_bad_annotation_line_is_named(tiny_root: Path, tmp_path: Path) -> None:
    copy = tmp_path / "tiny"
    shutil.copytree(tiny_root / "tiny-imagenet-200", copy / "tiny-imagenet-200")
    annotations = copy / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    annotations.write_text(annotations.read_text() + "val_999.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(DatasetError, match=r"line 41 is corrupt.*n99999999"):
        read_tiny_imagenet_split(copy, "val", use_cache=False)


def test_truncated_zip_and_unreadable_cache(tiny_zip_root: Path, tmp_path: Path) -> None:
    data = (tiny_zip_root / "tiny-imagenet-200.zip").read_bytes()
    (tmp_path / "tiny-imagenet-200.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"tiny-imagenet-200.zip is corrupt \(not a readable zip archive\)"):
        read_tiny_imagenet_split(tmp_path, "val")
    cache = tmp_path / "cache"
    expected = read_tiny_imagenet_split(tiny_zip_root, "val", cache_dir=str(cache))
    for path in cache.glob("val-*.pt"):
        path.write_bytes(b"garbage")  # e.g. a disk that filled up: rebuilt, not fatal
    again = read_tiny_imagenet_split(tiny_zip_root, "val", cache_dir=str(cache))
    assert torch.equal(expected[0], again[0])


def test_zip_without_tiny_imagenet_is_rejected(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "tiny-imagenet-200.zip", "w") as archive:
        archive.writestr("something/else.txt", "x")
    with pytest.raises(DatasetError, match="not the Tiny-ImageNet zip"):
        find_tiny_imagenet(tmp_path)


def test_datamodule_batches_and_halves(tiny_zip_root: Path) -> None:
    dm = TinyImageNet(root=str(tiny_zip_root), batch_size=16, seed=0, contrast_k=30, val_split="halves")
    dm.setup("fit")
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch["images"].shape == (16, 3, 64, 64) and batch["images"].dtype == torch.float32
    assert set(batch) == {"images", "labels", "indices", "contrast_indices"}
    _, labels = dm.split("train")
    negatives = batch["contrast_indices"][:, 1:]
    assert (labels[negatives] != batch["labels"][:, None]).all()
    # 30 draws from a pool of 72 with replacement (mdistiller's Tiny sampler): some row repeats an index.
    assert any(len(set(row.tolist())) < 30 for row in negatives)
    # letKD-style halves of the official val split: 2 + 2 of the 4 images per class, disjoint.
    val, test = next(iter(dm.val_dataloader())), next(iter(dm.test_dataloader()))
    assert torch.equal(val["labels"].bincount(), torch.full((10,), 2))
    assert torch.equal(test["labels"].bincount(), torch.full((10,), 2))
    full_images, _ = dm.split("test")
    halves = torch.cat([val["images"], test["images"]]).flatten(1)
    assert torch.equal(halves.sort(0).values, full_images.flatten(1).sort(0).values)


def test_pipeline_choice_and_overrides() -> None:
    assert TinyImageNet(pipeline="letkd").rotation_degrees == 20.0
    assert TinyImageNet(pipeline="none").train_augmentation() is None
    assert TinyImageNet(rotation_degrees=10).train_augmentation().degrees == 10.0  # type: ignore[union-attr]
    with pytest.raises(DatasetError, match="unknown tiny-imagenet pipeline 'dot'; valid: mdistiller, letkd, none"):
        TinyImageNet(pipeline="dot")  # type: ignore[arg-type]
