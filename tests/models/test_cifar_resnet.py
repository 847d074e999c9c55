"""CIFAR ResNets: exact reference parameter counts and the network contract."""

from __future__ import annotations

import pytest
import torch

from models import FeatureShape, create_model, list_models

# Reference counts (spec architectures-and-recipes.md §A.1, measured from RepDistiller's model files, 100 classes).
REFERENCE_PARAMS = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "resnet20_half": 71_756,
}


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_parameter_count_equals_reference(name: str) -> None:
    model = create_model(name, num_classes=100)
    assert sum(p.numel() for p in model.parameters()) == REFERENCE_PARAMS[name]


def test_classifier_width_follows_num_classes() -> None:
    # Only the final Linear changes with the class count: (D + 1) * K parameters.
    small, large = create_model("resnet20", 10), create_model("resnet20", 100)
    delta = sum(p.numel() for p in large.parameters()) - sum(p.numel() for p in small.parameters())
    assert delta == (64 + 1) * 90


@pytest.mark.parametrize("name", ["resnet8", "resnet8x4", "resnet20_half"])
def test_contract(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=100).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = model.forward_features(x)
        logits = model(x)
    assert torch.equal(out.logits, logits)
    shapes = model.feature_shapes()
    assert tuple(out.stem.shape[1:]) == shapes["stem"].chw
    assert len(out.stages_pre) == len(out.stages_post) == model.num_stages == 3
    for k, (pre, post) in enumerate(zip(out.stages_pre, out.stages_post), start=1):
        assert tuple(post.shape[1:]) == shapes[f"stage{k}"].chw
        assert torch.equal(post, torch.relu(pre))
        assert (pre < 0).any(), "the pre-activation tap must really be taken before the ReLU"
    assert out.embedding.shape == (3, model.embedding_dim)
    # The head reproduces the logits from the last stage's map.
    assert torch.allclose(model.forward_head(out.stages_post[-1]), logits)


def test_reference_module_names_and_bn_before_relu() -> None:
    model = create_model("resnet8x4", 100)
    keys = set(model.state_dict())
    # RepDistiller's key layout: conv1/bn1 stem, layer1..3 blocks with a projection `downsample`, fc head.
    assert {
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.downsample.0.weight",
        "layer3.0.conv2.weight",
        "fc.bias",
    } <= keys
    assert [bn.num_features for bn in model.bn_before_relu()] == [64, 128, 256]


def test_feature_shapes_without_forward() -> None:
    model = create_model("resnet32x4", 100)
    assert model.stage_channels == [64, 128, 256]
    assert model.feature_shapes()["stage2"] == FeatureShape(128, 16, 16)
    assert model.embedding_dim == 256


def test_wrong_input_size_is_refused() -> None:
    model = create_model("resnet8", 100)
    with pytest.raises(ValueError, match="32x32"):
        model(torch.randn(1, 3, 64, 64))


def test_insert_replaces_the_tensor_and_returns_extras() -> None:
    torch.manual_seed(0)
    model = create_model("resnet8", 100).eval()
    x = torch.randn(2, 3, 32, 32)

    class Double(torch.nn.Module):
        def forward(self, t: torch.Tensor):  # type: ignore[no-untyped-def]
            return 2 * t, {"seen": t}

    with torch.no_grad():
        plain = model.forward_features(x)
        model.insert("stage3", Double())
        doubled = model.forward_features(x)
    assert torch.allclose(doubled.final_map, 2 * plain.final_map)
    assert torch.equal(doubled.extras["stage3"]["seen"], plain.stages_post[-1])
    assert "inserted.stage3.weight" not in model.state_dict()  # parameter-free insert: nothing added
    with pytest.raises(ValueError, match="valid"):
        model.insert("stage9", Double())


def test_unknown_network_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="valid: .*resnet20"):
        create_model("resnet21", 100)
    assert "resnet8x4" in list_models("cifar")
