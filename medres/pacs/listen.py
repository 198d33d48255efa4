"""``medres pacs listen``: a DICOM storage SCP that predicts each study once it is complete.

Layout of ``OUTDIR``::

    incoming/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
                          every instance received, written as sent (the association's file
                          meta and the encoded dataset, not re-encoded), durably (temporary
                          file, fsync, rename, fsync of the folder) BEFORE the C-STORE is
                          answered with success; a failure to store answers 0xA700
    results/<StudyInstanceUID>/
                          ``medres predict``'s output for the study (predictions.parquet,
                          failures.csv, run.json ...: :func:`medres.predict.predict_folder`)
                          and whatever ``push`` writes there
    results/<StudyInstanceUID>/.done
                          written (atomically) once the study was predicted and pushed

A study is complete once no instance of it arrived for ``stable_seconds``. It is then
predicted into ``results/<study>`` and, when given, ``push(results/<study>)`` is called;
only after both it is marked done. An instance arriving later for a study being or already
predicted re-opens it (its ``.done`` is removed before the instance is written): the study is
predicted again after ``stable_seconds``, predict's resume skipping the scans already
predicted. A listener killed at any point (kill -9 included) and started again finds the
received but unfinished studies (an ``incoming`` folder without the ``.done`` of its results)
and predicts each ``stable_seconds`` after its newest file was written.

Privacy: log lines never hold patient names or ids, nor UIDs: a study is named by
:func:`study_tag` (the first 10 hex digits of the SHA-256 of its StudyInstanceUID; the
same tag for the same study, so an operator can match a line with a folder of ``incoming``
by computing the tags of its names), and UIDs in error messages are replaced by ``<uid>``.
Files are written readable by their owner only (0600). pynetdicom's own logger
(``pynetdicom``) names SOP Instance UIDs at DEBUG level: keep it at INFO or above.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from medres.bundle import load_bundle
from medres.errors import ConfigError, PacsError
from medres.files import atomic_write, write_json
from medres.pacs.query import RESULT_SERIES_PREFIX, check_uid, is_uid
from medres.pacs.url import check_ae_title
from medres.predict import PredictOptions, predict_folder

log = logging.getLogger(__name__)

INCOMING = "incoming"
RESULTS = "results"
DONE = ".done"
TIMEOUT_S = 30.0  # seconds: association, DIMSE message and network idle limits of the SCP
MAX_ATTEMPTS = 3  # predict + push tries of one study per listener run before it is left
POLL_S = 1.0  # seconds: the longest the main loop sleeps before looking at the studies again

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # could not store the instance (disk full, permissions ...)
CANNOT_UNDERSTAND = 0xC000  # the dataset lacks usable Study/Series/SOP Instance UIDs

_ANY_UID = re.compile(r"\b[0-9]+(?:\.[0-9]+){3,}\b")
# study, series, SOP instance UIDs, series description
_HEADER_TAGS = [(0x0020, 0x000D), (0x0020, 0x000E), (0x0008, 0x0018), (0x0008, 0x103E)]

Push = Callable[[Path], object]
"""Called with ``OUTDIR/results/<study>`` once the study is predicted; raises on failure."""


def study_tag(study_uid: str) -> str:
    """A short stable name of a study for log lines: 10 hex digits of the SHA-256 of its UID."""
    return hashlib.sha256(study_uid.encode()).hexdigest()[:10]


def scrub(text: str) -> str:
    """``text`` with every UID-like number (4 or more dot-separated parts) made ``<uid>``."""
    return _ANY_UID.sub("<uid>", text)


@dataclass
class _Study:
    """A study received but not yet done: ``last`` (wall-clock seconds, ``time.time``) is
    when its newest instance arrived, ``attempts`` the failed predict/push tries."""

    last: float
    attempts: int = 0


@dataclass
class _State:
    """The studies waiting to be predicted, shared by the SCP's threads and the main loop."""

    outdir: Path
    pending: dict[str, _Study] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self, study: str) -> None:
        """Note a new instance of ``study`` (call before its file is written)."""
        with self.lock:
            entry = self.pending.get(study)
            if entry is None:
                self.pending[study] = _Study(time.time())
                log.info("study %s: receiving", study_tag(study))
            else:
                entry.last = time.time()
        # after the note: a .done written by the main loop before it is removed here
        (self.outdir / RESULTS / study / DONE).unlink(missing_ok=True)

    def next_due(self, stable_seconds: float) -> tuple[str | None, float]:
        """The study complete now (none: None) and the seconds until the next one may be."""
        now, wait = time.time(), POLL_S
        with self.lock:
            for study, entry in sorted(self.pending.items(), key=lambda kv: kv[1].last):
                left = entry.last + stable_seconds - now
                if left <= 0:
                    return study, 0.0
                wait = min(wait, left)
        return None, max(wait, 0.01)


