"""DKD++ and DIST++: totals against hand-composed terms (independent formulations), the 0-based ramp, ImageNet's
ramped dino term, help texts and the shipped configs through the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from benchmarks.cli import KDBenchCLI
from benchmarks.tables import REPO_ROOT, load_table
from kd_modules import DistillationModule, DISTPlusPlus, DKDPlusPlus, TeacherConfig
from kd_modules.nd import NDDistillation, NDSettings
from models import create_model
from models.checkpoints import export_network, load_network


@pytest.fixture(scope="module", autouse=True)
def nd_cache(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    previous = os.environ.get("KDBENCH_CACHE")
    os.environ["KDBENCH_CACHE"] = str(tmp_path_factory.mktemp("nd_cache"))
    yield
    if previous is None:
        del os.environ["KDBENCH_CACHE"]
    else:
        os.environ["KDBENCH_CACHE"] = previous


@pytest.fixture(scope="module")
def resnet8_teacher(tmp_path_factory: pytest.TempPathFactory) -> TeacherConfig:
    """An untrained resnet8 (64-d embedding, as the resnet8 student: no EmbTrans, so the dino term is exact)."""
    torch.manual_seed(3)
    path = export_network(create_model("resnet8", 100), "resnet8", tmp_path_factory.mktemp("t") / "resnet8.pth")
    return TeacherConfig("resnet8", str(path))


def _at_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    # Outside a Trainer Lightning reports epoch 0; the ramp only reads current_epoch.
    monkeypatch.setattr(DistillationModule, "current_epoch", property(lambda self: epoch))


def _batch(dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 32, 32, generator=generator, dtype=dtype)
    return {"images": images, "labels": torch.tensor([0, 3, 3, 7, 1, 0])}


def _with_centers(module: NDDistillation) -> Tensor:
    centers = torch.rand(100, 64, generator=torch.Generator().manual_seed(1)) + 0.1
    module.centers_nd = centers.to(next(module.student.parameters()).dtype)
    return centers


# -------------------------------------------------------------------- independent formulations (numpy, float64)
def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    """Mean over rows of sum p log(p / q)."""
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))


def _tckd_nckd(student: np.ndarray, teacher: np.ndarray, labels: np.ndarray, t: float) -> tuple[float, float]:
    """DKD's Eq. (1)-(4): KL of the binary split [p_y, 1 - p_y] and KL of the distribution renormalised over the
    non-target classes (target column *removed*, not masked), both x T^2."""
    p_s, p_t = _softmax(student / t), _softmax(teacher / t)
    rows = np.arange(len(labels))
    b_s = np.stack([p_s[rows, labels], 1.0 - p_s[rows, labels]], axis=1)
    b_t = np.stack([p_t[rows, labels], 1.0 - p_t[rows, labels]], axis=1)
    keep = np.ones_like(p_s, dtype=bool)
    keep[rows, labels] = False
    others_s = p_s[keep].reshape(len(labels), -1)
    others_t = p_t[keep].reshape(len(labels), -1)
    others_s /= others_s.sum(axis=1, keepdims=True)
    others_t /= others_t.sum(axis=1, keepdims=True)
    return _kl(b_t, b_s) * t * t, _kl(others_t, others_s) * t * t


def _pearson(a: np.ndarray, b: np.ndarray, eps: float = 1e-8) -> float:
    """Covariance over the product of standard deviations (population form), with DIST's eps on the product."""
    n = len(a)
    covariance = np.sum((a - a.mean()) * (b - b.mean())) / n
    return covariance / (a.std() * b.std() + eps / n)


def _dist(student: np.ndarray, teacher: np.ndarray, tau: float) -> float:
    """DIST Eq. (8) with beta = gamma = 1: Pearson over classes per sample, and over the batch per class."""
    y_s, y_t = _softmax(student / tau), _softmax(teacher / tau)
    inter = np.mean([_pearson(y_s[i], y_t[i]) for i in range(len(y_s))])
    intra = np.mean([_pearson(y_s[:, k], y_t[:, k]) for k in range(y_s.shape[1])])
    return tau**2 * ((1.0 - inter) + (1.0 - intra))


def _dino(f_s: np.ndarray, f_t: np.ndarray, centers: np.ndarray, labels: np.ndarray) -> float:
    """Per sample 1 - f_s . c_y / (|c_y| max(|f_s|, |f_t|)), batch mean (written with explicit loops)."""
    values = []
    for i, y in enumerate(labels):
        direction = centers[y] / np.sqrt(np.sum(centers[y] ** 2))
        denominator = max(np.sqrt(np.sum(f_s[i] ** 2)), np.sqrt(np.sum(f_t[i] ** 2)))
        values.append(1.0 - float(f_s[i] @ direction) / denominator)
    return float(np.mean(values))


