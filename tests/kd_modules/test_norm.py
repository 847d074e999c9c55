"""NORM the method: FT placement and sizes, the two formulations' total loss, variants, and the inference fold."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kd_modules import NORM, FTStudent, OptimConfig, TeacherConfig
from kd_modules.norm import (
    FoldError,
    NORMConfigError,
    NORMFeatureTransform,
    feature_transform_at,
    fold_feature_transform,
    placement_for,
)
from models import create_model
from models.checkpoints import export_network

NUM_CLASSES = 10  # NORM must run on any dataset; 10 classes as Fashion-MNIST


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], TeacherConfig]:
    """``teacher_checkpoint(arch)``: a randomly initialised teacher written as a kdbench export."""
    folder = tmp_path_factory.mktemp("teachers")
    made: dict[str, TeacherConfig] = {}

    def make(arch: str) -> TeacherConfig:
        if arch not in made:
            torch.manual_seed(1)
            path = export_network(create_model(arch, NUM_CLASSES), arch, folder / f"{arch}.pth")
            made[arch] = TeacherConfig(arch, str(path))
        return made[arch]

    return make


def _norm(teacher_checkpoint, student: str, teacher: str, **kwargs) -> NORM:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return NORM(student=student, teacher=teacher_checkpoint(teacher), num_classes=NUM_CLASSES, **kwargs)


def _batch(size: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "images": torch.randn(size, 3, 32, 32, generator=generator),
        "labels": torch.randint(0, NUM_CLASSES, (size,), generator=generator),
        "indices": torch.arange(size),
    }


# -------------------------------------------------------------------------------------------- placement
@pytest.mark.parametrize(
    ("arch", "family", "point", "foldable"),
    [
        ("resnet20", "ResNet", "last_stage", True),
        ("resnet8x4", "ResNet", "last_stage", True),
        ("ResNet50", "ResNet", "last_stage", True),
        ("wrn_16_2", "WRN", "last_stage", False),
        ("wrn_40_1", "WRN", "last_stage", False),
        ("vgg8", "VGG", "last_stage", True),
        ("MobileNetV2", "MobileNetV2", "neck", True),
        ("ShuffleV1", "ShuffleNetV1", "last_stage", True),
        ("ShuffleV2", "ShuffleNetV2", "neck", True),
        ("MobileNetV1", "MobileNet(V1)", "last_stage", True),
    ],
)
def test_placement_table(arch: str, family: str, point: str, foldable: bool) -> None:
    placement = placement_for(arch)
    assert (placement.family, placement.point, placement.foldable) == (family, point, foldable)


def test_unknown_family_is_a_clear_error() -> None:
    with pytest.raises(NORMConfigError, match=r"no FT placement for student network 'densenet40'.*STUDENT_PLACEMENTS"):
        placement_for("densenet40")


@pytest.mark.parametrize(
    ("student", "teacher", "c_s", "expanded", "total"),
    [
        # Spec §A.5 training-time totals minus the released students' unused 4-element `alpha` parameter.
        ("resnet20", "resnet56", 64, 512, 345_016 - 4),
        ("resnet8x4", "resnet32x4", 256, 2048, 2_286_728 - 4),
        ("resnet20", "resnet32x4", 64, 2048, None),  # N·C_t != C_s
    ],
)
def test_ft_sizes_from_feature_shapes(teacher_checkpoint, student, teacher, c_s, expanded, total) -> None:  # type: ignore[no-untyped-def]
    module = _norm(teacher_checkpoint, student, teacher)
    point, ft = feature_transform_at(module.student)
    assert point == "stage3" and (ft.in_channels, ft.expanded_channels) == (c_s, expanded)
    if total is not None:
        # with 100 classes as in the spec's counts
        counted = NORM(student=student, teacher=teacher_checkpoint(teacher), num_classes=NUM_CLASSES)
        fc_delta = (100 - NUM_CLASSES) * (c_s + 1)
        assert sum(p.numel() for p in counted.student.parameters()) + fc_delta == total
    out = module.student.forward_features(_batch(2)["images"])
    assert out.extras["stage3"].shape == (2, expanded, 8, 8)
    assert module.extra_parameters() == 0  # the FT is part of the student


# ------------------------------------------------------------------------------------------- total loss
def _independent_features(module: NORM, batch):  # type: ignore[no-untyped-def]
    module.eval()  # BN in eval mode: the same tensors on every forward
    with torch.no_grad():
        student = module.student.forward_features(batch["images"])
        teacher = module.teacher.forward_features(batch["images"])
    return student, teacher


def _standardised(z: torch.Tensor, scale: float) -> torch.Tensor:
    mean = z.mean(dim=1, keepdim=True)
    var = ((z - mean) ** 2).mean(dim=1, keepdim=True)
    return scale * (z - mean) / torch.sqrt(var + 1e-7)


def test_code_formulation_total_loss(teacher_checkpoint) -> None:  # type: ignore[no-untyped-def]
    module = _norm(teacher_checkpoint, "resnet8", "resnet8x4", kd_weight=0.4)
    batch = _batch()
    student, teacher = _independent_features(module, batch)
    with torch.no_grad():
        _, losses = module.training_losses(batch)
    z_s, z_t = _standardised(student.logits, 2.5), _standardised(teacher.logits, 2.5)
    # r = 0.1, a = 0.4, b = 1, ramp 0.1 at epoch 0; NORM term = N x MSE against the teacher tiled N = 8 times.
    expected_ce = 0.1 * F.cross_entropy(z_s, batch["labels"])
    p_t = F.softmax(z_t / 4, dim=1)
    expected_kd = 0.4 * 16 * (p_t * (p_t.log() - F.log_softmax(z_s / 4, dim=1))).sum(dim=1).mean()
    expected_norm = 0.1 * 1.0 * 8 * F.mse_loss(student.extras["stage3"], teacher.stages_post[-1].repeat(1, 8, 1, 1))
    assert set(losses) == {"ce", "kd", "norm"}
    assert torch.allclose(losses["ce"], expected_ce, rtol=1e-5)
    assert torch.allclose(losses["kd"], expected_kd, rtol=1e-5)
    assert torch.allclose(losses["norm"], expected_norm, rtol=1e-5)


def test_paper_formulation_total_loss(teacher_checkpoint) -> None:  # type: ignore[no-untyped-def]
    module = _norm(teacher_checkpoint, "resnet8", "resnet8x4", formulation="paper", kd_weight=4.0)
    batch = _batch()
    student, teacher = _independent_features(module, batch)
    with torch.no_grad():
        _, losses = module.training_losses(batch)
    # L = CE + 10 (1/N) sum_i ||F_se^i - F_t||^2 + 4 KD, raw logits, no ramp.
    segments = torch.chunk(student.extras["stage3"], 8, dim=1)
    matching = sum(((seg - teacher.stages_post[-1]) ** 2).mean() for seg in segments) / 8
    p_t = F.softmax(teacher.logits / 4, dim=1)
    kd = 16 * (p_t * (p_t.log() - F.log_softmax(student.logits / 4, dim=1))).sum(dim=1).mean()
    assert torch.allclose(losses["ce"], F.cross_entropy(student.logits, batch["labels"]), rtol=1e-5)
    assert torch.allclose(losses["norm"], 10 * matching, rtol=1e-5)
    assert torch.allclose(losses["kd"], 4 * kd, rtol=1e-5)


def test_switch_defaults_and_explicit_overrides(teacher_checkpoint) -> None:  # type: ignore[no-untyped-def]
    code = _norm(teacher_checkpoint, "resnet20", "resnet56")
    assert (code.ce_weight, code.norm_weight, code.logit_scale, code.ramp, code.reduction) == (
        0.1,
        1.0,
        2.5,
        "cifar",
        "sum",
    )
    assert code.kd_weight == 0.0
    paper = _norm(teacher_checkpoint, "resnet20", "resnet56", formulation="paper")
    assert (paper.ce_weight, paper.norm_weight, paper.logit_scale, paper.ramp, paper.reduction) == (
        1.0,
        10.0,
        None,
        "none",
        "mean",
    )
    mixed = _norm(teacher_checkpoint, "resnet20", "resnet56", ce_weight=1.0, logit_scale=0, ramp="imagenet")
    assert (mixed.ce_weight, mixed.logit_scale, mixed.ramp, mixed.reduction) == (1.0, None, "imagenet", "sum")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_segments": 0}, "at least 1"),
        ({"segments_used": 9}, r"segments_used must be in 1..8"),
        ({"ft": "none"}, r"must be equal"),  # 64 != 8 x 64
        ({"contract_teacher": True}, "set ft='none'"),
        ({"contract_teacher": True, "ft": "none", "n_segments": 3}, "N must divide"),
    ],
)
def test_bad_arguments_name_the_value(teacher_checkpoint, kwargs, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NORMConfigError, match=message):
        _norm(teacher_checkpoint, "resnet20", "resnet56", **kwargs)


@pytest.mark.parametrize(
    ("argument", "choices"),
    [
        ("--model.formulation=both", "model.formulation: 'both' is not one of: code, paper"),
        ("--model.ft=wide", "model.ft: 'wide' is not one of: default, plain, none"),
        ("--model.distance=cos", "model.distance: 'cos' is not one of: l2, l1, mmd"),
    ],
)
def test_bad_choices_name_the_value_and_the_valid_ones(argument, choices, capsys, parse_error) -> None:  # type: ignore[no-untyped-def]
    assert choices in parse_error(capsys, "NORM", argument)


# --------------------------------------------------------------------------------------------- variants
def test_variants_run_and_backpropagate(teacher_checkpoint) -> None:  # type: ignore[no-untyped-def]
    batch = _batch(4)
    variants = [
        {"ft": "plain"},
        {"n_segments": 1, "ft": "none"},  # Fig. 2, N = 1: the released code drops the FT
        {"n_segments": 16},
        {"segments_used": 3},
        {"distance": "l1"},
        {"distance": "mmd"},
    ]
    for kwargs in variants:
        module = _norm(teacher_checkpoint, "resnet8", "resnet8", **kwargs)
        module.train()
        _, losses = module.training_losses(batch)
        sum(losses.values()).backward()
        assert torch.isfinite(losses["norm"]) and losses["norm"] > 0, kwargs
        first_conv = module.student.conv1.weight
        assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0, kwargs
    plain = _norm(teacher_checkpoint, "resnet8", "resnet8", ft="plain")
    assert not feature_transform_at(plain.student)[1].has_residual
    bare = _norm(teacher_checkpoint, "resnet8", "resnet8", n_segments=1, ft="none")
    assert feature_transform_at(bare.student) is None


def test_reversed_norm_contracts_the_teacher(teacher_checkpoint) -> None:  # type: ignore[no-untyped-def]
    module = _norm(teacher_checkpoint, "resnet8", "resnet8x4", contract_teacher=True, ft="none")
    assert feature_transform_at(module.student) is None
    conv = module.teacher_contraction
    assert (conv.in_channels, conv.out_channels) == (256, 8)  # C_t -> C_s / N
    assert module.extra_parameters() == 256 * 8
    module.train()
    _, losses = module.training_losses(_batch(4))
    losses["norm"].backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_ramp_scales_the_norm_term(teacher_checkpoint) -> None:  # type: ignore[no-untyped-def]
    on = _norm(teacher_checkpoint, "resnet8", "resnet8")
    off = _norm(teacher_checkpoint, "resnet8", "resnet8", ramp="none")
    off.load_state_dict(on.state_dict())
    on.eval(), off.eval()
    with torch.no_grad():
        ramped = on.training_losses(_batch())[1]["norm"]
        flat = off.training_losses(_batch())[1]["norm"]
    assert torch.allclose(ramped, 0.1 * flat, rtol=1e-6)  # epoch 0: λ = 0.1


# -------------------------------------------------------------------------------------------- FT only
def test_ft_student_is_sized_by_the_teacher_architecture_only() -> None:
    module = FTStudent(student="resnet20", num_classes=NUM_CLASSES, teacher_arch="resnet32x4", ft="plain")
    assert module.teacher is None
    point, ft = feature_transform_at(module.student)
    assert (point, ft.in_channels, ft.expanded_channels, ft.has_residual) == ("stage3", 64, 2048, False)
    logits, losses = module.training_losses(_batch(4))
    assert set(losses) == {"ce"} and torch.allclose(losses["ce"], F.cross_entropy(logits, _batch(4)["labels"]))
    same = FTStudent(student="resnet20", num_classes=NUM_CLASSES, teacher_channels=256)
    assert feature_transform_at(same.student)[1].expanded_channels == 2048
    with pytest.raises(NORMConfigError, match="exactly one of teacher_arch"):
        FTStudent(student="resnet20", num_classes=NUM_CLASSES)


# ----------------------------------------------------------------------------------------------- merge
def _train_a_few_steps(module, steps: int = 3) -> None:  # type: ignore[no-untyped-def]
    """SGD on the real training losses, so BN statistics and affine parameters move away from their init."""
    params = [p for m in module.trainable_modules() for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    module.train()
    for step in range(steps):
        _, losses = module.training_losses(_batch(4, seed=step))
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    module.eval()


#: (student, teacher) of every student whose FT folds.  Further students (VGG, MobileNetV2, ShuffleNets,
#: ImageNet ResNets / MobileNet) are one entry each once they are in the model zoo.  The FT depends on the
#: teacher only through its width C_t, so the tests use the shallowest teacher of the table's width (resnet8
#: for resnet56/110, resnet8x4 for resnet32x4): same FT, a fraction of the CPU time.
FOLDABLE_PAIRS = [
    ("resnet20", "resnet8", "default"),  # as resnet56->resnet20: same channels, 64 -> 512 -> 64
    ("resnet8x4", "resnet8x4", "default"),  # as resnet32x4->resnet8x4: 256 -> 2048 -> 256
    ("resnet20", "resnet8x4", "default"),  # as resnet32x4->resnet20: N·C_t != C_s, 64 -> 2048 -> 64
    ("resnet20", "resnet8x4", "plain"),  # the plain FT (no shortcut)
]


@pytest.mark.parametrize(("student", "teacher", "ft"), FOLDABLE_PAIRS)
def test_merged_student_equals_unmerged(teacher_checkpoint, student: str, teacher: str, ft: str) -> None:  # type: ignore[no-untyped-def]
    module = _norm(teacher_checkpoint, student, teacher, ft=ft)
    _train_a_few_steps(module)
    ft_module = feature_transform_at(module.student)[1]
    assert ft_module.expand[1].running_var.sub(1).abs().max() > 1e-3  # BN statistics are non-trivial
    merged = module.deploy_student()
    plain = create_model(student, NUM_CLASSES)
    assert sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in plain.parameters())
    assert merged.state_dict().keys() == plain.state_dict().keys()
    images = _batch(8, seed=99)["images"]
    with torch.no_grad():
        reference = module.student(images)
        folded = merged(images)
    relative = (reference - folded).abs().max() / reference.abs().max()
    assert relative < 1e-5, f"relative error {relative:.2e}"
    # The module still holds the unmerged student.
    assert feature_transform_at(module.student) is not None


def test_fold_refuses_wrn_and_a_student_without_ft(teacher_checkpoint) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FoldError, match="cannot fold the NORM FT of wrn_16_2"):
        fold_feature_transform(create_model("resnet20", NUM_CLASSES), "wrn_16_2")
    with pytest.raises(FoldError, match="no NORM FT inserted"):
        fold_feature_transform(create_model("resnet20", NUM_CLASSES), "resnet20")


def test_fold_check_catches_a_head_that_is_not_pool_plus_linear() -> None:
    # An FT after the first block of stage 3 is followed by two more blocks: folding it into the classifier
    # would be wrong, and the numerical check refuses it.
    network = create_model("resnet20", NUM_CLASSES)
    network.insert("stage3.0", NORMFeatureTransform(64, 128))
    network.eval()
    with pytest.raises(FoldError, match="changes its logits"):
        fold_feature_transform(network, "resnet20")
    elsewhere = create_model("resnet20", NUM_CLASSES)
    elsewhere.insert("stage2", NORMFeatureTransform(32, 64))
    with pytest.raises(FoldError, match="classifier reads 64"):
        fold_feature_transform(elsewhere, "resnet20")


def test_checkpoint_records_the_ft_kind() -> None:
    default = NORMFeatureTransform(4, 8, residual=True)
    plain = NORMFeatureTransform(4, 8, residual=False)
    with pytest.raises(NORMConfigError, match="holds a default"):
        plain.load_state_dict(default.state_dict())


def test_fit_through_the_cli(cifar_root: Path, trained_teacher: Path, tmp_path: Path, fit_args) -> None:  # type: ignore[no-untyped-def]
    from benchmarks.cli import KDBenchCLI

    args = fit_args(
        cifar_root,
        tmp_path,
        "--model=NORM",
        "--model.student=resnet8",
        "--model.teacher.arch=resnet8",
        f"--model.teacher.checkpoint={trained_teacher}",
        "--model.n_segments=2",
        "--model.kd_weight=0.4",
    )
    KDBenchCLI(args=args)
    assert (tmp_path / "record.json").is_file()
    metrics = (tmp_path / "csv" / "metrics.csv").read_text()
    assert "train/norm" in metrics and "train/norm_ramp" in metrics and "train/kd" in metrics
    assert OptimConfig().lr == 0.05
