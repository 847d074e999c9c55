"""The report: a static site of the tables, from the result store.

    python -m benchmarks.report demo                      # -> <store>/report/index.html (+ demo.html, plots)
    python -m benchmarks.report                           # every table
    python -m benchmarks.report table1 --preset smoke     # the smoke store, as `make smoke` fills it
    python -m benchmarks.report fmnist --ci --out /tmp/site

The site is self-contained (no CDN, no server: it opens from disk): ``index.html`` lists the tables with their
coverage (cells, runnable, run, compared with a published number, within 0.5 pt of it), and each table has a page
with the table's content as a sortable HTML table (click a header: ours mean ± std (n), paper, Δ coloured by
sign and size; failed and blocked cells with their reasons), its plot (:mod:`benchmarks.plots`), and under it
every run of every cell with links to its record, config, metric log, launcher log and W&B run (the URL when it
logged online, its offline folder otherwise).  Cells are read the way the markdown tables are
(:func:`benchmarks.render.collect`), so both always show the same numbers.  Links are relative, so the site
keeps working when the store folder is moved or copied whole (the default ``--out`` is ``<store>/report``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.errors import KDBenchError, user_errors
from benchmarks.plan import Plan, build_plan, list_presets, load_preset, preset_name
from benchmarks.plots import spread
from benchmarks.render import (
    DIVERGED_NOTE,
    MATCH_TOLERANCE,
    SPREAD_NOTE,
    STALE_NOTE,
    _paper_value,
    best_cells,
    collect,
    coverage_row,
    format_ours,
    is_smoke,
    plot_table,
    shown_rows,
)
from benchmarks.store import RunStore
from benchmarks.tables import cell_metric, list_tables, load_table
from benchmarks.wandb_logging import WANDB_RUN

__all__ = ["main", "write_site", "TablePage"]

TEMPLATES = Path(__file__).with_name("templates") / "report"
#: The files of a run folder a cell's run list links to, by label (those that exist).
RUN_FILES = {
    "record": "record.json",
    "failure": "failed.json",
    "config": "config.yaml",
    "metrics": "csv/metrics.csv",
    "log": "launcher.log",
}


# ------------------------------------------------------------------------------------------- page content
@dataclass
class RunLink:
    run_id: str
    trial: int
    status: str
    links: list[tuple[str, str]]  # (label, href)
    value: str = ""
    seconds: str = ""


@dataclass
class Cell:
    key: str  # anchor of the cell's run list
    column: str = ""
    ours: str = ""
    ours_sort: float | None = None
    paper: str = ""
    paper_sort: float | None = None
    delta: str = ""
    delta_sort: float | None = None
    delta_style: str = ""
    status: str = ""
    reason: str = ""
    notes: list[int] = field(default_factory=list)  # footnote numbers: the reason, a stale run, a divergence
    bold_ours: bool = False
    bold_paper: bool = False
    stale: str = ""
    diverged: str = ""
    runs: list[RunLink] = field(default_factory=list)


@dataclass
class TablePage:
    name: str
    title: str
    file: str
    plot: str
    smoke: bool
    summary: str
    spread_note: str
    columns: list[str]
    rows: list[tuple[str, list[Cell], bool]]  # (label, cells, teacher row)
    quoted: list[tuple[str, list[str]]]  # quoted-only rows: (label, published values per column)
    footnotes: list[tuple[int, str]]
    notes: list[str]
    coverage: dict[str, Any]
    has_paper: bool = True  # any cell with a published number (else the paper and Δ columns are left out)


def delta_style(delta: float | None) -> str:
    """Background of a Δ cell: green above the paper, red below, stronger the larger |Δ| (full at 3 points)."""
    if delta is None or pd.isna(delta):
        return ""
    strength = min(abs(float(delta)) / 3.0, 1.0)
    lightness = 96 - 34 * strength
    hue = 140 if delta >= 0 else 0
    return f"background-color: hsl({hue}, 62%, {lightness:.0f}%)"


def _href(target: Path, site: Path) -> str:
    return Path(os.path.relpath(target, site)).as_posix()


def _wandb_link(run_dir: Path, site: Path) -> tuple[str, str] | None:
    meta = run_dir / WANDB_RUN
    if meta.is_file():
        try:
            data = json.loads(meta.read_text())
        except ValueError:
            data = {}
        if data.get("url"):
            return ("W&B", str(data["url"]))
    folders = sorted(f for f in (run_dir / "wandb").glob("*run-*") if f.is_dir() and f.name != "latest-run")
    if folders:
        return ("W&B offline", _href(folders[-1], site))
    return None


def run_links(store: RunStore, run_id: str, site: Path) -> list[tuple[str, str]]:
    """Links to what a run left in the store (only the files that exist)."""
    run_dir = store.run_dir(run_id)
    links = [(label, _href(run_dir / name, site)) for label, name in RUN_FILES.items() if (run_dir / name).is_file()]
    wandb = _wandb_link(run_dir, site)
    if wandb:
        links.append(wandb)
    return links


def _run_entries(plan: Plan, entry: pd.Series, metric_key: str, site: Path) -> list[RunLink]:
    runs = []
    for trial, run_id in enumerate(entry["run_ids"]):
        record = plan.store.record(run_id)
        if record is not None:
            status = "finished"
            value = record.get("metrics", {}).get(metric_key)
            shown = f"{value:.2f}" if isinstance(value, (int, float)) else ""
            seconds = record.get("wall_seconds")
            took = f"{seconds:.0f} s" if isinstance(seconds, (int, float)) else ""
        else:
            failed = (plan.store.run_dir(run_id) / "failed.json").is_file()
            status, shown, took = ("failed" if failed else "not run"), "", ""
        runs.append(RunLink(run_id, trial, status, run_links(plan.store, run_id, site), shown, took))
    return runs


def table_page(plan: Plan, frame: pd.DataFrame, site: Path, ci: bool = False) -> TablePage:
    """The content of a table's page from its collected cells (``collect(plan)``)."""
    table = plan.table
    best_ours, best_paper = best_cells(frame, plan)
    columns = [c for c in plan.table.columns(plan.pairs or table.pairs) if not c.quoted]
    indexed = {(r["row"], r["pair"], r["metric"]): r for _, r in frame.iterrows()}
    footnotes: dict[str, int] = {}
    rows: list[tuple[str, list[Cell], bool]] = []
    quoted: list[tuple[str, list[str]]] = []
    for row, planned in shown_rows(plan):
        if not planned:
            # a row shown unplanned is quoted-only, and the table loader requires those to name a paper
            values = [(_paper_value(row.paper[0], column)[1] or "–") for column in columns]
            quoted.append((f"{row.label} (quoted: {row.paper[0].display})", values))
            continue
        cells = []
        for column in columns:
            entry = indexed.get((row.label, column.key, column.metric))
            cell = Cell(key=f"cell-{len(rows)}-{len(cells)}", column=column.label)
            if entry is None:
                cells.append(cell)
                continue
            key = (row.label, column.key, column.metric)
            cell.status = str(entry["status"])
            cell.paper = entry["paper_text"] if isinstance(entry["paper_text"], str) else ""
            cell.paper_sort = None if pd.isna(entry["paper"]) else float(entry["paper"])
            cell.bold_paper = key in best_paper
            if cell.status in ("blocked", "failed"):
                cell.reason = str(entry["reason"])
                cell.notes.append(footnotes.setdefault(cell.reason, len(footnotes) + 1))
                cell.ours = "n/a" if cell.status == "blocked" else "failed"
            elif cell.status == "missing":
                cell.ours = "not run"
            else:
                cell.ours = format_ours(
                    float(entry["mean"]), spread(entry, ci), int(entry["n"]), int(entry["expected"])
                )
                cell.ours_sort = float(entry["mean"])
                cell.bold_ours = key in best_ours
                if entry["stale"]:
                    cell.stale = STALE_NOTE + str(entry["stale"])
                    cell.notes.append(footnotes.setdefault(cell.stale, len(footnotes) + 1))
                if entry["diverged"]:
                    cell.diverged = DIVERGED_NOTE + str(entry["diverged"])
                    cell.notes.append(footnotes.setdefault(cell.diverged, len(footnotes) + 1))
                if not pd.isna(entry["delta"]):
                    cell.delta_sort = float(entry["delta"])
                    cell.delta = f"{cell.delta_sort:+.2f}"
                    cell.delta_style = delta_style(cell.delta_sort)
            cell.runs = _run_entries(plan, entry, cell_metric(plan.protocol(row.label), column.metric), site)
            cells.append(cell)
        rows.append((row.label + (f" ({row.paper[0].display})" if row.paper else ""), cells, row.is_teacher))

    trials = max((len(ids) for ids in plan.cells.values()), default=0)
    protocol = "best epoch" if table.metric == "best_top1" else "last epoch"
    summary = (
        f"Dataset {table.dataset}, recipe {table.recipe}, {protocol} ({table.metric}), top-1 %"
        + (" and top-5 %" if "top5" in table.metrics else "")
        + f", up to {trials} trial(s) per cell; preset {plan.preset.name}."
    )
    notes = list(table.notes) + ([f"Trials: {table.trials_note}"] if table.trials_note else [])
    return TablePage(
        name=table.name,
        title=table.title,
        file=f"{table.name}.html",
        plot=f"{table.name}.png",
        smoke=is_smoke(plan, frame),
        summary=summary,
        spread_note=SPREAD_NOTE[ci],
        columns=[c.label for c in columns],
        rows=rows,
        quoted=quoted,
        footnotes=[(n, reason) for reason, n in footnotes.items()],
        notes=notes,
        coverage=coverage_row(plan, frame),
        has_paper=any(cell.paper for _, cells, _ in rows for cell in cells),
    )


