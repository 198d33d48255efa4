"""Every image file shipped with pydicom and pydicom-data decodes or fails with a typed error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from medres.errors import ScanError, ScanReadError
from medres.io import read_scan
from medres.io.dicom import read_header, skip_reason
from tests.conftest import PYDICOM_FILES, pydicom_data_dir


def _image_files() -> list[Path]:
    folders = [PYDICOM_FILES, pydicom_data_dir()]
    files = []
    for folder in filter(None, folders):
        for path in sorted(folder.rglob("*")):
            try:
                ds = read_header(path) if path.is_file() else None
            except ScanError:
                continue  # not DICOM at all (README, JSON, ICC profile ...)
            if ds is not None and skip_reason(ds) is None:
                files.append(path)
    return files


IMAGE_FILES = _image_files()


def _id(path: Path) -> str:
    return path.name


def test_the_corpus_is_large():
    """pydicom-data is installed (a dev dependency): ~150 image files in all."""
    assert len(IMAGE_FILES) > 120


@pytest.mark.parametrize("path", IMAGE_FILES, ids=_id)
def test_image_file_decodes_or_names_why(path):
    try:
        volume = read_scan(path)
    except ScanError as e:
        assert e.message, "a typed error must say why"
        return
    assert volume.channels in (1, 3) or volume.meta.get("channel_axis")
    assert volume.array.dtype.isnative
    assert np.isfinite(volume.affine).all()


def _pair(name: str) -> Path:
    for folder in filter(None, [PYDICOM_FILES, pydicom_data_dir()]):
        if (folder / name).exists():
            return folder / name
    pytest.skip(f"{name} not shipped in this pydicom / pydicom-data version")


@pytest.mark.parametrize(
    ("compressed", "reference"),
    [
        ("MR_small_RLE.dcm", "MR_small.dcm"),
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
        ("MR_small_bigendian.dcm", "MR_small.dcm"),
        ("693_J2KR.dcm", "693_UNCR.dcm"),
        ("RG1_J2KR.dcm", "RG1_UNCR.dcm"),
        ("US1_J2KR.dcm", "US1_UNCR.dcm"),
        ("emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm"),
        ("emri_small_RLE.dcm", "emri_small.dcm"),
        ("SC_rgb_rle.dcm", "SC_rgb.dcm"),
    ],
)
def test_lossless_codecs_give_identical_pixels(compressed, reference):
    a, b = read_scan(_pair(compressed)), read_scan(_pair(reference))
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.affine, b.affine)


def test_rescale_is_applied():
    """CT_small has RescaleIntercept -1024: air reads about -1000 HU, not ~0."""
    path = _pair("CT_small.dcm")
    ds = pydicom.dcmread(path)
    volume = read_scan(path)
    expected = ds.pixel_array.T * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(volume.array[0], expected)


def test_monochrome1_is_inverted_to_monochrome2():
    """A MONOCHROME1 radiograph: the brightest stored value becomes the darkest."""
    path = _monochrome1_file()
    ds = pydicom.dcmread(path)
    stored = ds.pixel_array.T.astype(np.float64)
    volume = read_scan(path)
    assert volume.meta["inverted_from"] == "MONOCHROME1"
    assert volume.meta["photometric"] == "MONOCHROME2"
    shown = volume.array[0].astype(np.float64)
    assert np.corrcoef(stored.ravel(), shown.ravel())[0, 1] < -0.999


def _monochrome1_file() -> Path:
    for path in IMAGE_FILES:
        if pydicom.dcmread(path, stop_before_pixels=True).get("PhotometricInterpretation") == (
            "MONOCHROME1"
        ):
            return path
    pytest.skip("no MONOCHROME1 file in the corpus")


def test_rgb_keeps_three_channels_and_ybr_becomes_rgb():
    rgb = read_scan(_pair("SC_rgb.dcm"))
    ybr = read_scan(_pair("SC_ybr_full_uncompressed.dcm"))
    assert rgb.channels == ybr.channels == 3
    assert ybr.meta["photometric"] == "RGB"
    # The same picture stored as RGB and as YBR_FULL: equal up to colour-conversion rounding
    difference = np.abs(rgb.array.astype(int) - ybr.array.astype(int))
    assert difference.mean() < 1 and difference.max() <= 8


def test_window_values_are_kept():
    """The first corpus file with a single WindowCenter keeps it in meta."""
    for path in IMAGE_FILES:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        center = ds.get("WindowCenter")
        if ds.get("PhotometricInterpretation") == "MONOCHROME2" and center is not None:
            break
    volume = read_scan(path)
    assert volume.meta["window_center"] == pytest.approx(float(np.ravel(center)[0]))
    assert volume.meta["window_width"] == pytest.approx(float(np.ravel(ds.WindowWidth)[0]))


def test_truncated_pixel_data_is_a_read_error():
    with pytest.raises(ScanReadError):
        read_scan(_pair("MR_truncated.dcm"))


def test_unsupported_transfer_syntax_names_the_syntax_and_a_package(tmp_path):
    ds = pydicom.dcmread(_pair("MR_small_jp2klossless.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder
    path = tmp_path / "mpeg2.dcm"
    ds.save_as(path, enforce_file_format=False)
    with pytest.raises(ScanReadError) as caught:
        read_scan(path)
    assert "1.2.840.10008.1.2.4.100" in caught.value.message
    assert "install" in caught.value.message


def test_missing_decoder_plugin_names_the_package(monkeypatch):
    class Unavailable:
        is_available = False

    monkeypatch.setattr("medres.io.dicom.get_decoder", lambda uid: Unavailable())
    monkeypatch.setattr(
        "pydicom.dataset.Dataset.pixel_array",
        property(lambda self: (_ for _ in ()).throw(RuntimeError("no plugin"))),
    )
    with pytest.raises(ScanReadError) as caught:
        read_scan(_pair("MR_small_jp2klossless.dcm"))
    assert "JPEG 2000" in caught.value.message
    assert "pip install pylibjpeg-openjpeg" in caught.value.message
