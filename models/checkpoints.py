"""Loading trained weights into kdbench networks, whatever format they come in.

Formats recognised (in this order):

* kdbench export (``final.pth``): ``{"format": "kdbench-network", "arch", "num_classes", "state_dict", ...}``;
* Lightning checkpoint of a kdbench run: ``{"state_dict": {"student.<key>": ...}, "hyper_parameters": {...}}``;
* RepDistiller / mdistiller releases: ``{"model": state_dict, "epoch", "accuracy", ...}``;
* a bare state dict (torchvision weights).

Reference checkpoints are mapped onto kdbench's module names before loading (:func:`map_reference_keys`).  Our
networks register their modules under the reference names, so the mapping is small and explicit: a DataParallel
``module.`` prefix is dropped; ND's WRN names its final BatchNorm ``bn`` instead of RepDistiller's ``bn1``; a 1x1-conv
classifier weight (K, D, 1, 1) (mdistiller's Tiny-ImageNet MobileNetV2) fills the equivalent Linear's (K, D);
BatchNorm ``num_batches_tracked`` counters missing from checkpoints written before PyTorch 0.4.1 are set to 0 (they
only matter with ``momentum=None``, which no network here uses).

A checkpoint that does not fit the requested architecture raises :class:`CheckpointMismatchError` naming both
the requested architecture and the one the checkpoint was saved from (read from its metadata, or identified by
matching its keys and shapes against every registered network).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import torch

from models.contract import KDNet
from models.profile import meta_model
from models.zoo import create_model, list_models, model_entry

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "load_network",
    "read_state_dict",
    "export_network",
    "file_digest",
    "fitted_state",
    "identify_architecture",
    "map_reference_keys",
]


class CheckpointError(ValueError):
    """A checkpoint file is missing or unreadable."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's weights do not fit the requested architecture."""


def file_digest(path: str | Path, length: int = 16) -> str:
    """SHA-256 of a file (hex, first ``length`` characters): the identity of an external checkpoint."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()[:length]


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """Return ``(state_dict, saved_arch)``; ``saved_arch`` is None when the file does not say."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload: Any = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated or foreign file: say which
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from None
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(payload).__name__}, not a state dict")
    if payload.get("format") == "kdbench-network":
        return dict(payload["state_dict"]), payload.get("arch")
    if "state_dict" in payload and "hyper_parameters" in payload:
        prefix = "student."
        state = {k[len(prefix) :]: v for k, v in payload["state_dict"].items() if k.startswith(prefix)}
        return state, payload["hyper_parameters"].get("student")
    if "model" in payload and isinstance(payload["model"], Mapping):
        return dict(payload["model"]), None
    if all(isinstance(v, torch.Tensor) for v in payload.values()):
        return dict(payload), None
    raise CheckpointError(f"checkpoint {path}: unrecognised layout (keys: {', '.join(list(payload)[:8])})")


def _signature(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


# (prefix in a reference checkpoint, prefix of our module) for names that differ between code bases.
_REFERENCE_RENAMES = [
    ("bn.", "bn1."),  # ND's WRN (CIFAR/*/models/wrn_cifar.py) calls the final BatchNorm `bn`; RepDistiller `bn1`.
]


def map_reference_keys(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]
) -> dict[str, torch.Tensor]:
    """Rename/reshape a reference checkpoint's entries onto the keys and shapes in ``expected`` (see module doc).

    Only entries that do not already fit are touched, so a state dict in kdbench's own layout passes unchanged;
    whatever still does not fit is left for the caller's mismatch check.
    """
    mapped = dict(state)
    if mapped and all(k.startswith("module.") for k in mapped) and not any(k.startswith("module.") for k in expected):
        mapped = {k[len("module.") :]: v for k, v in mapped.items()}
    for key in [k for k in mapped if k not in expected]:
        for old, new in _REFERENCE_RENAMES:
            renamed = new + key[len(old) :]
            if key.startswith(old) and renamed in expected and renamed not in mapped:
                mapped[renamed] = mapped.pop(key)
                break
    for key, value in mapped.items():
        shape = expected.get(key)
        if shape is not None and tuple(value.shape) != shape and tuple(value.shape) == (*shape, 1, 1):
            mapped[key] = value.reshape(shape)
    for key, shape in expected.items():
        if key.endswith(".num_batches_tracked") and key not in mapped and shape == ():
            mapped[key] = torch.zeros((), dtype=torch.long)
    return mapped


def identify_architecture(state: Mapping[str, torch.Tensor], num_classes: int, family: str | None = None) -> str | None:
    """The registered network whose parameters and buffers match ``state`` key for key and shape for shape
    (after :func:`map_reference_keys`).  Candidates are built on the meta device, so this is cheap."""
    for name in list_models(family):
        candidate = _meta_signature(name, num_classes)
        if candidate is not None and _signature(map_reference_keys(state, candidate)) == candidate:
            return name
    return None


@cache
def _meta_signature(name: str, num_classes: int) -> dict[str, tuple[int, ...]] | None:
    try:
        return _signature(meta_model(name, num_classes).state_dict())
    except Exception:  # a network that cannot be built with this class count is simply not a candidate
        return None


def _difference(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]) -> str:
    """A short account of how ``state`` differs from ``expected`` (first few keys of each kind)."""
    missing = sorted(set(expected) - set(state))[:3]
    unexpected = sorted(set(state) - set(expected))[:3]
    reshaped = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]][:2]
    parts = [f"e.g. missing keys: {', '.join(missing) or 'none'}"]
    if unexpected:
        parts.append(f"unexpected keys: {', '.join(unexpected)}")
    if reshaped:
        parts.append("shapes: " + ", ".join(f"{k} {tuple(state[k].shape)} instead of {expected[k]}" for k in reshaped))
    return "; ".join(parts)


def fitted_state(path: str | Path, arch: str, network: KDNet) -> dict[str, torch.Tensor]:
    """The weights in ``path`` mapped onto ``network`` (an ``arch``), refusing a checkpoint of another architecture
    (:class:`CheckpointMismatchError` naming the one it holds)."""
    state, saved_arch = read_state_dict(path)
    if saved_arch is not None and saved_arch != arch:
        raise CheckpointMismatchError(f"checkpoint {path} holds a {saved_arch}, but the teacher architecture is {arch}")
    expected = _signature(network.state_dict())
    mapped = map_reference_keys(state, expected)
    if _signature(mapped) != expected:
        found = saved_arch or identify_architecture(state, network.num_classes, model_entry(arch).dataset)
        found = found or "an unrecognised network"
        raise CheckpointMismatchError(f"checkpoint {path} holds {found}, not {arch} ({_difference(mapped, expected)})")
    return mapped


def load_network(arch: str, num_classes: int, path: str | Path) -> KDNet:
    """Build ``arch`` and load the weights in ``path``, refusing a checkpoint of another architecture."""
    network = create_model(arch, num_classes)
    network.load_state_dict(fitted_state(path, arch, network))
    return network


def export_network(network: KDNet, arch: str, path: str | Path, **metadata: Any) -> Path:
    """Write a plain network checkpoint (no optimiser, no teacher) that :func:`load_network` reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": "kdbench-network",
        "arch": arch,
        "num_classes": network.num_classes,
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        **metadata,
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path
