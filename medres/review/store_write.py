"""Writes to the review store: a loaded run's cases, a decision's label, the audit row.

Plain functions that run inside the caller's write transaction (an open
:class:`~sqlalchemy.Connection`); :class:`~medres.review.store.ReviewStore` opens it.
Timestamps are ISO 8601 UTC text with microseconds.
"""

from __future__ import annotations

import contextlib
import getpass
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Connection, insert, select

from medres.errors import ReviewError
from medres.files import PRIVATE_MODE
from medres.review.schema import DECISIONS, READING, audit, cases, decisions, runs

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


@dataclass(frozen=True)
class LoadResult:
    """What :meth:`ReviewStore.load_run` did: the run's id, whether the run is new to the
    store, and how many cases it added (0 when the OUTDIR was loaded before, unchanged)."""

    run_id: int
    new: bool
    cases_added: int


def create_private(path: Path) -> None:
    """Create a missing SQLite file empty with mode 0600 before SQLite opens it: it holds
    scan paths and ids, and SQLite gives its -wal / -shm files the database file's mode.
    An existing file keeps its mode."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE))


def append_audit(conn: Connection, actor: str, action: str, **row: Any) -> None:
    """Append one audit row inside the caller's transaction."""
    conn.execute(insert(audit).values(at=now(), actor=actor, action=action, **row))


def load_cases(
    conn: Connection,
    out,
    key: str,
    show: bool,
    site: str | None,
    actor: str,
    salt: str,
    make_rows: Callable[..., list[dict[str, Any]]],
    blinded: bool = False,
) -> LoadResult:
    """Insert the run ``out`` (run key ``key``) and those of its case rows (``make_rows``)
    not held yet, with an audit row when anything was added.

    ReviewError when the run was loaded before with another ``show`` (show_patient_ids)
    or ``blinded``.
    """
    run = conn.execute(
        select(runs.c.id, runs.c.show_patient_ids, runs.c.blinded).where(runs.c.run_key == key)
    ).first()
    if run is not None:
        for option, held, given in (
            ("show_patient_ids", run.show_patient_ids, show),
            ("blinded", run.blinded, blinded),
        ):
            if bool(held) != bool(given):
                raise ReviewError(
                    f"{out.outdir} was loaded as run {run.id} with {option}={bool(held)}; "
                    "load it again without changing that option"
                )
    rows = make_rows(out, salt=salt, show_patient_ids=show, site=site)
    if run is None:
        run_id = _insert_run(conn, out, key, show, actor, blinded)
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
            details["blinded"] = bool(blinded)
        action = "load_run" if run is None else "reload_run"
        append_audit(conn, actor, action, run_id=run_id, details=details)
        if run is not None:
            conn.execute(runs.update().where(runs.c.id == run_id).values(summary=out.summary))
    return LoadResult(run_id, run is None, len(rows))


def _insert_run(conn: Connection, out, key: str, show: bool, actor: str, blinded: bool) -> int:
    """Insert the ``runs`` row of ``out`` and return its id."""
    return conn.execute(
        insert(runs).values(
            run_key=key,
            bundle_id="+".join(b["id"] for b in run_bundles(out)),
            bundle_checksum=run_bundles(out)[0]["checksum"],
            outdir=str(out.outdir),
            scan_folder=out.summary.get("folder"),
            classes=out.classes,
            show_patient_ids=show,
            loaded_at=now(),
            loaded_by=actor,
            summary=out.summary,
            blinded=bool(blinded),
        )
    ).inserted_primary_key[0]


def insert_decision(
    conn: Connection,
    case,
    reviewer: str,
    decision: str,
    label: str | None,
    notes: str,
    kind: str = READING,
) -> int:
    """Insert a checked decision on ``case`` (a :func:`~.store_read.case_row`) and its
    audit row (action ``decide``, or ``adjudicate`` for an adjudication); its id."""
    decision_id = conn.execute(
        insert(decisions).values(
            case_id=case.id,
            reviewer=reviewer,
            decision=decision,
            corrected_label=label,
            notes=notes or "",
            decided_at=now(),
            bundle_id=case.bundle_id,
            kind=kind,
        )
    ).inserted_primary_key[0]
    details = {"decision_id": decision_id, "decision": decision, "corrected_label": label}
    action = "decide" if kind == READING else "adjudicate"
    append_audit(conn, reviewer, action, run_id=case.run_id, case_id=case.id, details=details)
    return int(decision_id)


def reviewer_name(name: str | None, who: str = "reviewer") -> str:
    """``name`` stripped; ReviewError when empty."""
    name = (name or "").strip()
    if not name:
        raise ReviewError(f"a decision needs the {who}'s name; sign in first")
    return name


def check_decision(decision: str, label: str | None) -> str | None:
    """ReviewError unless ``decision`` is one of :data:`DECISIONS`; ``label`` stripped
    (None when empty)."""
    if decision not in DECISIONS:
        raise ReviewError(f"decision must be one of {list(DECISIONS)}; got {decision!r}")
    return None if label is None else str(label).strip() or None


def check_label(case, decision: str, label: str | None) -> str | None:
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


def export_table(current: pd.DataFrame, disputed: set[int] = frozenset()) -> pd.DataFrame:
    """The labels export (:data:`EXPORT_COLUMNS`, one row per path, sorted) from every
    case's current decision (an adjudication where there is one): agree / disagree only,
    the latest per path, leaving out the ``disputed`` case ids (readers disagree, not yet
    adjudicated)."""
    table = current[current["decision"].isin(["agree", "disagree"])]
    table = table[~table["case_id"].isin(list(disputed))]
    table = table.sort_values("decision_id").drop_duplicates("path", keep="last")
    table = table.assign(
        label=table["corrected_label"].where(
            table["decision"] == "disagree", table["predicted_class"]
        )
    )
    return table.sort_values("path").reset_index(drop=True)[list(EXPORT_COLUMNS)]


def run_bundles(out) -> list[dict[str, str]]:
    """The run's bundles as ``[{"id", "checksum"}]`` (job.json; ensembles list several)."""
    bundles = out.job.get("bundles") or out.summary.get("bundles")
    if bundles:
        return bundles
    first = out.predictions.iloc[0]
    return [{"id": str(first["bundle_id"]), "checksum": str(first["bundle_checksum"])}]


def now() -> str:
    """The current UTC time as ISO 8601 text with microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def os_user() -> str:
    """The operating-system user, or ``unknown``."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
