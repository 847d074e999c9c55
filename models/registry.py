"""Name -> network builder registry behind :func:`models.create_model`.

Model files register into it (``@register_model(name, dataset=...)``) and the registry imports none of them:
:mod:`models.zoo` is the one module that imports every family, and the lookups callers use
(``models.create_model`` / ``list_models`` / ``model_entry``) go through it.  The functions here see only what is
registered so far.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from models.contract import KDNet

__all__ = ["ModelEntry", "register_model", "create_model", "list_models", "model_entry", "UnknownModelError"]


class UnknownModelError(ValueError):
    """Raised for a network name that is not registered; the message lists the valid names."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    dataset: str  # "cifar" (32x32), "tiny-imagenet" (64x64) or "imagenet" (224x224): the input family it is built for
    builder: Callable[..., KDNet]


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, dataset: str) -> Callable[[Callable[..., KDNet]], Callable[..., KDNet]]:
    def decorate(builder: Callable[..., KDNet]) -> Callable[..., KDNet]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, dataset, builder)
        return builder

    return decorate


def list_models(dataset: str | None = None) -> list[str]:
    return sorted(n for n, e in _REGISTRY.items() if dataset is None or e.dataset == dataset)


def model_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(f"unknown network {name!r}; valid: {', '.join(sorted(_REGISTRY))}") from None


def create_model(name: str, num_classes: int) -> KDNet:
    """Build network ``name`` with a ``num_classes``-way classifier (randomly initialised as the reference does)."""
    return model_entry(name).builder(num_classes=num_classes)
