"""What to pull (a study query) and what a PACS holds (its instances), for both protocols."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from pydicom.uid import UID

from medres.errors import PacsError

RESULT_SERIES_PREFIX = "medres"
"""Series whose description starts with this are medres's own results (SR, parametric map,
secondary capture: :mod:`medres.pacs.results`); a pull never fetches them back."""

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


@dataclass(frozen=True)
class StudyQuery:
    """Which studies to pull: every given filter must hold (none: refused, see :func:`check`).

    Attributes:
        study_uids: Study Instance UIDs.
        accession: an Accession Number.
        modality: a modality the study holds (``ModalitiesInStudy``), e.g. ``CR``.
        since: studies from this date on (``StudyDate``).
    """

    study_uids: tuple[str, ...] = ()
    accession: str | None = None
    modality: str | None = None
    since: dt.date | None = None

    def check(self) -> StudyQuery:
        """Refuse an empty query (it would pull the whole archive) and malformed UIDs."""
        if not (self.study_uids or self.accession or self.modality or self.since):
            raise PacsError(
                "no study chosen: give --study UID, --accession N, --modality CR or --since "
                "DATE (a pull without a filter would copy the whole archive)"
            )
        for uid in self.study_uids:
            check_uid(uid, "--study")
        return self

    @property
    def study_date(self) -> str | None:
        """The DICOM date range ``YYYYMMDD-`` for ``since``."""
        return f"{self.since:%Y%m%d}-" if self.since else None


@dataclass(frozen=True)
class Instance:
    """One object a PACS holds, as a query answers it."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    series_description: str = ""

    def skip_reason(self) -> str | None:
        """Why a pull leaves this object out (``None``: an image to fetch)."""
        if self.series_description.lower().startswith(RESULT_SERIES_PREFIX):
            return "medres result"
        if not self.sop_class_uid:  # an optional answer of C-FIND: discovery decides later
            return None
        name = UID(self.sop_class_uid).name
        if "Image Storage" in name:
            return None
        if name == self.sop_class_uid:
            return "unknown SOP class"
        return name.removesuffix(" Storage")


def is_uid(text: str) -> bool:
    """Digits and dots, 1 to 64 characters: a UID that can be a file or folder name (never
    ``.``, ``..``, a slash or a hidden name)."""
    return 0 < len(text) <= 64 and bool(_UID.fullmatch(text))


def check_uid(uid: str, what: str) -> str:
    """``uid`` if :func:`is_uid`; else a PacsError (which does not quote it: a received
    value can be anything, and log lines must not carry identifiers)."""
    if not is_uid(uid):
        raise PacsError(f"{what} is not a DICOM UID (digits and dots, at most 64 characters)")
    return uid
