"""DICOM files to frames and volumes: classic series, enhanced multi-frame, 2D images.

Reading is split in two so ingest can discover scans from headers alone:
:func:`read_header` (no pixels) and :func:`frames_of` give geometry; only
:func:`read_dicom` decodes pixels. Pixel values are returned as modality values
(RescaleSlope/Intercept applied per frame; MONOCHROME1 inverted to MONOCHROME2;
YBR and palette colour converted to RGB).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, get_decoder

from medres.errors import ScanContentError, ScanReadError, first_line
from medres.io.geometry import Frame, Stack, stack_frames
from medres.io.volume import Volume, require_finite
from medres.limits import over_budget

with warnings.catch_warnings():  # nibabel warns that its DICOM *series* readers are young;
    warnings.simplefilter("ignore")  # we use only its per-file Siemens CSA/mosaic parsing.
    from nibabel.nicom import dicomwrappers

# pydicom's value checks on reading warn and log the offending value: a hostile UID or a
# patient's name would reach stderr and logs (the review server reads scans from many
# threads, where catching warnings is not safe). medres reads; it does not validate.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

# Objects that carry pixels but are not scans to classify, and objects without pixels.
NON_SCAN_MODALITIES = {
    "SEG": "a segmentation object",
    "RTDOSE": "an RT dose grid",
    "RTSTRUCT": "an RT structure set",
    "RTPLAN": "an RT plan",
    "RTIMAGE": "an RT portal image",
    "SR": "a structured report",
    "PR": "a presentation state",
    "KO": "a key-object selection",
    "REG": "a registration object",
    "ECG": "a waveform",
    "DOC": "an encapsulated document",
}
_DICOMDIR_UID = "1.2.840.10008.1.3.10"
# Which PyPI package decodes which compressed transfer syntax (pydicom's pixel plugins).
_CODEC_PACKAGES = {
    "JPEG 2000": "pylibjpeg-openjpeg",
    "JPEG-LS": "pylibjpeg-libjpeg",
    "JPEG": "pylibjpeg-libjpeg",
    "RLE": "pylibjpeg-rle",
}


def has_dicom_preamble(path: str | Path) -> bool:
    """True when ``path`` has the 128-byte preamble followed by ``DICM`` (Part 10 file)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def read_header(path: str | Path, *, pixels: bool = False) -> Dataset:
    """Read one DICOM file, without its pixel data unless ``pixels``.

    Raises:
        ScanReadError: the file is empty, not DICOM (its real type is named when
            recognisable), or its header is corrupt.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ScanReadError(str(path), f"cannot open file: {e.strerror}") from e
    if size == 0:
        raise ScanReadError(str(path), "empty file (0 bytes); re-export or remove it")
    try:
        with warnings.catch_warnings():  # pydicom's warnings quote header values: hostile
            warnings.simplefilter("ignore")  # text, or a patient's name, would reach the log
            ds = pydicom.dcmread(path, stop_before_pixels=not pixels, force=False)
            _parse_public(ds)
    except InvalidDicomError as e:
        kind = sniff_file_type(path)
        hint = f"it looks like a {kind} file: give it the right extension" if kind else ""
        raise ScanReadError(
            str(path), f"not a DICOM file (no 'DICM' preamble){'; ' + hint if hint else ''}"
        ) from e
    except MemoryError:  # read_scan names it
        raise
    except Exception as e:  # pydicom raises many types for damaged files; translated once here
        raise ScanReadError(
            str(path), f"damaged DICOM header ({type(e).__name__}: {first_line(e)})"
        ) from e
    damage = _damage(ds)
    if damage:
        raise ScanReadError(str(path), damage)
    return ds


def _parse_public(ds: Dataset) -> None:
    """Convert every public element now (pydicom defers it, and a damaged value would
    then raise wherever it is first read); private elements stay raw until asked for."""
    for tag in list(ds.keys()):
        if not tag.is_private:
            element = ds[tag]
            if element.VR == "SQ":
                for item in element.value:
                    _parse_public(item)


def _damage(ds: Dataset) -> str | None:
    """Why a parsed header cannot be a whole DICOM object (no SOP class at all, or an
    image SOP class without its image attributes: the file was cut short or corrupted)."""
    sop = ds.get("SOPClassUID") or getattr(
        ds.get("file_meta", Dataset()), "MediaStorageSOPClassUID", None
    )
    if not sop:
        return (
            "damaged DICOM: the header holds no SOP Class UID (the file is truncated or "
            "corrupt); export the object again"
        )
    name = getattr(sop, "name", str(sop))
    if "Image Storage" in name and ("Rows" not in ds or "Columns" not in ds):
        return (
            f"damaged DICOM: a {name} object without Rows/Columns (the header ends early: "
            "the file is truncated or corrupt); export the object again"
        )
    for key in ("Rows", "Columns"):
        if key in ds and not (_number(ds.get(key)) or 0) >= 1:
            return f"damaged DICOM: {key} is {ds.get(key)!r}, not a positive number; export again"
    return None


def sniff_file_type(path: str | Path) -> str | None:
    """Name a common image format by its magic bytes, or None."""
    with open(path, "rb") as fh:
        head = fh.read(352)
    signatures = {
        b"\x89PNG": "PNG",
        b"\xff\xd8\xff": "JPEG",
        b"\x1f\x8b": "gzip (perhaps .nii.gz)",
        b"GIF8": "GIF",
        b"II*\x00": "TIFF",
        b"MM\x00*": "TIFF",
    }
    for magic, name in signatures.items():
        if head.startswith(magic):
            return name
    if head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "NIfTI"
    return None


def skip_reason(ds: Dataset) -> str | None:
    """Why this DICOM object is not a scan (DICOMDIR, report, RT object...), or None."""
    media_class = str(getattr(ds.get("file_meta", Dataset()), "MediaStorageSOPClassUID", ""))
    if media_class == _DICOMDIR_UID or "DirectoryRecordSequence" in ds:
        return "DICOMDIR (a media index, not an image)"
    modality = str(ds.get("Modality", "") or "").upper()
    if modality in NON_SCAN_MODALITIES:
        return f"{NON_SCAN_MODALITIES[modality]} ({modality}), not a scan"
    if "Rows" not in ds or "Columns" not in ds:
        sop = ds.get("SOPClassUID")
        name = sop.name if sop is not None else "unknown SOP class"
        return f"no image pixels ({name})"
    return None


def is_multiframe(ds: Dataset) -> bool:
    return frame_count(ds) > 1


def frame_count(ds: Dataset) -> int:
    """NumberOfFrames, read as 1 when absent, empty, zero, negative or not a number."""
    return max(1, int(_number(ds.get("NumberOfFrames")) or 1))


def frames_of(ds: Dataset, file_index: int = 0) -> list[Frame]:
    """The frames of one DICOM object with their geometry (headers only).

    Raises:
        ScanContentError: the object declares more values than :mod:`medres.limits` allows.
    """
    n_frames = frame_count(ds)
    problem = over_budget((int(ds.Columns), int(ds.Rows), n_frames), _samples(ds))
    if problem:
        raise ScanContentError(str(getattr(ds, "filename", "") or "scan"), problem)
    if "PerFrameFunctionalGroupsSequence" in ds:
        return _enhanced_frames(ds, file_index)
    if is_mosaic(ds):
        return _mosaic_frames(ds, file_index)
    position = _floats(ds.get("ImagePositionPatient"), 3)
    orientation = _floats(ds.get("ImageOrientationPatient"), 6)
    common = {
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "pixel_spacing": _pixel_spacing(ds),
        "thickness": _number(ds.get("SpacingBetweenSlices")) or _number(ds.get("SliceThickness")),
        "rescale": _rescale(ds),
    }
    if n_frames == 1:
        return [
            Frame(
                position=position,
                orientation=orientation,
                order=_classic_order(ds),
                source=(file_index, 0),
                **common,
            )
        ]
    # Legacy multi-frame (cine, US, secondary capture): frames are not placed in space.
    return [
        Frame(position=None, orientation=None, order=(f,), source=(file_index, f), **common)
        for f in range(n_frames)
    ]


def scan_meta(ds: Dataset) -> dict[str, Any]:
    """Identifying and display facts kept with the scan (strings, numbers or None)."""
    window_center, window_width = _window(ds)
    syntax = _transfer_syntax(ds)
    return {
        "format": "dicom",
        "modality": _text(ds.get("Modality")),
        "patient_id": _text(ds.get("PatientID")),
        "study_uid": _text(ds.get("StudyInstanceUID")),
        "series_uid": _text(ds.get("SeriesInstanceUID")),
        "site": _text(ds.get("InstitutionName")),
        "manufacturer": _text(ds.get("Manufacturer")),
        "series_description": _text(ds.get("SeriesDescription")),
        "body_part": _text(ds.get("BodyPartExamined")),
        "photometric": _text(ds.get("PhotometricInterpretation")),
        "transfer_syntax": syntax.name if syntax else None,
        "window_center": window_center,
        "window_width": window_width,
    }


def read_dicom(paths: list[str | Path], scan_id: str) -> Volume:
    """Read one scan made of ``paths`` (a series of single-frame files, or one file).

    Returns a Volume whose ``array`` is ``(C, X, Y)`` for a single image, ``(C, X, Y, Z)``
    for a volume (C = time points for a 4D series, 3 for RGB) and, for a multi-frame
    object without patient geometry (cine, ultrasound), ``(C, X, Y, F)`` with
    ``meta["third_axis"] == "frame"``.

    Raises:
        ScanReadError, ScanGeometryError, ScanContentError.
    """
    datasets = [read_header(p, pixels=True) for p in paths]
    for ds, p in zip(datasets, paths, strict=True):
        reason = skip_reason(ds)
        if reason:
            raise ScanReadError(str(p), reason)
        if "PixelData" not in ds and "FloatPixelData" not in ds:
            raise ScanReadError(str(p), "the file has image attributes but no pixel data")
    frames = [f for i, ds in enumerate(datasets) for f in frames_of(ds, i)]
    problem = over_budget((frames[0].columns, frames[0].rows, len(frames)), _samples(datasets[0]))
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


def _frame_stack_volume(ds: Dataset, frames: list[Frame], path, meta) -> Volume:
    """A multi-frame object without geometry: frames become a non-spatial third axis."""
    stack = stack_frames(frames[:1], str(path))
    pixels = _pixels(ds, path)  # (F, R, C[, S])
    if not _is_colour(ds):
        pixels = pixels[..., None]
    array = _rescaled(pixels, frames[0].rescale)  # (F, R, C, S)
    array = np.transpose(array, (3, 2, 1, 0))  # (S, C=x, R=y, F)
    meta["third_axis"] = "frame"
    if meta["photometric"] == "MONOCHROME1":
        array = _invert_monochrome1(array, ds, meta)
    return _finish(array, stack.affine, meta, str(path))


def _samples(ds: Dataset) -> int:
    """Values per pixel once decoded: 3 for colour (a palette becomes RGB), else 1."""
    return 3 if _is_colour(ds) else 1


def _is_colour(ds: Dataset) -> bool:
    """Decoded pixels carry 3 samples: RGB/YBR, or a palette expanded to RGB."""
    palette = _text(ds.get("PhotometricInterpretation")) == "PALETTE COLOR"
    return palette or int(ds.get("SamplesPerPixel", 1) or 1) > 1


def _finish(array: np.ndarray, affine: np.ndarray, meta: dict, scan_id: str) -> Volume:
    array = array.astype(array.dtype.newbyteorder("="), copy=False)  # big-endian files
    if array.shape[0] == 3 and meta.get("photometric") not in (None, "RGB"):
        meta["photometric_stored"], meta["photometric"] = meta["photometric"], "RGB"
    require_finite(array, scan_id)
    return Volume(array, affine, meta)


def _assemble(stack: Stack, decoded: list[np.ndarray], datasets: list[Dataset]) -> np.ndarray:
    """Place each frame's rescaled pixels into a (C, X, Y[, Z]) array."""
    samples = _samples(datasets[0])
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
    syntax = _transfer_syntax(ds)
    try:
        with warnings.catch_warnings():  # they may quote header values (see read_header)
            warnings.simplefilter("ignore")
            array = ds.pixel_array
        if _text(ds.get("PhotometricInterpretation")) == "PALETTE COLOR":
            array = apply_color_lut(array, ds)
    except MemoryError:  # read_scan names it
        raise
    except Exception as e:  # pydicom's codecs raise many types; translated once, here
        raise ScanReadError(str(path), _decode_failure(syntax, e)) from e
    return array


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
    slope, intercept = _rescale(ds)
    low, high = sorted((low * slope + intercept, high * slope + intercept))
    total = low + high
    if meta.get("window_center") is not None:
        meta["window_center"] = total - meta["window_center"]
    meta["photometric"] = "MONOCHROME2"
    meta["inverted_from"] = "MONOCHROME1"
    if array.dtype.kind == "f" or total != int(total):
        return (total - array.astype(np.float64)).astype(np.float32)
    return (int(total) - array.astype(np.int64)).astype(np.int32)


