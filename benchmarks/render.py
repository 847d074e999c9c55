"""Rendering a table from the result store: ours (mean ± std, n) beside the papers' numbers, Δ, CSV and a plot.

For every cell (row x column x metric) the renderer reads the records of the cell's runs (one per trial) and
shows ``ours mean ± std (n) / paper / Δ`` (Δ = ours − paper, against the row's first paper reference).  The
spread is the sample standard deviation (n − 1, pandas' and most KD code's ``std``; of the four papers only letKD
prints a spread, ``∓`` over 5 trials, without saying which estimator), or with ``ci=True`` (``--ci``) the
half-width of the 95% confidence interval of the mean (Student's t, n − 1 degrees of freedom); a cell of one run
shows no spread.  Records
are found by the cell they serve, as each record names it (``info.cells``: table, row, pair, trial): a run made
before a default changed its identity still renders, marked ``†`` with the settings in which its config differs
from the table's current one, until the current run exists.  In each
column the best of ours and the best published number (teacher rows excluded) are in bold.  Cells that cannot
run yet (``n/a``), runs that failed (``failed``) and runs not made yet (``not run``) say so, with the reason as a
footnote.  Quoted-only rows and quoted columns show published numbers only.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from benchmarks import plots
from benchmarks.execute import failure_message
from benchmarks.numerics import REFERENCE_LABEL, numerics_label
from benchmarks.plan import Plan, identity_view
from benchmarks.store import RunStore
from benchmarks.tables import ANALYSIS_METRICS, Column, PaperRef, Row, cell_metric, higher_is_better, lookup_paper

__all__ = [
    "CellResult",
    "collect",
    "render_markdown",
    "write_table",
    "plot_table",
    "format_ours",
    "best_cells",
    "SPREAD_NOTE",
    "confidence_half_width",
    "MATCH_TOLERANCE",
]

#: A cell "matches" the paper when |ours − paper| is at most this (top-1 points).
MATCH_TOLERANCE = 0.5

#: The footnote of a cell shown from a run made under an earlier config.
STALE_NOTE = "† from a run made with another config than the table now plans: "

#: The footnote of a cell whose run diverged and was recorded (``on_divergence: record``, the smoke preset).
DIVERGED_NOTE = "‡ diverged, recorded instead of failed (smoke preset): "

#: How the ± of a cell is computed, as the tables say it (keyed by ``ci``).
SPREAD_NOTE = {
    False: "± is the sample standard deviation over the trials (n − 1 in the denominator); one run shows none.",
    True: "± is the half-width of the 95% confidence interval of the mean (Student's t with n − 1 degrees of "
    "freedom); one run shows none.",
}


@dataclass
class CellResult:
    row: str
    pair: str  # the column key (pair label)
    metric: str  # paper metric of the column: top1 | top5
    values: list[float]
    expected: int
    paper: float | None
    paper_text: str | None
    status: str  # "ok" | "partial" | "missing" | "failed" | "blocked"
    reason: str = ""
    smoke: bool = False
    paper_source: str = ""
    run_ids: list[str] = field(default_factory=list)
    stale: str = ""  # how the config of the runs shown differs from the table's current one ("" when current)
    diverged: str = ""  # a run that diverged and was recorded (smoke preset: ``on_divergence: record``)

    @property
    def mean(self) -> float | None:
        return sum(self.values) / len(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over the trials (Bessel's n − 1); None with fewer than two runs."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    @property
    def ci95(self) -> float | None:
        """Half-width of the 95% confidence interval of the mean (Student's t, n − 1 degrees of freedom)."""
        std = self.std
        return None if std is None else confidence_half_width(std, len(self.values))

    @property
    def delta(self) -> float | None:
        return None if self.mean is None or self.paper is None else self.mean - self.paper


def row_numerics(plan: Plan) -> dict[str, str]:
    """Row label -> the numerics its runs use (runs of one cell never differ: numerics are part of the identity)."""
    labels: dict[str, str] = {}
    for (row_label, _), run_ids in plan.cells.items():
        for run_id in run_ids:
            spec = plan.runs.get(run_id)
            if spec is not None and row_label not in labels:
                labels[row_label] = numerics_label(spec.config)
    return labels


def numerics_line(plan: Plan) -> str:
    """``Numerics: ...`` of the table's cells: one label, or which rows use which."""
    by_label: dict[str, list[str]] = {}
    for row, label in row_numerics(plan).items():
        by_label.setdefault(label, []).append(row)
    if not by_label:
        return f"Numerics: {REFERENCE_LABEL}."
    if len(by_label) == 1:
        return f"Numerics: {next(iter(by_label))} (every cell)."
    parts = [f"{label} ({', '.join(rows)})" for label, rows in by_label.items()]
    return "Numerics: " + "; ".join(parts) + "."


def confidence_half_width(std: float, n: int, level: float = 0.95) -> float:
    """``t_{(1+level)/2, n-1} * std / sqrt(n)``: the half-width of the ``level`` confidence interval of a mean."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2.0, n - 1) * std / math.sqrt(n))


def format_ours(mean: float, spread: float | None, n: int, expected: int) -> str:
    """``71.00 ± 1.00 (3)``; one run shows no spread (``73.50 (1)``); a partial cell says ``(1/3)``."""
    count = f"({n}/{expected})" if n < expected else f"({n})"
    return f"{mean:.2f}" + (f" ± {spread:.2f}" if spread is not None and n > 1 else "") + f" {count}"


def _columns(plan: Plan) -> list[Column]:
    return plan.table.columns(plan.pairs or plan.table.pairs)


def _paper_value(ref: PaperRef | None, column: Column) -> tuple[float | None, str | None]:
    found = lookup_paper(ref, column) if ref is not None and column.key not in ref.absent else []
    return (found[0].number, found[0].value) if found else (None, None)


CellKey = tuple[str, str, str, int]  # (table, row label, pair label, trial)


def _cells_of(record: dict[str, Any]) -> list[CellKey]:
    """The cells a record says it serves (records older than ``info.cells`` name one: their table's)."""
    info = record.get("info") or {}
    cells = info.get("cells") or (
        [{"table": info["table"], "row": info.get("method"), "pair": info.get("pair"), "trial": info.get("trial")}]
        if info.get("table")
        else []
    )
    return [(str(c["table"]), str(c["row"]), str(c["pair"]), int(c.get("trial") or 0)) for c in cells]


def record_index(store: RunStore) -> dict[CellKey, list[dict[str, Any]]]:
    """Every record of the store under each cell it serves, the most recent first."""
    index: dict[CellKey, list[dict[str, Any]]] = defaultdict(list)
    for record in store.records():
        for key in _cells_of(record):
            index[key].append(record)
    for records in index.values():
        records.sort(key=lambda r: str(r.get("finished_at", "")), reverse=True)
    return index


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: value}


def config_difference(record: dict[str, Any], current: dict[str, Any], most: int = 3) -> str:
    """The settings in which a record's config differs from a planned config, e.g. ``temperature 4.0 -> 3.0``."""
    try:
        recorded = _flat(identity_view(yaml.safe_load(str(record.get("config") or "")) or {}))
    except yaml.YAMLError:
        return "its config cannot be read"
    wanted = _flat(identity_view(current))
    changes = [
        f"{key.removeprefix('model.init_args.')} {recorded.get(key, 'unset')!r} -> {value!r}"
        for key, value in wanted.items()
        if recorded.get(key) != value and not (key == "seed_everything")
    ]
    more = f" (+{len(changes) - most} more)" if len(changes) > most else ""
    return ", ".join(changes[:most]) + more if changes else "the identity rules changed"


def collect(plan: Plan) -> pd.DataFrame:
    """One row per (table row, pair column, metric): our values over trials, status and the primary paper number.

    A trial's value comes from the record of its current run, else from the most recent record that names the
    cell (a run made under an earlier config, marked stale).
    """
    results: list[CellResult] = []
    columns = [c for c in _columns(plan) if not c.quoted]
    index = record_index(plan.store)
    for (row_label, pair_label), run_ids in plan.cells.items():
        row = plan.table.row(row_label)
        protocol = plan.protocol(row_label)
        for column in (c for c in columns if c.key == pair_label):
            ref = row.paper[0] if row.paper else None
            paper, paper_text = _paper_value(ref, column)
            cell = CellResult(
                row_label,
                pair_label,
                column.metric,
                [],
                len(run_ids),
                paper,
                paper_text,
                "missing",
                paper_source=ref.display if ref and paper_text else "",
                run_ids=list(run_ids),
            )
            blocked = plan.blocked_cells.get((row_label, pair_label))
            if blocked:
                cell.status, cell.reason = "blocked", blocked
            else:
                key = cell_metric(protocol, column.metric)
                failure: str | None = None
                for trial, run_id in enumerate(run_ids):
                    record = plan.store.record(run_id)
                    if record is None or key not in record.get("metrics", {}):
                        older = [
                            r
                            for r in index.get((plan.table.name, row_label, pair_label, trial), [])
                            if key in r.get("metrics", {}) and r.get("run_id") != run_id
                        ]
                        if older:
                            record = older[0]
                            difference = config_difference(record, plan.runs[run_id].config)
                            cell.stale = cell.stale or f"run {record.get('run_id')}: {difference}"
                            cell.run_ids[trial] = str(record.get("run_id"))
                    if record is not None and key in record.get("metrics", {}):
                        cell.values.append(float(record["metrics"][key]))
                        cell.smoke = cell.smoke or bool(record.get("smoke"))
                        cell.diverged = cell.diverged or str(record.get("diverged") or "")
                    else:
                        failure = failure or failure_message(plan.store, run_id)
                if cell.values:
                    cell.status = "ok" if len(cell.values) == cell.expected else "partial"
                elif failure:
                    cell.status, cell.reason = "failed", failure
            results.append(cell)
    return pd.DataFrame(
        [
            vars(c) | {"mean": c.mean, "std": c.std, "ci95": c.ci95, "delta": c.delta, "n": len(c.values)}
            for c in results
        ],
        columns=[f.name for f in fields(CellResult)] + ["mean", "std", "ci95", "delta", "n"],
    )


def best_cells(frame: pd.DataFrame, plan: Plan) -> tuple[set[tuple[str, str, str]], set[tuple[str, str, str]]]:
    """(row, column, metric) of the best of ours and the best published number per column (teachers excluded); the
    best is the smallest for a metric where lower is better (distances)."""
    best: dict[str, set[tuple[str, str, str]]] = {"mean": set(), "paper": set()}
    if not len(frame):
        return best["mean"], best["paper"]
    students = frame[[not plan.table.row(r).is_teacher for r in frame["row"]]]
    for (pair, metric), group in students.groupby(["pair", "metric"]):
        pick = max if higher_is_better(str(metric)) else min
        for column, cells in best.items():
            known = group.dropna(subset=[column])
            if len(known) > 1:
                cells |= {(r, pair, metric) for r in known[known[column] == pick(known[column])]["row"]}
    return best["mean"], best["paper"]


def is_smoke(plan: Plan, frame: pd.DataFrame) -> bool:
    """Whether a table shows smoke numbers: planned under the smoke preset, or any of its cells from a smoke run."""
    return plan.preset.is_smoke or (bool(frame["smoke"].any()) if len(frame) else False)


def shown_rows(plan: Plan) -> Iterator[tuple[Row, bool]]:
    """(row, planned) of each row a table shows: its planned rows, and its quoted-only rows that are not planned (a
    method kdbench does not have (yet): the paper's numbers only)."""
    chosen = {p.label for p in plan.pairs or plan.table.pairs}
    for row in plan.table.rows:
        planned = any((row.label, label) in plan.cells for label in chosen)
        if planned or row.quoted_only:
            yield row, planned


def _format_cell(
    entry: pd.Series, footnotes: dict[str, int], bold_ours: bool, bold_paper: bool, ci: bool = False
) -> str:
    def mark(reason: str) -> str:
        footnotes.setdefault(reason, len(footnotes) + 1)
        return f"[{footnotes[reason]}]"

    paper = entry["paper_text"] if isinstance(entry["paper_text"], str) else "–"
    if bold_paper and paper != "–":
        paper = f"**{paper}**"
    if entry["status"] == "blocked":
        return f"n/a{mark(entry['reason'])} / {paper}"
    if entry["status"] == "failed":
        return f"failed{mark(entry['reason'])} / {paper}"
    if entry["status"] == "missing":
        return f"not run / {paper}"
    text = format_ours(float(entry["mean"]), plots.spread(entry, ci), int(entry["n"]), int(entry["expected"]))
    value, _, count = text.rpartition(" ")
    ours = (f"**{value}**" if bold_ours else value) + f" {count}"
    if entry["stale"]:
        ours += f"†{mark(STALE_NOTE + entry['stale'])}"
    if entry["diverged"]:
        ours += f"‡{mark(DIVERGED_NOTE + entry['diverged'])}"
    delta = f"{entry['delta']:+.2f}" if entry["delta"] is not None and not pd.isna(entry["delta"]) else "–"
    return f"{ours} / {paper} / {delta}"


def _quoted_lines(row: Row, columns: list[Column], planned: bool) -> list[list[str]]:
    lines = []
    for ref in row.paper[1:] if planned else row.paper:
        values = [(_paper_value(ref, column)[1] or "–") for column in columns]
        prefix = f"↳ {row.label}" if planned else f"{row.label} — quoted only"
        lines.append([f"{prefix}: {ref.display}"] + values)
    return lines


def render_markdown(plan: Plan, frame: pd.DataFrame, ci: bool = False) -> str:
    table = plan.table
    columns = _columns(plan)
    footnotes: dict[str, int] = {}
    best_ours, best_paper = best_cells(frame, plan)
    header = ["method"] + [c.label + (" (quoted)" if c.quoted else "") for c in columns]
    lines = [header, ["---"] * len(header)]
    indexed = {(r["row"], r["pair"], r["metric"]): r for _, r in frame.iterrows()}
    for row, planned in shown_rows(plan):
        if not planned:
            lines.extend(_quoted_lines(row, columns, planned=False))
            continue
        cells = []
        for column in columns:
            entry = indexed.get((row.label, column.key, column.metric))
            if column.quoted:
                value = _paper_value(row.paper[0] if row.paper else None, column)[1]
                cells.append(f"quoted: {value}" if value else "")
            elif entry is None:
                cells.append("")
            else:
                key = (row.label, column.key, column.metric)
                cells.append(_format_cell(entry, footnotes, key in best_ours, key in best_paper, ci))
        primary = f" (paper: {row.paper[0].display})" if row.paper else ""
        lines.append([row.label + primary] + cells)
        lines.extend(_quoted_lines(row, columns, planned=True))

    out = [f"# {table.name}: {table.title}", ""]
    if is_smoke(plan, frame):
        out += [
            "> **SMOKE RUN** — synthetic or truncated data, a few optimisation steps per run. These numbers exist to",
            "> show that every cell runs end to end; they say nothing about the methods. Do not cite them.",
            "",
        ]
    trials = max((len(ids) for ids in plan.cells.values()), default=0)
    protocol = "best epoch" if table.metric == "best_top1" else "last epoch"
    accuracies = [m for m in table.metrics if m not in ANALYSIS_METRICS]
    shown = (
        [f"{protocol} (`{table.metric}`), " + " and ".join(f"top-{m[3:]} %" for m in accuracies)] if accuracies else []
    )
    shown += [f"`{m}`: {ANALYSIS_METRICS[m][0]}" for m in table.metrics if m in ANALYSIS_METRICS]
    out += [
        f"Dataset `{table.dataset}`, recipe `{table.recipe}`, "
        + "; ".join(shown)
        + f", up to {trials} trial(s) per cell.",
        numerics_line(plan),
        "Each cell: **ours mean ± "
        + ("95% CI" if ci else "std")
        + " (n) / paper / Δ (ours − paper)**; the best of ours and the best published "
        "number per column (teachers excluded) are in bold. " + SPREAD_NOTE[ci],
        "",
    ]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    if footnotes:
        out += [""] + [f"[{n}] {reason}" for reason, n in footnotes.items()]
    notes = list(table.notes) + ([f"Trials: {table.trials_note}"] if table.trials_note else [])
    if notes:
        out += [""] + [f"- {note}" for note in notes]
    return "\n".join(out) + "\n"


def plot_table(plan: Plan, frame: pd.DataFrame, path: Path, ci: bool = False) -> Path:
    """The table's PNG (:func:`benchmarks.plots.plot_table`): ours vs the paper per pair, or bars per method."""
    rows = [row.label for row in plan.table.rows]
    return plots.plot_table(frame, path, name=plan.table.name, row_order=rows, smoke=is_smoke(plan, frame), ci=ci)


def default_stem(plan: Plan) -> str:
    """``<table>``, ``<table>.smoke`` under the smoke preset, ``<table>.<preset>`` when some row runs under
    fast numerics (those tables never overwrite the fp32 ones)."""
    suffix = ".smoke" if plan.preset.is_smoke else ""
    if not suffix and any(label != REFERENCE_LABEL for label in row_numerics(plan).values()):
        suffix = f".{plan.preset.name}"
    return plan.table.name + suffix


def write_table(plan: Plan, out_dir: Path, stem: str | None = None, ci: bool = False) -> tuple[Path, str]:
    """Write ``<stem>.md``, ``<stem>.csv`` and ``<stem>.png``; the default stem is ``<table>`` (``<table>.smoke``
    under the smoke preset).  The runner chooses ``out_dir`` (the store's) and the stem of a filtered table; ``ci``: 95% confidence
    intervals instead of standard deviations."""
    frame = collect(plan)
    text = render_markdown(plan, frame, ci)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or default_stem(plan)
    path = out_dir / f"{stem}.md"
    path.write_text(text)
    csv_frame = frame.drop(columns=["values"]).copy()
    csv_frame["run_ids"] = [" ".join(ids) for ids in csv_frame["run_ids"]]
    csv_frame.insert(0, "table", plan.table.name)
    csv_frame.to_csv(out_dir / f"{stem}.csv", index=False)
    plot_table(plan, frame, out_dir / f"{stem}.png", ci)
    return path, text


def coverage_row(plan: Plan, frame: Any) -> dict[str, Any]:
    """One table's coverage from its collected cells: cells, runnable, run (all trials), compared, matching."""
    top1 = frame[frame["metric"] == "top1"] if len(frame) else frame
    run = top1[top1["status"] == "ok"] if len(top1) else top1
    with_paper = run.dropna(subset=["paper"]) if len(run) else run
    return {
        "table": plan.table.name,
        "cells": len(plan.cells),
        "runnable": len(plan.cells) - len(plan.blocked_cells),
        "run": len(run),
        "compared": len(with_paper),
        "matching": int((with_paper["delta"].abs() <= MATCH_TOLERANCE).sum()) if len(with_paper) else 0,
    }
