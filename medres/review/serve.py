"""``medres review serve``: the ``streamlit run`` command line for the review app.

The app (``app/Home.py`` beside the ``medres`` package in a checkout) reads the store
and users file from environment variables (:mod:`medres.review.ui`), so no secret or
path appears on the command line of the server process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from medres.errors import ReviewError
from medres.review.ui import STORE_ENV, USERS_ENV

APP_SCRIPT = Path(__file__).resolve().parents[2] / "app" / "Home.py"


def app_script() -> Path:
    """The review app's entry script; ReviewError when this installation lacks it."""
    if not APP_SCRIPT.is_file():
        raise ReviewError(
            f"the review app is not at {APP_SCRIPT}; install medres from its source "
            "checkout (pip install -e .) so that app/ sits beside the medres package"
        )
    return APP_SCRIPT


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