def is_mosaic(ds: Dataset) -> bool:
    """A Siemens mosaic: one file holding a grid of slices (ImageType contains MOSAIC)."""
    return "MOSAIC" in [str(v).upper() for v in (ds.get("ImageType") or [])]


def _mosaic_frames(ds: Dataset, file_index: int) -> list[Frame]:
    """Slices of a Siemens mosaic, placed with nibabel's reading of the CSA header."""
    try:
        wrapper = dicomwrappers.MosaicWrapper(ds)
        n_slices, tiles = int(wrapper.n_mosaic), int(wrapper.mosaic_size)
        corner = np.asarray(wrapper.image_position, dtype=np.float64)
        normal = np.asarray(wrapper.slice_normal, dtype=np.float64)
        step = float(wrapper.voxel_sizes[2])
    except (dicomwrappers.WrapperError, KeyError, ValueError, TypeError) as e:
        raise ScanReadError(
            str(getattr(ds, "filename", "?")), f"Siemens mosaic without a usable CSA header: {e}"
        ) from e
    rows, columns = int(ds.Rows) // tiles, int(ds.Columns) // tiles
    order = _classic_order(ds)
    return [
        Frame(
            rows=rows,
            columns=columns,
            position=corner + k * step * normal,
            orientation=_floats(ds.get("ImageOrientationPatient"), 6),
            pixel_spacing=_pixel_spacing(ds),
            thickness=step,
            order=order,
            source=(file_index, k),
            rescale=_rescale(ds),
            tile=(tiles, k),
        )
        for k in range(n_slices)
    ]


