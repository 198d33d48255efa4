"""The cohort manifest: one row per scan, saved as Parquet (DESIGN §3).

Columns (docs/formats.md "Cohort manifest" is the written contract):

==============  ==========================================================
scan_id         unique, stable id of the scan (series UID, or relative path)
path            the scan's file, or the folder holding a DICOM series
files           every file of the scan (a DICOM series spans many)
patient_id      PatientID from the header or the labels file; null if unknown
study_uid       StudyInstanceUID (null for non-DICOM)
series_uid      SeriesInstanceUID (null for non-DICOM)
modality        DICOM Modality, or ``NIFTI`` / ``IMAGE`` when the file has none
site            InstitutionName, or ``--site``
shape           array shape, channels first: [C, X, Y] or [C, X, Y, Z]
spacing_mm      voxel size per spatial axis in mm
pixel_hash      sha256 of the decoded pixels (finds duplicates across splits)
label           the label joined from the labels file (null if none)
split           train / val / test (null until ``medres split``)
status          ``ok`` or ``error``
error           the reason a scan could not be read (null when ok)
error_type      the error's class name (ScanReadError, ...)
==============  ==========================================================

The Parquet file's key-value metadata holds ``medres`` JSON: the format version
(``format``, :data:`FORMAT`), the medres version, the folder ingested, and flags such as
``split_by`` (``patient`` or ``scan``). docs/formats.md is the written contract.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from rich.table import Table

from medres import __version__
from medres.errors import ManifestError, ScanError
from medres.files import FORMAT_KEY, atomic_write, check_format
from medres.io import Volume, discover, read_scan
from medres.io.names import path_text, real_path, safe_text
from medres.io.volume import is_colour

COLUMNS: tuple[str, ...] = (
    "scan_id",
    "path",
    "files",
    "patient_id",
    "study_uid",
    "series_uid",
    "modality",
    "site",
    "shape",
    "spacing_mm",
    "pixel_hash",
    "label",
    "split",
    "status",
    "error",
    "error_type",
)
SPLITS: tuple[str, ...] = ("train", "val", "test")
_META_KEY = b"medres"
FORMAT = 1  # the manifest's format version (docs/formats.md#cohort-manifest)
READS = (1,)  # the major versions Cohort.load reads (no version: written before versions, 1)


@dataclass
class Cohort:
    """A manifest table plus its metadata.

    Attributes:
        table: one row per scan with :data:`COLUMNS` (extra columns are kept).
        meta: JSON-serialisable facts about the cohort (version, root, split flags).
    """

    table: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [c for c in COLUMNS if c not in self.table.columns]
        if missing:
            raise ManifestError(
                f"cohort manifest lacks columns {missing}; "
                "rebuild it with `medres ingest FOLDER -o COHORT.parquet`"
            )
        dup = self.table["scan_id"][self.table["scan_id"].duplicated()].unique().tolist()
        if dup:
            raise ManifestError(f"scan_id must be unique; repeated: {dup[:5]}")

    @property
    def ok(self) -> pd.DataFrame:
        """The rows whose scan was read successfully."""
        return self.table[self.table["status"] == "ok"]

    def labelled(self, split: str) -> pd.DataFrame:
        """The readable, labelled rows of one split (``train`` / ``val`` / ``test``)."""
        ok = self.ok
        return ok[(ok["split"] == split) & ok["label"].notna()]

    def fingerprint(self) -> str:
        """sha256 of the readable rows (scan id, pixel hash, label, split): the same
        scans with the same labels and splits give the same fingerprint."""
        cols = ["scan_id", "pixel_hash", "label", "split"]
        table = self.ok[cols].astype(str).sort_values("scan_id")
        return hashlib.sha256(table.to_csv(index=False).encode()).hexdigest()

    def save(self, path: str | Path) -> Path:
        """Write the manifest to ``path`` (Parquet) atomically, mode 0600 (it holds
        patient ids: README "Privacy of outputs"); returns the path."""
        path = Path(path)
        meta = {"version": __version__, **self.meta, FORMAT_KEY: FORMAT}
        table = pa.Table.from_pandas(self.table, preserve_index=False)
        schema_meta = dict(table.schema.metadata or {})
        schema_meta[_META_KEY] = json.dumps(meta).encode()
        table = table.replace_schema_metadata(schema_meta)
        atomic_write(path, lambda tmp: pq.write_table(table, tmp), private=True)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Cohort:
        """Read a manifest written by :meth:`save`; ManifestError if it is not one."""
        path = Path(path)
        if not path.is_file():
            raise ManifestError(
                f"no cohort manifest at {path}; create one with "
                f"`medres ingest FOLDER -o {path.name}`"
            )
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as e:
            raise ManifestError(f"{path} is not a readable Parquet manifest: {e}") from e
        raw = (table.schema.metadata or {}).get(_META_KEY)
        meta = json.loads(raw) if raw else {}
        check_format(path, meta.get(FORMAT_KEY), READS, ManifestError)
        return cls(table.to_pandas(), meta)


def real_files(files) -> list[str]:
    """A manifest row's ``files`` as the names on disk (``\\xNN`` escapes undone)."""
    return [real_path(str(f)) for f in files]


