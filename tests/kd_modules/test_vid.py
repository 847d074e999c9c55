"""VID: the Gaussian NLL by hand, the initial variance, learned (RepDistiller) vs fixed (mdistiller) variance."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from kd_modules import VID, TeacherConfig
from kd_modules.losses.vid import vid_log_scale_init, vid_loss, vid_variance


def test_initial_variance_is_five() -> None:
    start = torch.full((3,), vid_log_scale_init(5.0, 1e-5))
    assert torch.allclose(vid_variance(start, 1e-5), torch.full((3,), 5.0), atol=1e-6)


def test_hand_worked_two_channels() -> None:
    # Channel variances 1 and 4 (log_scale = log(e^v - 1), eps 0); one pixel each.
    log_scale = torch.tensor([math.log(math.e - 1), math.log(math.exp(4.0) - 1)])
    mean = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    target = torch.tensor([2.0, 3.0]).view(1, 2, 1, 1)
    expected = (0.5 * (4 / 1 + math.log(1.0)) + 0.5 * (4 / 4 + math.log(4.0))) / 2
    assert vid_loss(mean, target, log_scale, eps=0.0).item() == pytest.approx(expected, rel=1e-6)


def test_matches_per_element_formula() -> None:
    torch.manual_seed(0)
    mean, target = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    log_scale = torch.randn(3)
    eps = 1e-5
    total = 0.0
    for index in range(mean.numel()):
        b, c, y, x = torch.unravel_index(torch.tensor(index), mean.shape)
        var = math.log(1 + math.exp(float(log_scale[c]))) + eps
        total += 0.5 * ((float(mean[b, c, y, x]) - float(target[b, c, y, x])) ** 2 / var + math.log(var))
    assert vid_loss(mean, target, log_scale, eps).item() == pytest.approx(total / mean.numel(), rel=1e-5)


def _one_step(module: VID) -> None:
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.1)
    torch.manual_seed(0)
    _, losses = module.training_losses({"images": torch.randn(4, 3, 32, 32), "labels": torch.arange(4)})
    sum(losses.values()).backward()
    optimizer.step()


@pytest.mark.parametrize("learn", [True, False])
def test_variance_is_learned_only_in_the_repdistiller_setting(teacher_checkpoint, learn: bool) -> None:  # type: ignore[no-untyped-def]
    module = VID(
        student="resnet8",
        teacher=TeacherConfig("resnet32x4", str(teacher_checkpoint("resnet32x4"))),
        learn_variance=learn,
    )
    # One regressor per stage pair: 16/32/64 student channels to 64/128/256 teacher channels.
    assert [r[0].in_channels for r in module.regressors] == [16, 32, 64]
    assert [s.numel() for s in module.log_scales] == [64, 128, 256]
    before = [s.detach().clone() for s in module.log_scales]
    _one_step(module)
    changed = [not torch.equal(a, b) for a, b in zip(before, module.log_scales)]
    assert all(changed) if learn else not any(changed)
    assert all(r[0].weight.grad is not None for r in module.regressors)


def test_module_sums_stage_terms_on_pooled_maps(trained_teacher: Path) -> None:
    module = VID(student="resnet8", teacher=TeacherConfig("resnet8", str(trained_teacher)))
    torch.manual_seed(0)
    images = torch.randn(3, 3, 32, 32)
    s, t = module.student.forward_features(images), module.teacher_features(images)
    expected = sum(
        vid_loss(reg(a), b, scale, 1e-5)
        for reg, scale, a, b in zip(module.regressors, module.log_scales, s.stages_post, t.stages_post)
    )
    assert torch.allclose(module.feature_losses(s, t, {})["vid"], expected)
