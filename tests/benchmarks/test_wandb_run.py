"""A CLI run logged to W&B offline stands alone: its run file holds the complete config and the summary.

The offline run folder's ``run-<id>.wandb`` is read back with W&B's own record definitions
(``wandb.proto.wandb_internal_pb2.Record``); the file is W&B's LevelDB-style log: a 7-byte header (``:W&B``, the
magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each ``crc32c (4) | length (2, little endian) | type (1)``
and the data, type 1 a whole record, 2/3/4 its first/middle/last piece.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks.cli import KDBenchCLI

BLOCK = 32 * 1024
HEADER = 7


def read_wandb_records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    raw = path.read_bytes()
    assert raw[:4] == b":W&B" and struct.unpack("<H", raw[4:6])[0] == 0xBEE1, "not a W&B run file"
    records, pending, offset = [], b"", HEADER
    while offset + HEADER <= len(raw):
        left_in_block = BLOCK - offset % BLOCK
        if left_in_block < HEADER:  # a block's tail too short for a chunk header is padding
            offset += left_in_block
            continue
        length, kind = struct.unpack("<HB", raw[offset + 4 : offset + 7])
        if length == 0 and kind == 0:
            offset += left_in_block
            continue
        data = raw[offset + HEADER : offset + HEADER + length]
        offset += HEADER + length
        pending = data if kind in (1, 2) else pending + data
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _items(update: Any) -> dict[str, Any]:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in update}


@pytest.fixture(scope="module")
def offline_run(cifar_root: Path, trained_teacher: Path, tmp_path_factory: pytest.TempPathFactory, fit_args):  # type: ignore[no-untyped-def]
    run_dir = tmp_path_factory.mktemp("wandb-run")
    import os

    os.environ.setdefault("WANDB_SILENT", "true")
    KDBenchCLI(
        args=fit_args(
            cifar_root,
            run_dir,
            "--model=KD",
            "--model.student=resnet8",
            "--model.teacher.arch=resnet8",
            f"--model.teacher.checkpoint={trained_teacher}",
            "--model.optim.schedule=cosine",
            "--model.optim.unit=step",
            "--trainer.limit_train_batches=4",
            "--trainer.log_every_n_steps=1",
            "--seed_everything=3",
            "--run.wandb=offline",
            "--run.run_id=abc123def4567890",
            "--run.table=table1",
            "--run.pair=resnet8->resnet8",
            "--run.method=KD",
            "--run.trial=0",
            "--run.recipe=crd_cifar100",
            "--run.preset=smoke",
        )
    )
    (folder,) = sorted((run_dir / "wandb").glob("offline-run-*-abc123def4567890"))
    # W&B's service writes the run file behind the run: the last records (summary, exit) land after finish()
    # returns; the run file is complete once its exit record is there.
    deadline = time.monotonic() + 60
    while True:
        records = read_wandb_records(folder / "run-abc123def4567890.wandb")
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return run_dir, records
        time.sleep(0.5)


def test_offline_run_holds_the_complete_config(offline_run, trained_teacher: Path) -> None:  # type: ignore[no-untyped-def]
    run_dir, records = offline_run
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.run_id, run.run_group, run.job_type) == ("abc123def4567890", "table1", "KD")
    assert {"table1", "resnet8->resnet8", "KD", "crd_cifar100", "trial0"} <= set(run.tags)
    config = _items(run.config.update)
    for record in records:
        if record.WhichOneof("record_type") == "config":
            config.update(_items(record.config.update))
    values = {k: v.get("value", v) if isinstance(v, dict) else v for k, v in config.items()}
    assert values["run_id"] == "abc123def4567890" and values["preset"] == "smoke" and values["seed"] == 3
    assert (values["table"], values["pair"], values["method"], values["trial"]) == (
        "table1",
        "resnet8->resnet8",
        "KD",
        0,
    )
    assert values["trainer"]["limit_train_batches"] == 4 and values["trainer"]["max_epochs"] == 1
    assert values["data"]["init_args"]["batch_size"] == 16 and values["data"]["class_path"].endswith("CIFAR100")
    optim = values["model"]["init_args"]["optim"]
    assert (optim["schedule"], optim["unit"], optim["lr"]) == ("cosine", "step", 0.05)
    assert values["model"]["init_args"]["temperature"] == 4.0  # a default, resolved
    digest = hashlib.sha256(trained_teacher.read_bytes()).hexdigest()[:16]
    assert values["teacher_digest"] == f"sha256:{digest}"
    assert values["numerics"]["cpu_threads"] >= 1 and "float32_matmul_precision" in values["numerics"]
    assert values["versions"]["torch"]


def test_offline_run_holds_the_summary_and_a_per_step_learning_rate(offline_run) -> None:  # type: ignore[no-untyped-def]
    run_dir, records = offline_run
    record = json.loads((run_dir / "record.json").read_text())
    summary: dict[str, Any] = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update(_items(r.summary.update))
    for key in ("best_top1", "best_top5", "last_top1", "last_top5"):
        assert summary[key] == pytest.approx(record["metrics"][key]), key
    assert summary["wall_seconds"] == pytest.approx(record["wall_seconds"], abs=0.01) and summary["steps"] == 4
    history = [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    lrs = [h["lr-SGD"] for h in history if "lr-SGD" in h]
    # 4 steps of a cosine from 0.05 to 0 over 4 steps: 0.05 * (1 + cos(pi * t / 4)) / 2 for t = 0..3
    expected = [0.05 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(4)]
    assert lrs == pytest.approx(expected), lrs
    note = json.loads((run_dir / "wandb.json").read_text())
    assert note["id"] == "abc123def4567890" and note["offline"] is True