def listen(
    bundle: str | Path,
    outdir: str | Path,
    *,
    host: str = "0.0.0.0",
    port: int = 11112,
    ae_title: str = "MEDRES",
    stable_seconds: float = 30,
    push: Push | None = None,
    predict_options: PredictOptions | None = None,
    stop: threading.Event | None = None,
    max_studies: int | None = None,
    allowed_aets: list[str] | None = None,
) -> None:
    """Receive studies on ``host:port`` as ``ae_title`` and predict each with ``bundle``
    once it is complete (see the module docstring for the files and the rules).

    Args:
        stable_seconds: seconds without a new instance after which a study is complete.
        push: called with ``OUTDIR/results/<study>`` after the study is predicted.
        predict_options: as ``medres predict``'s (default: :class:`PredictOptions`()).
        stop: set it to end the listener (checked at least every second; a prediction
            under way is finished first).
        allowed_aets: accept associations only from these calling AE titles (None: any;
            with ``push``, anyone who can connect can otherwise put objects into the PACS).
        max_studies: end after this many studies were processed (predicted and pushed,
            or failed), counted from this start; None: until ``stop``.

    Raises:
        BundleError: the bundle cannot be loaded (checked before listening).
        ConfigError: a negative ``stable_seconds`` or ``max_studies``.
        PacsError: the AE title is invalid or the port cannot be listened on.
    """
    if stable_seconds < 0 or (max_studies is not None and max_studies < 0):
        raise ConfigError("stable_seconds and max_studies must be >= 0")
    outdir = Path(outdir)
    stop = stop or threading.Event()
    options = predict_options or PredictOptions()
    load_bundle(bundle)  # a broken bundle is refused before any instance is accepted
    state = _State(outdir)
    _recover(state)
    server = _start_server(state, host, port, ae_title, allowed_aets)
    log.info(
        "listening as %s on %s:%d; %d study(ies) received earlier wait for prediction",
        ae_title,
        host,
        port,
        len(state.pending),
    )
    processed = 0
    try:
        while not stop.is_set() and (max_studies is None or processed < max_studies):
            study, wait = state.next_due(stable_seconds)
            if study is None:
                stop.wait(wait)
                continue
            _process(state, study, bundle, options, push)
            processed += 1
    finally:
        server.shutdown()
        log.info("stopped after %d study(ies)", processed)


def _start_server(state: _State, host: str, port: int, ae_title: str, allowed: list[str] | None):
    """The storage SCP, serving in its own threads (``server.shutdown()`` ends it)."""
    ae = AE(ae_title=check_ae_title(ae_title, "--ae-title"))
    ae.require_called_aet = True
    if allowed:
        ae.require_calling_aet = [check_ae_title(a, "--allow-aet") for a in allowed]
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    handlers = [(evt.EVT_C_STORE, _on_store(state))]
    try:
        return ae.start_server((host, port), block=False, evt_handlers=handlers)
    except OSError as e:
        raise PacsError(
            f"cannot listen on {host}:{port} ({e.strerror or e}): choose another --port, "
            "or stop what listens there"
        ) from e


def _on_store(state: _State):
    """The C-STORE handler: success only once the instance is durably on disk."""

    def handle(event) -> int:
        try:
            data = event.encoded_dataset(include_meta=True)
            study, series, sop, description = _header(data)
        except Exception as e:  # answered as a failure; the sender keeps its copy
            log.warning("refused an instance: %s", scrub(str(e)))
            return CANNOT_UNDERSTAND
        if description.lower().startswith(RESULT_SERIES_PREFIX):  # medres's own result:
            log.info("study %s: a medres result received, not stored", study_tag(study))
            return SUCCESS  # predicting it would answer a result with a result
        path = state.outdir / INCOMING / study / series / f"{sop}.dcm"
        try:
            state.received(study)
            write_durably(path, data)
        except OSError as e:
            log.error(
                "study %s: cannot store an instance (%s); answered 0xA700 (out of resources)",
                study_tag(study),
                scrub(e.strerror or str(e)),
            )
            return OUT_OF_RESOURCES
        return SUCCESS

    return handle


