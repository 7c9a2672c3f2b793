"""What every cache backend shares: the row layout, the upsert rules, the reads the matcher
and metrics use, status assembly and the threads-table rebuild.

A backend (``sqlite.SQLiteCache``, ``postgres.PostgresCache``) supplies the connection,
schema migrations, transactions, locks and the few places where the SQL dialects differ.
SQL here uses ``?`` placeholders with bound parameters; a backend translates them.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:  # imported where frames are built: an import need not wait for pandas
    import pandas as pd

from replytime.model import (
    MESSAGE_COLUMNS,
    PROBLEM_NO_TIME,
    MessageRecord,
    StoredMessage,
    stored_message,
)


class Grouping(Protocol):
    """What a thread assignment gives the store (``analysis.threads.Threading``): the thread
    id per message id, and the subject rule's joins (``THREAD_LINKS_SQL``'s columns)."""

    thread_id: pd.Series
    links: pd.DataFrame


def upsert_sql(greatest: str) -> str:
    """The message upsert: a better time source replaces a worse one (with its no-time flag),
    a provider thread id and kept headers fill in once, nothing else changes. A message that
    changed loses its thread id, like a new one, so ``refresh_threads`` knows there is
    threading to do. ``greatest`` is the dialect's two-argument maximum (SQLite ``max``,
    PostgreSQL ``greatest``)."""
    m = "messages"
    return f"""
INSERT INTO messages ({", ".join(MESSAGE_COLUMNS)})
VALUES ({", ".join("?" for _ in MESSAGE_COLUMNS)})
ON CONFLICT (msg_key) DO UPDATE SET
    thread_id = NULL,
    time_ms = CASE WHEN excluded.time_source > {m}.time_source
                   THEN excluded.time_ms ELSE {m}.time_ms END,
    time_offset = CASE WHEN excluded.time_source > {m}.time_source
                       THEN coalesce(excluded.time_offset, {m}.time_offset)
                       ELSE {m}.time_offset END,
    problems = CASE WHEN excluded.time_source > {m}.time_source
                    THEN ({m}.problems & ~{PROBLEM_NO_TIME})
                         | (excluded.problems & {PROBLEM_NO_TIME})
                    ELSE {m}.problems END,
    time_source = {greatest}({m}.time_source, excluded.time_source),
    provider_thread_id = coalesce({m}.provider_thread_id, excluded.provider_thread_id),
    extra = CASE WHEN {m}.extra IS NULL OR {m}.extra = '{{}}'
                 THEN excluded.extra ELSE {m}.extra END
WHERE excluded.time_source > {m}.time_source
   OR ({m}.provider_thread_id IS NULL AND excluded.provider_thread_id IS NOT NULL)
   OR (({m}.extra IS NULL OR {m}.extra = '{{}}') AND excluded.extra <> '{{}}')
"""


LOCATION_SQL = """
INSERT INTO locations (account, location, msg_key, labels) VALUES (?, ?, ?, ?)
ON CONFLICT (account, location) DO UPDATE
SET msg_key = excluded.msg_key, labels = excluded.labels
WHERE locations.msg_key <> excluded.msg_key OR locations.labels <> excluded.labels
"""

# The files an import read, per account (schema 4): what a file was when it was read, so a
# file still the same is passed over without being opened, and where an mbox's last complete
# message ended, so one that only grew is read from there (connectors/files.py).
FILES_TABLE = """
    CREATE TABLE files (
        account TEXT NOT NULL,
        place TEXT NOT NULL,          -- a message file's location, an mbox's path
        name TEXT NOT NULL,           -- its path when last seen (a Maildir flag renames it)
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,    -- -1 when modified just before it was read: not trusted
        inode INTEGER NOT NULL,
        mbox_end INTEGER,             -- an mbox: where its last complete message ends
        mbox_digest TEXT,             -- an mbox: digest of the bytes around its start and end
        PRIMARY KEY (account, place)
    ) WITHOUT ROWID;
"""

# Stale-lead alerts already delivered (output/alerts.py), one row per lead and channel, so
# a rerun posts nothing twice. Written only after the delivery succeeded.
ALERTS_TABLE = """
    CREATE TABLE alerts (
        lead_key TEXT NOT NULL,       -- the lead's Message-ID, else 'thread:' + its thread id
        channel TEXT NOT NULL,        -- slack | teams | mail
        alerted_at TEXT NOT NULL,     -- when it was delivered, UTC ISO 8601
        PRIMARY KEY (lead_key, channel)
    ) WITHOUT ROWID;
