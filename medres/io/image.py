"""PNG and JPEG 2D images (Pillow), channels kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medres.errors import ScanReadError
from medres.io.geometry import LPS_TO_RAS
from medres.io.volume import Volume

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def is_image_path(path: str | Path) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def read_image(path: str | Path) -> Volume:
    """Read a PNG/JPEG as ``(C, X, Y)``: C = 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA).

    Palette images are expanded to RGB; 16-bit grey stays 16-bit. Like a DICOM image
    without patient geometry, ``i`` runs along columns, ``j`` down rows, 1 mm pixels.

    Raises:
        ScanReadError: not an image Pillow can decode, or truncated.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            if image.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            elif image.mode == "1":
                image = image.convert("L")
            pixels = np.asarray(image)
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        OSError,
        ValueError,
        SyntaxError,
    ) as e:
        raise ScanReadError(str(path), f"not a readable PNG/JPEG image ({e})") from e
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    array = np.ascontiguousarray(np.transpose(pixels, (2, 1, 0)))  # (C, X=columns, Y=rows)
    meta = {"format": "image", "modality": "IMAGE", "geometry": "none"}
    return Volume(array, LPS_TO_RAS.copy(), meta)
