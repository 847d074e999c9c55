"""A W&B workspace for one table, built with W&B's own workspace library (``wandb-workspaces``).

    python -m benchmarks.dashboard demo --entity my-team --project kdbench          # save it, print its URL
    python -m benchmarks.dashboard table1 --entity my-team --project kdbench --print  # the spec as JSON, offline

The workspace shows the runs of the table (W&B config ``table``, the run's group) grouped by pair, so that its runs
table reads method x pair: one group per pair, a row per method and trial, with method, trial, best and last
top-1/top-5 and wall time pinned beside the run name, best top-1 first.  Its panels: one line plot per logged
metric (validation top-1, top-5, loss and best top-1 so far; training loss, top-1 and every loss term; the
learning rate, per step when the schedule is), and bars of the best and last top-1 per method.  Saving needs an
API key (``WANDB_API_KEY`` or ``wandb login``); ``--print`` needs nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from benchmarks.errors import KDBenchError, user_errors
from benchmarks.tables import load_table

__all__ = ["build_workspace", "workspace_spec", "main", "LINE_METRICS", "SUMMARY_COLUMNS"]

#: (section, [(panel title, metric)]) of the line plots; the metric names are those the CLI runs log.
LINE_METRICS: list[tuple[str, list[tuple[str, str]]]] = [
    (
        "Validation",
        [
            ("top-1 (%)", "val/top1"),
            ("top-5 (%)", "val/top5"),
            ("loss", "val/loss"),
            ("best top-1 so far (%)", "val/top1_best"),
        ],
    ),
    ("Training", [("loss", "train/loss"), ("top-1 (%)", "train/top1"), ("learning rate", "lr-SGD")]),
]
#: Summary keys the runs table pins (written by the CLI when a run finishes).
SUMMARY_COLUMNS = ["best_top1", "best_top5", "last_top1", "last_top5", "wall_seconds"]


def build_workspace(table: str, entity: str, project: str, name: str | None = None) -> Any:
    """The ``wandb_workspaces.workspaces.Workspace`` of ``table`` (nothing is sent until it is saved)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    sections = [
        ws.Section(
            name=section,
            panels=[wr.LinePlot(title=f"{section.lower()} {title}", x="Step", y=[metric]) for title, metric in panels],
            is_open=True,
        )
        for section, panels in LINE_METRICS
    ] + [
        ws.Section(
            name="Loss terms",
            panels=[wr.LinePlot(title="every training loss term", x="Step", metric_regex="train/.*")],
            is_open=False,
        ),
        ws.Section(
            name="Method x pair",
            panels=[
                wr.BarPlot(
                    title=f"{key} top-1 (%) per method, within each pair",
                    metrics=[wr.SummaryMetric(f"{key}_top1")],
                    groupby=wr.Config("method"),
                    groupby_aggfunc="mean",
                    groupby_rangefunc="stddev",
                )
                for key in ("best", "last")
            ],
            is_open=True,
        ),
    ]
    runset = ws.RunsetSettings(
        filters=[ws.Config("table") == table],
        groupby=[ws.Config("pair")],
        order=[ws.Ordering(ws.Summary("best_top1"), ascending=False)],
        pinned_columns=["config:method", "config:trial"] + [f"summary:{key}" for key in SUMMARY_COLUMNS],
    )
    return ws.Workspace(
        entity=entity,
        project=project,
        name=name or f"kdbench {table}",
        sections=sections,
        runset_settings=runset,
    )


def workspace_spec(workspace: Any) -> dict[str, Any]:
    """The workspace as the JSON W&B stores (its view spec), built offline."""
    return dict(workspace._to_model().model_dump(by_alias=True, exclude_none=True, mode="json"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dashboard", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("table", help="table name (see python -m benchmarks.run --list)")
    parser.add_argument("--entity", required=True, help="W&B entity (user or team)")
    parser.add_argument(
        "--project", required=True, help="W&B project the runs were logged to (default of runs: kdbench)"
    )
    parser.add_argument("--name", help="workspace name (default: 'kdbench <table>')")
    parser.add_argument("--print", action="store_true", help="print the workspace spec as JSON; send nothing")
    with user_errors("benchmarks.dashboard"):
        args = parser.parse_args(argv)
        load_table(args.table)  # an unknown table: one line listing the valid ones
        workspace = build_workspace(args.table, args.entity, args.project, args.name)
        if args.print:
            print(json.dumps(workspace_spec(workspace), indent=1))
            return 0
        if not os.environ.get("WANDB_API_KEY"):
            import wandb

            try:
                wandb.Api()
            except wandb.errors.UsageError:
                raise KDBenchError(
                    "no W&B API key (set WANDB_API_KEY or run `wandb login`); --print shows the spec offline"
                ) from None
        saved = workspace.save()
        print(f"workspace for {args.table} saved: {saved.url}")
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
