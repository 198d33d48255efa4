"""The input of a slice export: its arguments, the volumes' ``labels.csv``, each volume.

:func:`read_labels` reads and checks the labels table (one row per 3D volume, paths
inside the folder); :func:`single_3d`, :func:`plane` and :func:`to_uint8` check a volume
and prepare it for cutting (see :mod:`medres.datasets.slices`).
"""

from __future__ import annotations

import functools
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from medres.datasets._export import unit_interval, whole_number
from medres.errors import ConfigError, ManifestError, quote_some

CSV_COLUMNS: tuple[str, ...] = ("path", "label", "split", "patient_id", "volume", "slice_index")
_NIFTI_SUFFIXES = (".nii.gz", ".nii")


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


_PLANES = {"S": "axial", "I": "axial", "A": "coronal", "P": "coronal"}
_PLANES |= {"R": "sagittal", "L": "sagittal"}


def check_args(
    axis: object, min_fraction: object, per_volume: object
) -> tuple[int, float, int | None]:
    """``axis`` (0, 1, 2), ``min_fraction`` in [0, 1] and ``per_volume`` (>= 1 or None)
    checked; ConfigError otherwise."""
    if isinstance(axis, bool) or not isinstance(axis, int | np.integer) or axis not in (0, 1, 2):
        raise ConfigError(
            f"axis must be 0, 1 or 2 (a voxel axis of the 3D volume; 2 is axial in RAS "
            f"volumes); got {axis!r}"
        )
    fraction = unit_interval("min_fraction", min_fraction, " (0.01 = 1 % of a slice's voxels)")
    if per_volume is not None:
        per_volume = whole_number("per_volume (or None)", per_volume, minimum=1)
    return int(axis), fraction, per_volume


def read_labels(path: Path, folder: Path) -> pd.DataFrame:
    """The labels table with text columns path, label, split, patient_id (+ others)."""
    if not path.is_file():
        raise ConfigError(
            f"no labels file {path}: slices take their label, split and patient from the "
            "volumes' labels.csv (columns path,label[,split,patient_id]); export the volumes "
            "with `medres datasets medmnist`, or pass labels_csv"
        )
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ManifestError(f"cannot read labels file {path}: {e}") from e
    missing = [c for c in ("path", "label") if c not in table.columns]
    if missing:
        raise ManifestError(
            f"{path} lacks column(s) {missing}; it has {list(table.columns)}. Expected "
            "path,label[,split,patient_id], one row per 3D volume"
        )
    taken = [c for c in ("volume", "slice_index") if c in table.columns]
    if taken:
        raise ManifestError(
            f"{path} already has column(s) {taken}: it looks like a slice export; give the "
            "folder of 3D volumes instead"
        )
    if table.empty:
        raise ManifestError(f"{path} lists no volumes")
    for column in ("split", "patient_id"):
        if column not in table.columns:
            table[column] = ""
    table = table.apply(lambda c: c.str.strip())
    table["path"] = [_relative(p, folder, path) for p in table["path"]]
    repeated = sorted(table["path"][table["path"].duplicated()].unique())
    if repeated:
        raise ManifestError(f"{path}: paths repeat ({quote_some(repeated)}); list each volume once")
    flat = table["path"][table["path"].str.lower().str.endswith(_IMAGE_SUFFIXES)].tolist()
    if flat:
        raise ConfigError(
            f"{path} lists {len(flat)} 2D image(s) ({quote_some(flat)}); slices need 3D "
            "volumes (NIfTI): give the folder of a 3D dataset, e.g. adrenalmnist3d_64"
        )
    return table[list(CSV_COLUMNS[:4]) + [c for c in table.columns if c not in CSV_COLUMNS]]


def _relative(value: str, folder: Path, labels: Path) -> str:
    """``value`` as a forward-slash path inside ``folder``; ManifestError if it is not."""
    p = Path(value)
    if not value:
        raise ManifestError(f"{labels}: a row has an empty path; every row names a volume")
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(folder)
        except ValueError:
            raise ManifestError(
                f"{labels}: {value} is outside {folder}; paths must name volumes in the folder"
            ) from None
    rel = PurePosixPath(p.as_posix())
    if ".." in rel.parts:
        raise ManifestError(f"{labels}: {value} climbs out of the folder ('..'); give paths in it")
    return str(rel)


def volume_id_of(rel: str) -> str:
    """The volume's path without its NIfTI suffix: ``train/train_00000``."""
    for suffix in _NIFTI_SUFFIXES:
        if rel.lower().endswith(suffix):
            return rel[: -len(suffix)]
    return rel


def single_3d(array: np.ndarray, rel: str) -> np.ndarray:
    """The ``(X, Y, Z)`` voxels of a one-channel volume; ConfigError for anything else."""
    if array.ndim == 3:
        raise ConfigError(
            f"{rel} is a 2D image (shape {tuple(array.shape[1:])}); slices need 3D volumes: "
            "remove it from labels.csv or give a folder of 3D scans"
        )
    if array.shape[0] != 1:
        raise ConfigError(
            f"{rel} has {array.shape[0]} channels / time points (shape "
            f"{tuple(array.shape[1:])} x {array.shape[0]}); slices need one-channel 3D "
            "volumes: split the 4D file into 3D volumes first"
        )
    return array[0]


@functools.lru_cache(maxsize=64)  # volumes of one dataset share a few affines
def plane(affine: bytes, axis: int) -> str:
    """What voxel ``axis`` of a 4x4 float64 affine (as bytes) points along: ``"S (axial)"``."""
    import nibabel as nib

    code = nib.aff2axcodes(np.frombuffer(affine, dtype=np.float64).reshape(4, 4))[axis]
    return f"{code} ({_PLANES.get(code, '?')})"


def to_uint8(data: np.ndarray) -> np.ndarray:
    """uint8 as is; anything else min-max scaled to 0..255 over the whole volume."""
    if data.dtype == np.uint8:
        return data
    lo, hi = float(data.min()), float(data.max())
    if hi == lo:
        return np.zeros(data.shape, dtype=np.uint8)
    return np.rint((data.astype(np.float64) - lo) * (255.0 / (hi - lo))).astype(np.uint8)
