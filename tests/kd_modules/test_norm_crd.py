"""NORM+CRD: NORM's terms unchanged plus 2.5 x CRD's NCE objective on the pooled FT output, computed here by
explicit loops; the weight's tie to the logit scale; contrast data from the shipped config through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from benchmarks.export import export_folded
from benchmarks.tables import load_table
from kd_modules import NORM, NORMCRD, TeacherConfig
from kd_modules.crd import ContrastSettings
from kd_modules.errors import MethodConfigError
from kd_modules.norm import feature_transform_at
from models import create_model
from models.checkpoints import export_network, load_network


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> TeacherConfig:
    torch.manual_seed(0)
    path = export_network(create_model("resnet8x4", 100), "resnet8x4", tmp_path_factory.mktemp("t") / "t.pth")
    return TeacherConfig("resnet8x4", str(path))


def _batch(num_data: int, k: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    indices = torch.tensor([3, 7, 1, 9])
    negatives = torch.randint(0, num_data, (4, k), generator=g)
    return {
        "images": torch.randn(4, 3, 32, 32, generator=g),
        "labels": torch.tensor([0, 5, 5, 2]),
        "indices": indices,
        "contrast_indices": torch.cat([indices[:, None], negatives], dim=1),
    }


def _nce_by_loops(anchors: Tensor, bank: Tensor, contrast: Tensor, temperature: float, num_data: int) -> float:
    """CRD Eq. 18 written out: exp(<m_j, v_b> / T), Z = mean of the batch's scores x N, then
    -[sum_b log(x_b0 / (x_b0 + K/N)) + sum_{b,k>=1} log((K/N) / (x_bk + K/N))] / B  (eps 1e-7 as the reference)."""
    raw = [
        [math.exp(float(bank[j] @ anchors[b]) / temperature) for j in contrast[b].tolist()] for b in range(len(anchors))
    ]
    z = sum(sum(row) for row in raw) / (len(raw) * len(raw[0])) * num_data
    k = len(raw[0]) - 1
    noise = k / num_data
    total = 0.0
    for row in raw:
        x = [value / z for value in row]
        total += math.log(x[0] / (x[0] + noise + 1e-7))
        total += sum(math.log(noise / (value + noise + 1e-7)) for value in x[1:])
    return -total / len(raw)


def test_total_is_norm_plus_logit_scale_times_crd(teacher: TeacherConfig) -> None:
    torch.manual_seed(1)
    module = NORMCRD("resnet8x4", teacher, contrast=ContrastSettings(memory_size=20))
    assert module.crd_weight == 2.5, "the released loop weights CRD by --ceta, the logit scale"
    module.train()
    plain = NORM("resnet8x4", teacher)
    plain.train()
    plain.load_state_dict(module.state_dict(), strict=False)  # same student (and FT), no CRD modules

    bank_student = module.memory.memory_student.clone()
    bank_teacher = module.memory.memory_teacher.clone()
    batch = _batch(20, 5)
    with torch.no_grad():
        out = module.student.forward_features(batch["images"])
        point, ft = feature_transform_at(module.student)
        assert point == "stage3"
        # The student's CRD vector is the global average of the FT + residual output (resnet: nothing after it).
        ft_output, _ = ft(out.stages_post[-1])
        pooled = ft_output.mean(dim=(2, 3))
        assert torch.allclose(out.embedding, pooled, atol=1e-6)
        v_student = module.embed_student(pooled)
        v_teacher = module.embed_teacher(module.teacher.forward_features(batch["images"]).embedding)
    expected_crd = _nce_by_loops(v_student, bank_teacher, batch["contrast_indices"], 0.07, 20)
    expected_crd += _nce_by_loops(v_teacher, bank_student, batch["contrast_indices"], 0.07, 20)

    _, losses = module.training_losses(batch)
    _, norm_losses = plain.training_losses(batch)
    assert set(losses) == {"ce", "norm", "crd"}
    assert losses["crd"].item() == pytest.approx(2.5 * expected_crd, rel=1e-4)
    for name in ("ce", "norm"):
        assert losses[name].item() == pytest.approx(norm_losses[name].item(), rel=1e-6), name
    total = torch.stack(list(losses.values())).sum()
    total.backward()
    for name in ("embed_student", "embed_teacher"):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(module, name).parameters())
    assert all(p.grad is not None for p in module.student.parameters())


def test_crd_weight_follows_the_formulation(teacher: TeacherConfig) -> None:
    assert NORMCRD("resnet8x4", teacher, logit_scale=2.0).crd_weight == 2.0
    assert NORMCRD("resnet8x4", teacher, formulation="paper").crd_weight == 0.8, "no logit scale: CRD's own 0.8"
    assert NORMCRD("resnet8x4", teacher, crd_weight=1.0).crd_weight == 1.0
    with pytest.raises(MethodConfigError, match="crd_weight must be >= 0"):
        NORMCRD("resnet8x4", teacher, crd_weight=-1.0)


def test_wrn_student_pools_after_the_final_bn_relu(tmp_path: Path) -> None:
    path = export_network(create_model("wrn_40_2", 100), "wrn_40_2", tmp_path / "wrn.pth")
    module = NORMCRD("wrn_16_2", TeacherConfig("wrn_40_2", str(path)), contrast=ContrastSettings(memory_size=8))
    assert module.embed_student.linear.in_features == module.student.embedding_dim == 128
    module.train()
    images = torch.randn(2, 3, 32, 32)
    out = module.student.forward_features(images)
    assert out.final_map.min() >= 0, "WRN: the FT output goes through BN-ReLU before pooling (wrn_student.py)"


def test_missing_contrast_indices_name_the_config(teacher: TeacherConfig) -> None:
    module = NORMCRD("resnet8x4", teacher, contrast=ContrastSettings(memory_size=20))
    batch = _batch(20, 5)
    del batch["contrast_indices"]
    with pytest.raises(MethodConfigError, match=r"NORM\+CRD needs contrast indices.*norm_crd.yaml"):
        module.training_losses(batch)


def test_shipped_config_through_the_cli(
    cifar_root: Path, tmp_path: Path, fit_shipped_config, teacher: TeacherConfig
) -> None:  # type: ignore[no-untyped-def]
    cli = fit_shipped_config(
        "norm_crd",
        cifar_root,
        tmp_path,
        "--model.student=resnet8x4",
        f"--model.teacher.arch={teacher.arch}",
        f"--model.teacher.checkpoint={teacher.checkpoint}",
    )
    assert type(cli.model).__name__ == "NORMCRD"
    assert cli.datamodule.contrast_k == 16384
    assert cli.model.memory.num_data == cli.datamodule.num_train_samples == 1000
    assert json.loads((tmp_path / "record.json").read_text())["steps"] == 2
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/ce", "train/norm", "train/crd"} <= set(header)
    checkpoint = torch.load(tmp_path / "checkpoints" / "best.ckpt")["state_dict"]
    assert checkpoint["memory.memory_student"].shape == (1000, 128) and checkpoint["memory.z_student"] > 0
    # final.pth is the NORM student (FT kept, no CRD modules); it folds into the plain resnet8x4 like any NORM one.
    exported = torch.load(tmp_path / "final.pth")["state_dict"]
    plain_keys = set(create_model("resnet8x4", 100).state_dict())
    assert {k for k in exported if not k.startswith("inserted.stage3.")} == plain_keys
    export_folded(tmp_path / "final.pth", tmp_path / "folded.pth")
    load_network("resnet8x4", 100, tmp_path / "folded.pth")


def test_table1_row() -> None:
    rows = {row.label: row for row in load_table("table1").rows}
    row = rows["NORM+CRD"]
    assert row.method == "NORMCRD" and row.config == "configs/methods/norm_crd.yaml"
    assert [(ref.source, ref.method) for ref in row.paper] == [("norm.T1", "norm+crd")]


def test_help_lists_every_argument(capsys: pytest.CaptureFixture[str], check_method_help) -> None:  # type: ignore[no-untyped-def]
    check_method_help("NORMCRD", capsys)
