"""Training-step speed of a planned run, side by side with the references' loop (``python -m benchmarks.speed train``).

The run is planned exactly as the table runner plans it (``--table``, ``--method`` row, ``--pair``, ``--preset``
for its numerics), then built through the CLI and timed on whatever device is there (``--device``).  Each *arm*
is timed for ``--steps`` optimisation steps after ``--warmup`` steps, ``--repeats`` times, the arms interleaved
(A, B, C, A, B, C, ...) so that a co-tenant's load hits all of them alike; medians are compared.

Arms (``--arms``, comma separated):

* ``kdbench``: the planned run's step through Lightning, as ``benchmarks.run`` trains it: data resident as uint8,
  shuffled and augmented in batches after the transfer, the teacher under inference mode, no host sync;
* ``reference``: the loop of RepDistiller's ``train_distill`` (what mdistiller and the papers' code do): a
  torchvision ``DataLoader`` (``--workers`` processes, PIL ``RandomCrop`` + ``RandomHorizontalFlip`` +
  ``ToTensor`` + ``Normalize``; CRD's contrast indices drawn per sample with numpy, as ``CIFAR100InstanceSample``),
  eager fp32, the same method's losses, per-step ``loss.item()`` and top-1/top-5 accuracy for the meters;
* ``cached``: ``kdbench`` with the exact teacher-output cache (``numerics.teacher_cache``); with
  ``--cache-fill stand-in`` the cache holds random values of the right shape instead of the teacher's outputs (a
  lookup costs the same whatever it returns; building the real one takes N x 162 teacher forwards);
* ``ce``: the same student trained with cross-entropy alone (``Vanilla``), same data, recipe and numerics: the
  floor a distillation step can reach once the teacher's cost is gone.

A teacher the plan has not trained yet is replaced by random weights of its architecture (the cost does not
depend on the weights).  Data: the real training split when it is found under ``--data-root`` or the table's data
roots, else random uint8 images of the dataset's shape (``--images`` of them).  ``--epochs E`` instead times E
whole epochs with their evaluation (after one warm-up epoch, reported apart with the compilation) and
extrapolates to the recipe's epochs.  ``--profile`` prints a ``torch.profiler`` summary of the kdbench step (top
operators) and every host synchronisation in it (:mod:`benchmarks.host_sync`).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from benchmarks.cost import (
    _arm_config,
    _stand_in_for_earlier_runs,
    dataset_classes,
    planned_config,
    stand_in_teacher_cache,
    synchronize,
)
from benchmarks.errors import KDBenchError
from benchmarks.execute import quiet_lightning

__all__ = ["add_commands", "check_args", "run_train", "run_concurrent", "ARMS"]

ARMS = ("kdbench", "reference", "cached", "ce")
ARM_WHAT = {
    "kdbench": "kdbench (Lightning, in-memory uint8 data, batched augmentation)",
    "reference": "reference loop (torchvision DataLoader + PIL, eager fp32, per-step .item())",
    "cached": "kdbench + teacher-output cache",
    "ce": "cross-entropy only (Vanilla), same student",
}


# ------------------------------------------------------------------------------------------------- arguments
def _common(parser: argparse.ArgumentParser) -> None:
    cores = os.cpu_count() or 1
    parser.add_argument("--table", default="table1", help="table whose recipe and row configs to use")
    parser.add_argument("--method", default="KD", help="row label or method of the table (default KD)")
    parser.add_argument("--pair", default="resnet32x4->resnet8x4", help="teacher->student (any pair of the zoo)")
    parser.add_argument("--preset", default="full", help="preset whose numerics the run uses (full, fast, ...)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--batch-size", type=int, help="training batch size (default: the recipe's)")
    parser.add_argument("--images", type=int, default=1024, help="training images when the real data is absent")
    parser.add_argument("--eval-images", type=int, default=1000, help="evaluation images (random; --epochs only)")
    parser.add_argument("--data-root", default="data", help="dataset root (the real split is used when found)")
    parser.add_argument("--steps", type=int, default=10, help="measured optimisation steps per repetition")
    parser.add_argument("--warmup", type=int, default=3, help="steps before each measurement (compilation, caches)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions of every arm")
    parser.add_argument("--threads", type=int, default=cores, help=f"torch threads (default: the cores, {cores})")
    parser.add_argument("--workers", type=int, default=cores, help="reference DataLoader worker processes")
    parser.add_argument("--cache-fill", choices=["teacher", "stand-in"], default="teacher")
    parser.add_argument("--epochs", type=int, default=0, help="time this many whole epochs (kdbench arm) instead")
    parser.add_argument("--profile", action="store_true", help="torch.profiler summary and host syncs of a step")
    parser.add_argument("--out", help="write the result table here (Markdown; a .json beside it)")
    parser.add_argument("--json", help="write the raw result as JSON here")
    parser.add_argument("--barrier", help=argparse.SUPPRESS)  # concurrent: start measuring together


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} cores"


class _PILDataset(torch.utils.data.Dataset):
    """What ``torchvision.datasets.CIFAR100`` / ``ImageFolder`` hand the transform: one PIL image per item (a
    one-channel image as a greyscale one)."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images = images_hwc
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        image = self.images[index]
        image = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
        return self.transform(image), int(self.labels[index])


