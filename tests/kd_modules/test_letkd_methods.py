"""QuEST, letKD-1 and letKD-2 as methods: cached offline stages, teacher alignment, export, the real CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.cli import KDBenchCLI
from benchmarks.errors import user_errors
from datamodules import CIFAR100, InMemoryDataModule
from kd_modules import LetKD1, LetKD2, QuEST, TeacherConfig
from kd_modules.letkd import KDLayer, LetKDSetupError, TargetsConfig
from kd_modules.losses.letkd import codebook_assignment
from models import FeatureShape, create_model
from models.checkpoints import export_network
from models.cifar.resnet import CifarResNet

SMALL_TARGETS = TargetsConfig(num_clusters=16, kmeans_iterations=3, offline_max_images=40)
SMALL = {"targets": SMALL_TARGETS}
SMALL_SUB = {"subclasses_per_class": 2, "lda_components": 4}


class _HalfResolutionResNet(CifarResNet):
    """resnet8 whose stem halves the input: last stage 4x4, so a resnet8 teacher (8x8) needs 2x2 pooling."""

    def __init__(self, num_classes: int = 100) -> None:
        super().__init__(8, (16, 16, 32, 64), num_classes)
        self.stem_shape = FeatureShape(16, 16, 16)
        self.stage_shapes = [FeatureShape(16, 16, 16), FeatureShape(32, 8, 8), FeatureShape(64, 4, 4)]
        self.final_shape = self.stage_shapes[-1]

    def forward_stem(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(super().forward_stem(x), 2)

    def pool(self, final_map: Tensor) -> Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(final_map, 1), 1)


@pytest.fixture()
def half_resolution_student(monkeypatch: pytest.MonkeyPatch) -> str:
    """Register the half-resolution resnet8 for one test only (other tests iterate over the whole registry)."""
    import models.registry as registry

    registry.list_models()  # load the real families first, so the temporary entry is not the only one
    entry = registry.ModelEntry("test_resnet8_half", "test", lambda num_classes=100: _HalfResolutionResNet(num_classes))
    monkeypatch.setitem(registry._REGISTRY, entry.name, entry)
    return entry.name


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture()
def data(cifar_root: Path) -> CIFAR100:
    datamodule = CIFAR100(root=str(cifar_root), batch_size=16, eval_batch_size=100)
    datamodule.setup("fit")
    return datamodule


def _count_teacher_batches(module: QuEST | LetKD1 | LetKD2) -> list[int]:
    """Count the teacher's forwards (one per batch of the offline pass)."""
    calls: list[int] = []
    forward = module.teacher.forward_stem  # type: ignore[union-attr]

    def counted(x: Tensor) -> Tensor:
        calls.append(x.shape[0])
        return forward(x)

    module.teacher.forward_stem = counted  # type: ignore[method-assign,union-attr]
    return calls


def test_offline_stages_run_once_per_key_and_are_reused(cache: Path, data: CIFAR100, trained_teacher: Path) -> None:
    teacher = TeacherConfig("resnet8", str(trained_teacher))
    first = LetKD2(student="resnet8", teacher=teacher, **SMALL, **SMALL_SUB)
    calls = _count_teacher_batches(first)
    first.prepare_targets(data)
    # One pass over the first 40 images (100-image eval batches) builds both the codebook and the sub-classes.
    assert calls == [40]
    assert first.codebook.shape == (16, 64) and first.score_matrix.shape == (200, 200)

    # The same settings (any method sharing the codebook) reuse the cache: no teacher pass at all.
    for again in (
        LetKD2(student="resnet8", teacher=teacher, **SMALL, **SMALL_SUB),
        LetKD1(student="resnet8", teacher=teacher, **SMALL),
        QuEST(student="resnet20", teacher=teacher, **SMALL),
    ):
        calls = _count_teacher_batches(again)
        again.prepare_targets(data)
        assert calls == []
        assert torch.equal(again.codebook, first.codebook)

    # Another K_inter re-runs the sub-class stage only; another K re-runs the codebook only.
    other = LetKD2(student="resnet8", teacher=teacher, **SMALL, subclasses_per_class=3, lda_components=4)
    calls = _count_teacher_batches(other)
    other.prepare_targets(data)
    assert calls == [40] and torch.equal(other.codebook, first.codebook)
    assert other.score_matrix.shape == (300, 300)
    bigger = LetKD1(student="resnet8", teacher=teacher, targets=replace(SMALL_TARGETS, num_clusters=24))
    calls = _count_teacher_batches(bigger)
    bigger.prepare_targets(data)
    assert calls == [40] and bigger.codebook.shape == (24, 64)
    assert len(list((cache / "letkd_codebook").glob("*/artefact.pt"))) == 2
    assert len(list((cache / "letkd_subclasses").glob("*/artefact.pt"))) == 2


