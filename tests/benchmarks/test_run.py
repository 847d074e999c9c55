"""The table runner: plan, smoke execution, kill-and-resume, user errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.execute import execute_run
from benchmarks.plan import build_plan, load_preset, run_identity
from benchmarks.run import main as run_main
from benchmarks.store import RunStore
from benchmarks.tables import REPO_ROOT, load_table

PAIRS = "resnet56->resnet20,resnet110->resnet32"


def _runner(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.run", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "args, expected",
    [
        (["tableX"], "unknown table 'tableX'; valid: "),
        (["table1", "--methods", "KDD"], "unknown method 'KDD' for table table1; valid: Teacher, Vanilla, KD"),
        (["table1", "--pairs", "resnet56->resnet8"], "unknown pair 'resnet56->resnet8' for table table1; valid: "),
        (["table1", "--preset", "huge"], "unknown preset 'huge'; valid: "),
    ],
)
def test_unknown_names_are_one_line_with_the_choices(args: list[str], expected: str, tmp_path: Path) -> None:
    result = _runner(*args, "--dry-run", "--store", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr


def test_a_table_names_its_own_preset_and_the_command_line_wins(tmp_path: Path) -> None:
    """fmnist runs under the cpu preset (parallel lanes, W&B offline) unless --preset says otherwise."""
    import argparse

    from benchmarks.run import plan_tables, preset_name

    def namespace(preset: str | None) -> argparse.Namespace:
        return argparse.Namespace(
            preset=preset, store=str(tmp_path), data_root=str(tmp_path), trials=None, pairs=None, methods=None
        )

    assert load_table("fmnist").preset == "cpu" and load_preset("cpu").launcher == "parallel"
    assert preset_name(["fmnist"], namespace(None)) == "cpu"
    assert preset_name(["table1"], namespace(None)) == "full"
    assert preset_name(["fmnist", "table1"], namespace(None)) == "full"  # tables that disagree: the default
    assert preset_name(["fmnist"], namespace("smoke")) == "smoke"
    (plan,) = plan_tables(["fmnist"], namespace(None), quiet=True)
    assert plan.preset.name == "cpu"
    teacher = next(spec for spec in plan.ordered() if spec.kind == "teacher")
    assert teacher.config["trainer"]["accelerator"] == "cpu"


def test_list_and_dry_run(tmp_path: Path, cifar_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(["--list"]) == 0
    assert "table1" in capsys.readouterr().out
    assert run_main(["table1", "--dry-run", "--store", str(tmp_path), "--data-root", str(cifar_root)]) == 0
    out = capsys.readouterr().out
    assert "GPU-h" in out and "teacher" in out


def test_identity_shares_runs_and_ignores_bookkeeping(tmp_path: Path) -> None:
    table = load_table("table1")
    plan = build_plan(table, load_preset("smoke"), RunStore(tmp_path), data_root="x", pairs=PAIRS.split(","))
    vanilla_r20 = plan.cells[("Vanilla", "resnet56->resnet20")]
    assert (
        vanilla_r20
        == build_plan(
            table, load_preset("smoke"), RunStore(tmp_path), data_root="y", pairs=["resnet110->resnet20"]
        ).cells[("Vanilla", "resnet110->resnet20")]
    )
    kd = plan.runs[plan.cells[("KD", "resnet56->resnet20")][0]]
    teacher = plan.runs[plan.cells[("Teacher", "resnet56->resnet20")][0]]
    assert kd.depends_on == [teacher.run_id]
    assert list(plan.runs).index(teacher.run_id) < list(plan.runs).index(kd.run_id)
    config = dict(kd.config)
    changed = {**config, "run": {"dir": "elsewhere"}}
    assert run_identity(changed) == kd.run_id
    assert run_identity({**config, "seed_everything": 99}) != kd.run_id


def test_execute_resumes_an_interrupted_run(tmp_path: Path, cifar_root: Path) -> None:
    from benchmarks.cli import KDBenchCLI

    store = RunStore(tmp_path)
    table = load_table("table1")
    plan = build_plan(
        table, load_preset("smoke"), store, data_root=str(cifar_root), pairs=["resnet56->resnet20"], methods=["Vanilla"]
    )
    (spec,) = plan.ordered()
    spec.config["trainer"]["max_epochs"] = 2
    spec.config["run"]["wandb"] = "disabled"
    # Simulate a run killed after its first epoch: last.ckpt exists, record.json does not.
    run_dir = store.run_dir(spec.run_id)
    run_dir.mkdir(parents=True)
    (run_dir / "first.yaml").write_text(json.dumps(spec.config))
    KDBenchCLI(args=["fit", "--config", str(run_dir / "first.yaml"), "--trainer.max_epochs=1"])
    (run_dir / "record.json").unlink()
    outcome = execute_run(spec, store)
    assert outcome.status == "finished" and outcome.resumed
    record = store.record(spec.run_id)
    assert record["epochs"] == 2 and record["steps"] == 4  # 2 steps per epoch, the first epoch not repeated
    assert execute_run(spec, store).status == "skipped"


@pytest.mark.slow
def test_killed_table_run_completes_without_redoing_finished_runs(tmp_path: Path) -> None:
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
    args = [
        sys.executable,
        "-m",
        "benchmarks.run",
        "table1",
        "--preset",
        "smoke",
        "--pairs",
        PAIRS,
        "--methods",
        "Vanilla,KD",
        "--store",
        str(tmp_path / "store"),
        "--data-root",
        str(tmp_path / "data"),
    ]
    process = subprocess.Popen(
        args, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    runs = tmp_path / "store" / "runs"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(runs.glob("*/record.json"))) < 2:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished_before = {p.parent.name: p.stat().st_mtime_ns for p in runs.glob("*/record.json")}
    assert 2 <= len(finished_before) < 6, "the kill must land half-way"

    result = subprocess.run(args + ["--report"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    finished_after = {p.parent.name: p.stat().st_mtime_ns for p in runs.glob("*/record.json")}
    assert len(finished_after) == 6  # 2 teachers + Vanilla x 2 students + KD x 2 pairs
    assert all(finished_after[k] == v for k, v in finished_before.items()), "a finished run was redone"
    assert result.stdout.count(": already finished (") == len(finished_before)
    table = (REPO_ROOT / "tables" / "results" / "table1.smoke.md").read_text()
    assert "SMOKE RUN" in table and "| KD (paper: NORM T1) |" in table and "resnet56→resnet20" in table
    page = tmp_path / "store" / "report" / "table1.html"
    assert f"report page: {page.parent / 'index.html'}" in result.stdout
    assert "SMOKE RUN" in page.read_text() and (page.parent / "table1.png").is_file()


@pytest.mark.parametrize("run_id", ["123e4567", "0123456789012345", "1e999", "12.5e3", "inf", "5e-3"])
def test_number_like_run_ids_survive_the_written_config(run_id: str, tmp_path: Path) -> None:
    """Run ids are 16 hex digits; some read as numbers in YAML 1.2 (jsonargparse): 123e4567 would become inf."""
    from jsonargparse import ArgumentParser

    from benchmarks.execute import dump_config

    path = tmp_path / "config.yaml"
    path.write_text(dump_config({"run_id": run_id, "name": "fmnist/KD", "lr": 0.1}))
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action="config")
    parser.add_argument("--run_id", type=str)
    parser.add_argument("--name", type=str)
    parser.add_argument("--lr", type=float)
    parsed = parser.parse_args(["--config", str(path)])
    assert parsed.run_id == run_id and parsed.name == "fmnist/KD" and parsed.lr == 0.1
