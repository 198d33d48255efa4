"""Joining a labels CSV onto a new manifest: key column, missing labels, label types.

:func:`join_labels` matches the CSV's rows to scans by the first of :data:`LABEL_KEYS`
it has, reads the cells of :data:`MISSING_LABELS` as no label, and types the labels
(integers, else floats, else text; a mix of numbers and words is refused).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from medres.errors import ManifestError

if TYPE_CHECKING:
    from medres.cohort.ingest import IngestReport

LABEL_KEYS: tuple[str, ...] = ("path", "scan_id", "series_uid", "study_uid", "patient_id")


# label cells that mean "no label": pandas' default NA spellings, matched exactly after
# stripping spaces (so "none" or "unknown" are not among them: next to numeric labels
# they are refused, see _typed_labels); empty and whitespace-only cells are missing too
MISSING_LABELS: frozenset[str] = frozenset(
    {"NaN", "nan", "-NaN", "-nan", "NA", "N/A", "n/a", "#N/A", "#N/A N/A", "#NA", "<NA>"}
    | {"NULL", "null", "None", "1.#IND", "-1.#IND", "1.#QNAN", "-1.#QNAN"}
)


def join_labels(table: pd.DataFrame, labels: str | Path, root: Path, report: IngestReport):
    """Join a labels CSV onto the manifest (see :data:`LABEL_KEYS` for the key column).

    A ``label`` cell that is empty, only spaces, or one of :data:`MISSING_LABELS`
    (``NaN``, ``nan``, ``NA``, ``N/A``, ``n/a``, ``#N/A``, ``<NA>``, ``NULL``, ``null``,
    ``None`` ...) leaves its scan unlabelled; labels are stripped of surrounding spaces.
    Only the label column reads these spellings as missing: in the other columns only an
    empty cell is missing (a patient id ``NA`` stays an id). Labels that mix numbers and
    words (``0``, ``1``, ``unknown``) are refused with ManifestError, as a model would
    learn the word as one more class; labels all numbers or all words are accepted.
    """
    labels = Path(labels)
    try:
        given = pd.read_csv(labels, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ManifestError(f"cannot read labels file {labels}: {e}") from e
    key = next((k for k in LABEL_KEYS if k in given.columns), None)
    if key is None or "label" not in given.columns:
        raise ManifestError(
            f"{labels} needs a 'label' column and one key column among {list(LABEL_KEYS)}; "
            f"found columns {list(given.columns)}"
        )
    given = given.replace("", None)
    given["label"] = _missing_labels_blank(given["label"])
    repeated = given[key][given[key].duplicated()].unique().tolist()
    if repeated and key != "patient_id":
        raise ManifestError(f"{labels}: {key} values repeat ({repeated[:5]}); each must be unique")
    if key == "patient_id":
        given = _one_label_per_patient(given, labels)
    report.label_key = key
    ids = table[key].astype("string")
    if key == "path":  # accept paths relative to the ingested folder or absolute
        ids = table["path"].map(lambda p: _relative_to(p, root))
        given["path"] = given["path"].map(lambda p: _relative_to(p, root))
    lookup = given.set_index(key)
    matched = ids.isin(lookup.index)
    for column in [c for c in lookup.columns if c != key]:
        values = ids.map(lookup[column])
        if column in table.columns and column != "label":
            table[column] = table[column].where(table[column].notna(), values)
        else:
            table[column] = values
    table["label"] = _typed_labels(table["label"], source=labels)
    report.unmatched_labels = sorted(set(lookup.index) - set(ids[matched]))
    ok = table["status"] == "ok"
    report.unlabelled_scans = table.loc[ok & table["label"].isna(), "scan_id"].tolist()
    return table


def _missing_labels_blank(labels: pd.Series) -> pd.Series:
    """Label cells stripped of spaces; :data:`MISSING_LABELS` and blank cells -> None."""
    text = labels.astype(object).map(lambda v: v.strip() if isinstance(v, str) else v)
    missing = text.isna() | text.isin(MISSING_LABELS | {""})
    return text.where(~missing, None)


def _typed_labels(labels: pd.Series, source: str | Path = "the labels file") -> pd.Series:
    """Integers if every label is an integer, else floats if numeric, else strings.

    ManifestError when some labels are numbers and others words (``0``, ``1``,
    ``unknown``): the message names both kinds and ``source``.
    """
    present = labels.dropna()
    numeric = pd.to_numeric(present.astype(object), errors="coerce").notna()
    if numeric.any() and not numeric.all():
        words = present[~numeric].value_counts()
        numbers = sorted(present[numeric].astype(str).unique(), key=lambda v: float(v))
        named = ", ".join(f"{w!r} ({n} scans)" for w, n in words.head(10).items())
        more = f" and {len(words) - 10} more" if len(words) > 10 else ""
        raise ManifestError(
            f"{source}: the labels mix numbers ({', '.join(map(repr, numbers[:10]))}) and "
            f"words ({named}{more}); a model would learn each word as one more class. Fix "
            "the labels file so every label is a number (or every label a word), or blank "
            "the cells of scans that have no label (empty, NA and NaN cells leave a scan "
            "unlabelled)"
        )
    for dtype in ("Int64", "Float64"):
        try:
            return pd.to_numeric(labels, errors="raise").astype(dtype)
        except (ValueError, TypeError):
            continue
    return labels.astype("string")


def _one_label_per_patient(given: pd.DataFrame, labels: Path) -> pd.DataFrame:
    conflicting = given.groupby("patient_id")["label"].nunique()
    conflicting = conflicting[conflicting > 1].index.tolist()
    if conflicting:
        raise ManifestError(
            f"{labels}: patients with more than one label ({conflicting[:5]}); key the labels "
            "by scan_id or path instead"
        )
    return given.drop_duplicates("patient_id")


def _relative_to(path: str, root: Path) -> str:
    p = Path(path)
    if p.is_absolute():
        try:
            return p.relative_to(root).as_posix()
        except ValueError:
            return p.as_posix()
    return p.as_posix()
