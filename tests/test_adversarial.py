"""One bad file must never cost a night: `medres ingest` and `medres predict` over a
folder mixing good scans with every broken input found by an adversarial run
(:mod:`tests.adversarial`), each a row, none a crash, in bounded memory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from medres.cohort import Cohort, read_row
from medres.io import discover
from medres.predict import PredictOptions, predict_folder
from medres.predict import scans as predict_scans
from tests.adversarial import ANATOMICAL, build_corpus, flip_gzip
from tests.conftest import EXAMPLE

GB = 1 << 30
# the CLI in a child process; the wrapper prints the peak memory of it and its workers
_PEAK = (
    "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
    "print('peak_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
    "sys.exit(done.returncode)"
)


def _medres(*args: str) -> tuple[subprocess.CompletedProcess, int, float]:
    """Run ``medres ARGS``: (the process, its peak resident memory in bytes, seconds)."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, sys.executable, "-m", "medres", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    peak = int(done.stderr.rsplit("peak_kb", 1)[1].split()[0]) * 1024
    return done, peak, time.perf_counter() - start


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("adversarial") / "scans")


def test_ingest_records_every_broken_input_as_an_error_row(corpus, tmp_path):
    out = tmp_path / "cohort.parquet"
    done, peak, seconds = _medres("ingest", str(corpus.root), "-o", str(out))
    print(f"ingest: {seconds:.1f} s, peak {peak / GB:.2f} GB")  # the figures for the record
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert peak < 2 * GB
    table = Cohort.load(out).table
    errors = table[table["status"] == "error"].set_index("path")
    assert set(errors.index) == corpus.read_errors
    for path in corpus.read_errors:
        assert corpus.broken[path][1] in errors.loc[path, "error"], (path, errors.loc[path])
    ok = table[table["status"] == "ok"]
    assert set(corpus.good) <= set(ok["scan_id"])
    # the non-UTF-8 name is kept, escaped in the table, and still reads
    latin1 = ok.set_index("scan_id").loc["good/r\\xe9sum\\xe9_\\xff.png"]
    assert read_row(latin1).array.shape[0] == 1


def test_predict_gives_one_row_per_good_scan_and_one_failure_per_broken_input(
    corpus, chest_bundle, tmp_path
):
    out = tmp_path / "out"
    done, peak, seconds = _medres("predict", str(chest_bundle), str(corpus.root), "-o", str(out))
    print(f"predict: {seconds:.1f} s, peak {peak / GB:.2f} GB")  # the figures for the record
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert peak < 2 * GB
    rows = pd.read_parquet(out / "predictions.parquet")
    assert sorted(rows["scan_id"]) == sorted(corpus.good)
    failures = pd.read_csv(out / "failures.csv").set_index("path")
    assert set(failures.index) == set(corpus.broken)
    for path, (stage, words) in corpus.broken.items():
        assert failures.loc[path, "stage"] == stage, (path, failures.loc[path].to_dict())
        assert words in failures.loc[path, "message"], (path, failures.loc[path, "message"])
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["files_skipped"] == len(corpus.skipped)


def test_a_corrupt_nii_gz_last_in_a_large_folder_costs_one_row(chest_bundle, tmp_path):
    folder = tmp_path / "night"
    folder.mkdir()
    pngs = sorted((EXAMPLE / "train").glob("*.png"))[:300]
    for png in pngs:
        shutil.copy(png, folder / png.name)
    (folder / "zzz_last.nii.gz").write_bytes(flip_gzip(ANATOMICAL, 30))
    options = PredictOptions(chunk_size=64)
    first = predict_folder(chest_bundle, folder, tmp_path / "out", options)
    assert len(first.predictions) == 300 and not (tmp_path / "out" / ".parts").exists()
    assert [f["path"] for f in first.failures] == [str(folder / "zzz_last.nii.gz")]
    assert "not a readable NIfTI" in first.failures[0]["message"]
    again = predict_folder(chest_bundle, folder, tmp_path / "out", options)
    assert again.summary["counts"]["predicted_now"] == 0
    assert again.summary["counts"]["already_predicted"] == 300
    pd.testing.assert_frame_equal(again.predictions, first.predictions)


def test_a_decoding_worker_killed_on_one_scan_costs_that_scan_only(
    chest_bundle, tmp_path, monkeypatch
):
    folder = tmp_path / "scans"
    folder.mkdir()
    pngs = sorted((EXAMPLE / "test").glob("*.png"))[:12]
    for png in pngs:
        shutil.copy(png, folder / png.name)
    shutil.copy(pngs[0], folder / "killer.png")
    read = predict_scans.read_scan

    def read_or_die(scan):  # as the kernel's OOM killer would, inside the worker
        if scan.scan_id == "killer.png":
            os.kill(os.getpid(), signal.SIGKILL)
        return read(scan)

    monkeypatch.setattr(predict_scans, "read_scan", read_or_die)  # workers fork with it
    options = PredictOptions(workers=2, batch_size=4)
    run = predict_folder(chest_bundle, folder, tmp_path / "out", options)
    assert sorted(run.predictions["scan_id"]) == sorted(p.name for p in pngs)
    (failure,) = run.failures
    assert failure["path"] == str(folder / "killer.png") and failure["stage"] == "read"
    assert "decoding process died" in failure["message"]


def test_a_folder_that_cannot_be_listed_is_a_failure_naming_it(tmp_path, monkeypatch):
    for name in ("open", "closed"):
        (tmp_path / name).mkdir()
        shutil.copy(sorted((EXAMPLE / "test").glob("*.png"))[0], tmp_path / name / "x.png")
    scandir = os.scandir

    def refuse_closed(path="."):  # root can read any folder: deny it as chmod 000 would
        if Path(path).name == "closed":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse_closed)
    found = discover(tmp_path)
    assert [s.scan_id for s in found.scans] == ["open/x.png"]
    (failure,) = found.failures
    assert failure.path == str(tmp_path / "closed")
    assert "cannot list this folder (Permission denied)" in failure.message
