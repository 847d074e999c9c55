"""NORM's pure loss functions against hand-worked values and against differently written formulations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kd_modules.losses.norm import align_spatial, mmd_poly2, norm_loss, norm_ramp, segment_distances, standardize_logits

# One sample, C_t = 2 channels, 1x2 pixels, N = 2 segments.
#   teacher   ch0 = [1, 2]   ch1 = [0, -1]
#   segment 1 ch0 = [1, 0]   ch1 = [0, 0]    differences [0, -2], [0, 1]  -> squares 0 4 0 1 -> MSE 5/4
#   segment 2 ch0 = [3, 2]   ch1 = [2, -1]   differences [2, 0],  [2, 0]  -> squares 4 0 4 0 -> MSE 8/4
TEACHER = torch.tensor([[[[1.0, 2.0]], [[0.0, -1.0]]]])
EXPANDED = torch.tensor([[[[1.0, 0.0]], [[0.0, 0.0]], [[3.0, 2.0]], [[2.0, -1.0]]]])


def test_hand_worked_l2_both_normalisations() -> None:
    # Released code: sum over segments = 1.25 + 2 = 3.25 (= N x mean MSE against the tiled teacher = 2 x 13/8).
    assert norm_loss(EXPANDED, TEACHER, 2, reduction="sum").item() == pytest.approx(3.25)
    # Paper Eq. 3: (1/N) sum = 1.625.
    assert norm_loss(EXPANDED, TEACHER, 2, reduction="mean").item() == pytest.approx(1.625)
    # Only the first segment (Fig. 4, 1 of 2): 1.25 under both normalisations.
    assert norm_loss(EXPANDED, TEACHER, 2, segments_used=1, reduction="sum").item() == pytest.approx(1.25)
    assert norm_loss(EXPANDED, TEACHER, 2, segments_used=1, reduction="mean").item() == pytest.approx(1.25)


def test_hand_worked_l1() -> None:
    # |differences|: segment 1: 0 2 0 1 -> 3/4; segment 2: 2 0 2 0 -> 1.
    assert norm_loss(EXPANDED, TEACHER, 2, distance="l1", reduction="sum").item() == pytest.approx(1.75)
    assert norm_loss(EXPANDED, TEACHER, 2, distance="l1", reduction="mean").item() == pytest.approx(0.875)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16])
def test_segment_split_equals_tiling_the_teacher(n: int) -> None:
    # The released code: F.mse_loss(F_se, F_t.repeat(1, N, 1, 1)) * N; and an explicit per-segment loop.
    torch.manual_seed(n)
    teacher = torch.randn(3, 5, 4, 4)
    expanded = torch.randn(3, 5 * n, 4, 4)
    tiled = F.mse_loss(expanded, teacher.repeat(1, n, 1, 1)) * n
    looped = sum(F.mse_loss(chunk, teacher) for chunk in torch.chunk(expanded, n, dim=1))
    assert torch.allclose(norm_loss(expanded, teacher, n, reduction="sum"), tiled, rtol=1e-5)
    assert torch.allclose(norm_loss(expanded, teacher, n, reduction="sum"), looped, rtol=1e-5)
    assert torch.allclose(norm_loss(expanded, teacher, n, reduction="mean"), looped / n, rtol=1e-5)
    per_segment = segment_distances(expanded, teacher, n)
    assert per_segment.shape == (n,)
    assert torch.allclose(per_segment[-1], F.mse_loss(expanded[:, -5:], teacher), rtol=1e-5)


def test_gradient_reaches_every_used_segment_only() -> None:
    expanded = torch.randn(2, 12, 3, 3, requires_grad=True)
    norm_loss(expanded, torch.randn(2, 3, 3, 3), 4, segments_used=3).backward()
    grad = expanded.grad.abs().sum(dim=(0, 2, 3))
    assert (grad[:9] > 0).all() and (grad[9:] == 0).all()


def _nst_mmd_by_loops(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """NST's MMD written out channel by channel in plain Python floats."""

    def unit(v: list[float]) -> list[float]:
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    def mean_kernel(a: list[list[list[float]]], b: list[list[list[float]]]) -> float:
        values = [
            sum(x * y for x, y in zip(ai, bj)) ** 2 for sa, sb in zip(a, b) for ai in sa for bj in sb
        ]  # (B, C, C) entries
        return sum(values) / len(values)

    s = [[unit(ch.flatten().tolist()) for ch in sample] for sample in student]
    t = [[unit(ch.flatten().tolist()) for ch in sample] for sample in teacher]
    return mean_kernel(t, t) + mean_kernel(s, s) - 2 * mean_kernel(s, t)