def add_commands(commands: Any) -> None:
    train = commands.add_parser("train", help="a planned run's training step vs the references' training loop")
    _common(train)
    train.add_argument("--arms", default="kdbench,reference", help=f"comma separated, of: {', '.join(ARMS)}")
    train.set_defaults(handler=run_train)
    concurrent = commands.add_parser("concurrent", help="aggregate throughput of K runs sharing one device")
    _common(concurrent)
    concurrent.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8], help="runs at once (default 1 2 4 8)")
    concurrent.set_defaults(handler=run_concurrent, arms="kdbench")


def check_counts(
    parser: argparse.ArgumentParser, args: argparse.Namespace, positive: tuple[str, ...], non_negative: tuple[str, ...]
) -> None:
    """One argparse error for the first count option out of range (an unset option, None, is not checked)."""
    for names, low, what in ((positive, 1, "positive"), (non_negative, 0, ">= 0")):
        for name in names:
            value = getattr(args, name)
            if value is not None and value < low:
                parser.error(f"--{name.replace('_', '-')} must be {what}, got {value}")


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    check_counts(
        parser, args, ("steps", "repeats", "images", "threads", "eval_images"), ("warmup", "workers", "epochs")
    )
    check_counts(parser, args, ("batch_size",), ())
    arms = [a.strip() for a in str(args.arms).split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        parser.error(f"unknown arm {unknown[0] if unknown else args.arms!r}; valid: {', '.join(ARMS)}")
    args.arms = arms
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible here")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if getattr(args, "k", None) is not None and any(k <= 0 for k in args.k):
        parser.error(f"--k values must be positive, got {args.k}")


# ----------------------------------------------------------------------------------------------- the run


def _dataset(config: dict[str, Any], table: Any, args: argparse.Namespace, folder: Path) -> tuple[Any, ...]:
    """(train images, labels, eval images, labels, description, datamodule class) of the run's dataset."""
    from datamodules import DATASETS, InMemoryDataModule

    cls = DATASETS[table.dataset]
    if not issubclass(cls, InMemoryDataModule):
        raise KDBenchError(
            f"benchmarks.speed train times in-memory datasets (CIFAR-100, Tiny-ImageNet, Fashion-MNIST); "
            f"{table.dataset} streams from disk (time its loaders with benchmarks.speed data)"
        )
    for root in [args.data_root, *table.data_roots]:
        if cls.is_available(root):
            dm = cls(root=root)
            images, labels = dm.load_split("train")
            test_images, test_labels = dm.load_split(dm.eval_splits()[0])
            if args.epochs == 0 and args.images < images.shape[0]:
                images, labels = images[: args.images], labels[: args.images]
            return images, labels, test_images, test_labels, f"real {table.dataset} from {root}", cls
    from datamodules.synthetic import write_fixture

    write_fixture(table.dataset, folder / "fixture")
    shape = cls(root=str(folder / "fixture")).load_split("train")[0].shape[1:]
    generator = torch.Generator().manual_seed(0)
    classes = dataset_classes(config)
    images = torch.randint(0, 256, (args.images, *shape), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, classes, (args.images,), generator=generator)
    eval_images = torch.randint(0, 256, (args.eval_images, *shape), dtype=torch.uint8, generator=generator)
    eval_labels = torch.randint(0, classes, (args.eval_images,), generator=generator)
    size = "x".join(str(s) for s in shape[1:])
    return images, labels, eval_images, eval_labels, f"random uint8 {size} images ({args.images} train)", cls


def _instantiate(config: dict[str, Any], folder: Path, name: str) -> tuple[Any, Any]:
    """(model, datamodule) of a config, built through the CLI (numerics applied as in a real run)."""
    from benchmarks.cli import KDBenchCLI
    from benchmarks.execute import dump_config

    config = copy.deepcopy(config)
    config["run"] = {"dir": str(folder / name), "wandb": "disabled", "export_final": False}
    trainer = config.setdefault("trainer", {})
    trainer.update(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.pop("callbacks", None)
    path = folder / f"{name}.yaml"
    path.write_text(dump_config(config, sort_keys=True))
    with quiet_lightning():
        cli = KDBenchCLI(args=["--config", str(path)], run=False)
    return cli.model, cli.datamodule


class _Clock(Callback):
    """Lightning callback: wall time from the end of step ``warmup`` to the end of step ``warmup + steps``."""

    def __init__(self, warmup: int, steps: int, device: str, barrier: Callable[[], None] | None = None) -> None:
        self.warmup, self.steps, self.device, self.barrier = warmup, steps, device, barrier
        self.start = self.end = self.cpu_start = self.cpu_end = 0.0
        if warmup == 0:
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        done = trainer.global_step
        if done == self.warmup:
            synchronize(self.device)
            if self.barrier is not None:
                self.barrier()
            self.start, self.cpu_start = time.perf_counter(), time.process_time()
        elif done == self.warmup + self.steps:
            synchronize(self.device)
            self.end, self.cpu_end = time.perf_counter(), time.process_time()

    @property
    def per_step(self) -> tuple[float, float]:
        """(wall, CPU) seconds per step; CPU: every thread of this process."""
        return (self.end - self.start) / self.steps, (self.cpu_end - self.cpu_start) / self.steps


class LightningArm:
    """An arm trained through Lightning, as ``benchmarks.run`` trains it; the module persists across repetitions."""

    def __init__(self, name: str, config: dict[str, Any], data: tuple[Any, ...], device: str, folder: Path) -> None:
        self.device = device
        self.module, self.datamodule = _instantiate(config, folder, name)
        images, labels, eval_images, eval_labels = data[:4]
        splits = {"train": (images, labels), "test": (eval_images, eval_labels), "val": (eval_images, eval_labels)}
        self.datamodule.load_split = lambda split: splits[split]  # type: ignore[method-assign]
        self.datamodule.eval_splits = lambda: ("test", "test")  # type: ignore[method-assign]
        trainer = config.get("trainer", {})
        self.trainer_args = {k: trainer[k] for k in ("precision", "benchmark") if trainer.get(k) is not None}

    def _trainer(self, callbacks: list[Any], **limits: Any) -> Any:
        from benchmarks.probe import bare_trainer

        return bare_trainer(self.device, callbacks, num_sanity_val_steps=0, **self.trainer_args, **limits)

    def run(
        self, warmup: int, steps: int, barrier: Callable[[], None] | None = None, extra: list[Any] | None = None
    ) -> float:
        clock = _Clock(warmup, steps, self.device, barrier)
        with quiet_lightning():
            trainer = self._trainer([clock, *(extra or [])], max_steps=warmup + steps, limit_val_batches=0)
            trainer.fit(self.module, datamodule=self.datamodule)
        return clock.per_step

    def run_epochs(self, epochs: int) -> dict[str, Any]:
        """One warm-up epoch, then ``epochs`` timed epochs, each with its full evaluation."""
        marks: list[float] = []
        device = self.device

        class _Epochs(Callback):
            def on_train_epoch_start(self, *args: Any) -> None:
                if not marks:
                    synchronize(device)
                    marks.append(time.perf_counter())

            def on_validation_epoch_end(self, trainer: Any, *args: Any) -> None:
                if not trainer.sanity_checking:
                    synchronize(device)
                    marks.append(time.perf_counter())

        started = time.perf_counter()
        with quiet_lightning():
            trainer = self._trainer([_Epochs()], max_epochs=epochs + 1, max_steps=-1, check_val_every_n_epoch=1)
            trainer.fit(self.module, datamodule=self.datamodule)
        seconds = [b - a for a, b in zip(marks, marks[1:])]
        return {
            "setup_s": marks[0] - started if marks else 0.0,
            "warmup_epoch_s": seconds[0] if seconds else 0.0,
            "epoch_s": seconds[1:],
            "steps_per_epoch": int(trainer.num_training_batches),
        }


class _ReferenceDataset(_PILDataset):
    """What ``torchvision.datasets.CIFAR100`` (or RepDistiller's ``CIFAR100InstanceSample``) gives its transform:
    a PIL image per item, and its index; with ``contrast_k`` also the positive and ``contrast_k`` negatives of other
    classes, drawn per item with numpy as RepDistiller does."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Any, contrast_k: int) -> None:
        super().__init__(images, labels, transform)
        self.contrast_k = contrast_k
        if contrast_k:
            classes = int(labels.max()) + 1
            members = [np.flatnonzero(labels == c) for c in range(classes)]
            self.negatives = [np.concatenate([members[j] for j in range(classes) if j != c]) for c in range(classes)]

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        image, target = super().__getitem__(index)
        item: tuple[Any, ...] = (image, target, index)
        if self.contrast_k:
            negatives = np.random.choice(self.negatives[target], self.contrast_k, replace=True)
            item += (torch.from_numpy(np.hstack(([index], negatives))),)
        return item


def _reference_transform(datamodule: Any) -> Any:
    """torchvision's transforms of the run's training augmentation (crop + flip, or rotation + flip)."""
    from torchvision import transforms as T

    augment = datamodule.train_augmentation()
    steps: list[Any] = []
    size = datamodule.split("train")[0].shape[-1]
    padding = getattr(augment, "padding", 0)
    if padding:
        mode = "reflect" if getattr(augment, "mode", "zero") == "reflect" else "constant"
        steps.append(T.RandomCrop(size, padding=padding, padding_mode=mode))
    if getattr(augment, "degrees", 0):
        steps.append(T.RandomRotation(augment.degrees))
    if getattr(augment, "flip", False):
        steps.append(T.RandomHorizontalFlip())
    copies = 3 if datamodule.split("train")[0].shape[1] == 1 else 1  # Fashion-MNIST: grey replicated to RGB
    if copies == 3:
        steps.append(T.Grayscale(num_output_channels=3))
    mean, std = tuple(datamodule.mean) * copies, tuple(datamodule.std) * copies
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])


def _accuracy(output: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...]) -> list[torch.Tensor]:
    """RepDistiller's ``accuracy``: top-k precision of a batch, as tensors."""
    maxk = max(topk)
    _, pred = output.topk(maxk, 1, True, True)
    correct = pred.t().eq(target.view(1, -1).expand_as(pred.t()))
    return [correct[:k].reshape(-1).float().sum(0, keepdim=True).mul_(100.0 / target.size(0)) for k in topk]


class ReferenceArm:
    """RepDistiller's ``train_distill`` loop around the same method's losses (eager fp32, DataLoader + PIL)."""

    def __init__(self, config: dict[str, Any], data: tuple[Any, ...], device: str, folder: Path, workers: int) -> None:
        self.arm = LightningArm("reference", config, data, device, folder)
        self.device = device
        module = self.arm.module
        # One Lightning step runs the method's own setup (memory banks, offline stages) on the same data.
        with quiet_lightning():
            self.arm._trainer([], max_steps=1, limit_val_batches=0).fit(module, datamodule=self.arm.datamodule)
        self.optimizer = module.configure_optimizers()["optimizer"]
        images, labels = data[0], data[1]
        contrast_k = int(config.get("data", {}).get("init_args", {}).get("contrast_k", 0) or 0)
        dataset = _ReferenceDataset(
            images.permute(0, 2, 3, 1).contiguous().numpy(),
            labels.numpy(),
            _reference_transform(self.arm.datamodule),
            contrast_k,
        )
        batch = int(config.get("data", {}).get("init_args", {}).get("batch_size", 64))
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers)

    def run(self, warmup: int, steps: int, barrier: Callable[[], None] | None = None) -> tuple[float, float]:
        """(wall, CPU) seconds per step; CPU counts this process and its DataLoader workers."""
        if len(self.loader) < warmup + steps:
            raise KDBenchError(
                f"the reference arm needs {warmup + steps} batches in one epoch, the data has {len(self.loader)}: "
                "give more --images"
            )
        module = self.arm.module
        module.train()
        device = torch.device(self.device)
        batches = iter(self.loader)  # a new epoch: the references restart the loader (and its workers)
        meters = {"loss": 0.0, "top1": 0.0, "top5": 0.0}
        start, cpu_start = time.perf_counter(), time.process_time() + _workers_cpu(batches)
        for step in range(warmup + steps):
            if step == warmup:
                synchronize(self.device)
                start, cpu_start = time.perf_counter(), time.process_time() + _workers_cpu(batches)
            item = next(batches)
            images, target, index = item[0].float().to(device), item[1].to(device), item[2].to(device)
            batch = {"images": images, "labels": target, "indices": index}
            if len(item) > 3:
                batch["contrast_indices"] = item[3].to(device)
            logits, losses = module.training_losses(batch)
            loss = torch.stack(list(losses.values())).sum()
            acc1, acc5 = _accuracy(logits, target, (1, 5))
            meters["loss"] += loss.item() * images.size(0)  # AverageMeter.update(loss.item(), n): a host sync
            meters["top1"] += float(acc1[0]) * images.size(0)
            meters["top5"] += float(acc5[0]) * images.size(0)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        synchronize(self.device)
        wall, cpu = time.perf_counter() - start, time.process_time() + _workers_cpu(batches) - cpu_start
        return wall / steps, cpu / steps


def _workers_cpu(iterator: Any) -> float:
    """CPU seconds (user + system) used so far by a DataLoader iterator's worker processes (Linux /proc)."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for worker in getattr(iterator, "_workers", []) or []:
        try:
            fields = Path(f"/proc/{worker.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, IndexError, ValueError):
            continue
    return total


def _barrier(path: str | None, count: int) -> Callable[[], None] | None:
    """Wait until ``count`` processes reached the same point (a folder of marker files)."""
    if not path:
        return None

    def wait() -> None:
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{os.getpid()}.ready").touch()
        deadline = time.time() + 1800
        while len(list(folder.glob("*.ready"))) < count and time.time() < deadline:
            time.sleep(0.05)

    return wait


def _machine(device: str, threads: int) -> str:
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads} torch threads"


# -------------------------------------------------------------------------------------------------- train
def _measure_arms(args: argparse.Namespace, folder: Path, device: str) -> dict[str, Any]:
    from benchmarks.numerics import numerics_label

    methods = [m.strip() for m in str(args.method).split(",") if m.strip()]
    configs = {}
    for method in methods:
        config, table = planned_config(args, folder / "store", method)
        if args.batch_size is not None:
            config["data"]["init_args"]["batch_size"] = args.batch_size
        _stand_in_for_earlier_runs(config, folder, dataset_classes(config))
        configs[method] = config
    config = configs[methods[0]]
    data = _dataset(config, table, args, folder)
    batch = int(config["data"]["init_args"].get("batch_size", 64))
    result: dict[str, Any] = {
        "table": table.name,
        "method": ",".join(methods),
        "pair": args.pair,
        "preset": args.preset,
        "dataset": table.dataset,
        "device": device,
        "machine": _machine(device, args.threads),
        "torch": torch.__version__,
        "data": data[4],
        "batch_size": batch,
        "warmup": args.warmup,
        "steps": args.steps,
        "repeats": args.repeats,
        "cache_fill": args.cache_fill,
        "load_before": load_average(),
        "arms": {},
    }
    arms: dict[str, Any] = {}
    for method in methods:
        for name in args.arms:
            if name == "ce" and method != methods[0]:
                continue  # one CE arm: the same student whatever the method
            key = name if len(methods) == 1 else (name if name == "ce" else f"{method} {name}")
            arm_config = _arm_config(configs[method], name)
            started = time.perf_counter()
            if name == "reference":
                arms[key] = ReferenceArm(arm_config, data, device, folder, args.workers)
            else:
                arms[key] = LightningArm(key.replace(" ", "_"), arm_config, data, device, folder)
            result["arms"][key] = {
                "method": "Vanilla" if name == "ce" else method,
                "arm": name,
                "what": ARM_WHAT[name] if len(methods) == 1 or name == "ce" else f"{method}: {ARM_WHAT[name]}",
                "numerics": numerics_label(arm_config),
                "build_s": time.perf_counter() - started,
                "seconds_per_step": [],
                "cpu_seconds_per_step": [],
            }
    if args.epochs:
        arm = next(iter(arms.values()))
        if not isinstance(arm, LightningArm):
            raise SystemExit("--epochs times a Lightning arm (kdbench, cached or ce): put it first in --arms")
        timing = arm.run_epochs(args.epochs)
        epochs = int(config.get("trainer", {}).get("max_epochs") or 240)
        median = statistics.median(timing["epoch_s"])
        result["epochs"] = {
            **timing,
            "recipe_epochs": epochs,
            "extrapolated_run_s": median * epochs + timing["warmup_epoch_s"],
        }
    else:
        barrier = _barrier(args.barrier, int(os.environ.get("KDBENCH_BARRIER_COUNT", "1")))
        for _ in range(args.repeats):
            for name, arm in arms.items():
                wall, cpu = arm.run(args.warmup, args.steps, barrier=barrier)
                barrier = None  # only the first measurement starts together
                result["arms"][name]["seconds_per_step"].append(wall)
                result["arms"][name]["cpu_seconds_per_step"].append(cpu)
    if args.profile:
        first = next((a for k, a in arms.items() if k.endswith("kdbench")), next(iter(arms.values())))
        result["profile"] = _profile(first, args, device)
    result["load_after"] = load_average()
    for entry in result["arms"].values():
        values = entry["seconds_per_step"]
        if values:
            entry["median_ms"] = statistics.median(values) * 1000
            entry["images_per_s"] = batch / statistics.median(values)
            entry["median_cpu_ms"] = statistics.median(entry["cpu_seconds_per_step"]) * 1000
    return result


def _profile(arm: Any, args: argparse.Namespace, device: str) -> dict[str, Any]:
    """A profiler table of the kdbench arm's measured steps, and its host syncs (benchmarks.host_sync, in a
    separate fit so that the checking does not show in the profile)."""
    from torch.profiler import ProfilerActivity, profile, schedule

    from benchmarks.host_sync import StepSyncCheck

    if not isinstance(arm, LightningArm):
        return {"note": "profiling needs a Lightning arm"}
    check = StepSyncCheck(skip=args.warmup, cuda_debug=False)
    arm.run(args.warmup, args.steps, extra=[check])  # (wall, CPU) not needed here
    syncs = [str(s) for found in check.found.values() for s in found]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    ready: dict[str, Any] = {}
    plan = schedule(wait=0, warmup=max(args.warmup, 1), active=args.steps, repeat=1)
    with profile(
        activities=activities, schedule=plan, on_trace_ready=lambda p: ready.update(events=p.key_averages())
    ) as prof:

        class _Step(Callback):
            def on_train_batch_end(self, *unused: Any) -> None:
                prof.step()

        arm.run(max(args.warmup, 1), args.steps + 1, extra=[_Step()])
    events = ready.get("events") or prof.key_averages()
    sort = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    table = events.table(sort_by=sort, row_limit=15)
    sync_names = ("aten::_local_scalar_dense", "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
    counts = {e.key: e.count for e in events if e.key in sync_names}
    print(f"profile of {args.steps} steps after {args.warmup} warm-up steps (kdbench arm):")
    print(table)
    print(f"host-sync events in the profiled steps: {counts or 'none'}")
    print(f"host syncs inside the {args.steps} measured steps (benchmarks.host_sync): {len(syncs)}")
    for line in syncs[:10]:
        print(f"  {line}")
    return {"table": table, "sync_events": counts, "host_syncs": syncs}


def _markdown(result: dict[str, Any]) -> str:
    arms = result["arms"]
    ce = arms.get("ce", {}).get("median_ms")

    def reference_of(entry: dict[str, Any]) -> float | None:
        same = (o for o in arms.values() if o.get("arm") == "reference" and o.get("method") == entry.get("method"))
        return next((other.get("median_ms") for other in same), arms.get("reference", {}).get("median_ms"))

    lines = [
        f"# {result['method']} {result['pair']} ({result['table']}, preset {result['preset']}): training-step speed",
        "",
        f"- device: {result['machine']}; torch {result['torch']}",
        f"- data: {result['data']}, batch {result['batch_size']}",
        f"- measured side by side in one process: {result['warmup']} warm-up + {result['steps']} timed steps per "
        f"repetition, {result['repeats']} repetitions, arms interleaved; medians. CPU time: every thread of the "
        "process (the reference's: plus its DataLoader workers); with one torch thread it is what a step costs "
        "whatever else runs on the cores",
        f"- load average before: {result['load_before']}; after: {result['load_after']}",
    ]
    if "cached" in arms:
        fill = "the teacher's outputs" if result["cache_fill"] == "teacher" else "stand-in values (lookup timing only)"
        lines.append(f"- teacher cache filled with {fill}")
    lines += [
        "",
        "| arm | numerics | wall ms/step (median) | range (ms) | images/s | speed-up vs reference | step / CE step "
        "| CPU ms/step (median) | CPU: step / CE step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ce_cpu = arms.get("ce", {}).get("median_cpu_ms")
    for entry in arms.values():
        if "median_ms" not in entry:
            continue
        values = [v * 1000 for v in entry["seconds_per_step"]]
        reference = reference_of(entry)
        vs_ref = f"{reference / entry['median_ms']:.2f}x" if reference and entry.get("arm") != "reference" else ""
        vs_ce = f"{entry['median_ms'] / ce:.3f}" if ce and entry.get("arm") != "ce" else ""
        cpu = entry.get("median_cpu_ms")
        cpu_ce = f"{cpu / ce_cpu:.3f}" if cpu and ce_cpu and entry.get("arm") not in ("ce", "reference") else ""
        lines.append(
            f"| {entry['what']} | {entry['numerics']} | {entry['median_ms']:.1f} | {min(values):.1f}-{max(values):.1f} "
            f"| {entry['images_per_s']:,.0f} | {vs_ref} | {vs_ce} | {cpu:.1f} | {cpu_ce} |"
        )
    if "epochs" in result:
        e = result["epochs"]
        lines += [
            "",
            f"Whole epochs ({e['steps_per_epoch']} steps + evaluation): setup {e['setup_s']:.1f} s, first epoch "
            f"(compilation, warm-up) {e['warmup_epoch_s']:.1f} s, then {', '.join(f'{s:.1f}' for s in e['epoch_s'])} s; "
            f"extrapolated to {e['recipe_epochs']} epochs: **{e['extrapolated_run_s'] / 60:.1f} min**",
        ]
    return "\n".join(lines) + "\n"


def run_train(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="kdbench-speed-") as tmp:
        folder = Path(tmp)
        os.environ["KDBENCH_CACHE"] = str(folder / "cache")  # never mix benchmark artefacts into the real cache
        with stand_in_teacher_cache(folder / "cache") if args.cache_fill == "stand-in" else contextlib.nullcontext():
            result = _measure_arms(args, folder, args.device)
    text = _markdown(result)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str) + "\n")
        print(f"written to {out} (+ .json)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, default=str))
    return 0


# --------------------------------------------------------------------------------------------- concurrent
def run_concurrent(args: argparse.Namespace) -> int:
    """K copies of the kdbench arm at once on one device, measuring together after their warm-up."""
    import subprocess
    import sys

    rows = []
    passed = [
        "--table", args.table, "--method", args.method, "--pair", args.pair, "--preset", args.preset,
        "--device", args.device, "--images", str(args.images), "--data-root", args.data_root,
        "--steps", str(args.steps), "--warmup", str(args.warmup), "--repeats", "1", "--arms", "kdbench",
        "--threads", str(max(1, args.threads // max(args.k))),
    ]  # fmt: skip
    if args.batch_size:
        passed += ["--batch-size", str(args.batch_size)]
    for k in args.k:
        with tempfile.TemporaryDirectory(prefix="kdbench-concurrent-") as tmp:
            env = {**os.environ, "KDBENCH_BARRIER_COUNT": str(k)}
            outputs = [Path(tmp) / f"run{i}.json" for i in range(k)]
            command = [sys.executable, "-m", "benchmarks.speed", "train", *passed, "--barrier", f"{tmp}/barrier"]
            started = time.perf_counter()
            processes = [
                subprocess.Popen(
                    [*command, "--json", str(out)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for out in outputs
            ]
            errors = [p.communicate()[1] for p in processes]
            failed = [e for p, e in zip(processes, errors) if p.returncode != 0]
            if failed:
                print(f"K={k}: a run failed:\n{failed[0][-2000:]}")
                return 1
            results = [json.loads(out.read_text()) for out in outputs]
        per_run = [r["arms"]["kdbench"]["images_per_s"] for r in results]
        rows.append({"k": k, "per_run": per_run, "total": sum(per_run), "wall_s": time.perf_counter() - started})
        print(f"K={k}: {sum(per_run):,.0f} images/s in all ({', '.join(f'{v:,.0f}' for v in per_run)} per run)")
    base = rows[0]["total"] / rows[0]["k"]
    lines = [
        f"# {args.method} {args.pair} (preset {args.preset}): K runs sharing one device",
        "",
        f"- device: {_machine(args.device, max(1, args.threads // max(args.k)))} per run; {args.steps} timed steps per run after {args.warmup} "
        "warm-up steps, all K runs timed over the same window (they start measuring together)",
        "",
        f"| K | images/s, all runs | per run | vs K={rows[0]['k']} | wall incl. start-up (s) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['k']} | {row['total']:,.0f} | {statistics.mean(row['per_run']):,.0f} | "
            f"{row['total'] / base:.2f}x | {row['wall_s']:.0f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0
