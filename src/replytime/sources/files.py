"""Offline import: mbox, Maildir (plain, Maildir++, notmuch-style nesting), .eml files,
Google Takeout mbox, and directories of any of these.

Only header blocks are read, and all reading is streamed: a Maildir or .eml file is read up
to the blank line ending its headers, an mbox is scanned in large binary chunks keeping each
message's header block only, so memory stays flat whatever the mailbox size. Broken input is
never fatal: a place that is not a usable message is reported as skipped with a reason.

Locations are stable across re-imports: the absolute path with any Maildir flags suffix
(``:2,S``) stripped and, in a Maildir, without its ``cur/`` or ``new/`` (``<folder>/<unique
name>``), so marking a message read or moving it from new/ to cur/ is not a new place; for
mbox the absolute path, ``#`` and the byte offset of the message's ``From`` line.

Files are not read again when unchanged: the cache keeps, per account, each file's size,
mtime, inode (``files`` table; ``FileStates``), and a file found the same is passed over
from a stat alone. An mbox that only grew is read from where its last complete message
ended (``Boundary``), after checking that what was read before is still there. A Maildir's
cur/ or new/ whose mtime is as when all its files were stored is not even listed
(``FOLDERS_STATE``).

Folder and file names do not become labels. Export folder names are arbitrary (``cur``/``new``,
notmuch nesting, whatever a user named the unpacked archive), so a label taken from them would
make the same message's labels depend on where the export was unpacked; Takeout's
``X-Gmail-Labels`` header carries the real labels and ``headers.py`` maps it.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import itertools
import os
import re
import stat
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

from replytime.errors import UsageError
from replytime.model import PROBLEM_TRUNCATED, MessageRecord, stored_message
from replytime.sources import SyncStats
from replytime.sources.headers import parse_header_block

# sources.pool (multiprocessing, ~5 ms) is imported where a pool starts: an import that
# finds nothing new starts none.
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
    """The stable place of a Maildir or .eml file: the path without the flags suffix, and a
    Maildir message's without its cur/ or new/ folder (the unique name is the message: a
    mail reader moves it from new/ to cur/ and renames it for each flag)."""
    slash = path.rfind("/")
    for sep in (":2,", "!2,"):  # "!" is what some tools use where ":" is not allowed
        i = path.rfind(sep)
        if i > slash:
            path = path[:i]
            break
    if path.endswith(("/cur", "/new"), 0, slash):
        return path[: slash - 3] + path[slash + 1 :]
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
def _read_head(path: str, seen: list[Stat] | None = None) -> tuple[bytes, bool]:
    """The start of a file, up to the end of its header block (or MAX_HEADER), and whether
    that is the whole file. Appends the file's ``Stat`` to ``seen``, taken before reading:
    whatever changes the file after that also changes its stat."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if seen is not None:
            seen.append(_stat(os.fstat(fd)))
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


def _iter_file(path: str, keep: Sequence[str], states: list[FileRow] | None = None
               ) -> Iterator[Found]:
    """Messages in one file: an mbox if it starts with an envelope line, else one message.
    Once all of them are yielded, the file's row for the ``files`` table (without the
    account) is appended to ``states``; none for a file that could not be read."""
    seen: list[Stat] = []
    try:
        data, at_eof = _read_head(path, seen if states is not None else None)
    except OSError as exc:
        yield maildir_location(path), None, _reason(exc)
        return
    if data.startswith(b"From "):
        boundary = Boundary() if states is not None else None
        ok = yield from _iter_mbox(path, keep, boundary=boundary)
        if ok and states is not None and boundary is not None:
            states.append(_file_row(path, seen[0], boundary))
        return
    try:
        yield _parse_file(path, data, at_eof, keep)
    except Exception as exc:  # a parser bug must cost one message, never the import
        yield maildir_location(path), None, f"could not parse: {exc.__class__.__name__}"
    if states is not None:
        states.append(_file_row(path, seen[0]))


# -- mbox -------------------------------------------------------------------------------------
class Boundary:
    """Where the last complete message of an mbox scan ends: the next scan of the file, once
    it has grown, starts there. A message is complete when the next ``From`` line follows
    it, or the end of the file after a whole header block and a final newline. A last
    message cut inside its envelope line or header block, or mid-line, may be one still
    being written: it is stored as read, but the boundary stays at its ``From`` line, so
    it is read again, whole, once the file has grown."""

    __slots__ = ("offset", "digest")

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset
        self.digest = ""


