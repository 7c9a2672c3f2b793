"""The local cache of message headers: the SQLite and PostgreSQL backends, their schema and
migrations, locks, and the lead-pairing SQL (``pairing``). SQLite by default; the backend is
chosen by URL: a file path or ``sqlite:///path`` for the embedded file, ``postgresql://...``
for a server.

May import: the core modules (``replytime.config``, ``errors``, ``model``, ``lists``,
``periods``, ``progress``) only. Never ``sources``, ``analysis``, ``output``, ``api`` or
``cli`` (tests/test_layout.py checks it)."""

from __future__ import annotations

import os
from pathlib import Path

from replytime.errors import UsageError
from replytime.store.base import CacheBase
from replytime.store.sqlite import SCHEMA_VERSION, SQLiteCache, close_sqlite_connections

Cache = CacheBase  # the interface every backend offers

__all__ = [
    "Cache", "SCHEMA_VERSION", "SQLiteCache", "close_open_caches", "default_cache_path",
    "open_cache",
]


def default_cache_path() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "replytime" / "cache.sqlite"


def open_cache(db: str | os.PathLike[str] | None = None, *, create: bool = True) -> CacheBase:
    """Open (and migrate) the cache at ``db``: a file path, ``sqlite:///path``, a
    ``postgresql://user@host:port/dbname`` URL, or None for the default file in the user
    data directory."""
    target = str(db) if db is not None else str(default_cache_path())
    if target.startswith(("postgresql://", "postgres://")):
        try:
            from replytime.store.postgres import PostgresCache
        except ImportError:
            raise UsageError(
                "the PostgreSQL cache needs psycopg 3: pip install 'psycopg[binary]'"
            ) from None
        return PostgresCache(target, create=create)
    if target.startswith("sqlite:///"):
        target = target[len("sqlite:///") - 1 :]
    return SQLiteCache(os.path.expandvars(target), create=create)


def close_open_caches() -> None:
    """Close what is still open of the caches this process opened, before an exit without
    interpreter teardown (the CLI's): SQLite files are then checkpointed, whole on their
    own. A PostgreSQL server ends a session whose client went away by itself."""
    close_sqlite_connections()
