"""Shared test fixtures: where the real data lives."""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import pydicom.data
import pytest

# Fixtures for tests against real PACS components (private network namespace, Orthanc)
pytest_plugins = ("tests.pacs_servers", "tests.pg_server")

PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDRES_SHARED_DATA", PROJECT.parent / "shared" / "data"))
DICOM2NIFTI = SHARED_DATA / "dicom" / "dicom2nifti"
DCM_QA_NIH = SHARED_DATA / "dicom" / "dcm_qa_nih"
PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"


def pydicom_data_dir() -> Path | None:
    """The files of the `pydicom-data` package (its import name is data_store)."""
    try:
        import data_store
    except ImportError:
        return None
    return Path(data_store.__file__).parent / "data"


def needs(path: Path):
    """Skip a test when a folder of ../shared/data is absent, saying which."""
    return pytest.mark.skipif(
        not path.exists(), reason=f"real test data not found at {path} (../shared/data)"
    )


@pytest.fixture(autouse=True)
def _quiet_pydicom_warnings():
    # pydicom warns about the deliberately odd values in its own test files
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="pydicom")
        yield


EXAMPLE = PROJECT / "examples" / "chest_xray_small"


@pytest.fixture(scope="session")
def example_cohort(tmp_path_factory):
    """The shipped PneumoniaMNIST subset (official splits kept), ingested once."""
    from medres.cohort import build_cohort
    from medres.split import split_cohort

    cohort, _ = build_cohort(EXAMPLE, labels=EXAMPLE / "labels.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return split_cohort(cohort, keep_column="split")


def small_cohort(cohort, path: Path, sizes=(48, 24, 24), **columns) -> Path:
    """Save the first ``sizes`` scans of each split (classes balanced) as a manifest.

    ``columns`` overwrite columns of the result (e.g. ``patient_id=[...]``).
    """
    from medres.cohort import Cohort

    parts = []
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        rows = cohort.table[cohort.table["split"] == split]
        parts += [g.head(n // 2) for _, g in rows.groupby("label")]
    table = __import__("pandas").concat(parts).reset_index(drop=True)
    for name, values in columns.items():
        table[name] = values
    return Cohort(table, dict(cohort.meta)).save(path)


@pytest.fixture(scope="session")
def chest_bundle(example_cohort, tmp_path_factory) -> Path:
    """A 2-epoch chest X-ray bundle (calibrated, with OOD model) trained once per session
    by the CLI on grey PNGs (read only: copy it before changing it)."""
    from typer.testing import CliRunner

    from medres.cli import app

    tmp = tmp_path_factory.mktemp("chest_bundle")
    cohort = small_cohort(example_cohort, tmp / "c.parquet")
    quick = ["--epochs", "2", "--set", "batch_size=16", "--set", "num_workers=0"]
    result = CliRunner().invoke(
        app, ["train", "--cohort", str(cohort), *quick, "-o", str(tmp / "b")]
    )
    assert result.exit_code == 0, result.output
    return tmp / "b"


@pytest.fixture(scope="session")
def review_run(example_cohort, tmp_path_factory) -> Path:
    """:func:`predict_example_run` once per session, shared by the review tests (read only)."""
    return predict_example_run(example_cohort, tmp_path_factory.mktemp("review_run"))


def predict_example_run(example_cohort, tmp: Path) -> Path:
    """A finished ``medres predict --explain`` OUTDIR in ``tmp/out``: a 2-epoch chest X-ray
    bundle over 20 shipped test images plus one of them zero-filled (a black image the
    bundle flags out of distribution). ``tmp/scans`` holds the predicted images."""
    import shutil

    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from medres.cli import app
    from medres.predict import PredictOptions, predict_folder

    cohort = small_cohort(example_cohort, tmp / "c.parquet", sizes=(32, 16, 16))
    quick = ["--epochs", "2", "--set", "batch_size=16", "--set", "num_workers=0"]
    trained = CliRunner().invoke(
        app, ["train", "--cohort", str(cohort), *quick, "-o", str(tmp / "b")]
    )
    assert trained.exit_code == 0, trained.output
    scans = tmp / "scans"
    scans.mkdir()
    pngs = sorted((EXAMPLE / "test").glob("*.png"))[:20]
    for png in pngs:
        shutil.copy(png, scans / png.name)
    real = np.asarray(Image.open(pngs[0]))
    Image.fromarray(np.zeros_like(real)).save(scans / "zz_black.png")  # zero-filled X-ray
    predict_folder(tmp / "b", scans, tmp / "out", PredictOptions(explain=True, workers=0))
    return tmp / "out"


def shared_file(path: Path) -> Path:
    """``path`` under ../shared/data, or skip the test saying what is missing."""
    if not path.exists():
        pytest.skip(f"real test data not found at {path} (../shared/data, see its README)")
    return path


def labels_rows(folder: Path) -> list[dict[str, str]]:
    """The rows of ``folder/labels.csv`` as dicts of text."""
    with open(folder / "labels.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
