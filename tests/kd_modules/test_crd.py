"""CRD: the NCE loss on a hand-made score matrix, Z freezing, the momentum memory update, checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from kd_modules import CRD, CRDKD, TeacherConfig
from kd_modules.crd import ContrastMemory, ContrastSettings
from kd_modules.errors import MethodConfigError
from kd_modules.losses import nce_loss


def test_nce_loss_on_a_hand_made_score_matrix() -> None:
    # N = 4 samples, K = 2 negatives: K * Pn = 0.5.
    x = torch.tensor([[1.5, 0.5, 0.25], [0.5, 1.0, 0.0]])
    eps = 1e-7
    positives = math.log(1.5 / (2.0 + eps)) + math.log(0.5 / (1.0 + eps))
    negatives = (
        math.log(0.5 / (1.0 + eps))
        + math.log(0.5 / (0.75 + eps))
        + math.log(0.5 / (1.5 + eps))
        + math.log(0.5 / (0.5 + eps))
    )
    assert nce_loss(x, num_data=4).item() == pytest.approx(-(positives + negatives) / 2, rel=1e-6)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def test_scores_z_freezing_and_momentum_update() -> None:
    torch.manual_seed(0)
    memory = ContrastMemory(feat_dim=4, temperature=0.5, momentum=0.3)
    memory.allocate(6)
    bank_s, bank_t = memory.memory_student.clone(), memory.memory_teacher.clone()
    bound = 1 / math.sqrt(4 / 3)
    assert bank_s.abs().max() <= bound and bank_s.shape == (6, 4)
    v_s, v_t = _unit(torch.randn(2, 4)), _unit(torch.randn(2, 4))
    indices = torch.tensor([1, 4])
    contrast = torch.tensor([[1, 0, 2], [4, 5, 3]])

    scores_s, scores_t = memory(v_s, v_t, indices, contrast)

    # scores by explicit dot products: the student anchor against the teacher bank and vice versa
    raw_s = torch.tensor([[math.exp(float(bank_t[j] @ v_s[b]) / 0.5) for j in contrast[b]] for b in range(2)])
    raw_t = torch.tensor([[math.exp(float(bank_s[j] @ v_t[b]) / 0.5) for j in contrast[b]] for b in range(2)])
    z_s, z_t = raw_s.mean().item() * 6, raw_t.mean().item() * 6
    assert memory.z_student.item() == pytest.approx(z_s, rel=1e-5)
    assert memory.z_teacher.item() == pytest.approx(z_t, rel=1e-5)
    assert torch.allclose(scores_s, raw_s / z_s, rtol=1e-5) and torch.allclose(scores_t, raw_t / z_t, rtol=1e-5)

    # momentum 0.3 at the batch's own indices, re-normalised; every other row untouched
    for b, i in enumerate(indices.tolist()):
        expected_s = 0.3 * bank_s[i] + 0.7 * v_s[b]
        expected_t = 0.3 * bank_t[i] + 0.7 * v_t[b]
        assert torch.allclose(memory.memory_student[i], expected_s / expected_s.norm(), atol=1e-6)
        assert torch.allclose(memory.memory_teacher[i], expected_t / expected_t.norm(), atol=1e-6)
    for i in (0, 2, 3, 5):
        assert torch.equal(memory.memory_student[i], bank_s[i]) and torch.equal(memory.memory_teacher[i], bank_t[i])

    # a second batch keeps Z (normalised by the first batch's constants, not its own mean)
    v_s2, v_t2 = _unit(torch.randn(2, 4)), _unit(torch.randn(2, 4))
    bank_t2 = memory.memory_teacher.clone()
    scores_s2, _ = memory(v_s2, v_t2, torch.tensor([0, 2]), contrast)
    assert memory.z_student.item() == pytest.approx(z_s, rel=1e-6)
    raw_s2 = torch.tensor([[math.exp(float(bank_t2[j] @ v_s2[b]) / 0.5) for j in contrast[b]] for b in range(2)])
    assert torch.allclose(scores_s2, raw_s2 / z_s, rtol=1e-5)


def _crd(checkpoint: Path, arch: str, **kwargs) -> CRD:  # type: ignore[no-untyped-def]
    return CRD(student="resnet8", teacher=TeacherConfig(arch, str(checkpoint)), **kwargs)


def _batch(n: int, k: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "images": torch.randn(4, 3, 32, 32, generator=g),
        "labels": torch.arange(4),
        "indices": torch.tensor([3, 7, 1, 9]),
        "contrast_indices": torch.cat(
            [torch.tensor([[3], [7], [1], [9]]), torch.randint(0, n, (4, k), generator=g)], dim=1
        ),
    }


def test_module_loss_is_the_sum_of_both_directions(trained_teacher: Path) -> None:
    module = _crd(trained_teacher, "resnet8", contrast=ContrastSettings(memory_size=20))
    batch = _batch(20, 5)
    memory_before = ContrastMemory(128)
    memory_before.load_state_dict(module.memory.state_dict())
    s = module.student.forward_features(batch["images"])
    t = module.teacher_features(batch["images"])
    v_s, v_t = module.embed_student(s.embedding), module.embed_teacher(t.embedding)
    assert torch.allclose(v_s.norm(dim=1), torch.ones(4)) and v_t.shape == (4, 128)
    scores_s, scores_t = memory_before(v_s, v_t, batch["indices"], batch["contrast_indices"])
    expected = nce_loss(scores_s, 20) + nce_loss(scores_t, 20)
    assert torch.allclose(module.feature_losses(s, t, batch)["crd"], expected, rtol=1e-5)


def test_checkpoint_keeps_memory_and_z(trained_teacher: Path) -> None:
    module = _crd(trained_teacher, "resnet8", contrast=ContrastSettings(memory_size=20))
    module.training_losses(_batch(20, 5))
    state = module.state_dict()
    assert state["memory.memory_student"].shape == (20, 128) and state["memory.z_student"] > 0
    resumed = _crd(trained_teacher, "resnet8")  # bank not allocated yet: sized from the checkpoint
    resumed.load_state_dict(state)
    for key in ("memory.memory_student", "memory.memory_teacher", "memory.z_student", "memory.z_teacher"):
        assert torch.equal(resumed.state_dict()[key], state[key])
    resumed.training_losses(_batch(20, 5, seed=1))
    assert resumed.memory.z_student == state["memory.z_student"], "Z stays frozen after a resume"


def test_missing_contrast_indices_and_unallocated_memory_are_clear_errors(trained_teacher: Path) -> None:
    module = _crd(trained_teacher, "resnet8", contrast=ContrastSettings(memory_size=20))
    batch = _batch(20, 5)
    del batch["contrast_indices"]
    with pytest.raises(MethodConfigError, match=r"contrast_k .*configs/methods/crd.yaml"):
        module.training_losses(batch)
    with pytest.raises(MethodConfigError, match="memory bank is empty"):
        _crd(trained_teacher, "resnet8").training_losses(_batch(20, 5))


def test_crd_kd_adds_hinton_kd(trained_teacher: Path) -> None:
    module = CRDKD(
        student="resnet8",
        teacher=TeacherConfig("resnet8", str(trained_teacher)),
        contrast=ContrastSettings(memory_size=20),
    )
    assert (module.ce_weight, module.kd_weight, module.feat_weight, module.temperature) == (1.0, 1.0, 0.8, 4.0)
    _, losses = module.training_losses(_batch(20, 5))
    assert set(losses) == {"ce", "kd", "crd"}
    plain = _crd(trained_teacher, "resnet8", contrast=ContrastSettings(memory_size=20))
    assert set(plain.training_losses(_batch(20, 5))[1]) == {"ce", "crd"}
