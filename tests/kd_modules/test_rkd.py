"""RKD: distances and angles against loops, scale invariance of both terms, the diagonal convention."""

from __future__ import annotations

import math

import pytest
import torch

from kd_modules.losses import rkd_angle_loss, rkd_distance_loss, rkd_loss
from kd_modules.losses.rkd import pairwise_distances


def _smooth_l1(a: float, b: float) -> float:
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


def _distance_matrix(x: list[list[float]]) -> list[list[float]]:
    n = len(x)
    d = [[math.dist(x[i], x[j]) if i != j else 0.0 for j in range(n)] for i in range(n)]
    positive = [v for row in d for v in row if v > 0]
    mean = sum(positive) / len(positive)
    return [[v / mean for v in row] for row in d]


def _angle(x: list[list[float]], i: int, j: int, k: int) -> float:
    # cos of the angle at e_i between e_j - e_i and e_k - e_i (zero when a difference vanishes)
    u = [a - b for a, b in zip(x[j], x[i])]
    v = [a - b for a, b in zip(x[k], x[i])]
    nu, nv = math.sqrt(sum(a * a for a in u)), math.sqrt(sum(a * a for a in v))
    if nu == 0 or nv == 0:
        return 0.0
    return sum(a * b for a, b in zip(u, v)) / (nu * nv)


def test_distance_and_angle_terms_match_loops() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(4, 3), torch.randn(4, 5)
    xs, xt = s.tolist(), t.tolist()
    ds, dt = _distance_matrix(xs), _distance_matrix(xt)
    distance = sum(_smooth_l1(ds[i][j], dt[i][j]) for i in range(4) for j in range(4)) / 16
    angle = (
        sum(_smooth_l1(_angle(xs, i, j, k), _angle(xt, i, j, k)) for i in range(4) for j in range(4) for k in range(4))
        / 64
    )
    assert rkd_distance_loss(s, t).item() == pytest.approx(distance, rel=1e-5)
    assert rkd_angle_loss(s, t).item() == pytest.approx(angle, rel=1e-5)
    assert rkd_loss(s, t).item() == pytest.approx(25 * distance + 50 * angle, rel=1e-5)


def test_distance_term_is_scale_invariant_and_angle_term_scale_and_shift_invariant() -> None:
    torch.manual_seed(1)
    s, t = torch.randn(6, 8), torch.randn(6, 16)
    assert torch.allclose(rkd_distance_loss(3.5 * s, 0.2 * t), rkd_distance_loss(s, t), atol=1e-6)
    assert torch.allclose(rkd_angle_loss(3.5 * s + 1.0, t - 2.0), rkd_angle_loss(s, t), atol=1e-6)
    assert rkd_loss(2.0 * t[:, :8], t[:, :8]).item() == pytest.approx(0.0, abs=1e-6)


def test_pairwise_distances_clamp_before_sqrt_and_zero_diagonal() -> None:
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    d = pairwise_distances(e)
    assert torch.equal(torch.diagonal(d), torch.zeros(3))
    assert d[0, 1].item() == pytest.approx(1e-6), "identical samples are sqrt(1e-12) apart, as the references"
    assert d[0, 2].item() == pytest.approx(1.0)


def test_teacher_side_carries_no_gradient() -> None:
    s = torch.randn(5, 4, requires_grad=True)
    t = torch.randn(5, 4, requires_grad=True)
    rkd_loss(s, t).backward()
    assert t.grad is None and s.grad is not None and torch.isfinite(s.grad).all()
