"""SemCKD: Chen et al., "Cross-Layer Distillation with Semantic Calibration" (AAAI 2021).

Reference: the SimKD toolbox (DefangChen/SimKD ``distiller_zoo/SemCKD.py``, ``models/util.py::SelfA, MLPEmbed``),
spec methods-baselines §21.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from kd_modules.base import Batch, TeacherConfig
from kd_modules.errors import MethodConfigError
from kd_modules.feature_distillation import FeatureDistillation
from kd_modules.losses.common import pool_to_smaller
from kd_modules.losses.semckd import semckd_attention, semckd_loss
from models import FeatureOutput

__all__ = ["SemCKD", "SemCKDEmbed", "SemCKDProjection"]


class SemCKDEmbed(nn.Module):
    """The official ``MLPEmbed``: Linear(B -> 2B/4), ReLU, Linear(2B/4 -> B/4), then L2 normalisation (no eps).

    Its input is a row of a layer's B x B Gram matrix, so its width is the batch size.
    """

    def __init__(self, batch_size: int, factor: int = 4) -> None:
        super().__init__()
        out = batch_size // factor
        if out < 1:
            raise MethodConfigError(f"SemCKD needs a batch of at least {factor} samples, got {batch_size}")
        self.net = nn.Sequential(nn.Linear(batch_size, 2 * out), nn.ReLU(inplace=True), nn.Linear(2 * out, out))

    def forward(self, gram: Tensor) -> Tensor:
        x = self.net(gram)
        return x / x.pow(2).sum(dim=1, keepdim=True).sqrt()


class SemCKDProjection(nn.Sequential):
    """The official ``Proj`` of one (student layer, teacher layer) pair: 1x1 conv C_s -> 2C_t, BN, ReLU, 3x3 conv,
    BN, ReLU, 1x1 conv -> C_t (bias-free convolutions, no final BN or ReLU)."""

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        wide = 2 * teacher_channels
        super().__init__(
            nn.Conv2d(student_channels, wide, 1, bias=False),
            nn.BatchNorm2d(wide),
            nn.ReLU(inplace=True),
            nn.Conv2d(wide, wide, 3, padding=1, bias=False),
            nn.BatchNorm2d(wide),
            nn.ReLU(inplace=True),
            nn.Conv2d(wide, teacher_channels, 1, bias=False),
        )


def _gram(feature: Tensor) -> Tensor:
    """B x B inner products of the flattened maps (unnormalised, as the official code)."""
    flat = feature.reshape(feature.shape[0], -1)
    return flat @ flat.t()


class SemCKD(FeatureDistillation):
    """Semantic calibration: every student stage output is projected onto every teacher stage output; each
    sample weighs the S x T errors with attention from its layers' Gram-matrix embeddings (softmax over teacher
    layers), and the loss is their sum / (B·S).  Official ``-c 1 -d 1 -b 400`` (CE, KD with T 4, SemCKD x 400).

    The embeddings' width is the batch size (official ``MLPEmbed(bsz, bsz // 4)``), so every training batch must have
    exactly ``batch_size`` samples: the official loop skips the incomplete last batch, here the shipped config sets
    ``data.init_args.drop_last``.  ``batch_size`` defaults to the data module's.

    Args:
        student: network name.
        teacher: the frozen teacher.
        kd_weight: Hinton-KD weight (1).
        feat_weight: SemCKD weight (400).
        attention_temperature: the softmax temperature of the attention (official ``--soft`` 1.0).
        batch_size: the training batch size the embeddings are built for (None: the data module's, at fit start).
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        kd_weight: float = 1.0,
        feat_weight: float = 400.0,
        attention_temperature: float = 1.0,
        batch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(student, teacher, kd_weight=kd_weight, feat_weight=feat_weight, **kwargs)
        s_shapes, t_shapes = self.student.stage_shapes, self.teacher.stage_shapes
        self.projections = nn.ModuleList(
            nn.ModuleList(SemCKDProjection(s.chw[0], t.chw[0]) for t in t_shapes) for s in s_shapes
        )
        self.queries: nn.ModuleList | None = None
        self.keys: nn.ModuleList | None = None
        if batch_size is not None:
            self.setup_for_batch_size(batch_size)

    def setup_for_batch_size(self, batch_size: int) -> None:
        """Build the query (student layers) and key (teacher layers) embeddings for ``batch_size``."""
        self.batch_size = batch_size
        self.queries = nn.ModuleList(SemCKDEmbed(batch_size) for _ in range(self.student.num_stages))
        self.keys = nn.ModuleList(SemCKDEmbed(batch_size) for _ in range(self.teacher.num_stages))

    def setup(self, stage: str) -> None:
        if self.queries is not None or stage != "fit":
            return
        size = getattr(getattr(self.trainer, "datamodule", None), "batch_size", None)
        if size is None:
            raise MethodConfigError("SemCKD needs the training batch size: pass --model.init_args.batch_size")
        self.setup_for_batch_size(int(size))
        self.to(self.device)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        weight = checkpoint.get("state_dict", {}).get("queries.0.net.0.weight")
        if self.queries is None and weight is not None:
            self.setup_for_batch_size(int(weight.shape[1]))

    def feature_losses(self, student: FeatureOutput, teacher: FeatureOutput, batch: Batch) -> dict[str, Tensor]:
        if self.queries is None or self.keys is None:
            raise MethodConfigError("SemCKD's embeddings are not built: pass batch_size or train through the CLI")
        b = student.stages_post[0].shape[0]
        if b != self.batch_size:
            raise MethodConfigError(
                f"SemCKD was built for batches of {self.batch_size} and got {b}: set data.init_args.drop_last=true "
                f"(configs/methods/semckd.yaml does) so that every training batch is full"
            )
        queries = torch.stack([q(_gram(f)) for q, f in zip(self.queries, student.stages_post)])
        keys = torch.stack([k(_gram(f)) for k, f in zip(self.keys, teacher.stages_post)])
        attention = semckd_attention(queries, keys, self.attention_temperature)
        rows = []
        for projections, f_s in zip(self.projections, student.stages_post):
            errors = []
            for projection, f_t in zip(projections, teacher.stages_post):
                s_in, t_in = pool_to_smaller(f_s, f_t)
                errors.append((projection(s_in) - t_in).pow(2).mean(dim=(1, 2, 3)))
            rows.append(torch.stack(errors, dim=1))
        return {"semckd": semckd_loss(attention, torch.stack(rows, dim=1))}
