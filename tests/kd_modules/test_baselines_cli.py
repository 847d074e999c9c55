"""Every baseline of issue 5 through the real CLI path, its documented arguments, and one step on channel- and
size-mismatched ResNet pairs (connectors built from ``feature_shapes()``)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from kd_modules import TeacherConfig, method_class
from kd_modules.crd import ContrastSettings
from models import create_model

# every shipped config of this methods -> the method class it selects
CONFIGS = {
    "fitnet": "FitNet",
    "at": "AT",
    "sp": "SP",
    "cc": "CC",
    "vid": "VID",
    "vid_mdistiller": "VID",
    "rkd": "RKD",
    "pkt": "PKT",
    "nst": "NST",
    "kdsvd": "KDSVD",
    "kdsvd_mdistiller": "KDSVD",
    "crd": "CRD",
    "crd_kd": "CRDKD",
    "dkd": "DKD",
    "dist": "DIST",
}
METHODS = sorted(set(CONFIGS.values()))


@pytest.mark.parametrize("name", METHODS)
def test_help_lists_every_argument_typed_and_documented(
    name: str, capsys: pytest.CaptureFixture[str], check_method_help
) -> None:  # type: ignore[no-untyped-def]
    check_method_help(name, capsys)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_trains_through_the_cli_with_the_shipped_config(
    config: str, cifar_root: Path, tmp_path: Path, fit_shipped_config, trained_teacher: Path
) -> None:  # type: ignore[no-untyped-def]
    # Recipe then method config, as documented; channel-mismatched pairs are covered by the one-step test below
    # (a resnet32x4 teacher would make each run several times slower on CPU).
    cli = fit_shipped_config(
        config,
        cifar_root,
        tmp_path,
        "--model.student=resnet8",
        "--model.teacher.arch=resnet8",
        f"--model.teacher.checkpoint={trained_teacher}",
    )
    name = CONFIGS[config]
    assert type(cli.model).__name__ == name
    assert (tmp_path / "record.json").is_file()
    exported = torch.load(tmp_path / "final.pth")["state_dict"]
    assert exported.keys() == create_model("resnet8", 100).state_dict().keys(), "method modules leak into the export"
    extra = {
        k for k in torch.load(tmp_path / "checkpoints" / "best.ckpt")["state_dict"] if not k.startswith("student.")
    }
    if name in _EXTRA_MODULES:
        assert any(k.startswith(_EXTRA_MODULES[name]) for k in extra), f"{name}: {_EXTRA_MODULES[name]} not saved"
    with open(tmp_path / "csv" / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("train/loss")]
    assert rows and math.isfinite(float(rows[-1]["train/loss"]))
    if name in ("CRD", "CRDKD"):
        assert cli.model.memory.num_data == cli.datamodule.num_train_samples == 1000
        assert cli.model.memory.z_student > 0 and cli.model.memory.z_teacher > 0


_EXTRA_MODULES = {
    "FitNet": "regressor.",
    "CC": "embed_teacher.",
    "VID": "regressors.",
    "CRD": "memory.memory_student",
    "CRDKD": "memory.z_teacher",
}


@pytest.mark.parametrize("student", ["resnet8x4", "resnet20"])
@pytest.mark.parametrize("name", METHODS)
def test_one_step_on_mismatched_resnet_pairs(name: str, student: str, teacher_checkpoint) -> None:  # type: ignore[no-untyped-def]
    cls = method_class(name)
    kwargs: dict[str, object] = {}
    if name == "KDSVD":
        kwargs["layout"] = "mdistiller" if student == "resnet20" else "repdistiller"  # 16 vs 64 channels
    if name in ("CRD", "CRDKD"):
        kwargs["contrast"] = ContrastSettings(memory_size=32)
    module = cls(student=student, teacher=TeacherConfig("resnet32x4", str(teacher_checkpoint("resnet32x4"))), **kwargs)
    torch.manual_seed(0)
    batch = {
        "images": torch.randn(4, 3, 32, 32),
        "labels": torch.tensor([0, 1, 2, 3]),
        "indices": torch.tensor([0, 5, 9, 30]),
        "contrast_indices": torch.randint(0, 32, (4, 9)),
    }
    logits, losses = module.training_losses(batch)
    assert logits.shape == (4, 100)
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values()), losses
    torch.stack(list(losses.values())).sum().backward()
    for child, submodule in module.named_children():
        if child == "teacher":
            assert all(p.grad is None for p in submodule.parameters())
            continue
        for param_name, param in submodule.named_parameters():
            if param.requires_grad:
                assert param.grad is not None and torch.isfinite(param.grad).all(), f"{child}.{param_name}"
