"""The cohort manifest table: :class:`Cohort` (Parquet, versioned) and reading its scans.

See :mod:`medres.cohort` for the columns. ``Cohort.save`` writes the table with its
metadata (JSON under the ``medres`` key of the Parquet file's key-value metadata);
``Cohort.load`` reads it back and checks the format version.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from medres import __version__
from medres.errors import ManifestError, ScanError
from medres.files import FORMAT_KEY, atomic_write, check_format
from medres.io import Volume, read_scan
from medres.io.names import real_path
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
