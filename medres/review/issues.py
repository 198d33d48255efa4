"""Read a ``medres label-issues`` CSV into review-store rows (no database here).

The CSV is the contract between :mod:`medres.retrain.label_issues` (which writes it) and
the review store (which loads it); this module owns its columns, so ``medres.review``
never imports ``medres.retrain``. One row per scan, most suspicious first:

===============  ===================================================================
rank             1 = look at it first
scan_id, path    the scan, as in the cohort manifest
patient_id       the cohort's patient id (empty when unknown)
site             the cohort's site (empty when unknown)
given_label      the label in the cohort (empty for an unlabelled cohort)
suggested_label  the class the model puts first
label_quality    0..1, low = the given label is suspicious (empty when unlabelled)
p_given          probability of the given label (empty when unlabelled)
p_suggested      probability of the suggested label
flagged          true where confident learning (cleanlab) calls the label an error
reason           ``possible label error`` or ``uncertain (active learning)``
input_hash       sha256 of the scan's files (as ``medres predict`` writes it)
bundle_id        the bundle whose training configuration / probabilities ranked it
bundle_checksum  sha256 of that bundle's ``bundle.json``
conformal_set    the calibrated conformal set, classes joined by ``|`` (may be empty)
prob_<class>     one column per class, in the bundle's class order
===============  ===================================================================

A CSV holds no metadata that pandas and spreadsheets would still read, so the format
version lives in a sidecar beside it, ``ISSUES.csv.json`` (:func:`format_sidecar`:
``{"format": 1, ...}``). A CSV without its sidecar (copied alone, or written before
versions existed) reads as version 1; a sidecar naming another major version is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from medres.errors import ReviewError
from medres.files import FORMAT_KEY, check_format
from medres.review.outdir import pseudonym

FORMAT = 1  # the label-issues CSV's format version (docs/formats.md#label-issues-csv)
READS = (1,)  # the major versions read_label_issues reads
LABEL_ERROR_REASON = "possible label error"
ACTIVE_LEARNING_REASON = "uncertain (active learning)"
LABEL_ISSUE_COLUMNS: tuple[str, ...] = (
    "rank",
    "scan_id",
    "path",
    "patient_id",
    "site",
    "given_label",
    "suggested_label",
    "label_quality",
    "p_given",
    "p_suggested",
    "flagged",
    "reason",
    "input_hash",
    "bundle_id",
    "bundle_checksum",
    "conformal_set",
)


@dataclass
class LabelIssues:
    """One label-issues CSV: ``outdir`` (the CSV's absolute path, shown as the run's
    source), ``table`` (its rows, by rank), ``classes`` (from the ``prob_<class>``
    columns), ``job`` and ``summary`` (what the review store records for the run)."""

    outdir: Path
    table: pd.DataFrame
    classes: list[str]
    job: dict[str, Any]
    summary: dict[str, Any]

    def run_key(self) -> str:
        """sha256 hex of (absolute CSV path, bundle): loading the same CSV again is the
        same run, whatever rows it adds."""
        text = json.dumps({"label_issues": str(self.outdir), "job": self.job}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def format_sidecar(csv: str | Path) -> Path:
    """The JSON file beside a label-issues CSV that holds its format version."""
    csv = Path(csv)
    return csv.with_name(csv.name + ".json")


def read_label_issues(path: str | Path) -> LabelIssues:
    """Read and check a label-issues CSV.

    Raises:
        ReviewError: the file is missing, unreadable, lacks columns of
        :data:`LABEL_ISSUE_COLUMNS`, has no ``prob_<class>`` columns, or mixes bundles.
    """
    path = Path(path).resolve()
    hint = "write it with `medres label-issues BUNDLE COHORT -o ISSUES.csv`"
    if not path.is_file():
        raise ReviewError(f"no label-issues CSV at {path}; {hint}")
    sidecar = format_sidecar(path)
    if sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ReviewError(f"{sidecar} is not readable JSON ({e}); {hint}") from e
        version = meta.get(FORMAT_KEY) if isinstance(meta, dict) else meta
        check_format(f"{path} (format in {sidecar.name})", version, READS, ReviewError)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as e:
        raise ReviewError(f"{path} is not a readable CSV ({e}); {hint}") from e
    lacking = [c for c in LABEL_ISSUE_COLUMNS if c not in table.columns]
    if lacking:
        raise ReviewError(f"{path} lacks columns {lacking}; {hint}")
    classes = [c.removeprefix("prob_") for c in table.columns if c.startswith("prob_")]
    if not classes:
        raise ReviewError(f"{path} has no prob_<class> columns; {hint}")
    if table.empty:
        raise ReviewError(f"{path} has no rows: nothing to review")
    bundles = table[["bundle_id", "bundle_checksum"]].drop_duplicates()
    if len(bundles) != 1 or not bundles.iloc[0]["bundle_id"]:
        raise ReviewError(
            f"{path} names {len(bundles)} bundles; one label-issues run comes from one bundle"
        )
    try:
        table["rank"] = table["rank"].astype(int)
    except ValueError as e:
        raise ReviewError(f"{path}: the rank column must hold whole numbers ({e})") from e
    table["flagged"] = table["flagged"].str.strip().str.lower().isin(["true", "1", "yes"])
    table = table.sort_values("rank", kind="stable").reset_index(drop=True)
    bundle = {"id": bundles.iloc[0]["bundle_id"], "checksum": bundles.iloc[0]["bundle_checksum"]}
    labelled = bool((table["given_label"] != "").any())
    summary = {
        "label_issues": str(path),
        "kind": "label issues" if labelled else "active learning",
        "rows": len(table),
        "flagged": int(table["flagged"].sum()),
        "bundles": [bundle],
    }
    return LabelIssues(path, table, classes, {"bundles": [bundle]}, summary)


def select_top(issues: LabelIssues, top: int | None = None) -> LabelIssues:
    """The rows to review: the ``top`` first by rank, or by default the rows cleanlab
    flagged (labelled CSV) or every row (unlabelled CSV: active learning, most
    uncertain first). A labelled CSV with nothing flagged is a ReviewError asking for
    ``top`` (rather than an empty run)."""
    table = issues.table
    if top is not None:
        if top < 1:
            raise ReviewError(f"--top must be at least 1; got {top}")
        chosen = table.head(top)
    elif issues.summary["kind"] == "label issues":
        chosen = table[table["flagged"]]
        if chosen.empty:
            raise ReviewError(
                f"cleanlab flagged no scan in {issues.outdir}; pass --top N to review the N "
                "most suspicious scans anyway"
            )
    else:
        chosen = table
    summary = {**issues.summary, "top": top, "selected": len(chosen)}
    return replace(issues, table=chosen.reset_index(drop=True), summary=summary)


def issue_case_rows(
    issues: LabelIssues, *, salt: str, show_patient_ids: bool, site: str | None
) -> list[dict[str, Any]]:
    """One ``cases`` row (without run_id) per CSV row, referred with the CSV's reason.

    ``predicted_class`` is the suggested label, so *agree* means "relabel as suggested"
    and *disagree* with the given label as the correction keeps it; ``refer_reason``
    shows the given label (``possible label error: labelled 0, model says 1``: the
    probability is left out so the dashboard groups cases by label pair). Without a
    conformal set in the CSV the set shown is the given and suggested labels, the two
    the reviewer chooses between. Priority: tier 1, then ``1 − label_quality`` (label
    issues) or ``1 − p_suggested`` (active learning), higher first.
    """
    rows = []
    for record in issues.table.to_dict("records"):
        probs = {c: _number(record.get(f"prob_{c}")) for c in issues.classes}
        given, suggested = record["given_label"], record["suggested_label"]
        p_suggested = _number(record["p_suggested"])
        uncertainty = 1.0 - p_suggested if p_suggested is not None else 1.0
        quality = _number(record["label_quality"])
        reason = record["reason"] or (LABEL_ERROR_REASON if given else ACTIVE_LEARNING_REASON)
        if given:
            reason = f"{reason}: labelled {given}, model says {suggested}"
        members = [c for c in record["conformal_set"].split("|") if c]
        if not members:
            members = [c for c in issues.classes if c in (given, suggested)]
        patient = record["patient_id"] or None
        rows.append(
            {
                "scan_id": record["scan_id"],
                "path": record["path"],
                "input_hash": record["input_hash"],
                "modality": None,
                "site": record["site"] or site,
                "patient_id": patient if show_patient_ids else pseudonym(patient, salt),
                "bundle_id": record["bundle_id"],
                "predicted_class": suggested,
                "confidence": p_suggested,
                "probabilities": probs,
                "conformal_set": members,
                "set_size": len(members),
                "max_prob": p_suggested,
                "uncertainty": uncertainty,
                "ood": False,
                "refer": True,
                "refer_reason": reason,
                "priority_tier": 1,
                "priority_score": 1.0 - quality if quality is not None else uncertainty,
            }
        )
    return rows


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
