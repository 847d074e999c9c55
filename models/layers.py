"""Building blocks shared by several network families.

* :class:`BasicBlock` / :class:`Bottleneck`: post-activation residual blocks.  The module names are the ones every
  reference uses (``conv1``, ``bn1``, ``conv2``, ``bn2`` [, ``conv3``, ``bn3``]); only the projection shortcut's
  name differs between code bases (``downsample`` in torchvision and RepDistiller's ``resnet.py``, ``shortcut`` in
  RepDistiller's ``resnetv2.py``), so it is an argument.  The last block of a stage is built with
  ``final_relu=False`` and returns the residual sum before its ReLU; the network applies the stage's ReLU, which is
  how both the pre- and the post-activation tap exist without state on the module.
* :class:`LinearHead`: a classifier registered as a ``Sequential`` (RepDistiller's MobileNetV2 ``classifier.0``,
  torchvision's MobileNetV2 ``classifier.0`` dropout + ``classifier.1`` linear) that still looks like the
  ``nn.Linear`` the network contract promises (``weight``, ``bias``, ``in_features``, ``out_features``).
* :func:`fixed_pool`: global pooling done by a fixed-size pooling module (as in the references), refusing a map of
  another size instead of silently changing the network.
* :func:`channel_shuffle`: ShuffleNet's channel interleaving.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from models.contract import FeatureShape, KDNet

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "LinearHead",
    "channel_shuffle",
    "fan_out_normal_init",
    "fixed_pool",
    "halving_shapes",
    "identity_activation",
    "kaiming_init",
    "projection",
    "relu_stages",
    "residual_stages",
]


def projection(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """Option-B projection shortcut: 1x1 conv (no bias) + BN."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class _ResidualBlock(nn.Module):
    """Common part of the post-activation blocks: the named projection and the final (optional) ReLU."""

    def _set_shortcut(self, name: str, in_channels: int, out_channels: int, stride: int, final_relu: bool) -> None:
        """A projection whenever the stride or the width changes (else the identity), registered under the
        reference's name so that state-dict keys match key for key."""
        needs_projection = stride != 1 or in_channels != out_channels
        self._projection_name = name
        setattr(self, name, projection(in_channels, out_channels, stride) if needs_projection else None)
        self.final_relu = final_relu

    def _finish(self, residual: Tensor, x: Tensor) -> Tensor:
        shortcut_module = getattr(self, self._projection_name)
        out = residual + (x if shortcut_module is None else shortcut_module(x))
        return torch.relu(out) if self.final_relu else out


