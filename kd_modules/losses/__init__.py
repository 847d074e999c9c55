"""Pure loss functions: tensors in, tensor out, usable without Lightning.  One file per method."""

from kd_modules.losses.at import at_loss, at_loss_layers, attention_map
from kd_modules.losses.cc import cc_loss
from kd_modules.losses.crd import contrast_scores, momentum_update, nce_loss
from kd_modules.losses.dist import dist_loss
from kd_modules.losses.dkd import dkd_loss, nckd_loss, tckd_loss
from kd_modules.losses.fitnet import hint_loss
from kd_modules.losses.kd import kd_loss
from kd_modules.losses.kdsvd import kdsvd_loss
from kd_modules.losses.nst import nst_loss, nst_loss_layers
from kd_modules.losses.pkt import pkt_loss
from kd_modules.losses.rkd import rkd_angle_loss, rkd_distance_loss, rkd_loss
from kd_modules.losses.sp import sp_loss
from kd_modules.losses.vid import vid_loss

__all__ = [
    "at_loss",
    "at_loss_layers",
    "attention_map",
    "cc_loss",
    "contrast_scores",
    "dist_loss",
    "dkd_loss",
    "hint_loss",
    "kd_loss",
    "kdsvd_loss",
    "momentum_update",
    "nce_loss",
    "nckd_loss",
    "nst_loss",
    "nst_loss_layers",
    "pkt_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "rkd_loss",
    "sp_loss",
    "tckd_loss",
    "vid_loss",
]
