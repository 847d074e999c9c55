"""Plots of a rendered table (the ``collect`` frame): PNGs beside the markdown and on the report page.

* :func:`plot_vs_paper` — tables with published numbers: one panel per pair, one line per method (labelled on
  the axis), our mean (filled dot, with its spread) and the paper's number (open diamond) joined by a segment, so
  each method's Δ reads as the length and direction of its segment.
* :func:`plot_bars` — tables without published numbers (fmnist, demo): one panel per pair, a horizontal bar per
  method with its spread as an error bar, the value written at the bar's end and the student trained alone (the
  ``Vanilla`` row) as a dashed reference line.
* :func:`plot_table` picks one of them (or says that nothing has run yet).

The spread is the sample standard deviation, or the 95% confidence interval of the mean with ``ci=True``; a cell
with one run has none.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

__all__ = ["plot_table", "plot_vs_paper", "plot_bars", "spread"]

BASELINE_ROWS = ("Vanilla", "Student", "student")
OURS = "#1f5fa8"
PAPER = "#c2410c"
TEACHER = "#7c7c7c"


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def spread(entry: pd.Series, ci: bool) -> float:
    """The error bar of a cell: its std or 95% CI half-width; 0 when it has fewer than two runs."""
    value = entry.get("ci95" if ci else "std")
    return 0.0 if value is None or pd.isna(value) else float(value)


def _top1(frame: pd.DataFrame) -> pd.DataFrame:
    if not len(frame):
        return frame
    metric = "top1" if (frame["metric"] == "top1").any() else str(frame["metric"].iloc[0])
    return frame[frame["metric"] == metric]


def _figure(data: pd.DataFrame, row_order: list[str], width: float = 5.2, **subplots: bool):  # type: ignore[no-untyped-def]
    """(pairs, rows, figure, axes): a panel per pair of ``data``, up to three a line, ``width`` inches each and tall
    enough for the rows of ``row_order`` it shows."""
    pairs = list(dict.fromkeys(data["pair"]))
    rows = [r for r in row_order if r in set(data["row"])]
    columns = min(len(pairs), 3)
    lines = -(-len(pairs) // columns)
    height = max(2.2, 0.28 * len(rows) + 1.1)
    size = (width * columns, height * lines)
    figure, axes = _pyplot().subplots(lines, columns, figsize=size, dpi=110, squeeze=False, **subplots)
    return pairs, rows, figure, axes


def _style(axis, pair: str, xlabel: str) -> None:  # type: ignore[no-untyped-def]
    """A pair's panel: its title, the x label and a light vertical grid."""
    axis.set_title(str(pair).replace("->", "→"), fontsize=9)
    axis.set_xlabel(xlabel, fontsize=8)
    axis.grid(axis="x", color="#e5e7eb", linewidth=0.8)
    axis.set_axisbelow(True)
    axis.tick_params(labelsize=7)


def _save(figure, axes, panels: int, path: Path, title: str, smoke: bool, top: float) -> Path:  # type: ignore[no-untyped-def]
    """Blank the panels beyond the first ``panels``, title the figure (marked when it shows a smoke run), write it
    to ``path`` and close it."""
    for axis in list(axes.flat)[panels:]:
        axis.axis("off")
    figure.suptitle(title + ("  —  SMOKE RUN: not results" if smoke else ""), fontsize=10, x=0.01, ha="left")
    figure.tight_layout(rect=(0, 0, 1, top))
    figure.savefig(path)
    _pyplot().close(figure)
    return path


