"""The frames of one DICOM object and their geometry, from headers alone.

Classic single-frame images, legacy multi-frame objects (cine, ultrasound: frames not
placed in space), enhanced multi-frame objects (per-frame functional groups) and
Siemens mosaics (a grid of slices in one file, placed from the CSA header). Each
:class:`~medres.io.geometry.Frame` carries its position and orientation (patient
coordinates, mm), pixel spacing (mm), rescale and where its pixels are in the files.
"""

from __future__ import annotations

import warnings

import numpy as np
from pydicom.dataset import Dataset

from medres.errors import ScanContentError, ScanReadError
from medres.io.dicom_values import floats, number, pixel_spacing, rescale, text
from medres.io.geometry import Frame
from medres.limits import over_budget

with warnings.catch_warnings():  # nibabel warns that its DICOM *series* readers are young;
    warnings.simplefilter("ignore")  # we use only its per-file Siemens CSA/mosaic parsing.
    from nibabel.nicom import dicomwrappers


def is_multiframe(ds: Dataset) -> bool:
    return frame_count(ds) > 1


def frame_count(ds: Dataset) -> int:
    """NumberOfFrames, read as 1 when absent, empty, zero, negative or not a number."""
    return max(1, int(number(ds.get("NumberOfFrames")) or 1))


def frames_of(ds: Dataset, file_index: int = 0) -> list[Frame]:
    """The frames of one DICOM object with their geometry (headers only).

    Raises:
        ScanContentError: the object declares more values than :mod:`medres.limits` allows.
    """
    n_frames = frame_count(ds)
    problem = over_budget((int(ds.Columns), int(ds.Rows), n_frames), samples_per_pixel(ds))
    if problem:
        raise ScanContentError(str(getattr(ds, "filename", "") or "scan"), problem)
    if "PerFrameFunctionalGroupsSequence" in ds:
        return _enhanced_frames(ds, file_index)
    if is_mosaic(ds):
        return _mosaic_frames(ds, file_index)
    position = floats(ds.get("ImagePositionPatient"), 3)
    orientation = floats(ds.get("ImageOrientationPatient"), 6)
    common = {
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "pixel_spacing": pixel_spacing(ds),
        "thickness": number(ds.get("SpacingBetweenSlices")) or number(ds.get("SliceThickness")),
        "rescale": rescale(ds),
    }
    if n_frames == 1:
        return [
            Frame(
                position=position,
                orientation=orientation,
                order=classic_order(ds),
                source=(file_index, 0),
                **common,
            )
        ]
    # Legacy multi-frame (cine, US, secondary capture): frames are not placed in space.
    return [
        Frame(position=None, orientation=None, order=(f,), source=(file_index, f), **common)
        for f in range(n_frames)
    ]


def samples_per_pixel(ds: Dataset) -> int:
    """Values per pixel once decoded: 3 for colour (a palette becomes RGB), else 1."""
    return 3 if is_colour(ds) else 1


def is_colour(ds: Dataset) -> bool:
    """Decoded pixels carry 3 samples: RGB/YBR, or a palette expanded to RGB."""
    palette = text(ds.get("PhotometricInterpretation")) == "PALETTE COLOR"
    return palette or int(ds.get("SamplesPerPixel", 1) or 1) > 1


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
    order = classic_order(ds)
    return [
        Frame(
            rows=rows,
            columns=columns,
            position=corner + k * step * normal,
            orientation=floats(ds.get("ImageOrientationPatient"), 6),
            pixel_spacing=pixel_spacing(ds),
            thickness=step,
            order=order,
            source=(file_index, k),
            rescale=rescale(ds),
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

        spacing = floats(group("PixelMeasuresSequence", "PixelSpacing"), 2)
        slope = number(group("PixelValueTransformationSequence", "RescaleSlope"))
        intercept = number(group("PixelValueTransformationSequence", "RescaleIntercept"))
        if slope is None:
            slope, intercept = rescale(ds)
        temporal = number(group("FrameContentSequence", "TemporalPositionIndex"))
        frames.append(
            Frame(
                rows=int(ds.Rows),
                columns=int(ds.Columns),
                position=floats(group("PlanePositionSequence", "ImagePositionPatient"), 3),
                orientation=floats(group("PlaneOrientationSequence", "ImageOrientationPatient"), 6),
                pixel_spacing=(float(spacing[0]), float(spacing[1]))
                if spacing is not None
                else pixel_spacing(ds),
                thickness=number(group("PixelMeasuresSequence", "SpacingBetweenSlices"))
                or number(group("PixelMeasuresSequence", "SliceThickness")),
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


def classic_order(ds: Dataset) -> tuple[float, ...]:
    """Order among images at the same position: temporal position, times, number."""
    keys = ("TemporalPositionIdentifier", "TriggerTime", "AcquisitionTime", "InstanceNumber")
    return tuple(number(ds.get(k)) or 0.0 for k in keys)
