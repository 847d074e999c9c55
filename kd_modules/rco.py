"""RCO: Jin et al., "Knowledge Distillation via Route Constrained Optimization" (ICCV 2019), as KCD runs it.

RCO replaces the single converged teacher by *anchor points* on the teacher's own training route: checkpoints
``theta^T_1 ... theta^T_m`` saved while the teacher trained (``theta^T_m`` = the converged teacher).  The student
is trained in successive phases, phase ``k`` mimicking anchor ``k`` — an easy-to-hard curriculum.  KCD's tables
(Tables 7-8) run RCO on feature maps (the mimicking L2 on the distilled layer, weight 10^2), and "KCD + RCO"
applies the KCD transformation to each anchor's map (:class:`kd_modules.kcd.KCDRCO`).

No RCO code is public and KCD states none of the details; every choice below is an option (spec methods-seed §4.7):

* **anchors** (``anchor_fractions``, default 0.25 / 0.5 / 0.75 / 1.0): RCO's "equal epoch interval strategy"
  with 4 anchors.  A fraction ``f`` is the teacher after ``ceil(f * S)`` of its ``S`` optimiser steps.  RCO asks the
  pair's teacher run for its route through a prerequisite (:func:`route_prerequisite`); the table runner then has
  that teacher run save it (``run.route``, see :mod:`benchmarks.cli`) into ``<teacher run>/route/at_<f>.pth``
  (a teacher that finished before any run asked for its route has none: the cell is blocked and says so);
  ``1.0`` is the run's ``final.pth``.  RCO's greedy
  anchor search is not implemented; explicit files can be given with ``anchor_checkpoints``;
* **phases** (``phase_ends``, default equal): phase ``k`` ends after the fraction ``phase_ends[k]`` of the
  student's optimiser steps; the phases sum to the recipe's normal schedule (no extra training);
* **loss**: ``ce_weight * CE + feat_weight * L2(F_S, F_anchor)`` in every phase (CE is never dropped), on the
  distilled layer (KCD: the last stage's output, post-activation), MSE averaged over elements;
* **channel counts**: with ``c_T != c_S`` the teacher map is read in its default channel order (the first ``c_S``
  channels, KCD's identity transformation; see :mod:`kd_modules.losses.kcd`) so that "KCD + RCO" and "RCO" differ
  by the transformation only.

The anchor in use is loaded into the frozen teacher module when a phase starts (the teacher never trains, is
never checkpointed, and the anchors' weights stay on the host until their phase).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from kd_modules.base import Batch, DistillationModule, OptimConfig, TeacherConfig
from kd_modules.errors import MethodConfigError
from kd_modules.losses.kcd import identity_mapping, kcd_l2_loss, transform_channels
from models import FeatureOutput, FeatureShape, KDNet
from models.checkpoints import CheckpointError, export_network, load_network

__all__ = [
    "LAYER_HELP",
    "ROUTE_FOLDER",
    "route_file",
    "check_layer",
    "distilled_map",
    "distilled_shape",
    "TeacherRoute",
    "RouteSnapshots",
    "DEFAULT_ROUTE",
    "RCO",
    "vanilla_stage",
]

#: The folder of a run that holds its route snapshots, and the name of one snapshot.
ROUTE_FOLDER = "route"
#: Where teacher runs made by the table runner snapshot their route (RCO's equal-interval anchors; 1.0 = final.pth).
DEFAULT_ROUTE: tuple[float, ...] = (0.25, 0.5, 0.75)
LAYER_HELP = "last (each network's last stage), stage<k> (stage k of both), final_map (the map entering pooling)"


def route_file(fraction: float) -> str:
    """The file name of the route snapshot taken after ``fraction`` of a run's optimiser steps."""
    return f"at_{fraction:.3f}.pth"


class RouteSnapshots(Callback):
    """Save the trained network after ``fraction`` of the run's optimiser steps, for each fraction (RCO anchors).

    Enabled by ``--run.route`` (the table runner sets it on the teacher runs whose route an RCO run reads, through
    :func:`route_prerequisite`; it is bookkeeping, not part of the run's identity).  A snapshot is written once, as ``<run dir>/route/at_<f>.pth`` in the plain network format,
    when the global step first reaches ``ceil(f * estimated_stepping_batches)``; a resumed run keeps the files
    already written.
    """

    def __init__(self, fractions: Sequence[float], run_dir: str | Path) -> None:
        bad = [f for f in fractions if not 0 < float(f) < 1]
        if bad:
            raise MethodConfigError(f"route fractions must lie in (0, 1) (1.0 is final.pth), got {bad}")
        self.fractions = sorted(float(f) for f in fractions)
        self.folder = Path(run_dir) / ROUTE_FOLDER

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_rank != 0:
            return
        total = trainer.estimated_stepping_batches
        for fraction in self.fractions:
            path = self.folder / route_file(fraction)
            if trainer.global_step >= math.ceil(fraction * total) and not path.is_file():
                export_network(
                    pl_module.student, pl_module.hparams["student"], path, fraction=fraction, step=trainer.global_step
                )