def _enhanced_frames(ds: Dataset, file_index: int) -> list[Frame]:
    """Frames of an enhanced (multi-frame) object from its functional groups."""
    shared = (
        ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    )
    frames = []
    for i, per_frame in enumerate(ds.PerFrameFunctionalGroupsSequence):

        def group(sequence: str, attribute: str, per_frame=per_frame):
            return _functional_group(per_frame, shared, sequence, attribute)

        spacing = _floats(group("PixelMeasuresSequence", "PixelSpacing"), 2)
        slope = _number(group("PixelValueTransformationSequence", "RescaleSlope"))
        intercept = _number(group("PixelValueTransformationSequence", "RescaleIntercept"))
        if slope is None:
            slope, intercept = _rescale(ds)
        temporal = _number(group("FrameContentSequence", "TemporalPositionIndex"))
        frames.append(
            Frame(
                rows=int(ds.Rows),
                columns=int(ds.Columns),
                position=_floats(group("PlanePositionSequence", "ImagePositionPatient"), 3),
                orientation=_floats(
                    group("PlaneOrientationSequence", "ImageOrientationPatient"), 6
                ),
                pixel_spacing=(float(spacing[0]), float(spacing[1]))
                if spacing is not None
                else _pixel_spacing(ds),
                thickness=_number(group("PixelMeasuresSequence", "SpacingBetweenSlices"))
                or _number(group("PixelMeasuresSequence", "SliceThickness")),
                order=(temporal or 0, i),
                source=(file_index, i),
                rescale=(slope, intercept or 0.0),
            )
        )
    return frames


