"""KCD's LightningModule: Algorithm 1 end to end through the CLI (theta_0, theta_1, M, T, restart from theta_0)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from benchmarks.cli import KDBenchCLI
from datamodules import CIFAR100
from kd_modules.base import OptimConfig, TeacherConfig
from kd_modules.errors import MethodConfigError
from kd_modules.kcd import KCD, KCDTransformation, class_partition
from models import create_model
from models.checkpoints import read_state_dict


@pytest.fixture(scope="module")
def ce_stage(cifar_root: Path, fit_args, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """Algorithm 1 steps 1-2: the CE-only resnet8 student (stores initial.pth = theta_0 and final.pth = theta_1)."""
    run_dir = tmp_path_factory.mktemp("ce_stage")
    KDBenchCLI(args=fit_args(cifar_root, run_dir, "--model=Vanilla", "--model.student=resnet8", "--seed_everything=3"))
    return run_dir


def _kcd_run(cifar_root: Path, fit_args, run_dir: Path, teacher: Path, stage: Path, *extra: str) -> None:  # type: ignore[no-untyped-def]
    KDBenchCLI(
        args=fit_args(
            cifar_root,
            run_dir,
            "--model=KCD",
            "--model.student=resnet8",
            "--model.teacher.arch=resnet8",
            f"--model.teacher.checkpoint={teacher}",
            f"--model.student_init={stage / 'initial.pth'}",
            f"--model.ce_student_checkpoint={stage / 'final.pth'}",
            "--model.consistency_max_images=300",
            "--seed_everything=5",
            *extra,
        )
    )


def test_final_run_starts_from_bit_identical_theta_0(  # type: ignore[no-untyped-def]
    cifar_root: Path, fit_args, trained_teacher: Path, ce_stage: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    _kcd_run(cifar_root, fit_args, tmp_path / "kcd", trained_teacher, ce_stage)
    stage_init, _ = read_state_dict(ce_stage / "initial.pth")
    kcd_init, _ = read_state_dict(tmp_path / "kcd" / "initial.pth")
    assert stage_init.keys() == kcd_init.keys()
    assert all(torch.equal(stage_init[k], kcd_init[k]) for k in stage_init)
    # ... and the stage's trained weights differ from them (the comparison can fail).
    trained, _ = read_state_dict(ce_stage / "final.pth")
    assert not all(torch.equal(stage_init[k], trained[k]) for k in stage_init)
    report = torch.load(tmp_path / "kcd" / "kcd_transform.pt", weights_only=True)
    mapping = report["mappings"][0, 0]
    assert sorted(mapping.tolist()) == list(range(64))  # bipartite on equal widths: a permutation
    assert report["gamma_transformed"][0] >= report["gamma_identity"][0]
    # The consistency statistics were cached: a second run reads them instead of passing the data again.
    cached = list((tmp_path / "cache" / "kcd_consistency").glob("*/artefact.pt"))
    assert len(cached) == 1


def test_options_combine_and_dynamic(  # type: ignore[no-untyped-def]
    cifar_root: Path, fit_args, trained_teacher: Path, ce_stage: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    for name, extra in {
        "greedy_kl_partitions": (
            "--model.transformation.transform=greedy",
            "--model.transformation.consistency=kl",
            "--model.transformation.num_transforms=10",
        ),
        "fitnet_dynamic": (
            "--model.combine=fitnet",
            "--model.transformation.dynamic=true",
            "--model.transformation.dynamic_every=1",
        ),
        "rkd_l1": ("--model.combine=rkd", "--model.transformation.consistency=l1"),
        "subnet_res": ("--model.transformation.transform=subnet_res",),
    }.items():
        _kcd_run(cifar_root, fit_args, tmp_path / name, trained_teacher, ce_stage, *extra)
        assert (tmp_path / name / "final.pth").is_file(), name
    report = torch.load(tmp_path / "greedy_kl_partitions" / "kcd_transform.pt", weights_only=True)
    assert report["mappings"].shape == (1, 10, 64) and len(report["gamma_transformed"]) == 10


def test_class_partition_and_bad_settings(teacher_checkpoint) -> None:  # type: ignore[no-untyped-def]
    assert class_partition(torch.tensor([0, 9, 10, 99]), 100, 10).tolist() == [0, 0, 1, 9]
    teacher = TeacherConfig("resnet8", str(teacher_checkpoint("resnet8")))
    with pytest.raises(MethodConfigError, match="num_transforms"):
        KCD("resnet8", teacher, transformation=KCDTransformation(num_transforms=101))
    with pytest.raises(MethodConfigError, match="dynamic"):
        KCD("resnet8", teacher, transformation=KCDTransformation(transform="random", dynamic=True))


@pytest.mark.parametrize(
    ("argument", "choices"),
    [
        (
            "--model.transformation.transform=hungarian",
            "model.transformation.transform: 'hungarian' is not one of: bipartite, greedy, random, none, subnet_fc, subnet_res",
        ),
        ("--model.combine=at", "model.combine: 'at' is not one of: none, fitnet, ab, rkd, rco"),
    ],
)
def test_bad_choices_name_the_valid_ones(argument: str, choices: str, capsys, parse_error) -> None:  # type: ignore[no-untyped-def]
    assert choices in parse_error(capsys, "KCD", argument)


def test_prerequisites_describe_algorithm_1() -> None:
    names = [p["name"] for p in KCD.prerequisites({})]
    assert names == ["theta_0", "ce_student"]
    assert KCD.prerequisites({"transformation": {"transform": "none"}}) == []
    assert [p["name"] for p in KCD.prerequisites({"transformation": {"transform": "random"}})] == ["theta_0"]
    assert [p["name"] for p in KCD.prerequisites({"distill_init": 2})] == ["ce_student"]
    teacher_stage = KCD.prerequisites({"transformation": {"transform_teacher_seed": 0}})[-1]
    assert teacher_stage["network"] == "teacher" and teacher_stage["seed"] == 0


def test_ab_combination_applies_the_mapping_before_the_ab_hinge(teacher_checkpoint) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    teacher = TeacherConfig("resnet8", str(teacher_checkpoint("resnet8")))
    random = KCDTransformation(transform="random")
    module = KCD("resnet8", teacher, transformation=random, combine="ab", ab_weight=10.0, ce_weight=0.0)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    _, losses = module.training_losses({"images": images, "labels": labels, "indices": torch.arange(4)})
    assert set(losses) == {"ce", "ab"}
    # Independently: the teacher's last-stage pre-ReLU map with channel c of the target taken from teacher channel
    # mapping[c], and the hinge written element by element with explicit branches.
    mapping = module.mappings[0, 0]
    assert mapping.tolist() != list(range(64))  # not the identity, so the check can fail
    with torch.no_grad():
        t = module.teacher.forward_features(images).stages_pre[-1][:, mapping]
        s = module.student.forward_features(images).stages_pre[-1]
    total = 0.0
    for sv, tv in zip(s.flatten().tolist(), t.flatten().tolist()):
        if tv > 0 and sv <= 1.0:
            total += (sv - 1.0) ** 2
        elif tv <= 0 and sv > -1.0:
            total += (sv + 1.0) ** 2
    expected = 10.0 * total / 4 / 1000.0 * 3.0
    assert losses["ab"].item() == pytest.approx(expected, rel=1e-4)


# ------------------------------------------------------------------------ dynamic re-matching and the sub-net
def _pearson_columns(t: np.ndarray, s: np.ndarray) -> np.ndarray:
    """M[j, i] = Pearson(t[:, j], s[:, i]) written with numpy's corrcoef (0 where a channel is constant)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        full = np.corrcoef(t.T, s.T)[: t.shape[1], t.shape[1] :]
    return np.nan_to_num(full, nan=0.0)


