"""The shared LightningModule: schedules, teacher handling, checkpoints."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from benchmarks.cli import KDBenchCLI
from kd_modules import KD, OptimConfig, TeacherConfig, Vanilla, method_class, method_names
from models.checkpoints import CheckpointMismatchError


def test_step_schedule_matches_repdistiller_epochs() -> None:
    # RepDistiller: lr * 0.1 ** (number of milestones passed), 1-based epochs 151-180 at 0.1x.  0-based here.
    optim = OptimConfig(lr=0.05, milestones=[150, 180, 210])
    factors = {t: optim.factor(t, 240) for t in (0, 149, 150, 179, 180, 209, 210, 239)}
    assert factors == pytest.approx({0: 1, 149: 1, 150: 0.1, 179: 0.1, 180: 0.01, 209: 0.01, 210: 1e-3, 239: 1e-3})


def test_cosine_and_warmup() -> None:
    cosine = OptimConfig(schedule="cosine")
    assert cosine.factor(0, 100) == pytest.approx(1.0)
    assert cosine.factor(50, 100) == pytest.approx(0.5)
    assert cosine.factor(100, 100) == pytest.approx(0.0, abs=1e-12)
    warm = OptimConfig(schedule="constant", warmup=5, warmup_start_factor=0.1)
    assert [round(warm.factor(t, 10), 3) for t in range(7)] == [0.1, 0.28, 0.46, 0.64, 0.82, 1.0, 1.0]


class _TeacherWatch(pl.Callback):
    def __init__(self) -> None:
        self.teacher_modes: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # type: ignore[no-untyped-def]
        self.teacher_modes.append(pl_module.teacher.training)


def test_teacher_stays_frozen_in_eval_mode(cifar_root: Path, trained_teacher: Path) -> None:
    from datamodules import CIFAR100

    module = KD(student="resnet8", teacher=TeacherConfig("resnet8", str(trained_teacher)), optim=OptimConfig(lr=0.1))
    before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    watch = _TeacherWatch()
    trainer = pl.Trainer(
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[watch],
    )
    trainer.fit(module, datamodule=CIFAR100(root=str(cifar_root), batch_size=16, eval_batch_size=100))
    assert watch.teacher_modes and not any(watch.teacher_modes)
    after = module.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "teacher weights or BN statistics changed"
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not any(id(p) in optimised for p in module.teacher.parameters())
    assert not any(k.startswith("teacher.") for k in module.state_dict())


def test_learning_rate_follows_schedule_in_a_real_fit(cifar_root: Path, tmp_path: Path, fit_args) -> None:  # type: ignore[no-untyped-def]
    args = fit_args(
        cifar_root,
        tmp_path,
        "--model=Vanilla",
        "--model.student=resnet8",
        "--trainer.max_epochs=3",
        "--model.optim.lr=0.05",
        "--model.optim.milestones=[1,2]",
    )
    KDBenchCLI(args=args)
    with open(tmp_path / "csv" / "metrics.csv") as handle:
        lrs = [float(r["lr-SGD"]) for r in csv.DictReader(handle) if r.get("lr-SGD")]
    assert lrs == pytest.approx([0.05, 0.005, 0.0005])


def test_wrong_architecture_teacher_names_both(trained_teacher: Path) -> None:
    with pytest.raises(CheckpointMismatchError, match=r"resnet8.*resnet14"):
        KD(student="resnet8", teacher=TeacherConfig("resnet14", str(trained_teacher)))


def test_vanilla_ignores_teacher(trained_teacher: Path) -> None:
    module = Vanilla(student="resnet8", teacher=TeacherConfig("resnet8", str(trained_teacher)))
    assert module.teacher is None


def test_kd_needs_a_teacher() -> None:
    # Not Python's missing-argument TypeError: the method's own requires_teacher check, naming the CLI keys.
    with pytest.raises(
        ValueError, match=r"^KD needs a teacher: pass --model.teacher.arch and --model.teacher.checkpoint"
    ):
        KD(student="resnet8", teacher=None)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", [n for n in method_names() if method_class(n).requires_teacher])
def test_every_distilling_method_refuses_to_run_without_a_teacher(name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name} needs a teacher"):
        method_class(name)(student="resnet8", teacher=None)
