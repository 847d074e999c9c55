"""KDSVD: Lee et al., "Self-supervised Knowledge Distillation Using Singular Value Decomposition" (ECCV 2018)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from kd_modules.base import Batch, TeacherConfig
from kd_modules.errors import MethodConfigError
from kd_modules.feature_distillation import FeatureDistillation
from kd_modules.losses.kdsvd import KDSVDLayout, kdsvd_loss
from models import FeatureOutput


class KDSVD(FeatureDistillation):
    """SVD-based distillation of the correlations between consecutive stage outputs (``feat[1:-1]``).

    The two references reshape the maps differently before the SVD and give different numbers; ``layout``
    chooses (see :mod:`kd_modules.losses.kdsvd`):

    * ``repdistiller`` (``configs/methods/kdsvd.yaml``): (B, H*W, C) — needs equal channels per stage pair
      (e.g. not wrn_40_2→wrn_40_1).  RepDistiller has KDSVD in its zoo but no published weight for it; the
      config uses mdistiller's 1.
    * ``mdistiller`` (``configs/methods/kdsvd_mdistiller.yaml``): (B, C*H, W) — needs equal widths; CE 1,
      weight 1.

    Singular-vector signs are implementation-defined, so values can differ across SVD backends (the teacher's
    sign is never corrected, as in both references).  ``torch.linalg.svd`` synchronises a CUDA device with the
    host (its convergence check), the one host sync of this method — the references' ``torch.svd`` does the same.

    Args:
        student: network name.
        teacher: the frozen teacher.
        feat_weight: β, the KDSVD loss weight (mdistiller ``FEAT_WEIGHT`` 1).
        k: teacher singular vectors kept per stage (the student keeps k + 3) (1).
        layout: how a map becomes a matrix: ``repdistiller`` (positions x channels) or ``mdistiller``
            (channels*rows x columns).
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        feat_weight: float = 1.0,
        k: int = 1,
        layout: KDSVDLayout = "repdistiller",
        **kwargs: Any,
    ) -> None:
        super().__init__(student, teacher, feat_weight=feat_weight, **kwargs)
        if layout not in ("repdistiller", "mdistiller"):
            raise MethodConfigError(f"KDSVD layout {layout!r} is not one of: repdistiller, mdistiller")
        if k < 1:
            raise MethodConfigError(f"KDSVD k must be at least 1, got {k}")
        size, axis = ("channels", "channels") if layout == "repdistiller" else ("width", "widths")
        for index, (shape_s, shape_t) in enumerate(self.stage_shape_pairs(), start=1):
            size_s, size_t = getattr(shape_s, size), getattr(shape_t, size)
            if size_s != size_t:
                other = "mdistiller" if layout == "repdistiller" else "repdistiller"
                raise MethodConfigError(
                    f"KDSVD with layout {layout!r} needs equal {axis} at every stage; stage {index} of {student} has "
                    f"{size_s} and of {teacher.arch} {size_t} (try layout {other!r})"
                )

    def feature_losses(self, student: FeatureOutput, teacher: FeatureOutput, batch: Batch) -> dict[str, Tensor]:
        return {"kdsvd": kdsvd_loss(student.stages_post, teacher.stages_post, self.k, self.layout)}
