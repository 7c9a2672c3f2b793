"""Fixtures shared by the suites: cache backends (SQLite file, real PostgreSQL server)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from replytime.analysis import kept, rethread
from tests.pg import PostgresServer, memory_dir

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One throw-away PostgreSQL cluster for the whole session, started on first use."""
    with PostgresServer(parent=memory_dir()) as server:
        yield server


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty cache location for each test: a SQLite file path, or the URL of a new
    database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "cache.sqlite")
    server: PostgresServer = request.getfixturevalue("pg_server")
    return server.create_database()


@contextmanager
def no_kept_table(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The path without the kept lead table: leads paired from the messages on every
    report (as with form rules or label filters)."""
    with monkeypatch.context() as m:
        m.setattr(rethread, "_kept_state", lambda config: None)
        m.setattr(kept, "state_for", lambda config: None)
        yield


@pytest.fixture
def without_kept_table(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with no_kept_table(monkeypatch):
        yield


@pytest.fixture(scope="session", autouse=True)
def built_cli_once() -> Iterator[None]:
    """Typer rebuilds the click command from the app's signatures on every ``app()`` call
    (~45 ms); a real process calls it once. The suites call ``cli.main`` in-process
    thousands of times, so each app's command is built once for the session."""
    import typer.main

    build = typer.main.get_command
    built: dict[int, object] = {}

    def once(app: typer.Typer) -> object:
        if id(app) not in built:
            built[id(app)] = (app, build(app))
        return built[id(app)][1]

    typer.main.get_command = once
    yield
    typer.main.get_command = build
