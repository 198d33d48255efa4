"""`medres.pacs.results.write_results`: a predict OUTDIR's results as DICOM objects (TID 1500
SR, parametric map, secondary capture), checked with dciodvfy and read back with highdicom.

Real data: chest X-ray CR studies predicted by a bundle trained on CR (tests/pacs_data.py);
real MR series from ../shared/data/dicom/dicom2nifti and pydicom's enhanced CT, with a
heatmap placed on each as read.
"""

from __future__ import annotations

import json
import logging
import shutil
import stat
import uuid
from pathlib import Path

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medres.bundle import load_bundle, update_bundle, write_manifest
from medres.errors import ConfigError
from medres.explain import write_explanation
from medres.files import sha256_file
from medres.io import discover, read_scan
from medres.io.geometry import LPS_TO_RAS
from medres.pacs.peer import Peer
from medres.pacs.push import push
from medres.pacs.results import NO_HEATMAP, NOT_DICOM, write_results
from medres.pacs.url import Credentials, parse_url
from medres.predict import PredictOptions, predict_folder
from tests.conftest import DICOM2NIFTI, EXAMPLE, shared_file
from tests.pacs_data import (  # noqa: F401 (dicom_cr_bundle: a fixture)
    cr_cohort_folder,
    cr_study,
    dciodvfy,
    dicom_cr_bundle,
    train_quick,
)

