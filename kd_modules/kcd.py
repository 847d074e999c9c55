"""KCD: Han et al., "Fixing the Teacher-Student Knowledge Discrepancy in Distillation" — Algorithm 1 as cached stages.

No official code exists; spec ``methods-seed.md`` §4.  The pipeline (Algorithm 1) maps onto kdbench like this:

1. **theta_0** — the planner's ``Vanilla`` *stage* on the pair's student with the run's trial seed stores its
   initial weights as ``initial.pth`` (every fit does); it is passed as ``student_init`` and this run restarts from
   exactly those weights (step 5).
2. **theta_1** — the same ``Vanilla`` run trained with CE only (``final.pth``, ``ce_student_checkpoint``).  It is
   the table's plain-student run of the same trial (identical config = identical identity), so it is trained once.
3. **M** — :func:`consistency_statistics` passes the (un-augmented, eval-mode) training split through the teacher
   and theta_1, global-average-pools the distilled maps and collects the sums of
   :class:`kd_modules.losses.kcd.ConsistencyStatistics`, cached by :func:`kd_modules.offline.load_or_compute`
   under both networks' digests and the data fingerprint.
4. **T** — the channel mapping (bipartite / greedy / random / identity) per class partition, or a learned
   sub-net (Sub-net-FC, Sub-net-Res; :mod:`kd_modules.kcd_subnet`), computed once (static) or every
   ``dynamic_every`` epochs from features recorded during distillation (dynamic).
5-6. distillation: ``ce_weight * CE + feat_weight * L2(F_S, T(F_T))`` (Eq. 9-10), optionally combined with FitNet,
   RKD or RCO (``combine``).

Every detail the paper leaves open (spec §4, "UNKNOWN") is an argument; the defaults are the spec's suggestions:

* distilled layer: the last stage's output (``layer=last``), post-activation (``pre_activation=false``);
* M: the whole training split (``consistency_max_images=None``), un-augmented, both networks in eval mode,
  float64 sums; ``eps=1e-8`` in ``1/(distance + eps)``; a constant channel has correlation 0;
* KL reading: ``-KL(p_j || q_i)`` over images with ``p = (max(t, 0) + eps) / sum`` (``kl_distribution=sum``;
  ``softmax`` is the other reading);
* channel-count mismatch: injective selection of ``c_S`` teacher channels when ``c_T >= c_S``; each teacher
  channel used at most ``ceil(c_S / c_T)`` times otherwise (:mod:`kd_modules.losses.kcd`);
* loss: MSE averaged over elements x 100 (``reduction=mean``, ``feat_weight=100``), CE x 1;
* theta_1: the CE-only run under the same recipe as the final run (it *is* the table's plain-student run);
* Table 3a's other inits: fresh draws under seed ``10000 + k``; Table 4's initial teacher: the distillation
  teacher's architecture drawn under ``transform_teacher_init_seed`` (released teachers' own inits are unknown);
* dynamic: the statistics of the training batches (augmented, student in train mode) since the last recomputation;
* K partitions: ``floor(label * K / num_classes)``;
* Sub-net-FC/Res: :mod:`kd_modules.kcd_subnet`; KCD + FitNet: FitNet's ConvReg on the student's last-stage map
  onto ``T(F_T)`` (the same layer as KCD, not FitNet's stage-2 hint); KCD + RKD: RKD (25/50 inside, x 10) on the
  embeddings plus the KCD L2; KCD + RCO and RCO: :mod:`kd_modules.rco` (one mapping per anchor, from theta_1 and
  that anchor).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_modules.base import Batch, DistillationModule, OptimConfig, SettingsGroup, TeacherConfig
from kd_modules.connectors import ConvReg
from kd_modules.errors import MethodConfigError
from kd_modules.losses.ab import ab_loss
from kd_modules.losses.fitnet import hint_loss
from kd_modules.losses.kcd import (
    ConsistencyStatistics,
    KLDistribution,
    Metric,
    channel_mapping,
    gamma,
    identity_mapping,
    kcd_l2_loss,
    statistic_groups,
    transform_channels,
)
from kd_modules.losses.rkd import rkd_angle_loss, rkd_distance_loss
from kd_modules.offline import (
    load_or_compute,
    normalised_train_batches,
    progress,
    teacher_digest,
    training_data_fingerprint,
)
from kd_modules.rco import TeacherRoute, check_layer, distilled_map, distilled_shape, route_prerequisite, vanilla_stage
from models import KDNet, create_model
from models.checkpoints import load_network

__all__ = ["class_partition", "consistency_statistics", "KCDTransformation", "KCD"]

Transform = Literal["bipartite", "greedy", "random", "none", "subnet_fc", "subnet_res"]
SUBNETS: tuple[str, ...] = ("subnet_fc", "subnet_res")
ModelState = Literal["trained", "init"]
#: Seed base of the extra student initialisations of Table 3a (``distill_init=k`` draws under seed base + k).
OTHER_INIT_SEED_BASE = 10_000
_OFFLINE_VERSION = 1


def class_partition(labels: Tensor, num_classes: int, partitions: int) -> Tensor:
    """Table 6's partition of an image: K equal contiguous label ranges, ``floor(label * K / num_classes)``."""
    return torch.div(labels * partitions, num_classes, rounding_mode="floor")