def test_mmd_matches_nst_written_with_loops() -> None:
    torch.manual_seed(0)
    teacher = torch.rand(2, 3, 2, 2)
    expanded = torch.rand(2, 6, 2, 2)
    expected = [_nst_mmd_by_loops(seg, teacher) for seg in torch.chunk(expanded, 2, dim=1)]
    got = segment_distances(expanded, teacher, 2, distance="mmd")
    assert got.tolist() == pytest.approx(expected, rel=1e-5)
    assert norm_loss(expanded, teacher, 2, distance="mmd", reduction="sum").item() == pytest.approx(sum(expected))


def test_mmd_hand_worked_single_channel() -> None:
    # One channel each: after normalisation s = (1, 0), t = (0.6, 0.8): k_tt = k_ss = 1, k_st = 0.36 -> 1.28.
    student = torch.tensor([[[[2.0, 0.0]]]])
    teacher = torch.tensor([[[[3.0, 4.0]]]])
    assert mmd_poly2(student.flatten(-2).unsqueeze(1), teacher.flatten(-2).unsqueeze(1)).item() == pytest.approx(1.28)
    assert segment_distances(teacher, teacher, 1, distance="mmd").item() == pytest.approx(0.0, abs=1e-6)


def test_standardize_logits_hand_worked() -> None:
    # z = (1, 2, 3): mean 2, biased variance 2/3 -> (z - 2) / sqrt(2/3 + 1e-7) * 2.5 = (-3.0619, 0, 3.0619).
    out = standardize_logits(torch.tensor([[1.0, 2.0, 3.0]]), 2.5)
    value = 2.5 / math.sqrt(2 / 3 + 1e-7)
    assert out.tolist()[0] == pytest.approx([-value, 0.0, value], rel=1e-6)
    assert out[0, 2].item() == pytest.approx(3.0619, abs=1e-4)


def test_align_spatial_max_pools_the_larger_map() -> None:
    teacher = torch.arange(16.0).reshape(1, 1, 4, 4)
    student = torch.zeros(1, 8, 2, 2)
    s, t = align_spatial(student, teacher)
    assert s is student and t.tolist() == [[[[5.0, 7.0], [13.0, 15.0]]]]
    s, t = align_spatial(teacher, student[:, :1])  # the student larger (ImageNet loop): the student is pooled
    assert t.shape == (1, 1, 2, 2) and s.tolist() == [[[[5.0, 7.0], [13.0, 15.0]]]]
    with pytest.raises(ValueError, match="integer multiple"):
        align_spatial(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 4, 4))


def test_ramp_follows_the_released_loop() -> None:
    # helper/loops.py: <10 0.1, <20 0.5, <180 1, <210 0.5, <240 0.1, and epoch 240 keeps 0.1.
    cifar = {e: norm_ramp(e, "cifar") for e in (0, 9, 10, 19, 20, 179, 180, 209, 210, 239, 240)}
    assert cifar == {
        0: 0.1,
        9: 0.1,
        10: 0.5,
        19: 0.5,
        20: 1.0,
        179: 1.0,
        180: 0.5,
        209: 0.5,
        210: 0.1,
        239: 0.1,
        240: 0.1,
    }
    imagenet = [norm_ramp(e, "imagenet") for e in (0, 4, 5, 14, 15, 59, 60, 79, 80, 100)]
    assert imagenet == [0.1, 0.1, 0.5, 0.5, 0.9, 0.9, 0.5, 0.5, 0.1, 0.1]
    assert norm_ramp(123, "none") == 1.0
    # Stretched to 24 epochs: boundaries 1, 2, 18, 21.
    assert [norm_ramp(e, "cifar", max_epochs=24) for e in (0, 1, 2, 17, 18, 21, 23)] == [
        0.1,
        0.5,
        1.0,
        1.0,
        0.5,
        0.1,
        0.1,
    ]
    with pytest.raises(ValueError, match="valid: cifar, imagenet, none"):
        norm_ramp(0, "linear")


def test_shape_errors_name_the_shapes() -> None:
    with pytest.raises(ValueError, match="n_segments x target channels"):
        norm_loss(torch.zeros(1, 10, 2, 2), torch.zeros(1, 4, 2, 2), 2)
    with pytest.raises(ValueError, match="segments_used must be in 1..2"):
        norm_loss(torch.zeros(1, 8, 2, 2), torch.zeros(1, 4, 2, 2), 2, segments_used=3)
