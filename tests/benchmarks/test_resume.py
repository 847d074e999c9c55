"""Exact resume: a run stopped (SIGINT/SIGTERM) or killed at any step continues as if it never had.

The reference is the same run trained without interruption; a stopped-and-resumed run must give bit-identical
final weights, the same record metrics and the same ``metrics.csv`` (rows logged before the stop kept, none
doubled), on a CPU.  Stops land mid-epoch, after the last step of an epoch (the checkpoint then waits for the next
step), right before a step-counted validation, and several times in one run; a crash (a kill: nothing saved at that
step) resumes from the last periodic or end-of-epoch checkpoint.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks import interrupts
from benchmarks.execute import dump_config, execute_config


def _config(run_dir: Path, cifar_root: Path, method: str, teacher: Path | None, **trainer: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 3,
            "limit_train_batches": 5,
            "limit_val_batches": 1,
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 2,
            **trainer,
        },
        "model": {
            "class_path": f"kd_modules.{method}",
            "init_args": {"student": "resnet8", "optim": {"lr": 0.05, "milestones": [1, 2]}},
        },
        "data": {
            "class_path": "datamodules.CIFAR100",
            "init_args": {"root": str(cifar_root), "batch_size": 16, "eval_batch_size": 100, "seed": 0},
        },
        "run": {"dir": str(run_dir), "run_id": run_dir.name, "wandb": "disabled"},
    }
    if teacher is not None:
        config["model"]["init_args"]["teacher"] = {"arch": "resnet8", "checkpoint": str(teacher)}
    return config


def _train(store: Path, name: str, config: dict[str, Any]) -> tuple[list[str], dict, dict, str]:
    """Start the run until it finishes; (outcomes, record, final weights, metrics.csv)."""
    run_dir = store / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    config["run"]["dir"], config["run"]["run_id"] = str(run_dir), name
    (run_dir / "config.yaml").write_text(dump_config(config))
    outcomes = []
    for _ in range(6):
        with interrupts.installed():
            outcome = execute_config(run_dir / "config.yaml")
        outcomes.append(outcome.status)
        if outcome.status == "failed":
            assert "simulated kill" in outcome.message, outcome
        if outcome.status == "finished":
            break
    record = json.loads((run_dir / "record.json").read_text())
    weights = torch.load(run_dir / "final.pth", weights_only=False)["state_dict"]
    return outcomes, record, weights, (run_dir / "csv" / "metrics.csv").read_text()


def _same(a: tuple, b: tuple) -> None:
    _, record_a, weights_a, csv_a = a
    _, record_b, weights_b, csv_b = b
    assert record_a["metrics"] == record_b["metrics"] and record_a["steps"] == record_b["steps"]
    assert weights_a.keys() == weights_b.keys() and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert csv_a == csv_b


@pytest.mark.parametrize(
    "method, trainer, schedules",
    [
        # 3 epochs x 5 steps, evaluated at each epoch end: after an epoch's last step (5: the checkpoint waits for
        # step 6), three stops mid-epoch in one run; a kill at step 7 resumes from the end-of-epoch checkpoint.
        ("KD", {}, {"stops": [[5], [2, 8, 12]], "crashes": [[7]]}),
        # evaluated every 3 steps across epochs (the fmnist recipe's way): a stop right before an evaluation (3).
        (
            "Vanilla",
            {"val_check_interval": 3, "check_val_every_n_epoch": None},
            {"stops": [[3]], "crashes": [[11]]},
        ),
    ],
)
def test_a_run_stopped_or_killed_anywhere_resumes_exactly(  # type: ignore[no-untyped-def]
    tmp_path: Path, cifar_root: Path, trained_teacher: Path, stop_at, method, trainer, schedules
) -> None:
    teacher = trained_teacher if method == "KD" else None
    clean = _train(tmp_path, "clean", _config(tmp_path, cifar_root, method, teacher, **trainer))
    assert clean[0] == ["finished"] and clean[1]["resumes"] == 0
    for stops in schedules["stops"]:
        stop_at.stops = list(stops)
        resumed = _train(tmp_path, f"stop{stops}", _config(tmp_path, cifar_root, method, teacher, **trainer))
        assert resumed[0] == ["interrupted"] * len(stops) + ["finished"], (stops, resumed[0])
        assert resumed[1]["resumes"] == len(stops)
        _same(resumed, clean)
    for crashes in schedules["crashes"]:
        stop_at.crashes = list(crashes)
        resumed = _train(tmp_path, f"crash{crashes}", _config(tmp_path, cifar_root, method, teacher, **trainer))
        assert resumed[0] == ["failed", "finished"], resumed[0]
        assert resumed[1]["resumes"] == 1  # from a checkpoint written before the kill, not from scratch
        _same(resumed, clean)


def test_metrics_csv_keeps_the_rows_from_before_the_stop(tmp_path: Path, cifar_root: Path, stop_at) -> None:  # type: ignore[no-untyped-def]
    """Lightning's CSVLogger deletes metrics.csv when a run starts again; the resumed run appends to it."""
    stop_at.stops = [7]
    config = _config(tmp_path, cifar_root, "Vanilla", None)
    run_dir = tmp_path / "runs" / "csv"
    run_dir.mkdir(parents=True)
    config["run"]["dir"], config["run"]["run_id"] = str(run_dir), "csv"
    (run_dir / "config.yaml").write_text(dump_config(config))
    with interrupts.installed():
        assert execute_config(run_dir / "config.yaml").status == "interrupted"
    before = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    assert any(line.startswith("0,") for line in before)  # epoch 0's rows were written before the stop
    assert execute_config(run_dir / "config.yaml").status == "finished"
    after = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    assert after[: len(before)] == before and len(after) > len(before)
    assert sum(1 for line in after if line.startswith("0,")) == sum(1 for line in before if line.startswith("0,"))


def test_wandb_resumes_the_same_run_id(tmp_path: Path, cifar_root: Path, stop_at, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Offline W&B: the resumed attempt logs into the same run id with resume="allow" (`wandb sync` merges them)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    stop_at.stops = [7]
    config = _config(tmp_path, cifar_root, "Vanilla", None)
    config["run"]["wandb"] = "offline"
    run_dir = tmp_path / "runs" / "wandbrun"
    run_dir.mkdir(parents=True)
    config["run"]["dir"], config["run"]["run_id"] = str(run_dir), "wandbrun"
    (run_dir / "config.yaml").write_text(dump_config(config))
    with interrupts.installed():
        assert execute_config(run_dir / "config.yaml").status == "interrupted"
    assert execute_config(run_dir / "config.yaml").status == "finished"
    # one offline run directory per attempt, both of the run's own id (wandb sync uploads them as one run); the
    # interrupted attempt's W&B run was finished, so the second attempt did not log into a stale one
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    # (wandb appends "-1" to the folder of a second attempt that starts within the same second)
    assert len(runs) == 2 and all(re.fullmatch(r"offline-run-\d{8}_\d{6}-wandbrun(-\d+)?", p.name) for p in runs)
    from benchmarks.cli import RunInfo, build_loggers

    logger = build_loggers(RunInfo(run_id="wandbrun", wandb="online"), run_dir / "w", fresh=False)[1]
    assert logger._wandb_init["id"] == "wandbrun" and logger._wandb_init["resume"] == "allow"
