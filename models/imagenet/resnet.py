"""ImageNet ResNets with torchvision's structure and state-dict layout (resnet18/34/50/101/152), and NORM's
ResNet50-1/4.

Structure (spec architectures-and-recipes.md §B): 7x7/2 conv 64, BN, ReLU, 3x3/2 max-pool; BasicBlock [2,2,2,2] /
[3,4,6,3] or Bottleneck (stride on the 3x3, torchvision "v1.5") [3,4,6,3] / [3,4,23,3] / [3,8,36,3] at widths
64/128/256/512 and strides 1/2/2/2; projection shortcuts (1x1 conv + BN) named ``downsample``; adaptive average
pooling; Linear ``fc``.  Init as torchvision (Kaiming fan_out convs, BN 1/0, default Linear, no zero-init residual).
Module names are torchvision's, so ``resnet18-5c106cde.pth`` ... ``resnet152-b121ed2d.pth`` load unchanged
(mdistiller, NORM and ND load exactly these files).  torchvision pools adaptively; mdistiller's copy uses a fixed
AvgPool2d(7), equal at 224x224.

ResNet50-1/4 (NORM Table 6, NORM's ``resnet50_4S`` without its FT layers): torchvision ResNet50 with bottleneck
widths divided by 4 (16/32/64/128, outputs 64/128/256/512) but the 64-channel 7x7 stem kept (spec §G.12), so
layer1's first block has an identity shortcut; FC 512 -> classes.

Contract: the stem tap is the post-ReLU stem before the max-pool (64 x 112 x 112; mdistiller's ``feats[0]``); the
max-pool runs at the start of stage 1 (inside its first unit, so ``"stage1.0"`` is still "after the first block").
``pre`` = the last block's residual sum before its ReLU (mdistiller's ``preact_feats``), ``post = relu(pre)``;
:meth:`TorchvisionResNet.bn_before_relu` returns the last BN of each stage's last block.
"""

from __future__ import annotations

from torch import Tensor, nn

from models.contract import FeatureShape, KDNet, classifier_at
from models.layers import BasicBlock, Bottleneck, kaiming_init, relu_stages, residual_stages
from models.registry import register_model

__all__ = ["TorchvisionResNet"]


class TorchvisionResNet(KDNet):
    """torchvision's ResNet (``widths`` are the per-stage block widths; ``stem_width`` the 7x7 conv's)."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: tuple[int, int, int, int],
        num_classes: int = 1000,
        widths: tuple[int, int, int, int] = (64, 128, 256, 512),
        stem_width: int = 64,
        input_size: int = 224,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        layers, out_channels = residual_stages(block, stem_width, widths, num_blocks, (1, 2, 2, 2))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))  # the reference's; KDNet.pool computes the same
        self.fc = nn.Linear(out_channels, num_classes)
        kaiming_init(self)

        # Stage 1 starts with the stem's max-pool, folded into its first unit (unregistered containers: the
        # state-dict keys stay torchvision's).
        first_unit = nn.Sequential(self.maxpool, self.layer1[0])
        stages = [nn.Sequential(first_unit, *self.layer1[1:]), self.layer2, self.layer3, self.layer4]
        self.input_size = input_size
        s = input_size // 2
        relu_stages(self, stages, FeatureShape(stem_width, s, s), [w * block.expansion for w in widths], s // 2)

    classifier = classifier_at("fc")

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [stage[-1].last_bn for stage in (self.layer1, self.layer2, self.layer3, self.layer4)]


_DEPTHS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def torchvision_resnet(depth: int, num_classes: int = 1000, input_size: int = 224) -> TorchvisionResNet:
    block, num_blocks = _DEPTHS[depth]
    return TorchvisionResNet(block, num_blocks, num_classes, input_size=input_size)


for _depth in _DEPTHS:
    register_model(f"resnet{_depth}", dataset="imagenet")(
        lambda num_classes=1000, _d=_depth: torchvision_resnet(_d, num_classes)
    )

# NORM Table 6's ResNet50-1/4: quarter-width bottlenecks, full 64-channel stem.
register_model("resnet50_quarter", dataset="imagenet")(
    lambda num_classes=1000: TorchvisionResNet(Bottleneck, (3, 4, 6, 3), num_classes, widths=(16, 32, 64, 128))
)
