"""SimKD: Chen et al., "Knowledge Distillation with the Reused Teacher Classifier" (CVPR 2022).

Reference: the authors' toolbox (DefangChen/SimKD, ``models/util.py::SimKD``, ``helper/loops.py``), spec
methods-baselines §20.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_modules.base import Batch, TeacherConfig
from kd_modules.errors import MethodConfigError
from kd_modules.feature_distillation import FeatureDistillation
from kd_modules.losses.kd import kd_loss
from kd_modules.losses.simkd import align_spatial, simkd_loss
from models import FeatureOutput, KDNet, create_model
from models.checkpoints import CheckpointError

__all__ = ["SimKD", "SimKDProjector", "SimKDNetwork", "save_simkd_network", "load_simkd_network"]

SIMKD_FORMAT = "kdbench-simkd-network"


def _conv_bn_relu(c_in: int, c_out: int, kernel_size: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class SimKDProjector(nn.Sequential):
    """The official projector: 1x1 conv C_s -> C_t/f, 3x3 conv, 1x1 conv -> C_t, each bias-free and followed by BN and
    ReLU (the last ReLU included), PyTorch's default initialisation."""

    def __init__(self, student_channels: int, teacher_channels: int, factor: int = 2) -> None:
        hidden = teacher_channels // factor
        super().__init__(
            *_conv_bn_relu(student_channels, hidden, 1),
            *_conv_bn_relu(hidden, hidden, 3),
            *_conv_bn_relu(hidden, teacher_channels, 1),
        )


class SimKDNetwork(nn.Module):
    """The deployable SimKD student: the student's layers up to its last stage, the projector, global average
    pooling and the reused (frozen) teacher classifier.  Its logits are SimKD's training-time and test-time
    prediction; the student's own classifier (and any neck) is not used.

    Args:
        student: the student network.
        projector: the trained projector.
        classifier: the teacher's classifier.
        pool_to: the teacher map's height when the student's last map is taller (official alignment), else None.
        archs: the student's and the teacher's network names (what :meth:`save` records).
    """

    def __init__(
        self,
        student: KDNet,
        projector: nn.Module,
        classifier: nn.Module,
        pool_to: int | None,
        archs: tuple[str, str] = ("", ""),
    ) -> None:
        super().__init__()
        self.student = student
        self.projector = projector
        self.classifier = classifier
        self.pool_to = pool_to
        self.student_arch, self.teacher_arch = archs

    def save(self, path: str | Path) -> Path:
        """Write this network (see :func:`load_simkd_network`)."""
        return save_simkd_network(self, self.student_arch, self.teacher_arch, path)

    def project(self, last_stage: Tensor) -> Tensor:
        if self.pool_to is not None:
            last_stage = F.adaptive_avg_pool2d(last_stage, (self.pool_to, self.pool_to))
        return self.projector(last_stage)

    def logits_from_projection(self, projected: Tensor) -> Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(projected, 1), 1))

    def forward(self, images: Tensor) -> Tensor:
        last_stage = self.student.forward_features(images).stages_post[-1]
        return self.logits_from_projection(self.project(last_stage))


