"""Find the scans in a folder tree from file headers alone (no pixel data is decoded).

A *scan* is one NIfTI file, one PNG/JPEG, one DICOM object that stands alone (a
multi-frame file, or an image without patient geometry such as a radiograph), or a
DICOM series of single-frame files, which may span folders and share a folder with
other series. A series is split into separate scans by ImageType and EchoNumbers
(e.g. magnitude and phase), and a file duplicating an already-seen SOPInstanceUID is
counted, not read twice.
"""

from __future__ import annotations

import errno
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset

from medres.errors import ScanError
from medres.io.dicom import (
    frames_of,
    is_dicom_file,
    is_mosaic,
    is_multiframe,
    read_header,
    scan_meta,
    skip_reason,
)
from medres.io.geometry import Stack, stack_frames
from medres.io.image import is_image_path
from medres.io.names import path_text
from medres.io.nifti import is_nifti_path

ScanKind = Literal["dicom", "nifti", "image"]


@dataclass(frozen=True)
class ScanSource:
    """Where one scan's data lives.

    Attributes:
        kind: ``dicom``, ``nifti`` or ``image``.
        files: absolute paths of every file of the scan (sorted).
        scan_id: stable id: ``SeriesInstanceUID`` (``.2``, ``.3`` ... for further
            stacks of the same series) for a DICOM series, otherwise the path relative
            to the folder searched.
        meta: header facts (patient_id, study_uid, series_uid, modality, site ...).
    """

    kind: ScanKind
    files: tuple[str, ...]
    scan_id: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        """The scan's file, or the folder holding all of a series' files."""
        if len(self.files) == 1:
            return self.files[0]
        return os.path.commonpath(self.files)


FAILURE_COLUMNS = ("scan_id", "path", "stage", "error_type", "message")  # a failures.csv row


@dataclass(frozen=True)
class Failure:
    """A file or scan that could not be used, and why (DESIGN §3 failure row).

    ``stage`` is ``discover`` (the header could not be read), ``validate`` (the
    series' geometry is refused) or ``read`` (pixels could not be decoded).
    """

    path: str
    stage: str
    error_type: str
    message: str
    scan_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    files: tuple[str, ...] = ()

    @classmethod
    def from_error(cls, path: str, stage: str, error: ScanError, **kw) -> Failure:
        return cls(path, stage, type(error).__name__, error.message, **kw)


@dataclass
class Discovery:
    """What a folder holds: scans, files that failed, files skipped as not scans."""

    scans: list[ScanSource] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


def discover(root: str | Path, progress: Callable[[int], None] | None = None) -> Discovery:
    """Walk ``root`` (any nesting) and group its files into scans.

    Args:
        root: a folder, or a single file.
        progress: called with the number of files examined so far (for progress bars).

    Never raises for a bad file or folder: a folder that cannot be listed, a file that
    cannot be opened (permission, a broken or looping link) and a damaged DICOM header
    become a :class:`Failure`; files that are not scans are skipped with the reason.
    """
    return discover_with_headers(root, progress)[0]


def discover_with_headers(
    root: str | Path, progress: Callable[[int], None] | None = None
) -> tuple[Discovery, dict[str, Dataset]]:
    """:func:`discover`, and the header dataset of each DICOM file of its scans (by path),
    so that a reader of those scans need not parse the headers again."""
    root = Path(root).resolve()
    found = Discovery()
    dicom_headers: list[tuple[str, Dataset]] = []
    for count, path in enumerate(iter_files(root, found), start=1):
        _classify(path, root, found, dicom_headers)
        if progress is not None:
            progress(count)
    found.scans.extend(_group_dicom(dicom_headers, root, found))
    found.scans.sort(key=lambda s: s.files[0])
    return found, dict(dicom_headers)


def iter_files(root: Path, found: Discovery | None = None) -> Iterable[Path]:
    """Every file under ``root`` in a stable order, hidden files excluded.

    Links to folders outside ``root`` are followed; a link back to a folder already
    searched (a loop, or a second way in) is skipped with the reason. A folder that
    cannot be listed is a :class:`Failure` in ``found``.
    """
    if not root.is_dir():
        yield root
        return
    found = found if found is not None else Discovery()
    inside = os.path.realpath(root)
    seen: set[str] = set()

    def unlistable(error: OSError) -> None:
        found.failures.append(
            Failure(
                path_text(error.filename or root),
                "discover",
                "ScanReadError",
                f"cannot list this folder ({error.strerror}); the scans in it are left out: "
                "give medres read access to it (chmod / chown) or move them out",
                scan_id=path_text(_relative(Path(error.filename or root), root)),
            )
        )

    for folder, dirs, files in os.walk(root, onerror=unlistable, followlinks=True):
        kept = []
        for name in sorted(d for d in dirs if not d.startswith(".")):
            link = os.path.join(folder, name)
            reason = _link_reason(link, inside, seen) if os.path.islink(link) else None
            if reason:
                found.skipped.append((path_text(link), reason))
            else:
                kept.append(name)
        dirs[:] = kept
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(folder, name)


def _link_reason(link: str, inside: str, seen: set[str]) -> str | None:
    """Why a link to a folder is not followed (it leads back into the searched tree or
    to a folder already searched), or None: follow it (and remember its target). The
    reason names no path: run.json counts files by reason."""
    target = os.path.realpath(link)
    parent = os.path.realpath(os.path.dirname(link))
    if parent == target or parent.startswith(target.rstrip("/") + "/"):
        return "a symbolic link loop back to a folder above it (searched once)"
    if target == inside or target.startswith(inside + "/") or target in seen:
        return "a second way into a folder searched by its own path"
    seen.add(target)
    return None


