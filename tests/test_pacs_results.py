"""`medres.pacs.results.write_results`: a predict OUTDIR's results as DICOM objects (TID 1500
SR, parametric map, secondary capture), checked with dciodvfy and read back with highdicom.

Real data: chest X-ray CR studies predicted by a bundle trained on CR (tests/pacs_data.py),
and real MR series from ../shared/data/dicom/dicom2nifti with a heatmap placed on them.
"""

from __future__ import annotations

import json
import logging
import shutil
import stat
import subprocess
import uuid
from pathlib import Path

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest

from medres.bundle import load_bundle, update_bundle
from medres.errors import ConfigError
from medres.explain import write_explanation
from medres.io import discover, read_scan
from medres.io.geometry import LPS_TO_RAS
from medres.pacs.results import NOT_DICOM, write_results
from medres.predict import PredictOptions, predict_folder
from tests.conftest import DICOM2NIFTI, EXAMPLE, needs
from tests.pacs_data import cr_study, dicom_cr_bundle  # noqa: F401  (a fixture)

PATIENT_NAME = "Doe^Jane"  # must never reach a log
SERIES_REVERSED = DICOM2NIFTI / "generic" / "anatomical" / "001"  # files named against slice order
SINGLE_SLICE = DICOM2NIFTI / "ge" / "anatomical" / "001_single_slice"


def dciodvfy(path: Path) -> list[str]:
    """dciodvfy's lines about ``path``; the test fails showing them all on any Error."""
    if not shutil.which("dciodvfy"):
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, f"dciodvfy {path}:\n" + "\n".join(lines)
    return lines


def text_values(item) -> list[str]:
    """Every TEXT content item's value in an SR content tree, depth first."""
    values = []
    for child in item.get("ContentSequence", []):
        if child.ValueType == "TEXT":
            values.append(str(child.TextValue))
        values += text_values(child)
    return values


def sop_uids(folder: Path) -> dict[str, str]:
    """``relative path -> SOPInstanceUID`` of every object under ``folder``."""
    return {
        p.relative_to(folder).as_posix(): str(pydicom.dcmread(p).SOPInstanceUID)
        for p in sorted(folder.rglob("*.dcm"))
    }


@pytest.fixture(scope="module")
def cr_run(dicom_cr_bundle, tmp_path_factory):  # noqa: F811
    """``medres predict --explain`` over a CR study of two images and one PNG, then
    :func:`write_results`: ``(outdir, summary, sources)``."""
    tmp = tmp_path_factory.mktemp("cr_run")
    pngs = sorted((EXAMPLE / "test").glob("*.png"))[-3:]
    sources = cr_study(
        tmp / "scans" / "study", pngs[:2], patient_id="PACS1", patient_name=PATIENT_NAME
    )
    shutil.copy(pngs[2], tmp / "scans" / "plain.png")
    predict_folder(
        dicom_cr_bundle, tmp / "scans", tmp / "out", PredictOptions(explain=True, workers=0)
    )
    return tmp / "out", write_results(tmp / "out", dicom_cr_bundle), sources


def test_cr_results_are_valid_dicom_in_the_source_study(cr_run):
    outdir, summary, sources = cr_run
    table = pd.read_parquet(outdir / "predictions.parquet")
    dicom_rows = table[table["modality"] == "CR"]
    assert len(dicom_rows) == 2
    assert summary.skipped[NOT_DICOM] == 1  # the PNG
    # CR images have no patient frame of reference: SR and overlay, no parametric map
    assert sum(n for reason, n in summary.skipped.items() if "frame of reference" in reason) == 2
    assert sorted(p.name for p in summary.written) == ["secondary_capture.dcm"] * 2 + ["sr.dcm"] * 2
    source_uids = {str(pydicom.dcmread(p).SOPInstanceUID) for p in sources}
    referenced = set()
    for path in summary.written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        print(path.name, dciodvfy(path))
        ds = pydicom.dcmread(path)
        source = pydicom.dcmread(sources[0], stop_before_pixels=True)
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert (ds.PatientID, str(ds.PatientName)) == ("PACS1", PATIENT_NAME)
        assert "not for diagnostic use unless validated locally" in ds.SeriesDescription
        if path.name == "secondary_capture.dcm":
            assert ds.BurnedInAnnotation == "NO"
            assert ds.PhotometricInterpretation == "RGB" and (ds.Rows, ds.Columns) == (28, 28)
            referenced |= {i.ReferencedSOPInstanceUID for i in ds.SourceImageSequence}
    assert referenced == source_uids


