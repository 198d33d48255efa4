"""Smoke test of the PACS test infrastructure (tests/pacs_servers.py): the private network
namespace holds only loopback, and Orthanc answers C-ECHO, DICOMweb QIDO and C-STORE."""

from __future__ import annotations

import socket

import pydicom
import requests

from tests.conftest import PYDICOM_FILES
from tests.pacs_servers import echoscu, private_network, storescu

CT_SMALL = PYDICOM_FILES / "CT_small.dcm"


def test_private_network_has_only_loopback(pacs_network):
    assert [name for _, name in socket.if_nameindex()] == ["lo"]
    with socket.socket() as s:  # loopback is up: a listener is reachable
        s.bind(("127.0.0.1", 0))
        s.listen()
        socket.create_connection(s.getsockname(), timeout=5).close()


def test_private_network_nests_and_returns():
    before = socket.if_nameindex()
    with private_network():
        assert [name for _, name in socket.if_nameindex()] == ["lo"]
    assert socket.if_nameindex() == before


def test_orthanc_echo_qido_auth_and_store(orthanc):
    assert [name for _, name in socket.if_nameindex()] == ["lo"]
    echo = echoscu(orthanc.dicom_port, orthanc.aet)
    assert echo.returncode == 0, echo.stderr
    assert echoscu(orthanc.dicom_port, "NOT-ORTHANC").returncode != 0  # called AET checked

    qido = requests.get(orthanc.http_url + "/studies", auth=orthanc.auth, timeout=30)
    assert qido.status_code == 200 and qido.json() == []
    wrong = requests.get(orthanc.http_url + "/studies", auth=(orthanc.user, "wrong"), timeout=30)
    assert wrong.status_code == 401

    ds = pydicom.dcmread(CT_SMALL, stop_before_pixels=True)
    stored = storescu(orthanc.dicom_port, orthanc.aet, [CT_SMALL])
    assert stored.returncode == 0, stored.stderr
    assert orthanc.sop_uids(ds.StudyInstanceUID) == {ds.SOPInstanceUID}
    studies = requests.get(orthanc.http_url + "/studies", auth=orthanc.auth, timeout=30).json()
    assert [s["0020000D"]["Value"][0] for s in studies] == [ds.StudyInstanceUID]
    assert orthanc.upload(CT_SMALL)["Status"] == "AlreadyStored"