def scan_mbox(
    f: BinaryIO, start: int = 0, end: int | None = None, chunk: int = MBOX_CHUNK,
    boundary: Boundary | None = None,
) -> Iterator[tuple[int, bytes, int]]:
    """(offset of the From line, header block, problem bits) for each message of an mbox
    whose From line starts in [start, end).

    Messages start at "From " lines at line starts (mboxo/mboxrd quote such lines in bodies
    as ">From "); a body is skipped with ``bytes.find`` without being kept. The buffer holds
    at most one chunk plus one header block, so memory stays flat. ``boundary`` (for a scan
    to the end of the file) is left where the last complete message ends.
    """
    if boundary is None:
        boundary = Boundary()
    boundary.offset = start
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
    boundary.offset = base + pos
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
            # The end of the file: the last message is complete if it ends a line.
            if buf.endswith(b"\n"):
                boundary.offset = base + len(buf)
            return
        boundary.offset = base + pos


def _iter_mbox(path: str, keep: Sequence[str], start: int = 0, end: int | None = None,
               boundary: Boundary | None = None) -> Generator[Found, None, bool]:
    """The messages of an mbox whose From line is in [start, end); returns whether it was
    read to the end without error. With ``boundary`` (a scan to the end of the file), also
    sets its offset and the digest of what lies before it (``mbox_digest``)."""
    prefix = path + "#"
    try:
        with open(path, "rb", buffering=0) as f:
            for offset, block, problems in scan_mbox(f, start, end, boundary=boundary):
                location = prefix + str(offset)
                record = parse_header_block(block, keep=keep, problems=problems, find_end=False)
                if _usable(record):
                    yield location, record, None
                else:
                    yield location, None, REASON_NO_HEADERS
            if boundary is not None:
                boundary.digest = mbox_digest(f, boundary.offset)
    except OSError as exc:
        yield path if start == 0 else f"{prefix}{start}", None, _reason(exc)
        return False
    return True


# -- what a file was when read ----------------------------------------------------------------
# (size, mtime_ns, inode, when the stat was taken in ns)
Stat = tuple[int, int, int, int]
# A row of the files table without its account: (place, name, size, mtime_ns, inode,
# mbox_end, mbox_digest); see cache.base.FILES_TABLE.
FileRow = tuple[str, str, int, int, int, int | None, str | None]
# A file modified this close to when its stat was taken may change again within the same
# mtime tick (a second on some file systems, two on FAT), unseen: its mtime is not recorded
# (-1), so the next import reads it again instead of trusting it (git's "racy clean" case).
RACY_NS = 2_000_000_000
DIGEST_HEAD = 4096  # an mbox's first bytes ...
DIGEST_TAIL = 64 * 1024  # ... and those before the end of its last complete message


def _key(st: os.stat_result) -> tuple[int, int, int]:
    """(size, mtime_ns, inode); inode numbers are unsigned 64-bit, the cache's signed."""
    ino = st.st_ino - (1 << 64) if st.st_ino >= 1 << 63 else st.st_ino
    return st.st_size, st.st_mtime_ns, ino


def _stat(st: os.stat_result) -> Stat:
    return (*_key(st), time.time_ns())


def _key_of(st: Stat) -> tuple[int, int]:
    """(mtime_ns, inode) of a Stat; mtime -1 when modified just before it was taken."""
    _, mtime_ns, ino, taken = st
    return (-1 if mtime_ns > taken - RACY_NS else mtime_ns), ino


def _file_row(path: str, st: Stat, boundary: Boundary | None = None) -> FileRow:
    size = st[0]
    mtime_ns, ino = _key_of(st)
    if boundary is None:
        return maildir_location(path), path, size, mtime_ns, ino, None, None
    return path, path, size, mtime_ns, ino, boundary.offset, boundary.digest


# The account state's key for its Maildir folders: cur/ or new/ path -> [mtime_ns, inode,
# files], recorded once every file listed in it was stored or found unchanged and its
# mtime is older than RACY_NS. An unchanged folder is then not even listed (as `notmuch
# new` trusts directory mtimes): a file added, removed or renamed there (a new message, a
# move from new/ to cur/, a flag) changes its folder's mtime. A message file rewritten in
# place does not, and is not read again until its folder changes (Maildir messages are
# never rewritten; README.md, "Commands").
FOLDERS_STATE = "maildir_folders"


