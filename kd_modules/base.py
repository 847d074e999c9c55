"""The LightningModule every method subclasses.

It owns the student and the optional frozen teacher, builds the optimiser and the learning-rate schedule of
the recipe, tracks top-1/top-5 on the evaluation split (best and last), and turns the dict of named, already
weighted loss terms that a method returns into one optimisation step with per-term logging.

A method implements one hook::

    def training_losses(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        ...  # return the student's logits (for training accuracy) and {"ce": w_ce * ce, "kd": w_kd * kd, ...}

and, if it changes the student's inference path beyond ``student(images)``, :meth:`predict_logits`.
"""

from __future__ import annotations

import math
import time
import warnings
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from kd_modules.errors import MethodConfigError
from models import FeatureOutput, KDNet, create_model
from models.checkpoints import CheckpointError, load_network

__all__ = [
    "OptimConfig",
    "TeacherConfig",
    "SettingsGroup",
    "DistillationModule",
    "MethodConfigError",
    "TrainingDivergedError",
]

# The frozen teacher is in eval mode on purpose; Lightning warns about any eval-mode module at fit start.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")

Batch = dict[str, Tensor]


class TrainingDivergedError(RuntimeError):
    """The student's loss went non-finite: the run fails with this message instead of recording chance accuracy."""


@dataclass(frozen=True)
class SettingsGroup:
    """Base of a typed group of method arguments that several methods share (ND's settings, the contrastive
    memory, KCD's transformation ...), written ``--model.init_args.<group>.<field>`` and ``<group>: {...}`` in YAML.

    A group is how arguments are written, not what they mean: in a run's identity its fields count as if they
    were the method's own arguments (``benchmarks.plan.run_identity`` flattens them), so moving flat arguments
    into a group never changes a run's identity.  A group's field names must therefore not clash with the
    method's other arguments, and keep the names the arguments had.  ``OptimConfig``, ``TeacherConfig`` and
    ``TargetsConfig`` are older nested configs, not groups: they count nested, as they always have.
    """


@dataclass(frozen=True)
class OptimConfig:
    """SGD and its learning-rate schedule, as the recipes state them.

    Milestones are 0-based: ``[150, 180, 210]`` with unit ``epoch`` gives epochs 0-149 at ``lr``, 150-179 at
    ``lr*gamma``, ... — RepDistiller's "x0.1 at 150/180/210" with its 1-based epochs.

    Args:
        lr: initial learning rate.
        momentum: SGD momentum.
        nesterov: Nesterov momentum (letKD, ND) or plain (CRD, mdistiller, NORM).
        weight_decay: L2 weight decay on every trainable tensor (BN and biases included, as the references).
        schedule: ``step`` (multiply by ``gamma`` at each milestone), ``cosine`` (anneal to 0) or ``constant``.
        milestones: where ``step`` decays, in ``unit``.
        gamma: decay factor of ``step``.
        unit: ``epoch`` (CRD/NORM/ND/letKD) or ``step`` (KCD's 32k/48k/64k-iteration schedule).
        warmup: linear warm-up length in ``unit`` (0: none).
        warmup_start_factor: learning-rate multiplier at the start of the warm-up.
        loss_schedule_epochs: when positive, the loss-weight warm-ups (DKD, ReviewKD, the ND "++" methods, NORM)
            read the epoch as if the run lasted this many epochs, ``floor(step / total steps * loss_schedule_epochs)``,
            so a short run goes through the whole warm-up in the same fraction of its steps as the papers' runs.
            0: the run's own epoch, as in the papers.  kdbench's 250-step Fashion-MNIST recipe sets 240 (the CIFAR
            recipes' length): a 20-epoch warm-up then spans its first twelfth, as on CIFAR, instead of never
            leaving its first value.
    """

    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: Literal["step", "cosine", "constant"] = "step"
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])
    gamma: float = 0.1
    unit: Literal["epoch", "step"] = "epoch"
    warmup: int = 0
    warmup_start_factor: float = 0.1
    loss_schedule_epochs: int = 0

    def __post_init__(self) -> None:
        if self.loss_schedule_epochs < 0:
            raise MethodConfigError(
                f"optim.loss_schedule_epochs must be 0 (the run's own epochs) or positive, got {self.loss_schedule_epochs}"
            )

    def factor(self, t: int, horizon: int) -> float:
        """Learning-rate multiplier at time ``t`` (0-based, in ``unit``) for a run of ``horizon`` units."""
        if self.schedule == "step":
            value = self.gamma ** sum(t >= m for m in self.milestones)
        elif self.schedule == "cosine":
            value = 0.5 * (1.0 + math.cos(math.pi * min(t, horizon) / max(horizon, 1)))
        else:
            value = 1.0
        if self.warmup > 0 and t < self.warmup:
            ramp = self.warmup_start_factor + (1.0 - self.warmup_start_factor) * t / self.warmup
            value *= ramp
        return value


