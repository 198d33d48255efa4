"""A series of several single-frame files with fewer than 3 slices is refused as a volume
(dicom2nifti's rule) as a scan-level failure; single images keep reading as 2D."""

from __future__ import annotations

import shutil

import pytest
from pydicom.data import get_testdata_file

from medres.errors import ScanGeometryError, ScanReadError
from medres.io import discover, read_scan
from tests.conftest import DICOM2NIFTI

pytestmark = pytest.mark.skipif(
    not DICOM2NIFTI.exists(), reason=f"dicom2nifti test data not found at {DICOM2NIFTI}"
)
SERIES = DICOM2NIFTI / "generic/anatomical/001"


def _copy(files, folder):
    folder.mkdir(parents=True)
    for path in files:
        shutil.copy(path, folder / path.name)
    return folder


def test_two_slice_series_is_refused_naming_the_count_and_the_rule(tmp_path):
    files = sorted(SERIES.glob("*.dcm"))
    folder = _copy(files[:2], tmp_path / "two")
    with pytest.raises(ScanGeometryError) as caught:
        read_scan(folder)
    message = caught.value.message
    assert "only 2 slices" in message and "at least 3" in message
    assert "dicom2nifti" in message and "not a volume" in message
    with pytest.raises(ScanGeometryError, match="only 2 slices"):
        read_scan([str(p) for p in sorted(folder.glob("*.dcm"))])
    assert read_scan(_copy(files[:3], tmp_path / "three")).spatial_shape[2] == 3


def test_two_slice_series_is_a_failure_row_and_the_batch_goes_on(tmp_path):
    files = sorted(SERIES.glob("*.dcm"))
    _copy(files[:2], tmp_path / "batch/two")
    _copy(sorted((DICOM2NIFTI / "philips/anatomical/001").glob("*.dcm")), tmp_path / "batch/ok")
    found = discover(tmp_path / "batch")
    assert len(found.scans) == 1 and found.scans[0].meta["shape"] == [1, 240, 240, 4]
    (failure,) = found.failures
    assert (failure.stage, failure.error_type) == ("validate", "ScanGeometryError")
    assert "only 2 slices" in failure.message and len(failure.files) == 2


def test_single_file_images_read_as_before(tmp_path):
    one = _copy(sorted(SERIES.glob("*.dcm"))[:1], tmp_path / "one")
    assert len(read_scan(one).spatial_shape) == 2
    for name in ("CT_small.dcm", "MR_small.dcm", "SC_rgb.dcm"):
        volume = read_scan(get_testdata_file(name))
        assert len(volume.spatial_shape) == 2, name


def test_the_rule_does_not_touch_a_refused_non_volume(tmp_path):
    with pytest.raises((ScanGeometryError, ScanReadError), match="not a volume"):
        read_scan(DICOM2NIFTI / "failing/notavolume/001")
