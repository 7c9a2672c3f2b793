"""Fixtures shared by the suites: cache backends (SQLite file, real PostgreSQL server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg import PostgresServer

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One throw-away PostgreSQL cluster for the whole session, started on first use."""
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty cache location for each test: a SQLite file path, or the URL of a new
    database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "cache.sqlite")
    server: PostgresServer = request.getfixturevalue("pg_server")
    return server.create_database()
