"""The embedded cache: one SQLite file in WAL mode, versioned schema, idempotent upserts.

Storage details stay in this package; the matcher and metrics only see DataFrames. What
both backends share (upsert rules, reads, status, thread rebuild) is in ``base``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import sqlite3
import struct
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

from replytime.errors import CacheError, LockedError
from replytime.model import MESSAGE_COLUMNS
from replytime.store.base import (
    ALERTS_TABLE,
    FILES_TABLE,
    THREAD_INPUT_COLUMNS,
    THREAD_KEYS_INDEX_SQL,
    THREAD_KEYS_TABLE,
    THREADS_SQL,
    CacheBase,
    arrow_rows,
    every_input_sql,
    maildir_places_sql,
    records_frame,
)
from replytime.store.leads import (
    KEPT_TABLES_SQL,
    KEPT_THREAD_SQL,
    LEADS_TABLE_SQL,
    REPS_INDEXES_SQL,
    KeptLeads,
)

# The index on thread ids (as the first migration creates it), and from how many updated
# thread ids on it is dropped and built again instead of updated row by row.
THREAD_INDEX_SQL = "CREATE INDEX messages_thread ON messages(thread_id)"
THREAD_INDEX_REBUILD = 20_000

# Secondary indexes whose keys arrive in random order. A first import drops them and builds
# them once, sorted, at the end (100,000 messages: 0.4 s less importing, 0.2 s to build,
# alongside the thread assignment). An open that finds one missing (an import killed before
# it built them) builds it again.
DEFERRED_INDEXES = (
    ("locations_msg", "CREATE INDEX IF NOT EXISTS locations_msg ON locations(msg_key)"),
    ("messages_time", "CREATE INDEX IF NOT EXISTS messages_time ON messages(time_ms)"),
)


# Lock files this process holds. A forked child (a parser worker) closes its copies at once,
# so it never holds a lock: the workers left behind by a killed command cannot refuse the
# next one. (An flock belongs to the open file, which the parent keeps open.)
_held_locks: set[int] = set()


def _drop_inherited_locks() -> None:
    for fd in _held_locks:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held_locks.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


def _set_wal(conn: sqlite3.Connection, wait_s: float = 30.0) -> None:
    """Switch to WAL. Two processes opening a brand-new file at once (two cron imports of
    different accounts) race for the exclusive lock this needs, and SQLite answers "database
    is locked" at once rather than through the busy timeout: try again until ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction on ``conn``, rolled back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


class _Connection(sqlite3.Connection):
    """A connection that can be referenced weakly (sqlite3.Connection cannot)."""


# Every connection SQLiteCache opened that is still alive. sqlite3 connections sit in a
# reference cycle with their statement cache, so one that nobody closed lives until a
# garbage collection: close_sqlite_connections closes them before a quick exit.
_connections: weakref.WeakSet[_Connection] = weakref.WeakSet()


# Background WAL checkpoints still running (``SQLiteCache._checkpoint_behind``): joined
# before their connections are closed.
_checkpoints: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


def close_sqlite_connections() -> None:
    for thread in list(_checkpoints):
        thread.join()
    for conn in list(_connections):
        conn.close()


# The WAL is checkpointed (its pages copied into the database file, both fsynced) once this
# many frames wait: SQLite's own default, but in a thread on a connection of its own after
# the commit, not inside it. The writer goes on meanwhile (the import of 1,000 messages into
# a 1M cache: its ~3,400 frames are copied while the thread regrouping loads pandas) and
# waits for it only before its next write, so the WAL stays as short as before.
CHECKPOINT_FRAMES = 1000
# The WAL-index header (https://www.sqlite.org/walformat.html, "The WAL-Index Format"), in
# the -shm file in native byte order: the version, mxFrame (frames in the WAL) and the
# checkpoint's nBackfill (frames copied).
_WAL_INDEX = struct.Struct("=I12xI76xI")
_WAL_INDEX_VERSION = 3007000


