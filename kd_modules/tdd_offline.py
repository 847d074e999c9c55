"""TDD's offline stage: the teacher's per-layer coarse class groups (Song et al., CVPR 2021; official code
zju-vipa/KamalEngine, ``examples/distillation/tdd/`` and ``kamal/distillation/TDD/``).

For every constrained teacher layer (officially ``feature_preprocessing.sh``: ``extract_features.py`` then
``hierarchical_clustering.py``):

1. **Embeddings**: one pass of the frozen teacher over the training split; every image's map at the layer is
   globally average-pooled to a (C,) vector (``featuremap.load_embeddings``: ``mean(axis=(2, 3))``).
2. **Class statistics**: per class, the mean and the mean square of those vectors (``mean_embedding``,
   ``mean_squared_embedding``).  The mean squares only fed an intra-class variance that the official tree code
   has commented out; they are kept in the artefact, unused.
3. **Cluster tree**: agglomerative clustering of the K class means with Ward linkage on Euclidean distances
   (``clustering.hierarchical_clustering``: scikit-learn ``AgglomerativeClustering(linkage="ward",
   distance_threshold=0)``, converted to a SciPy linkage matrix and ``to_tree``).  Here SciPy's
   ``scipy.cluster.hierarchy.linkage(method="ward")`` builds the same binary tree directly (same Lance-Williams
   update; a test checks the clusters against scikit-learn).  Leaves are the classes 0..K-1, node K+i is the
   i-th merge, the root is 2K-2.
4. **Node centres**: the official ``update_mean_var`` sets a node's mean to ``set_means([left, right])``, a
   weighted mean whose weights are ``x.shape[0]`` — the feature width, the same for both children — so a node's
   centre is the plain average of its two children's centres, recursively (not the mean over its classes).
   ``node_mean="children"`` reproduces that; ``"classes"`` (the mean of the node's class means, each class
   counted once: a cluster centre in the plain sense; the paper's text was not available here to say which one it
   describes) is one argument away.
5. **KNN accuracy of every node** (``cluster_tree.KNN``, ``update_knn``): the k (official ``--knn-k 20``)
   training embeddings nearest to the node's centre in squared Euclidean distance, over *all* training images;
   the accuracy is the fraction of them whose label is one of the node's classes.
6. **Merge by threshold** (``cluster_tree.merge_tree``, ``--merge_threshold 0.2``): a depth-first walk from the
   root; a node whose KNN accuracy is *below* the threshold, or a leaf, becomes one coarse group (its classes
   merged: the layer cannot tell them apart); any other node is split into its two children.  Groups are listed
   in the official stack order (the right child is visited first).

The groups of every layer form the artefact, cached by :func:`kd_modules.offline.load_or_compute` under the
teacher's checkpoint digest, the training data's fingerprint and every setting.  The teacher layers are the
contract's stage outputs (see :class:`kd_modules.tdd.TDD` for how they relate to the official ``layerk.2.bn2``
hooks).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from kd_modules.errors import MethodConfigError
from kd_modules.offline import progress

__all__ = [
    "NodeMean",
    "NODE_MEANS",
    "LINKAGES",
    "TDDSetupError",
    "class_statistics",
    "cluster_linkage",
    "tree_members",
    "node_centres",
    "knn_accuracy",
    "merge_by_threshold",
    "group_assignment",
    "build_layer_groups",
    "pooled_stage_embeddings",
]

NodeMean = Literal["children", "classes"]
NODE_MEANS: tuple[str, ...] = ("children", "classes")
LINKAGES: tuple[str, ...] = ("ward", "average", "complete", "single")


class TDDSetupError(MethodConfigError):
    """A TDD setting that does not fit the data (k larger than the training split, a class without images...)."""


def class_statistics(embeddings: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-class mean and mean square of (N, C) ``embeddings`` (float64 sums; float64 results)."""
    values = embeddings.to(torch.float64)
    counts = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    missing = (counts == 0).nonzero().flatten().tolist()
    if missing:
        raise TDDSetupError(
            f"TDD: {len(missing)} of {num_classes} classes have no image in the data of the offline stage "
            f"(e.g. class {missing[0]}): their class means do not exist; use more images (tree.offline_max_images)"
        )
    sums = torch.zeros(num_classes, values.shape[1], dtype=torch.float64).index_add_(0, labels, values)
    squares = torch.zeros_like(sums).index_add_(0, labels, values.square())
    return sums / counts[:, None], squares / counts[:, None]


def cluster_linkage(means: np.ndarray, method: str = "ward") -> np.ndarray:
    """SciPy's (K-1, 4) linkage matrix of the class means (Euclidean distances); ``method`` is one of
    :data:`LINKAGES` (``TreeSettings`` validates it)."""
    from scipy.cluster.hierarchy import linkage

    if means.shape[0] < 2:
        raise TDDSetupError(f"TDD's cluster tree needs at least two classes, got {means.shape[0]}")
    return linkage(np.asarray(means, dtype=np.float64), method=method, metric="euclidean")


def tree_members(children: np.ndarray, num_classes: int) -> list[frozenset[int]]:
    """The classes under every node (0..K-1 leaves, K+i the i-th merge of the (K-1, 2) ``children``)."""
    members: list[frozenset[int]] = [frozenset([k]) for k in range(num_classes)]
    for left, right in children.astype(np.int64):
        members.append(members[left] | members[right])
    return members


