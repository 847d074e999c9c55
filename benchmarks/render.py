"""Rendering a table from the result store: ours (mean ± std, n) beside the papers' numbers, and Δ."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmarks.execute import failure_message
from benchmarks.plan import Plan
from benchmarks.tables import PaperRef, Row, lookup_paper

__all__ = ["CellResult", "collect", "render_markdown", "write_table"]


@dataclass
class CellResult:
    row: str
    pair: str
    values: list[float]
    expected: int
    paper: float | None
    paper_text: str | None
    status: str  # "ok" | "partial" | "missing" | "failed" | "blocked"
    reason: str = ""
    smoke: bool = False

    @property
    def mean(self) -> float | None:
        return sum(self.values) / len(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        if not self.values:
            return None
        if len(self.values) == 1:
            return 0.0
        m = self.mean
        assert m is not None
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (len(self.values) - 1))

    @property
    def delta(self) -> float | None:
        return None if self.mean is None or self.paper is None else self.mean - self.paper


def _paper_value(ref: PaperRef | None, plan: Plan, pair_label: str) -> tuple[float | None, str | None]:
    if ref is None:
        return None, None
    pair = next(p for p in plan.table.pairs if p.label == pair_label)
    found = lookup_paper(ref, pair)
    if not found:
        return None, None
    return found[0].number, found[0].value


def collect(plan: Plan) -> pd.DataFrame:
    """One row per (table row, pair): our values over trials, status and the primary published number."""
    metric = plan.table.metric
    results: list[CellResult] = []
    for (row_label, pair_label), run_ids in plan.cells.items():
        row = plan.table.row(row_label)
        paper, paper_text = _paper_value(row.paper[0] if row.paper else None, plan, pair_label)
        cell = CellResult(row_label, pair_label, [], len(run_ids), paper, paper_text, "missing")
        blocked = plan.blocked_cells.get((row_label, pair_label))
        if blocked:
            cell.status, cell.reason = "blocked", blocked
        else:
            failures = []
            for run_id in run_ids:
                record = plan.store.record(run_id)
                if record is not None and metric in record["metrics"]:
                    cell.values.append(float(record["metrics"][metric]))
                    cell.smoke = cell.smoke or bool(record.get("smoke"))
                else:
                    message = failure_message(plan.store, run_id)
                    if message:
                        failures.append(message)
            if cell.values:
                cell.status = "ok" if len(cell.values) == cell.expected else "partial"
            elif failures:
                cell.status, cell.reason = "failed", failures[0]
        results.append(cell)
    return pd.DataFrame(
        [vars(c) | {"mean": c.mean, "std": c.std, "delta": c.delta, "n": len(c.values)} for c in results]
    )


def _format_cell(entry: pd.Series, footnotes: dict[str, int]) -> str:
    def mark(reason: str) -> str:
        footnotes.setdefault(reason, len(footnotes) + 1)
        return f"[{footnotes[reason]}]"

    paper = entry["paper_text"] if isinstance(entry["paper_text"], str) else "–"
    if entry["status"] == "blocked":
        return f"n/a{mark(entry['reason'])} / {paper}"
    if entry["status"] == "failed":
        return f"failed{mark(entry['reason'])} / {paper}"
    if entry["status"] == "missing":
        return f"not run / {paper}"
    ours = f"{entry['mean']:.2f} ± {entry['std']:.2f} ({entry['n']}"
    ours += f"/{entry['expected']})" if entry["status"] == "partial" else ")"
    delta = f"{entry['delta']:+.2f}" if entry["delta"] is not None and not pd.isna(entry["delta"]) else "–"
    return f"{ours} / {paper} / {delta}"


def _quoted_rows(row: Row, plan: Plan, pair_labels: list[str]) -> list[list[str]]:
    lines = []
    for ref in row.paper[1:] if not row.quoted_only else row.paper:
        values = []
        for label in pair_labels:
            _, text = _paper_value(ref, plan, label)
            values.append(text or "–")
        prefix = f"{row.label} — quoted only" if row.quoted_only else f"↳ {row.label}"
        lines.append([f"{prefix}: {ref.display}"] + values)
    return lines


def render_markdown(plan: Plan, frame: pd.DataFrame) -> str:
    table = plan.table
    pairs = [p for p in table.pairs if any(k[1] == p.label for k in plan.cells)]
    pair_labels = [p.label for p in pairs]
    smoke = plan.preset.is_smoke or bool(frame["smoke"].any()) if len(frame) else plan.preset.is_smoke
    footnotes: dict[str, int] = {}
    header = ["method"] + [p.display for p in pairs]
    lines = [header, ["---"] * len(header)]
    indexed = frame.set_index(["row", "pair"]) if len(frame) else frame
    for row in table.rows:
        if row.quoted_only:
            lines.extend(_quoted_rows(row, plan, pair_labels))
            continue
        if not any((row.label, label) in plan.cells for label in pair_labels):
            continue
        cells = []
        for label in pair_labels:
            if (row.label, label) in plan.cells:
                cells.append(_format_cell(indexed.loc[(row.label, label)], footnotes))
            else:
                cells.append("")
        primary = f" (paper: {row.paper[0].display})" if row.paper else ""
        lines.append([row.label + primary] + cells)
        lines.extend(_quoted_rows(row, plan, pair_labels))

    out = [f"# {table.name}: {table.title}", ""]
    if smoke:
        out += [
            "> **SMOKE RUN** — synthetic or truncated data, a few optimisation steps per run. These numbers exist to",
            "> show that every cell runs end to end; they say nothing about the methods. Do not cite them.",
            "",
        ]
    trials = max((len(ids) for ids in plan.cells.values()), default=0)
    out += [
        f"Dataset `{table.dataset}`, recipe `{table.recipe}`, metric `{table.metric}` (top-1 %), up to {trials} trial(s) per cell.",
        "Each cell: **ours mean ± std (n) / paper / Δ (ours − paper)**.",
        "",
    ]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    if footnotes:
        out += [""] + [f"[{n}] {reason}" for reason, n in footnotes.items()]
    if table.notes:
        out += [""] + [f"- {note}" for note in table.notes]
    return "\n".join(out) + "\n"


def write_table(plan: Plan, out_dir: Path) -> tuple[Path, str]:
    frame = collect(plan)
    text = render_markdown(plan, frame)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = ".smoke" if plan.preset.is_smoke else ""
    path = out_dir / f"{plan.table.name}{suffix}.md"
    path.write_text(text)
    frame.drop(columns=["values"]).to_csv(out_dir / f"{plan.table.name}{suffix}.csv", index=False)
    return path, text
