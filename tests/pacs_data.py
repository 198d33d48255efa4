"""DICOM test data for the PACS tests: the shipped chest X-ray PNGs wrapped as CR studies
(:func:`cr_study`), and a bundle trained on them (the ``dicom_cr_bundle`` fixture).

The pixels are the real PneumoniaMNIST radiographs (28 x 28, 8-bit grey); only the DICOM
wrapping (patient, study, series, instance attributes) is made up, one patient per study.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from tests.conftest import EXAMPLE

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
CR_PIXEL_SPACING_MM = 0.5  # detector pixel size given to the 28 x 28 images
CLASS_NAMES = {"0": "normal", "1": "pneumonia"}  # PneumoniaMNIST's labels, by name


def cr_study(
    folder: str | Path,
    pngs: list[Path],
    *,
    patient_id: str,
    study_uid: str | None = None,
    patient_name: str | None = None,
    when: datetime = datetime(2026, 11, 2, 9, 30),
) -> list[Path]:
    """Write one study of chest CR instances, one per PNG (8-bit grey), into ``folder``.

    One series (PA chest, MONOCHROME2, 8 bits stored) holds the instances; UIDs are derived
    from ``patient_id`` and the study UID, so the same call writes the same UIDs. Returns
    the files written, ``folder/<patient_id>_<n>.dcm``, in the order of ``pngs``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid(entropy_srcs=["medres-test-study", patient_id])
    series_uid = generate_uid(entropy_srcs=["medres-test-series", study_uid])
    paths = []
    for n, png in enumerate(pngs, 1):
        pixels = np.asarray(Image.open(png).convert("L"), dtype=np.uint8)  # (rows, columns)
        sop_uid = generate_uid(entropy_srcs=["medres-test-instance", series_uid, str(n)])
        ds = _cr_dataset(pixels, patient_id, patient_name, when)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
            study_uid,
            series_uid,
            sop_uid,
        )
        ds.InstanceNumber = n
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        path = folder / f"{patient_id}_{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _cr_dataset(
    pixels: np.ndarray, patient_id: str, patient_name: str | None, when: datetime
) -> pydicom.Dataset:
    """A CR image dataset (patient, study, series, equipment, image) without its UIDs."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.PatientName = patient_name or f"Test^{patient_id}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "20200101"
    ds.PatientSex = "O"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.AccessionNumber = f"A{patient_id}"[:16]
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Chest X-ray"
    ds.Modality = "CR"
    ds.SeriesNumber = 1
    ds.SeriesDescription = "Chest PA"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.Laterality = ""
    ds.PatientOrientation = ["L", "F"]
    ds.Manufacturer = "medres tests"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ImagerPixelSpacing = [CR_PIXEL_SPACING_MM, CR_PIXEL_SPACING_MM]
    ds.PixelSpacing = [CR_PIXEL_SPACING_MM, CR_PIXEL_SPACING_MM]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    return ds


def cr_cohort_folder(folder: Path, sizes=(48, 24, 24)) -> Path:
    """The first ``sizes`` PNGs of each split (classes balanced) as CR studies, one patient
    each, under ``folder/scans``, with ``folder/labels.csv`` (path, label as a class name
    of :data:`CLASS_NAMES`, split, patient_id). Returns ``folder``."""
    with open(EXAMPLE / "labels.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    chosen = []
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        for label in ("0", "1"):
            group = [r for r in rows if r["split"] == split and r["label"] == label]
            chosen += group[: n // 2]
    lines = []
    for i, row in enumerate(chosen):
        patient = f"P{i:04d}"
        (path,) = cr_study(folder / "scans", [EXAMPLE / row["path"]], patient_id=patient)
        lines.append(
            {
                "path": path.relative_to(folder / "scans").as_posix(),
                "label": CLASS_NAMES[row["label"]],
                "split": row["split"],
                "patient_id": patient,
            }
        )
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "split", "patient_id"])
        writer.writeheader()
        writer.writerows(lines)
    return folder


def train_quick(folder: Path, out: Path, *options: str) -> Path:
    """Ingest ``folder/scans`` with ``folder/labels.csv`` (its split kept) and train a
    2-epoch bundle into ``out`` with the CLI (batch 16, no workers, ``options`` added), on
    one torch thread: for 28 x 28 images as fast alone, and 6x faster beside other busy
    processes on 2 cores. Returns ``out``."""
    import torch
    from typer.testing import CliRunner

    from medres.cli import app
    from medres.cohort import build_cohort
    from medres.split import split_cohort

    cohort, _ = build_cohort(folder / "scans", labels=folder / "labels.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cohort = split_cohort(cohort, keep_column="split")
    manifest = cohort.save(folder / "cohort.parquet")
    quick = ["--epochs", "2", "--set", "batch_size=16", "--set", "num_workers=0", *options]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = CliRunner().invoke(
            app, ["train", "--cohort", str(manifest), *quick, "-o", str(out)]
        )
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def dicom_cr_bundle(tmp_path_factory) -> Path:
    """A 2-epoch chest X-ray bundle (calibrated, with OOD model; classes ``normal`` and
    ``pneumonia``) trained on CR DICOM studies wrapped around the shipped PNGs (48/24/24
    patients); read only."""
    tmp = tmp_path_factory.mktemp("dicom_cr_bundle")
    folder = cr_cohort_folder(tmp / "cr")
    return train_quick(folder, tmp / "bundle", "--set", "positive_class=pneumonia")


def dciodvfy(path: Path) -> list[str]:
    """dciodvfy's lines about ``path``; the test fails showing them all on any Error."""
    if not shutil.which("dciodvfy"):
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, f"dciodvfy {path}:\n" + "\n".join(lines)
    return lines


def mr_cohort_folder(folder: Path) -> Path:
    """The 12 real MR series of ../shared/data/dicom/dicom2nifti (``*/anatomical/*``
    but the one-slice ones) under ``folder/scans/sNN``, each given its own PatientID (the
    originals share one), with ``folder/labels.csv``: labels ``a``/``b`` alternating,
    6/3/3 series in train/val/test. The labels mean nothing: a bundle trained on them
    exercises 3D DICOM plumbing (parametric maps on real slices), not accuracy."""
    from tests.conftest import DICOM2NIFTI

    series = sorted(DICOM2NIFTI.glob("*/anatomical/*")) + sorted(
        (DICOM2NIFTI / "anatomical").glob("*")
    )
    series = [s for s in series if s.is_dir() and "single" not in s.name]
    splits = ["train"] * 6 + ["val"] * 3 + ["test"] * 3
    lines = []
    for i, (source, split) in enumerate(zip(series, splits, strict=False)):
        name = f"s{i:02d}"
        for path in sorted(source.iterdir()):
            ds = pydicom.dcmread(path)
            ds.PatientID = f"MR{i:02d}"
            (folder / "scans" / name).mkdir(parents=True, exist_ok=True)
            ds.save_as(folder / "scans" / name / path.name)
        lines.append({"path": name, "label": "ab"[i % 2], "split": split})
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(lines)
    return folder
