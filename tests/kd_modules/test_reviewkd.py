"""ReviewKD: HCL against hand-worked values, the ABF stack built from the contracts, the warm-up, a real run."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.cli import KDBenchCLI
from kd_modules.losses.reviewkd import hcl_loss
from kd_modules.reviewkd import ReviewConnector, loss_ramp
from models import create_model
from models.checkpoints import load_network


def test_hcl_single_pixel_level_is_plain_mse() -> None:
    student, teacher = torch.zeros(2, 3, 1, 1), torch.full((2, 3, 1, 1), 2.0)
    assert hcl_loss([student], [teacher]).item() == pytest.approx(4.0)


def test_hcl_two_by_two_uses_only_the_global_pool() -> None:
    student, teacher = torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    # MSE = (1 + 4 + 9 + 16) / 4 = 7.5; the 1x1 pool: (2.5)^2 = 6.25 with weight 1/2; total weight 1.5.
    assert hcl_loss([student], [teacher]).item() == pytest.approx((7.5 + 0.5 * 6.25) / 1.5)


def test_hcl_four_by_four_skips_the_4x4_pool() -> None:
    student, teacher = torch.zeros(1, 1, 4, 4), torch.arange(16.0).view(1, 1, 4, 4)
    full = (np.arange(16.0) ** 2).mean()  # 77.5
    pool2 = np.mean(np.array([2.5, 4.5, 10.5, 12.5]) ** 2)  # 2x2 block means of 0..15
    pool1 = 7.5**2
    expected = (full + 0.5 * pool2 + 0.25 * pool1) / 1.75
    assert hcl_loss([student], [teacher]).item() == pytest.approx(expected)


def test_hcl_sums_levels_and_halves_weights_from_8x8() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3, 8, 8)), rng.normal(size=(2, 3, 8, 8))

    def block_mse(size: int) -> float:  # average pooling written as a reshape, independent of F.adaptive_avg_pool2d
        k = 8 // size
        pa = a.reshape(2, 3, size, k, size, k).mean(axis=(3, 5))
        pb = b.reshape(2, 3, size, k, size, k).mean(axis=(3, 5))
        return float(((pa - pb) ** 2).mean())

    level8 = (block_mse(8) + 0.5 * block_mse(4) + 0.25 * block_mse(2) + 0.125 * block_mse(1)) / 1.875
    level1 = float(((a.mean(axis=(2, 3)) - b.mean(axis=(2, 3))) ** 2).mean())
    student = [torch.tensor(a, dtype=torch.float64), torch.tensor(a.mean(axis=(2, 3), keepdims=True))]
    teacher = [torch.tensor(b, dtype=torch.float64), torch.tensor(b.mean(axis=(2, 3), keepdims=True))]
    assert hcl_loss(student, teacher).item() == pytest.approx(level8 + level1)


def test_warmup_ramp_counts_epochs_from_zero_by_default() -> None:
    assert [loss_ramp(e, 20) for e in (0, 10, 20, 30)] == [0.0, 0.5, 1.0, 1.0]
    assert loss_ramp(0, 20, one_based=True) == pytest.approx(0.05)  # mdistiller
    assert loss_ramp(0, 0) == 1.0


@pytest.mark.parametrize(
    "teacher, in_channels, out_channels",
    [("resnet56", [16, 32, 64, 64], [16, 32, 64, 64]), ("resnet32x4", [16, 32, 64, 64], [64, 128, 256, 256])],
)
def test_abf_stack_follows_the_contracts(teacher: str, in_channels, out_channels) -> None:  # type: ignore[no-untyped-def]
    student_net, teacher_net = create_model("resnet20", 100).eval(), create_model(teacher, 100).eval()
    review = ReviewConnector(student_net, teacher_net)
    # The official build_review_kd tables for these students: 4 ABFs, mid width min(512, last in-channel).
    assert review.in_channels == in_channels and review.out_channels == out_channels
    assert review.mid_channels == 64 and len(review.abfs) == 4
    assert review.abfs[0].att_conv is None and all(abf.att_conv is not None for abf in review.abfs[1:])
    images = torch.randn(3, 3, 32, 32)
    student, target = student_net.forward_features(images), teacher_net.forward_features(images)
    targets = review.teacher_levels(target)
    outputs = review(review.student_levels(student), [tuple(t.shape[-2:]) for t in targets])
    assert [tuple(o.shape) for o in outputs] == [tuple(t.shape) for t in targets]
    assert [tuple(t.shape[1:]) for t in targets] == [(c, s, s) for c, s in zip(out_channels, (32, 16, 8, 1))]
    assert torch.equal(targets[0], target.stages_pre[0]), "teacher targets are pre-activation stage features"


def test_reviewkd_trains_and_exports_only_the_student(
    cifar_root: Path, tmp_path: Path, fit_args, trained_teacher
) -> None:  # type: ignore[no-untyped-def]
    args = fit_args(
        cifar_root,
        tmp_path,
        "--model=ReviewKD",
        "--model.student=resnet8",
        "--model.teacher.arch=resnet8",
        f"--model.teacher.checkpoint={trained_teacher}",
        "--model.review_weight=5.0",
        "--model.warmup_epochs=1",
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=1",
    )
    KDBenchCLI(args=args)
    with open(tmp_path / "csv" / "metrics.csv") as handle:
        review = [float(r["train/review"]) for r in csv.DictReader(handle) if r.get("train/review")]
    assert review[0] == 0.0 and review[1] > 0.0, "0-based warm-up: no HCL term in the first epoch"
    student = load_network("resnet8", 100, tmp_path / "final.pth")  # strict: no ABF keys in the export
    assert sum(p.numel() for p in student.parameters()) == sum(
        p.numel() for p in create_model("resnet8", 100).parameters()
    )
