"""`medres predict`: every scan a row or a failure, crash-safe resume, input checks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nibabel.testing import data_path as NIBABEL_DATA
from PIL import Image
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from medres.cli import app
from medres.errors import ConfigError, ScanContentError
from medres.predict import PredictOptions, predict_folder
from medres.predict.scans import check_modality
from tests.conftest import EXAMPLE
from tests.test_ingest import _make_junk

runner = CliRunner()
QUICK = ["--epochs", "2", "--set", "batch_size=16", "--set", "num_workers=0"]
TEST_PNGS = sorted((EXAMPLE / "test").glob("*.png"))


@pytest.fixture(scope="module")
def bundle(chest_bundle):
    """A 2-epoch chest X-ray bundle (calibrated, with OOD model) trained by the CLI."""
    return chest_bundle


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """Good chest X-rays beside Step 1's broken inputs and files that are not scans."""
    root = tmp_path_factory.mktemp("mixed")
    good = root / "good"
    good.mkdir()
    for png in TEST_PNGS[:20]:
        shutil.copy(png, good / png.name)
    _make_junk(root / "junk")  # empty / truncated DICOM, NaN NIfTI, PNG named .dcm, text
    shutil.copy(f"{NIBABEL_DATA}/anatomical.nii", root / "junk" / "brain_3d.nii")
    (root / "junk" / "run_info.json").write_text('{"scanner": "A"}')
    shutil.copy(get_testdata_file("DICOMDIR"), root / "junk" / "DICOMDIR")
    return root


def _predict(bundle, folder, out, *flags):
    return runner.invoke(app, ["predict", str(bundle), str(folder), "-o", str(out), *flags])


def test_every_good_scan_is_predicted_and_every_bad_one_is_a_failure_row(bundle, mixed, tmp_path):
    result = _predict(bundle, mixed, tmp_path / "out")
    assert result.exit_code == 0, result.output
    rows = pd.read_parquet(tmp_path / "out" / "predictions.parquet")
    good = sorted(f"good/{p.name}" for p in TEST_PNGS[:20])
    # the 16 px black picture.png is a readable image: predicted (and referred), not refused
    assert sorted(rows["scan_id"]) == [*good, "junk/picture.png"]
    black = rows.set_index("scan_id").loc["junk/picture.png"]
    assert black["refer"] and "out of distribution" in black["refer_reason"]
    assert rows["input_hash"].is_unique
    probs = rows[["prob_0", "prob_1"]].to_numpy()
    assert np.allclose(probs.sum(1), 1) and ((probs >= 0) & (probs <= 1)).all()
    assert set(rows["predicted_class"]) <= {"0", "1"}
    assert (rows["set_size"] >= 1).all() and rows["refer"].dtype == bool
    assert (rows["refer"] == (rows["refer_reason"] != "")).all()

    failures = pd.read_csv(tmp_path / "out" / "failures.csv").set_index("path")
    junk = mixed / "junk"
    expected = {
        "empty.dcm": ("discover", "empty file"),
        "truncated.dcm": ("read", ""),
        "all_nan.nii.gz": ("read", "NaN"),
        "picture_named.dcm": ("discover", "looks like a PNG"),
        "brain_3d.nii": ("validate", "expects 2D"),
    }
    for name, (stage, words) in expected.items():
        failure = failures.loc[str(junk / name)]
        assert failure["stage"] == stage, (name, failure.to_dict())
        assert words in failure["message"], (name, failure["message"])
    assert len(failures) == len(expected)

    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["counts"]["predicted_now"] == 21 and run["counts"]["failed"] == len(expected)
    assert run["counts"]["files_skipped"] == 3  # notes.txt, run_info.json, DICOMDIR
    assert run["scans_per_second"] > 0

    strict = _predict(bundle, mixed, tmp_path / "strict", "--strict")
    assert strict.exit_code == 1 and "could not be predicted" in strict.output


def test_failures_csv_has_a_header_when_nothing_failed(bundle, tmp_path):
    folder = tmp_path / "clean"
    folder.mkdir()
    for png in TEST_PNGS[:3]:
        shutil.copy(png, folder / png.name)
    assert _predict(bundle, folder, tmp_path / "out", "--strict").exit_code == 0
    header = (tmp_path / "out" / "failures.csv").read_text().splitlines()
    assert header == ["scan_id,path,stage,error_type,message"]


