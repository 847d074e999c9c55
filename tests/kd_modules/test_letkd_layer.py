"""letKD's KD layer and the per-location losses, against hand-worked values and second formulations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kd_modules.letkd import CosineConv1x1, FeatureTap, KDLayer, first_block_of_last_stage, probe_shapes
from kd_modules.losses.letkd import codebook_assignment, location_kl, subclass_assignment
from models import create_model


def test_normalised_conv_is_a_scaled_cosine_and_ignores_input_scale() -> None:
    torch.manual_seed(0)
    conv = CosineConv1x1(5, 7, scale=3.0)
    x = torch.randn(2, 5, 3, 4)
    # Every location multiplied by its own positive factor: the output must not move.
    factors = torch.rand(2, 1, 3, 4) * 10 + 0.1
    out = conv(x)
    assert torch.allclose(conv(x * factors), out, atol=1e-5)
    # Second formulation: torch's cosine similarity of each location with each kernel, times the scale.
    expected = torch.stack(
        [3.0 * F.cosine_similarity(x, conv.weight[k].view(1, 5, 1, 1), dim=1) for k in range(7)], dim=1
    )
    assert torch.allclose(out, expected, atol=1e-5)
    # The learnable scale multiplies the output.
    with torch.no_grad():
        conv.scale.fill_(1.0)
    assert torch.allclose(conv(x), out / 3.0, atol=1e-6)


def test_kd_layer_initial_scales_and_parameter_count() -> None:
    layer = KDLayer(channels=64, num_words=4096, alpha=1.0)
    assert layer.predictor.scale.item() == 3.0 and layer.value.scale.item() == 1.0
    # C*K (scores) + 1 scale + 2K (BN affine) + K*C (values) + 1 scale (spec §3.6: ~0.53M for RN20's 64 channels)
    assert sum(p.numel() for p in layer.parameters()) == 2 * 64 * 4096 + 2 * 4096 + 2
    x = torch.randn(2, 64, 8, 8)
    out, scores = layer(x)
    assert out.shape == x.shape and scores.shape == (2, 4096, 8, 8)


def test_alpha_zero_leaves_the_forward_unchanged() -> None:
    torch.manual_seed(0)
    plain = create_model("resnet8", 100)
    with_layer = create_model("resnet8", 100)
    with_layer.load_state_dict(plain.state_dict())
    with_layer.insert("neck", KDLayer(64, 32, alpha=0.0))
    x = torch.randn(4, 3, 32, 32)
    for mode in (True, False):
        plain.train(mode)
        with_layer.train(mode)
        assert torch.equal(with_layer(x), plain(x))
    # ... while alpha = 1 does change it (the test above could not pass by accident).
    with_layer.remove_insert("neck")
    with_layer.insert("neck", KDLayer(64, 32, alpha=1.0))
    assert not torch.allclose(with_layer(x), plain(x))


def test_location_kl_equals_a_hand_computed_value() -> None:
    # Two locations (B=1, H=1, W=2), two words.
    # location 1: p_T = (1/2, 1/2), S = (0, ln 3) -> q = (1/4, 3/4); KL = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3)
    # location 2: p_T = (1, 0),     S = (0, 0)    -> q = (1/2, 1/2); KL = ln 2
    scores = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]]).view(1, 2, 1, 2)
    targets = torch.tensor([[0.5, 0.5], [1.0, 0.0]]).view(1, 1, 2, 2)
    expected = (0.5 * math.log(4.0 / 3.0) + math.log(2.0)) / 2  # averaged over the B*H*W = 2 locations
    assert location_kl(scores, targets).item() == pytest.approx(expected, rel=1e-6)


def test_codebook_assignment_is_softmax_of_negative_squared_distance() -> None:
    # One location at 0 (1-D features); codewords at 0, 1, 2 -> d^2 = 0, 1, 4.
    feature = torch.zeros(1, 1, 1, 1)
    centroids = torch.tensor([[0.0], [1.0], [2.0]])
    weights = [1.0, math.exp(-1.0), math.exp(-4.0)]
    expected = torch.tensor([w / sum(weights) for w in weights])
    assert torch.allclose(codebook_assignment(feature, centroids, 1.0).view(-1), expected, atol=1e-6)
    sharper = [1.0, math.exp(-2.0), math.exp(-8.0)]  # tau = 2
    assert torch.allclose(
        codebook_assignment(feature, centroids, 2.0).view(-1), torch.tensor(sharper) / sum(sharper), atol=1e-6
    )


def test_subclass_target_uses_the_class_constrained_centroid() -> None:
    # Two classes, two sub-classes each, 1-D LDA space.  Class-0 centroids at 0 and 10, class-1 at 12 and 30.
    centroids = torch.tensor([[[0.0], [10.0]], [[12.0], [30.0]]])
    score_matrix = torch.tensor(
        [[1.0, 0.0, 0.0, 0.0], [0.0, 0.75, 0.25, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    )
    # A class-0 location at 11.9 is closest to 12 overall (class 1), but its target row is chosen among class 0's
    # centroids: sub-class 1.  The same value in a class-1 image selects sub-class 2.
    z = torch.tensor([11.9, 11.9, 1.0]).view(3, 1, 1, 1)
    labels = torch.tensor([0, 1, 0])
    targets = subclass_assignment(z, labels, centroids, score_matrix).view(3, 4)
    assert torch.equal(targets, score_matrix[[1, 2, 0]])


def test_feature_tap_reads_the_first_block_of_the_last_stage() -> None:
    torch.manual_seed(0)
    net = create_model("resnet20", 100).eval()
    point = first_block_of_last_stage(net)
    assert point == "stage3.0"
    assert first_block_of_last_stage(create_model("resnet8x4", 100)) == "stage3"  # one block per stage
    x = torch.randn(2, 3, 32, 32)
    net.insert(point, FeatureTap())
    tapped = net.forward_features(x).extras[point]
    net.remove_insert(point)
    with torch.no_grad():  # by hand: stem, the first two stages (ReLU'd by their last block), block 0 of stage 3
        h = net.forward_stem(x)
        for stage in net.stages[:2]:
            h = torch.relu(stage(h))
        expected = net.stages[2][0](h)
    assert torch.allclose(tapped, expected)
    assert probe_shapes(net, [point, "neck"]) == {point: (64, 8, 8), "neck": (64, 8, 8)}
    assert not hasattr(net, "inserted") or len(net.inserted) == 0
