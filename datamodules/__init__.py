"""One LightningDataModule per dataset, sharing the batch format and the batched augmentation."""

from datamodules import gpu_decode  # noqa: F401  (registers ImageNet's gpu_decode backend)
from datamodules.base import CropFlipDataModule, InMemoryDataModule, KDDataModule
from datamodules.cifar import CIFAR100
from datamodules.errors import DatasetError
from datamodules.fashion_mnist import FashionMNIST
from datamodules.imagenet import ImageNet
from datamodules.tiny_imagenet import TinyImageNet

__all__ = [
    "CIFAR100",
    "DATASETS",
    "CropFlipDataModule",
    "DatasetError",
    "FashionMNIST",
    "ImageNet",
    "InMemoryDataModule",
    "KDDataModule",
    "TinyImageNet",
    "datamodule_for",
]

#: Table dataset names -> datamodule classes.
DATASETS: dict[str, type[KDDataModule]] = {
    cls.dataset_name: cls for cls in (CIFAR100, TinyImageNet, ImageNet, FashionMNIST)
}


def datamodule_for(dataset: str) -> type[KDDataModule]:
    try:
        return DATASETS[dataset]
    except KeyError:
        raise DatasetError(f"unknown dataset {dataset!r}; valid: {', '.join(sorted(DATASETS))}") from None
