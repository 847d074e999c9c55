"""TDD and TDD+CRD: the decision loss by hand and by loops, the tree steps (node centres, KNN accuracy, merge by
threshold) on hand-made trees, SciPy's Ward tree against scikit-learn's (the official clustering), the offline stage
end to end with its cache, a step on resnet20 -> resnet8, the CLI with the shipped configs, and the table cells."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import CIFAR100
from kd_modules import TDD, TDDCRD, TeacherConfig
from kd_modules.errors import MethodConfigError
from kd_modules.losses.kd import kd_loss
from kd_modules.losses.tdd import decision_loss, group_weights
from kd_modules.tdd import TreeSettings
from kd_modules.tdd_offline import (
    TDDSetupError,
    build_layer_groups,
    cluster_linkage,
    knn_accuracy,
    merge_by_threshold,
    node_centres,
    tree_members,
)
from models import create_model


# ------------------------------------------------------------------------------------------------- the loss
def test_decision_loss_by_hand() -> None:
    # K = 3 classes in two groups {0, 1} and {2}: weights 1/2 and 1.  Sample 0 (label 2, group 1) has logits (0, 0):
    # CE ln 2, weight 1; sample 1 (label 0, group 0) has logits (ln 3, 0): p = 3/4, CE ln(4/3), weight 1/2.
    groups = torch.tensor([0, 0, 1])
    weight = group_weights(groups, 2)
    assert weight.tolist() == [0.5, 1.0]
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    labels = torch.tensor([2, 0])
    balanced = (math.log(2) + 0.5 * math.log(4 / 3)) / 1.5
    assert decision_loss([logits], labels, [groups], [weight]).item() == pytest.approx(balanced)
    plain = (math.log(2) + math.log(4 / 3)) / 2
    assert decision_loss([logits], labels, [groups], [None]).item() == pytest.approx(plain)
    # Two layers sum; the second maps every class to its own group, logits zero: CE ln 3 for each sample.
    second = (torch.zeros(2, 3), torch.arange(3), torch.ones(3))
    total = decision_loss([logits, second[0]], labels, [groups, second[1]], [weight, second[2]])
    assert total.item() == pytest.approx(balanced + math.log(3))


def test_decision_loss_against_a_loop_formulation() -> None:
    torch.manual_seed(0)
    labels = torch.randint(0, 6, (9,))
    groups = [torch.tensor([0, 1, 1, 2, 2, 2]), torch.tensor([0, 0, 0, 0, 1, 1])]
    logits = [torch.randn(9, 3), torch.randn(9, 2)]
    weights = [group_weights(g, int(g.max()) + 1) for g in groups]
    expected = 0.0
    for z, g, w in zip(logits, groups, weights):
        num = den = 0.0
        for b in range(9):
            target = int(g[labels[b]])
            log_norm = math.log(sum(math.exp(float(v)) for v in z[b]))
            sizes = sum(1 for c in range(6) if int(g[c]) == target)
            num += (1 / sizes) * (log_norm - float(z[b, target]))
            den += 1 / sizes
            assert float(w[target]) == pytest.approx(1 / sizes)
        expected += num / den
    assert decision_loss(logits, labels, groups, weights).item() == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------------------------------------ the tree
# Four classes: node 4 = {0, 1}, node 5 = {2, 3}, root 6 = {0, 1, 2, 3}.
CHILDREN = np.array([[0, 1], [2, 3], [4, 5]])


def test_merge_by_threshold_on_a_hand_made_tree() -> None:
    accuracy = [1.0, 1.0, 1.0, 1.0, 0.1, 0.9, 1.0]
    # Root (1.0) splits; the stack pops node 5 first (0.9 >= 0.2: split into leaves 3 then 2), then node 4
    # (0.1 < 0.2: one group).
    assert merge_by_threshold(CHILDREN, accuracy, 0.2) == [[3], [2], [0, 1]]
    assert merge_by_threshold(CHILDREN, accuracy, 0.05) == [[3], [2], [1], [0]]  # every node splits


def test_merge_below_the_threshold_merges() -> None:
    accuracy = [1.0, 1.0, 1.0, 1.0, 0.1, 0.9, 1.0]
    assert merge_by_threshold(CHILDREN, accuracy, 0.95) == [[2, 3], [0, 1]]
    assert merge_by_threshold(CHILDREN, accuracy, 1.5) == [[0, 1, 2, 3]]  # the root itself is below


def test_node_centres_official_children_average_and_class_means() -> None:
    # Unbalanced tree: node 3 = {0, 1}, root 4 = {node 3, 2}; 1-D class means 0, 2, 8.
    children = np.array([[0, 1], [3, 2]])
    means = np.array([[0.0], [2.0], [8.0]])
    official = node_centres(children, means, "children")
    assert official[:, 0].tolist() == [0.0, 2.0, 8.0, 1.0, 4.5]  # (1 + 8) / 2, not (0 + 2 + 8) / 3
    paper = node_centres(children, means, "classes")
    assert paper[:, 0].tolist() == pytest.approx([0.0, 2.0, 8.0, 1.0, 10 / 3])
    assert [sorted(m) for m in tree_members(children, 3)] == [[0], [1], [2], [0, 1], [0, 1, 2]]


def test_knn_accuracy_by_hand() -> None:
    # 1-D embeddings: class 0 at 0, 1, 2; class 1 at 10, 11; class 2 at 12.  Tree: node 3 = {1, 2}, root = {0, 3}.
    embeddings = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0]])
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    members = [frozenset([0]), frozenset([1]), frozenset([2]), frozenset([1, 2]), frozenset([0, 1, 2])]
    centres = torch.tensor([[1.0], [10.5], [12.0], [11.0], [6.0]])
    accuracy = knn_accuracy(embeddings, labels, centres, members, k=3)
    # class 0 centre 1: nearest 1, 0, 2 (all class 0) -> 1; class 1 centre 10.5: 10, 11, then 12 (class 2) -> 2/3;
    # class 2 centre 12: 12, 11, 10 -> 1/3; node {1, 2} centre 11: 11, 10, 12 -> 1; root -> 1.
    assert accuracy.tolist() == pytest.approx([1.0, 2 / 3, 1 / 3, 1.0, 1.0])
    with pytest.raises(TDDSetupError, match="knn_k=7"):
        knn_accuracy(embeddings, labels, centres, members, k=7)


def test_scipy_ward_tree_has_the_clusters_of_the_official_scikit_learn_clustering() -> None:
    from sklearn.cluster import AgglomerativeClustering

    rng = np.random.default_rng(0)
    means = rng.normal(size=(12, 5))
    ours = tree_members(cluster_linkage(means, "ward")[:, :2], 12)
    model = AgglomerativeClustering(distance_threshold=0, n_clusters=None, linkage="ward").fit(means)
    theirs = tree_members(model.children_, 12)
    assert set(ours) == set(theirs)
    heights = sorted(cluster_linkage(means, "ward")[:, 2])
    assert heights == pytest.approx(sorted(model.distances_))


def test_layer_groups_from_embeddings() -> None:
    torch.manual_seed(0)
    embeddings = torch.cat([torch.randn(8, 2) + 5 * c for c in range(4)])
    labels = torch.arange(4).repeat_interleave(8)
    layer = build_layer_groups(embeddings, labels, 4, knn_k=8, threshold=0.0)
    assert sorted(layer["group_of_class"].tolist()) == [0, 1, 2, 3]  # nothing is below 0: every class alone
    merged = build_layer_groups(embeddings, labels, 4, knn_k=8, threshold=1.01)
    assert merged["group_of_class"].tolist() == [0, 0, 0, 0]  # the root (accuracy 1) is below 1.01: one group
    assert layer["knn_accuracy"].shape == (7,) and layer["knn_accuracy"][6] == 1.0
    assert layer["linkage"].shape == (3, 4)
    assert layer["means"][2].tolist() == pytest.approx(embeddings[16:24].mean(0).tolist(), abs=1e-6)
    squares = (embeddings[16:24].double() ** 2).mean(0)
    assert layer["mean_squares"][2].tolist() == pytest.approx(squares.tolist(), rel=1e-6)


# ------------------------------------------------------------------------------------------- the method
def _teacher(teacher_checkpoint, arch: str = "resnet20") -> TeacherConfig:  # type: ignore[no-untyped-def]
    return TeacherConfig(arch, str(teacher_checkpoint(arch)))


def _datamodule(cifar_root: Path, **kwargs) -> CIFAR100:  # type: ignore[no-untyped-def]
    datamodule = CIFAR100(root=str(cifar_root), batch_size=8, eval_batch_size=100, seed=0, **kwargs)
    datamodule.setup("fit")
    return datamodule


def test_requires_a_teacher_and_valid_stages(teacher_checkpoint) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="TDD needs a teacher"):
        TDD(student="resnet8", teacher=None)  # type: ignore[arg-type]
    with pytest.raises(MethodConfigError, match=r"tree.stages must be distinct stages among 1..3"):
        TDD(student="resnet8", teacher=_teacher(teacher_checkpoint), tree=TreeSettings(stages=[4]))
    with pytest.raises(MethodConfigError, match="unknown tree.linkage 'median'"):
        TreeSettings(linkage="median")


def test_offline_stage_end_to_end_and_cached(
    teacher_checkpoint, cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    datamodule = _datamodule(cifar_root)
    module = TDD(student="resnet8", teacher=_teacher(teacher_checkpoint), tree=TreeSettings(knn_k=5))
    module.prepare_groups(datamodule, "cpu")
    assert [h.fc.in_features for h in module.decision_heads] == [16, 32, 64]
    folders = list((tmp_path / "cache" / "tdd_class_groups").iterdir())
    artefact = torch.load(next(p for p in folders if p.is_dir()) / "artefact.pt")
    # Independent check of stage 3: the teacher's pooled stage outputs by hand, then the class means.
    images, labels = datamodule.split("train")
    batch = datamodule.on_after_batch_transfer({"images": images, "labels": labels}, 0)
    with torch.no_grad():
        pooled = module.teacher.forward_features(batch["images"]).stages_post[2].mean(dim=(2, 3))
    means = torch.stack([pooled[labels == c].mean(0) for c in range(100)])
    assert torch.allclose(artefact["stage3.means"], means, atol=1e-4)
    for k in (1, 2, 3):
        groups = artefact[f"stage{k}.group_of_class"]
        assert groups.shape == (100,) and sorted(set(groups.tolist())) == list(range(int(groups.max()) + 1))
        assert torch.equal(getattr(module, f"group_of_class_{k - 1}"), groups)
    # A second module with the same teacher and data loads the artefact (no teacher pass).
    monkeypatch.setattr("kd_modules.tdd.pooled_stage_embeddings", lambda *a, **k: pytest.fail("recomputed"))
    again = TDD(student="resnet8", teacher=_teacher(teacher_checkpoint), tree=TreeSettings(knn_k=5))
    again.prepare_groups(datamodule, "cpu")
    assert torch.equal(again.group_of_class_2, module.group_of_class_2)
    meta = json.loads((next(p for p in folders if p.is_dir()) / "inputs.json").read_text())
    assert meta["inputs"]["knn_k"] == 5 and meta["inputs"]["stages"] == [1, 2, 3]


def test_a_step_on_resnet20_to_resnet8(
    teacher_checkpoint, cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    module = TDD(student="resnet8", teacher=_teacher(teacher_checkpoint), tree=TreeSettings(stages=[2, 3]))
    with pytest.raises(MethodConfigError, match="built when a fit starts"):
        module.training_losses({"images": torch.randn(2, 3, 32, 32), "labels": torch.tensor([0, 1])})
    module.prepare_groups(_datamodule(cifar_root), "cpu")
    torch.manual_seed(1)
    batch = {"images": torch.randn(4, 3, 32, 32), "labels": torch.tensor([0, 1, 2, 3])}
    logits, losses = module.training_losses(batch)
    assert sorted(losses) == ["ce", "kd", "tdd"]
    with torch.no_grad():
        s, t = module.student.forward_features(batch["images"]), module.teacher.forward_features(batch["images"])
        ce = torch.nn.functional.cross_entropy(s.logits, batch["labels"])
        constraint = 0.0
        for i, k in enumerate((2, 3)):
            head = module.decision_heads[i].fc
            z = s.stages_post[k - 1].mean(dim=(2, 3)) @ head.weight.T + head.bias
            g = module.__getattr__(f"group_of_class_{i}")
            w = 1.0 / torch.bincount(g).float()
            target = g[batch["labels"]]
            per = -torch.log_softmax(z, 1).gather(1, target[:, None])[:, 0]
            constraint += float((w[target] * per).sum() / w[target].sum())
    assert losses["ce"].item() == pytest.approx(0.1 * ce.item(), rel=1e-5)
    assert losses["kd"].item() == pytest.approx(0.9 * kd_loss(s.logits, t.logits, 4.0).item(), rel=1e-5)
    assert losses["tdd"].item() == pytest.approx(0.1 * constraint, rel=1e-5)
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in module.decision_heads.parameters())
    assert all(p.grad is None for p in module.teacher.parameters())
    assert module.deploy_student().state_dict().keys() == create_model("resnet8", 100).state_dict().keys()
    # A checkpoint loads into a module that never ran setup: the heads take the saved widths.
    fresh = TDD(student="resnet8", teacher=_teacher(teacher_checkpoint), tree=TreeSettings(stages=[2, 3]))
    fresh.load_state_dict(module.state_dict())
    assert [h.fc.out_features for h in fresh.decision_heads] == [h.fc.out_features for h in module.decision_heads]


def test_tddcrd_adds_the_contrastive_term(
    teacher_checkpoint, cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    from kd_modules.crd import ContrastSettings

    module = TDDCRD(student="resnet8", teacher=_teacher(teacher_checkpoint), contrast=ContrastSettings(memory_size=16))
    module.prepare_groups(_datamodule(cifar_root), "cpu")
    batch = {
        "images": torch.randn(2, 3, 32, 32),
        "labels": torch.tensor([0, 1]),
        "indices": torch.tensor([0, 1]),
        "contrast_indices": torch.tensor([[0, 2, 3, 4], [1, 5, 6, 7]]),
    }
    _, losses = module.training_losses(batch)
    assert sorted(losses) == ["ce", "crd", "kd", "tdd"] and module.crd_weight == 0.8
    with pytest.raises(MethodConfigError, match="contrast_k"):
        module.training_losses({k: v for k, v in batch.items() if k != "contrast_indices"})


@pytest.mark.parametrize("name", ["TDD", "TDDCRD"])
def test_help_documents_every_argument(name: str, capsys: pytest.CaptureFixture[str], check_method_help) -> None:  # type: ignore[no-untyped-def]
    check_method_help(name, capsys)


@pytest.mark.parametrize("config", ["tdd", "tddcrd"])
def test_trains_through_the_cli_with_the_shipped_config(
    config: str,
    cifar_root: Path,
    tmp_path: Path,
    fit_shipped_config,
    trained_teacher: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    cli = fit_shipped_config(
        config,
        cifar_root,
        tmp_path,
        "--model.student=resnet8",
        "--model.teacher.arch=resnet8",
        f"--model.teacher.checkpoint={trained_teacher}",
    )
    assert type(cli.model).__name__ == config.upper() and cli.model.tree.knn_k == 20 and cli.model.tdd_weight == 0.1
    assert (tmp_path / "record.json").is_file()
    exported = torch.load(tmp_path / "final.pth")["state_dict"]
    assert exported.keys() == create_model("resnet8", 100).state_dict().keys()


@pytest.mark.parametrize("table", ["table1", "table4"])
def test_the_table_cells_now_plan(table: str, tmp_path: Path) -> None:
    from benchmarks.plan import build_plan, load_preset
    from benchmarks.store import RunStore
    from benchmarks.tables import load_table

    loaded = load_table(table)
    plan = build_plan(loaded, load_preset("full"), RunStore(tmp_path), data_root="x")
    for label in ("TDD", "TDD+CRD"):
        row = next(r for r in loaded.rows if r.label == label)
        present = [p.label for p in loaded.pairs if row.has_cell(p)]
        assert present and all((label, pair) in plan.cells for pair in present), (label, present)
        assert all(len(plan.cells[(label, pair)]) == loaded.trials for pair in present)
