"""Reading a MedMNIST v2 ``.npz``: the arguments, the arrays, the kind of image.

:func:`load_npz` returns ``{split: (images, labels)}`` with labels as ``(N, L)`` int64
after checking every array a MedMNIST v2 file holds; :func:`image_kind` tells 2D grey,
2D colour and 3D apart (see :mod:`medres.datasets.medmnist`); :func:`select_indices`
picks the images an export keeps.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from medres.datasets._export import SPLITS, whole_number
from medres.errors import ConfigError

_NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def check_args(splits: Sequence[str], limit: int | None, per_class: int | None) -> list[str]:
    """The splits to export in train, val, test order (a comma-separated text allowed);
    ConfigError for unknown or repeated splits, or a bad ``limit`` / ``per_class``."""
    if isinstance(splits, str):
        splits = [s.strip() for s in splits.split(",") if s.strip()]
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise ConfigError(
            f"splits must be a non-empty selection of {list(SPLITS)}; got {list(splits)}"
        )
    if len(set(splits)) != len(splits):
        raise ConfigError(f"splits are repeated: {list(splits)}")
    for name, value in (("limit", limit), ("per_class", per_class)):
        if value is not None:
            whole_number(name, value, minimum=1)
    if limit is not None and per_class is not None:
        raise ConfigError("give either limit (first N per split) or per_class, not both")
    return [s for s in SPLITS if s in splits]  # always in train, val, test order


def load_npz(path: Path, splits: Iterable[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read and check the requested splits: {split: (images, labels as (N, L) int64)}."""
    if not path.exists():
        raise ConfigError(
            f"no such file: {path}. Give the path of a MedMNIST v2 .npz "
            f"(e.g. pneumoniamnist.npz; downloads: https://medmnist.com)"
        )
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give the MedMNIST .npz file itself")
    try:
        npz = np.load(path, allow_pickle=False)
    except _NPZ_ERRORS as e:
        raise ConfigError(
            f"{path} is not a readable .npz archive ({type(e).__name__}: {e}); "
            f"expected a MedMNIST v2 file such as pneumoniamnist.npz — re-download it"
        ) from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ConfigError(
            f"{path} holds a single array (.npy), not a MedMNIST .npz archive with "
            f"train_images, train_labels, val_images, ..."
        )
    with npz:
        needed = [f"{s}_{what}" for s in splits for what in ("images", "labels")]
        missing = [k for k in needed if k not in npz.files]
        if missing:
            raise ConfigError(
                f"{path} lacks {missing}; it holds {sorted(npz.files)}. A MedMNIST v2 file "
                f"has {{train,val,test}}_images and {{train,val,test}}_labels — check that "
                f"this is a MedMNIST .npz, or export only the splits it has (--splits)"
            )
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        shape0: tuple[int, ...] | None = None
        for split in splits:
            try:
                images = npz[f"{split}_images"]
                labels = npz[f"{split}_labels"]
            except _NPZ_ERRORS as e:
                raise ConfigError(
                    f"{path}: cannot read {split}_images / {split}_labels "
                    f"({type(e).__name__}: {e}); the file is damaged — re-download it"
                ) from e
            out[split] = (images, _check_labels(path, split, images, labels))
            if images.dtype != np.uint8:
                raise ConfigError(
                    f"{path}: {split}_images has dtype {images.dtype}; MedMNIST images are "
                    f"uint8 — this file is not a MedMNIST v2 release"
                )
            if images.ndim not in (3, 4):
                raise ConfigError(
                    f"{path}: {split}_images has shape {images.shape}; expected (N, H, W) "
                    f"grey, (N, H, W, 3) colour or (N, D, H, W) 3D"
                )
            if shape0 is None:
                shape0 = images.shape[1:]
            elif images.shape[1:] != shape0:
                raise ConfigError(
                    f"{path}: image shapes differ between splits ({shape0} vs "
                    f"{images.shape[1:]} in {split}); a MedMNIST file has one size"
                )
    return out


def _check_labels(path: Path, split: str, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``labels`` as ``(N, L)`` int64, one row per image; ConfigError otherwise."""
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.ndim != 2:
        raise ConfigError(
            f"{path}: {split}_labels has shape {labels.shape}; expected (N, 1) or (N, L)"
        )
    if len(labels) != len(images):
        raise ConfigError(
            f"{path}: {split}_images holds {len(images)} images but {split}_labels holds "
            f"{len(labels)} labels; the file is inconsistent — re-download it"
        )
    integral = labels.dtype.kind in "iub" or (
        labels.dtype.kind == "f" and bool(np.all(np.isfinite(labels) & (labels % 1 == 0)))
    )
    if not integral:
        raise ConfigError(
            f"{path}: {split}_labels has dtype {labels.dtype} with non-integer values; "
            f"MedMNIST labels are integer classes"
        )
    return labels.astype(np.int64)


def image_kind(shape: tuple[int, ...], *, named_3d: bool, path: Path) -> str:
    """'grey', 'rgb' or '3d' for one image of ``shape``; see the module docstring."""
    if len(shape) == 2:
        if named_3d:
            raise ConfigError(
                f"{path.name} is named as a 3D dataset but its images have shape {shape} "
                f"(2D); rename the file if it is a 2D MedMNIST subset"
            )
        return "grey"
    if shape[-1] == 3:
        if named_3d:
            raise ConfigError(
                f"{path.name} is named as a 3D dataset but its images have shape {shape}, "
                f"which also reads as 2D colour (H, W, RGB); cannot tell which it is"
            )
        return "rgb"
    return "3d"


def select_indices(labels: np.ndarray, limit: int | None, per_class: int | None) -> np.ndarray:
    """Indices (int64, ascending) of the images kept from ``labels`` ``(N, L)``: the first
    ``limit``, the first ``per_class`` of each class, or all."""
    n = len(labels)
    if limit is not None:
        return np.arange(min(n, limit))
    if per_class is not None:
        keep = np.zeros(n, dtype=bool)
        for c in np.unique(labels[:, 0]):
            keep[np.flatnonzero(labels[:, 0] == c)[:per_class]] = True
        return np.flatnonzero(keep)
    return np.arange(n)
