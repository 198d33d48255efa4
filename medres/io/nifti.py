"""NIfTI-1/NIfTI-2 files (nibabel): 2D, 3D and 4D, affine honoured."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np

from medres.errors import (
    ScanContentError,
    ScanError,
    ScanGeometryError,
    ScanReadError,
    first_line,
)
from medres.io.volume import Volume, require_finite
from medres.limits import over_budget

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_DEFLATE_RATIO = 1032  # the most deflate can compress: 1032 bytes out per byte in


def is_nifti_path(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _check_declared_size(image, path: Path) -> None:
    """Refuse a header that declares more voxels than the budget or than the file can
    hold, before any voxel is decoded.

    An uncompressed file must hold ``vox_offset + voxels × bytes``; a gzipped one at
    least ``1/1032`` of that, deflate's largest possible compression ratio.
    """
    shape = tuple(int(n) for n in image.shape)
    problem = over_budget(shape[:3], math.prod(shape[3:]))
    if problem:
        raise ScanContentError(str(path), problem)
    needed = math.prod(shape) * image.get_data_dtype().itemsize
    size = path.stat().st_size
    offset = int(image.header.get_data_offset() or 0)
    compressed = str(path).lower().endswith(".gz")
    if (compressed and needed > _DEFLATE_RATIO * size) or (
        not compressed and offset + needed > size
    ):
        raise ScanReadError(
            str(path),
            f"the header declares {' x '.join(map(str, shape))} voxels ({needed:,} bytes) but the "
            f"file holds {size:,} bytes{' compressed' if compressed else ''}: it is truncated or "
            "its header is wrong; export it again",
        )


def read_nifti(path: str | Path) -> Volume:
    """Read a NIfTI file as ``(C, X, Y[, Z])``; a 4D file's 4th axis becomes the channels.

    The affine is nibabel's best affine (sform, else qform), so
    ``nib.Nifti1Image(volume.array[0], volume.affine)`` reproduces the file's image.

    Raises:
        ScanReadError: not a NIfTI file, damaged, truncated, a header declaring more
            voxels than the file can hold, or more than 4 dimensions.
        ScanContentError: NaN or infinite voxels; more voxels than :mod:`medres.limits`
            allows (both size checks read the header only).
    """
    path = Path(path)
    try:
        image = nib.load(path)  # the header only
        _check_declared_size(image, path)
        data = np.asanyarray(image.dataobj)
    except (ScanError, MemoryError):  # MemoryError: read_scan names it
        raise
    except Exception as e:  # nibabel, gzip and zlib raise many types for damaged files
        raise ScanReadError(
            str(path), f"not a readable NIfTI file ({type(e).__name__}: {first_line(e)})"
        ) from e
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2 or data.ndim == 3:
        array = data[None]
    elif data.ndim == 4:
        array = np.moveaxis(data, -1, 0)
    else:
        raise ScanReadError(
            str(path), f"{data.ndim}-D NIfTI (shape {data.shape}) is not supported; expected 2-4 D"
        )
    require_finite(array, str(path))
    header = image.header
    meta = {
        "format": "nifti",
        "modality": "NIFTI",
        "description": header.get("descrip", np.array(b"")).item().decode(errors="replace").strip()
        or None,
    }
    if data.ndim == 4:
        meta["channel_axis"] = "time"
    try:
        return Volume(np.ascontiguousarray(array), image.affine, meta)
    except ValueError as e:  # e.g. a singular sform: no usable geometry
        raise ScanGeometryError(str(path), f"unusable NIfTI geometry: {e}") from e
