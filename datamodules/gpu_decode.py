"""ImageNet's optional GPU input path (``--data.backend gpu_decode``): JPEGs decoded on the accelerator.

The PIL backend (``torchvision``, the default) decodes and resizes every image on the CPU in DataLoader workers,
which at ImageNet's 1.28 M images per epoch needs ~10-20 k images/s of CPU work to keep a GPU busy.  Here the
workers only read each file's bytes and its header (size, colour mode) and draw the sample's augmentation from
the same seeded generator as the PIL backend: ``RandomResizedCrop.get_params`` / ``Resize`` + ``RandomCrop.get_params``
and the flip's ``torch.rand(1)``, in the same order under the same ``sample_seed(seed, epoch, index)``, so a sample
gets the very crop box and flip it gets from the PIL backend.  The main process then decodes the batch's JPEGs with
``torchvision.io.decode_jpeg(..., device="cuda")`` (nvJPEG, one batched call), crops and resizes each image on the
device (bilinear with antialiasing, as PIL's resize), flips, and yields the usual batch dict (``images`` uint8
(B, 3, 224, 224) already on the device, ``labels``, ``indices``, ``contrast_indices``); normalisation follows after
transfer as for every backend.

Files nvJPEG cannot take (a PNG or CMYK JPEG among ImageNet's files) are decoded by PIL in the worker instead.
Without a CUDA device the same path decodes on the CPU (libjpeg-turbo): that is how its CPU-side parts are tested.
The pixels are close to the PIL backend's, not identical (another JPEG decoder's IDCT, tensor vs PIL resampling):
runs on this backend have their own identity (``data.init_args.backend`` is part of it).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from datamodules.contrast import ContrastSampler
from datamodules.errors import DatasetError
from datamodules.imagenet import BACKENDS, FolderBackend, KeyedSamples, sample_seed

__all__ = ["GPUDecodeBackend", "EncodedSamples", "SampleView", "apply_view", "decode_batch"]


@dataclass(frozen=True)
class SampleView:
    """How one decoded image becomes its network input: optional full resize, crop box, output size, flip."""

    resize: tuple[int, int] | None  # (height, width) of a whole-image resize first (Resize(256)), or None
    box: tuple[int, int, int, int]  # (top, left, height, width), in the (resized) image
    size: int  # output side (224)
    flip: bool


def _resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """``torchvision.transforms.Resize(size)``'s output size: the shorter side becomes ``size``."""
    short, long = (height, width) if height <= width else (width, height)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if height <= width else (new_long, new_short)


def draw_view(height: int, width: int, datamodule: Any, train: bool, seed: int | None) -> SampleView:
    """The sample's view, drawn exactly as the PIL backend's transforms draw it (same generator calls, same order)."""
    from torchvision import transforms as T

    crop = int(datamodule.crop_size)
    if not train:  # Resize(256) + CenterCrop(224)
        rh, rw = _resized_size(height, width, int(datamodule.resize_size))
        top, left = int(round((rh - crop) / 2.0)), int(round((rw - crop) / 2.0))
        return SampleView((rh, rw), (top, left, crop, crop), crop, False)
    assert seed is not None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if datamodule.train_crop == "random_resized":
            rrc = T.RandomResizedCrop(crop)
            shape_only = torch.empty((3, height, width), dtype=torch.uint8)  # get_params reads the size only
            top, left, h, w = T.RandomResizedCrop.get_params(shape_only, rrc.scale, rrc.ratio)
            resize, box = None, (top, left, h, w)
        else:  # Resize(256) + RandomCrop(224)
            rh, rw = _resized_size(height, width, int(datamodule.resize_size))
            top, left, h, w = T.RandomCrop.get_params(torch.empty((3, rh, rw), dtype=torch.uint8), (crop, crop))
            resize, box = (rh, rw), (top, left, h, w)
        flip = bool(datamodule.flip) and bool(torch.rand(1) < 0.5)  # RandomHorizontalFlip(p=0.5)
    return SampleView(resize, box, crop, flip)


def apply_view(image: Tensor, view: SampleView) -> Tensor:
    """(3, H, W) uint8 -> (3, size, size) uint8 on the image's device: resize, crop, resize, flip."""
    from torchvision.transforms.v2 import functional as F

    if view.resize is not None:
        image = F.resize(image, list(view.resize), antialias=True)
    top, left, h, w = view.box
    if (h, w) == (view.size, view.size):
        image = F.crop(image, top, left, h, w)
    else:
        image = F.resized_crop(image, top, left, h, w, [view.size, view.size], antialias=True)
    return F.horizontal_flip(image) if view.flip else image


