"""Loading trained weights into kdbench networks, whatever format they come in.

Formats recognised (in this order):

* kdbench export (``final.pth``): ``{"format": "kdbench-network", "arch", "num_classes", "state_dict", ...}``;
* Lightning checkpoint of a kdbench run: ``{"state_dict": {"student.<key>": ...}, "hyper_parameters": {...}}``;
* RepDistiller / mdistiller releases: ``{"model": state_dict, "epoch", "accuracy", ...}``;
* a bare state dict (torchvision weights).

A checkpoint that does not fit the requested architecture raises :class:`CheckpointMismatchError` naming both
the requested architecture and the one the checkpoint was saved from (read from its metadata, or identified by
matching its keys and shapes against every registered network).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from models.contract import KDNet
from models.registry import create_model, list_models, model_entry

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "load_network",
    "read_state_dict",
    "export_network",
    "file_digest",
    "identify_architecture",
]


class CheckpointError(ValueError):
    """A checkpoint file is missing or unreadable."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's weights do not fit the requested architecture."""


def file_digest(path: str | Path, length: int = 16) -> str:
    """SHA-256 of a file (hex, first ``length`` characters): the identity of an external checkpoint."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()[:length]


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


def identify_architecture(state: Mapping[str, torch.Tensor], num_classes: int, family: str | None = None) -> str | None:
    """The registered network whose parameters and buffers match ``state`` key for key and shape for shape."""
    wanted = _signature(state)
    for name in list_models(family):
        try:
            candidate = create_model(name, num_classes)
        except Exception:
            continue
        if _signature(candidate.state_dict()) == wanted:
            return name
    return None


def load_network(arch: str, num_classes: int, path: str | Path) -> KDNet:
    """Build ``arch`` and load the weights in ``path``, refusing a checkpoint of another architecture."""
    network = create_model(arch, num_classes)
    state, saved_arch = read_state_dict(path)
    if saved_arch is not None and saved_arch != arch:
        raise CheckpointMismatchError(f"checkpoint {path} holds a {saved_arch}, but the teacher architecture is {arch}")
    expected = _signature(network.state_dict())
    if _signature(state) != expected:
        found = saved_arch or identify_architecture(state, num_classes, model_entry(arch).dataset)
        if found is None:
            found = "an unrecognised network"
        missing = sorted(set(expected) - set(state))[:3]
        raise CheckpointMismatchError(
            f"checkpoint {path} holds {found}, not {arch} (e.g. missing keys: {', '.join(missing) or 'none'})"
        )
    network.load_state_dict(state)
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
