"""The table runner.

    python -m benchmarks.run --list                       # the tables
    python -m benchmarks.run status                       # coverage of every table: runnable / run / matching
    python -m benchmarks.run table1 --dry-run             # the plan: dependency graph, shared runs, GPU-hours
    python -m benchmarks.run fmnist --dry-run --measure   # ... with run times measured on this machine
    python -m benchmarks.run table1                       # train what is missing (teachers first), render
    python -m benchmarks.run table1 --preset smoke        # every runnable cell for a few steps, offline
    python -m benchmarks.run demo --report                # the demo table, then its report page
    python -m benchmarks.run table1 --methods KD --pairs resnet56->resnet20 --trials 5
    python -m benchmarks.run table1 table2 --launcher parallel --per-gpu 2     # all visible GPUs, 2 runs each
    python -m benchmarks.run all --launcher slurm --slurm-partition gpu --slurm-time 720
    python -m benchmarks.run norm.t1 --from-wandb my-team/kdbench               # rebuild from logged runs

Finished runs are never redone (their ``record.json`` exists); interrupted runs resume from ``last.ckpt``; a run
several tables need is trained once.  Rendered tables go to ``tables/results/<table>.{md,csv,png}``
(``<table>.smoke.*`` under the smoke preset).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from benchmarks.errors import KDBenchError, user_errors
from benchmarks.plan import Plan, RunSpec, build_plan, list_presets, load_preset, merge_runs, recipe
from benchmarks.store import RunStore
from benchmarks.tables import REPO_ROOT, Table, list_tables, load_table

__all__ = ["main", "plan_tables", "print_plan", "coverage"]

RESULTS_DIR = REPO_ROOT / "tables" / "results"


def _split(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("tables", nargs="*", help="table names (see --list), 'all', or 'status'")
    parser.add_argument("--list", action="store_true", help="list the tables and exit")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and a GPU-hour estimate; run nothing")
    parser.add_argument("--verbose", action="store_true", help="with --dry-run: list every run")
    parser.add_argument("--measure", action="store_true", help="with --dry-run: time a few real steps of each run here")
    parser.add_argument(
        "--preset",
        help=f"run preset (one of: {', '.join(list_presets())}; default: the table's own, e.g. cpu for fmnist, else full)",
    )
    parser.add_argument("--trials", type=int, help="trials per cell (default: the table's, or the preset's)")
    parser.add_argument("--methods", nargs="*", help="only these rows (labels or method names, comma separated)")
    parser.add_argument("--pairs", nargs="*", help="only these pairs (teacher->student, comma separated)")
    parser.add_argument("--store", help="result store folder (default: results, or the preset's)")
    parser.add_argument("--data-root", default="data", help="dataset root folder (default: data)")
    parser.add_argument("--render-only", action="store_true", help="render the table from the store; train nothing")
    parser.add_argument(
        "--ci", action="store_true", help="show the 95%% confidence interval of each mean instead of the std"
    )
    parser.add_argument(
        "--report", action="store_true", help="also write the report site of the tables (<store>/report/index.html)"
    )
    parser.add_argument(
        "--launcher",
        choices=["sequential", "parallel", "slurm"],
        help="how runs are executed (default: the preset's launcher, else sequential)",
    )
    parser.add_argument("--per-gpu", type=int, default=1, help="parallel: concurrent runs per visible GPU")
    parser.add_argument("--jobs", type=int, help="parallel, no GPU: concurrent runs (default: one per CPU core)")
    parser.add_argument("--slurm-folder", default="results/slurm", help="slurm: submitit's job folder")
    parser.add_argument("--slurm-cluster", choices=["auto", "slurm", "local", "debug"], default="auto")
    parser.add_argument("--slurm-partition", help="slurm: partition")
    parser.add_argument("--slurm-time", type=int, help="slurm: time limit per run in minutes (default 1440)")
    parser.add_argument("--slurm-cpus", type=int, help="slurm: CPUs per task")
    parser.add_argument("--slurm-mem", type=float, help="slurm: memory per node in GB")
    parser.add_argument("--slurm-parallelism", type=int, help="slurm: array tasks running at once")
    parser.add_argument("--slurm-param", action="append", default=[], help="slurm: any submitit parameter KEY=VALUE")
    parser.add_argument("--no-wait", action="store_true", help="slurm: submit all levels chained by dependency")
    parser.add_argument("--from-wandb", metavar="ENTITY/PROJECT", help="rebuild the tables from runs logged to W&B")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------------- data
def _data_root(table: Table, root: str, synthetic_allowed: bool) -> tuple[str, bool]:
    """The data root to use: ``--data-root``, else one of the table's ``data_roots``, else the dataset downloaded
    into ``--data-root`` (where the datamodule has a download and the network is reachable), else a generated
    fixture in the real format when the preset allows it; the first that holds the dataset."""
    from datamodules import DATASETS

    datamodule = DATASETS.get(table.dataset)
    if datamodule is None:
        return root, False  # the plan shows every cell as blocked on the missing datamodule
    for candidate in [root, *table.data_roots]:
        if datamodule.is_available(candidate):
            return candidate, False
    problem = datamodule.download(root)
    if problem is None and datamodule.is_available(root):
        print(f"{table.dataset}: downloaded into {root}")
        return root, False
    if not synthetic_allowed:
        return root, False
    from datamodules.synthetic import is_generated, mark_generated

    synthetic_root = str(Path(root) / "synthetic" / table.dataset)
    if not is_generated(synthetic_root):
        datamodule.write_fixture(synthetic_root)
        mark_generated(synthetic_root)
    return synthetic_root, True


def preset_name(names: list[str], args: argparse.Namespace) -> str:
    """``--preset`` if given; else the tables' own preset when they agree on one (fmnist: cpu); else ``full``."""
    if args.preset:
        return str(args.preset)
    own = {load_table(name).preset or "full" for name in names}
    return own.pop() if len(own) == 1 else "full"


