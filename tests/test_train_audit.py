"""Training audits its cohort first (issue 21 step 8, issue 27): a patient or a test
scan's pixel copy on two sides is refused by ``medres train`` / ``retrain`` / ``run``
unless ``--allow-leakage``; ``medres split --move-copies-to-test`` moves the copies;
``medres retrain`` names the cohort that holds a leaking scan. On the shipped chest
X-ray subset, 1-epoch models."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from medres.cli import app
from medres.cohort import Cohort
from medres.errors import LeakageError
from medres.frozen import hash_id, read_frozen
from medres.retrain.job import retrain_bundle
from medres.split import TrainingAudit

QUICK = ["--epochs", "1", "--set", "batch_size=16", "--set", "num_workers=0"]
SIZES = (("train", 32), ("val", 16), ("test", 16))


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _flat(text: str) -> str:
    return " ".join(text.split())


def _table(example_cohort, part: int, prefix: str) -> pd.DataFrame:
    """Scans ``part`` (0, 1) of each split, classes balanced, each its own patient."""
    parts = []
    for split, n in SIZES:
        rows = example_cohort.table[example_cohort.table["split"] == split]
        for _, group in rows.groupby("label"):
            parts.append(group.iloc[part * n // 2 : (part + 1) * n // 2])
    table = pd.concat(parts).reset_index(drop=True)
    table["patient_id"] = [f"{prefix}{i:03d}" for i in range(len(table))]
    return table


def _with_test_copy(table: pd.DataFrame, split: str = "train") -> pd.DataFrame:
    """``table`` plus the first test scan again, as another scan (no patient id) in ``split``."""
    original = table[table["split"] == "test"].iloc[[0]]
    copy = original.assign(scan_id="copy_of_test.png", patient_id=None, split=split)
    return pd.concat([table, copy], ignore_index=True)


def _save(example_cohort, table: pd.DataFrame, path: Path) -> Path:
    return Cohort(table, dict(example_cohort.meta)).save(path)


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "bundle.json").read_text())


# --- patients on two sides ------------------------------------------------------------


@pytest.fixture(scope="module")
def leaky_champion(example_cohort, tmp_path_factory):
    """A cohort whose train split holds a scan of a test patient and a copy of a test
    scan (no patient id): refused by train, then trained with --allow-leakage (the
    champion of the retraining tests below); and a clean new cohort."""
    tmp = tmp_path_factory.mktemp("leaky_champion")
    table = _table(example_cohort, 0, "A")
    test_patient = table.loc[table["split"] == "test", "patient_id"].iloc[-1]
    table.loc[0, "patient_id"] = test_patient  # a training scan of a test patient
    a = _save(example_cohort, _with_test_copy(table), tmp / "a.parquet")
    b = _save(example_cohort, _table(example_cohort, 1, "B"), tmp / "b.parquet")
    refused = _invoke("train", "--cohort", a, *QUICK, "-o", tmp / "refused")
    allowed = _invoke("train", "--cohort", a, "--allow-leakage", *QUICK, "-o", tmp / "v1")
    return tmp, a, b, test_patient, table.loc[0, "scan_id"], refused, allowed


def test_train_refuses_a_patient_in_train_and_test_unless_allowed(leaky_champion):
    tmp, _, _, test_patient, _, refused, allowed = leaky_champion
    assert refused.exit_code == 2, refused.output
    said = _flat(refused.output)
    assert f"{test_patient} (train, test)" in said and "--allow-leakage" in said
    assert not (tmp / "refused" / "bundle.json").exists()
    assert not (tmp / "refused" / "checkpoints").exists()  # refused before any training

    assert allowed.exit_code == 0, allowed.output
    training = _manifest(tmp / "v1")["training"]
    assert training["leakage_allowed"] is True
    leakage = training["leakage"]
    assert leakage["patients"] == 1 and len(leakage["patient_hashes"]) == 1
    assert leakage["test_copies"] == 1
    (copies,) = leakage["test_copy_hashes"]  # the group: the test scan and its copy
    salt = read_frozen(tmp / "v1")["salt"]
    assert len(copies) == 2 and hash_id(salt, "copy_of_test.png") in copies
    shared = (tmp / "v1" / "bundle.json").read_text()  # meant to be shared: no clear ids
    assert test_patient not in shared and "copy_of_test.png" not in shared
    card = _flat((tmp / "v1" / "model_card.md").read_text())
    limitations = card.split("## Limitations")[1]
    assert "--allow-leakage" in limitations and "1 patient(s)" in limitations
    assert "1 test scan(s) have copies in train or val" in limitations


def test_scan_level_split_may_still_share_patients_between_train_and_val(example_cohort, tmp_path):
    table = _table(example_cohort, 0, "A")
    val_patient = table.loc[table["split"] == "val", "patient_id"].iloc[0]
    table.loc[0, "patient_id"] = val_patient  # one patient in train and val, on purpose
    meta = {**example_cohort.meta, "split_unit": "scan", "split_by": "scan"}
    cohort = Cohort(table, meta).save(tmp_path / "scan_level.parquet")
    from medres.split import audit_training_cohort

    audit = audit_training_cohort(Cohort.load(cohort))
    assert audit.leaked_patients == [] and audit.train_val_patients == [val_patient]
    meta["split_unit"] = "patient"  # the same table, split by patient: refused
    with pytest.raises(LeakageError, match=f"{val_patient} \\(train, val\\)"):
        audit_training_cohort(Cohort(table, meta))


# --- the model card says what it knows of patients ------------------------------------


def test_patient_id_wording_of_the_model_card():
    from medres.model_card import _patient_notes

    every = _patient_notes(TrainingAudit(scans=64, with_patient_id=64, split_unit="patient"))
    assert "Every scan has a patient id" in every[0] and every[1] == []
    some = _patient_notes(TrainingAudit(scans=64, with_patient_id=48, split_unit="patient"))
    assert "16 of 64 scans have no patient id" in some[0] and "16 of 64" in some[1][0]
    none = _patient_notes(TrainingAudit(scans=64, with_patient_id=0, split_unit="patient"))
    assert "no patient ids" in none[1][0]
    scan = _patient_notes(
        TrainingAudit(64, 64, "scan", train_val_patients=["P1", "P2"], leakage_allowed=False)
    )
    assert "scan by scan on purpose" in scan[1][0] and "Every scan" in scan[0]
    assert "2 patient(s) shared by train and validation" in scan[0]
    leaked = _patient_notes(TrainingAudit(64, 64, "patient", leaked_patients=["P1"]))
    assert "1 patient(s) with scans in more than one split" in leaked[0]


# --- pixel copies of test scans (issue 27) --------------------------------------------


@pytest.fixture(scope="module")
def moved(example_cohort, tmp_path_factory):
    """A cohort with a test X-ray copied into train: refused by train, then split with
    --move-copies-to-test and trained on (the champion of the retrain below)."""
    tmp = tmp_path_factory.mktemp("copies")
    leaky = _save(
        example_cohort, _with_test_copy(_table(example_cohort, 0, "A")), tmp / "a.parquet"
    )
    refused = _invoke("train", "--cohort", leaky, *QUICK, "-o", tmp / "refused")
    fixed = tmp / "a_fixed.parquet"
    split = _invoke("split", leaky, "--keep-column", "split", "--move-copies-to-test", "-o", fixed)
    trained = _invoke("train", "--cohort", fixed, *QUICK, "-o", tmp / "v1")
    return tmp, leaky, refused, fixed, split, trained


def test_train_refuses_a_test_scans_copy_in_train_naming_it(moved):
    tmp, _, refused, _, _, _ = moved
    assert refused.exit_code == 2, refused.output
    said = _flat(refused.output)
    assert "copy_of_test.png (train)" in said and "--move-copies-to-test" in said
    assert "--allow-leakage" in said
    assert not (tmp / "refused" / "bundle.json").exists()


def test_audit_refuses_a_test_scans_copy_with_trains_message_and_split_still_splits(moved):
    tmp, leaky, refused, _, _, _ = moved
    audited = _invoke("audit", leaky)
    assert audited.exit_code == 2, audited.output
    said = _flat(audited.output)
    assert said.startswith("error: ") and said == _flat(refused.output)  # one message
    assert "copy_of_test.png (train)" in said and "--move-copies-to-test" in said
    assert "copies of test scans" in _flat(_invoke("audit", "--help").output)

    kept = tmp / "kept.parquet"
    split = _invoke("split", leaky, "--keep-column", "split", "-o", kept)
    assert split.exit_code == 0, split.output
    assert kept.is_file()  # split keeps producing the split, warning about the copy
    said = _flat(split.output)
    assert "warning:" in said and "copy_of_test.png" in said
    assert "--move-copies-to-test" in said


def test_move_copies_to_test_moves_the_copy_and_training_then_succeeds(moved):
    tmp, leaky, _, fixed, split, trained = moved
    assert split.exit_code == 0, split.output
    assert "moved 1 train/val scan(s) to test" in _flat(split.output)
    assert "copy_of_test.png" in _flat(split.output)
    table = Cohort.load(fixed).table.set_index("scan_id")
    assert table.at["copy_of_test.png", "split"] == "test"
    assert Cohort.load(fixed).meta["split_copies_moved_to_test"] == ["copy_of_test.png"]
    before = Cohort.load(leaky).table.set_index("scan_id")["split"]
    assert (table["split"].drop("copy_of_test.png") == before.drop("copy_of_test.png")).all()

    assert trained.exit_code == 0, trained.output
    training = _manifest(tmp / "v1")["training"]
    assert training["leakage_allowed"] is False and training["leakage"]["test_copies"] == 0
    card = (tmp / "v1" / "model_card.md").read_text()
    # every scan but the copy has a patient id: said so, never "has no patient ids"
    assert "1 of 65 scans have no patient id" in _flat(card)
    assert "has no patient ids" not in card


def test_rehearsed_retrain_after_moving_the_copies_succeeds(moved, example_cohort):
    tmp, _, _, _, _, trained = moved
    assert trained.exit_code == 0, trained.output
    site_b = _save(example_cohort, _table(example_cohort, 1, "B"), tmp / "b.parquet")
    retrained = _invoke("retrain", tmp / "v1", "--cohort", site_b, *QUICK, "-o", tmp / "v2")
    assert retrained.exit_code == 0, retrained.output
    sources = _manifest(tmp / "v2")["cohort"]["sources"]
    assert len(sources) == 2  # the champion's cohort was rehearsed


def test_retrain_names_the_cohorts_of_a_patient_in_the_champions_val_and_new_train(
    moved, example_cohort
):
    """A follow-up patient: validated on in the champion's cohort, in the new cohort's
    train split. Refused (validation would be optimistic) naming both cohorts, with advice
    that works for a retraining; following it (the same split as the champion's) trains."""
    tmp, _, _, fixed, _, trained = moved
    assert trained.exit_code == 0, trained.output
    champion_rows = Cohort.load(fixed).table
    patient = champion_rows.loc[champion_rows["split"] == "val", "patient_id"].iloc[0]
    table = _table(example_cohort, 1, "B")
    first = table.index[table["split"] == "train"][0]
    table.loc[first, "patient_id"] = patient
    b = _save(example_cohort, table, tmp / "b_follow_up.parquet")
    refused = _invoke("retrain", tmp / "v1", "--cohort", b, *QUICK, "-o", tmp / "v_follow")
    assert refused.exit_code == 2, refused.output
    said = _flat(refused.output)
    assert f"{patient} (val in the champion's own training cohort {fixed.resolve()}" in said
    assert f"train in the new cohort {b.resolve()})" in said
    assert f"`medres split {b.resolve()} --keep-column split`" in said
    assert "--new-only" in said and "--allow-leakage" in said
    assert "medres split COHORT.parquet" not in said  # advice for a union: not actionable
    assert not (tmp / "v_follow" / "bundle.json").exists()

    table.loc[first, "split"] = "val"  # the advice: the split the champion's cohort uses
    b_val = _save(example_cohort, table, tmp / "b_follow_up_val.parquet")
    ok = _invoke("retrain", tmp / "v1", "--cohort", b_val, *QUICK, "-o", tmp / "v_follow_ok")
    assert ok.exit_code == 0, ok.output


def test_retrain_names_a_new_cohort_whose_own_split_shares_a_patient(
    moved, example_cohort, tmp_path
):
    tmp = moved[0]
    table = _table(example_cohort, 1, "B")
    val_patient = table.loc[table["split"] == "val", "patient_id"].iloc[0]
    table.loc[table.index[table["split"] == "train"][0], "patient_id"] = val_patient
    b = _save(example_cohort, table, tmp_path / "b.parquet")
    with pytest.raises(LeakageError) as err:
        retrain_bundle(tmp / "v1", [b], tmp_path / "v2", new_only=True, show_progress=False)
    said = _flat(str(err.value))
    assert f"{val_patient} (train and val in the new cohort {b.resolve()})" in said
    assert f"re-split it: `medres split {b.resolve()}`" in said
    assert err.value.patient_ids == [val_patient]


def test_val_copy_of_a_test_scan_is_refused_too(example_cohort):
    from medres.split import audit_training_cohort

    table = _with_test_copy(_table(example_cohort, 0, "A"), split="val")
    with pytest.raises(LeakageError, match=r"copy_of_test\.png \(val\)"):
        audit_training_cohort(Cohort(table, dict(example_cohort.meta)))
    audit = audit_training_cohort(Cohort(table, dict(example_cohort.meta)), allow_leakage=True)
    assert len(audit.test_copies) == 1


# --- retrain names the cohort holding the leaking scan --------------------------------


def test_retrain_names_the_champions_cohort_holding_the_copy(leaky_champion):
    tmp, a, b, test_patient, _, _, allowed = leaky_champion
    assert allowed.exit_code == 0, allowed.output
    refused = _invoke("retrain", tmp / "v1", "--cohort", b, *QUICK, "-o", tmp / "v2")
    assert refused.exit_code == 2, refused.output
    said = _flat(refused.output)
    assert "copies of its test scans' pixels: copy_of_test.png" in said
    assert f"scans of patients {test_patient}" in said
    assert f"the champion's own training cohort {a.resolve()}" in said
    assert "--new-only" in said and "--drop-leaking-rehearsal" in said
    assert "Remove these scans from the new cohort" not in said  # the new cohort is clean
    assert not (tmp / "v2" / "bundle.json").exists()


def test_drop_leaking_rehearsal_leaves_the_copy_out_and_records_it(leaky_champion):
    tmp, _, b, _, patient_scan, _, allowed = leaky_champion
    assert allowed.exit_code == 0, allowed.output
    result = _invoke(
        "retrain", tmp / "v1", "--cohort", b, "--drop-leaking-rehearsal", *QUICK, "-o", tmp / "v3"
    )
    assert result.exit_code == 0, result.output
    assert "left 2 scan(s) of the champion's cohort out of the rehearsal" in _flat(result.output)
    assert "copy_of_test.png" in _flat(result.output)  # the user's own terminal may say
    manifest = _manifest(tmp / "v3")
    salt = read_frozen(tmp / "v3")["salt"]
    assert manifest["training"]["rehearsal_dropped"] == {
        "scans": 2,
        "scan_hashes": sorted(hash_id(salt, s) for s in ["copy_of_test.png", patient_scan]),
    }
    shared = (tmp / "v3" / "bundle.json").read_text()
    assert "copy_of_test.png" not in shared and patient_scan not in shared
    trained_on = Cohort.load(tmp / "v3" / "training_cohort.parquet").table
    assert not {"copy_of_test.png", patient_scan} & set(trained_on["scan_id"])
    assert "left out of the rehearsal" in (tmp / "v3" / "model_card.md").read_text()


# --- medres run: the pipeline's [split] keys ------------------------------------------


def test_pipeline_split_moves_copies_by_config(example_cohort, tmp_path):
    from medres.pipeline.config import SplitConfig
    from medres.pipeline.run import _split

    leaky = _save(
        example_cohort, _with_test_copy(_table(example_cohort, 0, "A")), tmp_path / "a.parquet"
    )
    out = tmp_path / "split.parquet"
    _split(SplitConfig(keep_column="split", move_copies_to_test=True), leaky, out)
    assert Cohort.load(out).table.set_index("scan_id").at["copy_of_test.png", "split"] == "test"


def _leaky_scan_folder(folder: Path) -> Path:
    """A few of the shipped X-rays with their official split, plus a copy of a test X-ray
    filed under train (what a leaky official split looks like)."""
    import shutil

    from tests.conftest import EXAMPLE

    labels = pd.read_csv(EXAMPLE / "labels.csv")
    rows = labels.groupby(["split", "label"]).head(8).reset_index(drop=True)
    for path in rows["path"]:
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(EXAMPLE / path, folder / path)
    test = rows[rows["split"] == "test"].iloc[0]
    shutil.copy(EXAMPLE / test["path"], folder / "train" / "copy_of_test.png")
    copy = pd.DataFrame([{**test.to_dict(), "path": "train/copy_of_test.png", "split": "train"}])
    pd.concat([rows, copy]).to_csv(folder / "labels.csv", index=False)
    return folder


def test_run_refuses_a_leaking_split_and_trains_with_allow_leakage_in_its_config(tmp_path):
    from tests.test_pipeline import _pipeline

    data = _leaky_scan_folder(tmp_path / "data")
    (tmp_path / "refused").mkdir()
    refused_pipe = _pipeline(tmp_path / "refused")
    refused = _invoke("run", refused_pipe, "--data", data, "-o", tmp_path / "run_refused")
    assert refused.exit_code == 2, refused.output
    said = _flat(refused.output)
    assert "copy_of_test.png (train)" in said and "allow_leakage = true" in said
    assert not (tmp_path / "run_refused" / "tiny" / "bundle" / "bundle.json").exists()

    (tmp_path / "allowed").mkdir()
    allowed_pipe = _pipeline(tmp_path / "allowed")
    config = allowed_pipe / "config.toml"
    config.write_text(
        config.read_text().replace(
            'keep_column = "split"', 'keep_column = "split"\nallow_leakage = true'
        )
    )
    allowed = _invoke("run", allowed_pipe, "--data", data, "-o", tmp_path / "run_allowed")
    assert allowed.exit_code == 0, allowed.output
    training = _manifest(tmp_path / "run_allowed" / "tiny" / "bundle")["training"]
    assert training["leakage_allowed"] is True
