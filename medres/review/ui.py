"""Streamlit helpers shared by the review app's pages (``app/``): settings, store, sign-in.

``medres review serve`` passes the store and the users file in two environment
variables (:data:`STORE_ENV`, :data:`USERS_ENV`); every page opens the store through
:func:`store` (one :class:`ReviewStore` per process, shared by the sessions) and calls
:func:`require_reviewer` before it shows anything about a case.

Every value from data shown through Markdown (titles, captions, messages, radio
options, tooltips) goes through :func:`medres.review.render.literal` first.

Sign-in: the local users file (:func:`medres.review.users.verify`), or OpenID Connect
through ``st.login`` when ``.streamlit/secrets.toml`` has an ``[auth]`` section (the
reviewer is then the identity provider's e-mail address).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import streamlit as st

from medres.errors import MedresError
from medres.review import sessions, sign_ins
from medres.review.render import literal
from medres.review.store import ReviewStore
from medres.review.users import default_users_path, list_users, verify

STORE_ENV = "MEDRES_REVIEW_STORE"
USERS_ENV = "MEDRES_REVIEW_USERS"
SIGN_IN_PAGE = "views/sign_in.py"
WORKLIST_PAGE = "views/worklist.py"
CASE_PAGE = "views/case.py"
DASHBOARD_PAGE = "views/dashboard.py"
ADJUDICATION_PAGE = "views/adjudication.py"
EXPORT_PAGE = "views/export.py"


@st.cache_resource(show_spinner=False)
def _open_store(location: str) -> ReviewStore:
    return ReviewStore(location, create=False)


def store() -> ReviewStore:
    """The review store named by ``$MEDRES_REVIEW_STORE``; an error and a stop without it."""
    location = os.environ.get(STORE_ENV, "").strip()
    if not location:
        st.error("No review store given: start the app with `medres review serve --store DB`.")
        st.stop()
    try:
        return _open_store(location)
    except MedresError as e:
        st.error(literal(e))  # it names the store's path
        st.stop()


def users_file() -> Path:
    """``$MEDRES_REVIEW_USERS``, else ``review_users.json`` beside the store."""
    given = os.environ.get(USERS_ENV, "").strip()
    return Path(given) if given else default_users_path(os.environ.get(STORE_ENV) or None)


def oidc_configured() -> bool:
    """True when the app's secrets configure ``st.login`` (an ``[auth]`` section)."""
    try:
        return "auth" in st.secrets
    except Exception:  # no secrets file at all: Streamlit raises rather than answer no
        return False


def reviewer() -> str | None:
    """The signed-in reviewer's name, or None.

    A session idle for :data:`~medres.review.sessions.IDLE` is signed out here; a new
    browser session (a reload, a bookmark) resumes from a valid session cookie."""
    state = st.session_state
    name = state.get("reviewer")
    now = datetime.now(UTC)
    if name and now - state.get("last_active", now) > sessions.IDLE:
        sign_out()
        st.session_state["signed_out_why"] = (
            f"You were signed out after {sessions.IDLE.seconds // 60} minutes without "
            "activity. Sign in again to go on."
        )
        return None
    if not name:
        token = st.context.cookies.get(sessions.COOKIE)
        name = sessions.reviewer_of(store(), token, list_users(users_file())) if token else None
        if name:
            sign_ins.record(store(), name, "session_resumed")
            state["reviewer"], state["session_token"] = name, token
    if name:
        state["last_active"] = now
        return str(name)
    if oidc_configured() and st.user.is_logged_in:
        name = str(st.user.get("email") or st.user.get("name") or "") or None
        if name:  # signed in at the identity provider: an audit row once per session
            sign_ins.record(store(), name, "sign_in")
            st.session_state["reviewer"] = name
        return name
    return None


def keep_session() -> None:
    """Re-issue the session cookie while the reviewer works (every
    :data:`~medres.review.sessions.REFRESH`), and write or clear it in the browser.
    Call once per run, after the navigation is chosen."""
    state = st.session_state
    name, token = state.get("reviewer"), state.get("session_token")
    if name and token:
        issued = sessions.issued_at(token)
        if issued is None or datetime.now(UTC) - issued > sessions.REFRESH:
            state["session_token"] = token = sessions.issue(store(), name)
    wanted = token if name else None
    if state.get("cookie_written", "") != (wanted or ""):
        _set_cookie(wanted)
        state["cookie_written"] = wanted or ""