def count_files(root: str | Path) -> int:
    return sum(1 for _ in iter_files(Path(root).resolve()))


def _classify(path: Path, root: Path, found: Discovery, headers: list) -> None:
    name = path.name.lower()
    relative = path_text(_relative(path, root))
    problem = _unopenable(path)
    if problem:
        found.failures.append(
            Failure(path_text(path), "discover", "ScanReadError", problem, scan_id=relative)
        )
    elif not path.is_file():
        found.skipped.append((path_text(path), "not a regular file (a FIFO, socket or device)"))
    elif name == "dicomdir":
        found.skipped.append((path_text(path), "DICOMDIR (a media index, not an image)"))
    elif is_nifti_path(path):
        found.scans.append(ScanSource("nifti", (str(path),), relative, {"format": "nifti"}))
    elif is_image_path(path):
        found.scans.append(ScanSource("image", (str(path),), relative, {"format": "image"}))
    elif name.endswith(".dcm") or is_dicom_file(path):
        try:
            ds = read_header(path)
        except ScanError as e:
            found.failures.append(
                Failure.from_error(path_text(path), "discover", e, scan_id=relative)
            )
            return
        reason = skip_reason(ds)
        if reason:
            found.skipped.append((path_text(path), reason))
        else:
            headers.append((str(path), ds))
    else:
        found.skipped.append((path_text(path), "not a scan file (extension not recognised)"))


def _unopenable(path: Path) -> str | None:
    """Why ``path`` cannot be opened (a looping or broken link, no permission), or None."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return (
                f"a symbolic link loop ({path_text(path)} -> {path_text(os.readlink(path))} "
                "-> ... leads back to itself); fix or remove the link"
            )
        if os.path.islink(path):
            return f"a broken symbolic link to {path_text(os.readlink(path))}; fix or remove it"
        return f"cannot open the file ({e.strerror}); give medres read access to it"
    if not os.access(path, os.R_OK):
        return "cannot read the file (permission denied); give medres read access to it"
    return None


def _group_dicom(headers: list[tuple[str, Dataset]], root: Path, found: Discovery):
    """DICOM files to scans: stand-alone objects alone, slices grouped into series."""
    series: dict[tuple, list[tuple[str, Dataset]]] = defaultdict(list)
    for path, ds in headers:
        stand_alone = is_multiframe(ds) and not is_mosaic(ds)
        if stand_alone or "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            yield ScanSource(
                "dicom", (path,), path_text(_relative(Path(path), root)), scan_meta(ds)
            )
        else:
            series[_stack_key(ds)].append((path, ds))
    names_per_series: dict[str, int] = defaultdict(int)
    for key in sorted(series, key=lambda k: (k[0], sorted(p for p, _ in series[k])[0])):
        members = _deduplicate(sorted(series[key], key=lambda m: m[0]), found)
        series_uid = key[0]
        names_per_series[series_uid] += 1
        n = names_per_series[series_uid]
        scan_id = series_uid if n == 1 else f"{series_uid}.{n}"
        files = tuple(path for path, _ in members)
        meta = scan_meta(members[0][1])
        try:  # geometry from headers: tilt, gaps and mixed stacks are caught without pixels
            frames = [f for i, (_, ds) in enumerate(members) for f in frames_of(ds, i)]
            stack = stack_frames(frames, scan_id)
        except ScanError as e:
            source = ScanSource("dicom", files, scan_id, meta)
            found.failures.append(
                Failure.from_error(
                    path_text(source.path), "validate", e, scan_id=scan_id, meta=meta, files=files
                )
            )
            continue
        meta["shape"] = _series_shape(stack, members[0][1])
        meta["spacing_mm"] = _spacing(stack)
        yield ScanSource("dicom", files, scan_id, meta)


def _series_shape(stack: Stack, ds: Dataset) -> list[int]:
    channels = 3 if int(ds.get("SamplesPerPixel", 1) or 1) > 1 else stack.n_volumes
    first = stack.layout[0][0]
    shape = [channels, first.columns, first.rows]
    return [*shape, stack.n_slices] if stack.n_slices > 1 else shape


def _spacing(stack: Stack) -> list[float]:
    norms = np.linalg.norm(stack.affine[:3, :3], axis=0)
    return [float(n) for n in norms[: 3 if stack.n_slices > 1 else 2]]


def _stack_key(ds: Dataset) -> tuple:
    """Images sharing this key belong to one stack (volume or 4D series)."""
    image_type = tuple(str(v) for v in (ds.get("ImageType") or []))
    return (
        str(ds.get("SeriesInstanceUID", "") or "no-series-uid"),
        image_type,
        str(ds.get("EchoNumbers", "")),
    )


def _deduplicate(members: list[tuple[str, Dataset]], found: Discovery):
    """Keep the first file of each SOPInstanceUID; later copies are listed as duplicates."""
    seen: set[str] = set()
    kept = []
    for path, ds in members:
        uid = str(ds.get("SOPInstanceUID", "") or path)
        if uid in seen:
            found.duplicates.append(path)
        else:
            seen.add(uid)
            kept.append((path, ds))
    return kept


def _relative(path: Path, root: Path) -> str:
    base = root if root.is_dir() else root.parent
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()
