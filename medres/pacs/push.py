"""Send a predict OUTDIR's DICOM results (``OUTDIR/dicom/``) to a PACS and record it.

``OUTDIR/pacs.json`` lists every object sent: to which URL (credentials never), when, its
SOP Instance UID and the sha256 of the file. A rerun sends only objects that changed or
were never sent to that URL; since result UIDs are deterministic
(:mod:`medres.pacs.results`) an object sent again never adds an instance: the PACS keeps
one copy (Orthanc keeps the first unless its OverwriteInstances option is set).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread

from medres import __version__
from medres.errors import PacsError
from medres.files import sha256_file, write_json
from medres.pacs.peer import Peer

RECORD = "pacs.json"
FORMAT = 1
RESULTS = "dicom"  # OUTDIR/dicom/<scan>/*.dcm, written by medres.pacs.results


@dataclass
class PushSummary:
    """What a push did: files sent now, files already sent unchanged, the record's path."""

    sent: list[Path] = field(default_factory=list)
    unchanged: int = 0
    record: Path | None = None


def result_files(outdir: str | Path) -> list[Path]:
    """Every DICOM result object under ``OUTDIR/dicom/``, in a stable order."""
    return sorted(p for p in (Path(outdir) / RESULTS).rglob("*.dcm") if not p.name.startswith("."))


def push(outdir: str | Path, peer: Peer, *, again: bool = False) -> PushSummary:
    """Send ``OUTDIR/dicom/**.dcm`` to ``peer`` (all, with ``again``); record it in pacs.json.

    Raises:
        PacsError: nothing to send (results not written), or the PACS refused; objects
            sent before the refusal are recorded, so a rerun sends only the rest.
    """
    outdir = Path(outdir)
    files = result_files(outdir)
    if not files:
        raise PacsError(
            f"{outdir / RESULTS} holds no DICOM results: write them with "
            f"'medres pacs push {outdir} URL --bundle BUNDLE' (the bundle that predicted "
            "OUTDIR), which writes the SR, parametric maps and secondary captures first"
        )
    record = _read_record(outdir)
    sent_before = {(entry["url"], entry["file"]): entry["sha256"] for entry in record["sent"]}
    digests = {path: sha256_file(path) for path in files}
    todo = [
        p
        for p in files
        if again or sent_before.get((peer.url.text, _relative(outdir, p))) != digests[p]
    ]
    summary = PushSummary(unchanged=len(files) - len(todo))
    uids = {path: _uids(path) for path in todo}  # (study, SOP instance) of each file
    studies: dict[str, list[Path]] = {}
    for path in todo:
        studies.setdefault(uids[path][0], []).append(path)
    try:
        for study_files in studies.values():
            peer.store(study_files)
            summary.sent += study_files
    finally:
        if summary.sent:
            _record(outdir, record, peer, summary.sent, digests, uids)
        summary.record = outdir / RECORD if (outdir / RECORD).exists() else None
    return summary


def _uids(path: Path) -> tuple[str, str]:
    """A result file's StudyInstanceUID and SOPInstanceUID (its header only)."""
    tags = ["StudyInstanceUID", "SOPInstanceUID"]
    ds = dcmread(path, stop_before_pixels=True, specific_tags=tags)
    return str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)


def _relative(outdir: Path, path: Path) -> str:
    return path.relative_to(outdir).as_posix()


def _read_record(outdir: Path) -> dict:
    path = outdir / RECORD
    if not path.exists():
        return {"format": FORMAT, "sent": []}
    try:
        record = json.loads(path.read_text())
    except ValueError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("sent"), list):
        raise PacsError(
            f"{path} is not a medres push record; move it away (the next push sends everything)"
        )
    return record


def _record(outdir: Path, record: dict, peer: Peer, sent: list[Path], digests, uids) -> None:
    """Replace the entries of ``sent`` (for this URL) in pacs.json and write it."""
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    replaced = {(peer.url.text, _relative(outdir, p)) for p in sent}
    kept = [e for e in record["sent"] if (e["url"], e["file"]) not in replaced]
    for path in sent:
        kept.append(
            {
                "url": peer.url.text,
                "file": _relative(outdir, path),
                "sop_instance_uid": uids[path][1],
                "sha256": digests[path],
                "sent_at": now,
            }
        )
    record.update(format=FORMAT, medres_version=__version__, sent=kept)
    write_json(outdir / RECORD, record, private=True)
