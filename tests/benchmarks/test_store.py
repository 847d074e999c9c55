"""The store: exclusive claims, race-free take-over of dead or silent owners, unreadable records healed."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from benchmarks.store import Claim, ClaimOwner, RunStore, write_record

RUN = "0123456789abcdef"


def _claim_in_child(root: str, barrier: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue) -> None:
    store = RunStore(root)
    barrier.wait()
    held = store.claim(RUN, note="child")
    results.put((os.getpid(), isinstance(held, Claim), held.owner.pid if isinstance(held, Claim) else held.pid))
    time.sleep(1.0)  # keep the claim (and this pid) alive while the others look


def _race(root: Path, count: int) -> list[tuple[int, bool, int]]:
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(count), context.Queue()
    processes = [context.Process(target=_claim_in_child, args=(str(root), barrier, results)) for _ in range(count)]
    for process in processes:
        process.start()
    outcome = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    return outcome


def test_of_many_runners_claiming_at_once_exactly_one_wins(tmp_path: Path) -> None:
    outcome = _race(tmp_path, 8)
    winners = [pid for pid, won, _ in outcome if won]
    assert len(winners) == 1
    assert all(owner == winners[0] for _, won, owner in outcome if not won)  # the others see the winner
    events = RunStore(tmp_path).claim_log()
    assert [e["event"] for e in events] == ["claim"] and events[0]["pid"] == winners[0]


def test_a_dead_owner_is_taken_over_exactly_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    first = context.Process(target=lambda: RunStore(tmp_path).claim(RUN))  # claims, then exits without releasing
    first.start()
    first.join()
    assert RunStore(tmp_path).claim_owner(RUN) is None  # a dead pid on this host: anyone may take it
    outcome = _race(tmp_path, 6)
    winners = [pid for pid, won, _ in outcome if won]
    assert len(winners) == 1
    events = RunStore(tmp_path).claim_log()
    assert [(e["event"], e["gen"]) for e in events] == [("claim", 1), ("takeover", 2)]
    assert events[1]["previous"]["pid"] == first.pid and events[1]["reason"].endswith("is dead")


def _foreign_claim(store: RunStore, age: float, host: str = "another-machine") -> Path:
    folder = store.run_dir(RUN) / "claims"
    folder.mkdir(parents=True)
    path = folder / "000001.json"
    path.write_text(json.dumps({"host": host, "pid": 4242, "token": "t", "claimed_at": time.time() - age}))
    os.utime(path, (time.time() - age, time.time() - age))  # the heartbeat
    return path


def test_an_owner_on_another_machine_counts_by_its_heartbeat(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    _foreign_claim(store, age=5.0)
    owner = store.claim(RUN, timeout=60)
    assert isinstance(owner, ClaimOwner) and owner.who == "another-machine:4242"
    taken = store.claim(RUN, timeout=3)  # the same claim, judged with a 3 s timeout: silent for 5 s, abandoned
    assert isinstance(taken, Claim) and taken.generation == 2
    assert "sent no heartbeat for 5s" in store.claim_log()[-1]["reason"]


def test_a_reused_pid_is_not_the_owner(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    mine = store.claim(RUN)
    assert isinstance(mine, Claim)
    data = json.loads(mine.owner.path.read_text())
    data["pid_start"] = "1"  # our pid, but a process that started at another time: the pid was reused
    mine.owner.path.write_text(json.dumps(data))
    again = store.claim(RUN)
    assert isinstance(again, Claim) and again.generation == 2


def test_release_lets_the_next_runner_claim_and_a_taken_over_owner_notices(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    first = store.claim(RUN)
    assert isinstance(first, Claim)
    first.release("interrupted")
    second = store.claim(RUN)
    assert isinstance(second, Claim) and second.generation == 2 and second.taken_from is None
    third = store.claim(RUN, timeout=-1)  # as if second's heartbeat looked dead to someone
    assert isinstance(third, Claim) and third.generation == 3
    assert not second.check() and second.lost
    second.release("finished")  # a lost claim leaves no release marker: generation 3 stays the live one
    assert store.claim_owner(RUN) is not None and store.claim_owner(RUN).generation == 3
    assert [e["event"] for e in store.claim_log()] == ["claim", "release", "claim", "takeover", "lost"]


def test_the_heartbeat_thread_refreshes_the_claim(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    claim = store.claim(RUN)
    assert isinstance(claim, Claim)
    os.utime(claim.owner.path, (time.time() - 100, time.time() - 100))
    claim.start_heartbeat(interval=0.05)
    time.sleep(0.3)
    claim.release("finished")
    assert time.time() - claim.owner.path.stat().st_mtime < 5


def _record(store: RunStore, text: str | None = None) -> Path:
    write_record(
        store.run_dir(RUN),
        run_id=RUN,
        info={},
        config="",
        tracked={"best_top1": 1.0},
        epochs=1,
        steps=1,
        fit_seconds=0.1,
        fast_dev_run=False,
        limited=True,
    )
    path = store.run_dir(RUN) / "record.json"
    if text is not None:
        path.write_text(text)
    return path


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda text: text[: len(text) // 2], "unreadable (truncated)"),
        (lambda text: text[: text.index(RUN) + 4], "unreadable (truncated)"),  # cut inside a string
        (lambda text: text[: text.index(",") + 1], "unreadable (truncated)"),  # cut after a comma
        (lambda text: "\x00\xff garbage", "unreadable"),
        (lambda text: json.dumps({"metrics": {}}), "has no metrics"),
        (lambda text: "[1, 2]", "holds a JSON list"),
    ],
)
def test_an_unreadable_record_is_reported_moved_aside_and_never_counts(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage,
    reason,  # type: ignore[no-untyped-def]
) -> None:
    store = RunStore(tmp_path)
    path = _record(store)
    assert store.is_finished(RUN)
    damaged = damage(path.read_text())
    path.write_text(damaged)
    assert store.record(RUN) is None and not store.is_finished(RUN)
    assert f"record {path}" in capsys.readouterr().err  # reported with its path
    message = store.heal(RUN)
    assert message is not None and reason in message
    assert not path.exists()
    aside = list(path.parent.glob("record.json.*"))
    assert len(aside) == 1 and aside[0].read_text() == damaged  # moved, never deleted
    assert store.heal(RUN) is None  # nothing left to heal


def test_killed_writers_leave_temporaries_that_the_next_owner_sweeps(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    run_dir = store.run_dir(RUN)
    (run_dir / "checkpoints").mkdir(parents=True)
    dead = (run_dir / "checkpoints" / "last.ckpt.tmp-999999", run_dir / "record.json.tmp-999999-abc123")
    alive = run_dir / f"record.json.tmp-{os.getppid()}-abc123"  # a live writer (our parent process)
    for path in (*dead, alive, run_dir / "final.pth.tmp"):
        path.write_text("partial")
    assert store.sweep_temporaries(RUN) == 3
    assert alive.exists() and not any(p.exists() for p in dead)