def _features(module: NDDistillation, batch: dict[str, Tensor]) -> tuple[np.ndarray, ...]:
    """Student (train mode: batch statistics, so a second forward gives the same values) and teacher outputs."""
    assert module.teacher is not None
    with torch.no_grad():
        student = module.student.forward_features(batch["images"])
        teacher = module.teacher.forward_features(batch["images"])
    as_np = [t.double().numpy() for t in (student.logits, teacher.logits, student.embedding, teacher.embedding)]
    return (*as_np, batch["labels"].numpy())


# ------------------------------------------------------------------------------------------------------ DKD++
def test_dkdpp_total_is_ramped_dkd_plus_dino(resnet8_teacher: TeacherConfig, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    module = DKDPlusPlus(
        "resnet8", resnet8_teacher, alpha=2.5, beta=4.0, nd_weight=3.5, nd=NDSettings(warmup_epochs=20.0)
    )
    module.double().train()  # float64 throughout: TCKD of two near-uniform untrained networks is ~1e-4
    centers = _with_centers(module).double().numpy()
    batch = _batch(torch.float64)
    z_s, z_t, f_s, f_t, labels = _features(module, batch)
    tckd, nckd = _tckd_nckd(z_s, z_t, labels, 4.0)
    dino = _dino(f_s, f_t, centers, labels)
    ce = float(np.mean(-np.log(_softmax(z_s)[np.arange(len(labels)), labels])))

    _at_epoch(monkeypatch, 5)
    _, losses = module.training_losses(batch)
    assert set(losses) == {"ce", "tckd", "nckd", "nd"}
    ramp = 5 / 20
    assert losses["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert losses["tckd"].item() == pytest.approx(ramp * 2.5 * tckd, rel=1e-6)
    assert losses["nckd"].item() == pytest.approx(ramp * 4.0 * nckd, rel=1e-6)
    assert losses["nd"].item() == pytest.approx(3.5 * dino, rel=1e-5), "the CIFAR dino term is not ramped"
    total = sum(v.item() for v in losses.values())
    assert total == pytest.approx(ce + ramp * (2.5 * tckd + 4.0 * nckd) + 3.5 * dino, rel=1e-5)

    _at_epoch(monkeypatch, 40)  # past the warm-up: full weight
    _, late = module.training_losses(batch)
    assert late["nckd"].item() == pytest.approx(4.0 * nckd, rel=1e-6)


def test_dkdpp_has_no_dkd_term_in_epoch_zero(resnet8_teacher: TeacherConfig) -> None:
    module = DKDPlusPlus("resnet8", resnet8_teacher, alpha=2.0, beta=8.0, nd_weight=0.5)
    module.train()
    _with_centers(module)
    _, losses = module.training_losses(_batch())  # outside a trainer: epoch 0
    assert losses["tckd"].item() == 0.0 and losses["nckd"].item() == 0.0, "ND's 0-based ramp: 0 / warm_up"
    assert losses["nd"].item() > 0.0 and losses["ce"].item() > 0.0
    total = torch.stack(list(losses.values())).sum()
    total.backward()
    assert all(p.grad is not None for p in module.student.parameters())


def test_imagenet_dkdpp_ramps_the_dino_term_too(resnet8_teacher: TeacherConfig, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    plain = DKDPlusPlus("resnet8", resnet8_teacher, nd=NDSettings(warmup_epochs=5.0), temperature=1.0)
    ramped = DKDPlusPlus("resnet8", resnet8_teacher, nd=NDSettings(warmup_epochs=5.0), temperature=1.0, nd_ramp=True)
    ramped.load_state_dict(plain.state_dict())
    for module in (plain, ramped):
        module.train()
        _with_centers(module)
    batch = _batch()
    _at_epoch(monkeypatch, 2)
    _, plain_losses = plain.training_losses(batch)
    _, ramped_losses = ramped.training_losses(batch)
    assert ramped_losses["nd"].item() == pytest.approx(plain_losses["nd"].item() * 2 / 5, rel=1e-6)
    assert ramped_losses["nckd"].item() == pytest.approx(plain_losses["nckd"].item(), rel=1e-6)
    _at_epoch(monkeypatch, 0)
    _, first = ramped.training_losses(batch)
    assert first["nd"].item() == 0.0


# ----------------------------------------------------------------------------------------------------- DIST++
def test_distpp_total_is_ramped_dist_plus_dino(resnet8_teacher: TeacherConfig, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    module = DISTPlusPlus("resnet8", resnet8_teacher, kd_weight=1.5, nd_weight=4.0)
    module.double().train()
    centers = _with_centers(module).double().numpy()
    batch = _batch(torch.float64)
    z_s, z_t, f_s, f_t, labels = _features(module, batch)
    _at_epoch(monkeypatch, 10)
    _, losses = module.training_losses(batch)
    assert set(losses) == {"ce", "dist", "nd"}
    assert losses["dist"].item() == pytest.approx(1.5 * 0.5 * _dist(z_s, z_t, 4.0), rel=1e-6)
    assert losses["nd"].item() == pytest.approx(4.0 * _dino(f_s, f_t, centers, labels), rel=1e-5)
    _at_epoch(monkeypatch, 0)
    _, first = module.training_losses(batch)
    assert first["dist"].item() == 0.0 and first["nd"].item() > 0.0


def test_projection_when_widths_differ(resnet8_teacher: TeacherConfig, tmp_path: Path) -> None:
    wide = export_network(create_model("resnet8x4", 100), "resnet8x4", tmp_path / "resnet8x4.pth")
    for cls in (DKDPlusPlus, DISTPlusPlus):
        assert len(cls("resnet8", resnet8_teacher).projections) == 0
        projected = cls("resnet8", TeacherConfig("resnet8x4", str(wide)))
        assert projected.projections["nd"][2].out_features == 256


# ------------------------------------------------------------------------------------------- CLI and configs
@pytest.mark.parametrize("name", ["DKDPlusPlus", "DISTPlusPlus"])
def test_help_lists_every_argument_typed_and_documented(
    name: str, capsys: pytest.CaptureFixture[str], check_method_help
) -> None:  # type: ignore[no-untyped-def]
    check_method_help(name, capsys)


@pytest.mark.parametrize(
    "config, name, terms",
    [
        ("dkdpp", "DKDPlusPlus", {"ce", "tckd", "nckd", "nd"}),
        ("dkdpp_imagenet", "DKDPlusPlus", {"ce", "tckd", "nckd", "nd"}),
        ("distpp", "DISTPlusPlus", {"ce", "dist", "nd"}),
    ],
)
def test_shipped_config_trains_through_the_cli(
    config: str, name: str, terms: set[str], cifar_root: Path, tmp_path: Path, fit_args, resnet8_teacher
) -> None:  # type: ignore[no-untyped-def]
    run = fit_args(
        cifar_root,
        tmp_path,
        "--model.student=resnet8",
        f"--model.teacher.arch={resnet8_teacher.arch}",
        f"--model.teacher.checkpoint={resnet8_teacher.checkpoint}",
    )
    configs = ["--config", str(REPO_ROOT / "configs/recipes/nd_cifar100.yaml")]
    configs += ["--config", str(REPO_ROOT / f"configs/methods/{config}.yaml")]
    cli = KDBenchCLI(args=[run[0], *configs, *run[1:]])
    assert type(cli.model).__name__ == name
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["steps"] == 2
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {f"train/{t}" for t in terms} <= set(header)
    load_network("resnet8", 100, tmp_path / "final.pth")  # no EmbTrans in the export


def test_table1_rows_carry_nds_published_weights() -> None:
    table = load_table("table1")
    rows = {row.label: row for row in table.rows}
    dkd, dist = rows["DKD++"], rows["DIST++"]
    assert dkd.method == "DKDPlusPlus" and dist.method == "DISTPlusPlus"
    published = {  # ND spec §2.5 (CIFAR/train_cifar.sh, CIFAR/DIST++/train_dist.sh)
        "resnet56->resnet20": ({"alpha": 2.5, "beta": 4.0, "nd_weight": 3.5}, {"kd_weight": 2.0, "nd_weight": 1.0}),
        "resnet32x4->resnet8x4": ({"alpha": 2.0, "beta": 8.0, "nd_weight": 0.5}, {"kd_weight": 1.5, "nd_weight": 4.0}),
        "wrn_40_2->wrn_40_1": ({"alpha": 1.0, "beta": 6.0, "nd_weight": 1.0}, {"kd_weight": 2.5, "nd_weight": 3.0}),
    }
    pairs = {pair.label: pair for pair in table.pairs}
    for label, (dkd_weights, dist_weights) in published.items():
        assert dkd.args_for(pairs[label]) == dkd_weights
        assert dist.args_for(pairs[label]) == dist_weights
    assert {ref.method for ref in dkd.paper} == {"dkd++"} and {ref.method for ref in dist.paper} == {"dist++"}
