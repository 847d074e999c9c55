"""FSP: flow matrices and the loss by hand, the equal-channel requirement (also in the planner), the two stages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.plan import build_plan, load_preset
from benchmarks.store import RunStore
from benchmarks.tables import load_table
from kd_modules import FSP, FSPInit, TeacherConfig
from kd_modules.errors import MethodConfigError
from kd_modules.losses.fsp import fsp_loss, fsp_matrix


def test_flow_matrix_by_hand() -> None:
    bottom = torch.tensor([[[[1.0, 2.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2)
    top = torch.tensor([[[[3.0, 1.0]]]])  # (1, 1, 1, 2)
    # G[0, i] = mean_x top_0(x) bottom_i(x): i=0 -> (3 + 2)/2 = 2.5; i=1 -> (0 + 1)/2 = 0.5
    assert fsp_matrix(bottom, top).tolist() == [[[2.5, 0.5]]]
    # a taller bottom map is pooled to the top's height: 2x2 -> 1x1
    tall = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])
    assert fsp_matrix(tall, torch.tensor([[[[2.0]]]])).item() == pytest.approx(2.0 * 4.0)


def test_loss_sums_pair_means() -> None:
    s = [torch.ones(1, 1, 1, 1), torch.ones(1, 1, 1, 1) * 2, torch.ones(1, 1, 1, 1)]
    t = [torch.ones(1, 1, 1, 1), torch.ones(1, 1, 1, 1), torch.ones(1, 1, 1, 1)]
    # G_s = [2, 2], G_t = [1, 1] -> (1)^2 + (1)^2
    assert fsp_loss(s, t).item() == pytest.approx(2.0)


def test_stages_and_channel_requirement(teacher_checkpoint, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from models.checkpoints import export_network

    teacher = TeacherConfig("resnet56", str(teacher_checkpoint("resnet56")))
    init = FSPInit(student="resnet20", teacher=teacher)
    assert not any(p.requires_grad for p in init.student.classifier.parameters())
    torch.manual_seed(0)
    batch = {"images": torch.randn(2, 3, 32, 32), "labels": torch.tensor([0, 1])}
    _, losses = init.training_losses(batch)
    with torch.no_grad():
        s = init.student.forward_features(batch["images"])
        t = init.teacher.forward_features(batch["images"])
        expected = fsp_loss([s.stem, *s.stages_post], [t.stem, *t.stages_post])
    assert losses["fsp"].item() == pytest.approx(expected.item(), rel=1e-5)
    path = export_network(init.student, "resnet20", tmp_path / "init.pth")
    main = FSP(student="resnet20", teacher=teacher, student_init=str(path))
    assert torch.equal(main.student.conv1.weight, init.student.conv1.weight)
    assert set(main.training_losses(batch)[1]) == {"ce"}
    wide = TeacherConfig("resnet32x4", str(teacher_checkpoint("resnet32x4")))
    with pytest.raises(
        MethodConfigError, match=r"resnet20 has \[16, 16, 32, 64\], resnet32x4 has \[32, 64, 128, 256\]"
    ):
        FSPInit(student="resnet20", teacher=wide)
    assert FSP.pair_problem("wrn_40_1", "wrn_40_2", {}) is not None
    assert FSP.pair_problem("resnet20", "resnet56", {}) is None


def test_planner_stage_and_not_applicable_pairs(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    # Trained teachers: with table1's default (released weights, absent here) every FSP student is blocked and the
    # planner drops the init stages no runnable cell needs.
    plan = build_plan(
        load_table("table1"), load_preset("full"), store, data_root="data", methods=["FSP"], teachers="trained"
    )
    na = plan.runs[plan.cells[("FSP", "wrn_40_2->wrn_40_1")][0]]
    assert na.blocked is not None and "equal channel counts" in na.blocked
    main = plan.runs[plan.cells[("FSP", "resnet56->resnet20")][0]]
    stage = next(s for s in plan.ordered() if s.kind == "stage" and s.pair.label == "resnet56->resnet20")
    assert main.blocked is None and stage.method == "FSPInit" and stage.run_id in main.depends_on
    assert stage.config["trainer"]["max_epochs"] == 30
    assert main.config["model"]["init_args"]["student_init"] == str(store.run_dir(stage.run_id) / "final.pth")
