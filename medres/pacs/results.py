"""The results of ``medres predict`` as standard DICOM objects, in the source study.

For every predicted DICOM scan (a file or a series) :func:`write_results` writes into
``OUTDIR/dicom/<stem>/`` (``stem``: the scan's safe stem, as its ``explain/`` files):

- ``sr.dcm``: Comprehensive 3D SR, TID 1500 (:mod:`.sr`);
- with a heatmap (``medres predict --explain``): ``parametric_map.dcm``, the Grad-CAM map
  on the source frames, and ``secondary_capture.dcm``, the overlay PNG (:mod:`.heatmap`).

Every object carries the source's patient module and StudyInstanceUID and says it is not
for diagnostic use unless validated locally. The parametric map needs patient geometry:
projection images (CR, DX: no frame of reference) get the SR and the overlay only.

UIDs are derived, never random: an object's SOPInstanceUID from the bundle id, the source
SOPInstanceUIDs and its kind; its series UID from the bundle id, the study UID and the
kind. A rerun writes the same UIDs (a PACS replaces the objects instead of adding copies);
another bundle writes other ones. Files are written atomically, mode 0600: they hold
patient data. Nothing about the patient is logged.
"""

from __future__ import annotations

import datetime as dt
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from PIL import Image
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import generate_uid
from pydicom.valuerep import PersonName, validate_value

import medres
from medres.bundle import load_bundle
from medres.errors import ConfigError, ScanError, ScanReadError
from medres.files import atomic_write
from medres.io.dicom import SliceSource, is_dicom_file, read_header, slice_sources
from medres.io.discover import discover
from medres.io.names import real_path
from medres.pacs.heatmap import (
    aligned_frames,
    parametric_map,
    patient_orientation,
    secondary_capture,
)
from medres.pacs.query import RESULT_SERIES_PREFIX
from medres.pacs.sr import Finding, Identity, Producer, structured_report
from medres.predict.predictor import safe_stem

RESULTS_FOLDER = "dicom"
SERIES_NUMBERS = {"sr": 9901, "parametric_map": 9902, "secondary_capture": 9903}
SERIES_DESCRIPTIONS = {  # the prefix is how pull and listen know medres's own results
    kind: f"{RESULT_SERIES_PREFIX} {what}: not for diagnostic use unless validated locally"
    for kind, what in (
        ("sr", "report"),
        ("parametric_map", "heatmap"),
        ("secondary_capture", "overlay"),
    )
}
AXIAL_OVERLAY_ORIENTATION = ("L", "P")  # a 3D overlay PNG is a radiological axial slice

# Type 2 patient and study attributes the new objects copy: a source that lacks one (real
# files do) gets it empty, as the standard asks of a value that is unknown (see _complete)
PATIENT_STUDY_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)

NOT_DICOM = "not DICOM (PNG, JPEG or NIfTI)"
NO_HEATMAP = "no heatmap (predicted without --explain): SR only"


@dataclass
class ResultsSummary:
    """What :func:`write_results` did.

    Attributes:
        written: every file written, under ``OUTDIR/dicom/``.
        skipped: why rows, or objects of a row, were not written: reason -> count.
    """

    written: list[Path] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class _Scan:
    """One predicted DICOM scan: its headers by path and each slice's source."""

    headers: dict[str, Dataset]
    slices: list[SliceSource]

    @property
    def datasets(self) -> list[Dataset]:
        return list(self.headers.values())

    @property
    def reference(self) -> Dataset:
        return self.headers[self.slices[0].path]


