"""ImageNet networks built by ``timm`` behind the network contract: ViT-S/16, ViT-B/16 (= DeiT-B), DeiT-B with its
distillation token, and RegNetY-16GF (DeiT's and ND's CNN teacher).

timm builds the modules and their initialisation; the wrappers register timm's own submodules under timm's names,
so timm's state dicts load key for key (a test checks the key sets against ``timm.create_model`` and the outputs
against timm's forward).

**Transformers as feature maps.**  A ViT is a stem (patch embedding, class [and distillation] token, position
embedding), ``depth`` blocks, a final LayerNorm and a head on the class token.  The contract's maps are token maps:
a (B, N, D) token sequence is exposed as a (B, D, 1, N) map (D channels, one row of N positions: the prefix tokens,
then the 14 x 14 patches in raster order), so channel-wise and location-wise methods (FitNet's regressor, AT,
letKD's per-location words, KCD's channel matching) read D channels at N locations.  The blocks are grouped into
``num_stages`` stages of equal depth (4 by default: blocks 1-3, 4-6, 7-9, 10-12 of a 12-block ViT), so "the last
stage" is the last block's output.  A stage is one unit (its blocks run on tokens inside it; no insertion point
within a stage).  Blocks end in a residual sum, not an activation: ``pre == post`` (as MobileNetV2's linear
bottlenecks).  The neck is the final LayerNorm; the pooled embedding is the class token after it (timm's
``global_pool="token"``), the classifier timm's ``head``.

**DeiT with distillation token** (``deit_b_distilled``): the embedding is ``(cls + dist) / 2`` and the logits are
``(head(cls) + head_dist(dist)) / 2`` — DeiT's inference and the ND official code's embedding
(``ImageNet/DeiT/Models/deit.py``); both heads' logits are also in ``extras["cls_logits"]`` /
``extras["dist_logits"]`` for methods that train them apart (DeiT, DeiT++).  Here ``logits`` is therefore not
``classifier(embedding)``: the classifier is the class-token head.

**RegNetY-16GF** (``regnety_16gf``, timm ``regnety_160``; DeiT's released teacher ``regnety_160-a5fe301d.pth``): a
CNN with timm's stem and stages s1-s4; ``pre`` is each stage's last residual sum before its final ReLU and
``post = relu(pre)``, as for the torchvision ResNets.

**Regularisation of the ViT recipes**: :meth:`TimmViT.set_drop_path` sets timm's linearly increasing stochastic-depth
rates on the blocks (timm's ``drop_path_rate``: DeiT, MAE), :meth:`TimmViT.set_dropout` the ViT paper's dropout
(timm's ``pos_drop_rate`` and ``proj_drop_rate``); the base module applies the recipe's rates to a student.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from models.contract import FeatureOutput, FeatureShape, FeatureUnavailable, KDNet, classifier_at
from models.layers import halving_shapes, identity_activation
from models.registry import register_model

__all__ = ["TimmViT", "TimmRegNet", "TokenStage"]


def _timm():  # type: ignore[no-untyped-def]
    import timm

    return timm


def tokens_to_map(tokens: Tensor) -> Tensor:
    """(B, N, D) tokens -> (B, D, 1, N) map (a view)."""
    return tokens.transpose(1, 2).unsqueeze(2)


def map_to_tokens(feature_map: Tensor) -> Tensor:
    """(B, D, 1, N) map -> (B, N, D) tokens (a view)."""
    return feature_map.squeeze(2).transpose(1, 2)


class TokenStage(nn.Module):
    """A run of transformer blocks on a token map: (B, D, 1, N) in, tokens through the blocks, (B, D, 1, N) out.

    Not registered in the network (the blocks are, under timm's ``blocks.<i>`` names); it holds them in a list.
    """

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self._blocks = blocks

    def forward(self, feature_map: Tensor) -> Tensor:
        tokens = map_to_tokens(feature_map)
        for block in self._blocks:
            tokens = block(tokens)
        return tokens_to_map(tokens)


class TimmViT(KDNet):
    """A timm Vision Transformer (optionally DeiT's distilled variant) behind the contract (module docs).

    Args:
        timm_name: the timm architecture, e.g. ``vit_base_patch16_224``, ``deit_base_distilled_patch16_224``.
        num_classes: classifier width.
        num_stages: how many equal groups of blocks the contract's stages are.
        timm_args: further arguments of timm's ``create_model`` that change the architecture (``img_size``,
            ``patch_size``, ``depth``: the small ViTs of tests and probes; the registered networks pass none).
    """

    def __init__(self, timm_name: str, num_classes: int = 1000, num_stages: int = 4, **timm_args: Any) -> None:
        super().__init__()
        vit = _timm().create_model(timm_name, pretrained=False, num_classes=num_classes, **timm_args)
        if getattr(vit, "global_pool", "token") != "token" or vit.reg_token is not None or vit.no_embed_class:
            raise ValueError(f"{timm_name}: only class-token ViTs with class-token position embeddings are wrapped")
        # timm's submodules and parameters under timm's own names (state dicts load key for key); the timm object
        # itself is kept unregistered for its position-embedding helper, which reads the same parameters.
        object.__setattr__(self, "_vit", vit)
        for name, child in vit.named_children():
            self.add_module(name, child)
        for name, parameter in vit.named_parameters(recurse=False):
            self.register_parameter(name, parameter)
        self.distilled = hasattr(vit, "dist_token")
        depth = len(vit.blocks)
        if depth % num_stages:
            raise ValueError(f"{timm_name}: {depth} blocks do not split into {num_stages} equal stages")
        per = depth // num_stages
        blocks = list(vit.blocks)
        self.stages = [nn.Sequential(TokenStage(blocks[i : i + per])) for i in range(0, depth, per)]
        self.stage_activations = [identity_activation] * num_stages
        self.input_size = int(vit.patch_embed.img_size[0])
        tokens = vit.patch_embed.num_patches + vit.num_prefix_tokens
        shape = FeatureShape(vit.embed_dim, 1, tokens)
        self.stem_shape, self.stage_shapes, self.final_shape = shape, [shape] * num_stages, shape
        self.drop_path_rate = 0.0

    classifier = classifier_at("head")

    def forward_stem(self, x: Tensor) -> Tensor:
        vit = self._vit
        tokens = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        return tokens_to_map(tokens)

    def forward_neck(self, x: Tensor) -> Tensor:
        return tokens_to_map(self.norm(map_to_tokens(x)))

    def pool(self, final_map: Tensor) -> Tensor:
        tokens = final_map[:, :, 0]
        if self.distilled:
            return (tokens[:, :, 0] + tokens[:, :, 1]) / 2
        return tokens[:, :, 0]

    def insertion_points(self) -> list[str]:
        return [f"stage{k}" for k in range(1, self.num_stages + 1)] + ["neck"]

    def _two_heads(self, final_map: Tensor) -> tuple[Tensor, Tensor]:
        tokens = final_map[:, :, 0]
        return self.head(tokens[:, :, 0]), self.head_dist(tokens[:, :, 1])

    def forward_features(self, x: Tensor) -> FeatureOutput:
        out = super().forward_features(x)
        if self.distilled:
            cls_logits, dist_logits = self._two_heads(out.final_map)
            out.logits = (cls_logits + dist_logits) / 2
            out.extras["cls_logits"], out.extras["dist_logits"] = cls_logits, dist_logits
        return out

    def forward_head(self, last_stage_output: Tensor) -> Tensor:
        if not self.distilled:
            return super().forward_head(last_stage_output)
        cls_logits, dist_logits = self._two_heads(self.forward_neck(last_stage_output))
        return (cls_logits + dist_logits) / 2

    def set_drop_path(self, rate: float) -> None:
        """timm's stochastic depth: block ``i`` of ``depth`` drops its residual branches with ``rate * i / (depth-1)``."""
        from timm.layers import DropPath

        depth = len(self.blocks)
        for i, block in enumerate(self.blocks):
            p = rate * i / max(depth - 1, 1)
            for name in ("drop_path1", "drop_path2"):
                setattr(block, name, DropPath(p) if p > 0 else nn.Identity())
        self.drop_path_rate = rate

    def set_dropout(self, rate: float) -> None:
        """The ViT paper's dropout: after the position embedding and after every dense layer but the qkv projection
        (timm's ``pos_drop_rate`` and ``proj_drop_rate``: ``pos_drop``, ``attn.proj_drop``, ``mlp.drop1/2``)."""
        self.pos_drop.p = rate
        for block in self.blocks:
            block.attn.proj_drop.p = block.mlp.drop1.p = block.mlp.drop2.p = rate


class _PreActivation(nn.Module):
    """timm RegNet's ``Bottleneck`` up to its residual sum, before ``act3`` (the stage's pre-activation tap)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self._block = [block]  # not registered: the block is, under timm's name

    def forward(self, x: Tensor) -> Tensor:
        block = self._block[0]
        shortcut = x
        x = block.conv3(block.se(block.conv2(block.conv1(x))))
        if block.downsample is not None:
            x = block.drop_path(x) + block.downsample(shortcut)
        return x


class TimmRegNet(KDNet):
    """A timm RegNet (Y) behind the contract: stem, stages s1-s4, global average pooling, ``head.fc``.

    Args:
        timm_name: the timm architecture (``regnety_160``: RegNetY-16GF).
        num_classes: classifier width.
    """

    def __init__(self, timm_name: str, num_classes: int = 1000) -> None:
        super().__init__()
        net = _timm().create_model(timm_name, pretrained=False, num_classes=num_classes)
        for name, child in net.named_children():
            self.add_module(name, child)
        stages = [getattr(net, f"s{k}") for k in range(1, 5)]
        for stage in stages:
            last = list(stage.children())[-1]
            if not isinstance(getattr(last, "act3", None), nn.ReLU):
                raise ValueError(f"{timm_name}: the wrapper expects residual blocks ending in a ReLU (act3)")
        self.stages = [nn.Sequential(*list(s.children())[:-1], _PreActivation(list(s.children())[-1])) for s in stages]
        self.stage_activations: list[Callable[[Tensor], Tensor]] = [torch.relu] * 4
        self.input_size = 224
        self.stem_shape = FeatureShape(int(net.stem.conv.out_channels), 112, 112)
        self.stage_shapes = halving_shapes([int(s.b1.conv3.conv.out_channels) for s in stages], 56)
        self.final_shape = self.stage_shapes[-1]

    classifier = classifier_at("head.fc")

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.stem(x)

    def forward_neck(self, x: Tensor) -> Tensor:
        return self.final_conv(x)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        raise FeatureUnavailable("TimmRegNet: a residual sum, not a BatchNorm, precedes each stage's final ReLU")


# (name, timm architecture): ViT-S/16 and ViT-B/16 (DeiT-S/B are the same architectures), DeiT-B with distillation.
_VITS = {
    "vit_s": "vit_small_patch16_224",
    "vit_b": "vit_base_patch16_224",
    "deit_b_distilled": "deit_base_distilled_patch16_224",
}


for _name, _timm_name in _VITS.items():
    register_model(_name, dataset="imagenet")(lambda num_classes=1000, _t=_timm_name: TimmViT(_t, num_classes))


@register_model("regnety_16gf", dataset="imagenet")
def regnety_16gf(num_classes: int = 1000) -> KDNet:
    """RegNetY-16GF (timm ``regnety_160``), DeiT's and ND's CNN teacher."""
    return TimmRegNet("regnety_160", num_classes)