def plan_tables(names: list[str], args: argparse.Namespace, quiet: bool = False) -> list[Plan]:
    args.preset = preset_name(names, args)
    preset = load_preset(args.preset)
    store = RunStore(Path(args.store or preset.store or "results").resolve())
    plans = []
    for name in names:
        table = load_table(name)
        data_root, synthetic = _data_root(table, args.data_root, preset.synthetic_data)
        if synthetic and not quiet:
            print(
                f"{table.dataset} not found (looked in {', '.join([args.data_root, *table.data_roots])}, and no download"
                f" reachable): using GENERATED data at {data_root}; results are labelled SMOKE, not real accuracies"
            )
        plans.append(
            build_plan(
                table,
                preset,
                store,
                data_root=data_root,
                trials=args.trials,
                pairs=_split(args.pairs),
                methods=_split(args.methods),
                teacher_root=args.data_root,
            )
        )
    return plans


# ------------------------------------------------------------------------------------------------- dry run
def _status(plan: Plan, spec: RunSpec) -> str:
    if spec.blocked:
        return "blocked"
    if plan.store.is_finished(spec.run_id):
        return "finished"
    return "resumable" if plan.store.last_checkpoint(spec.run_id) else "to run"


def _hours(seconds: float | None) -> str:
    return "?" if seconds is None else f"~{seconds / 3600:.2f} GPU-h"


def _estimates(plan: Plan) -> dict[str, float | None]:
    from benchmarks.cost import dataset_sizes, estimate_gpu_seconds

    train_size, _, num_classes = dataset_sizes(plan.table.dataset)
    return {
        rid: None if spec.blocked else estimate_gpu_seconds(spec.config, train_size, num_classes)
        for rid, spec in plan.runs.items()
    }


def _other_tables(plan: Plan, args: argparse.Namespace) -> dict[str, list[str]]:
    """run id -> the other tables whose plans (same preset and store) need the same run."""
    others: dict[str, list[str]] = defaultdict(list)
    quiet = argparse.Namespace(**{**vars(args), "pairs": None, "methods": None})
    for name in list_tables():
        if name == plan.table.name or load_table(name).dataset != plan.table.dataset:
            continue  # runs are only ever shared within a dataset
        other = plan_tables([name], quiet, quiet=True)[0]
        for run_id in other.runs.keys() & plan.runs.keys():
            others[run_id].append(name)
    return others


