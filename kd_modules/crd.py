"""CRD: Tian, Krishnan & Isola, "Contrastive Representation Distillation" (ICLR 2020); CRD+KD."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from kd_modules.base import Batch, SettingsGroup, TeacherConfig
from kd_modules.errors import MethodConfigError
from kd_modules.feature_distillation import FeatureDistillation
from kd_modules.losses.crd import contrast_scores, l2_normalize, momentum_update, nce_loss
from models import FeatureOutput, KDNet

__all__ = [
    "ContrastEmbed",
    "ContrastMemory",
    "ContrastSettings",
    "ContrastiveTerm",
    "CRD",
    "CRDKD",
]


class ContrastEmbed(nn.Module):
    """CRD's ``Embed``: ``Linear(d, feat_dim)`` (bias, default init) then L2 normalisation without eps."""

    def __init__(self, dim_in: int, dim_out: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return l2_normalize(self.linear(x.flatten(1)))


class ContrastMemory(nn.Module):
    """The two memory banks of CRD and their normalisation constants (buffers: saved, never optimised).

    ``memory_student`` (RepDistiller ``memory_v1``) holds momentum averages of the student's embeddings,
    ``memory_teacher`` (``memory_v2``) of the teacher's, one row per training sample, initialised uniform in
    ±1/sqrt(feat_dim/3).  ``z_student`` / ``z_teacher`` are the normalisation constants Z, -1 until the first
    batch fixes them to ``mean(scores) * N`` (RepDistiller keeps them in its float32 ``params`` buffer); being
    buffers, they survive a resume.  Unlike the reference, nothing is moved to CUDA at construction and no
    alias sampler is built: the data module supplies every batch's contrast indices.

    The banks are sized by :meth:`allocate` (CRD calls it from ``setup`` with the data's training-set size); a
    state dict with other bank sizes resizes them on load.
    """

    def __init__(self, feat_dim: int = 128, temperature: float = 0.07, momentum: float = 0.5) -> None:
        super().__init__()
        self.feat_dim = feat_dim
        self.temperature = temperature
        self.momentum = momentum
        self.register_buffer("memory_student", torch.empty(0, feat_dim))
        self.register_buffer("memory_teacher", torch.empty(0, feat_dim))
        self.register_buffer("z_student", torch.tensor(-1.0))
        self.register_buffer("z_teacher", torch.tensor(-1.0))

    @property
    def num_data(self) -> int:
        return int(self.memory_student.shape[0])

    def allocate(self, num_data: int) -> None:
        """Give the banks ``num_data`` random rows (and forget Z), unless they already have that many."""
        if num_data <= 0:
            raise MethodConfigError(f"CRD's memory bank needs a positive number of training samples, got {num_data}")
        if self.num_data == num_data:
            return
        bound = 1.0 / math.sqrt(self.feat_dim / 3)
        device = self.memory_student.device
        self.memory_student = torch.rand(num_data, self.feat_dim).mul_(2 * bound).add_(-bound).to(device)
        self.memory_teacher = torch.rand(num_data, self.feat_dim).mul_(2 * bound).add_(-bound).to(device)
        self.z_student.fill_(-1.0)
        self.z_teacher.fill_(-1.0)

    def allocate_for_fit(self, trainer: Any, method: str) -> None:
        """Size the banks from the fitting data module's ``num_train_samples`` (RepDistiller's ``n_data``),
        unless they already have rows (``memory_size`` given, or restored from a checkpoint)."""
        if self.num_data > 0:
            return
        datamodule = getattr(trainer, "datamodule", None)
        size = getattr(datamodule, "num_train_samples", None)
        if size is None:
            raise MethodConfigError(
                f"{method} sizes the CRD memory bank from the data module's num_train_samples; this run has no such "
                "data module (pass contrast.memory_size)"
            )
        self.allocate(int(size))

    def nce_objective(self, v_student: Tensor, v_teacher: Tensor, indices: Tensor, contrast_indices: Tensor) -> Tensor:
        """CRD's loss (RepDistiller ``CRDLoss``): the NCE losses of both anchors against the other network's bank,
        summed; updates the banks (see :meth:`forward`)."""
        scores_student, scores_teacher = self(v_student, v_teacher, indices, contrast_indices)
        return nce_loss(scores_student, self.num_data) + nce_loss(scores_teacher, self.num_data)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for name in ("memory_student", "memory_teacher"):
            saved = state_dict.get(prefix + name)
            current = getattr(self, name)
            if isinstance(saved, Tensor) and saved.shape != current.shape:
                setattr(self, name, torch.empty(saved.shape, dtype=current.dtype, device=current.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _scores(self, memory: Tensor, contrast_indices: Tensor, embedding: Tensor, z: Tensor) -> Tensor:
        """Scores of ``embedding`` against the other network's ``memory``, divided by their constant ``z``."""
        scores = contrast_scores(memory, contrast_indices, embedding, self.temperature)
        # Z is fixed by the first batch and constant afterwards; torch.where keeps this free of host syncs.
        frozen = torch.where(z < 0, scores.detach().mean() * self.num_data, z)
        z.copy_(frozen)
        return scores / frozen

    def forward(
        self, v_student: Tensor, v_teacher: Tensor, indices: Tensor, contrast_indices: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Z-normalised scores ``(student anchor vs teacher memory, teacher anchor vs student memory)``, both
        (B, K+1); then the rows of this batch's samples (``indices``) move towards the new embeddings."""
        if self.num_data == 0:
            raise MethodConfigError(
                "CRD's memory bank is empty: it is sized from the data module's num_train_samples when training "
                "starts (or pass contrast.memory_size)"
            )
        scores_student = self._scores(self.memory_teacher, contrast_indices, v_student, self.z_student)
        scores_teacher = self._scores(self.memory_student, contrast_indices, v_teacher, self.z_teacher)
        # The scores' backward needs the banks as they were: write the updated rows into new tensors (one
        # N x D copy per bank) instead of modifying the saved ones in place.
        with torch.no_grad():
            for name, embedding in (("memory_student", v_student), ("memory_teacher", v_teacher)):
                memory = getattr(self, name)
                rows = momentum_update(memory[indices], embedding.detach(), self.momentum)
                setattr(self, name, memory.index_copy(0, indices, rows))
        return scores_student, scores_teacher


@dataclass(frozen=True)
class ContrastSettings(SettingsGroup):
    """CRD's contrastive term (RepDistiller's settings), shared by CRD, CRD+KD and NORM+CRD (``contrast: {...}``).

    Args:
        feat_dim: embedding width (``--feat_dim`` 128).
        nce_t: temperature of the contrast scores (``--nce_t`` 0.07).
        nce_m: momentum of the memory update (``--nce_m`` 0.5).
        memory_size: rows of the memory banks; None sizes them from the data module's ``num_train_samples``
            when training starts (RepDistiller's ``n_data``).
    """

    feat_dim: int = 128
    nce_t: float = 0.07
    nce_m: float = 0.5
    memory_size: int | None = None


class ContrastiveTerm:
    """Mixin of a distillation module that adds CRD's term on the pooled penultimate vectors (``feat[-1]``):
    a :class:`ContrastEmbed` per network, the :class:`ContrastMemory` banks (sized in ``setup`` from the data
    module unless ``memory_size`` is given) and :meth:`contrast_objective`.  Used by :class:`CRD` and NORM+CRD
    (:class:`kd_modules.norm_crd.NORMCRD`); the modules are registered as ``embed_student``, ``embed_teacher``
    and ``memory`` (RepDistiller's optimised ``embed_s``/``embed_t`` and its contrast memory).
    """

    #: How errors name the method, and the config that sets its contrast data.
    contrast_method_name = "CRD"
    contrast_config = "configs/methods/crd.yaml"
    student: KDNet
    teacher: KDNet
    embed_student: ContrastEmbed
    embed_teacher: ContrastEmbed
    memory: ContrastMemory

    def build_contrast(self, settings: ContrastSettings) -> None:
        self.embed_student = ContrastEmbed(self.student.embedding_dim, settings.feat_dim)
        self.embed_teacher = ContrastEmbed(self.teacher.embedding_dim, settings.feat_dim)
        self.memory = ContrastMemory(settings.feat_dim, settings.nce_t, settings.nce_m)
        if settings.memory_size is not None:
            self.memory.allocate(settings.memory_size)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.memory.allocate_for_fit(self.trainer, self.contrast_method_name)  # type: ignore[attr-defined]

    def contrast_objective(self, student: FeatureOutput, teacher: FeatureOutput, batch: Batch) -> Tensor:
        """``NCE_student + NCE_teacher`` of this batch (unweighted); updates the memory banks.  The batch's
        ``contrast_indices`` (B, K+1) come from the data module; without them, a clear error names its settings."""
        contrast_indices = batch.get("contrast_indices")
        if contrast_indices is None:
            raise MethodConfigError(
                f"{self.contrast_method_name} needs contrast indices in the training batches: set "
                f"data.init_args.contrast_k (16384) and contrast_mode (exact), e.g. with --config {self.contrast_config}"
            )
        v_student = self.embed_student(student.embedding)
        v_teacher = self.embed_teacher(teacher.embedding)
        return self.memory.nce_objective(v_student, v_teacher, batch["indices"], contrast_indices)


class CRD(ContrastiveTerm, FeatureDistillation):
    """Contrastive representation distillation on the penultimate vectors (``feat[-1]``), RepDistiller's code.

    Both vectors go through their own trainable :class:`ContrastEmbed` (128-d, unit norm); each is scored
    against the *other* network's memory bank at the batch's contrast indices (positive first, then K
    negatives of other classes, supplied by the data module: ``data.init_args.contrast_k`` = 16384,
    ``contrast_mode`` exact); the two NCE losses are summed; the banks are updated with momentum 0.5.  CE 1,
    CRD 0.8 (RepDistiller ``-r 1 -a 0 -b 0.8``, mdistiller CE 1.0 / FEAT 0.8); CRD+KD is :class:`CRDKD`.
    ``configs/methods/crd.yaml`` sets the model *and* the data keys.

    Args:
        student: network name.
        teacher: the frozen teacher.
        feat_weight: β, the CRD loss weight (RepDistiller ``-b``; 0.8).
        contrast: the embeddings and memory banks (:class:`ContrastSettings`).
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        feat_weight: float = 0.8,
        contrast: ContrastSettings = ContrastSettings(),
        **kwargs: Any,
    ) -> None:
        super().__init__(student, teacher, feat_weight=feat_weight, **kwargs)
        self.build_contrast(contrast)

    def feature_losses(self, student: FeatureOutput, teacher: FeatureOutput, batch: Batch) -> dict[str, Tensor]:
        return {"crd": self.contrast_objective(student, teacher, batch)}


class CRDKD(CRD):
    """CRD+KD: :class:`CRD` plus Hinton KD at T=4 with weight 1 (RepDistiller ``-r 1 -a 1 -b 0.8``), the CRD
    paper's "CRD+KD" row (``configs/methods/crd_kd.yaml``); every other argument is CRD's.

    Args:
        student: network name.
        teacher: the frozen teacher.
        kd_weight: α, the Hinton-KD weight (RepDistiller ``-a``; 1).
    """

    def __init__(self, student: str, teacher: TeacherConfig, kd_weight: float = 1.0, **kwargs: Any) -> None:
        super().__init__(student, teacher, kd_weight=kd_weight, **kwargs)
