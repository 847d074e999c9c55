"""timm's ViT / DeiT / RegNet behind the contract: timm's state dicts load key for key and give timm's outputs; the
token maps are the token sequences; stochastic depth follows timm's schedule."""

from __future__ import annotations

import pytest
import torch

from models import create_model
from models.imagenet.timm_nets import map_to_tokens, tokens_to_map

TIMM = {
    "vit_s": "vit_small_patch16_224",
    "deit_b_distilled": "deit_base_distilled_patch16_224",
    "regnety_16gf": "regnety_160",
}


@pytest.mark.parametrize("name", sorted(TIMM))
def test_timm_weights_load_key_for_key_and_give_timms_outputs(name: str) -> None:
    import timm

    torch.manual_seed(0)
    reference = timm.create_model(TIMM[name], pretrained=False, num_classes=10).eval()
    ours = create_model(name, 10).eval()
    assert set(ours.state_dict()) == set(reference.state_dict())
    ours.load_state_dict(reference.state_dict())  # strict
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        out = ours.forward_features(x)
        torch.testing.assert_close(out.logits, reference(x))  # DeiT: timm's eval logits average both heads
        if name != "regnety_16gf":
            tokens = reference.forward_features(x)  # timm: (B, N, D) after the final norm
            torch.testing.assert_close(out.final_map, tokens_to_map(tokens))
            torch.testing.assert_close(map_to_tokens(out.final_map), tokens)
        else:
            torch.testing.assert_close(out.final_map, reference.forward_features(x))


def test_drop_path_schedule_and_train_mode() -> None:
    from timm.layers import DropPath

    torch.manual_seed(0)
    vit = create_model("vit_s", 10)
    vit.set_drop_path(0.1)
    rates = [block.drop_path1.drop_prob if isinstance(block.drop_path1, DropPath) else 0.0 for block in vit.blocks]
    assert rates == pytest.approx([0.1 * i / 11 for i in range(12)])  # timm: linspace(0, rate, depth)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        vit.eval()
        assert torch.equal(vit(x), vit(x))  # inactive in eval mode
        vit.train()
        assert not torch.equal(vit(x), vit(x))
    with pytest.raises(Exception, match="stochastic depth"):
        create_model("resnet18", 10).set_drop_path(0.1)


def test_dropout_is_the_vit_papers() -> None:
    import timm

    vit = create_model("vit_s", 10)
    vit.set_dropout(0.1)
    reference = timm.create_model("vit_small_patch16_224", num_classes=10, proj_drop_rate=0.1, pos_drop_rate=0.1)
    rates = {n: m.p for n, m in vit.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {n: m.p for n, m in reference.named_modules() if isinstance(m, torch.nn.Dropout)}
    with pytest.raises(Exception, match="dropout"):
        create_model("resnet18", 10).set_dropout(0.1)
