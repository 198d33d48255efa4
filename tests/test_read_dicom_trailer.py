"""A DICOM file cut short only after its pixel data (the last delimiters of a trailing
undefined-length sequence missing) is read as dcm2niix reads it; a file cut inside the
pixel data is still refused."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medres.errors import ScanReadError
from medres.io import discover, read_scan

# Bytes at the end of the written file: item delimitation (8) + sequence delimitation (8)
# items, then the 10-byte MACIDNumber element inside the last item.
CUTS = {
    "sequence_delimiter": 8,
    "both_delimiters": 16,
    "into_last_element": 20,
    "whole_last_element": 26,
}


def _with_trailing_sequence(path) -> bytes:
    """CT_small with an undefined-length sequence after its pixel data."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds[0xFFFCFFFC]  # DataSetTrailingPadding, so that the sequence comes last
    item = Dataset()
    item.MACIDNumber = 1
    item.is_undefined_length_sequence_item = True
    ds.DigitalSignaturesSequence = Sequence([item])
    ds["DigitalSignaturesSequence"].is_undefined_length = True
    ds.save_as(path)
    data = path.read_bytes()
    assert data.endswith(bytes.fromhex("feff0de000000000feffdde000000000"))
    return data


@pytest.mark.parametrize("cut", sorted(CUTS))
def test_file_cut_in_its_trailing_sequence_is_read(tmp_path, cut):
    data = _with_trailing_sequence(tmp_path / "whole.dcm")
    expected = read_scan(tmp_path / "whole.dcm")
    folder = tmp_path / "cut"
    folder.mkdir()
    (folder / "cut.dcm").write_bytes(data[: -CUTS[cut]])
    for got in (read_scan(folder / "cut.dcm"), read_scan(folder)):
        np.testing.assert_array_equal(got.array, expected.array)
        np.testing.assert_allclose(got.affine, expected.affine)
    assert len(discover(folder).scans) == 1


def test_file_cut_inside_its_pixel_data_is_still_refused(tmp_path):
    data = _with_trailing_sequence(tmp_path / "whole.dcm")
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[:-100])  # 74 bytes of pixel data missing as well
    with pytest.raises(ScanReadError, match="pixel data could not be decoded"):
        read_scan(path)