def test_targets_follow_the_cached_artefacts(cache: Path, data: CIFAR100, trained_teacher: Path) -> None:
    module = LetKD2(student="resnet8", teacher=TeacherConfig("resnet8", str(trained_teacher)), **SMALL, **SMALL_SUB)
    module.prepare_targets(data)
    batch = data.on_after_batch_transfer(next(iter(data.train_eval_dataloader())), 0)
    images, labels = batch["images"][:8], batch["labels"][:8]
    targets = module.teacher_targets(images, labels)
    assert targets["penult"].shape == (8, 8, 8, 16) and targets["inter"].shape == (8, 8, 8, 200)
    assert torch.allclose(targets["penult"].sum(-1), torch.ones(8, 8, 8), atol=1e-5)
    assert torch.allclose(targets["inter"].sum(-1), torch.ones(8, 8, 8), atol=1e-5)
    # The intermediate target of an image only ever selects a row of its own class's sub-classes.
    rows = module.score_matrix
    for b in range(8):
        own = rows[2 * labels[b] : 2 * labels[b] + 2]
        flat = targets["inter"][b].reshape(-1, 200)
        assert all(any(torch.equal(r, o) for o in own) for r in flat)
    losses = module.training_losses({"images": images, "labels": labels})[1]
    assert set(losses) == {"ce", "inter", "penult"} and all(torch.isfinite(v) for v in losses.values())


def test_cross_architecture_pooling(
    cache: Path, data: CIFAR100, trained_teacher: Path, half_resolution_student: str
) -> None:
    teacher = TeacherConfig("resnet8", str(trained_teacher))
    # Teacher map 8x8, student map 4x4: pooled automatically, at both locations of letKD-2.
    module = LetKD2(student=half_resolution_student, teacher=teacher, **SMALL, **SMALL_SUB)
    assert module.pool_penult and module.pool_inter
    module.prepare_targets(data)
    batch = data.on_after_batch_transfer(next(iter(data.train_eval_dataloader())), 0)
    images, labels = batch["images"][:4], batch["labels"][:4]
    targets = module.teacher_targets(images, labels)
    assert targets["penult"].shape == (4, 4, 4, 16) and targets["inter"].shape == (4, 4, 4, 200)
    with torch.no_grad():
        pooled = F.avg_pool2d(module.teacher.forward_features(images).final_map, 2)
    assert torch.allclose(targets["penult"], codebook_assignment(pooled, module.codebook), atol=1e-6)
    losses = module.training_losses({"images": images, "labels": labels})[1]
    assert all(torch.isfinite(v) for v in losses.values())
    # Forcing it the other way round is refused with the sizes in the message.
    with pytest.raises(LetKDSetupError, match="teacher map is 8x8 but the student map is 4x4"):
        LetKD1(student=half_resolution_student, teacher=teacher, targets=replace(SMALL_TARGETS, teacher_pooling=False))
    with pytest.raises(LetKDSetupError, match=r"after 2x2 pooling: 4x4\) but the student map is 8x8"):
        LetKD1(student="resnet8", teacher=teacher, targets=replace(SMALL_TARGETS, teacher_pooling=True))
    # Same-size pair: no pooling.
    assert not LetKD1(student="resnet20", teacher=teacher, **SMALL).pool_penult


