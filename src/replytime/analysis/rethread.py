"""Keep thread ids current after writes, and the kept lead table with them
(``replytime.analysis.kept``). Checking costs a few small queries and loads no pandas, so a
sync or import that brought nothing new starts and ends quickly."""

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
    the rule that grouped each thread, thread_links the subject rule's joins.

    Then bring the kept leads up to date: the threads whose messages changed are matched
    again, or every lead when the config they were kept for changed (docs/definitions.md,
    "Lead"). Returns how many messages changed thread."""
    fingerprint = config.fingerprint()
    # Which kept-lead state this config needs (None: not kept); the hash is cheap.
    want = _kept_state(config)

    def threads_current() -> bool:
        return not force and cache.get_meta("threads_fingerprint") == fingerprint and not (
            cache.has_unthreaded()
        )

    def leads_current() -> bool:
        return want is None or cache.kept_leads_state()[0] == want

    if threads_current() and leads_current():
        return 0
    # pandas and Arrow compute: imported only when there is threading to do
    from replytime.analysis import kept
    from replytime.analysis.matcher import Roster
    from replytime.analysis.threads import group_threads

    # One process at a time brings threads and kept leads up to date together; the others
    # wait, then find them current.
    with cache.leads_lock():
        redo_threads = not threads_current()
        state, covered = cache.kept_leads_state()
        # Only new or re-threaded messages under the same roster: the changed threads are
        # all that changes (a removal clears the thread fingerprint: a full rebuild).
        incremental = (want is not None and state == want
                       and cache.get_meta("threads_fingerprint") == fingerprint)
        changed = 0
        changes = kept.Changes()
        if redo_threads:
            cache.invalidate_kept_leads()  # until the rows match the new thread ids
            roster = Roster(config)
            assign = kept.capturing(lambda df: group_threads(df, roster.is_internal),
                                    covered, changes)
            changed = cache.rebuild_threads(assign, fingerprint)
        if want is None:
            return changed
        if incremental and not changes.modified:
            if redo_threads:
                kept.update(cache, config, want, changes)
        else:
            kept.rebuild(cache, config, want)
    return changed


def kept_lead_counts(cache: Cache, config: Config, as_of_ms: int) -> tuple[int, int, int] | None:
    """(leads, unanswered, clamped) as of ``as_of_ms`` counted in the kept lead table, after
    bringing it up to date; None when leads are not kept for ``config`` (form rules, label
    filters). Without pandas: `status` on a current cache starts and ends quickly."""
    refresh_threads(cache, config)
    want = _kept_state(config)
    if want is None or cache.kept_leads_state()[0] != want:
        return None
    return cache.kept_lead_counts(as_of_ms)


def _kept_state(config: Config) -> str | None:
    # As kept.state_for, without importing pandas before it is needed.
    if config.leads.forms or config.leads.labels:
        return None
    return config.leads_fingerprint()