def _functional_group(per_frame: Dataset, shared: Dataset | None, sequence: str, attribute: str):
    """An attribute from the per-frame functional group, else the shared one, else None."""
    for source in (per_frame, shared):
        if source is not None and sequence in source and len(source[sequence].value):
            item = source[sequence].value[0]
            if attribute in item:
                return item[attribute].value
    return None


def _classic_order(ds: Dataset) -> tuple[float, ...]:
    """Order among images at the same position: temporal position, times, number."""
    keys = ("TemporalPositionIdentifier", "TriggerTime", "AcquisitionTime", "InstanceNumber")
    return tuple(_number(ds.get(k)) or 0.0 for k in keys)


def _pixel_spacing(ds: Dataset) -> tuple[float, float]:
    for key in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        values = _floats(ds.get(key), 2)
        if values is not None and np.all(values > 0):
            return float(values[0]), float(values[1])
    return 1.0, 1.0


def _rescale(ds: Dataset) -> tuple[float, float]:
    slope = _number(ds.get("RescaleSlope"))
    intercept = _number(ds.get("RescaleIntercept"))
    return (1.0 if slope in (None, 0) else slope), (intercept or 0.0)


def _window(ds: Dataset) -> tuple[float | None, float | None]:
    def first(value):
        if value is None:
            return None
        if isinstance(value, pydicom.multival.MultiValue):
            value = value[0] if len(value) else None
        return _number(value)

    return first(ds.get("WindowCenter")), first(ds.get("WindowWidth"))


def _transfer_syntax(ds: Dataset):
    meta = getattr(ds, "file_meta", None)
    return getattr(meta, "TransferSyntaxUID", None) if meta is not None else None


def _floats(value, n: int) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, pydicom.dataelem.DataElement):
        value = value.value
    try:
        array = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return array if array.shape == (n,) and np.all(np.isfinite(array)) else None


def _number(value) -> float | None:
    if isinstance(value, pydicom.dataelem.DataElement):
        value = value.value
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _text(value) -> str | None:
    if isinstance(value, pydicom.dataelem.DataElement):
        value = value.value
    if value is None:
        return None
    text = str(value).strip()
    return text or None
