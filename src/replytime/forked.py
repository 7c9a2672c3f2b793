"""One computation in a forked child process, beside the parent's own work.

A first import's serial tail writes the thread ids (SQLite, one core) while the kept-lead
match of the same messages (pandas, the other core) can already run: the child gets the
parent's memory by ``fork`` (nothing is pickled on the way in), computes, and sends its
result back through a pipe. The child never touches the parent's cache connection, and
ends with ``os._exit`` (no atexit handlers, no finalizers closing the parent's files).
Anything that goes wrong in the child (or no ``fork`` on this platform) returns None from
``result``: the caller then computes in its own process, so the outcome is the same.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def _child(compute: Callable[[], Any], send: Any) -> None:
    # Ctrl-C reaches the whole process group: only the parent acts on it (and kills this
    # child); SIGTERM from the parent must just end it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        send.send(compute())
    except BaseException:  # the parent computes it itself  # noqa: BLE001
        with contextlib.suppress(BaseException):
            send.send(None)
    finally:
        send.close()
        os._exit(0)


class Forked(Generic[T]):
    """``compute()`` started in a forked child; ``result()`` waits for it."""

    def __init__(self, compute: Callable[[], T]) -> None:
        self._proc: Any = None
        self._recv: Any = None
        if "fork" not in multiprocessing.get_all_start_methods():
            return
        ctx = multiprocessing.get_context("fork")
        self._recv, send = ctx.Pipe(duplex=False)
        try:
            self._proc = ctx.Process(target=_child, args=(compute, send), daemon=True)
            self._proc.start()
        except OSError:  # no process to spare: computed in the parent instead
            self._proc = None
        finally:
            send.close()

    def result(self) -> T | None:
        """The child's result; None when it failed (or never started)."""
        if self._proc is None:
            return None
        try:
            value = self._recv.recv()
        except (EOFError, OSError):
            value = None
        finally:
            self._recv.close()
            self._proc.join()
            self._proc = None
        return value

    def cancel(self) -> None:
        """Stop the child, if it runs (the parent gave up on its result)."""
        if self._proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self._proc.kill()
            self._proc.join()
            self._recv.close()
        self._proc = None
