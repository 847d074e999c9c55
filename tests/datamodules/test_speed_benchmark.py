"""`python -m benchmarks.speed data` runs both pipelines on the same images and prints both rates and the ratio."""

from __future__ import annotations

import re

import pytest

from benchmarks.speed import main


def test_data_benchmark_prints_both_rates_and_the_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "--images", "640", "--repeats", "1", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    ours = float(re.search(r"median ours:\s+([\d,]+) img/s", out).group(1).replace(",", ""))  # type: ignore[union-attr]
    reference = float(re.search(r"median torchvision PIL:\s+([\d,]+) img/s", out).group(1).replace(",", ""))  # type: ignore[union-attr]
    ratio = float(re.search(r"ratio ours / torchvision: ([\d.]+)x", out).group(1))  # type: ignore[union-attr]
    assert ours > 0 and reference > 0 and ratio == pytest.approx(ours / reference, rel=0.06)
    assert "load average before:" in out


def test_bad_option_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as error:
        main(["data", "--batch-size", "0"])
    assert error.value.code == 2 and "--batch-size must be positive, got 0" in capsys.readouterr().err
