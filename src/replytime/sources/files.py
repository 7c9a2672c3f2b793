"""Offline import: mbox, Maildir (plain, Maildir++, notmuch-style nesting), .eml files,
Google Takeout mbox, and directories of any of these.

Only header blocks are read, and all reading is streamed: a Maildir or .eml file is read up
to the blank line ending its headers, an mbox is scanned in large binary chunks keeping each
message's header block only, so memory stays flat whatever the mailbox size. Broken input is
never fatal: a place that is not a usable message is reported as skipped with a reason.

Locations are stable across re-imports: the absolute path with any Maildir flags suffix
(``:2,S``) stripped, so marking a message read is not a new place; for mbox the absolute path,
``#`` and the byte offset of the message's ``From`` line.

Folder and file names do not become labels. Export folder names are arbitrary (``cur``/``new``,
notmuch nesting, whatever a user named the unpacked archive), so a label taken from them would
make the same message's labels depend on where the export was unpacked; Takeout's
``X-Gmail-Labels`` header carries the real labels and ``headers.py`` maps it.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from replytime.errors import UsageError
from replytime.model import PROBLEM_TRUNCATED, MessageRecord, stored_message
from replytime.sources import SyncStats
from replytime.sources.headers import parse_header_block
from replytime.sources.pool import Done, default_workers, ordered_map

if TYPE_CHECKING:  # the cache pulls in pandas, progress rich: not needed to parse
    from replytime.progress import Progress
    from replytime.store import Cache

# What one found place is: (location, record or None, skip reason or None).
Found = tuple[str, MessageRecord | None, str | None]

FIRST_READ = 32 * 1024  # most header blocks fit; bigger ones are read on in doubling steps
MAX_HEADER = 4 * 1024 * 1024  # a header block this long is cut and flagged as truncated
MBOX_CHUNK = 1024 * 1024  # mbox files are scanned in chunks of this size

# Maildir keeps these beside messages; notmuch keeps its database in .notmuch.
_SKIP_DIRS = frozenset({".notmuch", "tmp"})
_META_PREFIXES = ("dovecot", "courier", "maildirfolder", "subscriptions")
_META_SUFFIXES = (".msf", ".lock")
# The first line of a message is a header field ("Name:"), of an mbox an envelope line.
_FIELD_START = re.compile(rb"[!-9;-~]+[ \t]*:")

REASON_EMPTY = "empty file"
REASON_NOT_MESSAGE = "not a message"
REASON_NO_HEADERS = "no usable headers"
REASON_NOT_FILE = "not a regular file"


def maildir_location(path: str) -> str:
    """The stable place of a Maildir or .eml file: the path without the flags suffix."""
    slash = path.rfind("/")
    for sep in (":2,", "!2,"):  # "!" is what some tools use where ":" is not allowed
        i = path.rfind(sep)
        if i > slash:
            return path[:i]
    return path


def _usable(record: MessageRecord) -> bool:
    # Something to identify or place the message by; otherwise it is only noise.
    return bool(record.message_id or record.from_addr or record.time_ms is not None)


def _is_meta(name: str) -> bool:
    # Maildir readers ignore dot files (Maildir spec); index files of mail programs are not
    # mail and are not worth a "skipped" count either.
    return name.startswith(".") or name.startswith(_META_PREFIXES) or name.endswith(_META_SUFFIXES)


def _reason(exc: OSError) -> str:
    return f"unreadable: {exc.strerror or exc.__class__.__name__}".lower()


# -- reading one message file -----------------------------------------------------------------
def _read_head(path: str) -> tuple[bytes, bool]:
    """The start of a file, up to the end of its header block (or MAX_HEADER), and whether
    that is the whole file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, FIRST_READ)
        if len(data) < FIRST_READ:
            return data, True
        if b"\n\n" in data or b"\r\n\r\n" in data:
            return data, False
        parts = [data]
        size = len(data)
        step = FIRST_READ
        while size <= MAX_HEADER:
            step = min(step * 2, MAX_HEADER + 1 - size)  # never more than the cap
            more = os.read(fd, step)
            if not more:
                return b"".join(parts), True
            # A blank line may straddle two reads: look at the seam too.
            tail = parts[-1][-3:] + more
            parts.append(more)
            size += len(more)
            if b"\n\n" in tail or b"\r\n\r\n" in tail:
                break
        return b"".join(parts), False
    finally:
        os.close(fd)


