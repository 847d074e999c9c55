"""Rough GPU-time estimates for planned runs (``--dry-run``).

Model (spec performance.md §1.3-1.4): a distillation step costs a teacher forward plus a student forward and
backward, ``2 * (MACs_teacher + 3 * MACs_student)`` FLOPs per image, executed at an *effective* 100 TFLOP/s,
plus a fixed per-step overhead of 3 ms (kernel launches of an eager small-batch step on an H100).  For CIFAR
pairs this lands within the 5-30 min/run range the performance spec estimates for eager H100 runs; it is a
planning number, not a measurement.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from models.profile import count_macs, meta_model

__all__ = ["macs_per_image", "estimate_gpu_seconds", "EFFECTIVE_FLOPS", "STEP_OVERHEAD_S"]

EFFECTIVE_FLOPS = 100e12
STEP_OVERHEAD_S = 3e-3


@cache
def macs_per_image(arch: str, num_classes: int = 100) -> float:
    """Conv + linear multiply-accumulates for one image at the network's native input size.

    Counted by :func:`models.profile.count_macs` (the one MAC counter of the project: FlopCounterMode on the meta
    device: shapes only, no memory and no arithmetic, so ImageNet networks are as cheap as CIFAR ones).
    """
    return float(count_macs(meta_model(arch, num_classes)))


def estimate_gpu_seconds(config: dict[str, Any], train_size: int, num_classes: int) -> float:
    model_args = config.get("model", {}).get("init_args", {})
    student = model_args.get("student")
    teacher = (model_args.get("teacher") or {}).get("arch")
    trainer = config.get("trainer", {})
    batch = int(config.get("data", {}).get("init_args", {}).get("batch_size", 64))
    epochs = int(trainer.get("max_epochs", 240))
    steps_per_epoch = -(-train_size // batch)
    limit = trainer.get("limit_train_batches")
    if isinstance(limit, int):
        steps_per_epoch = min(steps_per_epoch, limit)
    steps = steps_per_epoch * epochs
    images = steps * batch
    macs = 3.0 * macs_per_image(student, num_classes)
    if teacher and config["model"].get("class_path") != "kd_modules.Vanilla":
        macs += macs_per_image(teacher, num_classes)
    return images * 2.0 * macs / EFFECTIVE_FLOPS + steps * STEP_OVERHEAD_S
