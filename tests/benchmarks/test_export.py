"""`python -m benchmarks.export`: a NORM student's FT folded into its classifier, written as a plain network."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.export import main
from kd_modules import FTStudent
from kd_modules.norm import feature_transform_at
from models import create_model
from models.checkpoints import export_network, load_network

NUM_CLASSES = 10


def _trained_ft_student(ft: str) -> torch.nn.Module:
    torch.manual_seed(0)
    module = FTStudent(student="resnet8", num_classes=NUM_CLASSES, teacher_channels=32, n_segments=4, ft=ft)
    optimizer = torch.optim.SGD(module.student.parameters(), lr=0.1, momentum=0.9)
    module.train()
    for step in range(2):
        generator = torch.Generator().manual_seed(step)
        batch = {
            "images": torch.randn(4, 3, 32, 32, generator=generator),
            "labels": torch.randint(0, NUM_CLASSES, (4,), generator=generator),
        }
        _, losses = module.training_losses(batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    return module.student.eval()


@pytest.mark.parametrize("ft", ["default", "plain"])
def test_export_folds_a_final_pth(tmp_path: Path, ft: str, capsys: pytest.CaptureFixture[str]) -> None:
    student = _trained_ft_student(ft)
    source = export_network(student, "resnet8", tmp_path / "final.pth")
    out = tmp_path / "plain.pth"
    assert main([str(source), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (
        f"folded the {'default (residual)' if ft == 'default' else 'plain'} NORM FT at stage3 (64->128->64)" in printed
    )
    plain = load_network("resnet8", NUM_CLASSES, out)  # an ordinary resnet8 checkpoint
    assert sum(p.numel() for p in plain.parameters()) == sum(
        p.numel() for p in create_model("resnet8", 10).parameters()
    )
    images = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        reference, folded = student(images), plain.eval()(images)
    assert ((reference - folded).abs().max() / reference.abs().max()) < 1e-5
    assert feature_transform_at(student) is not None  # the source network is untouched


def test_export_a_run_folder_and_its_best_checkpoint(
    cifar_root: Path, trained_teacher: Path, tmp_path: Path, fit_args, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    from benchmarks.cli import KDBenchCLI

    run_dir = tmp_path / "run"
    KDBenchCLI(
        args=fit_args(
            cifar_root,
            run_dir,
            "--model=NORM",
            "--model.student=resnet8",
            "--model.teacher.arch=resnet8",
            f"--model.teacher.checkpoint={trained_teacher}",
            "--model.n_segments=2",
        )
    )
    assert main([str(run_dir)]) == 0
    assert main([str(run_dir), "--checkpoint", "best"]) == 0
    assert "into the classifier of resnet8" in capsys.readouterr().out
    for name in ("deploy.pth", "deploy_best.pth"):
        load_network("resnet8", 100, run_dir / name)


def _expect_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    return lines[0]


def test_wrn_students_cannot_be_folded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A WRN-16-2 NORM student as the run would write it (the FT keys are enough: the refusal comes first).
    path = tmp_path / "wrn.pth"
    torch.save(
        {
            "format": "kdbench-network",
            "arch": "wrn_16_2",
            "num_classes": NUM_CLASSES,
            "state_dict": {
                "inserted.stage3.expand.0.weight": torch.zeros(1024, 128, 1, 1),
                "inserted.stage3.contract.0.weight": torch.zeros(128, 1024, 1, 1),
            },
        },
        path,
    )
    line = _expect_error([str(path)], capsys)
    assert line.startswith("benchmarks.export: error: cannot fold the NORM FT of wrn_16_2")
    assert "before the final BN-ReLU" in line
    assert not (tmp_path / "wrn.deploy.pth").exists()


def test_plain_student_and_missing_source_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = export_network(create_model("resnet8", NUM_CLASSES), "resnet8", tmp_path / "plain.pth")
    assert "without a NORM FT: nothing to fold" in _expect_error([str(path)], capsys)
    assert "not a run folder or checkpoint file" in _expect_error([str(tmp_path / "absent.pth")], capsys)
    assert "has no checkpoints/best.ckpt" in _expect_error([str(tmp_path), "--checkpoint", "best"], capsys)