"""

FILE_COLUMNS = ("account", "place", "name", "size", "mtime_ns", "inode", "mbox_end",
                "mbox_digest")
FILE_SQL = (
    f"INSERT INTO files ({', '.join(FILE_COLUMNS)}) VALUES ({', '.join('?' * 8)}) "
    "ON CONFLICT (account, place) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in FILE_COLUMNS[2:])
)


def maildir_places_sql(dir_of: str, last5: str, has_hash: str) -> str:
    """The statements moving a files account's Maildir places (locations and skipped) from
    ``<folder>/cur/<name>`` or ``<folder>/new/<name>`` to ``<folder>/<name>``, as
    ``files.maildir_location`` now gives them. The dialect's pieces: ``dir_of`` the text up
    to the last '/' of ``{col}``, ``last5`` the last 5 characters of ``{d}``, ``has_hash``
    whether the name after ``{d}`` holds a '#' (an mbox message, which keeps its place).

    cur/ first, then new/: a message imported from both (moved between two imports) keeps
    one place, its cur/ one; the new/ row goes when it names the same message (the same
    place of a skipped file), and otherwise stays as it was."""
    out = []
    for table in ("locations", "skipped"):
        col = f"{table}.location"
        d = dir_of.format(col=col)
        new = f"substr({d}, 1, length({d}) - 4) || substr({col}, length({d}) + 1)"
        maildir = (f"{table}.account IN (SELECT name FROM accounts WHERE type = 'files') "
                   f"AND NOT {has_hash.format(col=col, d=d)}")
        same = "" if table == "skipped" else f" AND t.msg_key = {table}.msg_key"
        for sub in ("cur", "new"):
            out.append(
                f"UPDATE {table} SET location = {new} WHERE {maildir} "
                f"AND {last5.format(d=d)} = '/{sub}/' AND NOT EXISTS (SELECT 1 FROM {table} t "
                f"WHERE t.account = {table}.account AND t.location = {new});"
            )
        out.append(
            f"DELETE FROM {table} WHERE {maildir} AND {last5.format(d=d)} IN ('/cur/', '/new/') "
            f"AND EXISTS (SELECT 1 FROM {table} t WHERE t.account = {table}.account "
            f"AND t.location = {new}{same});"
        )
    return "\n".join(out) + "\n"


SKIPPED_SQL = (
    "INSERT INTO skipped (account, location, reason) VALUES (?, ?, ?) "
    "ON CONFLICT (account, location) DO NOTHING"
)

ACCOUNT_SQL = (
    "INSERT INTO accounts (name, type, last_sync, state) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET last_sync = excluded.last_sync, "
    "state = CASE WHEN ? THEN excluded.state ELSE accounts.state END"
)

# Same statement in both dialects: per-thread span for period selection, and the rule that
# grouped the thread (threads.RULES), decided as threads.group_threads decides it: the
# subject rule's threads are those thread_links names (written just before), and without a
# provider id or a subject join several messages were joined by their headers. In SQL, from
# the stored thread ids, so the table always describes the messages as they are.
THREADS_SQL = (
    "INSERT INTO threads (thread_id, start_ms, first_ms, last_ms, messages, rule) "
    "SELECT thread_id, min(CASE WHEN automated = 0 THEN time_ms END), "
    "min(time_ms), max(time_ms), count(*), "
    "CASE WHEN count(provider_thread_id) > 0 THEN 'provider' "
    "WHEN thread_id IN (SELECT l.thread_id FROM thread_links l) THEN 'subject' "
    "WHEN count(*) > 1 THEN 'headers' ELSE 'single' END FROM messages "
    "WHERE thread_id IS NOT NULL GROUP BY thread_id"
)
THREAD_LINKS_SQL = (
    "INSERT INTO thread_links (thread_id, joined_key, to_key, address) VALUES (?, ?, ?, ?)"
)
# A threads row, as THREADS_SQL computes it. An incremental regroup computes the rows of the
# threads it wrote from the messages it holds (``thread_rows``) and writes only the columns
# that changed: an UPDATE that sets an indexed column rewrites its index entry even when the
# value is the same (1,000 new messages at 1M: the threads_start pages of every thread
# reached).
THREAD_ROW_COLUMNS = ("thread_id", "start_ms", "first_ms", "last_ms", "messages", "rule")


def thread_rows(inputs: pd.DataFrame, thread_id: pd.Series,
                subject_threads: set[str]) -> dict[str, tuple[Any, ...]]:
    """THREADS_SQL's row (``THREAD_ROW_COLUMNS`` after the key) of every thread of
    ``thread_id`` (per row of ``inputs``, which hold every message of those threads), keyed
    by thread id; ``subject_threads``: the threads thread_links names."""
    import numpy as np
    import pandas as pd

    time_ms = pd.to_numeric(inputs["time_ms"]).to_numpy(dtype="float64")
    person = ~inputs["automated"].to_numpy(dtype=bool)
    frame = pd.DataFrame({
        "thread_id": thread_id.to_numpy(dtype=object),
        "time": time_ms,
        "person": np.where(person, time_ms, np.nan),
        "provider": inputs["provider_thread_id"].notna().to_numpy(),
    })
    g = frame.groupby("thread_id", sort=True)
    agg = pd.DataFrame({"start": g["person"].min(), "first": g["time"].min(),
                        "last": g["time"].max(), "messages": g.size(),
                        "provider": g["provider"].any()})
    names = agg.index.to_numpy(dtype=object)
    subject = np.fromiter((t in subject_threads for t in names), bool, len(names))
    count = agg["messages"].to_numpy()
    rule = np.select([agg["provider"].to_numpy(), subject, count > 1],
                     ["provider", "subject", "headers"], "single")

    def ms(column: str) -> list[int | None]:
        values = agg[column].to_numpy()
        return [None if v != v else int(v) for v in values.tolist()]

    return dict(zip(names.tolist(), zip(ms("start"), ms("first"), ms("last"),
                                        count.tolist(), rule.tolist(), strict=True),
                    strict=True))


# Schema 9: per thread, a digest of every link by which a new message could join or change
# it (analysis/rethread.py, ``link_keys``), so an import of a few messages regroups only the
# threads they reach instead of the whole cache. ``threads_max_id`` in meta: the highest
# message id they cover (absent: not filled; the next refresh regroups everything).
THREAD_KEYS_TABLE = """
    CREATE TABLE thread_keys (
        key TEXT NOT NULL,            -- digest of a placeholder, provider id or subject+address
        thread_id TEXT NOT NULL,
        PRIMARY KEY (key, thread_id)
    ) WITHOUT ROWID;
    CREATE INDEX thread_keys_thread ON thread_keys(thread_id);
