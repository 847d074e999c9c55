"""Rebuilding tables from runs logged to W&B (``python -m benchmarks.run <table> --from-wandb entity/project``).

The CLI logs every run under its identity (``run.run_id`` is the W&B run id) with its table, pair, method,
trial and recipe in the W&B config, and per epoch ``val/top1``, ``val/top5`` and ``val/top1_best``.  The import
asks the public API (``wandb.Api().runs``) for the finished runs whose ids the plan needs, turns each into a
result record — best and last top-1/top-5 from the run's history, the summary as a fallback — and writes it
into the store as ``record.json`` with ``"source": "wandb:<entity/project>/<id>"``.  A record already in the
store is kept.  The tables then render from the store as for local runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.errors import KDBenchError
from benchmarks.store import RECORD, RunStore

__all__ = ["ImportReport", "import_wandb", "record_from_wandb"]

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
    summary = dict(run.summary or {})
    metrics = {}
    for key, source in (("best_top1", "val/top1_best"), ("last_top1", "val/top1"), ("last_top5", "val/top5")):
        if isinstance(summary.get(source), (int, float)):
            metrics[key] = float(summary[source])
    return metrics


def record_from_wandb(run: Any, path: str) -> dict[str, Any] | None:
    """A result record for a finished W&B run, or None when it logged no accuracy."""
    metrics = _history_metrics(run) or _summary_metrics(run)
    if "best_top1" not in metrics and "last_top1" not in metrics:
        return None
    config = dict(run.config or {})
    return {
        "run_id": run.id,
        "info": {k: config.get(k) for k in ("table", "pair", "method", "trial", "recipe")} | {"name": run.name},
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
            tmp = run_dir / (RECORD + ".tmp")
            tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
            tmp.replace(run_dir / RECORD)
            report.imported.append(run.id)
    report.missing = [rid for rid in wanted if rid not in seen]
    return report