def _set_cookie(token: str | None) -> None:
    """Write the session cookie (None: delete it) with a script run in the page; the
    token holds only hex digits and dots."""
    value, age = (token, int(sessions.IDLE.total_seconds())) if token else ("", 0)
    secure = "(location.protocol === 'https:' ? '; Secure' : '')"
    st.html(
        f"<script>document.cookie = '{sessions.COOKIE}={value}; Path=/; Max-Age={age}; "
        f"SameSite=Strict' + {secure};</script>",
        unsafe_allow_javascript=True,
    )


def sign_in(name: str, password: str) -> str | None:
    """Check a name and password against the users file; remember the reviewer on success
    (None), else say why. Every attempt is an audit row; after
    :data:`~medres.review.sign_ins.MAX_FAILURES` failures in a row the name is locked for
    a while, even for the right password. A wrong password and an unknown name are
    refused alike (no hint which)."""
    name = (name or "").strip()[:128]
    reviews = store()
    until = sign_ins.locked_until(reviews, name)
    if until is not None:
        sign_ins.record(reviews, name, "sign_in_locked")
        minutes = max(1, round((until - datetime.now(UTC)).total_seconds() / 60))
        return (
            f"Too many failed sign-ins for this name: try again in {minutes} minute(s). "
            "An administrator can see the attempts in the audit log."
        )
    if not verify(users_file(), name, password or ""):
        sign_ins.record(reviews, name, "sign_in_failed")
        return "Wrong reviewer name or password."
    sign_ins.record(reviews, name, "sign_in")
    st.session_state["reviewer"] = name
    st.session_state["session_token"] = sessions.issue(reviews, name)
    st.session_state["last_active"] = datetime.now(UTC)
    return None


def sign_out() -> None:
    """Forget the session's reviewer and open case (and end an OpenID Connect session);
    an audit row says so."""
    name = st.session_state.get("reviewer")
    if name:
        sign_ins.record(store(), name, "sign_out")  # ends this name's every session
    for key in list(st.session_state.keys()):
        if key != "cookie_written":  # so that keep_session deletes the cookie
            del st.session_state[key]
    if oidc_configured() and st.user.is_logged_in:
        st.logout()  # sends the browser to the identity provider's end of session, a
        st.stop()  # redirect that a rerun would drop: this run stops here instead


def require_reviewer() -> str:
    """The signed-in reviewer; otherwise a notice and a stop, before any case data."""
    name = reviewer()
    if name is None:
        st.warning("Sign in to see the worklist and the cases.")
        st.stop()
    return name


def open_case(case_id: int) -> None:
    """Make ``case_id`` the open case and go to the case view (its address names the
    case, so a reload or a bookmark comes back to it)."""
    st.session_state["case_id"] = int(case_id)
    st.switch_page(CASE_PAGE, query_params={"case": str(int(case_id))})


ORDER_KEY = "wl_order"  # the case ids of the worklist as last shown: its order and filters


def neighbour(case_id: int, step: int, fallback: list[int]) -> int | None:
    """The case ``step`` places after ``case_id`` (-1: before) in the worklist as the
    reader last saw it (its order and filters), else in ``fallback``; None at either end."""
    order = [int(c) for c in st.session_state.get(ORDER_KEY) or fallback]
    if case_id not in order:
        order = [case_id, *[c for c in fallback if c != case_id]]
    at = order.index(case_id) + step
    return order[at] if 0 <= at < len(order) else None


def current_case() -> int | None:
    """The case the reviewer opened (the ``?case=ID`` link, else the session's), or None."""
    linked = st.query_params.get("case")
    if linked and str(linked).isdigit():
        st.session_state["case_id"] = int(linked)
    value = st.session_state.get("case_id")
    return None if value is None else int(value)


def follow_link(signed_in: bool, page_path: str) -> None:
    """Open the case a ``?case=ID`` link asked for: one opened before sign-in waits for
    it; a bookmark opened signed in (a new browser session) goes straight there."""
    state = st.session_state
    linked = st.query_params.get("case")
    fresh = not state.get("session_started")
    state["session_started"] = True
    if linked and str(linked).isdigit() and (fresh or not signed_in):
        state["linked_case"] = int(linked)
    if signed_in and "linked_case" in state:
        wanted = state.pop("linked_case")
        if page_path != "case":
            open_case(wanted)


def badge(label: str, colour: str) -> None:
    """A coloured badge whose label shows as the text itself (it may hold class names):
    the ``:colour-badge[...]`` directive that ``st.badge`` writes, with the label through
    :func:`~medres.review.render.literal` (``st.badge`` escapes only the brackets)."""
    st.markdown(f":{colour}-badge[{literal(label)}]", width="content")
