"""NST: the polynomial-kernel MMD against per-sample loops; each mean over its own matrix size."""

from __future__ import annotations

import math

import pytest
import torch

from kd_modules.losses import nst_loss, nst_loss_layers


def _kernel_mean(a: list[list[float]], b: list[list[float]]) -> float:
    return sum(sum(x * y for x, y in zip(p, q)) ** 2 for p in a for q in b) / (len(a) * len(b))


def _unit_rows(f: torch.Tensor) -> list[list[float]]:
    rows = f.reshape(f.shape[0], -1).tolist()
    return [[v / max(math.sqrt(sum(u * u for u in r)), 1e-12) for v in r] for r in rows]


def test_matches_loops_with_different_channel_counts() -> None:
    torch.manual_seed(0)
    f_s, f_t = torch.randn(2, 3, 2, 2).relu(), torch.randn(2, 5, 2, 2).relu()
    expected = 0.0
    for b in range(2):
        s, t = _unit_rows(f_s[b]), _unit_rows(f_t[b])
        expected += _kernel_mean(t, t) + _kernel_mean(s, s) - 2 * _kernel_mean(s, t)
    assert nst_loss(f_s, f_t).item() == pytest.approx(expected / 2, rel=1e-5, abs=1e-7)


def test_zero_for_identical_maps_and_teacher_term_constant() -> None:
    torch.manual_seed(1)
    f = torch.randn(3, 4, 3, 3)
    assert nst_loss(f, f).item() == pytest.approx(0.0, abs=1e-6)
    f_t = torch.randn(3, 6, 6, 6, requires_grad=True)
    f_s = torch.randn(3, 4, 3, 3, requires_grad=True)
    nst_loss(f_s, f_t).backward()
    assert f_s.grad is not None
    assert f_t.grad is not None  # through the cross term only: the teacher-teacher term is detached
    f_t2 = f_t.detach().clone().requires_grad_(True)
    # d/dt of the detached term is zero: the gradient equals that of -2 * mean k(s, t) alone
    s = torch.nn.functional.normalize(f_s.detach().flatten(2), dim=2)
    t = torch.nn.functional.normalize(torch.nn.functional.adaptive_avg_pool2d(f_t2, (3, 3)).flatten(2), dim=2)
    (-2 * torch.bmm(t, s.transpose(1, 2)).pow(2).mean()).backward()
    assert torch.allclose(f_t.grad, f_t2.grad, atol=1e-7)


def test_layers_zip_from_the_start() -> None:
    torch.manual_seed(2)
    s = [torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2)]
    t = [torch.randn(2, 5, 4, 4)]
    assert torch.allclose(nst_loss_layers(s, t), nst_loss(s[0], t[0]))
