"""DIMSE with pynetdicom: C-ECHO, C-FIND, C-GET, C-MOVE and C-STORE as a client.

Every failure is a :class:`PacsError` naming the peer (``dicom://AET@host:port``), what
failed (connection refused, association rejected, a status the PACS answered) and what to
do. Timeouts are in seconds; nothing here retries on its own.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from medres.errors import PacsError
from medres.pacs.query import Instance, StudyQuery
from medres.pacs.url import PacsUrl, check_ae_title

TIMEOUT = 30.0  # seconds: connection, association and each DIMSE answer

Store = Callable[[Dataset], None]
"""Called with each received dataset (its ``file_meta`` set); raises to refuse it."""

_STATUS = {
    0xA700: "out of resources",
    0xA701: "out of resources: unable to calculate the number of matches",
    0xA702: "out of resources: unable to perform the sub-operations",
    0xA801: "move destination unknown",
    0xA900: "identifier does not match the SOP class",
    0xC000: "unable to process",
    0x0122: "SOP class not supported",
    0x0124: "not authorised",
}


def echo(url: PacsUrl, calling_aet: str) -> None:
    """C-ECHO ``url``; return quietly when it answers success."""
    with _association(url, calling_aet, [Verification]) as assoc:
        status = assoc.send_c_echo()
        _check_status(url, "C-ECHO", status)


def find_studies(url: PacsUrl, calling_aet: str, query: StudyQuery) -> list[str]:
    """C-FIND at study level: the Study Instance UIDs matching ``query``."""
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = "\\".join(query.study_uids)
    ident.AccessionNumber = query.accession or ""
    ident.ModalitiesInStudy = query.modality or ""
    ident.StudyDate = query.study_date or ""
    found = _find(url, calling_aet, ident)
    return sorted({str(d.StudyInstanceUID) for d in found if d.get("StudyInstanceUID")})


def find_instances(url: PacsUrl, calling_aet: str, study_uid: str) -> list[Instance]:
    """C-FIND at series then image level: every object of one study."""
    ident = Dataset()
    ident.QueryRetrieveLevel = "SERIES"
    ident.StudyInstanceUID = study_uid
    ident.SeriesInstanceUID = ""
    ident.SeriesDescription = ""
    series = {
        str(d.SeriesInstanceUID): str(d.get("SeriesDescription", "") or "")
        for d in _find(url, calling_aet, ident)
    }
    instances = []
    for series_uid, description in sorted(series.items()):
        ident = Dataset()
        ident.QueryRetrieveLevel = "IMAGE"
        ident.StudyInstanceUID = study_uid
        ident.SeriesInstanceUID = series_uid
        ident.SOPInstanceUID = ""
        ident.SOPClassUID = ""
        for d in _find(url, calling_aet, ident):
            instances.append(
                Instance(
                    study_uid,
                    series_uid,
                    str(d.SOPInstanceUID),
                    str(d.get("SOPClassUID", "")),
                    description,
                )
            )
    return instances


def get_instances(url: PacsUrl, calling_aet: str, instances: list[Instance], store: Store) -> None:
    """C-GET each instance over one association; ``store`` receives the datasets."""
    ae = _ae(calling_aet)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for context in StoragePresentationContexts:  # 120 + Get: within DICOM's 128 contexts
        ae.add_requested_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        roles.append(build_role(context.abstract_syntax, scp_role=True))
    handlers = [(evt.EVT_C_STORE, _on_store(store))]
    with _association(url, calling_aet, [], ae=ae, ext_neg=roles, handlers=handlers) as assoc:
        for instance in instances:
            with _refused_context(url, "C-GET", "use --retrieve move"):
                answers = assoc.send_c_get(
                    _image(instance), StudyRootQueryRetrieveInformationModelGet
                )
                _retrieve(url, "C-GET", answers)


def move_instances(
    url: PacsUrl, calling_aet: str, instances: list[Instance], store: Store, port: int
) -> None:
    """C-MOVE each instance to medres's own storage SCP, started here on ``port``
    (all interfaces: the PACS connects back to it) for the time of the retrieve."""
    scp = _ae(calling_aet)
    for context in StoragePresentationContexts:
        scp.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    handlers = [(evt.EVT_C_STORE, _on_store(store))]
    try:
        server = scp.start_server(("0.0.0.0", port), block=False, evt_handlers=handlers)
    except OSError as e:
        raise PacsError(
            f"cannot listen on port {port} for the C-MOVE answers ({e.strerror}): choose "
            "another with --port, the one the PACS has registered for medres's AE title"
        ) from e
    try:
        with _association(url, calling_aet, [StudyRootQueryRetrieveInformationModelMove]) as assoc:
            for instance in instances:
                answers = assoc.send_c_move(
                    _image(instance), calling_aet, StudyRootQueryRetrieveInformationModelMove
                )
                _retrieve(url, "C-MOVE", answers, move_destination=calling_aet)
    finally:
        server.shutdown()


def store_files(url: PacsUrl, calling_aet: str, paths: list[Path]) -> None:
    """C-STORE each file over one association; stop at the first refusal."""
    datasets = [dcmread(p) for p in paths]
    ae = _ae(calling_aet)
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    with _association(url, calling_aet, [], ae=ae) as assoc:
        for path, ds in zip(paths, datasets, strict=True):
            with _refused_context(url, f"storing {ds.SOPClassUID.name}", "send by DICOMweb"):
                status = assoc.send_c_store(ds)
            _check_status(url, f"C-STORE of {path.name}", status)


@contextmanager
def _refused_context(url: PacsUrl, what: str, instead: str) -> Iterator[None]:
    """pynetdicom raises ValueError for a service the peer accepted no context for."""
    try:
        yield
    except ValueError as e:
        if "no presentation context" not in str(e).lower():
            raise
        raise PacsError(f"{url} does not accept {what} from medres: {instead}") from None


def _ae(calling_aet: str) -> AE:
    ae = AE(ae_title=check_ae_title(calling_aet, "medres's AE title (--calling-aet)"))
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    ae.connection_timeout = TIMEOUT
    return ae


@contextmanager
def _association(url, calling_aet, contexts, *, ae=None, ext_neg=None, handlers=None) -> Iterator:
    """An established association with ``url``, released afterwards."""
    _reachable(url)
    ae = ae or _ae(calling_aet)
    for context in contexts:
        ae.add_requested_context(context)
    assoc = ae.associate(
        url.host, url.port, ae_title=url.ae_title, ext_neg=ext_neg, evt_handlers=handlers
    )
    if assoc.is_rejected:
        raise PacsError(
            f"{url} rejected the association from AE title {calling_aet!r}: check that "
            f"{url.ae_title!r} is the PACS's own AE title and that the PACS knows medres's AE "
            f"title {calling_aet!r} (register it, with this machine's address, in the PACS, "
            "or pass the registered one with --calling-aet)"
        )
    if not assoc.is_established:
        raise PacsError(
            f"{url} aborted the association from AE title {calling_aet!r} (no answer within "
            f"{TIMEOUT:.0f} s, the service is refused, or a rejection whose connection "
            f"closed before it was read): check that {url.ae_title!r} is the PACS's own AE "
            f"title and that it knows {calling_aet!r}, then the PACS's log"
        )
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def _reachable(url: PacsUrl) -> None:
    """Connect once, so that a closed port or an unknown host gets its own message."""
    try:
        socket.create_connection((url.host, url.port), timeout=TIMEOUT).close()
    except ConnectionRefusedError:
        raise PacsError(
            f"{url}: connection refused: nothing listens on {url.host}:{url.port}; check "
            "that the PACS is running and that the port is its DICOM port"
        ) from None
    except socket.gaierror as e:
        raise PacsError(f"{url}: unknown host {url.host!r} ({e.strerror})") from None
    except TimeoutError:
        raise PacsError(
            f"{url}: no answer within {TIMEOUT:.0f} s: check the host, the port, and any "
            "firewall between this machine and the PACS"
        ) from None
    except OSError as e:
        raise PacsError(f"{url}: cannot connect ({e.strerror or e})") from None


def _find(url: PacsUrl, calling_aet: str, ident: Dataset) -> list[Dataset]:
    model = StudyRootQueryRetrieveInformationModelFind
    with _association(url, calling_aet, [model]) as assoc:
        found = []
        for status, answer in assoc.send_c_find(ident, model):
            code = _check_status(url, f"C-FIND ({ident.QueryRetrieveLevel} level)", status)
            if code in (0xFF00, 0xFF01) and answer is not None:
                found.append(answer)
        return found


def _image(instance: Instance) -> Dataset:
    ident = Dataset()
    ident.QueryRetrieveLevel = "IMAGE"
    ident.StudyInstanceUID = instance.study_uid
    ident.SeriesInstanceUID = instance.series_uid
    ident.SOPInstanceUID = instance.sop_uid
    return ident


def _retrieve(url: PacsUrl, what: str, answers, move_destination: str | None = None) -> None:
    """Read a C-GET / C-MOVE's answers to the end; raise on a failure status."""
    for status, answer in answers:
        code = _check_status(url, what, status, move_destination)
        if code == 0xB000:  # warning: some sub-operations failed
            failed = int(getattr(answer, "NumberOfFailedSuboperations", 0) or 0) if answer else 0
            raise PacsError(f"{url}: {what} finished with {failed} failed sub-operation(s)")


