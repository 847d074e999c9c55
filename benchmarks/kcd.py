"""KCD's diagnostic: how consistent are a teacher's and a student's channels, before and after a transformation?

    python -m benchmarks.kcd --dataset fashion-mnist --teacher resnet20=results/runs/<id>/final.pth \\
        --student resnet8=results/runs/<id>/final.pth [--metrics correlation l2] [--max-images 10000]

One eval-mode pass over the un-augmented training split (KCD's "(X, Y)") global-average-pools both networks'
distilled maps (the last stage by default) and prints, per consistency metric, the score
``Gamma = sum_i M[pi(i), i]`` (KCD Eq. 5-6) of the identity mapping (what plain feature distillation uses), of a
random mapping, of the bipartite matching (KCD's transformation) and of the greedy 1-to-N choice, with
``Gamma / c_S`` (the mean per student channel) and how many student channels the matching leaves where they were.
This is the paper's motivation made measurable: the identity is far from the best channel correspondence.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from benchmarks.errors import KDBenchError, user_errors
from kd_modules.kcd import consistency_statistics
from kd_modules.losses.kcd import (
    METRICS,
    ConsistencyStatistics,
    channel_mapping,
    gamma,
    identity_mapping,
    statistic_groups,
)
from kd_modules.offline import normalised_train_batches
from kd_modules.rco import LAYER_HELP, check_layer

__all__ = ["GammaRow", "gamma_rows", "render", "main"]


@dataclass(frozen=True)
class GammaRow:
    """Gamma of one metric under the identity, random, bipartite and greedy mappings (summed over partitions)."""

    metric: str
    identity: float
    random: float
    bipartite: float
    greedy: float
    student_channels: int
    unmoved: int  # student channels the bipartite matching keeps on their own teacher channel


def gamma_rows(
    stats: ConsistencyStatistics, metrics: Sequence[str], kl_distribution: str = "sum", seed: int = 0
) -> list[GammaRow]:
    """Gamma of every metric and mapping from one pass's statistics."""
    rows = []
    shape = (stats.c_t, stats.c_s)
    identity = identity_mapping(*shape)
    for metric in metrics:
        matrices = stats.matrix(metric, kl_distribution)
        generator = torch.Generator().manual_seed(seed)
        values = {"identity": 0.0, "random": 0.0, "bipartite": 0.0, "greedy": 0.0}
        unmoved = 0
        for matrix in matrices:
            for kind in values:
                mapping = channel_mapping(kind, matrix, shape, generator)
                values[kind] += float(gamma(matrix, mapping))
                if kind == "bipartite":
                    unmoved += int((mapping == identity).sum())
        rows.append(GammaRow(metric, **values, student_channels=stats.c_s, unmoved=unmoved))
    return rows


def render(rows: Sequence[GammaRow]) -> str:
    lines = [
        "| metric | Γ identity | Γ random | Γ bipartite | Γ greedy | per channel: identity → bipartite | unmoved |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        c = r.student_channels
        lines.append(
            f"| {r.metric} | {r.identity:.4g} | {r.random:.4g} | {r.bipartite:.4g} | {r.greedy:.4g} | "
            f"{r.identity / c:.4g} → {r.bipartite / c:.4g} | {r.unmoved}/{c} |"
        )
    return "\n".join(lines)


def _network(spec: str, num_classes: int, what: str):  # type: ignore[no-untyped-def]
    from models.checkpoints import load_network

    arch, sep, path = spec.partition("=")
    if not sep or not arch or not path:
        raise KDBenchError(f"--{what} {spec!r}: expected ARCH=CHECKPOINT, e.g. resnet8=results/runs/<id>/final.pth")
    return load_network(arch, num_classes, path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kcd", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="dataset name (e.g. cifar100, fashion-mnist)")
    parser.add_argument("--data-root", default="data", help="the datamodule's root folder")
    parser.add_argument("--teacher", required=True, help="ARCH=CHECKPOINT of the teacher")
    parser.add_argument("--student", required=True, help="ARCH=CHECKPOINT of the (trained) student")
    parser.add_argument("--metrics", nargs="+", default=list(METRICS), choices=METRICS)
    parser.add_argument("--kl-distribution", default="sum", choices=("sum", "softmax"))
    parser.add_argument("--layer", default="last", help=LAYER_HELP)
    parser.add_argument("--pre-activation", action="store_true", help="the stage output before its final ReLU")
    parser.add_argument("--partitions", type=int, default=1, help="K class-range partitions (KCD Table 6)")
    parser.add_argument("--max-images", type=int, default=None, help="only the first n training images")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    with user_errors("benchmarks.kcd"):
        from datamodules import datamodule_for

        datamodule = datamodule_for(args.dataset)(root=args.data_root, eval_batch_size=args.batch_size)
        datamodule.setup("fit")
        num_classes = datamodule.num_classes
        teacher = _network(args.teacher, num_classes, "teacher")
        student = _network(args.student, num_classes, "student")
        for network in (teacher, student):
            check_layer(network, args.layer, args.pre_activation)
        if not 1 <= args.partitions <= num_classes:
            raise KDBenchError(f"--partitions {args.partitions} must be in 1..{num_classes}")
        batches, total = normalised_train_batches(datamodule, "cpu", args.max_images)
        stats = consistency_statistics(
            teacher,
            student,
            batches,
            total,
            layer=args.layer,
            pre_activation=args.pre_activation,
            groups=statistic_groups(args.metrics, args.kl_distribution),
            partitions=args.partitions,
            num_classes=num_classes,
            eps=1e-8,
        )
        images = int(stats.sums["count"].sum())
        print(
            f"KCD consistency of {args.student.partition('=')[0]} (c_S={stats.c_s}) with "
            f"{args.teacher.partition('=')[0]} (c_T={stats.c_t}), layer {args.layer}, {images} training images, "
            f"{args.partitions} partition(s)"
        )
        print(render(gamma_rows(stats, args.metrics, args.kl_distribution)))


if __name__ == "__main__":
    main()
