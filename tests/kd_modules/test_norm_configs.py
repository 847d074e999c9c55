"""NORM's method configs (variants and ablations) and recipes: every file builds, and the schedules are the code's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from kd_modules import NORM, FTStudent, OptimConfig, TeacherConfig, method_class
from kd_modules.norm import feature_transform_at
from models import create_model
from models.checkpoints import export_network

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs" / "methods").glob("norm*.yaml"))


def _variant_rows() -> dict[str, tuple[str, dict]]:
    """Every NORM / FT-student row of every table: ``"<table>: <label>" -> (config file, row arguments)``."""
    from benchmarks.tables import list_tables, load_table

    rows = {}
    for name in list_tables():
        for row in load_table(name).rows:
            if row.method in ("NORM", "NORMCRD", "FTStudent") and not row.quoted_only:
                rows[f"{name}: {row.label}"] = (row.config, dict(row.init_args))
    return rows


VARIANTS = _variant_rows()


def test_every_named_variant_is_a_row_of_its_table() -> None:
    # The variants of NORM's tables are rows: the shared config file plus the row's init_args.
    expected = {"table1: NORM", "table1: NORM (plain FT)", "table1: NORM+KD", "table1: NORM+CRD"}
    expected |= {"table1: Student w/ plain FT", "table1: Student w/ default FT"}
    expected |= {f"norm.f2: N = {n}" for n in (1, 2, 4, 8, 16)} | {f"norm.f4: {k} of 8 segments" for k in range(1, 9)}
    expected |= {"norm.t8: l2 (default)", "norm.t8: l1", "norm.t8: MMD"}
    assert expected <= set(VARIANTS)
    for config, _ in VARIANTS.values():
        assert config is not None and (ROOT / config).is_file(), config


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> TeacherConfig:
    path = export_network(create_model("resnet8x4", 10), "resnet8x4", tmp_path_factory.mktemp("t") / "t.pth")
    return TeacherConfig("resnet8x4", str(path))


def _build(model: dict, row_args: dict, teacher: TeacherConfig):  # type: ignore[no-untyped-def]
    cls = method_class(model["class_path"].rsplit(".", 1)[1])
    args = {**(model.get("init_args") or {}), **row_args}
    if cls is FTStudent:
        module = cls(student="resnet8x4", num_classes=10, teacher_arch="resnet8x4", **args)
    else:
        assert issubclass(cls, NORM)  # NORM or NORM+CRD
        module = cls(student="resnet8x4", teacher=teacher, num_classes=10, **args)
    found = feature_transform_at(module.student)
    if args.get("ft") == "none":
        assert found is None
    else:
        assert found[1].expanded_channels == args.get("n_segments", 8) * 256
        assert found[1].has_residual == (args.get("ft", "default") == "default")
    return module


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_builds_its_variant(path: Path, teacher: TeacherConfig) -> None:
    _build(yaml.safe_load(path.read_text())["model"], {}, teacher)


@pytest.mark.parametrize("row", sorted({f"{c} {a}": k for k, (c, a) in VARIANTS.items()}.values()))
def test_row_builds_its_variant(row: str, teacher: TeacherConfig) -> None:
    config, row_args = VARIANTS[row]
    _build(yaml.safe_load((ROOT / config).read_text())["model"], row_args, teacher)


def test_equal_settings_are_equal_runs(tmp_path: Path) -> None:
    # The default NORM is also Fig. 2's N = 8, Fig. 4's 8 of 8 and Table 8's l2: one run, trained once.
    from benchmarks.plan import build_plan, load_preset
    from benchmarks.store import RunStore
    from benchmarks.tables import load_table

    def run_id(table: str, row: str) -> str:
        plan = build_plan(load_table(table), load_preset("smoke"), RunStore(tmp_path), data_root="data", methods=[row])
        return next(s.run_id for s in plan.ordered() if s.kind == "student" and s.pair.label == "resnet32x4->resnet8x4")

    reference = run_id("norm.t1", "NORM")
    for table, row in (("norm.f2", "N = 8"), ("norm.f4", "8 of 8 segments"), ("norm.t8", "l2 (default)")):
        assert run_id(table, row) == reference, (table, row)
    assert run_id("norm.f2", "N = 4") != reference


def _recipe_optim(name: str) -> tuple[OptimConfig, int]:
    recipes = yaml.safe_load((ROOT / "configs" / "recipes" / "recipes.yaml").read_text())
    fragment = yaml.safe_load((ROOT / recipes[name]["config"]).read_text())
    return OptimConfig(**fragment["model"]["init_args"]["optim"]), fragment["trainer"]["max_epochs"]


@pytest.mark.parametrize(("name", "lr"), [("norm_cifar100", 0.05), ("norm_cifar100_lr01", 0.1)])
def test_cifar_recipe_is_the_released_loop(name: str, lr: float) -> None:
    # train_cifar_student.py: `for epoch in range(0, 240 + 1)`, lr = lr0 * 0.1 ** sum(epoch > [150, 180, 210]).
    optim, epochs = _recipe_optim(name)
    assert epochs == 241 and optim.lr == lr and optim.weight_decay == 5e-4 and not optim.nesterov
    for epoch in range(241):
        expected = 0.1 ** sum(epoch > m for m in (150, 180, 210))
        assert optim.factor(epoch, epochs) == pytest.approx(expected), epoch


def test_imagenet_recipes() -> None:
    step, epochs = _recipe_optim("norm_imagenet_step")
    # NORM's loop is range(0, 101): 101 epochs, the last 11 at lr 1e-4.
    assert (epochs, step.lr, step.weight_decay, step.schedule, step.milestones) == (
        101,
        0.1,
        1e-4,
        "step",
        [30, 60, 90],
    )
    cosine, epochs = _recipe_optim("norm_imagenet_cosine")
    assert (epochs, cosine.schedule) == (100, "cosine")
    # The script's per-epoch cosine, 0.5 (1 + cos(pi e (n+1) / (E n))), with n = 5005 iterations per epoch.
    n = 5005
    for epoch in (0, 25, 50, 99):
        script = 0.5 * (1 + torch.cos(torch.tensor(torch.pi * epoch * (n + 1) / (100 * n)))).item()
        assert cosine.factor(epoch, epochs) == pytest.approx(script, abs=1e-3)


def test_table1_plans_the_norm_rows(tmp_path: Path) -> None:
    from benchmarks.plan import build_plan, load_preset
    from benchmarks.store import RunStore
    from benchmarks.tables import load_table

    rows = ["Student w/ plain FT", "Student w/ default FT", "NORM (plain FT)", "NORM", "NORM+KD"]
    plan = build_plan(
        load_table("table1"),
        load_preset("smoke"),
        RunStore(tmp_path),
        data_root="data",
        pairs=["resnet56->resnet20", "resnet110->resnet20"],
        methods=rows,
    )
    students = {(s.row, s.pair.label): s for s in plan.ordered() if s.kind == "student"}
    assert {row for row, _ in students} == set(rows)
    ft_only = students[("Student w/ plain FT", "resnet56->resnet20")]
    init_args = ft_only.config["model"]["init_args"]
    # Sized by the teacher's architecture, without its weights: no teacher checkpoint, no dependency.
    assert init_args["teacher_arch"] == "resnet56" and "teacher" not in init_args and not ft_only.depends_on
    norm = students[("NORM", "resnet56->resnet20")]
    assert norm.config["model"]["class_path"] == "kd_modules.NORM" and norm.depends_on
    assert norm.config["model"]["init_args"]["teacher"]["arch"] == "resnet56"
    # Same C_t = 64, but each pair names its teacher: separate FT-student runs.
    assert ft_only.run_id != students[("Student w/ plain FT", "resnet110->resnet20")].run_id