# ------------------------------------------------------------------------------------------------ writing
def write_site(plans: list[Plan], out: Path, ci: bool = False) -> Path:
    """Write the site for ``plans`` into ``out``; returns the index page."""
    import jinja2

    out.mkdir(parents=True, exist_ok=True)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    site = out.resolve()
    pages = []
    generated = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    assets = {"css": (TEMPLATES / "report.css").read_text(), "js": (TEMPLATES / "sort.js").read_text()}
    for plan in plans:
        frame = collect(plan)
        page = table_page(plan, frame, site, ci)
        plot_table(plan, frame, out / page.plot, ci)
        html = env.get_template("table.html.j2").render(page=page, generated=generated, assets=assets, ci=ci)
        (out / page.file).write_text(html)
        pages.append(page)
    index = env.get_template("index.html.j2").render(
        pages=pages,
        generated=generated,
        assets=assets,
        store=str(plans[0].store.root) if plans else "",
        tolerance=MATCH_TOLERANCE,
    )
    (out / "index.html").write_text(index)
    return out / "index.html"


def _plans(args: argparse.Namespace) -> list[Plan]:
    names = args.tables or list_tables()
    for name in names:
        load_table(name)  # unknown names: one line listing the valid ones
    args.preset = preset_name(names, args)
    preset = load_preset(args.preset)
    store = RunStore(Path(args.store or preset.store or "results").resolve())
    return [
        build_plan(load_table(name), preset, store, data_root=args.data_root, teacher_root=args.data_root)
        for name in names
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("tables", nargs="*", help="table names (default: every table)")
    parser.add_argument(
        "--preset",
        help=f"the preset the runs were made under (one of: {', '.join(list_presets())}; default: as the runner)",
    )
    parser.add_argument("--store", help="result store folder (default: results, or the preset's)")
    parser.add_argument("--data-root", default="data", help="dataset root the runs used (default: data)")
    parser.add_argument("--out", help="site folder (default: <store>/report)")
    parser.add_argument("--ci", action="store_true", help="show 95%% confidence intervals instead of the std")
    with user_errors("benchmarks.report"):
        args = parser.parse_args(argv)
        plans = _plans(args)
        if not plans:
            raise KDBenchError("no table to report")
        out = Path(args.out) if args.out else plans[0].store.root / "report"
        index = write_site(plans, out, ci=args.ci)
        print(f"report written to {index} ({len(plans)} table page(s)); open it in a browser")
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