"""
THREAD_KEYS_INDEX_SQL = "CREATE INDEX thread_keys_thread ON thread_keys(thread_id)"
THREAD_KEYS_SQL = "INSERT INTO thread_keys (key, thread_id) VALUES (?, ?)"

# What threads.group_threads reads: every message, in id order. ``automated`` and
# ``reply_to``: the subject rule's participants are people's From/To/Cc/Reply-To only.
THREAD_INPUT_COLUMNS = (
    "id", "msg_key", "in_reply_to", "refs", "provider_thread_id", "subject",
    "from_addr", "to_addrs", "cc_addrs", "reply_to", "automated", "time_ms", "thread_id",
)


def _inputs_sql(extra: Sequence[str]) -> str:
    """The thread inputs and the messages columns ``extra``, up to WHERE."""
    if not set(extra) <= set(MESSAGE_COLUMNS):
        raise ValueError(f"not a messages column: {sorted(set(extra) - set(MESSAGE_COLUMNS))}")
    cols = ", ".join((*THREAD_INPUT_COLUMNS, *extra))
    return f"SELECT {cols} FROM messages WHERE "


def every_input_sql(extra: Sequence[str] = ()) -> str:
    """The thread inputs and the messages columns ``extra`` of every message, in id order."""
    return _inputs_sql(extra).removesuffix("WHERE ") + "ORDER BY id"


def records_frame(table: Any, chunk: int) -> pd.DataFrame | None:
    """``table`` (Arrow: a PostgreSQL COPY parsed, kept rows read from SQLite) as pandas,
    as from_records builds it per ``chunk`` rows and pandas.concat joins the chunks (what
    both backends' ``_frame`` return); None where they would differ."""
    import pandas as pd
    import pyarrow as pa

    n = table.num_rows
    nulls_only = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        if column.null_count == 0:
            continue
        if column.null_count == n:  # from_records: object None in every chunk
            nulls_only.append(name)
            continue
        if pa.types.is_boolean(column.type):  # True/False/None: object
            return None
        for start in range(0, n, chunk):
            part = column.slice(start, chunk)
            if part.null_count == len(part):
                return None
    if not nulls_only:
        return table.to_pandas()
    df = table.drop_columns(nulls_only).to_pandas()
    for name in nulls_only:
        df[name] = pd.Series([None] * n, dtype=object)
    return df[table.column_names]


def arrow_rows(cursor: Any, types: dict[str, str], batch: int) -> Any:
    """The rows of a DB-API ``cursor`` (its columns ``types``: name -> Arrow type alias, in
    order) as an Arrow table, ``batch`` rows at a time, each batch of tuples to Arrow in one
    C pass; None when there are none, or a value is not of its column's type. For
    ``records_frame``, which makes it the frame ``_frame`` reads (SQLite: a third less
    time than from_records' per-value type inference)."""
    import gc

    import pyarrow as pa

    row = pa.struct([(n, pa.type_for_alias(t)) for n, t in types.items()])
    chunks = []
    # The rows are tuples of plain values (no cycles): the collector's passes over the
    # growing heap of them cost a fifth of the read.
    collecting = gc.isenabled()
    gc.disable()
    try:
        while rows := cursor.fetchmany(batch):
            try:
                chunks.append(pa.array(rows, type=row))
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                return None
            del rows
    finally:
        if collecting:
            gc.enable()
    if not chunks:
        return None
    return pa.Table.from_struct_array(pa.chunked_array(chunks, type=row))


def utc_now_text() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())


