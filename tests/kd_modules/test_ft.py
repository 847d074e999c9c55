"""FT: the factor loss by hand (both normalisations), the paraphraser stage, and the main stage reading it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.plan import build_plan, load_preset
from benchmarks.store import RunStore
from benchmarks.tables import load_table
from kd_modules import FT, FTParaphraserInit, TeacherConfig
from kd_modules.errors import MethodConfigError
from kd_modules.losses.ft import ft_loss
from models.checkpoints import CheckpointError


def test_factor_loss_by_hand() -> None:
    # one sample, two channels, 1x2 map
    s = torch.tensor([[[[1.0, 0.0]], [[1.0, 0.0]]]])  # mean of squares over channels: [1, 0] -> normalised [1, 0]
    t = torch.tensor([[[[1.0, 1.0]], [[1.0, 1.0]]]])  # [1, 1] -> [0.7071, 0.7071]
    r = 2**-0.5
    assert ft_loss(s, t).item() == pytest.approx((abs(1 - r) + r) / 2)
    # paper: flatten C*H*W: s -> [1,0,1,0]/sqrt2 ; t -> [1,1,1,1]/2
    expected = (2 * abs(r - 0.5) + 2 * 0.5) / 4
    assert ft_loss(s, t, "paper").item() == pytest.approx(expected)
    # a taller student map is pooled to the teacher's height first
    tall = s.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # 2x4 -> pooled to 1x1? heights 2 vs 1
    assert ft_loss(tall, t[..., :1]).item() == pytest.approx(0.0, abs=1e-7)


def _paraphraser_checkpoint(module: FTParaphraserInit, path: Path) -> Path:
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    return path


def test_stages(teacher_checkpoint, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    teacher = TeacherConfig("resnet32x4", str(teacher_checkpoint("resnet32x4")))
    init = FTParaphraserInit(student="resnet20", teacher=teacher)
    assert not any(p.requires_grad for p in init.student.parameters()), "the student is not trained in stage 1"
    assert [m.out_channels for m in init.paraphraser.encoder if isinstance(m, torch.nn.Conv2d)] == [256, 128, 128]
    torch.manual_seed(0)
    batch = {"images": torch.randn(2, 3, 32, 32), "labels": torch.tensor([0, 1])}
    _, losses = init.training_losses(batch)
    with torch.no_grad():
        t = init.teacher.forward_features(batch["images"]).stages_post[-1]
        expected = ((init.paraphraser(t)[1] - t) ** 2).mean()
    assert losses["reconstruction"].item() == pytest.approx(expected.item(), rel=1e-5)

    path = _paraphraser_checkpoint(init, tmp_path / "last.ckpt")
    module = FT(student="resnet20", teacher=teacher, paraphraser_checkpoint=str(path))
    assert torch.equal(module.paraphraser.encoder[0].weight, init.paraphraser.encoder[0].weight)
    assert not any(k.startswith("_paraphraser") or k.startswith("paraphraser") for k in module.state_dict())
    module.eval()
    _, losses = module.training_losses(batch)
    assert set(losses) == {"ce", "ft"}
    with torch.no_grad():
        s = module.student.forward_features(batch["images"]).stages_post[-1]
        expected = ft_loss(module.translator(s), init.paraphraser.encoder(t))
    assert losses["ft"].item() == pytest.approx(200.0 * expected.item(), rel=1e-5)
    with pytest.raises(MethodConfigError, match="paraphraser_checkpoint"):
        FT(student="resnet20", teacher=teacher)
    with pytest.raises(CheckpointError, match="holds no paraphraser"):
        FT(student="resnet20", teacher=teacher, paraphraser_checkpoint=str(teacher_checkpoint("resnet32x4")))


def test_the_paraphraser_stage_is_a_cached_prerequisite_run(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    pair = "resnet56->resnet20"
    plan = build_plan(
        load_table("table1"),
        load_preset("full"),
        store,
        data_root="data",
        pairs=[pair],
        methods=["FT"],
        teachers="trained",
    )
    main = plan.runs[plan.cells[("FT", pair)][0]]
    stage = next(s for s in plan.ordered() if s.kind == "stage")
    assert main.blocked is None and stage.method == "FTParaphraserInit" and stage.run_id in main.depends_on
    assert stage.config["trainer"]["max_epochs"] == 30
    assert stage.config["model"]["init_args"]["optim"]["lr"] == 0.01
    assert stage.config["model"]["init_args"]["optim"]["schedule"] == "constant"
    assert main.config["model"]["init_args"]["paraphraser_checkpoint"] == str(
        store.run_dir(stage.run_id) / "checkpoints" / "last.ckpt"
    )
