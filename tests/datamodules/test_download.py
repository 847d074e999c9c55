"""Dataset downloads against a local HTTP server on 127.0.0.1 (Tiny-ImageNet's official zip layout), offline
errors, and ImageNet's manual steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from datamodules import TinyImageNet
from datamodules import download as data_download
from datamodules.errors import DatasetError
from datamodules.synthetic import write_tiny_imagenet
from datamodules.tiny_imagenet import read_tiny_imagenet_split


@pytest.fixture
def tiny_zip(http_server, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The official zip layout written by the fixture writer, served at /tiny-imagenet-200.zip."""
    archive = write_tiny_imagenet(tmp_path / "source", classes=5, train_per_class=3, val_per_class=4, as_zip=True)
    http_server.files["/tiny-imagenet-200.zip"] = archive.read_bytes()
    return archive, http_server.url("/tiny-imagenet-200.zip")


def test_tiny_imagenet_zip_is_fetched_extracted_and_val_sorted_into_class_folders(tiny_zip, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    archive, url = tiny_zip
    root = tmp_path / "data"
    folder = data_download.download_tiny_imagenet(root, url=url)
    assert folder == root / "tiny-imagenet-200" and not (root / "tiny-imagenet-200.zip").exists()
    assert not (folder / "val" / "images").exists()
    annotations = (folder / "val" / "val_annotations.txt").read_text().splitlines()
    for line in annotations:
        name, wnid = line.split("\t")[:2]
        assert (folder / "val" / wnid / "images" / name).is_file()
    # The sorted tree reads exactly as the official zip does: same images, same labels, same order.
    for split in ("train", "val"):
        expected = read_tiny_imagenet_split(archive.parent, split, use_cache=False, workers=1)
        got = read_tiny_imagenet_split(root, split, use_cache=False, workers=1)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_the_datamodule_downloads_when_asked(tiny_zip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _, url = tiny_zip
    monkeypatch.setattr(data_download, "TINY_IMAGENET_URL", url)
    dm = TinyImageNet(root=str(tmp_path / "d"), download=True, decode_workers=1, on_device=False)
    dm.prepare_data()
    assert (tmp_path / "d" / "tiny-imagenet-200" / "wnids.txt").is_file()
    TinyImageNet(root=str(tmp_path / "d"), download=True).prepare_data()  # present: nothing fetched again


def test_a_cut_tiny_download_resumes(tiny_zip, http_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, url = tiny_zip
    http_server.cut["/tiny-imagenet-200.zip"] = 5000
    data_download.download_tiny_imagenet(tmp_path, url=url)
    assert http_server.requests[-1][1] == "bytes=5000-"
    assert (tmp_path / "tiny-imagenet-200" / "wnids.txt").is_file()


def test_offline_tiny_imagenet_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as error:
        data_download.download_tiny_imagenet(tmp_path, url="http://127.0.0.1:9/tiny-imagenet-200.zip", timeout=5)
    message = str(error.value)
    assert "\n" not in message and "127.0.0.1:9/tiny-imagenet-200.zip" in message
    assert message.endswith(f"download http://127.0.0.1:9/tiny-imagenet-200.zip into {tmp_path}")


def test_offline_fashion_mnist_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.datasets import FashionMNIST

    monkeypatch.setattr(FashionMNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(DatasetError) as error:
        data_download.download_fashion_mnist(tmp_path)
    message = str(error.value)
    assert "\n" not in message and "http://127.0.0.1:9/" in message and "dataset-fashion-mnist" in message


def test_imagenet_prints_the_manual_steps(tmp_path: Path) -> None:
    from benchmarks.fetch import main

    with pytest.raises(DatasetError) as error:
        data_download.prepare_imagenet(tmp_path)
    message = str(error.value)
    assert "\n" not in message and "ILSVRC2012_img_train.tar" in message and str(tmp_path / "imagenet") in message
    assert "image-net.org" in message and "python -m benchmarks.fetch data imagenet" in message
    with pytest.raises(SystemExit) as stopped:
        main(["data", "imagenet", "--data-root", str(tmp_path)])
    assert stopped.value.code == 2
