"""medres.pacs.listen: a storage SCP that predicts each complete study, tested with DCMTK's
storescu and pynetdicom inside a private network namespace (tests/pacs_servers.py)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pydicom
import pytest
import requests
from pydicom.uid import generate_uid
from pynetdicom import AE

import medres.pacs.listen as listen_module
from medres.pacs.listen import DONE, INCOMING, RESULTS, listen, study_tag
from medres.predict import PredictOptions
from tests.conftest import EXAMPLE, PROJECT
from tests.pacs_data import CR_IMAGE_STORAGE, cr_study, dicom_cr_bundle  # noqa: F401 (fixture)
from tests.pacs_servers import free_port, listening, storescu, wait_until

PATIENT_NAME, PATIENT_ID = "Secretname^Jane", "PID-7731-SECRET"
STABLE_S = 1.5  # seconds without a new instance before a study is complete (in-process tests)
WAIT_S = 60.0  # seconds a test waits at most for the listener to do something


@pytest.fixture(scope="module")
def bundle(request) -> Path:
    return request.getfixturevalue("dicom_cr_bundle")


def _pngs(n: int, skip: int = 0) -> list[Path]:
    return sorted((EXAMPLE / "test").glob("*.png"))[skip : skip + n]


def _study(folder: Path, n: int, *, patient: str = PATIENT_ID, skip: int = 0) -> list[Path]:
    """``n`` CR instances of one study (a made-up patient with a name and id to look for)."""
    return cr_study(folder, _pngs(n, skip), patient_id=patient, patient_name=PATIENT_NAME)


def _truncate_pixels(path: Path) -> Path:
    """Spoil an instance: its pixel data cut to 100 bytes (the header stays valid)."""
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[:100]
    ds.save_as(path, enforce_file_format=True)
    return path


def _uid(path: Path, name: str) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True)[name].value)


class _Listener:
    """:func:`listen` in a thread of this process, with a push that records its calls."""

    def __init__(self, bundle: Path, outdir: Path, port: int | None = None, **kwargs):
        self.port, self.outdir, self.pushed = port or free_port(), outdir, []
        self.stop = threading.Event()
        self.errors: list[BaseException] = []

        def run():
            try:
                listen(
                    bundle,
                    outdir,
                    host="127.0.0.1",
                    port=self.port,
                    stable_seconds=STABLE_S,
                    push=self.pushed.append,
                    predict_options=PredictOptions(workers=0),
                    stop=self.stop,
                    **kwargs,
                )
            except BaseException as e:
                self.errors.append(e)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        wait_until(lambda: listening(self.port) or self.errors, "the listener listens")
        assert not self.errors, self.errors

    def close(self) -> None:
        self.stop.set()
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive() and not self.errors, self.errors


def _send(port: int, paths: list[Path]) -> list[int]:
    """C-STORE each file with pynetdicom; the status codes answered."""
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CR_IMAGE_STORAGE)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDRES")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(pydicom.dcmread(p)).Status) for p in paths]
    finally:
        assoc.release()


def test_listen_stores_durably_predicts_pushes_and_reopens(
    bundle, pacs_network, tmp_path, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, logger="medres.pacs.listen")
    sent = _study(tmp_path / "study", 4)
    _truncate_pixels(sent[3])
    study, series = _uid(sent[0], "StudyInstanceUID"), _uid(sent[0], "SeriesInstanceUID")
    incoming = tmp_path / "out" / INCOMING / study / series
    results = tmp_path / "out" / RESULTS / study

    fsyncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(listen_module.os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    listener = _Listener(bundle, tmp_path / "out", max_studies=2)
    try:
        # the first instance is on disk, fsynced (file and folders), when success comes back
        assert _send(listener.port, sent[:1]) == [0x0000]
        first = incoming / f"{_uid(sent[0], 'SOPInstanceUID')}.dcm"
        assert first.read_bytes()[128:132] == b"DICM"
        assert pydicom.dcmread(first).PixelData == pydicom.dcmread(sent[0]).PixelData
        assert len(fsyncs) >= 2 and oct(first.stat().st_mode & 0o777) == "0o600"
        # the rest of the study with DCMTK, the corrupt one among them
        done = storescu(listener.port, "MEDRES", sent[1:])
        assert done.returncode == 0, done.stderr
        assert len(list(incoming.glob("*.dcm"))) == 4  # all there when storescu returns

        wait_until(lambda: (results / DONE).exists(), "the study is predicted and pushed")
        rows = pd.read_parquet(results / "predictions.parquet")
        failures = pd.read_csv(results / "failures.csv")
        assert len(rows) == 3 and rows["scan_id"].is_unique
        assert len(failures) == 1 and _uid(sent[3], "SOPInstanceUID") in failures["path"][0]
        assert listener.pushed == [results]

        # a late instance re-opens the study: predicted again, nothing duplicated
        (late,) = cr_study(tmp_path / "late", _pngs(1, skip=4), patient_id=PATIENT_ID)
        late_ds = pydicom.dcmread(late)  # same study and series, a new instance
        late_ds.SOPInstanceUID = late_ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        late_ds.save_as(late, enforce_file_format=True)
        assert _send(listener.port, [late]) == [0x0000]
        assert not (results / DONE).exists()
        listener.thread.join(WAIT_S)  # max_studies=2: ends after the second prediction
        assert not listener.thread.is_alive()
        rows = pd.read_parquet(results / "predictions.parquet")
        assert len(rows) == 4 and rows["scan_id"].is_unique and (results / DONE).exists()
        assert listener.pushed == [results, results]
        run = json.loads((results / "run.json").read_text())
        assert run["counts"]["already_predicted"] == 3 and run["counts"]["predicted_now"] == 1
    finally:
        listener.close()
    text = caplog.text
    assert study_tag(study) in text and "predicted" in text
    for secret in (PATIENT_NAME, "Secretname", PATIENT_ID, study, series):
        assert secret not in text


def test_refusals_answer_failure_statuses(bundle, pacs_network, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="medres.pacs.listen")
    (good,) = _study(tmp_path / "a", 1)
    (bad,) = _study(tmp_path / "b", 1, patient="P2")
    ds = pydicom.dcmread(bad)
    ds.StudyInstanceUID = "../../etc"  # not a UID: never a path part
    ds.save_as(bad, enforce_file_format=True)

    def full_disk(path, data):
        raise OSError(28, "No space left on device")

    (ours,) = _study(tmp_path / "c", 1, patient="P3")  # as if one of medres's own results
    result = pydicom.dcmread(ours)
    result.SeriesDescription = "medres overlay: not for diagnostic use unless validated locally"
    result.save_as(ours, enforce_file_format=True)

    listener = _Listener(bundle, tmp_path / "out", max_studies=1)
    try:
        assert _send(listener.port, [ours]) == [0x0000]  # acknowledged, dropped
        assert _send(listener.port, [bad]) == [0xC000]
        monkeypatch.setattr(listen_module, "write_durably", full_disk)
        assert _send(listener.port, [good]) == [0xA700]
        listener.thread.join(WAIT_S)  # the study with nothing stored is let go, not predicted
    finally:
        listener.close()
    assert "No space left on device" in caplog.text and "0xA700" in caplog.text
    assert "nothing to predict" in caplog.text and listener.pushed == []
    assert "a medres result received, not stored" in caplog.text
    assert not list((tmp_path / "out").rglob("*.dcm"))
    assert not (tmp_path / "out" / RESULTS).exists()


LISTENER = """
import logging, sys
from medres.pacs.listen import listen
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
listen(sys.argv[1], sys.argv[2], host="127.0.0.1", port=int(sys.argv[3]),
       stable_seconds=float(sys.argv[4]), max_studies=1)