def _header(data: bytes) -> tuple[str, str, str, str]:
    """Study, series and SOP Instance UIDs of an encoded file, each safe as a path part,
    and its series description."""
    ds = dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    return (
        check_uid(str(ds.get("StudyInstanceUID", "")), "the StudyInstanceUID"),
        check_uid(str(ds.get("SeriesInstanceUID", "")), "the SeriesInstanceUID"),
        check_uid(str(ds.get("SOPInstanceUID", "")), "the SOPInstanceUID"),
        str(ds.get("SeriesDescription", "") or ""),
    )


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that it survives a crash or power loss once this
    returns: temporary file, fsync, rename (mode 0600), then fsync of the folder and of
    any folder created for it."""
    created = [p for p in (path.parent.parent, path.parent) if not p.exists()]

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write, private=True)
    for folder in {path.parent, *(p.parent for p in created)}:
        _fsync_folder(folder)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _recover(state: _State) -> None:
    """Studies received by an earlier run and not done: pending, stable from the newest
    file's mtime. Temporary files a killed run left behind are removed."""
    incoming = state.outdir / INCOMING
    if not incoming.is_dir():
        return
    for folder in sorted(incoming.iterdir()):
        if not folder.is_dir() or not is_uid(folder.name):
            continue
        newest = 0.0
        for path in folder.rglob("*"):
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)  # a write cut short: never answered success
            elif path.is_file():
                newest = max(newest, path.stat().st_mtime)
        if newest and not (state.outdir / RESULTS / folder.name / DONE).exists():
            state.pending[folder.name] = _Study(newest)
            log.info("study %s: received earlier, not yet predicted", study_tag(folder.name))


def _process(
    state: _State, study: str, bundle: str | Path, options: PredictOptions, push: Push | None
) -> None:
    """Predict (and push) one complete study; mark it done unless an instance arrived
    meanwhile. A failure is logged and the study tried again after ``stable_seconds``, at
    most :data:`MAX_ATTEMPTS` times in this run (a restart tries again)."""
    tag = study_tag(study)
    with state.lock:
        seen = state.pending[study].last
    folder = state.outdir / INCOMING / study
    out = state.outdir / RESULTS / study
    if not any(folder.rglob("*.dcm")):  # its only instances could not be stored
        with state.lock:
            if state.pending[study].last == seen:
                del state.pending[study]
        log.warning("study %s: no instance of it was stored; nothing to predict", tag)
        return
    started = time.perf_counter()
    try:
        run = predict_folder(bundle, folder, out, options)
        counts = run.summary["counts"]
        log.info(
            "study %s: %d scan(s) predicted now, %d already, %d failed (%.1f s)",
            tag,
            counts["predicted_now"],
            counts["already_predicted"],
            counts["failed"],
            time.perf_counter() - started,
        )
        if push is not None:
            push(out)
            log.info("study %s: results pushed", tag)
    except Exception as e:  # one study's failure never ends the listener
        with state.lock:
            entry = state.pending[study]
            entry.attempts += 1
            entry.last = max(entry.last, time.time())
            if entry.attempts >= MAX_ATTEMPTS:
                del state.pending[study]
        log.error(
            "study %s: %s: %s (attempt %d of %d%s)",
            tag,
            type(e).__name__,
            scrub(str(e)),
            entry.attempts,
            MAX_ATTEMPTS,
            "; left for the next start" if entry.attempts >= MAX_ATTEMPTS else "",
        )
        return
    with state.lock:
        if state.pending[study].last == seen:  # nothing arrived while predicting
            del state.pending[study]
            write_json(out / DONE, {"scans": counts["scans"], "failed": counts["failed"]})
            return
    log.info("study %s: new instances arrived while predicting; predicted again later", tag)
