"""Patient-level splits of a cohort and the leakage audit (DESIGN §1, §7).

:func:`split_cohort` fills the ``split`` column (train / val / test) of the readable
scans, keeping every patient on one side and each side's label mix close to the whole
cohort's. It uses scikit-learn's ``StratifiedGroupKFold`` once: the cohort is cut into
*K* folds balanced by label with patients as groups, and whole folds are handed to
train, val and test so that their shares match the asked fractions as closely as a
small *K* allows (within 2 percentage points for the usual fractions).

Instead of drawing all three splits it can keep a given one (``keep_column``), hold
out a site as test (``holdout_site``), or keep only the test split given in a column
and draw train / val from the rest (``keep_test_column``, e.g. a dataset's official
patient-level test set with a new validation set). Only in that last case may
train / val be drawn scan by scan (``unit="scan"``): the deliberately leaky
slice-level split used to measure how much such a split overestimates, with the test
set still patient-disjoint.

:func:`audit_cohort` checks a split cohort (``medres audit``) by the rule every training
applies (:func:`audit_training_cohort`, run first by ``medres train``, ``retrain`` and
``run``): a patient on two sides is an error (:class:`~medres.errors.LeakageError`) —
except train + val in a cohort split with ``unit="scan"`` (``meta["split_unit"] ==
"scan"``), which is a warning — and so is a test scan whose pixels repeat in train or
val; identical pixels in train and val only are a warning. Both raise the same
messages. :func:`split_cohort` only warns about copies of test scans (the split is
written; ``move_copies_to_test`` fixes them). Training may let leakage through on
purpose (``allow_leakage``). :func:`summary_table` renders a report for the command line.

Example::

    from medres.cohort import Cohort
    from medres.split import audit_cohort, split_cohort

    cohort = split_cohort(Cohort.load("cohort.parquet"), fractions=(0.8, 0.1, 0.1), seed=1)
    print(audit_cohort(cohort).splits["test"].patients)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from rich.table import Table

from medres.cohort import SPLITS, Cohort
from medres.errors import ALLOW_LEAKAGE, ConfigError, LeakageError, ManifestError, quote_some

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)
SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
_MAX_FOLDS = 20  # sklearn's greedy is O(patients x folds) Python steps: keep K small
_FOLD_TOLERANCE = 0.02  # smallest K whose fold shares are this close to every fraction
_NO_LABEL = "(no label)"
_SHOW = 5  # ids quoted in a message before "..."
UNITS: tuple[str, ...] = ("patient", "scan")


class SplitWarning(UserWarning):
    """A split that is legal but may leak: scans without patient ids, duplicated pixels."""


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


def parse_fractions(text: str) -> tuple[float, float, float]:
    """Parse ``"0.7,0.15,0.15"`` into validated fractions; ConfigError if it is not that."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(_fractions_hint(text)) from None
    return check_fractions(values)


def check_fractions(
    fractions: Sequence[float], need_test: bool = True
) -> tuple[float, float, float]:
    """Return ``fractions`` as three floats in [0, 1] summing to 1, train > 0.

    ``need_test=False`` (site hold-out, where the site is the test set) lets the test
    fraction be zero. A zero val fraction is always allowed.
    """
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise ConfigError(_fractions_hint(fractions)) from None
    if (
        len(values) != 3
        or not all(math.isfinite(f) and 0.0 <= f <= 1.0 for f in values)
        or abs(sum(values) - 1.0) > 1e-6
    ):
        raise ConfigError(_fractions_hint(fractions))
    if values[0] == 0.0:
        raise ConfigError(f"the train fraction must be above 0; {_fractions_hint(fractions)}")
    if need_test and values[2] == 0.0:
        raise ConfigError(
            f"the test fraction must be above 0 (or hold out a site); {_fractions_hint(fractions)}"
        )
    return values[0], values[1], values[2]


