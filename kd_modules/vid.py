"""VID: Ahn et al., "Variational Information Distillation for Knowledge Transfer" (CVPR 2019)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from kd_modules.base import Batch, TeacherConfig
from kd_modules.feature_distillation import FeatureDistillation
from kd_modules.losses.common import pool_to_smaller
from kd_modules.losses.vid import vid_log_scale_init, vid_loss
from models import FeatureOutput


def _conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)


class VID(FeatureDistillation):
    """Variational information distillation on every stage output (RepDistiller ``feat[1:-1]``).

    Per stage pair: the larger map is pooled to the smaller's height; the regressor
    ``conv1x1(C_s→C_t) - ReLU - conv1x1(C_t→C_t) - ReLU - conv1x1(C_t→C_t)`` (no bias, no BN) predicts the
    teacher map's mean; a per-channel ``log_scale`` gives the variance (softplus + eps, initially 5); the
    Gaussian NLL terms are summed over stages.  Weight 1 in both references.

    The references differ in one point, kept as an option:

    * RepDistiller (and SimKD's toolbox) **learn** ``log_scale`` with the regressors (weight decay included):
      ``learn_variance=True`` (``configs/methods/vid.yaml``);
    * mdistiller keeps its ``log_scales`` in a plain Python list, so they are never optimised (nor saved): the
      variance stays 5 for the whole run — ``learn_variance=False`` (``configs/methods/vid_mdistiller.yaml``;
      here they are frozen parameters, saved with the run).

    Args:
        student: network name.
        teacher: the frozen teacher.
        feat_weight: β, the VID loss weight (RepDistiller ``-b``; 1).
        learn_variance: train the per-channel variances (RepDistiller) or keep them at ``init_variance``
            (mdistiller).
        init_variance: initial variance (``init_pred_var`` 5.0).
        eps: added to the softplus variance (1e-5).
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        feat_weight: float = 1.0,
        learn_variance: bool = True,
        init_variance: float = 5.0,
        eps: float = 1e-5,
        **kwargs: Any,
    ) -> None:
        super().__init__(student, teacher, feat_weight=feat_weight, **kwargs)
        self.regressors = nn.ModuleList()
        self.log_scales = nn.ParameterList()
        start = vid_log_scale_init(init_variance, eps)
        for shape_s, shape_t in self.stage_shape_pairs():
            c_s, c_t = shape_s.channels, shape_t.channels
            self.regressors.append(
                nn.Sequential(_conv1x1(c_s, c_t), nn.ReLU(), _conv1x1(c_t, c_t), nn.ReLU(), _conv1x1(c_t, c_t))
            )
            self.log_scales.append(nn.Parameter(torch.full((c_t,), start), requires_grad=learn_variance))

    def feature_losses(self, student: FeatureOutput, teacher: FeatureOutput, batch: Batch) -> dict[str, Tensor]:
        terms = []
        for regressor, log_scale, f_s, f_t in zip(
            self.regressors, self.log_scales, student.stages_post, teacher.stages_post
        ):
            f_s, f_t = pool_to_smaller(f_s, f_t)
            terms.append(vid_loss(regressor(f_s), f_t, log_scale, self.eps))
        return {"vid": torch.stack(terms).sum()}
