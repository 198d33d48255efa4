"""Read a ``medres predict`` OUTDIR into review-store rows (no database here).

:func:`read_outdir` checks the folder and returns its tables; :func:`case_rows` turns
prediction rows into ``cases`` rows with pseudonymised patient ids and a priority.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from medres.errors import ReviewError
from medres.predict.store import read_job, read_predictions, read_run

REQUIRED = (
    "scan_id",
    "path",
    "input_hash",
    "bundle_id",
    "bundle_checksum",
    "predicted_class",
    "conformal_set",
    "set_size",
    "ood",
    "refer",
    "refer_reason",
)


@dataclass
class PredictOutput:
    """One predict OUTDIR: ``job`` (job.json), ``summary`` (run.json), ``predictions``
    (one row per scan), ``classes`` (class names in probability-column order)."""

    outdir: Path
    job: dict[str, Any]
    summary: dict[str, Any]
    predictions: pd.DataFrame
    classes: list[str]

    def run_key(self) -> str:
        """sha256 hex of (absolute OUTDIR, job.json): the same OUTDIR predicted with the
        same bundle(s) and options is the same run, whatever rows it gained since."""
        text = json.dumps({"outdir": str(self.outdir), "job": self.job}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def read_outdir(outdir: str | Path) -> PredictOutput:
    """Read ``job.json``, ``run.json`` and ``predictions.parquet`` of a finished run.

    Raises:
        ReviewError: the folder is not a finished ``medres predict`` output, or its
        predictions are not a classifier's (regression runs have no classes to review).
    """
    outdir = Path(outdir).resolve()
    hint = (
        f"{outdir} is not a finished `medres predict` output; give the -o folder of "
        "`medres predict BUNDLE FOLDER -o OUTDIR` once that run has finished"
    )
    files = [outdir / "job.json", outdir / "run.json", outdir / "predictions.parquet"]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ReviewError(f"{hint} ({', '.join(missing)} missing)")
    try:  # each file's format version checked: another major one is a ReviewError naming it
        job = read_job(files[0], ReviewError)  # without its "format": run_key stays as before
        summary = read_run(files[1], ReviewError)
        table = read_predictions(files[2], ReviewError)
    except (OSError, ValueError) as e:  # JSONDecodeError and Arrow errors are ValueErrors
        raise ReviewError(f"{hint} ({e})") from e
    if "prediction" in table.columns and "predicted_class" not in table.columns:
        raise ReviewError(
            f"{outdir} holds a regression bundle's predictions; only classifier runs "
            "(agree / disagree with a class) can be reviewed"
        )
    lacking = [c for c in REQUIRED if c not in table.columns]
    if lacking:
        raise ReviewError(f"{hint} (predictions.parquet lacks columns {lacking})")
    classes = [
        c.removeprefix("prob_")
        for c in table.columns
        if c.startswith("prob_") and not c.startswith("prob_raw_")
    ]
    if not classes:
        raise ReviewError(f"{hint} (predictions.parquet has no prob_<class> columns)")
    return PredictOutput(outdir, job, summary, table, classes)


def pseudonym(patient_id: Any, salt: str) -> str | None:
    """``anon-`` + 16 hex digits of sha256(salt + id); None stays None (never invented)."""
    text = _text(patient_id)
    if text is None:
        return None
    return "anon-" + hashlib.sha256(f"{salt}\x00{text}".encode()).hexdigest()[:16]


def case_rows(
    out: PredictOutput, *, salt: str, show_patient_ids: bool, site: str | None
) -> list[dict[str, Any]]:
    """One ``cases`` row (without run_id) per prediction row, with its priority.

    Priority tiers: 0 out of distribution (higher ``ood_score`` first), 1 a conformal
    set of more than one class, 2 the rest; tiers 1 and 2 put the highest uncertainty
    (1 − max_prob) first: ``priority_tier`` and ``priority_score`` (higher first).
    """
    rows = []
    for record in out.predictions.to_dict("records"):
        probs = {c: _number(record.get(f"prob_{c}")) for c in out.classes}
        max_prob = _number(record.get("max_prob"))
        if max_prob is None:
            max_prob = max((p for p in probs.values() if p is not None), default=None)
        uncertainty = 1.0 - max_prob if max_prob is not None else 1.0
        ood, set_size = bool(record["ood"]), int(record["set_size"])
        ood_score = _number(record.get("ood_score"))
        tier = 0 if ood else 1 if set_size > 1 else 2
        patient = record.get("patient_id")
        rows.append(
            {
                "scan_id": str(record["scan_id"]),
                "path": str(record["path"]),
                "input_hash": str(record["input_hash"]),
                "modality": _text(record.get("modality")),
                "site": _text(record.get("site")) or site,
                "patient_id": _text(patient) if show_patient_ids else pseudonym(patient, salt),
                "study_uid": _text(record.get("study_uid")),
                "series_uid": _text(record.get("series_uid")),
                "bundle_id": str(record["bundle_id"]),
                "predicted_class": str(record["predicted_class"]),
                "confidence": _number(record.get("confidence")),
                "probabilities": probs,
                "conformal_set": [c for c in str(record["conformal_set"]).split("|") if c],
                "set_size": set_size,
                "max_prob": max_prob,
                "entropy": _number(record.get("entropy")),
                "mutual_information": _number(record.get("mutual_information")),
                "variance": _number(record.get("variance")),
                "uncertainty": uncertainty,
                "ood_score": ood_score,
                "ood": ood,
                "refer": bool(record["refer"]),
                "refer_reason": _text(record.get("refer_reason")) or "",
                "heatmap": _absolute(out.outdir, record.get("heatmap")),
                "heatmap_map": _absolute(out.outdir, record.get("heatmap_map")),
                "predicted_at": _text(record.get("predicted_at")),
                "priority_tier": tier,
                "priority_score": (ood_score or 0.0) if tier == 0 else uncertainty,
            }
        )
    return rows


def _number(value: Any) -> float | None:
    if value is None or value is pd.NA:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _text(value: Any) -> str | None:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def _absolute(outdir: Path, relative: Any) -> str | None:
    text = _text(relative)
    return None if text is None else str(outdir / text)