def _header_block(data: bytes, at_eof: bool) -> tuple[bytes, int]:
    """Cut ``data`` at the end of its header block; flag a block cut short."""
    lf = data.find(b"\n\n")
    crlf = data.find(b"\r\n\r\n", 0, lf + 1 if lf >= 0 else len(data))
    if lf >= 0 and (crlf < 0 or lf < crlf) and lf < MAX_HEADER:
        return data[: lf + 1], 0
    if 0 <= crlf < MAX_HEADER:
        return data[: crlf + 2], 0
    if len(data) > MAX_HEADER:
        # A huge header block (a header loop, a runaway generator): keep the first part.
        cut = data.rfind(b"\n", 0, MAX_HEADER)
        return data[: cut + 1 if cut > 0 else MAX_HEADER], PROBLEM_TRUNCATED
    # RFC 5322 allows a message without a body and without the blank line, so a block that
    # ends with a complete line at the end of the file is whole; one cut mid-line is not.
    if at_eof and data.endswith(b"\n"):
        return data, 0
    return data, PROBLEM_TRUNCATED


def _parse_file(path: str, data: bytes, at_eof: bool, keep: Sequence[str]) -> Found:
    location = maildir_location(path)
    if not data:
        return location, None, REASON_EMPTY
    start = 0
    while data.startswith((b"\n", b"\r\n"), start):  # tolerate leading blank lines
        start = data.index(b"\n", start) + 1
    if not _FIELD_START.match(data, start):
        return location, None, REASON_NOT_MESSAGE
    block, problems = _header_block(data[start:] if start else data, at_eof)
    record = parse_header_block(block, keep=keep, problems=problems, find_end=False)
    if not _usable(record):
        return location, None, REASON_NO_HEADERS
    return location, record, None


def _iter_file(path: str, keep: Sequence[str]) -> Iterator[Found]:
    """Messages in one file: an mbox if it starts with an envelope line, else one message."""
    try:
        data, at_eof = _read_head(path)
    except OSError as exc:
        yield maildir_location(path), None, _reason(exc)
        return
    if data.startswith(b"From "):
        yield from _iter_mbox(path, keep)
        return
    try:
        yield _parse_file(path, data, at_eof, keep)
    except Exception as exc:  # a parser bug must cost one message, never the import
        yield maildir_location(path), None, f"could not parse: {exc.__class__.__name__}"


# -- mbox -------------------------------------------------------------------------------------
def scan_mbox(
    f: BinaryIO, start: int = 0, end: int | None = None, chunk: int = MBOX_CHUNK
) -> Iterator[tuple[int, bytes, int]]:
    """(offset of the From line, header block, problem bits) for each message of an mbox
    whose From line starts in [start, end).

    Messages start at "From " lines at line starts (mboxo/mboxrd quote such lines in bodies
    as ">From "); a body is skipped with ``bytes.find`` without being kept. The buffer holds
    at most one chunk plus one header block, so memory stays flat.
    """
    base = max(start - 1, 0)  # file offset of buf[0]; from start - 1 to see a preceding \n
    if base:
        f.seek(base)
    buf = f.read(chunk)
    eof = not buf
    pos = 0  # the current message's From line starts at buf[pos]

    def more(keep_from: int) -> bool:
        """Drop buf[:keep_from] and append the next chunk; False at the end of the file."""
        nonlocal buf, base, eof
        data = f.read(chunk)
        if not data:
            eof = True
            return False
        buf = buf[keep_from:] + data
        base += keep_from
        return True

    def skip(search: int) -> bool:
        """Move pos to the next From line at or after buf[search + 1]; False if none."""
        nonlocal pos
        while True:
            nxt = buf.find(b"\nFrom ", search)
            if nxt >= 0:
                pos = nxt + 1
                return True
            # Keep the last bytes only: a separator may straddle two chunks.
            keep_from = max(len(buf) - 5, search)
            if eof or not more(keep_from):
                return False
            search = 0

    while len(buf) < 5 and more(0):  # enough to see whether the file starts with "From "
        pass
    if (start > 0 or not buf.startswith(b"From ")) and not skip(0):
        return
    while pos < len(buf):
        if end is not None and base + pos >= end:
            return  # the next range's first message
        # Header block of the message at pos: up to a blank line or the next From line.
        nl = buf.find(b"\n", pos)
        if nl < 0 and not eof:
            if more(pos):
                pos = 0
            continue
        if nl < 0:  # the envelope line runs to the end of the file
            yield base + pos, b"", PROBLEM_TRUNCATED
            return
        hstart = nl + 1
        nxt = buf.find(b"\nFrom ", nl)
        limit = nxt + 1 if nxt >= 0 else len(buf)
        lf = buf.find(b"\n\n", nl, limit)
        crlf = buf.find(b"\r\n\r\n", nl - 1, lf + 1 if lf >= 0 else limit)
        # body_from: where the newline before the next From line can be, at the earliest.
        if lf >= 0 and (crlf < 0 or lf < crlf) and lf - hstart < MAX_HEADER:
            hend, body_from, problems = lf + 1, lf + 1, 0
        elif crlf >= 0 and crlf - hstart < MAX_HEADER:
            hend, body_from, problems = crlf + 2, crlf + 3, 0
        elif nxt >= 0 and nxt - hstart < MAX_HEADER:
            # A message with headers only, no blank line before the next one.
            hend, body_from, problems = nxt + 1, nxt, 0
        elif len(buf) - hstart > MAX_HEADER:
            # A huge header block (a header loop, a runaway generator): keep its first part.
            cut = buf.rfind(b"\n", hstart, hstart + MAX_HEADER)
            hend = cut + 1 if cut >= hstart else hstart + MAX_HEADER
            body_from, problems = hend - 1, PROBLEM_TRUNCATED
        elif not eof:
            if more(pos):
                pos = 0
            continue
        else:
            tail = buf[hstart:]
            yield base + pos, tail, (0 if tail.endswith(b"\n") or not tail else PROBLEM_TRUNCATED)
            return
        yield base + pos, buf[hstart:hend], problems
        if nxt >= body_from:  # already found while looking for the header end
            pos = nxt + 1
        elif not skip(body_from):
            return