def plot_vs_paper(
    frame: pd.DataFrame, path: Path, *, name: str, row_order: list[str], smoke: bool = False, ci: bool = False
) -> Path:
    """Ours against the paper, one panel per pair (see the module docstring)."""
    plt = _pyplot()
    data = _top1(frame)
    data = data[data["mean"].notna() | data["paper"].notna()]
    pairs, rows, figure, axes = _figure(data, row_order, sharey=True)
    positions = {row: i for i, row in enumerate(reversed(rows))}
    for axis, pair in zip(axes.flat, pairs):
        cells = data[data["pair"] == pair]
        for _, entry in cells.iterrows():
            y = positions[entry["row"]]
            ours, paper = entry["mean"], entry["paper"]
            if pd.notna(ours) and pd.notna(paper):
                axis.plot([paper, ours], [y, y], color="#9ca3af", linewidth=1.2, zorder=1)
            if pd.notna(paper):
                axis.scatter([paper], [y], marker="D", s=26, facecolors="white", edgecolors=PAPER, zorder=3)
            if pd.notna(ours):
                error = spread(entry, ci)
                axis.errorbar(
                    [ours],
                    [y],
                    xerr=[error] if error > 0 else None,
                    fmt="o",
                    color=OURS,
                    markersize=4.5,
                    capsize=2,
                    zorder=4,
                )
        _style(axis, pair, "top-1 (%)")
    for axis in axes[:, 0]:
        axis.set_yticks(range(len(rows)))
        axis.set_yticklabels(list(reversed(rows)), fontsize=7)
    handles = [
        plt.Line2D(
            [], [], marker="o", color=OURS, linestyle="none", label="ours: mean" + (" ± 95% CI" if ci else " ± std")
        ),
        plt.Line2D([], [], marker="D", color=PAPER, markerfacecolor="white", linestyle="none", label="paper"),
    ]
    figure.legend(handles=handles, loc="upper right", fontsize=8, frameon=False, ncol=2)
    return _save(figure, axes, len(pairs), path, f"{name}: ours vs the paper, top-1 per pair", smoke, 0.96)


def plot_bars(
    frame: pd.DataFrame, path: Path, *, name: str, row_order: list[str], smoke: bool = False, ci: bool = False
) -> Path:
    """Our accuracies as bars, one panel per pair (see the module docstring)."""
    data = _top1(frame)
    data = data[data["mean"].notna()]
    pairs, rows, figure, axes = _figure(data, row_order, width=6.4)
    for axis, pair in zip(axes.flat, pairs):
        cells = data[data["pair"] == pair].set_index("row")
        shown = [r for r in rows if r in cells.index]
        means = [float(cells.loc[r, "mean"]) for r in shown]
        errors = [spread(cells.loc[r], ci) for r in shown]
        low = math.floor(min(m - e for m, e in zip(means, errors)) - 2.0)
        high = math.ceil(max(m + e for m, e in zip(means, errors)) + 2.0)
        colours = [TEACHER if r.lower().startswith("teacher") else OURS for r in shown]
        ys = list(range(len(shown)))[::-1]
        axis.barh(ys, [m - low for m in means], left=low, color=colours, height=0.65)
        spread_rows = [(y, m, e) for y, m, e in zip(ys, means, errors) if e > 0]
        if spread_rows:
            at, values, bars = map(list, zip(*spread_rows))
            axis.errorbar(values, at, xerr=bars, fmt="none", ecolor="#111827", elinewidth=0.9, capsize=2)
        for y, mean, error, row in zip(ys, means, errors, shown):
            n = int(cells.loc[row, "n"])
            label = f"{mean:.2f}" + (f" ± {error:.2f}" if n > 1 else "") + f"  (n={n})"
            axis.text(mean + error + 0.15, y, label, va="center", fontsize=7)
        baseline = next((r for r in BASELINE_ROWS if r in cells.index), None)
        if baseline is not None:
            value = float(cells.loc[baseline, "mean"])
            axis.axvline(value, color=PAPER, linestyle="--", linewidth=1, label=f"{baseline} (student alone)")
            axis.legend(fontsize=7, loc="lower right", frameon=False)
        axis.set_yticks(ys)
        axis.set_yticklabels(shown, fontsize=8)
        axis.set_xlim(low, high + 0.25 * (high - low))
        _style(axis, pair, f"top-1 (%), axis from {low}")
    what = "top-1 per method" + (" (mean ± 95% CI)" if ci else " (mean ± std over trials)")
    return _save(figure, axes, len(pairs), path, f"{name}: {what}", smoke, 0.95)


def plot_table(
    frame: pd.DataFrame, path: Path, *, name: str, row_order: list[str], smoke: bool = False, ci: bool = False
) -> Path:
    """The table's plot: ours vs the paper where any cell has both, else our bars, else a note."""
    data = _top1(frame)
    if len(data) and (data["mean"].notna() & data["paper"].notna()).any():
        return plot_vs_paper(frame, path, name=name, row_order=row_order, smoke=smoke, ci=ci)
    if len(data) and data["mean"].notna().any():
        return plot_bars(frame, path, name=name, row_order=row_order, smoke=smoke, ci=ci)
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.0, 2.0), dpi=110)
    axis.text(0.5, 0.5, f"{name}: no run of this table has finished yet", ha="center", va="center")
    axis.axis("off")
    figure.savefig(path)
    plt.close(figure)
    return path
