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

from typing import Any

from torch import Tensor

from kd_modules.base import Batch, TeacherConfig
from kd_modules.crd import ContrastiveTerm, ContrastSettings
from kd_modules.norm import NORM, NORMConfigError
from models import FeatureOutput

__all__ = ["NORMCRD", "CRD_WEIGHT_WITHOUT_LOGIT_SCALE"]

#: CRD's own weight (RepDistiller ``-b 0.8``) where NORM has no logit scale to tie it to (paper formulation).
CRD_WEIGHT_WITHOUT_LOGIT_SCALE = 0.8


class NORMCRD(ContrastiveTerm, NORM):
    """NORM+CRD: ``NORM's loss + crd_weight * (NCE_student + NCE_teacher)`` on the pooled penultimate vectors.

    Every NORM argument (:class:`kd_modules.norm.NORM`) keeps its meaning and default; the data module must supply
    CRD's contrast indices (``data.init_args.contrast_k`` 16384, ``contrast_mode`` exact, set by
    ``configs/methods/norm_crd.yaml``).  The CRD embeddings and memory banks are training-only: the deployed
    student is NORM's (FT folded into the classifier where possible, :meth:`NORM.deploy_student`).

    Args:
        student: network name (its family must be in ``STUDENT_PLACEMENTS``).
        teacher: the frozen teacher; its last stage is NORM's target, its embedding CRD's.
        crd_weight: weight of the CRD term; None = tied to the logit scale as the released loop does (2.5), or
            CRD's own 0.8 when the logits are not standardised (paper formulation).
        contrast: CRD's embeddings and memory banks (:class:`kd_modules.crd.ContrastSettings`).
    """

    contrast_method_name = "NORM+CRD"
    contrast_config = "configs/methods/norm_crd.yaml"

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        crd_weight: float | None = None,
        contrast: ContrastSettings = ContrastSettings(),
        **kwargs: Any,
    ) -> None:
        super().__init__(student, teacher, **kwargs)
        if crd_weight is None:
            crd_weight = self.logit_scale if self.logit_scale else CRD_WEIGHT_WITHOUT_LOGIT_SCALE
        if crd_weight < 0:
            raise NORMConfigError(f"crd_weight must be >= 0 (or null: tied to the logit scale), got {crd_weight}")
        self.crd_weight = crd_weight
        self.build_contrast(contrast)

    def extra_losses(self, batch: Batch, student: FeatureOutput, teacher: FeatureOutput) -> dict[str, Tensor]:
        return {"crd": self.crd_weight * self.contrast_objective(student, teacher, batch)}
