"""The network contract for every registered network.

Per network: (1) at the native input size, on the meta device (shapes only, free): every tap has the shape
``feature_shapes()`` promises, without a forward; (2) on the CPU, with randomised BatchNorm statistics so that
nothing is trivially zero: one ``forward_features`` gives the logits of ``model(x)``, pre/post pairs are related
exactly as documented (checked with formulations written here, not with the network's own
``stage_activations``), the head reproduces the logits, and inserted modules sit in the forward path.

Large networks whose pooling is adaptive run the CPU part at a smaller input (the contract does not depend on it);
networks with a fixed pooling run at their native size.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from models import FeatureOutput, FeatureUnavailable, create_model, list_models
from models.profile import meta_model

# How stage_post is obtained from stage_pre in each network (documented in models/*; spec §A.3).
RELU, IDENTITY, RELU_SHUFFLE, NEXT_BN = "relu", "identity", "relu+shuffle", "next-bn"
RELATION = {name: RELU for name in list_models()}
RELATION.update({n: IDENTITY for n in ("MobileNetV2", "MobileNetV2_tiny", "MobileNetV2_mdistiller_tiny")})
RELATION.update({n: IDENTITY for n in ("mobilenetv2", "mobilenetv2_050")})
# Transformers (models/imagenet/timm_nets.py): token maps (B, D, 1, N); a block ends in a residual sum, pre == post.
TOKEN_NETWORKS = ("vit_s", "vit_b", "deit_b_distilled")
RELATION.update({n: IDENTITY for n in TOKEN_NETWORKS})
RELATION.update({n: RELU_SHUFFLE for n in ("ShuffleV2", "ShuffleV2_tiny")})
RELATION.update({n: NEXT_BN for n in list_models() if n.startswith("wrn_")})

# CPU test input size for large networks with adaptive pooling (the rest run at their native size).
SMALL_INPUT = {
    "ResNet50": 16,
    "ResNet50_tiny": 16,
    "ResNet18_tiny": 16,
    "resnet18_torchvision_tiny": 32,
    "wrn_40_2_tiny": 32,
    "wrn_16_2_tiny": 32,
    "wrn_40_1_tiny": 32,
    "MobileNetV2_mdistiller_tiny": 32,
    # (ViTs have a fixed patch grid: native size only.)
    **{n: 32 for n in list_models("imagenet") if n != "mobilenetv1" and n not in TOKEN_NETWORKS},
}
NO_OFD_BN = {"ShuffleV1", "ShuffleV2", "ShuffleV1_tiny", "ShuffleV2_tiny", "regnety_16gf", *TOKEN_NETWORKS}


def _shuffle_two_groups(x: Tensor) -> Tensor:
    """Channel shuffle with 2 groups written as an index permutation: output channel j takes input channel
    (j % 2) * C/2 + j // 2."""
    c = x.shape[1]
    index = torch.tensor([(j % 2) * (c // 2) + j // 2 for j in range(c)])
    return x[:, index]


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                m.weight.copy_(0.5 + torch.rand(n, generator=generator))
                m.bias.copy_(0.1 * torch.randn(n, generator=generator))


def _eval_batchnorm(bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
    shape = (1, -1, 1, 1)
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(shape)
    return (x - bn.running_mean.view(shape)) * scale + bn.bias.view(shape)


def _check_shapes(network: nn.Module, out: FeatureOutput, batch: int) -> None:
    """Every tap has the shape ``feature_shapes()`` promises (at the native input size)."""
    shapes = network.feature_shapes()
    assert tuple(out.stem.shape) == (batch, *shapes["stem"].chw)
    assert len(out.stages_pre) == len(out.stages_post) == network.num_stages == len(network.stage_shapes)
    for k, (pre, post) in enumerate(zip(out.stages_pre, out.stages_post), start=1):
        assert tuple(post.shape) == tuple(pre.shape) == (batch, *shapes[f"stage{k}"].chw), f"stage{k}"
    assert tuple(out.final_map.shape) == (batch, *shapes["neck"].chw)
    assert tuple(out.embedding.shape) == (batch, network.embedding_dim)
    assert tuple(out.logits.shape) == (batch, network.num_classes)
    assert network.stage_channels == [s.channels for s in network.stage_shapes]


@pytest.mark.parametrize("name", sorted(SMALL_INPUT))
def test_feature_shapes_at_native_size_on_the_meta_device(name: str) -> None:
    # Networks whose CPU test below runs at a smaller input: check the native-size shapes with shapes only.
    network = meta_model(name)
    x = torch.zeros(2, 3, network.input_size, network.input_size, device="meta")
    _check_shapes(network, network.forward_features(x), batch=2)


@pytest.mark.parametrize("name", list_models())
def test_forward_features_taps_head_and_inserts(name: str) -> None:
    torch.manual_seed(0)
    network = create_model(name, num_classes=10)
    _randomise_batchnorm(network)
    network.eval()
    size = SMALL_INPUT.get(name, network.input_size)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        out = network.forward_features(x)
        logits = network(x)
        assert torch.equal(out.logits, logits)
        if size == network.input_size:
            _check_shapes(network, out, batch=1)
        if name == "deit_b_distilled":  # two heads: the logits average the class- and distillation-token heads
            tokens = out.final_map[:, :, 0]
            assert torch.allclose(out.embedding, (tokens[:, :, 0] + tokens[:, :, 1]) / 2)
            cls_logits = network.classifier(tokens[:, :, 0])
            assert torch.allclose(out.extras["cls_logits"], cls_logits, atol=1e-6)
            assert torch.allclose((cls_logits + network.head_dist(tokens[:, :, 1])) / 2, logits, atol=1e-6)
        else:
            assert torch.allclose(network.classifier(out.embedding), logits, atol=1e-6)
        assert torch.allclose(network.forward_head(out.stages_post[-1]), logits, atol=1e-5)
        assert out.final_map.shape[1] == network.final_shape.channels

        relation = RELATION[name]
        for index, (pre, post) in enumerate(zip(out.stages_pre, out.stages_post)):
            assert pre.shape[1] == post.shape[1] == network.stage_shapes[index].channels
            if relation == RELU:
                assert torch.equal(post, torch.relu(pre))
                assert (pre < 0).any(), "the pre-activation tap must really be taken before the ReLU"
            elif relation == IDENTITY:
                assert torch.equal(post, pre)
            elif relation == RELU_SHUFFLE:
                assert torch.equal(post, _shuffle_two_groups(torch.relu(pre)))
                assert (pre < 0).any()
            else:  # WRN: post is the raw sum, pre that sum through the next BatchNorm
                bn = network.bn_before_relu()[index]
                assert torch.allclose(pre, _eval_batchnorm(bn, post), atol=1e-5)
                assert (post < 0).any(), "a WRN stage output is never activated"

        # Pass-through inserts see exactly the taps and change nothing.
        class Tap(nn.Module):
            def forward(self, t: Tensor):  # type: ignore[no-untyped-def]
                return t, {"seen": t.clone()}

        points = [
            p for p in network.insertion_points() if p in ("stage1.0", "neck") or p == f"stage{network.num_stages}"
        ]
        for point in points:
            network.insert(point, Tap())
        tapped = network.forward_features(x)
        assert torch.allclose(tapped.logits, logits, atol=1e-6, rtol=0)
        assert torch.equal(tapped.extras[f"stage{network.num_stages}"]["seen"], out.stages_post[-1])
        assert torch.equal(tapped.extras["neck"]["seen"], out.final_map)
        if "stage1.0" in points:
            first_unit = network.stages[0][0](out.stem)
            assert torch.equal(tapped.extras["stage1.0"]["seen"], first_unit)
        for point in points:
            network.remove_insert(point)

        # A module inserted after the last stage is in the forward path: scaling its output changes the logits (a
        # different factor per channel: a ViT's final LayerNorm would undo a uniform one).
        network.insert(f"stage{network.num_stages}", _Double())
        doubled = network.forward_features(x)
        expected = _final_map_from_last_post(network, _Double()(out.stages_post[-1]))
        assert torch.allclose(doubled.final_map, expected, atol=1e-5)
        assert not torch.allclose(doubled.logits, logits)
    assert set(network.state_dict()) == set(meta_model(name, 10).state_dict()), "parameter-free inserts add no keys"


class _Double(nn.Module):
    """Channel c multiplied by 1 + (c + 1) / C (2 for the last): roughly doubling, not uniform."""

    def forward(self, t: Tensor) -> Tensor:
        scale = 1 + torch.arange(1, t.shape[1] + 1, dtype=t.dtype) / t.shape[1]
        return t * scale.view(1, -1, *([1] * (t.dim() - 2)))


def _final_map_from_last_post(network: nn.Module, post: Tensor) -> Tensor:
    return network.forward_neck(network.stage_transition(network.num_stages - 1, post, None))


@pytest.mark.parametrize("name", list_models())
def test_bn_before_relu(name: str) -> None:
    network = meta_model(name)
    if name in NO_OFD_BN:
        with pytest.raises(FeatureUnavailable, match=type(network).__name__):
            network.bn_before_relu()
        return
    bns = network.bn_before_relu()
    assert len(bns) == network.num_stages
    for bn, shape in zip(bns, network.stage_shapes):
        assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == shape.channels
        assert any(bn is m for m in network.modules()), "a registered module of the network"


@pytest.mark.parametrize("name", ["vgg13", "mobilenetv1"])
def test_bn_before_relu_output_is_the_pre_activation_tap(name: str) -> None:
    # In these networks each stage ends in its BN, so the BN's output is exactly stages_pre.
    network = create_model(name, 10)
    _randomise_batchnorm(network)
    network.eval()
    seen: list[Tensor] = []
    hooks = [bn.register_forward_hook(lambda m, i, o: seen.append(o)) for bn in network.bn_before_relu()]
    with torch.no_grad():
        out = network.forward_features(torch.randn(1, 3, network.input_size, network.input_size))
    for hook in hooks:
        hook.remove()
    assert len(seen) == network.num_stages
    for pre, bn_out in zip(out.stages_pre, seen):
        assert torch.equal(pre, bn_out)


@pytest.mark.parametrize(
    "name",
    ["resnet8", "resnet56_tiny", "wrn_40_2", "ShuffleV1", "ShuffleV2_tiny", "MobileNetV2", "vgg8", "mobilenetv1"],
)
def test_fixed_pools_refuse_another_input_size(name: str) -> None:
    network = create_model(name, 10).eval()
    wrong = 2 * network.input_size
    with pytest.raises(ValueError, match=f"{network.input_size}x{network.input_size}"):
        network(torch.zeros(1, 3, wrong, wrong))


def test_vgg_built_for_64_pixels_max_pools_before_block4() -> None:
    # RepDistiller applies pool3 only to 64-pixel inputs: blocks 3 and 4 then run at 8x8 and 4x4.
    from models.cifar.vgg import VGG

    with torch.device("meta"):
        network = VGG("S", num_classes=200, input_size=64).eval()
        out = network.forward_features(torch.zeros(1, 3, 64, 64))
    assert [tuple(t.shape[1:]) for t in out.stages_post] == [(128, 32, 32), (256, 16, 16), (512, 8, 8), (512, 4, 4)]
    assert [s.chw for s in network.stage_shapes] == [tuple(t.shape[1:]) for t in out.stages_post]


@pytest.mark.parametrize("name", ["wrn_16_1", "MobileNetV2", "vgg8", "resnet18", "mobilenetv1"])
def test_deepcopy_keeps_stages_on_the_copied_modules(name: str) -> None:
    # Stages are unregistered containers over registered modules; a copy (e.g. an EMA or a frozen teacher) must
    # run its own parameters.
    import copy

    network = meta_model(name)
    clone = copy.deepcopy(network)
    registered = {id(m) for m in clone.modules()}
    for stage in clone.stages:
        for module in stage.modules():
            if any(True for _ in module.parameters(recurse=False)):
                assert id(module) in registered
