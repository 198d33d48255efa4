"""PALETTE COLOR in Explicit VR Big Endian gives the same RGB as in little endian
(pydicom's apply_color_lut reads non-segmented LUT data as little endian)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medres.io import read_scan


@pytest.mark.parametrize(
    ("little", "big"),
    [("OBXXXX1A.dcm", "OBXXXX1A_expb.dcm"), ("OBXXXX1A_2frame.dcm", "OBXXXX1A_expb_2frame.dcm")],
)
def test_big_endian_palette_gives_the_little_endian_rgb(little, big):
    le, be = get_testdata_file(little), get_testdata_file(big)
    header = pydicom.dcmread(be, stop_before_pixels=True)
    assert header.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRBigEndian
    assert header.PhotometricInterpretation == "PALETTE COLOR"
    assert header.RedPaletteColorLookupTableDescriptor[2] == 16  # 16-bit LUT entries
    expected, got = read_scan(le), read_scan(be)
    assert got.channels == 3 and got.meta["photometric"] == "RGB"
    assert expected.array.max() > 255  # the 16-bit LUT values, not byte-swapped ones
    np.testing.assert_array_equal(got.array, expected.array)
    assert got.array.dtype == expected.array.dtype


def test_big_endian_palette_matches_the_lut_read_by_hand():
    ds = pydicom.dcmread(get_testdata_file("OBXXXX1A_expb.dcm"))
    red = np.frombuffer(ds.RedPaletteColorLookupTableData, dtype=">u2")
    first = int(ds.RedPaletteColorLookupTableDescriptor[1])
    index = np.clip(ds.pixel_array.astype(np.int64) - first, 0, len(red) - 1)
    got = read_scan(get_testdata_file("OBXXXX1A_expb.dcm"))
    np.testing.assert_array_equal(got.array[0], red[index].T)
