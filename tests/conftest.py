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
