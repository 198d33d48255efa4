"""``ReviewStore``: prediction runs, cases, reviewers' decisions and an audit log.

A SQLite file by default (WAL, busy timeout, every write in a ``BEGIN IMMEDIATE``
transaction so concurrent reviewers queue instead of failing: :mod:`.db`); any
SQLAlchemy URL (``postgresql+psycopg://...``) for a shared server. Tables: :mod:`.schema`.

Privacy: patient ids are stored as salted sha256 pseudonyms unless a run is loaded with
``show_patient_ids=True``; names are never read (predictions hold none); nothing is
logged. A new SQLite file (and so its -wal / -shm) is created mode 0600, as is the export.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Connection, func, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from medres.errors import ReviewError
from medres.files import PRIVATE_MODE, write_text
from medres.review.db import make_engine, write_transaction
from medres.review.issues import issue_case_rows, read_label_issues, select_top
from medres.review.outdir import case_rows, read_outdir
from medres.review.schema import (
    DECISIONS,
    audit,
    cases,
    check_schema,
    decisions,
    metadata,
    runs,
    settings,
)

SALT = "patient_id_salt"
EXPORT_COLUMNS = (
    "path",
    "label",
    "scan_id",
    "decision",
    "reviewer",
    "decided_at",
    "predicted_class",
    "bundle_id",
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


@dataclass(frozen=True)
class LoadResult:
    """What :meth:`ReviewStore.load_run` did: the run's id, whether the run is new to the
    store, and how many cases it added (0 when the OUTDIR was loaded before, unchanged)."""

    run_id: int
    new: bool
    cases_added: int


def _create_private(path: Path) -> None:
    """Create a missing SQLite file empty with mode 0600 before SQLite opens it: it holds
    scan paths and ids, and SQLite gives its -wal / -shm files the database file's mode.
    An existing file keeps its mode."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE))


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
            _create_private(path)
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
        key, actor = out.run_key(), actor or _os_user()
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
        key, actor = issues.run_key(), actor or _os_user()
        args = (issues, key, show_patient_ids, site, actor, issue_case_rows)
        try:
            return self._load(*args)
        except IntegrityError:  # another process loaded the same CSV at the same moment
            return self._load(*args)

    def _load(
        self, out, key: str, show: bool, site: str | None, actor: str, make_rows=case_rows
    ) -> LoadResult:
        with self._write() as conn:
            run = conn.execute(
                select(runs.c.id, runs.c.show_patient_ids).where(runs.c.run_key == key)
            ).first()
            if run is not None and run.show_patient_ids != show:
                raise ReviewError(
                    f"{out.outdir} was loaded as run {run.id} with show_patient_ids="
                    f"{run.show_patient_ids}; load it again without changing that option"
                )
            rows = make_rows(out, salt=self._salt, show_patient_ids=show, site=site)
            if run is None:
                run_id = conn.execute(
                    insert(runs).values(
                        run_key=key,
                        bundle_id="+".join(b["id"] for b in _bundles(out)),
                        bundle_checksum=_bundles(out)[0]["checksum"],
                        outdir=str(out.outdir),
                        scan_folder=out.summary.get("folder"),
                        classes=out.classes,
                        show_patient_ids=show,
                        loaded_at=_now(),
                        loaded_by=actor,
                        summary=out.summary,
                    )
                ).inserted_primary_key[0]
            else:
                run_id = run.id
                query = select(cases.c.scan_id, cases.c.input_hash).where(cases.c.run_id == run_id)
                held = {tuple(r) for r in conn.execute(query)}
                rows = [r for r in rows if (r["scan_id"], r["input_hash"]) not in held]
            if rows:
                conn.execute(insert(cases), [{**r, "run_id": run_id} for r in rows])
            if run is None or rows:
                details = {"outdir": str(out.outdir), "cases_added": len(rows)}
                if run is None:
                    details["show_patient_ids"] = show
                action = "load_run" if run is None else "reload_run"
                self._audit(conn, actor, action, run_id=run_id, details=details)
                if run is not None:
                    conn.execute(
                        runs.update().where(runs.c.id == run_id).values(summary=out.summary)
                    )
        return LoadResult(run_id, run is None, len(rows))

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
            case = self._case_row(conn, case_id)
            label = _check_label(case, decision, label)
            decision_id = conn.execute(
                insert(decisions).values(
                    case_id=case.id,
                    reviewer=reviewer,
                    decision=decision,
                    corrected_label=label,
                    notes=notes or "",
                    decided_at=_now(),
                    bundle_id=case.bundle_id,
                )
            ).inserted_primary_key[0]
            details = {"decision_id": decision_id, "decision": decision, "corrected_label": label}
            self._audit(
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
        run_id = None if run_id is None else _whole(run_id, "run id")
        table = self._current(run_id)
        table = table[table["decision"].isin(["agree", "disagree"])]
        table = table.sort_values("decision_id").drop_duplicates("path", keep="last")
        table = table.assign(
            label=table["corrected_label"].where(
                table["decision"] == "disagree", table["predicted_class"]
            )
        )
        table = table.sort_values("path").reset_index(drop=True)[list(EXPORT_COLUMNS)]
        write_text(path, table.to_csv(index=False), private=True)
        with self._write() as conn:
            details = {"file": str(Path(path).resolve()), "rows": len(table)}
            self._audit(conn, actor or _os_user(), "export", run_id=run_id, details=details)
        return table

    # ------------------------------------------------------------------ reads

    def runs(self) -> pd.DataFrame:
        """One row per loaded run: id, bundle_id, bundle_checksum, outdir, scan_folder,
        classes, show_patient_ids, loaded_at, loaded_by, and its number of cases."""
        n = select(func.count()).where(cases.c.run_id == runs.c.id).scalar_subquery()
        query = select(
            *[c for c in runs.c if c.name not in ("run_key", "summary")], n.label("cases")
        )
        with self.engine.connect() as conn:
            return pd.DataFrame(conn.execute(query.order_by(runs.c.id)).mappings().all())

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
        if status not in ("pending", "reviewed", "all"):
            raise ReviewError(f"status must be pending, reviewed or all; got {status!r}")
        latest = _latest().subquery()
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
            query = query.where(cases.c.run_id == _whole(run_id, "run id"))
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
        query = query.order_by(
            cases.c.priority_tier, cases.c.priority_score.desc(), cases.c.run_id, cases.c.id
        )
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
            row = self._case_row(conn, case_id)
            history = self._history(conn, row.id)
        data = dict(row._mapping)
        data["case_id"] = data.pop("id")
        data["decision"] = history[0] if history else None
        return data

    def history(self, case_id: int) -> list[dict[str, Any]]:
        """The case's decisions, newest first (the first is current): dicts with
        decision_id, reviewer, decision, corrected_label, notes, decided_at, bundle_id,
        current. Raises ReviewError for an unknown case id."""
        with self.engine.connect() as conn:
            return self._history(conn, self._case_row(conn, case_id).id)

    def audit_log(self, case_id: int | None = None, run_id: int | None = None) -> pd.DataFrame:
        """Audit rows (id, at, actor, action, run_id, case_id, details), oldest first."""
        query = select(audit).order_by(audit.c.id)
        if case_id is not None:
            query = query.where(audit.c.case_id == _whole(case_id, "case id"))
        if run_id is not None:
            query = query.where(audit.c.run_id == _whole(run_id, "run id"))
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
        table = self.worklist(run_id=run_id, status="all")
        figures: dict[str, Any] = {"cases": len(table)} | _counts(table)
        figures["pending"] = figures["cases"] - figures["reviewed"]
        figures["referred"] = int(table["refer"].sum()) if len(table) else 0
        figures["ood"] = int(table["ood"].sum()) if len(table) else 0
        for name, column in (("per_class", "predicted_class"), ("per_site", "site")):
            groups = table.assign(**{column: table[column].fillna("(none)")}).groupby(column)
            rows = [{column: key, "cases": len(g)} | _counts(g) for key, g in groups]
            columns = [column, "cases", "reviewed", *DECISIONS, "agreement_rate"]
            figures[name] = pd.DataFrame(rows, columns=columns)
        return figures

    # ------------------------------------------------------------------ helpers

    def _write(self):
        """A write transaction (see :func:`medres.review.db.write_transaction`)."""
        return write_transaction(self.engine)

    def _audit(self, conn: Connection, actor: str, action: str, **row: Any) -> None:
        """Append one audit row inside the caller's transaction."""
        conn.execute(insert(audit).values(at=_now(), actor=actor, action=action, **row))

    def _case_row(self, conn: Connection, case_id: int):
        case_id = _whole(case_id, "case id")
        query = (
            select(cases, runs.c.classes, runs.c.outdir, runs.c.show_patient_ids)
            .join(runs, runs.c.id == cases.c.run_id)
            .where(cases.c.id == case_id)
        )
        row = conn.execute(query).first()
        if row is None:
            raise ReviewError(
                f"no case {case_id} in this review store; take a case_id from the worklist"
            )
        return row

    def _history(self, conn: Connection, case_id: int) -> list[dict[str, Any]]:
        query = (
            select(decisions.c.id.label("decision_id"), *list(decisions.c)[2:])
            .where(decisions.c.case_id == case_id)
            .order_by(decisions.c.id.desc())
        )
        rows = [dict(r) for r in conn.execute(query).mappings()]
        for n, row in enumerate(rows):
            row["current"] = n == 0
        return rows

    def _current(self, run_id: int | None) -> pd.DataFrame:
        """Every case's current decision: decision_id, decision, corrected_label,
        reviewer, decided_at, bundle_id, scan_id, path, predicted_class."""
        latest = _latest().subquery()
        query = (
            select(
                decisions.c.id.label("decision_id"),
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
            query = query.where(cases.c.run_id == _whole(run_id, "run id"))
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        columns = [c.name for c in query.selected_columns]
        return pd.DataFrame(rows, columns=columns)


def _whole(value: Any, what: str) -> int:
    """``value`` as a Python int (numpy integers and digit strings included)."""
    try:
        return int(str(value).strip())
    except ValueError:
        raise ReviewError(f"{what} must be a whole number; got {value!r}") from None


def _latest():
    """SELECT case_id, the id of its latest decision."""
    return select(decisions.c.case_id, func.max(decisions.c.id).label("decision_id")).group_by(
        decisions.c.case_id
    )


def _check_label(case, decision: str, label: str | None) -> str | None:
    """The corrected label to store for ``decision`` on ``case`` (None unless disagree)."""
    classes = list(case.classes)
    if label is not None and label not in classes:
        raise ReviewError(
            f"{label!r} is not one of this run's classes {classes}; choose one of them"
        )
    if decision == "disagree":
        if label is None:
            raise ReviewError(
                f"a disagree decision needs the corrected label (one of {classes}); "
                "choose uncertain if you cannot tell"
            )
        if label == case.predicted_class:
            raise ReviewError(f"{label!r} is the predicted class; record agree instead of disagree")
        return label
    if label is not None and not (decision == "agree" and label == case.predicted_class):
        raise ReviewError(
            f"an {decision} decision takes no corrected label; choose disagree to correct "
            f"the predicted class {case.predicted_class!r} to {label!r}"
        )
    return None


def _counts(table: pd.DataFrame) -> dict[str, Any]:
    counts = {d: int((table["decision"] == d).sum()) for d in DECISIONS}
    judged = counts["agree"] + counts["disagree"]
    return {
        "reviewed": int(table["decision"].notna().sum()),
        **counts,
        "agreement_rate": counts["agree"] / judged if judged else None,
    }


def _bundles(out) -> list[dict[str, str]]:
    """The run's bundles as ``[{"id", "checksum"}]`` (job.json; ensembles list several)."""
    bundles = out.job.get("bundles") or out.summary.get("bundles")
    if bundles:
        return bundles
    first = out.predictions.iloc[0]
    return [{"id": str(first["bundle_id"]), "checksum": str(first["bundle_checksum"])}]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
