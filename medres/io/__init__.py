"""Reading scans: ``read_scan(path) -> Volume`` for DICOM, NIfTI, PNG and JPEG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medres import errors
from medres.errors import ScanContentError, ScanReadError
from medres.io.dicom import is_dicom_file, read_dicom, sniff_file_type
from medres.io.discover import Discovery, Failure, ScanSource, discover, discover_with_headers
from medres.io.image import is_image_path, read_image
from medres.io.nifti import is_nifti_path, read_nifti
from medres.io.volume import Volume

__all__ = ["Discovery", "Failure", "ScanSource", "Volume", "discover", "read_scan"]


def read_scan(source: str | Path | Sequence[str | Path] | ScanSource) -> Volume:
    """Read one scan into a :class:`Volume`.

    Args:
        source: a NIfTI / PNG / JPEG / DICOM file; a folder holding exactly one scan
            (e.g. one DICOM series); a list of the DICOM files of one series; or a
            :class:`ScanSource` found by :func:`discover`.

    Raises:
        ScanReadError, ScanGeometryError, ScanContentError (all ``ScanError``); a scan
        within the budgets of :mod:`medres.limits` that still does not fit in memory is
        a ScanContentError too.
    """
    try:
        return _read(source)
    except MemoryError as e:
        name = source.scan_id if isinstance(source, ScanSource) else str(source)
        raise ScanContentError(
            name,
            "too large to decode in the memory available; decode it on a larger machine, or "
            "lower MEDRES_MAX_VOXELS so that such scans are refused before decoding",
        ) from e


def _read(source) -> Volume:
    if isinstance(source, ScanSource):
        return _read_source(source)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            return _read_folder(path)
        return _read_file(path)
    paths = [str(Path(p)) for p in source]
    if not paths:
        raise ScanReadError("<empty list>", "no files given")
    return read_dicom(paths, scan_id=paths[0] if len(paths) == 1 else str(Path(paths[0]).parent))


def _read_source(source: ScanSource, headers: dict | None = None) -> Volume:
    if source.kind == "nifti":
        return read_nifti(source.files[0])
    if source.kind == "image":
        return read_image(source.files[0])
    return read_dicom(list(source.files), scan_id=source.scan_id, headers=headers)


def _read_file(path: Path) -> Volume:
    if not path.exists():
        raise ScanReadError(str(path), "no such file")
    if is_nifti_path(path):
        return read_nifti(path)
    if is_image_path(path):
        return read_image(path)
    if path.suffix.lower() == ".dcm" or is_dicom_file(path):
        return read_dicom([str(path)], scan_id=str(path))
    kind = sniff_file_type(path)
    raise ScanReadError(
        str(path),
        "not a scan file: expected .dcm, .nii, .nii.gz, .png, .jpg or a DICOM file"
        + (f"; it looks like {kind}: rename it" if kind else ""),
    )


def _read_folder(path: Path) -> Volume:
    found, headers = discover_with_headers(path)  # each file's header is parsed once
    if len(found.scans) == 1:
        return _read_source(found.scans[0], headers)
    del headers
    if len(found.failures) == 1 and not found.scans:  # the folder's one scan was refused
        failure = found.failures[0]
        error_class = getattr(errors, failure.error_type, ScanReadError)
        raise error_class(failure.scan_id or failure.path, failure.message)
    if not found.scans:
        detail = f"; first failure: {found.failures[0].message}" if found.failures else ""
        raise ScanReadError(str(path), f"no readable scan in this folder{detail}")
    ids = ", ".join(s.scan_id for s in found.scans[:5])
    raise ScanReadError(
        str(path),
        f"the folder holds {len(found.scans)} scans ({ids}...); pass one series' files, "
        "or use `medres ingest` for a whole folder",
    )