class Folder(NamedTuple):
    """A cur/ or new/ whose files were just handed out as units: its path, its Stat before
    it was listed, how many files it held and how many of them were to read."""

    path: str
    stat: Stat
    files: int
    fresh: int


def mbox_digest(f: BinaryIO, end: int) -> str:
    """A digest of an mbox's first DIGEST_HEAD bytes and the DIGEST_TAIL bytes before
    ``end``: when they are the same in a grown file, what was read before is taken to be
    unchanged (a rewritten mbox differs there; an appended one does not)."""
    h = hashlib.blake2b(digest_size=16)
    f.seek(0)
    h.update(f.read(min(DIGEST_HEAD, end)))
    tail = max(end - DIGEST_TAIL, 0)
    f.seek(tail)
    h.update(f.read(end - tail))
    return h.hexdigest()


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


# A run of files found by _walk: the paths in order, whether they could be big mboxes, and
# for a Maildir's cur/ or new/ holding files only, its path and Stat (taken before listing).
Run = tuple[list[str], bool, "tuple[str, Stat] | None"]


def _walk(path: str, seen: set[tuple[int, int]],
          trusted: Callable[[str, os.stat_result], bool] | None = None
          ) -> Iterator[Run | Found]:
    """Files under a directory as runs, or skipped places (Found), depth first in name order
    so results are the same whatever the listing order. Runs, not single paths: a cur/ of
    100,000 messages is one list, not 100,000 trips through nested generators. A cur/ or
    new/ that ``trusted`` finds unchanged is not listed at all."""
    # Only names are kept while a directory is read (a cur/ of a million messages costs
    # ~100 MB of names, not the ~350 MB of a million DirEntry objects), and sorted by kind.
    by_kind: tuple[list[str], list[str], list[str]] = ([], [], [])
    try:
        st = os.stat(path)
        if (st.st_dev, st.st_ino) in seen:  # a symlink loop, or a folder given twice
            return
        seen.add((st.st_dev, st.st_ino))
        folder = os.path.basename(path) in ("cur", "new")
        if folder and trusted is not None and trusted(path, st):
            return
        taken = _stat(st)
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
    check = not folder
    for lst in by_kind:
        lst.sort()
    prefix = path + os.sep
    if not dirs and not others:  # a folder of files only, such as a Maildir's cur/
        if files or folder:
            yield [prefix + name for name in files], check, (path, taken) if folder else None
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
            yield run, check, None
            run = []
        if kind == _DIR:
            # tmp/ of a Maildir holds deliveries in progress; .notmuch is a database.
            if name == ".notmuch" or (name == "tmp" and is_maildir):
                continue
            yield from _walk(prefix + name, seen, trusted)
        else:
            yield maildir_location(prefix + name), None, REASON_NOT_FILE
    if run:
        yield run, check, None


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


