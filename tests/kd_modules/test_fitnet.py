"""FitNet: the hint loss by hand, ConvReg's shape rules, the hint layer choice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kd_modules import FitNet, TeacherConfig
from kd_modules.connectors import ConvReg
from kd_modules.errors import MethodConfigError
from kd_modules.losses import hint_loss
from models import FeatureShape


def test_hint_loss_is_the_mean_over_every_element() -> None:
    student = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    teacher = torch.tensor([[[[0.0, 2.0], [5.0, 1.0]]]])
    # squared differences 1, 0, 4, 9 -> mean 3.5
    assert hint_loss(student, teacher).item() == pytest.approx(3.5)
    with pytest.raises(ValueError, match="shapes differ"):
        hint_loss(student, teacher[..., :1])


@pytest.mark.parametrize(
    ("student", "teacher", "kind", "kernel"),
    [
        ((16, 32, 32), (64, 16, 16), torch.nn.Conv2d, (3, 3)),  # stride-2 conv
        ((16, 8, 8), (64, 16, 16), torch.nn.ConvTranspose2d, (4, 4)),  # upsampling
        ((32, 16, 16), (128, 16, 16), torch.nn.Conv2d, (1, 1)),  # equal sizes
        ((32, 10, 10), (128, 8, 8), torch.nn.Conv2d, (3, 3)),  # (1 + dH) x (1 + dW), no padding
    ],
)
def test_convreg_maps_student_shape_to_teacher_shape(student, teacher, kind, kernel) -> None:  # type: ignore[no-untyped-def]
    reg = ConvReg(FeatureShape(*student), FeatureShape(*teacher))
    assert isinstance(reg.conv, kind) and tuple(reg.conv.kernel_size) == kernel and reg.conv.bias is not None
    out = reg(torch.randn(2, *student))
    assert out.shape == (2, *teacher)
    assert (out >= 0).all(), "ConvReg ends in a ReLU"


def test_convreg_refuses_a_student_map_smaller_than_half() -> None:
    with pytest.raises(MethodConfigError, match=r"4x4 student map to a 16x16 teacher map"):
        ConvReg(FeatureShape(8, 4, 4), FeatureShape(8, 16, 16))


def test_hint_layer_selects_the_reference_feature(teacher_checkpoint) -> None:  # type: ignore[no-untyped-def]
    teacher = TeacherConfig("resnet32x4", str(teacher_checkpoint("resnet32x4")))
    module = FitNet(student="resnet20", teacher=teacher)
    # feat[2] of a CIFAR ResNet: stage 2, 16x16; resnet20 has 32 channels there, resnet32x4 128.
    assert module.regressor.conv.in_channels == 32 and module.regressor.conv.out_channels == 128
    assert tuple(module.regressor.conv.kernel_size) == (1, 1)
    torch.manual_seed(0)
    images = torch.randn(3, 3, 32, 32)
    features = module.student.forward_features(images)
    assert module.hint(features) is features.stages_post[1]
    stem = FitNet(student="resnet20", teacher=teacher, hint_layer=0)
    assert stem.hint(features) is features.stem
    assert stem.regressor.conv.in_channels == 16 and stem.regressor.conv.out_channels == 32
    with pytest.raises(MethodConfigError, match=r"hint_layer=4 .*valid are 0 \(stem\) to 3"):
        FitNet(student="resnet20", teacher=teacher, hint_layer=4)


def test_hint_term_is_mse_of_regressed_student_and_teacher_map(trained_teacher: Path) -> None:
    module = FitNet(student="resnet8", teacher=TeacherConfig("resnet8", str(trained_teacher)), feat_weight=100.0)
    module.eval()  # the regressor's BN then uses its running statistics, so the check below is deterministic
    torch.manual_seed(0)
    batch = {"images": torch.randn(4, 3, 32, 32), "labels": torch.tensor([0, 1, 2, 3])}
    _, losses = module.training_losses(batch)
    with torch.no_grad():
        s = module.student.forward_features(batch["images"]).stages_post[1]
        t = module.teacher.forward_features(batch["images"]).stages_post[1]
        expected = ((module.regressor(s) - t) ** 2).mean() * 100.0
    assert torch.allclose(losses["hint"], expected, rtol=1e-5)
    assert set(losses) == {"ce", "hint"}, "no KD term with the reference weights"
