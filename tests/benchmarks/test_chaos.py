"""Chaos: three runners on one store, killed and stopped at random moments, end with exactly what a clean launch makes.

The table: fmnist (resnet20 -> resnet8; Fashion-MNIST, Debian's copy when installed, else the generated fixture),
rows Vanilla and KD, 3 trials: the teacher, 3 Vanilla and 3 KD students (7 runs), each 20 steps over epochs of 8
steps, evaluated every 5 steps, with a checkpoint every 3 steps, under a preset file written by the test.  Three runners (`python -m benchmarks.run ...`, the same command, sequential
launcher) share one store.  A seeded schedule sends SIGKILL, SIGTERM or SIGINT to a runner

* while it trains a run (a random delay after it claimed it),
* while it writes a checkpoint (``last.ckpt.tmp-<pid>`` exists: ``KDBENCH_CHAOS_WRITE_DELAY`` holds every atomic
  write open for a moment so that a kill can land inside it), or
* while it writes a run's record (``record.json.tmp-<pid>-...`` exists),

and starts the runner again.  At the end: every run has exactly one record and no ``failed.json``; the claim log
shows each run trained by one runner at a time (a generation is taken over only after its owner was killed);
the metrics, ``metrics.csv`` and final weights equal those of a clean, uninterrupted launch (CPU, one thread).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.tables import REPO_ROOT

pytestmark = pytest.mark.slow

PRESET = """\
# the chaos test's preset: short runs with frequent exact-resume checkpoints, W&B off
trials: 3
synthetic_data: true
wandb: disabled
launcher: sequential
config:
  trainer:
    max_epochs: -1
    max_steps: 20
    val_check_interval: 5
    check_val_every_n_epoch: null
    limit_train_batches: 8
    limit_val_batches: 2  # not 1: jsonargparse reads the Trainer's float|int annotation as 1.0, i.e. every batch
    log_every_n_steps: 4
    enable_progress_bar: false
    enable_model_summary: false
  data:
    init_args: {batch_size: 8, eval_batch_size: 100}
  run:
    checkpoint_every_n_steps: 3
"""
SEED = 20260315
INJECTIONS = 12
SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)


def _command(preset: Path, store: Path, data: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "benchmarks.run",
        "fmnist",
        "--preset",
        str(preset),
        "--methods",
        "Vanilla,KD",
        "--launcher",
        "sequential",
        "--store",
        str(store),
        "--data-root",
        str(data),
    ]


def _environment(chaos: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        OMP_NUM_THREADS="1",  # one thread everywhere: CPU results are then bit-for-bit reproducible
        MKL_NUM_THREADS="1",
        WANDB_MODE="disabled",
        KDBENCH_CLAIM_TIMEOUT="120",  # a killed owner is noticed by its dead pid, not by a timeout
        KDBENCH_HEARTBEAT_SECONDS="2",
        KDBENCH_ELSEWHERE_POLL="0.5",
    )
    if chaos:
        env["KDBENCH_CHAOS_WRITE_DELAY"] = "0.15"
    return env


class Runner:
    def __init__(self, index: int, command: list[str], env: dict[str, str], logs: Path) -> None:
        self.index, self.command, self.env, self.logs = index, command, env, logs
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.exits: list[int] = []

    def start(self) -> None:
        self.starts += 1
        log = open(self.logs / f"runner{self.index}.{self.starts}.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(self.command, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _pid_of(name: str) -> int | None:
    """The writer's pid in ``<file>.tmp-<pid>[-<hex>]``."""
    tail = name.rsplit(".tmp-", 1)[-1]
    digits = tail.split("-", 1)[0]
    return int(digits) if digits.isdigit() else None


def _claims(store: Path) -> list[tuple[Path, dict, bool]]:
    found = []
    for path in store.glob("runs/*/claims/*.json"):
        try:
            data = json.loads(path.read_text() or "{}")
        except (OSError, ValueError):
            continue
        found.append((path, data, path.with_suffix(".released").exists()))
    return found