class _RecordBatches(pl.Callback):
    """Keeps the (augmented, normalised) batches the training steps see."""

    def __init__(self) -> None:
        self.batches: list[dict[str, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self.batches.append({k: v.detach().clone() for k, v in batch.items()})


def test_dynamic_rematching_recomputes_the_mapping_from_the_distillation_batches(  # type: ignore[no-untyped-def]
    cifar_root: Path, trained_teacher: Path, ce_stage: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    module = KCD(
        "resnet8",
        TeacherConfig("resnet8", str(trained_teacher)),
        optim=OptimConfig(lr=0.0, weight_decay=0.0),  # the student stays fixed, so its features can be recomputed
        transformation=KCDTransformation(transform="greedy", dynamic=True, dynamic_every=1),
        ce_student_checkpoint=str(ce_stage / "final.pth"),
        consistency_max_images=64,
    )
    recorder = _RecordBatches()
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
    )
    trainer.fit(module, datamodule=CIFAR100(root=str(cifar_root), batch_size=16, eval_batch_size=100))
    static = module.consistency_report["gamma_transformed"]  # from the offline pass over theta_1 (setup)
    assert len(recorder.batches) == 3 and static
    # Independently: the pooled last-stage maps of the same batches (student in train mode: batch statistics, as in
    # the steps), Pearson over the 48 images with numpy, and Eq. 7's per-student-channel best teacher channel.
    module.student.train()
    with torch.no_grad():
        t = torch.cat(
            [module.teacher.forward_features(b["images"]).stages_post[-1].mean((2, 3)) for b in recorder.batches]
        )
        s = torch.cat(
            [module.student.forward_features(b["images"]).stages_post[-1].mean((2, 3)) for b in recorder.batches]
        )
    m = _pearson_columns(t.double().numpy(), s.double().numpy())
    mapping = module.mappings[0, 0].numpy()
    chosen = m[mapping, np.arange(m.shape[1])]
    assert np.all(chosen >= m.max(axis=0) - 1e-9), "each student channel gets its most correlated teacher channel"
    assert mapping.tolist() != list(range(64))  # not the identity: the check can fail


def test_subnet_fitting_takes_adams_step_up_the_consistency() -> None:
    from kd_modules.kcd_subnet import build_subnet, fit_subnet

    torch.manual_seed(0)
    teacher, student = create_model("resnet8", 10).eval(), create_model("resnet8", 10).eval()
    subnet = build_subnet("subnet_fc", 64, 64)
    w0, b0 = subnet.weight.detach().clone(), subnet.bias.detach().clone()
    batch = {"images": torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))}
    fitted = fit_subnet(
        subnet,
        teacher,
        student,
        [([batch], 1)],
        layer="last",
        pre_activation=False,
        metric="correlation",
        kl_distribution="sum",
        eps=1e-8,
        lr=1e-3,
    )
    # Independently: a 1x1 convolution commutes with average pooling, so the pooled output is W mean(F_T) + b; the
    # objective is the sum over channels of Pearson(output_i, student_i), written out; Adam's first step moves each
    # weight by lr * g / (|g| + eps) against the gradient g of the negative objective.
    with torch.no_grad():
        pooled_t = teacher.forward_features(batch["images"]).stages_post[-1].mean((2, 3))
        pooled_s = student.forward_features(batch["images"]).stages_post[-1].mean((2, 3))
    w, b = w0.view(64, 64).clone().requires_grad_(True), b0.clone().requires_grad_(True)
    out = pooled_t @ w.t() + b
    oc, sc = out - out.mean(0), pooled_s - pooled_s.mean(0)
    score = ((oc * sc).sum(0) / (oc.pow(2).sum(0).sqrt() * sc.pow(2).sum(0).sqrt())).sum()
    (-score).backward()
    expected = w0.view(64, 64) - 1e-3 * w.grad / (w.grad.abs() + 1e-8)
    assert torch.allclose(fitted["weight"].view(64, 64), expected, atol=1e-6)
    # Pearson's coefficient is shift-invariant: the bias gradient is zero up to rounding, and Adam moves it by lr at most.
    assert b.grad.abs().max() < 1e-3 * w.grad.abs().max() and (fitted["bias"] - b0).abs().max() <= 1e-3 + 1e-7
    assert not torch.allclose(fitted["weight"], w0)
