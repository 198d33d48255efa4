"""Reads of the review store: the worklist, one case and its decisions, dashboard counts.

Plain functions over an open SQLAlchemy :class:`~sqlalchemy.Connection` (or the
query they build); :class:`~medres.review.store.ReviewStore` wraps them. A case's
*current* decision is its latest adjudication, else its latest (highest id) decision; a
reader's current decision on a case is that reader's latest reading of it.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from sqlalchemy import Connection, Select, and_, case, exists, func, or_, select

from medres.errors import ReviewError
from medres.review.schema import (
    ADJUDICATION,
    DECISIONS,
    READING,
    assignments,
    cases,
    decisions,
    impressions,
    runs,
)

CASE_FIELDS = (
    "run_id",
    "scan_id",
    "path",
    "modality",
    "site",
    "patient_id",
    "predicted_class",
    "confidence",
    "conformal_set",
    "set_size",
    "uncertainty",
    "ood_score",
    "ood",
    "refer",
    "refer_reason",
    "bundle_id",
    "priority_tier",
)
DECISION_FIELDS = ("decision", "corrected_label", "reviewer", "decided_at")
WORKLIST_COLUMNS = ("case_id", *CASE_FIELDS, *DECISION_FIELDS)
STATUSES = ("pending", "reviewed", "all")


def whole(value: Any, what: str) -> int:
    """``value`` as a Python int (numpy integers and digit strings included)."""
    try:
        return int(str(value).strip())
    except ValueError:
        raise ReviewError(f"{what} must be a whole number; got {value!r}") from None


def latest_decisions(reader: str | None = None) -> Select:
    """SELECT case_id, the id of its current decision: its latest adjudication, else its
    latest decision; with ``reader``, that reader's latest reading."""
    if reader is not None:
        latest = func.max(decisions.c.id)
        mine = (decisions.c.reviewer == reader) & (decisions.c.kind == READING)
        return (
            select(decisions.c.case_id, latest.label("decision_id"))
            .where(mine)
            .group_by(decisions.c.case_id)
        )
    adjudicated = func.max(case((decisions.c.kind == ADJUDICATION, decisions.c.id)))
    current = func.coalesce(adjudicated, func.max(decisions.c.id))
    return select(decisions.c.case_id, current.label("decision_id")).group_by(decisions.c.case_id)


def readers_cases(reader: str):
    """A WHERE clause: the cases assigned to ``reader``, and every case of a run in which
    nothing is assigned."""
    others = cases.alias("others")
    assigned_in_run = (
        select(assignments.c.id)
        .join(others, others.c.id == assignments.c.case_id)
        .where(others.c.run_id == cases.c.run_id)
    )
    mine = select(assignments.c.id).where(
        and_(assignments.c.case_id == cases.c.id, assignments.c.reader == reader)
    )
    return or_(exists(mine), ~exists(assigned_in_run))


def worklist_query(
    run_id: int | None,
    status: str,
    predicted_class: str | None,
    site: str | None,
    reason: str | None,
    reader: str | None = None,
) -> Select:
    """The worklist's SELECT (see :meth:`ReviewStore.worklist`): :data:`WORKLIST_COLUMNS`,
    filtered, most urgent first (priority tier, then priority score descending); with
    ``reader``, that reader's cases and decisions."""
    if status not in STATUSES:
        raise ReviewError(f"status must be pending, reviewed or all; got {status!r}")
    latest = latest_decisions(reader).subquery()
    query = (
        select(
            cases.c.id.label("case_id"),
            *[cases.c[name] for name in CASE_FIELDS],
            *[decisions.c[name] for name in DECISION_FIELDS],
        )
        .outerjoin(latest, latest.c.case_id == cases.c.id)
        .outerjoin(decisions, decisions.c.id == latest.c.decision_id)
    )
    if run_id is not None:
        query = query.where(cases.c.run_id == whole(run_id, "run id"))
    if reader is not None:
        query = query.where(readers_cases(reader))
    if status == "pending":
        query = query.where(latest.c.decision_id.is_(None))
    elif status == "reviewed":
        query = query.where(latest.c.decision_id.is_not(None))
    if predicted_class is not None:
        query = query.where(cases.c.predicted_class == str(predicted_class))
    if site is not None:
        query = query.where(cases.c.site == site)
    if reason:
        query = query.where(cases.c.refer_reason.contains(reason, autoescape=True))
    return query.order_by(
        cases.c.priority_tier, cases.c.priority_score.desc(), cases.c.run_id, cases.c.id
    )


