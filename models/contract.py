"""The network contract every kdbench model follows.

A network is a *stem*, an ordered list of *stages* (each a sequence of blocks), a *neck* (what sits between the
last stage and global pooling: nothing for CIFAR ResNets, BN-ReLU for pre-activation WRNs, the 1x1 conv to 1280
channels for MobileNetV2, ...), a global *pool* and a linear *classifier*.

Distillation methods never reach into a network's modules by name. They call :meth:`KDNet.forward_features`
once and read, for every stage, the output *before* and *after* its final activation, the map entering global
pooling (``final_map``), the pooled ``embedding`` and the ``logits``.  Methods that put a trainable module into the
student's forward path (NORM's FT, letKD's KD layers) register it with :meth:`KDNet.insert`; it then runs in
every forward, is saved in the checkpoint, and can return auxiliary tensors (the distilled map) through
``FeatureOutput.extras``.

The two taps of every stage carry the reference implementations' meaning (RepDistiller/mdistiller ``feat`` and
``preact`` lists): ``stages_post[i]`` is the stage's feature as the references hand it to FitNet, AT, ...;
``stages_pre[i]`` is its pre-activation form (AB, OFD).  For post-activation networks (ResNet, VGG, ShuffleNetV1,
CIFAR ResNet50) ``post == stage_activations[i](pre)`` with a ReLU; MobileNetV2's linear bottlenecks have the
identity; ShuffleNetV2 a ReLU then the channel shuffle.  Pre-activation WRNs are the awkward case: the reference
feature is the raw residual sum (never activated) and its pre-activation form is that sum through the *next*
BatchNorm; such networks override :meth:`KDNet.stage_taps` and :meth:`KDNet.stage_transition` (the BN is computed
once and reused by the next block).  Each network documents its case and a contract test checks it.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["FeatureOutput", "FeatureShape", "FeatureUnavailable", "KDNet", "InsertionPoint", "classifier_at"]


@dataclass
class FeatureOutput:
    """Everything one forward pass exposes to a distillation method.

    ``stages_pre[i]`` / ``stages_post[i]`` are stage ``i``'s output before / after its final activation
    (0-based here; ``stage1`` in names and docs).  ``final_map`` is the map that global pooling consumes, after
    the neck and after any module inserted at ``"neck"``.  ``extras`` holds the auxiliary outputs of inserted
    modules, keyed by insertion point.
    """

    stem: Tensor
    stages_pre: list[Tensor]
    stages_post: list[Tensor]
    final_map: Tensor
    embedding: Tensor
    logits: Tensor
    extras: dict[str, object] = field(default_factory=dict)

    def map_tensors(self, fn: Callable[[Tensor], Tensor]) -> FeatureOutput:
        """Apply ``fn`` to every tensor (used to turn inference-mode teacher outputs into ordinary tensors)."""

        def convert(value: object) -> object:
            if isinstance(value, Tensor):
                return fn(value)
            if isinstance(value, (list, tuple)):
                return type(value)(convert(v) for v in value)
            if isinstance(value, dict):
                return {k: convert(v) for k, v in value.items()}
            return value

        return FeatureOutput(**{f.name: convert(getattr(self, f.name)) for f in fields(self)})  # type: ignore[arg-type]


@dataclass(frozen=True)
class FeatureShape:
    """Channels and spatial size of one tap at the network's native input size (no forward pass needed)."""

    channels: int
    height: int
    width: int

    @property
    def chw(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


InsertionPoint = str
"""``"stage<k>"`` (after stage k's activation, 1-based), ``"stage<k>.<j>"`` (after block j of stage k, not the
last block) or ``"neck"`` (the map entering global pooling)."""


class FeatureUnavailable(ValueError):
    """A network does not have the feature a method asked for (e.g. OFD's pre-ReLU BN on a ShuffleNet)."""


def classifier_at(path: str) -> Any:
    """The ``classifier`` property of a network whose final linear layer is registered under the reference's
    (dotted) name instead, e.g. ``classifier = classifier_at("fc")`` (timm's RegNet: ``"head.fc"``)."""
    return property(attrgetter(path))


class KDNet(nn.Module, metaclass=ABCMeta):
    """Base class of every network.  Subclasses register their modules under the reference implementation's
    names (so reference checkpoints load with the plainest key mapping) and implement the hooks below.

    Subclasses must set, in ``__init__``:

    * ``self.stages``: a Python list (not registered again) of the ``nn.Sequential`` stages, in order;
    * ``self.stage_activations``: one module or callable per stage, mapping the pre- to the post-activation output;
    * ``self.input_size``: the native input resolution (32 for CIFAR, 64 Tiny-ImageNet, 224 ImageNet);
    * ``self.stem_shape``, ``self.stage_shapes`` (list of :class:`FeatureShape`) and ``self.final_shape``;
    * ``self.classifier``: the final ``nn.Linear`` (where the reference registers it under another name,
      e.g. ``fc``: ``classifier = classifier_at("fc")``),

    and implement :meth:`forward_stem`, and optionally :meth:`forward_neck` and :meth:`pool`.
    """

    stages: list[nn.Sequential]
    stage_activations: list[Callable[[Tensor], Tensor]]
    input_size: int
    stem_shape: FeatureShape
    stage_shapes: list[FeatureShape]
    final_shape: FeatureShape
    classifier: nn.Linear

    def __init__(self) -> None:
        super().__init__()
        # Inserted modules live in a ModuleDict so that optimisers and checkpoints see them.  The dict is created
        # lazily, so networks without inserts keep exactly the reference state_dict keys.
        self._insert_points: dict[str, str] = {}

    # ----------------------------------------------------------------------------------------- hooks to implement
    @abstractmethod
    def forward_stem(self, x: Tensor) -> Tensor:
        """Input image batch to the stem's output (the first tap, ``FeatureOutput.stem``)."""

    def forward_neck(self, x: Tensor) -> Tensor:
        """Map the last stage's post-activation output to the map that global pooling consumes."""
        return x

    def pool(self, final_map: Tensor) -> Tensor:
        """Global pooling to the embedding (B, D).  Adaptive average pooling unless a network needs otherwise."""
        return torch.flatten(nn.functional.adaptive_avg_pool2d(final_map, 1), 1)

    # ------------------------------------------------------------------------------------------ derived properties
    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def stage_channels(self) -> list[int]:
        return [s.channels for s in self.stage_shapes]

    @property
    def embedding_dim(self) -> int:
        return self.classifier.in_features

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features

    def feature_shapes(self) -> dict[str, FeatureShape]:
        """Every tap's shape at the native input size, keyed by tap name, without running the network."""
        stages = {f"stage{k}": shape for k, shape in enumerate(self.stage_shapes, start=1)}
        return {"stem": self.stem_shape, **stages, "neck": self.final_shape}

    def insertion_points(self) -> list[InsertionPoint]:
        points: list[str] = []
        for k, stage in enumerate(self.stages, start=1):
            points.extend(f"stage{k}.{j}" for j in range(len(stage) - 1))
            points.append(f"stage{k}")
        points.append("neck")
        return points

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth at ``rate`` (the ViT recipes' drop path); networks without it accept only 0."""
        if rate > 0:
            raise FeatureUnavailable(f"{type(self).__name__} has no stochastic depth (drop path {rate} asked)")

    def set_dropout(self, rate: float) -> None:
        """The transformer recipes' dropout after dense layers (ViTs); networks without it accept only 0."""
        if rate > 0:
            raise FeatureUnavailable(f"{type(self).__name__} has no recipe dropout (dropout {rate} asked)")

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The BatchNorm whose output the final ReLU of each stage consumes (OFD's margins come from it)."""
        raise FeatureUnavailable(f"{type(self).__name__} has no BatchNorm directly before each stage's final ReLU")

    # -------------------------------------------------------------------------------------------------- inserts
    def insert(self, point: InsertionPoint, module: nn.Module) -> None:
        """Put ``module`` into the forward path at ``point``: its output replaces the tensor there.

        The module may return a tensor or a ``(tensor, extras)`` pair; ``extras`` lands in
        ``FeatureOutput.extras[point]``.  Inserted modules are submodules (``inserted.<key>``) of the network.
        """
        valid = self.insertion_points()
        if point not in valid:
            raise ValueError(f"unknown insertion point {point!r} for {type(self).__name__}; valid: {', '.join(valid)}")
        key = point.replace(".", "_")
        if not hasattr(self, "inserted"):
            self.inserted = nn.ModuleDict()
        if key in self.inserted:
            raise ValueError(f"a module is already inserted at {point!r}")
        self.inserted[key] = module
        self._insert_points[point] = key

    def remove_insert(self, point: InsertionPoint) -> nn.Module:
        key = self._insert_points.pop(point)
        module = self.inserted[key]
        del self.inserted[key]
        return module

    def _apply_insert(self, point: str, x: Tensor, extras: dict[str, object]) -> Tensor:
        key = self._insert_points.get(point)
        if key is None:
            return x
        out = self.inserted[key](x)
        if isinstance(out, tuple):
            out, extra = out
            extras[point] = extra
        return out

    # -------------------------------------------------------------------------------------------------- forward
    def stage_taps(self, index: int, output: Tensor) -> tuple[Tensor, Tensor]:
        """``(pre, post)`` of stage ``index`` (0-based) from its last block's output.

        Default: the last block returns the tensor before the stage's final activation, so
        ``pre = output`` and ``post = stage_activations[index](output)``.  Networks whose reference features are
        shaped differently (pre-activation WRNs) override this together with :meth:`stage_transition`.
        """
        return output, self.stage_activations[index](output)

    def stage_transition(self, index: int, post: Tensor, pre: Tensor | None) -> Tensor:
        """The input of the next stage (or of the neck) from stage ``index``'s possibly replaced ``post`` tensor.

        ``pre`` is the tap computed from the same ``post`` when no inserted module replaced it (so a network can
        reuse it instead of recomputing), else None.  Default: the next stage consumes ``post`` itself.
        """
        return post

    def forward_features(self, x: Tensor) -> FeatureOutput:
        extras: dict[str, object] = {}
        x = self.forward_stem(x)
        stem = x
        pre: list[Tensor] = []
        post: list[Tensor] = []
        has_inserts = bool(self._insert_points)
        for index, stage in enumerate(self.stages):
            k = index + 1
            last = len(stage) - 1
            for j, block in enumerate(stage):
                x = block(x)
                if has_inserts and j < last:
                    x = self._apply_insert(f"stage{k}.{j}", x, extras)
            stage_pre, stage_post = self.stage_taps(index, x)
            pre.append(stage_pre)
            post.append(stage_post)
            replaced = self._apply_insert(f"stage{k}", stage_post, extras) if has_inserts else stage_post
            x = self.stage_transition(index, replaced, stage_pre if replaced is stage_post else None)
        final_map = self.forward_neck(x)
        if has_inserts:
            final_map = self._apply_insert("neck", final_map, extras)
        embedding = self.pool(final_map)
        logits = self.classifier(embedding)
        return FeatureOutput(stem, pre, post, final_map, embedding, logits, extras)

    def forward_head(self, last_stage_output: Tensor) -> Tensor:
        """Logits from the last stage's ``post`` map (transition, neck, pooling, classifier) — e.g. to reuse a
        teacher's head on a student feature (SimKD)."""
        x = self.stage_transition(self.num_stages - 1, last_stage_output, None)
        return self.classifier(self.pool(self.forward_neck(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x).logits
