"""Rough time estimates for planned runs (``--dry-run``), and measured ones (``--dry-run --measure``).

**Model** (spec performance.md §1.3-1.4): a distillation step costs a teacher forward plus a student forward and
backward, ``2 * (MACs_teacher + 3 * MACs_student)`` FLOPs per image, executed at an *effective* 100 TFLOP/s,
plus a fixed per-step overhead of 3 ms (kernel launches of an eager small-batch step on an H100).  For CIFAR
pairs this lands within the 5-30 min/run range the performance spec estimates for eager H100 runs; it is a
planning number, not a measurement.  Networks not in the zoo yet have no estimate.

**Measurement** (:func:`measure_run`): a few real optimisation steps and evaluation batches of a planned run on
this machine (random teacher weights stand in for an untrained teacher), timed by :class:`StepTimer` in wall and
CPU time; the run's time is then ``train step time x steps + evaluation batch time x evaluation batches``.  This
is how the CPU time of the ``fmnist`` table is estimated before it is run (``--dry-run --measure``, one thread).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from functools import cache
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from models import UnknownModelError, create_model
from models.profile import count_macs, meta_model

__all__ = [
    "macs_per_image",
    "estimate_gpu_seconds",
    "run_steps",
    "EFFECTIVE_FLOPS",
    "STEP_OVERHEAD_S",
    "DATASET_SIZES",
    "StepTimer",
    "measure_run",
    "NotMeasurable",
]

EFFECTIVE_FLOPS = 100e12
STEP_OVERHEAD_S = 3e-3
#: (train images, evaluation images, classes) per table dataset, for datasets whose datamodule has not landed.
DATASET_SIZES = {
    "cifar100": (50_000, 10_000, 100),
    "tiny-imagenet": (100_000, 10_000, 200),
    "imagenet": (1_281_167, 50_000, 1000),
    "fashion-mnist": (60_000, 10_000, 10),
}


@cache
def macs_per_image(arch: str, num_classes: int = 100) -> float | None:
    """Conv + linear multiply-accumulates for one image at the network's native input size (None: not in the zoo).

    Counted by :func:`models.profile.count_macs`, the project's one MAC counter (FlopCounterMode on the meta
    device: shapes only, so ImageNet networks are as cheap to count as CIFAR ones).
    """
    try:
        return float(count_macs(meta_model(arch, num_classes)))
    except UnknownModelError:
        return None


def dataset_sizes(dataset: str) -> tuple[int, int, int]:
    """(train images, evaluation images, classes) of a table dataset."""
    from datamodules import DATASETS

    if dataset in DATASETS:
        cls = DATASETS[dataset]
        fallback = DATASET_SIZES.get(dataset, (cls.train_size, 10_000, cls.num_classes))
        return cls.train_size, int(getattr(cls, "eval_size", fallback[1])), cls.num_classes
    return DATASET_SIZES.get(dataset, (50_000, 10_000, 100))


def run_steps(config: dict[str, Any], train_size: int) -> tuple[int, int]:
    """(optimisation steps, epochs) of a run: ``max_steps`` when set, else epochs x batches per epoch."""
    trainer = config.get("trainer", {})
    batch = int(config.get("data", {}).get("init_args", {}).get("batch_size", 64))
    devices = trainer.get("devices", 1)
    batch *= devices if isinstance(devices, int) and devices > 1 else 1
    steps_per_epoch = -(-train_size // batch)
    limit = trainer.get("limit_train_batches")
    if isinstance(limit, int):
        steps_per_epoch = min(steps_per_epoch, limit)
    elif isinstance(limit, float):
        steps_per_epoch = max(1, int(steps_per_epoch * limit))
    max_steps = trainer.get("max_steps")
    max_epochs = trainer.get("max_epochs")
    if max_epochs is None:
        max_epochs = 240
    if isinstance(max_steps, int) and max_steps > 0:
        steps = max_steps if max_epochs in (-1, None) else min(max_steps, steps_per_epoch * max_epochs)
    else:
        steps = steps_per_epoch * max(int(max_epochs), 0)
    return steps, -(-steps // steps_per_epoch)


def estimate_gpu_seconds(config: dict[str, Any], train_size: int, num_classes: int) -> float | None:
    model_args = config.get("model", {}).get("init_args", {})
    student = model_args.get("student")
    teacher = (model_args.get("teacher") or {}).get("arch")
    batch = int(config.get("data", {}).get("init_args", {}).get("batch_size", 64))
    steps, _ = run_steps(config, train_size)
    images = steps * batch
    student_macs = macs_per_image(student, num_classes) if student else None
    if student_macs is None:
        return None
    macs = 3.0 * student_macs
    if teacher and config["model"].get("class_path") != "kd_modules.Vanilla":
        teacher_macs = macs_per_image(teacher, num_classes)
        if teacher_macs is None:
            return None
        macs += teacher_macs
    return images * 2.0 * macs / EFFECTIVE_FLOPS + steps * STEP_OVERHEAD_S


# ---------------------------------------------------------------------------------------------- measurement
class StepTimer(Callback):
    """Wall and CPU time of every training step and evaluation batch, written as JSON to ``path`` when fit ends.

    CPU time (all threads of the process) tells what a step costs when the machine is shared, as long as the
    process runs one thread (several threads spin-wait on busy cores and inflate it).

    Args:
        path: where to write ``{"train": [s, ...], "eval": [...], "train_cpu": [...], "eval_cpu": [...]}``.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.train: list[float] = []
        self.eval: list[float] = []
        self.train_cpu: list[float] = []
        self.eval_cpu: list[float] = []
        self._started = 0.0
        self._started_cpu = 0.0

    def _sync(self, module: Any) -> None:
        if torch.cuda.is_available() and getattr(module, "device", torch.device("cpu")).type == "cuda":
            torch.cuda.synchronize()

    def _start(self, module: Any) -> None:
        self._sync(module)
        self._started, self._started_cpu = time.perf_counter(), time.process_time()

    def _stop(self, module: Any, wall: list[float], cpu: list[float]) -> None:
        self._sync(module)
        wall.append(time.perf_counter() - self._started)
        cpu.append(time.process_time() - self._started_cpu)

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        self._start(module)

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._stop(module, self.train, self.train_cpu)

    def on_validation_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int, *args: Any) -> None:
        self._start(module)

    def on_validation_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, *args: Any) -> None:
        self._stop(module, self.eval, self.eval_cpu)

    def on_fit_end(self, trainer: Any, module: Any) -> None:
        timings = {"train": self.train, "eval": self.eval, "train_cpu": self.train_cpu, "eval_cpu": self.eval_cpu}
        Path(self.path).write_text(json.dumps(timings))


