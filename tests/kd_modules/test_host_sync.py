"""No host synchronisation inside a training step, for every method (``kd_modules.method_names()``).

Each method takes two optimisation steps through a real ``Trainer`` on resnet20 -> resnet8 (the teacher
untrained; its weights do not matter) with its config from ``configs/methods`` and the smoke preset's small
offline stages; the second step (the steady state: the first may initialise lazily) runs under
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
import yaml

from benchmarks.host_sync import HostSyncGuard, StepSyncCheck
from benchmarks.plan import deep_merge, load_preset
from benchmarks.tables import REPO_ROOT
from datamodules import CIFAR100
from kd_modules import FTParaphraserInit, TeacherConfig, method_class, method_names
from models import create_model
from models.checkpoints import export_network

PAIR = ("resnet20", "resnet8")  # teacher, student: the cheapest pair every method is defined on
DEVICE = os.environ.get("KDBENCH_SYNC_DEVICE", "cpu")
SMOKE = load_preset("smoke")
METHODS_DIR = REPO_ROOT / "configs" / "methods"
#: Argument changes that make a method runnable on the one-image-per-class fixture (not what the test checks).
SMALL = {
    "CRD": {"data": {"contrast_k": 16}},
    "CRDKD": {"data": {"contrast_k": 16}},
    "NORMCRD": {"data": {"contrast_k": 16}},
}


def _config_of(method: str) -> dict[str, Any]:
    """The method's own config (``configs/methods/<name>.yaml``, else the first config written for the class)."""
    candidates = [METHODS_DIR / f"{method.lower()}.yaml"] + sorted(METHODS_DIR.glob("*.yaml"))
    for path in candidates:
        if not path.is_file() or "imagenet" in path.stem:
            continue
        raw = yaml.safe_load(path.read_text()) or {}
        if str(raw.get("model", {}).get("class_path", "")).rsplit(".", 1)[-1] == method:
            return raw
    return {}


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from datamodules.synthetic import write_cifar100

    folder = tmp_path_factory.mktemp("host_sync")
    write_cifar100(folder / "data", train_per_class=1, test_per_class=1, seed=0)
    torch.manual_seed(0)
    teacher_path = export_network(create_model(PAIR[0], 100), PAIR[0], folder / "teacher.pth")
    teacher = TeacherConfig(PAIR[0], str(teacher_path))
    paraphraser = FTParaphraserInit(student=PAIR[1], teacher=teacher)
    ft_path = folder / "paraphraser.ckpt"
    torch.save({"hyper_parameters": dict(paraphraser.hparams), "state_dict": paraphraser.state_dict()}, ft_path)
    previous = os.environ.get("KDBENCH_CACHE")
    os.environ["KDBENCH_CACHE"] = str(folder / "cache")
    yield {"data": folder / "data", "teacher": teacher, "paraphraser": str(ft_path)}
    if previous is None:
        os.environ.pop("KDBENCH_CACHE", None)
    else:
        os.environ["KDBENCH_CACHE"] = previous


def _module(method: str, setting: dict[str, Any]) -> tuple[pl.LightningModule, dict[str, Any]]:
    import dataclasses
    import typing

    cls = method_class(method)
    raw = _config_of(method)
    args = deep_merge((raw.get("model") or {}).get("init_args") or {}, SMOKE.method_init_args.get(method, {}))
    if method == "FT":
        args["paraphraser_checkpoint"] = setting["paraphraser"]
    if method == "RCO" or (method == "KCD" and args.get("combine") == "rco"):
        args["anchor_checkpoints"] = [setting["teacher"].checkpoint] * 4
    if method == "KCD":
        args.setdefault("transform", "random")  # no CE-only student needed (the planner provides it in tables)
        if args.get("transform") != "random":
            args["transform"] = "random"
    hints = typing.get_type_hints(cls.__init__)
    for name, value in list(args.items()):
        hint = hints.get(name)
        if isinstance(value, dict) and isinstance(hint, type) and dataclasses.is_dataclass(hint):
            args[name] = hint(**value)
    if cls.requires_teacher:
        args["teacher"] = setting["teacher"]
    elif getattr(cls, "sized_by_teacher_arch", False):
        args.setdefault("teacher_arch", PAIR[0])
    torch.manual_seed(0)
    module = cls(student=PAIR[1], num_classes=100, **args)
    data_args = dict((raw.get("data") or {}).get("init_args") or {})
    data_args.update(SMALL.get(method, {}).get("data", {}))
    return module, data_args


@pytest.mark.parametrize("method", method_names())
def test_training_steps_make_no_host_sync(method: str, setting: dict[str, Any]) -> None:
    module, data_args = _module(method, setting)
    datamodule = CIFAR100(root=str(setting["data"]), batch_size=8, eval_batch_size=100, seed=0, **data_args)
    check = StepSyncCheck(skip=1, cuda_debug=DEVICE == "cuda")
    trainer = pl.Trainer(
        max_steps=2,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        accelerator="gpu" if DEVICE == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[check],
    )
    trainer.fit(module, datamodule=datamodule)
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
