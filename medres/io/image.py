"""PNG and JPEG 2D images (Pillow), channels kept."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from medres.errors import ScanContentError, ScanError, ScanReadError, first_line
from medres.io.geometry import LPS_TO_RAS
from medres.io.volume import Volume
from medres.limits import over_budget

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def is_image_path(path: str | Path) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def read_image(path: str | Path) -> Volume:
    """Read a PNG/JPEG as ``(C, X, Y)``: C = 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA).

    Palette images are expanded to RGB; 16-bit grey stays 16-bit. Like a DICOM image
    without patient geometry, ``i`` runs along columns, ``j`` down rows, 1 mm pixels.

    Raises:
        ScanReadError: not an image Pillow can decode, or truncated.
        ScanContentError: larger than the budgets of :mod:`medres.limits` (checked on the
            header, before any pixel is decoded).
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():  # medres's own budget is lower: see medres.limits
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)  # reads the header; pixels are decoded below
        with image:
            problem = over_budget(image.size, len(image.getbands()))
            if problem:
                raise ScanContentError(str(path), problem)
            if image.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            elif image.mode == "1":
                image = image.convert("L")
            pixels = np.asarray(image)
    except (ScanError, MemoryError):  # MemoryError: read_scan names it
        raise
    except Exception as e:  # Pillow's decoders raise many types (OSError, SyntaxError, ...)
        raise ScanReadError(
            str(path), f"not a readable PNG/JPEG image ({type(e).__name__}: {first_line(e)})"
        ) from e
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    array = np.ascontiguousarray(np.transpose(pixels, (2, 1, 0)))  # (C, X=columns, Y=rows)
    meta = {"format": "image", "modality": "IMAGE", "geometry": "none"}
    return Volume(array, LPS_TO_RAS.copy(), meta)
