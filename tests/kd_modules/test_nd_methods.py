"""KD++, ReviewKD++ and the ND ablations as methods: projection, class means in setup, ramp, real CLI runs."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import Tensor

import kd_modules.class_means as class_means_module
from benchmarks.cli import KDBenchCLI
from datamodules import CIFAR100
from datamodules.base import InMemoryDataModule
from datamodules.loaders import CropFlip
from kd_modules import KDFeatureRegularizer, KDPlusPlus, OptimConfig, ReviewKDPlusPlus, TeacherConfig
from kd_modules.nd import EmbeddingProjection, NDSettings
from models import create_model
from models.checkpoints import export_network, load_network


@pytest.fixture(scope="module", autouse=True)
def nd_cache(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Class-mean artefacts of this module's runs go to a temporary cache (shared by the module's tests)."""
    previous = os.environ.get("KDBENCH_CACHE")
    os.environ["KDBENCH_CACHE"] = str(tmp_path_factory.mktemp("nd_cache"))
    yield Path(os.environ["KDBENCH_CACHE"])
    if previous is None:
        del os.environ["KDBENCH_CACHE"]
    else:
        os.environ["KDBENCH_CACHE"] = previous


@pytest.fixture(scope="module")
def small_cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CIFAR-100 in its real layout, 2 training images per class (the class-mean pass stays short)."""
    from datamodules.synthetic import write_cifar100

    root = tmp_path_factory.mktemp("small_cifar")
    write_cifar100(root, train_per_class=2, test_per_class=1, seed=1)
    return root


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Untrained networks exported in kdbench's format, standing in for released teachers."""
    folder = tmp_path_factory.mktemp("teachers")
    paths = {}
    for arch in ("resnet56", "resnet32x4", "resnet8x4", "resnet8"):
        torch.manual_seed(0)
        paths[arch] = str(export_network(create_model(arch, 100), arch, folder / f"{arch}.pth"))
    return paths


def _teacher(released: dict[str, str], arch: str) -> TeacherConfig:
    return TeacherConfig(arch, released[arch])


# ------------------------------------------------------------------------------------------------ projection
def test_projection_only_when_embedding_widths_differ(released) -> None:  # type: ignore[no-untyped-def]
    same = KDPlusPlus("resnet20", _teacher(released, "resnet56"))
    assert len(same.projections) == 0 and same.extra_parameters() == 0
    wider = KDPlusPlus("resnet20", _teacher(released, "resnet32x4"))
    head = wider.projections["nd"]
    assert isinstance(head, EmbeddingProjection)
    bn, dropout, linear = head
    assert (bn.num_features, dropout.p, linear.in_features, linear.out_features) == (64, 0.5, 64, 256)
    assert torch.equal(bn.weight, torch.ones(64)) and torch.equal(bn.bias, torch.zeros(64))
    assert torch.equal(linear.bias, torch.zeros(256)), "CIFAR EmbTrans: Linear bias 0"
    assert wider.extra_parameters() == 2 * 64 + 64 * 256 + 256
    review = ReviewKDPlusPlus("resnet20", _teacher(released, "resnet32x4"))
    assert set(review.projections) == {"nd"}
    assert len(ReviewKDPlusPlus("resnet20", _teacher(released, "resnet56")).projections) == 0


def test_imagenet_projection_init_draws_weight_and_bias_from_n_0_001() -> None:
    torch.manual_seed(0)
    linear = EmbeddingProjection(512, 2048, "imagenet")[2]
    assert linear.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert linear.bias.std().item() == pytest.approx(0.01, rel=0.2) and linear.bias.abs().sum() > 0


def test_layer_taps_count_back_from_the_last_stage(released) -> None:  # type: ignore[no-untyped-def]
    module = KDPlusPlus("resnet20", _teacher(released, "resnet32x4"), nd_layers=3)
    assert [(t.name, t.student_tap, t.teacher_tap) for t in module.taps] == [
        ("nd", "embedding", "embedding"),
        ("nd_layer1", "stage2", "stage2"),
        ("nd_layer2", "stage1", "stage1"),
        ("nd_layer3", "stem", "stem"),
    ]
    # resnet20 stage2/stage1/stem: 32/16/16 channels; resnet32x4: 128/64/32 -> one EmbTrans per tap.
    assert {k: v[2].out_features for k, v in module.projections.items()} == {
        "nd": 256,
        "nd_layer1": 128,
        "nd_layer2": 64,
        "nd_layer3": 32,
    }
    with pytest.raises(ValueError, match="nd_layers can be at most 3"):
        KDPlusPlus("resnet20", _teacher(released, "resnet56"), nd_layers=4)


