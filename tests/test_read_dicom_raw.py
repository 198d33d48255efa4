"""DICOM written without the 128-byte preamble and 'DICM' (a C-STORE payload saved raw):
read and discovered like the same dataset as a Part 10 file; non-DICOM is still refused."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset

from medres.errors import ScanReadError
from medres.io import discover, read_scan

# (pydicom test file, keep the file meta, implicit VR, little endian)
LAYOUTS = {
    "file_meta_first": ("CT_small.dcm", True, False, True),
    "dataset_explicit_le": ("CT_small.dcm", False, False, True),
    "dataset_implicit_le": ("CT_small.dcm", False, True, True),
    "dataset_explicit_be": ("MR_small_expb.dcm", False, False, False),
}


def _write_raw(name: str, path) -> None:
    source, keep_meta, implicit, little = LAYOUTS[name]
    ds = pydicom.dcmread(get_testdata_file(source))
    ds.preamble = None
    if not keep_meta:
        ds.file_meta = FileMetaDataset()
    pydicom.dcmwrite(
        path, ds, enforce_file_format=False, implicit_vr=implicit, little_endian=little
    )
    head = path.read_bytes()[:132]
    assert head[128:132] != b"DICM" and head[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x08")


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_raw_dataset_reads_like_the_part10_file(tmp_path, name):
    path = tmp_path / "1.2.840.113619.2.1.1"  # PACS exports often carry no extension
    _write_raw(name, path)
    expected = read_scan(get_testdata_file(LAYOUTS[name][0]))
    for got in (read_scan(path), read_scan(tmp_path)):
        np.testing.assert_array_equal(got.array, expected.array)
        np.testing.assert_allclose(got.affine, expected.affine)
        assert got.meta["modality"] == expected.meta["modality"]


def test_discovery_finds_raw_datasets_and_still_skips_non_dicom(tmp_path):
    _write_raw("file_meta_first", tmp_path / "a_with_meta")
    _write_raw("dataset_explicit_be", tmp_path / "b_dataset_only.dcm")
    (tmp_path / "notes").write_text("exported by PACS on Monday\n")
    (tmp_path / "blob").write_bytes(bytes(range(256)) * 4)
    found = discover(tmp_path)
    files = sorted(f for s in found.scans for f in s.files)
    assert files == [str(tmp_path / "a_with_meta"), str(tmp_path / "b_dataset_only.dcm")]
    assert not found.failures
    skipped = dict(found.skipped)
    for name in ("notes", "blob"):
        assert skipped[str(tmp_path / name)] == "not a scan file (extension not recognised)"


def test_non_dicom_named_dcm_is_still_refused(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("exported by PACS on Monday\n")
    with pytest.raises(ScanReadError, match="not a DICOM file"):
        read_scan(path)
