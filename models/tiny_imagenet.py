"""Tiny-ImageNet (64x64, 200 classes) networks: the variants letKD and mdistiller/DOT train (spec
architectures-and-recipes.md §C), registered with a ``_tiny`` suffix.

Neither repository changes a CIFAR network's stem for 64x64 inputs; only the head's fixed pooling changes where it
has one.  What each name builds:

=============================  ===============================================================================
``resnet20_tiny``,             letKD ``resnet_tinyimagenet.py``: the CIFAR ResNet with AvgPool2d(16)
``resnet56_tiny``
``wrn_16_2_tiny``,             letKD ``wide_resnet.py``: the CIFAR WRN with global average pooling
``wrn_40_1_tiny``,
``wrn_40_2_tiny``
``ShuffleV1_tiny``             letKD ``shufflev1_tinyimagenet.py``: CIFAR ShuffleV1 with AvgPool2d(8)
``MobileNetV2_tiny``           letKD ``mobilenetv2.py`` with ``input_size=64``: CRD's ``mobile_half`` with
                               AvgPool2d(4)
``ResNet50_tiny``              CRD's CIFAR ResNet50 (``resnetv2.py``, adaptive pool) at 64x64 — our reading of
                               letKD's Tiny "RN50" teacher, which the repository does not pin down (§C: no Tiny
                               configs; it could also be a torchvision ResNet50)
``ResNet18_tiny``              mdistiller's Tiny-ImageNet teacher ``ResNet18``: CIFAR-style (3x3 stride-1 stem, no
                               max-pool) BasicBlock [2,2,2,2] network from ``resnetv2.py``, adaptive pool
``resnet18_torchvision_tiny``  letKD ``ResNetv2_TinyImageNet.py``: torchvision's ImageNet ResNet18 (7x7/2 stem +
                               max-pool, so 16x16 after the stem) with a 200-way ``fc``; letKD starts it from the
                               ImageNet weights (load ``resnet18-5c106cde.pth`` except ``fc``)
``ShuffleV2_tiny``             mdistiller/DOT's student: the CIFAR ShuffleV2, whose fixed avg_pool(4) crashes at
                               64x64 in mdistiller; widened to 8 here so that it runs (the fix DOT's numbers need)
``MobileNetV2_mdistiller_tiny``  mdistiller ``mv2_tinyimagenet.py`` (DOT's "MobileNetV2"): a different network —
                               see :class:`MdistillerTinyMobileNetV2`
=============================  ===============================================================================

Naming: lower-case ``resnetN`` is a torchvision-style ImageNet ResNet, ``ResNetN`` a CIFAR-style one (RepDistiller's
convention for ``ResNet50``), hence ``ResNet18_tiny`` vs ``resnet18_torchvision_tiny``.
"""

from __future__ import annotations

from torch import Tensor, nn

from models.cifar.mobilenetv2 import MobileNetV2
from models.cifar.resnet import CifarResNet
from models.cifar.resnetv2 import CifarResNetV2
from models.cifar.shufflenet import ShuffleNetV1, ShuffleNetV2
from models.cifar.wrn import WideResNet
from models.contract import FeatureShape, KDNet, classifier_at
from models.imagenet.resnet import torchvision_resnet
from models.layers import BasicBlock, Bottleneck, identity_activation
from models.registry import register_model

__all__ = ["MdistillerTinyMobileNetV2"]

TINY = 64

for _depth in (20, 56):
    register_model(f"resnet{_depth}_tiny", dataset="tiny-imagenet")(
        lambda num_classes=200, _d=_depth: CifarResNet(_d, (16, 16, 32, 64), num_classes, input_size=TINY)
    )
for _depth, _k in ((16, 2), (40, 1), (40, 2)):
    register_model(f"wrn_{_depth}_{_k}_tiny", dataset="tiny-imagenet")(
        lambda num_classes=200, _d=_depth, _w=_k: WideResNet(_d, _w, num_classes, input_size=TINY)
    )
#: The letKD / mdistiller Tiny-ImageNet variants of other families' networks (table in the module docs).
_VARIANTS = {
    "ShuffleV1_tiny": lambda num_classes=200: ShuffleNetV1(num_classes, input_size=TINY),
    "ShuffleV2_tiny": lambda num_classes=200: ShuffleNetV2(num_classes, input_size=TINY),
    "MobileNetV2_tiny": lambda num_classes=200: MobileNetV2(num_classes, input_size=TINY),
    "ResNet50_tiny": lambda num_classes=200: CifarResNetV2(Bottleneck, (3, 4, 6, 3), num_classes, input_size=TINY),
    "ResNet18_tiny": lambda num_classes=200: CifarResNetV2(BasicBlock, (2, 2, 2, 2), num_classes, input_size=TINY),
    "resnet18_torchvision_tiny": lambda num_classes=200: torchvision_resnet(18, num_classes, input_size=TINY),
}
for _name, _build in _VARIANTS.items():
    register_model(_name, dataset="tiny-imagenet")(_build)


