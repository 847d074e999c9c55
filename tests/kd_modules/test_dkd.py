"""DKD: TCKD/NCKD by hand, the KD decomposition of the DKD paper, the warm-up ramp."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from kd_modules import DKD, TeacherConfig
from kd_modules.losses import dkd_loss, kd_loss, nckd_loss, tckd_loss


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def test_hand_worked_three_classes() -> None:
    # T = 1, target class 0.  Teacher p = (1/2, 1/4, 1/4), student p = (1/4, 1/2, 1/4) (log-probabilities as logits).
    p_t, p_s = [0.5, 0.25, 0.25], [0.25, 0.5, 0.25]
    z_t, z_s = torch.tensor([p_t]).log(), torch.tensor([p_s]).log()
    labels = torch.tensor([0])
    tckd = _kl([0.5, 0.5], [0.25, 0.75])
    nckd = _kl([0.5, 0.5], [2 / 3, 1 / 3])  # non-target classes renormalised
    assert tckd_loss(z_s, z_t, labels, 1.0).item() == pytest.approx(tckd, rel=1e-5)
    assert nckd_loss(z_s, z_t, labels, 1.0).item() == pytest.approx(nckd, rel=1e-5)
    assert dkd_loss(z_s, z_t, labels, 2.0, 3.0, 1.0).item() == pytest.approx(2 * tckd + 3 * nckd, rel=1e-5)


def test_kd_is_tckd_plus_weighted_nckd_per_sample() -> None:
    # DKD paper Eq. (3): KD = TCKD + (1 - p^t_gt) NCKD, per sample (T^2 on both sides).
    torch.manual_seed(0)
    T = 4.0
    z_s, z_t = 3 * torch.randn(5, 10), 3 * torch.randn(5, 10)
    labels = torch.tensor([0, 3, 9, 3, 5])
    for b in range(5):
        s, t, y = z_s[b : b + 1], z_t[b : b + 1], labels[b : b + 1]
        non_target_mass = 1 - torch.softmax(t / T, dim=1)[0, y].item()
        kd = kd_loss(s, t, T)
        assert torch.allclose(kd, tckd_loss(s, t, y, T) + non_target_mass * nckd_loss(s, t, y, T), rtol=1e-4)
        assert torch.allclose(kd, dkd_loss(s, t, y, alpha=1.0, beta=non_target_mass, temperature=T), rtol=1e-4)


def test_nckd_ignores_the_target_logit_and_tckd_sees_only_the_binary_split() -> None:
    torch.manual_seed(1)
    z_s, z_t = torch.randn(4, 6), torch.randn(4, 6)
    labels = torch.tensor([1, 0, 5, 2])
    bumped = z_s.clone()
    bumped[torch.arange(4), labels] += 2.0
    assert torch.allclose(nckd_loss(bumped, z_t, labels), nckd_loss(z_s, z_t, labels), atol=1e-6)
    # a non-target permutation of the student logits keeps the binary split
    permuted = z_s.clone()
    permuted[0, [0, 2, 3, 4, 5]] = z_s[0, [5, 4, 3, 2, 0]]
    assert torch.allclose(tckd_loss(permuted, z_t, labels), tckd_loss(z_s, z_t, labels), atol=1e-6)


def test_warmup_follows_mdistillers_one_based_epochs(trained_teacher: Path) -> None:
    teacher = TeacherConfig("resnet8", str(trained_teacher))
    module = DKD(student="resnet8", teacher=teacher)
    assert [module.warmup_factor(e) for e in (0, 1, 18, 19, 40)] == pytest.approx([0.05, 0.1, 0.95, 1.0, 1.0])
    zero_based = DKD(student="resnet8", teacher=teacher, warmup_zero_based=True)
    assert [zero_based.warmup_factor(e) for e in (0, 1, 20)] == pytest.approx([0.0, 0.05, 1.0])
    assert DKD(student="resnet8", teacher=teacher, warmup_epochs=0).warmup_factor(0) == 1.0


def test_module_terms(trained_teacher: Path) -> None:
    module = DKD(student="resnet8", teacher=TeacherConfig("resnet8", str(trained_teacher)), beta=2.0)
    torch.manual_seed(0)
    batch = {"images": torch.randn(4, 3, 32, 32), "labels": torch.tensor([1, 2, 3, 4])}
    logits, losses = module.training_losses(batch)
    t = module.teacher_logits(batch["images"])
    # current_epoch is 0 outside a trainer: factor 1/20
    assert torch.allclose(losses["nckd"], 0.05 * 2.0 * nckd_loss(logits, t, batch["labels"]), rtol=1e-5)
    assert torch.allclose(losses["tckd"], 0.05 * tckd_loss(logits, t, batch["labels"]), rtol=1e-5)
