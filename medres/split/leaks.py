"""Finding leakage in a split cohort, and the refusals both audits raise.

A patient with scans in more than one split (:func:`patients_error`), and groups of
scans with identical pixels (``pixel_hash``) in different splits
(:func:`duplicate_pixels`, :func:`pixel_copies`): those with a test scan are refused
(:func:`test_copies_error`), those in train and val only are a warning.
"""

from __future__ import annotations

import pandas as pd

from medres.cohort import SPLITS, Cohort
from medres.errors import ALLOW_LEAKAGE, LeakageError, ManifestError, quote_some
from medres.split.rows import patient_ids

_SHOW = 5  # ids quoted in a message before "..."


_ALLOW_LEAKAGE_HINT = f"{ALLOW_LEAKAGE} (a pipeline: allow_leakage = true in [split])"


def split_rows(cohort: Cohort) -> tuple[pd.DataFrame, pd.DataFrame]:
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


def pixel_copies(rows: pd.DataFrame) -> tuple[list[list[str]], list[list[str]], pd.Series]:
    """Groups of scan_ids with identical pixels in different splits: those with a test
    scan, the others (train and val only); and each scan_id's split."""
    splits = rows.set_index(rows["scan_id"].astype(str))["split"].astype(str)
    splits = splits[~splits.index.duplicated()]
    groups = duplicate_pixels(rows)
    with_test = [g for g in groups if (splits[g] == "test").any()]
    return with_test, [g for g in groups if g not in with_test], splits


def test_copies_error(test_copies: list[list[str]], splits: pd.Series) -> LeakageError:
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


def patients_error(
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


def train_val_patients(rows: pd.DataFrame) -> list[str]:
    """Sorted known patients with scans in both train and val."""
    patients = patient_ids(rows)
    split = rows["split"].astype(str)
    train = set(patients[(split == "train") & patients.notna()])
    return sorted(train & set(patients[(split == "val") & patients.notna()]))


def duplicate_pixels(rows: pd.DataFrame) -> list[list[str]]:
    """Sorted groups of scan_ids sharing a non-null pixel_hash across different splits."""
    hashed = rows[rows["pixel_hash"].notna()]
    groups = []
    for _, group in hashed.groupby("pixel_hash"):
        if group["split"].nunique() > 1:
            groups.append(sorted(group["scan_id"].astype(str)))
    return sorted(groups)
