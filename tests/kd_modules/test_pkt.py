"""PKT: the affinity KL against loops; zero for identical relations."""

from __future__ import annotations

import math

import pytest
import torch

from kd_modules.losses import pkt_loss


def _affinities(x: list[list[float]], eps: float) -> list[list[float]]:
    unit = [[v / (math.sqrt(sum(u * u for u in row)) + eps) for v in row] for row in x]
    sim = [[(sum(a * b for a, b in zip(p, q)) + 1) / 2 for q in unit] for p in unit]
    return [[v / sum(row) for v in row] for row in sim]


def test_matches_loops() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(5, 3), torch.randn(5, 7)
    eps = 1e-7
    p, q = _affinities(s.tolist(), eps), _affinities(t.tolist(), eps)
    expected = sum(q[i][j] * math.log((q[i][j] + eps) / (p[i][j] + eps)) for i in range(5) for j in range(5)) / 25
    assert pkt_loss(s, t).item() == pytest.approx(expected, rel=1e-5, abs=1e-9)


def test_hand_worked_two_samples() -> None:
    # Student: orthogonal samples -> S = [[1, .5], [.5, 1]] -> P rows (2/3, 1/3).
    # Teacher: identical samples -> S all 1 -> Q rows (1/2, 1/2).
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    expected = 2 * (0.5 * math.log(0.5 / (2 / 3)) + 0.5 * math.log(0.5 / (1 / 3))) / 4
    assert pkt_loss(s, t).item() == pytest.approx(expected, rel=1e-5)


def test_zero_for_the_same_cosine_structure_and_zero_rows_are_harmless() -> None:
    torch.manual_seed(1)
    t = torch.randn(6, 4)
    assert pkt_loss(3.0 * t, t).item() == pytest.approx(0.0, abs=1e-7)
    s = torch.randn(6, 4)
    s[2] = 0.0  # a dead embedding: normalised to 0 (not NaN)
    assert torch.isfinite(pkt_loss(s, t))
