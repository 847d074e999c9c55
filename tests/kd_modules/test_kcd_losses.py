"""KCD's pure pieces: consistency matrices, channel mappings, Gamma and the L2 loss, against independent values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from kd_modules.losses import kcd


def _random_features(n: int = 37, c_t: int = 5, c_s: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(n, c_t, generator=generator, dtype=torch.float64)
    student = torch.randn(n, c_s, generator=generator, dtype=torch.float64)
    return teacher, student


def test_correlation_matches_a_hand_computed_value() -> None:
    # t = (1, 2, 3, 4), s = (2, 1, 4, 3): means 2.5; deviations (-1.5,-0.5,0.5,1.5) and (-0.5,-1.5,1.5,0.5);
    # covariance sum = 0.75 + 0.75 + 0.75 + 0.75 = 3; each sum of squares = 5 -> r = 3 / 5 = 0.6.
    teacher = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    student = torch.tensor([[2.0], [1.0], [4.0], [3.0]])
    assert kcd.consistency_matrix(teacher, student, "correlation")[0, 0].item() == pytest.approx(0.6, abs=1e-12)
    stats = kcd.ConsistencyStatistics(1, 1, kcd.statistic_groups(["correlation"]))
    stats.update(teacher[:3], student[:3])
    stats.update(teacher[3:], student[3:])
    assert stats.matrix("correlation")[0, 0, 0].item() == pytest.approx(0.6, abs=1e-12)


def test_distance_and_cosine_readings_by_hand() -> None:
    teacher = torch.tensor([[1.0], [2.0]])
    student = torch.tensor([[4.0], [6.0]])
    # differences (-3, -4): L1 = 7, L2 = 5; cosine = (4 + 12) / (sqrt(5) * sqrt(52)).
    assert kcd.consistency_matrix(teacher, student, "l1", eps=0.0)[0, 0].item() == pytest.approx(1 / 7)
    assert kcd.consistency_matrix(teacher, student, "l2", eps=0.0)[0, 0].item() == pytest.approx(1 / 5)
    assert kcd.consistency_matrix(teacher, student, "cosine")[0, 0].item() == pytest.approx(16 / math.sqrt(5 * 52))


def _loop_reference(teacher: np.ndarray, student: np.ndarray, metric: str, kl_distribution: str) -> np.ndarray:
    """Each entry with plain numpy, one channel pair at a time."""
    eps = 1e-8
    out = np.zeros((teacher.shape[1], student.shape[1]))
    for j, i in itertools.product(range(teacher.shape[1]), range(student.shape[1])):
        t, s = teacher[:, j], student[:, i]
        if metric == "l1":
            out[j, i] = 1 / (np.abs(t - s).sum() + eps)
        elif metric == "l2":
            out[j, i] = 1 / (np.sqrt(((t - s) ** 2).sum()) + eps)
        elif metric == "cosine":
            out[j, i] = t @ s / (np.linalg.norm(t) * np.linalg.norm(s))
        elif metric == "correlation":
            out[j, i] = np.corrcoef(t, s)[0, 1]
        else:
            if kl_distribution == "sum":
                p = (np.maximum(t, 0) + eps) / (np.maximum(t, 0) + eps).sum()
                q = (np.maximum(s, 0) + eps) / (np.maximum(s, 0) + eps).sum()
            else:
                p, q = np.exp(t) / np.exp(t).sum(), np.exp(s) / np.exp(s).sum()
            out[j, i] = -(p * np.log(p / q)).sum()
    return out


@pytest.mark.parametrize(
    "metric,kl_distribution",
    [("l1", "sum"), ("l2", "sum"), ("cosine", "sum"), ("correlation", "sum"), ("kl", "sum"), ("kl", "softmax")],
)
def test_matrix_and_streaming_sums_match_a_loop_reference(metric: str, kl_distribution: str) -> None:
    teacher, student = _random_features()
    teacher[:, 1] = teacher[:, 1].abs()  # some channels non-negative (post-ReLU-like), others signed
    reference = _loop_reference(teacher.numpy(), student.numpy(), metric, kl_distribution)
    direct = kcd.consistency_matrix(teacher, student, metric, kl_distribution=kl_distribution)
    np.testing.assert_allclose(direct.numpy(), reference, rtol=1e-7, atol=1e-9)
    # The streaming pass over uneven batches, and two passes merged, give the same matrix.
    groups = kcd.statistic_groups([metric], kl_distribution)
    whole = kcd.ConsistencyStatistics(5, 4, groups)
    first, second = kcd.ConsistencyStatistics(5, 4, groups), kcd.ConsistencyStatistics(5, 4, groups)
    for start, end in ((0, 10), (10, 11), (11, 37)):
        whole.update(teacher[start:end], student[start:end])
        (first if start < 11 else second).update(teacher[start:end], student[start:end])
    first.merge(kcd.ConsistencyStatistics.from_state(second.state()))
    for stats in (whole, first):
        np.testing.assert_allclose(stats.matrix(metric, kl_distribution)[0].numpy(), reference, rtol=1e-6, atol=1e-8)


def test_partitions_give_each_range_its_own_matrix() -> None:
    teacher, student = _random_features(n=40)
    partition = torch.arange(40) % 3
    stats = kcd.ConsistencyStatistics(5, 4, ["moments", "l1"], partitions=3)
    stats.update(teacher, student, partition)
    for k in range(3):
        chosen = partition == k
        reference = kcd.consistency_matrix(teacher[chosen], student[chosen], "l1")
        np.testing.assert_allclose(stats.matrix("l1")[k].numpy(), reference.numpy(), rtol=1e-9)
        reference = _loop_reference(teacher[chosen].numpy(), student[chosen].numpy(), "correlation", "sum")
        np.testing.assert_allclose(stats.matrix("correlation")[k].numpy(), reference, rtol=1e-7)


def test_constant_channel_has_zero_correlation_not_nan() -> None:
    teacher, student = _random_features()
    teacher[:, 0] = 3.0
    matrix = kcd.consistency_matrix(teacher, student, "correlation")
    assert torch.isfinite(matrix).all() and (matrix[0] == 0).all()


# ----------------------------------------------------------------------------------------------- mappings
def test_bipartite_recovers_the_optimal_permutation_and_gamma_order() -> None:
    # A constructed matrix whose best permutation is known by brute force and differs from both the identity
    # and the greedy choice (teacher 0 is the best channel for two student channels).
    matrix = torch.tensor(
        [
            [0.9, 0.8, 0.1, 0.0],
            [0.7, 0.1, 0.0, 0.2],
            [0.0, 0.6, 0.2, 0.1],
            [0.1, 0.0, 0.5, 0.4],
        ],
        dtype=torch.float64,
    )
    best = max(itertools.permutations(range(4)), key=lambda p: sum(matrix[p[i], i].item() for i in range(4)))
    bipartite = kcd.bipartite_mapping(matrix)
    assert tuple(bipartite.tolist()) == best == (0, 2, 3, 1)
    identity = kcd.identity_mapping(4, 4)
    greedy = kcd.greedy_mapping(matrix)
    assert greedy.tolist() == [0, 0, 3, 3]
    g_identity, g_bipartite, g_greedy = (kcd.gamma(matrix, m).item() for m in (identity, bipartite, greedy))
    assert g_identity == pytest.approx(0.9 + 0.1 + 0.2 + 0.4)
    assert g_bipartite == pytest.approx(0.9 + 0.6 + 0.5 + 0.2)
    assert g_greedy == pytest.approx(0.9 + 0.8 + 0.5 + 0.4)
    assert g_identity <= g_bipartite <= g_greedy


def test_bipartite_gamma_order_on_random_real_matrices() -> None:
    for seed in range(5):
        teacher, student = _random_features(n=50, c_t=6, c_s=6, seed=seed)
        matrix = kcd.consistency_matrix(teacher, student, "correlation")
        g = {
            k: kcd.gamma(matrix, kcd.channel_mapping(k, matrix, (6, 6))).item()
            for k in ("identity", "bipartite", "greedy")
        }
        assert g["identity"] <= g["bipartite"] + 1e-12 <= g["greedy"] + 2e-12
        assert sorted(kcd.bipartite_mapping(matrix).tolist()) == list(range(6))


def test_rectangular_mappings() -> None:
    teacher, student = _random_features(n=30, c_t=6, c_s=3)
    wide = kcd.consistency_matrix(teacher, student, "correlation")
    mapping = kcd.bipartite_mapping(wide)
    assert len(set(mapping.tolist())) == 3  # distinct teacher channels for each student channel
    brute = max(itertools.permutations(range(6), 3), key=lambda p: sum(wide[p[i], i].item() for i in range(3)))
    assert tuple(mapping.tolist()) == brute
    # Fewer teacher channels: each teaches at most ceil(c_S / c_T) student channels.
    narrow = kcd.consistency_matrix(student, teacher, "correlation")  # (3, 6)
    mapping = kcd.bipartite_mapping(narrow)
    assert np.bincount(mapping.numpy(), minlength=3).max() <= 2 and mapping.shape == (6,)
    assert kcd.identity_mapping(3, 6).tolist() == [0, 1, 2, 0, 1, 2]
    generator = torch.Generator().manual_seed(1)
    random = kcd.random_mapping(6, 4, generator)
    assert len(set(random.tolist())) == 4 and random.max() < 6


def test_unknown_names_raise_clear_errors() -> None:
    teacher, student = _random_features()
    with pytest.raises(ValueError, match="valid: correlation"):
        kcd.consistency_matrix(teacher, student, "pearson")
    with pytest.raises(ValueError, match="valid: identity"):
        kcd.channel_mapping("hungarian", None, (5, 4))


# --------------------------------------------------------------------------------------------- the loss
def test_transform_and_l2_loss_by_hand() -> None:
    teacher_map = torch.arange(2 * 3 * 1 * 1, dtype=torch.float32).reshape(2, 3, 1, 1)  # [[0,1,2],[3,4,5]]
    transformed = kcd.transform_channels(teacher_map, torch.tensor([2, 0]))
    assert transformed[:, :, 0, 0].tolist() == [[2.0, 0.0], [5.0, 3.0]]
    per_sample = kcd.transform_channels(teacher_map, torch.tensor([[2, 0], [1, 1]]))
    assert per_sample[:, :, 0, 0].tolist() == [[2.0, 0.0], [4.0, 4.0]]
    student_map = torch.zeros(2, 2, 1, 1)
    # squared errors 4, 0, 25, 9: mean 38/4, summed per image 38/2.
    assert kcd.kcd_l2_loss(student_map, transformed).item() == pytest.approx(38 / 4)
    assert kcd.kcd_l2_loss(student_map, transformed, "batchmean").item() == pytest.approx(38 / 2)
