"""Signed, expiring session tokens for the review app: a reload or a bookmark keeps a
reviewer signed in, an idle browser does not.

A token is ``<name, hex>.<issued, µs since 1970>.<HMAC-SHA256>``, keyed by a random
secret kept in the store's ``settings`` table (so every app process serving one store
accepts it). It is valid while all of these hold:

- its signature checks (constant-time compare);
- it was issued less than :data:`IDLE` ago: the app re-issues it while the reviewer
  works, so it lapses after that long without activity;
- its reviewer has not signed out since it was issued (a ``sign_out`` audit row ends
  every session of that name, on every browser);
- the reviewer is still in the users file.

The token carries no password and no patient data; the app stores it in a cookie
(``SameSite=Strict``, ``Secure`` over HTTPS). Hand-written rather than a JWT library:
one HMAC over two fields needs no algorithm negotiation to get wrong.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, select

from medres.review.db import write_transaction
from medres.review.schema import audit, settings
from medres.review.store import ReviewStore

COOKIE = "medres_review"  # the cookie's name
IDLE = timedelta(minutes=30)  # a session lapses after this long without activity
REFRESH = timedelta(minutes=5)  # re-issue a token older than this on activity
KEY_SETTING = "session_key"  # the settings row holding the signing secret


def session_key(store: ReviewStore) -> bytes:
    """The store's signing secret (32 random bytes, created on first use)."""
    query = select(settings.c.value).where(settings.c.name == KEY_SETTING)
    with store.engine.connect() as conn:
        found = conn.execute(query).scalar()
    if found is None:
        with write_transaction(store.engine) as conn:
            found = conn.execute(query).scalar()  # another process may have won the race
            if found is None:
                found = secrets.token_hex(32)
                conn.execute(insert(settings).values(name=KEY_SETTING, value=found))
    return bytes.fromhex(found)


def issue(store: ReviewStore, name: str, at: datetime | None = None) -> str:
    """A token for ``name``, issued ``at`` (now)."""
    at = at or datetime.now(UTC)
    body = f"{name.encode().hex()}.{_micros(at)}"
    return f"{body}.{_sign(session_key(store), body)}"


def issued_at(token: str) -> datetime | None:
    """When a well-formed token was issued (its signature unchecked), else None."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return datetime.fromtimestamp(int(parts[1]) / 1e6, UTC)


def reviewer_of(
    store: ReviewStore, token: str | None, users: list[str], at: datetime | None = None
) -> str | None:
    """The reviewer a valid token signs in (see the module's rules), else None."""
    at = at or datetime.now(UTC)
    if not token or token.count(".") != 2:
        return None
    body, signature = token.rsplit(".", 1)
    if not hmac.compare_digest(_sign(session_key(store), body), signature):
        return None
    try:
        name = bytes.fromhex(body.split(".")[0]).decode()
    except ValueError:
        return None
    issued = issued_at(token)
    if issued is None or not (at - IDLE < issued <= at + timedelta(minutes=1)):
        return None
    if name not in users or _signed_out_after(store, name, issued):
        return None
    return name


def _signed_out_after(store: ReviewStore, name: str, issued: datetime) -> bool:
    query = (
        select(audit.c.at)
        .where(audit.c.actor == name, audit.c.action == "sign_out")
        .order_by(audit.c.id.desc())
        .limit(1)
    )
    with store.engine.connect() as conn:
        last = conn.execute(query).scalar()
    return last is not None and datetime.fromisoformat(last) >= issued


def _sign(key: bytes, body: str) -> str:
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def _micros(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000)