@dataclass(frozen=True)
class TeacherConfig:
    """A frozen teacher.

    Args:
        arch: network name of the teacher.
        checkpoint: its trained weights: a kdbench export (``final.pth``), a Lightning checkpoint of a kdbench
            run, a RepDistiller/mdistiller release (``{'model': state_dict}``) or a torchvision state dict.
    """

    arch: str
    checkpoint: str


class DistillationModule(pl.LightningModule, metaclass=ABCMeta):
    """Base of every method: student (+ frozen teacher), SGD + schedule, top-1/top-5 tracking, loss-dict logging.

    Args:
        student: network name for the student (see ``python -m benchmarks.zoo``).
        num_classes: classifier width; must match the data (the CLI links it from the datamodule).
        teacher: frozen teacher; ``None`` for methods that train a network alone (``Vanilla``).
        optim: optimiser and learning-rate schedule of the recipe.
        student_init: start the student from these weights (a kdbench export such as another run's
            ``initial.pth`` or ``final.pth``) instead of a fresh random draw; methods that need it expose it.
    """

    #: Whether the method needs a teacher.  Subclasses that distil set this to True.
    requires_teacher: bool = False

    def __init__(
        self,
        student: str,
        num_classes: int = 100,
        teacher: TeacherConfig | None = None,
        optim: OptimConfig = OptimConfig(),
        student_init: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.optim = optim
        if student_init is None:
            self.student: KDNet = create_model(student, num_classes)
        else:
            # Start from stored weights instead of a fresh draw: KCD restarts from the exact theta_0 of its CE-only
            # run (every fit stores its student's initial weights as initial.pth), two-stage methods from the
            # output of their initialisation stage.
            self.student = load_network(student, num_classes, student_init)
        self.teacher: KDNet | None = None
        if teacher is not None:
            if not Path(teacher.checkpoint).is_file():
                raise CheckpointError(
                    f"teacher checkpoint not found: {teacher.checkpoint} (train the teacher with the Vanilla method, "
                    f"e.g. `python -m benchmarks.run <table>` does it, or put a released {teacher.arch} checkpoint there)"
                )
            self.teacher = load_network(teacher.arch, num_classes, teacher.checkpoint)
            self.teacher.eval()
            self.teacher.requires_grad_(False)
        if self.requires_teacher and self.teacher is None:
            raise ValueError(
                f"{type(self).__name__} needs a teacher: pass --model.teacher.arch and --model.teacher.checkpoint"
            )

        self.train_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")
        self.val_loss = MeanMetric(nan_strategy="disable")  # a NaN must show (and no per-batch NaN check)
        # Best/last accuracy are part of the module's state so that a resumed run keeps tracking them.
        self.tracked: dict[str, float] = {}
        self._fit_seconds_before_resume = 0.0
        self._fit_started_at: float | None = None
        self._total_steps: int | None = None

    # ----------------------------------------------------------------------------------------- teacher handling
    def train(self, mode: bool = True) -> DistillationModule:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # BN running statistics of the teacher never change
        return self

    def on_train_epoch_start(self) -> None:
        if self.teacher is not None:
            self.teacher.eval()

    @property
    def schedule_epoch(self) -> int:
        """The 0-based epoch that loss-weight warm-ups read: the run's own, or its equivalent in a run of
        ``optim.loss_schedule_epochs`` epochs (a Python int from the step counter: no host sync)."""
        length = self.optim.loss_schedule_epochs
        if length == 0 or self._trainer is None:
            return self.current_epoch
        if self._total_steps is None:
            self._total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        return min(length - 1, self.global_step * length // self._total_steps)

    def teacher_features(self, images: Tensor) -> FeatureOutput:
        """One teacher forward under inference mode.

        Inference-mode tensors cannot be saved for backward, so the outputs are cloned into ordinary tensors —
        a few device copies, far cheaper than the forward itself.
        """
        assert self.teacher is not None
        with torch.inference_mode():
            out = self.teacher.forward_features(images)
        return out.map_tensors(torch.clone)

    def teacher_logits(self, images: Tensor) -> Tensor:
        assert self.teacher is not None
        with torch.inference_mode():
            logits = self.teacher(images)
        return logits.clone()

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # The teacher is rebuilt from its own checkpoint; keeping it out of every run checkpoint saves disk and
        # makes a run checkpoint a student checkpoint.
        full = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "") + "teacher."
        return type(full)((k, v) for k, v in full.items() if not k.startswith(prefix))

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        if self.teacher is not None:
            state_dict = dict(state_dict)
            for key, value in self.teacher.state_dict().items():
                state_dict.setdefault(f"teacher.{key}", value)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ------------------------------------------------------------------------------------------- method hooks
    @abstractmethod
    def training_losses(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """Return the student's training logits and the dict of named, already weighted loss terms."""

    def predict_logits(self, images: Tensor) -> Tensor:
        """The student's inference path (methods with inserted modules keep them: they live in the student)."""
        return self.student(images)

    def forward(self, images: Tensor) -> Tensor:
        return self.predict_logits(images)

    # ---------------------------------------------------------------------------------------------- training
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        logits, losses = self.training_losses(batch)
        total = torch.stack(list(losses.values())).sum()
        batch_size = batch["labels"].shape[0]
        # Epoch aggregates only: Lightning accumulates these on the device, so there is no host sync per step.
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), on_step=False, on_epoch=True, batch_size=batch_size)
        self.log("train/loss", total.detach(), on_step=False, on_epoch=True, batch_size=batch_size)
        self.train_top1.update(logits.detach(), batch["labels"])
        return total

    def on_train_epoch_end(self) -> None:
        self.log("train/top1", self.train_top1.compute() * 100.0)
        self.train_top1.reset()

    # -------------------------------------------------------------------------------------------- evaluation
    def _evaluate(self, batch: Batch) -> None:
        logits = self.predict_logits(batch["images"])
        labels = batch["labels"]
        self.val_top1.update(logits, labels)
        self.val_top5.update(logits, labels)
        self.val_loss.update(F.cross_entropy(logits, labels), weight=labels.shape[0])

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch)

    def _finish_evaluation(self, stage: str) -> dict[str, float]:
        top1 = self.val_top1.compute() * 100.0
        top5 = self.val_top5.compute() * 100.0
        loss = self.val_loss.compute()
        for metric in (self.val_top1, self.val_top5, self.val_loss):
            metric.reset()
        self.log(f"{stage}/top1", top1)
        self.log(f"{stage}/top5", top5)
        self.log(f"{stage}/loss", loss)
        return {"top1": float(top1), "top5": float(top5), "loss": float(loss)}

    def on_validation_epoch_end(self) -> None:
        result = self._finish_evaluation("val")
        finite = math.isfinite(result["loss"])
        if not self.trainer.sanity_checking:
            epoch = self.current_epoch
            self.tracked.update(last_top1=result["top1"], last_top5=result["top5"], last_epoch=epoch)
            if result["top1"] > self.tracked.get("best_top1", -1.0):
                self.tracked.update(best_top1=result["top1"], best_top5=result["top5"], best_epoch=epoch)
            if finite:
                self.log("val/top1_best", self.tracked["best_top1"])
        if not finite:
            # A student whose outputs went non-finite scores chance accuracy forever: stop and fail the run, so that
            # the table shows a divergence instead of a chance-level number (float() above already synced).  The
            # evaluation is tracked first: a smoke run records it (``run.on_divergence: record``) instead of failing.
            raise TrainingDivergedError(
                f"{type(self).__name__} diverged: the validation loss is {result['loss']} at epoch {self.current_epoch},"
                f" step {self.global_step} (the student's outputs are no longer finite; lower the learning rate or the"
                " distillation weights)"
            )

    def on_test_epoch_end(self) -> None:
        result = self._finish_evaluation("test")
        self.tracked.update({f"test_{k}": result[k] for k in ("top1", "top5")})

    # ------------------------------------------------------------------------------------------ optimisation
    def trainable_modules(self) -> list[nn.Module]:
        """Everything the optimiser updates: the student and the method's own modules, never the teacher."""
        return [m for name, m in self.named_children() if name != "teacher"]

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for m in self.trainable_modules() for p in m.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(
            params,
            lr=self.optim.lr,
            momentum=self.optim.momentum,
            nesterov=self.optim.nesterov,
            weight_decay=self.optim.weight_decay,
        )
        if self.optim.unit == "epoch":
            horizon = int(self.trainer.max_epochs or 1)
        else:
            horizon = int(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: self.optim.factor(t, horizon))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.optim.unit, "frequency": 1},
        }

    # ---------------------------------------------------------------------------------- run bookkeeping
    def on_fit_start(self) -> None:
        self._fit_started_at = time.perf_counter()
        self._total_steps = None  # schedule_epoch reads this fit's length

    def fit_seconds(self) -> float:
        running = 0.0 if self._fit_started_at is None else time.perf_counter() - self._fit_started_at
        return self._fit_seconds_before_resume + running

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["kdbench"] = {"tracked": dict(self.tracked), "fit_seconds": self.fit_seconds()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("kdbench", {})
        self.tracked = dict(saved.get("tracked", {}))
        self._fit_seconds_before_resume = float(saved.get("fit_seconds", 0.0))

    def extra_parameters(self) -> int:
        """Parameters the method trains beyond the student (connectors, embeddings...)."""
        student = sum(p.numel() for p in self.student.parameters())
        trainable = sum(p.numel() for m in self.trainable_modules() for p in m.parameters())
        return trainable - student
