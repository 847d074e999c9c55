"""KCD's learned transformations (Table 1): Sub-net-FC and Sub-net-Res, fitted to maximise the consistency score.

The paper only says that a fully-connected layer or a residual block is trained "with the consistency score as the
objective" (both did worse than bipartite matching).  Choices here (spec §4.4, all UNKNOWN in the paper):

* Sub-net-FC: one fully-connected layer over channels applied at every location — a 1x1 convolution
  ``c_T -> c_S`` with bias;
* Sub-net-Res: one residual block ``c_T -> c_S``: ``BN(conv1x1(x)) + BN(conv3x3(ReLU(BN(conv3x3(x)))))`` (a
  projection shortcut because the widths may differ; no ReLU after the sum, so negative targets stay reachable);
* objective: maximise ``sum_i M[i, i]`` (the Gamma of the identity mapping between the sub-net's output and the
  trained student, :func:`kd_modules.losses.kcd.consistency_diagonal`) computed over each *batch* of
  global-average-pooled maps (the dataset-wide statistic is not decomposable over batches for every metric);
* optimiser: Adam (lr ``subnet_lr``, 1e-3) over ``subnet_epochs`` (1) un-augmented passes of the training split,
  no CE term; the fitted sub-net is frozen during distillation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from kd_modules.errors import MethodConfigError
from kd_modules.losses.kcd import consistency_diagonal
from kd_modules.offline import progress
from kd_modules.rco import distilled_map
from models import KDNet

__all__ = ["ResidualTransform", "build_subnet", "fit_subnet"]


class ResidualTransform(nn.Module):
    """Sub-net-Res: one residual block from ``c_T`` to ``c_S`` channels (see the module docs)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.branch = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.branch(x)


def build_subnet(kind: str, teacher_channels: int, student_channels: int) -> nn.Module:
    """``subnet_fc`` (a 1x1 convolution) or ``subnet_res`` (:class:`ResidualTransform`)."""
    if kind == "subnet_fc":
        return nn.Conv2d(teacher_channels, student_channels, 1)
    if kind == "subnet_res":
        return ResidualTransform(teacher_channels, student_channels)
    raise MethodConfigError(f"unknown KCD sub-net {kind!r}; valid: subnet_fc, subnet_res")


def fit_subnet(
    subnet: nn.Module,
    teacher: KDNet,
    student: KDNet,
    passes: Iterable[tuple[Iterable[dict[str, Tensor]], int]],
    *,
    layer: str,
    pre_activation: bool,
    metric: str,
    kl_distribution: str,
    eps: float,
    lr: float,
) -> dict[str, Any]:
    """Fit ``subnet`` so that its pooled output agrees channel by channel with the student; returns its weights."""
    teacher.eval()
    student.eval()
    subnet.requires_grad_(True)
    subnet.train()
    optimiser = torch.optim.Adam(subnet.parameters(), lr=lr)
    for batches, total in passes:
        for batch in progress(batches, total, "KCD sub-net"):
            if batch["images"].shape[0] < 2:
                continue  # one image has no consistency to maximise (correlation over a batch)
            with torch.inference_mode():
                t = distilled_map(teacher.forward_features(batch["images"]), layer, pre_activation)
                s = distilled_map(student.forward_features(batch["images"]), layer, pre_activation)
            t, s = t.clone().float(), s.clone().float().mean((2, 3))
            output = subnet(t).mean((2, 3))
            score = consistency_diagonal(output, s, metric, eps=eps, kl_distribution=kl_distribution).sum()
            optimiser.zero_grad(set_to_none=True)
            (-score).backward()
            optimiser.step()
    subnet.eval()
    subnet.requires_grad_(False)
    return {k: v.detach().clone() for k, v in subnet.state_dict().items()}
