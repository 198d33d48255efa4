"""DICOMweb with dicomweb-client: QIDO-RS (search), WADO-RS (retrieve), STOW-RS (store).

Every failure is a :class:`PacsError` naming the service URL, what failed (connection
refused, authentication, an HTTP status) and what to do; credentials are sent in headers
of a ``requests`` session and never appear in a message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
from dicomweb_client import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from retrying import RetryError

from medres.errors import PacsError
from medres.pacs.query import Instance, StudyQuery
from medres.pacs.url import ENV_PASSWORD, ENV_TOKEN, ENV_USER, Credentials, PacsUrl

TIMEOUT = 30.0  # seconds for each HTTP request
MAX_PAGES = 1000  # of QIDO-RS results: a bound on a server that keeps answering
RETRIES = 3  # attempts of each request (dicomweb-client's back-off: 0.5 s, then 1 s)

_STUDY, _SERIES, _SOP, _SOP_CLASS, _DESCRIPTION = (
    "0020000D",
    "0020000E",
    "00080018",
    "00080016",
    "0008103E",
)


def client(url: PacsUrl, credentials: Credentials) -> DICOMwebClient:
    """A dicomweb-client for ``url`` authenticating with ``credentials``."""
    session = requests.Session()
    if credentials.token:
        session.headers["Authorization"] = f"Bearer {credentials.token}"
    elif credentials.user:
        session.auth = (credentials.user, credentials.password or "")
    if credentials.ca_file:
        session.verify = credentials.ca_file
    web = DICOMwebClient(url.text, session=session, timeout=TIMEOUT)
    # dicomweb-client retries a refused connection and HTTP 408/429/503/504 five times over
    # ~30 s by default; three attempts over ~1.5 s say "PACS down" without making one wait
    web.set_http_retry_params(max_attempts=RETRIES, wait_exponential_multiplier=500)
    return web


def echo(url: PacsUrl, credentials: Credentials) -> None:
    """One QIDO-RS request (``/studies?limit=1``); return quietly when it answers."""
    with _calls(url, "QIDO-RS search"):
        client(url, credentials).search_for_studies(limit=1)


def find_studies(url: PacsUrl, credentials: Credentials, query: StudyQuery) -> list[str]:
    """QIDO-RS at study level: the Study Instance UIDs matching ``query``."""
    filters = {
        "AccessionNumber": query.accession,
        "ModalitiesInStudy": query.modality,
        "StudyDate": query.study_date,
    }
    filters = {k: v for k, v in filters.items() if v}
    web = client(url, credentials)
    found = []
    with _calls(url, "QIDO-RS search for studies"):
        for uid in query.study_uids or (None,):
            one = {**filters, "StudyInstanceUID": uid} if uid else filters
            found += search_all(web.search_for_studies, _STUDY, search_filters=one)
    return sorted({_value(d, _STUDY) for d in found} - {""})


def find_instances(url: PacsUrl, credentials: Credentials, study_uid: str) -> list[Instance]:
    """QIDO-RS at series then instance level: every object of one study."""
    web = client(url, credentials)
    instances = []
    with _calls(url, "QIDO-RS search for series and instances"):
        series = search_all(web.search_for_series, _SERIES, study_uid, fields=[_DESCRIPTION])
        for s in sorted(series, key=lambda d: _value(d, _SERIES)):
            series_uid = _value(s, _SERIES)
            found = search_all(web.search_for_instances, _SOP, study_uid, series_uid)
            instances += [
                Instance(
                    study_uid,
                    series_uid,
                    _value(d, _SOP),
                    _value(d, _SOP_CLASS),
                    _value(s, _DESCRIPTION),
                )
                for d in found
            ]
    return instances


def get_instances(
    url: PacsUrl,
    credentials: Credentials,
    instances: list[Instance],
    store: Callable[[Dataset], None],
) -> None:
    """WADO-RS each instance (as stored, ``application/dicom``) and hand it to ``store``."""
    web = client(url, credentials)
    with _calls(url, "WADO-RS retrieve"):
        for i in instances:
            store(web.retrieve_instance(i.study_uid, i.series_uid, i.sop_uid))


def store_files(url: PacsUrl, credentials: Credentials, paths: list[Path]) -> None:
    """STOW-RS the files, one request per study; raise if the PACS refused any."""
    web = client(url, credentials)
    by_study: dict[str, list[Dataset]] = {}
    for path in paths:
        ds = dcmread(path)
        by_study.setdefault(str(ds.StudyInstanceUID), []).append(ds)
    with _calls(url, "STOW-RS store"):
        for study, datasets in by_study.items():
            answer = web.store_instances(datasets, study_instance_uid=study)
            failed = answer.get("FailedSOPSequence", []) if answer is not None else []
            if failed:
                reasons = sorted({f"0x{int(f.get('FailureReason', 0)):04X}" for f in failed})
                raise PacsError(
                    f"{url} refused {len(failed)} of {len(datasets)} object(s) "
                    f"(failure reasons {', '.join(reasons)}); see the PACS's log"
                )


@contextmanager
def _calls(url: PacsUrl, what: str) -> Iterator[None]:
    """Translate ``requests`` failures into messages naming ``url`` and the fix."""
    try:
        yield
    except requests.exceptions.SSLError as e:
        raise PacsError(
            f"{url}: the TLS certificate could not be verified ({type(e).__name__}); give "
            "the hospital's CA file in MEDRES_PACS_CA_FILE or the credentials file's ca_file"
        ) from None
    except requests.exceptions.ConnectionError as e:
        refused = "refused" in str(e).lower()
        raise PacsError(
            f"{url}: "
            + ("connection refused: nothing listens there" if refused else "cannot connect")
            + "; check that the PACS is running and that the host, port and path are right"
        ) from None
    except requests.exceptions.Timeout:
        raise PacsError(f"{url}: no answer to {what} within {TIMEOUT:.0f} s") from None
    except RetryError:
        raise PacsError(
            f"{url}: {what}: the service stayed unavailable (HTTP 408/429/503/504) over "
            f"{RETRIES} attempts; try again later"
        ) from None
    except requests.exceptions.HTTPError as e:
        code = e.response.status_code if e.response is not None else 0
        if code in (401, 403):
            raise PacsError(
                f"{url}: authentication failed (HTTP {code}) for {what}: check {ENV_USER} and "
                f"{ENV_PASSWORD}, {ENV_TOKEN}, or the credentials file"
            ) from None
        if code == 404:
            raise PacsError(
                f"{url}: HTTP 404 for {what}: no DICOMweb service at this path (Orthanc: "
                "http://host:8042/dicom-web) or the object is gone"
            ) from None
        raise PacsError(f"{url}: {what} failed with HTTP {code}") from None
    except requests.exceptions.RequestException as e:
        raise PacsError(f"{url}: {what} failed ({type(e).__name__}); try again") from None


def search_all(search, key: str, *args, **kwargs) -> list[dict]:
    """All matches of a QIDO-RS search, page by page (``offset``), until a page comes back
    empty or repeats the previous one: a server may answer fewer matches than exist per
    request (a page limit) or ignore ``offset`` (Orthanc's DICOMweb plugin 1.7), where
    dicomweb-client's ``get_remaining`` would ask for the same page forever."""
    found: list[dict] = []
    seen: set[str] = set()
    for _ in range(MAX_PAGES):
        page = search(*args, offset=len(found), **kwargs)
        new = [d for d in page if _value(d, key) not in seen]
        if not new:
            return found
        found += new
        seen.update(_value(d, key) for d in new)
    raise PacsError(f"more than {MAX_PAGES} pages of search results; narrow the query")


def _value(attributes: dict, tag: str) -> str:
    """The first value of ``tag`` in a DICOM JSON object, ``""`` when absent."""
    values = attributes.get(tag, {}).get("Value") or [""]
    return str(values[0])