def test_sr_reads_back_the_prediction(cr_run):
    outdir, summary, _ = cr_run
    table = pd.read_parquet(outdir / "predictions.parquet").set_index("heatmap_map")
    for path in (p for p in summary.written if p.name == "sr.dcm"):
        row = table.loc[f"explain/{path.parent.name}.npy"]
        sr = hd.sr.srread(path)
        (group,) = sr.content.get_image_measurement_groups()
        evaluations = {q.name.meaning: q.value.meaning for q in group.get_qualitative_evaluations()}
        assert evaluations["Predicted class"] == row["predicted_class"]
        assert row["predicted_class"] in ("normal", "pneumonia")  # the class name, not an index
        assert evaluations["Out of distribution"] == ("Yes" if row["ood"] else "No")
        assert evaluations["Referral to a clinician recommended"] == (
            "Yes" if row["refer"] else "No"
        )
        (probability,) = group.get_measurements()
        assert probability.value == pytest.approx(row["confidence"])
        assert probability.unit.value == "1"
        members = [
            q.value.meaning
            for q in group.get_qualitative_evaluations()
            if q.name.meaning == "Conformal prediction set member"
        ]
        assert members == row["conformal_set"].split("|")
        (device,) = sr.content.get_observer_contexts()
        assert device.observer_type.value == "121007"  # DCM Device
        texts = set(text_values(pydicom.dcmread(path)))
        assert f"bundle_id={row['bundle_id']}" in texts  # algorithm parameter (TID 4019)
        assert "Not for diagnostic use unless validated locally" in texts
        assert len(group.source_images) == 1


def test_rerun_keeps_uids_another_bundle_changes_them(cr_run, dicom_cr_bundle, tmp_path, caplog):  # noqa: F811
    outdir, _, _ = cr_run
    first = sop_uids(outdir / "dicom")
    with caplog.at_level(logging.DEBUG):
        write_results(outdir, dicom_cr_bundle)
    assert sop_uids(outdir / "dicom") == first
    assert "PACS1" not in caplog.text and "Doe" not in caplog.text

    retrained = tmp_path / "retrained"  # the same weights under a new id, as a retrain gives
    shutil.copytree(dicom_cr_bundle, retrained)
    metrics = json.loads((retrained / "metrics.json").read_text())
    update_bundle(retrained, files=[], metrics=metrics, fields={"id": uuid.uuid4().hex})
    with pytest.raises(ConfigError, match="pass the bundle that predicted it"):
        write_results(outdir, retrained)

    other = tmp_path / "out"
    shutil.copytree(outdir, other, ignore=shutil.ignore_patterns("dicom"))
    table = pd.read_parquet(other / "predictions.parquet")
    table["bundle_id"] = load_bundle(retrained).id
    table.to_parquet(other / "predictions.parquet")
    write_results(other, retrained)
    again = sop_uids(other / "dicom")
    assert again.keys() == first.keys()
    assert not set(again.values()) & set(first.values())
    devices = [
        {
            hd.sr.srread(folder / name)
            .content.get_observer_contexts()[0]
            .observer_identifying_attributes.uid
            for name in again
            if name.endswith("sr.dcm")
        }
        for folder in (outdir / "dicom", other / "dicom")
    ]
    assert len(devices[0]) == len(devices[1]) == 1 and devices[0] != devices[1]