def _predict_process(bundle, folder, out, *flags) -> subprocess.Popen:
    command = [sys.executable, "-m", "medres", "predict", str(bundle), str(folder), "-o", str(out)]
    return subprocess.Popen([*command, *flags], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_kill_9_mid_run_then_rerun_equals_an_uninterrupted_run(bundle, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for png in TEST_PNGS[:80]:
        shutil.copy(png, folder / png.name)
    flags = ["--batch-size", "4", "--chunk-size", "4", "--workers", "0", "--mc-samples", "10"]
    flags += ["--tta"]
    whole = _predict_process(bundle, folder, tmp_path / "whole", *flags)
    assert whole.wait(timeout=300) == 0, whole.stderr.read().decode()

    out = tmp_path / "killed"
    job = _predict_process(bundle, folder, out, *flags)
    deadline = time.time() + 120
    while len(list((out / ".parts").glob("part-*.parquet"))) < 3 and time.time() < deadline:
        time.sleep(0.02)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    parts = list((out / ".parts").glob("part-*.parquet"))
    assert parts and not (out / "predictions.parquet").exists(), "the run ended before the kill"
    for part in parts:  # every chunk on disk is whole
        assert len(pd.read_parquet(part)) == 4

    rerun = _predict_process(bundle, folder, out, *flags)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read().decode()
    counts = json.loads((out / "run.json").read_text())["counts"]
    assert counts["already_predicted"] >= 4 * len(parts)
    assert counts["already_predicted"] + counts["predicted_now"] == 80

    a = pd.read_parquet(tmp_path / "whole" / "predictions.parquet")
    b = pd.read_parquet(out / "predictions.parquet")
    assert b["scan_id"].is_unique and list(a["scan_id"]) == list(b["scan_id"])
    numbers = ["prob_0", "prob_1", "prob_raw_1", "mutual_information", "ood_score"]
    assert np.allclose(a[numbers], b[numbers], rtol=0, atol=1e-6)  # same MC samples per scan
    same = ["predicted_class", "conformal_set", "refer", "refer_reason", "input_hash"]
    assert a[same].equals(b[same])
    assert not (out / ".parts").exists()


def test_rerun_with_other_options_is_refused(bundle, tmp_path):
    folder = tmp_path / "few"
    folder.mkdir()
    shutil.copy(TEST_PNGS[0], folder / "a.png")
    predict_folder(bundle, folder, tmp_path / "out")
    with pytest.raises(ConfigError, match="mc_samples"):
        predict_folder(bundle, folder, tmp_path / "out", PredictOptions(mc_samples=5))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("not medres")
    with pytest.raises(ConfigError, match="not empty"):
        predict_folder(bundle, folder, tmp_path / "other")


def test_ensemble_and_mc_dropout_rows(bundle, tmp_path):
    folder = tmp_path / "few"
    folder.mkdir()
    for png in TEST_PNGS[:6]:
        shutil.copy(png, folder / png.name)
    single = predict_folder(bundle, folder, tmp_path / "one").predictions
    options = PredictOptions(ensemble=[bundle], mc_samples=8, batch_size=4)
    both = predict_folder(bundle, folder, tmp_path / "two", options).predictions
    assert both["bundle_id"].iloc[0].count("+") == 1
    assert (both["mutual_information"] > 0).any() and (single["mutual_information"] == 0).all()
    # the same scan gets the same dropout samples whatever batch it lands in
    other = PredictOptions(ensemble=[bundle], mc_samples=8, batch_size=5)
    again = predict_folder(bundle, folder, tmp_path / "three", other).predictions
    assert np.allclose(both["prob_1"], again["prob_1"], atol=1e-6)


def test_a_scan_of_another_modality_is_refused_with_the_reason():
    with pytest.raises(ScanContentError, match="MR scan but the bundle was trained on CT"):
        check_modality("s1", "MR", ["CT"])
    check_modality("s2", "DX", ["CR"])  # one kind of radiograph
    # trained on PNGs only: no DICOM modality is known to match them
    with pytest.raises(ScanContentError, match="DICOM CT scan but the bundle was trained on PNG"):
        check_modality("s3", "CT", ["IMAGE"])
    check_modality("s4", None, ["CT"])
    check_modality("s5", "IMAGE", ["CT"])  # a PNG carries no modality to check
    check_modality("s6", "CT", [])  # the bundle recorded none
    check_modality("s7", "CT", ["NIFTI"])  # NIfTI: usually converted from DICOM, not judged


def test_a_3d_nifti_into_a_2d_bundle_is_a_validate_failure_not_a_resize(bundle, tmp_path):
    folder = tmp_path / "vol"
    folder.mkdir()
    image = nib.load(f"{NIBABEL_DATA}/anatomical.nii")
    nib.save(image, folder / "brain.nii.gz")
    run = predict_folder(bundle, folder, tmp_path / "out")
    assert run.predictions.empty
    (failure,) = run.failures
    assert failure["stage"] == "validate" and "2D" in failure["message"]


def test_explain_writes_an_overlay_per_scan_at_the_image_size(bundle, tmp_path):
    folder = tmp_path / "few"
    folder.mkdir()
    for png in TEST_PNGS[:5]:
        shutil.copy(png, folder / png.name)
    run = predict_folder(bundle, folder, tmp_path / "out", PredictOptions(explain=True))
    for _, row in run.predictions.iterrows():
        with Image.open(tmp_path / "out" / row["heatmap"]) as overlay:
            assert overlay.size == (28, 28) and overlay.mode == "RGB"
        cam = np.load(tmp_path / "out" / row["heatmap_map"])
        assert cam.shape == (28, 28) and cam.min() >= 0 and cam.max() <= 1


def test_a_second_night_into_the_same_outdir_keeps_the_first_nights_rows(bundle, tmp_path):
    monday, tuesday = tmp_path / "monday", tmp_path / "tuesday"
    for night, pngs in ((monday, TEST_PNGS[:3]), (tuesday, TEST_PNGS[3:5])):
        night.mkdir()
        for png in pngs:
            shutil.copy(png, night / png.name)
    predict_folder(bundle, monday, tmp_path / "out")
    rows = predict_folder(bundle, tuesday, tmp_path / "out").predictions
    assert sorted(rows["scan_id"]) == sorted(p.name for p in TEST_PNGS[:5])
    empty = tmp_path / "unmounted"
    empty.mkdir()
    assert len(predict_folder(bundle, empty, tmp_path / "out").predictions) == 5


def test_an_outdir_inside_the_scan_folder_is_refused(bundle, tmp_path):
    shutil.copy(TEST_PNGS[0], tmp_path / "a.png")
    with pytest.raises(ConfigError, match="inside the scan folder"):
        predict_folder(bundle, tmp_path, tmp_path / "predictions")
