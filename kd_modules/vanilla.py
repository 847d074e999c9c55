"""Cross-entropy training alone: trains the teachers and the student baselines of every table."""

from __future__ import annotations

from torch import Tensor

from kd_modules.base import Batch, DistillationModule, OptimConfig, TeacherConfig


class Vanilla(DistillationModule):
    """Train ``student`` with cross-entropy only (a teacher, if given, is ignored).

    Args:
        student: network name.
        num_classes: classifier width (linked from the data).
        teacher: unused; accepted so that a table can run the "student" row with the same config as the others.
        optim: optimiser and schedule.
        student_init: start from these weights (e.g. another run's ``initial.pth``) instead of a random draw.
    """

    reads_mixed_targets = True  # its cross-entropy is the base's classification_loss (label smoothing, mixup)

    def __init__(
        self,
        student: str,
        num_classes: int = 100,
        teacher: TeacherConfig | None = None,
        optim: OptimConfig = OptimConfig(),
        student_init: str | None = None,
    ) -> None:
        # The student baseline never needs the teacher's weights: do not load them.
        super().__init__(student=student, num_classes=num_classes, teacher=None, optim=optim, student_init=student_init)

    def training_losses(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        logits = self.student(batch["images"])
        return logits, {"ce": self.classification_loss(logits, batch)}
