"""DeiT and DeiT++: distilling a CNN teacher into a vision transformer (DeiT, Touvron et al. 2021; ND's README
"CNN -> ViT", official ``ImageNet/DeiT/train_launch_distilled.py``)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from kd_modules.base import Batch, DistillationModule, MethodConfigError, OptimConfig, TeacherConfig, loss_ramp
from kd_modules.class_means import MeanTransform
from kd_modules.losses.deitpp import dino_loss_to_centers, hard_distillation_loss, mixed_centers
from kd_modules.losses.kd import kd_loss
from kd_modules.nd import EmbeddingProjection, ProjectionInit, load_class_means
from models import KDNet


class DeiTPlusPlus(DistillationModule):
    """DeiT's distillation (through the distillation token where the student has one) plus ND's dino-loss::

        L = ce_weight * CE(head(cls), targets) + kd_weight * ramp(epoch) * L_kd(z_dist, z_t)
            + nd_weight * L_dino(EmbTrans(f_s), f_t, mixed centres)

    * ``targets`` are the recipe's (:meth:`DistillationModule.classification_loss`: mixup / CutMix and label
      smoothing of ``optim``), the teacher sees the same mixed images;
    * ``z_dist`` is the distillation head's logits of a DeiT student (``deit_b_distilled``), the class head's of a
      plain ViT; ``L_kd`` is ``hard`` (``CE(z_dist, argmax z_t)``, DeiT's and ND's choice) or ``soft``
      (Hinton's KD at ``temperature``);
    * ``f_s`` is the student's embedding (DeiT: ``(cls + dist) / 2``, as ND's code), projected by ND's EmbTrans
      (BN - Dropout(0.5) - Linear, ``projection_init``) to the teacher's embedding width; ``f_t`` the teacher's
      pooled embedding; the centres are the teacher's class means (one pass over the training split, cached, as
      ND's other "++" methods) mixed with the batch (:func:`kd_modules.losses.deitpp.mixed_centers`).

    The rows of ND's README: DeiT++ = ``kd_weight 0.5, nd_weight 1.5`` (ce 1, hard, ramp over 5 epochs) under ND's
    DeiT recipe; "DeiT with the README recipe, without ND" = the same with ``nd_weight 0``; DeiT as its paper
    trains it = ``ce_weight 0.5, kd_weight 0.5, nd_weight 0, warmup_epochs 0`` under DeiT's recipe.  At inference
    the student predicts with its own logits (DeiT: the mean of both heads).

    Args:
        student: a ViT network name (``deit_b_distilled``, ``vit_b``, ``vit_s``).
        teacher: the frozen CNN teacher (ND: RegNetY-16GF).
        num_classes: classifier width (linked from the data).
        optim: optimiser, schedule and the recipe's regularisation (AdamW, mixup / CutMix, label smoothing ...).
        ce_weight: weight of the class head's cross-entropy.
        kd_weight: weight of the distillation term (ramped).
        nd_weight: weight of the dino-loss (0: DeiT without ND; not ramped, as ND's code).
        kd_mode: ``hard`` (the teacher's top-1) or ``soft`` (KL at ``temperature``).
        temperature: the ``soft`` KD temperature.
        warmup_epochs: ramp of the distillation weight, ``min(1, epoch / warmup_epochs)`` (ND: 5; 0: none).
        class_mean_transform: the teacher class-mean pass, ``train`` (one augmented view, ND) or ``clean``.
        class_mean_seed: seed of that pass.
        projection_init: EmbTrans initialisation (``imagenet``: N(0, 0.01) weight and bias, ND's ImageNet code).
    """

    requires_teacher = True
    teacher: KDNet  # loaded by the base module (requires_teacher)
    reads_mixed_targets = True

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        num_classes: int = 1000,
        optim: OptimConfig = OptimConfig(),
        ce_weight: float = 1.0,
        kd_weight: float = 0.5,
        nd_weight: float = 1.5,
        kd_mode: Literal["hard", "soft"] = "hard",
        temperature: float = 1.0,
        warmup_epochs: float = 5.0,
        class_mean_transform: MeanTransform = "train",
        class_mean_seed: int = 0,
        projection_init: ProjectionInit = "imagenet",
    ) -> None:
        super().__init__(student=student, num_classes=num_classes, teacher=teacher, optim=optim)
        from models.imagenet.timm_nets import TimmViT

        if not isinstance(self.student, TimmViT):
            raise MethodConfigError(f"DeiT++ distils into a vision transformer; {student} is not one")
        self.distilled = bool(getattr(self.student, "distilled", False))
        self.projection: EmbeddingProjection | None = None
        if nd_weight and self.student.embedding_dim != self.teacher.embedding_dim:
            self.projection = EmbeddingProjection(
                self.student.embedding_dim, self.teacher.embedding_dim, projection_init
            )
        self.register_buffer("centers", torch.empty(0), persistent=False)

    @classmethod
    def pair_problem(cls, student: str, teacher: str, init_args: dict) -> str | None:
        from models.imagenet.timm_nets import TimmViT
        from models.profile import meta_model

        if not isinstance(meta_model(student), TimmViT):
            return f"DeiT++ distils into a vision transformer; {student} is not one (vit_s, vit_b, deit_b_distilled)"
        return None

    @classmethod
    def offline_stages(cls, init_args: dict) -> list[tuple[str, str]]:
        if not init_args.get("nd_weight", 1.5):
            return []
        return [("nd_class_means", "teacher class means of the pooled embedding over the training split")]

    def setup(self, stage: str) -> None:
        if stage != "fit" or not self.nd_weight or self.centers.numel() > 0:
            return
        self.prepare_class_means(self.trainer.datamodule, self.trainer.strategy.root_device)

    def prepare_class_means(self, datamodule: object, device: torch.device | str | None = None) -> None:
        """Load (or compute once and cache) the teacher's class means of its pooled embedding."""
        means = load_class_means(self, datamodule, device, self.class_mean_transform, self.class_mean_seed)
        self.centers = means["embedding"]

    def training_losses(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        images, labels = batch["images"], batch["labels"]
        teacher, student = self.teacher_and_student(images)
        cls_logits = student.extras["cls_logits"] if self.distilled else student.logits
        kd_logits = student.extras["dist_logits"] if self.distilled else student.logits
        assert isinstance(cls_logits, Tensor) and isinstance(kd_logits, Tensor)
        losses = {"ce": self.ce_weight * self.classification_loss(cls_logits, batch)}
        if self.kd_weight:
            if self.kd_mode == "hard":
                kd = hard_distillation_loss(kd_logits, teacher.logits)
            else:
                kd = kd_loss(kd_logits, teacher.logits, self.temperature)
            losses["kd"] = self.kd_weight * loss_ramp(self.schedule_epoch, self.warmup_epochs) * kd
        if self.nd_weight:
            if self.centers.numel() == 0:
                raise MethodConfigError(
                    "DeiT++: the teacher class means are not loaded; train through a Trainer with a datamodule "
                    "(setup() computes them) or call prepare_class_means(datamodule) first"
                )
            lam = batch["mix_lambda"] if "mix_lambda" in batch else 1.0
            centers = mixed_centers(self.centers, labels, lam, self.optim.label_smoothing)
            embedding = student.embedding if self.projection is None else self.projection(student.embedding)
            losses["nd"] = self.nd_weight * dino_loss_to_centers(embedding, teacher.embedding, centers)
        return cls_logits, losses
