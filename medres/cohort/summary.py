"""The terminal summary of a cohort (``medres ingest``): scans, patients, classes, errors."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
from rich.table import Table

from medres.cohort.manifest import Cohort

if TYPE_CHECKING:
    from medres.cohort.ingest import IngestReport


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
