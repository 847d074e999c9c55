"""Launchers: parallel local processes (CPU here) and SLURM arrays through submitit's local executor, one store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.launch import ParallelLauncher, SubmititLauncher, _levels
from benchmarks.plan import build_plan, load_preset
from benchmarks.render import write_table
from benchmarks.store import RunStore
from benchmarks.tables import load_table

PAIR = "resnet56->resnet20"


def _smoke_plan(store: RunStore, data_root: Path, methods: list[str]):  # type: ignore[no-untyped-def]
    preset = load_preset("smoke")
    preset.wandb = "disabled"  # no W&B processes in tests
    return build_plan(load_table("table1"), preset, store, data_root=str(data_root), pairs=[PAIR], methods=methods)


FAKE_RUN = """
import json, os, sys, time
from pathlib import Path
config = Path(sys.argv[1])
started = time.time()
time.sleep(float(os.environ.get("FAKE_SECONDS", "0.6")))
if "fail" in os.environ.get("FAKE_FAIL", "") and config.parent.name in os.environ["FAKE_FAIL"]:
    (config.parent / "failed.json").write_text(json.dumps({"error": "fake failure"}))
    sys.exit(1)
record = {"metrics": {"best_top1": 1.0}, "started": started, "ended": time.time(),
          "visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "threads": os.environ.get("OMP_NUM_THREADS")}
(config.parent / "record.json").write_text(json.dumps(record))
"""


def test_parallel_launcher_schedules_processes_by_slot_and_dependency(
    tmp_path: Path, cifar_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scheduling, with a stand-in run command (a process that sleeps and writes a record)."""
    import json
    import sys

    script = tmp_path / "fake_run.py"
    script.write_text(FAKE_RUN)
    store = RunStore(tmp_path / "store")
    plan = _smoke_plan(store, cifar_root, ["Vanilla", "KD"])
    runs = plan.ordered()
    assert [s.kind for s in runs] == ["teacher", "student", "student"]  # teacher, Vanilla, KD (after the teacher)
    teacher, vanilla, kd = (s.run_id for s in runs)
    lines: list[str] = []
    launcher = ParallelLauncher(
        jobs=2, gpus=[], poll_seconds=0.05, printer=lines.append, command=[sys.executable, str(script)]
    )
    report = launcher.launch(runs, store)
    assert report.counts["finished"] == 3, lines
    times = {rid: store.record(rid) for rid in (teacher, vanilla, kd)}
    assert launcher.peak_running == 2
    assert times[vanilla]["started"] < times[teacher]["ended"]  # side by side
    assert times[kd]["started"] >= times[teacher]["ended"]  # after the run it depends on
    # No GPUs: nothing is pinned, and the CPU threads are split between the 2 concurrent runs.
    threads = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // 2)))
    assert times[kd]["visible"] == os.environ.get("CUDA_VISIBLE_DEVICES") and times[kd]["threads"] == threads
    assert all((store.run_dir(rid) / "launcher.log").is_file() for rid in times)