@needs(SERIES_REVERSED)
def test_heatmap_frames_sit_on_their_source_slices(dicom_cr_bundle, tmp_path):  # noqa: F811
    """A map hot on one slice only: the parametric-map frame that is hot lies where the
    reader put that slice (its affine) and references the file at that position; a 2D
    image's map is transposed to DICOM rows and columns."""
    shutil.copytree(SERIES_REVERSED, tmp_path / "scans" / "series")
    shutil.copytree(SINGLE_SLICE, tmp_path / "scans" / "single")
    outdir = tmp_path / "out"
    bundle = load_bundle(dicom_cr_bundle)
    rows, hot_slice, hot_pixel = [], 1, (10, 200)  # slice k; (x = column, y = row)
    for scan in discover(tmp_path / "scans").scans:
        volume = read_scan(scan)
        cam = np.zeros(volume.spatial_shape, np.float32)
        if volume.is_3d:
            cam[..., hot_slice] = np.linspace(0.2, 1.0, cam.shape[0])[:, None]  # rising along X
        else:
            cam[hot_pixel] = 1.0
        stem = "series" if volume.is_3d else "single"
        files = write_explanation(volume, cam, outdir / "explain", stem)
        rows.append(
            {
                "scan_id": scan.scan_id,
                "path": scan.path,
                "modality": "MR",
                "input_hash": "0" * 64,
                "predicted_class": "pneumonia",
                "confidence": 0.75,
                "conformal_set": "normal|pneumonia",
                "ood": False,
                "refer": True,
                "refer_reason": "conformal set holds 2 classes",
                "heatmap": f"explain/{stem}.png",
                "heatmap_map": str(Path(files.get("nifti") or files["npy"]).relative_to(outdir)),
                "bundle_id": bundle.id,
            }
        )
    pd.DataFrame(rows).to_parquet(outdir / "predictions.parquet")
    summary = write_results(outdir, dicom_cr_bundle)
    assert len(summary.written) == 6, summary.skipped
    for path in summary.written:
        dciodvfy(path)

    series = {str(p): pydicom.dcmread(p) for p in sorted((tmp_path / "scans" / "series").glob("*"))}
    pm = pydicom.dcmread(outdir / "dicom" / "series" / "parametric_map.dcm")
    frames = pm.pixel_array  # (frames, rows, columns), float
    assert frames.shape == (4, 256, 256)
    assert pm.StudyInstanceUID == next(iter(series.values())).StudyInstanceUID
    hot = [k for k in range(len(frames)) if frames[k].max() > 0]
    assert len(hot) == 1
    frame = pm.PerFrameFunctionalGroupsSequence[hot[0]]
    volume = read_scan(tmp_path / "scans" / "series")
    where = (np.linalg.inv(LPS_TO_RAS) @ volume.affine @ [0, 0, hot_slice, 1])[:3]
    assert np.allclose(frame.PlanePositionSequence[0].ImagePositionPatient, where, atol=1e-3)
    (derivation,) = frame.DerivationImageSequence
    uid = derivation.SourceImageSequence[0].ReferencedSOPInstanceUID
    (source,) = [ds for ds in series.values() if ds.SOPInstanceUID == uid]
    assert np.allclose(source.ImagePositionPatient, where, atol=1e-3)
    assert np.allclose(frames[hot[0]][:, -1], 1.0) and frames[hot[0]][0, 0] == pytest.approx(0.2)
    shared = pm.SharedFunctionalGroupsSequence[0]
    assert np.allclose(shared.PixelMeasuresSequence[0].PixelSpacing, source.PixelSpacing)
    assert np.allclose(
        shared.PlaneOrientationSequence[0].ImageOrientationPatient, source.ImageOrientationPatient
    )
    referenced = {
        f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for f in pm.PerFrameFunctionalGroupsSequence
    }
    assert referenced == {ds.SOPInstanceUID for ds in series.values()}
    sc = pydicom.dcmread(outdir / "dicom" / "series" / "secondary_capture.dcm")
    assert {i.ReferencedSOPInstanceUID for i in sc.SourceImageSequence} == referenced
    assert list(sc.PatientOrientation) == ["L", "P"]

    single = pydicom.dcmread(outdir / "dicom" / "single" / "parametric_map.dcm").pixel_array
    x, y = hot_pixel
    assert np.argwhere(single.reshape(256, 256) == 1.0).tolist() == [[y, x]]
    sr = pydicom.dcmread(outdir / "dicom" / "series" / "sr.dcm")
    assert "conformal set holds 2 classes" in text_values(sr)
