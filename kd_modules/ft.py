"""FT: Kim et al., "Paraphrasing Complex Network: Network Compression via Factor Transfer" (NeurIPS 2018), two-stage
as RepDistiller runs it (``--distill factor``; spec methods-baselines §11).

Stage 1 (:class:`FTParaphraserInit`, a prerequisite run of the planner): the paraphraser is trained as an
autoencoder of the teacher's last stage map, 30 epochs, constant learning rate 0.01 (RepDistiller: 0.01 for
ResNet/WRN students, the recipe's otherwise).  Stage 2 (:class:`FT`): the frozen paraphraser's encoder gives the
teacher factor; the student's translator is trained to match it (CE + 200 x FT).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_modules.base import Batch, DistillationModule, OptimConfig, TeacherConfig
from kd_modules.errors import MethodConfigError
from kd_modules.feature_distillation import FeatureDistillation
from kd_modules.init_stages import init_stage
from kd_modules.losses.ft import ft_loss
from models import FeatureOutput, KDNet
from models.checkpoints import CheckpointError

__all__ = ["FT", "FTParaphraserInit", "Paraphraser", "Translator"]


def _conv_stack(channels: list[int], use_bn: bool, transposed: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers.append(conv(c_in, c_out, 3, 1, 1))
        if use_bn:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """RepDistiller ``Paraphraser`` (k = 0.5, no BN): encoder of three 3x3 convs C -> C -> C/2 -> C/2, decoder of three
    3x3 transposed convs back to C, LeakyReLU(0.1) after every layer (the last included)."""

    def __init__(self, channels: int, rate: float = 0.5) -> None:
        super().__init__()
        hidden = int(channels * rate)
        self.encoder = _conv_stack([channels, channels, hidden, hidden], use_bn=False)
        self.decoder = _conv_stack([hidden, hidden, channels, channels], use_bn=False, transposed=True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        factor = self.encoder(x)
        return factor, self.decoder(factor)


class Translator(nn.Sequential):
    """RepDistiller ``Translator`` (k = 0.5, BN): three 3x3 convs C_s -> C_s -> C_t/2 -> C_t/2, each with BN and
    LeakyReLU(0.1)."""

    def __init__(self, student_channels: int, teacher_channels: int, rate: float = 0.5) -> None:
        hidden = int(teacher_channels * rate)
        super().__init__(*_conv_stack([student_channels, student_channels, hidden, hidden], use_bn=True))


class FTParaphraserInit(DistillationModule):
    """FT's first stage: the paraphraser trained as an autoencoder of the teacher's last stage map, MSE
    reconstruction (RepDistiller ``init``); the student is not trained.  Its run checkpoint
    (``checkpoints/last.ckpt``) carries the paraphraser to :class:`FT`.

    Args:
        student: network name (not trained here; the run needs one).
        teacher: the frozen teacher whose map is paraphrased.
        num_classes: classifier width (linked from the data).
        optim: optimiser and schedule (RepDistiller: constant learning rate).
        rate: the paraphraser's channel rate k (0.5).
    """

    requires_teacher = True
    teacher: KDNet  # loaded by the base module (requires_teacher)

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        num_classes: int = 100,
        optim: OptimConfig = OptimConfig(),
        rate: float = 0.5,
    ) -> None:
        super().__init__(student=student, num_classes=num_classes, teacher=teacher, optim=optim)
        self.student.requires_grad_(False)
        self.paraphraser = Paraphraser(self.teacher.stage_shapes[-1].chw[0], rate)

    def training_losses(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        teacher_map = self.teacher_features(batch["images"]).stages_post[-1]
        _, reconstruction = self.paraphraser(teacher_map)
        with torch.no_grad():
            logits = self.student(batch["images"])  # training accuracy only
        return logits, {"reconstruction": F.mse_loss(reconstruction, teacher_map)}

    def on_train_end(self) -> None:
        """Write the run checkpoint FT reads (``checkpoints/last.ckpt``) when training ends: the resumable
        checkpoints are written only where a resume is exact, so a short stage may end with none."""
        if not self.trainer.interrupted:
            self.trainer.save_checkpoint(Path(self.trainer.default_root_dir) / "checkpoints" / "last.ckpt")


def load_paraphraser(path: str, channels: int, rate: float) -> Paraphraser:
    """The paraphraser of an :class:`FTParaphraserInit` run checkpoint."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    state = checkpoint.get("state_dict", {}) if isinstance(checkpoint, dict) else {}
    own = {k[len("paraphraser.") :]: v for k, v in state.items() if k.startswith("paraphraser.")}
    if not own:
        raise CheckpointError(f"{path} holds no paraphraser (is it the checkpoint of an FTParaphraserInit run?)")
    paraphraser = Paraphraser(channels, rate)
    try:
        paraphraser.load_state_dict(own)
    except RuntimeError as error:
        raise CheckpointError(f"the paraphraser in {path} does not fit {channels} channels: {error}") from None
    return paraphraser


