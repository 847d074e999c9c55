"""CIFAR ResNets (resnet8 ... resnet110, resnet8x4, resnet32x4, ResNet20-0.5x) as in RepDistiller/CRD.

Structure (spec architectures-and-recipes.md §A.2): 3x3 stem conv-BN-ReLU; three stages of BasicBlocks
(conv3x3-BN-ReLU-conv3x3-BN, + shortcut, ReLU) at strides 1/2/2; option-B projection shortcuts (1x1 conv + BN)
whenever stride or width changes; fixed AvgPool2d(8) head; Kaiming-normal (fan_out) convs, BN weight 1 / bias 0,
PyTorch-default Linear.  Module names equal RepDistiller's (``conv1``, ``bn1``, ``layer1..3``, ``fc``), so its
``ckpt_epoch_240.pth`` state dicts load key for key.

Contract: ``stages_pre[i]`` is the residual sum of the stage's last block before its ReLU (RepDistiller's
``preact=True`` feature), ``stages_post[i] = relu(stages_pre[i])``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.contract import FeatureShape, KDNet
from models.registry import register_model

__all__ = ["BasicBlock", "CifarResNet"]


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, then ReLU unless this block ends its stage.

    The last block of a stage returns the pre-ReLU sum; the network applies the stage's ReLU so that both the
    pre- and post-activation tensors are available without storing state on the module.
    """

    def __init__(self, in_channels: int, channels: int, stride: int, final_relu: bool) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )
        self.final_relu = final_relu

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + shortcut
        return torch.relu(out) if self.final_relu else out


class CifarResNet(KDNet):
    """ResNet-(6n+2) for 32x32 inputs; ``widths`` = [stem, stage1, stage2, stage3]."""

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110, ...), got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_channels = widths[0]
        layers = []
        for channels, stride in zip(widths[1:], (1, 2, 2)):
            blocks = []
            for b in range(blocks_per_stage):
                last = b == blocks_per_stage - 1
                blocks.append(BasicBlock(in_channels, channels, stride if b == 0 else 1, final_relu=not last))
                in_channels = channels
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        # The reference head is a fixed AvgPool2d(8): it assumes 32x32 inputs.  We keep the fixed pool so that a
        # wrong input size fails loudly instead of silently changing the network (spec §G.14).
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(widths[3], num_classes)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

        self.stages = [self.layer1, self.layer2, self.layer3]
        self.stage_activations = [torch.relu] * 3
        self.input_size = 32
        self.stem_shape = FeatureShape(widths[0], 32, 32)
        self.stage_shapes = [
            FeatureShape(widths[1], 32, 32),
            FeatureShape(widths[2], 16, 16),
            FeatureShape(widths[3], 8, 8),
        ]
        self.final_shape = self.stage_shapes[-1]

    @property
    def classifier(self) -> nn.Linear:  # type: ignore[override]
        return self.fc

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def pool(self, final_map: Tensor) -> Tensor:
        pooled = self.avgpool(final_map)
        if pooled.shape[-1] != 1 or pooled.shape[-2] != 1:
            raise ValueError(
                f"{type(self).__name__} expects 32x32 inputs (its head is a fixed AvgPool2d(8)); "
                f"the last stage map is {tuple(final_map.shape[-2:])}"
            )
        return torch.flatten(pooled, 1)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [stage[-1].bn2 for stage in self.stages]


_PLAIN = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)

for _depth in (8, 14, 20, 32, 44, 56, 110):
    register_model(f"resnet{_depth}", dataset="cifar")(
        lambda num_classes=100, _d=_depth: CifarResNet(_d, _PLAIN, num_classes)
    )
register_model("resnet8x4", dataset="cifar")(lambda num_classes=100: CifarResNet(8, _WIDE, num_classes))
register_model("resnet32x4", dataset="cifar")(lambda num_classes=100: CifarResNet(32, _WIDE, num_classes))
# KCD's "ResNet20 with the number of channels reduced by half": every width halved, stem included (spec §A.2).
register_model("resnet20_half", dataset="cifar")(lambda num_classes=100: CifarResNet(20, (8, 8, 16, 32), num_classes))