def read_row(row) -> Volume:
    """Read the scan a manifest row points at (its ``files``), with its ``scan_id`` in meta.

    Raises:
        ScanError: the file changed or vanished since ingest.
    """
    files = real_files(row["files"])
    volume = read_scan(files[0] if len(files) == 1 else files)
    if row.get("scan_id") is not None:
        volume.meta["scan_id"] = row["scan_id"]
    return volume


# --------------------------------------------------------------------------- ingest

LABEL_KEYS: tuple[str, ...] = ("path", "scan_id", "series_uid", "study_uid", "patient_id")
# label cells that mean "no label": pandas' default NA spellings, matched exactly after
# stripping spaces (so "none" or "unknown" are not among them: next to numeric labels
# they are refused, see _typed_labels); empty and whitespace-only cells are missing too
MISSING_LABELS: frozenset[str] = frozenset(
    {"NaN", "nan", "-NaN", "-nan", "NA", "N/A", "n/a", "#N/A", "#N/A N/A", "#NA", "<NA>"}
    | {"NULL", "null", "None", "1.#IND", "-1.#IND", "1.#QNAN", "-1.#QNAN"}
)


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
    advance = progress_task(progress, "Reading scans", total=len(found.scans))
    for count, source in enumerate(found.scans, start=1):
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


