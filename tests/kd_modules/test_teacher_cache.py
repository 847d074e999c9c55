"""The exact teacher-output cache returns what the live teacher gives for each training view.

Expected values come from the live teacher itself, run on the training batches the data module produces (random
views drawn by the real loader), and the view numbering is checked against crops cut out by hand.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from datamodules import CIFAR100, TinyImageNet
from kd_modules import KD, FitNet, TeacherConfig
from kd_modules.numerics import Numerics
from kd_modules.teacher_cache import CachedTeacherFeatures, TeacherCacheMiss, compute_teacher_outputs
from models import create_model
from models.checkpoints import export_network

COUNT = 12


def _images(count: int = COUNT, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    return images, torch.randint(0, 100, (count,), generator=generator)


def _cifar(images: torch.Tensor, labels: torch.Tensor, **kwargs) -> CIFAR100:  # type: ignore[no-untyped-def]
    preloaded = type("PreloadedCIFAR100", (CIFAR100,), {"load_split": lambda self, split: (images, labels)})
    datamodule = preloaded(batch_size=4, seed=0, on_device=False, **kwargs)
    datamodule.setup("fit")
    return datamodule


def _teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("resnet8", 100).eval()


@pytest.mark.parametrize("pipeline", ["crd", "letkd"])  # zero and reflect padding
def test_views_number_every_crop_and_flip_and_render_the_training_input(pipeline: str) -> None:
    images, labels = _images()
    datamodule = _cifar(images, labels, pipeline=pipeline)
    views = datamodule.train_views()
    assert views is not None and views.count == 162  # (2*4+1)^2 * 2
    mode = "constant" if pipeline == "crd" else "reflect"
    padded = F.pad(images.float(), (4, 4, 4, 4), mode=mode)
    for view in (0, 1, 17, 80, 161):  # top = view // 2 // 9, left = view // 2 % 9, flip = view % 2
        top, left, flip = view // 2 // 9, view // 2 % 9, view % 2
        crop = padded[:, :, top : top + 32, left : left + 32]
        crop = crop.flip(3) if flip else crop
        mean = torch.tensor(datamodule.mean).view(1, 3, 1, 1)
        std = torch.tensor(datamodule.std).view(1, 3, 1, 1)
        expected = (crop / 255 - mean) / std
        rendered = views.render(images, torch.full((COUNT,), view))
        torch.testing.assert_close(rendered, expected, rtol=0, atol=1e-5)
    for batch in datamodule.train_dataloader():  # the loader's own random views
        batch = datamodule.on_after_batch_transfer(batch, 0)
        assert batch["views"].dtype == torch.int64
        assert torch.equal(views.render(images[batch["indices"]], batch["views"]), batch["images"])


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float16, 1e-3), (torch.float32, 0.0)])
def test_cached_outputs_equal_the_live_teacher_on_random_views(dtype: torch.dtype, rtol: float) -> None:
    images, labels = _images()
    datamodule = _cifar(images, labels)
    views = datamodule.train_views()
    assert views is not None
    teacher = _teacher()
    tables = compute_teacher_outputs(
        teacher, images, views.render, views.count, ("logits", "embedding"), dtype, 324, show_progress=False
    )
    assert tables["logits"].shape == (COUNT, 162, 100) and tables["logits"].dtype == dtype
    checked = 0
    for _ in range(2):  # two epochs: different random views of every image
        for batch in datamodule.train_dataloader():
            batch = datamodule.on_after_batch_transfer(batch, 0)
            with torch.inference_mode():
                live = teacher.forward_features(batch["images"])
            for name in ("logits", "embedding"):
                cached = tables[name][batch["indices"], batch["views"]].float()
                if rtol == 0.0:
                    assert torch.equal(cached, getattr(live, name)), name  # float32 storage: the teacher's values
                else:
                    torch.testing.assert_close(cached, getattr(live, name), rtol=rtol, atol=1e-4)
            checked += batch["labels"].shape[0]
    assert checked == 2 * COUNT


class _TeacherCalls(pl.Callback):
    """Counts teacher forwards during training steps (the cache must make it zero)."""

    def __init__(self) -> None:
        self.calls = 0
        self.in_step = False

    def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        teacher = module.teacher
        assert teacher is not None
        for name in ("forward", "forward_features"):
            original = getattr(teacher, name)

            def counted(*args: object, _original=original, **kwargs: object) -> object:  # type: ignore[no-untyped-def]
                self.calls += int(self.in_step)
                return _original(*args, **kwargs)

            setattr(teacher, name, counted)

    def on_train_batch_start(self, *args: object) -> None:
        self.in_step = True

    def on_train_batch_end(self, *args: object) -> None:
        self.in_step = False


def _fit(module: torch.nn.Module, datamodule: pl.LightningDataModule, steps: int = 3) -> _TeacherCalls:
    calls = _TeacherCalls()
    trainer = pl.Trainer(
        max_steps=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[calls],
    )
    trainer.fit(module, datamodule=datamodule)
    return calls


@pytest.fixture()
def teacher_file(tmp_path: Path) -> TeacherConfig:
    path = export_network(_teacher(), "resnet8", tmp_path / "teacher.pth")
    return TeacherConfig("resnet8", str(path))


def test_kd_with_the_cache_never_runs_its_teacher_and_gets_the_live_loss(
    teacher_file: TeacherConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    images, labels = _images()
    torch.manual_seed(1)
    cached = KD(student="resnet8", teacher=teacher_file)
    cached.configure_numerics(Numerics(teacher_cache=True, teacher_cache_dtype="float32"))
    calls = _fit(cached, _cifar(images, labels))
    assert calls.calls == 0 and cached._teacher_cache is not None
    assert "teacher cache: logits of 12 images x 162 views" in capsys.readouterr().err
    # The same batch through the cache and through the live teacher: the same loss (float32 storage: exactly).
    datamodule = _cifar(images, labels)
    datamodule.train_views()
    batch = datamodule.on_after_batch_transfer(next(iter(datamodule.train_dataloader())), 0)
    cached._step_batch, cached._step_teacher = batch, None
    with_cache = cached.training_losses(batch)[1]["kd"]
    cached._step_batch = None
    live = cached.training_losses(batch)[1]["kd"]
    assert torch.equal(with_cache, live)
    # A second run with the same teacher and data reuses the stored artefact.
    stored = list((tmp_path / "cache" / "teacher_outputs").glob("*/artefact.pt"))
    assert len(stored) == 1
    again = KD(student="resnet8", teacher=teacher_file)
    again.configure_numerics(Numerics(teacher_cache=True, teacher_cache_dtype="float32"))
    monkeypatch.setattr("kd_modules.teacher_cache.compute_teacher_outputs", pytest.fail)
    assert _fit(again, _cifar(images, labels), steps=1).calls == 0


def test_a_method_the_cache_cannot_serve_says_so_and_runs_its_teacher(
    teacher_file: TeacherConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    images, labels = _images()
    module = FitNet(student="resnet8", teacher=teacher_file)
    module.configure_numerics(Numerics(teacher_cache=True))
    assert _fit(module, _cifar(images, labels), steps=2).calls == 2
    err = capsys.readouterr().err
    assert "teacher cache not used: FitNet reads teacher outputs beyond its logits" in err
    assert "running the teacher" in err


def test_rotation_views_are_not_enumerable() -> None:
    assert TinyImageNet(pipeline="mdistiller").train_augmentation().view_count is None  # type: ignore[union-attr]
    assert TinyImageNet(pipeline="mdistiller", rotation_degrees=0.0).train_augmentation().view_count == 2  # type: ignore[union-attr]


def test_reading_an_output_the_cache_does_not_hold_fails_loudly() -> None:
    features = CachedTeacherFeatures({"logits": torch.zeros(2, 3)}, "KD")
    assert features.logits.shape == (2, 3)
    with pytest.raises(TeacherCacheMiss, match="KD read the teacher's 'stages_post'"):
        _ = features.stages_post