class FT(FeatureDistillation):
    """Factor transfer: the student's translator output is matched to the frozen paraphraser's teacher factor
    (RepDistiller ``-r 1 -a 0 -b 200``, last stage maps ``feat[-2]``).

    Args:
        student: network name.
        teacher: the frozen teacher.
        feat_weight: FT weight (200).
        rate: paraphraser/translator channel rate k (0.5).
        factor_mode: ``repdistiller`` (channel mean of squares, then normalised) or ``paper`` (normalised over C·H·W).
        init_epochs: length of the paraphraser stage (RepDistiller ``--init_epochs`` 30).
        init_lr: the paraphraser stage's constant learning rate (RepDistiller: 0.01 for ResNet/WRN students, the
            recipe's otherwise; None: the recipe's).
        paraphraser_checkpoint: the paraphraser stage's run checkpoint (set by the planner).
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig,
        feat_weight: float = 200.0,
        rate: float = 0.5,
        factor_mode: Literal["repdistiller", "paper"] = "repdistiller",
        init_epochs: int = 30,
        init_lr: float | None = 0.01,
        paraphraser_checkpoint: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(student, teacher, feat_weight=feat_weight, **kwargs)
        if paraphraser_checkpoint is None:
            raise MethodConfigError(
                "FT needs the paraphraser of its first stage: pass paraphraser_checkpoint (the table runner trains "
                "the FTParaphraserInit stage and fills it in)"
            )
        c_t = self.teacher.stage_shapes[-1].chw[0]
        self.translator = Translator(self.student.stage_shapes[-1].chw[0], c_t, rate)
        # Frozen and not a registered submodule: not optimised, not in run checkpoints (rebuilt from the stage's).
        self._paraphraser = [load_paraphraser(paraphraser_checkpoint, c_t, rate).eval().requires_grad_(False)]

    @property
    def paraphraser(self) -> Paraphraser:
        return self._paraphraser[0]

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._paraphraser[0] = self.paraphraser.to(self.device)

    @classmethod
    def prerequisites(cls, init_args: dict[str, Any]) -> list[dict[str, Any]]:
        return init_stage(
            "ft_paraphraser",
            "FTParaphraserInit",
            "paraphraser_checkpoint",
            int(init_args.get("init_epochs", 30)),
            "FT paraphraser: autoencoder of the teacher's last stage map",
            {"rate": float(init_args.get("rate", 0.5))},
            lr=init_args.get("init_lr", 0.01),
            output="checkpoints/last.ckpt",
        )

    def feature_losses(self, student: FeatureOutput, teacher: FeatureOutput, batch: Batch) -> dict[str, Tensor]:
        with torch.no_grad():
            teacher_factor = self.paraphraser.encoder(teacher.stages_post[-1])
        student_factor = self.translator(student.stages_post[-1])
        return {"ft": ft_loss(student_factor, teacher_factor, self.factor_mode)}
