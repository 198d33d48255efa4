"""The hospital loop through the command line, against a real Orthanc (tests/pacs_servers.py):
`medres pacs pull` → `medres predict --explain` → `medres pacs push --bundle`; Orthanc then
holds the results in the source study, the SR reads back as predictions.parquet says, a
rerun adds no instance, and nothing names the patient or the password in the output."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import highdicom as hd
import pandas as pd
import pydicom
import pytest
from typer.testing import CliRunner

from medres.cli import app
from tests.conftest import DICOM2NIFTI, EXAMPLE, PROJECT, needs
from tests.pacs_data import (  # noqa: F401 (dicom_cr_bundle: a fixture)
    cr_study,
    dciodvfy,
    dicom_cr_bundle,
    mr_cohort_folder,
    train_quick,
)
from tests.pacs_servers import free_port, listening, storescu, wait_until

PATIENT_ID, PATIENT_NAME = "RT-0042", "ROUNDTRIP^ALICE"


def _run(*args, env=None):
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    return result.exit_code, " ".join(result.output.split())  # rich wraps long lines


@pytest.fixture(scope="module")
def study(orthanc, tmp_path_factory):
    """A 4-image CR chest study and a corrupt 5th instance (JPEG bytes that do not decode)
    in Orthanc: ``(study_uid, sop uids of the images)``."""
    tmp = tmp_path_factory.mktemp("rt_study")
    pngs = sorted((EXAMPLE / "test").glob("*.png"))[:5]
    files = cr_study(tmp, pngs, patient_id=PATIENT_ID, patient_name=PATIENT_NAME)
    corrupt = pydicom.dcmread(files[-1])
    corrupt.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
    corrupt.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xe0 not a JPEG" * 4])
    corrupt.save_as(files[-1], enforce_file_format=True)
    for f in files:
        orthanc.upload(f)
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    return str(corrupt.StudyInstanceUID), uids


def test_pull_predict_push_round_trip(orthanc, study, dicom_cr_bundle, tmp_path):  # noqa: F811
    study_uid, sources = study
    secrets = {"MEDRES_PACS_USER": orthanc.user, "MEDRES_PACS_PASSWORD": orthanc.password}
    dimse = f"dicom://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
    scans, out = tmp_path / "scans", tmp_path / "out"

    code, said = _run("pacs", "echo", orthanc.http_url, env=secrets)
    assert code == 0 and "answers (QIDO-RS with credentials)" in said, said
    code, pulled = _run(
        "pacs", "pull", orthanc.http_url, "--study", study_uid, "-o", scans, env=secrets
    )
    assert code == 0, pulled
    assert "5 image(s) fetched" in pulled, pulled
    code, predicted = _run("predict", dicom_cr_bundle, scans, "-o", out, "--explain")
    assert code == 0, predicted
    table = pd.read_parquet(out / "predictions.parquet")
    failures = pd.read_csv(out / "failures.csv")
    assert len(table) == 4 and len(failures) == 1  # the corrupt instance: a failure row
    assert sources[-1] in failures["path"].iloc[0]

    code, pushed = _run("pacs", "push", out, dimse, "--bundle", dicom_cr_bundle)
    assert code == 0, pushed
    held = orthanc.study_instances(study_uid)
    by_series = {}
    for instance in held:
        series = orthanc.get(f"/series/{instance['ParentSeries']}").json()["MainDicomTags"]
        by_series.setdefault(series.get("SeriesDescription", ""), set()).add(instance["ID"])
    results = {d: ids for d, ids in by_series.items() if d.lower().startswith("medres")}
    assert len(held) == 5 + 2 * 4, by_series  # per predicted image: an SR and a capture
    assert all("not for diagnostic use" in d.lower() for d in results), results
    assert len(results) == 2, results  # one SR series, one secondary-capture series

    rows = table.set_index(table["path"].map(lambda p: p.rsplit("/", 1)[-1].removesuffix(".dcm")))
    srs = [i for i in held if i["ID"] in by_series[_sr_series(by_series)]]
    assert len(srs) == 4
    for instance in srs:  # each SR as Orthanc gives it back, read with highdicom
        path = tmp_path / f"{instance['ID']}.dcm"
        path.write_bytes(orthanc.get(f"/instances/{instance['ID']}/file").content)
        dciodvfy(path)
        (group,) = hd.sr.srread(path).content.get_image_measurement_groups()
        row = rows.loc[group.source_images[0].referenced_sop_instance_uid]
        evaluations = {q.name.meaning: q.value.meaning for q in group.get_qualitative_evaluations()}
        assert evaluations["Predicted class"] == row["predicted_class"]
        (probability,) = group.get_measurements()
        assert probability.value == pytest.approx(row["confidence"])

    code, again = _run("pacs", "push", out, dimse, "--bundle", dicom_cr_bundle)
    assert code == 0 and "sent 0 object(s)" in again and "(8 already sent unchanged)" in again
    code, forced = _run("pacs", "push", out, dimse, "--bundle", dicom_cr_bundle, "--again")
    assert code == 0 and "sent 8 object(s)" in forced, forced
    assert len(orthanc.study_instances(study_uid)) == len(held)  # replaced, not added
    code, repulled = _run("pacs", "pull", dimse, "--study", study_uid, "-o", scans)
    assert code == 0 and "0 image(s) fetched, 5 already there" in repulled, repulled
    assert "medres result" in repulled  # our own objects are counted, not pulled back

    shown = pulled + predicted + pushed + again + forced + repulled
    for secret in (PATIENT_ID, PATIENT_NAME, "ROUNDTRIP", orthanc.password):
        assert secret not in shown
    record = (out / "pacs.json").read_text()
    assert orthanc.password not in record and PATIENT_ID not in record


def _sr_series(by_series: dict[str, set[str]]) -> str:
    (description,) = [
        d for d in by_series if d.lower().startswith("medres") and "report" in d.lower()
    ]
    return description


def _listener(bundle, out, port, stable_s, push, log):
    """`medres pacs listen` in a child process (it shares this private network namespace)."""
    command = [sys.executable, "-m", "medres", "pacs", "listen", bundle, "-o", out]
    command += ["--host", "127.0.0.1", "--port", port, "--stable-seconds", stable_s]
    command += ["--max-studies", 1, "--push", push]
    return subprocess.Popen(
        [str(c) for c in command], stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT
    )


def test_listener_killed_then_restarted_sends_its_results_once(
    orthanc,
    dicom_cr_bundle,  # noqa: F811
    tmp_path,
):
    pngs = sorted((EXAMPLE / "test").glob("*.png"))[10:13]
    sent = cr_study(tmp_path / "study", pngs, patient_id="LS-7", patient_name="LISTEN^BOB")
    study_uid = str(pydicom.dcmread(sent[0], stop_before_pixels=True).StudyInstanceUID)
    out, port = tmp_path / "out", free_port()
    dimse = f"dicom://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
    with open(tmp_path / "first.log", "wb") as log:
        first = _listener(dicom_cr_bundle, out, port, 600, dimse, log)  # would wait 10 min
        try:
            wait_until(lambda: listening(port) or first.poll() is not None, "the listener listens")
            stored = storescu(port, "MEDRES", sent)
            assert stored.returncode == 0, stored.stderr
        finally:
            first.send_signal(signal.SIGKILL)  # accepted, not predicted
            first.wait(60)
    assert orthanc.study_instances(study_uid) == []
    with open(tmp_path / "second.log", "wb") as log:
        started = time.monotonic()
        second = _listener(dicom_cr_bundle, out, port, 2, dimse, log)
        try:
            assert second.wait(120) == 0, (tmp_path / "second.log").read_text()
        finally:
            if second.poll() is None:
                second.kill()
        took = time.monotonic() - started
    held = orthanc.study_instances(study_uid)
    assert len(held) == 2 * len(sent), held  # an SR and an overlay per image, once
    rows = pd.read_parquet(next(out.rglob("predictions.parquet")))
    assert len(rows) == len(sent) and rows["scan_id"].is_unique
    logs = (tmp_path / "first.log").read_text() + (tmp_path / "second.log").read_text()
    for secret in ("LS-7", "LISTEN", study_uid):
        assert secret not in logs, logs
    print(f"restarted listener: study predicted and pushed {took:.1f} s after its start")


@needs(DICOM2NIFTI)
def test_an_mr_series_round_trip_adds_a_parametric_map_on_its_slices(orthanc, tmp_path):
    """A 3D bundle (on real MR series, labels meaningless: tests/pacs_data.py) predicts a
    real MR series pulled by C-GET; pushed by STOW-RS, Orthanc holds the SR, the parametric
    map (one frame per source slice, valid for dciodvfy) and the overlay in its study."""
    folder = mr_cohort_folder(tmp_path / "mr")
    small = ["--set", "preprocess.spatial_size=[32,32,16]", "--set", "batch_size=4"]
    bundle = train_quick(folder, tmp_path / "bundle", "--set", "positive_class=b", *small)
    series = sorted((folder / "scans" / "s09").iterdir())  # a test-split series
    study_uid = str(pydicom.dcmread(series[0], stop_before_pixels=True).StudyInstanceUID)
    for path in series:
        orthanc.upload(path)
    before = len(orthanc.study_instances(study_uid))
    dimse = f"dicom://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
    secrets = {"MEDRES_PACS_USER": orthanc.user, "MEDRES_PACS_PASSWORD": orthanc.password}
    scans, out = tmp_path / "scans", tmp_path / "out"
    code, pulled = _run("pacs", "pull", dimse, "--study", study_uid, "-o", scans)
    assert code == 0, pulled
    code, predicted = _run("predict", bundle, scans, "-o", out, "--explain")
    assert code == 0 and len(pd.read_parquet(out / "predictions.parquet")) == 1, predicted
    code, pushed = _run("pacs", "push", out, orthanc.http_url, "--bundle", bundle, env=secrets)
    assert code == 0 and "sent 3 object(s)" in pushed, pushed
    held = orthanc.study_instances(study_uid)
    assert len(held) == before + 3
    modalities = {}
    for instance in held:
        tags = orthanc.get(f"/instances/{instance['ID']}/tags?simplify").json()
        modalities.setdefault(tags.get("Modality"), []).append(instance["ID"])
    (pm_id,) = [
        i
        for i in modalities.get("OT", []) + modalities.get("MR", [])
        if orthanc.get(f"/instances/{i}/tags?simplify").json().get("SOPClassUID")
        == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
    ]
    path = tmp_path / "pm.dcm"
    path.write_bytes(orthanc.get(f"/instances/{pm_id}/file").content)
    dciodvfy(path)
    assert int(pydicom.dcmread(path, stop_before_pixels=True).NumberOfFrames) == len(series)
    assert "SR" in modalities
