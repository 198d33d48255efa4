"""NIfTI-1/NIfTI-2 files (nibabel): 2D, 3D and 4D, affine honoured."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from medres.errors import ScanGeometryError, ScanReadError
from medres.io.volume import Volume, require_finite

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti_path(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def read_nifti(path: str | Path) -> Volume:
    """Read a NIfTI file as ``(C, X, Y[, Z])``; a 4D file's 4th axis becomes the channels.

    The affine is nibabel's best affine (sform, else qform), so
    ``nib.Nifti1Image(volume.array[0], volume.affine)`` reproduces the file's image.

    Raises:
        ScanReadError: not a NIfTI file, truncated, or more than 4 dimensions.
        ScanContentError: NaN or infinite voxels.
    """
    path = Path(path)
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError) as e:
        raise ScanReadError(
            str(path), f"not a readable NIfTI file ({type(e).__name__}: {e})"
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
