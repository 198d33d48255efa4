"""Reviewed labels over a cohort's: a clinician's decision from ``medres review export``
replaces the cohort's label of the same scan, and says who decided it and when.

The reviews CSV needs ``path`` and ``label`` (``reviewer`` and ``decided_at`` are kept
when present). Rows are matched to the cohort by the scan's absolute path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from medres.errors import ConfigError
from medres.files import sha256_file
from medres.tasks import label_key

PROVENANCE = ("label_source", "label_before_review", "label_reviewer", "label_reviewed_at")


@dataclass
class ReviewsApplied:
    """What :func:`apply_reviews` did: the file and its sha256, how many labels it
    changed / confirmed, and the reviewed paths found in no cohort (not used)."""

    path: str
    sha256: str
    changed: int = 0
    confirmed: int = 0
    unmatched: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "changed": self.changed,
            "confirmed": self.confirmed,
            "unmatched": len(self.unmatched),
        }


def apply_reviews(
    table: pd.DataFrame, reviews_csv: str | Path, classes: list
) -> tuple[pd.DataFrame, ReviewsApplied]:
    """``table`` (manifest rows) with reviewed labels applied.

    Adds the :data:`PROVENANCE` columns: ``label_source`` (``cohort`` or ``review``), the
    label before review, the reviewer and the decision time (ISO 8601).

    ``classes``: the model's classes; a reviewed label must be one of them (``1`` and
    ``1.0`` are the same label) and is stored as that class.

    Raises:
        ConfigError: the CSV is unreadable, lacks ``path`` / ``label``, names one scan
            twice, or gives a label outside ``classes``.
    """
    reviews = _read(reviews_csv)
    applied = ReviewsApplied(str(Path(reviews_csv).resolve()), sha256_file(reviews_csv))
    table = table.copy()
    table["label_source"] = "cohort"
    table["label_before_review"] = table["label"]
    table["label_reviewer"] = None
    table["label_reviewed_at"] = None
    where = table.groupby(table["path"].map(_key)).groups  # a path may be in two cohorts
    known = {label_key(c): c for c in classes}
    for review in reviews.itertuples(index=False):
        rows = where.get(_key(review.path))
        if rows is None:
            applied.unmatched.append(str(review.path))
            continue
        label = label_key(review.label)
        if label not in known:
            raise ConfigError(
                f"{reviews_csv}: reviewed label {review.label!r} for {review.path} is not a "
                f"class of the model ({list(known)}); correct the review"
            )
        before = table.at[rows[0], "label"]
        table.loc[rows, "label"] = known[label]
        table.loc[rows, "label_source"] = "review"
        table.loc[rows, "label_reviewer"] = getattr(review, "reviewer", None)
        table.loc[rows, "label_reviewed_at"] = getattr(review, "decided_at", None)
        if before is not None and not pd.isna(before) and label_key(before) == label:
            applied.confirmed += 1
        else:
            applied.changed += 1
    return table, applied


def _read(path: str | Path) -> pd.DataFrame:
    try:
        reviews = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ConfigError(
            f"cannot read reviews {path}: {e}; give the CSV of "
            "`medres review export --store DB -o REVIEWS.csv`"
        ) from e
    missing = [c for c in ("path", "label") if c not in reviews.columns]
    if missing:
        raise ConfigError(
            f"{path} lacks columns {missing}; give the CSV of "
            "`medres review export --store DB -o REVIEWS.csv` (path,label,...)"
        )
    reviews = reviews[reviews["label"] != ""]
    twice = reviews["path"][reviews["path"].map(_key).duplicated()].tolist()
    if twice:
        raise ConfigError(
            f"{path} reviews these scans more than once: {twice[:5]}; keep one row each"
        )
    return reviews


def _key(path) -> str:
    return str(Path(str(path)).expanduser().resolve())
