"""The planner: prerequisite runs and offline stages declared by a method, identities, blocked reasons, presets."""

from __future__ import annotations

import argparse
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch.nn.functional as F

import kd_modules
from benchmarks.errors import KDBenchError
from benchmarks.launch import SequentialLauncher
from benchmarks.plan import Preset, build_plan, load_preset, run_identity
from benchmarks.run import print_plan
from benchmarks.store import RunStore
from benchmarks.tables import Pair, PaperRef, ReleasedTeacher, Row, Table
from kd_modules import DistillationModule, OptimConfig, TeacherConfig
from kd_modules.base import SettingsGroup
from models import create_model
from models.checkpoints import export_network, load_network

PAIR = Pair("resnet14", "resnet8")


class FakeTwoStage(DistillationModule):
    """A test method with two prerequisite runs and an offline stage.

    Args:
        student: student network.
        num_classes: classes.
        teacher: frozen teacher.
        optim: optimiser.
        ce_checkpoint: the CE-only student of the same seed (a prerequisite run's final.pth).
        init_checkpoint: an "initialisation stage" run's final.pth.
        first_teacher: the seed-0 teacher run's final.pth (a teacher-network prerequisite).
    """

    requires_teacher = True
    stages: list[dict[str, Any]] = []

    def __init__(
        self,
        student: str,
        num_classes: int = 100,
        teacher: TeacherConfig | None = None,
        optim: OptimConfig = OptimConfig(),
        ce_checkpoint: str | None = None,
        init_checkpoint: str | None = None,
        first_teacher: str | None = None,
    ) -> None:
        super().__init__(student, num_classes, teacher, optim)
        # The prerequisites' outputs exist when this run starts: load_network fails on a missing file.
        for path in (ce_checkpoint, init_checkpoint):
            if path is not None:
                load_network(student, num_classes, path)

    @classmethod
    def offline_stages(cls, init_args: dict[str, Any]) -> list[tuple[str, str]]:
        return [("fake_means", "per-class means of the teacher embedding")]

    @classmethod
    def prerequisites(cls, init_args: dict[str, Any]) -> list[dict[str, Any]]:
        return cls.stages

    def training_losses(self, batch: dict[str, Any]) -> Any:
        logits = self.student(batch["images"])
        return logits, {"ce": F.cross_entropy(logits, batch["labels"])}


STAGES = [
    {"name": "ce_student", "method": "Vanilla", "pass_as": "ce_checkpoint", "description": "CE-only student"},
    {
        "name": "init",
        "method": "Vanilla",
        "pass_as": "init_checkpoint",
        "overrides": {"model.init_args.optim.lr": 0.01},
    },
]


@pytest.fixture
def fake_method(monkeypatch: pytest.MonkeyPatch) -> type[FakeTwoStage]:
    monkeypatch.setitem(kd_modules._METHODS, "FakeTwoStage", FakeTwoStage)
    monkeypatch.setattr(kd_modules, "FakeTwoStage", FakeTwoStage, raising=False)  # class_path kd_modules.FakeTwoStage
    monkeypatch.setattr(FakeTwoStage, "stages", list(STAGES))
    return FakeTwoStage


def _table(*rows: Row, **extra: Any) -> Table:
    base = [Row("Teacher", "teacher"), Row("Vanilla", "Vanilla")]
    return Table(
        name="fake",
        title="fake",
        dataset="cifar100",
        recipe="crd_cifar100",
        pairs=[PAIR],
        rows=base + list(rows),
        **extra,
    )


