"""DIST: Pearson relations against loops, tau^2 scaling, the repository's weights."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from kd_modules import DIST, TeacherConfig
from kd_modules.losses import dist_loss
from kd_modules.losses.dist import inter_class_relation, intra_class_relation


def _pearson(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    da, db = [x - ma for x in a], [x - mb for x in b]
    return sum(x * y for x, y in zip(da, db)) / (
        math.sqrt(sum(x * x for x in da)) * math.sqrt(sum(y * y for y in db)) + 1e-8
    )


def test_relations_match_loops() -> None:
    torch.manual_seed(0)
    y_s, y_t = torch.rand(4, 6), torch.rand(4, 6)
    s, t = y_s.tolist(), y_t.tolist()
    inter = 1 - sum(_pearson(s[b], t[b]) for b in range(4)) / 4
    intra = 1 - sum(_pearson([r[k] for r in s], [r[k] for r in t]) for k in range(6)) / 6
    assert inter_class_relation(y_s, y_t).item() == pytest.approx(inter, rel=1e-5)
    assert intra_class_relation(y_s, y_t).item() == pytest.approx(intra, rel=1e-5)


def test_dist_loss_is_tau_squared_weighted_sum() -> None:
    torch.manual_seed(1)
    z_s, z_t = torch.randn(5, 7), torch.randn(5, 7)
    tau = 4.0
    y_s, y_t = torch.softmax(z_s / tau, 1), torch.softmax(z_t / tau, 1)
    expected = tau**2 * (2.0 * inter_class_relation(y_s, y_t) + 0.5 * intra_class_relation(y_s, y_t))
    assert torch.allclose(dist_loss(z_s, z_t, beta=2.0, gamma=0.5, tau=tau), expected)
    # identical logits: zero up to the 1e-8 in the correlation's denominator (columns of a small batch of soft
    # probabilities vary little, so it shows at the 1e-4 level after tau^2)
    assert dist_loss(z_t, z_t).item() == pytest.approx(0.0, abs=1e-3)
    assert dist_loss(z_s, z_t).item() > 0.1


def test_hand_worked_reversed_rows() -> None:
    y_s = torch.tensor([[0.1, 0.2, 0.7]])
    y_t = torch.tensor([[0.7, 0.2, 0.1]])
    # deviations from the mean 1/3, in thirtieths: (-7, -4, 11) and (11, -4, -7);
    # correlation = (-77 + 16 - 77) / (49 + 16 + 121) = -138 / 186
    assert inter_class_relation(y_s, y_t).item() == pytest.approx(1 + 138 / 186, rel=1e-5)
    # one sample: each class column has a single entry, zero deviation, correlation 0 / eps = 0
    assert intra_class_relation(y_s, y_t).item() == pytest.approx(1.0)


def test_module_uses_the_repository_weights(trained_teacher: Path) -> None:
    module = DIST(student="resnet8", teacher=TeacherConfig("resnet8", str(trained_teacher)))
    assert (module.ce_weight, module.kd_weight, module.beta, module.gamma, module.tau) == (1.0, 2.0, 1.0, 1.0, 4.0)
    torch.manual_seed(0)
    batch = {"images": torch.randn(4, 3, 32, 32), "labels": torch.tensor([1, 2, 3, 4])}
    logits, losses = module.training_losses(batch)
    expected = 2.0 * dist_loss(logits, module.teacher_logits(batch["images"]), 1.0, 1.0, 4.0)
    assert torch.allclose(losses["dist"], expected)
