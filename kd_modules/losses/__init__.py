"""Pure loss functions: tensors in, tensor out, usable without Lightning.  One file per method."""

from kd_modules.losses.kd import kd_loss

__all__ = ["kd_loss"]
