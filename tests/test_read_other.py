"""NIfTI, PNG/JPEG, 4D DICOM series and Siemens mosaics, and the Volume contract."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.testing import data_path as NIBABEL_DATA
from PIL import Image

from medres.errors import ScanContentError, ScanReadError
from medres.io import Volume, read_scan
from medres.io.geometry import LPS_TO_RAS
from tests.conftest import DCM_QA_NIH, needs

NIBABEL_FILES = ["example4d.nii.gz", "anatomical.nii", "example_nifti2.nii.gz", "standard.nii.gz"]


@pytest.mark.parametrize("name", NIBABEL_FILES)
def test_nifti_reads_as_nibabel_does(name):
    path = f"{NIBABEL_DATA}/{name}"
    image = nib.load(path)
    data = np.asanyarray(image.dataobj)
    volume = read_scan(path)

    np.testing.assert_allclose(volume.affine, image.affine)
    if data.ndim == 4:  # time becomes the channels
        assert volume.array.shape == (data.shape[3], *data.shape[:3])
        np.testing.assert_array_equal(volume.array[1], data[..., 1])
    else:
        np.testing.assert_array_equal(volume.array[0], data.reshape(data.shape[:3]))
    # DESIGN §3: Nifti1Image(array[0], affine) is a correct image of the scan
    again = nib.Nifti1Image(volume.array[0], volume.affine)
    np.testing.assert_allclose(again.affine, image.affine)


def test_nifti_full_of_nan_is_a_content_error(tmp_path):
    image = nib.load(f"{NIBABEL_DATA}/anatomical.nii")
    data = np.asanyarray(image.dataobj).astype(np.float32)
    data[:] = np.nan
    nib.save(nib.Nifti1Image(data, image.affine), tmp_path / "nan.nii.gz")
    with pytest.raises(ScanContentError, match="NaN"):
        read_scan(tmp_path / "nan.nii.gz")


def test_truncated_nifti_is_a_read_error(tmp_path):
    raw = Path(NIBABEL_DATA, "anatomical.nii").read_bytes()
    (tmp_path / "cut.nii").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ScanReadError):
        read_scan(tmp_path / "cut.nii")


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I;16"])
def test_png_keeps_channels_and_pixels(tmp_path, mode):
    rng = np.random.default_rng(0)
    channels = {"L": 1, "RGB": 3, "RGBA": 4, "I;16": 1}[mode]
    if mode == "I;16":
        pixels = rng.integers(0, 65535, (20, 30), dtype=np.uint16)
    else:
        pixels = rng.integers(0, 255, (20, 30, channels), dtype=np.uint8).squeeze()
    Image.fromarray(pixels, mode=mode if mode != "I;16" else None).save(tmp_path / "x.png")
    volume = read_scan(tmp_path / "x.png")
    assert volume.array.shape == (channels, 30, 20)  # (C, X=columns, Y=rows)
    restored = np.transpose(volume.array, (2, 1, 0)).squeeze()
    np.testing.assert_array_equal(restored, pixels)


def test_png_and_dicom_of_the_same_picture_agree(tmp_path):
    """A geometry-less DICOM and the PNG of its pixels give the same Volume."""
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("SC_rgb.dcm"))
    Image.fromarray(ds.pixel_array).save(tmp_path / "same.png")
    from_dicom, from_png = (
        read_scan(get_testdata_file("SC_rgb.dcm")),
        read_scan(tmp_path / "same.png"),
    )
    np.testing.assert_array_equal(from_dicom.array, from_png.array)
    np.testing.assert_allclose(from_dicom.affine, from_png.affine)


def test_png_named_dcm_says_what_it_is(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    (tmp_path / "x.dcm").write_bytes((tmp_path / "x.png").read_bytes())
    with pytest.raises(ScanReadError, match="looks like a PNG"):
        read_scan(tmp_path / "x.dcm")


def test_empty_file_is_a_read_error(tmp_path):
    (tmp_path / "empty.dcm").touch()
    with pytest.raises(ScanReadError, match="empty file"):
        read_scan(tmp_path / "empty.dcm")


@needs(DCM_QA_NIH)
def test_4d_series_orders_time_points_within_each_position():
    folder = DCM_QA_NIH / "20180918GE/mr_0004"
    files = sorted(folder.glob("*.dcm"))
    series = read_scan(folder)
    assert series.array.shape == (10, 64, 64, 15)
    assert series.spacing_mm == pytest.approx((3.75, 3.75, 5.0), abs=1e-3)
    # Instance numbers 1-15 are the first time point, 16-30 the second (GE export)
    for t in (0, 1):
        one = read_scan([str(p) for p in files[15 * t : 15 * (t + 1)]])
        np.testing.assert_array_equal(series.array[t], one.array[0])
        np.testing.assert_allclose(series.affine, one.affine)


@needs(DCM_QA_NIH)
def test_siemens_mosaic_matches_nibabel():
    from nibabel.nicom import dicomwrappers

    folder = DCM_QA_NIH / "20180918Si/mr_0003"
    first = sorted(folder.glob("*.dcm"))[0]
    wrapper = dicomwrappers.wrapper_from_data(pydicom.dcmread(first))
    theirs = nib.as_closest_canonical(
        nib.Nifti1Image(wrapper.get_data().astype(np.float64), LPS_TO_RAS @ wrapper.affine)
    )
    volume = read_scan(folder)
    assert volume.array.shape == (2, 72, 72, 5)
    mine = nib.as_closest_canonical(nib.Nifti1Image(volume.array[0], volume.affine))
    np.testing.assert_allclose(np.asanyarray(mine.dataobj), np.asanyarray(theirs.dataobj))
    np.testing.assert_allclose(mine.affine, theirs.affine, atol=1e-3)


def test_volume_refuses_malformed_input_with_exact_messages():
    with pytest.raises(ValueError, match="channels-first"):
        Volume(np.zeros((4, 4)), np.eye(4))
    with pytest.raises(ValueError, match="4x4"):
        Volume(np.zeros((1, 4, 4)), np.eye(3))
    with pytest.raises(ValueError, match="singular"):
        Volume(np.zeros((1, 4, 4)), np.diag([1.0, 0.0, 1.0, 1.0]))
    v = Volume(np.zeros((1, 4, 5, 6)), np.diag([2.0, 3.0, 4.0, 1.0]))
    assert v.spacing_mm == (2.0, 3.0, 4.0) and v.spatial_shape == (4, 5, 6) and v.is_3d