class FileStates:
    """The files an account imported before (``cache.file_states``, loaded at the first
    file met), to pass over those still as they were: the same size, mtime and inode, from
    a stat, without opening them. A Maildir message is known by its place (folder and
    unique name), so one moved from new/ to cur/ or renamed for a flag is the same file:
    its new name is recorded (``renamed``), nothing is read. An mbox that only grew, its
    start and the bytes before its last complete message unchanged, is read from there."""

    def __init__(self, load: Callable[[], dict[str, tuple[Any, ...]]],
                 folders: dict[str, list[int]] | None = None) -> None:
        self._load = load
        self._known: dict[str, tuple[Any, ...]] | None = None
        self.folders = folders or {}  # FOLDERS_STATE of the account's state
        self.unchanged = 0  # files passed over
        self.grown = 0  # mbox files read from where their last import ended
        self.renamed: list[FileRow] = []

    def folder_unchanged(self, path: str, st: os.stat_result) -> bool:
        """Whether a Maildir's cur/ or new/ is as its last import left it: the same mtime
        and inode as when every file in it was read or found unchanged. Adding, removing or
        renaming a file in a folder changes its mtime; rewriting a file in place does not,
        and a Maildir's messages are never rewritten (``FOLDERS_STATE``)."""
        state = self.folders.get(path)
        if state is None or state[:2] != list(_key(st)[1:]):
            return False
        self.unchanged += state[2]
        return True

    def known(self) -> dict[str, tuple[Any, ...]]:
        if self._known is None:
            self._known = self._load()
        return self._known

    def _same(self, place: str, path: str, state: tuple[Any, ...], st: os.stat_result) -> bool:
        _, size, mtime_ns, ino, _, _ = state
        if (size, mtime_ns, ino) != _key(st):
            return False
        self.unchanged += 1
        if state[0] != path:
            self.renamed.append((place, path, *state[1:]))
        return True

    def maildir_new(self, paths: list[str]) -> list[str]:
        """Of a cur/ or new/ folder's files, those to read. Only files whose place is known
        are stat'ed: a first import stats none here (the reader does, on the open file)."""
        known = self.known()
        if not known:
            return paths
        fresh = []
        for path in paths:
            place = maildir_location(path)
            state = known.get(place)
            if state is not None:
                try:
                    if self._same(place, path, state, os.stat(path)):
                        continue
                except OSError:
                    pass  # reading it will say what is wrong
            fresh.append(path)
        return fresh

    def start(self, path: str, st: os.stat_result) -> int | None:
        """Where to read a file found outside cur/ and new/: None when it is unchanged, the
        boundary of an mbox that only grew, else 0 (all of it)."""
        place = maildir_location(path)
        state = self.known().get(place)
        if state is None:
            return 0
        if self._same(place, path, state, st):
            return None
        _, size, _, ino, end, digest = state
        if end is None or ino != _key(st)[2] or st.st_size <= size or st.st_size < end:
            return 0  # a message file, or shrunk, rewritten (new inode), or not grown
        try:
            with open(path, "rb", buffering=0) as f:
                same = mbox_digest(f, end) == digest
        except OSError:
            return 0
        if not same:
            return 0
        self.grown += 1
        return end


def _mbox_units(path: str, start: int, size: int, mbox_range: int, st: Stat) -> Iterator[Unit]:
    """A big or grown mbox from ``start`` as byte ranges that workers scan side by side. The
    last one scans on to the end of the file and records it (``st``: its stat before any
    range was read)."""
    cuts = list(range(start, size, mbox_range)) or [start]
    for i, a in enumerate(cuts):
        last = i == len(cuts) - 1
        yield ("mbox", path, a, None if last else a + mbox_range, st if last else None)


def _units(
    paths: Sequence[Path],
    unit_files: int = UNIT_FILES,
    mbox_range: int = MBOX_RANGE,
    states: FileStates | None = None,
) -> Iterator[Unit]:
    seen: set[tuple[int, int]] = set()
    files: list[str] = []
    for p in paths:
        path = os.path.abspath(os.fspath(p))
        items: Iterator[Run | Found]
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            items = iter([(path, None, _reason(exc))])
        else:
            if stat.S_ISDIR(mode):
                items = _walk(path, seen, states.folder_unchanged if states else None)
            elif stat.S_ISREG(mode):
                items = iter([([path], True, None)])
            else:
                items = iter([(path, None, REASON_NOT_FILE)])
        for item in items:
            if not isinstance(item[0], list):  # a skipped place
                if files:
                    yield ("files", files)
                    files = []
                yield ("found", item)
                continue
            run, check, folder = item  # type: ignore[misc]
            if not check:  # Maildir messages: units straight from the run
                if folder is not None:  # its files in units of their own, between marks
                    if files:
                        yield ("files", files)
                        files = []
                    yield ("folder", None)
                fresh = run if states is None else states.maildir_new(run)
                files.extend(fresh)
                while len(files) >= unit_files:
                    yield ("files", files[:unit_files])
                    del files[:unit_files]
                if folder is not None:
                    if files:
                        yield ("files", files)
                        files = []
                    yield ("folder", Folder(*folder, len(run), len(fresh)))
            else:
                for file in run:
                    start: int | None = 0
                    st = None
                    if states is not None:
                        try:
                            st = os.stat(file)
                        except OSError:
                            pass  # reading it will say what is wrong
                        else:
                            start = states.start(file, st)
                    if start is None:
                        continue  # unchanged
                    size = st.st_size if start and st is not None else _big_mbox(file, mbox_range)
                    if not size:
                        files.append(file)
                        if len(files) >= unit_files:
                            yield ("files", files)
                            files = []
                        continue
                    if files:
                        yield ("files", files)
                        files = []
                    try:
                        taken = _stat(st if st is not None else os.stat(file))
                    except OSError:
                        taken = None  # gone: the ranges say so; nothing is recorded
                    yield from _mbox_units(file, start, size, mbox_range, taken)  # type: ignore
            if states is not None and len(states.renamed) >= unit_files:
                yield ("state", states.renamed)
                states.renamed = []
    if files:
        yield ("files", files)
    if states is not None and states.renamed:
        yield ("state", states.renamed)
        states.renamed = []