def _iter_mbox(path: str, keep: Sequence[str], start: int = 0, end: int | None = None
               ) -> Iterator[Found]:
    prefix = path + "#"
    try:
        with open(path, "rb", buffering=0) as f:
            for offset, block, problems in scan_mbox(f, start, end):
                location = prefix + str(offset)
                record = parse_header_block(block, keep=keep, problems=problems, find_end=False)
                if _usable(record):
                    yield location, record, None
                else:
                    yield location, None, REASON_NO_HEADERS
    except OSError as exc:
        yield path if start == 0 else f"{prefix}{start}", None, _reason(exc)


# -- walking and work units -------------------------------------------------------------------
# The work is cut into units, run in order (in this process or in a pool of workers whose
# results are taken in submission order), so the cache ends the same whatever the timing:
#   ("files", [path, ...])        message files (or small mboxes), UNIT_FILES at most
#   ("mbox", path, start, end)    messages of a big mbox whose From line is in [start, end)
#   ("found", found)              a place already known to be skipped
Unit = tuple[Any, ...]
UNIT_FILES = 1000
# Work for one worker: a few thousand messages, so the results in flight stay small.
MBOX_RANGE = 4 * 1024 * 1024
# Commits after the second double, up to this many times ``batch_size``: each commit writes
# every page its rows touched in the random-order indexes (messages and locations by msg_key)
# to the WAL, so fewer, larger commits write far less (100,000 messages: 0.6 s of commits
# instead of 1.0 s). The first two stay small: work is soon on disk and the progress moves.
BATCH_GROWTH = 8
WINDOW_PER_WORKER = 6  # units in flight per worker process
# The writer (walk, unpickling, SQLite) is the bottleneck: at equal priority three processes
# share two cores and it gets two thirds of one. Niced workers take what it leaves; when it
# waits for them, they have its core too (measured on 2 cores, 100,000 Maildir messages,
# under load ~2.7: 4.4-4.8 s against 5.1-5.6 s at equal priority).
WORKER_NICE = 10


_FILE, _DIR, _OTHER = 0, 1, 2


