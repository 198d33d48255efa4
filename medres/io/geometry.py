"""Turn the 2D frames of a DICOM series (or of one multi-frame file) into a regular grid.

A *frame* is one 2D image with its patient-space geometry (ImagePositionPatient,
ImageOrientationPatient, PixelSpacing). :func:`stack_frames` orders frames along the
slice normal (never by InstanceNumber or file name), checks that they form a regular
volume, and returns the voxel-to-RAS affine. It refuses, with
:class:`~medres.errors.ScanGeometryError` naming the cause: mixed orientations,
inconsistent rows/columns, gantry tilt, missing slices / uneven increments, images
that all lie at one position, and series of several files with fewer than
:data:`MIN_SERIES_SLICES` slices (not a volume).

Hand-written because no maintained library exposes these checks separately from its
own file handling (dicom2nifti and nibabel's ``nicom`` do it inside their readers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medres.errors import ScanGeometryError

# LPS (DICOM) to RAS (NIfTI / nibabel): flip the first two world axes.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Tolerances, in millimetres unless stated. Scanners write positions with ~1e-3 mm
# jitter (seen: 2e-3 mm on GE EPI), tilted CT shows in-plane shifts of 25 % of the step.
_ORIENTATION_TOL = 1e-3  # max abs difference between direction cosines
_SAME_POSITION_TOL = 1e-2  # two frames closer than this along the normal share a slot
_STEP_REL_TOL = 0.05  # slice steps may vary by 5 % of the median step ...
_STEP_ABS_TOL = 1e-2  # ... or by 0.01 mm, whichever is larger
_TILT_TOL = 1e-3  # in-plane shift per mm along the normal (tan of the tilt angle)

MIN_SERIES_SLICES = 3
"""Fewest slices a series of several files must have to be a volume (dicom2nifti's rule:
two images are a localizer pair or a partial export more often than a volume)."""


@dataclass(frozen=True)
class Frame:
    """One 2D image and where it lies in the patient.

    Attributes:
        rows, columns: the frame's pixel matrix size.
        position: ImagePositionPatient, (3,) LPS mm of the centre of the first pixel;
            None when the object carries no patient geometry.
        orientation: ImageOrientationPatient, (6,) row then column direction cosines.
        pixel_spacing: (row spacing, column spacing) in mm, i.e. between rows, between columns.
        thickness: SliceThickness (or SpacingBetweenSlices) in mm, used for a lone slice.
        order: sort key among frames at the same position (temporal index, time, number).
        source: where the pixels are: (file index, frame index within that file).
        rescale: (RescaleSlope, RescaleIntercept) of this frame.
    """

    rows: int
    columns: int
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float]
    thickness: float | None = None
    order: tuple[Any, ...] = ()
    source: tuple[int, int] = (0, 0)
    rescale: tuple[float, float] = (1.0, 0.0)
    tile: tuple[int, int] | None = None  # (tiles per side, slice index) in a Siemens mosaic

    @property
    def has_geometry(self) -> bool:
        return self.position is not None and self.orientation is not None


@dataclass(frozen=True)
class Stack:
    """Frames arranged as a grid: ``layout[t][k]`` is the frame at time ``t``, slice ``k``.

    Attributes:
        layout: ``n_volumes`` lists of ``n_slices`` frames each, slices ordered along
            the normal (increasing), volumes ordered by acquisition.
        affine: 4×4 voxel (i=column, j=row, k=slice) to RAS mm.
        notes: facts worth keeping in ``Volume.meta`` (e.g. the slice step).
    """

    layout: list[list[Frame]]
    affine: np.ndarray
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def n_slices(self) -> int:
        return len(self.layout[0])

    @property
    def n_volumes(self) -> int:
        return len(self.layout)


def stack_frames(frames: list[Frame], scan_id: str) -> Stack:
    """Order ``frames`` into a regular volume (or 4D series) and compute its affine.

    A single frame gives a one-slice stack whose third affine column is the slice
    normal times the slice thickness (1 mm when unknown).

    Raises:
        ScanGeometryError: the frames do not form one regular grid; the message names why.
    """
    if not frames:
        raise ScanGeometryError(scan_id, "no image frames to stack")
    _check_same_matrix(frames, scan_id)
    if not all(f.has_geometry for f in frames):
        if len(frames) == 1:
            return Stack([frames], _affine_without_geometry(frames[0]), {"geometry": "none"})
        raise ScanGeometryError(
            scan_id,
            f"{sum(not f.has_geometry for f in frames)} of {len(frames)} images lack "
            "ImagePositionPatient/ImageOrientationPatient, so their order in space is "
            "unknown; read each file as its own 2D image instead",
        )
    _check_same_orientation(frames, scan_id)
    row_cos, col_cos = _unit_cosines(frames[0], scan_id)
    normal = np.cross(row_cos, col_cos)

    layout = _layout_by_time(frames, _position_slots(frames, normal, scan_id))
    first_volume = layout[0]
    positions = np.array([f.position for f in first_volume])
    steps = np.diff(positions @ normal)

    _check_slice_count(first_volume, frames, scan_id)
    notes: dict[str, Any] = {}
    if len(first_volume) > 1:
        _check_regular_steps(steps, scan_id)
        _check_no_tilt(positions, normal, scan_id)
        slice_vector = (positions[-1] - positions[0]) / (len(positions) - 1)
        notes["slice_step_mm"] = float(np.median(steps))
    else:
        slice_vector = normal * (first_volume[0].thickness or 1.0)

    row_spacing, col_spacing = first_volume[0].pixel_spacing
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_cos * col_spacing  # i runs along a row: across columns
    affine_lps[:3, 1] = col_cos * row_spacing  # j runs down a column: across rows
    affine_lps[:3, 2] = slice_vector
    affine_lps[:3, 3] = positions[0]
    return Stack(layout, LPS_TO_RAS @ affine_lps, notes)


def _position_slots(frames: list[Frame], normal: np.ndarray, scan_id: str) -> list[list[int]]:
    """The frames grouped by their distance (mm) along ``normal``: one group of frame
    indices per slice position, each holding the same number of frames (time points).

    Raises:
        ScanGeometryError: every frame at one position, or positions holding unequal
            numbers of frames (missing slices).
    """
    distances = np.array([f.position @ normal for f in frames])
    slots = _group_positions(distances)
    counts = {len(s) for s in slots}
    if len(slots) == 1 and len(frames) > 1:
        raise ScanGeometryError(
            scan_id,
            f"all {len(frames)} images lie at the same position, so this is not a volume "
            "(a cine loop or duplicated export?); read the files one at a time instead",
        )
    if len(counts) > 1:
        per_slot = [len(s) for s in slots]
        raise ScanGeometryError(
            scan_id,
            f"missing slices: positions hold unequal numbers of images {per_slot} "
            "(an incomplete time series or a partly copied series); re-export the series",
        )
    return slots


def _check_slice_count(first_volume: list[Frame], frames: list[Frame], scan_id: str) -> None:
    """A series of several files must hold 1 (a 2D image or a single-slice time series)
    or at least MIN_SERIES_SLICES slice positions; one multi-frame file is not checked."""
    n_slices = len(first_volume)
    several_files = len({f.source[0] for f in frames}) > 1
    if several_files and 1 < n_slices < MIN_SERIES_SLICES:
        raise ScanGeometryError(
            scan_id,
            f"only {n_slices} slices, so this is not a volume: a series needs at least "
            f"{MIN_SERIES_SLICES} slices (fewer than {MIN_SERIES_SLICES} slices are "
            "refused, as dicom2nifti does: a localizer or a partly copied series?); read "
            "each file on its own as a 2D image, or re-export the complete series",
        )


def _check_same_matrix(frames: list[Frame], scan_id: str) -> None:
    sizes = {(f.rows, f.columns) for f in frames}
    if len(sizes) > 1:
        listed = ", ".join(f"{r}x{c}" for r, c in sorted(sizes))
        raise ScanGeometryError(
            scan_id,
            f"inconsistent rows/columns within one series ({listed}); a localizer or "
            "derived image was probably exported into the series: remove it",
        )


def _check_same_orientation(frames: list[Frame], scan_id: str) -> None:
    first = frames[0].orientation
    for f in frames[1:]:
        if np.max(np.abs(f.orientation - first)) > _ORIENTATION_TOL:
            raise ScanGeometryError(
                scan_id,
                "mixed orientations: ImageOrientationPatient differs between images "
                f"({np.round(first, 4).tolist()} vs {np.round(f.orientation, 4).tolist()}); "
                "the series holds several stacks (e.g. a 3-plane localizer): split it",
            )


def _unit_cosines(frame: Frame, scan_id: str) -> tuple[np.ndarray, np.ndarray]:
    row_cos, col_cos = frame.orientation[:3], frame.orientation[3:]
    norms = np.linalg.norm(row_cos), np.linalg.norm(col_cos)
    if min(norms) < 0.9 or max(norms) > 1.1 or abs(row_cos @ col_cos) > 1e-2:
        raise ScanGeometryError(
            scan_id,
            f"ImageOrientationPatient {frame.orientation.tolist()} is not two orthogonal "
            "unit vectors; the header is corrupt",
        )
    return row_cos / norms[0], col_cos / norms[1]


def _group_positions(distances: np.ndarray) -> list[list[int]]:
    """Indices of frames grouped by position along the normal, groups in increasing order."""
    order = np.argsort(distances, kind="stable")
    slots: list[list[int]] = []
    for idx in order:
        if slots and abs(distances[idx] - distances[slots[-1][0]]) < _SAME_POSITION_TOL:
            slots[-1].append(int(idx))
        else:
            slots.append([int(idx)])
    return slots


def _layout_by_time(frames: list[Frame], slots: list[list[int]]) -> list[list[Frame]]:
    """Transpose position slots into volumes: volume t holds the t-th frame of each slot."""
    ordered = [sorted((frames[i] for i in slot), key=lambda f: f.order) for slot in slots]
    return [[slot[t] for slot in ordered] for t in range(len(ordered[0]))]


def _check_regular_steps(steps: np.ndarray, scan_id: str) -> None:
    median = float(np.median(steps))
    tolerance = max(_STEP_ABS_TOL, _STEP_REL_TOL * median)
    if np.max(np.abs(steps - median)) > tolerance:
        shown = ", ".join(f"{s:.3g}" for s in steps[:12])
        hint = (
            "a slice is missing"
            if np.max(steps) > 1.5 * np.min(steps)
            else "the slices are unevenly spaced"
        )
        raise ScanGeometryError(
            scan_id,
            f"uneven slice increment: steps along the normal are [{shown}] mm, expected "
            f"a constant step ({hint}); re-export the complete series",
        )


def _check_no_tilt(positions: np.ndarray, normal: np.ndarray, scan_id: str) -> None:
    delta = positions[-1] - positions[0]
    along = float(delta @ normal)
    in_plane = float(np.linalg.norm(delta - along * normal))
    if in_plane > _TILT_TOL * abs(along):
        angle = float(np.degrees(np.arctan2(in_plane, abs(along))))
        raise ScanGeometryError(
            scan_id,
            f"gantry tilt: slices are sheared by {angle:.1f}° (each slice is shifted "
            "in-plane relative to the last); resample the series to an orthogonal grid "
            "(e.g. dcm2niix or dicom2nifti with tilt correction) before using it",
        )


def _affine_without_geometry(frame: Frame) -> np.ndarray:
    """A 2D image with no patient geometry: columns along -x... as if IOP = [1,0,0,0,1,0]."""
    row_spacing, col_spacing = frame.pixel_spacing
    return LPS_TO_RAS @ np.diag([col_spacing, row_spacing, frame.thickness or 1.0, 1.0])
