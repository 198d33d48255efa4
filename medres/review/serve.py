"""``medres review serve``: the ``streamlit run`` command line for the review app.

The app's source is the top-level ``app/`` folder of the checkout; it installs as the
``medres_app`` package (``[tool.setuptools]`` in pyproject.toml), so
:func:`app_script` finds ``Home.py`` through :mod:`importlib.resources`: the checkout's
``app/`` in an editable install, ``site-packages/medres_app/`` in a normal one. The
library only locates the app's files; it never imports its pages. The app reads the
store and users file from environment variables (:mod:`medres.review.ui`), so no secret
or path appears on the command line of the server process.

Organisation sign-in (OpenID Connect through ``st.login``) is configured by an auth file:
a TOML file with Streamlit's ``[auth]`` section (:data:`AUTH_KEYS`), readable by its owner
only, handed to Streamlit as a secrets file (``--secrets.files PATH``): its path is on the
command line, its contents never are.
"""

from __future__ import annotations

import os
import stat
import sys
import tomllib
from importlib import resources
from importlib.util import find_spec
from pathlib import Path

from medres.errors import ReviewError
from medres.review.ui import STORE_ENV, USERS_ENV

APP_PACKAGE = "medres_app"  # app/ as installed; its pages are views/*.py beside Home.py
APP_ENTRY = "Home.py"
AUTH_FILE = "review_auth.toml"  # the default auth file, beside the store
# what st.login() (the default provider) needs in [auth]: Streamlit's own names
AUTH_KEYS = ("redirect_uri", "cookie_secret", "client_id", "client_secret", "server_metadata_url")
CALLBACK_PATH = "/oauth2callback"  # where Streamlit receives the identity provider's answer


def app_script() -> Path:
    """The review app's entry script; ReviewError when this installation lacks it."""
    try:
        script = resources.files(APP_PACKAGE).joinpath(APP_ENTRY)
    except ModuleNotFoundError:
        script = None
    # Streamlit runs a file and finds the pages beside it (views/...), so the app must be
    # plain files on disk, which is how pip installs a wheel (not a zip import).
    if not isinstance(script, Path) or not script.is_file():
        raise ReviewError(
            f"the review app ({APP_PACKAGE}/{APP_ENTRY}) is not installed with medres; "
            "reinstall medres (pip install . or pip install -e . from its source checkout)"
        )
    return script.resolve()


def default_auth_path(store: str | Path | None = None) -> Path:
    """The auth file beside a SQLite store file (``review_auth.toml`` in its folder), or in
    the current folder for a database URL or no store (as the users file)."""
    if store is None or "://" in str(store):
        return Path(AUTH_FILE)
    return Path(store).expanduser().resolve().parent / AUTH_FILE


def check_auth_file(path: str | Path) -> Path:
    """``path`` made absolute, once it is an auth file the app can sign in with.

    Raises:
        ReviewError: the file is missing or unreadable, can be read by other users (it
            holds the client secret and the cookie-signing secret), is not TOML, lacks an
            ``[auth]`` section or one of :data:`AUTH_KEYS`, its ``redirect_uri`` does not
            end with ``/oauth2callback``, or Authlib (which ``st.login`` needs) is missing.
    """
    path = Path(path).expanduser().resolve()
    example = "\n".join(f'  {key} = "..."' for key in AUTH_KEYS)
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as e:
        raise ReviewError(f"cannot read the auth file {path}: {e.strerror}") from e
    if mode & (stat.S_IRWXG | stat.S_IRWXO):  # as pacs.url's credentials file
        raise ReviewError(
            f"the auth file {path} can be read by other users (mode {stat.S_IMODE(mode):o}) "
            f"and holds the client and cookie secrets; make it private with: chmod 600 {path}"
        )
    try:
        section = tomllib.loads(text).get("auth")
    except tomllib.TOMLDecodeError as e:
        raise ReviewError(f"the auth file {path} is not TOML: {e}") from None
    if not isinstance(section, dict):
        raise ReviewError(
            f"the auth file {path} has no [auth] section; write:\n  [auth]\n{example}"
        )
    missing = [k for k in AUTH_KEYS if not isinstance(section.get(k), str) or not section[k]]
    if missing:
        raise ReviewError(
            f"the auth file {path} lacks {', '.join(missing)} in its [auth] section; "
            f"it needs:\n  [auth]\n{example}"
        )
    if not section["redirect_uri"].endswith(CALLBACK_PATH):
        raise ReviewError(
            f"the auth file's redirect_uri {section['redirect_uri']!r} must end with "
            f"{CALLBACK_PATH}, the app's address plus {CALLBACK_PATH} "
            f"(e.g. https://review.example.org{CALLBACK_PATH}), registered as such with "
            "the identity provider"
        )
    if find_spec("authlib") is None:
        raise ReviewError(
            "organisation sign-in needs Authlib, which is not installed: "
            "pip install 'Authlib>=1.3.2'"
        )
    return path


def streamlit_command(
    store: str,
    users: Path,
    host: str = "127.0.0.1",
    port: int = 8501,
    auth: Path | None = None,
) -> tuple[list[str], dict[str, str]]:
    """``(argv, environment)`` that serve the app on ``host:port`` for ``store``.

    Headless (no browser opened), no usage statistics sent, no file watcher; the store
    (a SQLite path made absolute, or a database URL) and the users file travel in
    :data:`STORE_ENV` and :data:`USERS_ENV`. The auth file ``auth`` (default:
    :func:`default_auth_path`, when it exists) turns on the organisation sign-in: it is
    checked (:func:`check_auth_file`) and given to Streamlit as its secrets file.

    Raises:
        ReviewError: the auth file is refused (:func:`check_auth_file`).
    """
    if auth is None and default_auth_path(store).is_file():
        auth = default_auth_path(store)
    secrets = [] if auth is None else ["--secrets.files", str(check_auth_file(auth))]
    location = store if "://" in store else str(Path(store).expanduser().resolve())
    argv = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app_script()),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "minimal",
        *secrets,
    ]
    environment = {
        **os.environ,
        STORE_ENV: location,
        USERS_ENV: str(Path(users).expanduser().resolve()),
    }
    return argv, environment
