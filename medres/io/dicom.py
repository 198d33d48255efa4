"""DICOM files to frames and volumes: classic series, enhanced multi-frame, 2D images.

Reading is split in two so ingest can discover scans from headers alone:
:func:`read_header` (no pixels, :mod:`.dicom_header`) and :func:`frames_of` give
geometry (:mod:`.dicom_frames`); only :func:`read_dicom` decodes pixels. Pixel values
are returned as modality values (RescaleSlope/Intercept applied per frame; MONOCHROME1
inverted to MONOCHROME2; YBR and palette colour converted to RGB). Attribute values are
read by :mod:`.dicom_values`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, get_decoder
from pydicom.uid import ExplicitVRBigEndian

from medres.errors import ScanContentError, ScanReadError
from medres.io.dicom_frames import (
    frame_count,
    frames_of,
    is_colour,
    is_mosaic,
    is_multiframe,
    samples_per_pixel,
)
from medres.io.dicom_header import (
    NON_SCAN_MODALITIES,
    complete_pixels,
    has_dicom_preamble,
    is_dicom_file,
    read_header,
    scan_meta,
    skip_reason,
    sniff_file_type,
)
from medres.io.dicom_values import rescale, text, transfer_syntax
from medres.io.geometry import Frame, Stack, stack_frames
from medres.io.volume import Volume, require_finite
from medres.limits import over_budget

__all__ = [
    "NON_SCAN_MODALITIES",
    "SliceSource",
    "frame_count",
    "frames_of",
    "has_dicom_preamble",
    "is_dicom_file",
    "is_mosaic",
    "is_multiframe",
    "read_dicom",
    "read_header",
    "scan_meta",
    "skip_reason",
    "slice_sources",
    "sniff_file_type",
]

# Which PyPI package decodes which compressed transfer syntax (pydicom's pixel plugins).
_CODEC_PACKAGES = {
    "JPEG 2000": "pylibjpeg-openjpeg",
    "JPEG-LS": "pylibjpeg-libjpeg",
    "JPEG": "pylibjpeg-libjpeg",
    "RLE": "pylibjpeg-rle",
}


def read_dicom(
    paths: list[str | Path], scan_id: str, headers: dict[str, Dataset] | None = None
) -> Volume:
    """Read one scan made of ``paths`` (a series of single-frame files, or one file).

    Returns a Volume whose ``array`` is ``(C, X, Y)`` for a single image, ``(C, X, Y, Z)``
    for a volume (C = time points for a 4D series, 3 for RGB) and, for a multi-frame
    object without patient geometry (cine, ultrasound), ``(C, X, Y, F)`` with
    ``meta["third_axis"] == "frame"``.

    ``headers`` maps a path (``str``) to its :func:`read_header` dataset, from discovery:
    those files are then not parsed again, only their pixel data and what follows it are
    read (:func:`complete_pixels`); the datasets are completed in place.

    Raises:
        ScanReadError, ScanGeometryError, ScanContentError.
    """
    headers = headers or {}
    datasets = [
        complete_pixels(headers[str(p)], p) if str(p) in headers else read_header(p, pixels=True)
        for p in paths
    ]
    for ds, p in zip(datasets, paths, strict=True):
        reason = skip_reason(ds)
        if reason:
            raise ScanReadError(str(p), reason)
        if "PixelData" not in ds and "FloatPixelData" not in ds:
            raise ScanReadError(str(p), "the file has image attributes but no pixel data")
    frames = [f for i, ds in enumerate(datasets) for f in frames_of(ds, i)]
    problem = over_budget(
        (frames[0].columns, frames[0].rows, len(frames)), samples_per_pixel(datasets[0])
    )
    if problem:
        raise ScanContentError(scan_id, problem)
    meta = scan_meta(datasets[0])
    meta["n_files"] = len(paths)
    if len(frames) > 1 and not any(f.has_geometry for f in frames):
        return _frame_stack_volume(datasets[0], frames, paths[0], meta)
    stack = stack_frames(frames, scan_id)
    decoded = [_pixels(ds, p) for ds, p in zip(datasets, paths, strict=True)]
    array = _assemble(stack, decoded, datasets)
    meta.update(stack.notes)
    if meta["photometric"] == "MONOCHROME1":
        array = _invert_monochrome1(array, datasets[0], meta)
    return _finish(array, stack.affine, meta, scan_id)


class SliceSource(NamedTuple):
    """Where one slice of a read DICOM scan comes from.

    Attributes:
        path: the file holding it.
        sop_instance_uid: that file's SOPInstanceUID.
        frame: 0-based frame within the file (a Siemens mosaic: tile); 0 for a single frame.
    """

    path: str
    sop_instance_uid: str
    frame: int


def slice_sources(
    paths: list[str | Path], headers: dict[str, Dataset] | None = None
) -> list[SliceSource]:
    """Which file and frame each slice of :func:`read_dicom` ``(paths)`` comes from, from
    headers alone: item ``k`` is the volume's slice ``array[..., k]`` (the one image of a
    2D scan; frame ``k`` of a multi-frame object without geometry; for a 4D series, slice
    ``k`` of the first time point). The order is read_dicom's, by the same frames and
    stacking.

    ``headers`` maps a path (``str``) to its :func:`read_header` dataset, as in read_dicom.

    Raises:
        ScanReadError, ScanGeometryError, ScanContentError: as read_dicom, for its headers.
    """
    headers = headers or {}
    datasets = [headers[str(p)] if str(p) in headers else read_header(p) for p in paths]
    frames = [f for i, ds in enumerate(datasets) for f in frames_of(ds, i)]
    if len(frames) > 1 and not any(f.has_geometry for f in frames):
        ordered = frames  # a frame stack (_frame_stack_volume): frames in file order
    else:
        ordered = stack_frames(frames, str(paths[0])).layout[0]
    return [
        SliceSource(
            str(paths[f.source[0]]),
            str(datasets[f.source[0]].get("SOPInstanceUID", "")),
            f.source[1],
        )
        for f in ordered
    ]


def _frame_stack_volume(ds: Dataset, frames: list[Frame], path, meta) -> Volume:
    """A multi-frame object without geometry: frames become a non-spatial third axis."""
    stack = stack_frames(frames[:1], str(path))
    pixels = _pixels(ds, path)  # (F, R, C[, S])
    if not is_colour(ds):
        pixels = pixels[..., None]
    array = _rescaled(pixels, frames[0].rescale)  # (F, R, C, S)
    array = np.transpose(array, (3, 2, 1, 0))  # (S, C=x, R=y, F)
    meta["third_axis"] = "frame"
    if meta["photometric"] == "MONOCHROME1":
        array = _invert_monochrome1(array, ds, meta)
    return _finish(array, stack.affine, meta, str(path))


def _finish(array: np.ndarray, affine: np.ndarray, meta: dict, scan_id: str) -> Volume:
    array = array.astype(array.dtype.newbyteorder("="), copy=False)  # big-endian files
    if array.shape[0] == 3 and meta.get("photometric") not in (None, "RGB"):
        meta["photometric_stored"], meta["photometric"] = meta["photometric"], "RGB"
    require_finite(array, scan_id)
    return Volume(array, affine, meta)


def _assemble(stack: Stack, decoded: list[np.ndarray], datasets: list[Dataset]) -> np.ndarray:
    """Place each frame's rescaled pixels into a (C, X, Y[, Z]) array."""
    samples = samples_per_pixel(datasets[0])
    if samples > 1 and stack.n_volumes > 1:
        raise ScanContentError(
            str(datasets[0].filename), "a colour 4D series is not supported; export each volume"
        )
    planes = []
    for volume in stack.layout:
        for frame in volume:
            pixels = decoded[frame.source[0]]
            if frame.tile is not None:
                pixels = _mosaic_tile(pixels, frame)
            elif is_multiframe(datasets[frame.source[0]]):
                pixels = pixels[frame.source[1]]
            planes.append(_rescaled(pixels, frame.rescale))
    dtype = np.result_type(*planes)
    grid = np.stack([p.astype(dtype, copy=False) for p in planes])
    grid = grid.reshape(stack.n_volumes, stack.n_slices, *grid.shape[1:])  # (T, Z, R, C[, S])
    if samples > 1:
        grid = np.moveaxis(grid[0], -1, 0)  # (S, Z, R, C): colour samples are the channels
    array = np.transpose(grid, (0, 3, 2, 1))  # (C, X=columns, Y=rows, Z)
    if array.shape[-1] == 1:
        array = array[..., 0]  # a single slice is a 2D image
    return np.ascontiguousarray(array)


