"""How a run computes, beyond what it computes: memory layout, compilation and the exact teacher-output cache.

These are the ``numerics`` group of a run's config (``--numerics.channels_last true``, ``numerics: {...}`` in
YAML); bf16 autocast is Lightning's own ``trainer.precision: bf16-mixed``.  The ``fast`` preset turns on bf16,
channels_last and compilation; ``full`` keeps the references' fp32 eager arithmetic.  Every setting changes the
floating-point result slightly, so each one that differs from its default is part of a run's identity
(``benchmarks.numerics.normalize_numerics``): fast and reference runs never share a table cell, and a config that
leaves the group out is exactly the run it always was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

__all__ = ["Numerics", "CompileMode", "compile_network", "uses_cuda_graphs"]

CompileMode = Literal["none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


@dataclass(frozen=True)
class Numerics:
    """Memory layout, compilation and teacher-output caching of a run (defaults: the references' eager fp32).

    Args:
        channels_last: keep the networks' weights and the input batches in ``torch.channels_last`` (NHWC) memory
            format, which cuDNN's tensor-core convolutions prefer under bf16.
        compile: ``torch.compile`` mode of the student's and the teacher's forward passes (``forward`` and
            ``forward_features``; the losses stay eager): ``none`` (eager), ``default``, ``reduce-overhead``
            (CUDA graphs on a GPU: removes the per-kernel launch cost of a small-batch step), ``max-autotune``
            or ``max-autotune-no-cudagraphs``.  On a CPU the CUDA-graph modes compile as ``default`` does.
        teacher_cache: read the teacher's outputs for each training view from an exact, precomputed cache
            instead of running the teacher (``kd_modules.teacher_cache``; methods that read only the teacher's
            logits / pooled embedding, on data whose augmentation has enumerable views such as CIFAR's 162 crop +
            flip views).  Where it does not apply the run says so and runs the teacher.
        teacher_cache_dtype: storage of the cached outputs: ``float16`` (half the memory; <= 1e-3 relative from
            the float32 teacher) or ``float32`` (the teacher's own values).
    """

    channels_last: bool = False
    compile: CompileMode = "none"
    teacher_cache: bool = False
    teacher_cache_dtype: Literal["float16", "float32"] = "float16"

    @property
    def is_reference(self) -> bool:
        return self == Numerics()


def uses_cuda_graphs(mode: str) -> bool:
    return mode in ("reduce-overhead", "max-autotune")


def compile_network(network: nn.Module, mode: str) -> None:
    """Compile ``network.forward`` and ``network.forward_features`` in place (instance attributes).

    The module itself is not wrapped, so its state-dict keys, checkpoints and exports stay those of the eager
    network.
    """
    if mode == "none":
        return
    options = {"mode": mode}
    network.forward = torch.compile(network.forward, **options)  # type: ignore[method-assign]
    if hasattr(network, "forward_features"):
        network.forward_features = torch.compile(network.forward_features, **options)  # type: ignore[method-assign]
