"""Issue 9's baselines: documented arguments, the shipped configs through the real CLI, and a few optimisation steps
on every table1/table2 teacher-student pair."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks.cli import KDBenchCLI
from benchmarks.tables import REPO_ROOT
from kd_modules import TeacherConfig, method_class
from kd_modules.errors import MethodConfigError

# shipped config -> method class
CONFIGS = {"ofd": "OFD", "simkd": "SimKD", "srrl": "SRRL", "semckd": "SemCKD", "ab": "AB", "ft": "FT", "fsp": "FSP"}
# the first stages of two-stage methods (run by the planner as prerequisite runs), trained with their defaults
STAGES = ["ABInit", "FTParaphraserInit", "FSPInit"]
METHODS = sorted(set(CONFIGS.values()))
COMMON = {"self", "student", "teacher", "num_classes", "optim"}


def _pairs() -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for table in ("table1", "table2"):
        raw = yaml.safe_load((REPO_ROOT / "tables" / f"{table}.yaml").read_text())
        for label in raw["pairs"]:
            teacher, student = label.split("->")
            pairs.append((teacher, student))
    return pairs


PAIRS = _pairs()


def _config_args(config: str) -> dict[str, object]:
    raw = yaml.safe_load((REPO_ROOT / "configs" / "methods" / f"{config}.yaml").read_text())
    return dict(raw["model"].get("init_args") or {})


@pytest.fixture(scope="module")
def calibrated_teacher(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """``calibrated_teacher(arch)``: a random ``arch`` whose BatchNorm running statistics were measured on random
    images, so its eval-mode features have a trained network's scale (an uncalibrated deep random ResNet's last
    maps reach ~1e5, which makes feature losses meaningless)."""
    from models import create_model
    from models.checkpoints import export_network

    root = tmp_path_factory.mktemp("calibrated")
    made: dict[str, Path] = {}

    def make(arch: str) -> Path:
        if arch not in made:
            torch.manual_seed(0)
            network = create_model(arch, 100)
            for module in network.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.momentum = None  # cumulative average over the calibration batches
            network.train()
            with torch.no_grad():
                for _ in range(2):
                    network(torch.randn(16, 3, 32, 32))
            made[arch] = export_network(network, arch, root / f"{arch}.pth")
        return made[arch]

    return make


def _train_a_few_steps(
    name: str, teacher: str, student: str, calibrated_teacher, tmp_path: Path, steps: int = 2
) -> None:  # type: ignore[no-untyped-def]
    cls = method_class(name)
    config = next((c for c, m in CONFIGS.items() if m == name), None)
    args = _config_args(config) if config else {}
    teacher_config = TeacherConfig(teacher, str(calibrated_teacher(teacher)))
    if name == "FT":  # the paraphraser of a (here untrained) first stage, as its run checkpoint
        stage = method_class("FTParaphraserInit")(student=student, teacher=teacher_config)
        path = tmp_path / "paraphraser.ckpt"
        torch.save({"hyper_parameters": dict(stage.hparams), "state_dict": stage.state_dict()}, path)
        args["paraphraser_checkpoint"] = str(path)
    if name in ("FSP", "FSPInit") and method_class("FSP").pair_problem(student, teacher, {}):
        # n/a in the papers (unequal channel counts): refused with the reason, and the planner blocks the cell
        with pytest.raises(MethodConfigError, match="FSP needs equal channel counts"):
            cls(student=student, teacher=teacher_config, **args)
        return
    module = cls(student=student, teacher=teacher_config, **args)
    if hasattr(module, "setup_for_batch_size"):
        module.setup_for_batch_size(8)
    params = [p for m in module.trainable_modules() for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    before = [p.detach().clone() for p in params]
    module.train()
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = {
            "images": torch.randn(8, 3, 32, 32, generator=generator),
            "labels": torch.randint(0, 100, (8,), generator=generator),
            "indices": torch.arange(8),
        }
        logits, losses = module.training_losses(batch)
        assert logits.shape == (8, 100)
        total = torch.stack(list(losses.values())).sum()
        assert torch.isfinite(total), losses
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, params)), "nothing was trained"
    module.eval()
    with torch.no_grad():
        assert torch.isfinite(module.predict_logits(torch.randn(2, 3, 32, 32))).all()


@pytest.mark.parametrize("name", METHODS)
def test_help_lists_every_argument_typed_and_documented(
    name: str, capsys: pytest.CaptureFixture[str], check_method_help
) -> None:  # type: ignore[no-untyped-def]
    check_method_help(name, capsys)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_trains_through_the_cli_with_the_shipped_config(
    config: str, cifar_root: Path, tmp_path: Path, fit_args, fit_shipped_config, trained_teacher: Path
) -> None:  # type: ignore[no-untyped-def]
    networks = [
        "--model.student=resnet8",
        "--model.teacher.arch=resnet8",
        f"--model.teacher.checkpoint={trained_teacher}",
    ]
    stage_output = {
        "fsp": ("FSPInit", "student_init", "final.pth"),
        "ab": ("ABInit", "student_init", "final.pth"),
        "ft": ("FTParaphraserInit", "paraphraser_checkpoint", "checkpoints/last.ckpt"),
    }
    if config in stage_output:  # the first stage through the CLI too, its output passed on as the planner does
        stage, argument, output = stage_output[config]
        KDBenchCLI(args=fit_args(cifar_root, tmp_path / "stage", f"--model={stage}", *networks))
        networks.append(f"--model.init_args.{argument}={tmp_path / 'stage' / output}")
    cli = fit_shipped_config(config, cifar_root, tmp_path, *networks)
    assert type(cli.model).__name__ == CONFIGS[config]
    record = (tmp_path / "record.json").read_text()
    assert "best_top1" in record or "last_top1" in record
    assert math.isfinite(cli.trainer.callback_metrics["train/loss"].item())


@pytest.mark.parametrize("name", METHODS + STAGES)
def test_a_few_steps_on_one_pair(name: str, calibrated_teacher, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _train_a_few_steps(name, "resnet56", "resnet20", calibrated_teacher, tmp_path, steps=1)


@pytest.mark.exhaustive
@pytest.mark.parametrize(("teacher", "student"), PAIRS, ids=[f"{t}->{s}" for t, s in PAIRS])
@pytest.mark.parametrize("name", METHODS + STAGES)
def test_a_few_steps_on_every_table1_table2_pair(
    name: str, teacher: str, student: str, calibrated_teacher, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    _train_a_few_steps(name, teacher, student, calibrated_teacher, tmp_path)
