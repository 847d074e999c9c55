"""ND / dino-loss and the ablation regularisers against hand-worked values and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from kd_modules.losses.nd import (
    classifier_weight_l2_loss,
    cosine_direction_loss,
    dino_loss,
    infonce_direction_loss,
    l2_feature_loss,
    reduce_per_sample,
    sifn_loss,
)

# Two classes: c_0 = (3, 4) (unit direction e_0 = (0.6, 0.8)) and c_1 = (0, 2) (e_1 = (0, 1)).
CENTERS = torch.tensor([[3.0, 4.0], [0.0, 2.0]])


def _close(actual: torch.Tensor, expected: list[list[float]]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), rtol=1e-5, atol=1e-6)


def _dino(student: list[list[float]], teacher: list[list[float]], labels: list[int], reduction: str = "batch"):
    f_s = torch.tensor(student, requires_grad=True)
    loss = dino_loss(f_s, torch.tensor(teacher), CENTERS, torch.tensor(labels), reduction)  # type: ignore[arg-type]
    loss.backward()
    return loss.item(), f_s.grad


def test_dino_teacher_norm_branch_value_and_gradient() -> None:
    # |f_s| = sqrt(5) < |f_t| = 3: loss = 1 - f_s.e / 3 = 1 - (0.6 + 1.6) / 3; gradient -e / 3 (the teacher norm is
    # a constant, so the loss pulls the projection on e up: norm and direction together).
    value, grad = _dino([[1.0, 2.0]], [[3.0, 0.0]], [0])
    assert value == pytest.approx(1 - 2.2 / 3)
    _close(grad, [[-0.6 / 3, -0.8 / 3]])


def test_dino_student_norm_branch_value_and_gradient() -> None:
    # |f_s| = 5 > |f_t| = 3: loss = 1 - cos(f_s, e) = 1 - (2.4 + 2.4) / 5 = 0.04;
    # gradient -(e/|f| - (f.e) f / |f|^3) = -((0.12, 0.16) - 4.8 (4, 3) / 125) = (0.0336, -0.0448):
    # direction only, orthogonal to f_s (no pull on the norm).
    value, grad = _dino([[4.0, 3.0]], [[3.0, 0.0]], [0])
    assert value == pytest.approx(0.04)
    _close(grad, [[0.0336, -0.0448]])
    assert float(grad[0] @ torch.tensor([4.0, 3.0])) == pytest.approx(0.0, abs=1e-7)


def test_dino_batch_mean_and_class_balanced_mean() -> None:
    # Per-sample losses: 1 - 2.2/3 (class 0, teacher branch), 0.04 (class 0, student branch),
    # 1 - (f.e_1)/max(1, 2) = 1 - 1/2 = 0.5 (class 1, teacher branch).
    first, second, third = 1 - 2.2 / 3, 0.04, 0.5
    student, teacher, labels = [[1.0, 2.0], [4.0, 3.0], [0.0, 1.0]], [[3.0, 0.0], [3.0, 0.0], [0.0, 2.0]], [0, 0, 1]
    value, grad = _dino(student, teacher, labels)  # the official code: plain mean over the batch
    assert value == pytest.approx((first + second + third) / 3)
    _close(
        grad,
        [[-0.2 / 3, -0.8 / 9], [0.0336 / 3, -0.0448 / 3], [0.0, -0.5 / 3]],  # each sample's gradient / B
    )
    balanced, balanced_grad = _dino(student, teacher, labels, "class_balanced")  # paper Eq. 7
    assert balanced == pytest.approx(((first + second) / 2 + third) / 2)
    # Class 0 has two samples (weight 1/2 * 1/2 each), class 1 one (weight 1/2).
    _close(balanced_grad, [[-0.2 / 4, -0.8 / 12], [0.0336 / 4, -0.0448 / 4], [0.0, -0.25]])


def test_dino_student_wins_a_tie_like_pythons_max() -> None:
    # |f_s| = |f_t| = 5: the official `max(s.norm(), t.norm())` returns the student's norm, whose gradient flows.
    _, grad = _dino([[4.0, 3.0]], [[0.0, 5.0]], [0])
    _close(grad, [[0.0336, -0.0448]])


def test_cosine_direction_loss_eq1() -> None:
    f_s = torch.tensor([[1.0, 2.0], [0.0, 3.0]])
    # cos((1, 2), (3, 4)) = 11 / (sqrt(5) * 5); cos((0, 3), (0, 2)) = 1.
    expected = ((1 - 11 / (5 * math.sqrt(5))) + 0.0) / 2
    assert cosine_direction_loss(f_s, CENTERS, torch.tensor([0, 1])).item() == pytest.approx(expected)


def test_infonce_direction_loss_eq2() -> None:
    f_s = torch.tensor([[1.0, 2.0]])
    cos_own, cos_other = 11 / (5 * math.sqrt(5)), 2 / math.sqrt(5)
    expected = -math.log(math.exp(cos_own) / (math.exp(cos_own) + math.exp(cos_other)))
    assert infonce_direction_loss(f_s, CENTERS, torch.tensor([0])).item() == pytest.approx(expected)


def test_l2_feature_loss_eq3_per_dimension() -> None:
    f_s, f_t = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    # ||(-2, 2)||^2 / 2 = 4 and ||(-1, -1)||^2 / 2 = 1.
    assert l2_feature_loss(f_s, f_t, torch.tensor([0, 1]), 2).item() == pytest.approx(2.5)
    assert l2_feature_loss(f_s, f_t, torch.tensor([0, 0]), 2, "class_balanced").item() == pytest.approx(2.5)


def test_sifn_pushes_the_norm_up_by_a_constant_step() -> None:
    f_s = torch.tensor([[3.0, 4.0], [0.0, 2.0]], requires_grad=True)
    loss = sifn_loss(f_s, step=0.5)
    loss.backward()
    assert loss.item() == pytest.approx(0.25)  # (|f| - (|f| + r))^2 = r^2
    # d/df (|f| - sg(|f|) - r)^2 / B = -2 r (f / |f|) / B
    _close(f_s.grad, [[-0.5 * 0.6, -0.5 * 0.8], [0.0, -0.5]])


def test_classifier_weight_l2() -> None:
    student, teacher = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[1.0, 0.0], [3.0, 6.0]])
    assert classifier_weight_l2_loss(student, teacher).item() == pytest.approx((0 + 4 + 0 + 4) / 4)


def test_unknown_reduction_names_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown reduction 'per_class'; valid: batch, class_balanced"):
        reduce_per_sample(torch.ones(2), torch.zeros(2, dtype=torch.long), 2, "per_class")  # type: ignore[arg-type]
