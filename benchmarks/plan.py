"""From a table to runs: pairs x rows x trials, their complete configs, identities and dependencies.

Every run is described by the complete LightningCLI config it will be started with.  Its identity is a hash of
everything in that config that can change the result (dataset options, recipe, networks, method and its
hyper-parameters, seed, and the teacher's identity), so a run that several tables need is trained once.
Teachers the table needs are runs too (``Vanilla`` on the teacher network) and come first.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from benchmarks.errors import KDBenchError
from benchmarks.store import RunStore
from benchmarks.tables import REPO_ROOT, Pair, Row, Table

__all__ = [
    "Preset",
    "RunSpec",
    "Plan",
    "load_preset",
    "list_presets",
    "build_plan",
    "run_identity",
    "deep_merge",
    "set_dotted",
]

PRESETS_DIR = REPO_ROOT / "configs" / "presets"
RECIPES_FILE = REPO_ROOT / "configs" / "recipes" / "recipes.yaml"

# Config keys that never change a result: left out of the identity.
NON_SEMANTIC = {
    ("run",),
    ("data", "init_args", "root"),
    ("data", "init_args", "download"),
    ("data", "init_args", "on_device"),
    ("data", "init_args", "eval_batch_size"),
    ("trainer", "enable_progress_bar"),
    ("trainer", "enable_model_summary"),
    ("trainer", "logger"),
    ("trainer", "default_root_dir"),
    ("trainer", "log_every_n_steps"),
}


# ---------------------------------------------------------------------------------------------- dict helpers
def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins; neither input is modified."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def set_dotted(config: dict[str, Any], dotted: str, value: Any) -> None:
    node = config
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def _strip(config: dict[str, Any], path: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        k: (_strip(v, path + (k,)) if isinstance(v, dict) else v)
        for k, v in config.items()
        if path + (k,) not in NON_SEMANTIC
    }


_STORE_WEIGHTS = re.compile(r"runs/([0-9a-f]{16})/final\.pth$")


def teacher_identity(checkpoint: str) -> str:
    """A teacher checkpoint's identity: the run that produced it, else the file's digest, else its path."""
    match = _STORE_WEIGHTS.search(checkpoint.replace("\\", "/"))
    if match:
        return f"run:{match.group(1)}"
    if checkpoint.startswith("run:"):
        return checkpoint
    if Path(checkpoint).is_file():
        from models.checkpoints import file_digest

        return f"sha256:{file_digest(checkpoint)}"
    return f"path:{checkpoint}"


def run_identity(config: dict[str, Any]) -> str:
    """Stable 16-hex-digit hash of the result-relevant part of a run config.

    Bookkeeping keys (:data:`NON_SEMANTIC`) are left out, and a teacher checkpoint counts by its identity
    (:func:`teacher_identity`), not by where the file lies.
    """
    stripped = _strip(config)
    teacher = stripped.get("model", {}).get("init_args", {}).get("teacher")
    if isinstance(teacher, dict) and teacher.get("checkpoint"):
        teacher = {**teacher, "checkpoint": teacher_identity(str(teacher["checkpoint"]))}
        stripped = deep_merge(stripped, {"model": {"init_args": {"teacher": teacher}}})
    canonical = json.dumps(stripped, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _load_yaml(path: str | Path) -> dict[str, Any]:
    path = REPO_ROOT / path if not Path(path).is_absolute() else Path(path)
    if not path.is_file():
        raise KDBenchError(f"config file not found: {path}")
    return yaml.safe_load(path.read_text()) or {}


# --------------------------------------------------------------------------------------------------- presets
@dataclass
class Preset:
    name: str
    config: dict[str, Any] = field(default_factory=dict)
    trials: int | None = None
    store: str | None = None
    synthetic_data: bool = False
    wandb: str | None = None
    # Per-method overrides of the method's arguments (e.g. a small codebook in the smoke preset), applied after the
    # row's own init_args; a method not listed is untouched, so other methods never see arguments they lack.
    method_init_args: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def is_smoke(self) -> bool:
        return self.name == "smoke"


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_preset(name: str) -> Preset:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise KDBenchError(f"unknown preset {name!r}; valid: {', '.join(list_presets())}")
    raw = _load_yaml(path)
    return Preset(
        name=name,
        config=raw.get("config") or {},
        trials=raw.get("trials"),
        store=raw.get("store"),
        synthetic_data=bool(raw.get("synthetic_data", False)),
        wandb=raw.get("wandb"),
        method_init_args={str(k): dict(v or {}) for k, v in (raw.get("method_init_args") or {}).items()},
    )


@lru_cache(maxsize=1)
def recipes() -> dict[str, dict[str, Any]]:
    return _load_yaml(RECIPES_FILE)


def recipe(name: str) -> dict[str, Any]:
    known = recipes()
    if name not in known:
        raise KDBenchError(f"unknown recipe {name!r}; valid: {', '.join(sorted(known))}")
    return known[name]


# ------------------------------------------------------------------------------------------------ run specs
@dataclass
class RunSpec:
    """One training run: what it is for, its complete config and what it waits for."""

    run_id: str
    kind: str  # "teacher" | "student"
    config: dict[str, Any]
    table: str
    pair: Pair | None
    row: str
    trial: int
    depends_on: list[str] = field(default_factory=list)
    blocked: str | None = None  # why the run cannot be made yet (unknown network, method not implemented ...)
    cells: list[tuple[str, str, int]] = field(default_factory=list)  # (row, pair label, trial) that use it

    @property
    def label(self) -> str:
        pair = self.pair.display if self.pair else ""
        return f"{self.row} {pair} trial {self.trial}".replace("  ", " ")


@dataclass
class Plan:
    table: Table
    preset: Preset
    store: RunStore
    runs: dict[str, RunSpec]  # run id -> spec, in dependency order (teachers first)
    cells: dict[tuple[str, str], list[str]]  # (row label, pair label) -> run ids (one per trial)
    blocked_cells: dict[tuple[str, str], str]  # cells that cannot run, with the reason

    def ordered(self) -> list[RunSpec]:
        return list(self.runs.values())


def _availability(method: str, archs: list[str]) -> str | None:
    """Why a run cannot be made yet, or None."""
    from kd_modules import UnknownMethodError, method_class
    from models import UnknownModelError, model_entry

    for arch in archs:
        try:
            model_entry(arch)
        except UnknownModelError:
            return f"network {arch} is not in the model zoo yet"
    try:
        method_class(method)
    except UnknownMethodError:
        return f"method {method} is not implemented yet"
    return None


def _base_config(table: Table, recipe_name: str, student: str, preset: Preset) -> dict[str, Any]:
    spec = recipe(recipe_name)
    config = _load_yaml(spec["config"])
    for arch, overrides in (spec.get("student_overrides") or {}).items():
        if arch == student:
            for dotted, value in overrides.items():
                set_dotted(config, dotted, value)
    return config


def _finish(config: dict[str, Any], preset: Preset, seed: int) -> dict[str, Any]:
    config = deep_merge(config, preset.config)
    config["seed_everything"] = seed
    set_dotted(config, "data.init_args.seed", seed)
    return config


class Planner:
    def __init__(self, table: Table, preset: Preset, store: RunStore, trials: int, data_root: str) -> None:
        self.table = table
        self.preset = preset
        self.store = store
        self.trials = trials
        self.data_root = data_root
        self.runs: dict[str, RunSpec] = {}

    def _add(self, spec: RunSpec) -> RunSpec:
        existing = self.runs.get(spec.run_id)
        if existing is not None:
            existing.cells.extend(spec.cells)
            return existing
        self.runs[spec.run_id] = spec
        return spec

    def _info(self, config: dict[str, Any], run_id: str, row: str, pair: Pair | None, trial: int, kind: str) -> None:
        name = f"{self.table.name}/{kind}/{pair.label if pair else ''}/{row}/t{trial}"
        info = {
            "dir": str(self.store.run_dir(run_id)),
            "run_id": run_id,
            "name": name,
            "table": self.table.name,
            "pair": pair.label if pair else None,
            "method": row,
            "trial": trial,
            "recipe": self.table.recipe,
        }
        if self.preset.wandb:
            info["wandb"] = self.preset.wandb
        config["run"] = info
        set_dotted(config, "data.init_args.root", self.data_root)

    def teacher(self, arch: str) -> RunSpec:
        recipe_name = self.table.teacher_recipe or self.table.recipe
        config = _base_config(self.table, recipe_name, arch, self.preset)
        set_dotted(config, "model.class_path", "kd_modules.Vanilla")
        set_dotted(config, "model.init_args.student", arch)
        config = _finish(config, self.preset, seed=0)
        run_id = run_identity(config)
        self._info(config, run_id, "teacher", None, 0, "teacher")
        config["run"]["name"] = f"{self.table.name}/teacher/{arch}"
        blocked = _availability("Vanilla", [arch])
        return self._add(
            RunSpec(run_id, "teacher", config, self.table.name, None, f"teacher {arch}", 0, blocked=blocked)
        )

    def student(self, row: Row, pair: Pair, trial: int, teacher: RunSpec) -> RunSpec:
        config = _base_config(self.table, self.table.recipe, pair.student, self.preset)
        if row.config:
            config = deep_merge(config, _load_yaml(row.config))
        if row.method != "teacher":
            set_dotted(config, "model.class_path", f"kd_modules.{row.method}")
        set_dotted(config, "model.init_args.student", pair.student)
        for key, value in row.args_for(pair).items():
            set_dotted(config, f"model.init_args.{key}", value)
        for key, value in self.preset.method_init_args.get(row.method, {}).items():
            set_dotted(config, f"model.init_args.{key}", value)
        depends: list[str] = []
        from kd_modules import UnknownMethodError, method_class

        try:
            cls = method_class(row.method)
            needs_teacher = cls.requires_teacher
            sized_by_teacher = getattr(cls, "sized_by_teacher_arch", False)
        except UnknownMethodError:
            needs_teacher, sized_by_teacher = True, False
        given = config.get("model", {}).get("init_args", {})
        if sized_by_teacher and not needs_teacher and "teacher_arch" not in given and "teacher_channels" not in given:
            # Methods sized by the teacher's architecture but trained without its weights (NORM's FT-only
            # students) get the pair's teacher name; no dependency on the teacher run.
            set_dotted(config, "model.init_args.teacher_arch", pair.teacher)
        if needs_teacher:
            # The teacher counts by its run id (the weights lie in that run's folder), see teacher_identity.
            checkpoint = str(self.store.final_weights(teacher.run_id))
            set_dotted(config, "model.init_args.teacher", {"arch": pair.teacher, "checkpoint": checkpoint})
            depends.append(teacher.run_id)
        config = _finish(config, self.preset, seed=trial)
        run_id = run_identity(config)
        self._info(config, run_id, row.label, pair, trial, "student")
        blocked = _availability(
            row.method, [pair.student] + ([pair.teacher] if needs_teacher or sized_by_teacher else [])
        )
        if blocked is None and needs_teacher and teacher.blocked:
            blocked = f"teacher: {teacher.blocked}"
        spec = RunSpec(run_id, "student", config, self.table.name, pair, row.label, trial, depends, blocked)
        spec.cells.append((row.label, pair.label, trial))
        return self._add(spec)


def _select(table: Table, pairs: list[str] | None, methods: list[str] | None) -> tuple[list[Pair], list[Row]]:
    chosen_pairs = table.pairs
    if pairs:
        wanted = [Pair.parse(p).label for p in pairs]
        valid = [p.label for p in table.pairs]
        unknown = [p for p in wanted if p not in valid]
        if unknown:
            raise KDBenchError(f"unknown pair {unknown[0]!r} for table {table.name}; valid: {', '.join(valid)}")
        chosen_pairs = [p for p in table.pairs if p.label in wanted]
    chosen_rows = table.rows
    if methods:
        valid_rows = {r.label.lower(): r for r in table.rows}
        valid_rows.update({r.method.lower(): r for r in table.rows if r.method.lower() not in valid_rows})
        unknown = [m for m in methods if m.lower() not in valid_rows]
        if unknown:
            raise KDBenchError(
                f"unknown method {unknown[0]!r} for table {table.name}; valid: {', '.join(r.label for r in table.rows)}"
            )
        labels = {valid_rows[m.lower()].label for m in methods}
        chosen_rows = [r for r in table.rows if r.label in labels]
    return chosen_pairs, chosen_rows


def build_plan(
    table: Table,
    preset: Preset,
    store: RunStore,
    *,
    data_root: str,
    trials: int | None = None,
    pairs: list[str] | None = None,
    methods: list[str] | None = None,
) -> Plan:
    n_trials = trials if trials is not None else (preset.trials if preset.trials is not None else table.trials)
    if n_trials < 1:
        raise KDBenchError(f"--trials must be at least 1, got {n_trials}")
    chosen_pairs, chosen_rows = _select(table, pairs, methods)
    planner = Planner(table, preset, store, n_trials, data_root)
    cells: dict[tuple[str, str], list[str]] = {}
    blocked_cells: dict[tuple[str, str], str] = {}
    for pair in chosen_pairs:
        teacher = planner.teacher(pair.teacher)
        for row in chosen_rows:
            if row.quoted_only:
                continue
            key = (row.label, pair.label)
            if row.is_teacher:
                teacher.cells.append((row.label, pair.label, 0))
                cells[key] = [teacher.run_id]
                if teacher.blocked:
                    blocked_cells[key] = teacher.blocked
                continue
            ids = []
            for trial in range(n_trials):
                spec = planner.student(row, pair, trial, teacher)
                ids.append(spec.run_id)
                if spec.blocked:
                    blocked_cells[key] = spec.blocked
            cells[key] = ids
    # Teachers that no runnable cell needs are dropped from the plan.
    needed = {
        dep for spec in planner.runs.values() if spec.kind == "student" and not spec.blocked for dep in spec.depends_on
    }
    needed |= {rid for ids in cells.values() for rid in ids}
    teachers = [s for s in planner.runs.values() if s.kind == "teacher" and s.run_id in needed]
    students = [s for s in planner.runs.values() if s.kind == "student"]
    ordered = {s.run_id: s for s in teachers + students}
    return Plan(table, preset, store, ordered, cells, blocked_cells)