def print_plan(
    plan: Plan, args: argparse.Namespace | None = None, shared_with: dict[str, list[str]] | None = None
) -> None:
    table = plan.table
    runs = plan.ordered()
    estimates = _estimates(plan)
    statuses = {spec.run_id: _status(plan, spec) for spec in runs}
    recipes_used = sorted({spec.recipe for spec in runs if spec.recipe})
    print(f"plan for {table.name} ({table.title}); preset {plan.preset.name}, store {plan.store.root}")
    print(
        f"  dataset {table.dataset}; {plan.trials} trial(s); metric {table.metric}"
        + (f" ({table.trials_note})" if table.trials_note else "")
    )
    for name in recipes_used:
        print(f"  recipe {name}: {recipe(name).get('description', '')}")
    for arch, path in sorted(plan.released.items()):
        print(f"  teacher {arch}: released weights {path}")

    print("dependency graph (teacher -> offline stages -> prerequisite runs -> students):")
    dependents: dict[str | None, list[RunSpec]] = defaultdict(list)
    for spec in runs:
        if spec.kind != "teacher":
            parent = spec.teacher_run or (f"released:{spec.teacher_source}" if spec.teacher_source else None)
            dependents[parent].append(spec)
    roots: list[str | None] = [s.run_id for s in runs if s.kind == "teacher"]
    roots += [k for k in dependents if k is not None and k not in roots]  # released, or dropped teachers
    if None in dependents:
        roots.append(None)
    for root in roots:
        if root is None:
            print("  (no teacher)")
        elif root.startswith("released:"):
            print(f"  released teacher {root.split(':', 1)[1]}")
        elif root not in plan.runs:
            print(f"  teacher [{root}] not planned: every run that needs it is blocked")
        else:
            teacher = plan.runs[root]
            others = f"; also needed by {', '.join(shared_with[root])}" if shared_with and root in shared_with else ""
            print(f"  {teacher.label} [{root}] {statuses[root]} {_hours(estimates[root])}{others}")
        children = dependents.get(root, [])
        offline = Counter(stage for child in children if not child.blocked for stage in child.offline)
        for (name, description), count in sorted(offline.items()):
            print(f"    offline stage {name}: {description} (cached, shared by {count} run(s))")
        for child in (c for c in children if c.kind == "stage"):
            users = [s for s in runs if child.run_id in s.depends_on]
            print(
                f"    stage {child.label} [{child.run_id}] {statuses[child.run_id]} {_hours(estimates[child.run_id])}"
                f" -> {len(users)} run(s)"
            )
        students = [c for c in children if c.kind == "student"]
        if students:
            by_status = Counter(statuses[c.run_id] for c in students)
            print("    students: " + ", ".join(f"{n} {status}" for status, n in sorted(by_status.items())))

    shared = [s for s in runs if len(s.cells) > 1 or (shared_with and s.run_id in shared_with)]
    if shared:
        print(f"shared runs ({len(shared)}; each trained once):")
        for spec in shared[: 12 if not getattr(args, "verbose", False) else len(shared)]:
            cells = ", ".join(f"{row} {pair}" for row, pair, _ in spec.cells[:4]) or "none of this table's"
            others = (
                f"; tables {', '.join(shared_with[spec.run_id])}" if shared_with and spec.run_id in shared_with else ""
            )
            print(f"  {spec.run_id} {spec.kind} {spec.label}: cells {cells}{others}")
        if len(shared) > 12 and not getattr(args, "verbose", False):
            print(f"  ... {len(shared) - 12} more (--verbose lists them)")

    if getattr(args, "verbose", False):
        print("runs:")
        for spec in runs:
            status = f"blocked: {spec.blocked}" if spec.blocked else statuses[spec.run_id]
            deps = f" after {', '.join(spec.depends_on)}" if spec.depends_on else ""
            estimate = "" if spec.blocked else f" {_hours(estimates[spec.run_id])}"
            print(f"  {spec.run_id} {spec.kind:<7} {spec.label:<45} {status}{estimate}{deps}")

    kinds = Counter(s.kind for s in runs)
    runnable = [s for s in runs if not s.blocked]
    todo = [s for s in runnable if statuses[s.run_id] != "finished"]
    total = sum(estimates[s.run_id] or 0.0 for s in todo)
    unknown = sum(1 for s in todo if estimates[s.run_id] is None)
    print(
        f"{len(runs)} runs ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}): {len(runnable)} runnable, "
        f"{len(runs) - len(runnable)} blocked, {sum(1 for s in runs if statuses[s.run_id] == 'finished')} finished"
    )
    print(
        f"estimated {total / 3600:.1f} GPU-hours for the {len(todo)} runnable runs not finished"
        + (f" ({unknown} without an estimate)" if unknown else "")
        + " (rough: see benchmarks/cost.py for the model)"
    )
    if plan.blocked_cells:
        reasons = sorted(set(plan.blocked_cells.values()))
        print(f"cells that cannot run yet ({len(plan.blocked_cells)} of {len(plan.cells)}):")
        for reason in reasons:
            cells = [f"{row} {pair}" for (row, pair), r in plan.blocked_cells.items() if r == reason]
            print(f"  {reason}: {len(cells)} cell(s), e.g. {cells[0]}")


