"""SRRL: both terms by hand, and the two reference variants' connector placement."""

from __future__ import annotations

import pytest
import torch

from kd_modules import SRRL, TeacherConfig
from kd_modules.errors import MethodConfigError
from kd_modules.losses.srrl import srrl_losses


def test_terms_by_hand() -> None:
    h_s = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    h_t = torch.tensor([[0.0, 2.0], [2.0, 1.0]])
    through_head = torch.tensor([[1.0, 0.0, 3.0]])
    z_t = torch.tensor([[0.0, 0.0, 1.0]])
    fm, sr = srrl_losses(h_s, h_t, through_head, z_t)
    assert fm.item() == pytest.approx((1 + 0 + 4 + 0) / 4)
    assert sr.item() == pytest.approx((1 + 0 + 4) / 3)
    with pytest.raises(ValueError, match="feature shapes differ"):
        srrl_losses(h_s, h_t[:, :1], through_head, z_t)


@pytest.mark.parametrize("variant", ["toolbox", "official"])
def test_module_terms_from_the_pieces(variant: str, teacher_checkpoint) -> None:  # type: ignore[no-untyped-def]
    module = SRRL(
        student="resnet20", teacher=TeacherConfig("resnet32x4", str(teacher_checkpoint("resnet32x4"))), variant=variant
    )
    assert module.teacher is not None
    module.eval()
    torch.manual_seed(0)
    batch = {"images": torch.randn(3, 3, 32, 32), "labels": torch.tensor([0, 1, 2])}
    _, losses = module.training_losses(batch)
    assert set(losses) == {"ce", "kd", "srrl_fm", "srrl_sr"}
    with torch.no_grad():
        s = module.student.forward_features(batch["images"])
        t = module.teacher.forward_features(batch["images"])
        conv, bn = module.connector[0], module.connector[1]
        if variant == "toolbox":
            x = s.final_map.mean(dim=(2, 3))  # the pooled embedding (resnet20: GAP of the last map)
            h = torch.relu(bn(conv(x[:, :, None, None]))).flatten(1)
        else:
            h = torch.relu(bn(conv(s.final_map))).mean(dim=(2, 3))
        head = module.teacher.classifier
        fm = ((h - t.embedding) ** 2).mean()
        sr = ((h @ head.weight.T + head.bias - t.logits) ** 2).mean()
    assert losses["srrl_fm"].item() == pytest.approx(fm.item(), rel=1e-5)
    assert losses["srrl_sr"].item() == pytest.approx(sr.item(), rel=1e-5)
    with pytest.raises(MethodConfigError, match="variant='x'"):
        SRRL(
            student="resnet20", teacher=TeacherConfig("resnet32x4", str(teacher_checkpoint("resnet32x4"))), variant="x"
        )  # type: ignore[arg-type]