class EncodedSamples(KeyedSamples):
    """Per ``(epoch, index)`` key: the file's bytes (or, for what nvJPEG cannot decode, PIL's RGB pixels), the
    sample's view, label, index[, CRD indices].  No decoding of JPEGs here."""

    def __init__(
        self,
        samples: list[tuple[str, int]],
        datamodule: Any,
        train: bool,
        seed: int,
        contrast: ContrastSampler | None = None,
    ) -> None:
        super().__init__(samples, seed, contrast)
        dm = datamodule
        self.settings = _Settings(int(dm.crop_size), int(dm.resize_size), str(dm.train_crop), bool(dm.flip))
        self.train = train

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        from PIL import Image, UnidentifiedImageError

        from datamodules.images import open_rgb

        epoch, index = key
        path = str(self.paths[index])
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
            with Image.open(path) as header:  # reads the header only
                width, height = header.size
                jpeg = header.format == "JPEG" and header.mode in ("RGB", "L")
        except FileNotFoundError:
            raise DatasetError(f"image file {path} is missing") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise DatasetError(f"image file {path} is corrupt ({type(error).__name__}: {error})") from None
        seed = sample_seed(self.seed, epoch, index) if self.train else None
        view = draw_view(height, width, self.settings, self.train, seed)
        item: dict[str, Any] = {"view": view, **self.fields(index, seed)}
        if jpeg:
            item["jpeg"] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        else:
            from torchvision.transforms.functional import pil_to_tensor

            item["pixels"] = pil_to_tensor(open_rgb(raw, name=path))
        return item


@dataclass(frozen=True)
class _Settings:
    """The datamodule settings a worker needs (picklable, without the datamodule)."""

    crop_size: int
    resize_size: int
    train_crop: str
    flip: bool


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Keep bytes and views as lists (their sizes differ); stack the rest."""
    batch: dict[str, Any] = {
        "encoded": [item.get("jpeg") for item in items],
        "pixels": [item.get("pixels") for item in items],
        "views": [item["view"] for item in items],
        "labels": torch.stack([item["labels"] for item in items]),
        "indices": torch.stack([item["indices"] for item in items]),
    }
    if "contrast_indices" in items[0]:
        batch["contrast_indices"] = torch.stack([item["contrast_indices"] for item in items])
    return batch


def decode_batch(batch: dict[str, Any], device: torch.device) -> Tensor:
    """(B, 3, size, size) uint8 on ``device``: one batched ``decode_jpeg`` for the JPEGs, then each sample's view."""
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [(k, data) for k, data in enumerate(batch["encoded"]) if data is not None]
    decoded: dict[int, Tensor] = {}
    if encoded:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision 0.29 marks its decoders deprecated (TorchCodec)
            images = decode_jpeg([data for _, data in encoded], mode=ImageReadMode.RGB, device=device)
        decoded = {k: image for (k, _), image in zip(encoded, images)}
    outputs = []
    for k, view in enumerate(batch["views"]):
        image = decoded.get(k)
        if image is None:
            image = batch["pixels"][k].to(device, non_blocking=True)
        outputs.append(apply_view(image, view))
    return torch.stack(outputs)


class GPUDecodedBatches:
    """Iterates the worker loader and yields decoded, augmented batch dicts (images already on the device)."""

    def __init__(self, loader: DataLoader, device: Callable[[], torch.device]) -> None:
        self.loader = loader
        self.device = device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        for raw in self.loader:
            device = self.device()
            batch = {"images": decode_batch(raw, device), "labels": raw["labels"], "indices": raw["indices"]}
            if "contrast_indices" in raw:
                batch["contrast_indices"] = raw["contrast_indices"]
            yield batch


class GPUDecodeBackend(FolderBackend):
    """nvJPEG decoding and on-device crop/resize; workers read bytes and draw the PIL backend's crops."""

    pin_memory = False  # the decoded images are made on the device
    collate_fn = staticmethod(_collate)

    def device(self) -> torch.device:
        """The run's accelerator when it is a GPU, else the CPU (decoding then uses libjpeg-turbo)."""
        trainer = getattr(self.datamodule, "trainer", None)
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        return device if device.type == "cuda" else torch.device("cpu")

    def dataset(self, samples: list[tuple[str, int]], train: bool, seed: int) -> EncodedSamples:
        return EncodedSamples(samples, self.datamodule, train, seed, self.contrast(samples, train))

    def batches(self, loader: DataLoader) -> GPUDecodedBatches:
        return GPUDecodedBatches(loader, self.device)


#: The reader never imports this module (it imports the reader): the backend registers itself here, and the
#: package (``datamodules/__init__``) imports this module, so ``--data.backend gpu_decode`` is always known.
BACKENDS["gpu_decode"] = GPUDecodeBackend
