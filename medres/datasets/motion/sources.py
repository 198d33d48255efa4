"""The volumes a motion export slices: :class:`MotionSource`, their checks, short names.

A source has a split (``train`` / ``val`` / ``test``, or ``auto``: its slab groups are
shared ~85 / 15 % between train and val) and the axes to slice along. Its *stem* names
its folder in the export (see :func:`unique_stems`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medres.datasets._export import SPLITS, whole_number
from medres.errors import ConfigError

AUTO = "auto"
AUTO_VAL_FRACTION = 0.15  # share of the auto sources' slab groups sent to val


@dataclass(frozen=True)
class MotionSource:
    """One volume to slice.

    Attributes:
        path: a NIfTI file, a DICOM series folder, or anything ``medres.io.read_scan`` reads.
        split: ``train``, ``val``, ``test``, or ``auto`` (slab groups shared ~85/15
            between train and val by the seed).
        axes: spatial axes to slice along (subset of 0, 1, 2); None = the export's ``axes``.
    """

    path: Path
    split: str = AUTO
    axes: tuple[int, ...] | None = None


def check_sources(sources, default_axes: Sequence[int]) -> list[MotionSource]:
    if isinstance(sources, str | os.PathLike | MotionSource):
        raise ConfigError(
            "sources must be a list of (path, split) pairs or MotionSource items; got a "
            f"single {type(sources).__name__}: wrap it in a list"
        )
    out: list[MotionSource] = []
    for item in sources:
        if isinstance(item, MotionSource):
            src = item
        elif isinstance(item, tuple | list) and len(item) in (2, 3):
            src = MotionSource(Path(item[0]), *item[1:])
        else:
            raise ConfigError(
                f"each source must be MotionSource(path, split, axes), (path, split) or "
                f"(path, split, axes); got {item!r}"
            )
        if src.split not in (*SPLITS, AUTO):
            raise ConfigError(
                f"{src.path}: unknown split {src.split!r}; use one of "
                f"{[*SPLITS, AUTO]} (auto shares slab groups ~85/15 between train and val)"
            )
        axes = _check_axes(src.axes if src.axes is not None else default_axes, src.path)
        out.append(MotionSource(Path(src.path), src.split, axes))
    if not out:
        raise ConfigError(
            "no sources given: pass at least one (path, split), e.g. "
            '[("mni_icbm152_t1.nii.gz", "auto")]'
        )
    resolved = [os.path.abspath(s.path) for s in out]
    repeated = sorted({p for p in resolved if resolved.count(p) > 1})
    if repeated:
        raise ConfigError(f"sources are repeated: {repeated}; give each volume once")
    return out


def _check_axes(axes, path: Path) -> tuple[int, ...]:
    if isinstance(axes, int):
        axes = (axes,)
    axes = tuple(axes)
    if not axes or any(isinstance(a, bool) or a not in (0, 1, 2) for a in axes):
        raise ConfigError(f"{path}: axes must be a non-empty subset of (0, 1, 2); got {axes!r}")
    if len(set(axes)) != len(axes):
        raise ConfigError(f"{path}: axes are repeated: {axes!r}")
    return axes


def check_size(size) -> tuple[int, int]:
    if isinstance(size, int | np.integer) and not isinstance(size, bool):
        size = (size, size)
    try:
        rows, cols = size
    except (TypeError, ValueError):
        raise ConfigError(f"size must be (X, Y) or one number; got {size!r}") from None
    return (whole_number("size", rows, minimum=16), whole_number("size", cols, minimum=16))


def unique_stems(paths: list[Path]) -> list[str]:
    """Short names for the sources: the file stem, with parent folders added on clashes."""
    parts = []
    for p in paths:
        p = Path(os.path.abspath(p))
        name = re.sub(r"(\.nii\.gz|\.nii|\.dcm|\.png|\.jpe?g)$", "", p.name, flags=re.I)
        parts.append([*(q.name for q in reversed(p.parents) if q.name), name])
    depth = [1] * len(paths)
    while True:
        stems = [_safe("-".join(ps[-d:])) for ps, d in zip(parts, depth, strict=True)]
        clashes = {s for s in stems if stems.count(s) > 1}
        if not clashes:
            return stems
        grown = False
        for i, s in enumerate(stems):
            if s in clashes and depth[i] < len(parts[i]):
                depth[i] += 1
                grown = True
        if not grown:  # pragma: no cover - distinct absolute paths always separate
            return [f"{s}-{i}" for i, s in enumerate(stems)]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "source"
