"""``ReviewStore``: prediction runs, cases, reviewers' decisions and an audit log.

A SQLite file by default (WAL, busy timeout, every write in a ``BEGIN IMMEDIATE``
transaction so concurrent reviewers queue instead of failing: :mod:`.db`); any
SQLAlchemy URL (``postgresql+psycopg://...``) for a shared server. Tables: :mod:`.schema`;
the writes: :mod:`.store_write`; the queries: :mod:`.store_read`.

Privacy: patient ids are stored as salted sha256 pseudonyms unless a run is loaded with
``show_patient_ids=True``; names are never read (predictions hold none); nothing is
logged. A new SQLite file (and so its -wal / -shm) is created mode 0600, as is the export.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from medres.errors import ReviewError
from medres.files import write_text
from medres.review.db import make_engine, write_transaction
from medres.review.issues import issue_case_rows, read_label_issues, select_top
from medres.review.outdir import case_rows, read_outdir
from medres.review.schema import audit, check_schema, metadata, settings
from medres.review.store_read import (
    CASE_FIELDS,
    DECISION_FIELDS,
    WORKLIST_COLUMNS,
    case_history,
    case_readers,
    case_row,
    class_names,
    current_decisions,
    impression_rows,
    runs_query,
    whole,
    worklist_query,
    worklist_stats,
)
from medres.review.store_readers import AssignResult, ReadersMixin
from medres.review.store_write import (
    EXPORT_COLUMNS,
    LoadResult,
    append_audit,
    check_decision,
    check_label,
    create_private,
    export_table,
    insert_decision,
    load_cases,
    os_user,
    reviewer_name,
)

__all__ = [
    "CASE_FIELDS",
    "DECISION_FIELDS",
    "EXPORT_COLUMNS",
    "SALT",
    "WORKLIST_COLUMNS",
    "AssignResult",
    "LoadResult",
    "ReviewStore",
]

SALT = "patient_id_salt"


class ReviewStore(ReadersMixin):
    """The review database (several readers per case: :class:`.store_readers.ReadersMixin`).

    Args:
        url_or_path: a file path (SQLite, created when missing) or an SQLAlchemy URL
            such as ``postgresql+psycopg://user@host/medres``.
        create: create the tables when missing; with False a missing SQLite file is a
            ReviewError (for read-only verbs such as export).
    """

    def __init__(self, url_or_path: str | Path, *, create: bool = True) -> None:
        text = str(url_or_path)
        if "://" in text:
            self.url = make_url(text)
        else:
            path = Path(text).expanduser().resolve()
            if not create and not path.is_file():
                raise ReviewError(
                    f"no review store at {path}; load a run first: "
                    f"`medres review load OUTDIR --store {path}`"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            create_private(path)
            self.url = make_url(f"sqlite:///{path}")
        self.engine = make_engine(self.url)
        with self._write() as conn:
            metadata.create_all(conn)
            check_schema(conn, self.url.render_as_string(hide_password=True))
            salt = conn.execute(select(settings.c.value).where(settings.c.name == SALT)).scalar()
            if salt is None:
                salt = secrets.token_hex(16)
                conn.execute(insert(settings).values(name=SALT, value=salt))
        self._salt = salt

    def __repr__(self) -> str:
        return f"ReviewStore({self.url.render_as_string(hide_password=True)!r})"

    def __enter__(self) -> ReviewStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close every pooled connection (SQLite folds its WAL back into the file)."""
        self.engine.dispose()

    # ------------------------------------------------------------------ writes

    def load_run(
        self,
        outdir: str | Path,
        *,
        show_patient_ids: bool = False,
        site: str | None = None,
        actor: str | None = None,
        blinded: bool = False,
    ) -> LoadResult:
        """Load a ``medres predict`` OUTDIR: one ``runs`` row, one ``cases`` row per scan.

        Loading the same OUTDIR again changes nothing; if it has gained scans since
        (a later ``medres predict`` into it), only those are added.

        Args:
            show_patient_ids: keep patient ids as they are (default: salted sha256
                pseudonyms ``anon-<16 hex>``, the same patient → the same pseudonym).
            site: the site of every scan whose prediction row names none.
            actor: who loads (audit); default the operating-system user.
            blinded: a blinded run: each reader records a first impression of a case
                before seeing the model's output, then the decision (both kept).

        Raises:
            ReviewError: not a finished predict output; or loaded before with another
            ``show_patient_ids`` or ``blinded``.
        """
        out = read_outdir(outdir)
        key, actor = out.run_key(), actor or os_user()
        args = (out, key, show_patient_ids, site, actor, case_rows, blinded)
        try:
            return self._load(*args)
        except IntegrityError:  # another process loaded the same run at the same moment
            return self._load(*args)

    def load_label_issues(
        self,
        csv_path: str | Path,
        *,
        top: int | None = None,
        show_patient_ids: bool = False,
        site: str | None = None,
        actor: str | None = None,
        blinded: bool = False,
    ) -> LoadResult:
        """Load a ``medres label-issues`` CSV: one ``runs`` row, one referred case per
        selected scan (:func:`medres.review.issues.issue_case_rows`), so the worklist,
        app and export treat them like predictions.

        Args:
            top: the ``top`` first rows by rank; default the rows cleanlab flagged (or
                every row of an unlabelled cohort's CSV: active learning).
            show_patient_ids, site, actor, blinded: as for :meth:`load_run`.

        Loading the same CSV again adds only scans not loaded before (e.g. a larger
        ``top``); nothing is duplicated.

        Raises:
            ReviewError: not a label-issues CSV (missing columns named), a bad ``top``,
            or loaded before with another ``show_patient_ids``.
        """
        issues = select_top(read_label_issues(csv_path), top)
        key, actor = issues.run_key(), actor or os_user()
        args = (issues, key, show_patient_ids, site, actor, issue_case_rows, blinded)
        try:
            return self._load(*args)
        except IntegrityError:  # another process loaded the same CSV at the same moment
            return self._load(*args)

    def _load(
        self, out, key: str, show: bool, site: str | None, actor: str, make_rows, blinded: bool
    ) -> LoadResult:
        with self._write() as conn:
            return load_cases(conn, out, key, show, site, actor, self._salt, make_rows, blinded)

    def decide(
        self,
        case_id: int,
        reviewer: str,
        decision: str,
        corrected_label: str | None = None,
        notes: str = "",
    ) -> int:
        """Record a reader's decision on a case and its audit row in one transaction.

        Args:
            decision: ``agree`` (the predicted class is right), ``disagree`` (it is
                ``corrected_label``, one of the run's classes) or ``uncertain``.

        Returns the new decision's id. Earlier decisions stay (see :meth:`history`).

        Raises:
            ReviewError: unknown case, unknown decision, a disagree without a corrected
            label, a label outside the run's classes, an empty reviewer name, or, in a
            blinded run, no first impression by this reader yet (:meth:`first_impression`).
        """
        reviewer = reviewer_name(reviewer)
        label = check_decision(decision, corrected_label)
        with self._write() as conn:
            case = case_row(conn, case_id)
            label = check_label(case, decision, label)
            if case.blinded and impression_rows(conn, case_id=case.id, reviewer=reviewer).empty:
                raise ReviewError(
                    f"case {case.id} is in a blinded run: record your first impression "
                    "(before the model's output is shown) first, then your decision"
                )
            return insert_decision(conn, case, reviewer, decision, label, notes)

    def export_labels(
        self, path: str | Path, *, run_id: int | None = None, actor: str | None = None
    ) -> pd.DataFrame:
        """Write the reviewed labels as a CSV that ``medres ingest --labels`` accepts.

        One row per scan path, from each case's current decision (its adjudication
        where there is one), ``uncertain`` left out, and so are cases whose assigned
        readers disagree and that wait for adjudication (where several runs hold the
        same scan, the latest of their agree / disagree decisions): ``path`` (the key),
        ``label`` (the corrected label on disagree, the predicted class on agree),
        ``scan_id``, ``decision``, ``reviewer``,
        ``decided_at`` (ISO 8601 UTC), ``predicted_class``, ``bundle_id``. The export is
        audited. Returns the table written.
        """
        run_id = None if run_id is None else whole(run_id, "run id")
        with self.engine.connect() as conn:
            disputed = set(self._queue_ids(conn, run_id))
            table = export_table(current_decisions(conn, run_id), disputed)
        write_text(path, table.to_csv(index=False), private=True)
        with self._write() as conn:
            details = {"file": str(Path(path).resolve()), "rows": len(table)}
            append_audit(conn, actor or os_user(), "export", run_id=run_id, details=details)
        return table

    # ------------------------------------------------------------------ reads

    def runs(self) -> pd.DataFrame:
        """One row per loaded run: id, bundle_id, bundle_checksum, outdir, scan_folder,
        classes, class_names ({class: display name}), show_patient_ids, blinded,
        loaded_at, loaded_by, and its number of cases."""
        with self.engine.connect() as conn:
            table = pd.DataFrame(conn.execute(runs_query()).mappings().all())
        if table.empty:
            return table
        names = [class_names(c, s) for c, s in zip(table["classes"], table["summary"], strict=True)]
        return table.drop(columns="summary").assign(class_names=names)

    def worklist(
        self,
        run_id: int | None = None,
        status: str = "pending",
        predicted_class: str | None = None,
        site: str | None = None,
        reason: str | None = None,
        reader: str | None = None,
    ) -> pd.DataFrame:
        """The cases to review, most urgent first.

        Order: out of distribution (highest ``ood_score`` first), then conformal sets of
        more than one class, then the rest; within the last two, highest uncertainty
        (1 − max_prob) first.

        Args:
            status: ``pending`` (no decision yet), ``reviewed`` or ``all``.
            predicted_class, site: keep only these.
            reason: keep cases whose ``refer_reason`` contains this text (e.g.
                ``out of distribution``).
            reader: this reader's worklist: the cases assigned to them (:meth:`assign`),
                and every case of a run in which nothing is assigned; pending and
                reviewed, and the decision columns, are then this reader's own.

        Returns a DataFrame with :data:`WORKLIST_COLUMNS` plus ``rank`` (1 = first);
        the decision columns hold the current decision (the latest adjudication, else
        the latest decision; with ``reader``, that reader's latest), or None.
        """
        reader = None if reader is None else reviewer_name(reader, "reader")
        query = worklist_query(run_id, status, predicted_class, site, reason, reader)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        table = pd.DataFrame(rows, columns=list(WORKLIST_COLUMNS))
        table.insert(0, "rank", range(1, len(table) + 1))
        return table

    def case(self, case_id: int) -> dict[str, Any]:
        """Everything about one case: every ``cases`` column (``id`` as ``case_id``),
        ``classes`` (the run's, in order), ``class_names`` ({class: display name}),
        ``outdir``, ``show_patient_ids``, ``blinded``
        (the run asks for first impressions), ``readers`` (assigned, a list; empty when
        none) and ``decision`` (the current decision as in :meth:`history`, or None).

        Raises ReviewError for an unknown case id."""
        with self.engine.connect() as conn:
            row = case_row(conn, case_id)
            history = case_history(conn, row.id)
            readers = case_readers(conn, row.id)
        data = dict(row._mapping)
        data["case_id"] = data.pop("id")
        data["class_names"] = class_names(data["classes"], data.pop("summary"))
        data["blinded"] = bool(data["blinded"])
        data["readers"] = readers
        data["decision"] = next((h for h in history if h["current"]), None)
        return data

    def history(self, case_id: int) -> list[dict[str, Any]]:
        """The case's decisions, newest first: dicts with decision_id, reviewer,
        decision, corrected_label, notes, decided_at, bundle_id, kind (``reading`` or
        ``adjudication``) and current (the latest adjudication, else the newest).
        Raises ReviewError for an unknown case id."""
        with self.engine.connect() as conn:
            return case_history(conn, case_row(conn, case_id).id)

    def audit_log(self, case_id: int | None = None, run_id: int | None = None) -> pd.DataFrame:
        """Audit rows (id, at, actor, action, run_id, case_id, details), oldest first."""
        query = select(audit).order_by(audit.c.id)
        if case_id is not None:
            query = query.where(audit.c.case_id == whole(case_id, "case id"))
        if run_id is not None:
            query = query.where(audit.c.run_id == whole(run_id, "run id"))
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return pd.DataFrame(rows, columns=[c.name for c in audit.c])

    def stats(self, run_id: int | None = None) -> dict[str, Any]:
        """Dashboard figures over current decisions.

        Returns a dict: ``cases``, ``reviewed``, ``pending``, ``agree``, ``disagree``,
        ``uncertain``, ``referred``, ``ood`` (counts), ``agreement_rate`` (agree /
        (agree + disagree), None before any), and ``per_class`` / ``per_site``
        DataFrames (one row per predicted class / site: cases, reviewed, agree,
        disagree, uncertain, agreement_rate).
        """
        return worklist_stats(self.worklist(run_id=run_id, status="all"))

    # ------------------------------------------------------------------ helpers

    def _write(self):
        """A write transaction (see :func:`medres.review.db.write_transaction`)."""
        return write_transaction(self.engine)