def runs_query() -> Select:
    """One row per run: its columns but run_key, and ``cases`` (its count)."""
    n = select(func.count()).where(cases.c.run_id == runs.c.id).scalar_subquery()
    query = select(*[c for c in runs.c if c.name != "run_key"], n.label("cases"))
    return query.order_by(runs.c.id)


def class_names(classes: list[Any], summary: dict[str, Any] | None) -> dict[str, str]:
    """{class: display name} of a run, in class order: run.json's ``class_names``
    (``medres predict`` writes the bundle's), else each class's own label."""
    named = (summary or {}).get("class_names") or {}
    return {str(c): str(named.get(str(c)) or c) for c in classes}


def case_row(conn: Connection, case_id: int):
    """The ``cases`` row of ``case_id`` with its run's classes, outdir, show_patient_ids
    and blinded; ReviewError for an unknown case id."""
    case_id = whole(case_id, "case id")
    query = (
        select(
            cases,
            runs.c.classes,
            runs.c.summary,
            runs.c.outdir,
            runs.c.show_patient_ids,
            runs.c.blinded,
        )
        .join(runs, runs.c.id == cases.c.run_id)
        .where(cases.c.id == case_id)
    )
    row = conn.execute(query).first()
    if row is None:
        raise ReviewError(
            f"no case {case_id} in this review store; take a case_id from the worklist"
        )
    return row


def case_history(conn: Connection, case_id: int) -> list[dict[str, Any]]:
    """The decisions of case ``case_id`` (a known id), newest first, with ``current``
    (the case's current decision: its latest adjudication, else the newest)."""
    query = (
        select(decisions.c.id.label("decision_id"), *list(decisions.c)[2:])
        .where(decisions.c.case_id == case_id)
        .order_by(decisions.c.id.desc())
    )
    rows = [dict(r) for r in conn.execute(query).mappings()]
    adjudications = [r for r in rows if r["kind"] == ADJUDICATION]
    current = (adjudications or rows or [{"decision_id": None}])[0]["decision_id"]
    for row in rows:
        row["current"] = row["decision_id"] == current
    return rows


def case_readers(conn: Connection, case_id: int) -> list[str]:
    """The readers assigned to case ``case_id``, in the order they were assigned."""
    query = select(assignments.c.reader).where(assignments.c.case_id == case_id)
    return list(conn.execute(query.order_by(assignments.c.id)).scalars())


def current_readings(conn: Connection, run_id: int | None) -> pd.DataFrame:
    """Each reader's current reading of each case (of run ``run_id``, or of every run),
    adjudications left out: case_id, run_id, reviewer, decision, corrected_label, notes,
    decided_at, decision_id, predicted_class, assigned (the reader is assigned the case)."""
    latest = (
        select(func.max(decisions.c.id).label("decision_id"))
        .where(decisions.c.kind == READING)
        .group_by(decisions.c.case_id, decisions.c.reviewer)
        .subquery()
    )
    assigned = exists(
        select(assignments.c.id).where(
            (assignments.c.case_id == decisions.c.case_id)
            & (assignments.c.reader == decisions.c.reviewer)
        )
    )
    query = (
        select(
            decisions.c.case_id,
            cases.c.run_id,
            decisions.c.reviewer,
            decisions.c.decision,
            decisions.c.corrected_label,
            decisions.c.notes,
            decisions.c.decided_at,
            decisions.c.id.label("decision_id"),
            cases.c.predicted_class,
            assigned.label("assigned"),
        )
        .join(latest, latest.c.decision_id == decisions.c.id)
        .join(cases, cases.c.id == decisions.c.case_id)
        .order_by(decisions.c.case_id, decisions.c.id)
    )
    if run_id is not None:
        query = query.where(cases.c.run_id == whole(run_id, "run id"))
    rows = conn.execute(query).mappings().all()
    return pd.DataFrame(rows, columns=[c.name for c in query.selected_columns])


