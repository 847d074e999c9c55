"""KD loss against hand-worked values (no call into the code under test for the expected numbers)."""

from __future__ import annotations

import math

import torch

from kd_modules.losses import kd_loss


def test_two_class_hand_worked_example() -> None:
    # Row 1: teacher softmax(z/T) = (0.75, 0.25) (z_t = (T ln 3, 0)), student (0.5, 0.5):
    #   KL = 0.75 ln 1.5 + 0.25 ln 0.5 = 0.130812...
    # Row 2: teacher (0.5, 0.5), student (0.75, 0.25):
    #   KL = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25) = 0.143841...
    # batchmean = 0.137327, times T^2 = 4  ->  0.549306
    T = 2.0
    ln3 = math.log(3.0)
    student = torch.tensor([[0.0, 0.0], [T * ln3, 0.0]], requires_grad=True)
    teacher = torch.tensor([[T * ln3, 0.0], [0.0, 0.0]])
    expected = T**2 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5) + 0.5 * math.log(2 / 3) + 0.5 * math.log(2.0)) / 2
    assert abs(expected - 0.549306) < 1e-6
    loss = kd_loss(student, teacher, temperature=T)
    assert torch.isclose(loss, torch.tensor(expected), atol=1e-6)

    # d loss / d z_s = T^2 / B * (1/T) * (p_s - p_t) = T/B * (p_s - p_t)
    loss.backward()
    expected_grad = torch.tensor([[0.5 - 0.75, 0.5 - 0.25], [0.75 - 0.5, 0.25 - 0.5]]) * T / 2
    assert torch.allclose(student.grad, expected_grad, atol=1e-6)


def test_zero_when_student_matches_teacher_and_positive_otherwise() -> None:
    torch.manual_seed(0)
    z = torch.randn(5, 10)
    assert kd_loss(z, z).abs() < 1e-6
    assert kd_loss(torch.randn(5, 10), z) > 0


def test_temperature_one_equals_plain_kl_sum_over_classes() -> None:
    p_t = torch.tensor([[0.2, 0.3, 0.5]])
    p_s = torch.tensor([[0.1, 0.6, 0.3]])
    expected = sum(t * math.log(t / s) for t, s in zip(p_t[0].tolist(), p_s[0].tolist()))
    loss = kd_loss(p_s.log(), p_t.log(), temperature=1.0)
    assert abs(loss.item() - expected) < 1e-6
