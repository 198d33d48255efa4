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

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

import medres.io as medres_io
from medres.bundle import TrainedOn
from medres.cohort import Cohort, build_cohort, read_row
from medres.errors import ManifestError, ScanContentError
from medres.io import Volume, discover, read_scan
from medres.io.volume import is_colour
from medres.predict import PredictOptions, predict_folder
from medres.predict import predictor as predict_predictor
from medres.predict import scans as predict_scans
from medres.predict.scans import check_colour
from tests.adversarial import ANATOMICAL, CT, HOSTILE_UID, build_corpus, flip_gzip
from tests.conftest import EXAMPLE

GB = 1 << 30


def _medres(*args: str) -> tuple[subprocess.CompletedProcess, int, float]:
    """Run ``medres ARGS``: (the finished process, the peak memory of it and its decoding
    workers together in bytes (RSS summed, so pages they share count once per process:
    an upper bound), sampled every 20 ms from /proc, and the seconds it took)."""
    start = time.perf_counter()
    command = [sys.executable, "-m", "medres", *args]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        peak = 0
        while p.poll() is None and time.perf_counter() - start < 600:
            peak = max(peak, _tree_rss(p.pid))
            time.sleep(0.02)
        stdout, stderr = p.communicate(timeout=60)
    done = subprocess.CompletedProcess(command, p.returncode, stdout, stderr)
    return done, peak, time.perf_counter() - start


def _tree_rss(root: int) -> int:
    """Resident bytes of process ``root`` and all its descendants (Linux /proc)."""
    parents, rss = {}, {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            status = Path(f"/proc/{name}/status").read_text()
        except OSError:  # the process ended meanwhile
            continue
        parents[int(name)] = int(stat.rsplit(")", 1)[1].split()[1])
        kb = [line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")]
        rss[int(name)] = int(kb[0]) * 1024 if kb else 0
    tree, grown = {root}, True
    while grown:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree, grown = tree | more, bool(more)
    return sum(rss.get(pid, 0) for pid in tree)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("adversarial") / "scans")


def test_ingest_records_every_broken_input_as_an_error_row(corpus, tmp_path):
    out = tmp_path / "cohort.parquet"
    done, peak, seconds = _medres("ingest", str(corpus.root), "-o", str(out))
    print(f"ingest: {seconds:.1f} s, peak {peak / GB:.2f} GB")  # the figures for the record
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert HOSTILE_UID not in done.stderr + done.stdout  # e.g. in a pydicom warning
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
    assert HOSTILE_UID not in done.stderr + done.stdout  # e.g. in a pydicom warning
    assert peak < 2 * GB
    rows = pd.read_parquet(out / "predictions.parquet")
    assert sorted(rows["scan_id"]) == sorted(corpus.good)
    failures = pd.read_csv(out / "failures.csv").set_index("path")
    assert set(failures.index) == set(corpus.broken)
    # every row names its scan the same way: relative to the folder (or a series UID)
    assert not failures["scan_id"].str.startswith("/").any(), failures["scan_id"].tolist()
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
    rows = predict_predictor.Predictor.rows

    def slow_rows(self, *args):  # the main process is busy with a batch when it dies
        time.sleep(0.5)
        return rows(self, *args)

    monkeypatch.setattr(predict_predictor.Predictor, "rows", slow_rows)
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


def test_colour_is_judged_by_content_and_against_what_the_bundle_trained_on():
    grey = np.asarray(Image.open(sorted((EXAMPLE / "test").glob("*.png"))[0])).T[None]
    rgb_grey = Volume(np.repeat(grey, 3, axis=0), np.eye(4))
    colour = Volume(np.concatenate([grey, grey // 2, 255 - grey]), np.eye(4))
    time_points = Volume(np.repeat(grey[..., None], 3, axis=0), np.eye(4))  # 3 volumes
    assert not is_colour(rgb_grey) and is_colour(colour) and not is_colour(time_points)
    # judged on the training scans' content, else their channels, else the model's input
    for trained in (TrainedOn(photometric="grey"), TrainedOn(channels=[1]), TrainedOn()):
        with pytest.raises(ScanContentError, match="colour image"):
            check_colour("c", colour, trained.grey(in_channels=1))
        check_colour("g", rgb_grey, trained.grey(in_channels=1))  # an RGB-saved X-ray is grey
    # trained on RGB-stored grey images: colour is still refused; trained on colour: not
    check_colour("c", colour, TrainedOn(photometric="colour", channels=[3]).grey(3))
    with pytest.raises(ScanContentError, match="colour image"):
        check_colour("c", colour, TrainedOn(photometric="grey", channels=[3]).grey(3))
    assert not TrainedOn().grey(in_channels=3)


def test_ingest_modality_declares_what_png_exports_are(tmp_path):
    for png in sorted((EXAMPLE / "test").glob("*.png"))[:2]:
        shutil.copy(png, tmp_path / png.name)
    shutil.copy(ANATOMICAL, tmp_path / "brain.nii")
    cohort, _ = build_cohort(tmp_path, modality="dx")
    assert sorted(cohort.table["modality"]) == ["DX", "DX", "DX"]
    with pytest.raises(ManifestError, match="not a DICOM modality code"):
        build_cohort(tmp_path, modality="chest x-ray")


def test_odd_number_of_frames_reads_as_one_and_memory_errors_are_scan_errors(tmp_path, monkeypatch):
    ds = pydicom.dcmread(CT)
    ds.NumberOfFrames = ""  # empty, as some exporters write it
    ds.save_as(tmp_path / "ct.dcm")
    assert read_scan(tmp_path / "ct.dcm").array.shape == (1, 128, 128)
    png = sorted((EXAMPLE / "test").glob("*.png"))[0]

    def no_memory(*args):
        raise MemoryError

    monkeypatch.setattr(medres_io, "read_image", no_memory)
    with pytest.raises(ScanContentError, match="too large to decode in the memory"):
        read_scan(png)
