"""FitNet + letKD's KD layer (letKD supp. Table 6): the terms by a second computation, with and without supervision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from benchmarks.cli import KDBenchCLI
from datamodules import CIFAR100
from kd_modules.base import TeacherConfig
from kd_modules.fitnet_kdlayer import FitNetKDLayer
from kd_modules.letkd import KDLayer, TargetsConfig
from kd_modules.losses.letkd import location_kl


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_terms_match_fitnet_and_letkd1(cifar_root: Path, trained_teacher: Path, cache: Path) -> None:
    torch.manual_seed(0)
    teacher = TeacherConfig("resnet8", str(trained_teacher))
    targets = TargetsConfig(num_clusters=16, kmeans_iterations=3, offline_max_images=40)
    module = FitNetKDLayer("resnet8", teacher, targets=targets, supervised=True)
    assert isinstance(module.student.inserted["neck"], KDLayer)
    data = CIFAR100(root=str(cifar_root), batch_size=8, eval_batch_size=100)
    data.setup("fit")
    module.prepare_targets(data, "cpu")
    batch = data.on_after_batch_transfer(next(iter(data.train_dataloader())), 0)
    module.eval()  # deterministic BN for the comparison below
    logits, losses = module.training_losses(batch)
    assert set(losses) == {"ce", "hint", "penult"}
    with torch.no_grad():
        out = module.student.forward_features(batch["images"])
        t = module.teacher.forward_features(batch["images"])
        hint = 100.0 * F.mse_loss(module.regressor(out.stages_post[1]), t.stages_post[1])
        # letKD-1's own target path (the shared teacher_targets of the letKD methods).
        kl = location_kl(out.extras["neck"], module.teacher_targets(batch["images"], batch["labels"])["penult"])
    torch.testing.assert_close(losses["hint"].detach(), hint)
    torch.testing.assert_close(losses["penult"].detach(), kl)
    torch.testing.assert_close(losses["ce"].detach(), F.cross_entropy(out.logits, batch["labels"]))


def test_without_supervision_no_codebook_and_no_kl(  # type: ignore[no-untyped-def]
    cifar_root: Path, tmp_path: Path, fit_args, trained_teacher: Path, cache: Path
) -> None:
    run_dir = tmp_path / "unsupervised"
    KDBenchCLI(
        args=fit_args(
            cifar_root,
            run_dir,
            "--model=FitNetKDLayer",
            "--model.student=resnet8",
            "--model.teacher.arch=resnet8",
            f"--model.teacher.checkpoint={trained_teacher}",
            "--model.supervised=false",
            "--model.targets.num_clusters=16",
        )
    )
    assert json.loads((run_dir / "record.json").read_text())["steps"] == 2
    logged = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train/hint" in logged and "train/penult" not in logged
    assert not cache.exists() or not list(cache.glob("letkd_codebook/*"))  # no K-means for an unsupervised layer
    state = torch.load(run_dir / "final.pth")["state_dict"]
    assert "inserted.neck.predictor.weight" in state  # the layer's capacity stays in the student
    assert not any(k.startswith("regressor") for k in state)
