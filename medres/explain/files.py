"""An explanation's files: a PNG overlay for every scan and the raw map (``.npy`` for 2D
images, a NIfTI on the scan's affine for volumes), written atomically, mode 0600."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib import colormaps
from PIL import Image

from medres.explain.gradcam import as_numpy
from medres.files import atomic_write
from medres.io import Volume

OVERLAY_ALPHA = 0.4  # weight of the colour map over the grey scan


OVERLAY_CMAP = "jet"  # 0 = dark blue (no evidence), 1 = dark red (strongest)


GREY_PERCENTILES = (1.0, 99.0)  # scan intensity percentiles shown as black / white


def write_explanation(
    volume: Volume, cam_on_scan: np.ndarray, out_dir: str | Path, stem: str
) -> dict[str, str]:
    """Write one scan's explanation files into ``out_dir``; return ``{kind: path}``.

    Args:
        volume: the scan as read (:func:`medres.io.read_scan`).
        cam_on_scan: ``volume.spatial_shape`` map in [0, 1] (from :func:`map_to_scan`).
        out_dir: folder, created if missing.
        stem: file name without suffix (the caller makes it safe and unique).

    2D scans (``{"png", "npy"}``):
        ``stem.png``: RGB uint8 overlay at the image's own size and orientation (width =
        X, height = Y, pixel (row, col) = the original's (row, col)): the scan in grey (a
        colour image in colour), intensities 1st–99th percentile → 0–255, with the map in
        ``jet`` at alpha 0.4 on top. ``stem.npy``: the map, float32 (X, Y), [0, 1].
    3D scans (``{"nifti", "png"}``):
        ``stem.nii.gz``: the map, float32 (X, Y, Z), on ``volume.affine`` (RAS mm), so it
        opens over the scan in any viewer. ``stem.png``: the axial slice with the most
        total activation, shown radiologically (anterior up, patient's right on the image
        left), one pixel per voxel; the axial axis is the voxel axis closest to
        superior–inferior (the last one for axially acquired scans).

    Every file is written atomically (temporary file + rename), mode 0600: it shows the
    patient's image, and its name comes from the scan's id (README "Privacy of outputs").

    Raises:
        ValueError: ``cam_on_scan``'s shape is not the scan's spatial shape.
    """
    cam = np.asarray(as_numpy(cam_on_scan), dtype=np.float32)
    if cam.shape != volume.spatial_shape:
        raise ValueError(
            f"cam_on_scan has shape {cam.shape} but the scan's grid is {volume.spatial_shape}; "
            "map it with map_to_scan first"
        )
    cam = np.clip(np.nan_to_num(cam, nan=0.0), 0.0, 1.0)
    out_dir = Path(out_dir)
    paths: dict[str, str] = {}
    if not volume.is_3d:
        rgb = _overlay(_display_grey(volume.array), cam)  # (X, Y, 3)
        paths["png"] = str(_write_png(out_dir / f"{stem}.png", rgb))
        npy = atomic_write(out_dir / f"{stem}.npy", lambda tmp: _save_npy(tmp, cam), private=True)
        paths["npy"] = str(npy)
        return paths
    paths["nifti"] = str(
        atomic_write(
            out_dir / f"{stem}.nii.gz",
            lambda tmp: _save_nifti(tmp, cam, volume.affine),
            private=True,
        )
    )
    grey, heat = _axial_display(volume, cam)  # (X, Y) each: L→ along X, P→ along Y
    k = _strongest_slice(heat)
    rgb = _overlay(_display_grey(grey[None, ..., k], reference=grey), heat[..., k])
    paths["png"] = str(_write_png(out_dir / f"{stem}.png", rgb))
    return paths


def _display_grey(array: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """(C, X, Y) scan -> (X, Y, 3) float in [0, 255]: grey, or colour for RGB(A) images.

    Percentiles come from ``reference`` (the whole volume for a slice) or ``array``.
    """
    array = np.asarray(array, dtype=np.float32)
    channels = array.shape[0]
    if channels in (3, 4):
        shown = array[:3]
    elif channels == 2:
        shown = array[:1]  # grey + alpha
    else:
        shown = array.mean(axis=0, keepdims=True)  # grey, or time points of a series
    values = shown if reference is None else np.asarray(reference, dtype=np.float32)
    flat = values.reshape(-1)[:: max(1, values.size // (1 << 22))]
    lo, hi = np.percentile(flat, GREY_PERCENTILES)
    if hi <= lo:
        lo, hi = float(flat.min()), float(flat.max())
    scaled = (shown - lo) / (hi - lo) if hi > lo else np.zeros_like(shown)
    scaled = np.clip(scaled, 0.0, 1.0) * 255.0
    if len(scaled) == 1:
        scaled = np.repeat(scaled, 3, axis=0)
    return scaled.transpose(1, 2, 0)


def _overlay(background: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """(X, Y, 3) in [0, 255] and an (X, Y) map -> (X, Y, 3) uint8 blend."""
    heat = colormaps[OVERLAY_CMAP](cam)[..., :3] * 255.0
    blend = (1.0 - OVERLAY_ALPHA) * background + OVERLAY_ALPHA * heat
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


def _write_png(path: Path, rgb_xy: np.ndarray) -> Path:
    """Save an (X, Y, 3) image as a PNG of width X, height Y (rows = Y, as medres reads)."""
    pixels = np.ascontiguousarray(rgb_xy.transpose(1, 0, 2))
    save = lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG")  # noqa: E731
    return atomic_write(path, save, private=True)


def _save_npy(tmp: str, array: np.ndarray) -> None:
    with open(tmp, "wb") as f:  # np.save(name) would append ".npy" to the temporary name
        np.save(f, array)


def _save_nifti(tmp: str, cam: np.ndarray, affine: np.ndarray) -> None:
    image = nib.Nifti1Image(cam.astype(np.float32), affine)
    image.header.set_xyzt_units("mm")
    image.header.set_sform(affine, code="aligned")  # aligned to the scan it explains
    image.header.set_qform(affine, code="aligned")
    image.header["cal_min"], image.header["cal_max"] = 0.0, 1.0
    # nibabel picks the format from the file name; the temporary name has none
    Path(tmp).write_bytes(gzip.compress(image.to_bytes(), compresslevel=6))


def _axial_display(volume: Volume, cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The scan (channels averaged) and the map reordered to the axes closest to L, P, S.

    Index 0 then runs to the patient's left, 1 to posterior, 2 to superior: a slice
    ``[..., k]`` shown with rows along P and columns along L is a radiological axial view.
    """
    current = nib.orientations.io_orientation(volume.affine)
    wanted = nib.orientations.axcodes2ornt(("L", "P", "S"))
    change = nib.orientations.ornt_transform(current, wanted)
    grey = np.asarray(volume.array, dtype=np.float32).mean(axis=0)
    return (
        nib.orientations.apply_orientation(grey, change),
        nib.orientations.apply_orientation(cam, change),
    )


def _strongest_slice(heat: np.ndarray) -> int:
    """Index of the last-axis slice with the largest summed map (the middle if all 0)."""
    totals = heat.reshape(-1, heat.shape[-1]).sum(axis=0)
    return int(np.argmax(totals)) if totals.max() > 0 else heat.shape[-1] // 2
