"""Format versions of medres's on-disk files (docs/formats.md).

For each versioned file: the writer records its version, a file whose major version is
99 is refused with a message naming the file, the version found and the versions read,
and a file written before versions existed (no version) still reads as version 1.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from medres.cohort import COLUMNS, Cohort
from medres.errors import ConfigError, ManifestError, ReviewError
from medres.files import check_format, format_major
from medres.predict.store import ResultStore, read_predictions
from medres.review.issues import LABEL_ISSUE_COLUMNS, format_sidecar, read_label_issues
from medres.review.outdir import read_outdir
from medres.review.store import ReviewStore

PROJECT = Path(__file__).resolve().parents[1]


def _refused(excinfo, file) -> None:
    """The message names the file, the version found (99) and the version read (1)."""
    message = str(excinfo.value)
    assert str(file) in message
    assert "99" in message
    assert "reads format version 1" in message


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def _set_parquet_meta(path: Path, meta: dict | None) -> None:
    """Rewrite a Parquet file with ``meta`` as its ``medres`` metadata (None: no key)."""
    table = pq.read_table(path)
    kv = dict(table.schema.metadata or {})
    kv.pop(b"medres", None)
    if meta is not None:
        kv[b"medres"] = json.dumps(meta).encode()
    pq.write_table(table.replace_schema_metadata(kv), path)


# --------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("version", "major"),
    [(None, 1), (1, 1), ("1", 1), ("1.3", 1), (2, 2), ("99.0", 99), (True, None), ("x", None)],
)
def test_format_major(version, major):
    assert format_major(version) == major


def test_check_format_names_file_found_and_read():
    with pytest.raises(ConfigError) as e:
        check_format("some/file.json", "99.1", (1,), ConfigError)
    assert "some/file.json has format version '99.1'" in str(e.value)
    assert "reads format version 1" in str(e.value)
    assert check_format("f", "1.7", (1,), ConfigError) == 1  # a minor version only adds


# --------------------------------------------------------------------------- manifest


def _manifest(tmp_path: Path) -> Path:
    row = {c: None for c in COLUMNS}
    row.update(scan_id="a.png", path="/x/a.png", files=["/x/a.png"], status="ok")
    return Cohort(pd.DataFrame([row]), {"root": "/x"}).save(tmp_path / "c.parquet")


def test_manifest_version(tmp_path):
    path = _manifest(tmp_path)
    meta = json.loads(pq.read_schema(path).metadata[b"medres"])
    assert meta["format"] == 1 and meta["root"] == "/x"
    assert Cohort.load(path).meta["format"] == 1

    _set_parquet_meta(path, {**meta, "format": 99})
    with pytest.raises(ManifestError) as e:
        Cohort.load(path)
    _refused(e, path)

    _set_parquet_meta(path, {k: v for k, v in meta.items() if k != "format"})  # before versions
    assert Cohort.load(path).table["scan_id"].tolist() == ["a.png"]
    _set_parquet_meta(path, None)  # no medres metadata at all
    assert len(Cohort.load(path).table) == 1


def test_shipped_cohort_saved_and_loaded(example_cohort, tmp_path):
    path = example_cohort.save(tmp_path / "example.parquet")
    loaded = Cohort.load(path)
    assert loaded.meta["format"] == 1
    assert loaded.fingerprint() == example_cohort.fingerprint()


# --------------------------------------------------------------------------- predict OUTDIR


def _prediction_row(n: int) -> dict:
    return {
        "scan_id": f"s{n}.png",
        "path": f"/scans/s{n}.png",
        "patient_id": None,
        "input_hash": f"{n:064x}",
        "bundle_id": "b" * 32,
        "bundle_checksum": "c" * 64,
        "predicted_class": "1",
        "confidence": 0.8,
        "prob_0": 0.2,
        "prob_1": 0.8,
        "conformal_set": "1",
        "set_size": 1,
        "ood_score": 1.0,
        "ood": False,
        "refer": False,
        "refer_reason": "",
    }


JOB = {"bundles": [{"id": "b" * 32, "checksum": "c" * 64}], "mc_samples": 0, "tta": False}


def _outdir(tmp_path: Path) -> Path:
    """A finished OUTDIR written by ResultStore (the writer medres predict uses)."""
    out = tmp_path / "out"
    store = ResultStore(out, JOB)
    store.write_part([_prediction_row(0), _prediction_row(1)])
    store.finish({("s0.png", f"{0:064x}"), ("s1.png", f"{1:064x}")}, [])
    store.write_summary({"counts": {"scans": 2}})
    return out


def test_outdir_files_carry_versions(tmp_path):
    out = _outdir(tmp_path)
    assert json.loads((out / "job.json").read_text())["format"] == 1
    assert json.loads((out / "run.json").read_text())["format"] == 1
    meta = json.loads(pq.read_schema(out / "predictions.parquet").metadata[b"medres"])
    assert meta["format"] == 1
    assert len(read_predictions(out / "predictions.parquet")) == 2
    loaded = read_outdir(out)
    assert loaded.job == JOB  # the version is checked, not part of the contract
    assert loaded.classes == ["0", "1"]


def test_job_json_major_99_refused(tmp_path):
    out = _outdir(tmp_path)
    _edit_json(out / "job.json", format=99)
    with pytest.raises(ConfigError) as e:
        ResultStore(out, JOB)  # a rerun into the same OUTDIR
    _refused(e, out / "job.json")
    with pytest.raises(ReviewError) as e:
        read_outdir(out)
    _refused(e, out / "job.json")


def test_run_json_major_99_refused(tmp_path):
    out = _outdir(tmp_path)
    _edit_json(out / "run.json", format="99.0")
    with pytest.raises(ReviewError) as e:
        read_outdir(out)
    _refused(e, out / "run.json")


def test_predictions_major_99_refused(tmp_path):
    out = _outdir(tmp_path)
    _set_parquet_meta(out / "predictions.parquet", {"format": 99})
    with pytest.raises(ConfigError) as e:
        ResultStore(out, JOB).done()  # resuming reads the rows already predicted
    _refused(e, out / "predictions.parquet")
    with pytest.raises(ReviewError) as e:
        read_outdir(out)
    _refused(e, out / "predictions.parquet")


def test_outdir_without_versions_reads_and_resumes(tmp_path):
    """An OUTDIR written before format versions: same contract, same review run key."""
    out = _outdir(tmp_path)
    key = read_outdir(out).run_key()
    _edit_json(out / "job.json", format=None)
    _edit_json(out / "run.json", format=None)
    _set_parquet_meta(out / "predictions.parquet", None)
    loaded = read_outdir(out)
    assert loaded.job == JOB and loaded.run_key() == key
    store = ResultStore(out, JOB)  # resumable: the contract without a version is the same
    assert len(store.done()) == 2
    assert json.loads((out / "job.json").read_text())["format"] == 1


def test_real_predict_outdir(review_run, tmp_path):
    """The session's finished `medres predict` OUTDIR carries versions; with them taken
    out (as an older medres wrote it) it loads into a review store as the same run."""
    out = shutil.copytree(review_run, tmp_path / "run")
    assert json.loads((out / "job.json").read_text())["format"] == 1
    assert json.loads((out / "run.json").read_text())["format"] == 1
    key = read_outdir(out).run_key()
    _edit_json(out / "job.json", format=None)
    _edit_json(out / "run.json", format=None)
    _set_parquet_meta(out / "predictions.parquet", None)
    assert read_outdir(out).run_key() == key
    with ReviewStore(tmp_path / "r.db") as store:
        assert store.load_run(out).cases_added == len(read_outdir(out).predictions)
    _edit_json(out / "job.json", format=99)
    with ReviewStore(tmp_path / "r2.db") as store, pytest.raises(ReviewError) as e:
        store.load_run(out)
    _refused(e, out / "job.json")


def test_bundle_major_99_refused(review_run, tmp_path):
    """bundle.json has carried ``format: 1`` from the start; another one is refused even
    with a matching seal, naming the bundle, the format found and the one read."""
    from medres.bundle import verify_bundle, write_manifest
    from medres.errors import BundleError

    bundle = shutil.copytree(review_run.parent / "b", tmp_path / "b")
    manifest = verify_bundle(bundle)
    assert manifest["format"] == 1
    write_manifest(bundle, {**manifest, "format": 99})  # resealed: only the format differs
    with pytest.raises(BundleError) as e:
        verify_bundle(bundle)
    assert str(bundle) in str(e.value) and "99" in str(e.value)
    assert "reads format 1" in str(e.value)


# --------------------------------------------------------------------------- report.json


def test_report_json_version(tmp_path):
    from medres.evaluate.report import read_report

    path = tmp_path / "report.json"
    path.write_text(json.dumps({"format": 1, "task": "binary"}))
    assert read_report(tmp_path)["task"] == "binary"
    path.write_text(json.dumps({"task": "binary"}))  # before versions
    assert read_report(path)["task"] == "binary"
    path.write_text(json.dumps({"format": 99, "task": "binary"}))
    with pytest.raises(ConfigError) as e:
        read_report(path)
    _refused(e, path)


def test_report_writer_records_version(tmp_path):
    import numpy as np

    from medres.evaluate import evaluate, write_report

    y = np.array([0, 1, 0, 1, 1, 0])
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8], [0.4, 0.6], [0.9, 0.1]])
    ev = evaluate(y, probs, task="binary", n_boot=0)
    path = write_report(ev, tmp_path)
    assert json.loads(path.read_text())["format"] == 1


# --------------------------------------------------------------------------- compare / registry


def test_compare_json_major_99_refused_by_promote(tmp_path):
    from medres.retrain.compare import read_comparison
    from medres.retrain.registry import promote

    folder = tmp_path / "cmp"
    folder.mkdir()
    path = folder / "compare.json"
    path.write_text(json.dumps({"format": 99, "verdict": "promote"}))
    with pytest.raises(ConfigError) as e:
        promote(tmp_path / "registry.json", folder)
    _refused(e, path)
    path.write_text(json.dumps({"verdict": "keep"}))  # before versions
    assert read_comparison(folder)["verdict"] == "keep"


def test_comparison_writes_version():
    from medres.retrain.compare import Comparison

    data = Comparison({}, {}, 0.01, 10, [], "keep").to_dict()
    assert data["format"] == 1


def test_registry_json_version(tmp_path):
    from medres.retrain.registry import read_registry

    path = tmp_path / "registry.json"
    assert read_registry(path)["format"] == 1  # a new registry
    path.write_text(json.dumps({"format": 99, "models": {}, "events": []}))
    with pytest.raises(ConfigError) as e:
        read_registry(path)
    _refused(e, path)
    path.write_text(json.dumps({"models": {}, "events": []}))  # no version: read as 1
    assert read_registry(path)["format"] == 1
    path.write_text(json.dumps({"format": "1.1", "models": {}, "events": []}))
    assert read_registry(path)["models"] == {}


# --------------------------------------------------------------------------- label issues


def _issues_csv(tmp_path: Path) -> Path:
    row = {c: "" for c in LABEL_ISSUE_COLUMNS}
    row.update(
        rank="1",
        scan_id="a.png",
        path="/x/a.png",
        given_label="0",
        suggested_label="1",
        flagged="True",
        reason="possible label error",
        input_hash="0" * 64,
        bundle_id="b" * 32,
        bundle_checksum="c" * 64,
        prob_0="0.1",
        prob_1="0.9",
    )
    path = tmp_path / "issues.csv"
    pd.DataFrame([row]).to_csv(path, index=False)
    return path


def test_label_issues_version(tmp_path):
    path = _issues_csv(tmp_path)
    assert len(read_label_issues(path).table) == 1  # no sidecar: version 1
    sidecar = format_sidecar(path)
    assert sidecar == tmp_path / "issues.csv.json"
    sidecar.write_text(json.dumps({"format": 1}))
    assert len(read_label_issues(path).table) == 1
    sidecar.write_text(json.dumps({"format": 99}))
    with pytest.raises(ReviewError) as e:
        read_label_issues(path)
    _refused(e, path)
    assert "issues.csv.json" in str(e.value)
    assert pd.read_csv(path).shape == (1, len(LABEL_ISSUE_COLUMNS) + 2)  # the CSV stays plain


# --------------------------------------------------------------------------- review store


def test_review_store_schema_version(tmp_path):
    db = tmp_path / "review.db"
    ReviewStore(db).close()

    def version():
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT value FROM settings WHERE name='schema_version'")
            return [r[0] for r in rows]

    assert version() == ["2"]
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE settings SET value='99' WHERE name='schema_version'")
    with pytest.raises(ReviewError) as e:
        ReviewStore(db)
    _refused(e, db)
    with sqlite3.connect(db) as conn:  # a store created before versions existed
        conn.execute("DELETE FROM settings WHERE name='schema_version'")
    ReviewStore(db).close()
    assert version() == ["2"]


def test_docs_formats_names_every_versioned_file():
    text = (PROJECT / "docs" / "formats.md").read_text()
    for name in (
        "COHORT.parquet",
        "bundle.json",
        "predictions.parquet",
        "failures.csv",
        "report.json",
        "job.json",
        "run.json",
        "compare.json",
        "registry.json",
        "label-issues CSV",
        "review store",
    ):
        assert name in text, name
    readme = (PROJECT / "README.md").read_text()
    assert "docs/formats.md" in readme