"""


def _listener_process(bundle: Path, out: Path, port: int, stable_s: float) -> subprocess.Popen:
    """A listener in a child process (same private network namespace), stderr in a file."""
    log = open(out.parent / f"listener-{stable_s:g}.log", "wb")  # noqa: SIM115 (child's)
    cmd = [sys.executable, "-c", LISTENER, str(bundle), str(out), str(port), str(stable_s)]
    return subprocess.Popen(cmd, cwd=PROJECT, stdout=log, stderr=subprocess.STDOUT)


def test_killed_listener_finishes_the_study_after_a_restart(bundle, pacs_network, tmp_path):
    sent = _study(tmp_path / "study", 3)
    study = _uid(sent[0], "StudyInstanceUID")
    out, port = tmp_path / "out", free_port()
    first = _listener_process(bundle, out, port, stable_s=600)  # would wait 10 min
    try:
        wait_until(lambda: listening(port) or first.poll() is not None, "listener up")
        stored = storescu(port, "MEDRES", sent)
        assert stored.returncode == 0, stored.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(WAIT_S)
    assert len(list((out / INCOMING / study).rglob("*.dcm"))) == 3
    assert not (out / RESULTS / study).exists()  # received, not predicted

    second = _listener_process(bundle, out, port, stable_s=1)
    try:
        assert second.wait(WAIT_S) == 0, (out.parent / "listener-1.log").read_text()
    finally:
        if second.poll() is None:
            second.kill()
            second.wait(WAIT_S)
    log = (out.parent / "listener-1.log").read_text()
    rows = pd.read_parquet(out / RESULTS / study / "predictions.parquet")
    assert len(rows) == 3 and rows["scan_id"].is_unique, log
    assert (out / RESULTS / study / DONE).exists()
    assert "received earlier, not yet predicted" in log and study not in log


def test_orthanc_sends_a_study_to_the_listener(bundle, orthanc, tmp_path):
    """A real PACS as the sender: Orthanc C-STOREs a study to its modality "medres"."""
    sent = _study(tmp_path / "study", 2, patient="P-ORTHANC")
    study = _uid(sent[0], "StudyInstanceUID")
    orthanc_id = {orthanc.upload(p)["ParentStudy"] for p in sent}.pop()
    listener = _Listener(bundle, tmp_path / "out", port=orthanc.medres_port, max_studies=1)
    try:
        answer = requests.post(
            f"{orthanc.rest_url}/modalities/medres/store",
            data=orthanc_id,
            auth=orthanc.auth,
            timeout=WAIT_S,
        )
        assert answer.ok, answer.text
        assert len(list((tmp_path / "out" / INCOMING / study).rglob("*.dcm"))) == 2
        listener.thread.join(WAIT_S)
    finally:
        listener.close()
    rows = pd.read_parquet(tmp_path / "out" / RESULTS / study / "predictions.parquet")
    assert len(rows) == 2 and listener.pushed == [tmp_path / "out" / RESULTS / study]
