"""letKD's offline stages: the penultimate K-means codebook and the intermediate sub-class supervision.

Both are computed from the frozen teacher on the *un-augmented* training split (official
``do_not_use_random_transf=True``), one feature vector per spatial location, and cached with
:func:`kd_modules.offline.load_or_compute` under the teacher's checkpoint digest, the data fingerprint and every
setting, so that QuEST, letKD-1 and letKD-2 runs of the same teacher and data share them.

* **Codebook** (QuEST / letKD penultimate words; official ``cluster_utils.run_kmeans``): faiss K-means on the raw
  teacher vectors (no PCA, no normalisation), 20 iterations, fixed seed here (the official seed is
  ``np.random.randint(1234)``, i.e. different every build).
* **Sub-classes** (letKD-2; supplement Algorithm 2, official ``Classification.apply_sublass``):
  scikit-learn LDA (``svd`` solver) fitted on the location vectors labelled with their image's class, projection
  ``z = (F - xbar) @ scalings[:, :n]``; per-class faiss K-means with K_inter clusters in LDA space (sub-class
  ``s = y * K_inter + k``); prototypes = means of the vectors assigned to each sub-class; the score matrix
  ``s_T[s, s']`` = fraction of the vectors of sub-class s (class-constrained assignment) whose nearest prototype
  among *all* sub-classes (no class constraint) is s'.  Rows sum to one.

Deviations, all documented where they happen: the codebook K-means trains on a random subsample of at most
``max_points_per_centroid * K`` vectors (faiss's own mechanism; the official setting 10^7 uses every vector and is
one argument away) so that the CIFAR-size codebook builds in minutes on a small CPU; the score matrix counts every
vector (the official chunked loop silently counts the last ``N mod 10000`` vectors as prototype 0); LDA
components are clamped to ``min(n, classes - 1, channels)`` (scikit-learn's limit; CIFAR-10 would use 8).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import Tensor

from kd_modules.errors import MethodConfigError
from kd_modules.offline import progress

__all__ = [
    "LetKDSetupError",
    "faiss_kmeans",
    "fit_lda_projection",
    "fit_subclasses",
    "subclass_prototypes",
    "subclass_score_matrix",
    "build_codebook",
    "build_subclasses",
    "collect_location_vectors",
]

#: faiss's ``max_points_per_centroid`` of the official build: large enough that no vector is ever left out.
OFFICIAL_MAX_POINTS_PER_CENTROID = 10_000_000


class LetKDSetupError(MethodConfigError):
    """A letKD/QuEST setting that does not fit the data or the networks (too few vectors for K clusters,
    teacher and student maps that cannot be aligned, ...).  The message names the values and the way out."""


# -------------------------------------------------------------------------------------------------- K-means
def faiss_kmeans(
    vectors: np.ndarray,
    num_clusters: int,
    *,
    iterations: int = 20,
    seed: int = 1234,
    max_points_per_centroid: int = OFFICIAL_MAX_POINTS_PER_CENTROID,
    assign: bool = True,
    what: str = "K-means",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Lloyd's K-means with faiss (on the GPU when the installed faiss has one).

    Args:
        vectors: (N, D) float32 rows.
        num_clusters: K.
        iterations: Lloyd iterations (official: 20).
        seed: faiss's seed (initial centroids and the subsample).
        max_points_per_centroid: faiss trains on a random subsample of ``K * max_points_per_centroid`` rows when N
            is larger.
        assign: also return each row's nearest centroid (a full pass over the N rows).
        what: name used in error messages.

    Returns:
        (K, D) centroids and, if ``assign``, the (N,) int64 cluster index of each row.
    """
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    count, dim = vectors.shape
    if count < num_clusters:
        raise LetKDSetupError(
            f"{what}: {count} feature vectors cannot make {num_clusters} clusters; use more training data or fewer "
            f"clusters (e.g. --model.targets.num_clusters / --model.subclasses_per_class)"
        )
    kmeans = faiss.Kmeans(
        dim,
        num_clusters,
        niter=iterations,
        seed=seed,
        max_points_per_centroid=max_points_per_centroid,
        min_points_per_centroid=1,  # small splits are legitimate here; faiss would only warn
        gpu=faiss.get_num_gpus() > 0,
        verbose=False,
    )
    kmeans.train(vectors)
    centroids = np.array(kmeans.centroids, dtype=np.float32).reshape(num_clusters, dim)
    if not assign:
        return centroids, None
    _, nearest = kmeans.index.search(vectors, 1)
    return centroids, nearest[:, 0].astype(np.int64)