def _run(unit: Unit, keep: Sequence[str], states: list[FileRow] | None = None
         ) -> Iterator[Found]:
    """The places of one unit; with ``states``, the rows of the files it read whole (or
    to their end) are appended there."""
    kind = unit[0]
    if kind == "files":
        for path in unit[1]:
            yield from _iter_file(path, keep, states)
    elif kind == "mbox":
        _, path, start, end, st = unit
        boundary = Boundary() if st is not None and states is not None else None
        ok = yield from _iter_mbox(path, keep, start, end, boundary)
        if ok and boundary is not None and states is not None:
            states.append(_file_row(path, st, boundary))
    elif kind == "found":
        yield unit[1]


# What the writer takes from one unit, in the shapes the cache binds: the message rows and
# their location rows in order, and the skipped places with their index among the unit's
# places (so batches are cut where they would be place by place). Built in the worker that
# parsed them: the single writer only unpickles and binds.
# Last, the rows of the files table for the files the unit read.
UnitRows = tuple[list[tuple[Any, ...]], list[tuple[str, str, str, str]], list[tuple[int, str, str]],
                 list[tuple[Any, ...]]]


def _rows(found: Iterable[Found], account: str
          ) -> tuple[list[tuple[Any, ...]], list[tuple[str, str, str, str]],
                     list[tuple[int, str, str]]]:
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


def _work(unit: Unit, keep: Sequence[str], account: str) -> UnitRows | Folder | None:
    if unit[0] == "state":  # names of files passed over: nothing to read
        return [], [], [], [(account, *row) for row in unit[1]]
    if unit[0] == "folder":  # a cur/ or new/ starts (None) or ends: for the writer
        return unit[1]
    states: list[FileRow] = []
    rows, locations, skipped = _rows(_run(unit, keep, states), account)
    return rows, locations, skipped, [(account, *row) for row in states]