class NotMeasurable(Exception):
    """A planned run that cannot be timed before an earlier run of the plan has produced its input."""


def _stand_in_for_earlier_runs(config: dict[str, Any], folder: Path, num_classes: int) -> None:
    """Replace what a run reads from earlier runs that have not run yet by inputs of the same cost.

    An untrained teacher and ``ce_student_checkpoint`` (KCD's CE-only student) become random networks of their
    architectures; ``student_init`` (AB, FSP, KCD start from another run's weights) is dropped: a fresh draw costs
    the same.  Any other missing checkpoint (FT's paraphraser) raises :class:`NotMeasurable`.
    """
    from models.checkpoints import export_network

    def random_network(arch: str) -> str:
        path = folder / f"stand_in_{arch}.pth"
        export_network(create_model(arch, num_classes), arch, path)
        return str(path)

    init = config.get("model", {}).get("init_args", {})
    teacher = init.get("teacher")
    if isinstance(teacher, dict) and not Path(str(teacher.get("checkpoint"))).is_file():
        teacher["checkpoint"] = random_network(teacher["arch"])
    for key, value in list(init.items()):
        if not isinstance(value, str) or not value.endswith((".pth", ".ckpt")) or Path(value).is_file():
            continue
        if key == "student_init":
            del init[key]
        elif key == "ce_student_checkpoint":
            init[key] = random_network(init["student"])
        else:
            raise NotMeasurable(f"needs {key} from an earlier run of the plan (measure again once it has run)")