def test_prerequisites_become_runs_with_dependencies_and_shared_identities(
    fake_method: type[FakeTwoStage], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = RunStore(tmp_path / "a")
    plan = build_plan(_table(Row("Fake", "FakeTwoStage")), load_preset("full"), store, data_root="data", trials=2)
    for trial in range(2):
        fake = plan.runs[plan.cells[("Fake", PAIR.label)][trial]]
        vanilla = plan.cells[("Vanilla", PAIR.label)][trial]
        teacher = plan.cells[("Teacher", PAIR.label)][0]
        init = next(s for s in plan.ordered() if s.kind == "stage" and s.trial == trial)
        # The CE-only prerequisite *is* the Vanilla row's run of the same seed: trained once.
        assert fake.depends_on == [teacher, vanilla, init.run_id]
        assert fake.config["model"]["init_args"]["ce_checkpoint"] == str(store.run_dir(vanilla) / "final.pth")
        assert fake.config["model"]["init_args"]["init_checkpoint"] == str(store.run_dir(init.run_id) / "final.pth")
        assert init.config["model"]["init_args"]["optim"]["lr"] == 0.01 and init.row == "Fake: init"
        assert fake.offline == [("fake_means", "per-class means of the teacher embedding")]
        order = list(plan.runs)
        assert all(order.index(dep) < order.index(fake.run_id) for dep in fake.depends_on)
    assert sum(1 for s in plan.ordered() if s.kind == "stage") == 2  # one init stage per trial; CE stages shared

    # Identities do not depend on where the store lies, and change when a prerequisite run changes.
    elsewhere = build_plan(
        _table(Row("Fake", "FakeTwoStage")), load_preset("full"), RunStore(tmp_path / "b"), data_root="y"
    )
    assert set(elsewhere.cells[("Fake", PAIR.label)]) <= set(plan.runs)
    FakeTwoStage.stages = [STAGES[0], {**STAGES[1], "overrides": {"model.init_args.optim.lr": 0.02}}]
    changed = build_plan(_table(Row("Fake", "FakeTwoStage")), load_preset("full"), store, data_root="data")
    assert changed.cells[("Fake", PAIR.label)][0] != plan.cells[("Fake", PAIR.label)][0]
    assert changed.cells[("Vanilla", PAIR.label)] == plan.cells[("Vanilla", PAIR.label)][:1]

    print_plan(plan, argparse.Namespace(verbose=False))
    out = capsys.readouterr().out
    assert "offline stage fake_means: per-class means of the teacher embedding (cached, shared by 2 run(s))" in out
    assert "stage Fake: init resnet14→resnet8 trial 0" in out and "-> 1 run(s)" in out


def test_teacher_network_prerequisite_is_the_teacher_run(fake_method: type[FakeTwoStage], tmp_path: Path) -> None:
    FakeTwoStage.stages = [{"name": "first_teacher", "network": "teacher", "seed": 0, "pass_as": "first_teacher"}]
    row = Row("Fake seed 1", "FakeTwoStage", teacher_seed=1)
    plan = build_plan(_table(row), load_preset("full"), RunStore(tmp_path), data_root="data")
    fake = plan.runs[plan.cells[("Fake seed 1", PAIR.label)][0]]
    seed0 = plan.cells[("Teacher", PAIR.label)][0]
    seed1 = fake.teacher_run
    assert seed1 != seed0 and plan.runs[seed1].config["seed_everything"] == 1
    assert fake.depends_on == [seed1, seed0]
    assert fake.config["model"]["init_args"]["first_teacher"].endswith(f"{seed0}/final.pth")


def test_blocked_prerequisites_and_bad_declarations(fake_method: type[FakeTwoStage], tmp_path: Path) -> None:
    FakeTwoStage.stages = [{"name": "warm", "method": "NotAMethod", "pass_as": "init_checkpoint"}]
    plan = build_plan(_table(Row("Fake", "FakeTwoStage")), load_preset("full"), RunStore(tmp_path), data_root="data")
    assert plan.blocked_cells[("Fake", PAIR.label)] == "warm stage: method NotAMethod is not implemented yet"
    FakeTwoStage.stages = [{"name": "warm", "pass_as": "init_checkpoint"}]  # no method for a student stage
    with pytest.raises(KDBenchError, match="each prerequisite is a dict with keys name, pass_as"):
        build_plan(_table(Row("Fake", "FakeTwoStage")), load_preset("full"), RunStore(tmp_path), data_root="data")


def test_prerequisite_runs_execute_and_pass_their_outputs(
    fake_method: type[FakeTwoStage], tmp_path: Path, cifar_root: Path
) -> None:
    store = RunStore(tmp_path)
    preset = load_preset("smoke")
    preset.wandb = "disabled"
    plan = build_plan(_table(Row("Fake", "FakeTwoStage")), preset, store, data_root=str(cifar_root))
    lines: list[str] = []
    report = SequentialLauncher(printer=lines.append).launch(plan.ordered(), store)
    assert report.counts["finished"] == 4 and report.counts["failed"] == 0, lines  # teacher, CE(=Vanilla), init, Fake
    assert all(store.is_finished(rid) for rid in plan.runs)


def test_method_arguments_the_method_does_not_accept_block_the_cell(tmp_path: Path) -> None:
    row = Row("KD?", "KD", init_args={"temprature": 4.0})
    plan = build_plan(_table(row), load_preset("full"), RunStore(tmp_path), data_root="data")
    reason = plan.blocked_cells[("KD?", PAIR.label)]
    assert reason.startswith("method KD does not accept argument temprature (accepts: ") and "temperature" in reason


def test_nested_keys_choices_and_foreign_configs_block_the_cell(tmp_path: Path) -> None:
    rows = (
        Row("QuEST?", "QuEST", init_args={"targets": {"num_clusters": 16, "num_subclasses": 8}}),
        Row("NORM?", "NORM", init_args={"ft": "residual"}),
        Row("FitNet?", "FitNet", config="configs/methods/kd.yaml"),
        Row("ok", "QuEST", init_args={"targets": {"num_clusters": 16}}, config="configs/methods/quest.yaml"),
    )
    plan = build_plan(_table(*rows), load_preset("full"), RunStore(tmp_path), data_root="data")
    blocked = {row: reason for (row, _), reason in plan.blocked_cells.items()}
    assert blocked["QuEST?"].startswith("method QuEST does not accept argument targets.num_subclasses (targets ")
    assert "num_clusters" in blocked["QuEST?"]
    assert blocked["NORM?"] == "method NORM argument ft is 'residual', not one of 'default', 'plain', 'none'"
    assert blocked["FitNet?"] == "method config configs/methods/kd.yaml is written for KD, not FitNet"
    assert "ok" not in blocked
    tiny = _table(Row("KD", "KD"))
    tiny.dataset, tiny.recipe = "tiny-imagenet", "letkd_tiny"
    tiny.pairs = [Pair("resnet56_tiny", "resnet20_tiny")]
    plan = build_plan(tiny, load_preset("full"), RunStore(tmp_path), data_root="data")
    assert not plan.blocked_cells
    tiny.rows[-1].overrides = {"data.init_args.pipeline": "cifar"}
    plan = build_plan(tiny, load_preset("full"), RunStore(tmp_path), data_root="data")
    assert plan.blocked_cells[("KD", "resnet56_tiny->resnet20_tiny")] == (
        "datamodule TinyImageNet argument pipeline is 'cifar', not one of 'mdistiller', 'letkd', 'none'"
    )


def test_missing_datamodule_and_method_config_block_with_the_reason(tmp_path: Path) -> None:
    coco = _table(Row("KD", "KD"))
    coco.dataset = "coco"  # detection tables are quoted, never run: no datamodule
    plan = build_plan(coco, load_preset("full"), RunStore(tmp_path), data_root="data")
    assert plan.blocked_cells[("KD", PAIR.label)] == "no datamodule for dataset coco yet"
    plan = build_plan(
        _table(Row("KD", "KD", config="configs/methods/nope.yaml")),
        load_preset("full"),
        RunStore(tmp_path),
        data_root="d",
    )
    assert plan.blocked_cells[("KD", PAIR.label)] == "method config configs/methods/nope.yaml not written yet"


def test_released_teacher_weights_replace_the_teacher_run(tmp_path: Path) -> None:
    weights = tmp_path / "teachers" / "resnet14.pth"
    weights.parent.mkdir()
    export_network(create_model("resnet14", 100), "resnet14", weights)
    released = {"resnet14": ReleasedTeacher("teachers/resnet14.pth", "https://example.org/resnet14.pth")}
    table = _table(Row("KD", "KD"), teacher_checkpoints=released)
    plan = build_plan(
        table, load_preset("full"), RunStore(tmp_path / "s"), data_root="data", teacher_root=str(tmp_path)
    )
    kd = plan.runs[plan.cells[("KD", PAIR.label)][0]]
    assert kd.depends_on == [] and kd.config["model"]["init_args"]["teacher"]["checkpoint"] == str(weights)
    assert plan.blocked_cells[("Teacher", PAIR.label)] == "released resnet14 weights are used, not trained here"
    assert not any(s.kind == "teacher" for s in plan.ordered())
    weights.unlink()
    plan = build_plan(
        table, load_preset("full"), RunStore(tmp_path / "s"), data_root="data", teacher_root=str(tmp_path)
    )
    assert plan.blocked_cells[("KD", PAIR.label)] == (
        f"released resnet14 teacher weights not found at {weights} (from https://example.org/resnet14.pth)"
    )


def test_multi_device_presets_split_the_global_batch(tmp_path: Path) -> None:
    ddp = Preset("ddp2", config={"trainer": {"devices": 2, "strategy": "ddp", "accelerator": "gpu"}})
    plan = build_plan(_table(Row("KD", "KD")), ddp, RunStore(tmp_path), data_root="data")
    kd = plan.runs[plan.cells[("KD", PAIR.label)][0]]
    assert kd.config["data"]["init_args"]["batch_size"] == 32 and kd.devices == 2  # CRD recipe: 64 over 2 GPUs
    odd = Preset("ddp3", config={"trainer": {"devices": 3}})
    with pytest.raises(KDBenchError, match="batch size 64 does not split over trainer.devices=3"):
        build_plan(_table(Row("KD", "KD")), odd, RunStore(tmp_path), data_root="data")


def test_identity_ignores_the_accelerator_and_store_paths() -> None:
    config = {
        "model": {
            "class_path": "kd_modules.KD",
            "init_args": {"student": "resnet8", "extra": "/x/results/runs/0123456789abcdef/stage.pt"},
        },
        "trainer": {"max_epochs": 3},
    }
    moved = {
        **config,
        "model": {
            **config["model"],
            "init_args": {**config["model"]["init_args"], "extra": "elsewhere/runs/0123456789abcdef/stage.pt"},
        },
    }
    assert run_identity(config) == run_identity(moved)
    assert run_identity(config) == run_identity({**config, "trainer": {"max_epochs": 3, "accelerator": "cpu"}})
    other = {
        **moved,
        "model": {
            **moved["model"],
            "init_args": {**moved["model"]["init_args"], "extra": "runs/fedcba9876543210/stage.pt"},
        },
    }
    assert run_identity(other) != run_identity(config)


def test_paper_ref_display() -> None:
    assert PaperRef("norm.T1", "kd").display == "NORM T1"
    assert PaperRef("letkd.supp-T1", "kd", label="letKD").display == "letKD"


def test_measured_estimate_extrapolates_timed_steps(tmp_path: Path, cifar_root: Path) -> None:
    from benchmarks.cost import measure_run

    plan = build_plan(_table(Row("KD", "KD")), load_preset("full"), RunStore(tmp_path), data_root=str(cifar_root))
    kd = plan.runs[plan.cells[("KD", PAIR.label)][0]]  # its teacher is not trained: random weights stand in
    measured = measure_run(kd.config, train_size=50_000, eval_size=10_000, steps=4)
    assert measured["steps"] == 240 * 782 and measured["evaluations"] == 240  # CRD recipe: 240 epochs of 782 steps
    assert measured["train_step_s"] > 0 and measured["eval_batch_s"] > 0
    expected = measured["train_step_s"] * 240 * 782 + measured["eval_batch_s"] * 20 * 240  # 10,000 / 500 per batch
    assert measured["seconds"] == pytest.approx(expected)
    assert not list(Path(tmp_path).glob("runs/*"))  # measuring trains nothing into the store


def test_a_row_spelling_out_the_defaults_is_the_same_run(tmp_path: Path) -> None:
    explicit = Row("KD explicit", "KD", init_args={"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9})
    warmer = Row("KD T=2", "KD", init_args={"temperature": 2.0})
    plan = build_plan(_table(Row("KD", "KD"), explicit, warmer), load_preset("full"), RunStore(tmp_path), data_root="d")
    assert plan.cells[("KD", PAIR.label)] == plan.cells[("KD explicit", PAIR.label)]
    assert plan.cells[("KD", PAIR.label)] != plan.cells[("KD T=2", PAIR.label)]
    config = plan.runs[plan.cells[("KD", PAIR.label)][0]].config
    assert config["model"]["init_args"]["temperature"] == 4.0  # the complete config states every argument
    assert config["data"]["init_args"]["contrast_k"] == 0 and config["model"]["init_args"]["optim"]["warmup"] == 0


def test_measuring_a_plan_stands_in_for_outputs_of_runs_not_yet_made(
    tmp_path: Path, cifar_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """AB starts from its init stage's weights and KCD reads its CE-only student: a fresh draw of the same network
    costs the same, so both are measured before those runs exist.  FT's paraphraser cannot be stood in for: it is
    reported as not measured, and the other runs are still timed."""
    from benchmarks.run import print_measurements
    from benchmarks.tables import load_table

    preset = load_preset("smoke")
    plan = build_plan(
        load_table("table1"),
        preset,
        RunStore(tmp_path),
        data_root=str(cifar_root),
        pairs=["resnet56->resnet20"],
        methods=["AB", "FT", "KCD"],
    )
    total = print_measurements(plan)
    out = capsys.readouterr().out
    assert total > 0
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("  ")}
    assert "ms/step" in lines["AB"] and "ms/step" in lines["KCD"], out
    assert "not measured: needs paraphraser_checkpoint from an earlier run" in lines["FT"], out
    assert "not counted: 1 run(s) that need an earlier run's output" in out
    assert not list(Path(tmp_path).glob("runs/*"))


@dataclass(frozen=True)
class _Weights(SettingsGroup):
    kd_weight: float = 0.9
    temperature: float = 4.0


class _GroupedKD(kd_modules.KD):
    """KD with two of its arguments written as one settings group."""

    def __init__(self, student: str, weights: _Weights = _Weights(), **kwargs: Any) -> None:
        super().__init__(student, **kwargs)


def test_settings_groups_count_in_the_identity_as_the_methods_own_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    """Moving flat arguments into a ``SettingsGroup`` keeps the identity; a nested config (optim) counts nested."""
    module = types.ModuleType("tests_grouped_kd")
    module._GroupedKD = _GroupedKD  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tests_grouped_kd", module)

    def config(**init_args: Any) -> dict[str, Any]:
        return {"model": {"class_path": "tests_grouped_kd._GroupedKD", "init_args": init_args}}

    grouped = config(weights={"kd_weight": 0.5, "temperature": 2.0})
    assert run_identity(config(kd_weight=0.5, temperature=2.0)) == run_identity(grouped)
    assert run_identity(config(weights={"kd_weight": 0.5, "temperature": 3.0})) != run_identity(grouped)
    with pytest.raises(KDBenchError, match="repeats the method argument kd_weight"):
        run_identity(config(kd_weight=1.0, weights={"kd_weight": 0.5}))
    # OptimConfig is not a group: its fields stay nested in the identity, as they always were.
    optim_nested = {"model": {"class_path": "kd_modules.KD", "init_args": {"optim": {"lr": 0.1}}}}
    optim_flat = {"model": {"class_path": "kd_modules.KD", "init_args": {"lr": 0.1}}}
    assert run_identity(optim_nested) != run_identity(optim_flat)


def test_an_argument_added_later_counts_only_away_from_its_old_behaviour(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding an argument (here a made-up optimiser choice, written into every completed config) keeps the identity
    of every run at the value that reproduces the old behaviour, and gives new runs at any other value."""
    from benchmarks import plan as plan_module

    before = {"model": {"class_path": "kd_modules.KD", "init_args": {"optim": {"lr": 0.1}}}}
    added = {"model": {"class_path": "kd_modules.KD", "init_args": {"optim": {"lr": 0.1, "sampler": "plain"}}}}
    other = {"model": {"class_path": "kd_modules.KD", "init_args": {"optim": {"lr": 0.1, "sampler": "fancy"}}}}
    assert run_identity(before) != run_identity(added)  # not declared: the new key counts
    monkeypatch.setitem(plan_module.ADDED_ARGUMENTS, ("model", "init_args", "optim", "sampler"), "plain")
    assert run_identity(before) == run_identity(added)
    assert run_identity(other) not in (run_identity(before), run_identity(added))


def test_a_row_setting_inside_a_group_keeps_the_groups_other_settings(tmp_path: Path) -> None:
    """letKD T1's RN50->MNV2 row sets ``layers: {alpha_penult: 0.1, alpha_inter: 0.2}``; the rest of letkd2.yaml's
    ``layers`` group stays (here: a config whose group holds a non-default value the row does not name)."""
    config = tmp_path / "letkd2.yaml"
    config.write_text(
        "model:\n  class_path: kd_modules.LetKD2\n  init_args:\n    layers: {predictor_scale: 5.0, alpha_inter: 1.0}\n"
    )
    row = Row("letKD-2", "LetKD2", config=str(config), init_args={"layers": {"alpha_inter": 0.2}})
    plan = build_plan(_table(row), load_preset("smoke"), RunStore(tmp_path / "s"), data_root="data")
    (student,) = [s for s in plan.ordered() if s.kind == "student" and s.label.startswith("letKD-2")]
    layers = student.config["model"]["init_args"]["layers"]
    assert (layers["predictor_scale"], layers["alpha_inter"]) == (5.0, 0.2)
