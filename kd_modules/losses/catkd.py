"""CAT-KD: Guo et al., "Class Attention Transfer Based Knowledge Distillation" (CVPR 2023), as the official code
(GzyAftermath/CAT-KD, ``mdistiller/distillers/CAT_KD.py``) computes it."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["class_activation_maps", "cat_loss"]


def class_activation_maps(feature: Tensor, weight: Tensor) -> Tensor:
    r"""The K class activation maps of a network, (B, C, H, W) -> (B, K, H, W).

    .. math::  \mathrm{CAM}_k(y, x) = \sum_c W_{kc}\, A_c(y, x)

    ``feature`` is :math:`A`, the map that enters global pooling (after the final ReLU / the neck), and ``weight``
    the classifier's (K, C) matrix used as a bias-free 1x1 convolution — the official ``conv_test`` layer.  Global
    average pooling of the CAMs gives the (bias-free) logits.
    """
    return F.conv2d(feature, weight[:, :, None, None])


def cat_loss(
    feature_s: Tensor,
    weight_s: Tensor,
    feature_t: Tensor,
    weight_t: Tensor,
    resolution: int = 2,
    normalize: bool = False,
) -> Tensor:
    r"""Class attention transfer: the mean squared difference of the two networks' pooled CAMs.

    .. math::  L_{CAT} = \frac{1}{B\,K\,r^2} \sum_{b,k} \bigl\lVert \nu(\phi_r(\mathrm{CAM}^S_{b,k}))
               - \nu(\phi_r(\mathrm{CAM}^T_{b,k})) \bigr\rVert_2^2

    :math:`\phi_r` is adaptive average pooling to r x r (``CAM_RESOLUTION``); :math:`\nu` is the identity, or with
    ``normalize`` (``IF_NORMALIZE``) the L2 normalisation of each pooled map over its r x r cells
    (``F.normalize(dim=(2, 3))``, eps 1e-12).  The reduction is the official ``F.mse_loss``: the mean over all
    B·K·r·r cells (another constant, e.g. a sum over the cells, is a rescaling of β).  Each network's CAMs use its
    *own* classifier (:func:`class_activation_maps`), so the two feature maps may differ in channels and in size;
    only K must match.  A map smaller than r x r is spread over the r x r cells by the adaptive pooling, as in the
    official code.

    Pooling commutes with the 1x1 projection, so the features are pooled first and projected at r x r: the same
    value as pooling full-size CAMs, with H·W/r² times fewer multiply-adds in the projection (49/16 for ImageNet's
    7x7 maps at r = 4, 16 for CIFAR's 8x8 at r = 2).
    """
    cams = []
    for feature, weight in ((feature_s, weight_s), (feature_t, weight_t)):
        cam = class_activation_maps(F.adaptive_avg_pool2d(feature, (resolution, resolution)), weight)
        cams.append(F.normalize(cam.flatten(2), dim=2) if normalize else cam)
    return F.mse_loss(cams[0], cams[1])
