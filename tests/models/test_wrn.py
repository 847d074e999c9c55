"""WRN specifics: the pre-activation taps, one BatchNorm statistics update per forward, NORM's stage3 insert."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models import create_model


def _batch_norm_training(bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """Training-mode BN written out: batch mean and biased batch variance."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)


def _transition_bns(network: nn.Module) -> list[nn.BatchNorm2d]:
    # RepDistiller's get_bn_before_relu for WRN, by module name.
    return [network.block2.layer[0].bn1, network.block3.layer[0].bn1, network.bn1]


def test_bn_before_relu_names_the_reference_modules() -> None:
    network = create_model("wrn_16_2", 100)
    assert all(a is b for a, b in zip(network.bn_before_relu(), _transition_bns(network)))


def test_training_forward_updates_each_transition_bn_once() -> None:
    torch.manual_seed(0)
    network = create_model("wrn_16_1", 10).train()
    x = torch.randn(4, 3, 32, 32)
    out = network.forward_features(x)
    for bn, pre, post in zip(_transition_bns(network), out.stages_pre, out.stages_post):
        assert int(bn.num_batches_tracked) == 1, "mdistiller's WRN would count 2 here (BN called twice per forward)"
        # running_mean = (1 - momentum) * 0 + momentum * batch mean: one update from the raw stage sum.
        torch.testing.assert_close(bn.running_mean, 0.1 * post.detach().mean(dim=(0, 2, 3)))
        torch.testing.assert_close(pre, _batch_norm_training(bn, post), rtol=1e-4, atol=1e-5)
    # The next stage consumes relu(pre): the final map is relu(bn1(raw stage3 sum)).
    torch.testing.assert_close(out.final_map, torch.relu(out.stages_pre[-1]))


class _Record(nn.Module):
    """Pass-through insert (returns its input object unchanged)."""

    def forward(self, t: Tensor):  # type: ignore[no-untyped-def]
        return t, {"seen": t}


class _Double(nn.Module):
    def forward(self, t: Tensor) -> Tensor:
        return 2 * t


def test_inserts_at_stage3_keep_one_statistics_update() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    for module, scale in ((_Record(), 1.0), (_Double(), 2.0)):
        network = create_model("wrn_16_1", 10).train()
        network.insert("stage3", module)
        out = network.forward_features(x)
        raw = out.stages_post[-1].detach()
        assert int(network.bn1.num_batches_tracked) == 1
        # Statistics come from the tensor that really goes on (the inserted module's output)...
        torch.testing.assert_close(network.bn1.running_mean, 0.1 * (scale * raw).mean(dim=(0, 2, 3)))
        # ...while the pre tap is still the BN of the raw sum, with batch statistics.
        torch.testing.assert_close(out.stages_pre[-1], _batch_norm_training(network.bn1, raw), rtol=1e-4, atol=1e-5)


def test_norm_insert_at_stage3_acts_on_the_raw_sum_before_bn_relu() -> None:
    torch.manual_seed(0)
    network = create_model("wrn_40_1", 10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = network.forward_features(x)
        network.insert("stage3", _Double())
        doubled = network.forward_features(x)
    bn = network.bn1
    expected = torch.relu(
        (2 * plain.stages_post[-1] - bn.running_mean.view(1, -1, 1, 1))
        / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps)
        * bn.weight.view(1, -1, 1, 1)
        + bn.bias.view(1, -1, 1, 1)
    )
    torch.testing.assert_close(doubled.final_map, expected)
    assert (plain.stages_post[-1] < 0).any(), "stage3's feature is the raw (never activated) residual sum"


def test_stem_is_the_bare_conv() -> None:
    torch.manual_seed(0)
    network = create_model("wrn_16_2", 10).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = network.forward_features(x)
    torch.testing.assert_close(out.stem, torch.nn.functional.conv2d(x, network.conv1.weight, padding=1))