def _fractions_hint(got: object) -> str:
    return (
        "fractions must be three numbers train,val,test in [0, 1] that sum to 1, "
        f"e.g. 0.7,0.15,0.15 (val may be 0: 0.8,0,0.2); got {got!r}"
    )


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
    if keep_column is not None:
        assigned = _kept_split(table[ok], keep_column)
    elif holdout_site is not None:
        assigned = _site_split(table[ok], holdout_site, values, seed)
    elif keep_test_column is not None:
        assigned = _kept_test_split(table[ok], keep_test_column, values, seed, unit)
    else:
        assigned = _stratified_split(table[ok], values, seed)
    moved: list[str] = []
    if move_copies_to_test:
        assigned, moved = _move_copies_to_test(table[ok], assigned)

    no_patient = int(patient_ids(table[ok]).isna().sum())
    if no_patient:
        if keep_column:
            how = f"their split was kept from column {keep_column!r} unchecked"
        elif keep_test_column:
            how = f"their test split was kept from column {keep_test_column!r} unchecked"
        else:
            how = "they were split scan by scan"
        warnings.warn(
            f"{no_patient} of {int(ok.sum())} scans have no patient_id: {how}, so scans of "
            "one patient may sit in both train and test (leakage the audit cannot see). "
            "Add patient ids to the manifest and re-run `medres split`.",
            SplitWarning,
            stacklevel=2,
        )
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


def patient_ids(rows: pd.DataFrame) -> pd.Series:
    """The patient_id column as text, with blank ids (``""``) treated as unknown (NA):
    patients as the audit tells them apart."""
    ids = rows["patient_id"].astype(object).where(rows["patient_id"].notna(), None)
    ids = ids.map(lambda v: None if v is None or str(v).strip() == "" else str(v))
    return ids


def _groups(rows: pd.DataFrame) -> np.ndarray:
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


def _label_codes(rows: pd.DataFrame) -> np.ndarray:
    """Integer class per row for stratification; a null label is a class of its own."""
    names = [_label_name(v) for v in rows["label"]]
    return np.unique(np.array(names, dtype=object), return_inverse=True)[1]


def _label_name(value: Any) -> str:
    """A label as text: ``1.0`` (an int column with nulls) prints as ``1``.

    A multi-label vector (list or array) becomes one class per distinct vector.
    """
    if value is not None and not pd.api.types.is_scalar(value):
        return ",".join(_label_name(v) for v in value)
    if value is None or pd.isna(value):
        return _NO_LABEL
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _stratified_split(rows: pd.DataFrame, fractions: Sequence[float], seed: int) -> np.ndarray:
    """Split names for ``rows`` drawn by StratifiedGroupKFold (patients as groups)."""
    return _fold_split(_label_codes(rows), _groups(rows), fractions, seed)


def _fold_split(
    labels: np.ndarray, groups: np.ndarray, fractions: Sequence[float], seed: int
) -> np.ndarray:
    """Cut into K label-balanced group folds and hand whole folds to each split."""
    from sklearn.model_selection import StratifiedGroupKFold

    wanted = sum(f > 0 for f in fractions)
    n_groups = len(np.unique(groups))
    if n_groups < wanted:
        raise ConfigError(
            f"cannot fill {wanted} splits from {n_groups} patient(s); add scans, or ask "
            "for fewer splits (e.g. --fractions 0.8,0,0.2)"
        )
    largest_class = int(np.bincount(labels).max())
    if largest_class < wanted:  # every class too rare to stratify: split by group only
        labels = np.zeros_like(labels)
        largest_class = len(labels)
    k, counts = _fold_allocation(fractions, min(_MAX_FOLDS, n_groups, largest_class))
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "least populated class has fewer members than K"
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        folds = [test for _, test in splitter.split(np.zeros(len(labels)), labels, groups)]
    names = np.empty(len(labels), dtype=object)
    start = 0
    for name, count in zip(SPLITS, counts, strict=True):
        for test in folds[start : start + count]:
            names[test] = name
        start += count
    empty = [name for name, f in zip(SPLITS, fractions, strict=True) if f > 0]
    empty = [name for name in empty if not (names == name).any()]
    if empty:
        raise ConfigError(
            f"the {'/'.join(empty)} split came out empty ({n_groups} patients); the cohort "
            "is too small for these fractions: add scans or set that fraction to 0"
        )
    return names


