"""Sync several mail accounts at once (``replytime sync``).

Accounts are synced by at most ``jobs`` worker threads (default ``min(4, accounts)``). Each
worker opens its own cache connection, holds that account's lock (so a second sync of the
same account, from any process or host, is refused with exit 1) and runs the account's
connector, which keeps its own retry and quota state (a Gmail account stays within its
own per-user quota). A failing account does not stop the others. When every account is
done, the threads are rebuilt once for the whole cache.

Progress: on a terminal, one rich display with a bar per account; otherwise nothing until
each account's one-line summary. Errors are one line each, naming the account; the exit
code is the worst one (4 source unreachable > 3 auth > 2 config > 1 locked).
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from rich.progress import Progress as RichProgress

from replytime.config import Account, Config
from replytime.errors import INTERNAL_ERROR, ReplytimeError, UsageError
from replytime.progress import Progress
from replytime.sources import SyncStats

SYNCABLE = ("gmail", "imap", "microsoft")
DEFAULT_MAX_JOBS = 4


def choose_accounts(config: Config, names: Sequence[str] | None) -> list[Account]:
    """The accounts to sync: those named (each once, in order), else every gmail, imap and
    microsoft account of the config. Refuses unknown names and file sources before anything
    starts."""
    if names:
        chosen: list[Account] = []
        for name in dict.fromkeys(names):
            acct = config.account(name)
            if acct.type not in SYNCABLE:
                raise UsageError(f"account {acct.name!r} is a {acct.type} source: use import")
            chosen.append(acct)
        return chosen
    chosen = [a for a in config.accounts if a.type in SYNCABLE]
    if not chosen:
        raise UsageError(
            "no gmail, imap or microsoft accounts in the config; add [[accounts]] or use import"
        )
    return chosen


def connector_for(account: Account) -> ModuleType:
    if account.type == "gmail":
        from replytime.sources import gmail

        return gmail
    if account.type == "imap":
        from replytime.sources import imap

        return imap
    if account.type == "microsoft":
        from replytime.sources import msgraph

        return msgraph
    raise UsageError(f"account {account.name!r} is a {account.type} source: use import")


@dataclass
class Outcome:
    """How one account's sync ended."""

    account: str
    stats: SyncStats | None = None
    error: ReplytimeError | None = None
    crash: BaseException | None = None  # a bug: re-raised once every account is done

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return self.error.exit_code
        return INTERNAL_ERROR if self.crash is not None else 0

    def line(self, debug: bool = False) -> str:
        """The one line printed for this account (after the traceback with ``debug``)."""
        exc = self.error or self.crash
        if debug and exc is not None:
            import traceback

            return "".join(traceback.format_exception(exc)) + self.line()
        if self.error is not None:
            return f"replytime: error: {self.account}: {self.error}"
        if self.crash is not None:
            return f"replytime: internal error: {self.account}: {self.crash!r}"
        s = self.stats
        assert s is not None
        return (
            f"{self.account}: {s.fetched} messages fetched, {s.removed} removed, "
            f"{s.skipped} skipped in {s.seconds:.1f}s"
        )


@dataclass
class SyncReport:
    outcomes: list[Outcome] = field(default_factory=list)  # in the accounts' order
    threads_changed: int = 0

    @property
    def exit_code(self) -> int:
        """The worst outcome: a crash (70) beats 4 beats 3 beats 2 beats 1 beats 0."""
        return max((o.exit_code for o in self.outcomes), default=0)


class _Lane(Progress):
    """One account's bar on the shared display (or a silent counter without a terminal)."""

    def __init__(self, label: str, bar: RichProgress | None) -> None:
        super().__init__(label, enabled=False)
        if bar is not None:
            self._bar = bar
            self._task = bar.add_task(label, total=None, note="waiting")

    def __enter__(self) -> _Lane:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None  # the display belongs to the Board

    def note(self, text: str) -> None:
        self._note = text
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, note=text)


