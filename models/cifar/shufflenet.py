"""CRD's CIFAR ShuffleNets: ShuffleV1 (g = 3) and ShuffleV2 (net_size 1), RepDistiller ``ShuffleNetv1/v2.py``.

ShuffleV1 (spec architectures-and-recipes.md §A.2): stem 1x1 conv 3->24, BN, ReLU (stride 1, no max-pool); stages
of 4/8/4 units with outputs 240/480/960, the first unit of each stage strided.  Unit: grouped 1x1 conv to
out/4 (one group in the very first unit, whose input has 24 channels), BN, ReLU, channel shuffle, dw 3x3 (stride),
BN, ReLU, grouped 1x1 conv, BN; strided units concatenate the branch (out - in channels) with AvgPool(3, 2, 1) of
the input, the others add the input; ReLU.  Head avg_pool(4) -> Linear(960).  PyTorch-default init.

ShuffleV2: stem as V1; each stage is a DownBlock (two stride-2 branches, concatenated and shuffled) followed by
3/7/3 units that split the channels in halves, transform the second half (1x1-BN-ReLU, dw3x3-BN, 1x1-BN-ReLU),
concatenate and shuffle (g = 2); widths 116/232/464; head 1x1 conv 464 -> 1024, BN, ReLU, avg_pool(4),
Linear(1024).  PyTorch-default init.

Contract (§A.3): ShuffleV1 stage taps are the last unit's concat/sum before its ReLU (``pre``) and after it
(``post = relu(pre)``).  ShuffleV2's reference ``preact`` is concat(passthrough half, BN3 output) before the ReLU
*and before the shuffle*, while its feature is after the shuffle, so ``post = shuffle(relu(pre))`` — the channel
order differs between the two taps, and only the branch half of ``pre`` is pre-ReLU (the passthrough half is a
previous unit's non-negative output, which is why the ReLU can be applied to the whole concatenation).  Neither
network has a BatchNorm directly before each stage's final ReLU in the sense OFD needs: ``bn_before_relu`` raises
:class:`~models.contract.FeatureUnavailable`, as the reference raises NotImplementedError.

Tiny-ImageNet (spec §C): letKD's ShuffleV1 copy uses AvgPool2d(8); mdistiller runs the unchanged CIFAR ShuffleV2 at
64x64, which crashes (the 8x8 map pools to 2x2), so DOT's Tiny ShuffleV2 needs the pool widened to 8 — both are
``input_size=64`` here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from models.contract import FeatureShape, FeatureUnavailable, KDNet, classifier_at
from models.layers import channel_shuffle, fixed_pool, halving_shapes
from models.registry import register_model

__all__ = ["ShuffleNetV1", "ShuffleNetV2"]


class ShuffleV1Unit(nn.Module):
    """RepDistiller's ``ShuffleNetv1.Bottleneck``; returns the pre-ReLU tensor when it ends its stage."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int, final_relu: bool) -> None:
        super().__init__()
        mid = out_channels // 4
        self.first_groups = 1 if in_channels == 24 else groups
        self.conv1 = nn.Conv2d(in_channels, mid, kernel_size=1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_channels, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2 else nn.Sequential()
        self.stride = stride
        self.final_relu = final_relu

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = self.shortcut(x)
        out = torch.cat([out, shortcut], 1) if self.stride == 2 else out + shortcut
        return torch.relu(out) if self.final_relu else out


class _ShuffleNetBase(KDNet):
    """Stem (1x1 conv 3->24, BN, ReLU), fixed average-pool head, no OFD BatchNorms."""

    linear: nn.Linear

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)

    def _set_stages(
        self, layers: list[nn.Sequential], activation: Callable[[Tensor], Tensor], widths: list[int], input_size: int
    ) -> None:
        """Register the stages as ``layer1..3`` and set the contract's attributes (``widths``: stages, then neck)."""
        self.layer1, self.layer2, self.layer3 = layers
        self.stages = layers
        self.stage_activations = [activation] * 3
        s = input_size
        self.input_size = input_size
        self.stem_shape = FeatureShape(24, s, s)
        self.stage_shapes = halving_shapes(widths[:3], s // 2)
        self.final_shape = FeatureShape(widths[-1], s // 8, s // 8)
        # RepDistiller: F.avg_pool2d(out, 4) on CIFAR; letKD's / DOT's Tiny-ImageNet runs need 8.
        self.avgpool = nn.AvgPool2d(s // 8)

    classifier = classifier_at("linear")

    def forward_stem(self, x: Tensor) -> Tensor:
        return torch.relu(self.bn1(self.conv1(x)))

    def pool(self, final_map: Tensor) -> Tensor:
        return fixed_pool(self.avgpool, final_map, type(self).__name__, self.input_size)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        raise FeatureUnavailable(
            f"{type(self).__name__} has no BatchNorm directly before each stage's final ReLU (its stage outputs are "
            "concatenations/sums of branches), so OFD cannot use it as a teacher; RepDistiller raises here too"
        )


class ShuffleNetV1(_ShuffleNetBase):
    def __init__(
        self,
        num_classes: int = 100,
        widths: tuple[int, int, int] = (240, 480, 960),
        blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
        input_size: int = 32,
    ) -> None:
        super().__init__()
        in_channels = 24
        layers = []
        for width, count in zip(widths, blocks):
            units = []
            for j in range(count):
                # A strided unit concatenates its input, so its branch produces only the missing channels.
                branch_out = width - in_channels if j == 0 else width
                units.append(ShuffleV1Unit(in_channels, branch_out, 2 if j == 0 else 1, groups, j != count - 1))
                in_channels = width
            layers.append(nn.Sequential(*units))
        self._set_stages(layers, torch.relu, list(widths), input_size)
        self.linear = nn.Linear(widths[-1], num_classes)


class ShuffleV2DownBlock(nn.Module):
    """Both branches stride 2: left dw3x3-BN, 1x1-BN-ReLU; right 1x1-BN-ReLU, dw3x3-BN, 1x1-BN-ReLU; cat, shuffle."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = torch.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = torch.relu(self.bn3(self.conv3(x)))
        right = torch.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleV2Unit(nn.Module):
    """Split in halves; second half 1x1-BN-ReLU, dw3x3-BN, 1x1-BN(-ReLU); cat with the first half; shuffle.

    A unit that ends its stage returns ``cat(first half, BN3 output)`` before the ReLU and the shuffle (the
    reference's ``preact``); the network's stage activation applies both.
    """

    def __init__(self, channels: int, final_activation: bool) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)
        self.final_activation = final_activation

    def forward(self, x: Tensor) -> Tensor:
        half = x.shape[1] // 2
        passthrough, branch = x[:, :half], x[:, half:]
        branch = torch.relu(self.bn1(self.conv1(branch)))
        branch = self.bn3(self.conv3(self.bn2(self.conv2(branch))))
        if not self.final_activation:
            return torch.cat([passthrough, branch], 1)
        return channel_shuffle(torch.cat([passthrough, torch.relu(branch)], 1), 2)


def _relu_then_shuffle(x: Tensor) -> Tensor:
    """ShuffleV2's stage activation: ``post = shuffle(relu(pre))`` (the passthrough half is already >= 0)."""
    return channel_shuffle(torch.relu(x), 2)


class ShuffleNetV2(_ShuffleNetBase):
    def __init__(
        self,
        num_classes: int = 100,
        widths: tuple[int, int, int, int] = (116, 232, 464, 1024),
        blocks: tuple[int, int, int] = (3, 7, 3),
        input_size: int = 32,
    ) -> None:
        super().__init__()
        in_channels = 24
        layers = []
        for width, count in zip(widths[:3], blocks):
            units: list[nn.Module] = [ShuffleV2DownBlock(in_channels, width)]
            units += [ShuffleV2Unit(width, final_activation=j != count - 1) for j in range(count)]
            layers.append(nn.Sequential(*units))
            in_channels = width
        self._set_stages(layers, _relu_then_shuffle, list(widths), input_size)
        self.conv2 = nn.Conv2d(widths[2], widths[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.linear = nn.Linear(widths[3], num_classes)

    def forward_neck(self, x: Tensor) -> Tensor:
        return torch.relu(self.bn2(self.conv2(x)))


register_model("ShuffleV1", dataset="cifar")(lambda num_classes=100: ShuffleNetV1(num_classes))
register_model("ShuffleV2", dataset="cifar")(lambda num_classes=100: ShuffleNetV2(num_classes))