def node_centres(children: np.ndarray, means: np.ndarray, mode: NodeMean = "children") -> np.ndarray:
    """(2K-1, C) centre of every node: ``children`` averages the two children's centres (official
    ``update_mean_var``), ``classes`` averages the node's class means."""
    if mode not in NODE_MEANS:
        raise TDDSetupError(f"unknown TDD node_mean {mode!r}; valid: {', '.join(NODE_MEANS)}")
    num_classes = means.shape[0]
    centres = [np.asarray(m, dtype=np.float64) for m in means]
    if mode == "children":
        for left, right in children.astype(np.int64):
            centres.append((centres[left] + centres[right]) / 2)
    else:
        for members in tree_members(children, num_classes)[num_classes:]:
            centres.append(means[sorted(members)].mean(axis=0))
    return np.stack(centres)


def knn_accuracy(
    embeddings: Tensor, labels: Tensor, centres: Tensor, members: list[frozenset[int]], k: int, chunk: int = 64
) -> Tensor:
    """Per node: the fraction of the ``k`` embeddings nearest its centre (squared L2) whose label is in the node."""
    count = embeddings.shape[0]
    if not 1 <= k <= count:
        raise TDDSetupError(f"TDD's KNN needs 1 <= knn_k <= the {count} training embeddings, got knn_k={k}")
    num_classes = len(members) // 2 + 1
    inside = torch.zeros(len(members), num_classes, dtype=torch.bool)
    for node, classes in enumerate(members):
        inside[node, sorted(classes)] = True
    data = embeddings.to(torch.float64)
    accuracy = torch.empty(len(members), dtype=torch.float64)
    for start in range(0, len(members), chunk):
        block = centres[start : start + chunk].to(torch.float64)
        distances = torch.cdist(block, data).square()
        nearest = distances.topk(k, dim=1, largest=False).indices
        hits = inside[start : start + chunk].gather(1, labels[nearest])
        accuracy[start : start + chunk] = hits.to(torch.float64).mean(dim=1)
    return accuracy


def merge_by_threshold(children: np.ndarray, accuracy: Iterable[float], threshold: float) -> list[list[int]]:
    """The coarse groups: walk from the root; a leaf, or a node whose accuracy is below ``threshold``, is a group;
    any other node splits into its children (official ``merge_tree``: a stack, left pushed first, so the right
    child comes out first).  Each group's classes are sorted."""
    children = children.astype(np.int64)
    num_classes = children.shape[0] + 1
    accuracy = list(accuracy)
    members = tree_members(children, num_classes)
    groups: list[list[int]] = []
    stack = [2 * num_classes - 2]
    while stack:
        node = stack.pop()
        if node < num_classes or accuracy[node] < threshold:
            groups.append(sorted(members[node]))
        else:
            stack.extend(int(child) for child in children[node - num_classes])  # left, then right
    return groups


def group_assignment(groups: list[list[int]], num_classes: int) -> Tensor:
    """(K,) int64: the index of every fine class's group."""
    assignment = torch.full((num_classes,), -1, dtype=torch.int64)
    for index, group in enumerate(groups):
        assignment[group] = index
    assert bool((assignment >= 0).all()), "the groups must cover every class"
    return assignment


def build_layer_groups(
    embeddings: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    knn_k: int,
    threshold: float,
    linkage: str = "ward",
    node_mean: NodeMean = "children",
) -> dict[str, Tensor]:
    """One layer's artefact: ``group_of_class`` (K,), ``means`` / ``mean_squares`` (K, C), ``linkage``
    (K-1, 4) and ``knn_accuracy`` (2K-1,)."""
    means, mean_squares = class_statistics(embeddings, labels, num_classes)
    matrix = cluster_linkage(means.numpy(), linkage)
    children = matrix[:, :2].astype(np.int64)
    centres = torch.from_numpy(node_centres(children, means.numpy(), node_mean))
    accuracy = knn_accuracy(embeddings, labels, centres, tree_members(children, num_classes), knn_k)
    groups = merge_by_threshold(children, accuracy.tolist(), threshold)
    return {
        "group_of_class": group_assignment(groups, num_classes),
        "means": means.float(),
        "mean_squares": mean_squares.float(),
        "linkage": torch.from_numpy(matrix),
        "knn_accuracy": accuracy,
    }


def pooled_stage_embeddings(
    teacher: torch.nn.Module, batches: Iterable[dict[str, Tensor]], total: int, stages: list[int]
) -> tuple[dict[int, Tensor], Tensor]:
    """One inference pass of ``teacher`` (eval mode): the global-average-pooled post-activation output of every
    (1-based) stage in ``stages``, (N, C) float32 on the CPU, and the (N,) labels."""
    teacher.eval()
    pooled: dict[int, list[Tensor]] = {k: [] for k in stages}
    labels: list[Tensor] = []
    for batch in progress(batches, total, "TDD: teacher embeddings"):
        with torch.inference_mode():
            features = teacher.forward_features(batch["images"])  # type: ignore[operator]
            for k in stages:
                pooled[k].append(features.stages_post[k - 1].float().mean(dim=(2, 3)).cpu())
        labels.append(batch["labels"].cpu())
    if not labels:
        raise TDDSetupError("the training split is empty: no teacher embeddings to build TDD's class groups from")
    return {k: torch.cat(v) for k, v in pooled.items()}, torch.cat(labels)
