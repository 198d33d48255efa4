"""The database connection: SQLite settings that let several reviewers write at once.

On SQLite: WAL journal (readers never block the writer), a 30 s busy timeout (a writer
waits for another instead of failing), foreign keys on, and explicit ``BEGIN`` /
``BEGIN IMMEDIATE`` (pysqlite's own transaction handling starts transactions too late:
a read followed by a write could fail with "database is locked" instead of waiting).
Other databases (PostgreSQL by URL) use SQLAlchemy's defaults.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import URL, Connection, Engine, create_engine, event

BUSY_TIMEOUT_S = 30


def make_engine(url: URL) -> Engine:
    """An engine for ``url``; SQLite gets the settings above."""
    if url.get_backend_name() != "sqlite":
        return create_engine(url)
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        write = conn.get_execution_options().get("medres_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A write transaction (SQLite: BEGIN IMMEDIATE, waiting up to the busy timeout for
    other writers), committed on success, rolled back on any exception."""
    with engine.connect() as conn:
        conn.execution_options(medres_write=True)
        with conn.begin():
            yield conn