def consistency_statistics(
    teacher: KDNet,
    student: KDNet,
    batches: Any,
    total: int | None,
    *,
    layer: str,
    pre_activation: bool,
    groups: list[str],
    partitions: int,
    num_classes: int,
    eps: float,
) -> ConsistencyStatistics:
    """One pass of both networks (eval mode, inference mode) over normalised ``batches``: the sums of M.

    Each image contributes its global-average-pooled distilled maps (spec §4.3: ``A(F)`` over the n images).
    """
    device = next(student.parameters()).device
    c_t, c_s = (distilled_shape(network, layer).channels for network in (teacher, student))
    stats = ConsistencyStatistics(c_t, c_s, groups, partitions, eps=eps, device=device)
    teacher.eval()
    student.eval()
    with torch.inference_mode():
        for batch in progress(batches, total, "KCD consistency pass"):
            images, labels = batch["images"], batch["labels"]
            t = distilled_map(teacher.forward_features(images), layer, pre_activation).float().mean((2, 3))
            s = distilled_map(student.forward_features(images), layer, pre_activation).float().mean((2, 3))
            stats.update(t, s, class_partition(labels, num_classes, partitions))
    return stats


@dataclass(frozen=True)
class KCDTransformation(SettingsGroup):
    """How KCD's transformation ``T`` is computed (Algorithm 1 steps 3-4, Tables 1-6; ``transformation: {...}``).

    Args:
        transform: ``bipartite`` (Eq. 8, default), ``greedy`` (Eq. 7, 1-to-N), ``random`` (a random injective
            selection), ``none`` (identity: plain L2 feature distillation), ``subnet_fc`` / ``subnet_res``
            (a learned 1x1-conv / residual-block sub-net, see :mod:`kd_modules.kcd_subnet`).
        consistency: the consistency metric of M: ``correlation`` (default, Table 2's best), ``l1``, ``l2``,
            ``cosine``, ``kl``.
        kl_distribution: UNKNOWN in the paper — how ``kl`` turns a channel into a distribution over images:
            ``sum`` (clamp >= 0, + eps, divide by the sum; default) or ``softmax``.
        consistency_eps: the eps of ``1 / (distance + eps)`` (L1/L2) and of the KL clamp (the paper has none).
        dynamic: recompute the mapping every ``dynamic_every`` epochs from the pooled features of the distillation
            run itself (Table 5) instead of once (static, default).
        dynamic_every: epochs between recomputations (the paper: 5).
        num_transforms: K, the number of class-partition transformations (Table 6; K equal contiguous label
            ranges, each with its own mapping computed from its images, applied to the images of its range).
        transform_student: which student M is computed with: ``trained`` (theta_1, default) or ``init``
            (theta_0; Table 4's S0).
        transform_teacher: which teacher M is computed with: ``trained`` (default) or ``init`` (Table 4's T0): the
            weights in ``transform_teacher_checkpoint`` if given, else a fresh draw of the teacher's architecture
            under seed ``transform_teacher_init_seed`` — UNKNOWN for released teachers, whose init is not public.
        transform_teacher_seed: compute M with the teacher trained with this seed (Table 3b) while distilling from
            the row's teacher; None = the distillation teacher.
        transform_teacher_init_seed: seed of the drawn initial teacher for ``transform_teacher=init``.
        random_seed: seed of the ``random`` mapping.
        subnet_epochs: sub-net transforms: passes over the training split to fit the sub-net (UNKNOWN: 1).
        subnet_lr: sub-net transforms: Adam learning rate (UNKNOWN: 1e-3).
    """

    transform: Transform = "bipartite"
    consistency: Metric = "correlation"
    kl_distribution: KLDistribution = "sum"
    consistency_eps: float = 1e-8
    dynamic: bool = False
    dynamic_every: int = 5
    num_transforms: int = 1
    transform_student: ModelState = "trained"
    transform_teacher: ModelState = "trained"
    transform_teacher_seed: int | None = None
    transform_teacher_init_seed: int = 0
    random_seed: int = 0
    subnet_epochs: int = 1
    subnet_lr: float = 1e-3

    @classmethod
    def of(cls, init_args: dict[str, Any]) -> KCDTransformation:
        """The transformation settings of a planner's ``init_args`` (nested, possibly partial)."""
        return cls(**(init_args.get("transformation") or {}))

    @property
    def needs_statistics(self) -> bool:
        """Whether M is computed (from theta_1 and the teacher): every transform but ``none`` and ``random``."""
        return self.transform not in ("none", "random")