def _fold_allocation(fractions: Sequence[float], max_folds: int) -> tuple[int, tuple[int, ...]]:
    """Pick K folds and how many go to each split so shares approximate ``fractions``.

    The smallest K within ``_FOLD_TOLERANCE`` of every fraction wins (fewer folds are
    faster and better balanced); otherwise the closest K up to ``max_folds``.
    Each split with a positive fraction gets at least one fold; a zero fraction none.
    """
    best: tuple[float, int, tuple[int, ...]] | None = None
    for k in range(2, max(max_folds, 2) + 1):
        counts = _apportion(fractions, k)
        if counts is None:
            continue
        error = max(abs(c / k - f) for c, f in zip(counts, fractions, strict=True))
        if best is None or error < best[0] - 1e-12:
            best = (error, k, counts)
        if error <= _FOLD_TOLERANCE:
            break
    if best is None:  # max_folds too small for the splits asked: guarded by the caller
        raise ConfigError(f"cannot split into {fractions} with only {max_folds} fold(s)")
    return best[1], best[2]


def _apportion(fractions: Sequence[float], k: int) -> tuple[int, ...] | None:
    """Fold counts summing to ``k``: >= 1 where the fraction is > 0, 0 where it is 0.

    Largest-remainder rounding of ``fraction * k``; None if ``k`` is too small.
    """
    positive = [f > 0 for f in fractions]
    if sum(positive) > k:
        return None
    counts = [max(int(f * k), 1) if p else 0 for f, p in zip(fractions, positive, strict=True)]
    while sum(counts) > k:  # the minimum of one fold overshot: take from the largest
        counts[int(np.argmax(counts))] -= 1
    while sum(counts) < k:
        short = [
            f * k - c if p else -math.inf
            for f, c, p in zip(fractions, counts, positive, strict=True)
        ]
        counts[int(np.argmax(short))] += 1
    return tuple(counts)


def _site_split(rows: pd.DataFrame, site: str, fractions: Sequence[float], seed: int) -> np.ndarray:
    """All scans of ``site`` are test; the rest is train/val by ``fractions[:2]``."""
    sites = sorted(rows["site"].dropna().astype(str).unique())
    if site not in sites:
        present = sites or "none (ingest with --site NAME to record one)"
        raise ConfigError(f"no site {site!r} in the cohort; sites present: {present}")
    held = (rows["site"].notna() & (rows["site"].astype(str) == site)).to_numpy()
    if held.all():
        raise ConfigError(f"every readable scan is from site {site!r}; nothing is left to train on")
    both = _patients_on_both_sides(rows, held)
    if both:
        raise LeakageError(
            f"{len(both)} patient(s) have scans at the held-out site {site!r} and at "
            f"other sites: {quote_some(both)}; a site hold-out needs every patient at one "
            "site: remove their other-site scans, or split without --holdout-site",
            both,
        )
    names = np.full(len(rows), "test", dtype=object)
    train, val = fractions[0], fractions[1]
    rest = rows[~held]
    names[~held] = _fold_split(
        _label_codes(rest),
        _groups(rest),
        (train / (train + val), val / (train + val), 0.0),
        seed,
    )
    return names