def _walk(path: str, seen: set[tuple[int, int]]) -> Iterator[tuple[list[str], bool] | Found]:
    """Files under a directory as runs (paths in order, and whether they could be big
    mboxes), or skipped places (Found), depth first in name order so results are the same
    whatever the listing order. Runs, not single paths: a cur/ of 100,000 messages is one
    list, not 100,000 trips through nested generators."""
    # Only names are kept while a directory is read (a cur/ of a million messages costs
    # ~100 MB of names, not the ~350 MB of a million DirEntry objects), and sorted by kind.
    by_kind: tuple[list[str], list[str], list[str]] = ([], [], [])
    try:
        st = os.stat(path)
        if (st.st_dev, st.st_ino) in seen:  # a symlink loop, or a folder given twice
            return
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(path) as it:
            for entry in it:
                name = entry.name
                try:
                    kind = _DIR if entry.is_dir() else _FILE if entry.is_file() else _OTHER
                except OSError:
                    kind = _FILE  # reading it will say what is wrong
                if kind != _DIR and _is_meta(name):
                    continue
                by_kind[kind].append(name)
    except OSError as exc:
        yield path, None, _reason(exc)
        return
    files, dirs, others = by_kind
    is_maildir = "cur" in dirs or "new" in dirs
    # Files in a Maildir's cur/ or new/ are single messages: no need to stat each one.
    check = os.path.basename(path) not in ("cur", "new")
    for lst in by_kind:
        lst.sort()
    prefix = path + os.sep
    if not dirs and not others:  # a folder of files only, such as a Maildir's cur/
        if files:
            yield [prefix + name for name in files], check
        return
    merged = heapq.merge(
        ((n, _FILE) for n in files), ((n, _DIR) for n in dirs), ((n, _OTHER) for n in others)
    )
    run: list[str] = []
    for name, kind in merged:
        if kind == _FILE:
            run.append(prefix + name)
            continue
        if run:
            yield run, check
            run = []
        if kind == _DIR:
            # tmp/ of a Maildir holds deliveries in progress; .notmuch is a database.
            if name == ".notmuch" or (name == "tmp" and is_maildir):
                continue
            yield from _walk(prefix + name, seen)
        else:
            yield maildir_location(prefix + name), None, REASON_NOT_FILE
    if run:
        yield run, check


def _big_mbox(path: str, mbox_range: int) -> int:
    """The size of a file that is an mbox worth splitting into ranges, else 0."""
    try:
        size = os.stat(path).st_size
        if size < 2 * mbox_range:
            return 0
        with open(path, "rb") as f:
            return size if f.read(5) == b"From " else 0
    except OSError:
        return 0  # reported when the file is read


class KnownPlaces:
    """The places of an account already in the cache, to pass over Maildir message files
    found there before: a Maildir file's content never changes (a new flag renames it, and
    its place drops the flags), so reading it again would store nothing new. mbox and .eml
    files can change, and are always read. Loaded at the first Maildir folder met."""

    def __init__(self, load: Callable[[], set[str]]) -> None:
        self._load = load
        self._places: set[str] | None = None
        self.count = 0  # files passed over

    def new_only(self, paths: list[str]) -> list[str]:
        if self._places is None:
            self._places = self._load()
        fresh = [p for p in paths if maildir_location(p) not in self._places]
        self.count += len(paths) - len(fresh)
        return fresh


def _units(
    paths: Sequence[Path],
    unit_files: int = UNIT_FILES,
    mbox_range: int = MBOX_RANGE,
    known: KnownPlaces | None = None,
) -> Iterator[Unit]:
    seen: set[tuple[int, int]] = set()
    files: list[str] = []
    for p in paths:
        path = os.path.abspath(os.fspath(p))
        items: Iterator[tuple[list[str], bool] | Found]
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            items = iter([(path, None, _reason(exc))])
        else:
            if stat.S_ISDIR(mode):
                items = _walk(path, seen)
            elif stat.S_ISREG(mode):
                items = iter([([path], True)])
            else:
                items = iter([(path, None, REASON_NOT_FILE)])
        for item in items:
            if len(item) == 3:  # a skipped place
                if files:
                    yield ("files", files)
                    files = []
                yield ("found", item)
                continue
            run, check = item  # type: ignore[misc]
            if not check:  # Maildir messages: units straight from the run
                files.extend(run if known is None else known.new_only(run))
                while len(files) >= unit_files:
                    yield ("files", files[:unit_files])
                    del files[:unit_files]
                continue
            for file in run:
                size = _big_mbox(file, mbox_range)
                if not size:
                    files.append(file)
                    if len(files) >= unit_files:
                        yield ("files", files)
                        files = []
                    continue
                if files:
                    yield ("files", files)
                    files = []
                # A big mbox is cut into byte ranges that workers can scan side by side.
                for start in range(0, size, mbox_range):
                    yield ("mbox", file, start, start + mbox_range)
    if files:
        yield ("files", files)


def _run(unit: Unit, keep: Sequence[str]) -> Iterator[Found]:
    kind = unit[0]
    if kind == "files":
        for path in unit[1]:
            yield from _iter_file(path, keep)
    elif kind == "mbox":
        yield from _iter_mbox(unit[1], keep, unit[2], unit[3])
    else:
        yield unit[1]


