"""Distillation methods: one LightningModule per method (``kd_modules/<method>.py``), losses in ``losses/``.

Every module of this package is imported here, and every concrete, public (not ``_``-prefixed)
:class:`DistillationModule` subclass it defines becomes a method selectable by class name (``--model KD`` on the
command line, ``method: KD`` in a table file).  Adding a method therefore needs no registration line anywhere.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from kd_modules.base import DistillationModule, OptimConfig, TeacherConfig

__all__ = ["DistillationModule", "OptimConfig", "TeacherConfig", "method_class", "method_names", "UnknownMethodError"]

_NOT_METHODS = {"base", "losses"}


class UnknownMethodError(ValueError):
    """A method name that no module defines; the message lists the valid names."""


def _discover() -> dict[str, type[DistillationModule]]:
    found: dict[str, type[DistillationModule]] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name in _NOT_METHODS or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, DistillationModule)
                and obj.__module__ == module.__name__
                and not inspect.isabstract(obj)
                and not name.startswith("_")
            ):
                found[name] = obj
    return found


_METHODS = _discover()
globals().update(_METHODS)
__all__ += sorted(_METHODS)


def method_names() -> list[str]:
    return sorted(_METHODS)


def method_class(name: str) -> type[DistillationModule]:
    """The method class called ``name`` (exact class name, or case-insensitively)."""
    if name in _METHODS:
        return _METHODS[name]
    folded = {k.lower(): v for k, v in _METHODS.items()}
    if name.lower() in folded:
        return folded[name.lower()]
    raise UnknownMethodError(f"unknown method {name!r}; valid: {', '.join(method_names())}")
