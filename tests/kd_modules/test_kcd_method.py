"""KCD's LightningModule: Algorithm 1 end to end through the CLI (theta_0, theta_1, M, T, restart from theta_0)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.cli import KDBenchCLI
from kd_modules.base import TeacherConfig
from kd_modules.errors import MethodConfigError
from kd_modules.kcd import KCD, class_partition
from models.checkpoints import read_state_dict


@pytest.fixture(scope="module")
def ce_stage(cifar_root: Path, fit_args, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """Algorithm 1 steps 1-2: the CE-only resnet8 student (stores initial.pth = theta_0 and final.pth = theta_1)."""
    run_dir = tmp_path_factory.mktemp("ce_stage")
    KDBenchCLI(args=fit_args(cifar_root, run_dir, "--model=Vanilla", "--model.student=resnet8", "--seed_everything=3"))
    return run_dir


def _kcd_run(cifar_root: Path, fit_args, run_dir: Path, teacher: Path, stage: Path, *extra: str) -> None:  # type: ignore[no-untyped-def]
    KDBenchCLI(
        args=fit_args(
            cifar_root,
            run_dir,
            "--model=KCD",
            "--model.student=resnet8",
            "--model.teacher.arch=resnet8",
            f"--model.teacher.checkpoint={teacher}",
            f"--model.student_init={stage / 'initial.pth'}",
            f"--model.ce_student_checkpoint={stage / 'final.pth'}",
            "--model.consistency_max_images=300",
            "--seed_everything=5",
            *extra,
        )
    )


def test_final_run_starts_from_bit_identical_theta_0(  # type: ignore[no-untyped-def]
    cifar_root: Path, fit_args, trained_teacher: Path, ce_stage: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    _kcd_run(cifar_root, fit_args, tmp_path / "kcd", trained_teacher, ce_stage)
    stage_init, _ = read_state_dict(ce_stage / "initial.pth")
    kcd_init, _ = read_state_dict(tmp_path / "kcd" / "initial.pth")
    assert stage_init.keys() == kcd_init.keys()
    assert all(torch.equal(stage_init[k], kcd_init[k]) for k in stage_init)
    # ... and the stage's trained weights differ from them (the comparison can fail).
    trained, _ = read_state_dict(ce_stage / "final.pth")
    assert not all(torch.equal(stage_init[k], trained[k]) for k in stage_init)
    report = torch.load(tmp_path / "kcd" / "kcd_transform.pt", weights_only=True)
    mapping = report["mappings"][0, 0]
    assert sorted(mapping.tolist()) == list(range(64))  # bipartite on equal widths: a permutation
    assert report["gamma_transformed"][0] >= report["gamma_identity"][0]
    # The consistency statistics were cached: a second run reads them instead of passing the data again.
    cached = list((tmp_path / "cache" / "kcd_consistency").glob("*/artefact.pt"))
    assert len(cached) == 1


def test_options_combine_and_dynamic(  # type: ignore[no-untyped-def]
    cifar_root: Path, fit_args, trained_teacher: Path, ce_stage: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    for name, extra in {
        "greedy_kl_partitions": ("--model.transform=greedy", "--model.consistency=kl", "--model.num_transforms=10"),
        "fitnet_dynamic": ("--model.combine=fitnet", "--model.dynamic=true", "--model.dynamic_every=1"),
        "rkd_l1": ("--model.combine=rkd", "--model.consistency=l1"),
        "subnet_res": ("--model.transform=subnet_res",),
    }.items():
        _kcd_run(cifar_root, fit_args, tmp_path / name, trained_teacher, ce_stage, *extra)
        assert (tmp_path / name / "final.pth").is_file(), name
    report = torch.load(tmp_path / "greedy_kl_partitions" / "kcd_transform.pt", weights_only=True)
    assert report["mappings"].shape == (1, 10, 64) and len(report["gamma_transformed"]) == 10


def test_class_partition_and_bad_settings(teacher_checkpoint) -> None:  # type: ignore[no-untyped-def]
    assert class_partition(torch.tensor([0, 9, 10, 99]), 100, 10).tolist() == [0, 0, 1, 9]
    teacher = TeacherConfig("resnet8", str(teacher_checkpoint("resnet8")))
    with pytest.raises(MethodConfigError, match="valid: bipartite"):
        KCD("resnet8", teacher, transform="hungarian")
    with pytest.raises(MethodConfigError, match="valid: none, fitnet, ab, rkd, rco"):
        KCD("resnet8", teacher, combine="at")
    with pytest.raises(MethodConfigError, match="num_transforms"):
        KCD("resnet8", teacher, num_transforms=101)
    with pytest.raises(MethodConfigError, match="dynamic"):
        KCD("resnet8", teacher, transform="random", dynamic=True)


def test_prerequisites_describe_algorithm_1() -> None:
    names = [p["name"] for p in KCD.prerequisites({})]
    assert names == ["theta_0", "ce_student"]
    assert KCD.prerequisites({"transform": "none"}) == []
    assert [p["name"] for p in KCD.prerequisites({"transform": "random"})] == ["theta_0"]
    assert [p["name"] for p in KCD.prerequisites({"distill_init": 2})] == ["ce_student"]
    teacher_stage = KCD.prerequisites({"transform_teacher_seed": 0})[-1]
    assert teacher_stage["network"] == "teacher" and teacher_stage["seed"] == 0


def test_ab_combination_applies_the_mapping_before_the_ab_hinge(teacher_checkpoint) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    teacher = TeacherConfig("resnet8", str(teacher_checkpoint("resnet8")))
    module = KCD("resnet8", teacher, transform="random", combine="ab", ab_weight=10.0, ce_weight=0.0)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    _, losses = module.training_losses({"images": images, "labels": labels, "indices": torch.arange(4)})
    assert set(losses) == {"ce", "ab"}
    # Independently: the teacher's last-stage pre-ReLU map with channel c of the target taken from teacher channel
    # mapping[c], and the hinge written element by element with explicit branches.
    mapping = module.mappings[0, 0]
    assert mapping.tolist() != list(range(64))  # not the identity, so the check can fail
    with torch.no_grad():
        t = module.teacher.forward_features(images).stages_pre[-1][:, mapping]
        s = module.student.forward_features(images).stages_pre[-1]
    total = 0.0
    for sv, tv in zip(s.flatten().tolist(), t.flatten().tolist()):
        if tv > 0 and sv <= 1.0:
            total += (sv - 1.0) ** 2
        elif tv <= 0 and sv > -1.0:
            total += (sv + 1.0) ** 2
    expected = 10.0 * total / 4 / 1000.0 * 3.0
    assert losses["ab"].item() == pytest.approx(expected, rel=1e-4)