class Board:
    """The combined progress display: on an interactive stderr, the usual replytime bar
    counting finished accounts, with one task per account under it; summary lines go
    above it (or straight to stderr without a terminal)."""

    def __init__(self, accounts: int, enabled: bool | None = None,
                 echo: Callable[[str], None] | None = None):
        self.overall = Progress(f"syncing {accounts} accounts", total=accounts, enabled=enabled)
        self._echo = echo or (lambda text: print(text, file=sys.stderr, flush=True))

    @property
    def bar(self) -> RichProgress | None:
        return self.overall._bar

    def __enter__(self) -> Board:
        self.overall.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.overall.__exit__(*exc)

    def lane(self, label: str) -> _Lane:
        return _Lane(label, self.bar)

    def finished(self, text: str) -> None:
        """One account is done: its line, and one step of the overall bar."""
        if self.bar is not None:
            self.bar.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            self._echo(text)
        self.overall.advance(1)


def _sync_one(db: Any, account: Account, config: Config, full: bool, lane: _Lane) -> Outcome:
    from replytime.store import open_cache

    cache = None
    lane.note("connecting")
    try:
        cache = open_cache(db)  # this worker's own connection
        with cache.lock_account(account.name):
            stats = connector_for(account).sync(cache, account, config, progress=lane, full=full)
        lane.note("done")
        return Outcome(account.name, stats=stats)
    except ReplytimeError as exc:
        lane.note("failed")
        return Outcome(account.name, error=exc)
    except Exception as exc:  # noqa: BLE001 - reported after the other accounts finish
        lane.note("failed")
        return Outcome(account.name, crash=exc)
    finally:
        if cache is not None:
            cache.close()


def sync_accounts(
    db: Any,
    accounts: Sequence[Account],
    config: Config,
    *,
    jobs: int | None = None,
    full: bool = False,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = None,
    debug: bool = False,
) -> SyncReport:
    """Sync ``accounts`` into the cache at ``db`` (path or URL), ``jobs`` at a time, then
    rebuild threads once. Each account's summary or error line goes to ``echo`` (stderr by
    default) as it finishes. Returns every outcome; an unexpected exception in a worker is
    re-raised after the others are done and the threads are rebuilt."""
    from replytime.analysis.rethread import refresh_threads
    from replytime.store import open_cache

    if not accounts:
        raise UsageError("no accounts to sync")
    for acct in accounts:
        connector_for(acct)  # a file source is refused before anything starts
    jobs = jobs if jobs is not None else min(DEFAULT_MAX_JOBS, len(accounts))
    if jobs < 1:
        raise UsageError("--jobs must be at least 1")
    # Create or migrate the cache once, before workers open their own connections.
    open_cache(db).close()

    report = SyncReport()
    todo: queue.Queue[tuple[int, Account]] = queue.Queue()
    for item in enumerate(accounts):
        todo.put(item)
    done: queue.Queue[tuple[int, Outcome]] = queue.Queue()
    with Board(len(accounts), progress, echo) as board:
        lanes = [board.lane(a.name) for a in accounts]

        def worker() -> None:
            while True:
                try:
                    i, acct = todo.get_nowait()
                except queue.Empty:
                    return
                done.put((i, _sync_one(db, acct, config, full, lanes[i])))

        # Daemon threads: an interrupted sync exits at once; every committed batch is kept
        # and the next sync resumes from the saved state.
        for n in range(min(jobs, len(accounts))):
            threading.Thread(target=worker, name=f"sync-{n}", daemon=True).start()
        results: dict[int, Outcome] = {}
        while len(results) < len(accounts):
            try:
                i, outcome = done.get(timeout=0.2)  # wakes up for Ctrl-C
            except queue.Empty:
                continue
            results[i] = outcome
            board.finished(outcome.line(debug))
    report.outcomes = [results[i] for i in range(len(accounts))]
    # Whatever failed, what was synced is kept: thread it once, for every account.
    cache = open_cache(db)
    try:
        report.threads_changed = refresh_threads(cache, config)
    finally:
        cache.close()
    crashes = [o.crash for o in report.outcomes if o.crash is not None]
    if crashes:
        raise crashes[0]
    return report
