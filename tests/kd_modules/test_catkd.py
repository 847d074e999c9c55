"""CAT-KD: the CAT loss by hand and against a loop formulation of full-size CAMs, the CAMs against the networks'
own logits, the bias-free student head, and a fit through the real CLI with the shipped config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from kd_modules import CATKD, TeacherConfig
from kd_modules.errors import MethodConfigError
from kd_modules.losses.catkd import cat_loss, class_activation_maps
from models import create_model

# Student: one channel [[1, 2], [3, 4]], K = 2 classes with weights +1 / -1.  Teacher: two channels, all ones and
# [[0, 0], [0, 4]], weights (1, 1) and (2, 0).  Full-size CAMs: student (1, 2, 3, 4) and (-1, -2, -3, -4); teacher
# (1, 1, 1, 5) and (2, 2, 2, 2).
F_S = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
W_S = torch.tensor([[1.0], [-1.0]])
F_T = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 4.0]]]])
W_T = torch.tensor([[1.0, 1.0], [2.0, 0.0]])


def test_hand_worked_two_classes() -> None:
    # r = 2 (no pooling): squared differences 0+1+4+1 (class 0) and 9+16+25+36 (class 1) over 2*4 cells.
    assert cat_loss(F_S, W_S, F_T, W_T, resolution=2).item() == pytest.approx(92 / 8)
    # r = 1: pooled CAMs student (2.5, -2.5), teacher (2, 2).
    assert cat_loss(F_S, W_S, F_T, W_T, resolution=1).item() == pytest.approx((0.5**2 + 4.5**2) / 2)
    # r = 1 normalised: each one-cell map becomes its sign, student (1, -1), teacher (1, 1).
    assert cat_loss(F_S, W_S, F_T, W_T, resolution=1, normalize=True).item() == pytest.approx(4 / 2)
    # r = 2 normalised: unit vectors (1, 2, 3, 4)/sqrt(30), (1, 1, 1, 5)/sqrt(28); (-1, -2, -3, -4)/sqrt(30), 1/2 each.
    s0 = [v / math.sqrt(30) for v in (1, 2, 3, 4)]
    t0 = [v / math.sqrt(28) for v in (1, 1, 1, 5)]
    expected = sum((a - b) ** 2 for a, b in zip(s0, t0)) + sum((-a - 0.5) ** 2 for a in s0)
    assert cat_loss(F_S, W_S, F_T, W_T, resolution=2, normalize=True).item() == pytest.approx(expected / 8)


def _adaptive_pool_by_loops(cam: list[list[float]], r: int) -> list[list[float]]:
    """torch's adaptive average pooling by its definition: cell i spans [floor(i*H/r), ceil((i+1)*H/r))."""
    h, w = len(cam), len(cam[0])
    out = []
    for i in range(r):
        y0, y1 = (i * h) // r, -(-((i + 1) * h) // r)
        row = []
        for j in range(r):
            x0, x1 = (j * w) // r, -(-((j + 1) * w) // r)
            cells = [cam[y][x] for y in range(y0, y1) for x in range(x0, x1)]
            row.append(sum(cells) / len(cells))
        out.append(row)
    return out


def _pooled_cams_by_loops(feature: torch.Tensor, weight: torch.Tensor, r: int, normalize: bool) -> list[float]:
    """Full-size CAMs as explicit channel sums, then pooled, then optionally L2-normalised per map: flattened."""
    b, c, h, w = feature.shape
    flat = []
    for n in range(b):
        for k in range(weight.shape[0]):
            cam = [
                [sum(float(weight[k, ch] * feature[n, ch, y, x]) for ch in range(c)) for x in range(w)]
                for y in range(h)
            ]
            cells = [v for row in _adaptive_pool_by_loops(cam, r) for v in row]
            if normalize:
                norm = math.sqrt(sum(v * v for v in cells))
                cells = [v / norm for v in cells]
            flat += cells
    return flat


@pytest.mark.parametrize(
    ("size_s", "size_t", "r", "normalize"),
    [(7, 7, 4, False), (7, 7, 2, True), (4, 8, 2, False), (2, 4, 4, True)],  # ImageNet 7x7; unequal sizes; r > H
)
def test_matches_pooled_full_size_cams_with_unequal_channels(size_s: int, size_t: int, r: int, normalize: bool) -> None:
    torch.manual_seed(0)
    f_s, f_t = torch.randn(2, 3, size_s, size_s).relu(), torch.randn(2, 5, size_t, size_t).relu()
    w_s, w_t = torch.randn(4, 3), torch.randn(4, 5)
    s = _pooled_cams_by_loops(f_s, w_s, r, normalize)
    t = _pooled_cams_by_loops(f_t, w_t, r, normalize)
    expected = sum((a - b) ** 2 for a, b in zip(s, t)) / len(s)
    assert cat_loss(f_s, w_s, f_t, w_t, r, normalize).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("arch", ["resnet8x4", "wrn_16_2", "MobileNetV2", "vgg8"])
