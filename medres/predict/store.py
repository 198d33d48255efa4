"""The output folder of a prediction run: crash-safe chunks, resume, final tables.

Layout of ``OUTDIR``::

    job.json              what the rows were predicted with (bundles + options); a rerun
                          with other bundles or options is refused, so rows never mix
    .parts/part-*.parquet prediction rows written while the run goes, one atomic file a
                          chunk (temporary file + rename): a kill -9 loses at most the
                          chunk in flight
    predictions.parquet   one row per scan predicted into OUTDIR, this run's and earlier ones'
                          (merged from the parts when the run ends)
    predictions.csv       the same table as CSV
    failures.csv          one row per scan that could not be predicted (header always)
    run.json              counts, timings, scans per second, options

A rerun reads the rows already written (parts and the final table) and skips the scans
whose (scan_id, input hash) they hold, so it completes the rest without duplicates.

Format versions (docs/formats.md): ``job.json`` and ``run.json`` carry ``"format": 1``,
the Parquet files ``{"format": 1, ...}`` JSON under the ``medres`` key of their key-value
metadata; the CSVs are of the version of the ``job.json`` beside them. Files written
before versions existed read as version 1; another major version is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from medres import __version__
from medres.errors import ConfigError
from medres.files import FORMAT_KEY, atomic_write, check_format, write_json, write_text
from medres.io.discover import FAILURE_COLUMNS

JOB = "job.json"
RUN = "run.json"
PARTS = ".parts"
PREDICTIONS = "predictions.parquet"
FORMAT = 1  # of job.json, run.json, the prediction tables and failures.csv
READS = (1,)  # the major versions this medres reads (no version: before versions, 1)
_META_KEY = b"medres"


def read_job(path: str | Path, error: type[Exception] = ConfigError) -> dict[str, Any]:
    """The prediction contract in a ``job.json`` (its ``format`` key checked and left out,
    so a job.json written before versions existed gives the same contract)."""
    job = json.loads(Path(path).read_text())
    if not isinstance(job, dict):
        raise error(f"{path} holds no JSON object; it is not a medres job.json")
    check_format(path, job.pop(FORMAT_KEY, None), READS, error)
    return job


def read_run(path: str | Path, error: type[Exception] = ConfigError) -> dict[str, Any]:
    """A ``run.json`` summary, its ``format`` checked (kept in the returned dict)."""
    run = json.loads(Path(path).read_text())
    if not isinstance(run, dict):
        raise error(f"{path} holds no JSON object; it is not a medres run.json")
    check_format(path, run.get(FORMAT_KEY), READS, error)
    return run


def write_predictions(table: pd.DataFrame, path: str | Path) -> Path:
    """Write prediction rows as Parquet (atomically, mode 0600) with the format version
    in the ``medres`` key-value metadata."""
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    meta = dict(arrow.schema.metadata or {})
    meta[_META_KEY] = json.dumps({FORMAT_KEY: FORMAT, "medres_version": __version__}).encode()
    arrow = arrow.replace_schema_metadata(meta)
    return atomic_write(path, lambda tmp: pq.write_table(arrow, tmp), private=True)


def read_predictions(path: str | Path, error: type[Exception] = ConfigError) -> pd.DataFrame:
    """Prediction rows written by :func:`write_predictions` (or by a medres before format
    versions: read as version 1); another major version raises ``error``."""
    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(_META_KEY)
    meta = json.loads(raw) if raw else {}
    check_format(path, meta.get(FORMAT_KEY) if isinstance(meta, dict) else "?", READS, error)
    return table.to_pandas()


class ResultStore:
    """One ``OUTDIR``; ``job`` is the contract its rows were predicted under."""

    def __init__(self, out: str | Path, job: dict[str, Any]) -> None:
        self.out = Path(out)
        self.job = job
        self._seq = 0
        self._run = f"{os.getpid()}-{pd.Timestamp.now('UTC').strftime('%Y%m%dT%H%M%S%f')}"
        previous = self.out / JOB
        if previous.is_file():
            before = read_job(previous)
            if before != job:
                changed = sorted(k for k in set(job) | set(before) if job.get(k) != before.get(k))
                raise ConfigError(
                    f"{self.out} holds predictions made with other settings ({', '.join(changed)} "
                    f"differ; see {previous}); rerun with the same bundle and options to resume, "
                    "or choose a new -o folder"
                )
        elif self.out.exists() and any(self.out.iterdir()):
            raise ConfigError(
                f"{self.out} is not empty and holds no medres predictions; choose a new -o folder"
            )
        write_json(previous, {FORMAT_KEY: FORMAT, **job})

    def done(self) -> pd.DataFrame:
        """Rows already predicted (the final table and any parts), duplicates dropped."""
        tables = [read_predictions(p) for p in self._row_files()]
        if not tables:
            return pd.DataFrame(columns=["scan_id", "input_hash"])
        rows = pd.concat(tables, ignore_index=True)
        return rows.drop_duplicates(["scan_id", "input_hash"], keep="last")

    def write_part(self, rows: list[dict[str, Any]]) -> None:
        """Write one chunk of prediction rows atomically."""
        if not rows:
            return
        self._seq += 1
        path = self.out / PARTS / f"part-{self._run}-{self._seq:05d}.parquet"
        write_predictions(pd.DataFrame(rows), path)

    def finish(self, keys: set[tuple[str, str]], failures: list[dict[str, Any]]) -> pd.DataFrame:
        """Merge the parts into ``predictions.parquet`` / ``.csv``: one row per scan ever
        predicted into this OUTDIR (earlier runs' rows are kept; a scan_id predicted again
        because its bytes changed keeps this run's row, ``keys`` being this run's
        (scan_id, input hash) pairs); write ``failures.csv``, then drop the parts.
        Returns the predictions."""
        rows = self.done()
        if len(rows):  # earlier runs' rows stay; a scan whose bytes changed keeps this run's row
            now = [(s, h) in keys for s, h in zip(rows["scan_id"], rows["input_hash"], strict=True)]
            rows = rows.assign(_now=now).sort_values("_now", kind="stable")
            rows = rows.drop_duplicates("scan_id", keep="last").drop(columns="_now")
            rows = rows.sort_values("path", kind="stable").reset_index(drop=True)
        final = self.out / PREDICTIONS
        write_predictions(rows, final)
        write_text(self.out / "predictions.csv", rows.to_csv(index=False), private=True)
        table = pd.DataFrame(failures, columns=list(FAILURE_COLUMNS))
        write_text(self.out / "failures.csv", table.to_csv(index=False), private=True)
        for part in self._parts():
            part.unlink(missing_ok=True)
        if (self.out / PARTS).is_dir() and not any((self.out / PARTS).iterdir()):
            (self.out / PARTS).rmdir()
        return rows

    def write_summary(self, run: dict[str, Any]) -> None:
        """``run.json``: counts, timings, options (written last)."""
        write_json(self.out / RUN, {FORMAT_KEY: FORMAT, **run})

    def _parts(self) -> list[Path]:
        return sorted((self.out / PARTS).glob("part-*.parquet"))

    def _row_files(self) -> list[Path]:
        final = self.out / PREDICTIONS
        return ([final] if final.is_file() else []) + self._parts()
