"""Teacher class means: the offline stage of ND / dino-loss (KD++, ReviewKD++, ...).

One pass of the frozen teacher (eval mode, inference mode) over the training split; for every class ``k`` the
per-dimension mean of the teacher's pooled features over the training images of class ``k``:
``c_k = (1/|I_k|) sum_{j in I_k} f^t_j`` (paper Sec. 3.2).  Besides the embedding (the pooled penultimate feature
ND uses), the same pass records the global-average-pooled stem and stage outputs, so that ND's "dino-loss at
other layers" ablation (Table 5) reads its centres from the same artefact.

Transforms:

* ``"train"`` (official, ``emb_fea_distribution.py``): the training augmentation, one random view per image, no
  shuffling.  The views are drawn by the datamodule's own augmentation from a generator seeded with ``seed``
  (epoch 0 of a pass with ``seed``), so the pass — and therefore the means — is the same every time;
* ``"clean"``: the deterministic pass without augmentation (``datamodule.train_eval_dataloader()``).

The artefact is cached by :func:`kd_modules.offline.load_or_compute` under a key holding the teacher checkpoint's
*content digest*, the training split's fingerprint, the dataset, the transform (with the augmentation's settings
and the normalisation) and the seed.  Cached means can therefore never be used with another teacher or other
data: the official code's hard-coded class-mean path (every script loads ResNet-56's file whatever the teacher) has
no counterpart here.  Not reproduced: the official JSON rounds every value to 4 decimals (a change below 1e-4).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sized
from typing import Any, Literal

import torch
from torch import Tensor, nn

from datamodules.errors import DatasetError
from datamodules.loaders import InMemoryBatches
from kd_modules.errors import MethodConfigError
from kd_modules.offline import data_fingerprint, load_or_compute, progress, teacher_digest, training_data_fingerprint
from models import FeatureOutput, KDNet

__all__ = [
    "MeanTransform",
    "TRANSFORMS",
    "STAGE_NAME",
    "tap_names",
    "tap_channels",
    "pooled_tap",
    "class_tap_means",
    "teacher_class_means",
]

MeanTransform = Literal["train", "clean"]
TRANSFORMS: tuple[str, ...] = ("train", "clean")
STAGE_NAME = "nd_class_means"

Batch = dict[str, Tensor]


def tap_names(network: KDNet) -> list[str]:
    """Every pooled tap the stage records: ``embedding``, ``stem``, ``stage1`` ... ``stage<L>``."""
    return ["embedding", "stem"] + [f"stage{k}" for k in range(1, network.num_stages + 1)]


def tap_channels(network: KDNet, tap: str) -> int:
    """Width of a pooled tap, from the contract (no forward pass)."""
    if tap == "embedding":
        return network.embedding_dim
    if tap == "stem":
        return network.stem_shape.channels
    if tap.startswith("stage") and tap[5:].isdigit() and 1 <= int(tap[5:]) <= network.num_stages:
        return network.stage_shapes[int(tap[5:]) - 1].channels
    raise MethodConfigError(f"unknown tap {tap!r} for {type(network).__name__}; valid: {', '.join(tap_names(network))}")


def pooled_tap(features: FeatureOutput, tap: str) -> Tensor:
    """The (B, C) feature of ``tap``: the embedding, or the global average of the stem / a stage's output
    (post-activation: the tensor the network passes on)."""
    if tap == "embedding":
        return features.embedding
    if tap == "stem":
        return features.stem.mean(dim=(2, 3))
    return features.stages_post[int(tap[5:]) - 1].mean(dim=(2, 3))


def class_tap_means(
    teacher: nn.Module,
    batches: Iterable[Batch],
    num_classes: int,
    *,
    prepare: Callable[[Batch], Batch] = lambda batch: batch,
    device: torch.device | str | None = None,
    description: str = "teacher class means",
) -> dict[str, Tensor]:
    """Per-class means of every pooled tap of ``teacher`` over ``batches`` (plus ``counts``, images per class).

    ``prepare`` turns a loader batch into a model-ready one (augmentation and normalisation after transfer).
    Sums are accumulated in float64 on the device; the result is float32.  A class without any image is an
    error (its mean does not exist).
    """
    teacher.eval()
    device = torch.device(device) if device is not None else next(teacher.parameters()).device
    sums: dict[str, Tensor] = {}
    counts = torch.zeros(num_classes, dtype=torch.float64, device=device)
    total = len(batches) if isinstance(batches, Sized) else None
    with torch.inference_mode():
        for batch in progress(batches, total, description):
            batch = prepare(batch)
            images = batch["images"].to(device, non_blocking=True)
            labels = batch["labels"].to(device, non_blocking=True)
            features = teacher.forward_features(images)
            names = ["embedding", "stem"] + [f"stage{k}" for k in range(1, len(features.stages_post) + 1)]
            for name in names:
                value = pooled_tap(features, name).to(torch.float64)
                if name not in sums:
                    sums[name] = torch.zeros(num_classes, value.shape[1], dtype=torch.float64, device=device)
                sums[name].index_add_(0, labels, value)
            counts.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
    missing = (counts == 0).nonzero().flatten().tolist()
    if missing:
        shown = ", ".join(str(k) for k in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise DatasetError(
            f"the training split has no image of {len(missing)} of {num_classes} classes ({shown}): "
            f"their class means do not exist"
        )
    means = {name: (total_sum / counts[:, None]).to(torch.float32) for name, total_sum in sums.items()}
    means["counts"] = counts.to(torch.float32)
    return means


def teacher_class_means(
    teacher: KDNet,
    teacher_checkpoint: str,
    datamodule: Any,
    num_classes: int,
    *,
    transform: MeanTransform = "train",
    seed: int = 0,
    device: torch.device | str | None = None,
    root: str | None = None,
    teacher_arch: str | None = None,
) -> dict[str, Tensor]:
    """The class means of ``teacher`` (loaded from ``teacher_checkpoint``) on ``datamodule``'s training split.

    Computed once per (teacher checkpoint content, training data, dataset, transform, seed) and cached on disk
    (``$KDBENCH_CACHE/nd_class_means/<key>/``); every later call with the same inputs loads the artefact.
    Returns ``{tap: (num_classes, C) float32}`` for every tap of :func:`tap_names` plus ``counts``.
    """
    if transform not in TRANSFORMS:
        raise MethodConfigError(f"unknown class-mean transform {transform!r}; valid: {', '.join(TRANSFORMS)}")
    # In memory (CIFAR, Tiny-ImageNet, Fashion-MNIST), or streamed from files (ImageNet: its own augmented pass).
    streamed = not hasattr(datamodule, "split")
    if streamed and not hasattr(datamodule, "class_mean_dataloader"):
        raise MethodConfigError(
            f"teacher class means need a datamodule holding its training split in memory "
            f"(an InMemoryDataModule); {type(datamodule).__name__} is not one"
        )
    images, labels = (None, None) if streamed else datamodule.split("train")
    inputs: dict[str, Any] = {
        "teacher": teacher_digest(teacher_checkpoint),
        "teacher_arch": teacher_arch or type(teacher).__name__,
        "data": training_data_fingerprint(datamodule) if streamed else data_fingerprint(images, labels),
        "dataset": getattr(datamodule, "dataset_name", type(datamodule).__name__),
        "num_classes": num_classes,
        "normalisation": [list(getattr(datamodule, "mean", ())), list(getattr(datamodule, "std", ()))],
        "transform": transform,
        "taps": "pooled embedding, stem and post-activation stage outputs",
    }
    if transform == "train":
        inputs["augmentation"] = str(datamodule.pipeline) if streamed else repr(datamodule.train_augmentation())
        inputs["seed"] = seed

    def compute() -> dict[str, Tensor]:
        if transform == "train" and streamed:
            batches = datamodule.class_mean_dataloader(seed)
        elif transform == "train":  # one augmented view of every training image, in split order, epoch 0 of seed
            batches = InMemoryBatches(
                images,
                labels,
                batch_size=datamodule.eval_batch_size,
                shuffle=False,
                drop_last=False,
                seed=seed,
                current_epoch=lambda: 0,
                augment=datamodule.train_augmentation(),
            )
        else:
            batches = datamodule.train_eval_dataloader()
        return class_tap_means(
            teacher,
            batches,
            num_classes,
            prepare=lambda batch: datamodule.on_after_batch_transfer(batch, 0),
            device=device,
            description=f"teacher class means ({inputs['teacher_arch']}, {transform} transform)",
        )

    return load_or_compute(STAGE_NAME, inputs, compute, root=root)
