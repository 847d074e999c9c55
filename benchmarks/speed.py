"""Speed benchmarks, run side by side in one process so their ratio is meaningful on a shared machine.

``python -m benchmarks.speed data``: images/s of our in-memory training pipeline (``InMemoryBatches`` + the
datamodule's ``on_after_batch_transfer``: crop/flip or rotation/flip, then normalisation, here on the CPU) against
the standard torchvision PIL pipeline (a Dataset returning PIL images through ``RandomCrop(32, 4)`` +
``RandomHorizontalFlip`` + ``ToTensor`` + ``Normalize``, or Tiny-ImageNet's ``RandomRotation(20)`` + flip, in a
``DataLoader`` with ``--workers`` processes (default: one per core), shuffled, same batch size, workers restarted
every epoch as in mdistiller's and RepDistiller's loaders).  Ours runs in the main process with ``--threads``
torch threads (default 1, so it uses at most the resources the reference uses, usually half).  The two are timed interleaved (A, B, A, B,
...) and the medians compared, so a co-tenant's load hits both alike.

``python -m benchmarks.speed train``: ms/step and images/s of one planned run's training step (any table, method,
pair; ``--preset`` picks its numerics) against the references' training loop, side by side in one process (see
:mod:`benchmarks.speed_train`).  ``python -m benchmarks.speed concurrent``: aggregate throughput of K such runs
sharing one device.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from benchmarks.speed_train import _PILDataset, add_commands, check_args, check_counts, load_average
from datamodules import DATASETS

__all__ = ["main", "measure_ours", "measure_torchvision", "load_average"]


def _data(dataset: str, count: int, root: str | None, seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(N, C, H, W) uint8 images and labels: the real training split when ``root`` holds it, else random pixels."""
    cls = DATASETS[dataset]
    if root is not None and cls.is_available(root):
        images, labels = cls(root=root).load_split("train")  # type: ignore[attr-defined]
        return images[:count], labels[:count], f"real {dataset} training images from {root}"
    size = {"cifar100": 32, "tiny-imagenet": 64}[dataset]
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, cls.num_classes, (count,), generator=generator)
    return images, labels, f"random uint8 {size}x{size} images"


def measure_ours(dataset: str, images: torch.Tensor, labels: torch.Tensor, batch_size: int, epochs: int) -> float:
    """images/s of the datamodule's own training path on the CPU (split in memory, augmentation after 'transfer')."""
    base = DATASETS[dataset]
    preloaded = type(f"Preloaded{base.__name__}", (base,), {"load_split": lambda self, split: (images, labels)})
    datamodule = preloaded(batch_size=batch_size, seed=0, on_device=False)
    datamodule.setup("fit")
    seen = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in datamodule.train_dataloader():
            seen += datamodule.on_after_batch_transfer(batch, 0)["images"].shape[0]
    return seen / (time.perf_counter() - start)


def _torchvision_transform(dataset: str) -> Callable:
    from torchvision import transforms as T

    cls = DATASETS[dataset]
    first = T.RandomCrop(32, padding=4) if dataset == "cifar100" else T.RandomRotation(20)
    return T.Compose([first, T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(cls.mean, cls.std)])


def measure_torchvision(
    dataset: str, images: torch.Tensor, labels: torch.Tensor, batch_size: int, workers: int, epochs: int
) -> float:
    """images/s of the reference PIL pipeline through a shuffling DataLoader with ``workers`` processes."""
    data = _PILDataset(images.permute(0, 2, 3, 1).contiguous().numpy(), labels.numpy(), _torchvision_transform(dataset))
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, num_workers=workers)
    start = time.perf_counter()
    seen = sum(batch.shape[0] for _ in range(epochs) for batch, _ in loader)
    return seen / (time.perf_counter() - start)


def run_data(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    images, labels, source = _data(args.dataset, args.images, args.data_root, seed=0)
    print(
        f"data pipeline speed: {args.dataset}, {source}, {images.shape[0]} images x {args.epochs} epoch(s), "
        f"batch {args.batch_size}; ours: {args.threads} torch threads; torchvision: {args.workers} DataLoader workers"
    )
    print(f"load average before: {load_average()}")
    ours: list[float] = []
    reference: list[float] = []
    for repeat in range(args.repeats):
        ours.append(measure_ours(args.dataset, images, labels, args.batch_size, args.epochs))
        reference.append(measure_torchvision(args.dataset, images, labels, args.batch_size, args.workers, args.epochs))
        print(f"  repeat {repeat + 1}: ours {ours[-1]:>10,.0f} img/s   torchvision PIL {reference[-1]:>9,.0f} img/s")
    ours_median, reference_median = statistics.median(ours), statistics.median(reference)
    ratio = ours_median / reference_median
    print(f"load average after:  {load_average()}")
    print(f"median ours:            {ours_median:>10,.0f} img/s")
    print(f"median torchvision PIL: {reference_median:>10,.0f} img/s")
    print(f"ratio ours / torchvision: {ratio:.1f}x")
    if args.min_ratio and ratio < args.min_ratio:
        print(f"FAIL: ratio {ratio:.1f}x is below the required {args.min_ratio:g}x")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.errors import user_errors

    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", help="our batched data pipeline vs the torchvision PIL DataLoader")
    data.add_argument("--dataset", choices=["cifar100", "tiny-imagenet"], default="cifar100")
    data.add_argument("--batch-size", type=int, default=64)
    cores = os.cpu_count() or 1
    data.add_argument("--workers", type=int, default=cores, help=f"DataLoader workers (default: the cores, {cores})")
    data.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for ours (default 1: at batch 64 a second intra-op thread gains ~1.5x on an idle "
        "machine but, with co-tenants on the cores, OpenMP's spinning barriers can make it 20x slower)",
    )
    data.add_argument("--epochs", type=int, default=1, help="epochs per measurement")
    data.add_argument("--repeats", type=int, default=3, help="interleaved measurements of each (median reported)")
    data.add_argument("--images", type=int, default=50_000, help="training images (default: CIFAR's 50,000)")
    data.add_argument("--data-root", help="use the real training split from this root when it is there")
    data.add_argument("--min-ratio", type=float, default=0.0, help="exit 1 when ours/torchvision is below this")
    data.set_defaults(handler=run_data)
    add_commands(commands)
    args = parser.parse_args(argv)
    if args.command != "data":
        check_args(parser, args)
    else:
        check_counts(parser, args, ("batch_size", "epochs", "repeats", "images", "threads"), ("workers",))
    with user_errors("benchmarks.speed"):
        return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
