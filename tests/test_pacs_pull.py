"""medres pacs echo / pull / push against a real Orthanc (DIMSE and DICOMweb) in a private
network namespace (tests/pacs_servers.py), and the URL and credentials rules."""

from __future__ import annotations

import json

import pydicom
import pytest
from pydicom.uid import generate_uid

from medres.errors import PacsError
from medres.pacs.dicomweb import search_all
from medres.pacs.peer import Peer
from medres.pacs.pull import pull
from medres.pacs.push import push
from medres.pacs.query import StudyQuery, is_uid
from medres.pacs.url import Credentials, load_credentials, parse_url
from tests.conftest import PYDICOM_FILES, SHARED_DATA, needs
from tests.pacs_servers import free_port

MR_SERIES = SHARED_DATA / "dicom" / "dicom2nifti" / "ge" / "anatomical" / "001"
SR_FILE = PYDICOM_FILES / "reportsi.dcm"

# ---- URLs and credentials (no server) ----


def test_urls_name_the_protocol_and_refuse_credentials():
    web = parse_url("http://pacs.example:8042/dicom-web/")
    assert (web.kind, web.host, web.port, web.text) == (
        "dicomweb",
        "pacs.example",
        8042,
        "http://pacs.example:8042/dicom-web",
    )
    dimse = parse_url("dicom://ORTHANC@10.0.0.5:4242")
    assert (dimse.kind, dimse.ae_title, dimse.port) == ("dimse", "ORTHANC", 4242)
    assert parse_url("dicom://PACS@pacs").port == 104
    with pytest.raises(PacsError, match=r"credentials do not go into the URL.*MEDRES_PACS_USER"):
        parse_url("https://alice:secret@pacs/dicom-web")
    with pytest.raises(PacsError, match="names no AE title"):
        parse_url("dicom://pacs:104")
    with pytest.raises(PacsError, match="not a valid AE title"):
        parse_url("dicom://" + "A" * 17 + "@pacs:104")
    with pytest.raises(PacsError, match="not a PACS URL"):
        parse_url("ftp://pacs/")
    for leaky in ("http://u:s3cret@pacs:99999/x", "htp://u:s3cret@pacs/x", "dicom://A:s3cret@p"):
        with pytest.raises(PacsError) as refused:
            parse_url(leaky)
        assert "s3cret" not in str(refused.value)
    assert is_uid("1.2.840.10008") and not is_uid("1.2.3\n") and not is_uid("../1.2")


def test_credentials_from_env_or_private_file_and_never_shown(tmp_path):
    creds = load_credentials(env={"MEDRES_PACS_USER": "u", "MEDRES_PACS_PASSWORD": "s3cret"})
    assert (creds.user, creds.password) == ("u", "s3cret") and "s3cret" not in repr(creds)
    file = tmp_path / "pacs.json"
    file.write_text(json.dumps({"token": "tok-123"}))
    file.chmod(0o644)
    with pytest.raises(PacsError, match=f"can be read by other users.*chmod 600 {file}"):
        load_credentials(file, env={})
    file.chmod(0o600)
    assert load_credentials(file, env={}).token == "tok-123"
    assert "tok-123" not in repr(load_credentials(file, env={}))
    file.write_text('{"ca_file": "/nowhere/ca.pem"}')
    with pytest.raises(PacsError, match=r"CA file /nowhere/ca.pem .* does not exist"):
        load_credentials(file, env={})
    file.write_text('{"user": "u", "pasword": "typo"}')
    with pytest.raises(PacsError, match="pasword"):
        load_credentials(file, env={})


def test_every_search_page_is_read_whether_or_not_offset_is_honoured():
    matches = [{"0020000D": {"Value": [f"1.2.{i}"]}} for i in range(7)]

    def paged(offset=0, **kwargs):  # a server answering 3 matches per request
        return matches[offset : offset + 3]

    def ignores_offset(offset=0, **kwargs):  # Orthanc's DICOMweb plugin 1.7
        return matches[:3]

    assert search_all(paged, "0020000D") == matches
    assert search_all(ignores_offset, "0020000D") == matches[:3]


# ---- against Orthanc ----


def _peers(orthanc, **dimse):
    web = Peer(parse_url(orthanc.http_url), credentials=Credentials(*orthanc.auth))
    net = Peer(parse_url(f"dicom://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"), **dimse)
    return web, net


def _study_with_an_sr(tmp_path, orthanc):
    """Upload the real GE MR series and an SR in the same study; return (study, sops)."""
    files = sorted(MR_SERIES.iterdir())
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    for f in files:
        orthanc.upload(f)
    sr = pydicom.dcmread(SR_FILE)
    sr.StudyInstanceUID = study  # fixed UIDs: a second upload into the module's Orthanc is a no-op
    sr.SeriesInstanceUID = generate_uid(entropy_srcs=[study, "sr series"])
    sr.SOPInstanceUID = sr.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[study])
    sr.save_as(tmp_path / "sr.dcm")
    orthanc.upload(tmp_path / "sr.dcm")
    sops = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    return study, sops


def _pulled(folder, study):
    return {p.stem: p for p in (folder / study).rglob("*.dcm")}


