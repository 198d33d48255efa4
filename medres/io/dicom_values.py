"""DICOM attribute values as plain Python: numbers, vectors, text, spacing, rescale.

Every reader returns None (or a stated default) for a missing, empty, non-numeric or
non-finite value instead of raising: damaged headers are judged elsewhere.
"""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.dataset import Dataset


def pixel_spacing(ds: Dataset) -> tuple[float, float]:
    for key in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        values = floats(ds.get(key), 2)
        if values is not None and np.all(values > 0):
            return float(values[0]), float(values[1])
    return 1.0, 1.0


def rescale(ds: Dataset) -> tuple[float, float]:
    slope = number(ds.get("RescaleSlope"))
    intercept = number(ds.get("RescaleIntercept"))
    return (1.0 if slope in (None, 0) else slope), (intercept or 0.0)


def window(ds: Dataset) -> tuple[float | None, float | None]:
    def first(value):
        if value is None:
            return None
        if isinstance(value, pydicom.multival.MultiValue):
            value = value[0] if len(value) else None
        return number(value)

    return first(ds.get("WindowCenter")), first(ds.get("WindowWidth"))


def transfer_syntax(ds: Dataset):
    meta = getattr(ds, "file_meta", None)
    return getattr(meta, "TransferSyntaxUID", None) if meta is not None else None


def floats(value, n: int) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, pydicom.dataelem.DataElement):
        value = value.value
    try:
        array = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return array if array.shape == (n,) and np.all(np.isfinite(array)) else None


def number(value) -> float | None:
    if isinstance(value, pydicom.dataelem.DataElement):
        value = value.value
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def text(value) -> str | None:
    if isinstance(value, pydicom.dataelem.DataElement):
        value = value.value
    if value is None:
        return None
    text = str(value).strip()
    return text or None
