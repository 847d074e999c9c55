"""From a table to runs: pairs x rows x trials, their complete configs, identities and dependencies.

Every run is described by the complete LightningCLI config it will be started with.  Its identity is a hash of
everything in that config that can change the result (dataset options, recipe, networks, method and its
hyper-parameters, seed, and the identity of every run whose output it reads), so a run that several tables
need is trained once.

**The dependency graph** has three kinds of runs and one kind of cached computation:

* ``teacher`` runs: ``Vanilla`` on the teacher network with the table's teacher recipe (seed 0, or the row's
  ``teacher_seed``) — unless the table names released weights (``teacher_checkpoints``), which are then read
  from disk and never trained (under the smoke preset a missing file is replaced by a smoke-trained teacher);
* ``stage`` runs: *prerequisite training runs* a method declares (below), e.g. AB/FT/FSP initialisation
  stages, or KCD's CE-only student trained from the stored initialisation θ0;
* ``student`` runs: the table's cells, one per (row, pair, trial); trial ``k`` uses seed ``k``;
* offline stages (ND's class means, letKD's codebooks, KCD's consistency matrix ...) are not runs: a method
  computes them inside its run with :func:`kd_modules.offline.load_or_compute`, cached on disk under a key of
  the teacher digest and data fingerprint, so every run that needs the same artefact shares it.  The planner
  only *shows* them (``--dry-run``), from the optional class method below.

**Optional method API** (class methods on a ``DistillationModule`` subclass; both may be absent):

``offline_stages(init_args: dict) -> list[tuple[str, str]]``
    ``(name, description)`` of each cached offline stage the run will compute or reuse for these arguments,
    e.g. ``[("nd_class_means", "teacher class means of the pooled embedding over the training split")]``.

``prerequisites(init_args: dict) -> list[dict]``
    Training runs that must finish before this one, each a dict with keys

    * ``name`` (str): the stage's name, e.g. ``"ce_student"``;
    * ``pass_as`` (str): the dependent run's argument (``model.init_args.<pass_as>``, dotted for nested) that
      receives the path of the stage's output file;
    * ``method`` (str): the ``kd_modules`` class the stage trains the pair's student with, e.g. ``"Vanilla"``;
    * ``init_args`` (dict, optional): the stage method's arguments (student and teacher are filled in);
    * ``config`` (str, optional): a method config file the stage reads first, as a table row's ``config`` (so a
      stage with a row's method, config and arguments *is* that row's run, e.g. the network a diagnostic measures);
    * ``overrides`` (dict, optional): dotted config overrides of the stage run (e.g. ``trainer.max_epochs: 30``);
    * ``output`` (str, optional): the file in the stage run's folder that is passed on (default ``final.pth``;
      a stage may write other files into its ``run.dir``);
    * ``description`` (str, optional): shown by ``--dry-run``;
    * ``seed`` (int, optional): the stage's seed (default: the dependent run's trial seed);
    * ``network`` (optional): ``"student"`` (default) or ``"teacher"``: the pair's teacher run itself with
      ``seed`` (default 0), e.g. KCD Table 3b's transformation computed with teacher θ0 while distilling from a
      teacher trained with another seed (``method``/``init_args``/``overrides`` are not allowed then).

    The planner builds each stage run from the dependent run's recipe, student network and seed, gives it the
    pair's teacher when its method requires one, expands the stage's own prerequisites (up to depth 3), and
    hands the output path to the dependent run.  Because a stage is an ordinary run with an identity, a stage
    identical to another run is that run: KCD's ``{"name": "ce_student", "method": "Vanilla", "pass_as":
    "ce_student_checkpoint"}`` *is* the table's plain-student run of the same trial, trained once.

``pair_problem(student: str, teacher: str, init_args: dict) -> str | None``
    Why the method is undefined for this teacher-student pair (e.g. FSP needs equal channel counts, the papers
    print n/a), or None; such cells are shown as not runnable with that reason instead of failing at run time.

Every run config is complete: the method's and the datamodule's argument defaults are written into it, so a row
that spells out a default (``temperature: 4.0``) and a row that relies on it are the same run, and a changed
default in the code gives new runs.  Store paths inside a config (``.../runs/<run id>/<file>``) count in the
identity as ``run:<run id>/<file>``, so identities do not depend on where the store lies.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from benchmarks.configs import (
    MODEL_LINKED,
    MODEL_NOT_COMPLETED,
    check_arguments,
    complete_arguments,
    get_dotted,
    load_yaml,
    merge_dotted,
    merge_into,
    method_or_none,
    resolve_class,
    set_dotted,
)
from benchmarks.errors import KDBenchError
from benchmarks.numerics import normalize_numerics
from benchmarks.provenance import teacher_digest
from benchmarks.store import RunStore
from benchmarks.tables import REPO_ROOT, TEACHER_CHOICES, Pair, ReleasedTeacher, Row, Table, load_table

__all__ = [
    "Preset",
    "RunSpec",
    "Plan",
    "Prerequisite",
    "load_preset",
    "list_presets",
    "build_plan",
    "merge_runs",
    "run_identity",
    "identity_view",
    "recipe",
    "recipes",
]

PRESETS_DIR = REPO_ROOT / "configs" / "presets"
RECIPES_FILE = REPO_ROOT / "configs" / "recipes" / "recipes.yaml"
MAX_PREREQUISITE_DEPTH = 3

# Config keys that never change a result: left out of the identity.
NON_SEMANTIC = {
    ("run",),
    ("data", "init_args", "root"),
    ("data", "init_args", "download"),
    ("data", "init_args", "on_device"),
    ("data", "init_args", "eval_batch_size"),
    ("trainer", "accelerator"),
    ("trainer", "enable_progress_bar"),
    ("trainer", "enable_model_summary"),
    ("trainer", "logger"),
    ("trainer", "default_root_dir"),
    ("trainer", "log_every_n_steps"),
}
# Arguments the base module takes that a table row never sets itself (not shown to a method's hooks).
BASE_ARGS = {"student", "num_classes", "teacher", "optim"}


#: Arguments added after runs were made, each with the value that gives the behaviour from before it existed.  At
#: that value an argument is left out of the identity, so adding an argument keeps every identity (the runs made
#: before it existed are the runs it describes at that value); at any other value it counts.  Add a line here with
#: every new argument that a completed config would otherwise carry into old runs' identities.
ADDED_ARGUMENTS: dict[tuple[str, ...], Any] = {
    # The ViT recipes' optimiser and regularisation (kd_modules.base.OptimConfig): SGD, no label smoothing ...
    **{
        ("model", "init_args", "optim", name): value
        for name, value in {
            "optimizer": "sgd",
            "betas": [0.9, 0.999],
            "decay_norm_and_bias": True,
            "min_lr": 0.0,
            "per_step": False,
            "label_smoothing": 0.0,
            "mixup_alpha": 0.0,
            "cutmix_alpha": 0.0,
            "mix_switch_prob": 0.5,
            "drop_path": 0.0,
            "dropout": 0.0,
        }.items()
    },
}


def _strip(config: dict[str, Any], path: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        k: (_strip(v, path + (k,)) if isinstance(v, dict) else v)
        for k, v in config.items()
        if path + (k,) not in NON_SEMANTIC
        and not (path + (k,) in ADDED_ARGUMENTS and ADDED_ARGUMENTS[path + (k,)] == v)
    }


_STORE_WEIGHTS = re.compile(r"runs/([0-9a-f]{16})/final\.pth$")
_STORE_PATH = re.compile(r"(?:^|[/\\])runs[/\\]([0-9a-f]{16})[/\\](.+)$")


def teacher_identity(checkpoint: str) -> str:
    """A teacher checkpoint's identity: the run that produced it, else the file's digest, else its path."""
    match = _STORE_WEIGHTS.search(checkpoint.replace("\\", "/"))
    if match:
        return f"run:{match.group(1)}"
    if checkpoint.startswith("run:"):
        return checkpoint
    return teacher_digest(checkpoint) or f"path:{checkpoint}"


def _canonical_paths(value: Any) -> Any:
    """Store paths (``.../runs/<id>/<file>``) -> ``run:<id>/<file>``, recursively."""
    if isinstance(value, dict):
        return {k: _canonical_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical_paths(v) for v in value]
    if isinstance(value, str):
        match = _STORE_PATH.search(value)
        if match:
            return f"run:{match.group(1)}/{match.group(2).replace(os.sep, '/')}"
    return value


@lru_cache(maxsize=256)
def _settings_groups(class_path: str) -> frozenset[str]:
    """The arguments of a method that are :class:`kd_modules.base.SettingsGroup` s (flattened in identities)."""
    from kd_modules.base import SettingsGroup

    cls = resolve_class(class_path, "kd_modules")
    groups = set()
    for klass in cls.__mro__ if cls is not None else ():
        if "__init__" not in vars(klass) or klass is object:
            continue
        try:
            hints = typing.get_type_hints(vars(klass)["__init__"])
        except Exception:  # an annotation not resolvable at run time: no groups in it
            continue
        for name, annotation in hints.items():  # ``Group`` or ``Group | None``
            union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
            members = typing.get_args(annotation) if union else (annotation,)
            if any(isinstance(member, type) and issubclass(member, SettingsGroup) for member in members):
                groups.add(name)
    return frozenset(groups)


def _flatten_groups(model: dict[str, Any]) -> None:
    """Settings groups of ``model.init_args`` counted as the method's own arguments (see ``SettingsGroup``)."""
    args = model.get("init_args")
    if not isinstance(args, dict):
        return
    for name in sorted(_settings_groups(str(model.get("class_path", "")))):
        fields = args.pop(name, None)
        if not isinstance(fields, dict):
            continue
        clash = sorted(set(fields) & set(args))
        if clash:
            raise KDBenchError(f"settings group {name} repeats the method argument {clash[0]}: rename one of them")
        args.update(fields)


