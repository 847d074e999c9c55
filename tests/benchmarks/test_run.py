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


def test_execute_resumes_an_interrupted_run(tmp_path: Path, cifar_root: Path, stop_at) -> None:  # type: ignore[no-untyped-def]
    """A stop request mid-run: interrupted (not failed), last.ckpt written; the next start resumes it."""
    from benchmarks import interrupts

    store = RunStore(tmp_path)
    table = load_table("table1")
    plan = build_plan(
        table, load_preset("smoke"), store, data_root=str(cifar_root), pairs=["resnet56->resnet20"], methods=["Vanilla"]
    )
    (spec,) = plan.ordered()
    spec.config["trainer"]["max_epochs"] = 3
    spec.config["run"]["wandb"] = "disabled"
    stop_at.stops = [3]  # epoch 1, after its first step
    with interrupts.installed():
        outcome = execute_run(spec, store)
    assert outcome.status == "interrupted" and outcome.signum == signal.SIGINT, outcome
    run_dir = store.run_dir(spec.run_id)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and not (run_dir / "failed.json").exists()
    assert not store.is_finished(spec.run_id)
    outcome = execute_run(spec, store)
    assert outcome.status == "finished" and outcome.resumed
    record = store.record(spec.run_id)
    assert record["epochs"] == 3 and record["steps"] == 6  # 2 steps per epoch, nothing repeated
    assert record["resumes"] == 1
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
    # rendered into the store's own tables/ folder, under the filtered name (the full table is not touched)
    table = tmp_path / "store" / "tables" / "table1.smoke.only-Vanilla-KD-resnet56_resnet20-resnet110_resnet32.md"
    text = table.read_text()
    assert "SMOKE RUN" in text and "| KD (paper: NORM T1) |" in text and "resnet56→resnet20" in text
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


def _namespace(tmp_path: Path, **overrides):  # type: ignore[no-untyped-def]
    import argparse

    values = dict(preset="smoke", store=None, data_root=str(tmp_path / "data"), trials=None, pairs=None, methods=None)
    values.update(overrides)
    return argparse.Namespace(**values)


def test_rendered_tables_belong_to_their_store_and_filters_never_overwrite_the_full_table(tmp_path: Path) -> None:
    from benchmarks.run import RESULTS_DIR, plan_tables, results_dir, table_stem

    default = _namespace(tmp_path, dry_run=True)  # the smoke preset's own store (results/smoke)
    (plan,) = plan_tables(["table1"], default, quiet=True)
    assert results_dir(plan, default) == RESULTS_DIR and table_stem(plan, default) == "table1.smoke"
    other = _namespace(tmp_path, dry_run=True, store=str(tmp_path / "mine"))
    (plan,) = plan_tables(["table1"], other, quiet=True)
    assert results_dir(plan, other) == tmp_path / "mine" / "tables"
    filtered = _namespace(tmp_path, dry_run=True, methods=["KD"], pairs=["resnet56->resnet20"])
    (plan,) = plan_tables(["table1"], filtered, quiet=True)
    assert results_dir(plan, filtered) == RESULTS_DIR
    assert table_stem(plan, filtered) == "table1.smoke.only-KD-resnet56_resnet20"
    assert not (tmp_path / "data").exists()  # planning a dry run writes no fixture


def test_dry_run_checks_the_data_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "data"
    empty.mkdir()
    store = tmp_path / "store"
    assert run_main(["table1", "--dry-run", "--store", str(store), "--data-root", str(empty)]) == 0
    out = capsys.readouterr().out
    assert "data check (table1):" in out
    assert "dataset cifar100: downloadable from https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in out
    assert f"looked in {empty}" in out and "CIFAR-100 not found under" in out
    assert "cells that would fail for it: all " in out
    assert run_main(["table1", "--dry-run", "--preset", "smoke", "--store", str(store), "--data-root", str(empty)]) == 0
    out = capsys.readouterr().out
    assert f"a generated fixture (would be generated) at {empty / 'synthetic' / 'cifar100'}" in out
    assert run_main(["table3", "--dry-run", "--store", str(store), "--data-root", str(empty)]) == 0
    out = capsys.readouterr().out
    assert "teacher resnet34 weights: downloadable from https://download.pytorch.org/" in out
    assert "cell(s) cannot run without them" in out
    assert list(empty.iterdir()) == [] and not store.exists()  # nothing written


