"""ImageNet networks against torchvision itself: identical state-dict layouts, torchvision weights load unchanged,
identical outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from models import create_model
from models.checkpoints import load_network
from models.profile import meta_model

TORCHVISION_BUILDERS = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
    "resnet101": torchvision.models.resnet101,
    "resnet152": torchvision.models.resnet152,
    "mobilenetv2": torchvision.models.mobilenet_v2,
    "mobilenetv2_050": lambda **kw: torchvision.models.mobilenet_v2(width_mult=0.5, **kw),
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_BUILDERS))
def test_state_dict_layout_equals_torchvision(name: str) -> None:
    with torch.device("meta"):
        reference = TORCHVISION_BUILDERS[name](num_classes=1000)
    ours = meta_model(name, 1000)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in reference.state_dict().items()
    ]


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenetv2_050"])
def test_torchvision_weights_load_unchanged_and_give_the_same_outputs(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = TORCHVISION_BUILDERS[name](num_classes=1000).eval()
    with torch.no_grad():  # non-trivial BN statistics
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / f"{name}-weights.pth"
    torch.save(reference.state_dict(), path)  # a bare state dict, as torchvision's files are
    network = load_network(name, 1000, path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(network(x), reference(x), rtol=1e-4, atol=1e-5)


def test_resnet_taps_match_torchvision_intermediates() -> None:
    # post-activation stage outputs are torchvision's layer outputs; the stem tap precedes the max-pool.
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=10).eval()
    network = create_model("resnet18", 10).eval()
    network.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = network.forward_features(x)
        stem = reference.relu(reference.bn1(reference.conv1(x)))
        torch.testing.assert_close(out.stem, stem)
        y = reference.maxpool(stem)
        for layer, post in zip(
            [reference.layer1, reference.layer2, reference.layer3, reference.layer4], out.stages_post
        ):
            y = layer(y)
            torch.testing.assert_close(post, y)
