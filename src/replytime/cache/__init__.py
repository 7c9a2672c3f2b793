"""The local cache of message headers. SQLite by default; the backend is chosen by URL."""

from __future__ import annotations

import os
from pathlib import Path

from replytime.cache.sqlite import SCHEMA_VERSION, SQLiteCache
from replytime.errors import UsageError

Cache = SQLiteCache  # the interface every backend offers

__all__ = ["Cache", "SCHEMA_VERSION", "SQLiteCache", "default_cache_path", "open_cache"]


def default_cache_path() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "replytime" / "cache.sqlite"


def open_cache(db: str | os.PathLike[str] | None = None, *, create: bool = True) -> SQLiteCache:
    """Open (and migrate) the cache at ``db``: a file path, ``sqlite:///path``, or None for the
    default in the user data directory."""
    target = str(db) if db is not None else str(default_cache_path())
    if target.startswith(("postgresql://", "postgres://")):
        raise UsageError("the PostgreSQL cache backend is not available in this version")
    if target.startswith("sqlite:///"):
        target = target[len("sqlite:///") - 1 :]
    return SQLiteCache(os.path.expandvars(target), create=create)
