"""DICOM headers: reading one file without its pixels, telling scans from other objects.

:func:`read_header` reads a Part 10 file or a dataset written without its preamble
(pixels only when asked) and refuses empty, non-DICOM and damaged files with a
:class:`~medres.errors.ScanReadError`;
:func:`skip_reason` names objects that are not scans (DICOMDIR, reports, RT objects);
:func:`scan_meta` keeps the identifying and display facts.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset, read_partial
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medres.errors import ScanReadError, first_line
from medres.io.dicom_values import number, text, transfer_syntax, window

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


def has_dicom_preamble(path: str | Path) -> bool:
    """True when ``path`` has the 128-byte preamble followed by ``DICM`` (Part 10 file)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


# A dataset written without preamble and 'DICM' (a C-STORE payload saved raw) opens with
# a File Meta element (0002,xxxx, always little endian) or an identifying one (0008,xxxx).
_RAW_FIRST_GROUPS = (0x0002, 0x0008)
_VRS = {vr.value.encode() for vr in pydicom.valuerep.VR if len(vr.value) == 2}
_ENCODING_SYNTAX = {  # pydicom's (implicit VR, little endian) to the transfer syntax
    (True, True): ImplicitVRLittleEndian,
    (False, True): ExplicitVRLittleEndian,
    (False, False): ExplicitVRBigEndian,
}