def _found(units: Iterator[Unit], keep: Sequence[str], account: str, workers: int | None,
           on_wait: Callable[[], object] | None = None) -> Iterator[UnitRows | Folder | None]:
    """Results of all units in order; with workers > 1 (None: ``file_workers()``), parsed
    in a pool of that many processes while this one writes, from the second unit on. At
    most a few units are in flight, so memory stays flat however far the walk runs ahead."""
    first = next(units, None)
    if first is None:
        return
    yield _work(first, keep, account)
    second = next(units, None)
    if second is None:
        return
    from replytime.sources.pool import Done, ordered_map

    if workers is None:
        workers = file_workers()
    rest = itertools.chain([second], units)
    if workers <= 1:
        for unit in rest:
            yield _work(unit, keep, account)
        return
    # A place already known to be skipped needs no worker; it keeps its place in the order.
    jobs = (Done(_work(unit, keep, account)) if unit[0] in ("found", "state", "folder")
            else (unit, keep, account) for unit in rest)
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
    from replytime.sources.pool import default_workers

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
    nothing; files ``account`` imported before and unchanged since are not even opened
    (``FileStates``; their number is ``stats.extra["unchanged"]``), and an mbox that only
    grew is read from where its last complete message ended (``stats.extra["grown"]``
    files). A file is recorded in the same transaction as its last messages, or after:
    an import killed midway loses nothing. Raises UsageError for a missing or unreadable
    path, or when there is no mail.

    ``workers`` parser processes (default: ``file_workers()``) feed this process, the
    single SQLite writer, once there is more than one unit of work (``unit_files`` files, or
    ``mbox_range`` bytes of a big mbox); results are taken in order, so the cache ends the
    same as with ``workers=1``. ``on_wait`` is called once while this process would wait
    for the workers (``pool.ordered_map``): the CLI loads what comes next there.
    """
    started = time.monotonic()
    roots = check_paths(paths)
    stats = SyncStats(account=account)
    # New messages are those after the last id now (counting every message reads an index
    # of them all: 0.01-0.1 s at 1M).
    top = cache.last_message_id()
    # Files this account imported before are passed over when unchanged, unless the headers
    # kept for rules (``keep``) changed since: a file read again fills those in (the upsert).
    kept = sorted({k.lower() for k in keep})
    state = cache.account_state(account)
    same_keep = state.get("kept_headers") == kept
    folders: dict[str, list[int]] = dict(state.get(FOLDERS_STATE, {})) if same_keep else {}
    states = FileStates(lambda: cache.file_states(account), folders) if same_keep else None
    rows: list[tuple[Any, ...]] = []
    locations: list[tuple[str, str, str, str]] = []
    skipped: list[tuple[str, str]] = []
    files: list[tuple[Any, ...]] = []  # rows of files whose messages are all in rows or stored
    reasons: dict[str, int] = {}

    size, commits = batch_size, 0
    # Files of the cur/ or new/ being handed out that were recorded with a trusted mtime;
    # whether the folders' state changed since the last write.
    recorded = 0
    folders_changed = False
    stored: dict[str, Any] | None = None  # the account state the last write recorded

    def flush() -> None:
        nonlocal size, commits, folders_changed, stored
        # The first batch read with other kept headers than the files recorded before: those
        # are forgotten and the new headers noted with it, so a rerun after a crash passes
        # over what this import recorded, and only that.
        renew = not same_keep and not commits
        new_state = None
        if renew or folders_changed:  # with the files recorded so far, or after them
            new_state = {**state, "kept_headers": kept, FOLDERS_STATE: folders}
            # A copy: ``folders`` changes on (its entries are replaced, never changed).
            stored = {**new_state, FOLDERS_STATE: dict(folders)}
            folders_changed = False
        cache.write_rows(account, rows, locations, account_type="files", skipped=skipped,
                         files=files, forget_files=renew, state=new_state)
        if progress is not None:
            progress.advance(len(rows) + len(skipped))
        rows.clear()
        locations.clear()
        skipped.clear()
        files.clear()
        commits += 1
        size = _grow(batch_size, commits)

    def skip(loc: str, why: str) -> None:
        skipped.append((loc, why))
        reasons[why] = reasons.get(why, 0) + 1
        stats.skipped += 1

    found = _found(_units(roots, unit_files, mbox_range, states), tuple(keep), account,
                   workers, on_wait)
    # The deferred indexes: see SQLiteCache.bulk_write. Closing ``found`` stops the worker
    # pool at once if writing failed.
    with cache.bulk_write(), contextlib.closing(found):
        for result in found:
            if result is None:  # a cur/ or new/ starts
                recorded = 0
                continue
            if isinstance(result, Folder):
                mtime_ns, ino = _key_of(result.stat)
                trusted = mtime_ns != -1 and recorded == result.fresh
                if trusted or result.path in folders:
                    folders_changed = True
                    if trusted:
                        folders[result.path] = [mtime_ns, ino, result.files]
                    else:
                        del folders[result.path]
                continue
            unit_rows, unit_locations, unit_skipped, unit_files = result
            recorded += sum(1 for row in unit_files if row[4] != -1)
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
                # After the unit's last places: written with them, or after them.
                files += unit_files
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
            files += unit_files
        unchanged = states.unchanged if states is not None else 0
        grown = states.grown if states is not None else 0
        # A grown mbox may hold no new message yet (one still being written): not an error.
        if not stats.fetched and not unchanged and not grown:
            where = ", ".join(str(p) for p in roots)
            detail = "; ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
            raise UsageError(f"no mail found in {where}" + (f" ({detail})" if detail else ""))
        if rows or skipped or files or folders_changed:
            flush()
        final = {**state, "kept_headers": kept, FOLDERS_STATE: folders}
        # Every file was read with these; unless the last write recorded them already, a
        # transaction of its own (which would wait for that write's checkpoint).
        if not same_keep and final != stored:
            cache.set_state(account, final, account_type="files")
    stats.seconds = time.monotonic() - started
    stats.extra = {"new": cache.messages_after(top), "unchanged": unchanged, "grown": grown,
                   "skip_reasons": reasons}
    return stats
