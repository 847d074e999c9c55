"""Decoding image files the way torchvision's ``ImageFolder`` loader does, with errors that name the file."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from datamodules.errors import DatasetError

__all__ = ["open_rgb", "IMAGE_EXTENSIONS"]

#: File endings ``ImageFolder`` accepts (``torchvision.datasets.folder.IMG_EXTENSIONS``), compared lower-case.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def open_rgb(source: str | Path | bytes, name: str | None = None) -> Image.Image:
    """Decode a file (path or its bytes) to an RGB PIL image, as ``torchvision.datasets.folder.pil_loader``.

    Grayscale and CMYK files (a few exist in Tiny-ImageNet and ImageNet) become RGB through ``convert("RGB")``.
    A missing, truncated or undecodable file raises :class:`DatasetError` naming it.
    """
    label = name or str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise DatasetError(f"image file {label} is missing") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"image file {label} is corrupt ({type(error).__name__}: {error})") from None