def adjudicated_cases(conn: Connection, run_id: int | None) -> set[int]:
    """The ids of the cases (of run ``run_id``, or of every run) with an adjudication."""
    query = (
        select(decisions.c.case_id)
        .join(cases, cases.c.id == decisions.c.case_id)
        .where(decisions.c.kind == ADJUDICATION)
    )
    if run_id is not None:
        query = query.where(cases.c.run_id == whole(run_id, "run id"))
    return {int(c) for c in conn.execute(query).scalars()}


def assigned_readers(conn: Connection, run_id: int | None) -> pd.DataFrame:
    """Every assignment (of run ``run_id``, or of every run): case_id, run_id, reader."""
    query = select(assignments.c.case_id, cases.c.run_id, assignments.c.reader).join(
        cases, cases.c.id == assignments.c.case_id
    )
    if run_id is not None:
        query = query.where(cases.c.run_id == whole(run_id, "run id"))
    rows = conn.execute(query.order_by(assignments.c.id)).mappings().all()
    return pd.DataFrame(rows, columns=["case_id", "run_id", "reader"])


def impression_rows(conn: Connection, run_id: int | None = None, **where: Any) -> pd.DataFrame:
    """First impressions (of run ``run_id``, or of every run; ``where``: column = value):
    impression_id, case_id, reviewer, decision, label, notes, recorded_at, run_id."""
    query = select(
        impressions.c.id.label("impression_id"), *list(impressions.c)[1:], cases.c.run_id
    ).join(cases, cases.c.id == impressions.c.case_id)
    if run_id is not None:
        query = query.where(cases.c.run_id == whole(run_id, "run id"))
    for name, value in where.items():
        query = query.where(impressions.c[name] == value)
    rows = conn.execute(query.order_by(impressions.c.id)).mappings().all()
    return pd.DataFrame(rows, columns=[c.name for c in query.selected_columns])


def current_decisions(conn: Connection, run_id: int | None) -> pd.DataFrame:
    """Every case's current decision (of run ``run_id``, or of every run) as a table:
    decision_id, case_id, kind, decision, corrected_label, reviewer, decided_at,
    bundle_id, scan_id, path, predicted_class."""
    latest = latest_decisions().subquery()
    query = (
        select(
            decisions.c.id.label("decision_id"),
            decisions.c.case_id,
            decisions.c.kind,
            decisions.c.decision,
            decisions.c.corrected_label,
            decisions.c.reviewer,
            decisions.c.decided_at,
            decisions.c.bundle_id,
            cases.c.scan_id,
            cases.c.path,
            cases.c.predicted_class,
        )
        .join(latest, latest.c.decision_id == decisions.c.id)
        .join(cases, cases.c.id == decisions.c.case_id)
    )
    if run_id is not None:
        query = query.where(cases.c.run_id == whole(run_id, "run id"))
    rows = conn.execute(query).mappings().all()
    return pd.DataFrame(rows, columns=[c.name for c in query.selected_columns])


def decision_counts(table: pd.DataFrame) -> dict[str, Any]:
    """``reviewed``, one count per decision, and ``agreement_rate`` (agree / (agree +
    disagree), None before any) of a worklist table."""
    counts = {d: int((table["decision"] == d).sum()) for d in DECISIONS}
    judged = counts["agree"] + counts["disagree"]
    return {
        "reviewed": int(table["decision"].notna().sum()),
        **counts,
        "agreement_rate": counts["agree"] / judged if judged else None,
    }


def worklist_stats(table: pd.DataFrame) -> dict[str, Any]:
    """The dashboard figures of a worklist table (status ``all``): see
    :meth:`ReviewStore.stats`."""
    figures: dict[str, Any] = {"cases": len(table)} | decision_counts(table)
    figures["pending"] = figures["cases"] - figures["reviewed"]
    figures["referred"] = int(table["refer"].sum()) if len(table) else 0
    figures["ood"] = int(table["ood"].sum()) if len(table) else 0
    for name, column in (("per_class", "predicted_class"), ("per_site", "site")):
        groups = table.assign(**{column: table[column].fillna("(none)")}).groupby(column)
        rows = [{column: key, "cases": len(g)} | decision_counts(g) for key, g in groups]
        columns = [column, "cases", "reviewed", *DECISIONS, "agreement_rate"]
        figures[name] = pd.DataFrame(rows, columns=columns)
    return figures
