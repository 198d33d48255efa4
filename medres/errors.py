"""The whole medres exception hierarchy (DESIGN §4).

Every message says what was expected, what was found, and what to do. Batch
boundaries (ingest, predict, evaluate) catch :class:`ScanError` only, record it and
go on; anything else is a bug and propagates.
"""

from __future__ import annotations


class MedresError(Exception):
    """Base class of every error medres raises on purpose."""


class ConfigError(MedresError):
    """A configuration file or option is invalid."""


class ManifestError(MedresError):
    """A cohort manifest (or a labels file joined to it) is malformed."""


class ScanError(MedresError):
    """One scan could not be used. ``scan_id`` names it (usually its path)."""

    def __init__(self, scan_id: str, message: str) -> None:
        super().__init__(f"{scan_id}: {message}")
        self.scan_id = scan_id
        self.message = message

    def __reduce__(self):  # keep picklable across worker processes
        return (type(self), (self.scan_id, self.message))


class ScanReadError(ScanError):
    """The file is not a readable scan: corrupt, truncated, unknown codec, not an image."""


class ScanGeometryError(ScanError):
    """The scan's slices do not form a regular volume (tilt, gaps, mixed orientations)."""


class ScanContentError(ScanError):
    """The scan was read but its pixels are unusable (NaN, constant, wrong shape)."""


class LeakageError(MedresError):
    """The same patient (or identical pixels) appears in more than one split."""

    def __init__(self, message: str, patient_ids: list[str] | None = None) -> None:
        super().__init__(message)
        self.patient_ids = list(patient_ids or [])


ALLOW_LEAKAGE = (
    "--allow-leakage trains anyway, as a deliberate experiment that bundle.json and the "
    "model card record"
)
"""What ``--allow-leakage`` does, in one place: the option's help and the end of every
training audit's refusal (:mod:`medres.split`) say it in these words."""


class BundleError(MedresError):
    """A model bundle is missing, incomplete, or fails verification."""


class PacsError(MedresError):
    """A PACS or DICOM peer could not be reached or refused: the message names the peer
    (its URL without credentials), what failed, and what to do."""


class ReviewError(MedresError):
    """A review-store request is invalid: unknown case, a label outside the run's
    classes, a folder that is not a ``medres predict`` output, a bad user name."""


def quote_some(items, total: int | None = None, show: int = 5) -> str:
    """The first ``show`` items for an error message, and how many more (of ``total``,
    default ``len(items)``): ``"a, b, c, d, e ... and 7 more"``."""
    total = len(items) if total is None else total
    more = total - min(len(items), show)
    return ", ".join(map(str, items[:show])) + (f" ... and {more} more" if more > 0 else "")


def first_line(error: BaseException, limit: int = 200) -> str:
    """A library exception's message for a failure row: its first line, at most ``limit``
    characters (some libraries put whole tracebacks or hex dumps in their messages)."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else "")[:limit]
