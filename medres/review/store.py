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
from medres.review.schema import DECISIONS, audit, check_schema, decisions, metadata, settings
from medres.review.store_read import (
    CASE_FIELDS,
    DECISION_FIELDS,
    WORKLIST_COLUMNS,
    case_history,
    case_row,
    current_decisions,
    runs_query,
    whole,
    worklist_query,
    worklist_stats,
)
from medres.review.store_write import (
    EXPORT_COLUMNS,
    LoadResult,
    append_audit,
    check_label,
    create_private,
    export_table,
    load_cases,
    now,
    os_user,
)

__all__ = [
    "CASE_FIELDS",
    "DECISION_FIELDS",
    "EXPORT_COLUMNS",
    "SALT",
    "WORKLIST_COLUMNS",
    "LoadResult",
    "ReviewStore",
]

SALT = "patient_id_salt"


class ReviewStore:
    """The review database.

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
    ) -> LoadResult:
        """Load a ``medres predict`` OUTDIR: one ``runs`` row, one ``cases`` row per scan.

        Loading the same OUTDIR again changes nothing; if it has gained scans since
        (a later ``medres predict`` into it), only those are added.

        Args:
            show_patient_ids: keep patient ids as they are (default: salted sha256
                pseudonyms ``anon-<16 hex>``, the same patient → the same pseudonym).
            site: the site of every scan whose prediction row names none.
            actor: who loads (audit); default the operating-system user.

        Raises:
            ReviewError: not a finished predict output; or loaded before with another
            ``show_patient_ids``.
        """
        out = read_outdir(outdir)
        key, actor = out.run_key(), actor or os_user()
        try:
            return self._load(out, key, show_patient_ids, site, actor)
        except IntegrityError:  # another process loaded the same run at the same moment
            return self._load(out, key, show_patient_ids, site, actor)

    def load_label_issues(
        self,
        csv_path: str | Path,
        *,
        top: int | None = None,
        show_patient_ids: bool = False,
        site: str | None = None,
        actor: str | None = None,
    ) -> LoadResult:
        """Load a ``medres label-issues`` CSV: one ``runs`` row, one referred case per
        selected scan (:func:`medres.review.issues.issue_case_rows`), so the worklist,
        app and export treat them like predictions.

        Args:
            top: the ``top`` first rows by rank; default the rows cleanlab flagged (or
                every row of an unlabelled cohort's CSV: active learning).
            show_patient_ids, site, actor: as for :meth:`load_run`.

        Loading the same CSV again adds only scans not loaded before (e.g. a larger
        ``top``); nothing is duplicated.

        Raises:
            ReviewError: not a label-issues CSV (missing columns named), a bad ``top``,
            or loaded before with another ``show_patient_ids``.
        """
        issues = select_top(read_label_issues(csv_path), top)
        key, actor = issues.run_key(), actor or os_user()
        args = (issues, key, show_patient_ids, site, actor, issue_case_rows)
        try:
            return self._load(*args)
        except IntegrityError:  # another process loaded the same CSV at the same moment
            return self._load(*args)

    def _load(
        self, out, key: str, show: bool, site: str | None, actor: str, make_rows=case_rows
    ) -> LoadResult:
        with self._write() as conn:
            return load_cases(conn, out, key, show, site, actor, self._salt, make_rows)

    def decide(
        self,
        case_id: int,
        reviewer: str,
        decision: str,
        corrected_label: str | None = None,
        notes: str = "",
    ) -> int:
        """Record a reviewer's decision on a case and its audit row in one transaction.

        Args:
            decision: ``agree`` (the predicted class is right), ``disagree`` (it is
                ``corrected_label``, one of the run's classes) or ``uncertain``.

        Returns the new decision's id. Earlier decisions stay (see :meth:`history`).

        Raises:
            ReviewError: unknown case, unknown decision, a disagree without a corrected
            label, a label outside the run's classes, or an empty reviewer name.
        """
        if decision not in DECISIONS:
            raise ReviewError(f"decision must be one of {list(DECISIONS)}; got {decision!r}")
        reviewer = (reviewer or "").strip()
        if not reviewer:
            raise ReviewError("a decision needs the reviewer's name; sign in first")
        label = None if corrected_label is None else str(corrected_label).strip() or None
        with self._write() as conn:
            case = case_row(conn, case_id)
            label = check_label(case, decision, label)
            decision_id = conn.execute(
                insert(decisions).values(
                    case_id=case.id,
                    reviewer=reviewer,
                    decision=decision,
                    corrected_label=label,
                    notes=notes or "",
                    decided_at=now(),
                    bundle_id=case.bundle_id,
                )
            ).inserted_primary_key[0]
            details = {"decision_id": decision_id, "decision": decision, "corrected_label": label}
            append_audit(
                conn, reviewer, "decide", run_id=case.run_id, case_id=case.id, details=details
            )
        return int(decision_id)

    def export_labels(
        self, path: str | Path, *, run_id: int | None = None, actor: str | None = None
    ) -> pd.DataFrame:
        """Write the reviewed labels as a CSV that ``medres ingest --labels`` accepts.

        One row per scan path, from each case's current decision, ``uncertain`` left
        out (where several runs hold the same scan, the latest of their agree /
        disagree decisions): ``path`` (the key), ``label`` (the corrected label on
        disagree, the predicted class on agree), ``scan_id``, ``decision``, ``reviewer``,
        ``decided_at`` (ISO 8601 UTC), ``predicted_class``, ``bundle_id``. The export is
        audited. Returns the table written.
        """
        run_id = None if run_id is None else whole(run_id, "run id")
        with self.engine.connect() as conn:
            table = export_table(current_decisions(conn, run_id))
        write_text(path, table.to_csv(index=False), private=True)
        with self._write() as conn:
            details = {"file": str(Path(path).resolve()), "rows": len(table)}
            append_audit(conn, actor or os_user(), "export", run_id=run_id, details=details)
        return table

    # ------------------------------------------------------------------ reads

    def runs(self) -> pd.DataFrame:
        """One row per loaded run: id, bundle_id, bundle_checksum, outdir, scan_folder,
        classes, show_patient_ids, loaded_at, loaded_by, and its number of cases."""
        with self.engine.connect() as conn:
            return pd.DataFrame(conn.execute(runs_query()).mappings().all())

    def worklist(
        self,
        run_id: int | None = None,
        status: str = "pending",
        predicted_class: str | None = None,
        site: str | None = None,
        reason: str | None = None,
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

        Returns a DataFrame with :data:`WORKLIST_COLUMNS` plus ``rank`` (1 = first);
        the decision columns hold the current (latest) decision, or None.
        """
        query = worklist_query(run_id, status, predicted_class, site, reason)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        table = pd.DataFrame(rows, columns=list(WORKLIST_COLUMNS))
        table.insert(0, "rank", range(1, len(table) + 1))
        return table

    def case(self, case_id: int) -> dict[str, Any]:
        """Everything about one case: every ``cases`` column (``id`` as ``case_id``),
        ``classes`` (the run's, in order), ``outdir``, ``show_patient_ids`` and
        ``decision`` (the current decision as in :meth:`history`, or None).

        Raises ReviewError for an unknown case id."""
        with self.engine.connect() as conn:
            row = case_row(conn, case_id)
            history = case_history(conn, row.id)
        data = dict(row._mapping)
        data["case_id"] = data.pop("id")
        data["decision"] = history[0] if history else None
        return data

    def history(self, case_id: int) -> list[dict[str, Any]]:
        """The case's decisions, newest first (the first is current): dicts with
        decision_id, reviewer, decision, corrected_label, notes, decided_at, bundle_id,
        current. Raises ReviewError for an unknown case id."""
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
