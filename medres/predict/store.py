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
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from medres.errors import ConfigError
from medres.files import atomic_write, write_json, write_text
from medres.io.discover import FAILURE_COLUMNS

JOB = "job.json"
PARTS = ".parts"
PREDICTIONS = "predictions.parquet"


class ResultStore:
    """One ``OUTDIR``; ``job`` is the contract its rows were predicted under."""

    def __init__(self, out: str | Path, job: dict[str, Any]) -> None:
        self.out = Path(out)
        self.job = job
        self._seq = 0
        self._run = f"{os.getpid()}-{pd.Timestamp.now('UTC').strftime('%Y%m%dT%H%M%S%f')}"
        previous = self.out / JOB
        if previous.is_file():
            before = json.loads(previous.read_text())
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
        write_json(previous, job)

    def done(self) -> pd.DataFrame:
        """Rows already predicted (the final table and any parts), duplicates dropped."""
        tables = [pd.read_parquet(p) for p in self._row_files()]
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
        table = pd.DataFrame(rows)
        atomic_write(path, lambda tmp: table.to_parquet(tmp, index=False), private=True)

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
        atomic_write(final, lambda tmp: rows.to_parquet(tmp, index=False), private=True)
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
        write_json(self.out / "run.json", run)

    def _parts(self) -> list[Path]:
        return sorted((self.out / PARTS).glob("part-*.parquet"))

    def _row_files(self) -> list[Path]:
        final = self.out / PREDICTIONS
        return ([final] if final.is_file() else []) + self._parts()
