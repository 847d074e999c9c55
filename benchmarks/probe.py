"""Every method on one small pair, for whole-suite checks of the training step (host syncs, operator counts).

:func:`probe_setting` writes a CIFAR-100 fixture (one image per class), an untrained resnet20 teacher and FT's
paraphraser stage; :func:`probe_module` builds any method (``kd_modules.method_names()``) on resnet20 -> resnet8
with its config from ``configs/methods`` and the smoke preset's small offline stages (DeiT++, which distils into a
vision transformer only, on a small DeiT: :data:`PROBE_STUDENTS`); :func:`probe_fit` takes a few optimisation
steps through a real ``Trainer``.  Used by ``tests/kd_modules/test_host_sync.py`` and by
``python -m benchmarks.cost calibrate-ops``, for every method that trains (the diagnostics of
:mod:`kd_modules.diagnostics` measure trained networks in a fit that stops before its first step: they have no
training step to probe).
"""

from __future__ import annotations

import contextlib
import dataclasses
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch.callbacks import Callback
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.tables import REPO_ROOT

__all__ = [
    "PAIR",
    "PROBE_STUDENTS",
    "probe_student",
    "probe_setting",
    "probe_module",
    "probe_fit",
    "bare_trainer",
    "OpCount",
    "CountOps",
]

PAIR = ("resnet20", "resnet8")  # teacher, student: the cheapest pair every method is defined on
#: Argument changes that make a method runnable on the one-image-per-class fixture.
SMALL = {method: {"data": {"contrast_k": 16}} for method in ("CRD", "CRDKD", "NORMCRD")}
#: Students of the methods that PAIR's student cannot be: DeiT++ distils into a ViT only, here timm's DeiT-Ti with
#: its distillation token at the fixture's 32 x 32 (4 x 4 patches, 4 blocks), registered only while it is built.
PROBE_STUDENTS = {
    "DeiTPlusPlus": (
        "probe_deit_tiny_distilled",
        {"timm_name": "deit_tiny_distilled_patch16_224", "img_size": 32, "patch_size": 4, "depth": 4},
    ),
}
#: The recipes whose optimisation settings a method's probe takes (DeiT++: mixup / CutMix, label smoothing, AdamW).
PROBE_RECIPES = {"DeiTPlusPlus": "nd_imagenet_vit"}


def _config_of(method: str) -> dict[str, Any]:
    """The method's own config (``configs/methods/<name>.yaml``, else the first config written for the class)."""
    folder = REPO_ROOT / "configs" / "methods"
    for path in [folder / f"{method.lower()}.yaml"] + sorted(folder.glob("*.yaml")):
        if not path.is_file() or "imagenet" in path.stem:
            continue
        raw = yaml.safe_load(path.read_text()) or {}
        if str(raw.get("model", {}).get("class_path", "")).rsplit(".", 1)[-1] == method:
            return raw
    return {}


def probe_setting(folder: Path) -> dict[str, Any]:
    """Data, teacher and FT paraphraser under ``folder``."""
    from datamodules.synthetic import write_cifar100
    from kd_modules import FTParaphraserInit, TeacherConfig
    from models import create_model
    from models.checkpoints import export_network

    folder.mkdir(parents=True, exist_ok=True)
    write_cifar100(folder / "data", train_per_class=1, test_per_class=1, seed=0)
    torch.manual_seed(0)
    teacher_path = export_network(create_model(PAIR[0], 100), PAIR[0], folder / "teacher.pth")
    teacher = TeacherConfig(PAIR[0], str(teacher_path))
    paraphraser = FTParaphraserInit(student=PAIR[1], teacher=teacher)
    ft_path = folder / "paraphraser.ckpt"
    torch.save({"hyper_parameters": dict(paraphraser.hparams), "state_dict": paraphraser.state_dict()}, ft_path)
    return {"data": folder / "data", "teacher": teacher, "paraphraser": str(ft_path)}


@contextlib.contextmanager
def probe_student(method: str) -> Iterator[str]:
    """The student's network name for ``method``: PAIR's, or its :data:`PROBE_STUDENTS` entry, registered for the
    duration (the registry is the same for every test: nothing else may see it)."""
    if method not in PROBE_STUDENTS:
        yield PAIR[1]
        return
    import models.registry as registry
    from models.imagenet.timm_nets import TimmViT

    name, spec = PROBE_STUDENTS[method]
    spec = dict(spec)
    timm_name = spec.pop("timm_name")
    registry.list_models()  # the families are registered first
    registry._REGISTRY[name] = registry.ModelEntry(
        name, "imagenet", lambda num_classes=1000: TimmViT(timm_name, num_classes, **spec)
    )
    try:
        yield name
    finally:
        registry._REGISTRY.pop(name, None)


def probe_module(method: str, setting: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(module, datamodule arguments) of ``method`` on resnet20 -> resnet8 (or its :data:`PROBE_STUDENTS` one)."""
    from benchmarks.configs import deep_merge
    from benchmarks.plan import load_preset
    from kd_modules import method_class

    cls = method_class(method)
    raw = _config_of(method)
    smoke = load_preset("smoke").method_init_args.get(method, {})
    args = deep_merge((raw.get("model") or {}).get("init_args") or {}, smoke)
    if method in PROBE_RECIPES:
        recipe = yaml.safe_load((REPO_ROOT / "configs" / "recipes" / f"{PROBE_RECIPES[method]}.yaml").read_text())
        args = deep_merge({"optim": recipe["model"]["init_args"]["optim"]}, args)
    if method == "FT":
        args["paraphraser_checkpoint"] = setting["paraphraser"]
    if method == "RCO" or (method == "KCD" and args.get("combine") == "rco"):
        args["anchor_checkpoints"] = [setting["teacher"].checkpoint] * 4
    if method == "KCD":  # no CE-only student needed (the planner provides it in tables)
        args["transformation"] = {**(args.get("transformation") or {}), "transform": "random"}
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
    with probe_student(method) as student:
        module = cls(student=student, num_classes=100, **args)
    data_args = dict((raw.get("data") or {}).get("init_args") or {})
    data_args.update(SMALL.get(method, {}).get("data", {}))
    return module, data_args


def bare_trainer(device: str, callbacks: list[Any], **settings: Any) -> Any:
    """A one-device Trainer on ``device`` ("cpu" | "cuda") without logger, checkpoints, progress bar or summary."""
    import lightning.pytorch as pl

    return pl.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        **settings,
    )


def probe_fit(
    module: Any,
    data_args: dict[str, Any],
    setting: dict[str, Any],
    steps: int,
    callbacks: list[Any],
    device: str = "cpu",
) -> Any:
    """``steps`` optimisation steps of ``module`` on the fixture (batch 8); returns the Trainer."""
    from datamodules import CIFAR100

    datamodule = CIFAR100(root=str(setting["data"]), batch_size=8, eval_batch_size=100, seed=0, **data_args)
    trainer = bare_trainer(device, callbacks, max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=datamodule)
    return trainer


class OpCount(TorchDispatchMode):
    """Counts the aten operators dispatched while it is active (``count``)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        self.count += 1
        return func(*args, **(kwargs or {}))


class CountOps(Callback):
    """Lightning callback: aten operators dispatched in each training batch after the first ``skip`` ones
    (forward, losses, logging, backward, optimiser step); ``counts[step]``."""

    def __init__(self, skip: int = 1) -> None:
        self.skip = skip
        self.counts: dict[int, int] = {}
        self._mode: OpCount | None = None

    def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step >= self.skip:
            self._mode = OpCount().__enter__()

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self.counts[trainer.global_step] = self._mode.count
            self._mode = None