def measure_run(config: dict[str, Any], train_size: int, eval_size: int, steps: int = 6) -> dict[str, float]:
    """Time ``steps`` real training steps and two evaluation batches of ``config`` here; extrapolate the run.

    The first two training steps (warm-up, allocation) are not counted.  An untrained teacher is replaced by
    randomly initialised weights of its architecture (the cost does not depend on the weights).
    """
    from benchmarks.cli import KDBenchCLI
    from benchmarks.configs import deep_merge
    from benchmarks.execute import dump_config, quiet_lightning

    full_steps, epochs = run_steps(config, train_size)
    eval_batch = int(config.get("data", {}).get("init_args", {}).get("eval_batch_size", 500))
    with tempfile.TemporaryDirectory(prefix="kdbench-measure-") as tmp:
        folder = Path(tmp)
        trial = deep_merge(config, {})
        _stand_in_for_earlier_runs(trial, folder, dataset_classes(config))
        timings = folder / "timings.json"
        trial = deep_merge(
            trial,
            {
                "trainer": {
                    "max_epochs": 1,
                    "max_steps": -1,
                    "limit_train_batches": steps,
                    "limit_val_batches": 2,
                    "val_check_interval": 1.0,
                    "check_val_every_n_epoch": 1,
                    "enable_progress_bar": False,
                    "enable_model_summary": False,
                    "enable_checkpointing": False,
                    "logger": False,
                    "callbacks": [{"class_path": "benchmarks.cost.StepTimer", "init_args": {"path": str(timings)}}],
                },
                "run": {"dir": str(folder / "run"), "wandb": "disabled", "export_final": False},
            },
        )
        (folder / "config.yaml").write_text(dump_config(trial, sort_keys=True))
        with quiet_lightning():
            KDBenchCLI(args=["fit", "--config", str(folder / "config.yaml")])
        measured = json.loads(timings.read_text())

    def median(values: list[float], skip: int = 0) -> float:
        return statistics.median(values[skip:] or values) if values else 0.0

    train_step, train_cpu = median(measured["train"], 2), median(measured["train_cpu"], 2)
    eval_step, eval_cpu = median(measured["eval"]), median(measured["eval_cpu"])
    eval_batches = -(-eval_size // eval_batch)
    evaluations = _evaluations(config, full_steps, epochs)
    return {
        "train_step_s": train_step,
        "eval_batch_s": eval_step,
        "train_step_cpu_s": train_cpu,
        "eval_batch_cpu_s": eval_cpu,
        "steps": full_steps,
        "evaluations": evaluations,
        "seconds": train_step * full_steps + eval_step * eval_batches * evaluations,
        "cpu_seconds": train_cpu * full_steps + eval_cpu * eval_batches * evaluations,
    }


def _evaluations(config: dict[str, Any], steps: int, epochs: int) -> int:
    interval = config.get("trainer", {}).get("val_check_interval")
    if isinstance(interval, int) and config.get("trainer", {}).get("check_val_every_n_epoch", 1) is None:
        return max(1, steps // interval)
    return max(1, epochs)


def dataset_classes(config: dict[str, Any]) -> int:
    """The class count of a config's datamodule (its class attribute ``num_classes``)."""
    import importlib

    class_path = str(config.get("data", {}).get("class_path", "datamodules.CIFAR100"))
    module, _, name = class_path.rpartition(".")
    return int(getattr(getattr(importlib.import_module(module), name), "num_classes", 100))
