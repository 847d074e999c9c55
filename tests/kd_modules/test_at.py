"""AT: values against a loop formulation, invariance to channel order, pooling of the larger map."""

from __future__ import annotations

import math

import torch

from kd_modules.losses import at_loss, at_loss_layers, attention_map


def _attention_by_loops(feature: torch.Tensor) -> list[list[float]]:
    # Channel *sum* of squares (the paper's form), L2-normalised per sample: the reference's mean differs by a
    # constant factor that the normalisation removes.
    b, c, h, w = feature.shape
    maps = []
    for i in range(b):
        a = [sum(float(feature[i, k, y, x]) ** 2 for k in range(c)) for y in range(h) for x in range(w)]
        norm = math.sqrt(sum(v * v for v in a))
        maps.append([v / norm for v in a])
    return maps


def test_at_loss_matches_loops() -> None:
    torch.manual_seed(0)
    f_s, f_t = torch.randn(3, 4, 3, 3), torch.randn(3, 6, 3, 3)
    q_s, q_t = _attention_by_loops(f_s), _attention_by_loops(f_t)
    expected = sum((a - b) ** 2 for row_s, row_t in zip(q_s, q_t) for a, b in zip(row_s, row_t)) / (3 * 9)
    assert abs(at_loss(f_s, f_t).item() - expected) < 1e-6
    assert torch.allclose(attention_map(f_s), torch.tensor(q_s), atol=1e-6)


def test_hand_worked_single_pixel_pair() -> None:
    # Two positions; student energy (1, 0) -> Q_s = (1, 0); teacher energy (1, 1) -> Q_t = (1/sqrt2, 1/sqrt2).
    f_s = torch.tensor([[[[1.0, 0.0]]]])
    f_t = torch.tensor([[[[1.0, -1.0]]]])
    r = 1 / math.sqrt(2)
    expected = ((1 - r) ** 2 + r**2) / 2
    assert abs(at_loss(f_s, f_t).item() - expected) < 1e-6


def test_invariant_to_channel_permutation() -> None:
    torch.manual_seed(1)
    f_s, f_t = torch.randn(2, 5, 4, 4).relu(), torch.randn(2, 7, 4, 4).relu()
    base = at_loss(f_s, f_t)
    assert torch.allclose(at_loss(f_s[:, torch.randperm(5)], f_t[:, torch.randperm(7)]), base, atol=1e-7)


def test_larger_map_is_average_pooled_to_the_smaller_height() -> None:
    torch.manual_seed(2)
    f_s, f_t = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)
    pooled = torch.stack(
        [f_s[:, :, 2 * y : 2 * y + 2, 2 * x : 2 * x + 2].mean(dim=(2, 3)) for y in range(2) for x in range(2)], dim=-1
    ).view(2, 3, 2, 2)
    assert torch.allclose(at_loss(f_s, f_t), at_loss(pooled, f_t), atol=1e-7)
    assert torch.allclose(at_loss(f_t, f_s), at_loss(f_t, pooled), atol=1e-7), "the teacher side is pooled too"


def test_layers_are_zipped_from_the_start_and_summed() -> None:
    torch.manual_seed(3)
    s = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)]
    t = [torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4), torch.randn(2, 4, 2, 2)]
    assert torch.allclose(at_loss_layers(s, t), at_loss(s[0], t[0]) + at_loss(s[1], t[1]))
