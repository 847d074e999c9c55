"""MGD: Yang et al., "Masked Generative Distillation" (ECCV 2022), official code yzd-v/MGD (classification part
built on mmcls)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_modules.base import Batch, DistillationModule, OptimConfig, TeacherConfig
from kd_modules.errors import MethodConfigError
from kd_modules.losses.mgd import MaskKind, mgd_loss, random_mask
from models import FeatureShape, KDNet, create_model


def mgd_shape_problem(student: FeatureShape, teacher: FeatureShape, names: tuple[str, str]) -> str | None:
    """Why MGD is undefined between these two maps (different heights or widths), or None."""
    if (student.height, student.width) == (teacher.height, teacher.width):
        return None
    return (
        f"MGD needs student and teacher maps of one size (the generated map is compared with the teacher's cell by "
        f"cell): {names[0]} gives {student.height}x{student.width}, {names[1]} {teacher.height}x{teacher.width}"
    )


class MGD(DistillationModule):
    """``ce_weight·CE + alpha_mgd·L_MGD``: the student's masked map must generate the teacher's full map.

    The distilled map is each network's last backbone map, the map entering global pooling
    (``FeatureOutput.final_map``): the official distiller takes ``extract_feat(img, stage='backbone')[-1]`` of both
    networks, whose mmcls heads are global pooling then the classifier (post-ReLU last stage for ResNets and
    MobileNetV1, the 1x1 neck's output for MobileNetV2).  When the channel counts differ, a 1x1 conv with bias
    (``align``) brings the student's map to the teacher's C channels; otherwise there is none.  A random mask
    (:func:`kd_modules.losses.mgd.random_mask`, masked with probability ``lambda_mgd``) multiplies the aligned map,
    and the generation block (3x3 conv, ReLU, 3x3 conv, C -> C channels, padding 1, with biases; PyTorch's default
    initialisation, as the official loss module) turns it into the generated map, compared with the teacher's by
    a summed squared error per sample (:func:`kd_modules.losses.mgd.mgd_loss`).  ``align`` and ``generation`` are
    trained with the student (the official optimiser takes ``student`` and ``distill_losses``) and are not part of
    the exported student.  The maps must have one spatial size (the official loss asserts it): MGD is undefined
    for pairs whose maps differ (:meth:`pair_problem`; e.g. CIFAR vgg13 4x4 -> MobileNetV2 2x2).

    Paper vs code: the paper (Eq. 2) masks random *pixels*, one draw per position shared by all channels; the
    official classification loss masks random *channels* (``mat = torch.rand((N, C, 1, 1))``, the pixel line
    commented out), which produced the published ImageNet numbers — the default, ``mask="channel"``;
    ``mask="pixel"`` is the paper's (and the official detection / segmentation code's) mask.  Both mask a share
    λ of the units.  The official classification loss is added to mmcls's cross-entropy at weight 1, with no KD
    term.

    Official settings (``cls/configs/distillers/mgd/res34_distill_res18_img.py``, ``res50_distill_mv1_img.py``):
    ``alpha_mgd`` 7e-5 and ``lambda_mgd`` 0.15 for ResNet34→ResNet18 (512→512, no align) and ResNet50→MobileNetV1
    (1024→2048 through align); mmcls's ImageNet schedule (8 GPUs x 32 = batch 256, SGD lr 0.1, momentum 0.9, weight
    decay 1e-4, x0.1 at epochs 30/60/90, 100 epochs), and for ResNet50→MobileNetV1 gradient clipping at norm 5.0
    (``optimizer_config = dict(grad_clip=dict(max_norm=5.0))``; a trainer setting, ``trainer.gradient_clip_val``).

    Args:
        student: network name.
        teacher: the frozen teacher.
        num_classes: classifier width (linked from the data).
        optim: optimiser and schedule.
        ce_weight: cross-entropy weight (official 1: mmcls's ``CrossEntropyLoss`` with ``loss_weight=1.0``; 0 drops
            the term).
        alpha_mgd: α, the weight of the MGD loss (official classification 7e-5).
        lambda_mgd: λ, the share of masked channels (or pixels) in [0, 1) (official classification 0.15).
        mask: ``channel`` (official classification code: one draw per sample and channel) or ``pixel`` (the
            paper's Eq. 2: one draw per sample and position, shared by the channels).
    """

    requires_teacher = True
    teacher: KDNet  # loaded by the base module (requires_teacher)

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        num_classes: int = 100,
        optim: OptimConfig = OptimConfig(),
        ce_weight: float = 1.0,
        alpha_mgd: float = 7e-5,
        lambda_mgd: float = 0.15,
        mask: MaskKind = "channel",
    ) -> None:
        super().__init__(student=student, num_classes=num_classes, teacher=teacher, optim=optim)
        if not 0.0 <= lambda_mgd < 1.0:
            raise MethodConfigError(f"MGD lambda_mgd is the masked share, in [0, 1); got {lambda_mgd}")
        if mask not in ("channel", "pixel"):
            raise MethodConfigError(f"MGD mask {mask!r} is not one of: channel, pixel")
        s_shape, t_shape = self.student.final_shape, self.teacher.final_shape
        problem = mgd_shape_problem(s_shape, t_shape, (student, teacher.arch))
        if problem:
            raise MethodConfigError(problem)
        c_s, c_t = s_shape.channels, t_shape.channels
        self.align = nn.Conv2d(c_s, c_t, kernel_size=1) if c_s != c_t else None
        self.generation = nn.Sequential(
            nn.Conv2d(c_t, c_t, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_t, c_t, kernel_size=3, padding=1),
        )

    @classmethod
    def pair_problem(cls, student: str, teacher: str, init_args: dict[str, Any]) -> str | None:
        """Planner hook: MGD is undefined for pairs whose final maps differ in size."""
        with torch.device("meta"):
            s, t = create_model(student, 100), create_model(teacher, 100)
        return mgd_shape_problem(s.final_shape, t.final_shape, (student, teacher))

    def training_losses(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        images, labels = batch["images"], batch["labels"]
        teacher, student = self.teacher_and_student(images)
        losses = {}
        if self.ce_weight:
            losses["ce"] = self.ce_weight * F.cross_entropy(student.logits, labels)
        aligned = student.final_map if self.align is None else self.align(student.final_map)
        mask = random_mask(aligned.shape, self.lambda_mgd, self.mask, device=aligned.device, dtype=aligned.dtype)
        losses["mgd"] = self.alpha_mgd * mgd_loss(aligned, teacher.final_map, mask, self.generation)
        return student.logits, losses