# What the writer takes from one unit, in the shapes the cache binds: the message rows and
# their location rows in order, and the skipped places with their index among the unit's
# places (so batches are cut where they would be place by place). Built in the worker that
# parsed them: the single writer only unpickles and binds.
UnitRows = tuple[list[tuple[Any, ...]], list[tuple[str, str, str, str]], list[tuple[int, str, str]]]


def _rows(found: Iterable[Found], account: str) -> UnitRows:
    rows: list[tuple[Any, ...]] = []
    locations: list[tuple[str, str, str, str]] = []
    skipped: list[tuple[int, str, str]] = []
    for i, (loc, rec, why) in enumerate(found):
        if rec is None:
            skipped.append((i, loc, why or REASON_NOT_MESSAGE))
            continue
        _, row, labels = stored_message(loc, rec)
        rows.append(row)
        locations.append((account, loc, row[0], labels))
    return rows, locations, skipped


def _work(unit: Unit, keep: Sequence[str], account: str) -> UnitRows:
    return _rows(_run(unit, keep), account)


def _found(units: Iterator[Unit], keep: Sequence[str], account: str, workers: int,
           on_wait: Callable[[], object] | None = None) -> Iterator[UnitRows]:
    """Results of all units in order; with workers > 1, parsed in a pool of that many
    processes while this one writes. At most a few units are in flight, so memory stays
    flat however far the walk runs ahead."""
    first = next(units, None)
    if first is None:
        return
    yield _work(first, keep, account)
    second = next(units, None)
    if second is None:
        return
    rest = itertools.chain([second], units)
    if workers <= 1:
        for unit in rest:
            yield _work(unit, keep, account)
        return
    # A place already known to be skipped needs no worker; it keeps its place in the order.
    jobs = (Done(_rows([unit[1]], account)) if unit[0] == "found" else (unit, keep, account)
            for unit in rest)
    # A deep window: while the writer commits a big batch (~0.3 s), the workers keep parsing
    # the next units instead of idling (12 units of 1,000 files: ~15 MB of results).
    window = WINDOW_PER_WORKER * workers
    with contextlib.closing(
        ordered_map(_work, jobs, workers, window=window, nice=WORKER_NICE, on_wait=on_wait)
    ) as results:
        yield from results


def iter_messages(paths: Sequence[Path], keep: Sequence[str] = ()) -> Iterator[Found]:
    """(location, record, skip_reason) for every message under ``paths``: exactly one of
    record and skip_reason is set. Paths are files (mbox, .eml) or directories of them."""
    for unit in _units(paths):
        yield from _run(unit, tuple(keep))
# -- import -----------------------------------------------------------------------------------
def check_paths(paths: Sequence[Path]) -> list[Path]:
    """Raise UsageError, in one sentence, for a path that cannot be imported at all."""
    if not paths:
        raise UsageError("import needs at least one file or directory")
    for p in paths:
        try:
            mode = os.stat(p).st_mode
        except FileNotFoundError:
            raise UsageError(f"{p} does not exist") from None
        except OSError as exc:
            raise UsageError(f"cannot read {p}: {(exc.strerror or str(exc)).lower()}") from None
        if stat.S_ISDIR(mode):
            if not os.access(p, os.R_OK | os.X_OK):
                raise UsageError(f"cannot read {p}: permission denied")
        elif stat.S_ISREG(mode):
            if not os.access(p, os.R_OK):
                raise UsageError(f"cannot read {p}: permission denied")
        else:
            raise UsageError(f"{p} is not a file or a directory (mbox, Maildir or .eml expected)")
    return [Path(p) for p in paths]


def file_workers() -> int:
    """Parser processes for a file import: one more than ``default_workers`` when there are
    several cores. The writer spends about half the import waiting for parsed units, and a
    third niced worker fills that time (100,000 Maildir messages on 2 cores: 2.9-3.0 s
    instead of 3.2-3.3 s; an mbox, parsed faster, is the same either way)."""
    n = default_workers()
    return n + 1 if n > 1 else n


def _grow(batch_size: int, commits: int) -> int:
    """The size of commit number ``commits`` (from 0): batch_size, batch_size, then doubling
    up to BATCH_GROWTH times batch_size."""
    return batch_size * min(2 ** max(commits - 1, 0), BATCH_GROWTH)


