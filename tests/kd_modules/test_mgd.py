"""MGD: the loss by hand and against a loop formulation (masks built cell by cell from the same uniform draws, the
generation block's convolutions as explicit sums over windows), the mask's ratio and layout, the method's step on
a channel-mismatched pair (the 1x1 align conv) and an equal one (none), its teacher and size requirements, a fit
through the real CLI with the shipped config, and the MGD cells of nd.t2 and table3 in the plan."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.host_sync import HostSyncGuard
from benchmarks.plan import build_plan, load_preset
from benchmarks.store import RunStore
from benchmarks.tables import load_table
from kd_modules import MGD, TeacherConfig
from kd_modules.errors import MethodConfigError
from kd_modules.losses.mgd import mgd_loss, random_mask
from models import create_model


# ------------------------------------------------------------------------------------------------ the loss by hand
def test_hand_worked_channel_mask_and_batch_division() -> None:
    # Two samples, two channels, 1x2 maps; generation doubles its input.  Sample 0 keeps channel 0 and masks
    # channel 1, sample 1 keeps both.
    s = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]], [[[0.0, 1.0]], [[1.0, 0.0]]]])
    t = torch.tensor([[[[2.0, 2.0]], [[1.0, 0.0]]], [[[0.0, 3.0]], [[2.0, 2.0]]]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])[:, :, None, None]
    # Sample 0: generated (2, 4 | 0, 0) vs (2, 2 | 1, 0): 0 + 4 + 1 + 0 = 5.
    # Sample 1: generated (0, 2 | 2, 0) vs (0, 3 | 2, 2): 0 + 1 + 0 + 4 = 5.  Sum 10 over N = 2 samples.
    assert mgd_loss(s, t, mask, lambda x: 2 * x).item() == pytest.approx(10 / 2)
    # Nothing masked and an identity generation: the per-sample squared distance, averaged over samples.
    expected = ((s - t) ** 2).sum().item() / 2
    assert mgd_loss(s, t, torch.ones(2, 2, 1, 1), lambda x: x).item() == pytest.approx(expected)


def test_hand_worked_pixel_mask() -> None:
    # One sample, two channels, 1x2 maps; the pixel mask drops position 1 of both channels.
    s = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    t = torch.tensor([[[[1.0, 1.0]], [[0.0, 1.0]]]])
    mask = torch.tensor([[[[1.0, 0.0]]]])
    # generated (1, 0 | 3, 0) vs (1, 1 | 0, 1): 0 + 1 + 9 + 1 = 11.
    assert mgd_loss(s, t, mask, lambda x: x).item() == pytest.approx(11.0)


def test_hand_worked_generation_block() -> None:
    # A 1-channel generation block on a 1x1 map: 3x3 convs with padding 1 see only their centre weight.
    generation = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.ReLU(), nn.Conv2d(1, 1, 3, padding=1))
    with torch.no_grad():
        for conv, (centre, bias) in zip((generation[0], generation[2]), ((2.0, -1.0), (3.0, 0.5))):
            conv.weight.fill_(100.0)  # off-centre taps multiply the zero padding
            conv.weight[0, 0, 1, 1] = centre
            conv.bias.fill_(bias)
    s = torch.tensor([[[[1.5]]], [[[0.25]]]])
    t = torch.tensor([[[[4.0]]], [[[1.0]]]])
    # Sample 0 unmasked: relu(2*1.5 - 1) = 2, 3*2 + 0.5 = 6.5, (6.5 - 4)^2 = 6.25.
    # Sample 1 masked: relu(-1) = 0, 0.5, (0.5 - 1)^2 = 0.25.  (6.25 + 0.25) / 2.
    loss = mgd_loss(s, t, torch.tensor([1.0, 0.0])[:, None, None, None], generation)
    assert loss.item() == pytest.approx(6.5 / 2)


def test_mismatched_maps_are_refused() -> None:
    with pytest.raises(ValueError, match=r"generated map \(1, 2, 2, 2\) does not match the teacher's \(1, 2, 1, 1\)"):
        mgd_loss(torch.ones(1, 2, 2, 2), torch.ones(1, 2, 1, 1), torch.ones(1, 2, 1, 1), lambda x: x)


# ------------------------------------------------------------------------------------ a loop formulation
def _conv3x3_by_loops(x: list[list[list[float]]], weight: torch.Tensor, bias: torch.Tensor) -> list[list[list[float]]]:
    """A 3x3 convolution with zero padding 1, as explicit sums over each window (C_in x H x W -> C_out x H x W)."""
    c_in, h, w = len(x), len(x[0]), len(x[0][0])
    out = []
    for o in range(weight.shape[0]):
        plane = []
        for i in range(h):
            row = []
            for j in range(w):
                total = float(bias[o])
                for c in range(c_in):
                    for di in range(3):
                        for dj in range(3):
                            y, z = i + di - 1, j + dj - 1
                            if 0 <= y < h and 0 <= z < w:
                                total += float(weight[o, c, di, dj]) * x[c][y][z]
                row.append(total)
            plane.append(row)
        out.append(plane)
    return out


def _loss_by_loops(
    s: torch.Tensor, t: torch.Tensor, draws: torch.Tensor, ratio: float, kind: str, gen: nn.Sequential
) -> float:
    """The official classification / paper formulation spelled out: a unit is masked where its draw is below λ."""
    n, c, h, w = s.shape
    total = 0.0
    for b in range(n):
        masked = []
        for k in range(c):
            masked.append(
                [
                    [
                        0.0
                        if float(draws[b, k, 0, 0] if kind == "channel" else draws[b, 0, i, j]) < ratio
                        else float(s[b, k, i, j])
                        for j in range(w)
                    ]
                    for i in range(h)
                ]
            )
        hidden = [
            [[max(v, 0.0) for v in row] for row in plane]
            for plane in _conv3x3_by_loops(masked, gen[0].weight, gen[0].bias)
        ]
        generated = _conv3x3_by_loops(hidden, gen[2].weight, gen[2].bias)
        total += sum(
            (generated[k][i][j] - float(t[b, k, i, j])) ** 2 for k in range(c) for i in range(h) for j in range(w)
        )
    return total / n


@pytest.mark.parametrize("kind", ["channel", "pixel"])
def test_matches_the_loop_formulation_with_the_same_draws(kind: str) -> None:
    torch.manual_seed(0)
    s, t = torch.randn(3, 4, 3, 5), torch.randn(3, 4, 3, 5)
    gen = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    ratio = 0.4
    draws = torch.rand((3, 4, 1, 1) if kind == "channel" else (3, 1, 3, 5), generator=torch.Generator().manual_seed(7))
    mask = random_mask(s.shape, ratio, kind, generator=torch.Generator().manual_seed(7))  # type: ignore[arg-type]
    assert 0 < int((mask == 0).sum()) < mask.numel(), "the draws mask some units and keep others"
    with torch.no_grad():
        loss = mgd_loss(s, t, mask, gen).item()
        expected = _loss_by_loops(s, t, draws, ratio, kind, gen)
    assert loss == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------------------- the mask
@pytest.mark.parametrize(
    ("kind", "shape", "units"), [("channel", (64, 512, 7, 7), 64 * 512), ("pixel", (64, 512, 7, 7), 64 * 49)]
)
def test_mask_ratio_and_layout(kind: str, shape: tuple[int, int, int, int], units: int) -> None:
    torch.manual_seed(3)
    ratio = 0.15
    mask = random_mask(shape, ratio, kind)  # type: ignore[arg-type]
    assert mask.shape == ((64, 512, 1, 1) if kind == "channel" else (64, 1, 7, 7)) and mask.numel() == units
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    share = float((mask == 0).float().mean())
    sigma = math.sqrt(ratio * (1 - ratio) / units)  # binomial standard deviation of the masked share
    assert abs(share - ratio) < 5 * sigma, (share, sigma)
    per_sample = (mask == 0).flatten(1).float().mean(1)
    assert per_sample.std() > 0, "each sample draws its own mask"
    assert float((random_mask(shape, 0.0, kind) == 0).sum()) == 0  # λ = 0 masks nothing  # type: ignore[arg-type]


def test_mask_comes_from_torchs_generator_on_the_device_without_a_sync() -> None:
    torch.manual_seed(11)
    expected = torch.rand(2, 8, 1, 1) >= 0.5
    torch.manual_seed(11)
    with HostSyncGuard() as guard:
        mask = random_mask((2, 8, 4, 4), 0.5, "channel", device="cpu", dtype=torch.float64)
    assert not guard.found, [str(s) for s in guard.found]
    assert mask.dtype == torch.float64 and torch.equal(mask.bool(), expected)


# ------------------------------------------------------------------------------------------------- the method
def _module(teacher_checkpoint, teacher: str = "resnet8x4", **kwargs) -> MGD:  # type: ignore[no-untyped-def]
    return MGD(student="resnet8", teacher=TeacherConfig(teacher, str(teacher_checkpoint(teacher))), **kwargs)


def test_step_with_the_align_conv_on_unequal_channels(teacher_checkpoint) -> None:  # type: ignore[no-untyped-def]
    # resnet8x4 teacher (256 x 8 x 8) -> resnet8 student (64 x 8 x 8): a 1x1 align conv 64 -> 256.
    module = _module(teacher_checkpoint, alpha_mgd=2e-3, lambda_mgd=0.3)
    assert isinstance(module.align, nn.Conv2d) and module.align.kernel_size == (1, 1)
    assert (module.align.in_channels, module.align.out_channels) == (64, 256) and module.align.bias is not None
    convs = [m for m in module.generation if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (256, 256, (3, 3), (1, 1))
    ] * 2
    assert isinstance(module.generation[1], nn.ReLU)
    assert module.extra_parameters() == (64 * 256 + 256) + 2 * (256 * 256 * 9 + 256)
    torch.manual_seed(1)
    batch = {"images": torch.randn(4, 3, 32, 32), "labels": torch.tensor([0, 1, 2, 3])}
    torch.manual_seed(5)
    logits, losses = module.training_losses(batch)
    assert sorted(losses) == ["ce", "mgd"]
    assert losses["ce"].item() == pytest.approx(F.cross_entropy(logits, batch["labels"]).item())
    with torch.no_grad():  # second computation: the mask redrawn from the same seed, the formula written out
        s = module.student.forward_features(batch["images"]).final_map
        t = module.teacher.forward_features(batch["images"]).final_map
        torch.manual_seed(5)
        keep = (torch.rand(4, 256, 1, 1) >= 0.3).float()
        generated = module.generation(module.align(s) * keep)
        expected = 2e-3 * ((generated - t) ** 2).sum() / 4
    assert losses["mgd"].item() == pytest.approx(expected.item(), rel=1e-5)
    losses["mgd"].backward()
    for name, part in (("align", module.align), ("generation", module.generation), ("student", module.student)):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), name
    assert all(p.grad is None for p in module.teacher.parameters())
    trainable = {id(p) for m in module.trainable_modules() for p in m.parameters()}
    assert {id(p) for p in module.align.parameters()} | {id(p) for p in module.generation.parameters()} <= trainable


def test_no_align_conv_on_equal_channels(teacher_checkpoint) -> None:  # type: ignore[no-untyped-def]
    module = _module(teacher_checkpoint, teacher="resnet20")  # 64 -> 64 channels, 8 x 8
    assert module.align is None and not any(k.startswith("align.") for k in module.state_dict())
    assert module.extra_parameters() == 2 * (64 * 64 * 9 + 64)
    _, losses = module.training_losses({"images": torch.randn(2, 3, 32, 32), "labels": torch.tensor([0, 1])})
    assert torch.isfinite(losses["mgd"])


def test_options_and_bad_values(teacher_checkpoint) -> None:  # type: ignore[no-untyped-def]
    batch = {"images": torch.randn(2, 3, 32, 32), "labels": torch.tensor([0, 1])}
    mgd_only = _module(teacher_checkpoint, ce_weight=0.0, mask="pixel")
    _, losses = mgd_only.training_losses(batch)
    assert sorted(losses) == ["mgd"] and mgd_only.mask == "pixel"
    with pytest.raises(MethodConfigError, match=r"lambda_mgd is the masked share, in \[0, 1\); got 1.0"):
        _module(teacher_checkpoint, lambda_mgd=1.0)
    with pytest.raises(MethodConfigError, match="mask 'cell' is not one of: channel, pixel"):
        _module(teacher_checkpoint, mask="cell")


def test_requires_a_teacher() -> None:
    assert MGD.requires_teacher
    with pytest.raises(ValueError, match="MGD needs a teacher"):
        MGD(student="resnet8", teacher=None)  # type: ignore[arg-type]


def test_maps_of_unequal_size_are_undefined(teacher_checkpoint) -> None:  # type: ignore[no-untyped-def]
    # The official loss asserts equal sizes; every ImageNet pair of the tables has 7 x 7 maps.
    for student, teacher in (("resnet18", "resnet34"), ("mobilenetv1", "resnet50"), ("mobilenetv2", "resnet50")):
        assert MGD.pair_problem(student, teacher, {}) is None
    problem = MGD.pair_problem("MobileNetV2", "vgg13", {})
    assert problem is not None and "MobileNetV2 gives 2x2, vgg13 4x4" in problem
    with pytest.raises(MethodConfigError, match="MobileNetV2 gives 2x2, vgg13 4x4"):
        MGD(student="MobileNetV2", teacher=TeacherConfig("vgg13", str(teacher_checkpoint("vgg13"))))


def test_help_documents_every_argument(capsys: pytest.CaptureFixture[str], check_method_help) -> None:  # type: ignore[no-untyped-def]
    check_method_help("MGD", capsys)


def test_trains_through_the_cli_with_the_shipped_config(
    cifar_root: Path, tmp_path: Path, fit_shipped_config, trained_teacher: Path
) -> None:  # type: ignore[no-untyped-def]
    cli = fit_shipped_config(
        "mgd",
        cifar_root,
        tmp_path,
        "--model.student=resnet8",
        "--model.teacher.arch=resnet8",
        f"--model.teacher.checkpoint={trained_teacher}",
    )
    model = cli.model
    assert type(model).__name__ == "MGD" and (model.alpha_mgd, model.lambda_mgd, model.mask) == (7e-5, 0.15, "channel")
    assert model.ce_weight == 1.0 and (tmp_path / "record.json").is_file()
    exported = torch.load(tmp_path / "final.pth")["state_dict"]
    assert exported.keys() == create_model("resnet8", 100).state_dict().keys(), (
        "align / generation leak into the export"
    )
    saved = torch.load(tmp_path / "checkpoints" / "best.ckpt")["state_dict"]
    assert any(k.startswith("generation.") for k in saved)


# ------------------------------------------------------------------------------------------------- the tables
@pytest.mark.parametrize(
    ("table", "pairs"),
    [
        ("nd.t2", ["resnet34->resnet18", "resnet50->mobilenetv1"]),
        ("table3", ["resnet34->resnet18", "resnet50->mobilenetv1", "resnet50->mobilenetv2", "resnet50->resnet18"]),
    ],
)
def test_the_mgd_cells_of_the_imagenet_tables_now_plan(table: str, pairs: list[str], tmp_path: Path) -> None:
    plan = build_plan(load_table(table), load_preset("full"), RunStore(tmp_path), data_root="data", trials=1)
    for pair in pairs:
        ids = plan.cells[("MGD", pair)]
        assert len(ids) == 1
        spec = plan.runs[ids[0]]
        args = spec.config["model"]["init_args"]
        assert spec.config["model"]["class_path"] == "kd_modules.MGD"
        assert (args["alpha_mgd"], args["lambda_mgd"], args["mask"], args["ce_weight"]) == (7e-5, 0.15, "channel", 1.0)
        # Only the released torchvision teacher, absent here, stands between the cell and its run.
        reason = plan.blocked_cells.get(("MGD", pair))
        assert reason is None or "teacher weights not found" in reason, reason
