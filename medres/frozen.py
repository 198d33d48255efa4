"""Frozen test patients: the patients and scans a bundle was tested on, which no later
retraining may train on.

Every bundle keeps them in ``frozen_test.json`` (checksummed like its other files)::

    {"salt": "<hex>", "patients": ["<sha256(salt + patient_id)>", ...],
     "pixels": ["<pixel_hash>", ...]}

Patient ids are stored salted and hashed, never in clear text; the salt is stored beside
them, so short, guessable ids (record numbers) could be recovered by trying them all:
share a bundle outside the hospital as you would share its test patient list. Ids are
compared as text with whole numbers written without ``.0`` (``12`` = ``12.0``) and
surrounding spaces ignored. Pixel hashes (sha256 of the decoded pixels, from ingest)
catch a test scan that comes back under another patient id, or one that has none. A
challenger inherits its champion's salt and lists, and adds its own cohorts' test splits:
once tested on, a patient stays frozen along the whole lineage.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path
from typing import Any

import pandas as pd

from medres.errors import BundleError, LeakageError
from medres.tasks import label_key

FROZEN_TEST = "frozen_test.json"


def freeze(test_rows: pd.DataFrame, earlier: dict[str, Any] | None = None) -> dict[str, Any]:
    """The frozen-test record of ``test_rows`` (manifest rows), merged into ``earlier``
    (a champion's record, whose salt is kept so the lists stay comparable)."""
    salt = earlier["salt"] if earlier else secrets.token_hex(16)
    patients = set(earlier["patients"]) if earlier else set()
    pixels = set(earlier["pixels"]) if earlier else set()
    patients |= {_hash(salt, p) for p in _known(test_rows["patient_id"])}
    pixels |= set(_known(test_rows["pixel_hash"]))
    return {"salt": salt, "patients": sorted(patients), "pixels": sorted(pixels)}


def leaking(frozen: dict[str, Any], rows: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Two boolean Series over ``rows``: the rows of a frozen test patient, and the rows
    repeating a frozen test scan's pixels."""
    salt = frozen["salt"]
    patients = set(frozen["patients"])
    by_patient = rows["patient_id"].map(lambda p: _is_id(p) and _hash(salt, p) in patients)
    by_pixels = rows["pixel_hash"].isin(set(frozen["pixels"]))
    return by_patient.astype(bool), by_pixels.astype(bool)


def check_no_leak(
    frozen: dict[str, Any],
    rows: pd.DataFrame,
    where: str,
    *,
    sources: pd.Series,
    claim: str,
    advice: dict[str, str],
) -> None:
    """Refuse rows a model trained or selected on that belong to a frozen test patient or
    repeat a frozen test scan's pixels.

    The message is ``"{claim}: {source} holds {where}'s {what}. {advice}"``, one sentence
    pair per cohort that holds such rows.

    Args:
        frozen: a record from :func:`freeze` / :func:`read_frozen`.
        rows: the manifest rows a model would train or select on (train and val).
        where: the test set, as the message names it (e.g. "the champion's test split").
        sources: for each row (same index), the cohort that holds it, as the message
            should name it ("the new cohort /data/b.parquet").
        claim: what is refused, opening the message ("retraining would leak ...").
        advice: what to do about a cohort's leaks, by its ``sources`` name.

    Raises:
        LeakageError: naming the patient ids (``.patient_ids``) and scan ids that leak.
    """
    by_patient, by_pixels = leaking(frozen, rows)
    if not (by_patient | by_pixels).any():
        return
    leaked = sorted(set(_known(rows[by_patient]["patient_id"])))
    parts = []
    for source in dict.fromkeys(sources[by_patient | by_pixels]):
        mine = (sources == source).to_numpy()
        found = _found(rows[mine], by_patient[mine], by_pixels[mine])
        parts.append(f"{source} holds {where}'s {found}. {advice.get(source, '')}".strip())
    raise LeakageError(f"{claim}: " + " ".join(parts), patient_ids=leaked)


def _found(rows: pd.DataFrame, by_patient: pd.Series, by_pixels: pd.Series) -> str:
    """What leaks in ``rows``: "scans of patients P (scans a, b) and copies of ..."."""
    found = []
    leaked = sorted(set(_known(rows[by_patient]["patient_id"])))
    if leaked:
        scans = rows[by_patient]["scan_id"].astype(str).tolist()
        found.append(f"scans of patients {_first(leaked)} (scans {_first(scans)})")
    copies = rows[by_pixels & ~by_patient]["scan_id"].astype(str).tolist()
    if copies:
        found.append(f"copies of its test scans' pixels: {_first(copies)}")
    return " and ".join(found)


def hash_patient(salt: str, patient_id: Any) -> str:
    """A patient id as frozen_test.json stores it: sha256 of the salt and the id."""
    return _hash(salt, patient_id)


def hash_id(salt: str, text: str) -> str:
    """Another identifier (a scan_id: a relative path that may hold a patient's name, or
    a DICOM UID) as bundle.json may show it: sha256 of the salt and the text as is."""
    return hashlib.sha256(f"{salt}:{text}".encode()).hexdigest()


def read_frozen(bundle_path: str | Path) -> dict[str, Any]:
    """A (verified) bundle's frozen-test record.

    Raises:
        BundleError: the bundle predates frozen test sets.
    """
    path = Path(bundle_path) / FROZEN_TEST
    if not path.is_file():
        raise BundleError(
            f"{bundle_path} keeps no {FROZEN_TEST} (it was trained by an older medres), so "
            "retraining cannot prove it never trains on the champion's test patients; "
            "retrain the champion with this medres first"
        )
    return json.loads(path.read_text())


def _hash(salt: str, patient_id: Any) -> str:
    return hashlib.sha256(f"{salt}:{label_key(patient_id)}".encode()).hexdigest()


def _is_id(value: Any) -> bool:
    return value is not None and not pd.isna(value) and str(value).strip() != ""


def _known(values: pd.Series) -> list[str]:
    return [str(v) for v in values if _is_id(v)]


def _first(items: list[str], n: int = 10) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more
