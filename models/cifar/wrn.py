"""Wide ResNets (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2) as in RepDistiller/CRD (``models/wrn.py``).

Structure (spec architectures-and-recipes.md §A.2): widths [16, 16k, 32k, 64k], n = (d-4)/6 pre-activation blocks
per stage at strides 1/2/2, dropout 0.  Stem: a bare 3x3 conv (no BN/ReLU).  Block: BN-ReLU-conv3x3(stride)-BN-
ReLU-conv3x3 + shortcut; the shortcut is the identity on the *raw* input when widths match, else a 1x1 conv (no BN)
on the *activated* input.  After the last stage: BN, ReLU, avg_pool(8), Linear.  Init: conv ~ N(0, sqrt(2/(k*k*C_out))),
BN 1/0, Linear bias 0.  Module names are RepDistiller's (``conv1``, ``block{1,2,3}.layer.{j}``, ``bn1``, ``fc``);
ND's copy names the final BN ``bn`` (models.checkpoints maps it).

Contract (the awkward case, spec §A.3): a pre-activation network never activates its stage outputs, so the
references' feature ``f_k`` (``stages_post``) is the raw residual sum, and its ``preact=True`` form
(``stages_pre``) is that sum through the *next* BatchNorm: ``block{k+1}.layer[0].bn1`` for stages 1-2 and the final
``bn1`` for stage 3 — exactly the BNs that :meth:`WideResNet.bn_before_relu` returns (OFD).  The next stage then
consumes ``relu(pre)``: the first block of stages 2 and 3 is built with ``input_activated=True`` and skips its own
``bn1``-ReLU, so the transition BN runs once per forward.  (mdistiller's WRN calls those BNs a second time on every
forward to build its ``preact_feats``, updating their running statistics twice per training step — §A.3, §G.16;
RepDistiller does the same only with ``preact=True``.  Running it once is the plain network's behaviour.)
The final BN-ReLU is the last stage's transition, so a module inserted at ``"stage3"`` (NORM's FT) acts on the raw
sum and its output goes through BN-ReLU, as in NORM's student; ``"neck"`` sees the map after BN-ReLU.
``stage_activations[i]`` maps ``pre`` to the next stage's input (ReLU); there is no activation from pre to post.

Tiny-ImageNet (spec §C): letKD's ``wide_resnet.py`` is the same network with global average pooling instead of the
fixed avg_pool(8) (``input_size=64`` selects it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.contract import FeatureShape, KDNet, classifier_at
from models.layers import fan_out_normal_init, fixed_pool, relu_stages
from models.registry import register_model

__all__ = ["WideBlock", "WideResNet"]


class WideBlock(nn.Module):
    """Pre-activation wide block (RepDistiller's ``wrn.BasicBlock``).

    With ``input_activated=True`` the block receives ``relu(bn1(x))`` already computed by the network (the stage
    transition, which also serves it as the previous stage's pre-activation feature) and does not apply ``bn1``
    again; this is only possible when the shortcut is the 1x1 conv on the activated input (widths differ).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, input_activated: bool = False) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.equal_in_out = in_channels == out_channels
        self.convShortcut: nn.Conv2d | None = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)
        if input_activated and self.equal_in_out:
            raise ValueError("an identity-shortcut WRN block needs its raw input; it cannot take an activated one")
        self.input_activated = input_activated

    def forward(self, x: Tensor) -> Tensor:
        activated = x if self.input_activated else self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(activated))))
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        return shortcut + out


class NetworkBlock(nn.Module):
    """A stage (RepDistiller's name): its blocks live in ``layer`` so the state-dict keys read ``blockK.layer.J``."""

    def __init__(self, num_blocks: int, in_channels: int, out_channels: int, stride: int, activated: bool) -> None:
        super().__init__()
        blocks = [WideBlock(in_channels, out_channels, stride, input_activated=activated)]
        blocks += [WideBlock(out_channels, out_channels, 1) for _ in range(num_blocks - 1)]
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


def _batch_norm_without_stats_update(bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """``bn(x)`` without touching its running statistics (batch statistics in training, running ones in eval)."""
    if bn.training:
        return F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


class WideResNet(KDNet):
    """WRN-d-k for 32x32 inputs (``input_size=64``: letKD's Tiny-ImageNet copy with global average pooling)."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100, input_size: int = 32) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, activated=False)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, activated=True)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, activated=True)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        # RepDistiller: F.avg_pool2d(out, 8), a fixed pool; letKD's Tiny copy pools globally.
        self.avgpool: nn.Module = nn.AvgPool2d(8) if input_size == 32 else nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        fan_out_normal_init(self, linear_std=None)

        stages = [self.block1.layer, self.block2.layer, self.block3.layer]
        self._transition_bns = [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]
        self.input_size = input_size
        s = input_size
        relu_stages(self, stages, FeatureShape(widths[0], s, s), widths[1:], s)

    classifier = classifier_at("fc")

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.conv1(x)

    def _inserted_after_stage(self, index: int) -> bool:
        return f"stage{index + 1}" in self._insert_points

    def stage_taps(self, index: int, output: Tensor) -> tuple[Tensor, Tensor]:
        """post = the raw residual sum; pre = that sum through the next BatchNorm.

        The statistics-updating BN call happens once per forward: here when nothing is inserted after the stage
        (the transition reuses ``pre``), otherwise in :meth:`stage_transition` on the inserted module's output.
        """
        bn = self._transition_bns[index]
        pre = _batch_norm_without_stats_update(bn, output) if self._inserted_after_stage(index) else bn(output)
        return pre, output

    def stage_transition(self, index: int, post: Tensor, pre: Tensor | None) -> Tensor:
        if pre is None or self._inserted_after_stage(index):
            pre = self._transition_bns[index](post)
        return torch.relu(pre)

    def pool(self, final_map: Tensor) -> Tensor:
        if isinstance(self.avgpool, nn.AdaptiveAvgPool2d):
            return torch.flatten(self.avgpool(final_map), 1)
        return fixed_pool(self.avgpool, final_map, type(self).__name__, self.input_size)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """RepDistiller's ``get_bn_before_relu``: the next block's ``bn1`` after stages 1-2 and the final ``bn1``."""
        return list(self._transition_bns)


for _depth, _k in ((16, 1), (16, 2), (40, 1), (40, 2)):
    register_model(f"wrn_{_depth}_{_k}", dataset="cifar")(
        lambda num_classes=100, _d=_depth, _w=_k: WideResNet(_d, _w, num_classes)
    )