class KCD(DistillationModule):
    """Knowledge-consistent distillation: the teacher's distilled map, channel-transformed to agree with the student.

    ``L = ce_weight * CE + feat_weight * L2(F_S, T(F_T))`` (Eq. 9-10) with ``T`` computed once from the trained
    CE-only student theta_1 and the teacher (Algorithm 1, :class:`KCDTransformation`), the student restarted from
    exactly theta_0.  Combined methods (``combine``) apply ``T`` to the teacher map before their own loss: FitNet
    (a student regressor onto ``T(F_T)``, MSE, weight ``feat_weight``), AB (AB's hinge on the pre-activation maps
    against ``T`` of the teacher's, weight ``ab_weight``), RKD (RKD's distance/angle terms on the embeddings,
    weight ``rkd_weight``, *plus* the KCD L2), RCO (the KCD L2 against each anchor of the teacher's route in turn,
    one ``T`` per anchor).

    Args:
        student: network name.
        teacher: the frozen teacher.
        num_classes: classifier width (linked from the data).
        optim: optimiser and schedule.
        transformation: how ``T`` is computed (:class:`KCDTransformation`).
        student_init: theta_0, the stored initial weights of the CE-only stage (filled in by the table runner:
            the ``Vanilla`` stage's ``initial.pth``); None = a fresh draw (then the transformation was computed for
            another init).
        ce_student_checkpoint: theta_1, the CE-only student trained from theta_0 (the stage's ``final.pth``).
        transform_teacher_checkpoint: the teacher M is computed with, when it is not the distillation teacher
            (Table 3b: the seed-``transform_teacher_seed`` teacher run; filled in by the table runner).
        consistency_max_images: use only the first n training images for M (None = the whole training split, the
            spec's default; smoke runs use a few).
        distill_init: which initialisation the distilled student starts from: 0 = theta_0 (Algorithm 1), k >= 1 =
            another fresh draw under seed ``10000 + k`` (Table 3a: the transformation of theta_0 kept).
        layer: the distilled map: ``last`` (the last stage's output, KCD's "third residual block" on CIFAR
            ResNets; default), ``stage<k>``, ``final_map``.
        pre_activation: distil the stage output before its final ReLU (the paper's COCO setting, following
            OFD); default post-activation (UNKNOWN for classification).
        ce_weight: cross-entropy weight.
        feat_weight: weight of the KCD L2 (UNKNOWN: the FitNets weight 10^2, with ``reduction=mean``).
        reduction: ``mean`` (MSE over elements, default) or ``batchmean`` (summed per image, the COCO reading).
        combine: ``none`` (KCD alone), ``fitnet``, ``ab``, ``rkd``, ``rco``.
        rkd_weight: weight of the RKD term for ``combine=rkd`` (KCD's RKD weight 10).
        ab_weight: weight of the AB term for ``combine=ab`` (KCD's AB weight 10).  UNKNOWN how KCD ran AB: here the
            AB loss (RepDistiller's hinge, margin ``ab_margin``) of the student's pre-activation map against the
            *transformed* teacher pre-activation map replaces the L2, in the distillation run itself (AB's separate
            initialisation stage is not run).
        ab_margin: AB's margin m (RepDistiller 1.0).
        rkd_distance_weight: RKD's distance-term weight inside the RKD term (25).
        rkd_angle_weight: RKD's angle-term weight inside the RKD term (50).
        route_dir: ``combine=rco``: the teacher run's route folder (filled in by the table runner).
        anchor_checkpoints: ``combine=rco``: explicit anchor files, earliest first.
        anchor_fractions: ``combine=rco``: anchors as fractions of the teacher's training (UNKNOWN: 4 equal).
        phase_ends: ``combine=rco``: end of each phase as a fraction of the student's steps (default equal).
    """

    requires_teacher = True
    teacher: KDNet  # loaded by the base module (requires_teacher)

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        num_classes: int = 100,
        optim: OptimConfig = OptimConfig(),
        transformation: KCDTransformation = KCDTransformation(),
        student_init: str | None = None,
        ce_student_checkpoint: str | None = None,
        transform_teacher_checkpoint: str | None = None,
        consistency_max_images: int | None = None,
        distill_init: int = 0,
        layer: str = "last",
        pre_activation: bool = False,
        ce_weight: float = 1.0,
        feat_weight: float = 100.0,
        reduction: Literal["mean", "batchmean"] = "mean",
        combine: Literal["none", "fitnet", "ab", "rkd", "rco"] = "none",
        rkd_weight: float = 10.0,
        ab_weight: float = 10.0,
        ab_margin: float = 1.0,
        rkd_distance_weight: float = 25.0,
        rkd_angle_weight: float = 50.0,
        route_dir: str | None = None,
        anchor_checkpoints: list[str] | None = None,
        anchor_fractions: list[float] = [0.25, 0.5, 0.75, 1.0],  # noqa: B006 - plain data, never mutated
        phase_ends: list[float] | None = None,
    ) -> None:
        t = transformation
        if not 1 <= t.num_transforms <= num_classes:
            raise MethodConfigError(f"num_transforms={t.num_transforms} must be in 1..{num_classes} (the class count)")
        if t.dynamic and (t.transform not in ("bipartite", "greedy") or combine == "rco"):
            raise MethodConfigError(
                f"dynamic=true recomputes a matching (bipartite or greedy) for one teacher; transform={t.transform!r}"
                f" with combine={combine!r} has none to recompute"
            )
        if t.dynamic_every < 1:
            raise MethodConfigError(f"dynamic_every={t.dynamic_every} must be >= 1 epoch")
        if distill_init < 0:
            raise MethodConfigError(f"distill_init={distill_init} must be 0 (theta_0) or a positive init number")
        super().__init__(student, num_classes, teacher, optim, student_init)
        if distill_init > 0:
            # Table 3a: the transformation of theta_0 with another initialisation of the distilled student.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(OTHER_INIT_SEED_BASE + distill_init)
                self.student = create_model(student, num_classes)
        for network in (self.student, self.teacher):
            check_layer(network, layer, pre_activation)
        self.t = t
        # What the transformation is computed from (Algorithm 1 steps 1-3 and the Table 3b/4 options).
        self.theta_0, self.theta_1 = student_init, ce_student_checkpoint
        student_shape, teacher_shape = distilled_shape(self.student, layer), distilled_shape(self.teacher, layer)
        self.c_t, self.c_s = teacher_shape.channels, student_shape.channels

        self.route: TeacherRoute | None = None
        if combine == "rco":
            self.route = TeacherRoute.from_fractions(
                teacher.arch, num_classes, route_dir, anchor_fractions, anchor_checkpoints, phase_ends
            )
        anchors = len(self.route) if self.route is not None else 1
        # mappings[a, k]: the teacher channel of every student channel for anchor a and class partition k.  It is
        # state (checkpointed), so a resumed run continues with the transformation it computed.
        self.register_buffer("mappings", identity_mapping(self.c_t, self.c_s).repeat(anchors, t.num_transforms, 1))
        self.subnet: nn.Module | None = None
        if t.transform in SUBNETS:
            from kd_modules.kcd_subnet import build_subnet

            self.subnet = build_subnet(t.transform, self.c_t, self.c_s).requires_grad_(False)  # fitted offline
        if combine == "ab" and student_shape.chw[1:] != teacher_shape.chw[1:]:
            raise MethodConfigError(
                f"combine='ab' compares maps element-wise: the {layer!r} maps differ in size (student "
                f"{student_shape.height}x{student_shape.width}, teacher {teacher_shape.height}x{teacher_shape.width})"
            )
        if combine == "fitnet":  # T(F_T) has the student's channel count
            self.regressor = ConvReg(
                student_shape, type(student_shape)(self.c_s, teacher_shape.height, teacher_shape.width)
            )
        self._ready = not t.needs_statistics
        if t.transform == "random":
            generator = torch.Generator().manual_seed(t.random_seed)
            for a in range(anchors):
                for k in range(t.num_transforms):
                    self.mappings[a, k] = channel_mapping("random", None, (self.c_t, self.c_s), generator)
        self._recorded: ConsistencyStatistics | None = None
        self.consistency_report: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------ the planner's API
    @classmethod
    def prerequisites(cls, init_args: dict[str, Any]) -> list[dict[str, Any]]:
        """Algorithm 1's CE-only stage (theta_0 and theta_1), and the teacher runs the transformation reads."""
        t = KCDTransformation.of(init_args)
        stages: list[dict[str, Any]] = []
        if t.transform != "none" and int(init_args.get("distill_init", 0) or 0) == 0:
            description = "the student's stored initialisation theta_0 (the CE-only run's initial.pth)"
            stages.append(vanilla_stage("theta_0", "student_init", description, output="initial.pth"))
        if t.needs_statistics:
            description = "theta_1: the student trained from theta_0 with CE only (= the plain-student run)"
            stages.append(vanilla_stage("ce_student", "ce_student_checkpoint", description))
        if t.transform_teacher_seed is not None and t.needs_statistics:
            seed = int(t.transform_teacher_seed)
            description = f"the teacher trained with seed {seed}, the one the transformation is computed for"
            pass_as = "transform_teacher_checkpoint"
            stages.append({"name": "transform_teacher", "network": "teacher", "seed": seed, "pass_as": pass_as})
            stages[-1]["description"] = description
        if init_args.get("combine") == "rco" and not init_args.get("anchor_checkpoints"):
            stages.append(route_prerequisite())
        return stages

    @classmethod
    def offline_stages(cls, init_args: dict[str, Any]) -> list[tuple[str, str]]:
        t = KCDTransformation.of(init_args)
        if not t.needs_statistics:
            return []
        stages = [("kcd_consistency", "pooled teacher/student channel statistics over the training split (M)")]
        if t.transform in SUBNETS:
            stages.append(("kcd_subnet", f"the {t.transform} transformation fitted to maximise the consistency"))
        return stages

    # ------------------------------------------------------------------------------------ the offline stage
    def setup(self, stage: str) -> None:
        if stage == "fit" and not self._ready:
            self.prepare_transform(self.trainer.datamodule, self.trainer.strategy.root_device)

    def _transform_networks(self) -> tuple[KDNet, str, KDNet, str]:
        """(student, its identity, teacher, its identity) that M is computed with (Table 3b/4 options)."""
        arch, num_classes, t = self.hparams["student"], self.hparams["num_classes"], self.t
        if t.transform_student == "trained":
            path = self.theta_1
            missing = (
                "KCD needs theta_1, the CE-only student (ce_student_checkpoint; the table runner passes the "
                "Vanilla stage's final.pth), or transform_student=init"
            )
        else:
            path, missing = self.theta_0, "transform_student=init needs theta_0 (student_init, the stage's initial.pth)"
        if path is None:
            raise MethodConfigError(missing)
        student, student_id = load_network(arch, num_classes, path), teacher_digest(path)
        teacher_arch = self.teacher_config.arch
        teacher_path = self.transform_teacher_checkpoint or self.teacher_config.checkpoint
        if t.transform_teacher == "trained" or self.transform_teacher_checkpoint:
            teacher, teacher_id = load_network(teacher_arch, num_classes, teacher_path), teacher_digest(teacher_path)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(t.transform_teacher_init_seed)
                teacher = create_model(teacher_arch, num_classes)
            teacher_id = f"init:{teacher_arch}:seed{t.transform_teacher_init_seed}"
        return student, student_id, teacher, teacher_id

    def prepare_transform(self, datamodule: Any, device: torch.device | str | None = None) -> None:
        """Compute (or load from the cache) M and the transformation; Trainer.fit calls it from ``setup``."""
        if not hasattr(datamodule, "train_eval_dataloader"):
            raise MethodConfigError(
                f"KCD computes its transformation over a datamodule's un-augmented training pass "
                f"(train_eval_dataloader); {type(datamodule).__name__} has none"
            )
        t = self.t
        device = torch.device(device) if device is not None else self.mappings.device
        student, student_id, teacher, teacher_id = self._transform_networks()
        student.to(device)
        teachers: list[tuple[str, dict[str, Tensor] | None]] = [(teacher_id, None)]
        if self.route is not None:
            teachers = [(teacher_digest(path), state) for path, state in zip(self.route.checkpoints, self.route.states)]
        groups = statistic_groups([t.consistency], t.kl_distribution)
        common = {
            "student": student_id,
            "data": training_data_fingerprint(datamodule),
            "dataset": type(datamodule).__name__,
            "normalisation": {"mean": list(datamodule.mean), "std": list(datamodule.std)},
            "max_images": self.consistency_max_images,
            "layer": self.layer,
            "pre_activation": self.pre_activation,
            "partitions": t.num_transforms,
            "eps": t.consistency_eps,
            "version": _OFFLINE_VERSION,
            "groups": groups,
        }
        report: dict[str, Any] = {"gamma_identity": [], "gamma_transformed": []}
        for a, (t_id, state) in enumerate(teachers):
            if state is not None:
                teacher.load_state_dict(state)
            teacher.to(device)
            inputs = {**common, "teacher": t_id}
            if t.transform in SUBNETS:
                inputs["teacher_arch"] = self.teacher_config.arch
                self._fit_subnet(datamodule, device, student, teacher, inputs)
                continue
            state_dict = load_or_compute(
                "kcd_consistency",
                inputs,
                lambda: consistency_statistics(
                    teacher,
                    student,
                    *self._train_batches(datamodule, device),
                    layer=self.layer,
                    pre_activation=self.pre_activation,
                    groups=groups,
                    partitions=t.num_transforms,
                    num_classes=self.hparams["num_classes"],
                    eps=t.consistency_eps,
                ).state(),
            )
            stats = ConsistencyStatistics.from_state(state_dict, eps=t.consistency_eps)
            self._set_mappings(a, stats.matrix(t.consistency, t.kl_distribution), report)
        self.consistency_report = report
        self._ready = True

    def _set_mappings(self, anchor: int, matrices: Tensor, report: dict[str, Any]) -> None:
        identity = identity_mapping(self.c_t, self.c_s)
        for k in range(matrices.shape[0]):
            mapping = channel_mapping(self.t.transform, matrices[k], (self.c_t, self.c_s))
            self.mappings[anchor, k] = mapping.to(self.mappings.device)
            report["gamma_identity"].append(float(gamma(matrices[k], identity)))
            report["gamma_transformed"].append(float(gamma(matrices[k], mapping)))

    def _train_batches(self, datamodule: Any, device: torch.device) -> tuple[Any, int]:
        return normalised_train_batches(datamodule, device, self.consistency_max_images)

    def _fit_subnet(self, datamodule: Any, device: torch.device, student: KDNet, teacher: KDNet, inputs: dict) -> None:
        from kd_modules.kcd_subnet import fit_subnet

        assert self.subnet is not None
        t = self.t
        inputs = {**inputs, "subnet": t.transform, "epochs": t.subnet_epochs, "lr": t.subnet_lr}

        def compute() -> dict[str, Tensor]:
            passes = (self._train_batches(datamodule, device) for _ in range(t.subnet_epochs))
            return fit_subnet(
                self.subnet,
                teacher,
                student,
                passes,
                layer=self.layer,
                pre_activation=self.pre_activation,
                metric=t.consistency,
                kl_distribution=t.kl_distribution,
                eps=t.consistency_eps,
                lr=t.subnet_lr,
            )

        fitted = load_or_compute("kcd_subnet", inputs, compute)
        self.subnet.load_state_dict({k: v.to(device) for k, v in fitted.items()})

    # -------------------------------------------------------------------------------------- distillation
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.route is not None:
            self.route.follow(self.teacher, self.global_step, self.trainer.estimated_stepping_batches)

    def _partition(self, labels: Tensor) -> Tensor:
        return class_partition(labels, self.hparams["num_classes"], self.t.num_transforms)

    def transformed_teacher_map(self, teacher_map: Tensor, labels: Tensor) -> Tensor:
        """``T(F_T)``: the sub-net's output, or the channel mapping of the image's class partition."""
        if self.subnet is not None:
            with torch.no_grad():
                return self.subnet(teacher_map)
        mappings = self.mappings[0]
        if self.route is not None:  # combine=rco: the mappings of the phase's anchor
            mappings = self.mappings[self.route.phase_at(self.global_step, self.trainer.estimated_stepping_batches)]
        return transform_channels(
            teacher_map, mappings[0] if self.t.num_transforms == 1 else mappings[self._partition(labels)]
        )

    def training_losses(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        if not self._ready:
            raise MethodConfigError(
                "KCD: the transformation is not computed; Trainer.fit computes it in setup(), outside a Trainer call "
                "prepare_transform(datamodule) first"
            )
        images, labels = batch["images"], batch["labels"]
        teacher_features = self.teacher_features(images)
        teacher_map = distilled_map(teacher_features, self.layer, self.pre_activation).clone()
        student = self.student.forward_features(images)
        student_map = distilled_map(student, self.layer, self.pre_activation)
        if self.t.dynamic:
            self._record(teacher_map, student_map, labels)
        target = self.transformed_teacher_map(teacher_map, labels)
        losses = {"ce": self.ce_weight * F.cross_entropy(student.logits, labels)}
        if self.combine == "fitnet":
            losses["hint"] = self.feat_weight * hint_loss(self.regressor(student_map), target)
        elif self.combine == "ab":
            # T commutes with the stage's ReLU (it moves channels), so T of the pre-activation map is well defined.
            teacher_pre = self.transformed_teacher_map(
                distilled_map(teacher_features, self.layer, True).clone(), labels
            )
            student_pre = distilled_map(student, self.layer, True)
            losses["ab"] = self.ab_weight * ab_loss([student_pre], [teacher_pre], self.ab_margin)
        else:
            losses["kcd"] = self.feat_weight * kcd_l2_loss(student_map, target, self.reduction)
        if self.combine == "rkd":
            e_s, e_t = student.embedding, teacher_features.embedding.clone()
            losses["rkd_distance"] = self.rkd_weight * self.rkd_distance_weight * rkd_distance_loss(e_s, e_t)
            losses["rkd_angle"] = self.rkd_weight * self.rkd_angle_weight * rkd_angle_loss(e_s, e_t)
        return student.logits, losses

    # --------------------------------------------------------------------------------- dynamic (Table 5)
    def _record(self, teacher_map: Tensor, student_map: Tensor, labels: Tensor) -> None:
        t = self.t
        if self._recorded is None:
            groups = statistic_groups([t.consistency], t.kl_distribution)
            self._recorded = ConsistencyStatistics(
                self.c_t, self.c_s, groups, t.num_transforms, eps=t.consistency_eps, device=teacher_map.device
            )
        pooled_student = student_map.detach().float().mean((2, 3))
        self._recorded.update(teacher_map.float().mean((2, 3)), pooled_student, self._partition(labels))

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        t = self.t
        if not t.dynamic or (self.current_epoch + 1) % t.dynamic_every != 0 or self._recorded is None:
            return
        stats = self._recorded
        if self.trainer.world_size > 1:
            # Every device saw its share of the images: merge the devices' statistics (``merge`` also rescales the
            # running maxima of the softmax-KL sums, which a plain sum would not).
            gathered = self.all_gather(stats.state())
            stats = ConsistencyStatistics.from_state({k: v[0] for k, v in gathered.items()}, eps=t.consistency_eps)
            for rank in range(1, self.trainer.world_size):
                other = {k: v[rank] for k, v in gathered.items()}
                stats.merge(ConsistencyStatistics.from_state(other, eps=t.consistency_eps))
        report: dict[str, Any] = {"gamma_identity": [], "gamma_transformed": []}
        self._set_mappings(0, stats.matrix(t.consistency, t.kl_distribution), report)
        self._recorded = None
        self.log_dict({f"kcd/{name}": sum(values) for name, values in report.items()})  # kcd/gamma_identity, ...

    def on_train_start(self) -> None:
        if self.consistency_report and self.trainer.default_root_dir:
            folder = Path(self.trainer.default_root_dir)
            if self.trainer.global_rank == 0 and folder.is_dir():
                torch.save({"mappings": self.mappings.cpu(), **self.consistency_report}, folder / "kcd_transform.pt")
