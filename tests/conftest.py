"""Shared test fixtures: where the real data lives."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pydicom.data
import pytest

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
