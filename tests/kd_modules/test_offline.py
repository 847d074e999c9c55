"""Offline-stage cache: computed once per key, reused, keyed by content."""

from __future__ import annotations

from pathlib import Path

import torch

from kd_modules.offline import data_fingerprint, load_or_compute, stage_key, teacher_digest


def test_computed_once_then_reused(tmp_path: Path) -> None:
    calls = []

    def compute() -> dict[str, torch.Tensor]:
        calls.append(1)
        return {"means": torch.arange(6.0).view(2, 3)}

    inputs = {"teacher": "abc", "data": "def"}
    first = load_or_compute("demo", inputs, compute, root=tmp_path)
    second = load_or_compute("demo", inputs, compute, root=tmp_path)
    assert len(calls) == 1 and torch.equal(first["means"], second["means"])
    load_or_compute("demo", {"teacher": "other", "data": "def"}, compute, root=tmp_path)
    assert len(calls) == 2, "another teacher must not reuse the artefact"
    assert (tmp_path / "demo" / stage_key(inputs) / "inputs.json").is_file()


def test_digests_follow_content(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"w": torch.ones(3)}, a)
    torch.save({"w": torch.zeros(3)}, b)
    assert teacher_digest(a) != teacher_digest(b)
    images = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    labels = torch.arange(10)
    assert data_fingerprint(images, labels) == data_fingerprint(images.clone(), labels.clone())
    assert data_fingerprint(images, labels.flip(0)) != data_fingerprint(images, labels)
