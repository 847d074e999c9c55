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
several tables need is trained once.  Rendered tables belong to their store: the preset's default store renders
into ``tables/results/<table>.{md,csv,png}`` (``<table>.smoke.*`` under the smoke preset), any other ``--store``
into ``<store>/tables/``; a launch filtered with ``--methods`` / ``--pairs`` writes ``<table>.only-<filter>.*``
and never overwrites the full table.

Stopping and sharing: Ctrl-C (SIGINT) or SIGTERM stops the whole launch — running runs save a resumable
checkpoint, no new run starts — prints ``interrupted: N finished, M left; run the same command to resume`` and
exits with 130 / 143.  Any number of runners may work on one store at once (processes, machines, SLURM tasks):
each run is claimed before it is trained (:mod:`benchmarks.store`); a run another runner holds is waited for.

Exit status: 0 when every requested cell finished; 1 when a run failed or diverged; 3 when nothing failed but
cells are blocked (method or data not available) or not run; 130 / 143 when interrupted; 2 for bad input.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from benchmarks.cli_errors import check_writable
from benchmarks.errors import KDBenchError, user_errors
from benchmarks.plan import (
    Plan,
    RunSpec,
    build_plan,
    list_presets,
    load_preset,
    merge_runs,
    method_or_none,
    preset_name,
    recipe,
)
from benchmarks.store import RunStore
from benchmarks.tables import REPO_ROOT, Pair, Table, list_tables, load_table

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
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan, a data check and a GPU-hour estimate; write nothing"
    )
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
    parser.add_argument(
        "--teachers",
        choices=["released", "trained"],
        help="CIFAR tables: distil from the public teachers (models/releases.py, fetched when missing) or from "
        "teachers trained here (default: what the paper used; tables/<table>.yaml 'teachers')",
    )
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
from datamodules.synthetic import GENERATED_MARKER as FIXTURE_MARKER  # noqa: E402 - beside its users


def _fixture_digest(root: Path) -> str:
    """SHA-256 of every file of a generated fixture (they are small), to notice one that was damaged."""
    sha = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != FIXTURE_MARKER):
        sha.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return sha.hexdigest()


def _fixture_ok(root: Path) -> bool:
    try:
        recorded = (root / FIXTURE_MARKER).read_text().split()[-1]
    except (OSError, IndexError):
        return False
    return recorded == _fixture_digest(root)


def _write_fixture(dataset: str, root: Path) -> None:
    """Generate the fixture into a temporary folder and rename it into place (several runners may race: the
    first rename wins, the others use it); a damaged fixture is moved aside and generated again."""
    import shutil
    import uuid

    from datamodules.synthetic import mark_generated, write_fixture

    root.parent.mkdir(parents=True, exist_ok=True)
    if root.exists():
        if _fixture_ok(root):
            return
        aside = root.with_name(f".{root.name}.damaged-{uuid.uuid4().hex[:8]}")
        try:
            os.replace(root, aside)
        except OSError:
            pass
        else:
            print(f"kdbench: the generated fixture {root} was damaged: generating it again", file=sys.stderr)
            shutil.rmtree(aside, ignore_errors=True)
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    write_fixture(dataset, str(tmp))
    mark_generated(tmp, _fixture_digest(tmp))
    try:
        os.rename(tmp, root)
    except OSError:  # another runner was first
        shutil.rmtree(tmp, ignore_errors=True)
        if not _fixture_ok(root):
            raise KDBenchError(f"the generated fixture {root} is damaged and could not be replaced") from None


