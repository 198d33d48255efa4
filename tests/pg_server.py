"""A real PostgreSQL server for the review store's tests: Debian's PostgreSQL, a fresh
cluster in a temporary folder, reachable through a Unix socket only (no TCP port at all:
``listen_addresses = ''``), stopped after the session, and SIGTERMed if the tests die.

``initdb`` refuses to run as root, so the cluster belongs to the ``postgres`` account
the Debian package creates. Without PostgreSQL, that account or root (to switch to it),
the tests that need it skip, saying which.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.pacs_servers import die_with_parent

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)
START_S = 30.0  # seconds the server may take to accept connections
_databases = itertools.count()


def _as_postgres(*command: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **kwargs,
    )


def _why_not() -> str | None:
    if PG_BIN is None or not (PG_BIN / "initdb").exists():
        return "PostgreSQL is not installed (Debian: apt-get install postgresql)"
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        return "initdb refuses root and the tests need root to run it as 'postgres'"
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return "there is no 'postgres' account (the Debian package creates it)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    return None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Path]:
    """A running PostgreSQL cluster; yields the folder of its Unix socket."""
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="medres-pg-"))
    data, sockets = folder / "data", folder / "run"
    sockets.mkdir()
    shutil.chown(folder, "postgres")
    shutil.chown(sockets, "postgres")
    done = _as_postgres(
        str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    log = open(folder / "server.log", "wb")  # noqa: SIM115 (the server's, closed below)
    server = subprocess.Popen(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            str(PG_BIN / "postgres"),
            "-D",
            str(data),
            "-k",
            str(sockets),
            "-c",
            "listen_addresses=",
            "-c",
            "fsync=off",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,  # runuser passes the SIGTERM on
    )
    try:
        deadline = time.monotonic() + START_S
        while _as_postgres(str(PG_BIN / "pg_isready"), "-h", str(sockets)).returncode != 0:
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((folder / "server.log").read_text())
            time.sleep(0.2)
        yield sockets
    finally:  # fast shutdown (runuser does not pass signals on to the server)
        _as_postgres(str(PG_BIN / "pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w")
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(30)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def new_database(sockets: Path) -> str:
    """A new empty database on the server; its SQLAlchemy URL (psycopg, Unix socket)."""
    name = f"medres_{os.getpid()}_{next(_databases)}"
    done = _as_postgres(str(PG_BIN / "createdb"), "-h", str(sockets), "-U", "postgres", name)
    assert done.returncode == 0, done.stderr
    return f"postgresql+psycopg://postgres@/{name}?host={sockets}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path) -> Path | str:
    """A new review store: a SQLite file, or a database on a real PostgreSQL server
    (tests/pg_server.py), as ``--store`` takes them."""
    if request.param == "sqlite":
        return tmp_path / "review.db"
    return new_database(request.getfixturevalue("postgres_server"))


def sql(db: Path | str, query: str) -> list[tuple]:
    """Rows of ``query`` on the store ``db`` (SQLite file or database URL)."""
    engine = create_engine(f"sqlite:///{db}" if isinstance(db, Path) else db)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(query))
            return [tuple(r) for r in result] if result.returns_rows else []
    finally:
        engine.dispose()
