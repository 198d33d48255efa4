"""split_cohort's keep_test_column and unit options, and the audit of a scan-level split.

Cohorts are built by hand (every manifest column), as in test_split.py: several scans
per patient, so a scan-level split can put one patient in train and val.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from medres.cohort import COLUMNS, Cohort
from medres.errors import ConfigError, LeakageError, ManifestError
from medres.split import SplitWarning, audit_cohort, split_cohort


def official_cohort(n_patients: int = 120, seed: int = 0) -> Cohort:
    """Patients with 2-6 scans each, a label per patient, and a patient-level column
    ``official`` (about 60 / 20 / 20 % of patients, with spelling variants)."""
    rng = np.random.default_rng(seed)
    spelled = {"train": ["train", "Training"], "val": ["val", "Validation "], "test": ["TEST"]}
    rows = []
    for p in range(n_patients):
        label = ["benign", "malignant"][int(rng.random() < 0.3)]
        side = rng.choice(["train", "val", "test"], p=[0.6, 0.2, 0.2])
        for j in range(int(rng.integers(2, 7))):
            rows.append(
                {
                    **dict.fromkeys(COLUMNS),
                    "status": "ok",
                    "scan_id": f"P{p:03d}-s{j}",
                    "path": f"P{p:03d}/{j}.nii.gz",
                    "patient_id": f"P{p:03d}",
                    "label": label,
                    "pixel_hash": f"h{p}-{j}",
                    "official": spelled[side][j % len(spelled[side])],
                }
            )
    return Cohort(pd.DataFrame(rows))


def _official_test(cohort: Cohort) -> pd.Series:
    return cohort.table["official"].str.strip().str.lower() == "test"


def _quiet_split(cohort: Cohort, **kw) -> Cohort:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SplitWarning)
        return split_cohort(cohort, **kw)


# --- keep_test_column, patient-level ---------------------------------------------------


def test_kept_test_set_is_the_column_and_train_val_are_redrawn_by_patient():
    cohort = official_cohort()
    with warnings.catch_warnings():
        warnings.simplefilter("error", SplitWarning)  # a patient-level split: no warning
        out = split_cohort(cohort, keep_test_column="official", seed=3)
    table = out.table
    test = _official_test(cohort)
    assert (table["split"] == "test").tolist() == test.tolist()  # exactly the column's test
    pool = table[~test]
    assert set(pool["split"]) == {"train", "val"}
    shares = pool["split"].value_counts(normalize=True)  # 0.7 : 0.15 renormalised
    assert shares["val"] == pytest.approx(0.15 / 0.85, abs=0.04)
    assert (table.groupby("patient_id")["split"].nunique() == 1).all()
    # redrawn, not copied: some of the column's val scans are now train (and vice versa)
    was_val = pool["official"].str.strip().str.lower().isin(["val", "validation"])
    assert (pool.loc[was_val, "split"] == "train").any()
    assert (pool.loc[~was_val, "split"] == "val").any()
    assert out.meta["split_keep_test_column"] == "official"
    assert out.meta["split_unit"] == "patient" and out.meta["split_by"] == "patient"
    assert out.meta["split_keep_column"] is None and out.meta["split_seed"] == 3
    again = split_cohort(cohort, keep_test_column="official", seed=3)
    assert again.table["split"].tolist() == table["split"].tolist()


def test_kept_test_renormalises_fractions_and_allows_no_val():
    cohort = official_cohort()
    pool = ~_official_test(cohort)
    out = split_cohort(cohort, keep_test_column="official", fractions=(0.6, 0.2, 0.2))
    val_share = (out.table.loc[pool, "split"] == "val").mean()
    assert val_share == pytest.approx(0.25, abs=0.04)
    no_val = split_cohort(cohort, keep_test_column="official", fractions=(0.8, 0.0, 0.2))
    assert set(no_val.table.loc[pool, "split"]) == {"train"}


def test_kept_test_that_shares_a_patient_with_the_pool_is_leakage():
    cohort = official_cohort()
    table = cohort.table.copy()
    in_test = table.index[_official_test(cohort)]
    leaky = table.loc[in_test[0], "patient_id"]
    table.loc[in_test[0], "official"] = "train"  # one scan of a test patient moves to the pool
    for unit in ("patient", "scan"):
        with pytest.raises(LeakageError, match=f"kept test set.*{leaky}") as err:
            _quiet_split(Cohort(table), keep_test_column="official", unit=unit)
        assert err.value.patient_ids == [leaky]


def test_kept_test_column_errors():
    table = official_cohort(30).table.copy()
    table.loc[[1, 4], "official"] = ""
    with pytest.raises(ManifestError, match=r"2 of .* no value .*--keep-test-column"):
        split_cohort(Cohort(table), keep_test_column="official")
    table["official"] = "train"
    with pytest.raises(ManifestError, match="marks no scan as test"):
        split_cohort(Cohort(table), keep_test_column="official")
    table["official"] = "test"
    with pytest.raises(ConfigError, match="every readable scan as test"):
        split_cohort(Cohort(table), keep_test_column="official")
    with pytest.raises(ConfigError, match="no column 'fold'"):
        split_cohort(Cohort(table), keep_test_column="fold")


@pytest.mark.parametrize("other", [{"keep_column": "official"}, {"holdout_site": "A"}])
def test_keep_test_column_cannot_be_combined(other):
    with pytest.raises(ConfigError, match="cannot be combined"):
        split_cohort(official_cohort(30), keep_test_column="official", **other)


# --- unit="scan" -----------------------------------------------------------------------


def test_scan_unit_puts_a_patient_in_train_and_val_but_never_in_test():
    cohort = official_cohort()
    with pytest.warns(SplitWarning, match=r"patient\(s\) have scans in both train and val"):
        out = split_cohort(cohort, keep_test_column="official", unit="scan", seed=5)
    table = out.table
    test = _official_test(cohort)
    assert (table["split"] == "test").tolist() == test.tolist()
    pool = table[~test]
    sides = pool.groupby("patient_id")["split"].nunique()
    assert (sides == 2).sum() >= 5  # several patients straddle train and val
    test_patients = set(table.loc[test, "patient_id"])
    assert test_patients.isdisjoint(pool["patient_id"])
    # exact share, stratified by label (sklearn: each class within one scan of its share)
    assert (pool["split"] == "val").sum() == round(len(pool) * 0.15 / 0.85)
    for label, rows in pool.groupby("label"):
        assert abs((rows["split"] == "val").sum() - len(rows) * 0.15 / 0.85) <= 1, label
    assert out.meta["split_unit"] == "scan" and out.meta["split_by"] == "scan"

    with pytest.warns(SplitWarning, match="optimistic"):
        report = audit_cohort(out)  # accepted: train/val sharing was asked for
    assert report.train_val_patients == sorted(sides.index[sides == 2])


def test_scan_unit_does_not_depend_on_row_order_and_survives_save(tmp_path):
    cohort = official_cohort()
    first = _quiet_split(cohort, keep_test_column="official", unit="scan", seed=2)
    shuffled = Cohort(cohort.table.sample(frac=1, random_state=4).reset_index(drop=True))
    again = _quiet_split(shuffled, keep_test_column="official", unit="scan", seed=2)
    pd.testing.assert_series_equal(
        again.table.set_index("scan_id")["split"].sort_index(),
        first.table.set_index("scan_id")["split"].sort_index(),
    )
    loaded = Cohort.load(first.save(tmp_path / "c.parquet"))
    assert loaded.meta["split_unit"] == "scan"
    with pytest.warns(SplitWarning, match="optimistic"):
        assert audit_cohort(loaded).train_val_patients


def test_scan_unit_needs_keep_test_column():
    with pytest.raises(ConfigError, match="must keep a patient-level test set"):
        split_cohort(official_cohort(30), unit="scan")
    with pytest.raises(ConfigError, match="unit must be one of"):
        split_cohort(official_cohort(30), keep_test_column="official", unit="slice")


def test_audit_of_a_scan_level_split_still_refuses_a_patient_in_test():
    out = _quiet_split(official_cohort(), keep_test_column="official", unit="scan")
    table = out.table.copy()
    row = table[table["split"] == "train"].iloc[[0]]
    patient = row["patient_id"].iloc[0]
    table = pd.concat([table, row.assign(scan_id="copy", split="test")], ignore_index=True)
    with pytest.raises(LeakageError, match=f"{patient} \\(train, .*test\\)") as err:
        _quiet_audit(Cohort(table, out.meta))
    assert err.value.patient_ids == [patient]


def test_audit_without_split_unit_scan_is_unchanged():
    out = _quiet_split(official_cohort(), keep_test_column="official", unit="scan")
    shared = out.meta | {"split_unit": "patient"}
    for meta in ({k: v for k, v in out.meta.items() if k != "split_unit"}, shared):
        with pytest.raises(LeakageError, match=r"\(train, val\)"):
            audit_cohort(Cohort(out.table, meta))


def test_default_split_draws_70_15_15_by_patient_stratified_by_label():
    """With no option, split_cohort draws (seed 0) a patient-level split of about 70 / 15 /
    15 % of the scans, with the cohort's label mix in each split; a split column already in
    the manifest (``official``) is ignored."""
    cohort = official_cohort()
    with warnings.catch_warnings():
        warnings.simplefilter("error", SplitWarning)  # a clean patient-level split: no warning
        out = split_cohort(cohort)
    table = out.table
    shares = table["split"].value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.70, abs=0.03)
    assert shares["val"] == pytest.approx(0.15, abs=0.03)
    assert shares["test"] == pytest.approx(0.15, abs=0.03)
    assert (table.groupby("patient_id")["split"].nunique() == 1).all()
    malignant = (table["label"] == "malignant").mean()
    for split, rows in table.groupby("split"):
        assert (rows["label"] == "malignant").mean() == pytest.approx(malignant, abs=0.05), split
    assert (table["split"] == "test").tolist() != _official_test(cohort).tolist()  # drawn
    assert out.meta["split_fractions"] == [0.7, 0.15, 0.15] and out.meta["split_seed"] == 0
    assert out.meta["split_unit"] == "patient" and out.meta["split_by"] == "patient"
    assert out.meta["split_keep_test_column"] is None and out.meta["split_keep_column"] is None
    assert split_cohort(cohort).table["split"].tolist() == table["split"].tolist()
    assert split_cohort(cohort, seed=1).table["split"].tolist() != table["split"].tolist()
    assert audit_cohort(out).train_val_patients == []


def _quiet_audit(cohort: Cohort):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SplitWarning)
        return audit_cohort(cohort)
