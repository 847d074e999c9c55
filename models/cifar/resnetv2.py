"""CRD's CIFAR ResNet50 (RepDistiller ``resnetv2.py``) and its BasicBlock sibling ResNet18 (mdistiller's Tiny-ImageNet
teacher).

Structure (spec architectures-and-recipes.md §A.2): a torchvision-style network with a CIFAR stem — 3x3 conv 64
stride 1, BN, ReLU, no max-pool — then stages of [3, 4, 6, 3] Bottlenecks (ResNet50; stride on the 3x3, x4 expansion)
or [2, 2, 2, 2] BasicBlocks (ResNet18) at widths 64/128/256/512 and strides 1/2/2/2; projection shortcuts (1x1
conv + BN) named ``shortcut``; AdaptiveAvgPool(1) -> Linear named ``linear``; Kaiming fan_out init,
zero_init_residual off.  Module names are RepDistiller's, so ``ResNet50_vanilla/ckpt_epoch_240.pth`` loads key for key.

Contract: as the CIFAR ResNets, ``pre`` = the last block's residual sum before its ReLU, ``post = relu(pre)``
(RepDistiller ``f1_pre..f4_pre`` / ``f1..f4``); the stem is the post-ReLU stem (``f0``, 64 x 32 x 32).  The pool is
adaptive in the reference, so these networks run unchanged at 64x64 (Tiny-ImageNet).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.contract import FeatureShape, KDNet, classifier_at
from models.layers import BasicBlock, Bottleneck, kaiming_init, relu_stages, residual_stages
from models.registry import register_model

__all__ = ["CifarResNetV2"]


class CifarResNetV2(KDNet):
    """ResNet with a CIFAR stem and four stages (``block`` = BasicBlock or Bottleneck)."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: tuple[int, int, int, int],
        num_classes: int = 100,
        input_size: int = 32,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, out_channels = residual_stages(block, 64, (64, 128, 256, 512), num_blocks, (1, 2, 2, 2), "shortcut")
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))  # the reference's; KDNet.pool computes the same
        self.linear = nn.Linear(out_channels, num_classes)
        kaiming_init(self)

        stages = [self.layer1, self.layer2, self.layer3, self.layer4]
        self.input_size = input_size
        s = input_size
        relu_stages(self, stages, FeatureShape(64, s, s), [w * block.expansion for w in (64, 128, 256, 512)], s)

    classifier = classifier_at("linear")

    def forward_stem(self, x: Tensor) -> Tensor:
        return torch.relu(self.bn1(self.conv1(x)))

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [stage[-1].last_bn for stage in self.stages]


register_model("ResNet50", dataset="cifar")(
    lambda num_classes=100: CifarResNetV2(Bottleneck, (3, 4, 6, 3), num_classes)
)
