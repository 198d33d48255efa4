"""Several readers per case, as methods of :class:`~medres.review.store.ReviewStore`:
assignment, the adjudication queue, reader agreement, blinded first impressions.

Double reading: :meth:`ReadersMixin.assign` gives each case two (``per_case``) readers;
each reads it on their own (``ReviewStore.worklist(reader=...)``); a case whose readers'
labels differ (or one is uncertain) waits in :meth:`ReadersMixin.adjudication_queue`
until someone else records the final word (:meth:`ReadersMixin.adjudicate`), which the
labels export then uses. In a blinded run a reader records a first impression
(:meth:`ReadersMixin.first_impression`) before the model's output is shown;
:meth:`ReadersMixin.mind_changes` says how often the final label differs from it.
The rules are in :mod:`medres.review.readers` and :mod:`medres.review.agreement`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import IntegrityError

from medres.errors import ReviewError
from medres.review.agreement import Agreement, agreement
from medres.review.readers import (
    assignment_plan,
    check_readers,
    disputed,
    mind_changes,
    reader_label,
)
from medres.review.schema import ADJUDICATION, IMPRESSIONS, assignments, cases, impressions, runs
from medres.review.store_read import (
    WORKLIST_COLUMNS,
    adjudicated_cases,
    assigned_readers,
    case_readers,
    case_row,
    current_readings,
    impression_rows,
    whole,
    worklist_query,
)
from medres.review.store_write import (
    append_audit,
    check_decision,
    check_label,
    insert_decision,
    now,
    os_user,
    reviewer_name,
)

QUEUE_COLUMNS = ("case_id", "run_id", "scan_id", "site", "predicted_class", "readers", "readings")


@dataclass(frozen=True)
class AssignResult:
    """What :meth:`ReadersMixin.assign` did: ``cases`` newly assigned, ``skipped`` (cases
    that had readers already, left as they were) and ``per_reader`` (reader -> cases
    newly assigned to them)."""

    cases: int
    skipped: int
    per_reader: dict[str, int]


class ReadersMixin:
    """The several-readers methods of ``ReviewStore`` (which provides ``engine`` and
    ``_write``)."""

    def assign(
        self,
        run_id: int | None = None,
        case_ids: Sequence[int] | None = None,
        *,
        readers: Sequence[str] | str,
        per_case: int = 2,
        actor: str | None = None,
    ) -> AssignResult:
        """Assign cases to readers: ``per_case`` distinct readers each, round-robin over
        ``readers`` in the order given (balanced: each reader gets the same number of
        cases, give or take one; the same call gives the same plan).

        Args:
            run_id: the cases of this run (with ``case_ids``: only those of them).
            case_ids: these cases; with neither, every case in the store.
            readers: reader names (a list, or ``"dr_a,dr_b"``), as they sign in.
            per_case: readers per case (2: double reading).
            actor: who assigns (audit); default the operating-system user.

        Cases that have readers already keep them (assigning again changes nothing);
        the cases are taken in id order. One audit row (``assign``) per call.

        Raises:
            ReviewError: fewer readers than ``per_case``, an empty or repeated name, or
            an unknown case id (or one of another run).
        """
        names = check_readers(readers, per_case)
        actor = actor or os_user()
        with self._write() as conn:
            ids = _chosen_cases(conn, run_id, case_ids)
            held = set(assigned_readers(conn, None)["case_id"].astype(int))
            todo = [c for c in ids if c not in held]
            plan = assignment_plan(todo, names, per_case)
            stamp = now()
            if plan:
                conn.execute(
                    insert(assignments),
                    [
                        {"case_id": c, "reader": r, "assigned_at": stamp, "assigned_by": actor}
                        for c, r in plan
                    ],
                )
                details = {"readers": names, "per_case": per_case, "case_ids": todo}
                run = None if run_id is None else whole(run_id, "run id")
                append_audit(conn, actor, "assign", run_id=run, details=details)
        per_reader = {n: sum(1 for _, r in plan if r == n) for n in names}
        return AssignResult(len(todo), len(ids) - len(todo), per_reader)

    def adjudication_queue(self, run_id: int | None = None) -> pd.DataFrame:
        """The cases whose assigned readers disagree (labels differ, or one is uncertain)
        and that nobody has adjudicated yet, most urgent first.

        Returns a DataFrame with :data:`QUEUE_COLUMNS`: ``readers`` (the assigned readers,
        a list) and ``readings`` (a list of dicts, one per reader who read it: reviewer,
        decision, corrected_label, label (the class they gave; None when uncertain),
        notes, decided_at)."""
        with self.engine.connect() as conn:
            ids = self._queue_ids(conn, run_id)
            if not ids:
                return pd.DataFrame(columns=list(QUEUE_COLUMNS))
            readings = current_readings(conn, run_id)
            assigned = assigned_readers(conn, run_id)
            rows = conn.execute(worklist_query(run_id, "all", None, None, None)).mappings()
            work = pd.DataFrame(rows.all(), columns=list(WORKLIST_COLUMNS))
        work = work[work["case_id"].isin(ids)]
        readers = assigned.groupby("case_id")["reader"].apply(list).to_dict()
        out = []
        for row in work.itertuples(index=False):
            mine = readings[readings["case_id"] == row.case_id]
            out.append(
                {
                    "case_id": int(row.case_id),
                    "run_id": int(row.run_id),
                    "scan_id": row.scan_id,
                    "site": row.site,
                    "predicted_class": row.predicted_class,
                    "readers": readers.get(row.case_id, []),
                    "readings": [_reading(r) for r in mine.to_dict("records")],
                }
            )
        return pd.DataFrame(out, columns=list(QUEUE_COLUMNS))

    def adjudicate(
        self,
        case_id: int,
        adjudicator: str,
        decision: str,
        label: str | None = None,
        notes: str = "",
    ) -> int:
        """Record the final decision on a case its readers disagree on (an ``adjudication``
        decision row and an ``adjudicate`` audit row). It is the case's current decision
        from then on (the export uses it) and takes the case out of the queue; a later
        adjudication replaces it.

        Args:
            adjudicator: who decides: not one of the case's readers.
            decision, label: as for ``ReviewStore.decide`` (``label``: the corrected
                label of a disagree).

        Returns the decision's id.

        Raises:
            ReviewError: the adjudicator is one of the case's readers (assigned, or who
            read it), the case is not waiting for adjudication, or the decision is bad.
        """
        adjudicator = reviewer_name(adjudicator, "adjudicator")
        label = check_decision(decision, label)
        with self._write() as conn:
            case = case_row(conn, case_id)
            label = check_label(case, decision, label)
            readings = current_readings(conn, case.run_id)
            readings = readings[readings["case_id"] == case.id]
            readers = case_readers(conn, case.id)
            if adjudicator in readers or adjudicator in set(readings["reviewer"]):
                raise ReviewError(
                    f"{adjudicator} is one of the readers of case {case.id} "
                    f"({', '.join(readers or readings['reviewer'])}): an adjudicator must be "
                    "someone who did not read it"
                )
            if case.id not in disputed(readings) and case.id not in adjudicated_cases(
                conn, case.run_id
            ):
                raise ReviewError(
                    f"case {case.id} is not waiting for adjudication: its assigned readers "
                    "have not both read it, or they agree; see the adjudication queue"
                )
            return insert_decision(conn, case, adjudicator, decision, label, notes, ADJUDICATION)

    def agreement(self, run_id: int | None = None, n_boot: int = 2000, seed: int = 0) -> Agreement:
        """Cohen's kappa with a 95 % bootstrap interval (over cases, seed ``seed``):
        between every two readers on the cases both read, and between each reader and
        the model's predicted class (:mod:`medres.review.agreement`). Each reader's
        current reading counts; adjudications do not."""
        with self.engine.connect() as conn:
            readings = current_readings(conn, run_id)
        return agreement(readings, n_boot=n_boot, seed=seed)

    def first_impression(
        self,
        case_id: int,
        reviewer: str,
        decision: str,
        label: str | None = None,
        notes: str = "",
    ) -> int:
        """Record a reader's first impression of a case in a blinded run, before the
        model's output is shown to them (and its ``first_impression`` audit row).

        Args:
            decision: ``label`` (the reader names the class, ``label``, one of the
                run's classes) or ``uncertain`` (no label).

        Returns the impression's id. One per reader and case: it is kept as recorded.

        Raises:
            ReviewError: the run is not blinded, the reader recorded one already, a bad
            decision or label, or an unknown case.
        """
        reviewer = reviewer_name(reviewer)
        if decision not in IMPRESSIONS:
            raise ReviewError(
                f"a first impression is {' or '.join(IMPRESSIONS)} (the class you see, or "
                f"that you cannot tell); got {decision!r}"
            )
        label = None if label is None else str(label).strip() or None
        try:
            with self._write() as conn:
                case = case_row(conn, case_id)
                _check_impression(case, decision, label)
                found = impression_rows(conn, case_id=case.id, reviewer=reviewer)
                if not found.empty:
                    raise _recorded(case.id, reviewer, found.iloc[0]["recorded_at"])
                impression_id = conn.execute(
                    insert(impressions).values(
                        case_id=case.id,
                        reviewer=reviewer,
                        decision=decision,
                        label=label,
                        notes=notes or "",
                        recorded_at=now(),
                    )
                ).inserted_primary_key[0]
                details = {"impression_id": impression_id, "decision": decision, "label": label}
                append_audit(
                    conn,
                    reviewer,
                    "first_impression",
                    run_id=case.run_id,
                    case_id=case.id,
                    details=details,
                )
        except IntegrityError:  # the same reader, at the same moment, in another session
            raise _recorded(case_id, reviewer, "the same moment") from None
        return int(impression_id)

    def impression(self, case_id: int, reviewer: str) -> dict[str, Any] | None:
        """The reader's first impression of the case (impression_id, case_id, reviewer,
        decision, label, notes, recorded_at, run_id), or None. ReviewError for an unknown
        case id."""
        with self.engine.connect() as conn:
            case = case_row(conn, case_id)
            found = impression_rows(conn, case_id=case.id, reviewer=(reviewer or "").strip())
        if found.empty:
            return None
        return {k: _plain(v) for k, v in found.iloc[0].to_dict().items()}

    def mind_changes(self, run_id: int | None = None) -> pd.DataFrame:
        """Per reader, on the cases with both a first impression and a decision: ``cases``,
        ``changed`` (final label differs from the first impression), ``rate``, and
        ``to_model`` (changes to the model's predicted class). See
        :func:`medres.review.readers.mind_changes`."""
        with self.engine.connect() as conn:
            first = impression_rows(conn, run_id)
            readings = current_readings(conn, run_id)
        return mind_changes(first, readings)

    def _queue_ids(self, conn: Connection, run_id: int | None) -> list[int]:
        """The ids of the cases in the adjudication queue (of run ``run_id``, or all)."""
        done = adjudicated_cases(conn, run_id)
        return [c for c in disputed(current_readings(conn, run_id)) if c not in done]


def _chosen_cases(conn: Connection, run_id, case_ids) -> list[int]:
    """The ids of the cases to assign, in id order (see :meth:`ReadersMixin.assign`)."""
    query = select(cases.c.id, cases.c.run_id).order_by(cases.c.id)
    if run_id is not None:
        query = query.where(cases.c.run_id == whole(run_id, "run id"))
    found = {int(r.id) for r in conn.execute(query)}
    if run_id is not None and not found:
        known = conn.execute(select(runs.c.id).where(runs.c.id == whole(run_id, "run id"))).first()
        if known is None:
            raise ReviewError(f"no run {run_id} in this review store; `medres review load` it")
    if case_ids is None:
        return sorted(found)
    wanted = sorted({whole(c, "case id") for c in case_ids})
    missing = [c for c in wanted if c not in found]
    if missing:
        where = "this review store" if run_id is None else f"run {run_id}"
        raise ReviewError(
            f"no case {', '.join(map(str, missing))} in {where}; take case ids from the worklist"
        )
    return wanted


def _check_impression(case, decision: str, label: str | None) -> None:
    """ReviewError unless ``case``'s run is blinded and ``label`` fits ``decision``."""
    classes = list(case.classes)
    if not case.blinded:
        raise ReviewError(
            f"case {case.id} is not in a blinded run: record the decision directly "
            "(first impressions are for runs loaded with --blinded)"
        )
    if decision == "label" and label not in classes:
        raise ReviewError(f"a first impression needs the class you see, one of {classes}")
    if decision == "uncertain" and label is not None:
        raise ReviewError("an uncertain first impression takes no label")


def _recorded(case_id, reviewer: str, when) -> ReviewError:
    return ReviewError(
        f"{reviewer} recorded a first impression of case {case_id} already ({when}); it "
        "is kept as recorded: record your decision now"
    )


def _reading(row: dict[str, Any]) -> dict[str, Any]:
    """One reader's reading of a queued case, for the adjudicator."""
    keys = ("reviewer", "decision", "corrected_label", "notes", "decided_at")
    out = {k: _plain(row[k]) for k in keys}
    out["label"] = reader_label(row["decision"], out["corrected_label"], row["predicted_class"])
    return out


def _plain(value):
    """A pandas / numpy scalar as a plain Python value (NaN as None)."""
    if value is None or (not isinstance(value, (str, list, dict)) and pd.isna(value)):
        return None
    return value.item() if hasattr(value, "item") else value
