"""KCD: Han et al., "Fixing the Teacher-Student Knowledge Discrepancy in Distillation" (no official code).

Notation (paper Sec. 3.2-3.3): the distilled maps are global-average-pooled over height and width, so channel ``j``
of a network is the vector of its pooled activations over the ``n`` images seen, ``t_j`` (teacher) or ``s_i``
(student).  The **consistency matrix** ``M`` is ``(c_T, c_S)``: ``M[j, i]`` says how consistent teacher channel
``j`` is with student channel ``i`` (larger = more consistent) under one of the metrics

* ``l1`` / ``l2``: ``1 / (||t_j - s_i||_p + eps)`` (Eq. 3, p = 1, 2; the paper has no ``eps``),
* ``correlation``: Pearson's coefficient of ``t_j`` and ``s_i`` (Eq. 4; 0 where a channel is constant),
* ``cosine``: ``<t_j, s_i> / (||t_j|| ||s_i||)`` (0 where a channel is all zero),
* ``kl``: ``-KL(p_j || q_i)`` for distributions over the ``n`` images made from the channels — the paper gives no
  definition: ``kl_distribution="sum"`` (default) clamps at 0, adds ``eps`` and divides by the sum,
  ``"softmax"`` takes a softmax over the images.

A **channel mapping** ``pi`` (``(c_S,)`` long) transforms the teacher map: student channel ``i`` is taught by
teacher channel ``pi[i]`` (Eq. 7), and the **consistency score** is ``Gamma = sum_i M[pi[i], i]`` (Eq. 5-6; the
identity mapping gives the trace).  Mappings: identity, greedy (Eq. 7: per student channel the most consistent
teacher channel, repeats allowed), bipartite (Eq. 8: the maximum-weight matching, scipy's
``linear_sum_assignment`` in maximise mode) and random.

Channel counts (the paper assumes ``c_T == c_S``): with ``c_T > c_S`` the injective mappings select ``c_S``
distinct teacher channels (identity = the first ``c_S``, the trace of the rectangular ``M``); with ``c_T < c_S``
each teacher channel may teach up to ``ceil(c_S / c_T)`` student channels (identity ``i -> i mod c_T``; bipartite
solves the matching against ``M`` stacked that many times).  Both are this implementation's reading.

The matrices are computed in one streaming pass (:class:`ConsistencyStatistics`, float64 sums that merge across
batches, partitions and devices); :func:`consistency_matrix` is the direct formula on whole ``(n, c)`` matrices.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from kd_modules.errors import MethodConfigError
from kd_modules.losses.common import pool_to_smaller

__all__ = [
    "METRICS",
    "KL_DISTRIBUTIONS",
    "MAPPINGS",
    "ConsistencyStatistics",
    "statistic_groups",
    "consistency_matrix",
    "consistency_diagonal",
    "gamma",
    "identity_mapping",
    "greedy_mapping",
    "bipartite_mapping",
    "random_mapping",
    "channel_mapping",
    "transform_channels",
    "kcd_l2_loss",
]

Metric = Literal["correlation", "l1", "l2", "cosine", "kl"]
KLDistribution = Literal["sum", "softmax"]
METRICS: tuple[str, ...] = ("correlation", "l1", "l2", "cosine", "kl")
KL_DISTRIBUTIONS: tuple[str, ...] = ("sum", "softmax")
MAPPINGS: tuple[str, ...] = ("identity", "greedy", "bipartite", "random")

#: The statistic group of each metric but ``kl`` (whose group is ``kl_<distribution>``).
_METRIC_GROUPS = {"correlation": "moments", "cosine": "moments", "l2": "moments", "l1": "l1"}
#: The sums of each statistic group (:class:`ConsistencyStatistics`) and their shape per partition: ``t`` (c_T,),
#: ``s`` (c_S,) or ``ts`` (c_T, c_S).  The running maxima ``sm_max_*`` start at -inf, every sum at 0.
_GROUP_SUMS: dict[str, dict[str, str]] = {
    "moments": {"t": "t", "s": "s", "tt": "t", "ss": "s", "ts": "ts"},
    "l1": {"l1": "ts"},
    "kl_sum": {"kl_t": "t", "kl_tlogt": "t", "kl_tlogs": "ts", "kl_s": "s"},
    "kl_softmax": {"sm_max_t": "t", "sm_z_t": "t", "sm_u": "t", "sm_v": "ts", "sm_max_s": "s", "sm_z_s": "s"},
}

# Per-sample outer products are added in chunks of at most this many elements (memory bound of the streaming pass).
_CHUNK_ELEMENTS = 1 << 22


# ------------------------------------------------------------------------------------------- the direct formulas
def _kl_distributions(values: Tensor, distribution: str, eps: float) -> tuple[Tensor, Tensor]:
    """Columns of ``values`` (n, c) as distributions over the n rows: (p, log p)."""
    if distribution == "sum":
        positive = values.clamp(min=0) + eps
        p = positive / positive.sum(0, keepdim=True)
        return p, p.log()
    if distribution == "softmax":
        log_p = torch.log_softmax(values, dim=0)
        return log_p.exp(), log_p
    raise MethodConfigError(f"unknown KL distribution {distribution!r}; valid: {', '.join(KL_DISTRIBUTIONS)}")


def consistency_matrix(
    teacher: Tensor, student: Tensor, metric: str, *, eps: float = 1e-8, kl_distribution: str = "sum"
) -> Tensor:
    """``M`` (c_T, c_S) from the pooled features of the same n images: ``teacher`` (n, c_T), ``student`` (n, c_S).

    The paper's formulas applied to whole matrices (float64); :class:`ConsistencyStatistics` gives the same values
    from a streaming pass.
    """
    t, s = teacher.double(), student.double()
    if metric in ("l1", "l2"):
        distances = torch.cdist(t.t().unsqueeze(0), s.t().unsqueeze(0), p=1.0 if metric == "l1" else 2.0)[0]
        return 1.0 / (distances + eps)
    if metric in ("cosine", "correlation"):
        if metric == "correlation":
            t, s = t - t.mean(0, keepdim=True), s - s.mean(0, keepdim=True)
        denominator = t.norm(dim=0)[:, None] * s.norm(dim=0)[None, :]
        return torch.where(denominator > 0, (t.t() @ s) / denominator.clamp(min=1e-300), torch.zeros_like(denominator))
    if metric == "kl":
        p, log_p = _kl_distributions(t, kl_distribution, eps)
        _, log_q = _kl_distributions(s, kl_distribution, eps)
        # KL(p_j || q_i) = sum_n p_nj log p_nj - sum_n p_nj log q_ni
        return -((p * log_p).sum(0)[:, None] - p.t() @ log_q)
    raise MethodConfigError(f"unknown consistency metric {metric!r}; valid: {', '.join(METRICS)}")


def consistency_diagonal(
    teacher: Tensor, student: Tensor, metric: str, *, eps: float = 1e-8, kl_distribution: str = "sum"
) -> Tensor:
    """``(M[i, i])_i`` for two feature matrices of equal width (n, c): the per-channel consistency, differentiable.

    The learned transformations (Sub-net-FC / Sub-net-Res) maximise its sum, ``Gamma`` of the identity mapping
    between the sub-net's output and the student.
    """
    if teacher.shape != student.shape:
        raise MethodConfigError(
            f"consistency_diagonal needs equal shapes, got {tuple(teacher.shape)} and {tuple(student.shape)}"
        )
    if metric in ("l1", "l2"):
        return 1.0 / ((teacher - student).norm(p=1 if metric == "l1" else 2, dim=0) + eps)
    if metric in ("cosine", "correlation"):
        t, s = teacher, student
        if metric == "correlation":
            t, s = t - t.mean(0, keepdim=True), s - s.mean(0, keepdim=True)
        return (t * s).sum(0) / (t.norm(dim=0) * s.norm(dim=0)).clamp(min=1e-12)
    if metric == "kl":
        p, log_p = _kl_distributions(teacher, kl_distribution, eps)
        _, log_q = _kl_distributions(student, kl_distribution, eps)
        return -(p * (log_p - log_q)).sum(0)
    raise MethodConfigError(f"unknown consistency metric {metric!r}; valid: {', '.join(METRICS)}")


# --------------------------------------------------------------------------------------- the streaming statistics
def statistic_groups(metrics: Iterable[str], kl_distribution: str = "sum") -> list[str]:
    """The sums a set of metrics needs: ``moments`` (correlation, cosine, L2), ``l1``, ``kl_sum``, ``kl_softmax``."""
    groups: set[str] = set()
    for metric in metrics:
        if metric not in METRICS:
            raise MethodConfigError(f"unknown consistency metric {metric!r}; valid: {', '.join(METRICS)}")
        if metric == "kl" and kl_distribution not in KL_DISTRIBUTIONS:
            raise MethodConfigError(
                f"unknown KL distribution {kl_distribution!r}; valid: {', '.join(KL_DISTRIBUTIONS)}"
            )
        groups.add(_METRIC_GROUPS.get(metric, f"kl_{kl_distribution}"))
    return sorted(groups)


class ConsistencyStatistics:
    """Float64 sums over pooled features from which every consistency matrix follows, per class partition.

    ``update(teacher (B, c_T), student (B, c_S), partition (B,))`` adds one batch without any host
    synchronisation (``index_add_`` over the partition index), so it can run inside training steps (the dynamic
    transformation records the features of the distillation run).  ``state()`` / ``from_state()`` turn the sums
    into a dict of tensors (the cached artefact) and back; ``merge`` adds another pass's sums (devices).

    Groups (:func:`statistic_groups`): ``moments`` = n, sum t, sum s, sum t^2, sum s^2, sum t s^T;
    ``l1`` = sum |t_j - s_i|; ``kl_sum`` = sum t', sum t' log t', sum t' log s'^T, sum s' with
    t' = max(t, 0) + eps; ``kl_softmax`` = running maxima and the rescaled sums of exp(t - max) (log-sum-exp).
    """

    def __init__(
        self,
        teacher_channels: int,
        student_channels: int,
        groups: Iterable[str],
        partitions: int = 1,
        *,
        eps: float = 1e-8,
        device: torch.device | str | None = None,
    ) -> None:
        self.c_t, self.c_s, self.partitions, self.eps = teacher_channels, student_channels, partitions, eps
        self.groups = sorted(set(groups))
        unknown = set(self.groups) - set(_GROUP_SUMS)
        if unknown:
            raise MethodConfigError(f"unknown statistic group(s) {sorted(unknown)}")
        k = partitions
        shapes = {"t": (k, teacher_channels), "s": (k, student_channels), "ts": (k, teacher_channels, student_channels)}
        self.sums: dict[str, Tensor] = {"count": torch.zeros(k, dtype=torch.float64, device=device)}
        for group in self.groups:
            for name, shape in _GROUP_SUMS[group].items():
                start = -math.inf if name.startswith("sm_max") else 0.0
                self.sums[name] = torch.full(shapes[shape], start, dtype=torch.float64, device=device)

    # ------------------------------------------------------------------------------------------------ updates
    def _outer_sum(self, left: Tensor, right: Tensor, partition: Tensor, target: str, absolute: bool = False) -> None:
        """``target[k] += sum_{b in k} f(left_b, right_b)`` with f the outer product (or |l - r| when absolute)."""
        if self.partitions == 1 and not absolute:
            self.sums[target][0] += left.t() @ right
            return
        chunk = max(1, _CHUNK_ELEMENTS // max(1, left.shape[1] * right.shape[1]))
        for start in range(0, left.shape[0], chunk):
            lc, rc = left[start : start + chunk], right[start : start + chunk]
            values = (lc[:, :, None] - rc[:, None, :]).abs() if absolute else lc[:, :, None] * rc[:, None, :]
            if self.partitions == 1:
                self.sums[target][0] += values.sum(0)
            else:
                self.sums[target].index_add_(0, partition[start : start + chunk], values)

    def update(self, teacher: Tensor, student: Tensor, partition: Tensor | None = None) -> None:
        """Add one batch of pooled features (B, c_T) and (B, c_S); ``partition`` (B,) in [0, partitions)."""
        t, s = teacher.detach().double(), student.detach().double()
        if partition is None:
            partition = torch.zeros(t.shape[0], dtype=torch.long, device=t.device)
        add = lambda name, values: self.sums[name].index_add_(0, partition, values)  # noqa: E731
        add("count", torch.ones_like(t[:, 0]))
        if "moments" in self.groups:
            add("t", t)
            add("s", s)
            add("tt", t * t)
            add("ss", s * s)
            self._outer_sum(t, s, partition, "ts")
        if "l1" in self.groups:
            self._outer_sum(t, s, partition, "l1", absolute=True)
        if "kl_sum" in self.groups:
            tp, sp = t.clamp(min=0) + self.eps, s.clamp(min=0) + self.eps
            add("kl_t", tp)
            add("kl_tlogt", tp * tp.log())
            add("kl_s", sp)
            self._outer_sum(tp, sp.log(), partition, "kl_tlogs")
        if "kl_softmax" in self.groups:
            self._update_softmax(t, s, partition)

    def _rescaled_max(self, name: str, values: Tensor, partition: Tensor) -> Tensor:
        """Raise the running maxima ``name`` to this batch's and return the factor old sums are multiplied by."""
        old = self.sums[name]
        index = partition[:, None].expand_as(values)
        batch_max = torch.full_like(old, -math.inf).scatter_reduce_(0, index, values, reduce="amax")
        new = torch.maximum(old, batch_max)
        factor = torch.where(torch.isfinite(old), (old - new).exp(), torch.zeros_like(old))
        self.sums[name] = new
        return factor

    def _update_softmax(self, t: Tensor, s: Tensor, partition: Tensor) -> None:
        factor_t = self._rescaled_max("sm_max_t", t, partition)
        factor_s = self._rescaled_max("sm_max_s", s, partition)
        self.sums["sm_z_t"] *= factor_t
        self.sums["sm_u"] *= factor_t
        self.sums["sm_v"] *= factor_t[:, :, None]
        self.sums["sm_z_s"] *= factor_s
        weight_t = (t - self.sums["sm_max_t"][partition]).exp()
        weight_s = (s - self.sums["sm_max_s"][partition]).exp()
        self.sums["sm_z_t"].index_add_(0, partition, weight_t)
        self.sums["sm_u"].index_add_(0, partition, weight_t * t)
        self.sums["sm_z_s"].index_add_(0, partition, weight_s)
        self._outer_sum(weight_t, s, partition, "sm_v")

    # ------------------------------------------------------------------------------------------- state, merge
    def state(self) -> dict[str, Tensor]:
        return dict(self.sums)

    @classmethod
    def from_state(cls, state: dict[str, Tensor], *, eps: float = 1e-8) -> ConsistencyStatistics:
        groups = [group for group, sums in _GROUP_SUMS.items() if sums.keys() <= state.keys()]
        some = next(state[name] for group in groups for name, shape in _GROUP_SUMS[group].items() if shape == "ts")
        stats = cls(some.shape[1], some.shape[2], groups, some.shape[0], eps=eps, device=some.device)
        stats.sums = {k: v.to(torch.float64) for k, v in state.items()}
        return stats

    def merge(self, other: ConsistencyStatistics) -> None:
        """Add the sums of another pass over other images (e.g. another device's share)."""
        if "kl_softmax" in self.groups:
            for side, z_names in (("t", ("sm_z_t", "sm_u", "sm_v")), ("s", ("sm_z_s",))):
                mine, theirs = self.sums[f"sm_max_{side}"], other.sums[f"sm_max_{side}"]
                new = torch.maximum(mine, theirs)
                scale_mine = torch.where(torch.isfinite(mine), (mine - new).exp(), torch.zeros_like(mine))
                scale_theirs = torch.where(torch.isfinite(theirs), (theirs - new).exp(), torch.zeros_like(theirs))
                for name in z_names:
                    a, b = self.sums[name], other.sums[name]
                    shape = scale_mine.shape + (1,) * (a.dim() - scale_mine.dim())
                    self.sums[name] = a * scale_mine.reshape(shape) + b * scale_theirs.reshape(shape)
                self.sums[f"sm_max_{side}"] = new
        for name, value in other.sums.items():
            if not name.startswith("sm_"):
                self.sums[name] = self.sums[name] + value

    # --------------------------------------------------------------------------------------------- matrices
    def matrix(self, metric: str, kl_distribution: str = "sum") -> Tensor:
        """``M`` per partition, (partitions, c_T, c_S) float64; a partition without images gives zeros."""
        group = statistic_groups([metric], kl_distribution)[0]
        if group not in self.groups:
            raise MethodConfigError(
                f"metric {metric!r} needs the {group} sums, which this pass did not collect ({self.groups})"
            )
        x = self.sums
        n = x["count"][:, None, None]
        seen = n > 0
        if metric == "l1":
            result = 1.0 / (x["l1"] + self.eps)
        elif metric == "l2":
            squared = x["tt"][:, :, None] + x["ss"][:, None, :] - 2.0 * x["ts"]
            result = 1.0 / (squared.clamp(min=0).sqrt() + self.eps)
        elif metric == "cosine":
            denominator = (x["tt"][:, :, None] * x["ss"][:, None, :]).sqrt()
            result = torch.where(denominator > 0, x["ts"] / denominator.clamp(min=1e-300), 0.0)
        elif metric == "correlation":
            safe_n = n.clamp(min=1)
            covariance = x["ts"] - x["t"][:, :, None] * x["s"][:, None, :] / safe_n
            var_t = (x["tt"] - x["t"] ** 2 / safe_n[:, :, 0]).clamp(min=0)
            var_s = (x["ss"] - x["s"] ** 2 / safe_n[:, :, 0]).clamp(min=0)
            denominator = (var_t[:, :, None] * var_s[:, None, :]).sqrt()
            # A constant channel (e.g. a dead ReLU) has no correlation with anything: 0, not NaN.
            relative = denominator > 1e-12 * (x["tt"][:, :, None] * x["ss"][:, None, :]).sqrt()
            result = torch.where(relative & (denominator > 0), covariance / denominator.clamp(min=1e-300), 0.0)
        elif kl_distribution == "sum":
            total_t, total_s = x["kl_t"][:, :, None], x["kl_s"][:, None, :]
            # KL(p_j || q_i) = [sum t' log t' / T_j - log T_j] - [sum t' log s'_i / T_j - log S_i]; M = -KL
            result = (x["kl_tlogs"] / total_t - total_s.log()) - (x["kl_tlogt"][:, :, None] / total_t - total_t.log())
        else:
            z_t, z_s = x["sm_z_t"][:, :, None], x["sm_z_s"][:, None, :]
            max_t, max_s = x["sm_max_t"][:, :, None], x["sm_max_s"][:, None, :]
            # log p_nj = t_nj - max_j - log Z_j; KL = E_p[log p] - E_p[log q]
            expected_log_p = x["sm_u"][:, :, None] / z_t - max_t - z_t.log()
            expected_log_q = x["sm_v"] / z_t - max_s - z_s.log()
            result = -(expected_log_p - expected_log_q)
        return torch.where(seen, result, torch.zeros_like(result))


