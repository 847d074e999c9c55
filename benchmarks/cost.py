"""Time estimates for planned runs (``--dry-run``), and measured ones (``--dry-run --measure``).

**GPU model** (:func:`estimate_gpu_seconds`, spec performance.md §1.3-1.4).  A training step is bounded by the
larger of its arithmetic and its host-side dispatch (an asynchronous GPU overlaps the two)::

    step = max(FLOPs / rate(precision),  network ops x cost(compile) + other ops x cost(eager))

* FLOPs: ``2 * (MACs_teacher + 3 * MACs_student)`` per image (conv + linear, ``models.profile.count_macs``); the
  teacher's part is gone when a teacher cache serves the run;
* operators per step (*measured*): the networks' forward (teacher, eval) and training forward + backward (student)
  counted by dispatching them on the meta device; everything else a method's step runs (losses, its own modules,
  the optimiser, Lightning's logging, the augmentation) counted in real CPU steps of every method
  (``python -m benchmarks.cost calibrate-ops`` -> ``benchmarks/results/op_counts.json``).  Operator counts do not
  depend on the device, which is why a CPU can measure them; one exception is corrected: the CPU's SGD loops over
  the tensors while a GPU's uses a few multi-tensor (``foreach``) kernels, both counted;
* *assumptions* (:data:`GPU_ASSUMPTIONS`, until GPU measurements exist): the effective arithmetic rate of an
  H100-class GPU (100 TFLOP/s in fp32/TF32, 200 in bf16-mixed) and the host cost per operator (8 us eager;
  4 us compiled without CUDA graphs; 1.25 us with CUDA graphs: 2.5 us per kernel, half the kernels after fusion).
  Only the networks are compiled (``numerics.compile``): the other operators keep the eager cost; plus 0.3 ms of
  Lightning's own Python per step (spec §6.7's bound);
* evaluation: each evaluation's batches cost the student's forward the same way;
* GPU calibration: ``benchmarks/results/gpu_calibration.json`` (written by ``python -m benchmarks.cost
  calibrate-gpu`` from ``benchmarks.speed train`` results measured on a GPU) holds measured / modelled step-time
  ratios per numerics; where present, estimates of that numerics are scaled by their median.

**Measurement** (:func:`measure_run`): a few real optimisation steps and evaluation batches of a planned run on
this machine (random teacher weights stand in for an untrained teacher), timed by :class:`StepTimer` in wall and
CPU time; the run's time is then ``train step time x steps + evaluation batch time x evaluation batches``.  This
is how the CPU time of the ``fmnist`` table is estimated before it is run (``--dry-run --measure``, one thread).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from lightning.pytorch.callbacks import Callback

from benchmarks.errors import KDBenchError, user_errors
from benchmarks.execute import dump_config, quiet_lightning
from benchmarks.numerics import numerics_label, numerics_of
from benchmarks.probe import OpCount
from datamodules import DATASETS
from kd_modules import UnknownMethodError, method_class, method_names
from models import UnknownModelError, create_model
from models.profile import count_macs, meta_model

__all__ = [
    "macs_per_image",
    "network_ops",
    "step_model",
    "estimate_gpu_seconds",
    "teacher_cache_build_seconds",
    "model_description",
    "GPU_ASSUMPTIONS",
    "run_steps",
    "EFFECTIVE_FLOPS",
    "DATASET_SIZES",
    "StepTimer",
    "measure_run",
    "NotMeasurable",
]

EFFECTIVE_FLOPS = 100e12  # fp32 (TF32 convolutions): the reference numerics
#: Assumed H100-class figures (spec performance.md §1.4), replaced in effect by a GPU calibration when one exists.
GPU_ASSUMPTIONS: dict[str, Any] = {
    "flops": {"32-true": 100e12, "bf16-mixed": 200e12, "16-mixed": 200e12},
    "seconds_per_op": {
        "none": 8e-6,
        "default": 4e-6,
        "max-autotune-no-cudagraphs": 4e-6,
        "reduce-overhead": 1.25e-6,
        "max-autotune": 1.25e-6,
    },
    "eager_seconds_per_op": 8e-6,
    "step_overhead_s": 3e-4,  # Lightning's own Python per step (hooks, logging), spec §6.7
}
RESULTS_DIR = Path(__file__).resolve().parent / "results"
OP_COUNTS = RESULTS_DIR / "op_counts.json"
GPU_CALIBRATION = RESULTS_DIR / "gpu_calibration.json"
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
    if dataset in DATASETS:
        cls = DATASETS[dataset]
        return cls.train_size, DATASET_SIZES.get(dataset, (0, 10_000))[1], cls.num_classes
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
    max_epochs = 240 if trainer.get("max_epochs") is None else trainer["max_epochs"]
    if isinstance(max_steps, int) and max_steps > 0:
        steps = max_steps if max_epochs in (-1, None) else min(max_steps, steps_per_epoch * max_epochs)
    else:
        steps = steps_per_epoch * max(int(max_epochs), 0)
    return steps, -(-steps // steps_per_epoch)


@cache
def network_ops(arch: str, num_classes: int, train: bool) -> int | None:
    """aten operators of one forward (eval, ``train=False``) or one training forward + cross-entropy + backward of
    ``arch``, dispatched on the meta device (the count does not depend on the batch or the device)."""
    import torch.nn.functional as F

    try:
        model = meta_model(arch, num_classes)
    except UnknownModelError:
        return None
    channels = int(getattr(model, "input_channels", 3))
    images = torch.zeros(2, channels, model.input_size, model.input_size, device="meta")
    if train:
        model.train()
        with OpCount() as counter:
            F.cross_entropy(model(images), torch.zeros(2, dtype=torch.long, device="meta")).backward()
    else:
        with OpCount() as counter, torch.inference_mode():
            model(images)
    return counter.count


@cache
def op_counts() -> dict[str, Any]:
    """The measured operator counts (``benchmarks/results/op_counts.json``), or {} before the first calibration."""
    return json.loads(OP_COUNTS.read_text()) if OP_COUNTS.is_file() else {}


@cache
def gpu_calibration() -> dict[str, float]:
    """numerics label -> median measured / modelled step time on a GPU ({} when nothing was measured)."""
    entries = json.loads(GPU_CALIBRATION.read_text()).get("measurements", []) if GPU_CALIBRATION.is_file() else []
    ratios: dict[str, list[float]] = {}
    for entry in entries:
        ratios.setdefault(entry["numerics"], []).append(entry["measured_step_s"] / entry["model_step_s"])
    return {label: statistics.median(values) for label, values in ratios.items()}


def _method_of(config: dict[str, Any]) -> str:
    return str(config.get("model", {}).get("class_path", "")).rsplit(".", 1)[-1]


def _uses_teacher(config: dict[str, Any]) -> bool:
    try:
        return bool(method_class(_method_of(config)).requires_teacher)
    except UnknownMethodError:
        return bool((config.get("model", {}).get("init_args", {}) or {}).get("teacher"))


def _teacher_cached(config: dict[str, Any]) -> bool:
    return bool((config.get("numerics") or {}).get("teacher_cache"))


def _gpu_rates(config: dict[str, Any]) -> tuple[float, float]:
    """(FLOP/s of the run's precision, host seconds per network operator under its compile mode), as assumed."""
    numerics = numerics_of(config)
    rate = GPU_ASSUMPTIONS["flops"].get(numerics["precision"], EFFECTIVE_FLOPS)
    return rate, GPU_ASSUMPTIONS["seconds_per_op"].get(numerics["compile"], GPU_ASSUMPTIONS["eager_seconds_per_op"])


def step_model(config: dict[str, Any], num_classes: int) -> dict[str, float] | None:
    """The modelled GPU step of a run: FLOPs, operators (network / other) and seconds (None: a network unknown)."""
    model_args = config.get("model", {}).get("init_args", {})
    student = model_args.get("student")
    teacher = (model_args.get("teacher") or {}).get("arch") if _uses_teacher(config) else None
    batch = int(config.get("data", {}).get("init_args", {}).get("batch_size", 64))
    student_macs = macs_per_image(student, num_classes) if student else None
    student_ops = network_ops(student, num_classes, True) if student else None
    if student_macs is None or student_ops is None:
        return None
    macs, net_ops = 3.0 * student_macs, float(student_ops)
    if teacher and not _teacher_cached(config):
        teacher_macs, teacher_ops = macs_per_image(teacher, num_classes), network_ops(teacher, num_classes, False)
        if teacher_macs is None or teacher_ops is None:
            return None
        macs += teacher_macs
        net_ops += teacher_ops
    counts = op_counts()
    method = _method_of(config)
    # On a GPU, SGD steps all tensors with a few multi-tensor (foreach) kernels; the CPU counts loop per tensor.
    extras = {
        name: value - counts["optimizer_ops"][name]["per_tensor"] + counts["optimizer_ops"][name]["foreach"]
        for name, value in counts.get("other_ops", {}).items()
        if name in counts.get("optimizer_ops", {})
    }
    default_extra = statistics.median(extras.values()) if extras else 60.0
    other_ops = float(extras.get(method, default_extra)) + float(counts.get("data_ops", 8))
    rate, net_cost = _gpu_rates(config)
    compute = batch * 2.0 * macs / rate
    host = net_ops * net_cost + other_ops * GPU_ASSUMPTIONS["eager_seconds_per_op"] + GPU_ASSUMPTIONS["step_overhead_s"]
    return {"flops": batch * 2.0 * macs, "network_ops": net_ops, "other_ops": other_ops, "seconds": max(compute, host)}


def estimate_gpu_seconds(config: dict[str, Any], train_size: int, num_classes: int) -> float | None:
    """Modelled GPU seconds of a whole run (training steps and evaluations), scaled by a GPU calibration of its
    numerics when one exists; None when a network is not in the zoo."""
    step = step_model(config, num_classes)
    if step is None:
        return None
    steps, epochs = run_steps(config, train_size)
    student = config["model"]["init_args"]["student"]
    eval_size = dataset_eval_size(config)
    eval_batch = int(config.get("data", {}).get("init_args", {}).get("eval_batch_size", 500))
    rate, net_cost = _gpu_rates(config)
    forward_ops = network_ops(student, num_classes, False) or 0
    batches = -(-eval_size // eval_batch)
    evaluation = max(
        eval_size * 2.0 * (macs_per_image(student, num_classes) or 0.0) / rate, batches * forward_ops * net_cost
    )
    seconds = steps * step["seconds"] + _evaluations(config, steps, epochs) * evaluation
    return seconds * gpu_calibration().get(numerics_label(config), 1.0)


def teacher_cache_build_seconds(config: dict[str, Any], train_size: int, num_classes: int) -> float:
    """Modelled GPU seconds to build a run's teacher cache once: N x views teacher forwards (0 without a cache)."""
    if not _teacher_cached(config):
        return 0.0
    teacher = (config.get("model", {}).get("init_args", {}).get("teacher") or {}).get("arch")
    macs = macs_per_image(teacher, num_classes) if teacher else None
    if not macs:
        return 0.0
    data = config.get("data", {}).get("init_args", {})
    span = 2 * int(data.get("crop_padding") or 4) + 1
    views = span * span * 2
    return train_size * views * 2.0 * macs / GPU_ASSUMPTIONS["flops"]["32-true"]  # computed in float32


def dataset_eval_size(config: dict[str, Any]) -> int:
    name = str(config.get("data", {}).get("class_path", "datamodules.CIFAR100")).rsplit(".", 1)[-1]
    dataset = next((dataset for dataset, cls in DATASETS.items() if cls.__name__ == name), None)
    return dataset_sizes(dataset)[1] if dataset else 10_000


def model_description() -> str:
    """What the GPU estimate is calibrated by, and what is assumed."""
    counts = op_counts()
    calibration = gpu_calibration()
    measured = (
        f"operators per step counted in real CPU steps of {len(counts.get('other_ops', {}))} methods "
        f"({OP_COUNTS.relative_to(RESULTS_DIR.parent.parent)}) and on the meta device per network"
        if counts
        else "operators per network counted on the meta device (no per-method counts yet: run calibrate-ops)"
    )
    gpu = (
        "GPU step times measured for " + ", ".join(f"{label} (x{ratio:.2f})" for label, ratio in calibration.items())
        if calibration
        else "no GPU step time measured yet: every GPU figure is an estimate"
    )
    return (
        f"model in benchmarks/cost.py; calibrated by {measured}; assumed: 100/200 TFLOP/s (fp32/bf16), "
        f"8 / 4 / 1.25 us per operator (eager / compiled / CUDA graphs) and 0.3 ms of Lightning per step on an "
        f"H100-class GPU; {gpu}"
    )


# ---------------------------------------------------------------------------------------------- measurement
def synchronize(device: str) -> None:
    """Wait for the GPU's queued work when ``device`` is ``cuda`` (before reading a clock)."""
    if device == "cuda":
        torch.cuda.synchronize()


class StepTimer(Callback):
    """Wall and CPU time of every training step and evaluation batch, written as JSON to ``path`` when fit ends.

    CPU time (all threads of the process) tells what a step costs when the machine is shared, as long as the
    process runs one thread (several threads spin-wait on busy cores and inflate it).

    Args:
        path: where to write ``{"train": [s, ...], "eval": [...], "train_cpu": [...], "eval_cpu": [...]}``.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.timings: dict[str, list[float]] = {"train": [], "eval": [], "train_cpu": [], "eval_cpu": []}
        self._started = self._started_cpu = 0.0

    def _start(self, module: Any) -> None:
        synchronize(module.device.type)
        self._started, self._started_cpu = time.perf_counter(), time.process_time()

    def _stop(self, module: Any, kind: str) -> None:
        synchronize(module.device.type)
        self.timings[kind].append(time.perf_counter() - self._started)
        self.timings[f"{kind}_cpu"].append(time.process_time() - self._started_cpu)

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        self._start(module)

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._stop(module, "train")

    def on_validation_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int, *args: Any) -> None:
        self._start(module)

    def on_validation_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, *args: Any) -> None:
        self._stop(module, "eval")

    def on_fit_end(self, trainer: Any, module: Any) -> None:
        Path(self.path).write_text(json.dumps(self.timings))


class NotMeasurable(Exception):
    """A planned run that cannot be timed before an earlier run of the plan has produced its input."""


def planned_config(args: argparse.Namespace, store: Path, method: str | None = None) -> tuple[dict[str, Any], Any]:
    """The complete config of the planned student run (method row x pair of the table, under the preset)."""
    from benchmarks.plan import build_plan, load_preset
    from benchmarks.store import RunStore
    from benchmarks.tables import Pair, load_table

    method = method or str(args.method).split(",")[0].strip()
    table = load_table(args.table)
    pair = Pair.parse(args.pair)
    if pair.label not in [p.label for p in table.pairs]:
        table = dataclasses.replace(table, pairs=[pair])  # any pair: the table's recipe and row configs
    plan = build_plan(  # the teacher is a run (its weights do not change a step's cost), never a release to fetch
        table,
        load_preset(args.preset),
        RunStore(store),
        data_root=args.data_root,
        trials=1,
        methods=[method],
        teachers="trained",
    )
    specs = [s for s in plan.ordered() if s.kind == "student" and s.pair is not None and s.pair.label == pair.label]
    if not specs:
        raise KDBenchError(f"table {table.name} has no {method} run for {pair.label}")
    spec = specs[0]
    if spec.blocked:
        raise KDBenchError(f"{spec.label} cannot run: {spec.blocked}")
    return copy.deepcopy(spec.config), table


def _arm_config(config: dict[str, Any], arm: str) -> dict[str, Any]:
    """The config an arm trains: the planned one, with/without the teacher cache, or CE on the same student."""
    config = copy.deepcopy(config)
    numerics = dict(config.get("numerics") or {})
    numerics.pop("teacher_cache", None)
    if arm == "cached":
        numerics["teacher_cache"] = True
    if arm == "reference":  # the references' arithmetic: eager fp32, default layout
        numerics = {}
        config.get("trainer", {}).pop("precision", None)
        config.get("trainer", {}).pop("benchmark", None)
    if arm == "ce":
        init = config["model"]["init_args"]
        config["model"] = {
            "class_path": "kd_modules.Vanilla",
            "init_args": {"student": init["student"], "optim": init.get("optim", {})},
        }
        config.get("data", {}).get("init_args", {}).pop("contrast_k", None)
    config["numerics"] = numerics
    return config


@contextmanager
def stand_in_teacher_cache(folder: Path) -> Iterator[None]:
    """Timing only: teacher caches built meanwhile hold random values of the right shape (a lookup costs the same
    whatever it returns), in the throw-away cache folder ``folder``; both are undone on exit."""
    import kd_modules.teacher_cache as teacher_cache

    def random_outputs(
        teacher, images, render, views, fields, dtype, batch_size, channels_last=False, show_progress=True
    ):  # type: ignore[no-untyped-def]
        widths = {name: teacher_cache.FIELDS[name](teacher) for name in fields}
        return {n: torch.randn(images.shape[0], views, w, device=images.device).to(dtype) for n, w in widths.items()}

    with (
        mock.patch.object(teacher_cache, "compute_teacher_outputs", random_outputs),
        mock.patch.dict(os.environ, {"KDBENCH_CACHE": str(folder)}),
    ):
        yield


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
        # A teacher cache is timed by its lookups: built from stand-in values here (its one-time build, N x views
        # teacher forwards, is teacher_cache_build_seconds' business), never written to the real cache.
        stand_in = stand_in_teacher_cache(folder / "cache") if _teacher_cached(trial) else contextlib.nullcontext()
        with quiet_lightning(), stand_in:
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


# ------------------------------------------------------------------------------------------------ calibration
def _optimizer_ops(module: Any) -> tuple[int, int]:
    """Operators of one SGD step over the module's trainable tensors: per-tensor loop (the CPU default) and
    ``foreach`` (the CUDA default), counted on copies of the weights."""
    params = [p for m in module.trainable_modules() for p in m.parameters() if p.requires_grad]
    counts = []
    for foreach in (False, True):
        copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
        for weight in copies:
            weight.grad = torch.ones_like(weight)
        optim = module.optim
        sgd = torch.optim.SGD(
            copies, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay, foreach=foreach
        )
        sgd.step()  # the first step creates the momentum buffers
        with OpCount() as counter:
            sgd.step()
        counts.append(counter.count)
    return counts[0], counts[1]


def calibrate_ops(out: Path = OP_COUNTS) -> dict[str, Any]:
    """Count the operators of a steady-state training step of every method on the CPU and write ``out``.

    ``step_ops``: every aten operator dispatched from a batch's start to its end (step 2 of a fit, resnet20 ->
    resnet8, batch 8: the probe of :mod:`benchmarks.probe`); ``other_ops``: what remains after the networks' own
    operators (the student's training forward + backward, the teacher's forward for methods with a teacher),
    i.e. the method's losses and modules, the optimiser and Lightning's bookkeeping; ``data_ops``: the batched
    augmentation and normalisation of one training batch.
    """
    import platform

    from benchmarks.probe import PAIR, CountOps, probe_fit, probe_module, probe_setting, probe_student
    from datamodules import CIFAR100
    from kd_modules.diagnostics import Diagnostic

    teacher, student = PAIR
    student_ops = network_ops(student, 100, True) or 0
    teacher_ops = network_ops(teacher, 100, False) or 0
    step_ops: dict[str, int] = {}
    other_ops: dict[str, int] = {}
    optimizer_ops: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory(prefix="kdbench-ops-") as tmp:
        with mock.patch.dict(os.environ, {"KDBENCH_CACHE": str(Path(tmp) / "cache")}):
            setting = probe_setting(Path(tmp))
            for method in method_names():
                if issubclass(method_class(method), Diagnostic):
                    continue  # a fit without steps: nothing to count
                module, data_args = probe_module(method, setting)
                counter = CountOps(skip=1)
                with quiet_lightning():
                    probe_fit(module, data_args, setting, 2, [counter])
                step_ops[method] = counter.counts[2]
                uses_teacher = bool(method_class(method).requires_teacher)
                with probe_student(method) as arch:  # DeiT++: the probe's small ViT, not PAIR's student
                    own_ops = student_ops if arch == student else (network_ops(arch, 100, True) or 0)
                other_ops[method] = step_ops[method] - own_ops - (teacher_ops if uses_teacher else 0)
                loop, foreach = _optimizer_ops(module)
                optimizer_ops[method] = {"per_tensor": loop, "foreach": foreach}
                print(
                    f"  {method:<22} {step_ops[method]:>6} operators per step, {other_ops[method]:>6} beyond the networks"
                    f" (SGD: {loop} per tensor on the CPU, {foreach} with foreach as on a GPU)"
                )
            datamodule = CIFAR100(root=str(setting["data"]), batch_size=8, seed=0)
            datamodule.setup("fit")
            batch = next(iter(datamodule.train_dataloader()))
            with OpCount() as counter_mode:
                datamodule.on_after_batch_transfer(batch, 0)
    result = {
        "what": "aten operators per steady-state training step (step 2), counted with a TorchDispatchMode on the CPU",
        "pair": f"{teacher}->{student}",
        "batch": 8,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "network_ops": {f"{student} train": student_ops, f"{teacher} forward": teacher_ops},
        "data_ops": counter_mode.count,
        "step_ops": step_ops,
        "other_ops": other_ops,
        "optimizer_ops": optimizer_ops,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    op_counts.cache_clear()
    return result


SPEED_RESULT_KEYS = ("table", "method", "pair", "preset", "batch_size", "arms")


def _speed_result(path: Path) -> dict[str, Any]:
    """A ``benchmarks.speed train --out`` result measured on a GPU, or one line saying why ``path`` is not one."""
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__
        raise KDBenchError(f"{path}: cannot read a benchmarks.speed train result ({reason})") from None
    if not isinstance(result, dict):
        raise KDBenchError(
            f"{path}: not a benchmarks.speed train result (a JSON object with {', '.join(SPEED_RESULT_KEYS)})"
        )
    if result.get("device") != "cuda":
        raise KDBenchError(
            f"{path} was measured on {result.get('device')}, not a GPU: it cannot calibrate GPU estimates"
        )
    missing = [key for key in SPEED_RESULT_KEYS if key not in result]
    if missing:
        raise KDBenchError(f"{path}: not a benchmarks.speed train result (missing {', '.join(missing)})")
    return result


def calibrate_gpu(results: list[Path], out: Path = GPU_CALIBRATION) -> list[dict[str, Any]]:
    """Measured / modelled step times from ``benchmarks.speed train`` results measured on a GPU, written to ``out``.

    CPU results are refused: a CPU's step time says nothing about a GPU's.
    """
    entries = []
    loaded = [_speed_result(path) for path in results]  # every file checked before anything is computed
    with tempfile.TemporaryDirectory(prefix="kdbench-calibrate-") as tmp:
        for result in loaded:
            args = argparse.Namespace(
                **{key: result[key] for key in ("table", "method", "pair", "preset")}, data_root="data"
            )
            for key, entry in result["arms"].items():
                arm = entry.get("arm", key)
                if arm == "reference" or "median_ms" not in entry:
                    continue
                method = entry.get("method", result["method"])
                config, _ = planned_config(args, Path(tmp) / "store", None if method == "Vanilla" else method)
                config["data"]["init_args"]["batch_size"] = result["batch_size"]
                arm_config = _arm_config(config, arm)
                modelled = step_model(arm_config, dataset_classes(arm_config))
                if modelled is None:
                    continue
                entries.append(
                    {
                        "table": result["table"],
                        "method": method,
                        "pair": result["pair"],
                        "arm": arm,
                        "numerics": numerics_label(arm_config),
                        "machine": result.get("machine"),
                        "measured_step_s": entry["median_ms"] / 1000,
                        "model_step_s": modelled["seconds"],
                    }
                )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"measurements": entries}, indent=1) + "\n")
    gpu_calibration.cache_clear()
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cost", description="Calibrate the GPU-hour model.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("calibrate-ops", help=f"count every method's operators per step here (-> {OP_COUNTS.name})")
    gpu = commands.add_parser(
        "calibrate-gpu", help=f"GPU step times of benchmarks.speed train results (-> {GPU_CALIBRATION.name})"
    )
    gpu.add_argument(
        "results", nargs="+", type=Path, help="JSON files written by benchmarks.speed train --out on a GPU"
    )
    gpu.add_argument("--out", type=Path, default=GPU_CALIBRATION, help=f"where to write (default {GPU_CALIBRATION})")
    args = parser.parse_args(argv)
    with user_errors("benchmarks.cost"):
        if args.command == "calibrate-ops":
            calibrate_ops()
            print(f"written to {OP_COUNTS}")
        else:
            for entry in calibrate_gpu(args.results, args.out):
                print(
                    f"  {entry['method']} {entry['pair']} ({entry['numerics']}): measured {entry['measured_step_s'] * 1000:.2f} "
                    f"ms/step, modelled {entry['model_step_s'] * 1000:.2f}"
                )
            print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
