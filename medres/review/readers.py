"""Several readers per case: who reads what, when readers disagree, first impressions.

Plain functions over names and tables (no database): :class:`~medres.review.store.ReviewStore`
reads the rows and calls them.

- **Assignment** (:func:`assignment_plan`): each case gets ``per_case`` distinct readers,
  round-robin over the readers in the order given, so the load is balanced (every
  reader within one case of the others) and the same call always gives the same plan.
- **The label a reader gave** (:func:`reader_label`): the predicted class on agree, the
  corrected label on disagree, None (no label) on uncertain.
- **Disagreement** (:func:`disputed`): two or more assigned readers have read a case and
  their labels differ, or one of them is uncertain. Such a case waits in the
  adjudication queue until an adjudicator (not one of its readers) decides it.
- **Mind changes** (:func:`mind_changes`): in a blinded run, how often a reader's final
  label differs from the first impression recorded before the model's output was shown.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from medres.errors import ReviewError

MIND_CHANGE_COLUMNS = ("reviewer", "cases", "changed", "rate", "to_model")


def check_readers(readers: Sequence[str] | str, per_case: int) -> list[str]:
    """The reader names (a list, or one comma-separated text), stripped and checked:
    distinct, non-empty, at least ``per_case`` of them."""
    if isinstance(readers, str):
        readers = readers.split(",")
    names = [str(r).strip() for r in readers]
    if any(not n for n in names):
        raise ReviewError(f"a reader name is empty in {list(readers)}; give names like dr_a,dr_b")
    if len(set(names)) != len(names):
        raise ReviewError(f"a reader is named twice in {names}; give each reader once")
    if isinstance(per_case, bool) or not isinstance(per_case, int) or per_case < 1:
        raise ReviewError(
            f"readers per case must be a whole number of at least 1; got {per_case!r}"
        )
    if len(names) < per_case:
        raise ReviewError(
            f"{per_case} readers per case needs at least {per_case} readers; got {names}"
        )
    return names


def assignment_plan(
    case_ids: Sequence[int], readers: Sequence[str], per_case: int
) -> list[tuple[int, str]]:
    """(case_id, reader) pairs: case number k (in the order given) gets the readers at
    positions k·per_case, k·per_case + 1, ... (modulo the number of readers): distinct
    readers per case, and each reader gets ⌊n·per_case / R⌋ or one more of the n cases.

    Example: 3 cases, readers a, b, c, 2 per case -> (a, b), (c, a), (b, c)."""
    count = len(readers)
    return [
        (int(case_id), readers[(k * per_case + j) % count])
        for k, case_id in enumerate(case_ids)
        for j in range(per_case)
    ]


def reader_label(decision: str, corrected_label: str | None, predicted_class: str) -> str | None:
    """The class a reader's decision says the case is: the predicted class on agree, the
    corrected label on disagree, None on uncertain."""
    if decision == "agree":
        return str(predicted_class)
    if decision == "disagree":
        return None if corrected_label is None else str(corrected_label)
    return None


def with_labels(readings: pd.DataFrame) -> pd.DataFrame:
    """``readings`` (decision, corrected_label, predicted_class) plus ``label``
    (:func:`reader_label`)."""
    labels = [
        reader_label(d, c, p)
        for d, c, p in zip(
            readings["decision"],
            readings["corrected_label"],
            readings["predicted_class"],
            strict=True,
        )
    ]
    return readings.assign(label=pd.Series(labels, index=readings.index, dtype=object))


def disputed(readings: pd.DataFrame) -> list[int]:
    """The case ids on which the assigned readers disagree.

    Args:
        readings: each reader's current reading (``ReviewStore`` rows: case_id,
            reviewer, decision, corrected_label, predicted_class, assigned).

    A case is disputed when two or more of its assigned readers have read it and their
    labels differ or one of them said uncertain."""
    assigned = with_labels(readings[readings["assigned"].astype(bool)])
    out = []
    for case_id, group in assigned.groupby("case_id", sort=True):
        if len(group) < 2:
            continue
        labels = group["label"].tolist()
        if any(pd.isna(label) for label in labels) or len(set(labels)) > 1:
            out.append(int(case_id))
    return out


def mind_changes(impressions: pd.DataFrame, readings: pd.DataFrame) -> pd.DataFrame:
    """Per reader, how often the final label differs from the first impression.

    Args:
        impressions: first impressions (reviewer, case_id, decision, label).
        readings: current readings (reviewer, case_id, decision, corrected_label,
            predicted_class).

    Returns one row per reader with both on some case (:data:`MIND_CHANGE_COLUMNS`):
    ``cases`` with both, ``changed`` (final label ≠ first impression; uncertain counts as
    a label of its own), ``rate`` (changed / cases), ``to_model`` (changes whose final
    label is the model's predicted class: the reader moved towards the model)."""
    first = impressions[["case_id", "reviewer", "label"]].rename(columns={"label": "first"})
    final = with_labels(readings)[["case_id", "reviewer", "label", "predicted_class"]]
    both = first.merge(final, on=["case_id", "reviewer"])
    rows = []
    for reviewer, group in both.groupby("reviewer", sort=True):
        changed = [not _same(a, b) for a, b in zip(group["first"], group["label"], strict=True)]
        towards = [
            c and label == predicted
            for c, label, predicted in zip(
                changed, group["label"], group["predicted_class"], strict=True
            )
        ]
        rows.append(
            {
                "reviewer": reviewer,
                "cases": len(group),
                "changed": sum(changed),
                "rate": sum(changed) / len(group),
                "to_model": sum(towards),
            }
        )
    return pd.DataFrame(rows, columns=list(MIND_CHANGE_COLUMNS))


def _same(a, b) -> bool:
    """Two labels are the same: equal, or both missing (uncertain)."""
    if pd.isna(a) or pd.isna(b):
        return bool(pd.isna(a) and pd.isna(b))
    return a == b
