"""Every method config on every teacher->student pair of the CIFAR-100 tables: one optimisation step.

Pairs: table1's seven same-family pairs and the six cross-family pairs of NORM/CRD Table 2.  Methods: the config
of every table1 row (with that row's per-pair arguments on table1's pairs) on all 13 pairs, then every other
CIFAR method config (the NORM, ND, letKD and baseline variants; the ImageNet configs are for ImageNet networks)
on four pairs that span the shapes those variants depend on (:data:`VARIANT_PAIRS`: equal and unequal teacher /
student channels, a WRN, a cross-family pair of each kind) — they differ from their table1 row in loss
arguments, not in what they attach to the networks, and all 13 pairs would double the suite's time.  Each case builds
the method through its real class, with an *untrained* teacher exported by ``models.checkpoints.export_network``,
and takes one step through a real ``Trainer`` (so ``setup`` runs the offline stages: ND's class means, CRD's
memory sizing, letKD's codebook and sub-classes — small, as the smoke preset makes them) on a generated
CIFAR-100 with one image per class, batch 8.  It checks a finite loss and that gradients reach every trainable
module: every parameter of the student, of each module inserted into it (NORM's FT, letKD's KD layers) and of
each of the method's own modules (connectors, embeddings, EmbTrans heads, ABFs) has a finite gradient, and each
of those modules receives a non-zero one.  The step is taken as if in a late epoch (:data:`LATE_EPOCH`) so that
every warmed-up term (ND's and DKD's ramps, ReviewKD's HCL, NORM's lambda) carries its gradient.

A few variants are defined only for some pairs (KDSVD's layouts need equal channels or widths at every paired
stage, NORM at N = 1 without FT needs C_s = C_t): there the test asserts the method's one-line configuration
error instead (:func:`expected_error`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from torch import nn

from benchmarks.configs import deep_merge
from benchmarks.plan import load_preset
from benchmarks.tables import REPO_ROOT, Pair, load_table
from datamodules import CIFAR100
from kd_modules import DistillationModule, TeacherConfig, method_class
from kd_modules.errors import MethodConfigError
from models import create_model
from models.checkpoints import export_network

TABLE1 = load_table("table1")
TABLE1_PAIRS = [pair.label for pair in TABLE1.pairs]
# NORM Table 2 / CRD Table 2 (the cross-family pairs; tables/table2.yaml lists the same six).
CROSS_PAIRS = [
    "vgg13->MobileNetV2",
    "ResNet50->MobileNetV2",
    "ResNet50->vgg8",
    "resnet32x4->ShuffleV1",
    "resnet32x4->ShuffleV2",
    "wrn_40_2->ShuffleV1",
]
PAIRS = TABLE1_PAIRS + CROSS_PAIRS
VARIANT_PAIRS = ["resnet32x4->resnet8x4", "wrn_40_2->wrn_40_1", "vgg13->MobileNetV2", "resnet32x4->ShuffleV2"]
#: The pairs every case also runs on in the default suite (``make test``); the others are marked ``exhaustive``
#: (``make test-exhaustive``): one same-family pair and one cross-family pair.
CORE_PAIRS = ("resnet32x4->resnet8x4", "vgg13->MobileNetV2")


def _pairs(pairs: list[str]) -> list[Any]:
    return [p if p in CORE_PAIRS else pytest.param(p, marks=pytest.mark.exhaustive) for p in pairs]


#: The epoch the step is taken in: past every warm-up (ND, DKD, ReviewKD: 20 epochs), NORM's lambda = 0.5.
LATE_EPOCH = 200

METHODS_DIR = REPO_ROOT / "configs" / "methods"
SMOKE = load_preset("smoke")


#: Methods whose runs need artefacts of other planned runs (FT: its paraphraser stage's checkpoint; KCD: the
#: CE-only student; RCO: the teacher's route snapshots).  The table runner provides them; their own tests build
#: them (tests/kd_modules/test_ft.py, test_baselines2_pairs.py, test_kcd_method.py, test_rco.py).
NEEDS_PLANNED_STAGES = {"FT", "KCD", "RCO"}
#: Methods that classify through the teacher's head: the student's own head is not on the path (SimKD).
TEACHER_HEAD = {"SimKD"}


def _config_method(config: str) -> str:
    raw = yaml.safe_load((METHODS_DIR / f"{config}.yaml").read_text())
    return str(raw["model"]["class_path"]).rsplit(".", 1)[1]


def _row_cases() -> list[tuple[str, str | None, str]]:
    """(row label, config, method class) of every table1 row that trains a student (one step, on its own)."""
    return [
        (row.label, row.config, row.method)
        for row in TABLE1.rows
        if not row.is_teacher and not row.quoted_only and row.method not in NEEDS_PLANNED_STAGES
    ]


ROWS = _row_cases()
ROW_CONFIGS = {Path(config).stem for _, config, _ in ROWS if config}
STAGED_CONFIGS = {
    p.stem
    for p in METHODS_DIR.glob("*.yaml")
    if "imagenet" not in p.stem and _config_method(p.stem) in NEEDS_PLANNED_STAGES
}
OTHER_CONFIGS = sorted(
    p.stem
    for p in METHODS_DIR.glob("*.yaml")
    if "imagenet" not in p.stem and p.stem not in ROW_CONFIGS and p.stem not in STAGED_CONFIGS
)


def _norm_variant_rows() -> list[tuple[str, str, dict[str, Any]]]:
    """(config, method, row arguments) of every NORM variant row of the CIFAR-100 tables (the shared config plus
    the row's init_args: N, segments used, distance), each distinct setting once and not again if table1 has it."""
    from benchmarks.tables import list_tables

    table1 = {f"{Path(r.config).stem} {sorted(r.init_args.items())}" for r in TABLE1.rows if r.config}
    seen: dict[str, tuple[str, str, dict[str, Any]]] = {}
    for name in list_tables():
        table = load_table(name)
        if table.dataset != "cifar100":
            continue
        for row in table.rows:
            if row.method in ("NORM", "FTStudent") and row.init_args and row.config and not row.quoted_only:
                case = (Path(row.config).stem, row.method, dict(row.init_args))
                seen.setdefault(f"{case[0]} {sorted(case[2].items())}", case)
    return [case for key, case in sorted(seen.items()) if key not in table1]


NORM_VARIANT_ROWS = _norm_variant_rows()

# Variants defined only where the networks' shapes allow them (each raises a MethodConfigError elsewhere).
_EQUAL_STAGE_CHANNELS = {p for p in TABLE1_PAIRS if p != "wrn_40_2->wrn_40_1"}
_EQUAL_LAST_STAGE_CHANNELS = _EQUAL_STAGE_CHANNELS  # NORM's tap: C_s = C_t on these (and only these) pairs


def expected_error(config: str, pair: str, row_args: dict[str, Any] | None = None) -> str | None:
    """The configuration error a variant raises on a pair where it is not defined (None: it must run)."""
    if config == "kdsvd" and pair not in _EQUAL_STAGE_CHANNELS:
        return "KDSVD with layout 'repdistiller' needs equal channels"
    if config == "kdsvd_mdistiller" and pair not in TABLE1_PAIRS:
        return "KDSVD with layout 'mdistiller' needs equal widths"
    if (row_args or {}).get("ft") == "none" and pair not in _EQUAL_LAST_STAGE_CHANNELS:  # NORM at N = 1
        return "ft='none' matches the raw"
    return None


# --------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def offline_cache(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Class means and letKD artefacts of this module go to a temporary cache (shared by its cases)."""
    previous = os.environ.get("KDBENCH_CACHE")
    os.environ["KDBENCH_CACHE"] = str(tmp_path_factory.mktemp("offline_cache"))
    yield
    if previous is None:
        del os.environ["KDBENCH_CACHE"]
    else:
        os.environ["KDBENCH_CACHE"] = previous


@pytest.fixture(scope="module")
def one_per_class(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from datamodules.synthetic import write_cifar100

    root = tmp_path_factory.mktemp("cifar_one_per_class")
    write_cifar100(root, train_per_class=1, test_per_class=1, seed=0)
    return root


@pytest.fixture(scope="module")
def untrained_teacher(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("teachers")
    made: dict[str, TeacherConfig] = {}

    def make(arch: str) -> TeacherConfig:
        if arch not in made:
            torch.manual_seed(0)
            path = export_network(create_model(arch, 100), arch, folder / f"{arch}.pth")
            made[arch] = TeacherConfig(arch, str(path))
        return made[arch]

    return make


@pytest.fixture()
def late_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DistillationModule, "current_epoch", property(lambda self: LATE_EPOCH), raising=False)


# ----------------------------------------------------------------------------------------------------- one step
def _typed(cls: type, args: dict[str, Any]) -> dict[str, Any]:
    """Config dicts for dataclass-typed arguments (letKD's ``targets``) become the dataclass, as the CLI does."""
    hints = typing.get_type_hints(cls.__init__)
    typed = {}
    for name, value in args.items():
        hint = hints.get(name)
        if isinstance(value, dict) and isinstance(hint, type) and dataclasses.is_dataclass(hint):
            typed[name] = hint(**value)
        else:
            typed[name] = value
    return typed


def _config(config: str | None) -> dict[str, Any]:
    return yaml.safe_load((METHODS_DIR / f"{config}.yaml").read_text()) if config else {}


class _StepProbe(pl.Callback):
    """Records the step's loss and the gradients just before the optimiser applies them."""

    def __init__(self) -> None:
        self.loss: float | None = None
        self.grads: dict[str, torch.Tensor | None] = {}

    def on_before_optimizer_step(self, trainer: pl.Trainer, module: pl.LightningModule, optimizer: Any) -> None:
        self.grads = {
            name: (None if p.grad is None else p.grad.detach().clone())
            for name, p in module.named_parameters()
            if p.requires_grad
        }

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, *args: Any) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.loss = float(loss)


def _trainable_units(module: DistillationModule) -> dict[str, nn.Module]:
    """The student, each module inserted into it, and each of the method's own modules (ModuleDict/List entries
    one by one), keyed by their parameter-name prefix; only those with parameters."""
    units: dict[str, nn.Module] = {"student.": module.student}
    for name, child in module.student.named_children():
        if name == "inserted":
            units.update({f"student.inserted.{key}.": inserted for key, inserted in child.named_children()})
    for name, child in module.named_children():
        if name in ("student", "teacher"):
            continue
        if isinstance(child, (nn.ModuleDict, nn.ModuleList)):
            units.update({f"{name}.{key}.": entry for key, entry in child.named_children()})
        else:
            units[f"{name}."] = child
    return {prefix: unit for prefix, unit in units.items() if any(p.requires_grad for p in unit.parameters())}


def one_step(
    config: str | None, method: str, pair_label: str, row_args: dict[str, Any], data_root: Path, teacher_for: Any
) -> None:
    pair = Pair.parse(pair_label)
    raw = _config(config)
    cls = method_class(method)
    args = deep_merge(raw.get("model", {}).get("init_args") or {}, row_args)
    args = deep_merge(args, SMOKE.method_init_args.get(method, {}))
    kwargs = _typed(cls, args)
    if cls.requires_teacher:
        kwargs["teacher"] = teacher_for(pair.teacher)
    elif getattr(cls, "sized_by_teacher_arch", False):
        kwargs["teacher_arch"] = pair.teacher
    torch.manual_seed(0)
    module = cls(student=pair.student, num_classes=100, **kwargs)
    data_args = (raw.get("data") or {}).get("init_args") or {}
    datamodule = CIFAR100(root=str(data_root), batch_size=8, eval_batch_size=100, seed=0, **data_args)
    probe = _StepProbe()
    trainer = pl.Trainer(
        max_steps=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[probe],
    )
    trainer.fit(module, datamodule=datamodule)

    where = f"{method} ({config}) on {pair_label}"
    assert trainer.global_step == 1, where
    assert probe.loss is not None and torch.isfinite(torch.tensor(probe.loss)), f"{where}: loss {probe.loss}"
    off_path = _after_last_stage(module) if method in TEACHER_HEAD else set()
    missing = [n for n, g in probe.grads.items() if not n.startswith("teacher.") and g is None and n not in off_path]
    assert not missing, f"{where}: no gradient reaches {missing[:5]}"
    non_finite = [n for n, g in probe.grads.items() if g is not None and not torch.isfinite(g).all()]
    assert not non_finite, f"{where}: non-finite gradients in {non_finite[:5]}"
    assert not any(n.startswith("teacher.") for n in probe.grads), f"{where}: the teacher is being trained"
    for prefix in _trainable_units(module):
        grads = [g for n, g in probe.grads.items() if n.startswith(prefix) and g is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), f"{where}: {prefix[:-1]} receives no gradient"


def _after_last_stage(module: DistillationModule) -> set[str]:
    """Student parameters that the last stage's output does not depend on (its neck and head)."""
    student = module.student
    student.zero_grad(set_to_none=True)
    student.forward_features(torch.randn(2, 3, 32, 32)).stages_post[-1].sum().backward()
    names = {f"student.{n}" for n, p in student.named_parameters() if p.requires_grad and p.grad is None}
    student.zero_grad(set_to_none=True)
    return names


def _run_or_expect(
    config: str | None, method: str, pair: str, row_args: dict[str, Any], root: Path, teacher_for: Any
) -> None:
    error = expected_error(config or "", pair, row_args)
    hook = getattr(method_class(method), "pair_problem", None)
    parsed = Pair.parse(pair)
    undefined = hook(parsed.student, parsed.teacher, dict(row_args)) if hook is not None else None
    if undefined is not None:  # the method is undefined on this pair (FSP: unequal channels): its clear error
        error = re.escape(undefined[:40])
    if error is None:
        one_step(config, method, pair, row_args, root, teacher_for)
    else:
        with pytest.raises(MethodConfigError, match=error):
            one_step(config, method, pair, row_args, root, teacher_for)


# -------------------------------------------------------------------------------------------------------- cases
@pytest.mark.parametrize("pair", _pairs(PAIRS))
@pytest.mark.parametrize(("label", "config", "method"), ROWS, ids=[label for label, _, _ in ROWS])
def test_table1_row_on_pair(
    label: str, config: str | None, method: str, pair: str, one_per_class: Path, untrained_teacher, late_epoch
) -> None:  # type: ignore[no-untyped-def]
    row = next(r for r in TABLE1.rows if r.label == label)
    row_args = row.args_for(Pair.parse(pair)) if pair in TABLE1_PAIRS else dict(row.init_args)
    _run_or_expect(Path(config).stem if config else None, method, pair, row_args, one_per_class, untrained_teacher)


@pytest.mark.parametrize("pair", _pairs(VARIANT_PAIRS))
@pytest.mark.parametrize("config", OTHER_CONFIGS)
def test_variant_config_on_pair(config: str, pair: str, one_per_class: Path, untrained_teacher, late_epoch) -> None:  # type: ignore[no-untyped-def]
    method = _config(config)["model"]["class_path"].rsplit(".", 1)[1]
    _run_or_expect(config, method, pair, {}, one_per_class, untrained_teacher)


@pytest.mark.parametrize("pair", _pairs(VARIANT_PAIRS))
@pytest.mark.parametrize(
    ("config", "method", "row_args"), NORM_VARIANT_ROWS, ids=[f"{c}-{a}" for c, _, a in NORM_VARIANT_ROWS]
)
def test_norm_variant_row_on_pair(  # type: ignore[no-untyped-def]
    config: str, method: str, row_args: dict[str, Any], pair: str, one_per_class: Path, untrained_teacher, late_epoch
) -> None:
    _run_or_expect(config, method, pair, row_args, one_per_class, untrained_teacher)


def test_every_cifar_method_config_is_covered() -> None:
    covered = ROW_CONFIGS | set(OTHER_CONFIGS) | STAGED_CONFIGS
    shipped = {p.stem for p in METHODS_DIR.glob("*.yaml") if "imagenet" not in p.stem}
    assert covered == shipped
    assert len(PAIRS) == 13 and len(set(PAIRS)) == 13


@pytest.mark.parametrize(
    ("recipe", "lr"),
    [("crd_cifar100", 0.01), ("nd_cifar100", 0.02), ("norm_cifar100", 0.01), ("letkd_cifar100", 0.01)],
)
def test_light_students_get_their_reference_learning_rate(recipe: str, lr: float) -> None:
    # RepDistiller/mdistiller, NORM and letKD: 0.01 for MobileNetV2 / ShuffleV1 / ShuffleV2; ND: 0.02.
    recipes = yaml.safe_load((REPO_ROOT / "configs" / "recipes" / "recipes.yaml").read_text())
    overrides = recipes[recipe].get("student_overrides") or {}
    for student in ("MobileNetV2", "ShuffleV1", "ShuffleV2"):
        assert overrides.get(student) == {"model.init_args.optim.lr": lr}, (recipe, student)
