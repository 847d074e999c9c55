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

import copy
import inspect
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
from kd_modules.numerics import Numerics, compile_network, uses_cuda_graphs
from models import FeatureOutput, KDNet, create_model
from models.checkpoints import CheckpointError, load_network

__all__ = [
    "OptimConfig",
    "TeacherConfig",
    "SettingsGroup",
    "DistillationModule",
    "LogitDistillation",
    "loss_ramp",
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
    """The optimiser, its learning-rate schedule and the recipe's regularisation, as the recipes state them.

    Milestones are 0-based: ``[150, 180, 210]`` with unit ``epoch`` gives epochs 0-149 at ``lr``, 150-179 at
    ``lr*gamma``, ... — RepDistiller's "x0.1 at 150/180/210" with its 1-based epochs.

    The CNN recipes use SGD; the ViT recipes (DeiT, MAE, ND's DeiT++) AdamW with a warm-up then a half-cycle cosine
    to ``min_lr`` updated every step, weight decay off on 1-D tensors and biases, label smoothing, mixup/CutMix and
    stochastic depth.  The base module applies them all; a method that computes its own cross-entropy (the CNN
    methods) refuses label smoothing and mixing, since it would ignore them.

    Args:
        lr: initial learning rate.
        momentum: SGD momentum.
        nesterov: Nesterov momentum (letKD, ND) or plain (CRD, mdistiller, NORM).
        weight_decay: L2 weight decay on every trainable tensor (BN and biases included, as the references), or
            AdamW's decoupled decay.
        schedule: ``step`` (multiply by ``gamma`` at each milestone), ``cosine`` (anneal to 0), ``constant``, or
            ``warmup_cosine`` (MAE / ND DeiT: linear from ``warmup_start_factor * lr`` over ``warmup``, then a
            half-cycle cosine from ``lr`` to ``min_lr`` over the rest).
        milestones: where ``step`` decays, in ``unit``.
        gamma: decay factor of ``step``.
        unit: ``epoch`` (CRD/NORM/ND/letKD) or ``step`` (KCD's 32k/48k/64k-iteration schedule).
        warmup: linear warm-up length in ``unit`` (0: none).
        warmup_start_factor: learning-rate multiplier at the start of the warm-up.
        optimizer: ``sgd`` or ``adamw`` (``betas``; ``momentum`` and ``nesterov`` are SGD's).
        betas: AdamW's (beta1, beta2) (DeiT 0.9 / 0.999, MAE and ND's DeiT++ 0.9 / 0.95).
        decay_norm_and_bias: weight decay on 1-D tensors (norms) and biases too (the CNN references) or not (timm's
            and ND's ``param_groups_weight_decay``).
        min_lr: the learning rate ``warmup_cosine`` ends at.
        per_step: with ``unit=epoch``, update the learning rate every optimiser step at the fractional epoch
            (MAE / ND DeiT: ``step / steps_per_epoch + epoch``) instead of once per epoch.
        label_smoothing: smoothing of the classification targets (DeiT 0.1).
        mixup_alpha: mixup's Beta(alpha, alpha) (0: off; DeiT 0.8), applied to the whole batch with its reverse.
        cutmix_alpha: CutMix's Beta(alpha, alpha) (0: off; DeiT 1.0); with both on, one of the two per batch.
        mix_switch_prob: the chance that a batch uses CutMix when both are on (timm 0.5).
        drop_path: the student's stochastic-depth rate (ViTs; DeiT-B / MAE-B 0.1).
        dropout: the student's dropout after dense layers and position embeddings (ViTs; the ViT paper's 0.1).
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
    schedule: Literal["step", "cosine", "constant", "warmup_cosine"] = "step"
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])
    gamma: float = 0.1
    unit: Literal["epoch", "step"] = "epoch"
    warmup: int = 0
    warmup_start_factor: float = 0.1
    loss_schedule_epochs: int = 0
    optimizer: Literal["sgd", "adamw"] = "sgd"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    decay_norm_and_bias: bool = True
    min_lr: float = 0.0
    per_step: bool = False
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_switch_prob: float = 0.5
    drop_path: float = 0.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.loss_schedule_epochs < 0:
            raise MethodConfigError(
                f"optim.loss_schedule_epochs must be 0 (the run's own epochs) or positive, got {self.loss_schedule_epochs}"
            )
        if len(self.betas) != 2:
            raise MethodConfigError(f"optim.betas must be two numbers (beta1, beta2), got {self.betas}")
        for name in ("label_smoothing", "mixup_alpha", "cutmix_alpha", "drop_path", "dropout"):
            if getattr(self, name) < 0:
                raise MethodConfigError(f"optim.{name} must be at least 0, got {getattr(self, name)}")

    @property
    def mixes(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def factor(self, t: float, horizon: int) -> float:
        """Learning-rate multiplier at time ``t`` (0-based, in ``unit``; fractional with ``per_step``) for a run of
        ``horizon`` units."""
        warming = t < self.warmup  # the linear warm-up from warmup_start_factor (never with warmup <= 0)
        ramp = self.warmup_start_factor + (1.0 - self.warmup_start_factor) * t / self.warmup if warming else 1.0
        if self.schedule == "warmup_cosine":
            if warming:
                return ramp
            floor = self.min_lr / self.lr if self.lr else 0.0
            progress = min(t - self.warmup, horizon - self.warmup) / max(horizon - self.warmup, 1)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.schedule == "step":
            value = self.gamma ** sum(t >= m for m in self.milestones)
        elif self.schedule == "cosine":
            value = 0.5 * (1.0 + math.cos(math.pi * min(t, horizon) / max(horizon, 1)))
        else:
            value = 1.0
        return value * ramp


def loss_ramp(epoch: int, warmup_epochs: float, one_based: bool = False) -> float:
    """Linear loss-weight warm-up ``min(1, epoch / warmup_epochs)`` (1 when ``warmup_epochs`` is 0).

    ``epoch`` is Lightning's 0-based epoch; ``one_based`` adds 1 first (mdistiller's trainer passes 1-based
    epochs, so its first epoch already has weight ``1/warmup``).  Python float: no tensor, no host sync.
    """
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, (epoch + (1 if one_based else 0)) / warmup_epochs)


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
    #: Whether the method's classification term is :meth:`classification_loss` (so the recipe's label smoothing and
    #: mixup/CutMix reach it).  Methods that call ``F.cross_entropy`` themselves leave it False and refuse them.
    reads_mixed_targets: bool = False

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
        self._keep_method_args(inspect.currentframe())
        self.optim = optim
        if student_init is None:
            self.student: KDNet = create_model(student, num_classes)
        else:
            # Start from stored weights instead of a fresh draw: KCD restarts from the exact theta_0 of its CE-only
            # run (every fit stores its student's initial weights as initial.pth), two-stage methods from the
            # output of their initialisation stage.
            self.student = load_network(student, num_classes, student_init)
        self.teacher: KDNet | None = None
        self.teacher_config = teacher
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
        if (optim.mixes or optim.label_smoothing) and not self.reads_mixed_targets:
            raise MethodConfigError(
                f"{type(self).__name__} computes its own cross-entropy, so it would ignore the recipe's label smoothing "
                f"and mixup/CutMix (optim.label_smoothing {optim.label_smoothing}, mixup_alpha {optim.mixup_alpha}, "
                f"cutmix_alpha {optim.cutmix_alpha}); use a method that reads them (Vanilla, DeiTPlusPlus)"
            )
        if optim.drop_path:
            self.student.set_drop_path(optim.drop_path)
        if optim.dropout:
            self.student.set_dropout(optim.dropout)

        self.train_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")
        self.val_loss = MeanMetric(nan_strategy="disable")  # a NaN must show (and no per-batch NaN check)
        # Best/last accuracy are part of the module's state so that a resumed run keeps tracking them.
        self.tracked: dict[str, float] = {}
        self._fit_seconds_before_resume = 0.0
        self._fit_started_at: float | None = None
        self._total_steps: int | None = None
        # How the run computes (layout, compilation, teacher cache): set by the CLI from the config's numerics
        # group (configure_numerics); the default is the references' eager fp32 with a live teacher.
        self.numerics = Numerics()
        self._teacher_cache: Any = None  # kd_modules.teacher_cache.TeacherOutputCache while a fit uses one
        self._teacher_cache_for: Any = None  # the data module it was built for
        self._step_batch: Batch | None = None  # the training batch being processed (teacher-cache lookups)
        self._step_teacher: dict[str, Tensor] | None = None

    def _keep_method_args(self, frame: Any) -> None:
        """Make every constructor argument of the method's own classes an attribute of the same name
        (``self.ce_weight``, ``self.temperature`` ...), so that a constructor states its signature and the checks of
        its arguments but not a ``self.x = x`` list.

        The values are read from the ``__init__`` frames of the constructor chain (as Lightning's
        ``save_hyperparameters`` reads them), so an argument a subclass passes on through ``**kwargs`` is found in
        the class that declares it; the outermost class's value wins, as if it had assigned it after
        ``super().__init__``.  The base's own arguments are not copied (``self.teacher`` is the network).  A class
        that keeps a transformed value assigns it after ``super().__init__`` as before.
        """
        own = inspect.signature(DistillationModule.__init__).parameters
        found: dict[str, Any] = {}
        frame = frame.f_back
        while frame is not None and frame.f_code.co_name == "__init__" and frame.f_locals.get("self") is self:
            code = frame.f_code
            names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
            found.update({name: frame.f_locals[name] for name in names if name not in own})
            frame = frame.f_back
        for name, value in found.items():
            setattr(self, name, value)

    # ---------------------------------------------------------------------------------------------- numerics
    def configure_numerics(self, numerics: Numerics) -> None:
        """Apply a run's numerics: channels_last weights, compiled network forwards; the teacher cache is built
        when the fit starts (it needs the data)."""
        self.numerics = numerics
        if numerics.channels_last:
            self.to(memory_format=torch.channels_last)
        for network in (self.student, self.teacher):
            if network is not None:
                compile_network(network, numerics.compile)

    def _input_layout(self, images: Tensor) -> Tensor:
        if self.numerics.channels_last and images.dim() == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def _cached_teacher(self, images: Tensor) -> dict[str, Tensor] | None:
        """The cached teacher outputs of the current training batch, when a cache serves this call."""
        batch = self._step_batch
        if self._teacher_cache is None or batch is None:
            return None
        if images is not batch["images"]:
            raise MethodConfigError(
                f"{type(self).__name__} ran its teacher on other images than the training batch's, which the teacher "
                "cache cannot serve: remove it from kd_modules.teacher_cache.CACHEABLE (or run without "
                "numerics.teacher_cache)"
            )
        if self._step_teacher is None:
            self._step_teacher = self._teacher_cache.lookup(batch["indices"], batch["views"])
        return self._step_teacher

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
        """One teacher forward under inference mode (or, with a teacher cache, its cached outputs).

        Inference-mode tensors cannot be saved for backward, so the outputs are cloned into ordinary tensors —
        a few device copies, far cheaper than the forward itself.
        """
        assert self.teacher is not None
        cached = self._cached_teacher(images)
        if cached is not None:
            from kd_modules.teacher_cache import CachedTeacherFeatures

            return CachedTeacherFeatures(cached, type(self).__name__)  # type: ignore[return-value]
        with torch.inference_mode():
            out = self.teacher.forward_features(images)
        return out.map_tensors(torch.clone)

    def teacher_logits(self, images: Tensor) -> Tensor:
        assert self.teacher is not None
        cached = self._cached_teacher(images)
        if cached is not None:
            return cached["logits"]
        with torch.inference_mode():
            logits = self.teacher(images)
        return logits.clone()

    def teacher_and_student(self, images: Tensor) -> tuple[FeatureOutput, FeatureOutput]:
        """A step's two forwards: the teacher's :meth:`teacher_features`, then the student's features."""
        return self.teacher_features(images), self.student.forward_features(images)

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

    def deploy_student(self) -> nn.Module:
        """The network a user deploys, in eval mode (``python -m benchmarks.export`` writes it): a copy of the
        student by default; NORM folds its FT into the classifier, SimKD adds its projector and the teacher's head."""
        return copy.deepcopy(self.student).eval()

    def forward(self, images: Tensor) -> Tensor:
        return self.predict_logits(images)

    def classification_loss(self, logits: Tensor, batch: Batch) -> Tensor:
        """Cross-entropy against the batch's soft targets when the recipe mixes (``targets``, smoothed), else against
        its labels with the recipe's label smoothing."""
        if "targets" in batch:
            return torch.sum(-batch["targets"] * F.log_softmax(logits, dim=-1), dim=-1).mean()
        return F.cross_entropy(logits, batch["labels"], label_smoothing=self.optim.label_smoothing)

    def mix_batch(self, batch: Batch) -> Batch:
        """mixup / CutMix of the whole batch with its reverse (timm's ``mode="batch"``), as the ViT recipes do.

        Adds ``targets`` (the smoothed, mixed one-hot targets, timm's ``mixup_target``) and ``mix_lambda`` (the
        share of each image's own content; CutMix's is corrected by the clipped box, timm's ``correct_lam``).  The
        draws come from a generator seeded by the run's seed (``torch.initial_seed()``, Lightning's
        ``seed_everything``) and the step, so a resumed run mixes as the first did.
        """
        import numpy as np
        from timm.data.mixup import mixup_target

        optim = self.optim
        rng = np.random.default_rng([torch.initial_seed() % 2**32, int(self.global_step)])
        use_cutmix = optim.cutmix_alpha > 0 and (optim.mixup_alpha <= 0 or rng.random() < optim.mix_switch_prob)
        alpha = optim.cutmix_alpha if use_cutmix else optim.mixup_alpha
        lam = float(rng.beta(alpha, alpha))
        images = batch["images"]
        if use_cutmix:  # timm's rand_bbox: a box of area (1 - lam) at a uniform centre, clipped; lam corrected
            height, width = images.shape[-2:]
            cut_h, cut_w = int(height * math.sqrt(1.0 - lam)), int(width * math.sqrt(1.0 - lam))
            cy, cx = int(rng.integers(height)), int(rng.integers(width))
            top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
            left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
            lam = 1.0 - (bottom - top) * (right - left) / float(height * width)
            images = images.clone()
            images[:, :, top:bottom, left:right] = batch["images"].flip(0)[:, :, top:bottom, left:right]
        else:
            images = images * lam + images.flip(0) * (1.0 - lam)
        targets = mixup_target(batch["labels"], self.student.num_classes, lam, optim.label_smoothing)
        lam_tensor = torch.tensor(lam, device=images.device)
        return {**batch, "images": images, "targets": targets, "mix_lambda": lam_tensor}

    # ---------------------------------------------------------------------------------------------- training
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        if self.optim.mixes:
            batch = self.mix_batch(batch)
        batch["images"] = self._input_layout(batch["images"])
        if uses_cuda_graphs(self.numerics.compile) and batch["images"].is_cuda:
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration: earlier graph outputs may be reused
        self._step_batch, self._step_teacher = batch, None
        try:
            logits, losses = self.training_losses(batch)
        finally:
            self._step_batch, self._step_teacher = None, None
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
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        logits = self.predict_logits(self._input_layout(batch["images"]))
        labels = batch["labels"]
        self.val_top1.update(logits, labels)
        self.val_top5.update(logits, labels)
        self.val_loss.update(F.cross_entropy(logits, labels), weight=labels.shape[0])

    test_step = validation_step  # the test split is evaluated as the validation split

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
        optim = self.optim
        named = [(n, p) for m in self.trainable_modules() for n, p in m.named_parameters() if p.requires_grad]
        if optim.decay_norm_and_bias:
            params: Any = [p for _, p in named]
        else:  # timm / ND ``param_groups_weight_decay``: no decay on 1-D tensors and biases
            plain = [p for n, p in named if p.ndim <= 1 or n.endswith(".bias")]
            decayed = [p for n, p in named if not (p.ndim <= 1 or n.endswith(".bias"))]
            params = [{"params": plain, "weight_decay": 0.0}, {"params": decayed}]
        if optim.optimizer == "adamw":
            # The fused implementation where every parameter allows it: its step counts stay on the parameters'
            # device (the for-each and per-tensor ones keep them on the host and read each one every step: a host
            # read per parameter tensor, which also rules out capturing the step in a CUDA graph).
            fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for _, p in named)
            optimizer: torch.optim.Optimizer = torch.optim.AdamW(
                params,
                lr=optim.lr,
                betas=(optim.betas[0], optim.betas[1]),
                weight_decay=optim.weight_decay,
                fused=True if fused else None,
            )
        else:
            optimizer = torch.optim.SGD(
                params, lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov, weight_decay=optim.weight_decay
            )
        # The scheduler counts units of `interval`; with per_step it counts steps, per_unit of them per epoch.
        interval, per_unit = optim.unit, 1
        if optim.unit == "epoch":
            horizon = int(self.trainer.max_epochs or 1)
            if optim.per_step:
                interval, per_unit = "step", max(1, int(self.trainer.estimated_stepping_batches) // horizon)
        else:
            horizon = int(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: optim.factor(t / per_unit, horizon))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": interval, "frequency": 1},
        }

    # ---------------------------------------------------------------------------------- run bookkeeping
    def on_fit_start(self) -> None:
        self._fit_started_at = time.perf_counter()
        self._total_steps = None  # schedule_epoch reads this fit's length
        datamodule = getattr(self.trainer, "datamodule", None)
        if not self.numerics.teacher_cache:
            self._teacher_cache = None
        elif self._teacher_cache is None or self._teacher_cache_for is not datamodule:
            from kd_modules.teacher_cache import build_teacher_cache, notice

            self._teacher_cache, message = build_teacher_cache(self)
            self._teacher_cache_for = datamodule  # a later fit on the same data reuses it
            notice(
                message
                if self._teacher_cache is not None
                else f"teacher cache not used: {message}; running the teacher"
            )

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


class LogitDistillation(DistillationModule):
    """Base of the methods that read only the two networks' logits (KD, DIST, DKD): a step is one teacher forward
    (or its cached logits), one student forward and the method's :meth:`logit_losses`, whose distillation terms
    are scaled by :meth:`logit_ramp` (the ND "++" methods pass their own ramp to ``logit_losses``)."""

    requires_teacher = True

    @abstractmethod
    def logit_losses(self, logits: Tensor, teacher_logits: Tensor, labels: Tensor, ramp: float) -> dict[str, Tensor]:
        """The method's named, weighted terms; ``ramp`` multiplies its distillation terms."""

    def logit_ramp(self) -> float:
        """The factor of this step's distillation terms (1: no warm-up)."""
        return 1.0

    def training_losses(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        images = batch["images"]
        teacher_logits = self.teacher_logits(images)
        logits = self.student(images)
        return logits, self.logit_losses(logits, teacher_logits, batch["labels"], self.logit_ramp())