def _data_root(table: Table, root: str, synthetic_allowed: bool, write: bool = True) -> tuple[str, bool]:
    """The data root to use: ``--data-root``, else one of the table's ``data_roots``, else a generated fixture
    in the real format when the preset allows it; the first that holds the dataset.  With ``write=False``
    (``--dry-run``) the fixture's place is returned and nothing is written."""
    from datamodules import DATASETS

    datamodule = DATASETS.get(table.dataset)
    if datamodule is None:
        return root, False  # the plan shows every cell as blocked on the missing datamodule
    for candidate in [root, *table.data_roots]:
        if datamodule.is_available(candidate):
            return candidate, False
    if not synthetic_allowed:
        return root, False
    synthetic_root = Path(root) / "synthetic" / table.dataset
    if write:
        _write_fixture(table.dataset, synthetic_root)
    return str(synthetic_root), True


def data_check(table: Table, root: str, synthetic_allowed: bool) -> dict[str, Any]:
    """Where the table's dataset is, whether it can be downloaded, and which released teacher weights exist."""
    from datamodules import DATASETS

    datamodule = DATASETS.get(table.dataset)
    looked = [root, *table.data_roots]
    check: dict[str, Any] = {"dataset": table.dataset, "looked": looked, "teachers": []}
    if datamodule is None:
        check.update(status="missing", detail=f"no datamodule for {table.dataset}")
    else:
        found = next((c for c in looked if datamodule.is_available(c)), None)
        if found is not None:
            check.update(status="present", where=found)
        elif synthetic_allowed:
            where = Path(root) / "synthetic" / table.dataset
            state = "present" if _fixture_ok(where) else "would be generated"
            check.update(status="fixture", where=str(where), detail=state)
        else:
            check.update(status="downloadable" if datamodule.download_url else "missing", url=datamodule.download_url)
            try:
                datamodule.check_root(root)
            except Exception as error:  # noqa: BLE001 - the message says what is expected where
                check["detail"] = str(error).splitlines()[0]
            else:
                check["detail"] = f"files under {root} are not the full dataset"
    for arch, released in sorted(table.teacher_checkpoints.items()):
        path = Path(root) / released.path  # an absolute released.path stays itself
        state = "present" if path.is_file() else ("downloadable" if released.url else "missing")
        check["teachers"].append({"arch": arch, "path": str(path), "status": state, "url": released.url})
    return check


def print_data_check(plan: Plan, args: argparse.Namespace) -> None:
    check = data_check(plan.table, args.data_root, plan.preset.synthetic_data)
    runnable = len(plan.cells) - len(plan.blocked_cells)
    status = check["status"]
    print(f"data check ({plan.table.name}):")
    if status == "present":
        print(f"  dataset {check['dataset']}: present at {check['where']}")
    elif status == "fixture":
        print(f"  dataset {check['dataset']}: not found; a generated fixture ({check['detail']}) at {check['where']}")
    else:
        how = (
            f"downloadable from {check['url']} (data.init_args.download: true)"
            if status == "downloadable"
            else "missing"
        )
        print(f"  dataset {check['dataset']}: {how}; looked in {', '.join(check['looked'])}")
        if check.get("detail"):
            print(f"    {check['detail']}")
        print(f"  cells that would fail for it: all {runnable} runnable cell(s) of {len(plan.cells)}")
    for teacher in check["teachers"]:
        how = teacher["status"] + (f" from {teacher['url']}" if teacher["status"] == "downloadable" else "")
        cells = [f"{row} {pair}" for (row, pair), reason in plan.blocked_cells.items() if teacher["path"] in reason]
        line = f"  teacher {teacher['arch']} weights: {how} at {teacher['path']}"
        if cells:
            line += f"; {len(cells)} cell(s) cannot run without them, e.g. {cells[0]}"
        print(line)


def _require_data(plans: list[Plan], args: argparse.Namespace) -> None:
    """Refuse a launch whose dataset is missing (one line, exit 2) instead of failing every run on it."""
    for plan in plans:
        check = data_check(plan.table, args.data_root, plan.preset.synthetic_data)
        runnable = len(plan.cells) - len(plan.blocked_cells)
        if check["status"] in ("missing", "downloadable") and runnable:
            hint = f"; it can be downloaded from {check['url']}" if check.get("url") else ""
            raise KDBenchError(
                f"{check['dataset']} not found (looked in {', '.join(check['looked'])}): the {runnable} runnable "
                f"cell(s) of {plan.table.name} need it; pass --data-root DIR{hint} "
                f"({check.get('detail', '')})".rstrip(" ()")
            )


