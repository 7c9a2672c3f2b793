"""Parsing in forked worker processes beside the single cache writer, results in order.

The offline import and the IMAP connector both have one process that owns the cache
connection (the writer) and CPU-bound header parsing that can run beside it. ``ordered_map``
runs the parsing in a small pool of forked processes and hands the results back in
submission order, so the cache ends the same as when everything runs in one process, and
keeps only a few jobs in flight, so memory stays flat however long the input is.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple


class Done(NamedTuple):
    """A job whose result is already known: passed through in its place, no worker needed."""

    value: Any


def default_workers() -> int:
    """Parser processes beside the writer: one per core, at most 2 (measured on 2 cores;
    more only adds processes competing with the writer and the mail server)."""
    return min(2, os.cpu_count() or 1)


SETTLE_SECONDS = 10.0  # at most this long for the jobs in flight when stopping early

# Blocked while the pool starts: its threads keep the mask, so every worker, also one the
# pool forks later to replace a dead one, starts with them blocked until ``quiet_worker``
# has set them up. Otherwise a Ctrl-C landing between a fork and the initializer killed the
# new worker with the parent's handler; the pool forked a replacement while the parent was
# stopping, and that orphan kept the parent waiting for it (or outlived it).
_STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


def quiet_worker(nice: int = 0) -> None:
    """Pool initializer. A terminal's Ctrl-C reaches the whole process group; only the parent
    acts on it (it stops the pool). A worker dying of KeyboardInterrupt would print a traceback,
    and one killed while sending a result leaves the pool's queue locked: the import hangs.
    ``nice`` lowers the worker's priority (see ``ordered_map``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The CLI turns SIGTERM into a clean stop; a worker must just die when the pool ends it.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Forked with both blocked (see ``_STOP_SIGNALS``): a Ctrl-C that came meanwhile is
    # dropped now, as the parent handles it.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    if nice:
        with contextlib.suppress(OSError):  # a lower priority is a wish, not a need
            os.nice(nice)


def ordered_map(
    fn: Callable[..., Any],
    jobs: Iterable[tuple[Any, ...] | Done],
    workers: int,
    *,
    window: int | None = None,
    nice: int = 0,
    on_wait: Callable[[], object] | None = None,
) -> Iterator[Any]:
    """``fn(*job)`` for every job (a ``Done`` job: its value), computed in ``workers`` forked
    processes and yielded in job order. At most ``window`` jobs (default: ``workers + 2``,
    every worker busy and one result ready for the writer) are in flight.

    ``jobs`` is consumed lazily in this process, so it may read its input as it goes (a
    socket, a directory walk). If it raises an ``Exception``, the results of the jobs already
    submitted are still yielded (the caller can keep that work) before the error is raised.
    Closing the generator early stops the workers at once.

    ``nice`` > 0 runs the workers at a lower priority than this process. When this process
    (reading the input, writing the cache) is the bottleneck, that keeps it from waiting for
    a core behind its own workers, which only need what it leaves over.

    ``on_wait`` is called once, the first time the window is full and its oldest result not
    ready: work for this process while it would only wait (in this thread, not another: a
    thread importing modules while workers fork could leave them a held import lock).
    """
    # fork: workers start at once and need nothing from the parent but the code of ``fn``;
    # they only parse bytes, never touch the cache connection or the progress display.
    ctx = multiprocessing.get_context("fork")
    window = window or workers + 2
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        pool = ctx.Pool(workers, initializer=quiet_worker, initargs=(nice,))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a pending Ctrl-C arrives here
    pending: collections.deque[Any] = collections.deque()
    with pool:
        try:
            try:
                for job in jobs:
                    pending.append(job if isinstance(job, Done) else pool.apply_async(fn, job))
                    while len(pending) >= window:
                        if on_wait is not None and not _ready(pending[0]):
                            on_wait()
                            on_wait = None
                        yield _result(pending.popleft())
            except Exception:
                while pending:
                    yield _result(pending.popleft())
                raise
            while pending:
                yield _result(pending.popleft())
        finally:
            _settle(pending)


def _settle(pending: collections.deque[Any], seconds: float = SETTLE_SECONDS) -> None:
    """Stopped early (Ctrl-C, an error, the caller closed us): let the jobs in flight end
    before the pool is terminated. A worker stopped in the middle of sending a big result
    holds the result queue's lock, and ``Pool.terminate`` then waits for it forever."""
    deadline = time.monotonic() + seconds
    for item in pending:
        if not isinstance(item, Done):
            item.wait(max(deadline - time.monotonic(), 0))


def _ready(item: Any) -> bool:
    return isinstance(item, Done) or item.ready()


def _result(item: Any) -> Any:
    return item.value if isinstance(item, Done) else item.get()
