"""``medres review serve``: the ``streamlit run`` command line for the review app.

The app's source is the top-level ``app/`` folder of the checkout; it installs as the
``medres_app`` package (``[tool.setuptools]`` in pyproject.toml), so
:func:`app_script` finds ``Home.py`` through :mod:`importlib.resources`: the checkout's
``app/`` in an editable install, ``site-packages/medres_app/`` in a normal one. The
library only locates the app's files; it never imports its pages. The app reads the
store and users file from environment variables (:mod:`medres.review.ui`), so no secret
or path appears on the command line of the server process.
"""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path

from medres.errors import ReviewError
from medres.review.ui import STORE_ENV, USERS_ENV

APP_PACKAGE = "medres_app"  # app/ as installed; its pages are views/*.py beside Home.py
APP_ENTRY = "Home.py"


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


def streamlit_command(
    store: str, users: Path, host: str = "127.0.0.1", port: int = 8501
) -> tuple[list[str], dict[str, str]]:
    """``(argv, environment)`` that serve the app on ``host:port`` for ``store``.

    Headless (no browser opened), no usage statistics sent, no file watcher; the store
    (a SQLite path made absolute, or a database URL) and the users file travel in
    :data:`STORE_ENV` and :data:`USERS_ENV`.
    """
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
    ]
    environment = {
        **os.environ,
        STORE_ENV: location,
        USERS_ENV: str(Path(users).expanduser().resolve()),
    }
    return argv, environment