def test_invalid_combinations_name_the_choices(released, capsys, parse_error) -> None:  # type: ignore[no-untyped-def]
    error = parse_error(capsys, "KDPlusPlus", "--model.nd.centers=means")
    assert "model.nd.centers: 'means' is not one of: class_means, classifier_weights" in error
    with pytest.raises(ValueError, match="use nd_layers=0"):
        KDPlusPlus("resnet20", _teacher(released, "resnet56"), nd=NDSettings(centers="classifier_weights"), nd_layers=1)
    with pytest.raises(ValueError, match="is plain KD"):
        KDFeatureRegularizer("resnet20", _teacher(released, "resnet56"), direction="none")
    error = parse_error(capsys, "KDFeatureRegularizer", "--model.norm=l1")
    assert "model.norm: 'l1' is not one of: none, l2, sifn" in error


def test_classifier_weight_centres_need_no_offline_pass(released) -> None:  # type: ignore[no-untyped-def]
    module = KDPlusPlus("resnet20", _teacher(released, "resnet56"), nd=NDSettings(centers="classifier_weights"))
    assert not module.needs_class_means
    assert torch.equal(module.centers_nd, module.teacher.classifier.weight)
    module.train()
    logits, losses = module.training_losses({"images": torch.randn(4, 3, 32, 32), "labels": torch.tensor([0, 1, 2, 3])})
    assert set(losses) == {"ce", "kd", "nd"} and losses["kd"].item() == 0.0, "epoch 0: the KD term is ramped to 0"


def test_training_without_class_means_is_a_clear_error(released) -> None:  # type: ignore[no-untyped-def]
    module = KDPlusPlus("resnet20", _teacher(released, "resnet56"))
    with pytest.raises(RuntimeError, match="teacher class means are not loaded"):
        module.training_losses({"images": torch.randn(2, 3, 32, 32), "labels": torch.tensor([0, 1])})


# ------------------------------------------------------------------------------------- class means in setup()
def _fit(module: pl.LightningModule, data: Path | pl.LightningDataModule, batches: int = 1) -> pl.Trainer:
    if isinstance(data, Path):
        data = CIFAR100(root=str(data), batch_size=16, eval_batch_size=100)
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=batches,
        limit_val_batches=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=data)
    return trainer