# ------------------------------------------------------------------------------------------------------ mappings
def gamma(matrix: Tensor, mapping: Tensor) -> Tensor:
    """``Gamma = sum_i M[pi[i], i]`` (Eq. 5-6); batched: (K, c_T, c_S) with (K, c_S) -> (K,)."""
    if matrix.dim() == 2:
        return matrix.gather(0, mapping[None, :].to(matrix.device)).sum()
    return matrix.gather(1, mapping[:, None, :].to(matrix.device)).squeeze(1).sum(-1)


def identity_mapping(teacher_channels: int, student_channels: int) -> Tensor:
    """The default channel order of plain distillation: student channel i <- teacher channel i (mod c_T)."""
    return torch.arange(student_channels) % teacher_channels


def greedy_mapping(matrix: Tensor) -> Tensor:
    """Eq. 7: for every student channel the teacher channel most consistent with it (1-to-N, repeats allowed)."""
    return matrix.argmax(dim=0).cpu()


def bipartite_mapping(matrix: Tensor) -> Tensor:
    """Eq. 8: the maximum-weight bipartite matching (Kuhn-Munkres), ``linear_sum_assignment(M, maximize=True)``.

    Every student channel gets a distinct teacher channel when ``c_T >= c_S``; with fewer teacher channels ``M``
    is stacked ``ceil(c_S / c_T)`` times, so each teacher channel teaches at most that many student channels.
    """
    c_t, c_s = matrix.shape
    repeats = math.ceil(c_s / c_t)
    weights = matrix.detach().double().cpu().repeat(repeats, 1).numpy()
    if not np.isfinite(weights).all():
        raise MethodConfigError("the consistency matrix has non-finite entries; no matching can be computed")
    rows, cols = linear_sum_assignment(weights, maximize=True)
    mapping = torch.empty(c_s, dtype=torch.long)
    mapping[torch.as_tensor(cols)] = torch.as_tensor(rows) % c_t
    return mapping


