"""The Lightning CLI: shipped configs run, --print_config reproduces a run, user errors are one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from benchmarks.cli import KDBenchCLI
from benchmarks.tables import REPO_ROOT


def _cli(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def test_shipped_kd_config_runs_fast_dev_run(cifar_root: Path, tmp_path: Path, fit_args) -> None:  # type: ignore[no-untyped-def]
    # The shipped config names the released teacher's path; a teacher of the same architecture trained here stands in.
    KDBenchCLI(args=fit_args(cifar_root, tmp_path / "teacher", "--model=Vanilla", "--model.student=resnet32x4"))
    result = _cli(
        "fit",
        "--config",
        "configs/examples/kd_resnet32x4_resnet8x4.yaml",
        "--trainer.fast_dev_run=true",
        f"--data.root={cifar_root}",
        f"--model.teacher.checkpoint={tmp_path / 'teacher' / 'final.pth'}",
        f"--run.dir={tmp_path / 'kd'}",
        "--trainer.accelerator=cpu",
        "--run.wandb=disabled",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "kd" / "record.json").is_file()


def test_print_config_reproduces_the_run(cifar_root: Path, tmp_path: Path, fit_args, trained_teacher: Path) -> None:  # type: ignore[no-untyped-def]
    args = fit_args(
        cifar_root,
        tmp_path / "a",
        "--model=KD",
        "--model.student=resnet8",
        "--model.teacher.arch=resnet8",
        f"--model.teacher.checkpoint={trained_teacher}",
        "--seed_everything=7",
    )
    printed = _cli(*args, "--print_config")
    assert printed.returncode == 0, printed.stderr[-2000:]
    config = yaml.safe_load(printed.stdout)
    assert config["model"]["class_path"] == "kd_modules.KD" and config["model"]["init_args"]["temperature"] == 4.0
    config["run"]["dir"] = str(tmp_path / "b")
    (tmp_path / "printed.yaml").write_text(yaml.safe_dump(config))

    KDBenchCLI(args=args)
    KDBenchCLI(args=["fit", "--config", str(tmp_path / "printed.yaml")])
    first = torch.load(tmp_path / "a" / "final.pth")["state_dict"]
    second = torch.load(tmp_path / "b" / "final.pth")["state_dict"]
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    metrics_a = json.loads((tmp_path / "a" / "record.json").read_text())["metrics"]
    metrics_b = json.loads((tmp_path / "b" / "record.json").read_text())["metrics"]
    assert metrics_a == metrics_b


def test_wrong_architecture_teacher_is_one_clear_line(
    cifar_root: Path, tmp_path: Path, fit_args, trained_teacher: Path
) -> None:  # type: ignore[no-untyped-def]
    args = fit_args(
        cifar_root,
        tmp_path,
        "--model=KD",
        "--model.student=resnet8",
        "--model.teacher.arch=resnet32x4",
        f"--model.teacher.checkpoint={trained_teacher}",
    )
    result = _cli(*args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("kdbench: error")]
    assert len(lines) == 1 and "resnet8" in lines[0] and "resnet32x4" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_method_help_is_typed_and_documented() -> None:
    result = _cli("fit", "--model", "KD", "--model.help", "KD")
    assert result.returncode == 0, result.stderr
    assert "--model.temperature TEMPERATURE" in result.stdout and "type: float, default: 4.0" in result.stdout
    assert "softmax temperature" in result.stdout


def test_every_fit_stores_theta0_and_student_init_restarts_from_it(cifar_root: Path, tmp_path: Path, fit_args) -> None:  # type: ignore[no-untyped-def]
    KDBenchCLI(
        args=fit_args(cifar_root, tmp_path / "a", "--model=Vanilla", "--model.student=resnet8", "--seed_everything=3")
    )
    initial = torch.load(tmp_path / "a" / "initial.pth")["state_dict"]
    final = torch.load(tmp_path / "a" / "final.pth")["state_dict"]
    assert not torch.equal(initial["conv1.weight"], final["conv1.weight"]), (
        "initial.pth must hold the untrained weights"
    )

    from kd_modules import Vanilla

    restarted = Vanilla(student="resnet8", student_init=str(tmp_path / "a" / "initial.pth")).student.state_dict()
    assert all(torch.equal(restarted[k], initial[k]) for k in initial)


def test_reused_parser_keeps_no_state_between_runs(cifar_root: Path, tmp_path: Path) -> None:
    # The parser is built once per process (benchmarks.cli._PARSERS); a run's arguments must not leak into the next.
    from benchmarks import cli

    common = ["--data=CIFAR100", f"--data.root={cifar_root}", "--model.student=resnet8", "--run.wandb=disabled"]
    first = KDBenchCLI(args=["--model=Vanilla", "--model.optim.lr=0.3", *common], run=False)
    parsers = dict(cli._PARSERS)
    second = KDBenchCLI(args=["--model=Vanilla", *common], run=False)
    assert cli._PARSERS == parsers and second.parser is first.parser  # built once
    assert first.model.optim.lr == 0.3 and second.model.optim.lr != 0.3


def test_the_record_says_what_the_run_was_made_from(
    cifar_root: Path, tmp_path: Path, fit_args, trained_teacher: Path
) -> None:  # type: ignore[no-untyped-def]
    """Provenance: the teacher file's SHA-256, the data folder actually read with a fingerprint of its files, and
    the code tree (commit, dirty or not, a digest of the changes)."""
    import hashlib
    import os

    KDBenchCLI(
        args=fit_args(
            cifar_root,
            tmp_path,
            "--model=KD",
            "--model.student=resnet8",
            "--model.teacher.arch=resnet8",
            f"--model.teacher.checkpoint={trained_teacher}",
        )
    )
    record = json.loads((tmp_path / "record.json").read_text())
    provenance = record["provenance"]
    assert record["resumes"] == 0
    digest = hashlib.sha256(trained_teacher.read_bytes()).hexdigest()[:16]
    assert provenance["teacher"] == {"checkpoint": str(trained_teacher), "digest": f"sha256:{digest}"}
    data = provenance["data"]
    folder = (cifar_root / "cifar-100-python").resolve()
    assert data["root"] == str(folder) and data["files"] == 2 and data["dataset"] == "cifar100"
    assert data["bytes"] == sum((folder / split).stat().st_size for split in ("train", "test"))
    code = provenance["code"]
    assert len(code["commit"]) == 40 and isinstance(code["dirty"], bool)
    assert (code["diff_sha256"] is None) == (not code["dirty"])
    # the fingerprint follows the files: touching one changes it
    from datamodules import CIFAR100

    before = CIFAR100(root=str(cifar_root)).data_provenance()["fingerprint"]
    assert before == data["fingerprint"]
    stat = (folder / "test").stat()
    os.utime(folder / "test", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert CIFAR100(root=str(cifar_root)).data_provenance()["fingerprint"] != before
    os.utime(folder / "test", ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_divergence_fails_the_run_or_is_recorded_when_the_run_says_so(
    cifar_root: Path, tmp_path: Path, fit_args
) -> None:  # type: ignore[no-untyped-def]
    """lr 1e30 sends the weights to inf in two steps: by default the run raises (the launchers write failed.json);
    with run.on_divergence=record it ends with a record that says so (what smoke runs do)."""
    import pytest

    from kd_modules.base import TrainingDivergedError

    diverging = ("--model=Vanilla", "--model.student=resnet8", "--model.optim.lr=1e30")
    with pytest.raises(TrainingDivergedError, match="Vanilla diverged"):
        KDBenchCLI(args=fit_args(cifar_root, tmp_path / "fail", *diverging))
    assert not (tmp_path / "fail" / "record.json").exists()

    KDBenchCLI(args=fit_args(cifar_root, tmp_path / "record", *diverging, "--run.on_divergence=record"))
    record = json.loads((tmp_path / "record" / "record.json").read_text())
    assert "Vanilla diverged: the validation loss is nan" in record["diverged"]
    assert record["steps"] == 2 and "best_top1" in record["metrics"] and record["smoke"] is True
