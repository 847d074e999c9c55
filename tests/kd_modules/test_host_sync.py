"""No host synchronisation inside a training step, for every method that trains (``kd_modules.method_names()``
but the diagnostics of :mod:`kd_modules.diagnostics`: they measure a trained network in a fit that stops before its
first step (``Diagnostic.on_train_start``), ``training_losses`` refuses to run and no optimiser exists; a
ChannelOverlap record says ``steps: 0`` in ``tests/kd_modules/test_diagnostics.py``).

Each method takes two optimisation steps through a real ``Trainer`` on resnet20 -> resnet8 (the teacher
untrained; its weights do not matter; DeiT++, which distils into a ViT only, on a small DeiT: see
:mod:`benchmarks.probe`) with its config from ``configs/methods`` and the smoke preset's small offline stages;
the second step (the steady state: the first may initialise lazily) runs under
:class:`benchmarks.host_sync.HostSyncGuard`, which records every ``.item()`` / ``.cpu()`` / ``.tolist()`` /
``bool(tensor)`` / value-dependent operator from the batch's start to its end (forward, losses, logging,
backward, optimiser step).  With a GPU (``KDBENCH_SYNC_DEVICE=cuda``) the steps also run under
``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from benchmarks.host_sync import HostSyncGuard, StepSyncCheck
from benchmarks.probe import PAIR, probe_fit, probe_module, probe_setting
from datamodules import CIFAR100
from kd_modules import method_class, method_names
from kd_modules.diagnostics import Diagnostic

DEVICE = os.environ.get("KDBENCH_SYNC_DEVICE", "cpu")
#: Every method with a training step (a new diagnostic is left out by its class, a new method is in).
TRAINING_METHODS = [m for m in method_names() if not issubclass(method_class(m), Diagnostic)]


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("host_sync")
    previous = os.environ.get("KDBENCH_CACHE")
    os.environ["KDBENCH_CACHE"] = str(folder / "cache")
    yield probe_setting(folder)
    if previous is None:
        os.environ.pop("KDBENCH_CACHE", None)
    else:
        os.environ["KDBENCH_CACHE"] = previous


@pytest.mark.parametrize("method", TRAINING_METHODS)
def test_training_steps_make_no_host_sync(method: str, setting: dict[str, Any]) -> None:
    module, data_args = probe_module(method, setting)
    check = StepSyncCheck(skip=1, cuda_debug=DEVICE == "cuda")
    trainer = probe_fit(module, data_args, setting, 2, [check], DEVICE)
    assert trainer.global_step == 2 and sorted(check.found) == [2]
    syncs = [f"step {step}: {sync}" for step, found in check.found.items() for sync in found]
    assert not syncs, f"{method} synchronises with the host in its training step:\n" + "\n".join(syncs[:10])


def test_a_step_that_syncs_is_caught_with_its_line(setting: dict[str, Any]) -> None:
    from kd_modules import Vanilla

    class Syncing(Vanilla):
        def training_losses(self, batch):  # type: ignore[no-untyped-def]
            logits, losses = super().training_losses(batch)
            if losses["ce"] > 1e9:  # a data-dependent branch: a host sync on a GPU
                pass
            return logits, losses

    datamodule = CIFAR100(root=str(setting["data"]), batch_size=8, eval_batch_size=100, seed=0)
    check = StepSyncCheck(skip=1)
    trainer = pl.Trainer(
        max_steps=2,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[check],
    )
    trainer.fit(Syncing(student=PAIR[1]), datamodule=datamodule)
    assert sorted(check.found) == [2]
    assert [s.what for s in check.found[2]] == ["Tensor.__bool__", "aten._local_scalar_dense"]
    assert check.found[2][0].where[0].startswith("tests/kd_modules/test_host_sync.py:")


def test_the_guard_sees_every_kind_of_sync() -> None:
    x = torch.randn(6)
    reads = [
        lambda: x.sum().item(),
        lambda: x.tolist(),
        lambda: x.cpu(),
        lambda: bool((x > 0).any()),
        lambda: float(x.max()),
        lambda: int(x.argmax()),
        lambda: x[x > 0],
        lambda: torch.nonzero(x),
        lambda: torch.unique(x),
        lambda: torch.equal(x, x),
        lambda: x.repeat_interleave(torch.tensor([1, 2, 1, 1, 1, 1])),
    ]
    for read in reads:
        with HostSyncGuard() as guard:
            read()
        assert guard.found, read
    with HostSyncGuard() as guard:  # device-side work only
        y = torch.where(x > 0, x, torch.zeros_like(x)).softmax(0) * 2
        y = y.index_select(0, torch.tensor([0, 2])) + x.topk(2).values
        x.repeat_interleave(2)
    assert not guard.found, [str(s) for s in guard.found]
    with HostSyncGuard() as guard:
        if (x > 100).any():  # a data-dependent Python branch on a device value
            pass
    assert guard.found and guard.found[0].what == "Tensor.__bool__"
    assert "tests/kd_modules/test_host_sync.py" in guard.found[0].where[0]


def test_paths_are_relative_to_the_repository(tmp_path: Path) -> None:
    with HostSyncGuard() as guard:
        torch.ones(1).item()
    assert guard.found[0].where and not guard.found[0].where[0].startswith("/")
