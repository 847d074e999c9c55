"""CIFAR ResNets (resnet8 ... resnet110, resnet8x4, resnet32x4, ResNet20-0.5x) as in RepDistiller/CRD.

Structure (spec architectures-and-recipes.md §A.2): 3x3 stem conv-BN-ReLU; three stages of BasicBlocks
(conv3x3-BN-ReLU-conv3x3-BN, + shortcut, ReLU) at strides 1/2/2; option-B projection shortcuts (1x1 conv + BN)
whenever stride or width changes; fixed AvgPool2d(8) head; Kaiming-normal (fan_out) convs, BN weight 1 / bias 0,
PyTorch-default Linear.  Module names equal RepDistiller's (``conv1``, ``bn1``, ``layer1..3``, ``fc``), so its
``ckpt_epoch_240.pth`` state dicts load key for key.

Contract: ``stages_pre[i]`` is the residual sum of the stage's last block before its ReLU (RepDistiller's
``preact=True`` feature), ``stages_post[i] = relu(stages_pre[i])``.

Tiny-ImageNet (spec §C): letKD's ``resnet_tinyimagenet.py`` keeps every layer and only widens the fixed pool to
AvgPool2d(16) for 64x64 inputs; ``input_size=64`` builds exactly that.
"""

from __future__ import annotations

from torch import Tensor, nn

from models.contract import FeatureShape, KDNet, classifier_at
from models.layers import BasicBlock, fixed_pool, kaiming_init, relu_stages, residual_stages
from models.registry import register_model

__all__ = ["BasicBlock", "CifarResNet"]


class CifarResNet(KDNet):
    """ResNet-(6n+2) for 32x32 (or, with ``input_size=64``, Tiny-ImageNet) inputs;
    ``widths`` = [stem, stage1, stage2, stage3]."""

    def __init__(
        self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100, input_size: int = 32
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110, ...), got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        layers, _ = residual_stages(BasicBlock, widths[0], widths[1:], (blocks_per_stage,) * 3, (1, 2, 2))
        self.layer1, self.layer2, self.layer3 = layers
        # The reference head is a fixed AvgPool2d(8) (AvgPool2d(16) in letKD's Tiny-ImageNet copy).  We keep the
        # fixed pool so that a wrong input size fails loudly instead of silently changing the network (§G.14).
        self.avgpool = nn.AvgPool2d(input_size // 4)
        self.fc = nn.Linear(widths[3], num_classes)
        kaiming_init(self)

        self.input_size = input_size
        s = input_size
        relu_stages(self, [self.layer1, self.layer2, self.layer3], FeatureShape(widths[0], s, s), widths[1:], s)

    classifier = classifier_at("fc")

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def pool(self, final_map: Tensor) -> Tensor:
        return fixed_pool(self.avgpool, final_map, type(self).__name__, self.input_size)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [stage[-1].last_bn for stage in self.stages]


_PLAIN = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)

for _depth in (8, 14, 20, 32, 44, 56, 110):
    register_model(f"resnet{_depth}", dataset="cifar")(
        lambda num_classes=100, _d=_depth: CifarResNet(_d, _PLAIN, num_classes)
    )
register_model("resnet8x4", dataset="cifar")(lambda num_classes=100: CifarResNet(8, _WIDE, num_classes))
register_model("resnet32x4", dataset="cifar")(lambda num_classes=100: CifarResNet(32, _WIDE, num_classes))
# KCD's "ResNet20 with the number of channels reduced by half": every width halved, stem included (spec §A.2,
# §G.13; KCD released no code, so the halved stem is our reading).
register_model("resnet20_half", dataset="cifar")(lambda num_classes=100: CifarResNet(20, (8, 8, 16, 32), num_classes))
