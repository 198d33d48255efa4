"""Ingest: one manifest row per scan and per failure, nothing lost, labels joined."""

from __future__ import annotations

import os
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
from medres.cohort import COLUMNS, Cohort, build_cohort
from medres.errors import ManifestError
from tests.conftest import DCM_QA_NIH, DICOM2NIFTI, PYDICOM_FILES, pydicom_data_dir


def _link_tree(source: Path, target: Path) -> None:
    """Mirror ``source`` under ``target`` with one symlink per file (fast, no copies)."""
    for folder, _, files in os.walk(source):
        out = target / Path(folder).relative_to(source)
        out.mkdir(parents=True, exist_ok=True)
        for name in files:
            (out / name).symlink_to(Path(folder, name))


def _make_junk(folder: Path) -> None:
    """Broken inputs made from real files."""
    folder.mkdir()
    (folder / "empty.dcm").touch()
    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    (folder / "truncated.dcm").write_bytes(ct[: len(ct) // 2])
    (folder / "notes.txt").write_text("exported by PACS on Monday\n")
    image = nib.load(f"{NIBABEL_DATA}/anatomical.nii")
    nan = np.full(image.shape, np.nan, dtype=np.float32)
    nib.save(nib.Nifti1Image(nan, image.affine), folder / "all_nan.nii.gz")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "picture.png")
    (folder / "picture_named.dcm").write_bytes((folder / "picture.png").read_bytes())


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """Everything real we have plus junk, in one folder, ingested once."""
    root = tmp_path_factory.mktemp("messy")
    for name, source in [
        ("dicom2nifti", DICOM2NIFTI),
        ("nih", DCM_QA_NIH),
        ("pydicom", PYDICOM_FILES),
        ("pydicom_data", pydicom_data_dir()),
    ]:
        if source is not None and source.exists():
            _link_tree(source, root / name)
    _make_junk(root / "junk")
    cohort, report = build_cohort(root)
    return root, cohort, report


def _row(cohort: Cohort, path: Path) -> pd.Series:
    table = cohort.table
    hits = table[table["files"].map(lambda files: str(path) in files)]
    assert len(hits) == 1, f"expected one row for {path}, found {len(hits)}"
    return hits.iloc[0]


def test_every_file_is_a_row_a_skip_or_a_duplicate(messy):
    root, cohort, report = messy
    accounted = {f for files in cohort.table["files"] for f in files}
    accounted |= {p for p, _ in report.skipped} | set(report.duplicates)
    every_file = {str(p) for p in root.rglob("*") if p.is_file() or p.is_symlink()}
    assert every_file - accounted == set()


def test_junk_becomes_error_rows_with_reasons(messy):
    root, cohort, report = messy
    junk = root / "junk"
    cases = {
        "empty.dcm": ("ScanReadError", "empty file"),
        "truncated.dcm": ("ScanReadError", ""),
        "all_nan.nii.gz": ("ScanContentError", "NaN"),
        "picture_named.dcm": ("ScanReadError", "looks like a PNG"),
    }
    for name, (error_type, words) in cases.items():
        row = _row(cohort, junk / name)
        assert row["status"] == "error", name
        assert row["error_type"] == error_type, name
        assert words in row["error"], name
    assert _row(cohort, junk / "picture.png")["status"] == "ok"
    assert str(junk / "notes.txt") in {p for p, _ in report.skipped}


@pytest.mark.skipif(not DICOM2NIFTI.exists(), reason="dicom2nifti data absent")
def test_geometry_failures_and_good_series(messy):
    root, cohort, _ = messy
    table = cohort.table
    failing = table[table["path"].str.contains("/failing/")]
    refused = failing[failing["status"] == "error"]
    assert set(refused["error_type"]) == {"ScanGeometryError"}
    assert len(refused) == 5  # all of failing/ but slicecount/001
    good = _row(cohort, next((root / "dicom2nifti/philips/anatomical/001").glob("*.dcm")))
    assert good["status"] == "ok" and list(good["shape"]) == [1, 240, 240, 4]
    assert len(good["files"]) == 4 and good["modality"] == "MR"


def test_non_scan_dicom_objects_are_skipped_with_a_reason(messy):
    _, _, report = messy
    reasons = dict(report.skipped)
    dicomdir = [r for p, r in reasons.items() if p.endswith("DICOMDIR")]
    assert dicomdir and all("DICOMDIR" in r for r in dicomdir)
    assert any("structured report" in r for r in reasons.values())


def test_manifest_round_trips_through_parquet(messy, tmp_path):
    _, cohort, _ = messy
    cohort.save(tmp_path / "c.parquet")
    again = Cohort.load(tmp_path / "c.parquet")
    assert list(again.table.columns) == list(COLUMNS)
    assert len(again.table) == len(cohort.table)
    assert again.meta["root"] == cohort.meta["root"]
    assert again.table["scan_id"].is_unique


@pytest.fixture
def pngs(tmp_path):
    """Six PNGs of three patients, and a labels file with one label matching no scan."""
    folder = tmp_path / "pngs"
    folder.mkdir()
    rows = []
    for i in range(6):
        Image.fromarray(np.full((8, 8), i * 40, np.uint8)).save(folder / f"img{i}.png")
        if i < 5:  # img5 gets no label
            rows.append({"path": f"img{i}.png", "label": i % 2, "patient_id": f"P{i // 2}"})
    rows.append({"path": "gone.png", "label": 1, "patient_id": "P9"})
    pd.DataFrame(rows).to_csv(folder / "labels.csv", index=False)
    return folder


def test_labels_join_and_report_what_did_not_match(pngs):
    cohort, report = build_cohort(pngs, labels=pngs / "labels.csv", site="Ward 7")
    table = cohort.table.set_index("scan_id")
    assert table.loc["img3.png", "label"] == 1 and table.loc["img3.png", "patient_id"] == "P1"
    assert pd.isna(table.loc["img5.png", "label"])
    assert report.unmatched_labels == ["gone.png"]
    assert report.unlabelled_scans == ["img5.png"]
    assert set(table["site"]) == {"Ward 7"}
    assert str(table["label"].dtype) == "Int64"


def test_labels_file_without_a_key_is_refused(pngs):
    (pngs / "bad.csv").write_text("file,diagnosis\nimg0.png,1\n")
    with pytest.raises(ManifestError, match="key column"):
        build_cohort(pngs, labels=pngs / "bad.csv")


def _scans_with_labels(folder: Path, labels: list[str]) -> Path:
    """PNGs img0..img{n-1} in ``folder`` and ``folder/l.csv`` giving img{i} the label cell
    ``labels[i]`` as written; img0's patient id is "NA" (a real id, not a missing value)."""
    folder.mkdir(exist_ok=True)
    rows = []
    for i, label in enumerate(labels):
        Image.fromarray(np.full((8, 8), i * 20, np.uint8)).save(folder / f"img{i}.png")
        rows.append(f"img{i}.png,{label},{'NA' if i == 0 else f'P{i}'}")
    (folder / "l.csv").write_text("path,label,patient_id\n" + "\n".join(rows) + "\n")
    return folder / "l.csv"


def test_missing_label_spellings_leave_scans_unlabelled(tmp_path):
    cells = ["0", "1", "NaN", "nan", "NA", "N/A", "null", "NULL", "None", "", "   ", " 1 "]
    labels = _scans_with_labels(tmp_path / "scans", cells)
    cohort, report = build_cohort(tmp_path / "scans", labels=labels)
    table = cohort.table.set_index("scan_id")
    assert str(table["label"].dtype) == "Int64"  # the classes are the real ones: 0 and 1
    assert sorted(table["label"].dropna().unique()) == [0, 1]
    assert table.loc["img11.png", "label"] == 1  # " 1 " is stripped
    assert sorted(report.unlabelled_scans) == sorted(f"img{i}.png" for i in range(2, 11))
    assert table.loc["img0.png", "patient_id"] == "NA"  # only the label column reads NA as missing


def test_word_labels_with_missing_cells_stay_words(tmp_path):
    cells = ["normal", "pneumonia", "N/A", "None", "  ", "normal"]
    labels = _scans_with_labels(tmp_path / "scans", cells)
    cohort, _ = build_cohort(tmp_path / "scans", labels=labels)
    assert sorted(cohort.table["label"].dropna().unique()) == ["normal", "pneumonia"]


@pytest.mark.parametrize("word", ["unknown", "pneumonia"])
def test_labels_mixing_numbers_and_words_are_refused(tmp_path, word):
    scans = tmp_path / "scans"
    labels = _scans_with_labels(scans, ["0", "1", word, word, "1", "NaN"])
    with pytest.raises(ManifestError, match=rf"mix numbers \('0', '1'\) and words \('{word}'"):
        build_cohort(scans, labels=labels)
    out = tmp_path / "c.parquet"
    args = ["ingest", str(scans), "--labels", str(labels), "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())  # rich wraps long lines
    assert f"'{word}' (2 scans)" in said and "blank the cells" in said and not out.exists()


def test_missing_patient_ids_are_not_invented(pngs):
    cohort, _ = build_cohort(pngs)
    assert cohort.table["patient_id"].isna().all()


def test_cli_ingest_writes_manifest_and_summary(pngs, tmp_path):
    out = tmp_path / "cohort.parquet"
    result = CliRunner().invoke(
        app, ["ingest", str(pngs), "--labels", str(pngs / "labels.csv"), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "scans ok" in result.output and "labels matching no scan" in result.output
    assert len(Cohort.load(out).table) == 6


def test_cli_strict_fails_on_bad_scans(tmp_path):
    (tmp_path / "broken.dcm").touch()
    result = CliRunner().invoke(
        app, ["ingest", str(tmp_path), "-o", str(tmp_path / "c.parquet"), "--strict"]
    )
    assert result.exit_code == 1
    assert Cohort.load(tmp_path / "c.parquet").table["status"].tolist() == ["error"]


def test_cli_help_has_an_example():
    result = CliRunner().invoke(app, ["ingest", "--help"])
    assert result.exit_code == 0 and "Example" in result.output


@pytest.mark.skipif(not DCM_QA_NIH.exists(), reason="dcm_qa_nih data absent")
def test_headers_only_ingest_of_600_files_is_well_under_ten_seconds():
    import time

    start = time.perf_counter()
    cohort, _ = build_cohort(DCM_QA_NIH, verify_pixels=False)
    seconds = time.perf_counter() - start
    shapes = sorted(tuple(s) for s in cohort.table["shape"])
    assert shapes == [(2, 72, 72, 5)] * 4 + [(10, 64, 64, 15)] * 4  # Siemens mosaics, GE EPI
    assert seconds < 10, f"took {seconds:.1f} s"