def _kept_test_split(
    rows: pd.DataFrame, column: str, fractions: Sequence[float], seed: int, unit: str
) -> np.ndarray:
    """The test rows of ``column`` stay test; its train/val rows are redrawn by ``unit``."""
    given = _kept_split(rows, column, option="keep_test_column")
    test = given == "test"
    if not test.any():
        raise ManifestError(
            f"column {column!r} marks no scan as test, so there is no test set to keep; "
            "draw all three splits (no keep_test_column) or fix the column"
        )
    if test.all():
        raise ConfigError(
            f"column {column!r} marks every readable scan as test; nothing is left to "
            "draw train and val from"
        )
    both = _patients_on_both_sides(rows, test)
    if both:
        raise LeakageError(
            f"{len(both)} patient(s) have scans in the kept test set of column {column!r} "
            f"and in its train/val rows: {quote_some(both)}; the test set must be "
            "patient-disjoint: move those scans into one side, or split without "
            "keep_test_column",
            both,
        )
    names = np.full(len(rows), "test", dtype=object)
    pool = rows[~test]
    share = fractions[0] + fractions[1]
    train, val = fractions[0] / share, fractions[1] / share
    if unit == "scan":
        names[~test] = _scan_split(pool, val, seed)
    elif val == 0:
        names[~test] = "train"
    else:
        names[~test] = _fold_split(_label_codes(pool), _groups(pool), (train, val, 0.0), seed)
    return names


