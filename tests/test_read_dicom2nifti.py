"""read_scan against another project's ground truth: dicom2nifti's test series."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medres.errors import ScanGeometryError, ScanReadError
from medres.io import read_scan
from tests.conftest import DICOM2NIFTI

pytestmark = pytest.mark.skipif(
    not DICOM2NIFTI.exists(), reason=f"dicom2nifti test data not found at {DICOM2NIFTI}"
)


def _ground_truths() -> list[str]:
    if not DICOM2NIFTI.exists():
        return []
    found = sorted(DICOM2NIFTI.rglob("*_ground_truth.nii.gz"))
    names = [str(p.relative_to(DICOM2NIFTI)).removesuffix("_ground_truth.nii.gz") for p in found]
    refused = ("failing/sliceinc", "failing/slicecount")  # dicom2nifti refuses them too
    return [n for n in names if n != "generic/rgb/001" and not n.startswith(refused)]


def _canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    return np.asanyarray(image.dataobj), image.affine


def _as_3d(array: np.ndarray) -> np.ndarray:
    return array[..., None] if array.ndim == 2 else array


@pytest.mark.parametrize("series", _ground_truths())
def test_series_matches_dicom2nifti_ground_truth(series):
    truth = nib.load(DICOM2NIFTI / f"{series}_ground_truth.nii.gz")
    volume = read_scan(DICOM2NIFTI / series)

    assert volume.channels == 1
    mine, my_affine = _canonical(_as_3d(volume.array[0]), volume.affine)
    theirs, their_affine = _canonical(np.asanyarray(truth.dataobj), truth.affine)
    assert mine.shape == theirs.shape
    np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(my_affine, their_affine, atol=1e-3)


def test_rgb_series_matches_ground_truth_per_channel():
    truth = nib.load(DICOM2NIFTI / "generic/rgb/001_ground_truth.nii.gz")
    rgb = np.asanyarray(truth.dataobj)  # structured dtype with R, G, B, A fields
    volume = read_scan(DICOM2NIFTI / "generic/rgb/001")

    assert volume.channels == 3
    for channel, name in enumerate("RGB"):
        mine, my_affine = _canonical(volume.array[channel], volume.affine)
        theirs, their_affine = _canonical(np.ascontiguousarray(rgb[name]), truth.affine)
        np.testing.assert_array_equal(mine, theirs)
        np.testing.assert_allclose(my_affine, their_affine, atol=1e-3)


@pytest.mark.parametrize(
    ("series", "cause"),
    [
        ("failing/gantrytilting/001", "gantry tilt"),
        ("failing/sliceincrement/001", "slice increment"),
        ("failing/sliceincrement/002", "slice increment"),
        ("failing/sliceorientation/001", "mixed orientations"),
        ("failing/notavolume/001", "not a volume"),
        ("failing/slicecount/001", "fewer than 3 slices"),
    ],
)
def test_failing_series_are_refused_with_the_cause(series, cause):
    with pytest.raises((ScanGeometryError, ScanReadError)) as caught:
        read_scan(DICOM2NIFTI / series)
    assert cause in caught.value.message


def test_every_failing_series_is_covered():
    """All of failing/ is refused, slicecount/001 (two slices) included, as dicom2nifti does."""
    folders = {p.parent for p in (DICOM2NIFTI / "failing").rglob("*.dcm")}
    assert len(folders) == 6
    for folder in folders:
        with pytest.raises((ScanGeometryError, ScanReadError)):
            read_scan(folder)


def test_slice_order_ignores_file_names_and_instance_numbers(tmp_path):
    """Files renamed in reverse order and with scrambled InstanceNumbers read the same."""
    import pydicom

    source = DICOM2NIFTI / "siemens/anatomical/001"
    files = sorted(source.glob("*.dcm"))
    for i, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = [7, 1, 9, 3][i]
        ds.save_as(tmp_path / f"slice_{len(files) - i:02d}.dcm")
    expected = read_scan(source)
    got = read_scan(tmp_path)
    np.testing.assert_array_equal(got.array, expected.array)
    np.testing.assert_allclose(got.affine, expected.affine)


def test_missing_middle_slice_is_refused(tmp_path):
    """Drop a slice from a real series: the gap is named, not papered over."""
    import shutil

    files = sorted((DICOM2NIFTI / "generic/anatomical/001").glob("*.dcm"))
    for path in files[:1] + files[2:]:
        shutil.copy(path, tmp_path / path.name)
    with pytest.raises(ScanGeometryError, match="a slice is missing"):
        read_scan(tmp_path)


def test_inconsistent_rows_and_columns_are_refused(tmp_path):
    import pydicom

    files = sorted((DICOM2NIFTI / "generic/anatomical/001").glob("*.dcm"))
    for i, path in enumerate(files):
        ds = pydicom.dcmread(path)
        if i == 2:
            ds.PixelData = ds.pixel_array[:128, :128].tobytes()
            ds.Rows, ds.Columns = 128, 128
        ds.save_as(tmp_path / path.name)
    with pytest.raises(ScanGeometryError, match="inconsistent rows/columns"):
        read_scan(tmp_path)


def test_enhanced_multiframe_reads_like_the_classic_series(tmp_path):
    """A Legacy Converted Enhanced MR object (highdicom, per-frame + shared functional
    groups, frames shuffled) gives the same voxels and affine as the original series."""
    import random

    import highdicom as hd
    import pydicom
    from highdicom.legacy import LegacyConvertedEnhancedMRImage

    source = DICOM2NIFTI / "philips/anatomical/001"
    datasets = [pydicom.dcmread(p) for p in sorted(source.glob("*.dcm"))]
    random.Random(0).shuffle(datasets)
    enhanced = LegacyConvertedEnhancedMRImage(
        datasets,
        series_instance_uid=hd.UID(),
        series_number=99,
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    enhanced.save_as(tmp_path / "enhanced.dcm")

    classic, multiframe = read_scan(source), read_scan(tmp_path / "enhanced.dcm")
    assert "PerFrameFunctionalGroupsSequence" in pydicom.dcmread(tmp_path / "enhanced.dcm")
    np.testing.assert_array_equal(multiframe.array, classic.array)
    np.testing.assert_allclose(multiframe.affine, classic.affine, atol=1e-6)
