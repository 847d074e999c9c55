"""Fashion-MNIST idx reader on generated files, and on the real files of Debian's dataset-fashion-mnist package."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

import datamodules.fashion_mnist as fashion
from datamodules import DatasetError, FashionMNIST
from datamodules.fashion_mnist import read_fashion_mnist_split, read_idx
from datamodules.synthetic import write_fashion_mnist

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
needs_debian_package = pytest.mark.skipif(
    not (DEBIAN / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Debian package dataset-fashion-mnist is not installed (no {DEBIAN}); "
    "`apt-get install dataset-fashion-mnist` (.ci/run installs it)",
)


def _raw_uint8(path: Path, header: int) -> np.ndarray:
    """The payload of an idx file read without the reader: skip the fixed-size header."""
    data = path.read_bytes()
    return np.frombuffer(gzip.decompress(data) if path.suffix == ".gz" else data, dtype=np.uint8, offset=header)


@pytest.mark.parametrize("compress", [True, False])
def test_reader_on_generated_idx_files(tmp_path: Path, compress: bool) -> None:
    write_fashion_mnist(tmp_path, compress=compress)
    suffix = ".gz" if compress else ""
    images, labels = read_fashion_mnist_split(tmp_path, "train")
    assert images.shape == (100, 1, 28, 28) and images.dtype == torch.uint8
    assert torch.equal(labels.bincount(), torch.full((10,), 10))
    pixels = _raw_uint8(tmp_path / f"train-images-idx3-ubyte{suffix}", 16).reshape(100, 28, 28)
    assert np.array_equal(images[:, 0].numpy(), pixels)
    assert np.array_equal(labels.numpy(), _raw_uint8(tmp_path / f"train-labels-idx1-ubyte{suffix}", 8))
    assert read_fashion_mnist_split(tmp_path, "test")[0].shape == (40, 1, 28, 28)


def test_truncated_file_is_named(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path, compress=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(
        DatasetError, match=r"t10k-images-idx3-ubyte is corrupt: 31355 data bytes for shape \(40, 28, 28\)"
    ):
        read_idx(path)


def test_missing_files_list_the_places_and_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The root is the only place looked in: no silent fallback to the system copy, which the message names."""
    monkeypatch.setattr(fashion, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-package")
    with pytest.raises(
        DatasetError, match=r"FashionMNIST/raw.*apt-get install dataset-fashion-mnist puts them in .*no-debian-package"
    ):
        read_fashion_mnist_split(tmp_path, "train")
    assert all(tmp_path in (folder, *folder.parents) for folder in fashion.candidate_folders(tmp_path))


def test_datamodule_feeds_cifar_networks(fashion_root: Path) -> None:
    dm = FashionMNIST(root=str(fashion_root), batch_size=32, eval_batch_size=40, seed=0)
    dm.setup("fit")
    train = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert train["images"].shape == (32, 3, 32, 32) and train["images"].dtype == torch.float32
    assert torch.equal(train["images"][:, 0], train["images"][:, 2])  # grey replicated to three channels
    test = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)["images"]
    raw, _ = read_fashion_mnist_split(fashion_root, "test")
    black = (0.0 - FashionMNIST.mean[0]) / FashionMNIST.std[0]
    assert torch.allclose(test[:, :, :2], torch.tensor(black)) and torch.allclose(
        test[:, :, :, -2:], torch.tensor(black)
    )
    inner = (raw[:, 0].float() / 255 - FashionMNIST.mean[0]) / FashionMNIST.std[0]
    assert torch.allclose(test[:, 1, 2:30, 2:30], inner, atol=1e-5)


@needs_debian_package
def test_real_fashion_mnist_from_the_debian_package(tmp_path: Path) -> None:
    """60,000 / 10,000 real images, 6,000 / 1,000 per class, read from the package's folder (given as the root;
    another root never falls back to it); the record's provenance names the folder and fingerprints the files."""
    assert not FashionMNIST.is_available(str(tmp_path))
    dm = FashionMNIST(root=str(DEBIAN), seed=0)
    assert FashionMNIST.is_available(str(DEBIAN))
    provenance = dm.data_provenance()
    assert provenance["root"] == str(DEBIAN.resolve()) and provenance["files"] == 4
    dm.setup("fit")
    train_images, train_labels = dm.split("train")
    test_images, test_labels = dm.split("test")
    assert train_images.shape == (60_000, 1, 32, 32) and test_images.shape == (10_000, 1, 32, 32)
    assert torch.equal(train_labels.bincount(), torch.full((10,), 6000))
    assert torch.equal(test_labels.bincount(), torch.full((10,), 1000))
    # The normalisation constants are the statistics of the zero-framed 32x32 training images.
    pixels = train_images.double() / 255
    assert abs(pixels.mean().item() - FashionMNIST.mean[0]) < 5e-4
    assert abs(pixels.std().item() - FashionMNIST.std[0]) < 5e-4
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch["images"].shape == (64, 3, 32, 32)


def test_download_fetches_the_idx_files_with_torchvision_where_the_loader_finds_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchvision's download path against a local HTTP server serving generated idx files (no network here)."""
    import functools
    import hashlib
    import http.server
    import threading

    import torchvision.datasets

    served = write_fashion_mnist(tmp_path / "served", train_per_class=3, test_per_class=1, seed=5)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in served.glob("*.gz")}
        monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [f"http://127.0.0.1:{server.server_port}/"])
        monkeypatch.setattr(
            torchvision.datasets.FashionMNIST,
            "resources",
            [(name, md5[name]) for name, _ in torchvision.datasets.FashionMNIST.resources],
        )
        root = tmp_path / "data"
        folder = FashionMNIST.download_dataset(str(root))
    finally:
        server.shutdown()
    # the files landed in <root>/FashionMNIST/raw, one of the folders the loader looks in; 30 images are not the
    # full dataset
    assert folder == root / "FashionMNIST" / "raw" and not FashionMNIST.is_available(str(root))
    images, labels = read_fashion_mnist_split(root, "train")
    assert images.shape == (30, 1, 28, 28) and sorted(labels.tolist()) == sorted([c for c in range(10)] * 3)
    assert fashion.find_fashion_mnist(root) == root / "FashionMNIST" / "raw"
