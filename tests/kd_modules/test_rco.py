"""RCO: route snapshots saved along a teacher's training, the phased curriculum, and KCD + RCO."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.cli import KDBenchCLI
from kd_modules.base import TeacherConfig
from kd_modules.errors import MethodConfigError
from kd_modules.rco import RCO, TeacherRoute, route_file
from models.checkpoints import CheckpointError, read_state_dict


@pytest.fixture(scope="module")
def teacher_with_route(cifar_root: Path, fit_args, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """A four-step resnet8 teacher run that saves its route at 1/4, 1/2 and 3/4 of its steps."""
    run_dir = tmp_path_factory.mktemp("route_teacher")
    args = fit_args(cifar_root, run_dir, "--model=Vanilla", "--model.student=resnet8", "--run.route=[0.25,0.5,0.75]")
    args = [a if a != "--trainer.limit_train_batches=2" else "--trainer.limit_train_batches=4" for a in args]
    KDBenchCLI(args=args)
    return run_dir


def test_route_snapshots_are_the_weights_along_training(teacher_with_route: Path) -> None:
    states = {f: read_state_dict(teacher_with_route / "route" / route_file(f))[0] for f in (0.25, 0.5, 0.75)}
    initial, _ = read_state_dict(teacher_with_route / "initial.pth")
    final, _ = read_state_dict(teacher_with_route / "final.pth")
    payloads = {f: torch.load(teacher_with_route / "route" / route_file(f), weights_only=False) for f in states}
    assert [payloads[f]["step"] for f in (0.25, 0.5, 0.75)] == [1, 2, 3]  # 4 steps in all
    key = "fc.weight"
    chain = [initial[key], *(states[f][key] for f in (0.25, 0.5, 0.75)), final[key]]
    assert all(not torch.equal(a, b) for a, b in zip(chain, chain[1:]))  # every snapshot is a different point


def test_phases_split_the_schedule(teacher_with_route: Path) -> None:
    route = TeacherRoute.from_fractions(
        "resnet8", 100, str(teacher_with_route / "route"), [0.25, 0.5, 0.75, 1.0], None, None
    )
    assert len(route) == 4 and route.checkpoints[-1].endswith("final.pth")
    assert [route.phase_at(step, 8) for step in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    uneven = TeacherRoute.from_fractions(
        "resnet8", 100, str(teacher_with_route / "route"), [0.5, 1.0], None, [0.75, 1.0]
    )
    assert [uneven.phase_at(step, 4) for step in range(4)] == [0, 0, 0, 1]
    with pytest.raises(MethodConfigError, match="phase_ends"):
        TeacherRoute.from_fractions("resnet8", 100, str(teacher_with_route / "route"), [0.5, 1.0], None, [1.0, 0.5])
    with pytest.raises(CheckpointError, match="anchor checkpoint not found"):
        TeacherRoute.from_fractions("resnet8", 100, str(teacher_with_route / "route"), [0.3, 1.0], None, None)


def test_rco_loads_each_anchor_in_its_phase(teacher_with_route: Path) -> None:
    teacher = TeacherConfig("resnet8", str(teacher_with_route / "final.pth"))
    module = RCO("resnet8", teacher, route_dir=str(teacher_with_route / "route"))
    for phase, fraction in enumerate((0.25, 0.5, 0.75)):
        module.route.load_into(module.teacher, phase)
        expected, _ = read_state_dict(teacher_with_route / "route" / route_file(fraction))
        assert torch.equal(module.teacher.state_dict()["fc.weight"], expected["fc.weight"])
    assert RCO.prerequisites({})[0]["network"] == "teacher"


@pytest.mark.parametrize("method", ["RCO", "KCD"])
def test_rco_and_kcd_rco_train(  # type: ignore[no-untyped-def]
    method: str, cifar_root: Path, fit_args, teacher_with_route: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    extra = [f"--model={method}", "--model.student=resnet8", "--model.teacher.arch=resnet8"]
    extra += [
        f"--model.teacher.checkpoint={teacher_with_route / 'final.pth'}",
        f"--model.route_dir={teacher_with_route / 'route'}",
    ]
    if method == "KCD":
        # theta_1 stands in as the teacher's initial.pth here (any resnet8): the test is about one mapping per anchor.
        extra += ["--model.combine=rco", f"--model.ce_student_checkpoint={teacher_with_route / 'initial.pth'}"]
        extra += [f"--model.student_init={teacher_with_route / 'initial.pth'}", "--model.consistency_max_images=200"]
    args = fit_args(cifar_root, tmp_path / "run", *extra)
    args = [a if a != "--trainer.limit_train_batches=2" else "--trainer.limit_train_batches=4" for a in args]
    KDBenchCLI(args=args)
    assert (tmp_path / "run" / "final.pth").is_file()
    if method == "KCD":
        report = torch.load(tmp_path / "run" / "kcd_transform.pt", weights_only=True)
        assert report["mappings"].shape == (4, 1, 64) and len(report["gamma_transformed"]) == 4
        assert len(list((tmp_path / "cache" / "kcd_consistency").glob("*/artefact.pt"))) == 4