    # A failed teacher: its dependants are skipped, the independent run still runs.
    store2 = RunStore(tmp_path / "store2")
    plan2 = _smoke_plan(store2, cifar_root, ["Vanilla", "KD"])
    monkeypatch.setenv("FAKE_FAIL", f"fail:{plan2.ordered()[0].run_id}")
    fake = [sys.executable, str(script)]
    report = ParallelLauncher(jobs=2, gpus=[], poll_seconds=0.05, printer=lines.append, command=fake).launch(
        plan2.ordered(), store2
    )
    assert {k: v for k, v in report.counts.items() if v} == {"finished": 1, "failed": 1, "blocked": 1}
    assert any("FAILED (fake failure)" in line for line in lines)
    assert (
        json.loads((store2.run_dir(plan2.ordered()[0].run_id) / "failed.json").read_text())["error"] == "fake failure"
    )


@pytest.mark.slow
def test_parallel_launcher_runs_real_runs_side_by_side(tmp_path: Path, cifar_root: Path) -> None:
    store = RunStore(tmp_path / "store")
    plan = _smoke_plan(store, cifar_root, ["Vanilla", "KD"])
    runs = plan.ordered()
    lines: list[str] = []
    launcher = ParallelLauncher(jobs=2, gpus=[], poll_seconds=0.1, printer=lines.append)
    report = launcher.launch(runs, store)
    assert report.counts["finished"] == 3 and report.counts["failed"] == 0, lines
    assert launcher.peak_running == 2
    # The teacher and Vanilla start side by side and share the cores; each lane ran with the share it was given.
    teacher, vanilla, kd = (s.run_id for s in runs)
    cores = os.cpu_count() or 1
    assert launcher.thread_shares[teacher] == launcher.thread_shares[vanilla] == max(1, cores // 2)
    assert all(store.record(rid)["cpu_threads"] == launcher.thread_shares[rid] for rid in (teacher, vanilla, kd))
    again = ParallelLauncher(jobs=2, gpus=[], printer=lines.append).launch(runs, store)
    assert again.counts["skipped"] == 3 and again.counts["finished"] == 0


@pytest.mark.slow
def test_a_lane_run_that_nothing_else_can_run_beside_gets_every_core(tmp_path: Path, cifar_root: Path) -> None:
    """KD alone: the teacher, then KD, each the only run that can go, so each takes all the CPU threads."""
    store = RunStore(tmp_path / "store")
    runs = _smoke_plan(store, cifar_root, ["KD"]).ordered()
    lines: list[str] = []
    launcher = ParallelLauncher(jobs=2, gpus=[], poll_seconds=0.05, printer=lines.append)
    report = launcher.launch(runs, store)
    assert report.counts["finished"] == 2, lines
    cores = os.cpu_count() or 1
    assert launcher.peak_running == 1
    assert {store.record(s.run_id)["cpu_threads"] for s in runs} == {cores}
    assert launcher.thread_shares == {s.run_id: cores for s in runs}


def test_execute_entry_point_runs_a_written_config(tmp_path: Path, cifar_root: Path) -> None:
    """``python -m benchmarks.execute <config>`` (what the parallel launcher starts), here in-process."""
    from benchmarks.execute import main as execute_main
    from benchmarks.execute import write_config

    store = RunStore(tmp_path / "store")
    (spec,) = _smoke_plan(store, cifar_root, ["Vanilla"]).ordered()
    path = write_config(spec, store)
    assert execute_main([str(path)]) == 0 and store.is_finished(spec.run_id)
    assert execute_main([str(path)]) == 0  # already finished: skipped


def test_parallel_launcher_pins_gpus_and_gives_ddp_runs_whole_gpus() -> None:
    launcher = ParallelLauncher(per_gpu=2, gpus=["0", "1"])
    free = launcher._capacity()
    assert free == {"0": 2, "1": 2}
    assert launcher._claim(free, 1) == ["0"]
    free["0"] -= 1
    assert launcher._claim(free, 2) is None  # GPU 0 is partly busy: a 2-GPU DDP run waits for two whole GPUs
    free["0"] += 1
    assert launcher._claim(free, 2) == ["0", "1"]
    assert launcher._environment(["1"])["CUDA_VISIBLE_DEVICES"] == "1"


def test_submitit_local_executor_runs_a_two_run_table_end_to_end(tmp_path: Path, cifar_root: Path) -> None:
    store = RunStore(tmp_path / "store")
    plan = _smoke_plan(store, cifar_root, ["KD"])
    runs = plan.ordered()
    assert len(runs) == 2 and [len(level) for level in _levels(runs)] == [1, 1]  # teacher, then KD
    lines: list[str] = []
    launcher = SubmititLauncher(
        tmp_path / "slurm", cluster="local", parameters={"timeout_min": 10}, gpu=False, printer=lines.append
    )
    report = launcher.launch(runs, store)
    assert report.counts["finished"] == 2 and report.counts["failed"] == 0, lines
    assert sum("submitted 1 run(s) as array" in line for line in lines) == 2
    path, text = write_table(plan, tmp_path / "rendered")
    kd_line = next(line for line in text.splitlines() if line.startswith("| KD (paper: NORM T1)"))
    assert "(1) / 70.66 /" in kd_line  # ours (n = 1) beside NORM T1's published KD number for resnet56->resnet20
    assert (tmp_path / "rendered" / "table1.smoke.png").stat().st_size > 0


def test_no_wait_needs_slurm(tmp_path: Path, cifar_root: Path) -> None:
    from benchmarks.errors import KDBenchError

    store = RunStore(tmp_path / "store")
    plan = _smoke_plan(store, cifar_root, ["Vanilla"])
    launcher = SubmititLauncher(tmp_path / "slurm", cluster="local", gpu=False, wait=False, printer=lambda _: None)
    with pytest.raises(KDBenchError, match="--no-wait chains SLURM arrays by job dependency"):
        launcher.launch(plan.ordered(), store)


def test_a_preempted_submitit_job_is_requeued_and_ends_with_the_uninterrupted_record(
    tmp_path: Path, cifar_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """submitit's local executor, its pre-emption signal (USR2) sent to the job's process while it trains: the run
    saves a checkpoint at the next step, submitit requeues the job, the requeued job resumes and finishes with the
    record (metrics, weights) of the same run never interrupted."""
    import json
    import signal
    import time

    import submitit
    import torch

    from benchmarks.execute import dump_config
    from benchmarks.launch import SubmititRun
    from benchmarks.tables import REPO_ROOT

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # both jobs alike, and reproducible on a CPU
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("KDBENCH_CHAOS_WRITE_DELAY", "0.05")  # a little longer to train, so the signal lands in it
    store = tmp_path / "store"
    paths = {}
    for name in ("reference", "preempted"):
        run_dir = store / "runs" / name
        run_dir.mkdir(parents=True)
        config = {
            "seed_everything": 0,
            "trainer": {
                "max_epochs": 5,
                "limit_train_batches": 8,
                "limit_val_batches": 1,
                "accelerator": "cpu",
                "enable_progress_bar": False,
                "enable_model_summary": False,
            },
            "model": {"class_path": "kd_modules.Vanilla", "init_args": {"student": "resnet8"}},
            "data": {
                "class_path": "datamodules.CIFAR100",
                "init_args": {"root": str(cifar_root), "batch_size": 16, "eval_batch_size": 100},
            },
            "run": {"dir": str(run_dir), "run_id": name, "wandb": "disabled", "checkpoint_every_n_steps": 4},
        }
        (run_dir / "config.yaml").write_text(dump_config(config))
        paths[name] = run_dir
    executor = submitit.AutoExecutor(folder=str(tmp_path / "jobs" / "%j"), cluster="local")
    executor.update_parameters(timeout_min=20)
    reference = executor.submit(SubmititRun(str(paths["reference"] / "config.yaml")))
    assert reference.result()["status"] == "finished"

    job = executor.submit(SubmititRun(str(paths["preempted"] / "config.yaml")))
    run_dir = paths["preempted"]
    deadline = time.time() + 300
    pid = None
    while time.time() < deadline and pid is None:
        claim = run_dir / "claims" / "000001.json"
        if (run_dir / "checkpoints" / "last.ckpt").is_file() and claim.is_file():
            pid = json.loads(claim.read_text())["pid"]  # the job's training process
        time.sleep(0.01)
    assert pid is not None, "the job never got to train"
    os.kill(pid, signal.SIGUSR2)  # submitit's pre-emption signal
    outcome = job.result()
    assert outcome["status"] == "finished" and outcome["resumed"], outcome
    stdout = job.stdout() or ""
    assert "Requeued job" in stdout or "requeue" in stdout.lower(), stdout[-2000:]
    events = [json.loads(line) for line in (store / "claims.log").read_text().splitlines()]
    mine = [(e["event"], e.get("outcome")) for e in events if e["run"] == "preempted"]
    assert mine == [("claim", None), ("release", "interrupted"), ("claim", None), ("release", "finished")]
    record = json.loads((run_dir / "record.json").read_text())
    expected = json.loads((paths["reference"] / "record.json").read_text())
    assert record["resumes"] == 1 and record["metrics"] == expected["metrics"] and record["steps"] == 40
    weights = torch.load(run_dir / "final.pth", weights_only=False)["state_dict"]
    reference_weights = torch.load(paths["reference"] / "final.pth", weights_only=False)["state_dict"]
    assert all(torch.equal(weights[k], reference_weights[k]) for k in reference_weights)
    assert not (run_dir / "failed.json").exists()
