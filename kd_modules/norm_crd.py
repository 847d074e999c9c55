"""NORM+CRD: NORM (:mod:`kd_modules.norm`) plus CRD's contrastive term (:mod:`kd_modules.crd`) on the pooled
penultimate vectors — the "NOMR+CRD" (sic) rows of NORM's Tables 1 and 2.

What the released loop (``helper/loops.py::train_distill`` with ``--distill NORM_CRD``) does, spec §1.3:

* CRD is computed on ``feat[-1]`` of both networks: the student's is the pooled vector its classifier reads, i.e.
  the global average of the FT + residual output (for WRN students, of that output after the final BN-ReLU, as
  ``wrn_student.py`` pools it), the teacher's is its own pooled embedding (the global average of its last stage);
* with RepDistiller's CRD settings (``feat_dim`` 128, ``nce_k`` 16384, ``nce_t`` 0.07, ``nce_m`` 0.5: the
  embeddings, memory banks and NCE loss are CRD's, :class:`kd_modules.crd.ContrastEmbed` /
  :class:`kd_modules.crd.ContrastMemory`);
* weighted by ``--ceta``, the *same* 2.5 that scales the standardised logits (``loss += opt.ceta * loss_crd``);
  the CRD term is not ramped.

The released loop crashes in this mode (it unpacks CRD's four-item batches only for ``--distill crd``, spec §1.7
gotcha 11), so the weight behind the published numbers cannot be verified; the code's tie to the logit scale is
the default (``crd_weight=None``) and any other weight is one argument away.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from kd_modules.base import Batch, OptimConfig, TeacherConfig
from kd_modules.crd import ContrastiveTerm
from kd_modules.losses.norm import Distance
from kd_modules.norm import NORM, FTKind, NORMConfigError
from models import FeatureOutput

__all__ = ["NORMCRD", "CRD_WEIGHT_WITHOUT_LOGIT_SCALE"]

#: CRD's own weight (RepDistiller ``-b 0.8``) where NORM has no logit scale to tie it to (paper formulation).
CRD_WEIGHT_WITHOUT_LOGIT_SCALE = 0.8


class NORMCRD(ContrastiveTerm, NORM):
    """NORM+CRD: ``NORM's loss + crd_weight * (NCE_student + NCE_teacher)`` on the pooled penultimate vectors.

    Every NORM argument keeps its meaning (``configs/methods/norm_crd.yaml`` lists the complete set); the data
    module must supply CRD's contrast indices (``data.init_args.contrast_k`` 16384, ``contrast_mode`` exact, set
    by the same config).  The CRD embeddings and memory banks are training-only: the deployed student is NORM's
    (FT folded into the classifier where possible, :meth:`NORM.deploy_student`).

    Args:
        student: network name (its family must be in ``STUDENT_PLACEMENTS``).
        teacher: the frozen teacher; its last stage is NORM's target, its embedding CRD's.
        num_classes: classifier width (linked from the data).
        optim: optimiser and schedule.
        formulation: ``code`` (released code) or ``paper`` (Eq. 3-5), as :class:`kd_modules.norm.NORM`.
        n_segments: N, the expansion factor (8).
        ft: ``default`` (residual FT), ``plain`` or ``none``.
        segments_used: match only the first k of the N segments; None = all.
        distance: per-segment distance ``l2``, ``l1`` or ``mmd``.
        ce_weight: weight of the cross-entropy term; None = the formulation's (0.1 / 1).
        norm_weight: weight of the NORM term; None = the formulation's (1 / 10).
        kd_weight: weight of the KD term (0 in NORM+CRD).
        temperature: KD temperature.
        logit_scale: standardise logits and scale them by this before CE/KD; None = the formulation's (2.5 / off).
        ramp: per-epoch weight on the NORM term (``cifar``, ``imagenet``, ``none``); None = the formulation's.
        ramp_stretch: stretch the ramp's epoch boundaries to the run's ``max_epochs``.
        contract_teacher: reversed NORM (requires ``ft="none"``).
        crd_weight: weight of the CRD term; None = tied to the logit scale as the released loop does (2.5), or
            CRD's own 0.8 when the logits are not standardised (paper formulation).
        feat_dim: CRD embedding width (``--feat_dim`` 128).
        nce_t: temperature of the contrast scores (``--nce_t`` 0.07).
        nce_m: momentum of the memory update (``--nce_m`` 0.5).
        memory_size: rows of the memory banks; None sizes them from the data module's ``num_train_samples``.
    """

    contrast_method_name = "NORM+CRD"
    contrast_config = "configs/methods/norm_crd.yaml"

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        num_classes: int = 100,
        optim: OptimConfig = OptimConfig(),
        formulation: Literal["code", "paper"] = "code",
        n_segments: int = 8,
        ft: FTKind = "default",
        segments_used: int | None = None,
        distance: Distance = "l2",
        ce_weight: float | None = None,
        norm_weight: float | None = None,
        kd_weight: float = 0.0,
        temperature: float = 4.0,
        logit_scale: float | None = None,
        ramp: Literal["cifar", "imagenet", "none"] | None = None,
        ramp_stretch: bool = False,
        contract_teacher: bool = False,
        crd_weight: float | None = None,
        feat_dim: int = 128,
        nce_t: float = 0.07,
        nce_m: float = 0.5,
        memory_size: int | None = None,
    ) -> None:
        super().__init__(
            student,
            teacher,
            num_classes,
            optim,
            formulation=formulation,
            n_segments=n_segments,
            ft=ft,
            segments_used=segments_used,
            distance=distance,
            ce_weight=ce_weight,
            norm_weight=norm_weight,
            kd_weight=kd_weight,
            temperature=temperature,
            logit_scale=logit_scale,
            ramp=ramp,
            ramp_stretch=ramp_stretch,
            contract_teacher=contract_teacher,
        )
        assert self.teacher is not None
        if crd_weight is None:
            crd_weight = self.logit_scale if self.logit_scale else CRD_WEIGHT_WITHOUT_LOGIT_SCALE
        if crd_weight < 0:
            raise NORMConfigError(f"crd_weight must be >= 0 (or null: tied to the logit scale), got {crd_weight}")
        self.crd_weight = crd_weight
        self.build_contrast(feat_dim, nce_t, nce_m, memory_size)

    def extra_losses(self, batch: Batch, student: FeatureOutput, teacher: FeatureOutput) -> dict[str, Tensor]:
        return {"crd": self.crd_weight * self.contrast_objective(student, teacher, batch)}
