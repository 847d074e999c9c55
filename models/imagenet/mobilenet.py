"""ImageNet MobileNets: MobileNetV1 (mdistiller's, the "MobileNet" of NORM/ND/DKD) and torchvision's MobileNetV2 at
width 1.0 and 0.5 (KCD's MobileNetV2-0.5x).

MobileNetV1 (spec architectures-and-recipes.md §B): ``model`` = 3x3/2 conv 32-BN-ReLU, then 13 depthwise-separable
units (dw3x3-BN-ReLU, pw1x1-BN-ReLU) with outputs 64, 128/2, 128, 256/2, 256, 512/2, 512 x5, 1024/2, 1024, then a
fixed AvgPool2d(7) (``model.14``); ``fc`` 1024 -> classes.  Plain ReLU.  No explicit init in mdistiller (PyTorch
defaults).  Module names are mdistiller's.  Contract (mdistiller's taps): the stem is ``model.0`` (32 x 112 x 112);
stages are units 1-3, 4-5, 6-11 and 12-13, whose last unit ends in its BN (``pre`` = mdistiller ``preact_feats``:
128x56x56, 256x28x28, 512x14x14, 1024x7x7) and ``post = relu(pre)``; :meth:`MobileNetV1.bn_before_relu` returns
those BNs (mdistiller's ``get_bn_before_relu``).  letKD's ImageNet "MNV2" is this network (spec §B).

MobileNetV2: torchvision's ``mobilenet_v2(width_mult=...)`` modules, registered under torchvision's names
(``features``, ``classifier.0`` dropout 0.2, ``classifier.1`` linear) so torchvision weights load unchanged; KCD
released no code, so MobileNetV2-0.5x is torchvision's ``width_mult=0.5`` (channels rounded to multiples of 8, last
conv kept at 1280; spec §B).  Contract: the stem is ``features.0``; the stages group the inverted-residual settings
as CRD's CIFAR MobileNetV2 taps do — settings 0-1 (``features.1-3``, 56x56), 2 (``features.4-6``, 28x28), 3-4
(``features.7-13``, 14x14), 5-6 (``features.14-17``, 7x7); linear bottlenecks, so ``post == pre``; the neck is
``features.18`` (1x1 conv -> 1280, BN, ReLU6); the embedding is the pooled 1280-vector before the dropout.
"""

from __future__ import annotations

import torchvision
from torch import Tensor, nn

from models.contract import FeatureShape, KDNet, classifier_at
from models.layers import LinearHead, fixed_pool, halving_shapes, identity_activation, relu_stages
from models.registry import register_model

__all__ = ["MobileNetV1", "TorchvisionMobileNetV2"]

# (output channels, stride) of MobileNetV1's 13 depthwise-separable units.
_V1_UNITS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
# Index (in ``model``) of the last unit of each stage: mdistiller's feat1..feat4 taps.
_V1_STAGE_ENDS = [3, 5, 11, 13]


def _depthwise_separable(in_channels: int, out_channels: int, stride: int, final_relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, 1, 1, 0, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if final_relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class MobileNetV1(KDNet):
    """mdistiller's ImageNet MobileNetV1 (width 1.0, ReLU, fixed AvgPool2d(7))."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        units: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True))
        ]
        in_channels = 32
        for index, (out_channels, stride) in enumerate(_V1_UNITS, start=1):
            # The last unit of a stage stops at its BN; the stage activation is its ReLU (no parameters, so the
            # state-dict keys are unchanged).
            units.append(_depthwise_separable(in_channels, out_channels, stride, index not in _V1_STAGE_ENDS))
            in_channels = out_channels
        units.append(nn.AvgPool2d(7))
        self.model = nn.Sequential(*units)
        self.fc = nn.Linear(1024, num_classes)

        starts = [1] + [end + 1 for end in _V1_STAGE_ENDS[:-1]]
        stages = [self.model[start : end + 1] for start, end in zip(starts, _V1_STAGE_ENDS)]
        self.input_size = 224
        relu_stages(self, stages, FeatureShape(32, 112, 112), [128, 256, 512, 1024], 56)

    classifier = classifier_at("fc")

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.model[0](x)

    def pool(self, final_map: Tensor) -> Tensor:
        return fixed_pool(self.model[14], final_map, type(self).__name__, self.input_size)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [self.model[end][4] for end in _V1_STAGE_ENDS]  # type: ignore[index]


# Slices of torchvision's ``features`` forming the four stages (``features.0`` is the stem), and the neck.
_V2_STAGES = [slice(1, 4), slice(4, 7), slice(7, 14), slice(14, 18)]
_V2_NECK = 18


class TorchvisionMobileNetV2(KDNet):
    """torchvision's MobileNetV2 (ReLU6, dropout 0.2 before the classifier) behind the network contract."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, input_size: int = 224) -> None:
        super().__init__()
        reference = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width_mult)
        self.features = reference.features
        dropout, linear = reference.classifier
        self.classifier = LinearHead(dropout, linear)

        self.stages = [self.features[s] for s in _V2_STAGES]
        self.stage_activations = [identity_activation] * 4
        self.input_size = input_size
        stem_channels = self.features[0].out_channels
        stage_channels = [self.features[s.stop - 1].out_channels for s in _V2_STAGES]
        size = input_size // 2
        self.stem_shape = FeatureShape(stem_channels, size, size)
        self.stage_shapes = halving_shapes(stage_channels, size // 2)
        self.final_shape = FeatureShape(self.features[_V2_NECK].out_channels, size // 16, size // 16)

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.features[0](x)

    def forward_neck(self, x: Tensor) -> Tensor:
        return self.features[_V2_NECK](x)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The last BN of each stage (linear bottlenecks: not followed by a ReLU), by analogy with CRD's
        CIFAR MobileNetV2."""
        return [self.features[s.stop - 1].conv[-1] for s in _V2_STAGES]  # type: ignore[index]


register_model("mobilenetv1", dataset="imagenet")(lambda num_classes=1000: MobileNetV1(num_classes))
register_model("mobilenetv2", dataset="imagenet")(lambda num_classes=1000: TorchvisionMobileNetV2(num_classes))
register_model("mobilenetv2_050", dataset="imagenet")(
    lambda num_classes=1000: TorchvisionMobileNetV2(num_classes, width_mult=0.5)
)