def join_labels(table: pd.DataFrame, labels: str | Path, root: Path, report: IngestReport):
    """Join a labels CSV onto the manifest (see :data:`LABEL_KEYS` for the key column).

    A ``label`` cell that is empty, only spaces, or one of :data:`MISSING_LABELS`
    (``NaN``, ``nan``, ``NA``, ``N/A``, ``n/a``, ``#N/A``, ``<NA>``, ``NULL``, ``null``,
    ``None`` ...) leaves its scan unlabelled; labels are stripped of surrounding spaces.
    Only the label column reads these spellings as missing: in the other columns only an
    empty cell is missing (a patient id ``NA`` stays an id). Labels that mix numbers and
    words (``0``, ``1``, ``unknown``) are refused with ManifestError, as a model would
    learn the word as one more class; labels all numbers or all words are accepted.
    """
    labels = Path(labels)
    try:
        given = pd.read_csv(labels, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ManifestError(f"cannot read labels file {labels}: {e}") from e
    key = next((k for k in LABEL_KEYS if k in given.columns), None)
    if key is None or "label" not in given.columns:
        raise ManifestError(
            f"{labels} needs a 'label' column and one key column among {list(LABEL_KEYS)}; "
            f"found columns {list(given.columns)}"
        )
    given = given.replace("", None)
    given["label"] = _missing_labels_blank(given["label"])
    repeated = given[key][given[key].duplicated()].unique().tolist()
    if repeated and key != "patient_id":
        raise ManifestError(f"{labels}: {key} values repeat ({repeated[:5]}); each must be unique")
    if key == "patient_id":
        given = _one_label_per_patient(given, labels)
    report.label_key = key
    ids = table[key].astype("string")
    if key == "path":  # accept paths relative to the ingested folder or absolute
        ids = table["path"].map(lambda p: _relative_to(p, root))
        given["path"] = given["path"].map(lambda p: _relative_to(p, root))
    lookup = given.set_index(key)
    matched = ids.isin(lookup.index)
    for column in [c for c in lookup.columns if c != key]:
        values = ids.map(lookup[column])
        if column in table.columns and column != "label":
            table[column] = table[column].where(table[column].notna(), values)
        else:
            table[column] = values
    table["label"] = _typed_labels(table["label"], source=labels)
    report.unmatched_labels = sorted(set(lookup.index) - set(ids[matched]))
    ok = table["status"] == "ok"
    report.unlabelled_scans = table.loc[ok & table["label"].isna(), "scan_id"].tolist()
    return table


def summary_tables(cohort: Cohort, report: IngestReport | None = None):
    """Rich tables for the terminal: scans by status/reason, patients, classes, sites."""
    t = cohort.table
    ok = t[t["status"] == "ok"]
    overview = Table(title="Cohort", show_header=False)
    overview.add_row("scans ok", str(len(ok)))
    overview.add_row("scans with errors", str(int((t["status"] == "error").sum())))
    overview.add_row("patients", _patients_text(ok))
    overview.add_row("classes", _counts_text(ok["label"]))
    overview.add_row("sites", _counts_text(ok["site"]))
    overview.add_row("modalities", _counts_text(ok["modality"]))
    if report is not None:
        overview.add_row("files skipped (not scans)", str(len(report.skipped)))
        overview.add_row("duplicate files ignored", str(len(report.duplicates)))
        if report.label_key:
            overview.add_row("labels joined on", report.label_key)
            overview.add_row("labels matching no scan", str(len(report.unmatched_labels)))
        overview.add_row("scans without a label", str(len(report.unlabelled_scans)))
        overview.add_row("seconds", f"{report.seconds:.2f}")
    errors = Table(title="Errors by reason")
    errors.add_column("type")
    errors.add_column("reason")
    errors.add_column("scans", justify="right")
    failed = t[t["status"] == "error"]
    grouped = failed.groupby(["error_type", failed["error"].map(_reason)], dropna=False).size()
    for (kind, reason), n in grouped.sort_values(ascending=False).items():
        errors.add_row(str(kind), str(reason), str(n))
    return [overview, errors] if len(failed) else [overview]


def _modality(text: str) -> str:
    """A DICOM modality code (CS: upper-case letters and digits, at most 16), or ManifestError."""
    code = text.strip().upper()
    if not re.fullmatch(r"[A-Z0-9]{1,16}", code) or code in ("IMAGE", "NIFTI"):
        raise ManifestError(
            f"--modality {text!r} is not a DICOM modality code; give one such as DX, CR, CT, "
            "MR, US, OP"
        )
    return code


def photometric(rows: pd.DataFrame, sample: int = 16) -> str:
    """``colour`` when any of ``sample`` scans (spread over ``rows``) with 3+ channels holds
    colour (:func:`medres.io.volume.is_colour`), else ``grey``; unreadable ones are passed."""
    shapes = rows["shape"].map(lambda s: s is not None and len(s) > 0 and int(s[0]) >= 3)
    multi = rows[shapes.astype(bool)]
    for _, row in multi.iloc[:: max(1, len(multi) // sample)].head(sample).iterrows():
        try:
            if is_colour(read_row(row)):
                return "colour"
        except ScanError:
            continue
    return "grey"


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


def _missing_labels_blank(labels: pd.Series) -> pd.Series:
    """Label cells stripped of spaces; :data:`MISSING_LABELS` and blank cells -> None."""
    text = labels.astype(object).map(lambda v: v.strip() if isinstance(v, str) else v)
    missing = text.isna() | text.isin(MISSING_LABELS | {""})
    return text.where(~missing, None)


def _typed_labels(labels: pd.Series, source: str | Path = "the labels file") -> pd.Series:
    """Integers if every label is an integer, else floats if numeric, else strings.

    ManifestError when some labels are numbers and others words (``0``, ``1``,
    ``unknown``): the message names both kinds and ``source``.
    """
    present = labels.dropna()
    numeric = pd.to_numeric(present.astype(object), errors="coerce").notna()
    if numeric.any() and not numeric.all():
        words = present[~numeric].value_counts()
        numbers = sorted(present[numeric].astype(str).unique(), key=lambda v: float(v))
        named = ", ".join(f"{w!r} ({n} scans)" for w, n in words.head(10).items())
        more = f" and {len(words) - 10} more" if len(words) > 10 else ""
        raise ManifestError(
            f"{source}: the labels mix numbers ({', '.join(map(repr, numbers[:10]))}) and "
            f"words ({named}{more}); a model would learn each word as one more class. Fix "
            "the labels file so every label is a number (or every label a word), or blank "
            "the cells of scans that have no label (empty, NA and NaN cells leave a scan "
            "unlabelled)"
        )
    for dtype in ("Int64", "Float64"):
        try:
            return pd.to_numeric(labels, errors="raise").astype(dtype)
        except (ValueError, TypeError):
            continue
    return labels.astype("string")


def _one_label_per_patient(given: pd.DataFrame, labels: Path) -> pd.DataFrame:
    conflicting = given.groupby("patient_id")["label"].nunique()
    conflicting = conflicting[conflicting > 1].index.tolist()
    if conflicting:
        raise ManifestError(
            f"{labels}: patients with more than one label ({conflicting[:5]}); key the labels "
            "by scan_id or path instead"
        )
    return given.drop_duplicates("patient_id")


def _relative_to(path: str, root: Path) -> str:
    p = Path(path)
    if p.is_absolute():
        try:
            return p.relative_to(root).as_posix()
        except ValueError:
            return p.as_posix()
    return p.as_posix()


def _reason(message) -> str:
    """The error message up to its first colon (60 characters at most): groups similar errors."""
    text = str(message)
    return text.split(":")[0][:60] if text else ""


def _counts_text(values: pd.Series) -> str:
    counts = values.value_counts(dropna=False)
    return ", ".join(f"{'∅' if pd.isna(k) else k}: {n}" for k, n in counts.items()) or "-"


def _patients_text(ok: pd.DataFrame) -> str:
    missing = int(ok["patient_id"].isna().sum())
    text = str(ok["patient_id"].nunique())
    return text + (f" ({missing} scans without a patient id)" if missing else "")


def progress_task(progress, description: str, total: int | None):
    """A ``completed=n`` callback for a new task of a rich Progress (None: no progress)."""
    if progress is None:
        return None
    task = progress.add_task(description, total=total)
    return lambda n: progress.update(task, completed=n)
