"""The ViT recipes' pieces in the base module: AdamW with timm's no-decay groups, the warm-up + half-cycle cosine
updated per step (ND's ``adjust_learning_rate``), label smoothing, batch mixup / CutMix with their targets, stochastic
depth."""

from __future__ import annotations

import json
import math
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from benchmarks.cli import KDBenchCLI
from kd_modules.base import OptimConfig
from kd_modules.errors import MethodConfigError
from kd_modules.kd import KD
from kd_modules.vanilla import Vanilla


def _nd_adjust_learning_rate(epoch: float, lr: float, min_lr: float, warmup: int, epochs: int) -> float:
    """ND's ``ImageNet/DeiT/utils.py::adjust_learning_rate`` (MAE's), written out from its text."""
    if epoch < warmup:
        return lr * epoch / warmup
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup)))


def test_warmup_cosine_is_nds_schedule() -> None:
    optim = OptimConfig(lr=8e-4, schedule="warmup_cosine", warmup=20, warmup_start_factor=0.0, min_lr=1e-6)
    for epoch in (0.0, 0.5, 7.25, 19.99, 20.0, 100.3, 250.0, 299.9, 300.0):
        expected = _nd_adjust_learning_rate(epoch, 8e-4, 1e-6, 20, 300)
        assert optim.lr * optim.factor(epoch, 300) == pytest.approx(expected, rel=1e-9, abs=1e-15), epoch
    # The other schedules are unchanged by the new fields.
    assert OptimConfig(lr=0.1, milestones=[2]).factor(3, 10) == pytest.approx(0.1)


def test_adamw_groups_and_per_step_schedule(tmp_path: Path) -> None:
    import lightning.pytorch as pl

    optim = OptimConfig(
        optimizer="adamw",
        lr=1e-3,
        betas=[0.9, 0.95],
        weight_decay=0.3,
        decay_norm_and_bias=False,
        schedule="warmup_cosine",
        warmup=1,
        warmup_start_factor=0.0,
        per_step=True,
    )
    module = Vanilla("resnet8", optim=optim)
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, accelerator="cpu")
    module.trainer = trainer
    steps = mock.PropertyMock(return_value=12)  # 3 epochs of 4 steps
    with mock.patch.object(type(trainer), "estimated_stepping_batches", steps):
        config = module.configure_optimizers()
    optimizer = config["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["betas"] == (0.9, 0.95)
    plain, decayed = optimizer.param_groups
    names = {id(p): n for n, p in module.student.named_parameters()}
    assert plain["weight_decay"] == 0.0 and decayed["weight_decay"] == 0.3
    assert all(p.ndim <= 1 for p in plain["params"]) and all(p.ndim > 1 for p in decayed["params"])
    assert any(names[id(p)].endswith("fc.bias") for p in plain["params"])
    assert config["lr_scheduler"]["interval"] == "step"
    scheduler = config["lr_scheduler"]["scheduler"]
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # Fractional epochs: step s is epoch s / 4; linear warm-up over the first epoch, then the cosine.
    assert seen[:4] == pytest.approx([1e-3 * s / 4 for s in range(4)])
    assert seen[5] == pytest.approx(_nd_adjust_learning_rate(5 / 4, 1e-3, 0.0, 1, 3))


def test_mixing_targets_and_classification_loss() -> None:
    torch.manual_seed(0)
    module = Vanilla("resnet8", optim=OptimConfig(mixup_alpha=0.8, label_smoothing=0.1))
    images = torch.randn(4, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 3])
    mixed = module.mix_batch({"images": images, "labels": labels})
    lam = float(mixed["mix_lambda"])
    assert 0.0 <= lam <= 1.0
    torch.testing.assert_close(mixed["images"], lam * images + (1 - lam) * images.flip(0))
    off, on = 0.1 / 100, 1 - 0.1 + 0.1 / 100
    expected = torch.full((4, 100), off)
    expected[torch.arange(4), labels] = on
    expected = lam * expected + (1 - lam) * expected.flip(0)
    torch.testing.assert_close(mixed["targets"], expected)
    logits = torch.randn(4, 100)
    soft = -(expected * F.log_softmax(logits, dim=1)).sum(1).mean()
    torch.testing.assert_close(module.classification_loss(logits, mixed), soft)
    # Without mixing: torch's label-smoothed cross-entropy.
    plain = module.classification_loss(logits, {"labels": labels})
    torch.testing.assert_close(plain, F.cross_entropy(logits, labels, label_smoothing=0.1))
    # Same step, same seed: the same draw (a resumed run mixes as the first one did).
    again = module.mix_batch({"images": images, "labels": labels})
    assert float(again["mix_lambda"]) == lam


def test_cutmix_pastes_a_box_and_corrects_lambda() -> None:
    module = Vanilla("resnet8", optim=OptimConfig(cutmix_alpha=1.0))
    images = torch.arange(2, dtype=torch.float32).view(2, 1, 1, 1).expand(2, 3, 32, 32).clone()
    mixed = module.mix_batch({"images": images, "labels": torch.tensor([0, 1])})
    first = mixed["images"][0, 0]
    pasted = float((first == 1).float().mean())  # the share of image 0 that came from image 1
    assert float(mixed["mix_lambda"]) == pytest.approx(1.0 - pasted)
    assert mixed["targets"][0, 0] == pytest.approx(1.0 - pasted) and mixed["targets"][0, 1] == pytest.approx(pasted)


def test_methods_with_their_own_cross_entropy_refuse_mixing(trained_teacher: Path) -> None:
    from kd_modules.base import TeacherConfig

    with pytest.raises(MethodConfigError, match="KD computes its own cross-entropy"):
        KD("resnet8", TeacherConfig("resnet8", str(trained_teacher)), optim=OptimConfig(label_smoothing=0.1))
    with pytest.raises(Exception, match="stochastic depth"):
        Vanilla("resnet8", optim=OptimConfig(drop_path=0.1))
    vit = Vanilla("vit_s", num_classes=10, optim=OptimConfig(drop_path=0.1))
    assert vit.student.drop_path_rate == 0.1


def test_vanilla_trains_with_mixup_through_the_cli(cifar_root: Path, tmp_path: Path, fit_args) -> None:  # type: ignore[no-untyped-def]
    run_dir = tmp_path / "mix"
    KDBenchCLI(
        args=fit_args(
            cifar_root,
            run_dir,
            "--model=Vanilla",
            "--model.student=resnet8",
            "--model.optim.mixup_alpha=0.8",
            "--model.optim.cutmix_alpha=1.0",
            "--model.optim.label_smoothing=0.1",
            "--model.optim.optimizer=adamw",
            "--model.optim.lr=0.001",
        )
    )
    record = json.loads((run_dir / "record.json").read_text())
    assert record["steps"] == 2 and math.isfinite(record["metrics"]["best_top1"])
