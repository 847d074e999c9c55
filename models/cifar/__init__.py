"""CIFAR (32x32) networks of the CRD model zoo; every module here registers its networks on import."""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