def print_measurements(plan: Plan) -> float:
    """Time a few real steps of each distinct runnable run here, single-threaded, and extrapolate.

    Runs are measured with one thread: the CPU time of a single-threaded step is stable on a shared machine
    (several threads spin-wait when cores are busy, which inflates both wall and CPU time), and it is the cost a
    run has under ``--launcher parallel --jobs N``, which gives each of N concurrent runs one core.  Returns the
    total single-threaded CPU seconds.
    """
    import torch

    from benchmarks.cost import NotMeasurable, dataset_sizes, measure_run

    train_size, eval_size, _ = dataset_sizes(plan.table.dataset)
    measured: dict[str, dict[str, float]] = {}
    unmeasured: list[str] = []
    total = 0.0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    print(f"measured on this machine, one thread per run (train {train_size} / eval {eval_size} images):")
    try:
        for spec in plan.ordered():
            if spec.blocked or plan.store.is_finished(spec.run_id):
                continue
            key = f"{spec.kind}:{spec.row}:{spec.pair.label if spec.pair else spec.label}"
            if key not in measured:
                try:
                    measured[key] = measure_run(spec.config, train_size, eval_size)
                except NotMeasurable as reason:
                    unmeasured.append(spec.label)
                    print(f"  {spec.kind:<7} {spec.label:<45} not measured: {reason}")
                    continue
            m = measured[key]
            total += m["cpu_seconds"]
            print(
                f"  {spec.kind:<7} {spec.label:<45} {m['train_step_cpu_s'] * 1000:7.1f} ms/step x {m['steps']} steps"
                f" + {m['eval_batch_cpu_s'] * 1000:.0f} ms/eval batch x {m['evaluations']} evaluations"
                f" = {m['cpu_seconds'] / 60:.1f} CPU-min"
            )
    finally:
        torch.set_num_threads(threads)
    cores = os.cpu_count() or 1
    print(
        f"measured estimate: {total / 60:.1f} single-threaded CPU-minutes for the runnable runs not finished; "
        f"~{total / 60 / cores:.1f} minutes with --launcher parallel --jobs {cores} on {cores} idle cores "
        "(dependencies permitting)"
        + (f"; not counted: {len(unmeasured)} run(s) that need an earlier run's output" if unmeasured else "")
    )
    return total


# ----------------------------------------------------------------------------------------------- coverage
def coverage_row(plan: Plan, frame: Any) -> dict[str, Any]:
    """One table's coverage from its collected cells: cells, runnable, run (all trials), compared, matching."""
    from benchmarks.render import MATCH_TOLERANCE

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