def test_kd_layers_stay_in_the_student_and_in_its_export(tmp_path: Path, trained_teacher: Path) -> None:
    teacher = TeacherConfig("resnet8", str(trained_teacher))
    plain = sum(p.numel() for p in create_model("resnet20", 100).parameters())
    letkd2 = LetKD2(student="resnet20", teacher=teacher)
    assert letkd2.student_inter_point == "stage3.0"
    layers = dict(letkd2.student.inserted.items())
    assert set(layers) == {"stage3_0", "neck"} and all(isinstance(m, KDLayer) for m in layers.values())
    expected = plain + (2 * 64 * 4096 + 2 * 4096 + 2) + (2 * 64 * 800 + 2 * 800 + 2)
    assert sum(p.numel() for p in letkd2.student.parameters()) == expected
    assert letkd2.extra_parameters() == 0  # everything trainable lives in the student
    path = export_network(letkd2.student, "resnet20", tmp_path / "final.pth")
    keys = torch.load(path)["state_dict"].keys()
    assert "inserted.neck.predictor.weight" in keys and "inserted.stage3_0.alpha" in keys
    # QuEST's predictor is training-only: the student stays the plain network.
    quest = QuEST(student="resnet20", teacher=teacher)
    assert sum(p.numel() for p in quest.student.parameters()) == plain
    assert quest.extra_parameters() == 64 * 4096 + 1
    # resnet8x4 has one block per stage: the intermediate layer sits at the stage output, before the penultimate.
    wide = LetKD2(student="resnet8x4", teacher=teacher, targets=TargetsConfig(num_clusters=64), penultimate=False)
    assert wide.student_inter_point == "stage3" and set(wide.student.inserted) == {"stage3"}


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("QuEST", []),
        ("LetKD1", ["--model.layers.alpha_penult=0.1"]),
        ("LetKD2", ["--model.subclasses_per_class=2", "--model.lda_components=4", "--model.layers.alpha_inter=0.2"]),
    ],
)
def test_methods_train_through_the_cli(  # type: ignore[no-untyped-def]
    method: str, extra: list[str], cifar_root: Path, tmp_path: Path, fit_args, trained_teacher: Path, cache: Path
) -> None:
    args = fit_args(
        cifar_root,
        tmp_path / method,
        f"--model={method}",
        "--model.student=resnet8",
        "--model.teacher.arch=resnet8",
        f"--model.teacher.checkpoint={trained_teacher}",
        "--model.targets.num_clusters=16",
        "--model.targets.kmeans_iterations=3",
        "--model.targets.offline_max_images=40",
        *extra,
    )
    KDBenchCLI(args=args)
    record = json.loads((tmp_path / method / "record.json").read_text())
    assert record["steps"] == 2 and "best_top1" in record["metrics"]
    state = torch.load(tmp_path / method / "final.pth")["state_dict"]
    assert ("inserted.neck.predictor.weight" in state) == (method != "QuEST")
    if method == "LetKD2":
        assert state["inserted.stage3.alpha"].item() == pytest.approx(0.2)  # resnet8: one block per stage
    lines = (tmp_path / method / "csv" / "metrics.csv").read_text().splitlines()
    logged = lines[0].split(",")
    expected = {"QuEST": "train/quest", "LetKD1": "train/penult", "LetKD2": "train/inter"}[method]
    assert expected in logged