class CacheBase(ABC):
    """The cache interface every backend offers; see ``SQLiteCache`` for the semantics."""

    backend: ClassVar[str]
    #: the dialect's two-argument maximum
    greatest: ClassVar[str]
    #: the dialect's aggregate joining a location's labels with commas
    label_agg: ClassVar[str]
    #: the statement refilling the threads table from the messages' thread ids
    threads_sql: ClassVar[str] = THREADS_SQL
    #: rows per fetch when reading a frame (memory: one chunk of Python tuples at a time)
    frame_chunk: int = 100_000

    # The lead/first-reply statement (``cache.pairing.pairs_sql``) differs between the
    # dialects in a few places: the internal sets bound as one JSON parameter each, whether
    # an address's domain (the part after its LAST '@', the whole address without one, as
    # Roster.is_internal's rsplit) is an internal domain, and splitting a comma-separated
    # recipient list.
    #: an index hint after ``FROM messages m`` for reading the period's messages ("" none)
    pair_time_index: ClassVar[str]
    #: a SELECT of the elements, as text, of the JSON array of strings bound at its ``?``
    json_values: ClassVar[str]
    #: the same of a JSON array of integers, as integers
    json_integers: ClassVar[str]
    #: SQL true when the domain of the (not null) address ``{a}`` is one in
    #: ``internal_domains(v)``; ``{a}`` is replaced by a column
    domain_in: ClassVar[str]
    #: ``domain_in`` where a subdomain of an internal domain counts too
    #: (``[team] internal_subdomains``): the domain is ``v`` or ends with ``'.' || v``
    subdomain_in: ClassVar[str]
    #: a FROM item giving one row ``r.value`` per item of ``m.to_addrs`` and ``m.cc_addrs``
    #: split on commas (empty items included)
    recipient_items: ClassVar[str]
    #: the distinct messages of account ``a.name`` (its locations' msg_keys), for ``status``
    account_messages: ClassVar[str] = (
        "(SELECT count(*) FROM (SELECT DISTINCT l.msg_key FROM locations l "
        "WHERE l.account = a.name) k)")

    # -- what a backend supplies ----------------------------------------------------------
    @property
    @abstractmethod
    def where(self) -> str:
        """The cache's place for messages and ``status``: a path, or a URL without password."""

    @abstractmethod
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement (``?`` placeholders); returns a cursor (fetchone, fetchall,
        iteration)."""

    @abstractmethod
    def _executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    @abstractmethod
    def _frame(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        """A query's rows as a DataFrame typed as ``pandas.read_sql_query`` types them."""

    def analytic_frame(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        """``_frame`` for one large read-only statement (joins, window functions over a
        period, as ``cache.pairing``'s), with whatever the backend needs to run such a
        statement well."""
        return self._frame(sql, params)

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Any]:
        """One write transaction, rolled back on any exception."""

    @abstractmethod
    def lock(self, what: str = "cache") -> AbstractContextManager[None]:
        """Cache-wide exclusive writer lock (non-blocking; LockedError when held)."""

    @abstractmethod
    def lock_account(self, account: str) -> AbstractContextManager[None]:
        """Exclusive right to import or sync ``account`` (non-blocking; LockedError when
        another process holds it). Writers of different accounts run side by side."""

    @abstractmethod
    def _threads_lock(self) -> AbstractContextManager[None]:
        """Cache-wide lock held while the thread assignment is rebuilt; waits for it."""

    @abstractmethod
    def _glob_filter(self, column: str, globs: Sequence[str]) -> tuple[str, list[str]]:
        """SQL matching ``column`` against any of the (case-sensitive, GLOB-style) globs."""

    @abstractmethod
    def _apply_thread_ids(self, ids: list[int], thread_ids: list[str]) -> None:
        """Set messages.thread_id for those message ids (inside a transaction)."""

    @abstractmethod
    def close(self) -> None: ...

    def bulk_write(self) -> AbstractContextManager[None]:
        """Around many writes (an import): a backend may defer index upkeep until after."""
        return nullcontext()

    def settle(self) -> None:
        """Wait for what a backend does beside the writer after a commit (SQLite: a WAL
        checkpoint); nothing by default."""
        return None

    @property
    def schema_version(self) -> int:
        return int(self._execute("SELECT version FROM schema_version").fetchone()[0])

    def _locked_message(self, account: str) -> str:
        return (
            f"account {account!r} is being imported or synced into {self.where} by another "
            "replytime process; try again when it has finished"
        )

    def __enter__(self) -> CacheBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes ---------------------------------------------------------------------------
    def write_batch(
        self,
        account: str,
        items: Sequence[tuple[str, MessageRecord]],
        *,
        account_type: str = "files",
        state: dict[str, Any] | None = None,
        skipped: Sequence[tuple[str, str]] = (),
        removed: Sequence[str] = (),
    ) -> None:
        """Store (location, record) pairs, skipped places, removals and the account's sync
        state in one transaction, so a sync killed between batches resumes exactly."""
        self.write_stored(
            account, [stored_message(loc, r) for loc, r in items], account_type=account_type,
            state=state, skipped=skipped, removed=removed,
        )

    def write_stored(
        self,
        account: str,
        items: Sequence[StoredMessage],
        *,
        account_type: str = "files",
        state: dict[str, Any] | None = None,
        skipped: Sequence[tuple[str, str]] = (),
        removed: Sequence[str] = (),
    ) -> None:
        """``write_batch`` for messages already in their stored shape (``stored_message``)."""
        self.write_rows(
            account, [row for _, row, _ in items],
            [(account, loc, row[0], labels) for loc, row, labels in items],
            account_type=account_type, state=state, skipped=skipped, removed=removed,
        )

    def write_rows(
        self,
        account: str,
        rows: Sequence[Sequence[Any]],
        locations: Sequence[tuple[str, str, str, str]],
        *,
        account_type: str = "files",
        state: dict[str, Any] | None = None,
        skipped: Sequence[tuple[str, str]] = (),
        removed: Sequence[str] = (),
        files: Sequence[Sequence[Any]] = (),
        forget_files: bool = False,
    ) -> None:
        """``write_stored`` for rows already bound: values of ``MESSAGE_COLUMNS`` and
        (account, location, msg_key, labels) in the same order. The file importer's worker
        processes build these, so the single writer does not. ``files`` are rows of
        ``FILE_COLUMNS`` for files whose messages are all in this transaction or committed
        before it: a crash never records a file whose messages are not stored.
        ``forget_files`` first drops the files recorded for ``account`` before (read with
        other kept headers)."""
        with self.transaction():
            if forget_files:
                self._execute("DELETE FROM files WHERE account = ?", (account,))
            self._executemany(upsert_sql(self.greatest), rows)
            self._executemany(LOCATION_SQL, locations)
            if skipped:
                self._executemany(SKIPPED_SQL, [(account, loc, why) for loc, why in skipped])
            if files:
                self._executemany(FILE_SQL, files)
            if removed:
                self._remove(account, removed)
            self._touch_account(account, account_type, state)

    def _remove(self, account: str, locations: Sequence[str]) -> None:
        keys = [
            row[0]
            for loc in locations
            for row in self._execute(
                "SELECT msg_key FROM locations WHERE account = ? AND location = ?", (account, loc)
            ).fetchall()
        ]
        self._executemany(
            "DELETE FROM locations WHERE account = ? AND location = ?",
            [(account, loc) for loc in locations],
        )
        self._executemany(
            "DELETE FROM messages WHERE msg_key = ? "
            "AND NOT EXISTS (SELECT 1 FROM locations WHERE locations.msg_key = messages.msg_key)",
            [(k,) for k in keys],
        )
        # A removed message can split or rename its thread: the next refresh rebuilds.
        self.set_meta("threads_fingerprint", "")

    def _touch_account(self, account: str, account_type: str, state: dict[str, Any] | None) -> None:
        self._execute(
            ACCOUNT_SQL,
            (account, account_type, utc_now_text(), json.dumps(state or {}), state is not None),
        )

    def set_state(self, account: str, state: dict[str, Any], account_type: str = "files") -> None:
        with self.transaction():
            self._touch_account(account, account_type, state)

    def account_state(self, account: str) -> dict[str, Any]:
        row = self._execute("SELECT state FROM accounts WHERE name = ?", (account,)).fetchone()
        return json.loads(row[0]) if row else {}

    def known_locations(self, account: str, prefix: str = "") -> set[str]:
        rows = self._execute(
            "SELECT location FROM locations WHERE account = ? AND substr(location, 1, ?) = ?",
            (account, len(prefix), prefix),
        ).fetchall()
        return {r[0] for r in rows}

    def file_states(self, account: str) -> dict[str, tuple[Any, ...]]:
        """The files ``account`` imported, in one query: place -> (name, size, mtime_ns,
        inode, mbox_end, mbox_digest)."""
        rows = self._execute(
            f"SELECT {', '.join(FILE_COLUMNS[1:])} FROM files WHERE account = ?", (account,)
        ).fetchall()
        return {r[0]: tuple(r[1:]) for r in rows}

    def alerted(self, channel: str, lead_keys: Sequence[str]) -> set[str]:
        """Which of these leads were already alerted on ``channel``."""
        out: set[str] = set()
        keys = list(lead_keys)
        for i in range(0, len(keys), 500):  # within every backend's parameter limit
            chunk = keys[i:i + 500]
            marks = ", ".join("?" * len(chunk))
            out.update(r[0] for r in self._execute(
                f"SELECT lead_key FROM alerts WHERE channel = ? AND lead_key IN ({marks})",
                (channel, *chunk)).fetchall())
        return out

    def mark_alerted(self, channel: str, lead_keys: Sequence[str]) -> None:
        """Record these leads as alerted on ``channel`` (after the delivery succeeded), in
        one transaction; a lead already recorded keeps its first time."""
        when = utc_now_text()
        with self.transaction():
            self._executemany(
                "INSERT INTO alerts (lead_key, channel, alerted_at) VALUES (?, ?, ?) "
                "ON CONFLICT (lead_key, channel) DO NOTHING",
                [(k, channel, when) for k in lead_keys])

    def get_meta(self, key: str) -> str | None:
        row = self._execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- threads --------------------------------------------------------------------------
    def thread_inputs(self, extra: Sequence[str] = ()) -> pd.DataFrame:
        """The thread inputs (and the messages columns ``extra``) of every message, in id
        order."""
        return self._frame(every_input_sql(extra))

    def set_threads(self, assignments: pd.Series, current: pd.Series | None = None) -> int:
        """Write thread ids (indexed by message id); returns how many changed. ``current``
        holds the ids as they are (read again when not given). Messages written after
        ``assignments`` was computed keep theirs (or none: ``has_unthreaded`` then asks for
        the next rebuild)."""
        if current is None:
            current = self._frame("SELECT id, thread_id FROM messages").set_index("id")[
                "thread_id"
            ]
        new = assignments.reindex(current.index)
        changed = new[new.notna() & new.ne(current)]
        with self.transaction():
            self._apply_thread_ids(changed.index.tolist(), changed.tolist())
        return len(changed)

    def has_unthreaded(self) -> bool:
        q = "SELECT 1 FROM messages WHERE thread_id IS NULL LIMIT 1"
        return self._execute(q).fetchone() is not None

    def rebuild_threads(
        self, assign: Callable[[pd.DataFrame], Grouping | pd.Series], fingerprint: str,
        extra: Sequence[str] = (),
    ) -> int:
        """Re-assign every thread id and refill the threads, thread_links and thread_keys
        tables, in one transaction. ``assign`` (given the thread inputs, with the messages
        columns ``extra``) gives a ``Grouping``
        (``analysis.threads.Threading``), or only the thread ids (no subject-rule links then);
        a grouping with ``keys`` (thread_id, key rows; asked for after the thread ids are
        written, so they may be computed meanwhile) fills thread_keys, so the next
        refresh may regroup only what new messages reach (``regroup_threads``). Holds the
        cache-wide threads lock (waiting for another process's rebuild to finish), so
        concurrent writers of different accounts never interleave two rebuilds."""
        import pandas as pd  # not at import: `replytime import` starts without it

        with self._threads_lock():
            inputs = self.thread_inputs(extra)
            current = inputs.set_index("id")["thread_id"]
            found = assign(inputs)
            ids = found if isinstance(found, pd.Series) else found.thread_id
            links = [] if isinstance(found, pd.Series) else list(
                found.links[["thread_id", "joined_key", "to_key", "address"]]
                .itertuples(index=False, name=None))
            new = ids.reindex(current.index)
            changed = new[new.notna() & new.ne(current)]
            with self.transaction():
                self._apply_thread_ids(changed.index.tolist(), changed.tolist())
                self._execute("DELETE FROM thread_links")
                if links:  # few: the subject rule's joins only
                    self._executemany(THREAD_LINKS_SQL, links)
                self._execute("DELETE FROM threads")
                self._execute(self.threads_sql)
                self._execute("DELETE FROM thread_keys")
                # Asked for last: they may still be computed beside these writes.
                keys = None if isinstance(found, pd.Series) else getattr(found, "keys", None)
                if keys is None:
                    self._execute("DELETE FROM meta WHERE key = 'threads_max_id'")
                else:
                    self._insert_thread_keys(keys, fresh=True)
                    top = int(inputs["id"].max()) if len(inputs) else 0
                    self.set_meta("threads_max_id", str(top))
                self.set_meta("threads_fingerprint", fingerprint)
        return len(changed)

    # -- an incremental regroup (analysis/rethread.py) --------------------------------------
    def threads_max_id(self) -> int | None:
        """The highest message id thread_keys covers; None when they are not kept."""
        value = self.get_meta("threads_max_id")
        return int(value) if value else None

    def unthreaded_inputs(self, extra: Sequence[str] = ()) -> pd.DataFrame:
        """The thread inputs (and the ``extra`` columns) of the messages without a thread
        id, in id order."""
        return self._frame(_inputs_sql(extra) + "thread_id IS NULL ORDER BY id")

    def thread_inputs_of(self, thread_ids: Sequence[str], extra: Sequence[str] = ()
                         ) -> pd.DataFrame:
        """The thread inputs (and the ``extra`` columns) of every message of these threads,
        in id order."""
        return self._frame(
            _inputs_sql(extra) + f"thread_id IN ({self.json_values}) ORDER BY id",
            (json.dumps(sorted(thread_ids)),))

    def threads_reached(self, msg_keys: Sequence[str], keys: Sequence[str]) -> set[str]:
        """The threads holding a message with one of ``msg_keys``, or a thread_keys row with
        one of ``keys``; both through their indexes."""
        rows = self._execute(
            f"SELECT thread_id FROM messages WHERE msg_key IN ({self.json_values}) "
            "AND thread_id IS NOT NULL UNION "
            f"SELECT thread_id FROM thread_keys WHERE key IN ({self.json_values})",
            (json.dumps(sorted(set(msg_keys))), json.dumps(sorted(set(keys)))),
        ).fetchall()
        return {r[0] for r in rows}

    def keys_of_threads(self, thread_ids: Sequence[str]) -> set[str]:
        """The thread_keys of these threads."""
        rows = self._execute(
            f"SELECT key FROM thread_keys WHERE thread_id IN ({self.json_values})",
            (json.dumps(sorted(thread_ids)),),
        ).fetchall()
        return {r[0] for r in rows}

    def regroup_threads(self, inputs: pd.DataFrame, found: Grouping,
                        old_threads: Sequence[str], max_id: int) -> int:
        """Write the grouping ``found`` of ``inputs`` (new messages and every old thread
        they can change, ``old_threads``; analysis/rethread.py): the thread ids that
        changed, and the threads, thread_links and thread_keys rows of the old threads and
        the new ones, in one transaction. Returns how many messages changed thread."""
        current = inputs.set_index("id")["thread_id"]
        new = found.thread_id.reindex(current.index)
        changed = new[new.notna() & new.ne(current)]
        fresh = set(found.thread_id.astype(str))
        both = json.dumps(sorted(set(old_threads) | fresh))
        links = list(found.links[["thread_id", "joined_key", "to_key", "address"]]
                     .itertuples(index=False, name=None))
        keys = getattr(found, "keys", None)
        threads = thread_rows(inputs, new, set(found.links["thread_id"].astype(str)))
        with self._threads_lock(), self.transaction():
            self._apply_thread_ids(changed.index.tolist(), changed.tolist())
            # Only the rows that differ are written: most threads reached are as they were,
            # and a row deleted and inserted again dirties its pages in the table and its
            # indexes all the same (1,000 new messages at 1M: ~80 MB of WAL instead of ~25).
            self._write_changed("thread_links", ("thread_id", "joined_key", "to_key", "address"),
                                2, both, links)
            self._write_changed("threads", THREAD_ROW_COLUMNS, 1, both,
                                [(t, *row) for t, row in threads.items()])
            self._write_changed("thread_keys", ("key", "thread_id"), 2, both,
                                [] if keys is None else zip(
                                    keys["key"].tolist(), keys["thread_id"].astype(str).tolist(),
                                    strict=True))
            self.set_meta("threads_max_id", str(int(max_id)))
        return len(changed)

    def _write_changed(self, table: str, columns: Sequence[str], keys: int, thread_ids: str,
                       rows: Iterable[tuple[Any, ...]], lead_ids: str | None = None) -> None:
        """Make the rows of ``table`` whose thread_id is one of ``thread_ids`` (one JSON array)
        or whose lead_id is one of ``lead_ids`` (another, or None)
        ``rows`` (values of ``columns``; the first ``keys`` of them are the primary key),
        writing only what differs: rows not in ``rows`` deleted, missing ones inserted in
        key order, and in the others only the columns that differ set. (Setting an indexed
        column rewrites its index entry even to the same value; a row deleted and inserted
        again rewrites every one.)"""
        cols = ", ".join(columns)
        where, params = f"thread_id IN ({self.json_values})", [thread_ids]
        if lead_ids is not None:
            where += f" OR lead_id IN ({self.json_integers})"
            params.append(lead_ids)
        old = {tuple(r[:keys]): tuple(r[keys:]) for r in self._execute(
            f"SELECT {cols} FROM {table} WHERE {where}", params).fetchall()}
        new = {tuple(r[:keys]): tuple(r[keys:]) for r in rows}
        key_match = " AND ".join(f"{c} = ?" for c in columns[:keys])
        gone = sorted(k for k in old if k not in new)
        if gone:
            self._executemany(f"DELETE FROM {table} WHERE {key_match}", gone)
        missing = sorted((*k, *v) for k, v in new.items() if k not in old)
        if missing:
            marks = ", ".join("?" for _ in columns)
            self._executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", missing)
        by_change: dict[tuple[int, ...], list[tuple[Any, ...]]] = {}
        for k in sorted(k for k in new if k in old):
            was, now = old[k], new[k]
            differ = tuple(i for i, (a, b) in enumerate(zip(was, now, strict=True)) if a != b)
            if differ:
                by_change.setdefault(differ, []).append((*(now[i] for i in differ), *k))
        for differ, changes in by_change.items():
            sets = ", ".join(f"{columns[keys + i]} = ?" for i in differ)
            self._executemany(f"UPDATE {table} SET {sets} WHERE {key_match}", changes)

    def _insert_thread_keys(self, keys: pd.DataFrame, *, fresh: bool = False) -> None:
        """Insert (key, thread_id) rows (inside a transaction), in key order: the primary
        key's order, so each insert appends. ``fresh``: into an empty table (a backend may
        build its index afterwards instead)."""
        keys = keys.sort_values(["key", "thread_id"])
        self._executemany(THREAD_KEYS_SQL, zip(keys["key"].tolist(),
                                               keys["thread_id"].astype(str).tolist(),
                                               strict=True))

    def thread_rules(self, thread_ids: Sequence[str]) -> dict[str, str]:
        """The rule (threads.RULES) that grouped each of these threads, as last rebuilt."""
        if not len(thread_ids):
            return {}
        rows = self._execute(
            f"SELECT thread_id, rule FROM threads WHERE thread_id IN ({self.json_values})",
            (json.dumps([str(t) for t in thread_ids]),),
        ).fetchall()
        return {t: r for t, r in rows}

    def thread_links(self, thread_id: str | None = None) -> list[tuple[str, str, str, str]]:
        """(thread_id, joined_key, to_key, address) of the subject rule's joins, of one thread
        or all: which component joined which earlier one, through which participant."""
        where, params = ("WHERE thread_id = ?", (thread_id,)) if thread_id is not None else (
            "", ())
        rows = self._execute(
            f"SELECT thread_id, joined_key, to_key, address FROM thread_links {where}", params
        ).fetchall()
        return sorted(tuple(r) for r in rows)  # code-point order, whatever the collation

    def message_count(self) -> int:
        return int(self._execute("SELECT count(*) FROM messages").fetchone()[0])

    def last_message_id(self) -> int:
        """The highest message id (0: no message)."""
        return int(self._execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0])

    def messages_after(self, message_id: int) -> int:
        """How many messages have an id above ``message_id``: those written since it was
        the highest (ids grow). Through the key, so it costs what was written, not the
        cache (``message_count`` reads an index of every message)."""
        return int(self._execute("SELECT count(*) FROM messages WHERE id > ?",
                                 (int(message_id),)).fetchone()[0])

    def thread_count(self) -> int:
        return int(self._execute("SELECT count(*) FROM threads").fetchone()[0])

    def earliest_time_ms(self) -> int | None:
        value = self._execute("SELECT min(time_ms) FROM messages").fetchone()[0]
        return None if value is None else int(value)

    def latest_time_ms(self) -> int | None:
        value = self._execute("SELECT max(time_ms) FROM messages").fetchone()[0]
        return None if value is None else int(value)

    def form_notifications(
        self, globs: Sequence[str], since_ms: int | None = None, until_ms: int | None = None
    ) -> pd.DataFrame:
        """Messages in [since, until) (all time when not given) whose sender matches one of
        the form rules' globs."""
        where, params = self._glob_filter("from_addr", globs) if globs else ("1 = 0", [])
        span: list[int] = []
        bounds = "time_ms IS NOT NULL"
        if since_ms is not None:
            bounds += " AND time_ms >= ?"
            span.append(int(since_ms))
        if until_ms is not None:
            bounds += " AND time_ms < ?"
            span.append(int(until_ms))
        return self._frame(
            "SELECT id, time_ms, from_addr, reply_to, subject, extra FROM messages "
            f"WHERE {bounds} AND ({where}) ORDER BY id",
            (*span, *params),
        )

    # -- reads ----------------------------------------------------------------------------
    def messages(
        self, *, labels: bool = False, active: tuple[int, int] | None = None
    ) -> pd.DataFrame:
        """Cached messages with what the matcher and metrics need, in id (arrival) order on
        every backend.

        ``active=(a, b)`` keeps whole threads with a timed message in [a, b) (and a few
        more whose span covers it): every lead, first reply and message of that window
        with its complete thread, without reading the rest of the cache. ``labels`` adds
        each message's labels over its locations (costly, so only on request).
        """
        label_sql = (
            f"(SELECT {self.label_agg} FROM locations l WHERE l.msg_key = m.msg_key)"
            if labels else "NULL"
        )
        select = (
            "SELECT m.id, m.message_id, m.from_addr, m.to_addrs, m.cc_addrs, m.reply_to, "
            "m.subject, m.time_ms, m.automated, m.thread_id, m.extra, "
            f"{label_sql} AS labels FROM messages m"
        )
        if active is None:
            df = self._frame(f"{select} ORDER BY m.id")
        else:
            # Three disjoint parts, so most rows come from one range of the time index (rows
            # near each other on disk) instead of a lookup per message of every thread:
            # messages in the window (their threads are active by definition), the other
            # timed messages of threads reaching out of it, and undated messages of active
            # threads.
            a, b = int(active[0]), int(active[1])
            active_threads = "SELECT thread_id FROM threads WHERE last_ms >= ? AND first_ms < ?"
            df = self._frame(
                f"{select} WHERE m.time_ms >= ? AND m.time_ms < ? AND m.thread_id IS NOT NULL "
                f"UNION ALL {select} WHERE m.thread_id IN ({active_threads} "
                "AND (first_ms < ? OR last_ms >= ?)) AND (m.time_ms < ? OR m.time_ms >= ?) "
                f"UNION ALL {select} WHERE m.time_ms IS NULL AND m.thread_id IN "
                f"({active_threads}) ORDER BY id",
                (a, b, a, b, a, b, a, b, a, b),
            )
        df["automated"] = df["automated"].astype(bool)
        return df

    # -- one thread, for explain ----------------------------------------------------------
    def find_message(self, message_id: str) -> tuple[int, str | None] | None:
        """(id, thread_id) of the message with this Message-ID (or de-duplication key)."""
        row = self._execute(
            "SELECT id, thread_id FROM messages WHERE msg_key = ? OR message_id = ? "
            "ORDER BY id LIMIT 1", (message_id, message_id)).fetchone()
        return (int(row[0]), row[1]) if row else None

    def thread_messages(self, thread_id: str) -> pd.DataFrame:
        """The messages of one thread as ``messages()`` reads them, with labels, but with
        ``automated`` as stored: the marker code (``model.AUTOMATED_MARKERS``), 0 = none."""
        return self._frame(
            "SELECT m.id, m.message_id, m.from_addr, m.to_addrs, m.cc_addrs, m.reply_to, "
            "m.subject, m.time_ms, m.automated, m.thread_id, m.extra, "
            f"(SELECT {self.label_agg} FROM locations l WHERE l.msg_key = m.msg_key) AS labels "
            "FROM messages m WHERE m.thread_id = ? ORDER BY m.id", (thread_id,))

    def thread_locations(self, thread_id: str) -> dict[int, list[str]]:
        """Per message id of one thread: every ``account:location`` it was imported from."""
        rows = self._execute(
            "SELECT m.id, l.account, l.location FROM messages m JOIN locations l "
            "ON l.msg_key = m.msg_key WHERE m.thread_id = ? ORDER BY m.id, l.account, "
            "l.location", (thread_id,)).fetchall()
        out: dict[int, list[str]] = {}
        for i, account, location in rows:
            out.setdefault(int(i), []).append(f"{account}:{location}")
        return out

    def status(self) -> dict[str, Any]:
        """What ``replytime status`` shows of the store. Every count reads an index or a
        small table, not the messages (at a million messages: 0.1 s instead of 3.8 s)."""
        def one(sql: str, params: Sequence[Any] = ()) -> int:
            return int(self._execute(sql, params).fetchone()[0])

        accounts = self._execute(
            f"SELECT a.name, a.type, a.last_sync, {self.account_messages} FROM accounts a"
        ).fetchall()
        return {
            "messages": one("SELECT count(*) FROM messages"),
            "threads": self.thread_count(),
            "no_time": one("SELECT count(*) FROM messages WHERE time_ms IS NULL"),
            # problems <> 0 is the partial index messages_problems (schema 8): few rows.
            "malformed": one(
                "SELECT count(*) FROM messages WHERE problems <> 0 AND (problems & ~?) <> 0",
                (PROBLEM_NO_TIME,),
            ),
            "skipped": one("SELECT count(*) FROM skipped"),
            # Sorted here: code-point order whatever the database's collation.
            "accounts": [
                {"name": n, "type": t, "last_sync": s, "messages": int(cnt)}
                for n, t, s, cnt in sorted(accounts, key=lambda row: row[0])
            ],
        }