# ------------------------------------------------------------------------------------------ the distilled layer
def check_layer(network: KDNet, layer: str, pre_activation: bool) -> None:
    """Raise a :class:`MethodConfigError` naming the valid layers when ``layer`` does not exist in ``network``."""
    if layer in ("last", "final_map"):
        if layer == "final_map" and pre_activation:
            raise MethodConfigError("layer=final_map has no pre-activation form; use pre_activation=false")
        return
    if layer.startswith("stage") and layer[5:].isdigit() and 1 <= int(layer[5:]) <= network.num_stages:
        return
    raise MethodConfigError(
        f"unknown layer {layer!r} for {type(network).__name__} ({network.num_stages} stages); valid: {LAYER_HELP}"
    )


def _stage_index(network_stages: int, layer: str) -> int:
    return network_stages - 1 if layer == "last" else int(layer[5:]) - 1


def distilled_map(features: FeatureOutput, layer: str, pre_activation: bool) -> Tensor:
    """The (B, C, H, W) map of ``layer`` (see :data:`LAYER_HELP`); ``pre_activation``: before the stage's final
    activation (COCO in the paper, following OFD) instead of after it (the default reading for classification)."""
    if layer == "final_map":
        return features.final_map
    stages = features.stages_pre if pre_activation else features.stages_post
    return stages[_stage_index(len(stages), layer)]


def distilled_shape(network: KDNet, layer: str) -> FeatureShape:
    """The shape of ``layer`` at the network's native input size, without a forward pass."""
    if layer == "final_map":
        return network.final_shape
    return network.stage_shapes[_stage_index(network.num_stages, layer)]


# ---------------------------------------------------------------------------------------------------- the route
class TeacherRoute:
    """The anchors of a teacher's training route and the phase schedule of the student.

    Args:
        arch: the teacher's network name.
        num_classes: classifier width.
        checkpoints: anchor files, earliest first (the last one is the converged teacher).
        phase_ends: where each phase ends, as fractions of the student's optimiser steps (increasing, last 1.0);
            default: equal phases.
    """

    def __init__(
        self, arch: str, num_classes: int, checkpoints: Sequence[str], phase_ends: Sequence[float] | None
    ) -> None:
        if not checkpoints:
            raise MethodConfigError("RCO needs at least one anchor checkpoint")
        self.checkpoints = [str(c) for c in checkpoints]
        m = len(self.checkpoints)
        ends = [float(e) for e in phase_ends] if phase_ends is not None else [(k + 1) / m for k in range(m)]
        if len(ends) != m or sorted(set(ends)) != ends or not math.isclose(ends[-1], 1.0) or ends[0] <= 0:
            raise MethodConfigError(
                f"phase_ends={list(phase_ends or [])} must be {m} increasing fractions in (0, 1] ending at 1.0, one per anchor"
            )
        self.phase_ends = ends
        self.loaded_phase: int | None = None  # the anchor in the teacher module now (follow)
        self.states: list[dict[str, Tensor]] = [
            load_network(arch, num_classes, path).state_dict() for path in self.checkpoints
        ]

    @classmethod
    def from_fractions(
        cls,
        arch: str,
        num_classes: int,
        route_dir: str | None,
        anchor_fractions: Sequence[float],
        anchor_checkpoints: Sequence[str] | None,
        phase_ends: Sequence[float] | None,
    ) -> TeacherRoute:
        """Anchors given as files, or as fractions of the teacher run whose route folder is ``route_dir``."""
        if anchor_checkpoints:
            paths = [str(p) for p in anchor_checkpoints]
        else:
            if route_dir is None:
                raise MethodConfigError(
                    "RCO needs the teacher's training route: route_dir=<teacher run>/route (the table runner passes it "
                    "from the teacher run) or anchor_checkpoints=[...]"
                )
            fractions = [float(f) for f in anchor_fractions]
            if not fractions or sorted(set(fractions)) != fractions or not 0 < fractions[0] or fractions[-1] > 1:
                raise MethodConfigError(f"anchor_fractions={fractions} must increase within (0, 1]")
            folder = Path(route_dir)
            paths = [
                str(folder.parent / "final.pth" if math.isclose(f, 1.0) else folder / route_file(f)) for f in fractions
            ]
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise CheckpointError(
                f"RCO anchor checkpoint not found: {missing[0]} (teacher runs save their route at 0.25/0.5/0.75 of "
                f"training when the table runner makes them; a teacher trained without run.route has none: retrain it, "
                f"or pass anchor_checkpoints)"
            )
        return cls(arch, num_classes, paths, phase_ends)

    def __len__(self) -> int:
        return len(self.checkpoints)

    def phase_at(self, step: int, total_steps: int | float) -> int:
        """The phase of optimiser step ``step`` (0-based) in a run of ``total_steps`` steps."""
        fraction = step / max(float(total_steps), 1.0)
        return min(sum(fraction >= end for end in self.phase_ends), len(self) - 1)

    def load_into(self, teacher: KDNet, phase: int) -> None:
        """Copy anchor ``phase``'s weights into the (frozen, eval-mode) teacher module."""
        teacher.load_state_dict(self.states[phase])

    def follow(self, teacher: KDNet, step: int, total_steps: int | float) -> None:
        """Load the anchor of step ``step``'s phase into ``teacher`` unless it is the one loaded (once per phase)."""
        phase = self.phase_at(step, total_steps)
        if phase != self.loaded_phase:
            self.load_into(teacher, phase)
            self.loaded_phase = phase


