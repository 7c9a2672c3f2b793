"""The Python API: every report as a pandas DataFrame, from a cache and a config.

    import replytime
    a = replytime.analyse(db="cache.sqlite", config="replytime.toml")
    a.reps(since="last-week")            # per-rep table
    a.leads(since="2026-11-02")          # one row per lead, traceable by message id

The CLI is a thin layer over these functions; the work is done in ``replytime.analysis``
(docs/architecture.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from replytime.analysis.leadset import Basis, LeadSet, Selection
from replytime.analysis.reports import Analysis
from replytime.analysis.rethread import refresh_threads
from replytime.config import Config, load_config
from replytime.store import Cache, open_cache

__all__ = ["Analysis", "Basis", "LeadSet", "Selection", "analyse", "import_files",
           "refresh_threads"]


def analyse(
    db: str | os.PathLike[str] | Cache | None = None,
    config: str | os.PathLike[str] | Config | None = None,
    *,
    as_of: datetime | str | None = None,
) -> Analysis:
    """Open a cache and a config (paths, or None for the defaults) for reporting."""
    cfg = config if isinstance(config, Config) else load_config(config)
    cache = db if isinstance(db, Cache) else open_cache(db, create=False)
    return Analysis(cache, cfg, as_of=as_of)


def import_files(
    paths: Sequence[str | os.PathLike[str]],
    db: str | os.PathLike[str] | Cache | None = None,
    config: str | os.PathLike[str] | Config | None = None,
    *,
    account: str = "import",
) -> object:
    """Import mbox / Maildir / .eml paths into the cache; returns the SyncStats."""
    from replytime.sources.files import import_paths

    cfg = config if isinstance(config, Config) else load_config(config)
    cache = db if isinstance(db, Cache) else open_cache(db)
    with cache.lock_account(account):
        stats = import_paths(cache, [Path(p) for p in paths], account=account,
                             keep=cfg.kept_headers())
    refresh_threads(cache, cfg)
    return stats
