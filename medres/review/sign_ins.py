"""Sign-ins to the review app: each attempt an audit row, and a name locked for a while
after too many failures in a row (a password guesser gets 5 tries per 15 minutes).

Audit actions: ``sign_in`` (accepted), ``sign_in_failed`` (wrong name or password),
``sign_in_locked`` (refused without checking: the name is locked), ``sign_out``. The
``actor`` is the name typed, as given.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from medres.review.db import write_transaction
from medres.review.schema import audit
from medres.review.store import ReviewStore
from medres.review.store_write import append_audit

MAX_FAILURES = 5  # wrong passwords in a row before a name is locked
LOCK = timedelta(minutes=15)  # how long, from the last failure


def locked_until(store: ReviewStore, name: str, at: datetime | None = None) -> datetime | None:
    """When ``name`` may sign in again, if it is locked now (None: it is not).

    Locked: :data:`MAX_FAILURES` failed attempts since its last accepted sign-in, the
    latest less than :data:`LOCK` ago."""
    at = at or datetime.now(UTC)
    query = (
        select(audit.c.action, audit.c.at)
        .where(audit.c.actor == name, audit.c.action.in_(("sign_in", "sign_in_failed")))
        .order_by(audit.c.id.desc())
        .limit(MAX_FAILURES)
    )
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
    if len(rows) < MAX_FAILURES or any(action == "sign_in" for action, _ in rows):
        return None
    until = datetime.fromisoformat(rows[0].at) + LOCK
    return until if until > at else None


def record(store: ReviewStore, name: str, action: str) -> None:
    """Append the audit row of one sign-in attempt or sign-out."""
    with write_transaction(store.engine) as conn:
        append_audit(conn, name, action, details={})
