"""Query a PACS and retrieve studies into ``FOLDER/<study>/<series>/<sop>.dcm``.

Each instance is written atomically into ``FOLDER/.incoming/<study>/`` (a hidden folder,
which discovery and ``medres predict`` never read) and the study's files move into
``FOLDER/<study>/`` only once every instance the query listed is there and a second query
finds no new one: a study that is still arriving, or a pull killed half-way, is never
half-predicted. A rerun fetches only what is missing. Objects that are not images (SR,
presentation states, medres's own results) are not fetched; they are counted by kind.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from medres.errors import PacsError
from medres.files import atomic_write
from medres.pacs.peer import Peer
from medres.pacs.query import Instance, StudyQuery, check_uid

INCOMING = ".incoming"


@dataclass
class PullSummary:
    """What a pull did. ``failed`` maps a study UID to the reason it is not complete."""

    studies: int = 0
    complete: int = 0
    fetched: int = 0
    already_there: int = 0
    skipped: Counter = field(default_factory=Counter)
    still_arriving: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def pull(
    peer: Peer,
    query: StudyQuery,
    folder: str | Path,
    on_study: Callable[[int, int, PullSummary], None] | None = None,
) -> PullSummary:
    """Pull every study matching ``query`` into ``folder``; return what happened.

    ``on_study(done, total, summary)`` is called after each study (progress). A study that
    fails (the PACS refuses a retrieve, an instance cannot be written) is recorded in
    ``summary.failed`` and the pull goes on with the next one.

    Raises:
        PacsError: the query itself failed (PACS down, association rejected, ...).
    """
    folder = Path(folder)
    studies = peer.find_studies(query.check())
    summary = PullSummary(studies=len(studies))
    for done, study in enumerate(studies, 1):
        try:
            _pull_study(peer, check_uid(study, "the PACS answered a study UID"), folder, summary)
        except PacsError as e:
            summary.failed[study] = str(e)
        except OSError as e:
            summary.failed[study] = f"cannot write into {folder}: {e.strerror or e}"
        if on_study:
            on_study(done, len(studies), summary)
    return summary


def _pull_study(peer: Peer, study: str, folder: Path, summary: PullSummary) -> None:
    listed = _images(peer.find_instances(study), summary)
    missing = [i for i in listed if not _where(folder, i).exists()]
    summary.already_there += len(listed) - len(missing)
    staged = [i for i in missing if _where(folder / INCOMING, i).exists()]
    wanted = [i for i in missing if i not in staged]
    if wanted:
        peer.retrieve(wanted, _stager(folder, study, {i.sop_uid for i in wanted}, summary))
    absent = [i for i in missing if not _where(folder / INCOMING, i).exists()]
    if absent:
        raise PacsError(
            f"{peer.url} did not send {len(absent)} of the {len(missing)} instance(s) asked "
            "for; run the pull again (only what is missing is fetched)"
        )
    now = {i.sop_uid for i in _images(peer.find_instances(study), Counter())}
    if now - {i.sop_uid for i in listed}:
        summary.still_arriving.append(study)
        return
    if not (folder / study).exists():  # a new study appears whole, in one rename
        os.replace(folder / INCOMING / study, folder / study)
    else:  # images added to a study pulled before: each file is whole when it appears
        for instance in missing:
            target = _where(folder, instance)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(_where(folder / INCOMING, instance), target)
    summary.complete += 1


def _images(instances: list[Instance], skipped: PullSummary | Counter) -> list[Instance]:
    """The instances worth fetching; the others are counted by kind."""
    counter = skipped.skipped if isinstance(skipped, PullSummary) else skipped
    images = []
    for instance in instances:
        reason = instance.skip_reason()
        if reason:
            counter[reason] += 1
        else:
            check_uid(instance.series_uid, "the PACS answered a series UID")
            check_uid(instance.sop_uid, "the PACS answered a SOP instance UID")
            images.append(instance)
    return images


def _where(root: Path, instance: Instance) -> Path:
    return root / instance.study_uid / instance.series_uid / f"{instance.sop_uid}.dcm"


def _stager(folder: Path, study: str, wanted: set[str], summary: PullSummary):
    """Write each received dataset of ``study`` into ``folder/.incoming`` (atomically)."""

    def store(ds: Dataset) -> None:
        sop = str(ds.get("SOPInstanceUID", ""))
        if sop not in wanted or str(ds.get("StudyInstanceUID", "")) != study:
            raise PacsError(f"received an instance that was not asked for ({sop or 'no UID'})")
        series = check_uid(str(ds.get("SeriesInstanceUID", "")), "a received series UID")
        path = folder / INCOMING / study / series / f"{sop}.dcm"
        atomic_write(path, lambda tmp: ds.save_as(tmp, enforce_file_format=True), private=True)
        summary.fetched += 1

    return store
