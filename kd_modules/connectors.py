"""Trainable modules that map student features to the teacher's shape (registered submodules of a method:
optimised with weight decay, saved in run checkpoints, dropped from the exported student)."""

from __future__ import annotations

from torch import Tensor, nn

from kd_modules.errors import MethodConfigError
from models import FeatureShape

__all__ = ["ConvReg"]


class ConvReg(nn.Module):
    """RepDistiller/mdistiller ``ConvReg``: one convolution from the student map to the teacher map's shape,
    then BatchNorm and (by default) ReLU.

    The convolution is chosen from the two heights (the references ignore widths when choosing):

    * student twice the teacher's height: 3x3 conv, stride 2, padding 1;
    * student half the teacher's height: 4x4 transposed conv, stride 2, padding 1;
    * student at least as tall: a (1 + dH) x (1 + dW) conv without padding (1x1 for equal sizes);
    * otherwise the references fail; here a :class:`MethodConfigError` names both shapes.

    Convolutions have a bias; initialisation is PyTorch's default (as the references).

    Args:
        student_shape: the student map's shape at the native input size.
        teacher_shape: the teacher map's shape.
        use_relu: ReLU after the BatchNorm (FitNet: yes; AB's connector: no).
    """

    def __init__(self, student_shape: FeatureShape, teacher_shape: FeatureShape, use_relu: bool = True) -> None:
        super().__init__()
        c_s, h_s, w_s = student_shape.chw
        c_t, h_t, w_t = teacher_shape.chw
        if h_s == 2 * h_t:
            self.conv: nn.Module = nn.Conv2d(c_s, c_t, kernel_size=3, stride=2, padding=1)
        elif 2 * h_s == h_t:
            self.conv = nn.ConvTranspose2d(c_s, c_t, kernel_size=4, stride=2, padding=1)
        elif h_s >= h_t:
            self.conv = nn.Conv2d(c_s, c_t, kernel_size=(1 + h_s - h_t, 1 + w_s - w_t))
        else:
            raise MethodConfigError(
                f"no ConvReg from a {h_s}x{w_s} student map to a {h_t}x{w_t} teacher map: the student map must be "
                f"at least as tall as the teacher's, or exactly half as tall"
            )
        self.bn = nn.BatchNorm2d(c_t)
        self.relu = nn.ReLU(inplace=True) if use_relu else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))