@needs(MR_SERIES)
@pytest.mark.parametrize("protocol", ["dicomweb", "dimse-get", "dimse-move"])
def test_pull_fetches_images_only_and_a_rerun_fetches_nothing(orthanc, tmp_path, protocol):
    study, sops = _study_with_an_sr(tmp_path, orthanc)
    web, net = _peers(orthanc, retrieve_with="move", move_port=orthanc.medres_port)
    peer = {"dicomweb": web, "dimse-get": _peers(orthanc)[1], "dimse-move": net}[protocol]
    folder = tmp_path / "pulled"
    first = pull(peer, StudyQuery(study_uids=(study,)), folder)
    assert (first.studies, first.complete, first.fetched, first.failed) == (1, 1, len(sops), {})
    assert dict(first.skipped) == {"Basic Text SR": 1}  # the SR is counted, not fetched
    pulled = _pulled(folder, study)
    assert set(pulled) == sops
    for path in pulled.values():  # FOLDER/<study>/<series>/<sop>.dcm, the pixels intact
        ds = pydicom.dcmread(path)
        assert path.parent.name == ds.SeriesInstanceUID and path.stem == ds.SOPInstanceUID
        assert oct(path.stat().st_mode & 0o777) == "0o600"
    original = {str(d.SOPInstanceUID): d for d in map(pydicom.dcmread, MR_SERIES.iterdir())}
    some = next(iter(pulled))
    assert (pydicom.dcmread(pulled[some]).pixel_array == original[some].pixel_array).all()
    assert not any((folder / ".incoming").rglob("*.dcm"))
    again = pull(peer, StudyQuery(modality="MR"), folder)
    assert (again.fetched, again.already_there, again.complete) == (0, len(sops), 1)


@needs(MR_SERIES)
def test_a_pull_killed_half_way_is_invisible_then_completed(orthanc, tmp_path):
    study, sops = _study_with_an_sr(tmp_path, orthanc)
    _, net = _peers(orthanc)
    folder = tmp_path / "pulled"
    half = {}

    class Dies(Peer):
        def retrieve(self, instances, store):
            super().retrieve(instances[:2], store)
            half["n"] = len(instances)
            raise PacsError("the network went away")

    dies = Dies(net.url)
    summary = pull(dies, StudyQuery(study_uids=(study,)), folder)
    assert summary.failed and summary.complete == 0
    assert not (folder / study).exists()  # nothing a predict would read
    assert len(list((folder / ".incoming").rglob("*.dcm"))) == 2
    done = pull(net, StudyQuery(study_uids=(study,)), folder)
    assert (done.complete, done.fetched) == (1, len(sops) - 2)
    assert set(_pulled(folder, study)) == sops


def test_faults_name_the_peer_and_the_fix(orthanc, tmp_path):
    down = Peer(parse_url(f"dicom://ORTHANC@127.0.0.1:{free_port()}"))
    with pytest.raises(PacsError, match=r"connection refused.*check that the PACS is running"):
        down.echo()
    web_down = Peer(parse_url(f"http://127.0.0.1:{free_port()}/dicom-web"))
    with pytest.raises(PacsError, match="connection refused"):
        web_down.echo()
    wrong_aet = Peer(parse_url(f"dicom://NOT-ORTHANC@127.0.0.1:{orthanc.dicom_port}"))
    # Orthanc rejects the association; on a busy machine pynetdicom may see the socket
    # close before the rejection and report an abort: both must name the AE title to check
    with pytest.raises(PacsError, match=r"(rejected|aborted) the association.*.NOT-ORTHANC. is"):
        wrong_aet.echo()
    bad_auth = Peer(parse_url(orthanc.http_url), credentials=Credentials("medres", "wrong"))
    with pytest.raises(
        PacsError, match=r"authentication failed \(HTTP 401\).*MEDRES_PACS_USER"
    ) as e:
        bad_auth.echo()
    assert "wrong" not in str(e.value)
    ok_web, ok_net = _peers(orthanc)
    ok_web.echo()
    ok_net.echo()
    with pytest.raises(PacsError, match="no study chosen"):
        pull(ok_net, StudyQuery(), tmp_path)


@needs(MR_SERIES)
def test_move_to_an_unknown_destination_says_to_register_medres(orthanc, tmp_path):
    study, _ = _study_with_an_sr(tmp_path, orthanc)
    stranger = Peer(
        parse_url(f"dicom://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"),
        calling_aet="STRANGER",
        retrieve_with="move",
        move_port=free_port(),
    )
    summary = pull(stranger, StudyQuery(study_uids=(study,)), tmp_path / "pulled")
    message = summary.failed.get(study, "")
    assert "register medres's AE title 'STRANGER'" in message, message


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_push_sends_results_records_them_and_a_rerun_adds_nothing(orthanc, tmp_path, protocol):
    web, net = _peers(orthanc)
    peer = web if protocol == "dicomweb" else net
    outdir = tmp_path / "out"
    (outdir / "dicom" / "scan").mkdir(parents=True)
    ds = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    study = ds.StudyInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(outdir / "dicom" / "scan" / "sr.dcm")
    first = push(outdir, peer)
    assert len(first.sent) == 1 and orthanc.sop_uids(study) == {ds.SOPInstanceUID}
    record = json.loads((outdir / "pacs.json").read_text())
    assert record["sent"][0]["sop_instance_uid"] == ds.SOPInstanceUID
    assert orthanc.password not in (outdir / "pacs.json").read_text()
    again = push(outdir, peer)
    assert (again.sent, again.unchanged) == ([], 1)
    forced = push(outdir, peer, again=True)
    assert len(forced.sent) == 1 and len(orthanc.study_instances(study)) == 1


def test_push_without_results_says_how_to_write_them(tmp_path):
    with pytest.raises(PacsError, match=r"holds no DICOM results.*--bundle"):
        push(tmp_path, Peer(parse_url("dicom://X@127.0.0.1:1")))