def _wal_backlog(shm: int) -> int | None:
    """Frames of the WAL not yet copied into the database, from its WAL index (the -shm
    file open at ``shm``); None when it cannot be read (another format)."""
    try:
        head = os.pread(shm, _WAL_INDEX.size, 0)
    except OSError:
        return None
    if len(head) < _WAL_INDEX.size:
        return None
    version, frames, backfilled = _WAL_INDEX.unpack(head)
    return frames - backfilled if version == _WAL_INDEX_VERSION else None


# Each entry migrates the schema from version i to i + 1. Never edit a released entry:
# append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        msg_key TEXT NOT NULL UNIQUE,      -- Message-ID, else 'nomid:' + digest
        message_id TEXT,
        from_addr TEXT,
        to_addrs TEXT NOT NULL DEFAULT '', -- comma-separated lower-case addresses
        cc_addrs TEXT NOT NULL DEFAULT '',
        reply_to TEXT NOT NULL DEFAULT '',
        subject TEXT,
        time_ms INTEGER,                   -- UTC epoch ms; NULL when no usable time
        time_offset INTEGER,               -- original UTC offset, minutes
        time_source INTEGER NOT NULL,      -- model.TIME_*: a better source replaces a worse
        in_reply_to TEXT,
        refs TEXT NOT NULL DEFAULT '',     -- space-separated Message-IDs
        automated INTEGER NOT NULL,
        content_type TEXT,
        provider_thread_id TEXT,
        extra TEXT,                        -- JSON of headers kept for configured rules
        problems INTEGER NOT NULL DEFAULT 0,
        thread_id TEXT                     -- assigned by analysis.threads after each write
    );
    CREATE INDEX messages_time ON messages(time_ms);
    CREATE INDEX messages_thread ON messages(thread_id);
    -- Where a message was seen: a file path, an IMAP folder/UID, a Gmail message id.
    -- Labels (Gmail labels, IMAP folders, Takeout's X-Gmail-Labels) belong to the location.
    CREATE TABLE locations (
        account TEXT NOT NULL,
        location TEXT NOT NULL,
        msg_key TEXT NOT NULL,
        labels TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (account, location)
    ) WITHOUT ROWID;
    CREATE INDEX locations_msg ON locations(msg_key);
    CREATE TABLE accounts (
        name TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        last_sync TEXT,
        state TEXT NOT NULL DEFAULT '{}'   -- connector sync state (history id, UIDs...)
    );
    -- Messages that could not be read at all, one row per place so re-imports do not
    -- count them twice.
    CREATE TABLE skipped (
        account TEXT NOT NULL,
        location TEXT NOT NULL,
        reason TEXT NOT NULL,
        PRIMARY KEY (account, location)
    ) WITHOUT ROWID;
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 2: per-thread time span, so a report over one week reads only the threads active in it.
    """
    CREATE TABLE threads (
        thread_id TEXT PRIMARY KEY,
        start_ms INTEGER,                  -- earliest non-automated timed message
        first_ms INTEGER,                  -- earliest timed message
        last_ms INTEGER,                   -- latest timed message
        messages INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX threads_span ON threads(last_ms, first_ms);
    DELETE FROM meta WHERE key = 'threads_fingerprint';  -- refill on next use
    """,
    # 3: a period's lead threads by their start (cache.pairing), however old the period:
    # threads_span (last_ms first) read every thread ending after it.
    """
    CREATE INDEX threads_start ON threads(start_ms);
    """,
    # 4: how each thread was grouped (threads.RULES), and the subject rule's joins, so
    # `explain` can say which thread a component was joined to and through which address.
    """
    ALTER TABLE threads ADD COLUMN rule TEXT;  -- provider | subject | headers | single
    CREATE TABLE thread_links (
        thread_id TEXT NOT NULL,           -- the thread the joined component ended in
        joined_key TEXT NOT NULL,          -- msg_key of the joined component's first message
        to_key TEXT NOT NULL,              -- msg_key of the first message it was joined to
        address TEXT NOT NULL,             -- the participant both share
        PRIMARY KEY (thread_id, joined_key)
    ) WITHOUT ROWID;
    DELETE FROM meta WHERE key = 'threads_fingerprint';  -- refill on next use
    """,
    # 5: the files an import read (sources/files.py), so unchanged ones are not read
    # again and a grown mbox is read from where it ended; and Maildir places without cur/
    # or new/, so a message moving from new/ to cur/ stays in its place.
    FILES_TABLE + maildir_places_sql(
        dir_of="rtrim({col}, replace({col}, '/', ''))", last5="substr({d}, -5)",
        has_hash="instr(substr({col}, length({d}) + 1), '#') > 0",
    ),
    # 6: the kept lead table (store.leads): every email lead as of everything cached, so a
    # report selects its period's leads instead of pairing its messages again.
    LEADS_TABLE_SQL,
    # 7: the stale-lead alerts already delivered (`replytime alert`).
    ALERTS_TABLE,
    # 8: status and reports without reading the messages (store.leads.KEPT_TABLES_SQL).
    KEPT_TABLES_SQL,
    # 9: per thread, digests of the links new messages could join it by, so an import of a
    # few messages regroups only the threads they reach (analysis/rethread.py). Filled by
    # the next full regroup (no threads_max_id in meta until then).
    THREAD_KEYS_TABLE,
    # 10: each kept lead's thread rule and size on its row (store.leads.KEPT_THREAD_SQL).
    KEPT_THREAD_SQL,
    # 11: `report reps` counted and ranked from indexes alone (store.leads.REPS_INDEXES_SQL).
    REPS_INDEXES_SQL,
)
SCHEMA_VERSION = len(MIGRATIONS)

