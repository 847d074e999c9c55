"""``python -m benchmarks.kcd``: Gamma before and after the transformation, from one pass over the training split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks import kcd as diagnostic
from kd_modules.losses.kcd import ConsistencyStatistics, bipartite_mapping, consistency_matrix, gamma


def test_gamma_rows_match_the_direct_formula() -> None:
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(60, 6, generator=generator, dtype=torch.float64)
    student = teacher[:, [3, 1, 5, 0, 2, 4]] + 0.3 * torch.randn(60, 6, generator=generator, dtype=torch.float64)
    stats = ConsistencyStatistics(6, 6, ["moments"])
    stats.update(teacher, student)
    (row,) = diagnostic.gamma_rows(stats, ["correlation"])
    matrix = consistency_matrix(teacher, student, "correlation")
    assert row.identity == pytest.approx(float(torch.diagonal(matrix).sum()))
    assert row.bipartite == pytest.approx(float(gamma(matrix, bipartite_mapping(matrix))))
    # The student is a noisy permutation of the teacher: the matching finds it and gains a lot over the identity.
    assert bipartite_mapping(matrix).tolist() == [3, 1, 5, 0, 2, 4]
    assert row.bipartite > 4.0 > row.identity and row.unmoved == 1
    assert "| correlation |" in diagnostic.render([row])


def test_command_prints_every_metric(cifar_root: Path, teacher_checkpoint, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    teacher = teacher_checkpoint("resnet8")
    args = ["--dataset", "cifar100", "--data-root", str(cifar_root), "--teacher", f"resnet8={teacher}"]
    diagnostic.main([*args, "--student", f"resnet8={teacher}", "--max-images", "300"])
    out = capsys.readouterr().out
    assert "300 training images" in out
    for metric in ("correlation", "l1", "l2", "cosine", "kl"):
        assert f"| {metric} |" in out
    # The same network on both sides: the identity is already the best matching for correlation.
    line = next(text for text in out.splitlines() if text.startswith("| correlation |"))
    assert line.split("|")[-2].strip() == "64/64"
    with pytest.raises(SystemExit):
        diagnostic.main([*args, "--student", "resnet8"])
