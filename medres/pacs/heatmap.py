"""A scan's Grad-CAM heatmap as DICOM: a Parametric Map aligned frame by frame with the
source images, and an RGB Secondary Capture of the overlay PNG for viewers that do not
show parametric maps."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian

from medres.io.dicom import SliceSource, frame_count, is_multiframe
from medres.pacs.sr import (
    CODING_SCHEME,
    NOT_FOR_DIAGNOSIS,
    Identity,
    Producer,
    declare_coding_scheme,
)

ACTIVATION = Code("GRADCAM", CODING_SCHEME, "Class activation (Grad-CAM)")

# LPS axis letters of DICOM PatientOrientation, per world axis and sign
_AXIS_LETTERS = (("R", "L"), ("A", "P"), ("F", "H"))


def aligned_frames(
    cam: np.ndarray, slices: list[SliceSource], headers: dict[str, Dataset]
) -> tuple[list[Dataset], np.ndarray]:
    """The source images and the heatmap as their frames.

    Args:
        cam: the map on the scan's grid, float in [0, 1], ``(X, Y)`` or ``(X, Y, Z)``
            (X = columns, Y = rows, Z = slices in the reader's order).
        slices: :func:`medres.io.dicom.slice_sources` of the scan: slice k's file and frame.
        headers: each file's dataset (by path).

    Returns:
        ``(source_images, frames)``: frames ``(n, rows, columns)`` float32. Single-frame
        files: one source image per slice, frame k = slice k. One multi-frame file: that
        file, frame f = its frame f.

    Raises:
        ValueError: the sources have no patient frame of reference (a projection image
            such as CR or DX: a parametric map must be placed in patient space), the map
            does not fit the slices (shape), or the slices are tiles of a Siemens mosaic.
    """
    first = headers[slices[0].path]
    if "FrameOfReferenceUID" not in first:
        raise ValueError(
            "the source has no patient frame of reference (a projection image?), so no "
            "parametric map can be placed on it"
        )
    one_per_file = len({s.path for s in slices}) == len(slices)
    frames_of_one_file = is_multiframe(first) and frame_count(first) == len(slices)
    if not (one_per_file or frames_of_one_file):
        raise ValueError(
            "the slices are tiles of a mosaic or part of a 4D multi-frame object: no "
            "parametric map can be aligned to their frames"
        )
    cam = np.asarray(cam, dtype=np.float32)
    cam = cam[..., None] if cam.ndim == 2 else cam
    if cam.ndim != 3 or cam.shape[2] != len(slices):
        raise ValueError(f"a heatmap of shape {cam.shape} does not fit {len(slices)} slices")
    planes = np.ascontiguousarray(cam.transpose(2, 1, 0))  # (Z, rows = Y, columns = X)
    if planes.shape[1:] != (int(first.Rows), int(first.Columns)):
        raise ValueError(
            f"a heatmap of {planes.shape[2]} x {planes.shape[1]} pixels does not fit images "
            f"of {first.Columns} x {first.Rows}"
        )
    if one_per_file:
        return [headers[s.path] for s in slices], planes
    frames = np.empty_like(planes)
    for k, source in enumerate(slices):
        frames[source.frame] = planes[k]
    return [first], frames


def parametric_map(
    sources: Sequence[Dataset],
    frames: np.ndarray,
    producer: Producer,
    identity: Identity,
) -> hd.pm.ParametricMap:
    """The heatmap as a float Parametric Map on the sources' frames (from
    :func:`aligned_frames`): same plane positions, orientation and pixel spacing, each
    frame referencing its source image. Real-world values: class activation in [0, 1],
    unit UCUM ``1``."""
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="GRADCAM",
        lut_explanation="Grad-CAM class activation of the predicted class",
        unit=codes.UCUM.NoUnits,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
        quantity_definition=ACTIVATION,
    )
    pm = hd.pm.ParametricMap(
        source_images=list(sources),
        pixel_array=frames.astype(np.float32),
        **identity.highdicom(),
        manufacturer="medres",
        manufacturer_model_name=f"bundle {producer.bundle_id}",
        software_versions=producer.version,
        device_serial_number=producer.bundle_id,
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
        content_label="GRADCAM",
        content_description=f"Grad-CAM. {NOT_FOR_DIAGNOSIS}",
        content_qualification=hd.ContentQualificationValues.RESEARCH,
    )
    pm.Laterality = _laterality(sources[0])
    pm.SeriesDescription = identity.series_description
    pm.ImageComments = _comment(producer)
    declare_coding_scheme(pm)
    return pm


def secondary_capture(
    reference: Dataset,
    sources: Sequence[Dataset],
    rgb: np.ndarray,
    orientation: tuple[str, str] | None,
    producer: Producer,
    identity: Identity,
) -> hd.sc.SCImage:
    """The overlay PNG as an RGB Secondary Capture in ``reference``'s study and patient,
    its Source Image Sequence naming ``sources`` (the images the map was computed on).

    Args:
        rgb: ``(rows, columns, 3)`` uint8, the PNG as it is.
        orientation: PatientOrientation of the picture (row direction, column direction),
            e.g. ``("L", "P")``; None when unknown (then written empty).

    The picture holds the scan and the colour map, no text: BurnedInAnnotation NO.
    """
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=reference,
        pixel_array=np.ascontiguousarray(rgb, dtype=np.uint8),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        **identity.highdicom(),
        manufacturer="medres",
        patient_orientation=orientation or ("L", "P"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    if orientation is None:
        sc.PatientOrientation = None
    sc.Laterality = _laterality(reference)
    sc.SeriesDescription = identity.series_description
    sc.BurnedInAnnotation = "NO"
    sc.DerivationDescription = "Grad-CAM heatmap (jet, alpha 0.4) over the scan, by medres"
    sc.ImageComments = _comment(producer)
    sc.SourceImageSequence = [_reference(s) for s in sources]
    return sc


def patient_orientation(ds: Dataset) -> tuple[str, str] | None:
    """A 2D image's PatientOrientation as written, else the letters of the axes closest to
    its ImageOrientationPatient (row then column direction); None when neither is there."""
    written = [str(v) for v in (ds.get("PatientOrientation") or [])]
    if len(written) == 2 and all(written):
        return written[0], written[1]
    cosines = ds.get("ImageOrientationPatient")
    if not cosines or len(cosines) != 6:
        return None
    return _letter(np.asarray(cosines[:3], float)), _letter(np.asarray(cosines[3:], float))


def _letter(direction: np.ndarray) -> str:
    axis = int(np.argmax(np.abs(direction)))
    return _AXIS_LETTERS[axis][int(direction[axis] > 0)]


def _laterality(source: Dataset) -> str | None:
    """The General Series Laterality (type 2C) for an object derived from ``source``: the
    source's, else empty (unknown)."""
    return source.get("Laterality") or None


def _reference(ds: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    return item


def _comment(producer: Producer) -> str:
    return f"{NOT_FOR_DIAGNOSIS}. medres {producer.version}, bundle {producer.bundle_id}."
