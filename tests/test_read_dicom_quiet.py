"""Reading DICOM never prints header values: pydicom's validation warnings quote them (a
UID, a number, sometimes a name or a date), and header values convert when first read,
wherever that is, so medres switches pydicom's read validation off rather than catching
warnings at every read."""

from __future__ import annotations

import warnings

import pydicom

from medres.io import discover, read_scan
from medres.io.dicom_header import read_header
from tests.conftest import PYDICOM_FILES


def test_invalid_header_values_are_read_without_a_warning_quoting_them(tmp_path):
    ds = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    ds.StudyID = "SECRET-STUDY"
    ds.InstanceNumber = "1"
    ds.FrameOfReferenceUID = "1.2.3"
    ds.save_as(tmp_path / "a.dcm")
    data = (tmp_path / "a.dcm").read_bytes()  # invalid values, as some scanners write them:
    data = data.replace(b"\x20\x00\x13\x00IS\x02\x001 ", b"\x20\x00\x13\x00IS\x02\x00S1")
    data = data.replace(b"1.2.3\x00", b"1.2.S\x00")  # ... an IS and a UI that quote them
    (tmp_path / "a.dcm").write_bytes(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = discover(tmp_path)
        volume = read_scan(found.scans[0])
        header = read_header(tmp_path / "a.dcm")
        values = [str(header[e.tag].value) for e in header]  # every value converted, now
    said = " ".join(str(w.message) for w in caught)
    assert volume.array.size and "S1" in values and "1.2.S" in values
    assert "S1" not in said and "1.2.S" not in said, said
