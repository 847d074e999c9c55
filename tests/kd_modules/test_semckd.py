"""SemCKD: attention and calibrated loss by hand, the module's value by a per-sample loop, batch-size handling."""

from __future__ import annotations

import math

import pytest
import torch

from kd_modules import SemCKD, TeacherConfig
from kd_modules.errors import MethodConfigError
from kd_modules.losses.semckd import semckd_attention, semckd_loss


def test_attention_and_loss_by_hand() -> None:
    # one sample, two student layers, two teacher layers, 2-d unit embeddings
    queries = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # (S=2, B=1, d=2)
    keys = torch.tensor([[[1.0, 0.0]], [[0.6, 0.8]]])  # (T=2, B=1, d=2)
    att = semckd_attention(queries, keys)
    # layer 0: scores (1, 0.6) ; layer 1: scores (0, 0.8)
    e = math.exp
    assert att[0, 0].tolist() == pytest.approx([e(1) / (e(1) + e(0.6)), e(0.6) / (e(1) + e(0.6))])
    assert att[0, 1].tolist() == pytest.approx([1 / (1 + e(0.8)), e(0.8) / (1 + e(0.8))])
    errors = torch.tensor([[[1.0, 3.0], [2.0, 4.0]]])
    expected = (att[0, 0, 0] * 1 + att[0, 0, 1] * 3 + att[0, 1, 0] * 2 + att[0, 1, 1] * 4) / (1 * 2)
    assert semckd_loss(att, errors).item() == pytest.approx(expected.item())
    half = semckd_attention(queries, keys, temperature=0.5)
    assert half[0, 0, 0].item() == pytest.approx(e(2) / (e(2) + e(1.2)))


def test_module_value_by_a_per_sample_loop(teacher_checkpoint) -> None:  # type: ignore[no-untyped-def]
    teacher = TeacherConfig("vgg13", str(teacher_checkpoint("vgg13")))
    module = SemCKD(student="resnet20", teacher=teacher, batch_size=4)
    assert module.teacher is not None
    assert len(module.projections) == 3 and len(module.projections[0]) == 4  # all S x T pairs
    assert module.queries is not None and module.queries[0].net[0].in_features == 4
    assert module.queries[0].net[2].out_features == 1
    module.eval()
    torch.manual_seed(0)
    batch = {"images": torch.randn(4, 3, 32, 32), "labels": torch.tensor([0, 1, 2, 3])}
    _, losses = module.training_losses(batch)
    assert set(losses) == {"ce", "kd", "semckd"}
    with torch.no_grad():
        s = module.student.forward_features(batch["images"]).stages_post
        t = module.teacher.forward_features(batch["images"]).stages_post
        total = 0.0
        for b in range(4):
            for i, f_s in enumerate(s):
                g_s = torch.stack([(f_s[b] * f_s[c]).sum() for c in range(4)])
                q = module.queries[i].net(g_s[None])[0]
                q = q / q.norm()
                scores, errs = [], []
                for j, f_t in enumerate(t):
                    g_t = torch.stack([(f_t[b] * f_t[c]).sum() for c in range(4)])
                    k = module.keys[j].net(g_t[None])[0]
                    scores.append((q * (k / k.norm())).sum())
                    size = min(f_s.shape[-1], f_t.shape[-1])
                    ps = module.projections[i][j](torch.nn.functional.adaptive_avg_pool2d(f_s, size))[b]
                    errs.append(((ps - torch.nn.functional.adaptive_avg_pool2d(f_t, size)[b]) ** 2).mean())
                weights = torch.softmax(torch.stack(scores), 0)
                total += float((weights * torch.stack(errs)).sum())
        expected = 400.0 * total / (4 * 3)
    assert losses["semckd"].item() == pytest.approx(expected, rel=1e-4)
    with pytest.raises(MethodConfigError, match="built for batches of 4 and got 3"):
        module.training_losses({"images": batch["images"][:3], "labels": batch["labels"][:3]})
    with pytest.raises(MethodConfigError, match="at least 4 samples"):
        SemCKD(student="resnet20", teacher=teacher, batch_size=2)