# A first import keeps the thread inputs of what it wrote, up to this many messages (about
# 60 MB per 100,000), so the thread assignment after it need not read them back (0.45 s
# per 100,000 messages, on the import's serial tail).
WRITTEN_LIMIT = 300_000
# The integer columns of the thread inputs (the rest are text).
_INPUT_ARROW = {"id": "int64", "automated": "int64", "time_ms": "int64"}
# Besides the thread inputs, what the kept-lead rebuild after a first import reads
# (analysis.kept.INPUT_EXTRA): the Message-ID and the kept headers.
_WRITTEN_EXTRA = ("message_id", "extra")
_WRITTEN_AT = [MESSAGE_COLUMNS.index(c) for c in (*THREAD_INPUT_COLUMNS[1:-1], *_WRITTEN_EXTRA)]


class _Written:
    """The thread inputs of every message this connection inserted into an empty cache, in
    id order, while nothing else has written to it. ``version`` is the connection's ``PRAGMA
    data_version`` then: it changes when any other connection commits."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.columns: list[list[Any]] = [[] for _ in _WRITTEN_AT]
        self.count = 0

    def add(self, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        by_column = list(zip(*rows, strict=True))
        for column, at in zip(self.columns, _WRITTEN_AT, strict=True):
            column.extend(by_column[at])
        self.count += len(rows)

    def frame(self, extra: Sequence[str] = ()) -> pd.DataFrame:
        """As ``thread_inputs(extra)`` reads them: ids 1..count, no thread ids yet. pandas
        types lists as ``read_sql_query`` types the same values."""
        import pandas as pd

        inputs = len(THREAD_INPUT_COLUMNS) - 2
        values = [range(1, self.count + 1), *self.columns[:inputs], [None] * self.count]
        values += [self.columns[inputs + _WRITTEN_EXTRA.index(c)] for c in extra]
        return pd.DataFrame(dict(zip((*THREAD_INPUT_COLUMNS, *extra), values, strict=True)))


class SQLiteCache(KeptLeads, CacheBase):
    """A replytime cache in one SQLite file."""

    backend = "sqlite"
    greatest = "max"
    label_agg = "group_concat(labels, ',')"
    # One pass over the table and a sort: SQLite would walk the thread index and look up
    # every row in random order (1.2 s instead of 3-13 s at a million messages).
    threads_sql = THREADS_SQL.replace("FROM messages ", "FROM messages NOT INDEXED ")
    # The pairing statement's pieces. Without statistics (no ANALYZE) SQLite looked every
    # lead thread up by id instead.
    pair_time_index = " INDEXED BY messages_time"
    # From the msg_key index in key order (index only: its rows carry the table's key, so
    # the account too); without the hint SQLite reads the account's rows and sorts their
    # msg_keys (2.4 s instead of 0.13 s at a million messages). count(DISTINCT) compares
    # neighbours in that order: 0.2 s where a DISTINCT subquery took 0.3 s.
    account_messages = ("(SELECT count(DISTINCT l.msg_key) FROM locations l "
                        "INDEXED BY locations_msg WHERE l.account = a.name)")
    json_values = json_integers = "SELECT value FROM json_each(?)"
    # SQLite has no "last '@'": the domain is d exactly when the address is d or ends with
    # '@' + d (domains holding an '@' never match, and are not bound). A suffix test per
    # domain cost half what cutting the domain out with rtrim/replace did.
    domain_in = ("EXISTS (SELECT 1 FROM internal_domains WHERE {a} = v "
                 "OR substr({a}, -length(v) - 1) = '@' || v)")
    # A suffix '.' || v holds no '@', so it lies within the part after the last '@': the
    # domain is then a subdomain of v.
    subdomain_in = ("EXISTS (SELECT 1 FROM internal_domains WHERE {a} = v "
                    "OR substr({a}, -length(v) - 1) IN ('@' || v, '.' || v))")
    # json_quote escapes whatever a list holds (quotes, backslashes, control characters) and
    # never puts a comma in an escape, so splitting the quoted text on commas gives a valid
    # JSON array.
    recipient_items = ("json_each('[' || replace(json_quote(coalesce(m.to_addrs, '') || ',' "
                       "|| coalesce(m.cc_addrs, '')), ',', '\",\"') || ']') AS r")

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = Path(path).expanduser()
        if not create and not self.path.exists():
            raise CacheError(f"no cache at {self.path}: run `replytime import` or `sync` first")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._written: _Written | None = None
        self._first_write = True
        self._bulk = False
        self._indexes_dropped = False
        self._index_builder: threading.Thread | None = None
        self._index_error: BaseException | None = None
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_conn: sqlite3.Connection | None = None
        self._shm: int | None = None  # the WAL index, open for reading (``_wal_backlog``)
        try:
            self._conn = self._connect()
            self._migrate()
            self._build_indexes(self._conn)
        except sqlite3.DatabaseError as exc:
            raise CacheError(f"{self.path} is not a usable replytime cache ({exc})") from None

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection, once a deferred index build running on it has ended."""
        if self._index_builder is not None:
            self._finish_index_build()
        return self._conn

    def _connect(self) -> sqlite3.Connection:
        # Used by one thread at a time: the index builder has it while the thread assignment
        # runs, and ``conn`` waits for the builder.
        conn = sqlite3.connect(
            self.path, timeout=30, isolation_level=None, check_same_thread=False,
            factory=_Connection,
        )
        _connections.add(conn)
        # A new file gets 16 KB pages (SQLite's default is 4 KB; an existing file keeps its
        # own): a quarter of the pages to write and checkpoint, 6% off a first import of
        # 100,000 messages; the weekly report at 1M messages is as fast or faster.
        conn.execute("PRAGMA page_size=16384")
        _set_wal(conn)
        conn.execute("PRAGMA synchronous=NORMAL")
        # 64 MB of page cache (default 2 MB): the msg_key and location indexes take inserts
        # in random order, and outgrow a small cache at a few 100k messages.
        conn.execute("PRAGMA cache_size=-65536")
        # Checkpoints run after commits, beside the writer (``_checkpoint_behind``).
        conn.execute("PRAGMA wal_autocheckpoint=0")
        return conn

    @property
    def where(self) -> str:
        return str(self.path)

    # -- schema ---------------------------------------------------------------------
    def _migrate(self) -> None:
        c = self.conn

        def version() -> int:
            c.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = c.execute("SELECT version FROM schema_version").fetchone()
            return row[0] if row else 0

        current = version()
        if current > SCHEMA_VERSION:
            raise CacheError(
                f"{self.path} was written by a newer replytime (schema {current}); upgrade"
            )
        if current == SCHEMA_VERSION:
            return
        # Writers of different accounts may open a new cache at once: one migrates.
        with self._flock(self._lock_dir() / "migrate.lock", None):
            self._apply_migrations(version())

    def _apply_migrations(self, version: int) -> None:
        c = self.conn
        for i in range(version, SCHEMA_VERSION):
            # executescript commits any open transaction first, so the script carries its own.
            try:
                c.executescript(
                    "BEGIN IMMEDIATE;" + MIGRATIONS[i]
                    + f"DELETE FROM schema_version; INSERT INTO schema_version VALUES ({i + 1});"
                    + "COMMIT;"
                )
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise

    # -- the dialect ----------------------------------------------------------------
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def _executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    def _frame(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        import pandas as pd  # not at import: `replytime import` starts without it

        # In chunks: one fetchall of a million rows would hold a Python tuple per row (about
        # four times the frame) at once. from_records types the columns as read_sql_query
        # does (the PostgreSQL backend builds its frames so too) in two thirds of its time.
        cur = self.conn.execute(sql, tuple(params))
        names = [d[0] for d in cur.description or ()]
        chunks = []
        while batch := cur.fetchmany(self.frame_chunk):
            chunks.append(pd.DataFrame.from_records(batch, columns=names, coerce_float=True))
        if len(chunks) == 1:
            return chunks[0]
        if not chunks:
            return pd.DataFrame.from_records([], columns=names, coerce_float=True)
        return pd.concat(chunks, ignore_index=True)

    def _glob_filter(self, column: str, globs: Sequence[str]) -> tuple[str, list[str]]:
        return " OR ".join(f"{column} GLOB ?" for _ in globs), list(globs)

    # -- a first import: indexes built afterwards, thread inputs kept as written ----
    @staticmethod
    def _build_indexes(conn: sqlite3.Connection) -> None:
        """Build the deferred indexes that are missing (in one transaction on ``conn``)."""
        names = [name for name, _ in DEFERRED_INDEXES]
        present = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name IN (?, ?)", names
        )}
        if len(present) == len(names):
            return
        with _immediate(conn):
            for _, sql in DEFERRED_INDEXES:
                conn.execute(sql)

    @contextmanager
    def bulk_write(self) -> Iterator[None]:
        """Many writes, then a thread assignment on this connection (an import). When the
        first write of this connection is one of them and finds the cache empty, the
        thread inputs of what is written are kept (``thread_inputs``), and the deferred
        indexes are dropped and built when the threads are next assigned (alongside, in a
        second thread), before the next write transaction after these, or at ``close``."""
        self._bulk = True
        try:
            yield
        finally:
            self._bulk = False

    def _start_index_build(self) -> None:
        """Build the deferred indexes in a thread while this one assigns threads: SQLite
        runs CREATE INDEX without Python's lock, so the build takes the second core. It
        uses this connection (its page cache stays warm for the thread-id update after);
        ``conn`` waits for it."""
        if not self._indexes_dropped or self._bulk:
            return
        self._indexes_dropped = False

        def build() -> None:
            try:
                self._build_indexes(self._conn)
            except BaseException as exc:  # raised in this thread by _finish_index_build
                self._index_error = exc

        self._index_builder = threading.Thread(target=build, name="replytime-indexes")
        self._index_builder.start()

    def _finish_index_build(self) -> None:
        if self._index_builder is not None:
            self._index_builder.join()
            self._index_builder = None  # before raising: conn is usable after a failure
            if self._index_error is not None:
                error, self._index_error = self._index_error, None
                raise error
        if self._indexes_dropped and not self._bulk:
            self._indexes_dropped = False
            self._build_indexes(self.conn)

    def _data_version(self) -> int:
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    def _still_exact(self, written: _Written, added: int = 0) -> bool:
        """Whether the kept copy plus ``added`` rows is what the cache holds: no other
        connection wrote, and the ids grew by exactly the rows kept (every row was new)."""
        return (self._data_version() == written.version
                and self.last_message_id() == written.count + added)

    def write_rows(
        self,
        account: str,
        rows: Sequence[Sequence[Any]],
        locations: Sequence[tuple[str, str, str, str]],
        **options: Any,
    ) -> None:
        # A bulk write (an import) that starts on an empty cache: its ids count from 1, and
        # this connection threads them next. A sync writes here and threads on another
        # connection, so keeping its rows would only hold memory.
        if self._first_write and self._bulk:
            self._first_write = False
            version = self._data_version()
            if self.last_message_id() == 0:
                self._written = _Written(version)
                with self.transaction():
                    for name, _ in DEFERRED_INDEXES:
                        self.conn.execute(f"DROP INDEX IF EXISTS {name}")
                self._indexes_dropped = True
        super().write_rows(account, rows, locations, **options)
        written = self._written
        if written is None:
            return
        # Kept while every row was a new message (ids grew by exactly their number), nothing
        # was removed, and no other connection wrote; otherwise threading reads the cache.
        if (
            options.get("removed")
            or written.count + len(rows) > WRITTEN_LIMIT
            or not self._still_exact(written, len(rows))
        ):
            self._written = None
        else:
            written.add(rows)

    def thread_inputs(self, extra: Sequence[str] = ()) -> pd.DataFrame:
        """The thread inputs (and the messages columns ``extra``), from a first import's
        copy when it is still exact and holds them. They are asked for just before threads
        are assigned: the deferred index build starts here, to run alongside the rest."""
        written = self._written
        if (written is None or not written.count or not set(extra) <= set(_WRITTEN_EXTRA)
                or not self._still_exact(written)):
            inputs = self._inputs_frame(extra)
            self._start_index_build()
            return inputs
        self._start_index_build()  # the frame below needs no connection
        return written.frame(extra)

    def _inputs_frame(self, extra: Sequence[str]) -> pd.DataFrame:
        """Every message's thread inputs (and ``extra``) as ``_frame`` reads them, through
        Arrow (``arrow_rows``: 4.5 s -> 3.5 s at a million messages); by ``_frame`` when
        a value is not of its column's declared type."""
        sql = every_input_sql(extra)
        names = (*THREAD_INPUT_COLUMNS, *extra)
        table = arrow_rows(self.conn.execute(sql), {n: _INPUT_ARROW.get(n, "string")
                                                    for n in names}, 16_384)
        frame = None if table is None else records_frame(table, self.frame_chunk)
        return frame if frame is not None else self._frame(sql)

    def _apply_thread_ids(self, ids: list[int], thread_ids: list[str]) -> None:
        self._written = None  # threaded now: a later rebuild reads the cache
        # Thread ids are message keys, in random order: updating many rows through the index
        # touches a random index page per row. Past a share of the table (a first import, a
        # new roster) dropping the index and building it again, sorted, costs less. Inside
        # the caller's transaction, so a crash leaves the index as it was.
        rebuild = len(ids) >= THREAD_INDEX_REBUILD and len(ids) >= self.message_count() // 4
        if rebuild:
            self.conn.execute("DROP INDEX messages_thread")
        self.conn.executemany(
            "UPDATE messages SET thread_id = ? WHERE id = ?", zip(thread_ids, ids, strict=True)
        )
        if rebuild:
            self.conn.execute(THREAD_INDEX_SQL)

    def status(self) -> dict[str, Any]:
        self._finish_index_build()  # its index hint needs the deferred indexes
        return super().status()

    def _insert_thread_keys(self, keys: pd.DataFrame, *, fresh: bool = False) -> None:
        # Into an empty table: the thread index built once, sorted, costs a third of
        # keeping it up row by row (220,000 rows at 1M messages: 0.55 s instead of 1.4 s).
        if fresh:
            self.conn.execute("DROP INDEX thread_keys_thread")
        super()._insert_thread_keys(keys)
        if fresh:
            self.conn.execute(THREAD_KEYS_INDEX_SQL)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._finish_index_build()
        self.settle()  # the WAL as short as SQLite's own checkpoints keep it
        with _immediate(self.conn) as conn:
            yield conn
        self._checkpoint_behind()

    # -- checkpoints beside the writer (CHECKPOINT_FRAMES) ------------------------------
    def _checkpoint_behind(self) -> None:
        """Start a checkpoint in a thread when CHECKPOINT_FRAMES frames wait (also when the
        WAL index cannot be read: the WAL must not grow without end)."""
        if self._checkpointer is not None:
            return
        if self._shm is None:
            # Open once: it stays while this connection is open (and a file read afresh
            # after every commit would be seen by whoever counts the files opened).
            with contextlib.suppress(OSError):
                self._shm = os.open(self.path.with_name(self.path.name + "-shm"), os.O_RDONLY)
        backlog = None if self._shm is None else _wal_backlog(self._shm)
        if backlog is not None and backlog < CHECKPOINT_FRAMES:
            return
        if self._checkpoint_conn is None:
            self._checkpoint_conn = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False,
                factory=_Connection)
            _connections.add(self._checkpoint_conn)
        conn = self._checkpoint_conn

        def run() -> None:
            # PASSIVE: copies what no reader still needs, never waits for a lock. A failure
            # loses nothing (the frames stay in the WAL for the next checkpoint).
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

        self._checkpointer = threading.Thread(target=run, name="replytime-checkpoint")
        _checkpoints.add(self._checkpointer)
        self._checkpointer.start()

    def settle(self) -> None:
        """Wait for a checkpoint running beside the writer to end."""
        if self._checkpointer is not None:
            self._checkpointer.join()
            self._checkpointer = None

    # -- locks: flock on files next to the cache (released when the process dies) ------
    @contextmanager
    def _flock(self, lock_path: Path, refused: str | None) -> Iterator[None]:
        """Hold an exclusive flock on ``lock_path``: try once (LockedError ``refused``) or
        wait for it (``refused`` None)."""
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        _held_locks.add(fd)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if refused else 0))
            except BlockingIOError:
                raise LockedError(refused) from None
            yield
        finally:
            _held_locks.discard(fd)
            os.close(fd)

    def _lock_dir(self) -> Path:
        d = self.path.with_name(self.path.name + ".locks")
        d.mkdir(mode=0o700, exist_ok=True)
        return d

    @contextmanager
    def lock(self, what: str = "cache") -> Iterator[None]:
        """Hold an exclusive lock for a writer, so two imports or syncs never interleave."""
        with self._flock(
            self.path.with_name(self.path.name + ".lock"),
            f"another replytime process is writing to {self.path}; try again later",
        ):
            yield

    @contextmanager
    def lock_account(self, account: str) -> Iterator[None]:
        """One writer per account: a lock file per account name in ``<cache>.locks/``."""
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", account)[:60]
        digest = hashlib.sha1(account.encode()).hexdigest()[:12]
        lock_path = self._lock_dir() / f"account-{safe}-{digest}.lock"
        with self._flock(lock_path, self._locked_message(account)):
            yield

    @contextmanager
    def _threads_lock(self) -> Iterator[None]:
        with self._flock(self._lock_dir() / "threads.lock", None):
            yield

    @contextmanager
    def leads_lock(self) -> Iterator[None]:
        with self._flock(self._lock_dir() / "leads.lock", None):
            yield

    @contextmanager
    def alerts_lock(self) -> Iterator[None]:
        """One `replytime alert` at a time: a second waits, then sees what the first sent."""
        with self._flock(self._lock_dir() / "alerts.lock", None):
            yield

    def close(self) -> None:
        try:
            self._finish_index_build()
        finally:
            self.settle()
            if self._checkpoint_conn is not None:
                self._checkpoint_conn.close()
            if self._shm is not None:
                os.close(self._shm)
                self._shm = None
            self.conn.close()  # the last connection: checkpoints the rest, removes the WAL
