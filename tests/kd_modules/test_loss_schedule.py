"""Loss-weight warm-ups in runs shorter than the papers' (``optim.loss_schedule_epochs``) and divergence checks.

The short Fashion-MNIST recipe trains for 250 steps, less than one epoch, so warm-ups counted in epochs (DKD's
``(epoch + 1) / 20``, ReviewKD's and ND's ``epoch / 20``, NORM's piecewise ramp) would stay at their first value
for the whole run: ReviewKD's and KD++'s distillation terms would be multiplied by 0 throughout.  With
``loss_schedule_epochs: 240`` the warm-up reads ``floor(step / 250 * 240)`` instead; the expected factors below
are worked out by hand from that formula.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from kd_modules import DKD, NORM, OptimConfig, ReviewKD, TeacherConfig, Vanilla
from kd_modules.base import TrainingDivergedError
from kd_modules.errors import MethodConfigError

SHORT = OptimConfig(lr=0.1, schedule="cosine", unit="step", loss_schedule_epochs=240)


class _Clock:
    """What the warm-ups read from the Trainer: the step counter, the epoch and the run's length in steps."""

    def __init__(self, step: int, epoch: int = 0, total_steps: int = 250) -> None:
        self.global_step = step
        self.current_epoch = epoch
        self.estimated_stepping_batches = total_steps


def _at(module: pl.LightningModule, step: int, epoch: int = 0) -> pl.LightningModule:
    module._trainer = _Clock(step, epoch)  # type: ignore[assignment]
    return module


def _batch() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"images": torch.randn(4, 3, 32, 32), "labels": torch.tensor([1, 2, 3, 4])}


@pytest.mark.parametrize(
    "step, epoch_read",
    [(0, 0), (1, 0), (2, 1), (11, 10), (20, 19), (21, 20), (249, 239), (250, 239), (400, 239)],
)
def test_schedule_epoch_maps_steps_onto_the_reference_length(step: int, epoch_read: int, trained_teacher: Path) -> None:
    # floor(step * 240 / 250): 2*240/250 = 1.92 -> 1, 21*240/250 = 20.16 -> 20; capped at the last epoch, 239.
    module = _at(Vanilla(student="resnet8", optim=SHORT), step)
    assert module.schedule_epoch == epoch_read


def test_without_a_reference_length_the_warmups_read_the_runs_own_epoch() -> None:
    module = _at(Vanilla(student="resnet8"), step=11, epoch=3)
    assert module.schedule_epoch == 3


def test_negative_reference_length_is_one_clear_error() -> None:
    with pytest.raises(MethodConfigError, match="loss_schedule_epochs must be 0 .* got -5"):
        OptimConfig(loss_schedule_epochs=-5)


def test_dkd_term_ramps_over_the_first_twelfth_of_a_short_run(trained_teacher: Path) -> None:
    """mdistiller's one-based warm-up: factor (epoch + 1) / 20 -> 0.05 at step 0, 0.55 at step 11, 1 from step 20."""
    module = DKD(student="resnet8", teacher=TeacherConfig("resnet8", str(trained_teacher)), optim=SHORT)
    batch = _batch()
    full = _at(module, 100).training_losses(batch)[1]
    for step, factor in [(0, 0.05), (11, 0.55), (20, 1.0)]:
        terms = _at(module, step).training_losses(batch)[1]
        for name in ("tckd", "nckd"):
            assert terms[name].item() == pytest.approx(factor * full[name].item(), rel=1e-5), (step, name)


def test_reviewkd_term_is_not_zero_for_the_whole_short_run(trained_teacher: Path) -> None:
    """The official CIFAR warm-up counts from 0: factor epoch / 20 -> 0 at step 0, 0.5 at step 11, 1 from step 21."""
    module = ReviewKD(student="resnet8", teacher=TeacherConfig("resnet8", str(trained_teacher)), optim=SHORT)
    module.eval()  # BN in eval mode: the same review loss at every call, only the factor changes
    batch = _batch()
    full = _at(module, 100).training_losses(batch)[1]["review"].item()
    assert full > 0
    for step, factor in [(0, 0.0), (11, 0.5), (21, 1.0)]:
        review = _at(module, step).training_losses(batch)[1]["review"].item()
        assert review == pytest.approx(factor * full, rel=1e-5, abs=1e-12), step


def test_norm_ramp_goes_through_all_its_pieces_in_a_short_run(teacher_checkpoint) -> None:  # type: ignore[no-untyped-def]
    """NORM's CIFAR ramp 0.1 / 0.5 / 1 / 0.5 / 0.1 from epochs 0 / 10 / 20 / 180 / 210 of 240, read at
    floor(step * 240 / 250): step 11 -> 10, 21 -> 20, 188 -> 180, 219 -> 210."""
    teacher = TeacherConfig("resnet32x4", str(teacher_checkpoint("resnet32x4")))
    module = NORM(student="resnet8x4", teacher=teacher, optim=SHORT)
    expected = {0: 0.1, 10: 0.1, 11: 0.5, 20: 0.5, 21: 1.0, 187: 1.0, 188: 0.5, 218: 0.5, 219: 0.1, 249: 0.1}
    assert {step: _at(module, step).ramp_weight() for step in expected} == expected
    # The released code's fixed boundaries in a run of the papers' length: epoch 15 is in the 0.5 piece.
    assert _at(NORM(student="resnet8x4", teacher=teacher), step=10**6, epoch=15).ramp_weight() == 0.5


def test_a_diverged_student_fails_its_run_with_a_clear_message(cifar_root: Path) -> None:
    from datamodules import CIFAR100

    data = CIFAR100(root=str(cifar_root), batch_size=8, eval_batch_size=50, on_device=False)
    module = Vanilla(student="resnet8")
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, datamodule=data, verbose=False)  # finite weights: no error
    with torch.no_grad():
        module.student.classifier.weight.fill_(math.nan)
    with pytest.raises(TrainingDivergedError, match=r"Vanilla diverged: the validation loss is nan at epoch 0"):
        trainer.validate(module, datamodule=data, verbose=False)
