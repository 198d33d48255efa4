"""``split_cohort``: fill a cohort's ``split`` column (see :mod:`medres.split`)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from medres.cohort import Cohort
from medres.errors import ConfigError, ManifestError
from medres.split.audit import audit_cohort
from medres.split.folds import stratified_split
from medres.split.fractions import DEFAULT_FRACTIONS, check_fractions
from medres.split.rows import SplitWarning, patient_ids
from medres.split.strategies import (
    kept_split,
    kept_test_split,
    move_copies_into_test,
    site_split,
)

UNITS: tuple[str, ...] = ("patient", "scan")


def split_cohort(
    cohort: Cohort,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    keep_column: str | None = None,
    holdout_site: str | None = None,
    keep_test_column: str | None = None,
    unit: Literal["patient", "scan"] = "patient",
    move_copies_to_test: bool = False,
) -> Cohort:
    """Return a new cohort whose readable scans (status ``ok``) have a ``split``.

    Args:
        cohort: the manifest to split; it is not modified.
        fractions: train, val, test shares of the scans (sum 1; val may be 0).
        seed: the same seed gives the same split.
        keep_column: use the train/val/test values already in this column
            (``valid`` / ``validation`` mean val) instead of drawing a split.
        holdout_site: every scan of this site becomes test; the other sites are
            split into train and val in proportion to ``fractions[:2]``.
        keep_test_column: keep the test split given in this column (values read as
            for ``keep_column``) and draw train / val from its train / val rows (the
            pool) in proportion to ``fractions[:2]``; ``fractions[2]`` is ignored.
        unit: ``"patient"`` (default) keeps each patient's scans together.
            ``"scan"`` draws the pool's train / val scan by scan, stratified by label,
            ignoring patient ids: one patient's scans may then sit in train and val,
            so validation figures are optimistic (a :class:`SplitWarning` says how
            many patients). Only with ``keep_test_column``, whose test set must not
            share a patient with the pool; ``meta["split_unit"]`` records the unit.
        move_copies_to_test: after the split is drawn or kept, move every train / val
            scan whose pixels (``pixel_hash``) repeat a test scan's into test, where
            its copy is; ``meta["split_copies_moved_to_test"]`` lists their scan_ids.
            Training refuses such copies (:func:`audit_training_cohort`); this is the
            fix when a dataset's official split holds them.

    Every patient's scans land in one split, with label proportions close to the
    cohort's. Scans without a patient id are split one by one, with a
    :class:`SplitWarning` and ``meta["split_by"] == "scan"``. Error rows keep a null
    split. The result is audited (:func:`audit_cohort`) before it is returned; copies of
    test scans left in train / val are a :class:`SplitWarning` here (training and
    ``medres audit`` refuse them).

    Raises:
        ConfigError: bad fractions, unit or combination of options, unknown site or
            column, a cohort too small.
        ManifestError: no readable scans, or missing / unknown values in keep_column
            or keep_test_column.
        LeakageError: a patient on two sides (kept split, a held-out site, or a kept
            test set sharing patients with the pool, or a copy moved into test whose
            patient keeps other scans in train / val).
    """
    _check_options(keep_column, holdout_site, keep_test_column, unit)
    values = check_fractions(fractions, need_test=holdout_site is None and keep_test_column is None)
    table = cohort.table
    ok = (table["status"] == "ok").to_numpy()
    if not ok.any():
        raise ManifestError(
            "the cohort has no readable scans (status 'ok') to split; "
            "check the error column of the manifest"
        )
    assigned = _assign(table[ok], values, seed, keep_column, holdout_site, keep_test_column, unit)
    moved: list[str] = []
    if move_copies_to_test:
        assigned, moved = move_copies_into_test(table[ok], assigned)
    no_patient = int(patient_ids(table[ok]).isna().sum())
    if no_patient:
        _warn_unknown_patients(no_patient, int(ok.sum()), keep_column, keep_test_column)
    split = np.full(len(table), None, dtype=object)
    split[ok] = assigned
    out = table.copy()
    out["split"] = pd.array(split, dtype="str")
    meta = {
        **cohort.meta,
        "split_by": "scan" if no_patient or unit == "scan" else "patient",
        "split_unit": unit,
        "split_scans_without_patient_id": no_patient,
        "split_fractions": None if keep_column else list(values),
        "split_seed": None if keep_column else int(seed),
        "split_keep_column": keep_column,
        "split_holdout_site": holdout_site,
        "split_keep_test_column": keep_test_column,
        "split_copies_moved_to_test": moved,
    }
    result = Cohort(out, meta)
    audit_cohort(result, splitting=True)
    return result


def _assign(
    rows: pd.DataFrame,
    fractions: tuple[float, float, float],
    seed: int,
    keep_column: str | None,
    holdout_site: str | None,
    keep_test_column: str | None,
    unit: str,
) -> np.ndarray:
    """The (N,) split names of the readable ``rows``, by the option that was passed."""
    if keep_column is not None:
        return kept_split(rows, keep_column)
    if holdout_site is not None:
        return site_split(rows, holdout_site, fractions, seed)
    if keep_test_column is not None:
        return kept_test_split(rows, keep_test_column, fractions, seed, unit)
    return stratified_split(rows, fractions, seed)


def _warn_unknown_patients(
    no_patient: int, scans: int, keep_column: str | None, keep_test_column: str | None
) -> None:
    """The SplitWarning for ``no_patient`` of ``scans`` readable scans without a patient id
    (raised at the caller of :func:`split_cohort`)."""
    if keep_column:
        how = f"their split was kept from column {keep_column!r} unchecked"
    elif keep_test_column:
        how = f"their test split was kept from column {keep_test_column!r} unchecked"
    else:
        how = "they were split scan by scan"
    warnings.warn(
        f"{no_patient} of {scans} scans have no patient_id: {how}, so scans of "
        "one patient may sit in both train and test (leakage the audit cannot see). "
        "Add patient ids to the manifest and re-run `medres split`.",
        SplitWarning,
        stacklevel=3,
    )


def _check_options(
    keep_column: str | None, holdout_site: str | None, keep_test_column: str | None, unit: str
) -> None:
    """ConfigError for options that cannot go together."""
    if keep_column is not None and holdout_site is not None:
        raise ConfigError("pass either keep_column or holdout_site, not both")
    if keep_test_column is not None and (keep_column is not None or holdout_site is not None):
        raise ConfigError(
            "keep_test_column keeps only the test split and draws train/val; it cannot be "
            "combined with keep_column (which keeps all three splits) or holdout_site "
            "(which makes a site the test set): pass one of them"
        )
    if unit not in UNITS:
        raise ConfigError(f"unit must be one of {list(UNITS)}; got {unit!r}")
    if unit == "scan" and keep_test_column is None:
        raise ConfigError(
            "unit='scan' splits scan by scan, ignoring patients: a scan-level split must "
            "keep a patient-level test set, so it is only allowed with keep_test_column "
            "(e.g. keep_test_column='split'); to split by patient, leave unit='patient'"
        )
