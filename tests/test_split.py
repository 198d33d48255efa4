"""Patient-level splitting and the leakage audit (medres.split, `medres split` / `audit`).

Cohorts are built by hand here (a DataFrame with every manifest column), not by
ingest, so these tests pin the split itself.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from medres.cli import app
from medres.cohort import COLUMNS, SPLITS, Cohort
from medres.errors import ConfigError, LeakageError, ManifestError
from medres.split import (
    SplitWarning,
    audit_cohort,
    audit_training_cohort,
    parse_fractions,
    split_cohort,
    summary_table,
)


def make_cohort(rows: list[dict]) -> Cohort:
    """A cohort from row dicts; columns left out are null, status defaults to ok."""
    full = [{**dict.fromkeys(COLUMNS), "status": "ok", **row} for row in rows]
    return Cohort(pd.DataFrame(full, columns=list(COLUMNS)))


def patients_cohort(
    labels: list, scans: list[int], sites: list[str] | None = None, prefix: str = "P"
) -> Cohort:
    """One patient per entry of ``labels``, with ``scans[i]`` scans each."""
    rows = []
    for p, (label, n) in enumerate(zip(labels, scans, strict=True)):
        for j in range(n):
            rows.append(
                {
                    "scan_id": f"{prefix}{p}-s{j}",
                    "path": f"scans/{prefix}{p}/{j}.png",
                    "patient_id": f"{prefix}{p}",
                    "site": sites[p] if sites else "A",
                    "label": label,
                    "pixel_hash": f"hash-{prefix}{p}-{j}",
                }
            )
    return make_cohort(rows)


def random_cohort(n_patients: int, seed: int = 0, n_classes: int = 3, **kw) -> Cohort:
    rng = np.random.default_rng(seed)
    labels = [f"class{c}" for c in rng.integers(0, n_classes, n_patients)]
    return patients_cohort(labels, rng.integers(1, 7, n_patients).tolist(), **kw)


def sides_per_patient(cohort: Cohort) -> pd.Series:
    ok = cohort.table[(cohort.table["status"] == "ok") & (cohort.table["patient_id"] != "")]
    return ok.groupby("patient_id")["split"].nunique()


# --- the property: patient-level, stratified, reproducible -----------------------------


@st.composite
def cohorts(draw):
    n_patients = draw(st.integers(20, 300))
    n_classes = draw(st.integers(2, 3))
    labels = draw(st.lists(st.integers(0, n_classes - 1), min_size=n_patients, max_size=n_patients))
    scans = draw(st.lists(st.integers(1, 6), min_size=n_patients, max_size=n_patients))
    return patients_cohort(labels, scans)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cohort=cohorts(), seed=st.integers(0, 2**31 - 1))
def test_split_is_patient_level_stratified_and_reproducible(cohort, seed):
    out = split_cohort(cohort, seed=seed)
    table = out.table

    assert table["split"].isin(SPLITS).all()  # every readable scan has a split
    assert (sides_per_patient(out) == 1).all()  # no patient on two sides
    assert out.meta["split_by"] == "patient"
    pd.testing.assert_series_equal(split_cohort(cohort, seed=seed).table["split"], table["split"])

    # Class shares per split, on scans (what StratifiedGroupKFold balances). Whole
    # patients (up to 6 scans) move between splits, so a split of ~15 patients cannot
    # match the cohort closely; below 100 patients we do not check. From 100 patients
    # on, 400 random cohorts never deviated by more than 7.1 points (the worst: a rare
    # class of ~3 patients) and 300 examples of this test passed, while the same
    # split with stratification switched off misses 8 points in ~40% of such cohorts.
    # Hence: >= 100 patients, +-8 percentage points.
    if table["patient_id"].nunique() >= 100:
        whole = table["label"].value_counts(normalize=True)
        for name in SPLITS:
            part = table.loc[table["split"] == name, "label"].value_counts(normalize=True)
            gap = (part.reindex(whole.index, fill_value=0) - whole).abs().max()
            assert gap <= 0.08, f"{name}: label shares differ by {gap:.3f}"


def test_fraction_of_scans_per_split_is_close_to_asked():
    table = split_cohort(random_cohort(300), fractions=(0.8, 0.1, 0.1)).table
    shares = table["split"].value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.8, abs=0.03)
    assert shares["val"] == pytest.approx(0.1, abs=0.03)
    assert shares["test"] == pytest.approx(0.1, abs=0.03)


def test_another_seed_draws_another_split_and_row_order_does_not_matter():
    cohort = random_cohort(120)
    first = split_cohort(cohort, seed=0).table.set_index("scan_id")["split"]
    other = split_cohort(cohort, seed=1).table.set_index("scan_id")["split"]
    assert (first != other).any()

    shuffled = Cohort(cohort.table.sample(frac=1, random_state=3).reset_index(drop=True))
    again = split_cohort(shuffled, seed=0).table.set_index("scan_id")["split"]
    pd.testing.assert_series_equal(again.sort_index(), first.sort_index())


def test_zero_val_fraction_gives_no_val_scans():
    table = split_cohort(random_cohort(60), fractions=(0.8, 0, 0.2)).table
    assert set(table["split"]) == {"train", "test"}


def test_split_returns_a_new_cohort_and_records_how():
    cohort = random_cohort(40)
    out = split_cohort(cohort, fractions=(0.6, 0.2, 0.2), seed=7)
    assert cohort.table["split"].isna().all()  # the input is untouched
    assert out.meta["split_fractions"] == [0.6, 0.2, 0.2]
    assert out.meta["split_seed"] == 7
    assert out.meta["split_by"] == "patient"
    assert out.meta["split_keep_column"] is None
    assert out.meta["split_holdout_site"] is None


def test_split_survives_save_and_load(tmp_path):
    out = split_cohort(random_cohort(40), seed=3)
    loaded = Cohort.load(out.save(tmp_path / "cohort.parquet"))
    assert loaded.table["split"].tolist() == out.table["split"].tolist()
    assert loaded.meta["split_by"] == "patient"
    assert loaded.meta["split_seed"] == 3


@pytest.mark.parametrize(
    "fractions",
    [(0.5, 0.5, 0.5), (0.7, 0.3), (-0.1, 0.6, 0.5), (0.0, 0.5, 0.5), (0.9, 0.1, 0.0), ("a", 1, 0)],
)
def test_bad_fractions_say_what_to_pass(fractions):
    with pytest.raises(ConfigError, match=r"0\.7,0\.15,0\.15"):
        split_cohort(random_cohort(30), fractions=fractions)


def test_parse_fractions():
    assert parse_fractions("0.8, 0, 0.2") == (0.8, 0.0, 0.2)
    with pytest.raises(ConfigError, match="three numbers"):
        parse_fractions("0.7;0.3")


def test_unlabelled_scans_are_split_not_dropped():
    labels = ["a", "b", None, "a", None, "b"] * 10
    out = split_cohort(patients_cohort(labels, [2] * len(labels)))
    unlabelled = out.table[out.table["label"].isna()]
    assert len(unlabelled) == 40
    assert unlabelled["split"].isin(SPLITS).all()
    assert (sides_per_patient(out) == 1).all()


def test_error_rows_keep_a_null_split():
    cohort = random_cohort(30)
    table = cohort.table.copy()
    table.loc[[0, 5], "status"] = "error"
    table.loc[[0, 5], "error"] = "truncated file"
    table.loc[[0, 5], "split"] = "train"  # a stale value: cleared
    out = split_cohort(Cohort(table))
    assert out.table.loc[[0, 5], "split"].isna().all()
    assert out.table.loc[table["status"] == "ok", "split"].isin(SPLITS).all()


def test_a_cohort_too_small_for_three_splits_is_refused():
    with pytest.raises(ConfigError, match="2 patient"):
        split_cohort(patients_cohort(["a", "b"], [3, 3]))


def test_no_readable_scans_is_a_manifest_error():
    cohort = make_cohort([{"scan_id": "x", "status": "error", "error": "unreadable"}])
    with pytest.raises(ManifestError, match="no readable scans"):
        split_cohort(cohort)


# --- site hold-out -----------------------------------------------------------------------


def test_holdout_site_is_the_whole_test_set():
    sites = ["A", "B", "C", "B"] * 25
    out = split_cohort(random_cohort(100, sites=sites), holdout_site="B", fractions=(0.8, 0.2, 0))
    table = out.table
    assert (table.loc[table["site"] == "B", "split"] == "test").all()
    assert set(table.loc[table["site"] != "B", "split"]) == {"train", "val"}
    rest = table[table["site"] != "B"]["split"].value_counts(normalize=True)
    assert rest["val"] == pytest.approx(0.2, abs=0.05)
    assert out.meta["split_holdout_site"] == "B"


def test_unknown_holdout_site_lists_the_sites():
    cohort = random_cohort(20, sites=["North", "South"] * 10)
    with pytest.raises(ConfigError, match=r"'East'.*North.*South"):
        split_cohort(cohort, holdout_site="East")


def test_patient_at_the_held_out_site_and_another_is_leakage():
    table = random_cohort(20, sites=["A", "B"] * 10).table  # odd patients are at B
    extra = table[table["patient_id"] == "P1"].iloc[[0]].assign(scan_id="P1-at-A", site="A")
    cohort = Cohort(pd.concat([table, extra], ignore_index=True))
    with pytest.raises(LeakageError, match=r"held-out site 'B'.*P1") as err:
        split_cohort(cohort, holdout_site="B")
    assert err.value.patient_ids == ["P1"]


# --- a predefined split ------------------------------------------------------------------


def test_keep_column_respects_and_normalises_a_predefined_split():
    cohort = patients_cohort(["a", "b", "a", "b"], [2, 2, 1, 1])
    table = cohort.table.copy()
    table["official"] = ["train", "Train", "valid", "Validation ", "TEST", "val"]
    out = split_cohort(Cohort(table), keep_column="official")
    assert out.table["split"].tolist() == ["train", "train", "val", "val", "test", "val"]
    assert out.meta["split_keep_column"] == "official"
    assert out.meta["split_fractions"] is None


def test_keep_column_with_missing_values_names_the_scans():
    cohort = patients_cohort(["a", "b", "a"], [1, 1, 1])
    table = cohort.table.copy()
    table["split"] = ["train", None, ""]
    with pytest.raises(ManifestError, match=r"2 of 3 .*P1-s0, P2-s0"):
        split_cohort(Cohort(table), keep_column="split")


def test_keep_column_with_unknown_values_or_column():
    table = patients_cohort(["a", "b"], [1, 1]).table.copy()
    table["split"] = ["train", "holdout"]
    with pytest.raises(ManifestError, match="holdout"):
        split_cohort(Cohort(table), keep_column="split")
    with pytest.raises(ConfigError, match="no column 'fold'"):
        split_cohort(Cohort(table), keep_column="fold")


def test_keep_column_that_leaks_is_refused():
    table = patients_cohort(["a", "b"], [2, 2]).table.copy()
    table["split"] = ["train", "test", "train", "train"]
    with pytest.raises(LeakageError, match="P0") as err:
        split_cohort(Cohort(table), keep_column="split")
    assert err.value.patient_ids == ["P0"]


# --- scans without patient ids -----------------------------------------------------------


@pytest.mark.parametrize("missing", [None, ""])
def test_missing_patient_ids_split_by_scan_with_a_warning(missing):
    cohort = random_cohort(50)
    table = cohort.table.copy()
    table.loc[table.index[:30], "patient_id"] = missing
    with pytest.warns(SplitWarning, match="30 of .* no patient_id"):
        out = split_cohort(Cohort(table))
    assert out.meta["split_by"] == "scan"
    assert out.meta["split_scans_without_patient_id"] == 30
    assert out.table["split"].isin(SPLITS).all()
    # ids are never invented: the missing ones are still missing
    kept = out.table.loc[table.index[:30], "patient_id"]
    assert (kept.isna() if missing is None else kept == "").all()
    assert (sides_per_patient(out) == 1).all()  # the known patients still are patient-level


def test_with_patient_ids_there_is_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", SplitWarning)
        split_cohort(random_cohort(30))


# --- the audit ---------------------------------------------------------------------------


def test_audit_catches_a_planted_leak():
    out = split_cohort(random_cohort(60), seed=0)
    table = out.table.copy()
    for pid in ("P3", "P10"):
        rows = table.index[table["patient_id"] == pid]
        other = "test" if table.loc[rows[0], "split"] != "test" else "train"
        table = pd.concat(
            [table, table.loc[rows[:1]].assign(scan_id=f"{pid}-copy", split=other)],
            ignore_index=True,
        )
    with pytest.raises(LeakageError, match=r"2 patient.*P10 \(.*\).*P3 \(.*medres split") as err:
        audit_cohort(Cohort(table, out.meta))
    assert err.value.patient_ids == ["P10", "P3"]


def test_audit_ignores_error_rows_and_unsplit_scans():
    cohort = patients_cohort(["a", "b", "a"], [2, 1, 1])
    table = cohort.table.copy()
    table["split"] = ["train", "test", "test", None]  # P0 in train and test ...
    table.loc[1, "status"] = "error"  # ... but its test scan is an error row
    report = audit_cohort(Cohort(table))
    assert report.splits["train"].scans == 1
    assert report.splits["test"].patients == 1
    assert report.unsplit_scans == 1


def test_audit_counts_scans_patients_and_labels():
    out = split_cohort(patients_cohort(["a", "b"] * 20, [1, 2] * 20))
    report = audit_cohort(out)
    assert sum(c.scans for c in report.splits.values()) == 60
    assert sum(c.patients for c in report.splits.values()) == 40
    assert sum(c.labels.get("a", 0) for c in report.splits.values()) == 20
    text = _render(summary_table(report))
    assert "train" in text and "patients" in text and "a: " in text


def test_a_test_scans_copy_in_train_is_refused_by_the_audit_as_by_training():
    table = patients_cohort(["a", "b", "a", "b"], [1, 1, 1, 1]).table.copy()
    table["split"] = ["train", "test", "train", "val"]
    table["pixel_hash"] = ["same", "same", "lonely", "other"]  # P0 and P1: identical images
    with pytest.raises(LeakageError, match=r"P1-s0 \(test\), P0-s0 \(train\)") as audited:
        audit_cohort(Cohort(table))
    with pytest.raises(LeakageError) as trained:
        audit_training_cohort(Cohort(table))
    assert str(audited.value) == str(trained.value)  # the same rule, the same words
    # split_cohort (and `medres split`) still writes such a split, with a warning
    with pytest.warns(SplitWarning, match="identical pixels.*P0-s0, P1-s0.*move-copies-to-test"):
        report = audit_cohort(Cohort(table), splitting=True)
    assert report.duplicate_pixels == [["P0-s0", "P1-s0"]]
    with pytest.warns(SplitWarning, match="identical pixels"):
        split_cohort(Cohort(table), keep_column="split")


def test_identical_pixels_in_train_and_val_only_are_a_warning():
    table = patients_cohort(["a", "b", "a"], [1, 1, 1]).table.copy()
    table["split"] = ["train", "val", "test"]
    table["pixel_hash"] = ["same", "same", "other"]
    with pytest.warns(SplitWarning, match="identical pixels.*P0-s0, P1-s0"):
        assert audit_cohort(Cohort(table)).duplicate_pixels == [["P0-s0", "P1-s0"]]


def test_duplicates_within_one_split_are_not_reported():
    table = patients_cohort(["a", "b", "a"], [1, 1, 1]).table.copy()
    table["split"] = ["train", "train", "test"]
    table["pixel_hash"] = ["same", "same", None]
    with warnings.catch_warnings():
        warnings.simplefilter("error", SplitWarning)
        assert audit_cohort(Cohort(table)).duplicate_pixels == []


def _render(table) -> str:
    console = Console(width=120, record=True)
    console.print(table)
    return console.export_text()


# --- the command line --------------------------------------------------------------------

runner = CliRunner()


def flat(text: str) -> str:
    """Output with line wrapping undone, so assertions do not depend on terminal width."""
    return " ".join(text.split())


def test_cli_split_then_audit(tmp_path):
    path = random_cohort(80).save(tmp_path / "cohort.parquet")
    out = tmp_path / "split.parquet"
    result = runner.invoke(app, ["split", str(path), "--fractions", "0.8,0.1,0.1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "train" in result.output and "val" in result.output
    assert Cohort.load(path).table["split"].isna().all()  # -o leaves the input alone
    assert Cohort.load(out).table["split"].isin(SPLITS).all()

    result = runner.invoke(app, ["audit", str(out)])
    assert result.exit_code == 0, result.output
    assert "no patient appears in more than one split" in flat(result.output)


def test_cli_split_overwrites_in_place_and_warns_without_patient_ids(tmp_path):
    table = random_cohort(30).table.copy()
    table["patient_id"] = None
    path = Cohort(table).save(tmp_path / "cohort.parquet")
    result = runner.invoke(app, ["split", str(path), "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert "no patient_id" in flat(result.output)
    loaded = Cohort.load(path)
    assert loaded.table["split"].isin(SPLITS).all()
    assert loaded.meta["split_by"] == "scan"


def test_cli_audit_exits_2_on_a_leaked_manifest(tmp_path):
    table = patients_cohort(["a", "b"], [2, 2]).table.copy()
    table["split"] = ["train", "test", "val", "val"]
    path = Cohort(table).save(tmp_path / "leaky.parquet")
    result = runner.invoke(app, ["audit", str(path)])
    assert result.exit_code == 2
    assert "P0 (train, test)" in flat(result.output)
    assert "medres split" in flat(result.output)


def test_cli_split_bad_fractions_exit_2(tmp_path):
    path = random_cohort(20).save(tmp_path / "cohort.parquet")
    result = runner.invoke(app, ["split", str(path), "--fractions", "0.5,0.6"])
    assert result.exit_code == 2
    assert "0.7,0.15,0.15" in flat(result.output)


@pytest.mark.parametrize(
    ("verb", "example"), [("split", "medres split cohort.parquet"), ("audit", "medres audit")]
)
def test_cli_help_shows_an_example(verb, example):
    result = runner.invoke(app, [verb, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output and example in flat(result.output)


def test_cli_audit_names_the_duplicate_scans(tmp_path):
    table = patients_cohort(["a", "b", "a", "b"], [1, 1, 1, 1]).table.copy()
    table["split"] = ["train", "test", "train", "val"]
    table["pixel_hash"] = ["same", "same", "lonely", "other"]
    path = Cohort(table).save(tmp_path / "c.parquet")
    result = runner.invoke(app, ["audit", str(path)])  # a test scan's copy: refused
    assert result.exit_code == 2
    assert "[P1-s0 (test), P0-s0 (train)]" in " ".join(result.output.split())
    table["split"] = ["train", "val", "test", "test"]  # copies in train and val: a warning
    path = Cohort(table).save(tmp_path / "c.parquet")
    result = runner.invoke(app, ["audit", str(path)])
    assert result.exit_code == 0
    assert "[P0-s0, P1-s0]" in " ".join(result.output.split())
