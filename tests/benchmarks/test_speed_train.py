"""``python -m benchmarks.speed train`` times every arm of a planned run and writes a table (a tiny run here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.speed import main


def test_train_times_every_arm_and_writes_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "speed.md"
    code = main(
        [
            "train", "--table", "table1", "--pair", "resnet56->resnet20", "--method", "CRD",
            "--arms", "kdbench,reference,cached,ce", "--steps", "1", "--warmup", "1", "--repeats", "2",
            "--images", "48", "--batch-size", "8", "--cache-fill", "stand-in", "--workers", "0", "--threads", "1",
            "--data-root", str(tmp_path / "no-data"), "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["data"].startswith("random uint8 32x32 images (48 train)")
    assert set(result["arms"]) == {"kdbench", "reference", "cached", "ce"}
    for entry in result["arms"].values():
        assert len(entry["seconds_per_step"]) == 2 and entry["median_ms"] > 0
    assert result["arms"]["cached"]["numerics"] == "fp32, teacher cache (float16)"
    assert result["arms"]["reference"]["numerics"] == "fp32 eager"
    text = out.read_text()
    assert text.count("\n| ") == 5  # header + 4 arms
    assert "teacher cache filled with stand-in values" in text and "arms interleaved" in text


def test_bad_arm_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as error:
        main(["train", "--arms", "kdbench,fastest"])
    assert error.value.code == 2
    assert "unknown arm 'fastest'; valid: kdbench, reference, cached, ce" in capsys.readouterr().err


def test_unknown_method_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert_exit = pytest.raises(SystemExit)
    with assert_exit as error:
        main(["train", "--method", "NoSuchKD", "--steps", "1", "--data-root", str(tmp_path)])
    assert error.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("benchmarks.speed: error: unknown method 'NoSuchKD' for table table1; valid:")
