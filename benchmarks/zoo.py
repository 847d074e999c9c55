"""The model zoo as a table: ``python -m benchmarks.zoo [--format markdown|csv] [--dataset cifar|tiny-imagenet|imagenet]``.

One row per registered network: its input family and class count (CIFAR-100: 100, Tiny-ImageNet: 200, ImageNet:
1000 — the counts the spec's figures use), parameters (deploy form: every parameter, BN affine included, buffers
excluded), conv + linear MACs for one image at the native input size (FlopCounterMode in eval mode, see
:mod:`models.profile`), the embedding (pooled) dimension, and the channels and spatial sizes of the stem, of every
stage and of the map entering global pooling — read from the network contract, no forward pass on data.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cache

from models import list_models, model_entry
from models.contract import FeatureShape
from models.profile import DATASET_NUM_CLASSES, count_macs, count_parameters, meta_model

__all__ = ["ZooRow", "zoo_row", "zoo_rows", "render_csv", "render_markdown", "main"]

_DATASET_ORDER = list(DATASET_NUM_CLASSES)


@dataclass(frozen=True)
class ZooRow:
    name: str
    dataset: str
    num_classes: int
    input_size: int
    params: int
    macs: int
    embedding_dim: int
    stem: str
    stage_channels: str
    stage_sizes: str
    final_map: str


def _shape(shape: FeatureShape) -> str:
    return f"{shape.channels}x{shape.height}x{shape.width}"


def _natural_key(name: str) -> list[object]:
    # resnet8 < resnet14 < resnet110: compare digit runs as numbers.
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


@cache
def zoo_row(name: str) -> ZooRow:
    """One network's row (computed on the meta device; cached, the figures never change within a process)."""
    network = meta_model(name)
    return ZooRow(
        name=name,
        dataset=model_entry(name).dataset,
        num_classes=network.num_classes,
        input_size=network.input_size,
        params=count_parameters(network),
        macs=count_macs(network),
        embedding_dim=network.embedding_dim,
        stem=_shape(network.stem_shape),
        stage_channels="/".join(str(s.channels) for s in network.stage_shapes),
        stage_sizes="/".join(str(s.height) for s in network.stage_shapes),
        final_map=_shape(network.final_shape),
    )


def zoo_rows(dataset: str | None = None) -> list[ZooRow]:
    """Every registered network of ``dataset`` (all when None), CIFAR first, then Tiny-ImageNet, then ImageNet."""
    names = sorted(list_models(dataset), key=lambda n: (_DATASET_ORDER.index(model_entry(n).dataset), _natural_key(n)))
    return [zoo_row(name) for name in names]


def render_csv(rows: Sequence[ZooRow]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(ZooRow.__dataclass_fields__), lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(row) for row in rows)
    return buffer.getvalue()


def render_markdown(rows: Sequence[ZooRow]) -> str:
    header = (
        "| network | dataset | classes | input | params | MACs (M) | embedding | stem | stage channels "
        "| stage sizes | final map |"
    )
    lines = [
        f"| {r.name} | {r.dataset} | {r.num_classes} | {r.input_size} | {r.params:,} | {r.macs / 1e6:.2f} | "
        f"{r.embedding_dim} | {r.stem} | {r.stage_channels} | {r.stage_sizes} | {r.final_map} |"
        for r in rows
    ]
    return "\n".join([header, "|---|---|---:|---:|---:|---:|---:|---|---|---|---|", *lines]) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.zoo", description=__doc__.splitlines()[0])
    parser.add_argument("--format", choices=["markdown", "csv"], default="markdown")
    parser.add_argument("--dataset", choices=_DATASET_ORDER, default=None, help="only the networks of this family")
    args = parser.parse_args(argv)
    rows = zoo_rows(args.dataset)
    sys.stdout.write(render_csv(rows) if args.format == "csv" else render_markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
