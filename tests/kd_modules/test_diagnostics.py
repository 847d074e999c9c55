"""Diagnostic rows (KCD T10/T11, letKD supp. T4): the measurements by hand, and each diagnostic through the CLI on
networks whose answer is known (a channel-permuted copy of the student as the teacher)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.cli import KDBenchCLI
from datamodules import CIFAR100
from kd_modules.diagnostics import feature_kl, load_with_kd_layers, map_l2_distance, top_k_overlap
from kd_modules.errors import MethodConfigError
from kd_modules.letkd import KDLayer
from models import create_model
from models.checkpoints import export_network, read_state_dict


# --------------------------------------------------------------------------------------------- by hand
def test_top_k_overlap_by_hand() -> None:
    # Class 0: top-2 of a = {3, 2}, of b = {3, 0}: one shared -> 1/2.  Class 1: top-2 {0, 1} both -> 2/2.
    a = torch.tensor([[0.0, 1.0, 2.0, 3.0], [5.0, 4.0, 0.0, 0.0]])
    b = torch.tensor([[2.5, 0.0, 1.0, 9.0], [1.0, 2.0, 0.0, -1.0]])
    assert float(top_k_overlap(a, b, 2)) == pytest.approx(100.0 * (0.5 + 1.0) / 2)
    assert float(top_k_overlap(a, b, 1)) == pytest.approx(100.0 * (1 + 0) / 2)  # {3}/{3}, {0}/{1}
    assert float(top_k_overlap(a, b, 10)) == pytest.approx(100.0)  # k clamped to the 4 channels: all shared
    with_missing = torch.cat([a, torch.full((1, 4), float("nan"))])  # a class without images is left out
    assert float(top_k_overlap(with_missing, torch.cat([b, b[:1]]), 2)) == pytest.approx(75.0)


def test_feature_kl_and_l2_by_hand() -> None:
    t = torch.tensor([[0.0, math.log(3.0)]])  # softmax (1/4, 3/4)
    s = torch.tensor([[0.0, 0.0]])  # (1/2, 1/2)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert float(feature_kl(t, s)[0]) == pytest.approx(expected)
    assert float(feature_kl(s, s)[0]) == pytest.approx(0.0)
    maps = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    assert map_l2_distance(*maps).tolist() == pytest.approx([2.0, 2.0])  # sqrt(4 elements x 1)


# ---------------------------------------------------------------------------------- networks with answers
def _permuted_copy(source: Path, out: Path, seed: int = 7) -> tuple[Path, torch.Tensor]:
    """resnet8 whose final map is ``final_map[:, perm]`` of ``source``'s (last block's output channels permuted)."""
    state, _ = read_state_dict(source)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(seed))
    state = dict(state)
    for key in list(state):
        if key.startswith(("layer3.0.conv2.", "layer3.0.bn2.", "layer3.0.downsample.")) and state[key].dim() >= 1:
            state[key] = state[key][perm]
    state["fc.weight"] = state["fc.weight"][:, perm]
    network = create_model("resnet8", 100)
    network.load_state_dict(state)
    return export_network(network, "resnet8", out), perm


def _metrics(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "record.json").read_text())["metrics"]


def _diagnose(cifar_root: Path, fit_args, run_dir: Path, *args: str) -> dict[str, float]:  # type: ignore[no-untyped-def]
    KDBenchCLI(args=fit_args(cifar_root, run_dir, args[0], "--model.student=resnet8", *args[1:]))
    return _metrics(run_dir)


def test_permuted_copy_is_the_same_function(trained_teacher: Path, tmp_path: Path) -> None:
    permuted, perm = _permuted_copy(trained_teacher, tmp_path / "perm.pth")
    a = load_with_kd_layers("resnet8", 100, str(trained_teacher)).eval()
    b = load_with_kd_layers("resnet8", 100, str(permuted)).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        fa, fb = a.forward_features(x), b.forward_features(x)
    torch.testing.assert_close(fb.final_map, fa.final_map[:, perm])
    torch.testing.assert_close(fb.logits, fa.logits)


def test_channel_overlap(cifar_root: Path, fit_args, trained_teacher: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    permuted, _ = _permuted_copy(trained_teacher, tmp_path / "perm.pth")
    common = (
        "--model=ChannelOverlap",
        "--model.teacher.arch=resnet8",
        f"--model.teacher.checkpoint={permuted}",
        f"--model.checkpoint={trained_teacher}",
        "--model.max_images=500",
        "--model.ks=[5,10,64]",
    )
    transformed = _diagnose(cifar_root, fit_args, tmp_path / "t", *common, "--model.compare=transformed_teacher")
    assert transformed.pop("extra_parameters") == 0  # every record carries it; a diagnostic trains nothing
    # KCD's bipartite matching undoes the permutation: every class's top-k channels are the same ones.
    assert transformed == pytest.approx({"overlap_top5": 100.0, "overlap_top10": 100.0, "overlap_top64": 100.0})
    plain = _diagnose(cifar_root, fit_args, tmp_path / "p", *common, "--model.compare=teacher")
    assert plain["overlap_top5"] < 60.0 and plain["overlap_top64"] == pytest.approx(100.0)  # all 64 of 64 channels
    record = json.loads((tmp_path / "p" / "record.json").read_text())
    assert record["steps"] == 0  # a fit without steps
    second = tmp_path / "second.pth"
    shutil.copy(trained_teacher, second)  # "another student" with the same weights shares everything
    same = _diagnose(
        cifar_root,
        fit_args,
        tmp_path / "s",
        *common,
        "--model.compare=student",
        f"--model.reference_checkpoint={second}",
    )
    assert same["overlap_top5"] == pytest.approx(100.0)
    assert same["extra_parameters"] == 0  # S2 is measured, not trained


def test_output_consistency(cifar_root: Path, fit_args, trained_teacher: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    permuted, _ = _permuted_copy(trained_teacher, tmp_path / "perm.pth")
    common = (
        "--model=OutputConsistency",
        "--model.teacher.arch=resnet8",
        f"--model.teacher.checkpoint={permuted}",
        f"--model.checkpoint={trained_teacher}",
        "--model.max_images=100",
    )
    plain = _diagnose(cifar_root, fit_args, tmp_path / "identity", *common)
    mapped = _diagnose(
        cifar_root,
        fit_args,
        tmp_path / "bipartite",
        *common,
        "--model.mapping=bipartite",
        f"--model.mapping_checkpoint={trained_teacher}",
    )
    assert plain["kl_div"] > 1e-3 and plain["l2_dist"] > 1e-2
    assert mapped["kl_div"] == pytest.approx(0.0, abs=1e-9) and mapped["l2_dist"] == pytest.approx(0.0, abs=1e-4)
    assert mapped["extra_parameters"] == 0  # theta_1 is measured, not trained
    logits = _diagnose(cifar_root, fit_args, tmp_path / "logits", *common, "--model.kl_input=logits")
    assert logits["kl_div"] == pytest.approx(0.0, abs=1e-9)  # the permutation leaves the logits unchanged
    # By hand on the first 100 evaluation images: the identity-order L2 distance of the two final maps.
    data = CIFAR100(root=str(cifar_root), eval_batch_size=100)
    data.setup("fit")
    batch = data.on_after_batch_transfer(next(iter(data.val_dataloader())), 0)
    s_net = load_with_kd_layers("resnet8", 100, str(trained_teacher)).eval()
    t_net = load_with_kd_layers("resnet8", 100, str(permuted)).eval()
    with torch.no_grad():
        s_map, t_map = (
            s_net.forward_features(batch["images"]).final_map,
            t_net.forward_features(batch["images"]).final_map,
        )
    expected = (t_map - s_map).flatten(1).norm(dim=1).mean()
    assert plain["l2_dist"] == pytest.approx(float(expected), rel=1e-5)


def test_lda_probe_on_a_kd_layer_student(cifar_root: Path, fit_args, trained_teacher: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    student = load_with_kd_layers("resnet8", 100, str(trained_teacher))
    layer = KDLayer(64, 32, alpha=1.0)
    student.insert("stage3", layer)
    exported = export_network(student, "resnet8", tmp_path / "letkd_student.pth")
    loaded = load_with_kd_layers("resnet8", 100, str(exported)).eval()
    student.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), student(x))  # the KD layer came back with its weights and alpha
    common = ("--model=LDAProbe", f"--model.checkpoint={exported}", "--model.point=stage3")
    results = {
        which: _diagnose(cifar_root, fit_args, tmp_path / which, *common, f"--model.features={which}")["lda_top1"]
        for which in ("input", "output")
    }
    # The same probe by hand: x is the last stage's output (the insert replaces what follows it), x_hat = layer(x).
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    data = CIFAR100(root=str(cifar_root), eval_batch_size=100)
    data.setup("fit")

    def pooled(loader):  # type: ignore[no-untyped-def]
        xs, hats, labels = [], [], []
        for batch in loader:
            batch = data.on_after_batch_transfer(batch, 0)
            with torch.no_grad():
                x_map = loaded.forward_features(batch["images"]).stages_post[-1]
                x_hat = loaded.inserted["stage3"](x_map)[0]
            xs.append(x_map.mean((2, 3)))
            hats.append(x_hat.mean((2, 3)))
            labels.append(batch["labels"])
        return torch.cat(xs).double().numpy(), torch.cat(hats).double().numpy(), torch.cat(labels).numpy()

    train_x, train_hat, train_y = pooled(data.train_eval_dataloader())
    test_x, test_hat, test_y = pooled(data.val_dataloader())
    for which, (fit_on, score_on) in {"input": (train_x, test_x), "output": (train_hat, test_hat)}.items():
        expected = 100.0 * np.mean(LinearDiscriminantAnalysis().fit(fit_on, train_y).predict(score_on) == test_y)
        assert results[which] == pytest.approx(expected), which
    assert not np.allclose(train_x, train_hat)  # alpha 1: x and x_hat differ


def test_bad_settings_are_one_line(trained_teacher: Path) -> None:
    from kd_modules.base import TeacherConfig
    from kd_modules.diagnostics import ChannelOverlap, LDAProbe

    teacher = TeacherConfig("resnet8", str(trained_teacher))
    with pytest.raises(MethodConfigError, match="checkpoint"):
        ChannelOverlap("resnet8", teacher)
    with pytest.raises(MethodConfigError, match="second_seed"):
        ChannelOverlap(
            "resnet8",
            teacher,
            checkpoint=str(trained_teacher),
            compare="student",
            reference_checkpoint=str(trained_teacher),
        )
    with pytest.raises(MethodConfigError, match="valid: teacher, transformed_teacher, student"):
        ChannelOverlap("resnet8", teacher, checkpoint=str(trained_teacher), compare="nobody")  # type: ignore[arg-type]
    with pytest.raises(MethodConfigError, match="not an insertion point"):
        LDAProbe("resnet8", checkpoint=str(trained_teacher), point="stage9")