def _mosaic_tile(pixels: np.ndarray, frame: Frame) -> np.ndarray:
    """Cut slice ``k`` out of a mosaic laid out row by row in a ``tiles × tiles`` grid."""
    tiles, k = frame.tile
    top, left = (k // tiles) * frame.rows, (k % tiles) * frame.columns
    return pixels[top : top + frame.rows, left : left + frame.columns]


def _pixels(ds: Dataset, path) -> np.ndarray:
    """Decode pixel data: (R, C[, S]) or (F, R, C[, S]); colour converted to RGB."""
    syntax = transfer_syntax(ds)
    try:
        with warnings.catch_warnings():  # they may quote header values (see read_header)
            warnings.simplefilter("ignore")
            array = ds.pixel_array
        if text(ds.get("PhotometricInterpretation")) == "PALETTE COLOR":
            array = _apply_palette(array, ds)
    except MemoryError:  # read_scan names it
        raise
    except Exception as e:  # pydicom's codecs raise many types; translated once, here
        raise ScanReadError(str(path), _decode_failure(syntax, e)) from e
    return array


_PALETTE_LUT_DATA = ("Red", "Green", "Blue", "Alpha")


def _apply_palette(array: np.ndarray, ds: Dataset) -> np.ndarray:
    """pydicom's ``apply_color_lut``, given LUT data in little-endian order: pydicom reads
    non-segmented (0028,1201-1204) LUT data as little endian whatever the dataset's byte
    order, so for a big-endian dataset each 16-bit word is swapped here first."""
    big_endian = str(transfer_syntax(ds) or "") == ExplicitVRBigEndian
    if not big_endian or "RedPaletteColorLookupTableData" not in ds:
        return apply_color_lut(array, ds)
    luts = Dataset()
    if "PixelPresentation" in ds:  # pydicom refuses supplemental palettes: keep that
        luts.PixelPresentation = ds.PixelPresentation
    for colour in _PALETTE_LUT_DATA:
        descriptor = f"{colour}PaletteColorLookupTableDescriptor"
        data = ds.get(f"{colour}PaletteColorLookupTableData")
        if descriptor in ds:
            setattr(luts, descriptor, ds[descriptor].value)
        if data is not None:
            raw = bytes(data)
            if len(raw) % 2 == 0:  # OW: 16-bit words, stored big endian
                raw = np.frombuffer(raw, dtype=">u2").astype("<u2").tobytes()
            setattr(luts, f"{colour}PaletteColorLookupTableData", raw)
    return apply_color_lut(array, luts)


def _decode_failure(syntax, error: Exception) -> str:
    name = syntax.name if syntax is not None else "unknown transfer syntax"
    if syntax is not None and syntax.is_compressed:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            return (
                f"pixel data use {name} ({syntax}), which no installed decoder handles; "
                "install python-gdcm, which covers the most codecs"
            )
        if not decoder.is_available:
            package = next((p for k, p in _CODEC_PACKAGES.items() if k in name), "python-gdcm")
            return (
                f"cannot decode {name} ({syntax}): no decoder plugin is installed; "
                f"`pip install {package}`"
            )
    return f"pixel data could not be decoded ({name}): {type(error).__name__}: {error}"


def _rescaled(pixels: np.ndarray, rescale: tuple[float, float]) -> np.ndarray:
    """Apply RescaleSlope/Intercept, keeping integers when the rescale is integral."""
    slope, intercept = rescale
    if slope == 1 and intercept == 0:
        return pixels
    if slope == int(slope) and intercept == int(intercept):
        return pixels.astype(np.int32) * int(slope) + int(intercept)
    return (pixels.astype(np.float64) * slope + intercept).astype(np.float32)


def _invert_monochrome1(array: np.ndarray, ds: Dataset, meta: dict) -> np.ndarray:
    """Map MONOCHROME1 (low = white) to MONOCHROME2 over the stored value range."""
    bits = int(ds.get("BitsStored", 8) or 8)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope, intercept = rescale(ds)
    low, high = sorted((low * slope + intercept, high * slope + intercept))
    total = low + high
    if meta.get("window_center") is not None:
        meta["window_center"] = total - meta["window_center"]
    meta["photometric"] = "MONOCHROME2"
    meta["inverted_from"] = "MONOCHROME1"
    if array.dtype.kind == "f" or total != int(total):
        return (total - array.astype(np.float64)).astype(np.float32)
    return (int(total) - array.astype(np.int64)).astype(np.int32)
