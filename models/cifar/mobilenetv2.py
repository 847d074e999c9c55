"""CRD's CIFAR MobileNetV2 (RepDistiller ``mobile_half`` = ``mobilenetv2_T_w(T=6, W=0.5)``), called MobileNetV2.

Structure (spec architectures-and-recipes.md §A.2): plain ReLU (not ReLU6); stem 3x3 conv **stride 2** 3->16, BN,
ReLU; inverted-residual settings (t, c, n, s) after width scaling (1, 8, 1, 1), (6, 12, 2, 1), (6, 16, 3, 2),
(6, 32, 4, 2), (6, 48, 3, 1), (6, 80, 3, 2), (6, 160, 1, 1); every block has its 1x1 expansion conv even when t = 1;
residual iff stride 1 and equal widths; head 1x1 conv -> 1280 (not width-scaled), BN, ReLU, AvgPool2d(input/16,
ceil_mode), Linear.  Init as VGG (conv ~ N(0, sqrt(2/n)), Linear ~ N(0, 0.01)).  Module names are RepDistiller's
(``conv1``, ``blocks.{i}.{j}.conv.{0..7}``, ``conv2``, ``classifier.0``).

Contract: the stem is ``conv1`` (``f0``).  The four stages are the reference's taps (§A.3): blocks[0-1] (``f1``,
12x16x16), blocks[2] (``f2``, 16x8x8), blocks[3-4] (``f3``, 48x4x4), blocks[5-6] (``f4``, 160x2x2), each a
sequence of inverted-residual units.  Linear bottlenecks end in a BN without activation, so ``pre == post``
(identity activation; the reference ignores ``preact``).  The neck is ``conv2`` (1x1 -> 1280, BN, ReLU); the
embedding is the pooled 1280-vector.  :meth:`MobileNetV2.bn_before_relu` returns RepDistiller's list (the last BN
of each stage, which in this network is not followed by a ReLU).

Tiny-ImageNet (spec §C): letKD builds the same network with ``input_size=64`` (AvgPool2d(4)).
"""

from __future__ import annotations

from torch import Tensor, nn

from models.contract import FeatureShape, KDNet
from models.layers import LinearHead, fan_out_normal_init, fixed_pool, halving_shapes, identity_activation
from models.registry import register_model

__all__ = ["InvertedResidual", "MobileNetV2"]

# (width c, blocks n, stride s) before width scaling — RepDistiller's interverted_residual_setting; the first
# setting has expansion 1, the others the network's expansion T.
_SETTINGS = [(16, 1, 1), (24, 2, 1), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1)]
# Which reference ``blocks[i]`` make up each contract stage (the f1..f4 taps).
_STAGE_GROUPS = [(0, 1), (2,), (3, 4), (5, 6)]


class InvertedResidual(nn.Module):
    """pw conv -> in*t, BN, ReLU; dw 3x3 (stride), BN, ReLU; pw-linear -> out, BN (+ input when shapes allow)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_res_connect = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class MobileNetV2(KDNet):
    """RepDistiller's MobileNetV2 with expansion ``expansion`` and width multiplier ``width_mult``."""

    def __init__(
        self, num_classes: int = 100, expansion: int = 6, width_mult: float = 0.5, input_size: int = 32
    ) -> None:
        super().__init__()
        if input_size % 32 != 0:
            raise ValueError(f"MobileNetV2 needs an input size that is a multiple of 32, got {input_size}")
        in_channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, in_channels, 3, 2)
        self.blocks = nn.ModuleList()
        widths = []
        for index, (c, n, s) in enumerate(_SETTINGS):
            out_channels = int(c * width_mult)
            units = []
            for j in range(n):
                t = 1 if index == 0 else expansion
                units.append(InvertedResidual(in_channels, out_channels, s if j == 0 else 1, t))
                in_channels = out_channels
            self.blocks.append(nn.Sequential(*units))
            widths.append(out_channels)
        last_channels = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(in_channels, last_channels, 1, 1)
        self.classifier = LinearHead(nn.Linear(last_channels, num_classes))
        self.avgpool = nn.AvgPool2d(input_size // 16, ceil_mode=True)
        fan_out_normal_init(self, linear_std=0.01)

        # Unregistered containers over the registered units: keys stay ``blocks.i.j...``.
        self.stages = [nn.Sequential(*(unit for i in group for unit in self.blocks[i])) for group in _STAGE_GROUPS]
        self.stage_activations = [identity_activation] * 4
        self.input_size = input_size
        s = input_size // 2
        self.stem_shape = FeatureShape(int(32 * width_mult), s, s)
        self.stage_shapes = halving_shapes([widths[1], widths[2], widths[4], widths[6]], s)
        self.final_shape = FeatureShape(last_channels, s // 8, s // 8)

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.conv1(x)

    def forward_neck(self, x: Tensor) -> Tensor:
        return self.conv2(x)

    def pool(self, final_map: Tensor) -> Tensor:
        return fixed_pool(self.avgpool, final_map, type(self).__name__, self.input_size)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [self.blocks[i][-1].conv[-1] for i in (1, 2, 4, 6)]  # type: ignore[index]


register_model("MobileNetV2", dataset="cifar")(lambda num_classes=100: MobileNetV2(num_classes))
