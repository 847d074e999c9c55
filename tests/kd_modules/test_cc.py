"""CC (RepDistiller's code): consecutive-sample products by hand and by loops; both embeddings train."""

from __future__ import annotations

import torch

from kd_modules import CC, TeacherConfig
from kd_modules.losses import cc_loss


def test_hand_worked_three_samples() -> None:
    u = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    v = torch.tensor([[0.0, 1.0], [1.0, 0.0], [-1.0, 1.0]])
    # |u - v| = (1,1), (1,2), (2,0): pairs (0,1) -> 1 + 2 = 3, (1,2) -> 2 + 0 = 2; mean over B-1 = 2.5
    assert cc_loss(u, v).item() == 2.5


def test_matches_loops_and_depends_on_batch_order() -> None:
    torch.manual_seed(0)
    u, v = torch.randn(6, 4), torch.randn(6, 4)
    d = (u - v).abs().tolist()
    expected = sum(sum(a * b for a, b in zip(d[i], d[i + 1])) for i in range(5)) / 5
    assert abs(cc_loss(u, v).item() - expected) < 1e-6
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    assert not torch.allclose(cc_loss(u[order], v[order]), cc_loss(u, v)), "the reference couples neighbours"


def test_embeddings_of_both_networks_receive_gradients(teacher_checkpoint) -> None:  # type: ignore[no-untyped-def]
    module = CC(student="resnet8", teacher=TeacherConfig("resnet32x4", str(teacher_checkpoint("resnet32x4"))))
    assert module.embed_student.in_features == 64 and module.embed_teacher.in_features == 256
    assert module.embed_student.out_features == module.embed_teacher.out_features == 128
    torch.manual_seed(0)
    _, losses = module.training_losses({"images": torch.randn(4, 3, 32, 32), "labels": torch.arange(4)})
    losses["cc"].backward()
    assert module.embed_teacher.weight.grad is not None and module.embed_teacher.weight.grad.abs().sum() > 0
    assert module.embed_student.weight.grad is not None and module.embed_student.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in module.teacher.parameters())