def import_paths(
    cache: Cache,
    paths: Sequence[Path],
    *,
    account: str = "import",
    keep: Sequence[str] = (),
    progress: Progress | None = None,
    batch_size: int = 5000,
    workers: int | None = None,
    unit_files: int = UNIT_FILES,
    mbox_range: int = MBOX_RANGE,
    on_wait: Callable[[], object] | None = None,
) -> SyncStats:
    """Import every message under ``paths`` into ``cache`` in batches (transactions) of
    ``batch_size`` places, the third and later growing to ``BATCH_GROWTH`` times that.

    Idempotent: places are keyed by location and messages by Message-ID (or the fallback
    key), so importing the same files again, or the same message from two places, adds
    nothing; Maildir files already imported for ``account`` are not even read again
    (``KnownPlaces``; their number is ``stats.extra["unchanged"]``). Raises UsageError for a
    missing or unreadable path, or when there is no mail.

    ``workers`` parser processes (default: ``file_workers()``) feed this process, the
    single SQLite writer, once there is more than one unit of work (``unit_files`` files, or
    ``mbox_range`` bytes of a big mbox); results are taken in order, so the cache ends the
    same as with ``workers=1``. ``on_wait`` is called once while this process would wait
    for the workers (``pool.ordered_map``): the CLI loads what comes next there.
    """
    started = time.monotonic()
    roots = check_paths(paths)
    stats = SyncStats(account=account)
    before = cache.message_count()
    # Maildir files this account imported before are passed over, unless the headers kept
    # for rules (``keep``) changed since: a file read again fills those in (the upsert).
    kept = sorted({k.lower() for k in keep})
    state = cache.account_state(account)
    same_keep = state.get("kept_headers") == kept
    known = KnownPlaces(lambda: cache.known_locations(account)) if same_keep else None
    rows: list[tuple[Any, ...]] = []
    locations: list[tuple[str, str, str, str]] = []
    skipped: list[tuple[str, str]] = []
    reasons: dict[str, int] = {}

    size, commits = batch_size, 0

    def flush() -> None:
        nonlocal size, commits
        cache.write_rows(account, rows, locations, account_type="files", skipped=skipped)
        if progress is not None:
            progress.advance(len(rows) + len(skipped))
        rows.clear()
        locations.clear()
        skipped.clear()
        commits += 1
        size = _grow(batch_size, commits)

    def skip(loc: str, why: str) -> None:
        skipped.append((loc, why))
        reasons[why] = reasons.get(why, 0) + 1
        stats.skipped += 1

    if workers is None:
        workers = file_workers()
    found = _found(_units(roots, unit_files, mbox_range, known), tuple(keep), account,
                   workers, on_wait)
    # The deferred indexes: see SQLiteCache.bulk_write. Closing ``found`` stops the worker
    # pool at once if writing failed.
    with cache.bulk_write(), contextlib.closing(found):
        for unit_rows, unit_locations, unit_skipped in found:
            if unit_skipped:
                # Rare: place by place, messages and skipped places in their order.
                nxt = 0
                marks = {i: (loc, why) for i, loc, why in unit_skipped}
                for i in range(len(unit_rows) + len(unit_skipped)):
                    if i in marks:
                        skip(*marks[i])
                    else:
                        rows.append(unit_rows[nxt])
                        locations.append(unit_locations[nxt])
                        nxt += 1
                        stats.fetched += 1
                    # Nothing is written before the first message: "no mail" leaves no trace.
                    if stats.fetched and len(rows) + len(skipped) >= size:
                        flush()
                continue
            # Messages only: whole slices, cut where the place-by-place loop above would cut.
            i, n = 0, len(unit_rows)
            while i < n:
                j = min(n, i + max(size - len(rows) - len(skipped), 1))
                rows += unit_rows[i:j]
                locations += unit_locations[i:j]
                stats.fetched += j - i
                i = j
                if len(rows) + len(skipped) >= size:
                    flush()
        unchanged = known.count if known is not None else 0
        if not stats.fetched and not unchanged:
            where = ", ".join(str(p) for p in roots)
            detail = "; ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
            raise UsageError(f"no mail found in {where}" + (f" ({detail})" if detail else ""))
        if rows or skipped:
            flush()
        if not same_keep:  # every file was read with these
            cache.set_state(account, {**state, "kept_headers": kept}, account_type="files")
    after = cache.message_count()
    stats.seconds = time.monotonic() - started
    stats.extra = {"new": after - before, "unchanged": unchanged, "skip_reasons": reasons}
    return stats
