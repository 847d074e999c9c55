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


def _init_args(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / "methods" / f"{name}.yaml").read_text())["model"]["init_args"]


def test_every_named_variant_exists() -> None:
    names = {p.stem for p in CONFIGS}
    expected = {"norm", "norm_plain_ft", "norm_kd", "norm_paper", "norm_paper_kd", "norm_ft_student_default"}
    expected |= {"norm_ft_student_plain", "norm_reversed", "norm_l1", "norm_l2", "norm_mmd"}
    expected |= {f"norm_n{n}" for n in (1, 2, 4, 8, 16)} | {f"norm_segments_{k}of8" for k in range(1, 9)}
    expected |= {"norm_imagenet", "norm_imagenet_mobilenet", "norm_imagenet_plain_ft", "norm_imagenet_reversed"}
    assert expected <= names


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> TeacherConfig:
    path = export_network(create_model("resnet8x4", 10), "resnet8x4", tmp_path_factory.mktemp("t") / "t.pth")
    return TeacherConfig("resnet8x4", str(path))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_builds_its_variant(path: Path, teacher: TeacherConfig) -> None:
    model = yaml.safe_load(path.read_text())["model"]
    cls = method_class(model["class_path"].rsplit(".", 1)[1])
    args = dict(model["init_args"])
    if cls is FTStudent:
        module = cls(student="resnet8x4", num_classes=10, teacher_arch="resnet8x4", **args)
    else:
        assert issubclass(cls, NORM)  # NORM or NORM+CRD
        module = cls(student="resnet8x4", teacher=teacher, num_classes=10, **args)
    found = feature_transform_at(module.student)
    if args.get("ft") == "none":
        assert found is None
    else:
        assert found[1].expanded_channels == args["n_segments"] * 256
        assert found[1].has_residual == (args["ft"] == "default")


def test_equal_settings_are_equal_configs() -> None:
    # Equal run identities need equal config dicts: the default NORM is also Fig. 2's N = 8, Fig. 4's 8 of 8 and
    # Table 8's l2.
    reference = _init_args("norm")
    for name in ("norm_n8", "norm_segments_8of8", "norm_l2"):
        assert _init_args(name) == reference, name
    keys = set(reference)
    for path in CONFIGS:
        model = yaml.safe_load(path.read_text())["model"]
        if model["class_path"].endswith(".NORM"):
            assert set(model["init_args"]) == keys, path.stem


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
