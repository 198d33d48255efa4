"""The ways :func:`~medres.split.split_cohort` assigns splits besides drawing all three.

Keep a split given in a column (:func:`kept_split`), hold out a site as test
(:func:`site_split`), keep only a column's test split and draw train / val from the
rest (:func:`kept_test_split`), and move train / val copies of test scans into test
(:func:`move_copies_into_test`). Each takes the readable rows and returns an (N,) object
array of split names, one per row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from medres.errors import ConfigError, LeakageError, ManifestError, quote_some
from medres.split.folds import fold_split, scan_split
from medres.split.rows import label_codes, patient_groups, patient_ids, patients_on_both_sides

SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


def site_split(rows: pd.DataFrame, site: str, fractions: Sequence[float], seed: int) -> np.ndarray:
    """All scans of ``site`` are test; the rest is train/val by ``fractions[:2]``."""
    sites = sorted(rows["site"].dropna().astype(str).unique())
    if site not in sites:
        present = sites or "none (ingest with --site NAME to record one)"
        raise ConfigError(f"no site {site!r} in the cohort; sites present: {present}")
    held = (rows["site"].notna() & (rows["site"].astype(str) == site)).to_numpy()
    if held.all():
        raise ConfigError(f"every readable scan is from site {site!r}; nothing is left to train on")
    both = patients_on_both_sides(rows, held)
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
    names[~held] = fold_split(
        label_codes(rest),
        patient_groups(rest),
        (train / (train + val), val / (train + val), 0.0),
        seed,
    )
    return names


def kept_test_split(
    rows: pd.DataFrame, column: str, fractions: Sequence[float], seed: int, unit: str
) -> np.ndarray:
    """The test rows of ``column`` stay test; its train/val rows are redrawn by ``unit``."""
    given = kept_split(rows, column, option="keep_test_column")
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
    both = patients_on_both_sides(rows, test)
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
        names[~test] = scan_split(pool, val, seed)
    elif val == 0:
        names[~test] = "train"
    else:
        names[~test] = fold_split(label_codes(pool), patient_groups(pool), (train, val, 0.0), seed)
    return names


def move_copies_into_test(rows: pd.DataFrame, names: np.ndarray) -> tuple[np.ndarray, list[str]]:
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
    split = [p for p in patients_on_both_sides(rows, out == "test") if p in patients]
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


def kept_split(rows: pd.DataFrame, column: str, option: str = "keep_column") -> np.ndarray:
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