class LinearBottleneck(nn.Module):
    """mdistiller's Tiny MobileNetV2 block: 1x1 (bias)-BN-ReLU6, dw3x3 (stride, bias)-BN-ReLU6, 1x1 (bias)-BN,
    plus the input when the stride is 1 and the widths match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.residual = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out_channels, 1),
            nn.BatchNorm2d(out_channels),
        )
        self.use_input = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.residual(x)
        return out + x if self.use_input else out


def _linear_stage(count: int, in_channels: int, out_channels: int, stride: int, expansion: int) -> nn.Sequential:
    blocks = [LinearBottleneck(in_channels, out_channels, stride, expansion)]
    blocks += [LinearBottleneck(out_channels, out_channels, 1, expansion) for _ in range(count - 1)]
    return nn.Sequential(*blocks)


@register_model("MobileNetV2_mdistiller_tiny", dataset="tiny-imagenet")
class MdistillerTinyMobileNetV2(KDNet):
    """mdistiller's ``mobilenetv2_tinyimagenet`` (spec §C, §G.10): width 1.0, ReLU6, conv biases, a **1x1 stem conv
    with padding 1** (64 -> 66x66), strided stages 2/3/4 (66 -> 33 -> 17 -> 9), stages 5-7 stride 1, 1x1 conv ->
    1280, BN, ReLU6, global average pooling and a 1x1-conv classifier.  PyTorch-default init.

    Module names are mdistiller's (``pre``, ``stage1..7``, ``conv1``, ``conv2``).  The classifier ``conv2`` is a 1x1
    conv on the pooled 1x1 map in mdistiller; here it is the equivalent ``nn.Linear`` (same parameters and MACs;
    :mod:`models.checkpoints` reshapes a (K, 1280, 1, 1) weight onto it).

    Contract: the stem is ``pre`` (32 x 66 x 66, mdistiller ``f0``); stages are mdistiller stages 1-2 (``f1``,
    24 x 33 x 33), 3 (``f2``, 32 x 17 x 17), 4 (``f3``, 64 x 9 x 9) and 5-7 (320 x 9 x 9); linear bottlenecks, so
    ``post == pre``; the neck is ``conv1`` — mdistiller's ``f4`` (1280 x 9 x 9) is our ``final_map``.
    """

    def __init__(self, num_classes: int = 200) -> None:
        super().__init__()
        self.pre = nn.Sequential(nn.Conv2d(3, 32, 1, padding=1), nn.BatchNorm2d(32), nn.ReLU6(inplace=True))
        self.stage1 = LinearBottleneck(32, 16, 1, 1)
        self.stage2 = _linear_stage(2, 16, 24, 2, 6)
        self.stage3 = _linear_stage(3, 24, 32, 2, 6)
        self.stage4 = _linear_stage(4, 32, 64, 2, 6)
        self.stage5 = _linear_stage(3, 64, 96, 1, 6)
        self.stage6 = _linear_stage(3, 96, 160, 1, 6)
        self.stage7 = LinearBottleneck(160, 320, 1, 6)
        self.conv1 = nn.Sequential(nn.Conv2d(320, 1280, 1), nn.BatchNorm2d(1280), nn.ReLU6(inplace=True))
        self.conv2 = nn.Linear(1280, num_classes)

        self.stages = [
            nn.Sequential(self.stage1, *self.stage2),
            self.stage3,
            self.stage4,
            nn.Sequential(*self.stage5, *self.stage6, self.stage7),
        ]
        self.stage_activations = [identity_activation] * 4
        self.input_size = TINY
        self.stem_shape = FeatureShape(32, 66, 66)
        self.stage_shapes = [FeatureShape(24, 33, 33), FeatureShape(32, 17, 17), FeatureShape(64, 9, 9)]
        self.stage_shapes.append(FeatureShape(320, 9, 9))
        self.final_shape = FeatureShape(1280, 9, 9)

    classifier = classifier_at("conv2")

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.pre(x)

    def forward_neck(self, x: Tensor) -> Tensor:
        return self.conv1(x)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The last BN of each stage (linear bottlenecks), by analogy with CRD's CIFAR MobileNetV2."""
        ends = [self.stage2[-1], self.stage3[-1], self.stage4[-1], self.stage7]
        return [block.residual[-1] for block in ends]  # type: ignore[misc]
