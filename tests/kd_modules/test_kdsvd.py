"""KDSVD: both references' layouts against a per-sample loop formulation; alignment; shape checks."""

from __future__ import annotations

import math

import pytest
import torch

from kd_modules import KDSVD, TeacherConfig
from kd_modules.errors import MethodConfigError
from kd_modules.losses import kdsvd_loss
from kd_modules.losses.kdsvd import align_singular_vectors


def _matrix(f: torch.Tensor, layout: str) -> torch.Tensor:
    # One sample (C, H, W), element by element: RepDistiller rows = positions, columns = channels;
    # mdistiller rows = (channel, row) pairs, columns = image columns.
    c, h, w = f.shape
    if layout == "repdistiller":
        m = torch.empty(h * w, c)
        for k in range(c):
            for y in range(h):
                for x in range(w):
                    m[y * w + x, k] = f[k, y, x]
    else:
        m = torch.empty(c * h, w)
        for k in range(c):
            for y in range(h):
                for x in range(w):
                    m[k * h + y, x] = f[k, y, x]
    return m


def _unit(v: list[float]) -> list[float]:
    n = max(math.sqrt(sum(a * a for a in v)), 1e-12)
    return [a / n for a in v]


def _factors(f: torch.Tensor, n: int, layout: str) -> tuple[list[float], list[list[float]]]:
    _, s, vh = torch.linalg.svd(_matrix(f, layout), full_matrices=False)
    values = _unit(s[:n].tolist())
    vectors = [_unit(vh[j].tolist()) for j in range(min(n, vh.shape[0]))]  # row j of V^H = column j of V
    return values, vectors


def _loss_by_loops(feats_s: list[torch.Tensor], feats_t: list[torch.Tensor], layout: str) -> float:
    batch = feats_s[0].shape[0]
    total = 0.0
    for b in range(batch):
        previous = None
        for f_s, f_t in zip(feats_s, feats_t):
            sigma, (v_t,) = _factors(f_t[b], 1, layout)
            _, student = _factors(f_s[b], 4, layout)
            cosines = [sum(x * y for x, y in zip(v, v_t)) for v in student]
            best = max(range(len(student)), key=lambda j: abs(cosines[j]))
            sign = math.copysign(1.0, cosines[best])
            v_s = [sign * a * sigma[0] for a in student[best]]
            v_t = [a * sigma[0] for a in v_t]
            if previous is not None:
                p_s, p_t = previous
                for p in range(len(v_s)):
                    for q in range(len(p_s)):
                        r_s = math.exp(-((v_s[p] - p_s[q]) ** 2) / 8)
                        r_t = math.exp(-((v_t[p] - p_t[q]) ** 2) / 8)
                        total += (r_s - r_t) ** 2
            previous = (v_s, v_t)
    return total / batch


@pytest.mark.parametrize("layout", ["repdistiller", "mdistiller"])
def test_matches_per_sample_loops(layout: str) -> None:
    torch.manual_seed(0)
    feats_s = [torch.randn(2, 4, 4, 4), torch.randn(2, 6, 2, 4), torch.randn(2, 8, 3, 4)]
    if layout == "repdistiller":  # equal channels needed
        feats_t = [torch.randn(2, 4, 2, 2), torch.randn(2, 6, 4, 4), torch.randn(2, 8, 2, 2)]
    else:  # equal widths needed
        feats_t = [torch.randn(2, 3, 5, 4), torch.randn(2, 2, 2, 4), torch.randn(2, 5, 1, 4)]
    value = kdsvd_loss(feats_s, feats_t, k=1, layout=layout).item()
    assert value == pytest.approx(_loss_by_loops(feats_s, feats_t, layout), rel=1e-4, abs=1e-7)


def test_the_two_layouts_differ_and_identical_networks_give_zero() -> None:
    torch.manual_seed(1)
    feats = [torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)]
    other = [torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)]
    rd = kdsvd_loss(feats, other, layout="repdistiller")
    md = kdsvd_loss(feats, other, layout="mdistiller")
    assert not torch.allclose(rd, md)
    assert kdsvd_loss(feats, feats, layout="repdistiller").item() == pytest.approx(0.0, abs=1e-10)
    # the student's sign is corrected by the alignment: a negated student map changes nothing
    assert torch.allclose(kdsvd_loss([-f for f in other], feats), kdsvd_loss(other, feats), atol=1e-6)


def test_alignment_picks_the_best_student_vector_with_its_sign() -> None:
    v_s = torch.tensor([[[1.0, 0.0], [0.0, -1.0]]])  # columns e1, -e2
    v_t = torch.tensor([[[0.0], [1.0]]])  # e2
    assert torch.equal(align_singular_vectors(v_s, v_t), torch.tensor([[[0.0], [1.0]]]))


def test_module_checks_the_layout_against_the_networks(teacher_checkpoint) -> None:  # type: ignore[no-untyped-def]
    wide = TeacherConfig("resnet32x4", str(teacher_checkpoint("resnet32x4")))
    with pytest.raises(MethodConfigError, match=r"equal channels.*stage 1 of resnet20 has 16 and of resnet32x4 64"):
        KDSVD(student="resnet20", teacher=wide, layout="repdistiller")
    module = KDSVD(student="resnet20", teacher=wide, layout="mdistiller")  # widths 32/16/8 on both
    torch.manual_seed(0)
    _, losses = module.training_losses({"images": torch.randn(3, 3, 32, 32), "labels": torch.arange(3)})
    sum(losses.values()).backward()
    assert torch.isfinite(losses["kdsvd"])
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in module.student.parameters())
    with pytest.raises(MethodConfigError, match="layout 'svd' is not one of"):
        KDSVD(student="resnet20", teacher=wide, layout="svd")  # type: ignore[arg-type]


def test_repeated_singular_values_give_finite_student_gradients() -> None:
    # A 2x2 ReLU-like map active at one location only has rank 1: three exactly-zero singular values, where the
    # SVD backward is non-finite (checked first on the raw SVD); the loss must still give finite gradients.
    torch.manual_seed(0)
    base = torch.zeros(2, 4, 2, 2)
    base[:, :, 0, 0] = torch.rand(2, 4)
    raw = base.clone().requires_grad_(True)
    _, _, vh = torch.linalg.svd(raw.reshape(2, 4, 4).transpose(1, 2), full_matrices=False)
    vh[:, :, :4].sum().backward()
    assert not torch.isfinite(raw.grad).all()

    student = [base.clone().requires_grad_(True), torch.rand(2, 4, 2, 2, requires_grad=True)]
    teacher = [torch.rand(2, 4, 2, 2), torch.rand(2, 4, 2, 2)]
    kdsvd_loss(student, teacher, k=1).backward()
    assert all(torch.isfinite(f.grad).all() for f in student)
