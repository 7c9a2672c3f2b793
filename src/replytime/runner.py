"""What the command line runs inside, with or without its parser (entry.run answers a plain
``replytime import`` without typer): the import command's body, one-line errors with the
exit codes of docs/commands.md, and the quick exit."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from replytime.errors import INTERNAL_ERROR, ReplytimeError

Echo = Callable[[str], None]

# What click.echo strips off a line written to a file or a pipe (click's _compat._ansi_re)
_ANSI = re.compile(r"\033\[[;?0-9]*[a-zA-Z]")


def plain_stderr() -> bool:
    # click.echo writes to a UTF-8 stderr as it is (it wraps a misconfigured one)
    stream = sys.stderr
    encoding = getattr(stream, "encoding", None) or ""
    return stream is not None and encoding.lower().replace("-", "") == "utf8"


def echo_err(text: str) -> None:
    """``typer.echo(text, err=True)`` for a UTF-8 stderr: ANSI codes dropped off a terminal."""
    stream = sys.stderr
    if not stream.isatty():
        text = _ANSI.sub("", text)
    stream.write(text + "\n")
    stream.flush()


# -- import ---------------------------------------------------------------------------------
def load_threading() -> None:
    """Import what thread assignment and the kept leads need (pandas, pyarrow: ~0.4 s) while
    the import waits for its parser workers, rather than before or after it."""
    import pyarrow.compute  # noqa: F401

    import replytime.analysis.kept  # noqa: F401
    import replytime.analysis.threads  # noqa: F401


def import_files(config: str | None, db: str | None, paths: list[Path], account: str,
                 echo: Echo) -> None:
    """``replytime import``: read the files into the cache, bring threads and kept leads up
    to date, print the summary (and the warning of a config without a team) with ``echo``."""
    from replytime.config import load_config
    from replytime.progress import Progress
    from replytime.sources.files import import_paths
    from replytime.store import open_cache

    cfg = load_config(config)
    cache = open_cache(db)
    # One writer per account; imports of other accounts may run at the same time.
    with cache.lock_account(account), Progress("importing") as progress:
        stats = import_paths(cache, paths, account=account, keep=cfg.kept_headers(),
                             progress=progress, on_wait=load_threading)
    threading_started = time.monotonic()
    from replytime.analysis.rethread import refresh_threads

    refresh_threads(cache, cfg)
    # The time and rate shown include threading: what the command took, not just reading.
    seconds = stats.seconds + time.monotonic() - threading_started
    rate = stats.fetched / seconds if seconds else 0
    unchanged = stats.extra.get("unchanged", 0)
    known = f", {unchanged} file{'' if unchanged == 1 else 's'} unchanged" if unchanged else ""
    echo(
        f"imported {stats.fetched} messages ({stats.skipped} skipped{known}) from "
        f"{len(paths)} path(s) in {seconds:.1f}s" + (f" ({rate:,.0f} msg/s)" if rate else "")
    )
    warn_without_team(cfg, echo)


def warn_without_team(cfg: Any, echo: Echo) -> None:
    """The warning of a config that names no internal address, after work that still stands
    (docs/configuration.md, "Without a team")."""
    problem = cfg.team_problem()
    if problem:
        echo(f"replytime: warning: {problem}")


# -- errors and exit ------------------------------------------------------------------------
class Stopped(BaseException):
    """A signal asked us to stop. Not a KeyboardInterrupt, which click would swallow."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, frame: object) -> None:
    raise Stopped(signum)


def guarded(call: Callable[[], Any], *, debug: bool, echo: Echo,
            usage: Callable[[Exception], int | None] | None = None) -> int:
    """``call()`` with one-line errors and the exit codes of docs/commands.md; ``usage``
    answers the command line's own errors (None: not one).

    Ctrl-C and SIGTERM stop at the next Python instruction; whole batches are committed
    (each is one transaction), so the message says the work so far is saved."""
    import signal

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        rc = call()
    except ReplytimeError as exc:
        if debug:
            _print_traceback()
        echo(f"replytime: error: {exc}")
        return exc.exit_code
    except Stopped as exc:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        what = "interrupted" if exc.signum == signal.SIGINT else "terminated"
        echo(f"replytime: {what}; work done so far is saved")
        return 128 + exc.signum
    except KeyboardInterrupt:
        echo("replytime: interrupted; work done so far is saved")
        return 130
    except BrokenPipeError:
        # The reader (head, less) went away; not an error for us.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # noqa: BLE001 - the last line of defence for users
        code = usage(exc) if usage is not None else None
        if code is not None:
            return code
        if debug:
            _print_traceback()
        echo(f"replytime: internal error: {exc!r} (run with --debug for details)")
        return INTERNAL_ERROR
    return rc if isinstance(rc, int) else 0


def _print_traceback() -> None:
    import traceback  # only with --debug: ~3 ms of every start otherwise

    traceback.print_exc()


def finish(code: int) -> None:
    """Exit with ``code``, quickly. The caches are closed (committed, and a SQLite file
    checkpointed so it is whole on its own), output is flushed and any worker process is
    stopped; the interpreter's teardown of pandas and Arrow, ~0.1 s of every report, is
    skipped."""
    import threading

    from replytime.store import close_open_caches

    # Only a process that started a pool has children; one that did not (an import that
    # found nothing new) never imports multiprocessing.
    multiprocessing = sys.modules.get("multiprocessing")
    if threading.active_count() > 1:
        # A thread still runs (an interrupted sync's workers, mid-write on their own
        # connections): the usual exit, which never closes a connection under a thread.
        sys.exit(code)
    close_open_caches()
    for child in multiprocessing.active_children() if multiprocessing else ():
        child.terminate()
        child.join(5)
    for stream in (sys.stdout, sys.stderr):
        # BrokenPipeError: the reader went away; ValueError: the stream was closed
        with contextlib.suppress(BrokenPipeError, ValueError):
            stream.flush()
    os._exit(code)
