"""Table definitions (``tables/<name>.yaml``) and the papers' published numbers (``tables/paper_numbers.csv``).

A table file is data.  It says which dataset and recipe it uses, which teacher->student pairs are its columns,
which rows (methods or named variants, with their hyper-parameters) it has, how many trials, which epoch is
reported, and which published number each cell is compared with::

    title: CIFAR-100, same-architecture pairs
    paper: norm                     # whose table this is (omitted for kdbench's own unified tables)
    dataset: cifar100               # a key of datamodules.DATASETS
    recipe: crd_cifar100            # an entry of configs/recipes/recipes.yaml, for every run of the table ...
    pair_recipes: {resnet34->resnet18: norm_imagenet_step}   # ... unless a pair ...
    teacher_recipe: crd_cifar100    # ... or the teachers use another one
    teacher_checkpoints:            # released teacher weights instead of trained teachers (path under --data-root)
      resnet34: {path: teachers/imagenet/resnet34-333f7ec4.pth, url: https://download.pytorch.org/models/...}
    teachers: released              # tables that offer both (CIFAR-100): the paper's choice, released | trained;
                                    # --teachers overrides it (released: models.releases' public teachers)
    trials: 5                       # the paper's count (trials_note says where it comes from)
    metric: best_top1               # best_top1 (best evaluation epoch) | last_top1 (last epoch): the paper's protocol
    metrics: [top1, top5]           # which accuracies the paper prints per pair (default [top1]), or analysis
                                    # metrics its diagnostic rows record (ANALYSIS_METRICS: kl_div, lda_top1 ...)
    pairs: [resnet56->resnet20, resnet32x4->resnet8x4]
    paper_pairs: {resnet50->mobilenetv1: resnet50->mobilenetv2}   # a column printed under other names in the CSV
    column_notes:                   # a column's CSV rows by note (two columns of one CSV pair, e.g. ND T6's ViT-B†)
      resnet152->vit_b@mae: {note: †}   # (a pair label may carry a variant: the same networks, another column)
    quoted_columns:                 # columns of the paper kdbench does not run: numbers only
      - {label: R152→ViT-S, paper_pair: resnet152->vit_s}
    rows:
      - label: Teacher
        method: teacher             # the pair's teacher run itself
        paper: [{source: norm.T1, method: teacher}]
      - label: KD
        method: KD                  # a kd_modules class name
        config: configs/methods/kd.yaml          # optional method config fragment
        init_args: {temperature: 4.0}            # the method's arguments (model.init_args.*)
        pair_init_args: {resnet56->resnet20: {}} # per-pair arguments
        overrides: {data.init_args.contrast_k: 16384}   # any other config key (dotted); pair_overrides per pair
        recipe: crd_cifar100        # this row's own recipe (e.g. baselines a paper quotes from CRD)
        metric: last_top1           # this row's own protocol (e.g. CRD's last-epoch numbers)
        teacher_seed: 1             # distil from a teacher trained with another seed (KCD T3b)
        pairs: [resnet56->resnet20] # only these columns have cells of this row (default: every pair)
        paper: [{source: norm.T1, method: kd}]
      - label: DistPro
        method: DistPro
        config: configs/methods/distpro.yaml     # the config the method will read once it exists
        quoted_only: true           # published numbers only, while kdbench has no DistPro method
        paper: [{source: norm.T1, method: distpro, absent: [wrn_40_2->wrn_40_1]}]

**Published numbers.**  ``paper`` references select rows of the CSV by paper and CSV table (``source``, e.g.
``norm.T1``, ``letkd.supp-T1``), ``method`` and the cell's column.  A pair column's CSV names come from
``tables/paper_names.yaml`` (kdbench network name -> CSV name; a ``_tiny`` suffix is dropped first), unless
``paper_pairs`` (table) or ``pairs`` (one reference) names the CSV pair for that column.  ``note`` keeps only CSV
rows whose note contains it, ``not_note`` only rows whose note does not.  Each reference must resolve to exactly
one CSV row per column and metric, except in the columns listed under its ``absent`` (the paper printed ``n/a``
or ``-`` there) — a test checks this for every table, so no cell silently resolves to nothing.

**Quoted-only rows** are the rows of methods kdbench does not implement: they show the published numbers only.
As soon as a ``kd_modules`` class of the row's ``method`` exists, the row is planned and run like any other (with
its ``config``), so adding a method needs no edit of the tables that quote it.  The first
reference of a row is the one Δ is computed against; further ones are shown as quoted lines under the row.

**Columns that are not pairs.**  Ablation tables whose printed columns are settings rather than pairs (KCD T3a's
θ0..θ3 student initialisations, KCD T2's consistency metrics, KCD T6's number of transformations, letKD T5's
parts) are written with their settings as *rows*, one variant each, and the single pair as the only column; the
row label carries the printed column header.  Tables whose columns are pairs *and* metrics (ND T2, letKD T2:
top-1 and top-5 per pair) list ``metrics``; each pair then renders as one column per metric, all from the same
runs (``best_top5`` is the top-5 at the best top-1 epoch, ``last_top5`` at the last epoch).

**Analysis tables.**  A table whose cells are not accuracies (KCD T10's channel overlaps, T11's KL divergence and
L2 distance, letKD supp. T4's LDA-probe top-1) lists those metrics under ``metrics``: names of
:data:`ANALYSIS_METRICS`, which diagnostic rows (``kd_modules.diagnostics``) write into their records under the same
name.  The record key of such a column is the metric itself (the protocol, best or last epoch, is an accuracy
notion and does not apply), and the paper's CSV rows carry the same metric name.

**Names.**  Networks are kdbench registry names (``models.create_model``); methods are ``kd_modules`` class
names; variants are ``init_args`` of their method.  A row may name a method or argument that has not landed
yet: the planner then shows the cell as blocked with the reason (the method is missing, or it does not accept
an argument, listing the ones it does) rather than failing.
"""

