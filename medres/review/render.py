"""What the review app draws: windowing, slicing, Grad-CAM overlay, and data as literal
text in Markdown (no Streamlit).

::

    scan = display_scan(read_scan(path))                  # grey values on a display grid
    presets = window_presets(scan)                        # {"soft tissue": (400, 40), ...}
    heat = load_heatmap(case["heatmap_map"], scan)        # the map on the same grid, or None
    rgb = render_view(scan, "axial", 12, 400, 40, heat, opacity=0.4)   # (H, W, 3) uint8

Orientation: a 2D image is shown as stored (row 0 at the top, column 0 at the left).
A volume is first reordered to the voxel axes closest to patient Left, Posterior,
Superior (as :mod:`medres.explain` does), then shown the radiological way: axial with
anterior up and the patient's right on the image's left, coronal with superior up and
the patient's right on the left, sagittal with superior up and anterior on the left.
Pixels are stretched by their size in millimetres, so anisotropic voxels keep the
patient's proportions.

Text: every value that comes from data (scan ids, paths, class names, sites, refer
reasons, bundle ids, reviewer names, error messages that quote them) goes into
Streamlit's Markdown (titles, captions, messages, radio options, tooltips) through
:func:`literal`, so a DICOM header holding ``[a link](http://...)`` shows as those
characters, never as a link, an image, emphasis, LaTeX or an icon. Tables
(``st.dataframe``) and select boxes show text as it is and take the values unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib import colormaps
from PIL import Image

from medres.io import Volume

PLANES = ("axial", "coronal", "sagittal")
AUTO = "auto (1st–99th percentile)"
SCAN_WINDOW = "from the scan's header"
AUTO_PERCENTILES = (1.0, 99.0)
# (width, level) in Hounsfield units, the usual reading windows
CT_PRESETS: dict[str, tuple[float, float]] = {
    "soft tissue": (400.0, 40.0),
    "lung": (1500.0, -600.0),
    "bone": (2500.0, 480.0),
    "brain": (80.0, 40.0),
}
# every ASCII punctuation character: CommonMark lets a backslash escape any of them
MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
# scan metadata the viewer shows as study context (no patient identifiers)
CONTEXT_FACTS = (
    "study_date",
    "study_description",
    "series_description",
    "description",
    "body_part",
    "manufacturer",
)
OVERLAY_CMAP = "jet"  # as the PNG overlays medres predict --explain writes
DISPLAY_SIZE = 512  # pixels along the longer side of a rendered view


def literal(value: object) -> str:
    """``value`` as Markdown that Streamlit displays as the text itself, on one line.

    Every ASCII punctuation character gets a backslash (so no link, image, emphasis,
    code, HTML, entity, table, heading, list, ``$`` LaTeX, ``:red[...]`` directive,
    ``:material/...:`` icon or ``:emoji:`` shortcode can start), and each run of
    whitespace, line breaks included, becomes one space (a browser shows it so anyway;
    no new block, such as an indented code block, can start). Wrap it in formatting of
    our own as needed: ``f"**{literal(name)}**"``.

    >>> print(literal("[report](http://x.invalid)"))
    \\[report\\]\\(http\\:\\/\\/x\\.invalid\\)
    """
    return MARKDOWN_PUNCTUATION.sub(r"\\\1", " ".join(str(value).split()))


@dataclass(frozen=True)
class DisplayScan:
    """A scan ready to draw.

    Attributes:
        values: float32 ``(rows, cols)`` or ``(rows, cols, 3)`` (colour) for a 2D
            image; ``(L, P, S)``-ordered ``(X, Y, Z)`` for a volume (channels averaged).
        spacing_mm: pixel / voxel size along each axis of ``values``.
        modality: as the reader found it (``CT``, ``MR``, ``IMAGE``, ``NIFTI``...).
        header_window: ``(width, level)`` from a DICOM header, or None.
        orientation: nibabel orientation change from the scan's voxel axes to ``values``
            (None for a 2D image); heat maps on the scan's grid take the same change.
        facts: what the viewer may say about the study (:data:`CONTEXT_FACTS` of the
            scan's metadata that it has); never a patient's name or id.
    """

    values: np.ndarray
    spacing_mm: tuple[float, ...]
    modality: str | None
    header_window: tuple[float, float] | None
    orientation: np.ndarray | None
    facts: dict[str, str] = field(default_factory=dict)

    @property
    def is_3d(self) -> bool:
        return self.orientation is not None

    @property
    def is_colour(self) -> bool:
        return not self.is_3d and self.values.ndim == 3


def display_scan(volume: Volume) -> DisplayScan:
    """Turn a :class:`~medres.io.Volume` into a :class:`DisplayScan` (values as stored,
    in the scan's units: Hounsfield units for CT)."""
    array = np.asarray(volume.array, dtype=np.float32)
    meta = volume.meta or {}
    window = None
    if meta.get("window_width") and meta.get("window_center") is not None:
        window = (float(meta["window_width"]), float(meta["window_center"]))
    modality = meta.get("modality")
    facts = {name: str(meta[name]) for name in CONTEXT_FACTS if meta.get(name)}
    if not volume.is_3d:
        if volume.channels in (3, 4):
            values = array[:3].transpose(2, 1, 0)  # (rows, cols, RGB)
        elif volume.channels == 2:
            values = array[0].T  # grey + alpha: the grey
        else:
            values = array.mean(axis=0).T
        spacing = tuple(reversed(volume.spacing_mm))  # (row, col)
        return DisplayScan(np.ascontiguousarray(values), spacing, modality, window, None, facts)
    current = nib.orientations.io_orientation(volume.affine)
    change = nib.orientations.ornt_transform(current, nib.orientations.axcodes2ornt("LPS"))
    grey = nib.orientations.apply_orientation(array.mean(axis=0), change)
    shape = volume.spatial_shape
    affine = volume.affine @ nib.orientations.inv_ornt_aff(change, shape)
    spacing = tuple(float(n) for n in np.linalg.norm(affine[:3, :3], axis=0))
    return DisplayScan(np.ascontiguousarray(grey), spacing, modality, window, change, facts)


def auto_window(values: np.ndarray, percentiles=AUTO_PERCENTILES) -> tuple[float, float]:
    """``(width, level)`` spanning the given percentiles of ``values`` (at least 1 wide)."""
    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    flat = flat[:: max(1, flat.size // (1 << 22))]  # a sample is enough for percentiles
    lo, hi = (float(v) for v in np.percentile(flat, percentiles))
    if hi <= lo:
        lo, hi = float(flat.min()), float(flat.max())
    width = max(hi - lo, 1.0)
    return width, (lo + hi) / 2.0


def window_presets(scan: DisplayScan) -> dict[str, tuple[float, float]]:
    """Named ``(width, level)`` choices for this scan, the default first.

    CT: soft tissue 400/40, lung 1500/−600, bone 2500/480, brain 80/40, then the
    header's window (if any) and the percentile auto-window. Every other modality (MR,
    radiographs, photographs, NIfTI of unknown kind): the auto-window first (intensities
    there have no fixed scale), then the header's window if any.
    """
    presets: dict[str, tuple[float, float]] = {}
    if (scan.modality or "").upper() == "CT":
        presets.update(CT_PRESETS)
    presets[AUTO] = auto_window(scan.values)
    if scan.header_window is not None:
        presets[SCAN_WINDOW] = scan.header_window
    return presets


def window_ranges(
    scan: DisplayScan, presets: dict[str, tuple[float, float]]
) -> tuple[tuple[float, float], tuple[float, float], float]:
    """Slider bounds for window width and level, and a step, that hold the scan's whole
    intensity range and every preset (never an empty range, even for a blank image)."""
    low, high = float(np.min(scan.values)), float(np.max(scan.values))
    levels = [level for _, level in presets.values()]
    widths = [width for width, _ in presets.values()]
    width_range = (1.0, max(high - low, *widths, 2.0))
    level_low, level_high = min(low, *levels), max(high, *levels)
    if level_high - level_low < width_range[1]:  # a blank or nearly blank scan
        middle = (level_low + level_high) / 2.0
        level_low, level_high = middle - width_range[1] / 2.0, middle + width_range[1] / 2.0
    step = 1.0 if width_range[1] > 50 else width_range[1] / 500.0
    return width_range, (level_low, level_high), step


def apply_window(values: np.ndarray, width: float, level: float) -> np.ndarray:
    """Map ``level − width/2 … level + width/2`` to 0…255 (clipped), as uint8."""
    width = max(float(width), 1e-6)
    low = float(level) - width / 2.0
    scaled = (np.asarray(values, dtype=np.float32) - low) / width
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


def slice_count(scan: DisplayScan, plane: str) -> int:
    """How many slices ``plane`` has (1 for a 2D image)."""
    if not scan.is_3d:
        return 1
    return int(scan.values.shape[2 - _plane_index(plane)])


def take_slice(values: np.ndarray, scan: DisplayScan, plane: str, index: int) -> np.ndarray:
    """The 2D picture (rows, cols[, 3]) of ``values`` (the scan's values or a heat map on
    the same grid) in ``plane`` at slice ``index`` (clipped to the valid range)."""
    if not scan.is_3d:
        return values
    n = slice_count(scan, plane)
    k = int(np.clip(index, 0, n - 1))
    if plane == "axial":
        return values[:, :, k].T  # rows posterior ↓ (anterior up), cols towards the left
    if plane == "coronal":
        return values[:, k, :].T[::-1]  # rows superior up, cols towards the left
    return values[k, :, :].T[::-1]  # sagittal: rows superior up, cols towards posterior


def pixel_mm(scan: DisplayScan, plane: str) -> tuple[float, float]:
    """Size in mm of a row step and a column step of :func:`take_slice`'s picture."""
    if not scan.is_3d:
        return float(scan.spacing_mm[0]), float(scan.spacing_mm[1])
    sx, sy, sz = scan.spacing_mm
    return {"axial": (sy, sx), "coronal": (sz, sx), "sagittal": (sz, sy)}[plane]


def source_index(
    scan: DisplayScan, plane: str, index: int
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Where the pixels of :func:`take_slice`'s picture lie in the scan's own array.

    Returns ``(origin, per_row, per_col)``: the pixel at picture row ``r``, column ``c``
    is the scan file's element ``origin + r * per_row + c * per_col`` — ``(row, col)``
    of a 2D image's matrix, ``(i, j, k)`` of a volume's ``Volume.array[channel]``
    (the voxel index as stored, before the reordering for display).
    """
    if not scan.is_3d:
        return (0, 0), (1, 0), (0, 1)
    k = int(np.clip(index, 0, slice_count(scan, plane) - 1))
    top = scan.values.shape[2] - 1  # rows run from superior down in coronal / sagittal
    where = {  # (x, y, z) of values at picture (r, c)
        "axial": lambda r, c: (c, r, k),
        "coronal": lambda r, c: (c, k, top - r),
        "sagittal": lambda r, c: (k, c, top - r),
    }[plane]

    def stored(r: int, c: int) -> np.ndarray:
        shown = where(r, c)
        out = []
        for axis_out, flip in scan.orientation:  # one row per stored axis
            v = shown[int(axis_out)]
            out.append(v if flip > 0 else scan.values.shape[int(axis_out)] - 1 - v)
        return np.array(out, dtype=np.int64)

    origin = stored(0, 0)
    rows, cols = stored(1, 0) - origin, stored(0, 1) - origin
    return tuple(map(int, origin)), tuple(map(int, rows)), tuple(map(int, cols))


def value_unit(scan: DisplayScan) -> str:
    """The unit of ``scan.values``: ``HU`` for CT (the DICOM rescale is applied on
    reading), else ``a.u.`` (stored values with no fixed scale)."""
    return "HU" if (scan.modality or "").upper() == "CT" else "a.u."


def display_shape(shape: tuple[int, int], mm: tuple[float, float], size: int = DISPLAY_SIZE):
    """``(height, width)`` in screen pixels of a ``shape`` (rows, cols) picture whose
    pixels measure ``mm`` (row step, col step), its longer side ``size`` (as
    :func:`scale_to`)."""
    height_mm, width_mm = shape[0] * mm[0], shape[1] * mm[1]
    scale = size / max(height_mm, width_mm)
    return max(1, round(height_mm * scale)), max(1, round(width_mm * scale))


def upsampling(shape: tuple[int, int], mm: tuple[float, float], size: int = DISPLAY_SIZE):
    """How many screen pixels one matrix pixel spans (the larger of the two directions)
    when a ``shape`` picture is drawn ``size`` pixels on its longer side."""
    height, width = display_shape(shape, mm, size)
    return max(height / shape[0], width / shape[1])


def overlay_rgba(heat: np.ndarray, opacity: float) -> np.ndarray:
    """The ``jet`` colour map of ``heat`` (0–1) as an (H, W, 4) uint8 layer to draw over
    the scan, its alpha ``opacity`` everywhere (0 transparent, 1 opaque); as
    :func:`overlay` blends it."""
    colour = colormaps[OVERLAY_CMAP](np.clip(heat, 0.0, 1.0))
    colour[..., 3] = float(np.clip(opacity, 0.0, 1.0))
    return np.clip(np.rint(colour * 255.0), 0, 255).astype(np.uint8)


def load_heatmap(path: str | Path | None, scan: DisplayScan) -> np.ndarray | None:
    """The case's Grad-CAM map (``.npy`` for 2D, ``.nii.gz`` for 3D, values 0–1) on the
    same grid as ``scan.values``; None when the case has no map.

    Raises:
        ValueError: the file's grid is not the scan's (a map of another scan).
        OSError: the file cannot be read.
    """
    if not path:
        return None
    path = Path(path)
    if path.name.endswith((".nii", ".nii.gz")):
        heat = np.asarray(nib.load(path).get_fdata(), dtype=np.float32)
        if scan.is_3d:
            heat = nib.orientations.apply_orientation(heat, scan.orientation)
    else:
        heat = np.load(path, allow_pickle=False).astype(np.float32)
        if not scan.is_3d:
            heat = heat.T  # stored (X, Y) like the scan: shown as (rows, cols)
    expected = scan.values.shape[:2] if scan.is_colour else scan.values.shape
    if heat.shape != expected:
        raise ValueError(
            f"the heat map {path.name} has shape {heat.shape} but the scan is shown on "
            f"{expected}; it belongs to another scan"
        )
    return np.clip(np.nan_to_num(heat, nan=0.0), 0.0, 1.0)


def overlay(grey_or_rgb: np.ndarray, heat: np.ndarray, opacity: float) -> np.ndarray:
    """Blend a ``jet`` colour map of ``heat`` (0–1) over a uint8 picture: (H, W, 3) uint8.

    ``opacity`` 0 shows the scan only, 1 the map only.
    """
    base = _rgb(grey_or_rgb).astype(np.float32)
    colour = colormaps[OVERLAY_CMAP](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    alpha = float(np.clip(opacity, 0.0, 1.0))
    return np.clip(np.rint((1.0 - alpha) * base + alpha * colour), 0, 255).astype(np.uint8)


def render_view(
    scan: DisplayScan,
    plane: str,
    index: int,
    width: float,
    level: float,
    heat: np.ndarray | None = None,
    opacity: float = 0.4,
    size: int = DISPLAY_SIZE,
) -> np.ndarray:
    """One picture of the case view: the slice, windowed, with the map blended on top
    when given, scaled so its longer side is ``size`` pixels with true proportions.

    Returns (H, W, 3) uint8.
    """
    picture = apply_window(take_slice(scan.values, scan, plane, index), width, level)
    if heat is not None:
        picture = overlay(picture, take_slice(heat, scan, plane, index), opacity)
    return scale_to(_rgb(picture), pixel_mm(scan, plane), size)


def scale_to(rgb: np.ndarray, mm: tuple[float, float], size: int = DISPLAY_SIZE) -> np.ndarray:
    """Resize an (H, W, 3) picture so its longer side is ``size`` pixels and each
    pixel's height : width is ``mm[0] : mm[1]`` (bilinear)."""
    height, width = display_shape(rgb.shape[:2], mm, size)
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR))


def _rgb(picture: np.ndarray) -> np.ndarray:
    return picture if picture.ndim == 3 else np.repeat(picture[..., None], 3, axis=2)


def _plane_index(plane: str) -> int:
    """0 axial (along S, the last axis), 1 coronal (P), 2 sagittal (L)."""
    try:
        return PLANES.index(plane)
    except ValueError:
        raise ValueError(f"plane must be one of {PLANES}; got {plane!r}") from None