# ------------------------------------------------------------------------------------------------------ LDA
def fit_lda_projection(vectors: np.ndarray, labels: np.ndarray, num_components: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit scikit-learn's LDA (``svd`` solver, as the official ``apply_LDA``) and return the projection as an
    affine map ``z = vectors @ weight + bias`` equal to ``LinearDiscriminantAnalysis.transform``.

    ``num_components`` is clamped to ``min(classes present - 1, channels)``, the most LDA can give; when the
    within-class data is rank deficient scikit-learn returns fewer directions and the missing columns are zero (they
    add nothing to any distance), so the output always has the clamped number of columns.

    Returns:
        weight (D, n) and bias (n,), float32.
    """
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    classes = np.unique(labels).size
    usable = min(num_components, classes - 1, vectors.shape[1])
    if usable < 1:
        raise LetKDSetupError(f"LDA needs at least two classes in the training split, found {classes}")
    if usable < num_components:
        warnings.warn(
            f"letKD: {num_components} LDA components requested, at most {usable} exist "
            f"({classes} classes, {vectors.shape[1]} channels); using {usable}",
            stacklevel=2,
        )
    lda = LinearDiscriminantAnalysis(n_components=usable, solver="svd")
    lda.fit(vectors, labels)
    scalings = np.asarray(lda.scalings_[:, :usable], dtype=np.float64)
    weight = np.zeros((vectors.shape[1], usable), dtype=np.float64)
    weight[:, : scalings.shape[1]] = scalings
    bias = -np.asarray(lda.xbar_, dtype=np.float64) @ weight
    return weight.astype(np.float32), bias.astype(np.float32)


# ----------------------------------------------------------------------------------------------- sub-classes
def fit_subclasses(
    z: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    per_class: int,
    *,
    iterations: int = 20,
    seed: int = 1234,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class K-means in LDA space (official ``apply_sublass``: faiss, 20 iterations, all vectors).

    A class with no vectors at all (only possible when the offline stages see a subset of the split) keeps zero
    centroids and empty sub-classes; one with fewer vectors than ``per_class`` is an error.

    Returns:
        centroids (C, K_inter, d) and the class-constrained sub-class index ``y * K_inter + k`` of every row.
    """
    centroids = np.zeros((num_classes, per_class, z.shape[1]), dtype=np.float32)
    assignment = np.empty(z.shape[0], dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(num_classes + 1))
    absent = []
    for c in progress(range(num_classes), num_classes, "letKD: per-class K-means"):
        rows = order[bounds[c] : bounds[c + 1]]
        if rows.size == 0:
            absent.append(c)  # no vectors: its sub-classes stay empty (zero centroids, one-hot rows of s_T)
            continue
        if rows.size < per_class:
            raise LetKDSetupError(
                f"class {c} has {rows.size} intermediate feature vectors in the training split, fewer than "
                f"subclasses_per_class={per_class}; lower --model.subclasses_per_class or use more data"
            )
        class_centroids, nearest = faiss_kmeans(
            z[rows], per_class, iterations=iterations, seed=seed, what=f"sub-classes of class {c}"
        )
        centroids[c] = class_centroids
        assignment[rows] = c * per_class + nearest  # type: ignore[operator]
    if absent:
        warnings.warn(
            f"letKD: {len(absent)} of {num_classes} classes have no images in the data used for the sub-classes "
            f"(e.g. class {absent[0]}); their sub-classes stay empty and their targets one-hot on their first "
            f"sub-class (expected only with offline_max_images on a small subset)",
            stacklevel=2,
        )
    return centroids, assignment


def subclass_prototypes(z: np.ndarray, assignment: np.ndarray, num_subclasses: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean LDA vector of every sub-class (recomputed means, not the K-means centroids) and which are non-empty."""
    index = torch.from_numpy(assignment)
    sums = torch.zeros(num_subclasses, z.shape[1], dtype=torch.float64)
    sums.index_add_(0, index, torch.from_numpy(z).double())
    counts = torch.bincount(index, minlength=num_subclasses)
    present = counts > 0
    means = sums / counts.clamp(min=1).unsqueeze(1)
    return means.float().numpy(), present.numpy()


def subclass_score_matrix(
    z: np.ndarray, assignment: np.ndarray, prototypes: np.ndarray, present: np.ndarray
) -> np.ndarray:
    """s_T[s, s'] = fraction of the rows assigned (class-constrained) to s whose nearest prototype, searched over
    all sub-classes without class constraint, is s'.  Rows sum to one.

    A sub-class without members (possible only when a K-means cluster ends empty) has no prototype and its row is
    the one-hot of itself, so that a location that selects it still gets a valid distribution.
    """
    import faiss

    num_subclasses = prototypes.shape[0]
    candidates = np.flatnonzero(present)
    index = faiss.IndexFlatL2(prototypes.shape[1])
    index.add(np.ascontiguousarray(prototypes[candidates], dtype=np.float32))
    _, nearest = index.search(np.ascontiguousarray(z, dtype=np.float32), 1)
    nearest = candidates[nearest[:, 0]]
    counts = np.bincount(assignment * num_subclasses + nearest, minlength=num_subclasses * num_subclasses)
    counts = counts.reshape(num_subclasses, num_subclasses).astype(np.float64)
    totals = counts.sum(1)
    scores = np.where(totals[:, None] > 0, counts / np.maximum(totals, 1.0)[:, None], np.eye(num_subclasses))
    return scores.astype(np.float32)


# ---------------------------------------------------------------------------------------------- the stages
def build_codebook(
    vectors: np.ndarray,
    num_clusters: int,
    *,
    iterations: int,
    seed: int,
    max_points_per_centroid: int,
) -> dict[str, Tensor]:
    """The penultimate codebook artefact: ``{"centroids": (K, D)}``."""
    centroids, _ = faiss_kmeans(
        vectors,
        num_clusters,
        iterations=iterations,
        seed=seed,
        max_points_per_centroid=max_points_per_centroid,
        assign=False,
        what="penultimate codebook",
    )
    return {"centroids": torch.from_numpy(centroids)}


def build_subclasses(
    vectors: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    per_class: int,
    lda_components: int,
    iterations: int,
    seed: int,
) -> dict[str, Tensor]:
    """The intermediate sub-class artefact (supplement Algorithm 2, offline part).

    Returns:
        ``lda_weight`` (D, n), ``lda_bias`` (n,), ``centroids`` (C, K_inter, n), ``prototypes`` (C*K_inter, n) and
        ``score_matrix`` (C*K_inter, C*K_inter).
    """
    weight, bias = fit_lda_projection(vectors, labels, lda_components)
    z = (vectors @ weight + bias).astype(np.float32)
    centroids, assignment = fit_subclasses(z, labels, num_classes, per_class, iterations=iterations, seed=seed)
    prototypes, present = subclass_prototypes(z, assignment, num_classes * per_class)
    scores = subclass_score_matrix(z, assignment, prototypes, present)
    return {
        "lda_weight": torch.from_numpy(weight),
        "lda_bias": torch.from_numpy(bias),
        "centroids": torch.from_numpy(centroids),
        "prototypes": torch.from_numpy(prototypes),
        "score_matrix": torch.from_numpy(scores),
    }


# ------------------------------------------------------------------------------------------ teacher passes
def collect_location_vectors(
    batches: Iterable[dict[str, Tensor]],
    total: int,
    maps: Callable[[Tensor], dict[str, Tensor]],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One pass of ``maps`` over ``batches``: every (B, D, H, W) map it returns, flattened to one row per location.

    Args:
        batches: normalised batches (dicts with ``images`` and ``labels``).
        total: number of batches (for the progress bar).
        maps: images -> named feature maps (called under inference mode).

    Returns:
        ``vectors[name]`` (N_images * H * W, D) float32 in (image, h, w) order, and ``labels[name]`` the image label
        of every row.
    """
    vectors: dict[str, list[np.ndarray]] = {}
    labels: dict[str, list[np.ndarray]] = {}
    for batch in progress(batches, total, "letKD: teacher features"):
        with torch.inference_mode():
            named = maps(batch["images"])
        batch_labels = batch["labels"].cpu().numpy()
        for name, feature_map in named.items():
            b, d, h, w = feature_map.shape
            rows = feature_map.permute(0, 2, 3, 1).reshape(b * h * w, d).float().cpu().numpy()
            vectors.setdefault(name, []).append(rows)
            labels.setdefault(name, []).append(np.repeat(batch_labels, h * w))
    if not vectors:
        raise LetKDSetupError("the training split is empty: no teacher features to build letKD's targets from")
    return (
        {k: np.concatenate(v) for k, v in vectors.items()},
        {k: np.concatenate(v) for k, v in labels.items()},
    )