def random_mapping(teacher_channels: int, student_channels: int, generator: torch.Generator) -> Tensor:
    """A random injective selection of teacher channels (Table 1's "Random Transformation"); with fewer teacher
    channels, a random order of the teacher channels repeated ``ceil(c_S / c_T)`` times."""
    repeats = math.ceil(student_channels / teacher_channels)
    order = torch.randperm(teacher_channels * repeats, generator=generator)
    return order[:student_channels] % teacher_channels


def channel_mapping(
    kind: str, matrix: Tensor | None, shape: tuple[int, int], generator: torch.Generator | None = None
) -> Tensor:
    """The mapping of ``kind`` (:data:`MAPPINGS`) for a (c_T, c_S) problem; ``matrix`` for greedy/bipartite."""
    if kind not in MAPPINGS:
        raise MethodConfigError(f"unknown channel mapping {kind!r}; valid: {', '.join(MAPPINGS)}")
    c_t, c_s = shape
    if kind == "identity":
        return identity_mapping(c_t, c_s)
    if kind == "random":
        return random_mapping(c_t, c_s, generator if generator is not None else torch.Generator().manual_seed(0))
    if matrix is None:
        raise MethodConfigError(f"the {kind} mapping needs a consistency matrix")
    if kind == "greedy":
        return greedy_mapping(matrix)
    return bipartite_mapping(matrix)