from __future__ import annotations

import csv
import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from benchmarks.errors import KDBenchError

__all__ = [
    "REPO_ROOT",
    "TABLES_DIR",
    "PAPER_CSV",
    "Pair",
    "PaperRef",
    "QuotedColumn",
    "ReleasedTeacher",
    "TEACHER_CHOICES",
    "Column",
    "Row",
    "Table",
    "PaperNumber",
    "METRICS",
    "ANALYSIS_METRICS",
    "PROTOCOLS",
    "load_table",
    "list_tables",
    "paper_numbers",
    "paper_name",
    "lookup_paper",
    "cell_metric",
    "higher_is_better",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
TABLES_DIR = REPO_ROOT / "tables"
PAPER_CSV = TABLES_DIR / "paper_numbers.csv"
PAPER_NAMES = TABLES_DIR / "paper_names.yaml"

#: Accuracies a paper prints per pair.
METRICS = ("top1", "top5")
#: Record metrics of diagnostic rows that analysis tables print (name -> what it is, and whether higher is better).
ANALYSIS_METRICS: dict[str, tuple[str, bool]] = {
    **{f"overlap_top{k}": (f"shared top-{k} channels, % (KCD T10)", True) for k in (10, 20, 50, 100)},
    "kl_div": ("KL divergence between the teacher's and the student's features (KCD T11)", False),
    "l2_dist": ("L2 distance between the teacher's and the student's feature maps (KCD T11)", False),
    "lda_top1": ("top-1 % of an LDA classifier on pooled student features (letKD supp. T4)", True),
}
#: Where a table's teachers come from, for tables that offer the choice (``teachers:`` / ``--teachers``).
TEACHER_CHOICES = ("released", "trained")
#: Which evaluation epoch a table reports: the best one (NORM, letKD, ND, mdistiller) or the last one (CRD).
PROTOCOLS = ("best_top1", "last_top1")


@dataclass(frozen=True)
class Pair:
    """A teacher->student column; ``variant`` names a second column of the same networks (``resnet152->vit_b@mae``:
    ND Table 6's ViT-B under MAE's recipe beside ViT-B under the plain one), set apart by ``pair_recipes`` etc."""

    teacher: str
    student: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Pair:
        text, _, variant = str(text).partition("@")
        parts = [p.strip() for p in text.replace("→", "->").split("->")]
        if len(parts) != 2 or not all(parts) or (_ and not variant.strip()):
            raise KDBenchError(f"pair {text!r} is not of the form 'teacher->student' (or 'teacher->student@variant')")
        return cls(parts[0], parts[1], variant.strip())

    @property
    def label(self) -> str:
        return f"{self.teacher}->{self.student}" + (f"@{self.variant}" if self.variant else "")

    @property
    def display(self) -> str:
        return f"{self.teacher}→{self.student}" + (f" ({self.variant})" if self.variant else "")


def _csv_pair(text: str) -> tuple[str, str]:
    """A CSV column's (teacher, student); either side may be empty (``->resnet50_1_4``: unnamed teacher; ``->``:
    neither named, as KCD T11's analysis rows)."""
    parts = [p.strip() for p in str(text).replace("→", "->").split("->")]
    if len(parts) != 2:
        raise KDBenchError(f"paper pair {text!r} is not of the form 'teacher->student' (CSV names)")
    return parts[0], parts[1]


@dataclass(frozen=True)
class PaperRef:
    source: str  # "<paper>.<CSV table>", e.g. "norm.T1", "letkd.supp-T1"
    method: str  # the CSV's method name
    note: str | None = None  # keep CSV rows whose note contains this
    not_note: str | None = None  # keep CSV rows whose note does not contain this
    label: str | None = None  # how the reference is named in the rendered table
    absent: tuple[str, ...] = ()  # columns where the paper printed no number
    pairs: tuple[tuple[str, str], ...] = ()  # (column key, "csv_teacher->csv_student") for this reference only

    @property
    def paper(self) -> str:
        return self.source.split(".", 1)[0]

    @property
    def table(self) -> str:
        return self.source.split(".", 1)[1] if "." in self.source else ""

    @property
    def display(self) -> str:
        return self.label or f"{self.paper.upper()} {self.table}" + (f" ({self.note})" if self.note else "")

    def csv_pair_for(self, column_key: str) -> tuple[str, str] | None:
        return next((_csv_pair(value) for key, value in self.pairs if key == column_key), None)


@dataclass(frozen=True)
class QuotedColumn:
    """A column of the paper that kdbench does not run (a network it will not build): numbers only."""

    label: str
    paper_pair: tuple[str, str]
    note: str | None = None
    not_note: str | None = None


@dataclass(frozen=True)
class ReleasedTeacher:
    """Published teacher weights used instead of a trained teacher (ImageNet: torchvision's)."""

    path: str  # relative to --data-root (or absolute)
    url: str | None = None


@dataclass(frozen=True)
class Column:
    """One printed column: a pair (or a quoted column) and one paper metric."""

    key: str  # the pair label, or the quoted column's label
    label: str  # display header
    pair: Pair | None  # None: a quoted column (no kdbench runs)
    metric: str  # "top1" | "top5"
    paper_teacher: str
    paper_student: str
    note: str | None = None
    not_note: str | None = None

    @property
    def quoted(self) -> bool:
        return self.pair is None


@dataclass
class Row:
    label: str
    method: str  # a method class name, or "teacher"
    config: str | None = None
    init_args: dict[str, Any] = field(default_factory=dict)
    pair_init_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    pair_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    recipe: str | None = None
    metric: str | None = None
    teacher_seed: int | None = None
    paper: list[PaperRef] = field(default_factory=list)
    quoted_only: bool = False
    note: str | None = None
    pairs: list[str] = field(default_factory=list)  # the columns the row has cells in (empty: every pair)

    def has_cell(self, pair: Pair) -> bool:
        return not self.pairs or pair.label in self.pairs

    @property
    def is_teacher(self) -> bool:
        return self.method == "teacher"

    def args_for(self, pair: Pair) -> dict[str, Any]:
        return {**self.init_args, **self.pair_init_args.get(pair.label, {})}

    def overrides_for(self, pair: Pair) -> dict[str, Any]:
        return {**self.overrides, **self.pair_overrides.get(pair.label, {})}


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
    paper: str | None = None
    metrics: list[str] = field(default_factory=lambda: ["top1"])
    pair_recipes: dict[str, str] = field(default_factory=dict)
    paper_pairs: dict[str, tuple[str, str]] = field(default_factory=dict)
    quoted_columns: list[QuotedColumn] = field(default_factory=list)
    teacher_checkpoints: dict[str, ReleasedTeacher] = field(default_factory=dict)
    trials_note: str | None = None
    data_roots: list[str] = field(default_factory=list)
    preset: str | None = None  # the run preset when the command names none (fmnist: cpu)
    teachers: str | None = None  # "released" | "trained": the paper's choice where both are possible, else None
    column_notes: dict[str, dict[str, str]] = field(default_factory=dict)  # pair label -> {note | not_note: text}

    def teacher_mode(self, override: str | None = None) -> str:
        """``released`` or ``trained``: ``override`` (``--teachers``) where the table offers the choice, else its own.

        Tables that declare no ``teachers`` have one source only: their ``teacher_checkpoints`` (released) where
        they name them, trained teachers otherwise; ``--teachers`` leaves them as they are.
        """
        if self.teachers is None:
            return "released" if self.teacher_checkpoints else "trained"
        return override or self.teachers

    def with_teacher_note(self, override: str | None = None) -> Table:
        """This table with a note saying where its teachers come from (shown in the rendered table)."""
        if self.teachers is None:
            return self
        mode = self.teacher_mode(override)
        paper = "the paper's choice" if mode == self.teachers else f"the paper used {self.teachers} teachers"
        if mode == "released":
            text = (
                f"Teachers: released weights ({paper}; RepDistiller's CIFAR-100 teachers from mdistiller's "
                "cifar_teachers.tar, see models/releases.py); --teachers trained trains them here instead."
            )
        else:
            text = f"Teachers: trained here with the teacher recipe ({paper}); --teachers released uses public ones."
        return dataclasses.replace(self, notes=[*self.notes, text])

    def row(self, label: str) -> Row:
        for row in self.rows:
            if row.label == label:
                return row
        raise KDBenchError(f"table {self.name} has no row {label!r}; valid: {', '.join(r.label for r in self.rows)}")

    def pair(self, label: str) -> Pair:
        for pair in self.pairs:
            if pair.label == label:
                return pair
        raise KDBenchError(f"table {self.name} has no pair {label!r}; valid: {', '.join(self.column_keys())}")

    def recipe_for(self, row: Row, pair: Pair) -> str:
        return row.recipe or self.pair_recipes.get(pair.label) or self.recipe

    def column_keys(self) -> list[str]:
        return [p.label for p in self.pairs] + [q.label for q in self.quoted_columns]

    def columns(self, pairs: list[Pair] | None = None) -> list[Column]:
        """The printed columns: each (chosen) pair, then each quoted column, once per paper metric."""
        # (key, header, pair, CSV teacher, CSV student, note, not_note) of each column, before its metrics
        sources = []
        for pair in self.pairs if pairs is None else pairs:
            teacher, student = self.paper_pairs.get(pair.label) or (paper_name(pair.teacher), paper_name(pair.student))
            notes = self.column_notes.get(pair.label, {})
            sources.append((pair.label, pair.display, pair, teacher, student, notes.get("note"), notes.get("not_note")))
        sources += [(q.label, q.label, None, *q.paper_pair, q.note, q.not_note) for q in self.quoted_columns]
        columns = []
        for key, header, pair, teacher, student, note, not_note in sources:
            for metric in self.metrics:
                label = header + (f" {metric}" if len(self.metrics) > 1 else "")
                columns.append(Column(key, label, pair, metric, teacher, student, note, not_note))
        return columns


def cell_metric(protocol: str, metric: str) -> str:
    """The record key of our value for a column: ``best_top1`` + ``top5`` -> ``best_top5``; an analysis metric is
    its own key (``kl_div``)."""
    if metric in ANALYSIS_METRICS:
        return metric
    return f"{protocol.split('_', 1)[0]}_{metric}"


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of a column's metric is the better one (accuracies, overlaps: yes; distances: no)."""
    return ANALYSIS_METRICS[metric][1] if metric in ANALYSIS_METRICS else True


def list_tables() -> list[str]:
    """Table names: kdbench's unified tables first, then the papers' (``<paper>.<table>``)."""
    names = [p.stem for p in TABLES_DIR.glob("*.yaml") if p.name != PAPER_NAMES.name]
    return sorted(names, key=lambda n: ("." in n, n))


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


#: The keys a table file, a row, a paper reference and a quoted column may have: the fields of their classes
#: (``name`` and ``path`` of a table come from its file).
TABLE_KEYS = {f.name for f in dataclasses.fields(Table)} - {"name", "path"}
ROW_KEYS = {f.name for f in dataclasses.fields(Row)}
REF_KEYS = {f.name for f in dataclasses.fields(PaperRef)}
QUOTED_KEYS = {f.name for f in dataclasses.fields(QuotedColumn)}


def _check_keys(raw: Any, valid: set[str], where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise KDBenchError(f"{where} must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - valid)
    if unknown:
        raise KDBenchError(f"{where}: unknown key {unknown[0]!r}; valid: {', '.join(sorted(valid))}")
    return raw


def _pair_keyed(raw: Any, where: str) -> dict[str, dict[str, Any]]:
    return {Pair.parse(k).label: dict(v or {}) for k, v in _check_keys(raw or {}, set(raw or {}), where).items()}


def _ref(raw: Any, where: str) -> PaperRef:
    raw = _check_keys(raw, REF_KEYS, where)
    return PaperRef(
        source=str(raw["source"]),
        method=str(raw["method"]),
        note=raw.get("note"),
        not_note=raw.get("not_note"),
        label=raw.get("label"),
        absent=tuple(str(a).replace("→", "->") for a in _as_list(raw.get("absent"))),
        pairs=tuple((str(k).replace("→", "->"), str(v)) for k, v in (raw.get("pairs") or {}).items()),
    )


def _row(raw: Any, where: str) -> Row:
    raw = _check_keys(raw, ROW_KEYS, where)
    where = f"{where} ({raw.get('label')})"
    return Row(
        label=str(raw["label"]),
        method=str(raw["method"]),
        config=raw.get("config"),
        init_args=dict(raw.get("init_args") or {}),
        pair_init_args=_pair_keyed(raw.get("pair_init_args"), f"{where} pair_init_args"),
        overrides=dict(raw.get("overrides") or {}),
        pair_overrides=_pair_keyed(raw.get("pair_overrides"), f"{where} pair_overrides"),
        recipe=raw.get("recipe"),
        metric=raw.get("metric"),
        teacher_seed=None if raw.get("teacher_seed") is None else int(raw["teacher_seed"]),
        paper=[_ref(ref, f"{where} paper reference") for ref in _as_list(raw.get("paper"))],
        quoted_only=bool(raw.get("quoted_only", False)),
        note=raw.get("note"),
        pairs=[Pair.parse(p).label for p in _as_list(raw.get("pairs"))],
    )


def _validate(table: Table) -> None:
    where = f"table {table.name}"
    presets = sorted(p.stem for p in (REPO_ROOT / "configs" / "presets").glob("*.yaml"))
    for key, valid in (("preset", presets), ("teachers", TEACHER_CHOICES), ("metric", PROTOCOLS)):
        value = getattr(table, key)
        if value is not None and value not in valid:
            raise KDBenchError(f"{where}: {key} {value!r} is not one of {', '.join(valid)}")
    valid_metrics = (*METRICS, *ANALYSIS_METRICS)
    bad_metrics = [m for m in table.metrics if m not in valid_metrics]
    if bad_metrics or not table.metrics:
        raise KDBenchError(f"{where}: metrics {table.metrics!r} must be a non-empty list of {', '.join(valid_metrics)}")
    if table.trials < 1:
        raise KDBenchError(f"{where}: trials must be at least 1, got {table.trials}")
    duplicates = sorted(label for label, n in Counter(r.label for r in table.rows).items() if n > 1)
    if duplicates:
        raise KDBenchError(f"{where}: row label {duplicates[0]!r} is used twice (row labels must be unique)")
    keys = table.column_keys()
    if len(set(keys)) != len(keys):
        raise KDBenchError(f"{where}: a pair or quoted column is listed twice")
    pair_labels = {p.label for p in table.pairs}
    for mapping, what in (
        (table.pair_recipes, "pair_recipes"),
        (table.paper_pairs, "paper_pairs"),
        (table.column_notes, "column_notes"),
    ):
        for key in mapping:
            if key not in pair_labels:
                raise KDBenchError(f"{where}: {what} names pair {key!r}; valid: {', '.join(sorted(pair_labels))}")
    for row in table.rows:
        if row.metric is not None and row.metric not in PROTOCOLS:
            raise KDBenchError(f"{where} row {row.label}: metric {row.metric!r} is not one of {', '.join(PROTOCOLS)}")
        for key in list(row.pair_init_args) + list(row.pair_overrides) + row.pairs:
            if key not in pair_labels:
                raise KDBenchError(
                    f"{where} row {row.label}: per-pair settings name pair {key!r}; valid: {', '.join(sorted(pair_labels))}"
                )
        if row.quoted_only and not row.paper:
            raise KDBenchError(f"{where} row {row.label}: a quoted-only row needs paper references")
        for ref in row.paper:
            if "." not in ref.source:
                raise KDBenchError(f"{where} row {row.label}: paper source {ref.source!r} is not '<paper>.<table>'")
            for key in list(ref.absent) + [k for k, _ in ref.pairs]:
                if key not in keys:
                    raise KDBenchError(
                        f"{where} row {row.label}: reference {ref.display} names column {key!r}; valid: {', '.join(keys)}"
                    )


def load_table(name: str) -> Table:
    path = TABLES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise KDBenchError(f"unknown table {name!r}; valid: {', '.join(list_tables())}")
    raw = yaml.safe_load(path.read_text()) or {}
    try:
        raw = _check_keys(raw, TABLE_KEYS, f"table file {path.name}")
        table = Table(
            name=name,
            title=str(raw.get("title", name)),
            paper=raw.get("paper"),
            dataset=str(raw["dataset"]),
            recipe=str(raw["recipe"]),
            pair_recipes={Pair.parse(k).label: str(v) for k, v in (raw.get("pair_recipes") or {}).items()},
            teacher_recipe=raw.get("teacher_recipe"),
            teacher_checkpoints={
                str(arch): ReleasedTeacher(**_check_keys(spec, {"path", "url"}, f"teacher_checkpoints.{arch}"))
                for arch, spec in (raw.get("teacher_checkpoints") or {}).items()
            },
            pairs=[Pair.parse(p) for p in raw["pairs"]],
            paper_pairs={Pair.parse(k).label: _csv_pair(v) for k, v in (raw.get("paper_pairs") or {}).items()},
            quoted_columns=[
                QuotedColumn(**{**q, "label": str(q["label"]), "paper_pair": _csv_pair(q["paper_pair"])})
                for q in (_check_keys(q, QUOTED_KEYS, "quoted column") for q in _as_list(raw.get("quoted_columns")))
            ],
            rows=[_row(r, f"table file {path.name} row") for r in raw["rows"]],
            trials=int(raw.get("trials", 1)),
            trials_note=raw.get("trials_note"),
            metric=str(raw.get("metric", "best_top1")),
            metrics=[str(m) for m in _as_list(raw.get("metrics")) or ["top1"]],
            notes=[str(n) for n in _as_list(raw.get("notes"))],
            data_roots=[str(r) for r in _as_list(raw.get("data_roots"))],
            preset=raw.get("preset"),
            teachers=raw.get("teachers"),
            column_notes={
                Pair.parse(k).label: dict(_check_keys(v, {"note", "not_note"}, f"column_notes.{k}"))
                for k, v in (raw.get("column_notes") or {}).items()
            },
            path=path,
        )
    except (KeyError, TypeError) as error:
        raise KDBenchError(f"table file {path} is malformed: {type(error).__name__} {error}") from None
    _validate(table)
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

    @property
    def key(self) -> tuple[str, ...]:
        """Identifies the CSV row (the CSV has intended duplicate keys that differ only by note)."""
        return (self.paper, self.table, self.metric, self.teacher, self.student, self.method, self.note)


@lru_cache(maxsize=1)
def paper_numbers() -> tuple[PaperNumber, ...]:
    with open(PAPER_CSV, newline="") as handle:
        names = [f.name for f in dataclasses.fields(PaperNumber)]
        return tuple(PaperNumber(**{name: row[name] for name in names}) for row in csv.DictReader(handle))


@lru_cache(maxsize=1)
def _paper_index() -> dict[tuple[str, str, str], list[PaperNumber]]:
    index: dict[tuple[str, str, str], list[PaperNumber]] = {}
    for number in paper_numbers():
        index.setdefault((number.paper, number.table, number.method), []).append(number)
    return index


@lru_cache(maxsize=1)
def _paper_names() -> dict[str, str]:
    return {str(k): str(v) for k, v in (yaml.safe_load(PAPER_NAMES.read_text()) or {}).items()}


TINY_SUFFIX = "_tiny"


def paper_name(arch: str) -> str:
    """The name the papers' CSV uses for a kdbench network (``tables/paper_names.yaml``; default: itself).

    Tiny-ImageNet networks (``<cifar name>_tiny``) are printed under their CIFAR names.
    """
    names = _paper_names()
    if arch not in names and arch.endswith(TINY_SUFFIX):
        return paper_name(arch.removesuffix(TINY_SUFFIX))
    return names.get(arch, arch)


def lookup_paper(ref: PaperRef, column: Column) -> list[PaperNumber]:
    """Published numbers of ``ref`` in ``column`` (exactly one unless the column is in ``ref.absent``)."""
    teacher, student = ref.csv_pair_for(column.key) or (column.paper_teacher, column.paper_student)
    return [
        n
        for n in _paper_index().get((ref.paper, ref.table, ref.method), [])
        if n.metric == column.metric
        and n.teacher == teacher
        and n.student == student
        and all(text is None or text in n.note for text in (ref.note, column.note))
        and all(text is None or text not in n.note for text in (ref.not_note, column.not_note))
    ]
