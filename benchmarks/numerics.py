"""A run's numerics as the planner, the renderer and the cost model see them.

A run's numerics are ``trainer.precision`` (Lightning: ``32-true`` by default, ``bf16-mixed`` under the ``fast``
preset) and the ``numerics`` config group (:class:`kd_modules.numerics.Numerics`: channels_last, compile,
teacher_cache).  Both count in a run's identity, but only where they differ from the default:
:func:`normalize_numerics` drops default-valued ``numerics`` keys (so spelling a default out, or a preset that
sets none, leaves today's identities as they are) and drops ``teacher_cache`` for runs it cannot serve (a method
that is not cacheable, data without enumerable views), which therefore stay the reference runs they are.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

__all__ = ["normalize_numerics", "numerics_of", "numerics_label", "REFERENCE_LABEL", "teacher_cache_problem"]

REFERENCE_LABEL = "fp32 eager"
_DEFAULT_PRECISIONS = {None, "32-true", "32", 32}
_CACHE_KEYS = ("teacher_cache", "teacher_cache_dtype")


def _defaults() -> dict[str, Any]:
    from kd_modules.numerics import Numerics

    return dataclasses.asdict(Numerics())


def teacher_cache_problem(config: dict[str, Any]) -> str | None:
    """Why a teacher cache cannot serve this run (None: it can)."""
    from kd_modules.teacher_cache import cacheable_fields

    model = config.get("model") or {}
    method = str(model.get("class_path", "")).rsplit(".", 1)[-1]
    if not (model.get("init_args") or {}).get("teacher"):
        return f"{method} runs without a teacher"
    if cacheable_fields(method) is None:
        return f"{method} reads teacher outputs the cache does not hold"
    data = config.get("data") or {}
    module_name, _, class_name = str(data.get("class_path", "")).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name or "datamodules"), class_name)
        datamodule = cls(**dict(data.get("init_args") or {}))
    except Exception as error:  # an unknown or misconfigured datamodule: the planner reports it elsewhere
        return f"datamodule {class_name} could not be built ({type(error).__name__})"
    augment = getattr(datamodule, "train_augmentation", lambda: False)()
    if augment is False or (augment is not None and getattr(augment, "view_count", None) is None):
        return f"{class_name}'s training views are not enumerable"
    return None


def normalize_numerics(config: dict[str, Any]) -> None:
    """Leave in ``config["numerics"]`` only what changes the run (in place; the group goes when empty)."""
    group = config.get("numerics")
    if not isinstance(group, dict):
        return  # none, or not ours to fix: the CLI rejects it with its own message
    defaults = _defaults()
    kept = {k: v for k, v in group.items() if k not in defaults or v != defaults[k]}
    if kept.get("teacher_cache") and teacher_cache_problem(config) is not None:
        kept.pop("teacher_cache")
    if not kept.get("teacher_cache"):
        for key in _CACHE_KEYS:
            kept.pop(key, None)
    if kept:
        config["numerics"] = kept
    else:
        config.pop("numerics")


def numerics_of(config: dict[str, Any]) -> dict[str, Any]:
    """``{"precision": ..., **numerics}`` of a run config, defaults filled in."""
    precision = (config.get("trainer") or {}).get("precision")
    values = {**_defaults(), **(config.get("numerics") or {})}
    values["precision"] = "32-true" if precision in _DEFAULT_PRECISIONS else str(precision)
    return values


def numerics_label(config: dict[str, Any]) -> str:
    """A short human label: ``fp32 eager`` (the references'), or e.g. ``bf16-mixed, channels_last, compiled
    (reduce-overhead), teacher cache (float16)``."""
    values = numerics_of(config)
    parts = []
    if values["precision"] != "32-true":
        parts.append(values["precision"])
    if values["channels_last"]:
        parts.append("channels_last")
    if values["compile"] != "none":
        parts.append(f"compiled ({values['compile']})")
    if values["teacher_cache"]:
        parts.append(f"teacher cache ({values['teacher_cache_dtype']})")
    if not parts:
        return REFERENCE_LABEL
    if values["precision"] == "32-true":
        parts.insert(0, "fp32")
    return ", ".join(parts)
