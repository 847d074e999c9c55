"""Rebuilding tables from runs logged to W&B (``python -m benchmarks.run <table> --from-wandb entity/project``).

    python -m benchmarks.wandb_import my-team/kdbench table1 table2     # import into results/wandb/my-team_kdbench
    python -m benchmarks.wandb_import my-team/kdbench fmnist --store results   # ... or into a store of your choice

The CLI logs every run under its identity (``run.run_id`` is the W&B run id) with its table, pair, method,
trial, recipe, preset and complete resolved config in the W&B config (:func:`benchmarks.wandb_logging.wandb_config`),
per evaluation ``val/top1``, ``val/top5`` and ``val/top1_best``, and when it finishes its best and last
accuracies in the summary.  An imported record keeps the run's resolved config, so the tables can tell a run
made under an older config.  The import
asks the public API (``wandb.Api().runs``) for the finished runs whose ids the plan needs, turns each into a
result record — best and last top-1/top-5 from the run's history, the summary as a fallback — and writes it
into the store as ``record.json`` with ``"source": "wandb:<entity/project>/<id>"``.  A record already in the
store is kept.  The tables then render from the store as for local runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.errors import KDBenchError, user_errors
from benchmarks.store import RECORD, RunStore, atomic_write_bytes

__all__ = ["ImportReport", "import_wandb", "record_from_wandb", "main"]

#: W&B run filters take lists; the API pages through them, but very long ``$in`` lists are split.
CHUNK = 200


@dataclass
class ImportReport:
    imported: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # a local record exists
    unfinished: list[str] = field(default_factory=list)  # logged, but not finished (crashed, running)
    no_metrics: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # needed by the plan, not in the project

    def summary(self, path: str) -> str:
        return (
            f"W&B {path}: {len(self.imported)} run(s) imported, {len(self.kept)} kept from the store, "
            f"{len(self.unfinished)} not finished, {len(self.no_metrics)} without accuracies, "
            f"{len(self.missing)} not logged"
        )


def _history_metrics(run: Any) -> dict[str, float]:
    rows = [
        r
        for r in run.scan_history(keys=["val/top1", "val/top5"])
        if isinstance(r.get("val/top1"), (int, float)) and isinstance(r.get("val/top5"), (int, float))
    ]
    if not rows:
        return {}
    best_index = max(range(len(rows)), key=lambda i: (rows[i]["val/top1"], -i))  # first epoch with the best top-1
    best, last = rows[best_index], rows[-1]
    return {
        "best_top1": float(best["val/top1"]),
        "best_top5": float(best["val/top5"]),
        "best_epoch": float(best.get("epoch", best_index)),
        "last_top1": float(last["val/top1"]),
        "last_top5": float(last["val/top5"]),
        "last_epoch": float(last.get("epoch", len(rows) - 1)),
    }


def _summary_metrics(run: Any) -> dict[str, float]:
    """The result from the run's summary: the keys the CLI writes when a run finishes (best/last top-1/top-5 and
    their epochs), else the last logged values of runs made before it wrote them."""
    summary = dict(run.summary or {})
    metrics = {}
    for key in ("best_top1", "best_top5", "best_epoch", "last_top1", "last_top5", "last_epoch"):
        if isinstance(summary.get(key), (int, float)):
            metrics[key] = float(summary[key])
    for key, source in (("best_top1", "val/top1_best"), ("last_top1", "val/top1"), ("last_top5", "val/top5")):
        if key not in metrics and isinstance(summary.get(source), (int, float)):
            metrics[key] = float(summary[source])
    return metrics


def record_from_wandb(run: Any, path: str) -> dict[str, Any] | None:
    """A result record for a finished W&B run, or None when it logged no accuracy."""
    metrics = _history_metrics(run) or _summary_metrics(run)
    if "best_top1" not in metrics and "last_top1" not in metrics:
        return None
    config = dict(run.config or {})
    resolved = {k: config[k] for k in ("trainer", "model", "data") if isinstance(config.get(k), dict)}
    if config.get("seed") is not None:
        resolved["seed_everything"] = config["seed"]
    record_config = {"config": yaml.safe_dump(resolved, sort_keys=False)} if resolved else {}
    info = {k: config.get(k) for k in ("table", "pair", "method", "trial", "recipe", "preset", "cells")}
    return record_config | {
        "run_id": run.id,
        "info": {k: v for k, v in info.items() if v is not None} | {"name": run.name},
        "metrics": metrics,
        "smoke": False,
        "source": f"wandb:{path}/{run.id}",
        "imported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def import_wandb(path: str, run_ids: Iterable[str], store: RunStore, api: Any = None) -> ImportReport:
    """Import the finished W&B runs of project ``path`` ("entity/project") whose ids are in ``run_ids``."""
    if path.count("/") != 1 or not all(path.split("/")):
        raise KDBenchError(f"--from-wandb takes 'entity/project', got {path!r}")
    if api is None:
        import wandb

        api = wandb.Api()
    wanted = sorted(set(run_ids))
    report = ImportReport()
    seen: set[str] = set()
    for start in range(0, len(wanted), CHUNK):
        chunk = wanted[start : start + CHUNK]
        for run in api.runs(path, filters={"name": {"$in": chunk}}):
            if run.id not in chunk or run.id in seen:
                continue
            seen.add(run.id)
            if store.is_finished(run.id):
                report.kept.append(run.id)
                continue
            if run.state != "finished":
                report.unfinished.append(run.id)
                continue
            record = record_from_wandb(run, path)
            if record is None:
                report.no_metrics.append(run.id)
                continue
            run_dir = store.run_dir(run.id)
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(run_dir / RECORD, json.dumps(record, indent=2, sort_keys=True).encode())
            report.imported.append(run.id)
    report.missing = [rid for rid in wanted if rid not in seen]
    return report


def main(argv: list[str] | None = None) -> int:
    """Import the finished W&B runs the named tables need into a store; the tables then render from it."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.wandb_import",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", metavar="ENTITY/PROJECT", help="the W&B project the runs were logged to")
    parser.add_argument("tables", nargs="+", help="the tables whose runs to import ('all' for every table)")
    parser.add_argument("--store", help="store to import into (default: results/wandb/<entity>_<project>)")
    parser.add_argument("--preset", help="the preset the runs were made under (default: as the runner)")
    parser.add_argument("--trials", type=int, help="trials per cell (default: the table's)")
    with user_errors("benchmarks.wandb_import"):
        args = parser.parse_args(argv)
        if args.path.count("/") != 1 or not all(args.path.split("/")):
            raise KDBenchError(f"the W&B project is 'entity/project', got {args.path!r}")
        from benchmarks.run import _table_names, plan_tables

        namespace = argparse.Namespace(
            preset=args.preset, store=args.store, data_root="data", trials=args.trials, pairs=None, methods=None
        )
        plans = plan_tables(_table_names(args.tables), namespace, quiet=True)
        store = RunStore(Path(args.store) if args.store else Path("results") / "wandb" / args.path.replace("/", "_"))
        wanted = {run_id for plan in plans for ids in plan.cells.values() for run_id in ids}
        report = import_wandb(args.path, wanted, store)
        print(report.summary(args.path))
        print(
            f"records in {store.root}; render with: python -m benchmarks.run {' '.join(args.tables)} --render-only "
            f"--store {store.root}"
        )
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