def _find_target(
    phase: str, store: Path, runners: list[Runner], delay: float, signalled: dict[int, float]
) -> tuple[Runner, str] | None:
    by_pid = {r.pid: r for r in runners if r.alive() and r.pid not in signalled}
    if phase == "checkpoint":
        for path in store.glob("runs/*/checkpoints/last.ckpt.tmp-*"):
            pid = _pid_of(path.name)
            if pid in by_pid:
                return by_pid[pid], str(path.relative_to(store))
    elif phase == "record":
        for path in store.glob("runs/*/record.json.tmp-*"):
            pid = _pid_of(path.name)
            if pid in by_pid:
                return by_pid[pid], str(path.relative_to(store))
    else:
        for path, data, released in _claims(store):
            run_dir = path.parent.parent
            if released or data.get("pid") not in by_pid or (run_dir / "record.json").exists():
                continue
            if time.time() - float(data.get("claimed_at", time.time())) >= delay:
                return by_pid[data["pid"]], str(run_dir.name)
    return None


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def test_three_runners_killed_at_random_moments_end_like_a_clean_launch(tmp_path: Path) -> None:
    preset = tmp_path / "chaos.yaml"
    preset.write_text(PRESET)
    logs = tmp_path / "logs"
    logs.mkdir()
    store, data = tmp_path / "store", tmp_path / "data"
    command = _command(preset, store, data)
    env = _environment(chaos=True)
    runners = [Runner(i, command, env, logs) for i in range(3)]
    for runner in runners:
        runner.start()

    rng = random.Random(SEED)
    phases = ["training"] * 6 + ["checkpoint"] * 3 + ["record"] * 3
    rng.shuffle(phases)
    schedule = [(phase, rng.choice(SIGNALS), rng.uniform(0.3, 2.5)) for phase in phases[:INJECTIONS]]
    injected: list[dict] = []
    killed_at: dict[int, float] = {}  # runner pid -> when it was killed or stopped
    started = time.time()

    def keep_alive() -> None:
        for runner in runners:
            if runner.process is not None and not runner.alive():
                code = runner.process.wait()
                runner.exits.append(code)
                if runner.pid not in killed_at:
                    killed_at[runner.pid] = time.time()  # exited on its own (or after our signal)
                if code in (0,):
                    continue
                assert code in (130, 143, -2, -9, -15), f"runner {runner.index} exited with {code}: see {logs}"
                runner.start()

    for phase, signum, delay in schedule:
        deadline = time.time() + 150
        while time.time() < deadline:
            keep_alive()
            found = _find_target(phase, store, runners, delay, killed_at)
            if found is not None:
                runner, where = found
                os.kill(runner.pid, signum)
                killed_at.setdefault(runner.pid, time.time())
                injected.append(
                    {
                        "phase": phase,
                        "signal": signal.Signals(signum).name,
                        "at": round(time.time() - started, 2),
                        "where": where,
                        "pid": runner.pid,
                    }
                )
                if signum == signal.SIGKILL:
                    runner.process.wait()  # type: ignore[union-attr]
                break
            if all(r.exits and r.exits[-1] == 0 and not r.alive() for r in runners):
                break  # everything finished before this injection could land
            time.sleep(0.01)
    # No more injections: let the runners finish (starting again those that were stopped).
    deadline = time.time() + 400
    while time.time() < deadline:
        keep_alive()
        if all(not r.alive() and r.exits and r.exits[-1] == 0 for r in runners):
            break
        time.sleep(0.1)
    chaos_seconds = time.time() - started
    assert all(r.exits and r.exits[-1] == 0 for r in runners), f"runners did not finish: {[r.exits for r in runners]}"

    # The same table, clean: one runner, no injections, another store.
    clean_store, clean_data = tmp_path / "clean", tmp_path / "clean-data"
    clean = subprocess.run(
        _command(preset, clean_store, clean_data),
        cwd=REPO_ROOT,
        env=_environment(chaos=False),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert clean.returncode == 0, clean.stdout[-3000:] + clean.stderr[-3000:]
    run_ids = sorted(p.name for p in (clean_store / "runs").iterdir())
    assert len(run_ids) == 7  # teacher + 3 Vanilla + 3 KD

    # Every run has exactly one record, none failed.
    assert sorted(p.name for p in (store / "runs").iterdir()) == run_ids
    for run_id in run_ids:
        run_dir = store / "runs" / run_id
        assert [p.name for p in run_dir.glob("record.json")] == ["record.json"]
        assert not list(run_dir.glob("failed.json")), (run_dir / "failed.json").read_text()
    assert not list(store.glob("runs/*/record.json.*")), "no record was moved aside: none was ever unreadable"

    # Each run was trained by one runner at a time (claims.log).
    log = [json.loads(line) for line in (store / "claims.log").read_text().splitlines()]
    for run_id in run_ids:
        events = [e for e in log if e["run"] == run_id]
        starts = [e for e in events if e["event"] in ("claim", "takeover")]
        assert [e["gen"] for e in starts] == list(range(1, len(starts) + 1)), events
        releases = {e["gen"]: e for e in events if e["event"] == "release"}
        assert not [e for e in events if e["event"] == "lost"]
        for previous, current in zip(starts, starts[1:]):
            if current["event"] == "claim":  # the previous owner released it before
                assert previous["gen"] in releases and releases[previous["gen"]]["t"] <= current["t"], events
            else:  # a take-over: only of an owner that was dead by then
                assert current["previous"]["pid"] == previous["pid"] and previous["gen"] not in releases
                assert previous["pid"] in killed_at and killed_at[previous["pid"]] <= current["t"], (events, killed_at)
        finished = [e for e in releases.values() if e["outcome"] == "finished"]
        assert len(finished) <= 1

    # The final metrics, logs and weights equal the clean launch's.
    for run_id in run_ids:
        ours, theirs = store / "runs" / run_id, clean_store / "runs" / run_id
        record, reference = (
            json.loads((ours / "record.json").read_text()),
            json.loads((theirs / "record.json").read_text()),
        )
        assert record["metrics"] == reference["metrics"], run_id
        assert record["steps"] == reference["steps"] == 20
        assert (ours / "csv" / "metrics.csv").read_text() == (theirs / "csv" / "metrics.csv").read_text(), run_id
        weights, expected = _state_dict(ours / "final.pth"), _state_dict(theirs / "final.pth")
        assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in weights)

    survived = len(injected)
    resumed = sum(json.loads((store / "runs" / r / "record.json").read_text())["resumes"] > 0 for r in run_ids)
    by_kind = {k: sum(1 for i in injected if i["phase"] == k) for k in ("training", "checkpoint", "record")}
    by_signal = {s.name: sum(1 for i in injected if i["signal"] == s.name) for s in SIGNALS}
    print(
        f"\nchaos: {survived} injections survived in {chaos_seconds:.0f}s ({by_kind}, {by_signal}); "
        f"{sum(r.starts for r in runners)} runner starts; {resumed} of 7 runs resumed; "
        f"takeovers {sum(1 for e in log if e['event'] == 'takeover')}"
    )
    for item in injected:
        print(f"  {item}")
    assert survived >= 10, injected
    assert all(by_signal.values()) and all(by_kind.values()), injected
    assert resumed >= 1