def _check_status(url: PacsUrl, what: str, status, move_destination: str | None = None) -> int:
    """The status code of a DIMSE answer, or a PacsError saying what it means."""
    if not status or "Status" not in status:
        raise PacsError(
            f"{url}: no answer to {what}: the PACS aborted the association or did not answer "
            f"within {TIMEOUT:.0f} s. A PACS that refuses {what} from an AE title it does not "
            "know does this: register medres's AE title (--calling-aet) in the PACS "
            "(Orthanc: DicomModalities), and check the PACS's log"
        )
    code = int(status.Status)
    if code in (0x0000, 0x0001, 0xFF00, 0xFF01) or code & 0xF000 in (0xB000, 0xF000):
        return code  # success, pending, cancel, or a warning (0x0001, 0xBxxx: done anyway)
    meaning = _STATUS.get(code) or _STATUS.get(code & 0xFF00, "failure")
    comment = status.get("ErrorComment")
    refused = f"{url} refused {what}: status 0x{code:04X} ({meaning})" + (
        f": {comment}" if comment else ""
    )
    if move_destination and (code == 0xA801 or code & 0xF000 == 0xC000):
        # 0xA801 is the standard answer; Orthanc answers 0xC000 for an unknown destination
        raise PacsError(
            f"{refused}. A PACS answers this when it does not know the C-MOVE destination "
            f"{move_destination!r}: register medres's AE title {move_destination!r} with this "
            "machine's address and the --port given here in the PACS (Orthanc: "
            "DicomModalities), or use --retrieve get"
        )
    raise PacsError(refused)


def _on_store(store: Store):
    """A C-STORE handler that answers success only once ``store`` has kept the dataset."""
    lock = threading.Lock()

    def handle(event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        try:
            with lock:
                store(ds)
        except Exception:  # answered as a failure status; the caller counts what is missing
            return 0xA700
        return 0x0000

    return handle
