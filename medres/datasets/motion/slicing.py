"""Slicing one source of a motion export: read, normalise, keep slices, resize.

:func:`prepare_source` reads a volume, normalises channel 0 to [0, 1] by its 1st / 99th
percentiles, keeps the slices along each axis whose foreground covers enough of them
and resizes them to the export's (X, Y) size (see :mod:`medres.datasets.motion.export`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medres.datasets.motion.sources import MotionSource
from medres.errors import ConfigError, ScanContentError

MIN_SIDE = 8  # an axis whose slices are thinner than this (voxels) is skipped
FOREGROUND_LEVEL = 0.10  # foreground = voxels above this fraction of the 99th percentile


@dataclass
class PreparedSource:
    """One source's kept slices, resized to ``size`` and normalised to [0, 1]."""

    stem: str
    shape: tuple[int, ...]
    axes_used: list[int]
    axes_skipped: list[int]
    indices: list[tuple[int, int]]  # (axis, slice index) in the order of ``images``
    images: np.ndarray  # (n, X, Y) float32 in [0, 1]

    def slices(self):
        yield from ((a, i, img) for (a, i), img in zip(self.indices, self.images, strict=True))


def prepare_source(
    src: MotionSource,
    stem: str,
    size: tuple[int, int],
    min_foreground: float,
    warnings: list[str],
) -> PreparedSource:
    """The kept slices of ``src`` resized to ``size``; a warning is appended to
    ``warnings`` when its pixels look like noise.

    Raises:
        ScanError: the source cannot be read, or its intensities are constant.
        ConfigError: no axis with slices of at least ``MIN_SIDE`` voxels, or no slice
            with ``min_foreground`` of foreground.
    """
    from medres.io import read_scan

    volume = read_scan(src.path)  # ScanError (naming the path) propagates
    array = np.asarray(volume.array[0], dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]  # a 2D image is one slice along axis 2
    p1, p99 = (float(v) for v in np.percentile(array, [1, 99]))
    if not p99 > p1:
        raise ScanContentError(
            str(src.path),
            f"intensities are (almost) constant (1st and 99th percentiles both {p1:g}); "
            "nothing to slice — check the file",
        )
    foreground = array > FOREGROUND_LEVEL * p99
    normalised = np.clip((array - p1) / (p99 - p1), 0.0, 1.0)

    used, skipped, indices, images, rhos, best = [], [], [], [], [], 0.0
    for axis in src.axes:
        plane = [n for a, n in enumerate(array.shape) if a != axis]
        if min(plane) < MIN_SIDE:
            skipped.append(axis)
            continue
        used.append(axis)
        others = tuple(a for a in range(3) if a != axis)
        share = foreground.mean(axis=others)
        best = max(best, float(share.max()))
        keep = np.flatnonzero(share >= min_foreground)
        if len(keep):
            indices += [(axis, int(i)) for i in keep]
            kept = np.moveaxis(normalised, axis, 0)[keep]
            rhos.append(_neighbour_correlation(kept))
            images.append(_resize(kept, size))
    _check_kept(src, array.shape, used, indices, min_foreground, best)
    rho = min(rhos)
    if rho < 0.3:
        warnings.append(
            f"{src.path}: neighbouring pixels are nearly uncorrelated (r = {rho:.2f}); the "
            "pixels look like noise rather than anatomy, so its SSIM labels say little "
            "about motion in real scans"
        )
    return PreparedSource(stem, tuple(array.shape), used, skipped, indices, np.concatenate(images))


def _check_kept(
    src: MotionSource,
    shape: tuple[int, ...],
    used: list[int],
    indices: list[tuple[int, int]],
    min_foreground: float,
    best: float,
) -> None:
    """ConfigError when no axis of ``shape`` could be sliced or no slice was kept
    (``best``: the largest foreground share of any slice)."""
    if not used:
        raise ConfigError(
            f"{src.path}: shape {shape} has no axis among {src.axes} whose slices are "
            f"at least {MIN_SIDE}x{MIN_SIDE} voxels; choose other axes for this source"
        )
    if not indices:
        raise ConfigError(
            f"{src.path}: no slice along axes {used} has min_foreground={min_foreground:g} "
            f"of foreground (the best has {best:.3f}); lower min_foreground"
        )


def _resize(slices: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(n, a, b) -> (n, *size) float32, bilinear with antialiasing when shrinking."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None]
    if tuple(t.shape[-2:]) != size:
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
    return t[:, 0].clamp(0.0, 1.0).numpy()


def _neighbour_correlation(images: np.ndarray) -> float:
    """Median correlation of vertically neighbouring pixels over (a sample of) the slices."""
    values = []
    for img in images[:: max(1, len(images) // 16)]:
        a, b = img[:-1].ravel(), img[1:].ravel()
        if a.std() > 0 and b.std() > 0:
            values.append(float(np.corrcoef(a, b)[0, 1]))
    return float(np.median(values)) if values else 1.0