class BasicBlock(_ResidualBlock):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN + shortcut, then ReLU unless this block ends its stage.

    A projection (1x1 conv + BN) replaces the identity whenever the stride or the width changes (RepDistiller,
    torchvision and CRD's ``resnetv2`` all use this rule).
    """

    expansion = 1

    def __init__(
        self, in_channels: int, channels: int, stride: int, final_relu: bool, projection_name: str = "downsample"
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self._set_shortcut(projection_name, in_channels, channels, stride, final_relu)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The BatchNorm of the residual branch, the one before the block's final ReLU (OFD's margins)."""
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self._finish(self.bn2(self.conv2(out)), x)


class Bottleneck(_ResidualBlock):
    """1x1-BN-ReLU, 3x3(stride)-BN-ReLU, 1x1-BN (x4 expansion) + shortcut, then ReLU unless last of its stage.

    The stride sits on the 3x3 conv (torchvision's "ResNet v1.5", also CRD's ``resnetv2``).  ``width`` is the
    bottleneck width (``planes``); the output has ``4 * width`` channels.
    """

    expansion = 4

    def __init__(
        self, in_channels: int, width: int, stride: int, final_relu: bool, projection_name: str = "downsample"
    ) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self._set_shortcut(projection_name, in_channels, out_channels, stride, final_relu)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self._finish(self.bn3(self.conv3(out)), x)


def residual_stages(
    block: type[BasicBlock] | type[Bottleneck],
    in_channels: int,
    widths: Sequence[int],
    num_blocks: Sequence[int],
    strides: Sequence[int],
    projection_name: str = "downsample",
) -> tuple[list[nn.Sequential], int]:
    """One stage per (width, blocks, stride): that many blocks, the first strided, the last returning its pre-ReLU
    sum; returns the stages and the last stage's output width."""
    stages = []
    for channels, count, stride in zip(widths, num_blocks, strides):
        blocks = []
        for index in range(count):
            final_relu = index < count - 1
            blocks.append(block(in_channels, channels, stride if index == 0 else 1, final_relu, projection_name))
            in_channels = channels * block.expansion
        stages.append(nn.Sequential(*blocks))
    return stages, in_channels


def kaiming_init(module: nn.Module) -> None:
    """torchvision / RepDistiller ``resnet`` init: Kaiming-normal (fan_out) convs, BN weight 1 and bias 0; Linear
    layers keep PyTorch's default."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def fan_out_normal_init(module: nn.Module, linear_std: float | None) -> None:
    """RepDistiller's VGG / MobileNetV2 / WRN init: conv weights ~ N(0, sqrt(2 / (k*k*C_out))), conv biases 0, BN
    weight 1 and bias 0; Linear weights ~ N(0, ``linear_std``) (None keeps PyTorch's default weight) with bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)


class LinearHead(nn.Sequential):
    """A ``Sequential`` classifier ending in ``nn.Linear`` (optionally after dropout) that exposes the linear
    layer's ``weight``, ``bias``, ``in_features`` and ``out_features`` like an ``nn.Linear``.

    It exists so that networks whose reference registers the classifier as a ``Sequential`` keep the reference's
    state-dict keys (``classifier.0.weight`` / ``classifier.1.weight``) while satisfying the network contract
    (``model.classifier`` behaves as the final linear layer; calling it runs the dropout too, in training).
    """

    def __init__(self, *layers: nn.Module) -> None:
        if not layers or not isinstance(layers[-1], nn.Linear):
            raise TypeError("LinearHead must end with an nn.Linear")
        super().__init__(*layers)

    def __getattr__(self, name: str) -> Any:
        """``weight``, ``bias``, ``in_features`` and ``out_features`` are the final linear layer's."""
        if name in ("weight", "bias", "in_features", "out_features"):
            return getattr(self[-1], name)
        return super().__getattr__(name)


def fixed_pool(pool: nn.Module, final_map: Tensor, network: str, input_size: int) -> Tensor:
    """Apply a reference's fixed-size global pooling and flatten; refuse maps it does not reduce to 1x1.

    The references hard-code these pools (AvgPool2d(8) for CIFAR ResNets, avg_pool(4) for ShuffleNets,
    AvgPool2d(7) for mdistiller's MobileNetV1, ...), so another input size would silently change the network
    (spec architectures-and-recipes.md §G.14).  We keep the fixed pool and fail loudly instead.
    """
    pooled = pool(final_map)
    if pooled.shape[-1] != 1 or pooled.shape[-2] != 1:
        raise ValueError(
            f"{network} expects {input_size}x{input_size} inputs (its head is a fixed {pool}); "
            f"the last stage map is {tuple(final_map.shape[-2:])}"
        )
    return torch.flatten(pooled, 1)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet's channel shuffle: view channels as (groups, C/groups), transpose, flatten."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def identity_activation(x: Tensor) -> Tensor:
    """Stage activation of linear-bottleneck networks (MobileNetV2): the stage output is not activated, so
    ``post == pre``."""
    return x


def relu_stages(
    net: KDNet, stages: list[nn.Sequential], stem: FeatureShape, channels: list[int] | tuple[int, ...], first_size: int
) -> None:
    """Set the contract's stage attributes of a post-activation network (``post = relu(pre)``) whose stages halve
    the resolution one after another from ``first_size``: stages, activations, stem and stage shapes, and the final
    map, the last stage's output."""
    net.stages = stages
    net.stage_activations = [torch.relu] * len(stages)
    net.stem_shape = stem
    net.stage_shapes = halving_shapes(channels, first_size)
    net.final_shape = net.stage_shapes[-1]


def halving_shapes(channels: list[int] | tuple[int, ...], first_size: int) -> list[FeatureShape]:
    """Stage shapes of a network whose stages halve the resolution one after another, starting at ``first_size``."""
    return [FeatureShape(c, first_size // 2**k, first_size // 2**k) for k, c in enumerate(channels)]