def test_too_many_clusters_is_one_clear_line(  # type: ignore[no-untyped-def]
    cifar_root: Path, tmp_path: Path, fit_args, trained_teacher: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = fit_args(
        cifar_root,
        tmp_path,
        "--model=LetKD1",
        "--model.student=resnet8",
        "--model.teacher.arch=resnet8",
        f"--model.teacher.checkpoint={trained_teacher}",
        "--model.targets.offline_max_images=1",
    )
    with pytest.raises(SystemExit) as exit_info, user_errors():
        KDBenchCLI(args=args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        "kdbench: error: penultimate codebook: 64 feature vectors cannot make 4096 clusters; use more training data "
        "or fewer clusters (e.g. --model.targets.num_clusters / --model.subclasses_per_class)"
    )


def test_shipped_recipe_and_method_configs_run(  # type: ignore[no-untyped-def]
    cifar_root: Path, tmp_path: Path, trained_teacher: Path, cache: Path
) -> None:
    from benchmarks.tables import REPO_ROOT

    cli = KDBenchCLI(
        args=[
            "fit",
            "--config",
            str(REPO_ROOT / "configs/recipes/letkd_cifar100.yaml"),
            "--config",
            str(REPO_ROOT / "configs/methods/letkd2.yaml"),
            f"--data.root={cifar_root}",
            "--data.batch_size=16",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            "--model.student=resnet8",
            "--model.teacher.arch=resnet8",
            f"--model.teacher.checkpoint={trained_teacher}",
            "--model.targets.num_clusters=16",
            "--model.targets.offline_max_images=40",
            "--model.subclasses_per_class=2",
            "--model.lda_components=4",
            "--run.wandb=disabled",
            f"--run.dir={tmp_path}",
        ]
    )
    optimizer = cli.trainer.optimizers[0]
    assert optimizer.defaults["nesterov"] and optimizer.defaults["lr"] == 0.05
    data = cli.datamodule
    assert data.padding_mode == "reflect" and data.drop_last and data.batch_size == 16
    assert isinstance(cli.model, LetKD2) and cli.model.targets.kmeans_iterations == 20
    assert (tmp_path / "record.json").is_file()


def test_smoke_preset_shrinks_only_the_letkd_rows(tmp_path: Path) -> None:
    from benchmarks.plan import build_plan, load_preset
    from benchmarks.store import RunStore
    from benchmarks.tables import load_table

    plan = build_plan(
        load_table("table1"),
        load_preset("smoke"),
        RunStore(tmp_path),
        data_root=str(tmp_path),
        pairs=["resnet56->resnet20"],
        methods=["KD", "QuEST", "letKD-1", "letKD-2"],
    )
    args = {spec.row: spec.config["model"]["init_args"] for spec in plan.ordered() if spec.kind == "student"}
    assert args["letKD-2"]["targets"]["num_clusters"] == 32 and args["letKD-2"]["subclasses_per_class"] == 2
    assert args["QuEST"]["targets"]["offline_max_images"] == 16
    assert "targets" not in args["KD"] and args["KD"]["temperature"] == 4.0
    full = build_plan(load_table("table1"), load_preset("full"), RunStore(tmp_path), data_root=str(tmp_path))
    paper = {spec.row: spec.config["model"]["init_args"] for spec in full.ordered() if spec.kind == "student"}
    assert paper["letKD-2"]["targets"]["num_clusters"] == 4096 and paper["letKD-2"]["subclasses_per_class"] == 8


class _TenClasses(InMemoryDataModule):
    """A 10-class in-memory dataset (Fashion-MNIST-sized label space), 40 training images per class."""

    dataset_name = "ten_classes"
    num_classes = 10
    train_size = 400
    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)

    def load_split(self, split: str) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(0 if split == "train" else 1)
        labels = torch.arange(10).repeat(40 if split == "train" else 4)
        images = torch.randint(0, 256, (labels.numel(), 3, 32, 32), generator=generator, dtype=torch.uint8)
        images[:, 0] = (labels * 25).view(-1, 1, 1).to(torch.uint8)  # a class-dependent channel
        return images, labels


def test_ten_class_data_with_the_paper_settings(tmp_path: Path, cache: Path) -> None:
    teacher_path = export_network(create_model("resnet8", 10), "resnet8", tmp_path / "teacher.pth")
    data = _TenClasses(batch_size=16, eval_batch_size=100)
    data.setup("fit")
    # Paper settings except K (400 images x 64 locations = 25,600 vectors: 4096 codewords would leave ~6 per word).
    module = LetKD2(
        student="resnet8",
        teacher=TeacherConfig("resnet8", str(teacher_path)),
        num_classes=10,
        targets=TargetsConfig(num_clusters=256, kmeans_iterations=5),
    )
    with pytest.warns(UserWarning, match="60 LDA components requested, at most 9 exist"):
        module.prepare_targets(data)
    assert module.lda_weight.shape == (64, 9) and module.score_matrix.shape == (80, 80)
    assert torch.allclose(module.score_matrix.sum(1), torch.ones(80), atol=1e-5)
    batch = data.on_after_batch_transfer(next(iter(data.train_dataloader())), 0)
    logits, losses = module.training_losses(batch)
    assert logits.shape == (16, 10) and all(torch.isfinite(v) for v in losses.values())
