"""CC: Peng et al., "Correlation Congruence for Knowledge Distillation" (ICCV 2019), RepDistiller's version."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from kd_modules.base import Batch, TeacherConfig
from kd_modules.feature_distillation import FeatureDistillation
from kd_modules.losses.cc import cc_loss
from models import FeatureOutput


class CC(FeatureDistillation):
    """Correlation congruence on linearly embedded penultimate vectors (RepDistiller ``--distill correlation``).

    Student and teacher embeddings (``feat[-1]``) each go through their *own* trainable ``Linear(d, 128)``
    (RepDistiller ``LinearEmbed``, bias, default init; the teacher-side one is trained too), then
    :func:`~kd_modules.losses.cc.cc_loss`, which couples consecutive samples of the batch — the code behind the
    CRD table's CC number, not the paper's kernel formulation.  Weight 0.02.  Not in mdistiller.

    Args:
        student: network name.
        teacher: the frozen teacher.
        feat_weight: β, the correlation loss weight (RepDistiller ``-b``; 0.02).
        feat_dim: width of the two linear embeddings (RepDistiller ``--feat_dim`` 128).
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        feat_weight: float = 0.02,
        feat_dim: int = 128,
        **kwargs: Any,
    ) -> None:
        super().__init__(student, teacher, feat_weight=feat_weight, **kwargs)
        self.embed_student = nn.Linear(self.student.embedding_dim, feat_dim)
        self.embed_teacher = nn.Linear(self.teacher.embedding_dim, feat_dim)

    def feature_losses(self, student: FeatureOutput, teacher: FeatureOutput, batch: Batch) -> dict[str, Tensor]:
        return {"cc": cc_loss(self.embed_student(student.embedding), self.embed_teacher(teacher.embedding))}
