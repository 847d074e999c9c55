"""Bad input: one line naming the bad value and the valid choices, exit status 2, nothing loaded or written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.cli import main as cli_main
from benchmarks.run import main as run_main


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _one_line_error(capsys: pytest.CaptureFixture[str], call, written: Path) -> str:  # type: ignore[no-untyped-def]
    """Run ``call``; assert exit 2, exactly one ``error`` line and no traceback, nothing new under ``written``."""
    before = _snapshot(written)
    with pytest.raises(SystemExit) as exit_info:
        call()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "usage:" not in err, err
    assert _snapshot(written) == before, "something was written"
    return lines[0]


@pytest.fixture
def base(cifar_root: Path, tmp_path: Path) -> list[str]:
    """A complete, valid fit call on the generated CIFAR fixture whose run folder is ``tmp_path/run``."""
    return [
        "fit",
        "--data=CIFAR100",
        f"--data.root={cifar_root}",
        "--trainer.accelerator=cpu",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=1",
        "--run.wandb=disabled",
        f"--run.dir={tmp_path / 'run'}",
    ]


def test_unknown_method_lists_the_methods(base, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from kd_modules import method_names

    line = _one_line_error(capsys, lambda: cli_main([*base, "--model=NOPE"]), tmp_path)
    assert "unknown method 'NOPE' (--model); valid: " in line
    assert all(name in line for name in ("KD", "Vanilla", method_names()[0], method_names()[-1]))


def test_unknown_dataset_lists_the_datasets(base, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    args = [a if not a.startswith("--data=") else "--data=CIFAR10" for a in base]
    line = _one_line_error(capsys, lambda: cli_main([*args, "--model=Vanilla", "--model.student=resnet8"]), tmp_path)
    assert "unknown dataset 'CIFAR10' (--data); valid: CIFAR100, FashionMNIST, ImageNet, TinyImageNet" in line


def test_unknown_yaml_key_suggests_the_nearest(base, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "kd.yaml"
    config.write_text("model:\n  class_path: kd_modules.KD\n  init_args:\n    student: resnet8\n    temprature: 3\n")
    line = _one_line_error(capsys, lambda: cli_main([*base, "--config", str(config)]), tmp_path)
    assert "KD has no argument 'temprature' (did you mean model.init_args.temperature?); valid: " in line
    assert "kd_weight" in line


def test_unknown_top_level_yaml_key_suggests_the_nearest(base, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "trainer.yaml"
    config.write_text("trainer:\n  max_epoch: 3\n")
    args = [*base, "--model=Vanilla", "--model.student=resnet8", "--config", str(config)]
    line = _one_line_error(capsys, lambda: cli_main(args), tmp_path)
    assert "unknown key 'trainer.max_epoch' (did you mean trainer.max_epochs?)" in line


def test_unknown_command_line_key_suggests_the_nearest(base, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    args = [*base, "--model=Vanilla", "--model.student=resnet8", "--trainer.max_epoch=3"]
    line = _one_line_error(capsys, lambda: cli_main(args), tmp_path)
    assert "unknown key 'trainer.max_epoch' (did you mean trainer.max_epochs?)" in line
    assert "valid trainer keys: " in line and "trainer.max_steps" in line


def test_unknown_method_argument_suggests_the_nearest(base, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    args = [*base, "--model=KD", "--model.student=resnet8", "--model.temprature=3"]
    line = _one_line_error(capsys, lambda: cli_main(args), tmp_path)
    assert "KD has no argument 'temprature' (did you mean model.init_args.temperature?)" in line


def test_yaml_syntax_error_names_the_file_and_line(base, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "broken.yaml"
    config.write_text("model:\n  class_path: kd_modules.KD\n  init_args:\n    temperature: 3\n   bad: [\n")
    line = _one_line_error(capsys, lambda: cli_main([*base, "--config", str(config)]), tmp_path)
    assert f"YAML syntax error in {config} line 5, column 4" in line


def test_missing_config_file_is_named(base, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    line = _one_line_error(capsys, lambda: cli_main([*base, "--config", str(tmp_path / "nope.yaml")]), tmp_path)
    assert f"config file {tmp_path / 'nope.yaml'} does not exist" in line


def test_a_value_outside_its_choices_lists_them(base, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    args = [*base, "--model=Vanilla", "--model.student=resnet8", "--run.wandb=onlin"]
    line = _one_line_error(capsys, lambda: cli_main(args), tmp_path)
    assert "run.wandb: 'onlin' is not one of: auto, online, offline, disabled" in line


@pytest.mark.parametrize("lr", ["0", "-0.1"])
def test_a_learning_rate_that_is_not_positive(base, tmp_path, capsys, lr) -> None:  # type: ignore[no-untyped-def]
    args = [*base, "--model=Vanilla", "--model.student=resnet8", f"--model.optim.lr={lr}"]
    line = _one_line_error(capsys, lambda: cli_main(args), tmp_path)
    assert f"model.init_args.optim.lr must be > 0 (the SGD learning rate), got {float(lr)}" in line


@pytest.mark.parametrize("key, what", [("max_epochs", "epochs"), ("max_steps", "optimiser steps")])
def test_a_zero_length_run(base, tmp_path, capsys, key, what) -> None:  # type: ignore[no-untyped-def]
    args = [*base, "--model=Vanilla", "--model.student=resnet8", f"--trainer.{key}=0"]
    line = _one_line_error(capsys, lambda: cli_main(args), tmp_path)
    assert f"trainer.{key} is 0: the run would train no {what} and record no metrics" in line


def test_an_unwritable_run_folder_is_named(base, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args = [*base, "--model=Vanilla", "--model.student=resnet8", f"--run.dir={blocker / 'run'}"]
    line = _one_line_error(capsys, lambda: cli_main(args), tmp_path)
    assert f"run.dir {blocker / 'run'} cannot be created: {blocker} is a file, not a folder" in line


def test_online_wandb_without_credentials_is_refused_up_front(base, tmp_path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    args = [*base, "--model=Vanilla", "--model.student=resnet8", "--run.wandb=online"]
    line = _one_line_error(capsys, lambda: cli_main(args), tmp_path)
    assert "run.wandb is 'online' but no W&B credentials were found" in line
    assert "valid without credentials: auto, offline, disabled" in line


def test_a_missing_dataset_root_is_an_error_not_a_fallback(base, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "no-such-root"
    args = [a for a in base if not a.startswith(("--data=", "--data.root"))]
    call = [*args, "--data=FashionMNIST", f"--data.root={missing}", "--model=Vanilla", "--model.student=resnet8"]
    line = _one_line_error(capsys, lambda: cli_main(call), tmp_path)
    assert "Fashion-MNIST not found: expected the Fashion-MNIST idx files" in line and str(missing) in line
    assert "/usr/share/datasets/fashion-mnist; pass that folder as the root" in line  # a hint, not a fallback
    call = [*args, "--data=CIFAR100", f"--data.root={missing}", "--model=Vanilla", "--model.student=resnet8"]
    line = _one_line_error(capsys, lambda: cli_main(call), tmp_path)
    assert f"CIFAR-100 not found under {missing} (no train, test split)" in line


def test_a_truncated_checkpoint_says_so(base, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import torch

    checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, checkpoint)
    checkpoint.write_bytes(checkpoint.read_bytes()[:2000])
    args = [*base, "--model=Vanilla", "--model.student=resnet8", f"--ckpt_path={checkpoint}"]
    line = _one_line_error(capsys, lambda: cli_main(args), tmp_path)
    assert f"--ckpt_path: checkpoint {checkpoint} is truncated or corrupt (2000 bytes" in line


# ------------------------------------------------------------------------------------------ the runner
def test_runner_unwritable_store(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    call = lambda: _exit(run_main(["table1", "--preset", "smoke", "--store", str(blocker / "store")]))  # noqa: E731
    line = _one_line_error(capsys, call, tmp_path)
    assert f"--store {blocker / 'store'} cannot be created: {blocker} is a file, not a folder" in line


def test_runner_missing_dataset_refuses_the_launch(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    empty = tmp_path / "data"
    empty.mkdir()
    args = [
        "table1",
        "--methods",
        "KD",
        "--pairs",
        "resnet56->resnet20",
        "--store",
        str(tmp_path / "store"),
        "--teachers",
        "trained",
    ]
    line = _one_line_error(capsys, lambda: _exit(run_main([*args, "--data-root", str(empty)])), tmp_path)
    assert f"cifar100 not found (looked in {empty})" in line
    assert "runnable cell(s) of table1 need it; pass --data-root DIR; it can be downloaded from https://" in line


def test_runner_jobs_must_be_positive(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    call = lambda: _exit(run_main(["table1", "--jobs", "0", "--store", str(tmp_path / "s")]))  # noqa: E731
    assert "--jobs must be at least 1, got 0" in _one_line_error(capsys, call, tmp_path)


def _exit(code: int) -> None:
    raise SystemExit(code)


def test_nothing_here_reads_the_debian_copy_silently(tmp_path: Path) -> None:
    """The Fashion-MNIST reader looks under its root only (the table runner lists the system copy itself)."""
    from datamodules.fashion_mnist import candidate_folders

    assert all(str(folder).startswith(str(tmp_path)) for folder in candidate_folders(tmp_path))
    assert os.path.basename(str(candidate_folders(tmp_path)[-1])) == "raw"