def test_averaged_cams_are_the_networks_bias_free_logits(arch: str) -> None:
    # The CAMs are taken on the map entering global pooling (post-ReLU, after a WRN's BN-ReLU, after MobileNetV2's
    # 1x1 neck): their spatial means are the logits minus the classifier bias.
    torch.manual_seed(0)
    net = create_model(arch, 10).eval()
    with torch.no_grad():
        out = net.forward_features(torch.randn(2, 3, 32, 32))
        cams = class_activation_maps(out.final_map, net.classifier.weight)
    assert cams.shape == (2, 10, *out.final_map.shape[2:])
    assert torch.allclose(cams.mean(dim=(2, 3)), out.logits - net.classifier.bias, atol=1e-4)


def _module(teacher_checkpoint, **kwargs) -> CATKD:  # type: ignore[no-untyped-def]
    # resnet8x4 teacher (256 channels) -> resnet8 student (64 channels): the CAMs need no connector.
    return CATKD(student="resnet8", teacher=TeacherConfig("resnet8x4", str(teacher_checkpoint("resnet8x4"))), **kwargs)


def test_losses_and_the_bias_free_student_head(teacher_checkpoint) -> None:  # type: ignore[no-untyped-def]
    module = _module(teacher_checkpoint, beta=3.0, resolution=2)
    bias = module.student.classifier.bias
    assert not bias.requires_grad and torch.count_nonzero(bias) == 0
    trainable = [p for m in module.trainable_modules() for p in m.parameters() if p.requires_grad]
    assert all(p is not bias for p in trainable)
    torch.manual_seed(1)
    batch = {"images": torch.randn(4, 3, 32, 32), "labels": torch.tensor([0, 1, 2, 3])}
    logits, losses = module.training_losses(batch)
    assert sorted(losses) == ["cat", "ce"]
    assert losses["ce"].item() == pytest.approx(torch.nn.functional.cross_entropy(logits, batch["labels"]).item())
    with torch.no_grad():  # second formula: full-size CAMs by einsum, pooled afterwards
        s, t = module.student.forward_features(batch["images"]), module.teacher.forward_features(batch["images"])
        cam_s = torch.einsum("kc,bchw->bkhw", module.student.classifier.weight, s.final_map)
        cam_t = torch.einsum("kc,bchw->bkhw", module.teacher.classifier.weight, t.final_map)
        pool = torch.nn.functional.adaptive_avg_pool2d
        expected = 3.0 * (pool(cam_s, 2) - pool(cam_t, 2)).pow(2).mean()
    assert losses["cat"].item() == pytest.approx(expected.item(), rel=1e-5)
    losses["cat"].backward()
    assert module.student.classifier.weight.grad.abs().sum() > 0, "the student's CAMs use its own classifier"
    assert all(p.grad is None for p in module.teacher.parameters())


def test_options(teacher_checkpoint) -> None:  # type: ignore[no-untyped-def]
    biased = _module(teacher_checkpoint, student_bias=True)
    assert biased.student.classifier.bias.requires_grad
    cat_only = _module(teacher_checkpoint, ce_weight=0.0)
    _, losses = cat_only.training_losses({"images": torch.randn(2, 3, 32, 32), "labels": torch.tensor([0, 1])})
    assert sorted(losses) == ["cat"]
    with pytest.raises(MethodConfigError, match="resolution must be a positive number of cells, got 0"):
        _module(teacher_checkpoint, resolution=0)


def test_help_documents_every_argument(capsys: pytest.CaptureFixture[str], check_method_help) -> None:  # type: ignore[no-untyped-def]
    check_method_help("CATKD", capsys)


def test_trains_through_the_cli_with_the_shipped_config(
    cifar_root: Path, tmp_path: Path, fit_shipped_config, trained_teacher: Path
) -> None:  # type: ignore[no-untyped-def]
    cli = fit_shipped_config(
        "catkd",
        cifar_root,
        tmp_path,
        "--model.student=resnet8",
        "--model.teacher.arch=resnet8",
        f"--model.teacher.checkpoint={trained_teacher}",
    )
    assert type(cli.model).__name__ == "CATKD" and cli.model.beta == 15.0 and cli.model.resolution == 2
    assert (tmp_path / "record.json").is_file()
    exported = torch.load(tmp_path / "final.pth")["state_dict"]
    assert exported.keys() == create_model("resnet8", 100).state_dict().keys()
    assert torch.count_nonzero(exported["fc.weight"]) > 0 and torch.count_nonzero(exported["fc.bias"]) == 0
