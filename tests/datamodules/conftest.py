"""Generated datasets in each real on-disk format (session-scoped: written once, read by many tests)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The official tiny-imagenet-200 folder: 10 classes, 8 train / 4 val images each."""
    from datamodules.synthetic import write_tiny_imagenet

    root = tmp_path_factory.mktemp("tiny")
    write_tiny_imagenet(root)
    return root


@pytest.fixture(scope="session")
def tiny_zip_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same dataset as ``tiny_root`` as the official tiny-imagenet-200.zip."""
    from datamodules.synthetic import write_tiny_imagenet

    root = tmp_path_factory.mktemp("tiny_zip")
    write_tiny_imagenet(root, as_zip=True)
    return root


@pytest.fixture(scope="session")
def imagenet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ILSVRC-2012 ImageFolder layout: 4 classes, 5 train / 2 val JPEGs each, of varied sizes."""
    from datamodules.synthetic import write_imagenet

    root = tmp_path_factory.mktemp("imagenet")
    write_imagenet(root)
    return root


@pytest.fixture(scope="session")
def fashion_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four Fashion-MNIST idx.gz files: 10 train / 4 test images per class."""
    from datamodules.synthetic import write_fashion_mnist

    root = tmp_path_factory.mktemp("fashion")
    write_fashion_mnist(root)
    return root