def test_exit_status_and_summary_by_cause(tmp_path: Path) -> None:
    from benchmarks.run import exit_status, plan_tables
    from benchmarks.store import write_record

    args = _namespace(
        tmp_path, dry_run=True, store=str(tmp_path / "s"), methods=["Vanilla", "KD"], pairs=["resnet56->resnet20"]
    )
    plans = plan_tables(["table1"], args, quiet=True)
    (plan,) = plans
    assert exit_status(plans) == (3, "not every cell finished: 2 not run (of 2 cells)")
    ids = {row: ids[0] for (row, _), ids in plan.cells.items()}

    def finish(run_id: str) -> None:
        write_record(
            plan.store.run_dir(run_id),
            run_id=run_id,
            info={},
            config="",
            tracked={"best_top1": 1.0},
            epochs=1,
            steps=1,
            fit_seconds=0.1,
            fast_dev_run=False,
            limited=True,
        )

    finish(ids["Vanilla"])
    (plan.store.run_dir(ids["KD"])).mkdir(parents=True)
    (plan.store.run_dir(ids["KD"]) / "failed.json").write_text(json.dumps({"error": "x", "kind": "diverged"}))
    assert exit_status(plans) == (1, "not every cell finished: 1 finished, 1 diverged (of 2 cells)")
    finish(ids["KD"])
    assert exit_status(plans) == (0, "all 2 cell(s) finished")
    # released ImageNet teacher weights missing under the data root: those cells are blocked (not runnable yet)
    blocked = _namespace(tmp_path, dry_run=True, preset="full", store=str(tmp_path / "s"))
    status, line = exit_status(plan_tables(["table3"], blocked, quiet=True))
    assert status == 3 and " blocked" in line
    # FSP is undefined for wrn_40_2->wrn_40_1 (the papers print n/a): such a cell is not a requested cell
    na = _namespace(tmp_path, dry_run=True, store=str(tmp_path / "s"), methods=["FSP"], pairs=["wrn_40_2->wrn_40_1"])
    assert exit_status(plan_tables(["table1"], na, quiet=True)) == (
        0,
        "all 0 cell(s) finished (and 1 n/a by definition)",
    )