def plan_tables(names: list[str], args: argparse.Namespace, quiet: bool = False) -> list[Plan]:
    args.preset = preset_name(names, args)
    preset = load_preset(args.preset)
    store = RunStore(Path(args.store or preset.store or "results").resolve())
    plans = []
    # a dry run writes nothing; --measure times real steps, which need the (generated) data
    write = not getattr(args, "dry_run", False) or bool(getattr(args, "measure", False))
    for name in names:
        table = load_table(name)
        data_root, synthetic = _data_root(table, args.data_root, preset.synthetic_data, write=write)
        if synthetic and not quiet and write:
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
                teachers=getattr(args, "teachers", None),
            )
        )
    return plans


def fetch_released_teachers(plans: list[Plan], args: argparse.Namespace) -> bool:
    """Before a launch: fetch the released teachers the plans read that are missing or rejected (network
    permitting; offline, one line per file and the cells stay blocked).  True when a file was fetched, so the
    caller re-plans (a present file's digest is part of its students' identities)."""
    from benchmarks.fetch import ensure_teachers, plan_releases

    wanted = {release.path: release for plan in plans for release in plan_releases(plan)}
    return bool(wanted) and bool(ensure_teachers(wanted.values(), args.data_root)[0])


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
    quiet = argparse.Namespace(**{**vars(args), "pairs": None, "methods": None, "dry_run": True})
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
    print(f"plan for {table.name} ({table.title}); preset {plan.preset.name}, store {plan.store.root}")
    print(
        f"  dataset {table.dataset}; {plan.trials} trial(s); metric {table.metric}"
        + (f" ({table.trials_note})" if table.trials_note else "")
    )
    for name in sorted({spec.recipe for spec in runs if spec.recipe}):
        print(f"  recipe {name}: {recipe(name).get('description', '')}")
    if table.teachers is not None:
        print(f"  teachers: {plan.table.teacher_mode(getattr(args, 'teachers', None))} (--teachers released|trained)")
    for arch, path in sorted(plan.released.items()):
        print(f"  teacher {arch}: released weights {path}")
    for reason in sorted({r for r in plan.blocked_cells.values() if " teacher rejected: " in r}):
        print(f"  {reason}")

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

    verbose = getattr(args, "verbose", False)
    shared = [s for s in runs if len(s.cells) > 1 or (shared_with and s.run_id in shared_with)]
    if shared:
        print(f"shared runs ({len(shared)}; each trained once):")
        for spec in shared if verbose else shared[:12]:
            cells = ", ".join(f"{row} {pair}" for row, pair, _ in spec.cells[:4]) or "none of this table's"
            others = (
                f"; tables {', '.join(shared_with[spec.run_id])}" if shared_with and spec.run_id in shared_with else ""
            )
            print(f"  {spec.run_id} {spec.kind} {spec.label}: cells {cells}{others}")
        if len(shared) > 12 and not verbose:
            print(f"  ... {len(shared) - 12} more (--verbose lists them)")

    if verbose:
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
    from benchmarks.cost import dataset_sizes, model_description, teacher_cache_build_seconds
    from benchmarks.numerics import numerics_label

    labels = Counter(numerics_label(s.config) for s in todo)
    train_size, _, num_classes = dataset_sizes(table.dataset)
    builds: dict[str, float] = {}
    for spec in todo:  # a teacher cache is built once per teacher and shared by every run that reads it
        teacher = (spec.config.get("model", {}).get("init_args", {}).get("teacher") or {}).get("checkpoint")
        seconds = teacher_cache_build_seconds(spec.config, train_size, num_classes)
        if seconds and teacher:
            builds[str(teacher)] = seconds
    total += sum(builds.values())
    print(
        f"estimated {total / 3600:.1f} GPU-hours for the {len(todo)} runnable runs not finished"
        + (f" ({unknown} without an estimate)" if unknown else "")
        + " under numerics "
        + "; ".join(f"{label} ({n} runs)" for label, n in labels.most_common())
        + (
            f", including {len(builds)} teacher-cache build(s), {sum(builds.values()) / 3600:.1f} GPU-h"
            if builds
            else ""
        )
    )
    print(f"  ({model_description()})")
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