PATIENT_NAME = "JANE DOE"  # one component, as old systems write: highdicom warns quoting it
SERIES_REVERSED = DICOM2NIFTI / "generic" / "anatomical" / "001"  # files named against slice order
SINGLE_SLICE = DICOM2NIFTI / "ge" / "anatomical" / "001_single_slice"
PLAIN_SERIES = DICOM2NIFTI / "ge" / "anatomical" / "001"
ENHANCED_CT = "eCT_Supplemental.dcm"  # pydicom's: 2 frames, stored against the slice order
HOT_SLICE = {"series": 1, "enhanced": 0}
HOT_PIXEL = (10, 200)  # (x = column, y = row)


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
    :func:`write_results`: ``(outdir, summary, sources, bundle)``."""
    tmp = tmp_path_factory.mktemp("cr_run")
    pngs = sorted((EXAMPLE / "test").glob("*.png"))[-3:]
    sources = cr_study(
        tmp / "scans" / "study", pngs[:2], patient_id="PACS1", patient_name=PATIENT_NAME
    )
    shutil.copy(pngs[2], tmp / "scans" / "plain.png")
    predict_folder(
        dicom_cr_bundle, tmp / "scans", tmp / "out", PredictOptions(explain=True, workers=0)
    )
    summary = write_results(tmp / "out", dicom_cr_bundle)
    return tmp / "out", summary, sources, dicom_cr_bundle


def test_cr_results_are_valid_dicom_in_the_source_study(cr_run):
    outdir, summary, sources, _ = cr_run
    table = pd.read_parquet(outdir / "predictions.parquet")
    dicom_rows = table[table["modality"] == "CR"]
    assert len(dicom_rows) == 2
    assert summary.skipped[NOT_DICOM] == 1  # the PNG
    # CR images have no patient frame of reference: SR and overlay, no parametric map
    assert sum(n for reason, n in summary.skipped.items() if "frame of reference" in reason) == 2
    assert sorted(p.name for p in summary.written) == ["secondary_capture.dcm"] * 2 + ["sr.dcm"] * 2
    source_uids = {str(pydicom.dcmread(p).SOPInstanceUID) for p in sources}
    source = pydicom.dcmread(sources[0], stop_before_pixels=True)
    referenced = set()
    for path in summary.written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        print(path.name, dciodvfy(path))
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert (ds.PatientID, str(ds.PatientName)) == ("PACS1", PATIENT_NAME)
        assert "not for diagnostic use unless validated locally" in ds.SeriesDescription
        if path.name == "secondary_capture.dcm":
            assert ds.BurnedInAnnotation == "NO"
            assert ds.PhotometricInterpretation == "RGB" and (ds.Rows, ds.Columns) == (28, 28)
            referenced |= {i.ReferencedSOPInstanceUID for i in ds.SourceImageSequence}
    assert referenced == source_uids


def test_sr_reads_back_the_prediction(cr_run):
    outdir, summary, _, _ = cr_run
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


def test_sr_class_codes_keep_the_label_and_mean_the_display_name(cr_run, tmp_path):
    outdir, _, _, bundle = cr_run
    named = shutil.copytree(bundle, tmp_path / "named")  # the same bundle, classes renamed
    manifest = json.loads((named / "bundle.json").read_text())
    assert manifest["classes"] == ["normal", "pneumonia"]
    manifest["class_names"] = ["no pneumonia", "pneumonia (consolidation)"]
    write_manifest(named, manifest)
    names = dict(zip(manifest["classes"], manifest["class_names"], strict=True))
    other = tmp_path / "out"
    shutil.copytree(outdir, other, ignore=shutil.ignore_patterns("dicom"))
    summary = write_results(other, named)
    table = pd.read_parquet(other / "predictions.parquet").set_index("heatmap_map")
    srs = [p for p in summary.written if p.name == "sr.dcm"]
    assert len(srs) == 2
    for path in srs:
        dciodvfy(path)
        row = table.loc[f"explain/{path.parent.name}.npy"]
        (group,) = hd.sr.srread(path).content.get_image_measurement_groups()
        codes = [
            (q.name.meaning, q.value.value, q.value.meaning, q.value.scheme_designator)
            for q in group.get_qualitative_evaluations()
            if q.name.meaning in ("Predicted class", "Conformal prediction set member")
        ]
        shown = row["predicted_class"]
        assert codes[0] == ("Predicted class", shown, names[shown], "99MEDRES")
        members = row["conformal_set"].split("|")
        assert codes[1:] == [
            ("Conformal prediction set member", c, names[c], "99MEDRES") for c in members
        ]


def test_rerun_keeps_uids_another_bundle_changes_them(cr_run, tmp_path, caplog, recwarn):
    outdir, _, _, bundle = cr_run
    first = sop_uids(outdir / "dicom")
    files = sorted((outdir / "dicom").rglob("*.dcm"))
    digests = [sha256_file(p) for p in files]
    with caplog.at_level(logging.DEBUG):
        write_results(outdir, bundle)
    assert sop_uids(outdir / "dicom") == first
    assert [sha256_file(p) for p in files] == digests  # the same bytes: a push sends nothing
    said = caplog.text + "".join(str(w.message) for w in recwarn)
    assert "PACS1" not in said and "JANE" not in said

    retrained = tmp_path / "retrained"  # the same weights under a new id, as a retrain gives
    shutil.copytree(bundle, retrained)
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


def test_regression_bundle_is_refused(cr_run, tmp_path):
    outdir = cr_run[0]
    folder = cr_cohort_folder(tmp_path / "cr", sizes=(16, 8, 0))
    labels = pd.read_csv(folder / "labels.csv")
    labels["label"] = [0.1 + (i % 5) / 5 for i in range(len(labels))]  # a continuous target
    labels.to_csv(folder / "labels.csv", index=False)
    bundle = train_quick(folder, tmp_path / "bundle")
    with pytest.raises(ConfigError, match="regression bundle"):
        write_results(outdir, bundle)


@pytest.fixture(scope="module")
def mr_run(dicom_cr_bundle, tmp_path_factory):  # noqa: F811
    """An OUTDIR as ``medres predict --explain`` writes it, for real MR and CT scans with a
    made-up prediction and a heatmap placed on each as read (``write_explanation``), then
    :func:`write_results`: ``(outdir, summary, scans)``. ``series``: a 4-slice MR series
    whose file names run against the slice order, map hot on slice 1 only, rising along X;
    ``enhanced``: a 2-frame enhanced CT whose frames run against the slice order, hot on
    slice 0; ``single``: a one-slice MR, hot at one pixel; ``plain``: a series predicted
    without heatmap."""
    for folder in (SERIES_REVERSED, SINGLE_SLICE, PLAIN_SERIES):
        shared_file(folder)
    tmp = tmp_path_factory.mktemp("mr_run")
    scans, outdir = tmp / "scans", tmp / "out"
    shutil.copytree(SERIES_REVERSED, scans / "series")
    shutil.copytree(SINGLE_SLICE, scans / "single")
    shutil.copytree(PLAIN_SERIES, scans / "plain")
    shutil.copy(get_testdata_file(ENHANCED_CT), scans / "enhanced.dcm")
    rows = []
    for scan in discover(scans).scans:
        name = Path(scan.files[0]).relative_to(scans).parts[0].removesuffix(".dcm")
        row = {
            "scan_id": scan.scan_id,
            "path": scan.path,
            "modality": scan.meta["modality"],
            "input_hash": "0" * 64,
            "predicted_class": "pneumonia",
            "confidence": 0.75,
            "conformal_set": "normal|pneumonia",
            "ood": False,
            "refer": True,
            "refer_reason": "conformal set holds 2 classes",
            "heatmap": None,
            "heatmap_map": None,
            "bundle_id": load_bundle(dicom_cr_bundle).id,
        }
        if name != "plain":
            volume = read_scan(scan)
            cam = np.zeros(volume.spatial_shape, np.float32)
            if name == "single":
                cam[HOT_PIXEL] = 1.0
            else:
                cam[..., HOT_SLICE[name]] = np.linspace(0.2, 1.0, cam.shape[0])[:, None]
            files = write_explanation(volume, cam, outdir / "explain", name)
            row["heatmap"] = f"explain/{name}.png"
            row["heatmap_map"] = Path(files.get("nifti") or files["npy"]).relative_to(outdir)
            row["heatmap_map"] = str(row["heatmap_map"])
        rows.append(row)
    pd.DataFrame(rows).to_parquet(outdir / "predictions.parquet")
    return outdir, write_results(outdir, dicom_cr_bundle), scans


def hot_frame(pm: pydicom.Dataset) -> int:
    """The index of the one frame of ``pm`` holding a value above 0."""
    frames = pm.pixel_array.reshape(-1, pm.Rows, pm.Columns)
    hot = [k for k in range(len(frames)) if frames[k].max() > 0]
    assert len(hot) == 1
    return hot[0]


def where_reader_put(scan: Path, k: int) -> np.ndarray:
    """LPS mm of the first voxel of slice ``k`` of ``scan`` as medres reads it."""
    return (np.linalg.inv(LPS_TO_RAS) @ read_scan(scan).affine @ [0, 0, k, 1])[:3]


def test_mr_and_ct_objects_are_valid_and_complete(mr_run):
    outdir, summary, _ = mr_run
    names = sorted(p.relative_to(outdir / "dicom").as_posix() for p in summary.written)
    with_map = ["parametric_map.dcm", "secondary_capture.dcm", "sr.dcm"]
    plain = [p for p in names if p.split("/")[0] not in ("enhanced", "series", "single")]
    assert len(plain) == 1 and plain[0].endswith("-00000000/sr.dcm")  # its safe stem, SR only
    assert names == sorted(
        plain + [f"{scan}/{name}" for scan in ("enhanced", "series", "single") for name in with_map]
    )
    assert summary.skipped == {NO_HEATMAP: 1}
    for path in summary.written:
        dciodvfy(path)
    sr = pydicom.dcmread(outdir / "dicom" / "series" / "sr.dcm")
    assert "conformal set holds 2 classes" in text_values(sr)


def test_heatmap_frames_sit_on_their_source_slices(mr_run):
    """The parametric-map frame that is hot lies where the reader put the hot slice (its
    affine) and references the file at that position; pixel spacing and orientation are
    the source's; the map's X runs along DICOM columns."""
    outdir, _, scans = mr_run
    series = {str(p): pydicom.dcmread(p) for p in sorted((scans / "series").glob("*"))}
    pm = pydicom.dcmread(outdir / "dicom" / "series" / "parametric_map.dcm")
    assert pm.NumberOfFrames == 4
    assert pm.StudyInstanceUID == next(iter(series.values())).StudyInstanceUID
    k = hot_frame(pm)
    frame = pm.PerFrameFunctionalGroupsSequence[k]
    where = where_reader_put(scans / "series", HOT_SLICE["series"])
    assert np.allclose(frame.PlanePositionSequence[0].ImagePositionPatient, where, atol=1e-3)
    uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
    (source,) = [ds for ds in series.values() if ds.SOPInstanceUID == uid]
    assert np.allclose(source.ImagePositionPatient, where, atol=1e-3)
    pixels = pm.pixel_array[k]  # (rows, columns)
    assert np.allclose(pixels[:, -1], 1.0) and pixels[0, 0] == pytest.approx(0.2)
    shared = pm.SharedFunctionalGroupsSequence[0]
    assert np.allclose(shared.PixelMeasuresSequence[0].PixelSpacing, source.PixelSpacing)
    orientation = shared.PlaneOrientationSequence[0].ImageOrientationPatient
    assert np.allclose(orientation, source.ImageOrientationPatient)
    referenced = {
        f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for f in pm.PerFrameFunctionalGroupsSequence
    }
    assert referenced == {ds.SOPInstanceUID for ds in series.values()}
    sc = pydicom.dcmread(outdir / "dicom" / "series" / "secondary_capture.dcm")
    assert {i.ReferencedSOPInstanceUID for i in sc.SourceImageSequence} == referenced
    assert list(sc.PatientOrientation) == ["L", "P"]
    # a derived frame of reference (the files have none), the same on a rerun
    assert pm.FrameOfReferenceUID == generate_uid(
        entropy_srcs=["medres frame of reference", source.SeriesInstanceUID]
    )


def test_enhanced_frames_and_2d_images_are_aligned(mr_run):
    outdir, _, scans = mr_run
    pm = pydicom.dcmread(outdir / "dicom" / "enhanced" / "parametric_map.dcm")
    frame = pm.PerFrameFunctionalGroupsSequence[hot_frame(pm)]
    where = where_reader_put(scans / "enhanced.dcm", HOT_SLICE["enhanced"])
    assert np.allclose(frame.PlanePositionSequence[0].ImagePositionPatient, where, atol=1e-3)
    (source,) = frame.DerivationImageSequence[0].SourceImageSequence
    enhanced = pydicom.dcmread(scans / "enhanced.dcm", stop_before_pixels=True)
    placed = enhanced.PerFrameFunctionalGroupsSequence[source.ReferencedFrameNumber - 1]
    assert np.allclose(placed.PlanePositionSequence[0].ImagePositionPatient, where, atol=1e-3)

    single = pydicom.dcmread(outdir / "dicom" / "single" / "parametric_map.dcm").pixel_array
    x, y = HOT_PIXEL
    assert np.argwhere(single.reshape(256, 256) == 1.0).tolist() == [[y, x]]


def test_parametric_maps_land_in_orthanc_beside_their_source(mr_run, orthanc):
    """STOW-RS into a real Orthanc holding the source scans: each parametric map, overlay
    and SR joins its source's study; sending again adds no instance."""
    outdir, summary, scans = mr_run
    for source in sorted(p for p in scans.rglob("*") if p.is_file()):
        orthanc.upload(source)
    peer = Peer(parse_url(orthanc.http_url), credentials=Credentials(*orthanc.auth))
    push(outdir, peer)
    maps = [p for p in summary.written if p.name == "parametric_map.dcm"]
    assert len(maps) == 3  # the series, the one-slice MR, the enhanced CT
    studies = set()
    for path in summary.written:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.SOPInstanceUID in orthanc.sop_uids(ds.StudyInstanceUID), path
        studies.add(ds.StudyInstanceUID)
    held = sum(len(orthanc.study_instances(s)) for s in studies)
    push(outdir, peer, again=True)
    assert sum(len(orthanc.study_instances(s)) for s in studies) == held