def looks_like_raw_dicom(path: str | Path) -> bool:
    """True when ``path`` starts directly with a DICOM element of group 0002 or 0008 (a
    dataset written without the preamble and ``DICM``, with or without file meta)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            size = Path(path).stat().st_size
    except OSError:
        return False
    if len(head) < 8:
        return False
    for order in "<>":
        group, _ = struct.unpack(f"{order}HH", head[:4])
        if group not in _RAW_FIRST_GROUPS:
            continue
        if head[4:6] in _VRS:  # explicit VR
            return True
        if order == "<" and struct.unpack("<I", head[4:8])[0] <= size - 8:  # implicit VR
            return True
    return False


def is_dicom_file(path: str | Path) -> bool:
    """A Part 10 file (preamble and ``DICM``) or a dataset written raw without them."""
    return has_dicom_preamble(path) or looks_like_raw_dicom(path)


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
            ds = _dcmread(path, pixels)
            _check_public(ds)
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


def _dcmread(path: Path, pixels: bool) -> Dataset:
    """pydicom's reading of ``path``; a dataset without preamble is read when its first
    bytes are a DICOM element (its transfer syntax then comes from pydicom's guess)."""
    try:
        return _read_dataset(path, pixels, force=False)
    except InvalidDicomError:
        if not looks_like_raw_dicom(path):
            raise
    ds = _read_dataset(path, pixels, force=True)
    meta = ds.file_meta
    if "TransferSyntaxUID" not in meta and ds.original_encoding in _ENCODING_SYNTAX:
        meta.TransferSyntaxUID = _ENCODING_SYNTAX[ds.original_encoding]
    return ds


def _read_dataset(path: Path, pixels: bool, force: bool) -> Dataset:
    """With ``pixels``, elements after the pixel data that end early (a trailing sequence
    cut in its last delimiters) are dropped, as dcm2niix does; any other damage raises."""
    try:
        if not pixels:
            return _read_before_pixels(path, force)
        return pydicom.dcmread(path, stop_before_pixels=False, force=force)
    except InvalidDicomError:
        raise
    except Exception:
        if not pixels:
            raise
        ds = _read_through_pixels(path, force)
        if ds is None:
            raise
        return ds


# The file offset where a header read stopped (the pixel data element, or the end of the
# file), kept on the dataset so that :func:`complete_pixels` reads only the rest.
_PIXELS_AT = "_medres_pixels_at"


def _read_before_pixels(path: Path, force: bool) -> Dataset:
    with open(path, "rb") as fh:
        ds = pydicom.dcmread(fh, stop_before_pixels=True, force=force)
        offset = fh.tell()
    ds.filename = str(path)
    if not getattr(transfer_syntax(ds), "is_deflated", False):  # else offsets are not the file's
        object.__setattr__(ds, _PIXELS_AT, offset)
    return ds


def complete_pixels(ds: Dataset, path: str | Path) -> Dataset:
    """What ``read_header(path, pixels=True)`` returns, given ``ds = read_header(path)``:
    only the elements from the pixel data on are read and parsed, and added to ``ds`` (the
    header is not parsed a second time). Whenever that is not possible (a deflated file, a
    read or parse error in that part), the whole file is read again by :func:`read_header`,
    so its damage handling and messages are today's."""
    offset = getattr(ds, _PIXELS_AT, None)
    if offset is None:
        return read_header(path, pixels=True)
    try:
        with warnings.catch_warnings():  # see read_header
            warnings.simplefilter("ignore")
            implicit, little = ds.original_encoding
            with open(path, "rb") as fh:
                fh.seek(offset)
                tail = read_dataset(fh, implicit, little)
            _check_public(tail)  # as read_header checks the header
            for tag in list(tail.keys()):
                ds[tag] = tail.get_item(tag)
    except MemoryError:  # read_scan names it
        raise
    except Exception:
        return read_header(path, pixels=True)
    object.__delattr__(ds, _PIXELS_AT)
    return ds


def _read_through_pixels(path: Path, force: bool) -> Dataset | None:
    """The file read up to and including its pixel data, or None if that fails too."""
    try:
        with open(path, "rb") as fh:
            ds = read_partial(fh, stop_when=_after_pixel_data, force=force)
    except Exception:
        return None
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        return None
    ds.filename = str(path)
    return ds


def _after_pixel_data(tag, vr, length) -> bool:
    return tag > 0x7FE00010


def _check_public(ds: Dataset) -> None:
    """Check every public element now for the damage that makes pydicom raise when the
    value is first read (pydicom defers conversion, so the error would otherwise come from
    wherever that is): each sequence is parsed, recursively, and each binary number's
    length must be a whole number of values. Those are the only conversions that can fail
    (text and byte values convert whatever they hold), so the rest stay raw until read,
    which saves converting every element of every file. Private elements are not checked."""
    for tag in list(ds.keys()):
        if tag.is_private:
            continue
        element = ds.get_item(tag)
        vr = element.VR if element.VR not in (None, "UN") else _dictionary_vr(tag)
        if vr == "SQ":
            for item in ds[tag].value:
                _check_public(item)
        elif (
            vr in _NUMBER_BYTES
            and isinstance(element, RawDataElement)
            and len(element.value or b"") % _NUMBER_BYTES[vr]
        ):
            ds[tag]  # pydicom's own conversion raises, with its message


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
        if key in ds and not (number(ds.get(key)) or 0) >= 1:
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


def scan_meta(ds: Dataset) -> dict[str, Any]:
    """Identifying and display facts kept with the scan (strings, numbers or None)."""
    window_center, window_width = window(ds)
    syntax = transfer_syntax(ds)
    return {
        "format": "dicom",
        "modality": text(ds.get("Modality")),
        "patient_id": text(ds.get("PatientID")),
        "study_uid": text(ds.get("StudyInstanceUID")),
        "series_uid": text(ds.get("SeriesInstanceUID")),
        "site": text(ds.get("InstitutionName")),
        "manufacturer": text(ds.get("Manufacturer")),
        "series_description": text(ds.get("SeriesDescription")),
        "body_part": text(ds.get("BodyPartExamined")),
        "photometric": text(ds.get("PhotometricInterpretation")),
        "transfer_syntax": syntax.name if syntax else None,
        "window_center": window_center,
        "window_width": window_width,
    }


# Bytes per value of the binary number VRs: a value of another length fails to convert.
_NUMBER_BYTES = {
    "US": 2,
    "SS": 2,
    "US or SS": 2,
    "UL": 4,
    "SL": 4,
    "FL": 4,
    "AT": 4,
    "FD": 8,
    "SV": 8,
    "UV": 8,
}


def _dictionary_vr(tag) -> str:
    """The VR the data dictionary gives ``tag`` (what pydicom converts an implicit-VR or
    UN element to), "UN" for a tag it does not know."""
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"
