"""Table definitions (``tables/<name>.yaml``) and the papers' published numbers (``tables/paper_numbers.csv``).

A table file says which dataset and recipe it uses, which teacher->student pairs are its columns, which rows
(methods or named variants, with their hyper-parameters) it has, how many trials, and which published number
each cell is compared with::

    title: CIFAR-100, same-architecture pairs
    dataset: cifar100
    recipe: crd_cifar100            # an entry of configs/recipes/recipes.yaml
    trials: 3
    metric: best_top1               # best_top1 | last_top1
    pairs: [resnet56->resnet20, resnet32x4->resnet8x4]
    rows:
      - label: Teacher
        method: teacher             # the pair's teacher run itself
        paper: [{source: norm.T1, method: teacher}]
      - label: KD
        method: KD
        config: configs/methods/kd.yaml
        init_args: {temperature: 4.0}           # optional overrides of the method's arguments
        pair_init_args: {resnet56->resnet20: {}} # optional per-pair overrides
        paper: [{source: norm.T1, method: kd}]

``paper`` references select rows of the CSV by paper, table, method and the cell's pair (the pair's names are
translated to the CSV's with ``tables/paper_names.yaml``); ``note`` narrows to rows whose note contains it.
The first reference is the one Δ is computed against; further ones are shown as quoted rows.
A row with ``quoted_only: true`` has no kdbench run: its published numbers are shown, never as ours.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from benchmarks.errors import KDBenchError

__all__ = [
    "REPO_ROOT",
    "TABLES_DIR",
    "Pair",
    "PaperRef",
    "Row",
    "Table",
    "PaperNumber",
    "load_table",
    "list_tables",
    "paper_numbers",
    "lookup_paper",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
TABLES_DIR = REPO_ROOT / "tables"
PAPER_CSV = TABLES_DIR / "paper_numbers.csv"
PAPER_NAMES = TABLES_DIR / "paper_names.yaml"


@dataclass(frozen=True)
class Pair:
    teacher: str
    student: str

    @classmethod
    def parse(cls, text: str) -> Pair:
        parts = [p.strip() for p in str(text).replace("→", "->").split("->")]
        if len(parts) != 2 or not all(parts):
            raise KDBenchError(f"pair {text!r} is not of the form 'teacher->student'")
        return cls(parts[0], parts[1])

    @property
    def label(self) -> str:
        return f"{self.teacher}->{self.student}"

    @property
    def display(self) -> str:
        return f"{self.teacher}→{self.student}"


@dataclass(frozen=True)
class PaperRef:
    source: str  # "<paper>.<table>" as in the CSV, e.g. "norm.T1"
    method: str
    note: str | None = None
    label: str | None = None  # how the reference is named in the rendered table

    @property
    def paper(self) -> str:
        return self.source.split(".", 1)[0]

    @property
    def table(self) -> str:
        return self.source.split(".", 1)[1]

    @property
    def display(self) -> str:
        return self.label or f"{self.paper.upper()} {self.table}" + (f" ({self.note})" if self.note else "")


@dataclass
class Row:
    label: str
    method: str  # a method class name, or "teacher"
    config: str | None = None
    init_args: dict[str, Any] = field(default_factory=dict)
    pair_init_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    paper: list[PaperRef] = field(default_factory=list)
    quoted_only: bool = False

    @property
    def is_teacher(self) -> bool:
        return self.method == "teacher"

    def args_for(self, pair: Pair) -> dict[str, Any]:
        return {**self.init_args, **self.pair_init_args.get(pair.label, {})}


@dataclass
class Table:
    name: str
    title: str
    dataset: str
    recipe: str
    pairs: list[Pair]
    rows: list[Row]
    trials: int = 1
    metric: str = "best_top1"
    teacher_recipe: str | None = None
    notes: list[str] = field(default_factory=list)
    path: Path | None = None

    def row(self, label: str) -> Row:
        for row in self.rows:
            if row.label == label:
                return row
        raise KDBenchError(f"table {self.name} has no row {label!r}; valid: {', '.join(r.label for r in self.rows)}")


def list_tables() -> list[str]:
    return sorted(p.stem for p in TABLES_DIR.glob("*.yaml") if p.name != PAPER_NAMES.name)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def load_table(name: str) -> Table:
    path = TABLES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise KDBenchError(f"unknown table {name!r}; valid: {', '.join(list_tables())}")
    raw = yaml.safe_load(path.read_text()) or {}
    try:
        rows = [
            Row(
                label=str(r["label"]),
                method=str(r["method"]),
                config=r.get("config"),
                init_args=dict(r.get("init_args") or {}),
                pair_init_args={Pair.parse(k).label: dict(v or {}) for k, v in (r.get("pair_init_args") or {}).items()},
                paper=[PaperRef(**ref) for ref in _as_list(r.get("paper"))],
                quoted_only=bool(r.get("quoted_only", False)),
            )
            for r in raw["rows"]
        ]
        table = Table(
            name=name,
            title=str(raw.get("title", name)),
            dataset=str(raw["dataset"]),
            recipe=str(raw["recipe"]),
            teacher_recipe=raw.get("teacher_recipe"),
            pairs=[Pair.parse(p) for p in raw["pairs"]],
            rows=rows,
            trials=int(raw.get("trials", 1)),
            metric=str(raw.get("metric", "best_top1")),
            notes=[str(n) for n in _as_list(raw.get("notes"))],
            path=path,
        )
    except (KeyError, TypeError) as error:
        raise KDBenchError(f"table file {path} is malformed: {type(error).__name__} {error}") from None
    if table.metric not in ("best_top1", "last_top1"):
        raise KDBenchError(f"table {name}: metric {table.metric!r} is not one of best_top1, last_top1")
    return table


# ------------------------------------------------------------------------------------------ published numbers
@dataclass(frozen=True)
class PaperNumber:
    paper: str
    table: str
    dataset: str
    metric: str
    teacher: str
    student: str
    method: str
    value: str  # as printed
    std: str
    trials: str
    note: str

    @property
    def number(self) -> float:
        return float(self.value)


@lru_cache(maxsize=1)
def paper_numbers() -> tuple[PaperNumber, ...]:
    with open(PAPER_CSV, newline="") as handle:
        return tuple(
            PaperNumber(
                paper=r["paper"],
                table=r["table"],
                dataset=r["dataset"],
                metric=r["metric"],
                teacher=r["teacher"],
                student=r["student"],
                method=r["method"],
                value=r["value"],
                std=r["std"],
                trials=r["trials"],
                note=r["note"],
            )
            for r in csv.DictReader(handle)
        )


@lru_cache(maxsize=1)
def _paper_names() -> dict[str, str]:
    if not PAPER_NAMES.is_file():
        return {}
    return {str(k): str(v) for k, v in (yaml.safe_load(PAPER_NAMES.read_text()) or {}).items()}


def paper_name(arch: str) -> str:
    """The name the papers' CSV uses for a kdbench network (``tables/paper_names.yaml``; default: itself)."""
    return _paper_names().get(arch, arch)


def lookup_paper(ref: PaperRef, pair: Pair, metric: str = "top1") -> list[PaperNumber]:
    """Published numbers for ``ref`` in the column of ``pair`` (usually one)."""
    teacher, student = paper_name(pair.teacher), paper_name(pair.student)
    return [
        n
        for n in paper_numbers()
        if n.paper == ref.paper
        and n.table == ref.table
        and n.method == ref.method
        and n.metric == metric
        and n.teacher == teacher
        and n.student == student
        and (ref.note is None or ref.note in n.note)
    ]
