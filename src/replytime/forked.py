"""One computation in a forked child process, beside the parent's own work.

A first import's serial tail writes the thread ids (SQLite, one core) while the thread
keys and the kept-lead match of the same messages (pandas, the other core) can already be
computed: the child gets the parent's memory by ``fork`` (nothing is pickled on the way
in), computes, and sends each result back through a pipe as soon as it has it, so the
parent can write the first while the child computes the next. The child never touches the
parent's cache connection, and ends with ``os._exit`` (no atexit handlers, no finalizers
closing the parent's files). Anything that goes wrong in the child (or no ``fork`` on this
platform) makes ``take`` return None from then on: the caller then computes what is left
in its own process, so the outcome is the same.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import threading
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def _child(compute: Callable[[], Iterable[Any]], send: Any) -> None:
    # Ctrl-C reaches the whole process group: only the parent acts on it (and kills this
    # child); SIGTERM from the parent must just end it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        for value in compute():
            send.send(value)
    except BaseException:  # the parent computes the rest itself  # noqa: BLE001
        with contextlib.suppress(BaseException):
            send.send(None)
    finally:
        send.close()
        os._exit(0)


class Forked(Generic[T]):
    """``compute()``, an iterable of values (none of them None), run in a forked child;
    ``take()`` waits for the next value. A thread of the parent receives each value as it
    is sent, so the child never waits for the parent to ask before it computes the next."""

    def __init__(self, compute: Callable[[], Iterable[T]]) -> None:
        self._proc: Any = None
        self._values: queue.SimpleQueue[T | None] = queue.SimpleQueue()
        self._receiver: threading.Thread | None = None
        if "fork" not in multiprocessing.get_all_start_methods():
            return
        ctx = multiprocessing.get_context("fork")
        recv, send = ctx.Pipe(duplex=False)
        try:
            self._proc = ctx.Process(target=_child, args=(compute, send), daemon=True)
            self._proc.start()
        except OSError:  # no process to spare: computed in the parent instead
            self._proc = None
            recv.close()
            return
        finally:
            send.close()
        self._receiver = threading.Thread(target=self._receive, args=(recv,), daemon=True,
                                          name="replytime-forked")
        self._receiver.start()

    def _receive(self, recv: Any) -> None:
        try:
            while True:
                value = recv.recv()
                self._values.put(value)
                if value is None:
                    break
        except (EOFError, OSError):  # the child ended (or was stopped) without a word
            self._values.put(None)
        finally:
            recv.close()

    def take(self) -> T | None:
        """The child's next value; None once it failed, sent everything, or never started
        (the child is then gone)."""
        if self._proc is None:
            return None
        value = self._values.get()
        if value is None:
            self._end()
        return value

    def cancel(self) -> None:
        """Stop the child, if it runs (the parent gave up on what is left)."""
        if self._proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self._proc.kill()
        self._end()

    def _end(self) -> None:
        self._proc.join()
        if self._receiver is not None:
            self._receiver.join()
        self._proc = None