def identity_view(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a run config its identity is the hash of, canonical (see :func:`run_identity`)."""
    stripped = _strip(config)  # new dicts at every level: safe to edit below
    if isinstance(stripped.get("model"), dict):
        _flatten_groups(stripped["model"])
    teacher = stripped.get("model", {}).get("init_args", {}).get("teacher")
    if isinstance(teacher, dict) and teacher.get("checkpoint"):
        teacher["checkpoint"] = teacher_identity(str(teacher["checkpoint"]))
    return _canonical_paths(stripped)


def run_identity(config: dict[str, Any]) -> str:
    """Stable 16-hex-digit hash of the result-relevant part of a run config.

    Bookkeeping keys (:data:`NON_SEMANTIC`) and arguments added later at their old behaviour
    (:data:`ADDED_ARGUMENTS`) are left out, a teacher checkpoint counts by its identity
    (:func:`teacher_identity`), any other store path by the run it lies in, and the fields of a method's
    settings groups (:class:`kd_modules.base.SettingsGroup`) as the method's own arguments.
    """
    canonical = json.dumps(identity_view(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


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
    # The launcher a run of this preset uses when --launcher is not given (sequential / parallel / slurm).
    launcher: str | None = None
    # What a non-finite validation loss does to a run: "fail" (the default) or "record" (bookkeeping: run.*).
    on_divergence: str | None = None

    @property
    def is_smoke(self) -> bool:
        return self.name == "smoke"


PRESET_KEYS = {f.name for f in dataclasses.fields(Preset)} - {"name"}
LAUNCHERS = ("sequential", "parallel", "slurm")
DIVERGENCE = ("fail", "record")


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_preset(name: str) -> Preset:
    """A preset by name (``configs/presets/<name>.yaml``), or from a YAML file given by its path."""
    path = Path(name) if str(name).endswith((".yaml", ".yml")) else PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise KDBenchError(f"unknown preset {name!r}; valid: {', '.join(list_presets())}, or a preset file's path")
    name = path.stem if path.parent != PRESETS_DIR else name
    raw = load_yaml(path)
    unknown = sorted(set(raw) - PRESET_KEYS)
    if unknown:
        raise KDBenchError(f"preset {name}: unknown key {unknown[0]!r}; valid: {', '.join(sorted(PRESET_KEYS))}")
    for key, valid in (("launcher", LAUNCHERS), ("on_divergence", DIVERGENCE)):
        if raw.get(key) is not None and raw[key] not in valid:
            raise KDBenchError(f"preset {name}: unknown {key} {raw[key]!r}; valid: {', '.join(valid)}")
    return Preset(
        name=name,
        **{
            **raw,
            "config": raw.get("config") or {},
            "synthetic_data": bool(raw.get("synthetic_data", False)),
            "method_init_args": {str(k): dict(v or {}) for k, v in (raw.get("method_init_args") or {}).items()},
        },
    )


def preset_name(names: list[str], args: Any) -> str:
    """``--preset`` if given; else the tables' own preset when they agree on one (fmnist: cpu); else ``full``."""
    if args.preset:
        return str(args.preset)
    own = {load_table(name).preset or "full" for name in names}
    return own.pop() if len(own) == 1 else "full"


@lru_cache(maxsize=1)
def recipes() -> dict[str, dict[str, Any]]:
    return load_yaml(RECIPES_FILE)


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
    kind: str  # "teacher" | "stage" | "student"
    config: dict[str, Any]
    table: str
    pair: Pair | None
    row: str
    trial: int
    depends_on: list[str] = field(default_factory=list)
    blocked: str | None = None  # why the run cannot be made yet (unknown network, method not implemented ...)
    cells: list[tuple[str, str, int]] = field(default_factory=list)  # (row, pair label, trial) that use it
    tables: list[str] = field(default_factory=list)  # every table whose plan needs it
    recipe: str | None = None
    offline: list[tuple[str, str]] = field(default_factory=list)  # (name, description) of cached offline stages
    teacher_run: str | None = None  # the teacher run it distils from (for the graph)
    teacher_source: str | None = None  # a released teacher file it distils from

    @property
    def label(self) -> str:
        if self.kind == "teacher":
            return self.row
        pair = self.pair.display if self.pair else ""
        return f"{self.row} {pair} trial {self.trial}".replace("  ", " ")

    @property
    def method(self) -> str:
        return str(self.config.get("model", {}).get("class_path", "")).rsplit(".", 1)[-1]

    @property
    def devices(self) -> int:
        """Devices one run of this spec needs (Lightning ``trainer.devices``; 1 unless a DDP preset says more)."""
        value = get_dotted(self.config, "trainer.devices", 1)
        return int(value) if isinstance(value, int) or (isinstance(value, str) and value.isdigit()) else 1


@dataclass
class Plan:
    table: Table
    preset: Preset
    store: RunStore
    runs: dict[str, RunSpec]  # run id -> spec, in dependency order (teachers first)
    cells: dict[tuple[str, str], list[str]]  # (row label, pair label) -> run ids (one per trial)
    blocked_cells: dict[tuple[str, str], str]  # cells that cannot run, with the reason
    trials: int = 1
    pairs: list[Pair] = field(default_factory=list)  # the chosen pairs, in table order
    released: dict[str, str] = field(default_factory=dict)  # teacher arch -> released weights used

    def ordered(self) -> list[RunSpec]:
        return list(self.runs.values())

    def protocol(self, row_label: str) -> str:
        return self.table.row(row_label).metric or self.table.metric


@dataclass(frozen=True)
class Prerequisite:
    """A training run another run needs first (see the module docstring for the method API)."""

    name: str
    pass_as: str
    method: str = "Vanilla"
    init_args: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    config: str | None = None  # a method config file, read as a table row's ``config``
    output: str = "final.pth"
    description: str = ""
    network: str = "student"  # "student": a run on the pair's student; "teacher": the pair's teacher run
    seed: int | None = None  # default: the dependent run's seed (student) or 0 (teacher)
    route: tuple[float, ...] = ()  # fractions of its steps at which the stage run saves its network (run.route)

    @classmethod
    def parse(cls, raw: Any, owner: str) -> Prerequisite:
        usage = (
            f"{owner}.prerequisites() returned {raw!r}: each prerequisite is a dict with keys name, pass_as, "
            f"method (for the student network) and optionally init_args, overrides, config, output, description, network "
            f"(student | teacher), seed, route"
        )
        keys = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(raw, dict) or not {"name", "pass_as"} <= set(raw) or set(raw) - keys:
            raise KDBenchError(usage)
        network = str(raw.get("network", "student"))
        if network not in ("student", "teacher") or (network == "student" and "method" not in raw):
            raise KDBenchError(usage)
        arguments = any(raw.get(key) for key in ("init_args", "overrides", "config"))
        if network == "teacher" and (arguments or raw.get("method", "Vanilla") != "Vanilla"):
            raise KDBenchError(
                f"{usage}; a teacher-network prerequisite is the pair's teacher run itself (Vanilla, no arguments)"
            )
        return cls(
            **{
                **raw,
                "init_args": dict(raw.get("init_args") or {}),
                "overrides": dict(raw.get("overrides") or {}),
                "seed": None if raw.get("seed") is None else int(raw["seed"]),
                "route": tuple(float(f) for f in raw.get("route") or ()),
            }
        )


# ------------------------------------------------------------------------------------------- availability
def _datamodule_class(config: dict[str, Any]) -> type | None:
    return resolve_class(str(get_dotted(config, "data.class_path", "")), "datamodules")


def _datamodule_problem(dataset: str, config: dict[str, Any]) -> str | None:
    from datamodules import datamodule_for
    from datamodules.errors import DatasetError

    try:
        datamodule_for(dataset)
    except DatasetError:
        return f"no datamodule for dataset {dataset} yet"
    cls = _datamodule_class(config)
    if cls is None:
        return f"datamodule class {get_dotted(config, 'data.class_path', '')} not found"
    return check_arguments(cls, get_dotted(config, "data.init_args", {}) or {}, f"datamodule {cls.__name__}")


def _method_problem(cls: type, config: dict[str, Any]) -> str | None:
    # Store paths (a teacher run's final.pth, a stage's output) are strings to the parser whichever run they name:
    # written canonically, the runs of a row share one verdict.
    args = _canonical_paths(get_dotted(config, "model.init_args", {}) or {})
    return check_arguments(cls, args, f"method {cls.__name__}", skip=MODEL_LINKED)


def _trainer_problem(config: dict[str, Any], preset: Preset) -> str | None:
    """Why jsonargparse rejects the Trainer arguments of the recipe under the preset, or None."""
    from lightning.pytorch import Trainer

    trainer = dict(config.get("trainer") or {})
    merge_into(trainer, dict(preset.config.get("trainer") or {}))
    return check_arguments(Trainer, trainer, "trainer")


def _complete(config: dict[str, Any], method_cls: type) -> None:
    """Fill in the method's and the datamodule's argument defaults, as jsonargparse reads them (of a config whose
    method and datamodule exist and accept its arguments)."""
    args = config["model"].setdefault("init_args", {})
    complete_arguments(method_cls, args, skip=MODEL_LINKED, keep=MODEL_NOT_COMPLETED)
    complete_arguments(_datamodule_class(config), config["data"].setdefault("init_args", {}))


def _networks_problem(archs: list[str]) -> str | None:
    from models import UnknownModelError, model_entry

    for arch in archs:
        try:
            model_entry(arch)
        except UnknownModelError:
            return f"network {arch} is not in the model zoo yet"
    return None


def _pair_problem(cls: type | None, pair: Pair, init_args: dict[str, Any]) -> str | None:
    if getattr(cls, "pair_problem", None) is None:
        return None
    return _cached_pair_problem(cls, pair.student, pair.teacher, json.dumps(init_args, sort_keys=True, default=str))


@lru_cache(maxsize=4096)
def _cached_pair_problem(cls: type, student: str, teacher: str, encoded: str) -> str | None:
    return cls.pair_problem(student, teacher, json.loads(encoded))  # type: ignore[attr-defined]


def _optional_classmethod(cls: type | None, name: str, init_args: dict[str, Any]) -> list[Any]:
    hook = getattr(cls, name, None)
    return list(hook(dict(init_args)) or []) if hook is not None else []


# -------------------------------------------------------------------------------------------------- planner
def _finish(config: dict[str, Any], preset: Preset, seed: int) -> dict[str, Any]:
    merge_into(config, preset.config)
    normalize_numerics(config)  # only non-default numerics count (benchmarks.numerics)
    config["seed_everything"] = seed
    set_dotted(config, "data.init_args.seed", seed)
    devices = get_dotted(config, "trainer.devices")
    batch = get_dotted(config, "data.init_args.batch_size")
    if isinstance(devices, int) and devices > 1 and isinstance(batch, int):
        # Recipes state global batch sizes; Lightning's batch_size is per device.
        if batch % devices:
            raise KDBenchError(f"batch size {batch} does not split over trainer.devices={devices}")
        set_dotted(config, "data.init_args.batch_size", batch // devices)
    return config


@dataclass
class Planner:
    """The runs of one table, each planned once: ``teachers`` (``--teachers``) becomes the table's teacher mode and
    ``teacher_root`` (where released teachers lie) defaults to ``data_root``."""

    table: Table
    preset: Preset
    store: RunStore
    data_root: str
    teacher_root: str | None = None
    teachers: str | None = None
    runs: dict[str, RunSpec] = field(default_factory=dict, init=False)
    released: dict[str, str] = field(default_factory=dict, init=False)  # teacher arch -> released weights used
    _teachers: dict[tuple[str, int], RunSpec] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.teachers = self.table.teacher_mode(self.teachers)
        self.teacher_root = self.data_root if self.teacher_root is None else self.teacher_root

    def _add(self, spec: RunSpec) -> RunSpec:
        if self.table.name not in spec.tables:
            spec.tables.append(self.table.name)
        existing = self.runs.get(spec.run_id)
        if existing is not None:
            existing.cells.extend(c for c in spec.cells if c not in existing.cells)
            return existing
        self.runs[spec.run_id] = spec
        return spec

    def _info(
        self, config: dict[str, Any], run_id: str, name: str, row: str, pair: Pair | None, trial: int, recipe_name: str
    ) -> None:
        info = {
            "dir": str(self.store.run_dir(run_id)),
            "run_id": run_id,
            "name": name,
            "table": self.table.name,
            "pair": pair.label if pair else None,
            "method": row,
            "trial": trial,
            "recipe": recipe_name,
            "preset": self.preset.name,
        }
        if self.preset.wandb:
            info["wandb"] = self.preset.wandb
        if self.preset.on_divergence:
            info["on_divergence"] = self.preset.on_divergence
        config["run"] = {**(config.get("run") or {}), **info}  # a preset's run.* settings (checkpoint intervals) stay

    def _base_config(self, recipe_name: str, student: str) -> dict[str, Any]:
        spec = recipe(recipe_name)
        config = load_yaml(spec["config"])
        for dotted, value in ((spec.get("student_overrides") or {}).get(student) or {}).items():
            set_dotted(config, dotted, value)
        set_dotted(config, "data.init_args.root", self.data_root)
        return config

    # -------------------------------------------------------------------------------------------- teachers
    def teacher_source(self, arch: str) -> tuple[str | None, str | None]:
        """(released weights path, why it cannot be used) when the table's teachers for ``arch`` are released ones.

        Released weights are the table's ``teacher_checkpoints``, or, when the table's teachers are ``released``
        (its default or ``--teachers released``), the public teacher of ``arch`` in :mod:`models.releases`.  A
        present file is verified (SHA-256 and architecture, :func:`benchmarks.fetch.released_file_problem`);
        one that fails is rejected with one line naming it.  The path is recorded in ``released`` (shown by the plan).
        """
        released = self.table.teacher_checkpoints.get(arch)
        if released is None and self.table.teachers is not None and self.teachers == "released":
            from models.releases import release_for

            release = release_for(self.table.dataset, arch)
            if release is not None:
                released = ReleasedTeacher(release.path, release.sources[0])
        if released is None:
            return None, None
        path = Path(self.teacher_root) / released.path  # an absolute released.path stays itself
        if not path.is_file() and self.preset.synthetic_data:
            return None, None  # smoke: a smoke-trained teacher stands in for the missing release
        self.released[arch] = str(path)
        if not path.is_file():
            where = f" (from {released.url})" if released.url else ""
            return str(path), f"released {arch} teacher weights not found at {path}{where}"
        from benchmarks.fetch import released_file_problem

        problem = released_file_problem(self.table.dataset, arch, released, self.teacher_root)
        return str(path), (f"released {arch} teacher rejected: {problem}" if problem else None)

    def teacher(self, arch: str, seed: int = 0) -> RunSpec:
        """The teacher run of ``arch`` with ``seed`` (planned once per planner)."""
        if (arch, seed) in self._teachers:
            return self._teachers[(arch, seed)]
        recipe_name = self.table.teacher_recipe or self.table.recipe
        config = self._base_config(recipe_name, arch)
        set_dotted(config, "model.class_path", "kd_modules.Vanilla")
        set_dotted(config, "model.init_args.student", arch)
        blocked = (
            _datamodule_problem(self.table.dataset, config)
            or _networks_problem([arch])
            or _method_problem(method_or_none("Vanilla"), config)
            or _trainer_problem(config, self.preset)
        )
        if blocked is None:
            _complete(config, method_or_none("Vanilla"))
        config = _finish(config, self.preset, seed=seed)
        run_id = run_identity(config)
        self._info(config, run_id, f"{self.table.name}/teacher/{arch}/s{seed}", "teacher", None, seed, recipe_name)
        label = f"teacher {arch}" + (f" seed {seed}" if seed else "")
        spec = RunSpec(run_id, "teacher", config, self.table.name, None, label, seed, blocked=blocked)
        spec.recipe = recipe_name
        self._teachers[(arch, seed)] = self._add(spec)
        return self._teachers[(arch, seed)]

    # -------------------------------------------------------------------------------------- method runs
    def _method_run(
        self,
        *,
        kind: str,
        method: str,
        pair: Pair,
        recipe_name: str,
        init_args: dict[str, Any],
        overrides: dict[str, Any],
        trial: int,
        row_label: str,
        config_file: str | None = None,
        teacher_seed: int = 0,
        depth: int = 0,
    ) -> RunSpec:
        """One run of ``method`` on ``pair`` (student or prerequisite stage), with its prerequisites.

        When it cannot run yet, ``blocked`` names the most fundamental reason: the dataset, a network, the method,
        its arguments, its config file, then the teacher.
        """
        config = self._base_config(recipe_name, pair.student)
        config_problem = None
        if config_file:
            try:
                fragment = load_yaml(config_file)
            except KDBenchError:
                config_problem = f"method config {config_file} not written yet"
            else:
                merge_into(config, fragment)
                written_for = str(get_dotted(fragment, "model.class_path", "")).rsplit(".", 1)[-1]
                if written_for and written_for != method:
                    config_problem = f"method config {config_file} is written for {written_for}, not {method}"
        set_dotted(config, "model.class_path", f"kd_modules.{method}")
        set_dotted(config, "model.init_args.student", pair.student)
        # A preset may shrink one method's settings (e.g. small letKD codebooks in smoke runs), after the row's own.
        for key, value in [*init_args.items(), *self.preset.method_init_args.get(method, {}).items()]:
            merge_dotted(config, f"model.init_args.{key}", value)
        for dotted, value in overrides.items():
            set_dotted(config, dotted, value)

        cls = method_or_none(method)
        needs_teacher = True if cls is None else bool(getattr(cls, "requires_teacher", False))
        sized_by_teacher = cls is not None and bool(getattr(cls, "sized_by_teacher_arch", False))
        given = get_dotted(config, "model.init_args", {})
        if sized_by_teacher and not needs_teacher and "teacher_arch" not in given and "teacher_channels" not in given:
            # Methods sized by the teacher's architecture but trained without its weights (NORM's FT-only
            # students) get the pair's teacher name, and no dependency on the teacher run.
            set_dotted(config, "model.init_args.teacher_arch", pair.teacher)
        depends: list[str] = []
        teacher_run: RunSpec | None = None
        teacher_file: str | None = None
        teacher_problem: str | None = None
        if needs_teacher:
            # A row distilling from a teacher of another seed (KCD T3b) trains that teacher: a release has one seed.
            teacher_file, teacher_problem = self.teacher_source(pair.teacher) if not teacher_seed else (None, None)
            if teacher_file is None:
                teacher_run = self.teacher(pair.teacher, teacher_seed)
                teacher_file = str(self.store.final_weights(teacher_run.run_id))
                depends.append(teacher_run.run_id)
                if teacher_run.blocked:
                    teacher_problem = f"teacher: {teacher_run.blocked}"
            set_dotted(config, "model.init_args.teacher", {"arch": pair.teacher, "checkpoint": teacher_file})

        model_args = {k: v for k, v in get_dotted(config, "model.init_args", {}).items() if k not in BASE_ARGS}
        invalid = (
            _datamodule_problem(self.table.dataset, config)
            or _networks_problem([pair.student] + ([pair.teacher] if needs_teacher or sized_by_teacher else []))
            or (_method_problem(cls, config) if cls is not None else f"method {method} is not implemented yet")
            or _pair_problem(cls, pair, model_args)
            or config_problem
        )
        trainer_problem = _trainer_problem(config, self.preset)
        blocked = invalid or teacher_problem or trainer_problem
        # A valid config that waits for its teacher (a release not fetched yet, a blocked teacher run) is planned
        # and completed in full, so its identity is the one it trains under once the teacher is there.
        valid = cls is not None and invalid is None and trainer_problem is None

        offline: list[tuple[str, str]] = []
        if valid:
            offline = [(str(n), str(d)) for n, d in _optional_classmethod(cls, "offline_stages", model_args)]
            for raw in _optional_classmethod(cls, "prerequisites", model_args):
                prerequisite = Prerequisite.parse(raw, cls.__name__)
                if depth >= MAX_PREREQUISITE_DEPTH:
                    raise KDBenchError(f"prerequisites of {method} nest deeper than {MAX_PREREQUISITE_DEPTH}")
                if prerequisite.network == "teacher":
                    stage = self.teacher(pair.teacher, prerequisite.seed or 0)
                else:
                    stage = self._method_run(
                        kind="stage",
                        method=prerequisite.method,
                        pair=pair,
                        recipe_name=recipe_name,
                        init_args=prerequisite.init_args,
                        overrides=prerequisite.overrides,
                        trial=trial if prerequisite.seed is None else prerequisite.seed,
                        row_label=f"{row_label}: {prerequisite.name}",
                        config_file=prerequisite.config,
                        teacher_seed=teacher_seed,
                        depth=depth + 1,
                    )
                depends.append(stage.run_id)
                if prerequisite.route:  # bookkeeping of the stage run (not its identity): what it saves on the way
                    route = stage.config["run"].setdefault("route", [])
                    route[:] = sorted(set(route) | set(prerequisite.route))
                output = self.store.run_dir(stage.run_id) / prerequisite.output
                set_dotted(config, f"model.init_args.{prerequisite.pass_as}", str(output))
                if stage.blocked:
                    blocked = blocked or f"{prerequisite.name} stage: {stage.blocked}"
                elif self.store.is_finished(stage.run_id) and not output.exists():
                    blocked = blocked or (
                        f"{prerequisite.name}: the finished run {stage.run_id} has no {prerequisite.output} "
                        f"(it was trained before a run asked for it); train it again in a new store, or pass the files"
                    )
            _complete(config, cls)
        config = _finish(config, self.preset, seed=trial)
        run_id = run_identity(config)
        name = f"{self.table.name}/{kind}/{pair.label}/{row_label}/t{trial}"
        self._info(config, run_id, name, row_label, pair, trial, recipe_name)
        spec = RunSpec(run_id, kind, config, self.table.name, pair, row_label, trial, depends, blocked)
        spec.recipe = recipe_name
        spec.offline = offline
        spec.teacher_run = teacher_run.run_id if teacher_run else None
        spec.teacher_source = teacher_file if teacher_run is None else None
        return self._add(spec)

    def student(self, row: Row, pair: Pair, trial: int) -> RunSpec:
        spec = self._method_run(
            kind="student",
            method=row.method,
            pair=pair,
            recipe_name=self.table.recipe_for(row, pair),
            init_args=row.args_for(pair),
            overrides=row.overrides_for(pair),
            trial=trial,
            row_label=row.label,
            config_file=row.config,
            teacher_seed=row.teacher_seed or 0,
        )
        cell = (row.label, pair.label, trial)
        if cell not in spec.cells:
            spec.cells.append(cell)
        return spec


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


def _dependency_order(runs: dict[str, RunSpec]) -> dict[str, RunSpec]:
    """Teachers first, then every run after the runs it depends on (stable otherwise)."""
    ordered: dict[str, RunSpec] = {}
    pending = sorted(runs.values(), key=lambda s: {"teacher": 0, "stage": 1, "student": 2}[s.kind])
    while pending:
        progressed = False
        for spec in list(pending):
            if all(dep in ordered or dep not in runs for dep in spec.depends_on):
                ordered[spec.run_id] = spec
                pending.remove(spec)
                progressed = True
        if not progressed:
            raise KDBenchError(f"dependency cycle among runs {', '.join(s.run_id for s in pending)}")
    return ordered


def build_plan(
    table: Table,
    preset: Preset,
    store: RunStore,
    *,
    data_root: str,
    trials: int | None = None,
    pairs: list[str] | None = None,
    methods: list[str] | None = None,
    teacher_root: str | None = None,
    teachers: str | None = None,
) -> Plan:
    """The plan of ``table``.  ``teachers`` (``released`` | ``trained``, for tables that offer both) overrides the
    table's own choice (:meth:`benchmarks.tables.Table.teacher_mode`); the choice is added to the table's notes."""
    if teachers is not None and teachers not in TEACHER_CHOICES:
        raise KDBenchError(f"--teachers {teachers!r} is not one of: {', '.join(TEACHER_CHOICES)}")
    table = table.with_teacher_note(teachers)
    n_trials = trials if trials is not None else (preset.trials if preset.trials is not None else table.trials)
    if n_trials < 1:
        raise KDBenchError(f"--trials must be at least 1, got {n_trials}")
    chosen_pairs, chosen_rows = _select(table, pairs, methods)
    planner = Planner(table, preset, store, data_root, teacher_root, teachers)
    cells: dict[tuple[str, str], list[str]] = {}
    blocked_cells: dict[tuple[str, str], str] = {}
    for pair in chosen_pairs:
        for row in chosen_rows:
            if row.quoted_only and method_or_none(row.method) is None:
                continue  # published numbers only, until kdbench has the method
            if not row.has_cell(pair):
                continue  # the row has no cell in this column
            key = (row.label, pair.label)
            if row.is_teacher:
                released, problem = planner.teacher_source(pair.teacher)
                if released is not None:
                    cells[key] = []
                    blocked_cells[key] = problem or f"released {pair.teacher} weights are used, not trained here"
                    continue
                specs = [planner.teacher(pair.teacher, row.teacher_seed or 0)]
                if (row.label, pair.label, 0) not in specs[0].cells:
                    specs[0].cells.append((row.label, pair.label, 0))
            else:
                specs = [planner.student(row, pair, trial) for trial in range(n_trials)]
            cells[key] = [spec.run_id for spec in specs]
            for spec in specs:
                if spec.blocked:
                    blocked_cells[key] = spec.blocked
    # Runs that no runnable cell needs (teachers and stages of blocked students) are dropped from the plan.
    needed = {rid for ids in cells.values() for rid in ids}
    frontier = [s for s in planner.runs.values() if s.kind == "student" and not s.blocked]
    while frontier:
        spec = frontier.pop()
        for dep in spec.depends_on:
            if dep not in needed:
                needed.add(dep)
                frontier.append(planner.runs[dep])
    kept = {rid: spec for rid, spec in planner.runs.items() if rid in needed or spec.kind == "student"}
    for spec in kept.values():  # bookkeeping the record keeps: the cells it serves, found again after a change
        spec.config["run"]["cells"] = _union_cells(
            spec.config["run"].get("cells", []),
            [{"table": table.name, "row": row, "pair": pair, "trial": trial} for row, pair, trial in spec.cells],
        )
    return Plan(
        table,
        preset,
        store,
        _dependency_order(kept),
        cells,
        blocked_cells,
        trials=n_trials,
        pairs=chosen_pairs,
        released=dict(planner.released),
    )


def _union_cells(cells: list[dict[str, Any]], more: list[dict[str, Any]]) -> list[dict[str, Any]]:
    union = list(cells)
    union += [cell for cell in more if cell not in union]
    return union


def merge_runs(plans: list[Plan]) -> list[RunSpec]:
    """The runs of several plans, each once (a run several tables need is trained once), in dependency order."""
    merged: dict[str, RunSpec] = {}
    for plan in plans:
        for spec in plan.ordered():
            existing = merged.get(spec.run_id)
            if existing is None:
                merged[spec.run_id] = dataclasses.replace(spec, tables=list(spec.tables), cells=list(spec.cells))
            else:
                existing.tables.extend(t for t in spec.tables if t not in existing.tables)
                run = dict(existing.config["run"])
                route = sorted(set(run.get("route", [])) | set(spec.config["run"].get("route", [])))
                if route:  # what another table's runs ask the run to save on the way (RCO's teacher route)
                    run["route"] = route
                run["cells"] = _union_cells(run.get("cells", []), spec.config["run"].get("cells", []))
                existing.config = {**existing.config, "run": run}
    return list(_dependency_order(merged).values())
