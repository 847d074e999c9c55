"""AB: the activation-boundary loss by hand, the initialisation stage (what it trains), and the two stages as runs of
the planner (cached: a re-run repeats nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.plan import build_plan, load_preset
from benchmarks.store import RunStore
from benchmarks.tables import load_table
from kd_modules import AB, ABInit, TeacherConfig
from kd_modules.losses.ab import ab_layer_loss, ab_loss


def test_layer_loss_by_hand() -> None:
    s = torch.tensor([0.5, -2.0, -0.5, 0.2, 3.0, -1.0])
    t = torch.tensor([-1.0, -1.0, 0.0, 2.0, 1.0, 1.0])
    # t<=0 (inactive): s=0.5 > -1 -> (1.5)^2 = 2.25; s=-2 <= -1 -> 0; s=-0.5 > -1 -> (0.5)^2 = 0.25
    # t>0 (active): s=0.2 <= 1 -> (0.8)^2 = 0.64; s=3 > 1 -> 0; s=-1 <= 1 -> (-2)^2 = 4
    assert ab_layer_loss(s, t).item() == pytest.approx(2.25 + 0.25 + 0.64 + 4.0)
    assert ab_layer_loss(s, t, margin=0.5).item() == pytest.approx(1.0 + 0.0 + 0.0 + 0.09 + 0.0 + 2.25)


def test_layer_weights_and_normalisation() -> None:
    # batch of 2; layer values 1, 2, 3 (sum over the batch) -> (1/4 + 2/2 + 3) / 2 / 1000 * 3
    ones = torch.zeros(2, 1)
    layers_s = [ones + 0.0, ones + 0.0, ones + 0.0]  # s = 0 with t > 0: (0 - 1)^2 = 1 per element
    layers_t = [torch.tensor([[1.0], [-1.0]]), torch.ones(2, 1), torch.ones(2, 1)]
    # element counts that fire: layer0: 1 (active) + 1 (inactive, s=0 > -1 -> 1) = 2; layer1: 2; layer2: 2
    expected = (2 * 0.25 + 2 * 0.5 + 2 * 1.0) / 2 / 1000 * 3
    assert ab_loss(layers_s, layers_t).item() == pytest.approx(expected)


def test_init_stage_trains_student_layers_and_connectors_only(teacher_checkpoint) -> None:  # type: ignore[no-untyped-def]
    module = ABInit(student="resnet8x4", teacher=TeacherConfig("resnet32x4", str(teacher_checkpoint("resnet32x4"))))
    assert all(isinstance(c, torch.nn.Identity) for c in module.connectors), "equal shapes: identity connectors"
    assert not any(p.requires_grad for p in module.student.classifier.parameters())
    torch.manual_seed(0)
    batch = {"images": torch.randn(2, 3, 32, 32), "labels": torch.tensor([0, 1])}
    _, losses = module.training_losses(batch)
    assert set(losses) == {"ab"}
    with torch.no_grad():
        s = module.student.forward_features(batch["images"]).stages_pre
        t = module.teacher.forward_features(batch["images"]).stages_pre
    assert losses["ab"].item() == pytest.approx(ab_loss(list(s), list(t)).item(), rel=1e-5)
    mismatched = ABInit(student="resnet20", teacher=TeacherConfig("resnet32x4", str(teacher_checkpoint("resnet32x4"))))
    assert [c.conv.out_channels for c in mismatched.connectors] == [64, 128, 256]
    assert all(isinstance(c.relu, torch.nn.Identity) for c in mismatched.connectors), "AB's connector has no ReLU"


def test_main_stage_is_cross_entropy_from_the_init_weights(teacher_checkpoint, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from models.checkpoints import export_network

    teacher = TeacherConfig("resnet56", str(teacher_checkpoint("resnet56")))
    init = ABInit(student="resnet20", teacher=teacher)
    path = export_network(init.student, "resnet20", tmp_path / "init.pth")
    module = AB(student="resnet20", teacher=teacher, student_init=str(path))
    assert torch.equal(module.student.conv1.weight, init.student.conv1.weight)
    batch = {"images": torch.randn(2, 3, 32, 32), "labels": torch.tensor([0, 1])}
    logits, losses = module.training_losses(batch)
    assert set(losses) == {"ce"}
    assert losses["ce"].item() == pytest.approx(torch.nn.functional.cross_entropy(logits, batch["labels"]).item())
    kept = AB(student="resnet20", teacher=teacher, feat_weight=2.0)
    assert set(kept.training_losses(batch)[1]) == {"ce", "ab"}


def test_the_init_stage_is_a_cached_prerequisite_run(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    pair = "resnet56->resnet20"
    for preset_name, epochs in (("full", 30), ("smoke", 1)):
        plan = build_plan(
            load_table("table1"),
            load_preset(preset_name),
            store,
            data_root="data",
            pairs=[pair],
            methods=["AB"],
            teachers="trained",
        )
        main = plan.runs[plan.cells[("AB", pair)][0]]
        stage = next(s for s in plan.ordered() if s.kind == "stage")
        assert main.blocked is None and stage.blocked is None
        assert stage.method == "ABInit" and stage.run_id in main.depends_on
        assert stage.config["trainer"]["max_epochs"] == epochs
        assert stage.config["model"]["init_args"]["optim"]["schedule"] == "constant"
        assert main.config["model"]["init_args"]["student_init"] == str(store.run_dir(stage.run_id) / "final.pth")
