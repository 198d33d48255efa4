"""The readable rows of a cohort as the split and the audit read them.

Patients (``patient_id`` as text, blanks unknown), the group each row is split with
(its patient, or the scan itself), and label classes for stratification (a null label,
and each distinct multi-label vector, is a class of its own). :class:`SplitWarning`
is the warning every part of :mod:`medres.split` raises.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

_NO_LABEL = "(no label)"


class SplitWarning(UserWarning):
    """A split that is legal but may leak: scans without patient ids, duplicated pixels."""


def patient_ids(rows: pd.DataFrame) -> pd.Series:
    """The patient_id column as text, with blank ids (``""``) treated as unknown (NA):
    patients as the audit tells them apart."""
    ids = rows["patient_id"].astype(object).where(rows["patient_id"].notna(), None)
    ids = ids.map(lambda v: None if v is None or str(v).strip() == "" else str(v))
    return ids


def patient_groups(rows: pd.DataFrame) -> np.ndarray:
    """Integer group per row: its patient, or the scan itself when the patient is unknown.

    Codes come from sorted keys, so the split does not depend on row order.
    """
    patients = patient_ids(rows)
    keys = np.where(
        patients.isna(),
        "s:" + rows["scan_id"].astype(str),
        "p:" + patients.fillna("").astype(str),
    )
    return np.unique(keys, return_inverse=True)[1]


def label_codes(rows: pd.DataFrame) -> np.ndarray:
    """Integer class per row for stratification; a null label is a class of its own."""
    names = [label_name(v) for v in rows["label"]]
    return np.unique(np.array(names, dtype=object), return_inverse=True)[1]


def label_name(value: Any) -> str:
    """A label as text: ``1.0`` (an int column with nulls) prints as ``1``.

    A multi-label vector (list or array) becomes one class per distinct vector.
    """
    if value is not None and not pd.api.types.is_scalar(value):
        return ",".join(label_name(v) for v in value)
    if value is None or pd.isna(value):
        return _NO_LABEL
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def patients_on_both_sides(rows: pd.DataFrame, side: np.ndarray) -> list[str]:
    """Sorted known patient ids with scans both where ``side`` (N,) bool is True and False."""
    patients = patient_ids(rows)
    known = patients.notna().to_numpy()
    return sorted(set(patients[side & known]) & set(patients[~side & known]))
