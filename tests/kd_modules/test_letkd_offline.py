"""letKD's offline stages: LDA, sub-classes, the score matrix s_T, the codebook (synthetic data, known answers)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from kd_modules.letkd_offline import (
    LetKDSetupError,
    build_codebook,
    build_subclasses,
    faiss_kmeans,
    fit_lda_projection,
    fit_subclasses,
    subclass_prototypes,
    subclass_score_matrix,
)


def _canonical(centroids: np.ndarray) -> np.ndarray:
    """Per class, the order that sorts its sub-class centroids (K-means numbers clusters arbitrarily)."""
    return np.concatenate([c * centroids.shape[1] + np.argsort(centroids[c, :, 0]) for c in range(len(centroids))])


def test_score_matrix_known_answer() -> None:
    # 1-D "LDA" features.  Class 0: {0, 0} and {10, 10, 10, 13}; class 1: {12, 12, 12} and {30, 30}.
    # Class-constrained K-means (K_inter = 2) gives prototypes 0 and 10.75 (class 0), 12 and 30 (class 1).
    # Nearest prototype over *all* sub-classes: 0 -> s0; 10 -> s1 (10.75); 13 -> s2 (12, a class-1 sub-class!);
    # 12 -> s2; 30 -> s3.  So row s1 = (0, 3/4, 1/4, 0): a quarter of sub-class 1 looks like class 1.
    z = np.array([0, 0, 10, 10, 10, 13, 12, 12, 12, 30, 30], dtype=np.float32)[:, None]
    labels = np.array([0] * 6 + [1] * 5)
    centroids, assignment = fit_subclasses(z, labels, num_classes=2, per_class=2, iterations=10, seed=0)
    order = _canonical(centroids)  # canonical sub-class index -> K-means index
    rank = np.argsort(order)  # K-means index -> canonical index
    assert np.allclose(np.sort(centroids[:, :, 0], axis=1), [[0, 10.75], [12, 30]])
    assert rank[assignment].tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2, 3, 3]  # constrained to the own class

    prototypes, present = subclass_prototypes(z, assignment, 4)
    assert present.all() and np.allclose(prototypes[order, 0], [0, 10.75, 12, 30])
    scores = subclass_score_matrix(z, assignment, prototypes, present)[np.ix_(order, order)]
    expected = np.array([[1, 0, 0, 0], [0, 0.75, 0.25, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float32)
    assert np.allclose(scores, expected)
    assert np.allclose(scores.sum(1), 1.0)


def test_score_matrix_rows_sum_to_one_and_differ_from_hard_labels() -> None:
    # Overlapping classes in a 3-D space: some mass must leave the diagonal blocks, every row sums to one.
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 300)
    z = (rng.normal(size=(1200, 3)) + labels[:, None] * 0.8).astype(np.float32)
    centroids, assignment = fit_subclasses(z, labels, num_classes=4, per_class=3, iterations=20, seed=1)
    prototypes, present = subclass_prototypes(z, assignment, 12)
    scores = subclass_score_matrix(z, assignment, prototypes, present)
    assert scores.shape == (12, 12) and np.allclose(scores.sum(1), 1.0, atol=1e-6)
    own_class = np.kron(np.eye(4), np.ones((3, 3))).astype(bool)
    assert scores[~own_class].sum() > 0.1
    # Prototypes are recomputed means of the constrained assignment.
    for s in range(12):
        assert np.allclose(prototypes[s], z[assignment == s].mean(0), atol=1e-5)


def test_lda_projection_matches_scikit_learn_and_clamps_components() -> None:
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 50)
    vectors = (rng.normal(size=(500, 16)) + labels[:, None] * rng.normal(size=16)).astype(np.float32)
    with pytest.warns(UserWarning, match="at most 9 exist"):
        weight, bias = fit_lda_projection(vectors, labels, 60)
    assert weight.shape == (16, 9) and bias.shape == (9,)
    reference = LinearDiscriminantAnalysis(n_components=9).fit(vectors, labels).transform(vectors)
    assert np.allclose(vectors @ weight + bias, reference, atol=1e-3)


def test_subclass_stage_end_to_end_shapes() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 200)
    vectors = (rng.normal(size=(1000, 12)) + labels[:, None]).astype(np.float32)
    artefact = build_subclasses(vectors, labels, 5, per_class=3, lda_components=60, iterations=5, seed=0)
    assert artefact["lda_weight"].shape == (12, 4)
    assert artefact["centroids"].shape == (5, 3, 4)
    assert artefact["prototypes"].shape == (15, 4)
    assert artefact["score_matrix"].shape == (15, 15)
    assert np.allclose(artefact["score_matrix"].sum(1).numpy(), 1.0, atol=1e-6)


def test_kmeans_refuses_fewer_vectors_than_clusters() -> None:
    with pytest.raises(LetKDSetupError, match="100 feature vectors cannot make 128 clusters"):
        faiss_kmeans(np.zeros((100, 4), dtype=np.float32), 128)
    with pytest.raises(LetKDSetupError, match="class 1 has 2 intermediate feature vectors"):
        fit_subclasses(np.zeros((6, 2), np.float32), np.array([0, 0, 0, 0, 1, 1]), 2, 3)


def test_codebook_is_a_lloyd_fixed_point_of_the_teacher_vectors() -> None:
    # Converged K-means: every codeword is the mean of the vectors nearest to it (checked with a plain numpy
    # assignment, independent of faiss), and the codebook quantises much better than K random vectors.
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 5)).astype(np.float32) * 20
    vectors = (np.repeat(centres, 100, axis=0) + rng.normal(size=(800, 5)) * 0.5).astype(np.float32)
    found = build_codebook(vectors, 8, iterations=30, seed=3, max_points_per_centroid=128)["centroids"].numpy()
    nearest = ((vectors[:, None] - found[None]) ** 2).sum(-1).argmin(1)
    for k in np.unique(nearest):
        assert np.allclose(found[k], vectors[nearest == k].mean(0), atol=1e-3)
    error = ((vectors - found[nearest]) ** 2).sum(1).mean()
    random_codebook = vectors[rng.choice(800, 8, replace=False)]
    random_error = ((vectors[:, None] - random_codebook[None]) ** 2).sum(-1).min(1).mean()
    assert error < random_error


@pytest.mark.exhaustive  # a timing benchmark (~3-6 min on 2 cores): `make test-exhaustive`
def test_cifar_size_codebook_builds_in_under_ten_minutes() -> None:
    # CIFAR-100 x ResNet-56: 50,000 images x 8x8 locations = 3.2M vectors of dim 64, K = 4096, 20 iterations.
    vectors = np.random.default_rng(0).standard_normal((3_200_000, 64)).astype(np.float32)
    started = time.perf_counter()
    artefact = build_codebook(vectors, 4096, iterations=20, seed=1234, max_points_per_centroid=128)
    seconds = time.perf_counter() - started
    print(f"CIFAR-size codebook: {seconds:.0f}s")
    assert artefact["centroids"].shape == (4096, 64)
    assert seconds < 600
