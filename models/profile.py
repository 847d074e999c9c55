"""Size and cost of a network without running it on real data: parameter count and conv + linear MACs per image.

Both are computed on PyTorch's ``meta`` device (shapes only, no memory, no arithmetic), so profiling even
ResNet152 takes a fraction of a second.  The MAC count follows the spec's convention (architectures-and-recipes.md
§0): ``torch.utils.flop_counter.FlopCounterMode`` on one image at the native input size, model in eval mode;
FlopCounterMode counts conv, linear and matmul only (BatchNorm, activations, pooling, additions and shuffles are
free), and MACs = FLOPs / 2.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from models.contract import KDNet
from models.zoo import create_model, model_entry

__all__ = [
    "DATASET_NUM_CLASSES",
    "count_macs",
    "count_parameters",
    "default_num_classes",
    "meta_model",
]

# Class counts of the input families, the ones the spec's counts use.
DATASET_NUM_CLASSES = {"cifar": 100, "tiny-imagenet": 200, "imagenet": 1000}


def default_num_classes(arch: str) -> int:
    """The class count of ``arch``'s dataset family (CIFAR-100, Tiny-ImageNet's 200, ImageNet's 1000)."""
    return DATASET_NUM_CLASSES[model_entry(arch).dataset]


def meta_model(arch: str, num_classes: int | None = None) -> KDNet:
    """``arch`` built on the meta device (parameters have shapes but no storage), in eval mode."""
    with torch.device("meta"):
        return create_model(arch, default_num_classes(arch) if num_classes is None else num_classes).eval()


def count_parameters(model: torch.nn.Module) -> int:
    """Every parameter, BatchNorm affine weights included, running buffers excluded (the spec's "Params")."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: KDNet) -> int:
    """Conv + linear multiply-accumulates of one forward of one image at ``model.input_size`` (eval mode)."""
    device = next(model.parameters()).device
    channels = int(getattr(model, "input_channels", 3))
    image = torch.zeros(1, channels, model.input_size, model.input_size, device=device)
    was_training = model.training
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with counter, torch.no_grad():
            model(image)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