def coverage(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per table: cells, runnable cells, run cells (all trials), and those within the tolerance of the paper."""
    from benchmarks.render import collect

    return [coverage_row(plan, collect(plan)) for plan in plan_tables(list_tables(), args, quiet=True)]


def print_status(args: argparse.Namespace) -> None:
    from benchmarks.render import MATCH_TOLERANCE

    args.preset = preset_name(list_tables(), args)
    rows = coverage(args)
    print(f"coverage of the store {args.store or load_preset(args.preset).store or 'results'} (preset {args.preset}):")
    print(f"  {'table':<12} {'cells':>6} {'runnable':>9} {'run':>5} {'vs paper':>9} {'within':>7}")
    for r in rows:
        print(
            f"  {r['table']:<12} {r['cells']:>6} {r['runnable']:>9} {r['run']:>5} {r['compared']:>9} {r['matching']:>7}"
        )
    total = {k: sum(r[k] for r in rows) for k in ("cells", "runnable", "run", "compared", "matching")}
    print(
        f"  {'all':<12} {total['cells']:>6} {total['runnable']:>9} {total['run']:>5} {total['compared']:>9} "
        f"{total['matching']:>7}"
    )
    print(
        f"cells: (row, pair) cells of kdbench runs; runnable: not blocked; run: every trial finished; vs paper: run "
        f"and with a published top-1; within: |ours - paper| <= {MATCH_TOLERANCE} pt"
    )


# ------------------------------------------------------------------------------------------------ launching
def _launcher(args: argparse.Namespace, printer: Any = None) -> Any:
    from benchmarks.launch import ParallelLauncher, SequentialLauncher, SubmititLauncher, visible_gpus

    out: dict[str, Any] = {"printer": printer} if printer is not None else {}
    if args.launcher == "parallel":
        return ParallelLauncher(per_gpu=args.per_gpu, jobs=args.jobs, **out)
    if args.launcher == "slurm":
        parameters: dict[str, Any] = {}
        for name, key in (
            ("slurm_partition", "slurm_partition"),
            ("slurm_time", "timeout_min"),
            ("slurm_cpus", "cpus_per_task"),
            ("slurm_mem", "mem_gb"),
            ("slurm_parallelism", "slurm_array_parallelism"),
        ):
            if getattr(args, name) is not None:
                parameters[key] = getattr(args, name)
        for item in args.slurm_param:
            key, sep, value = item.partition("=")
            if not sep:
                raise KDBenchError(f"--slurm-param takes KEY=VALUE, got {item!r}")
            parameters[key] = int(value) if value.isdigit() else value
        cluster = None if args.slurm_cluster == "auto" else args.slurm_cluster
        return SubmititLauncher(
            args.slurm_folder,
            cluster=cluster,
            parameters=parameters,
            gpu=bool(visible_gpus()) or cluster == "slurm",
            wait=not args.no_wait,
            **out,
        )
    return SequentialLauncher(**out)


def _table_names(names: list[str]) -> list[str]:
    if not names:
        raise KDBenchError(f"name a table; valid: {', '.join(list_tables())}, all, status")
    if names == ["all"]:
        return list_tables()
    return names


def main(argv: list[str] | None = None) -> int:
    with user_errors("benchmarks.run"):
        args = parse_args(argv)
        if args.list:
            for name in list_tables():
                table = load_table(name)
                pairs = len(table.pairs) + len(table.quoted_columns)
                print(f"{name:<10} {table.dataset:<14} {pairs:>2} pairs x {len(table.rows):>2} rows  {table.title}")
            return 0
        if args.tables[:1] == ["status"]:
            print_status(args)
            return 0
        names = _table_names(args.tables)
        plans = plan_tables(names, args)
        if args.dry_run:
            for plan in plans:
                shared = _other_tables(plan, args) if len(plans) == 1 else None
                print_plan(plan, args, shared)
                if args.measure:
                    print_measurements(plan)
                print()
            if len(plans) > 1:
                merged = merge_runs(plans)
                multi = [s for s in merged if len(s.tables) > 1]
                print(
                    f"{len(merged)} distinct runs over {len(plans)} tables; {len(multi)} are needed by several tables"
                )
            return 0
        started = time.perf_counter()
        if args.from_wandb:
            from benchmarks.wandb_import import import_wandb

            if not args.store:
                for plan in plans:
                    plan.store = RunStore(Path("results") / "wandb" / args.from_wandb.replace("/", "_"))
            wanted = {rid for plan in plans for ids in plan.cells.values() for rid in ids}
            report = import_wandb(args.from_wandb, wanted, plans[0].store)
            print(report.summary(args.from_wandb))
        elif not args.render_only:
            from benchmarks.progress import LaunchProgress

            args.launcher = args.launcher or plans[0].preset.launcher or "sequential"
            runs = merge_runs(plans)
            weights = {run_id: w for plan in plans for run_id, w in _estimates(plan).items()}
            with LaunchProgress(runs, plans[0].store, weights) as progress:
                report = _launcher(args, progress).launch(runs, plans[0].store)
            print(report.summary(time.perf_counter() - started))
        from benchmarks.render import write_table

        for plan in plans:
            path, text = write_table(plan, RESULTS_DIR, ci=args.ci)
            print()
            print(text)
            print(
                f"written to {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path} (+ .csv, .png)"
            )
        if args.report:
            from benchmarks.report import write_site

            index = write_site(plans, plans[0].store.root / "report", ci=args.ci)
            print(f"report page: {index} (open it in a browser)")
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