def write_results(outdir: str | Path, bundle: str | Path) -> ResultsSummary:
    """Write the DICOM objects of every DICOM row of ``OUTDIR/predictions.parquet``.

    Args:
        outdir: a finished ``medres predict`` OUTDIR.
        bundle: the bundle folder that predicted it (a member of the ensemble that did).

    Rows whose source is not DICOM are counted in ``skipped``, as are rows whose source
    files are gone or unreadable and heatmaps that cannot be aligned to their source.

    Raises:
        ConfigError: ``outdir`` holds no predictions, the bundle did not predict them, or
            it is a regression bundle (its target has no coded unit to report; not
            supported).
        BundleError: the bundle fails verification.
    """
    outdir = Path(outdir)
    table_path = outdir / "predictions.parquet"
    if not table_path.is_file():
        raise ConfigError(f"{outdir} holds no predictions.parquet; pass a `medres predict` OUTDIR")
    loaded = load_bundle(bundle)
    if not loaded.info.kind.classifies:
        raise ConfigError(
            f"{loaded.path} is a regression bundle: its results are not written as DICOM "
            "(the target has no coded unit to report); use predictions.parquet"
        )
    table = pd.read_parquet(table_path)
    predicted_by = {i for ids in table["bundle_id"].dropna() for i in str(ids).split("+")}
    if loaded.id not in predicted_by:
        raise ConfigError(
            f"{table_path} was predicted by bundle {', '.join(sorted(predicted_by))}, "
            f"not by {loaded.id} ({loaded.path}); pass the bundle that predicted it"
        )
    producer = Producer(medres.__version__, loaded.id, loaded.checksum)
    summary = ResultsSummary()
    for row in table.to_dict("records"):
        with warnings.catch_warnings():  # highdicom's warnings quote values: patient names
            warnings.simplefilter("ignore")
            _write_row(outdir, row, producer, summary, loaded.class_names)
    return summary


def _write_row(
    outdir: Path,
    row: dict[str, Any],
    producer: Producer,
    summary: ResultsSummary,
    class_names: dict[str, str],
) -> None:
    """One row's objects into ``OUTDIR/dicom/<stem>/``; what is not written is counted.
    ``class_names``: the bundle's ``{class: display name}``, the SR's code meanings."""
    try:
        scan = _dicom_scan(row)
    except ScanError as e:
        summary.skipped[f"source unreadable ({type(e).__name__})"] += 1
        return
    if scan is None:
        summary.skipped[NOT_DICOM] += 1
        return
    heatmap_map, overlay = _text(row.get("heatmap_map")), _text(row.get("heatmap"))
    stem = _stem(heatmap_map) if heatmap_map else safe_stem(row["scan_id"], row["input_hash"])
    folder = outdir / RESULTS_FOLDER / stem
    when = _predicted_at(row)
    finding = Finding(
        predicted_class=str(row["predicted_class"]),
        confidence=float(row["confidence"]),
        conformal_set=tuple(c for c in (_text(row.get("conformal_set")) or "").split("|") if c),
        ood=bool(row["ood"]),
        refer=bool(row["refer"]),
        refer_reason=_text(row.get("refer_reason")) or "",
        class_names=class_names,
    )
    sr = structured_report(scan.datasets, finding, producer, _identity(producer, scan, "sr"))
    summary.written.append(_save(sr, folder / "sr.dcm", when))
    if not heatmap_map:
        summary.skipped[NO_HEATMAP] += 1
        return
    cam = _load_map(outdir / heatmap_map)
    try:
        sources, frames = aligned_frames(cam, scan.slices, scan.headers)
    except ValueError as e:
        summary.skipped[f"parametric map not aligned: {e}"] += 1
    else:
        identity = _identity(producer, scan, "parametric_map")
        pm = parametric_map(sources, frames, producer, identity)
        summary.written.append(_save(pm, folder / "parametric_map.dcm", when))
    rgb = np.asarray(Image.open(outdir / overlay).convert("RGB"))  # (rows, columns, 3)
    orientation = (
        AXIAL_OVERLAY_ORIENTATION if cam.ndim == 3 else patient_orientation(scan.reference)
    )
    identity = _identity(producer, scan, "secondary_capture")
    sc = secondary_capture(scan.reference, scan.datasets, rgb, orientation, producer, identity)
    summary.written.append(_save(sc, folder / "secondary_capture.dcm", when))


def _dicom_scan(row: dict[str, Any]) -> _Scan | None:
    """The row's DICOM files, headers and slice sources; None when it is not DICOM.

    A series row's ``path`` is the folder holding its files (with perhaps other series):
    the files are found again by the series' scan id, as ``medres predict`` found them.

    Raises:
        ScanError: the files are gone, or their headers cannot be read or stacked.
    """
    path = Path(real_path(str(row["path"])))
    if path.is_dir():
        found = discover(path)
        match = [s for s in found.scans if s.scan_id == row["scan_id"] and s.kind == "dicom"]
        if not match:
            raise ScanReadError(str(path), "the series is no longer in this folder")
        files = list(match[0].files)
    elif path.is_file() and is_dicom_file(path):
        files = [str(path)]
    elif path.exists():
        return None
    else:
        raise ScanReadError(str(path), "the file is gone")
    headers = {f: read_header(f) for f in files}
    for ds in headers.values():
        _complete(ds)
    return _Scan(headers, slice_sources(files, headers))


