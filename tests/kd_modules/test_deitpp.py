"""DeiT / DeiT++ (ND's CNN -> ViT): the mixed centres as ND's code builds them, the terms by second computations,
one training step through a Trainer-free call on a small distilled DeiT."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kd_modules.base import OptimConfig, TeacherConfig
from kd_modules.deitpp import DeiTPlusPlus
from kd_modules.errors import MethodConfigError
from kd_modules.losses.deitpp import dino_loss_to_centers, mixed_centers
from kd_modules.losses.nd import dino_loss
from models import create_model
from models.checkpoints import export_network


def test_mixed_centers_are_nds_smoothing_matrix_product() -> None:
    torch.manual_seed(0)
    centers, labels, lam, eps = torch.randn(10, 6), torch.tensor([3, 1, 1, 7]), 0.3, 0.1
    # ND's Dataset/data.py::mixup_center, written out: sm = off everywhere, on on the diagonal; c1 = sm @ C[y].
    off, on = eps / 10, 1 - eps + eps / 10
    sm = torch.full((4, 4), off)
    sm.fill_diagonal_(on)
    c1 = sm @ centers[labels]
    torch.testing.assert_close(mixed_centers(centers, labels, lam, eps), lam * c1 + (1 - lam) * c1.flip(0))


def test_dino_to_centers_is_the_dino_loss_at_unmixed_centres() -> None:
    torch.manual_seed(1)
    centers, labels = torch.randn(5, 8), torch.tensor([0, 4, 2])
    s, t = torch.randn(3, 8), torch.randn(3, 8) * 3
    torch.testing.assert_close(dino_loss_to_centers(s, t, centers[labels]), dino_loss(s, t, centers, labels))


@pytest.fixture()
def tiny_deit(monkeypatch: pytest.MonkeyPatch) -> str:
    """timm's DeiT-Ti with distillation token, registered for one test (other tests iterate over the registry)."""
    import models.registry as registry
    from models.imagenet.timm_nets import TimmViT

    registry.list_models()
    entry = registry.ModelEntry(
        "test_deit_tiny", "imagenet", lambda num_classes=1000: TimmViT("deit_tiny_distilled_patch16_224", num_classes)
    )
    monkeypatch.setitem(registry._REGISTRY, entry.name, entry)
    return entry.name


def test_one_step_of_deit_plus_plus(tiny_deit: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher_path = export_network(create_model("resnet18", 10), "resnet18", tmp_path / "teacher.pth")
    optim = OptimConfig(optimizer="adamw", lr=1e-3, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    module = DeiTPlusPlus(tiny_deit, TeacherConfig("resnet18", str(teacher_path)), num_classes=10, optim=optim)
    assert module.projection is not None and module.projection[2].out_features == 512  # 192 -> ResNet18's 512
    module.centers = torch.randn(10, 512)
    batch = module.mix_batch({"images": torch.randn(2, 3, 224, 224), "labels": torch.tensor([1, 4])})
    logits, losses = module.training_losses(batch)
    assert set(losses) == {"ce", "kd", "nd"} and losses["kd"] == 0.0  # epoch 0: the KD ramp starts at 0
    module.eval()  # deterministic (no dropout in EmbTrans, no drop path) for the second computation
    _, losses = module.training_losses(batch)
    with torch.no_grad():
        out = module.student.forward_features(batch["images"])
        t = module.teacher.forward_features(batch["images"])
        ce = -(batch["targets"] * F.log_softmax(out.extras["cls_logits"], 1)).sum(1).mean()
        lam = float(batch["mix_lambda"])
        nd = dino_loss_to_centers(
            module.projection(out.embedding), t.embedding, mixed_centers(module.centers, batch["labels"], lam, 0.1)
        )
    torch.testing.assert_close(losses["ce"].detach(), ce)
    torch.testing.assert_close(losses["nd"].detach(), 1.5 * nd)
    # Later epochs: hard distillation of the distillation head towards the teacher's top-1.
    module.warmup_epochs = 0.0
    _, losses = module.training_losses(batch)
    expected = 0.5 * F.cross_entropy(out.extras["dist_logits"], t.logits.argmax(1))
    torch.testing.assert_close(losses["kd"].detach(), expected)
    module.train()
    total = sum(losses.values())
    total.backward()
    assert module.student.head_dist.weight.grad.abs().sum() > 0 and module.projection[2].weight.grad is not None


def test_deitpp_needs_a_vision_transformer(trained_teacher: Path) -> None:
    with pytest.raises(MethodConfigError, match="not one"):
        DeiTPlusPlus("resnet8", TeacherConfig("resnet8", str(trained_teacher)), num_classes=100)
    assert DeiTPlusPlus.pair_problem("resnet18", "regnety_16gf", {}) is not None
    assert DeiTPlusPlus.pair_problem("deit_b_distilled", "regnety_16gf", {}) is None


def test_deitpp_trains_through_the_cli_on_imagenet_with_the_vit_recipe(  # type: ignore[no-untyped-def]
    tiny_deit: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Setup computes the teacher's class means on the ImageNet datamodule, the step mixes, the recipe's AdamW and
    per-step cosine run, evaluation reads the student's averaged heads, a record is written."""
    import json

    from benchmarks.cli import KDBenchCLI
    from datamodules import ImageNet
    from datamodules.synthetic import write_imagenet

    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ImageNet, "num_classes", 4)  # a 4-class ImageFolder tree: every class has its mean
    write_imagenet(tmp_path / "data", classes=4, train_per_class=3, val_per_class=1)
    torch.manual_seed(0)
    teacher = export_network(create_model("resnet18", 4), "resnet18", tmp_path / "teacher.pth")
    run_dir = tmp_path / "run"
    KDBenchCLI(
        args=[
            "fit",
            "--config=configs/recipes/nd_imagenet_vit.yaml",
            "--model=DeiTPlusPlus",
            f"--model.student={tiny_deit}",
            "--model.teacher.arch=resnet18",
            f"--model.teacher.checkpoint={teacher}",
            f"--data.root={tmp_path / 'data'}",
            "--data.batch_size=4",
            "--data.eval_batch_size=4",
            "--data.num_workers=0",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--run.wandb=disabled",
            f"--run.dir={run_dir}",
        ]
    )
    record = json.loads((run_dir / "record.json").read_text())
    assert record["steps"] == 2 and "best_top1" in record["metrics"]
    logged = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/ce", "train/kd", "train/nd"} <= set(logged)
    assert list((tmp_path / "cache" / "nd_class_means").glob("*/artefact.pt"))
