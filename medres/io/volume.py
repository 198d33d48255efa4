"""`Volume`: a scan's pixels plus the affine that places them in patient space.

Modelled on highdicom's ``Volume``: an array and an affine, validated in the
constructor with exact messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medres.errors import ScanContentError


@dataclass(frozen=True, eq=False)
class Volume:
    """A scan as an array in patient space.

    Attributes:
        array: channels first, ``(C, X, Y)`` for a 2D image or ``(C, X, Y, Z)`` for a
            volume. Index ``i`` runs along DICOM columns (the row direction), ``j``
            along rows, ``k`` along slices. Channels are colour samples (RGB) or, for
            4D series, time points / repetitions.
        affine: 4×4 float64 mapping the voxel index ``(i, j, k, 1)`` of ``array[c]``
            to RAS millimetres, exactly as nibabel does; a 2D image uses ``k = 0``.
        meta: free-form facts about the scan (modality, patient_id, study_uid,
            series_uid, site, window centre/width, ...).
    """

    array: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        affine = np.asarray(self.affine, dtype=np.float64)
        if array.ndim not in (3, 4):
            raise ValueError(
                f"Volume.array must be channels-first (C, X, Y) or (C, X, Y, Z); "
                f"got {array.ndim} dimensions with shape {array.shape}"
            )
        if min(array.shape) < 1:
            raise ValueError(f"Volume.array has an empty dimension: shape {array.shape}")
        if affine.shape != (4, 4):
            raise ValueError(f"Volume.affine must be 4x4; got shape {affine.shape}")
        if not np.all(np.isfinite(affine)):
            raise ValueError(f"Volume.affine must be finite; got\n{affine}")
        if not np.allclose(affine[3], [0, 0, 0, 1]):
            raise ValueError(f"Volume.affine's last row must be [0, 0, 0, 1]; got {affine[3]}")
        if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
            raise ValueError(f"Volume.affine is singular (zero voxel size?):\n{affine}")
        object.__setattr__(self, "array", array)
        object.__setattr__(self, "affine", affine)

    @property
    def is_3d(self) -> bool:
        return self.array.ndim == 4

    @property
    def channels(self) -> int:
        return self.array.shape[0]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """``(X, Y)`` or ``(X, Y, Z)``, in voxels."""
        return tuple(int(n) for n in self.array.shape[1:])

    @property
    def spacing_mm(self) -> tuple[float, ...]:
        """Voxel size along each spatial axis in millimetres (2 or 3 values)."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return tuple(float(n) for n in norms[: self.array.ndim - 1])


def is_colour(volume: Volume, tolerance: float = 0.01, sample: int = 1 << 20) -> bool:
    """Whether ``volume`` holds colour: 3+ channels (of a 2D image, or of a volume whose
    photometric is RGB) that differ. Channels that agree, a grey image stored as RGB, are
    grey: their mean absolute difference from their average is at most ``tolerance`` of
    the value range (JPEG's chroma noise passes), judged on at most ``sample`` pixels."""
    if volume.channels < 3 or (volume.is_3d and volume.meta.get("photometric") != "RGB"):
        return False
    rgb = volume.array[:3].reshape(3, -1)
    rgb = rgb[:, :: max(1, rgb.shape[1] // sample)].astype(np.float32)
    span = float(rgb.max() - rgb.min())
    return span > 0 and float(np.abs(rgb - rgb.mean(axis=0)).mean()) > tolerance * span


def require_finite(array: np.ndarray, scan_id: str) -> None:
    """Refuse pixels with NaN or infinite values (ScanContentError naming how many)."""
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise ScanContentError(
            scan_id,
            f"{bad} of {array.size} voxels are NaN or infinite; medres does not impute: "
            "fix the export or replace them (e.g. with 0) before ingest",
        )