def _complete(ds: Dataset) -> None:
    """Fit a source header for copying into the new objects: patient-module and Type 2
    study values invalid for their VR (e.g. a PatientAge of ``0Y``) are dropped, the Type 2
    ones that are missing added empty; an image placed in patient space gets an empty
    SliceThickness when it has none and, without a FrameOfReferenceUID (stripped by some
    anonymisers), one derived from its series UID: the same for every file of the series
    and every run."""
    for element in list(ds):
        copied = element.tag.group == 0x0010 or element.keyword in PATIENT_STUDY_TYPE2
        if copied and not _valid(element):
            del ds[element.tag]
    for keyword in PATIENT_STUDY_TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, None)
    if "ImageOrientationPatient" in ds and "SliceThickness" not in ds:
        ds.SliceThickness = None
    if "FrameOfReferenceUID" not in ds and "ImageOrientationPatient" in ds:
        series = str(ds.get("SeriesInstanceUID", ""))
        ds.FrameOfReferenceUID = generate_uid(entropy_srcs=["medres frame of reference", series])


def _valid(element: DataElement) -> bool:
    """Whether every text value of ``element`` is valid for its VR (other values: True)."""
    values = element.value if isinstance(element.value, MultiValue) else [element.value]
    try:
        for value in values:
            if isinstance(value, str | PersonName) and str(value):
                validate_value(element.VR, str(value), config.RAISE)
    except ValueError:
        return False
    return True


def _identity(producer: Producer, scan: _Scan, kind: str) -> Identity:
    """An object's deterministic series and instance UIDs, numbers and description.

    ``sop_uid``: from the bundle id, every source SOPInstanceUID (in slice order) and the
    kind; ``series_uid``: from the bundle id, the source series UID and the kind (one
    result series per source series, so a series never mixes frames of reference).
    """
    series_uid = str(scan.reference.SeriesInstanceUID)
    source_uids = [s.sop_instance_uid for s in scan.slices]
    number = scan.reference.get("InstanceNumber")
    return Identity(
        series_uid=generate_uid(entropy_srcs=[producer.bundle_id, series_uid, kind]),
        sop_uid=generate_uid(entropy_srcs=[producer.bundle_id, *source_uids, kind]),
        series_number=SERIES_NUMBERS[kind],
        instance_number=int(number) if number not in (None, "") else 1,
        series_description=SERIES_DESCRIPTIONS[kind],
    )


def _load_map(path: Path) -> np.ndarray:
    """A heatmap file of ``medres predict --explain``: (X, Y) ``.npy`` or (X, Y, Z) NIfTI."""
    if path.suffix == ".npy":
        return np.load(path)
    return np.asarray(nib.load(path).dataobj, dtype=np.float32)


def _save(dataset: Dataset, path: Path, when: dt.datetime) -> Path:
    """Write ``dataset`` atomically, mode 0600, dated ``when`` (the prediction's time, UTC):
    its content, creation and series date and time (so viewers list the series by date),
    instead of the time of writing, so that writing the same results again gives the same
    bytes and a push sends only what changed."""
    for name in ("Content", "InstanceCreation", "Series"):
        setattr(dataset, f"{name}Date", when.strftime("%Y%m%d"))
        setattr(dataset, f"{name}Time", when.strftime("%H%M%S"))
    if "DateOfSecondaryCapture" in dataset:
        dataset.DateOfSecondaryCapture = when.strftime("%Y%m%d")
        dataset.TimeOfSecondaryCapture = when.strftime("%H%M%S")
    for item in dataset.get("ContributingEquipmentSequence", []):  # highdicom: "now"
        if "ContributionDateTime" in item:
            item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S")
    return atomic_write(path, lambda tmp: dataset.save_as(tmp), private=True)


def _predicted_at(row: dict[str, Any]) -> dt.datetime:
    """The row's ``predicted_at`` (ISO 8601, UTC), or now when it has none."""
    text = _text(row.get("predicted_at"))
    try:
        return dt.datetime.fromisoformat(text) if text else dt.datetime.now(dt.UTC)
    except ValueError:
        return dt.datetime.now(dt.UTC)


def _stem(heatmap_map: str) -> str:
    name = Path(heatmap_map).name
    return name.removesuffix(".nii.gz").removesuffix(".npy")


def _text(value: Any) -> str | None:
    """A table cell as text; None for a missing value (null, NaN) or empty text."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    return str(value)