def test_render_only_reports_an_unreadable_record_and_never_counts_it(
    tmp_path: Path, cifar_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks.run import plan_tables
    from benchmarks.store import write_record

    store = tmp_path / "store"
    args = ["table1", "--preset", "smoke", "--methods", "Vanilla", "--pairs", "resnet56->resnet20"]
    args += ["--store", str(store), "--data-root", str(cifar_root)]
    (plan,) = plan_tables(
        ["table1"],
        _namespace(
            tmp_path,
            dry_run=True,
            store=str(store),
            data_root=str(cifar_root),
            methods=["Vanilla"],
            pairs=["resnet56->resnet20"],
        ),
        quiet=True,
    )
    (run_id,) = plan.cells[("Vanilla", "resnet56->resnet20")]
    record = write_record(
        plan.store.run_dir(run_id),
        run_id=run_id,
        info={},
        config="",
        tracked={"best_top1": 1.0},
        epochs=1,
        steps=1,
        fit_seconds=0.1,
        fast_dev_run=False,
        limited=True,
    )
    assert run_main([*args, "--render-only"]) == 0
    record.write_text(record.read_text()[:40])  # truncated by hand
    capsys.readouterr()
    assert run_main([*args, "--render-only"]) == 3
    captured = capsys.readouterr()
    assert f"record {record} unreadable (truncated)" in captured.err and "Traceback" not in captured.err
    assert "not run /" in captured.out and "1 not run (of 1 cells)" in captured.out
    assert (store / "tables" / "table1.smoke.only-Vanilla-resnet56_resnet20.md").is_file()


def test_a_damaged_generated_fixture_is_generated_again(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.run import _data_root

    table = load_table("table1")
    root, synthetic = _data_root(table, str(tmp_path), synthetic_allowed=True)
    assert synthetic and root == str(tmp_path / "synthetic" / "cifar100")
    train = Path(root) / "cifar-100-python" / "train"
    intact = train.read_bytes()
    assert _data_root(table, str(tmp_path), True) == (root, True) and "damaged" not in capsys.readouterr().err
    train.write_bytes(intact[: len(intact) // 3])  # truncated
    assert _data_root(table, str(tmp_path), True) == (root, True)
    assert f"the generated fixture {root} was damaged: generating it again" in capsys.readouterr().err
    assert train.read_bytes() == intact  # the same fixture again (it is seeded)
    assert sorted(p.name for p in (tmp_path / "synthetic").iterdir()) == ["cifar100"]  # nothing left beside it


def test_a_run_whose_record_is_unreadable_is_trained_again(tmp_path: Path, cifar_root: Path) -> None:
    store = RunStore(tmp_path)
    plan = build_plan(
        load_table("table1"),
        load_preset("smoke"),
        store,
        data_root=str(cifar_root),
        pairs=["resnet56->resnet20"],
        methods=["Vanilla"],
    )
    (spec,) = plan.ordered()
    spec.config["run"]["wandb"] = "disabled"
    assert execute_run(spec, store).status == "finished"
    record = store.run_dir(spec.run_id) / "record.json"
    record.write_text(record.read_text()[:100])
    assert not store.is_finished(spec.run_id)
    assert execute_run(spec, store).status == "finished"
    assert store.is_finished(spec.run_id)
    (aside,) = record.parent.glob("record.json.unreadable-*")
    assert len(aside.read_text()) == 100  # kept, never deleted


@pytest.mark.slow
def test_sigterm_stops_parallel_lanes_with_checkpoints_and_the_same_command_resumes(tmp_path: Path) -> None:
    """`kill <runner>` (SIGTERM to the runner only) while two lanes train: both runs save a checkpoint and stop, the
    runner says how far it got and exits 143, no lane is left; the same command then finishes the table."""
    preset = tmp_path / "long.yaml"
    preset.write_text(
        "trials: 2\nsynthetic_data: true\nwandb: disabled\nlauncher: parallel\n"
        "config:\n  trainer: {max_epochs: 1, max_steps: -1, val_check_interval: 1.0, check_val_every_n_epoch: 1,"
        " limit_train_batches: 60, limit_val_batches: 2, enable_progress_bar: false, enable_model_summary: false}\n"
        "  data: {init_args: {batch_size: 8, eval_batch_size: 100}}\n  run: {checkpoint_every_n_steps: 2}\n"
    )
    store = tmp_path / "store"
    args = [
        sys.executable,
        "-m",
        "benchmarks.run",
        "fmnist",
        "--preset",
        str(preset),
        "--methods",
        "Vanilla",
        "--jobs",
        "2",
        "--store",
        str(store),
        "--data-root",
        str(tmp_path / "data"),
    ]
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONPATH=str(REPO_ROOT))
    process = subprocess.Popen(
        args, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 300
    lanes: set[int] = set()
    while time.time() < deadline and len(lanes) < 2:
        lanes = {
            json.loads(p.read_text() or "{}").get("pid")
            for p in store.glob("runs/*/claims/000001.json")
            if (p.parent.parent / "checkpoints" / "last.ckpt").is_file()
        } - {None}
        time.sleep(0.05)
    assert len(lanes) == 2, "two runs never trained side by side"
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 143, out[-3000:]
    assert "interrupted (SIGTERM): 0 finished, 2 left; run the same command to resume" in out, out[-3000:]
    assert "FAILED" not in out and not list(store.glob("runs/*/failed.json"))
    time.sleep(1)
    assert all(not Path(f"/proc/{pid}").exists() for pid in lanes), "a lane outlived its runner"
    events = [json.loads(line) for line in (store / "claims.log").read_text().splitlines()]
    assert sorted(e["outcome"] for e in events if e["event"] == "release") == ["interrupted", "interrupted"]
    again = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in store.glob("runs/*/record.json")]
    assert len(records) == 2 and all(r["resumes"] == 1 and r["steps"] == 60 for r in records)
