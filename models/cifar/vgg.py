"""CIFAR VGG-BN (vgg8, vgg11, vgg13, vgg16, vgg19) as in RepDistiller/CRD (``models/vgg.py``, the ``vggN_bn`` builders).

Structure (spec architectures-and-recipes.md §A.2): five blocks of conv3x3 (pad 1, *with* bias)-BN-ReLU; convs per
block S = 1,1,1,1,1 (vgg8), A = 1,1,2,2,2 (vgg11), B = 2,2,2,2,2 (vgg13), D = 2,2,3,3,3 (vgg16),
E = 2,2,4,4,4 (vgg19) with widths 64/128/256/512/512.  MaxPool(2) after blocks 0, 1, 2; the reference applies
pool3 only to 64x64 inputs, so on CIFAR blocks 3 and 4 both run at 4x4.  Head: AdaptiveAvgPool(1) -> Linear(512).
Init: conv ~ N(0, sqrt(2/(k*k*C_out))) with bias 0, BN 1/0, Linear ~ N(0, 0.01) with bias 0.  Module names are
RepDistiller's (``block0..4`` Sequentials of conv/BN/ReLU, ``pool0..4``, ``classifier``).

Contract: the stem is block0 followed by its ReLU (``f0``, 64x32x32, taken before pool0).  Stage k (k = 1..4) is
"the previous block's max-pool, then block k"; each block's final ReLU is stripped from its Sequential (as in the
reference), so ``stages_pre[k-1]`` is block k's last BN output and ``stages_post[k-1] = relu(pre)`` — RepDistiller's
``f1_pre..f4_pre`` and ``f1..f4``, taken before the following pool.  :meth:`VGG.bn_before_relu` returns those BNs.
Because the reference decides pool3 from the input height, the network is built for one input size and refuses
another.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.contract import FeatureShape, KDNet
from models.layers import fan_out_normal_init, halving_shapes
from models.registry import register_model

__all__ = ["VGG", "VGG_CONFIGS"]

VGG_CONFIGS: dict[str, list[list[int]]] = {
    "S": [[64], [128], [256], [512], [512]],
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _conv_block(widths: list[int], in_channels: int) -> nn.Sequential:
    """conv-BN-ReLU per width, without the final ReLU (applied by the network so the pre-ReLU tap exists)."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [
            nn.Conv2d(in_channels, width, kernel_size=3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        in_channels = width
    return nn.Sequential(*layers[:-1])


class VGG(KDNet):
    """CIFAR VGG with BatchNorm; ``config`` is one of :data:`VGG_CONFIGS`."""

    def __init__(self, config: str, num_classes: int = 100, input_size: int = 32) -> None:
        super().__init__()
        cfg = VGG_CONFIGS[config]
        self.block0 = _conv_block(cfg[0], 3)
        self.block1 = _conv_block(cfg[1], cfg[0][-1])
        self.block2 = _conv_block(cfg[2], cfg[1][-1])
        self.block3 = _conv_block(cfg[3], cfg[2][-1])
        self.block4 = _conv_block(cfg[4], cfg[3][-1])
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))  # the reference's; KDNet.pool computes the same
        self.classifier = nn.Linear(512, num_classes)
        fan_out_normal_init(self, linear_std=0.01)

        # RepDistiller applies pool3 only when the input is 64 pixels high.
        uses_pool3 = input_size == 64
        pool3: nn.Module = self.pool3 if uses_pool3 else nn.Identity()
        entries = [
            (self.pool0, self.block1),
            (self.pool1, self.block2),
            (self.pool2, self.block3),
            (pool3, self.block4),
        ]
        # Each stage is one unit "pool, block" (an unregistered container: the state-dict keys stay the reference's).
        self.stages = [nn.Sequential(nn.Sequential(pool, block)) for pool, block in entries]
        self.stage_activations = [torch.relu] * 4
        self.input_size = input_size
        s = input_size
        last = s // 16 if uses_pool3 else s // 8
        self.stem_shape = FeatureShape(cfg[0][-1], s, s)
        self.stage_shapes = [*halving_shapes([c[-1] for c in cfg[1:4]], s // 2), FeatureShape(cfg[4][-1], last, last)]
        self.final_shape = self.stage_shapes[-1]

    def forward_stem(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(
                f"{type(self).__name__} was built for {self.input_size}x{self.input_size} inputs (whether it "
                f"max-pools before block4 depends on the input size); got {tuple(x.shape[-2:])}"
            )
        return torch.relu(self.block0(x))

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [self.block1[-1], self.block2[-1], self.block3[-1], self.block4[-1]]  # type: ignore[list-item]


for _name, _cfg in (("vgg8", "S"), ("vgg11", "A"), ("vgg13", "B"), ("vgg16", "D"), ("vgg19", "E")):
    register_model(_name, dataset="cifar")(lambda num_classes=100, _c=_cfg: VGG(_c, num_classes))
