"""Resource limits on sizes that come from files a user can edit or send.

A preprocessing spec's ``spatial_size`` decides how large every network input is, and a
scan's header how large its pixel array is; a number read from a bundle, a config or a
DICOM header must not be able to ask a worker for terabytes. :func:`max_voxels` bounds
both; :func:`max_pixels` further bounds a 2D image, whose anti-aliased resize to the
network's input grows with its pixel count (8192² took 17 s on one core in a one-off
timing of ``build_transform`` on random pixels), so that a bomb or a lying header costs
milliseconds and a failure row, not memory or minutes.
Both are read from the environment at each call, so DataLoader workers see them too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

from medres.errors import ConfigError

MAX_VOXELS_ENV = "MEDRES_MAX_VOXELS"
# 536,870,912 = 1024 x 1024 x 512: twice a thin-slice CT of 512 x 512 x 1000; 2 GiB float32
DEFAULT_MAX_VOXELS = 2**29
MAX_PIXELS_ENV = "MEDRES_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 2**25  # 33,554,432: 5792², below Pillow's own bomb limit (89 M)


def max_voxels() -> int:
    """The voxel budget: the most voxels (values per channel) one scan or one network
    input may have.

    ``2**29`` (536,870,912: a 1024 x 1024 x 512 volume, 2 GiB in float32; a thin-slice
    CT of 512 x 512 x 1000 or a tomosynthesis stack of 2457 x 1996 x 60 fits) unless
    the environment variable ``MEDRES_MAX_VOXELS`` holds another whole number, e.g.
    ``MEDRES_MAX_VOXELS=1073741824`` on a machine with the memory for 1024³ inputs.

    Raises:
        ConfigError: ``MEDRES_MAX_VOXELS`` is set but is not a whole number >= 1.
    """
    return _budget(MAX_VOXELS_ENV, DEFAULT_MAX_VOXELS, "2**29")


def max_pixels() -> int:
    """The pixel budget of one 2D image (width x height): ``2**25`` (33,554,432, e.g.
    5792 x 5792; a mammogram of 4096 x 5120 fits) unless ``MEDRES_MAX_PIXELS`` says otherwise.

    Raises:
        ConfigError: ``MEDRES_MAX_PIXELS`` is set but is not a whole number >= 1.
    """
    return _budget(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS, "2**25")


def _budget(name: str, default: int, shown: str) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(
            f"{name}={raw!r} must be a whole number >= 1 (default {default}, {shown}); "
            "unset it to use the default"
        )
    return value


def over_budget(shape: Iterable[int], channels: int = 1) -> str | None:
    """Why an array of spatial ``shape`` with ``channels`` values per voxel exceeds
    :func:`max_voxels` (its voxels times its channels) or, when no more than two axes
    exceed 1, :func:`max_pixels`; None when it fits."""
    sizes = [int(s) for s in shape]
    values = math.prod(sizes) * int(channels)
    grid = " x ".join(map(str, sizes)) + (f" x {channels} channels" if channels != 1 else "")
    planar = sum(s > 1 for s in sizes) <= 2
    if planar and math.prod(sizes) > max_pixels():
        return (
            f"declares a 2D image of {grid} = {math.prod(sizes)} pixels, above the limit of "
            f"{max_pixels()} (set {MAX_PIXELS_ENV} to allow more if this size is real)"
        )
    if values > max_voxels():
        return (
            f"declares {grid} = {values} values, above the limit of {max_voxels()} "
            f"(set {MAX_VOXELS_ENV} to allow more if this size is real)"
        )
    return None
