"""The leakage audits of a split cohort: ``medres audit`` and the one before training.

:func:`audit_cohort` (``medres audit``, and :func:`~medres.split.split_cohort` on what
it returns) and :func:`audit_training_cohort` (run first by ``medres train``,
``retrain`` and ``run``) refuse the same leaks in the same words; :func:`summary_table`
renders an :class:`AuditReport` for the command line.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import pandas as pd
from rich.table import Table

from medres.cohort import SPLITS, Cohort
from medres.errors import quote_some
from medres.split.leaks import (
    duplicate_pixels,
    patients_error,
    pixel_copies,
    split_rows,
    test_copies_error,
    train_val_patients,
)
from medres.split.rows import SplitWarning, label_name, patient_ids


@dataclass(frozen=True)
class SplitCounts:
    """What one split holds: scans, distinct known patients, and scans per label."""

    scans: int
    patients: int
    labels: dict[str, int]


@dataclass(frozen=True)
class AuditReport:
    """The result of :func:`audit_cohort` on a cohort without patient leakage.

    Attributes:
        splits: counts for each of train / val / test (zero counts included).
        train_val_patients: patients with scans in both train and val; only ever
            non-empty for a scan-level split (``meta["split_unit"] == "scan"``).
        duplicate_pixels: groups of scan_ids with the same ``pixel_hash`` that sit in
            different splits (a warning: the same image is seen in training and test).
        scans_without_patient_id: split scans whose patient is unknown, so the audit
            could not check them.
        unsplit_scans: readable scans that have no split yet.
    """

    splits: dict[str, SplitCounts]
    duplicate_pixels: list[list[str]] = field(default_factory=list)
    scans_without_patient_id: int = 0
    unsplit_scans: int = 0
    train_val_patients: list[str] = field(default_factory=list)


def audit_cohort(cohort: Cohort, splitting: bool = False) -> AuditReport:
    """Check a split cohort for leakage, as training does, and count what each split holds.

    Only readable scans (status ``ok``) with a split are considered. The rule is
    :func:`audit_training_cohort`'s, with the same messages: what ``medres train``
    refuses, ``medres audit`` refuses.

    A cohort split scan by scan on purpose (``cohort.meta["split_unit"] == "scan"``,
    see :func:`split_cohort`) may have patients in both train and val: they are
    listed in ``train_val_patients`` with a :class:`SplitWarning`. A patient in test
    and another split is an error whatever the unit.

    Args:
        splitting: the audit :func:`split_cohort` runs on the split it returns: a test
            scan whose pixels (``pixel_hash``) repeat in train or val is then a
            :class:`SplitWarning` pointing at ``move_copies_to_test`` (the split is still
            written), not a LeakageError, and a refused split is not offered
            ``--allow-leakage`` (nothing was written to train on).

    Raises:
        LeakageError: a patient_id appears in two splits (``patient_ids`` lists them),
            or a test scan has a pixel copy in train or val.
        ManifestError: a split value other than train / val / test.

    Scans with identical ``pixel_hash`` in different splits are reported in
    ``duplicate_pixels``; those not refused raise a :class:`SplitWarning`.
    """
    ok, rows = split_rows(cohort)
    scan_level = cohort.meta.get("split_unit") == "scan"
    error = patients_error(rows, allow_train_val=scan_level, training=not splitting)
    if error is not None:
        raise error
    copies, _, splits = pixel_copies(rows)
    if copies and not splitting:
        raise test_copies_error(copies, splits)
    shared = train_val_patients(rows) if scan_level else []
    if shared:
        _warn_train_val_patients(shared)
    duplicates = duplicate_pixels(rows)
    if duplicates:
        _warn_duplicate_pixels(duplicates)
    return AuditReport(
        splits={name: _counts(rows[rows["split"] == name]) for name in SPLITS},
        duplicate_pixels=duplicates,
        scans_without_patient_id=int(patient_ids(rows).isna().sum()),
        unsplit_scans=int(ok["split"].isna().sum()),
        train_val_patients=shared,
    )


def _warn_train_val_patients(shared: list[str]) -> None:
    """The SplitWarning for patients in train and val of a scan-level split (raised at the
    caller of :func:`audit_cohort`)."""
    warnings.warn(
        f"{len(shared)} patient(s) have scans in both train and val ({quote_some(shared)}): "
        "this cohort was split scan by scan on purpose (split_unit='scan'), so "
        "validation figures will be optimistic; the test set stays patient-disjoint",
        SplitWarning,
        stacklevel=3,
    )


def _warn_duplicate_pixels(duplicates: list[list[str]]) -> None:
    """The SplitWarning for groups of identical pixels in different splits (raised at the
    caller of :func:`audit_cohort`)."""
    warnings.warn(
        f"{len(duplicates)} group(s) of scans have identical pixels but sit in "
        f"different splits: {quote_some(['[' + ', '.join(g) + ']' for g in duplicates])}; "
        "the same image in training and test inflates the metrics, in train and val "
        "the validation figures: drop the copies or put them in one split (`medres "
        "split COHORT.parquet --keep-column split --move-copies-to-test` moves "
        "train/val copies of test scans into test; `medres train` and `medres audit` "
        "refuse those)",
        SplitWarning,
        stacklevel=3,
    )


@dataclass(frozen=True)
class TrainingAudit:
    """What :func:`audit_training_cohort` found in a cohort about to be trained on.

    Attributes:
        scans: readable scans with a split.
        with_patient_id: how many of them have a patient id.
        split_unit: ``"scan"`` for a deliberate scan-level train / val split.
        leaked_patients: patients with scans in two splits (only with ``allow_leakage``;
            train + val of a scan-level split does not count).
        test_copies: groups of scan_ids with identical pixels, one of them in test and
            another in train or val (only with ``allow_leakage``).
        train_val_copies: groups with identical pixels in train and val only: allowed,
            they make validation figures slightly optimistic.
        train_val_patients: patients in train and val of a scan-level split.
        leakage_allowed: the audit was told to let leakage through.
    """

    scans: int
    with_patient_id: int
    split_unit: str | None
    leaked_patients: list[str] = field(default_factory=list)
    test_copies: list[list[str]] = field(default_factory=list)
    train_val_copies: list[list[str]] = field(default_factory=list)
    train_val_patients: list[str] = field(default_factory=list)
    leakage_allowed: bool = False


def audit_training_cohort(cohort: Cohort, allow_leakage: bool = False) -> TrainingAudit:
    """The audit every training runs first (``medres train``, ``retrain``, ``run``).

    Refuses what makes a model's figures optimistic without saying so: a patient with
    scans in two splits (train + val is allowed in a deliberately scan-level split,
    ``meta["split_unit"] == "scan"``), and a test scan whose pixels (``pixel_hash``)
    repeat in train or val. Identical pixels in train and val only are allowed and
    listed (``train_val_copies``). No warnings are raised: the result says it all.
    :func:`audit_cohort` (``medres audit``) refuses the same, in the same words.

    Args:
        allow_leakage: record the leaks in the result instead of raising (a deliberate
            experiment; the caller must say so in what it writes).

    Raises:
        LeakageError: naming the patients, or the copied scans and their splits.
        ManifestError: a split value other than train / val / test.
    """
    _, rows = split_rows(cohort)
    unit = cohort.meta.get("split_unit")
    scan_level = unit == "scan"
    error = patients_error(rows, allow_train_val=scan_level)
    if error is not None and not allow_leakage:
        raise error
    test_copies, train_val_copies, splits = pixel_copies(rows)
    if test_copies and not allow_leakage:
        raise test_copies_error(test_copies, splits)
    return TrainingAudit(
        scans=len(rows),
        with_patient_id=int(patient_ids(rows).notna().sum()),
        split_unit=unit,
        leaked_patients=error.patient_ids if error is not None else [],
        test_copies=test_copies,
        train_val_copies=train_val_copies,
        train_val_patients=train_val_patients(rows) if scan_level else [],
        leakage_allowed=allow_leakage,
    )


def _counts(rows: pd.DataFrame) -> SplitCounts:
    labels = pd.Series([label_name(v) for v in rows["label"]], dtype=object)
    return SplitCounts(
        scans=len(rows),
        patients=int(patient_ids(rows).nunique()),
        labels={str(k): int(v) for k, v in sorted(labels.value_counts().items())},
    )


def summary_table(report: AuditReport, title: str = "Cohort split") -> Table:
    """A rich table: per split, scans, patients, and scans per label (with shares)."""
    table = Table(title=title)
    table.add_column("split")
    table.add_column("scans", justify="right")
    table.add_column("patients", justify="right")
    table.add_column("labels (scans, % of split)")
    for name, counts in report.splits.items():
        labels = "\n".join(
            f"{label}: {n} ({100 * n / counts.scans:.0f}%)" for label, n in counts.labels.items()
        )
        table.add_row(name, str(counts.scans), str(counts.patients), labels or "-")
    notes = []
    if report.scans_without_patient_id:
        notes.append(f"{report.scans_without_patient_id} scans without patient id (unchecked)")
    if report.unsplit_scans:
        notes.append(f"{report.unsplit_scans} readable scans without a split")
    if report.train_val_patients:
        notes.append(
            f"{len(report.train_val_patients)} patients in both train and val "
            "(scan-level split: validation is optimistic)"
        )
    if notes:
        table.caption = "; ".join(notes)
    return table
