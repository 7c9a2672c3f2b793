"""Keep thread ids current after writes. Checking costs two small queries and loads no
pandas, so a sync or import that brought nothing new starts and ends quickly."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from replytime.config import Config
    from replytime.store import Cache


def refresh_threads(cache: Cache, config: Config, *, force: bool = False) -> int:
    """Re-assign thread ids when there is something to do: a message without one (new, or
    changed since: the upsert clears it), a message removed, or another internal roster
    (the subject rule depends on who is external); always with ``force``. An import or sync
    that wrote nothing new therefore costs no threading at all. The threads table records
    the rule that grouped each thread, thread_links the subject rule's joins."""
    fingerprint = config.fingerprint()
    if not force and cache.get_meta("threads_fingerprint") == fingerprint and not (
        cache.has_unthreaded()
    ):
        return 0
    # pandas and Arrow compute: imported only when there is threading to do
    from replytime.analysis.matcher import Roster
    from replytime.analysis.threads import group_threads

    roster = Roster(config)
    return cache.rebuild_threads(lambda df: group_threads(df, roster.is_internal), fingerprint)