def _move_copies_to_test(rows: pd.DataFrame, names: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """``names`` with every train / val row whose pixel_hash is a test row's set to test,
    and the sorted scan_ids moved. LeakageError when a moved scan's patient keeps other
    scans in train / val (moving one scan would put that patient on both sides)."""
    hashes = rows["pixel_hash"]
    known = hashes.notna().to_numpy()
    in_test = set(hashes[known & (names == "test")])
    move = known & (names != "test") & hashes.isin(in_test).to_numpy()
    out = names.copy()
    out[move] = "test"
    moved = sorted(rows["scan_id"][move].astype(str))
    patients = set(patient_ids(rows)[move].dropna())
    split = [p for p in _patients_on_both_sides(rows, out == "test") if p in patients]
    if split:
        scans = sorted(rows["scan_id"][move & patient_ids(rows).isin(split).to_numpy()])
        raise LeakageError(
            f"moving the copies of test scans into test would split {len(split)} patient(s) "
            f"between test and train/val: {quote_some(split)} (copies {quote_some(scans)}); "
            "their other scans stay in train/val: move those patients' scans to test in "
            "the split column too, or drop the copies from the manifest",
            split,
        )
    return out, moved


def _patients_on_both_sides(rows: pd.DataFrame, side: np.ndarray) -> list[str]:
    """Sorted known patient ids with scans both where ``side`` (N,) bool is True and False."""
    patients = patient_ids(rows)
    known = patients.notna().to_numpy()
    return sorted(set(patients[side & known]) & set(patients[~side & known]))


def _scan_split(rows: pd.DataFrame, val: float, seed: int) -> np.ndarray:
    """train/val names drawn scan by scan, stratified by label, ignoring patients.

    sklearn's ``train_test_split``: exact shares, and fast on tens of thousands of
    slices (``StratifiedGroupKFold`` with one group per scan took 25 s on 50,000).
    Scans are ordered by scan_id first, so the split does not depend on row order.
    """
    from sklearn.model_selection import train_test_split

    names = np.full(len(rows), "train", dtype=object)
    n_val = round(val * len(rows))
    if val == 0:
        return names
    if not 1 <= n_val < len(rows):
        raise ConfigError(
            f"cannot draw a val share of {val:.3f} from {len(rows)} train/val scan(s): the "
            "pool is too small; add scans or set the val fraction to 0"
        )
    order = np.argsort(rows["scan_id"].astype(str).to_numpy(), kind="stable")
    labels = _label_codes(rows)[order]
    counts = np.bincount(labels)
    can_stratify = counts.min() >= 2 and min(n_val, len(rows) - n_val) >= len(counts)
    stratify = labels if can_stratify else None  # a class too rare: shares by scan only
    _, val_rows = train_test_split(
        order, test_size=n_val, random_state=seed, shuffle=True, stratify=stratify
    )
    names[val_rows] = "val"
    return names


def _kept_split(rows: pd.DataFrame, column: str, option: str = "keep_column") -> np.ndarray:
    """The predefined split in ``column``, normalised to train/val/test."""
    if column not in rows.columns:
        raise ConfigError(
            f"no column {column!r} in the manifest to keep a split from; "
            f"columns: {list(rows.columns)}"
        )
    raw = rows[column]
    missing = raw.isna() | (raw.astype(str).str.strip() == "")
    if missing.any():
        ids = rows["scan_id"][missing].astype(str).tolist()
        raise ManifestError(
            f"{len(ids)} of {len(rows)} readable scans have no value in column "
            f"{column!r}: {quote_some(ids)}; fill them with train/val/test, or drop "
            f"--{option.replace('_', '-')} to draw a split"
        )
    normal = raw.astype(str).str.strip().str.lower().map(SPLIT_ALIASES)
    if normal.isna().any():
        bad = sorted(raw[normal.isna()].astype(str).unique())
        raise ManifestError(
            f"column {column!r} holds values that are not a split: {quote_some(bad)}; "
            f"use one of {sorted(SPLIT_ALIASES)}"
        )
    return normal.to_numpy(dtype=object)


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
    ok, rows = _split_rows(cohort)
    scan_level = cohort.meta.get("split_unit") == "scan"
    error = _patients_error(rows, allow_train_val=scan_level, training=not splitting)
    if error is not None:
        raise error
    copies, _, splits = _copies(rows)
    if copies and not splitting:
        raise _test_copies_error(copies, splits)
    shared = _train_val_patients(rows) if scan_level else []
    if shared:
        warnings.warn(
            f"{len(shared)} patient(s) have scans in both train and val ({quote_some(shared)}): "
            "this cohort was split scan by scan on purpose (split_unit='scan'), so "
            "validation figures will be optimistic; the test set stays patient-disjoint",
            SplitWarning,
            stacklevel=2,
        )
    duplicates = _duplicate_pixels(rows)
    if duplicates:
        warnings.warn(
            f"{len(duplicates)} group(s) of scans have identical pixels but sit in "
            f"different splits: {quote_some(['[' + ', '.join(g) + ']' for g in duplicates])}; "
            "the same image in training and test inflates the metrics, in train and val "
            "the validation figures: drop the copies or put them in one split (`medres "
            "split COHORT.parquet --keep-column split --move-copies-to-test` moves "
            "train/val copies of test scans into test; `medres train` and `medres audit` "
            "refuse those)",
            SplitWarning,
            stacklevel=2,
        )
    return AuditReport(
        splits={name: _counts(rows[rows["split"] == name]) for name in SPLITS},
        duplicate_pixels=duplicates,
        scans_without_patient_id=int(patient_ids(rows).isna().sum()),
        unsplit_scans=int(ok["split"].isna().sum()),
        train_val_patients=shared,
    )


def _split_rows(cohort: Cohort) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The readable rows, and those of them with a split; ManifestError for a split value
    other than train / val / test."""
    table = cohort.table
    ok = table[table["status"] == "ok"]
    rows = ok[ok["split"].notna()]
    unknown = sorted(set(rows["split"].astype(str)) - set(SPLITS))
    if unknown:
        raise ManifestError(
            f"split values {unknown} are not train/val/test; re-split with "
            "`medres split COHORT.parquet --keep-column split` to normalise them"
        )
    return ok, rows


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


_ALLOW_LEAKAGE_HINT = f"{ALLOW_LEAKAGE} (a pipeline: allow_leakage = true in [split])"


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
    _, rows = _split_rows(cohort)
    unit = cohort.meta.get("split_unit")
    scan_level = unit == "scan"
    error = _patients_error(rows, allow_train_val=scan_level)
    if error is not None and not allow_leakage:
        raise error
    test_copies, train_val_copies, splits = _copies(rows)
    if test_copies and not allow_leakage:
        raise _test_copies_error(test_copies, splits)
    return TrainingAudit(
        scans=len(rows),
        with_patient_id=int(patient_ids(rows).notna().sum()),
        split_unit=unit,
        leaked_patients=error.patient_ids if error is not None else [],
        test_copies=test_copies,
        train_val_copies=train_val_copies,
        train_val_patients=_train_val_patients(rows) if scan_level else [],
        leakage_allowed=allow_leakage,
    )


def _copies(rows: pd.DataFrame) -> tuple[list[list[str]], list[list[str]], pd.Series]:
    """Groups of scan_ids with identical pixels in different splits: those with a test
    scan, the others (train and val only); and each scan_id's split."""
    splits = rows.set_index(rows["scan_id"].astype(str))["split"].astype(str)
    splits = splits[~splits.index.duplicated()]
    groups = _duplicate_pixels(rows)
    with_test = [g for g in groups if (splits[g] == "test").any()]
    return with_test, [g for g in groups if g not in with_test], splits


def _test_copies_error(test_copies: list[list[str]], splits: pd.Series) -> LeakageError:
    """The refusal of test scans copied into train or val (training and ``medres audit``)."""
    shown = [
        "[" + ", ".join(f"{s} ({splits[s]})" for s in _test_first(g, splits)) + "]"
        for g in test_copies
    ]
    return LeakageError(
        f"{len(test_copies)} test scan(s) have pixel copies in train or val: "
        f"{quote_some(shown)}; a model tested on images it trained or was selected on "
        "looks better than it is: move the copies into test with `medres split "
        "COHORT.parquet --keep-column split --move-copies-to-test` (a pipeline: "
        f"move_copies_to_test = true in [split]) or drop them; {_ALLOW_LEAKAGE_HINT}",
    )


def _test_first(group: list[str], splits: pd.Series) -> list[str]:
    """A copy group's scan_ids, its test scans first."""
    return sorted(group, key=lambda s: (splits[s] != "test", s))


def _patients_error(
    rows: pd.DataFrame, allow_train_val: bool, training: bool = True
) -> LeakageError | None:
    """The refusal listing every patient whose scans sit in more than one split, or None.

    ``allow_train_val``: a patient in train and val only is not an error (scan-level split).
    ``training``: the cohort is about to be trained on (or audited for it), so the message
    ends with what ``--allow-leakage`` does.
    """
    patients = patient_ids(rows)
    known = rows[patients.notna()]
    patient = patients[patients.notna()]
    sides = known.groupby(patient)["split"].nunique()
    if allow_train_val:
        in_test = known.groupby(patient)["split"].agg(lambda s: (s == "test").any())
        sides = sides[in_test.reindex(sides.index, fill_value=False)]
    ids = sorted(sides.index[sides > 1])
    if not ids:
        return None
    shown = []
    for pid in ids[:_SHOW]:
        names = sorted(set(known["split"][patient == pid]), key=SPLITS.index)
        shown.append(f"{pid} ({', '.join(names)})")
    return LeakageError(
        f"{len(ids)} patient(s) appear in more than one split: {quote_some(shown, len(ids))}; "
        "a model tested on patients it trained on looks better than it is: re-split "
        "with `medres split COHORT.parquet`" + (f"; {_ALLOW_LEAKAGE_HINT}" if training else ""),
        ids,
    )


def _train_val_patients(rows: pd.DataFrame) -> list[str]:
    """Sorted known patients with scans in both train and val."""
    patients = patient_ids(rows)
    split = rows["split"].astype(str)
    train = set(patients[(split == "train") & patients.notna()])
    return sorted(train & set(patients[(split == "val") & patients.notna()]))


def _duplicate_pixels(rows: pd.DataFrame) -> list[list[str]]:
    """Sorted groups of scan_ids sharing a non-null pixel_hash across different splits."""
    hashed = rows[rows["pixel_hash"].notna()]
    groups = []
    for _, group in hashed.groupby("pixel_hash"):
        if group["split"].nunique() > 1:
            groups.append(sorted(group["scan_id"].astype(str)))
    return sorted(groups)


def _counts(rows: pd.DataFrame) -> SplitCounts:
    labels = pd.Series([_label_name(v) for v in rows["label"]], dtype=object)
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