class SimKD(FeatureDistillation):
    """Reused teacher classifier: a projector maps the student's last-stage map onto the teacher's, trained with MSE;
    the student predicts with the teacher's classifier on the pooled projection, in training and at test time.

    Official settings (``-c 0 -d 0 -b 1``, ``--factor 2``): no cross-entropy and no KD on the student's own logits,
    feature MSE weight 1.  The teacher classifier is a frozen copy held by the method (so run checkpoints carry it);
    gradients flow through it into the projector and the student.  ``python -m benchmarks.export`` writes the
    deployable network (student + projector + teacher classifier, :class:`SimKDNetwork`).

    Args:
        student: network name.
        teacher: the frozen teacher (its classifier is reused).
        ce_weight: cross-entropy on the student's *own* classifier (official ``-c``, 0).
        feat_weight: the feature MSE weight (official ``-b``, 1).
        factor: the projector's channel reduction (official ``--factor`` 2).
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        ce_weight: float = 0.0,
        feat_weight: float = 1.0,
        factor: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(student, teacher, ce_weight=ce_weight, feat_weight=feat_weight, **kwargs)
        if factor < 1:
            raise MethodConfigError(f"SimKD factor={factor} must be a positive integer")
        c_s, h_s, _ = self.student.stage_shapes[-1].chw
        c_t, h_t, _ = self.teacher.stage_shapes[-1].chw
        head = self.teacher.classifier
        if getattr(head, "in_features", c_t) != c_t:
            raise MethodConfigError(
                f"SimKD reuses the teacher classifier on the pooled last-stage map, but {teacher.arch}'s classifier "
                f"takes {head.in_features} features and its last stage has {c_t} channels"
            )
        self.projector = SimKDProjector(c_s, c_t, factor)
        self.teacher_classifier = copy.deepcopy(head).requires_grad_(False)
        self.pool_to = h_t if h_s > h_t else None

    def deployable(self) -> SimKDNetwork:
        """The network SimKD predicts with (shares this module's student, projector and teacher classifier)."""
        archs = (self.hparams["student"], self.teacher_config.arch)
        return SimKDNetwork(self.student, self.projector, self.teacher_classifier, self.pool_to, archs)

    def deploy_student(self) -> SimKDNetwork:
        """A copy of :meth:`deployable` in eval mode: student, projector and the reused teacher classifier."""
        return copy.deepcopy(self.deployable()).eval()

    def _projection(self, student: FeatureOutput, teacher: FeatureOutput) -> tuple[Tensor, Tensor]:
        """(projected student map, teacher map), spatially aligned as the official code."""
        aligned_student, target = align_spatial(student.stages_post[-1], teacher.stages_post[-1])
        return self.projector(aligned_student), target

    def feature_losses(self, student: FeatureOutput, teacher: FeatureOutput, batch: Batch) -> dict[str, Tensor]:
        return {"simkd": simkd_loss(*self._projection(student, teacher))}

    def training_losses(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        images, labels = batch["images"], batch["labels"]
        teacher, student = self.teacher_and_student(images)
        projected, target = self._projection(student, teacher)
        losses = {"simkd": self.feat_weight * simkd_loss(projected, target)}
        # The official -c/-d terms act on the student's own classifier (both 0 in the published runs).
        if self.ce_weight != 0:
            losses["ce"] = self.ce_weight * F.cross_entropy(student.logits, labels)
        if self.kd_weight != 0:
            losses["kd"] = self.kd_weight * kd_loss(student.logits, teacher.logits, self.temperature)
        # Training accuracy is measured on SimKD's prediction, the teacher classifier on the pooled projection.
        return self.deployable().logits_from_projection(projected), losses

    def predict_logits(self, images: Tensor) -> Tensor:
        return self.deployable()(images)


def save_simkd_network(network: SimKDNetwork, student_arch: str, teacher_arch: str, path: str | Path) -> Path:
    """Write the deployable SimKD network (see :func:`load_simkd_network`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": SIMKD_FORMAT,
        "student_arch": student_arch,
        "teacher_arch": teacher_arch,
        "num_classes": network.student.num_classes,
        "pool_to": network.pool_to,
        "hidden_channels": int(network.projector[0].out_channels),
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_simkd_network(path: str | Path) -> SimKDNetwork:
    """Rebuild the network written by :func:`save_simkd_network` (in eval mode)."""
    payload = torch.load(Path(path), map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != SIMKD_FORMAT:
        raise CheckpointError(f"{path} is not a SimKD network export (format {SIMKD_FORMAT})")
    archs = (payload["student_arch"], payload["teacher_arch"])
    hidden = payload["hidden_channels"]
    student, teacher = (create_model(arch, payload["num_classes"]) for arch in archs)
    c_s, c_t = student.stage_shapes[-1].chw[0], teacher.stage_shapes[-1].chw[0]
    projector = SimKDProjector(c_s, c_t, factor=max(1, c_t // hidden))
    if projector[0].out_channels != hidden:
        raise CheckpointError(f"SimKD export: projector width {hidden} does not divide {archs[1]}'s {c_t} channels")
    network = SimKDNetwork(student, projector, teacher.classifier, payload["pool_to"], archs)
    network.load_state_dict(payload["state_dict"])
    return network.eval()