def test_class_means_are_computed_once_and_shared_by_runs(small_cifar: Path, released, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    passes: list[int] = []
    real = class_means_module.class_tap_means

    def counting(teacher, batches, *args, **kwargs):  # type: ignore[no-untyped-def]
        passes.append(len(batches))
        return real(teacher, batches, *args, **kwargs)

    monkeypatch.setattr(class_means_module, "class_tap_means", counting)
    teacher = _teacher(released, "resnet8x4")
    first = KDPlusPlus("resnet8", teacher, optim=OptimConfig(lr=0.05, nesterov=True))
    before = first.projections["nd"][2].weight.detach().clone()
    trainer = _fit(first, small_cifar)
    assert passes == [2], "one pass over the 200 training images in eval batches of 100"
    # The EmbTrans head is optimised with the student ...
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert all(id(p) in optimised for p in first.projections.parameters())
    assert not torch.equal(before, first.projections["nd"][2].weight)
    # ... and the class means are buffers of this teacher that no checkpoint carries.
    assert first.centers_nd.shape == (100, 256) and not any(k.startswith("centers_") for k in first.state_dict())

    second = ReviewKDPlusPlus("resnet8", teacher)  # another method, same teacher and data: the artefact is reused
    _fit(second, small_cifar)
    assert passes == [2]
    assert torch.equal(second.centers_nd, first.centers_nd)
    other = KDPlusPlus("resnet8", teacher, nd=NDSettings(class_mean_transform="clean"))
    _fit(other, small_cifar)
    assert passes == [2, 2] and not torch.equal(other.centers_nd, first.centers_nd)


# ------------------------------------------------------------------------------------------- real CLI runs
def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def _epoch_values(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


CLI_CASES = {
    "kdpp_layers_balanced_clean": (
        "resnet8",
        [
            "--model=KDPlusPlus",
            "--model.nd_layers=2",
            "--model.nd.nd_reduction=class_balanced",
            "--model.nd.class_mean_transform=clean",
        ],
        {"ce", "kd", "nd", "nd_layer1", "nd_layer2"},
    ),
    "ce_plus_dino_with_weights": (
        "resnet8x4",
        ["--model=KDPlusPlus", "--model.kd_weight=0", "--model.nd.centers=classifier_weights"],
        {"ce", "nd"},
    ),
    "reviewkdpp": ("resnet8x4", ["--model=ReviewKDPlusPlus", "--model.review_weight=8.0"], {"ce", "review", "nd"}),
    "infonce_sifn": (
        "resnet8",
        ["--model=KDFeatureRegularizer", "--model.direction=infonce", "--model.norm=sifn", "--model.norm_weight=0.05"],
        {"ce", "kd", "direction", "norm"},
    ),
    "cosine_l2_classifier_l2_embtrans": (
        "resnet8x4",
        [
            "--model=KDFeatureRegularizer",
            "--model.direction=cosine",
            "--model.norm=l2",
            "--model.classifier_l2_weight=1.0",
        ],
        {"ce", "kd", "direction", "norm", "classifier_l2"},
    ),
}


#: The parameters each run trains beyond the student (``extra_parameters`` in its record), where a hand count is
#: short: EmbTrans 64 -> 256 is BN1d(64) (2 x 64) + Linear(64, 256) (64 x 256 + 256); the classifier-weight L2 adds a
#: bias-free Linear(64, 256); resnet8 -> resnet8 needs no projection at any tap.
EXTRA_PARAMETERS = {
    "kdpp_layers_balanced_clean": 0,
    "ce_plus_dino_with_weights": 2 * 64 + 64 * 256 + 256,
    "infonce_sifn": 0,
    "cosine_l2_classifier_l2_embtrans": 2 * 64 + 64 * 256 + 256 + 64 * 256,
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_method_trains_through_the_cli(case: str, small_cifar: Path, tmp_path: Path, fit_args, released) -> None:  # type: ignore[no-untyped-def]
    teacher, extra, terms = CLI_CASES[case]
    args = fit_args(
        small_cifar,
        tmp_path,
        *extra,
        "--model.student=resnet8",
        f"--model.teacher.arch={teacher}",
        f"--model.teacher.checkpoint={released[teacher]}",
        "--model.nd.warmup_epochs=1",
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=1",
    )
    KDBenchCLI(args=args)
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["epochs"] == 2
    if case in EXTRA_PARAMETERS:
        assert record["metrics"]["extra_parameters"] == EXTRA_PARAMETERS[case]
    rows = _metrics(tmp_path)
    logged = {key[len("train/") :] for row in rows for key, value in row.items() if key.startswith("train/") and value}
    assert terms <= logged and not ({"ce", "kd", "nd", "review"} - terms) & logged
    for term in terms:
        assert all(math.isfinite(v) for v in _epoch_values(rows, f"train/{term}"))
    if "kd" in terms:  # 0-based ramp: no KD in the first epoch, full weight from epoch 1 (warmup_epochs=1)
        kd = _epoch_values(rows, "train/kd")
        assert kd[0] == 0.0 and kd[1] > 0.0
    # The export is the student alone (no EmbTrans, no ABF): it loads strictly as a resnet8.
    load_network("resnet8", 100, tmp_path / "final.pth")


@pytest.mark.slow
@pytest.mark.parametrize("teacher, projected", [("resnet56", False), ("resnet32x4", True)])
def test_shipped_kdpp_config_on_the_brief_pairs(
    teacher: str, projected: bool, small_cifar: Path, tmp_path: Path, released
) -> None:  # type: ignore[no-untyped-def]
    args = [
        "fit",
        "--config=configs/recipes/nd_cifar100.yaml",
        "--config=configs/methods/kdpp.yaml",
        f"--data.root={small_cifar}",
        "--data.batch_size=16",
        "--data.eval_batch_size=100",
        "--model.student=resnet20",
        f"--model.teacher.arch={teacher}",
        f"--model.teacher.checkpoint={released[teacher]}",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--run.wandb=disabled",
        f"--run.dir={tmp_path}",
    ]
    cli = KDBenchCLI(args=args)
    assert cli.model.optim.nesterov and cli.model.optim.lr == 0.1
    assert ("nd" in cli.model.projections) is projected
    assert (tmp_path / "record.json").is_file()


# ------------------------------------------------------------------------------------- any 10-class dataset
class TenClasses(InMemoryDataModule):
    """A 10-class dataset in memory (Fashion-MNIST's class count), random 3 x 32 x 32 images."""

    dataset_name = "ten-classes"
    num_classes = 10
    train_size = 40
    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)

    def __init__(self) -> None:
        super().__init__(root="unused", batch_size=8, eval_batch_size=16, seed=0, on_device=False)

    def load_split(self, split: str) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(0 if split == "train" else 1)
        labels = torch.arange(10).repeat(4)
        return torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=generator), labels

    def train_augmentation(self) -> CropFlip:
        return CropFlip(padding=4)


@pytest.mark.parametrize("method", [KDPlusPlus, ReviewKDPlusPlus])
def test_ten_class_dataset(method, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    teacher_path = export_network(create_model("resnet8x4", 10), "resnet8x4", tmp_path / "teacher.pth")
    module = method("resnet8", TeacherConfig("resnet8x4", str(teacher_path)), num_classes=10)
    _fit(module, TenClasses(), batches=2)
    assert module.centers_nd.shape == (10, 256) and module.student.num_classes == 10
    assert module.tracked["last_epoch"] == 0


def test_bad_method_argument_is_one_line_through_the_cli(
    small_cifar: Path, tmp_path: Path, fit_args, released, capsys
) -> None:  # type: ignore[no-untyped-def]
    from benchmarks.cli import main

    args = fit_args(
        small_cifar,
        tmp_path,
        "--model=KDPlusPlus",
        "--model.student=resnet20",
        "--model.teacher.arch=resnet56",
        f"--model.teacher.checkpoint={released['resnet56']}",
        "--model.nd_layers=4",
    )
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert (
        error[-1].startswith("kdbench: error: CifarResNet has 3 stages") and "nd_layers can be at most 3" in error[-1]
    )
