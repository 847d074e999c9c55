"""OFD: the margin against scipy's normal distribution, the partial L2 by hand, stage alignment and teacher BN."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm

from kd_modules import OFD, TeacherConfig
from kd_modules.errors import MethodConfigError
from kd_modules.losses.ofd import ofd_loss, ofd_margin, ofd_partial_l2


def _expected_margin(gamma: float, beta: float) -> float:
    """E[x | x < 0] for x ~ N(beta, gamma^2), by numerical integration of the truncated density (scipy)."""
    s, mu = abs(gamma), beta
    if norm.cdf(-mu / s) <= 1e-3:
        return -3.0 * s
    # the conditional mean written as the truncated-normal mean of scipy (upper bound 0), independently of Eq. 3
    from scipy.stats import truncnorm

    return float(truncnorm.mean(-math.inf, (0.0 - mu) / s, loc=mu, scale=s))


def test_margin_matches_the_truncated_normal_mean_from_known_bn_parameters() -> None:
    gamma = torch.tensor([1.0, 2.0, 0.5, -0.7, 0.01, 3.0])
    beta = torch.tensor([0.0, 1.0, -1.0, 0.3, 1.0, -2.0])
    margins = ofd_margin(gamma, beta)
    expected = [_expected_margin(g, b) for g, b in zip(gamma.tolist(), beta.tolist())]
    assert margins.tolist() == pytest.approx(expected, rel=1e-5)
    # hand value: mu = 0, sigma = 1 -> -phi(0) / Phi(0) = -sqrt(2/pi)
    assert margins[0].item() == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-6)
    assert margins[4].item() == pytest.approx(-0.03), "tail mass below 0.001 -> -3 sigma"
    assert (margins < 0).all()


def test_partial_l2_by_hand() -> None:
    # one sample, one channel, four positions; margin -1
    s = torch.tensor([0.5, -2.0, -0.5, 1.0]).view(1, 1, 2, 2)
    t = torch.tensor([-3.0, -3.0, -0.2, 2.0]).view(1, 1, 2, 2)
    # target max(t, -1) = [-1, -1, -0.2, 2]
    # pos 0: s=0.5 > -1 -> (1.5)^2 = 2.25; pos 1: s=-2 <= -1 and target <= 0 -> 0;
    # pos 2: s=-0.5 <= -0.2, target <= 0 -> 0; pos 3: target > 0 -> (1-2)^2 = 1
    value = ofd_partial_l2(s, t, torch.tensor([-1.0]))
    assert value.item() == pytest.approx(3.25)
    # batch of two identical samples: sum / batch is unchanged
    assert ofd_partial_l2(s.repeat(2, 1, 1, 1), t.repeat(2, 1, 1, 1), torch.tensor([-1.0])).item() == pytest.approx(
        3.25
    )
    # stage weights 1/4, 1/2, 1 from the shallowest
    three = ofd_loss([s, s, s], [t, t, t], [torch.tensor([-1.0])] * 3)
    assert three.item() == pytest.approx(3.25 * (0.25 + 0.5 + 1.0))


def test_module_uses_pre_relu_maps_margins_of_the_teacher_bn_and_batch_statistics(teacher_checkpoint) -> None:  # type: ignore[no-untyped-def]
    teacher = TeacherConfig("resnet32x4", str(teacher_checkpoint("resnet32x4")))
    module = OFD(student="resnet20", teacher=teacher)
    assert module.teacher is not None
    bns = module.teacher.bn_before_relu()
    for k, bn in enumerate(bns):
        assert torch.allclose(module.margins[k], ofd_margin(bn.weight, bn.bias))
    assert [c[0].in_channels for c in module.connectors] == [16, 32, 64]
    assert [c[0].out_channels for c in module.connectors] == [64, 128, 256]
    running_before = bns[-1].running_mean.clone()
    torch.manual_seed(0)
    batch = {"images": torch.randn(4, 3, 32, 32), "labels": torch.tensor([0, 1, 2, 3])}
    module.train()
    _, losses = module.training_losses(batch)
    assert set(losses) == {"ce", "ofd"}
    assert torch.equal(bns[-1].running_mean, running_before), "teacher running statistics must not drift"
    assert not module.teacher.training
    # the value from the pieces: batch-statistics teacher, pre-ReLU maps, connectors in train mode
    with torch.no_grad():
        module.teacher.train()
        t = module.teacher.forward_features(batch["images"]).stages_pre
        module.teacher.eval()
        s = module.student.forward_features(batch["images"]).stages_pre
        expected = sum(
            ofd_partial_l2(c(si), ti, m) / 2 ** (2 - i)
            for i, (c, si, ti, m) in enumerate(zip(module.connectors, s, t, module.margins))
        )
    assert losses["ofd"].item() == pytest.approx(1e-3 * float(expected), rel=1e-4)
    running = OFD(student="resnet20", teacher=teacher, teacher_bn="running")
    assert running.teacher_bn == "running"
    with pytest.raises(MethodConfigError, match="teacher_bn='x'"):
        OFD(student="resnet20", teacher=teacher, teacher_bn="x")  # type: ignore[arg-type]


def test_shufflenet_teacher_is_refused_with_the_reason(teacher_checkpoint) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MethodConfigError, match="OFD cannot use ShuffleV1 as a teacher"):
        OFD(student="resnet20", teacher=TeacherConfig("ShuffleV1", str(teacher_checkpoint("ShuffleV1"))))
