"""Ingest: a folder of scans into a cohort manifest (``medres ingest``).

:func:`build_cohort` discovers the scans under a folder (:func:`medres.io.discover`),
reads each one (unless ``verify_pixels=False``) and returns one manifest row per scan —
an unreadable scan is a row with ``status="error"`` — plus an :class:`IngestReport`;
labels are joined by :func:`medres.cohort.labels.join_labels`.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medres.cohort.labels import join_labels
from medres.cohort.manifest import COLUMNS, Cohort
from medres.errors import ManifestError, ScanError
from medres.io import discover, read_scan
from medres.io.names import path_text, safe_text


@dataclass
class IngestReport:
    """What an ingest found beyond the table: skipped files, duplicates, label matching."""

    root: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    label_key: str | None = None
    unmatched_labels: list[str] = field(default_factory=list)
    unlabelled_scans: list[str] = field(default_factory=list)
    seconds: float = 0.0


def build_cohort(
    root: str | Path,
    *,
    labels: str | Path | None = None,
    site: str | None = None,
    modality: str | None = None,
    verify_pixels: bool = True,
    progress=None,
) -> tuple[Cohort, IngestReport]:
    """Ingest a folder of scans into a cohort manifest.

    Args:
        root: the folder (any nesting; DICOM series may span sub-folders).
        labels: optional CSV keyed by one of :data:`LABEL_KEYS` with a ``label``
            column; other columns (``split``, ``patient_id``, ``site`` ...) join too.
        site: the site name for every scan (overrides InstitutionName).
        modality: the DICOM modality of the files that carry none (PNG/JPEG, NIfTI),
            e.g. ``DX`` for radiograph exports or ``CT`` for converted CT; a bundle
            trained on them then accepts DICOM of that modality, and a CT gets the CT
            preset. DICOM files keep their own.
        verify_pixels: decode every scan (catches truncated pixel data, NaN volumes,
            missing codecs) and record its shape, spacing and pixel hash. Without it
            only headers are read: DICOM geometry is still checked.
        progress: optional ``rich.progress.Progress``; one task per phase.

    Every unreadable scan becomes a row with ``status="error"``; nothing raises for a
    bad file. Raises ManifestError only for a bad labels file.
    """
    start = time.perf_counter()
    root = Path(root).resolve()
    if not root.exists():
        raise ManifestError(f"{root} does not exist; pass the folder holding your scans")
    advance = progress_task(progress, "Discovering scans", total=None)
    found = discover(root, progress=advance)
    rows = [_failure_row(f) for f in found.failures]
    rows += _scan_rows(found.scans, verify_pixels, progress)
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    if site is not None:
        table["site"] = site
    if modality is not None:
        table.loc[table["modality"].isin(["IMAGE", "NIFTI"]), "modality"] = _modality(modality)
    report = IngestReport(str(root), found.skipped, found.duplicates)
    if labels is not None:
        table = join_labels(table, labels, root, report)
    else:
        report.unlabelled_scans = table.loc[table["status"] == "ok", "scan_id"].tolist()
    report.seconds = time.perf_counter() - start
    meta = {"root": str(root), "verified_pixels": verify_pixels, "site": site}
    return Cohort(table, meta), report


def _scan_rows(sources: list, verify_pixels: bool, progress) -> list[dict[str, Any]]:
    """One manifest row per discovered scan; with ``verify_pixels`` each is read (its
    shape, spacing and pixel hash recorded, or its error)."""
    rows = []
    advance = progress_task(progress, "Reading scans", total=len(sources))
    for count, source in enumerate(sources, start=1):
        row = _source_row(source)
        if verify_pixels:
            try:
                volume = read_scan(source)
            except ScanError as e:
                row.update(status="error", error=safe_text(e.message), error_type=type(e).__name__)
            else:
                row.update(_volume_facts(volume))
        rows.append(row)
        if advance is not None:
            advance(count)
    return rows


def _modality(text: str) -> str:
    """A DICOM modality code (CS: upper-case letters and digits, at most 16), or ManifestError."""
    code = text.strip().upper()
    if not re.fullmatch(r"[A-Z0-9]{1,16}", code) or code in ("IMAGE", "NIFTI"):
        raise ManifestError(
            f"--modality {text!r} is not a DICOM modality code; give one such as DX, CR, CT, "
            "MR, US, OP"
        )
    return code


def _source_row(source) -> dict[str, Any]:
    meta = source.meta
    return {
        "scan_id": source.scan_id,
        "path": path_text(source.path),
        "files": [path_text(f) for f in source.files],
        "patient_id": meta.get("patient_id"),
        "study_uid": meta.get("study_uid"),
        "series_uid": meta.get("series_uid"),
        "modality": meta.get("modality") or source.kind.upper(),
        "site": meta.get("site"),
        "shape": meta.get("shape"),
        "spacing_mm": meta.get("spacing_mm"),
        "status": "ok",
    }


def _failure_row(failure) -> dict[str, Any]:
    row = {
        "scan_id": failure.scan_id or failure.path,
        "path": failure.path,
        "files": [path_text(f) for f in failure.files] or [failure.path],
        "status": "error",
        "error": safe_text(failure.message),
        "error_type": failure.error_type,
    }
    for key in ("patient_id", "study_uid", "series_uid", "modality", "site"):
        row[key] = failure.meta.get(key)
    return row


def _volume_facts(volume) -> dict[str, Any]:
    array = np.ascontiguousarray(volume.array)
    digest = hashlib.sha256(f"{array.shape}{array.dtype}".encode())
    digest.update(array.tobytes())
    facts = {
        "shape": list(array.shape),
        "spacing_mm": [round(s, 6) for s in volume.spacing_mm],
        "pixel_hash": digest.hexdigest(),
    }
    for key in ("modality", "patient_id", "study_uid", "series_uid", "site"):
        if volume.meta.get(key):
            facts[key] = volume.meta[key]
    return facts


def progress_task(progress, description: str, total: int | None):
    """A ``completed=n`` callback for a new task of a rich Progress (None: no progress)."""
    if progress is None:
        return None
    task = progress.add_task(description, total=total)
    return lambda n: progress.update(task, completed=n)
