"""SP: values against explicit Gram-matrix loops, scale invariance, the feature SP reads."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from kd_modules import SP, TeacherConfig
from kd_modules.losses import sp_loss


def _sp_by_loops(f_s: torch.Tensor, f_t: torch.Tensor) -> float:
    b = f_s.shape[0]

    def normalised_gram(f: torch.Tensor) -> list[list[float]]:
        q = f.reshape(b, -1).tolist()
        gram = [[sum(x * y for x, y in zip(q[i], q[j])) for j in range(b)] for i in range(b)]
        return [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in gram]

    g_s, g_t = normalised_gram(f_s), normalised_gram(f_t)
    return sum((g_t[i][j] - g_s[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def test_sp_loss_matches_loops_for_different_channels_and_sizes() -> None:
    torch.manual_seed(0)
    f_s, f_t = torch.randn(4, 3, 2, 2).relu(), torch.randn(4, 5, 3, 3).relu()
    assert abs(sp_loss(f_s, f_t).item() - _sp_by_loops(f_s, f_t)) < 1e-6


def test_hand_worked_two_samples() -> None:
    # Student samples orthogonal: G_s rows (1, 0), (0, 1).  Teacher samples equal: every row (1, 1)/sqrt2.
    f_s = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).view(2, 2, 1, 1)
    f_t = torch.tensor([[1.0, 1.0], [1.0, 1.0]]).view(2, 2, 1, 1)
    r = 1 / math.sqrt(2)
    expected = 2 * ((1 - r) ** 2 + r**2) / 4
    assert abs(sp_loss(f_s, f_t).item() - expected) < 1e-6


def test_invariant_to_scaling_either_map() -> None:
    torch.manual_seed(1)
    f_s, f_t = torch.randn(5, 3, 4, 4), torch.randn(5, 6, 2, 2)
    assert torch.allclose(sp_loss(7.0 * f_s, 0.1 * f_t), sp_loss(f_s, f_t), atol=1e-6)
    assert sp_loss(f_s, f_s).item() == 0.0


def test_module_uses_the_last_stage_output(trained_teacher: Path) -> None:
    module = SP(student="resnet8", teacher=TeacherConfig("resnet8", str(trained_teacher)))
    torch.manual_seed(0)
    images = torch.randn(4, 3, 32, 32)
    s, t = module.student.forward_features(images), module.teacher_features(images)
    losses = module.feature_losses(s, t, {})
    assert torch.allclose(losses["sp"], sp_loss(s.stages_post[-1], t.stages_post[-1]))
