"""OFD: Heo et al., "A Comprehensive Overhaul of Feature Distillation" (ICCV 2019).

Reference: the authors' code (clovaai/overhaul-distillation, ``CIFAR-100/distiller.py``) and mdistiller's
``OFD`` distiller (spec methods-baselines §16).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, Literal

from torch import Tensor, nn

from kd_modules.base import Batch, TeacherConfig
from kd_modules.errors import MethodConfigError
from kd_modules.feature_distillation import FeatureDistillation
from kd_modules.losses.common import pool_to_smaller
from kd_modules.losses.ofd import ofd_loss, ofd_margin
from models import FeatureOutput, KDNet
from models.contract import FeatureUnavailable

__all__ = ["OFD", "OFDConnector"]


class OFDConnector(nn.Sequential):
    """The official ``build_feature_connector``: a bias-free k x k conv from C_s to C_t and a BatchNorm.

    Initialisation as the official code: conv weights ~ N(0, 2 / (k·k·C_t)), BN weight 1 and bias 0.
    """

    def __init__(self, student_channels: int, teacher_channels: int, kernel_size: int = 1) -> None:
        conv = nn.Conv2d(student_channels, teacher_channels, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (kernel_size * kernel_size * teacher_channels)))
        bn = nn.BatchNorm2d(teacher_channels)
        super().__init__(conv, bn)


@contextmanager
def batch_statistics(network: KDNet) -> Iterator[None]:
    """Run ``network``'s BatchNorms on the batch's statistics without changing their running statistics.

    The official OFD code and mdistiller leave the teacher in train mode, so its pre-ReLU features are normalised
    with batch statistics (and its running statistics drift, which nothing reads).  Momentum 0 keeps the running
    statistics as they are.
    """
    norms = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    network.train()
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        network.eval()


class OFD(FeatureDistillation):
    """Overhaul of feature distillation: pre-ReLU stage outputs, connector, margin ReLU, partial L2.

    For each of the last ``n = min(stages)`` stages (mdistiller aligns the lists from the *end*), the student's
    pre-ReLU stage output goes through a connector (1x1 conv + BN) and is compared with the teacher's pre-ReLU
    output by the partial L2 with the per-channel margin of the teacher BatchNorm before that ReLU
    (``bn_before_relu()``); stages are weighted 1, 1/2, 1/4 ... from the deepest.  Total: CE + 1e-3 · L (official
    CIFAR ``/ batch / 1000``; mdistiller ``FEAT_WEIGHT`` 1e-3, ImageNet 1e-4).  Maps of different sizes are
    average-pooled to the smaller one (mdistiller; the official code assumes equal sizes).

    Args:
        student: network name.
        teacher: the frozen teacher (must expose ``bn_before_relu()``).
        feat_weight: the distillation weight (1e-3 CIFAR, 1e-4 ImageNet).
        connector_kernel: the connector's kernel size (mdistiller ``OFD.CONNECTOR.KERNEL_SIZE`` 1).
        teacher_bn: ``batch`` — teacher features with batch statistics, as the official code and mdistiller
            (their teacher stays in train mode) — or ``running`` (teacher in eval mode, like every other method).
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        feat_weight: float = 1e-3,
        connector_kernel: int = 1,
        teacher_bn: Literal["batch", "running"] = "batch",
        **kwargs: Any,
    ) -> None:
        super().__init__(student, teacher, feat_weight=feat_weight, **kwargs)
        if teacher_bn not in ("batch", "running"):
            raise MethodConfigError(f"OFD teacher_bn={teacher_bn!r} is not valid: choose 'batch' or 'running'")
        if connector_kernel < 1 or connector_kernel % 2 == 0:
            raise MethodConfigError(f"OFD connector_kernel={connector_kernel} must be a positive odd number")
        try:
            norms = self.teacher.bn_before_relu()
        except FeatureUnavailable as error:
            raise MethodConfigError(f"OFD cannot use {teacher.arch} as a teacher: {error}") from None
        n = self.num_stage_pairs
        s_shapes = self.student.stage_shapes[-n:]
        t_shapes = self.teacher.stage_shapes[-n:]
        norms = list(norms)[-n:]
        self.connectors = nn.ModuleList(
            OFDConnector(s.chw[0], t.chw[0], connector_kernel) for s, t in zip(s_shapes, t_shapes)
        )
        for k, bn in enumerate(norms):
            # The margins are fixed at construction (official code), buffers so they travel with the module.
            self.register_buffer(f"margin{k}", ofd_margin(bn.weight, bn.bias))

    @property
    def margins(self) -> list[Tensor]:
        return [getattr(self, f"margin{k}") for k in range(len(self.connectors))]

    def teacher_features(self, images: Tensor) -> FeatureOutput:
        with batch_statistics(self.teacher) if self.teacher_bn == "batch" else nullcontext():
            return super().teacher_features(images)

    def feature_losses(self, student: FeatureOutput, teacher: FeatureOutput, batch: Batch) -> dict[str, Tensor]:
        n = len(self.connectors)
        stages = zip(self.connectors, student.stages_pre[-n:], teacher.stages_pre[-n:])
        pairs = [pool_to_smaller(connector(s), t) for connector, s, t in stages]
        return {"ofd": ofd_loss([s for s, _ in pairs], [t for _, t in pairs], self.margins)}