# ------------------------------------------------------------------------------------------------------- RCO
class RCO(DistillationModule):
    """Route-constrained optimisation on the distilled feature map: ``CE + feat_weight * L2(F_S, F_anchor(phase))``.

    See the module docs for every choice (anchors, phases, loss, channel counts).  The planner passes the teacher
    run's route folder (a prerequisite: the pair's teacher run itself, which saves its route).

    Args:
        student: network name.
        teacher: the converged teacher (its architecture names the anchors').
        num_classes: classifier width (linked from the data).
        optim: optimiser and schedule.
        route_dir: ``<teacher run>/route``, the teacher's route snapshots (filled in by the table runner).
        anchor_checkpoints: explicit anchor files, earliest first (instead of ``route_dir`` + fractions).
        anchor_fractions: the anchors as fractions of the teacher's training (1.0 = its final weights).
        phase_ends: end of each phase as a fraction of the student's steps (default: equal phases).
        layer: the distilled map (KCD: ``last``, the last stage; see :data:`LAYER_HELP`).
        pre_activation: distil the stage output before its final activation.
        ce_weight: cross-entropy weight (every phase).
        feat_weight: weight of the mimicking L2 (KCD: 10^2).
        reduction: ``mean`` (MSE over elements) or ``batchmean`` (squared error summed per image).
    """

    requires_teacher = True
    teacher: KDNet  # loaded by the base module (requires_teacher)

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        num_classes: int = 100,
        optim: OptimConfig = OptimConfig(),
        route_dir: str | None = None,
        anchor_checkpoints: list[str] | None = None,
        anchor_fractions: list[float] = [0.25, 0.5, 0.75, 1.0],  # noqa: B006 - plain data, never mutated
        phase_ends: list[float] | None = None,
        layer: str = "last",
        pre_activation: bool = False,
        ce_weight: float = 1.0,
        feat_weight: float = 100.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__(student=student, num_classes=num_classes, teacher=teacher, optim=optim)
        for network in (self.student, self.teacher):
            check_layer(network, layer, pre_activation)
        if reduction not in ("mean", "batchmean"):
            raise MethodConfigError(f"unknown reduction {reduction!r}; valid: mean, batchmean")
        self.route = TeacherRoute.from_fractions(
            teacher.arch, num_classes, route_dir, anchor_fractions, anchor_checkpoints, phase_ends
        )
        c_t = distilled_shape(self.teacher, layer).channels
        c_s = distilled_shape(self.student, layer).channels
        # The teacher's default channel order (the identity transformation) when the widths differ.
        self.register_buffer("channel_order", identity_mapping(c_t, c_s), persistent=False)
        self.same_width = c_t == c_s

    @classmethod
    def prerequisites(cls, init_args: dict[str, Any]) -> list[dict[str, Any]]:
        if init_args.get("anchor_checkpoints"):
            return []
        return [route_prerequisite(init_args.get("anchor_fractions", DEFAULT_ROUTE))]

    # ------------------------------------------------------------------------------------------ the phases
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.route.follow(self.teacher, self.global_step, self.trainer.estimated_stepping_batches)

    def training_losses(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        images, labels = batch["images"], batch["labels"]
        teacher_map = distilled_map(self.teacher_features(images), self.layer, self.pre_activation)
        student = self.student.forward_features(images)
        if not self.same_width:
            teacher_map = transform_channels(teacher_map, self.channel_order)
        student_map = distilled_map(student, self.layer, self.pre_activation)
        return student.logits, {
            "ce": self.ce_weight * F.cross_entropy(student.logits, labels),
            "rco": self.feat_weight * kcd_l2_loss(student_map, teacher_map, self.reduction),
        }


def route_prerequisite(fractions: Sequence[float] = DEFAULT_ROUTE) -> dict[str, Any]:
    """The planner prerequisite that hands a method the route folder of the pair's (seed-0) teacher run, and asks
    that run to snapshot its network at ``fractions`` of its steps (1.0 is its ``final.pth``)."""
    return {
        "name": "teacher_route",
        "network": "teacher",
        "pass_as": "route_dir",
        "output": ROUTE_FOLDER,
        "route": [float(f) for f in fractions if not math.isclose(float(f), 1.0)],
        "description": "the teacher run's route snapshots (RCO anchors)",
    }


def vanilla_stage(name: str, pass_as: str, description: str, **fields: Any) -> dict[str, Any]:
    """The planner prerequisite of a CE-only ``Vanilla`` run on the pair's student (KCD's theta_0 / theta_1, the
    diagnostics' second networks); ``fields`` are its other keys (``output``, ``seed``)."""
    return {"name": name, "method": "Vanilla", "pass_as": pass_as, "description": description, **fields}