def coverage(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per table: cells, runnable cells, run cells (all trials), and those within the tolerance of the paper."""
    from benchmarks.render import collect, coverage_row

    return [coverage_row(plan, collect(plan)) for plan in plan_tables(list_tables(), args, quiet=True)]


def print_status(args: argparse.Namespace) -> None:
    from benchmarks.render import MATCH_TOLERANCE

    args.preset = preset_name(list_tables(), args)
    rows = coverage(args)
    print(f"coverage of the store {args.store or load_preset(args.preset).store or 'results'} (preset {args.preset}):")
    print(f"  {'table':<12} {'cells':>6} {'runnable':>9} {'run':>5} {'vs paper':>9} {'within':>7}")
    counts = ("cells", "runnable", "run", "compared", "matching")
    total = {"table": "all", **{k: sum(r[k] for r in rows) for k in counts}}
    for r in [*rows, total]:
        print(
            f"  {r['table']:<12} {r['cells']:>6} {r['runnable']:>9} {r['run']:>5} {r['compared']:>9} {r['matching']:>7}"
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
        given = {
            "slurm_partition": args.slurm_partition,
            "timeout_min": args.slurm_time,
            "cpus_per_task": args.slurm_cpus,
            "mem_gb": args.slurm_mem,
            "slurm_array_parallelism": args.slurm_parallelism,
        }
        parameters: dict[str, Any] = {key: value for key, value in given.items() if value is not None}
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


# --------------------------------------------------------------------------------------------- results
def results_dir(plan: Plan, args: argparse.Namespace) -> Path:
    """Where a table renders: ``tables/results/`` for the preset's default store, else ``<store>/tables/``."""
    default = Path(plan.preset.store or "results").resolve()
    return RESULTS_DIR if plan.store.root.resolve() == default else plan.store.root / "tables"


def table_stem(plan: Plan, args: argparse.Namespace) -> str:
    """``render.default_stem``, or ``<stem>.only-<methods>-<pairs>`` for a filtered launch."""
    import re

    from benchmarks.render import default_stem

    stem = default_stem(plan)
    chosen = [*(_split(args.methods) or []), *(_split(args.pairs) or [])]
    if not chosen:
        return stem
    slug = re.sub(r"[^A-Za-z0-9+_.-]+", "_", "-".join(chosen).replace("->", "_"))
    if len(slug) > 48:
        slug = slug[:36] + "-" + hashlib.sha256(slug.encode()).hexdigest()[:8]
    return f"{stem}.only-{slug}"


def _not_applicable(plan: Plan, row_label: str, pair_label: str, reason: str) -> bool:
    """Whether a blocked cell is n/a by definition (no run can ever fill it) rather than not runnable yet: a teacher
    row whose released weights are used, or a method undefined for the pair (its ``pair_problem``; the papers print
    n/a there too)."""
    if reason.startswith("released ") and reason.endswith("weights are used, not trained here"):
        return True
    row = plan.table.row(row_label)
    hook = getattr(method_or_none(row.method), "pair_problem", None)
    if hook is None:
        return False
    pair = Pair.parse(pair_label)
    try:
        return hook(pair.student, pair.teacher, dict(row.args_for(pair))) == reason
    except Exception:  # noqa: BLE001 - a hook that needs more arguments than the row's: not n/a by definition
        return False


def cell_causes(plan: Plan) -> Counter[str]:
    """Every cell of the plan by how it stands: finished, failed, diverged, blocked, n/a, or not run."""
    from benchmarks.execute import failure_kind, failure_message

    def state(run_id: str) -> str:
        if plan.store.is_finished(run_id):
            return "finished"
        return failure_kind(plan.store, run_id) if failure_message(plan.store, run_id) else "not run"

    causes: Counter[str] = Counter()
    for key, run_ids in plan.cells.items():
        if key in plan.blocked_cells:
            causes["n/a" if _not_applicable(plan, *key, plan.blocked_cells[key]) else "blocked"] += 1
            continue
        states = {state(run_id) for run_id in run_ids}  # a cell stands as its worst trial
        causes[next((c for c in ("failed", "diverged", "not run") if c in states), "finished")] += 1
    return causes


def exit_status(plans: list[Plan]) -> tuple[int, str]:
    """0 when every requested cell finished; else 1 (a run failed or diverged) or 3, and the summary by cause.

    Cells that are n/a by definition (a method undefined for the pair, a teacher row of released weights) are not
    requested cells: no run can fill them.
    """
    causes = sum((cell_causes(plan) for plan in plans), Counter())
    na = causes.pop("n/a", 0)
    total = sum(causes.values())
    also = f" (and {na} n/a by definition)" if na else ""
    if causes["finished"] == total:
        return 0, f"all {total} cell(s) finished{also}"
    parts = [f"{causes[c]} {c}" for c in ("finished", "failed", "diverged", "blocked", "not run") if causes[c]]
    status = 1 if causes["failed"] or causes["diverged"] else 3
    return status, f"not every cell finished: {', '.join(parts)} (of {total} cells){also}"


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("interrupted; nothing finished was lost: run the same command to resume", file=sys.stderr)
        return 130


def _main(argv: list[str] | None = None) -> int:
    from benchmarks import interrupts

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
        if args.jobs is not None and args.jobs < 1:
            raise KDBenchError(f"--jobs must be at least 1, got {args.jobs}")
        if args.dry_run:
            plans = plan_tables(names, args)
            for plan in plans:
                shared = _other_tables(plan, args) if len(plans) == 1 else None
                print_plan(plan, args, shared)
                print_data_check(plan, args)
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
        preset = load_preset(preset_name(names, args))
        store_root = Path(args.store or preset.store or "results")
        check_writable(store_root, "--store")
        plans = plan_tables(names, args)
        if not (args.render_only or args.from_wandb) and fetch_released_teachers(plans, args):
            plans = plan_tables(names, args, quiet=True)
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
            _require_data(plans, args)
            from benchmarks.progress import LaunchProgress

            args.launcher = args.launcher or plans[0].preset.launcher or "sequential"
            runs = merge_runs(plans)
            weights = {run_id: w for plan in plans for run_id, w in _estimates(plan).items()}
            with LaunchProgress(runs, plans[0].store, weights) as progress:
                report = _launcher(args, progress).launch(runs, plans[0].store)
            print(report.summary(time.perf_counter() - started))
            if report.interrupted_by is not None:
                print(report.interrupted_line(), flush=True)
                return interrupts.exit_status(report.interrupted_by)
        from benchmarks.render import write_table

        for plan in plans:
            path, text = write_table(plan, results_dir(plan, args), table_stem(plan, args), ci=args.ci)
            print()
            print(text)
            print(
                f"written to {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path} (+ .csv, .png)"
            )
        if args.report:
            from benchmarks.report import write_site

            index = write_site(plans, plans[0].store.root / "report", ci=args.ci)
            print(f"report page: {index} (open it in a browser)")
        status, line = exit_status(plans)
        if status:
            print(line)
        return status


if __name__ == "__main__":
    # A runner never attaches to a W&B service it inherited (WANDB_SERVICE, set by wandb in whatever process
    # started it): a run killed there stays "in use" in that service, and resuming it here would be refused.
    os.environ.pop("WANDB_SERVICE", None)
    sys.exit(main(sys.argv[1:]))
