"""SimKD: the MSE and alignment by hand, logits through the reused teacher classifier, and the exported network
reproducing the training-time logits (through the real CLI and export command)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.cli import KDBenchCLI
from benchmarks.export import main as export_main
from benchmarks.tables import REPO_ROOT
from kd_modules import SimKD, TeacherConfig
from kd_modules.losses.simkd import align_spatial, simkd_loss
from kd_modules.simkd import load_simkd_network


def test_mse_and_alignment_by_hand() -> None:
    a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    b = torch.tensor([[[[0.0, 0.0], [3.0, 6.0]]]])
    assert simkd_loss(a, b).item() == pytest.approx((1 + 4 + 0 + 4) / 4)
    big = torch.arange(16.0).view(1, 1, 4, 4)
    s, t = align_spatial(big, a)  # taller student -> pooled to 2x2: means of the 2x2 blocks
    assert s.flatten().tolist() == [2.5, 4.5, 10.5, 12.5] and t is a
    s, t = align_spatial(a, big)  # shorter student -> the teacher is pooled
    assert s is a and t.flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    with pytest.raises(ValueError, match="shapes differ"):
        simkd_loss(a, big)


def test_logits_come_from_the_teacher_classifier_on_the_pooled_projection(teacher_checkpoint) -> None:  # type: ignore[no-untyped-def]
    # resnet8x4's last map is 8x8, vgg13's 4x4: the student map is pooled first (official alignment)
    module = SimKD(student="resnet8x4", teacher=TeacherConfig("vgg13", str(teacher_checkpoint("vgg13"))))
    assert module.teacher is not None
    module.eval()
    torch.manual_seed(0)
    batch = {"images": torch.randn(3, 3, 32, 32), "labels": torch.tensor([0, 1, 2])}
    logits, losses = module.training_losses(batch)
    assert set(losses) == {"simkd"}, "official -c 0 -d 0: no CE/KD on the student's own classifier"
    with torch.no_grad():
        f_s = module.student.forward_features(batch["images"]).stages_post[-1]
        f_t = module.teacher.forward_features(batch["images"]).stages_post[-1]
        pooled = torch.nn.functional.avg_pool2d(f_s, 2)  # 8x8 -> 4x4
        projected = module.projector(pooled)
        head = module.teacher.classifier
        expected_logits = projected.mean(dim=(2, 3)) @ head.weight.T + head.bias
        expected_loss = ((projected - f_t) ** 2).mean()
    assert torch.allclose(logits, expected_logits, atol=1e-5)
    assert losses["simkd"].item() == pytest.approx(expected_loss.item(), rel=1e-5)
    assert not any(p.requires_grad for p in module.teacher_classifier.parameters())
    # gradients pass through the frozen teacher classifier into the projector
    module.train()
    logits, _ = module.training_losses(batch)
    logits.sum().backward()
    assert module.projector[0].weight.grad is not None and module.teacher_classifier.weight.grad is None


def test_deployed_network_reproduces_the_training_logits(teacher_checkpoint, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    module = SimKD(student="resnet8x4", teacher=TeacherConfig("vgg13", str(teacher_checkpoint("vgg13"))))
    module.train()
    torch.manual_seed(1)
    images = torch.randn(4, 3, 32, 32)
    module.training_losses({"images": images, "labels": torch.zeros(4, dtype=torch.long)})  # moves BN statistics
    network = module.deploy_student()  # what `python -m benchmarks.export` writes
    assert (network.student_arch, network.teacher_arch, network.pool_to) == ("resnet8x4", "vgg13", 4)
    out = network.save(tmp_path / "deploy.pth")
    loaded = load_simkd_network(out)
    module.eval()
    with torch.no_grad():
        training_logits, _ = module.training_losses({"images": images, "labels": torch.zeros(4, dtype=torch.long)})
        assert torch.allclose(loaded(images), training_logits, atol=1e-6)
        assert torch.allclose(module.predict_logits(images), training_logits, atol=1e-6)


def test_cli_run_then_export_command(cifar_root: Path, tmp_path: Path, fit_args, trained_teacher: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    run_dir = tmp_path / "run"
    args = fit_args(
        cifar_root,
        run_dir,
        "--model.student=resnet8",
        "--model.teacher.arch=resnet8",
        f"--model.teacher.checkpoint={trained_teacher}",
    )
    config = ["--config", str(REPO_ROOT / "configs/methods/simkd.yaml")]
    cli = KDBenchCLI(args=[args[0], *config, *args[1:]])
    assert export_main([str(run_dir)]) == 0
    assert "exported the SimKD student resnet8" in capsys.readouterr().out
    loaded = load_simkd_network(run_dir / "deploy.pth")
    module = cli.model.cpu().eval()
    images = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        training_logits, _ = module.training_losses({"images": images, "labels": torch.zeros(5, dtype=torch.long)})
        assert torch.allclose(loaded(images), training_logits, atol=1e-6)