# ------------------------------------------------------------------------------------------------------ the loss
def transform_channels(feature_map: Tensor, mapping: Tensor) -> Tensor:
    """``T(F)[:, i] = F[:, pi[i]]`` (Eq. 7): ``mapping`` (c_S,) for the batch or (B, c_S) per sample."""
    if mapping.dim() == 1:
        return feature_map.index_select(1, mapping)
    b, _, h, w = feature_map.shape
    return feature_map.gather(1, mapping[:, :, None, None].expand(b, mapping.shape[1], h, w))


def kcd_l2_loss(student_map: Tensor, transformed_teacher: Tensor, reduction: str = "mean") -> Tensor:
    """The L2 feature-mimicking loss of Eq. 9 between the student map and the transformed teacher map.

    ``mean``: mean squared error over every element (FitNets' MSE; the default with weight 100);
    ``batchmean``: squared error summed over channels and positions, averaged over the batch (the reading under
    which the paper's COCO weight 1e-4 is meaningful).  Maps of different heights are average-pooled to the
    smaller one first (:func:`kd_modules.losses.common.pool_to_smaller`).
    """
    student_map, transformed_teacher = pool_to_smaller(student_map, transformed_teacher)
    if student_map.shape != transformed_teacher.shape:
        raise MethodConfigError(
            f"KCD maps differ: student {tuple(student_map.shape)} vs transformed teacher {tuple(transformed_teacher.shape)}"
        )
    if reduction == "mean":
        return F.mse_loss(student_map, transformed_teacher)
    if reduction == "batchmean":
        return (student_map - transformed_teacher).pow(2).sum() / student_map.shape[0]
    raise MethodConfigError(f"unknown KCD L2 reduction {reduction!r}; valid: mean, batchmean")
