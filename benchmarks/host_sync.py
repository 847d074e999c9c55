"""Finding host synchronisations in a training step, on any device.

A host sync stalls the CPU until the accelerator has finished everything queued so far; one per step serialises
the CPU and the GPU and rules out CUDA graphs.  :class:`HostSyncGuard` records every operation that needs a
tensor's *value* on the host while it is active:

* Python reads of device values: ``.item()``, ``.tolist()``, ``.cpu()``, ``.numpy()``, ``bool(t)`` (every
  ``if t:`` / ``if (t > 0).any():`` branch on a tensor), ``float(t)``, ``int(t)``, ``t.__index__``;
* aten operators whose result depends on values on the host: ``_local_scalar_dense`` (what the reads above call),
  ``equal``, ``is_nonzero``, ``nonzero``, ``masked_select``, ``unique``, ``repeat_interleave`` without an output
  size, boolean-mask indexing (``x[mask]``, ``x[mask] = v``).

On a CPU nothing actually waits, so the guard is how a CPU-only test finds them (``tests/kd_modules/
test_host_sync.py``, every method); on a GPU the same test additionally runs under
``torch.cuda.set_sync_debug_mode("error")``, which catches syncs inside CUDA code too.  :class:`StepSyncCheck`
is a Lightning callback that guards each training batch, from ``on_train_batch_start`` to ``on_train_batch_end``
(forward, losses, logging, backward and the optimiser step).
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HostSync", "HostSyncGuard", "StepSyncCheck"]

_REPO = str(Path(__file__).resolve().parents[1])
_THIS = str(Path(__file__).resolve())
_PYTHON_READS = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.cpu,
    torch.Tensor.numpy,
    torch.Tensor.__bool__,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.__index__,
}
_VALUE_OPS = {
    "aten._local_scalar_dense",
    "aten.equal",
    "aten.is_nonzero",
    "aten.nonzero",
    "aten.nonzero_static",
    "aten.masked_select",
    "aten._unique",
    "aten._unique2",
    "aten.unique_dim",
    "aten.unique_consecutive",
    "aten.argwhere",
}


@dataclass
class HostSync:
    """One host synchronisation: what did it and where in kdbench's code (innermost project frame first)."""

    what: str
    where: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.what} at {' <- '.join(self.where[:3]) or '(outside kdbench code)'}"


def _project_frames() -> list[str]:
    frames = []
    for frame in reversed(traceback.extract_stack()[:-1]):
        if frame.filename.startswith(_REPO) and "/.venv/" not in frame.filename and frame.filename != _THIS:
            frames.append(f"{Path(frame.filename).relative_to(_REPO)}:{frame.lineno} ({frame.name})")
    return frames


def _bool_mask_index(args: tuple[Any, ...]) -> bool:
    indices = args[1] if len(args) > 1 else None
    if not isinstance(indices, (list, tuple)):
        return False
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)


class _Recorder:
    """A torch mode that appends what it finds to a list it shares with the guard."""

    def __init__(self, found: list[HostSync]) -> None:
        super().__init__()
        self.found = found


class _Functions(_Recorder, TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        if func in _PYTHON_READS:
            self.found.append(HostSync(f"Tensor.{func.__name__}", _project_frames()))
        return func(*args, **(kwargs or {}))


class _Operators(_Recorder, TorchDispatchMode):
    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        name = str(func.overloadpacket)
        kwargs = kwargs or {}
        flagged = name in _VALUE_OPS
        if name in ("aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_"):
            flagged = _bool_mask_index(args)
        elif name == "aten.repeat_interleave" and isinstance(args[0] if args else None, torch.Tensor):
            flagged = kwargs.get("output_size") is None and len(args) < 3
        if flagged:
            self.found.append(HostSync(name, _project_frames()))
        return func(*args, **kwargs)


class HostSyncGuard:
    """Context manager recording every host synchronisation (see the module docs) in ``found``.

    With ``cuda_debug=True`` and a CUDA device, CUDA's own sync detection is on too
    (``torch.cuda.set_sync_debug_mode("error")``): a sync inside CUDA code then raises at its call.
    """

    def __init__(self, cuda_debug: bool = False) -> None:
        self.found: list[HostSync] = []
        self._modes = [_Functions(self.found), _Operators(self.found)]
        self._cuda_debug = cuda_debug and torch.cuda.is_available()
        self._previous_debug: int | None = None

    def __enter__(self) -> HostSyncGuard:
        for mode in self._modes:
            mode.__enter__()
        if self._cuda_debug:
            self._previous_debug = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("error")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._cuda_debug and self._previous_debug is not None:
            torch.cuda.set_sync_debug_mode(self._previous_debug)
        for mode in reversed(self._modes):
            mode.__exit__(*exc)


class StepSyncCheck(Callback):
    """Guards every training batch after the first ``skip`` ones; ``found[step]`` lists that step's syncs."""

    def __init__(self, skip: int = 1, cuda_debug: bool = False) -> None:
        self.skip = skip
        self.cuda_debug = cuda_debug
        self.found: dict[int, list[HostSync]] = {}
        self._guard: HostSyncGuard | None = None

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step >= self.skip:
            self._guard = HostSyncGuard(self.cuda_debug).__enter__()

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._guard is not None:
            self._guard.__exit__(None, None, None)
            self.found[trainer.global_step] = list(self._guard.found)
            self._guard = None

    def on_exception(self, trainer: Any, module: Any, exception: BaseException) -> None:
        if self._guard is not None:
            self._guard.__exit__(None, None, None)
            self._guard = None
