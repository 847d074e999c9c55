"""One LightningDataModule per dataset, sharing the batch format and the batched augmentation."""

from datamodules.base import InMemoryDataModule, KDDataModule
from datamodules.cifar import CIFAR100
from datamodules.errors import DatasetError

__all__ = ["CIFAR100", "DATASETS", "DatasetError", "InMemoryDataModule", "KDDataModule", "datamodule_for"]

#: Table dataset names -> datamodule classes.
DATASETS: dict[str, type[KDDataModule]] = {cls.dataset_name: cls for cls in (CIFAR100,)}


def datamodule_for(dataset: str) -> type[KDDataModule]:
    try:
        return DATASETS[dataset]
    except KeyError:
        raise DatasetError(f"unknown dataset {dataset!r}; valid: {', '.join(sorted(DATASETS))}") from None
