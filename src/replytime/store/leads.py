"""The kept lead table: one row per email lead with its first reply, as
``analysis.matcher.match_leads`` and the business times find them over everything cached
(no as-of cut), kept current by ``analysis.kept`` after each thread refresh.

A report then selects its period's rows by lead time (docs/definitions.md, "Lead", "First
reply") instead of reading and pairing the period's messages again; ``analysis.kept``
applies the report's as-of time to them. What the rows are valid for is in the ``meta``
table: ``leads_state`` (the config's ``leads_fingerprint`` when the rows are exact for the
current thread ids, "" otherwise) and ``leads_max_id`` (the highest message id they cover),
both written in the transaction that writes the rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

# Migration 4 (SQLite DDL; PostgreSQL maps INTEGER to BIGINT and REAL to DOUBLE PRECISION).
# lead_id is the key: without form rules (which are never kept) a thread has one lead.
LEADS_TABLE_SQL = """
    CREATE TABLE leads (
        lead_id INTEGER PRIMARY KEY,       -- messages.id of the lead message
        thread_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        lead_message_id TEXT,
        lead_from TEXT,
        lead_time_ms INTEGER NOT NULL,
        addressed_rep TEXT,
        reply_id INTEGER,                  -- NULL: unanswered as of everything cached
        reply_message_id TEXT,
        reply_time_ms INTEGER,
        reply_from TEXT,
        responder TEXT,
        rep TEXT NOT NULL,
        response_s REAL,
        clamped INTEGER NOT NULL,
        business_s REAL
    );
    CREATE INDEX leads_time ON leads(lead_time_ms);
    CREATE INDEX leads_reply_time ON leads(reply_time_ms);
    CREATE INDEX leads_thread ON leads(thread_id);
"""

# Migration 8: what status and the reports read instead of the messages. The partial index
# holds only the few messages with problems (status counts the malformed ones from it).
# ``turns`` is the lead thread's rep -> lead exchanges (``report threads``); lead_blocks the
# reply blocks of each kept lead as of everything cached (``report reps``, ``--all-replies``);
# message_volume the timed messages per VOLUME_BUCKET_MS of UTC time (``report volume``).
# Kept rows are rebuilt after the migration (leads_state cleared).
KEPT_TABLES_SQL = """
    CREATE INDEX messages_problems ON messages(problems) WHERE problems <> 0;
    ALTER TABLE leads ADD COLUMN turns INTEGER;
    CREATE TABLE lead_blocks (
        lead_id INTEGER NOT NULL,
        block INTEGER NOT NULL,            -- 1-based; block 1 is the lead itself
        thread_id TEXT NOT NULL,
        block_start_ms INTEGER NOT NULL,
        block_message_id TEXT,
        reply_message_id TEXT,             -- NULL: unanswered as of everything cached
        reply_time_ms INTEGER,
        responder TEXT,
        business_s REAL,
        PRIMARY KEY (lead_id, block)
    ) WITHOUT ROWID;
    CREATE INDEX lead_blocks_thread ON lead_blocks(thread_id);
    CREATE TABLE message_volume (
        bucket INTEGER PRIMARY KEY,        -- time_ms // VOLUME_BUCKET_MS
        inbound INTEGER NOT NULL,
        outbound INTEGER NOT NULL,
        messages INTEGER NOT NULL
    ) WITHOUT ROWID;
    DELETE FROM meta WHERE key = 'leads_state';
"""
# Migration 10: what the reports read of a lead's thread, kept on its row (a kept lead is
# its thread's only one, and its row is matched again whenever the thread changes): the
# rule that grouped it, its messages and span (``report leads`` and ``report threads`` read
# no threads table: joining it cost half of an all-time read at a million messages).
KEPT_THREAD_SQL = """
    ALTER TABLE leads ADD COLUMN rule TEXT;
    ALTER TABLE leads ADD COLUMN thread_messages INTEGER;
    ALTER TABLE leads ADD COLUMN thread_first_ms INTEGER;
    ALTER TABLE leads ADD COLUMN thread_last_ms INTEGER;
    DELETE FROM meta WHERE key = 'leads_state';
"""
#: 15 minutes: every UTC offset in use is a multiple, so a bucket lies within one local day
#: (one that does not is counted from its messages: ``analysis.kept.volume_counts``)
VOLUME_BUCKET_MS = 15 * 60 * 1000
VOLUME_COLUMNS = ("bucket", "inbound", "outbound", "messages")
#: the kept block columns, in table order
BLOCK_KEPT_COLUMNS = (
    "lead_id", "block", "thread_id", "block_start_ms", "block_message_id", "reply_message_id",
    "reply_time_ms", "responder", "business_s",
)

#: the kept columns, in table order (``matcher.LEAD_COLUMNS`` without ``answered``, which is
#: ``reply_id IS NOT NULL``, plus ``business_s``)
KEPT_COLUMNS = (
    "lead_id", "thread_id", "kind", "lead_message_id", "lead_from", "lead_time_ms",
    "addressed_rep", "reply_id", "reply_message_id", "reply_time_ms", "reply_from",
    "responder", "rep", "response_s", "clamped", "business_s", "turns", "rule",
    "thread_messages", "thread_first_ms", "thread_last_ms",
)
_INSERT = (f"INSERT INTO leads ({', '.join(KEPT_COLUMNS)}) "
           f"VALUES ({', '.join('?' for _ in KEPT_COLUMNS)})")
#: what ``kept_leads`` reads by default: every kept column but the thread's size
KEPT_READ = KEPT_COLUMNS[:KEPT_COLUMNS.index("thread_messages")]
_ORDER = " ORDER BY lead_time_ms, lead_id"  # match_leads' order
_INSERT_BLOCKS = (f"INSERT INTO lead_blocks ({', '.join(BLOCK_KEPT_COLUMNS)}) "
                  f"VALUES ({', '.join('?' for _ in BLOCK_KEPT_COLUMNS)})")
# New messages' counts are added to their buckets' (a rebuild starts from an empty table).
_ADD_VOLUME = (
    "INSERT INTO message_volume (bucket, inbound, outbound, messages) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (bucket) DO UPDATE SET inbound = message_volume.inbound + excluded.inbound, "
    "outbound = message_volume.outbound + excluded.outbound, "
    "messages = message_volume.messages + excluded.messages"
)
_CHUNK = 50_000  # rows bound per executemany: memory of one chunk of tuples at a time


class KeptLeads:
    """Reads and writes of the kept lead table, mixed into both backends (``CacheBase``
    supplies ``_execute``, ``_executemany``, ``_frame``, ``transaction``, ``json_values``
    and the meta table)."""

    json_values: str

    if TYPE_CHECKING:  # what CacheBase supplies (defined here they would shadow it)
        def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...
        def _executemany(self, sql: str, rows: Any) -> None: ...
        def _frame(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame: ...
        def transaction(self) -> AbstractContextManager[Any]: ...
        def get_meta(self, key: str) -> str | None: ...
        def set_meta(self, key: str, value: str) -> None: ...
        def message_count(self) -> int: ...
        def _write_changed(self, table: str, columns: Sequence[str], keys: int,
                           thread_ids: str, rows: Any) -> None: ...

    def leads_lock(self) -> AbstractContextManager[None]:
        """Cache-wide lock held while the thread ids and the kept leads are brought up to
        date together (waits for it); the backend supplies it."""
        raise NotImplementedError

    # -- state ------------------------------------------------------------------------
    def kept_leads_state(self) -> tuple[str, int]:
        """(fingerprint the rows are exact for, "" when none; highest message id covered)."""
        return self.get_meta("leads_state") or "", int(self.get_meta("leads_max_id") or 0)

    def invalidate_kept_leads(self) -> None:
        """Mark the rows as not exact (before thread ids change under them), so a process
        killed before they are brought up to date leaves a table nobody trusts."""
        if self.get_meta("leads_state"):
            with self.transaction():
                self.set_meta("leads_state", "")

    # -- writes -------------------------------------------------------------------------
    def replace_kept_leads(self, rows: pd.DataFrame, blocks: pd.DataFrame,
                           volume: pd.DataFrame, *, threads: Sequence[str] | None,
                           state: str, max_id: int) -> None:
        """In one transaction: drop the rows and blocks of ``threads`` (every row, block and
        volume count when None), write ``rows`` (``KEPT_COLUMNS``) and ``blocks``
        (``BLOCK_KEPT_COLUMNS``), add ``volume`` (``VOLUME_COLUMNS``: the counts of the
        messages after those covered before), and record that the tables are exact for
        ``state`` up to message ``max_id``."""
        with self.transaction():
            if threads is None:
                for table in ("leads", "lead_blocks", "message_volume"):
                    self._execute(f"DELETE FROM {table}")
                written = ((_INSERT, rows, KEPT_COLUMNS),
                           (_INSERT_BLOCKS, blocks, BLOCK_KEPT_COLUMNS))
                for sql, frame, columns in written:
                    for chunk in _bound_rows(frame, columns):
                        self._executemany(sql, chunk)
            else:
                # Only what differs: most rows of the threads matched again are as they
                # were, or differ in a column or two (a new message's thread size), and
                # a row deleted and inserted again rewrites every index it is in.
                ids = json.dumps(list(threads))
                for table, frame, columns, keys in (("leads", rows, KEPT_COLUMNS, 1),
                                                    ("lead_blocks", blocks, BLOCK_KEPT_COLUMNS,
                                                     2)):
                    self._write_changed(table, columns, keys, ids,
                                        [r for chunk in _bound_rows(frame, columns)
                                         for r in chunk])
            for chunk in _bound_rows(volume, VOLUME_COLUMNS):
                self._executemany(_ADD_VOLUME, chunk)
            self.set_meta("leads_state", state)
            self.set_meta("leads_max_id", str(int(max_id)))

    # -- reads --------------------------------------------------------------------------
    def kept_leads(self, since_ms: int | None, until_ms: int | None, as_of_ms: int,
                   *, replied: bool = False, unanswered: bool = False,
                   columns: Sequence[str] = KEPT_READ) -> pd.DataFrame:
        """Kept rows with lead time in [since, until) (None = open) and at most ``as_of``:
        their ``columns`` of ``KEPT_READ``, in that order (fewer columns, less to read: an
        all-time tally reads ~200k rows at a million messages);
        ``replied`` adds those whose first reply is in [since, until) (``report volume``
        and the weekly flow count first replies sent in the period, whatever the lead's
        time); ``unanswered``: only the leads not answered as of ``as_of``. In lead time
        order, typed as ``_frame`` reads them."""
        where, params = ["lead_time_ms <= ?"], [int(as_of_ms)]
        if unanswered:  # a first reply after as_of is none yet (docs/definitions.md)
            where.append(f"NOT {_ANSWERED}")
            params.append(int(as_of_ms))
        lead_span, span_params = _span("lead_time_ms", since_ms, until_ms)
        if lead_span:
            if replied:
                reply_span, _ = _span("reply_time_ms", since_ms, until_ms)
                where.append(f"(({lead_span}) OR ({reply_span}))")
                params += span_params * 2
            else:
                where.append(lead_span)
                params += span_params
        cols = ", ".join(c for c in KEPT_COLUMNS if c in columns)
        return self._frame(f"SELECT {cols} FROM leads WHERE {' AND '.join(where)}{_ORDER}",
                           params)

    def kept_tally(self, since_ms: int | None, until_ms: int | None, as_of_ms: int,
                   columns: Sequence[str], *, by: str = "lead_time_ms") -> pd.DataFrame:
        """For the kept leads with lead time at most ``as_of`` and ``by`` (``lead_time_ms``
        or ``reply_time_ms``) in [since, until): ``answered`` (1 when first answered at most
        at ``as_of``, else 0) and their ``columns`` of ``KEPT_COLUMNS``, in no particular
        order: what a count over a period needs, and nothing else."""
        if by not in ("lead_time_ms", "reply_time_ms"):
            raise ValueError(f"kept_tally: by {by!r}")
        where, params = ["lead_time_ms <= ?"], [int(as_of_ms)]
        span, span_params = _span(by, since_ms, until_ms)
        if span:
            where.append(span)
            params += span_params
        cols = "".join(f", {c}" for c in KEPT_COLUMNS if c in columns)
        return self._frame(f"SELECT CASE WHEN {_ANSWERED} THEN 1 ELSE 0 END AS answered{cols} "
                           f"FROM leads WHERE {' AND '.join(where)}", [int(as_of_ms), *params])

    def kept_lead_counts(self, as_of_ms: int) -> tuple[int, int, int]:
        """(leads, unanswered, clamped) as of ``as_of``: a first reply after it does not
        count (docs/definitions.md, "First reply")."""
        row = self._execute(
            "SELECT count(*), "
            "coalesce(sum(CASE WHEN reply_time_ms IS NULL OR reply_time_ms > ? THEN 1 "
            "ELSE 0 END), 0), "
            "coalesce(sum(CASE WHEN clamped <> 0 AND reply_time_ms <= ? THEN 1 ELSE 0 END), 0) "
            "FROM leads WHERE lead_time_ms <= ?",
            (int(as_of_ms), int(as_of_ms), int(as_of_ms)),
        ).fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    def kept_blocks(self, first_ms: int | None, last_ms: int | None, as_of_ms: int,
                    columns: Sequence[str] = BLOCK_KEPT_COLUMNS, *,
                    answered: bool = False) -> pd.DataFrame:
        """Kept blocks (``columns`` of ``BLOCK_KEPT_COLUMNS``) starting at most at ``as_of``
        of the leads with lead time in [first, last] (both None: of every lead, read
        without looking the leads up), in (lead, block) order; ``answered``: only those
        answered at most at ``as_of``."""
        cols = ", ".join(f"b.{c}" for c in BLOCK_KEPT_COLUMNS if c in columns)
        where, params = "b.block_start_ms <= ?", [int(as_of_ms)]
        if answered:
            where, params = f"{where} AND b.reply_time_ms <= ?", [*params, int(as_of_ms)]
        if first_ms is None or last_ms is None:
            return self._frame(f"SELECT {cols} FROM lead_blocks b WHERE {where} "
                               "ORDER BY b.lead_id, b.block", params)
        return self._frame(
            f"SELECT {cols} FROM lead_blocks b JOIN leads l ON l.lead_id = b.lead_id "
            f"WHERE l.lead_time_ms >= ? AND l.lead_time_ms <= ? AND {where} "
            "ORDER BY b.lead_id, b.block", [int(first_ms), int(last_ms), *params])

    def kept_thread_sizes(self, first_ms: int, last_ms: int) -> pd.DataFrame:
        """Per kept lead with lead time in [first, last]: its id and thread, the thread's
        messages, first and last message time, and turns."""
        return self._frame(
            "SELECT lead_id, thread_id, thread_messages AS messages, thread_first_ms AS "
            "first_ms, thread_last_ms AS last_ms, turns FROM leads "
            "WHERE lead_time_ms >= ? AND lead_time_ms <= ?", (int(first_ms), int(last_ms)))

    def kept_volume(self, first_bucket: int | None, end_bucket: int | None) -> pd.DataFrame:
        """Kept message counts (``VOLUME_COLUMNS``) of the buckets in [first, end) (None:
        open), in bucket order."""
        where, params = ["1 = 1"], []
        if first_bucket is not None:
            where.append("bucket >= ?")
            params.append(int(first_bucket))
        if end_bucket is not None:
            where.append("bucket < ?")
            params.append(int(end_bucket))
        return self._frame(f"SELECT {', '.join(VOLUME_COLUMNS)} FROM message_volume "
                           f"WHERE {' AND '.join(where)} ORDER BY bucket", params)

    def timed_messages(self, spans: Sequence[tuple[int, int]], *,
                       where: str = "", params: Sequence[Any] = ()) -> pd.DataFrame:
        """Threaded messages with a time in any of the [a, b) ``spans`` (and ``where``), with
        what ``matcher.prepare`` needs, in id order."""
        if not spans:
            spans = [(0, 0)]
        span = " OR ".join("(time_ms >= ? AND time_ms < ?)" for _ in spans)
        extra = f" AND ({where})" if where else ""
        df = self._frame(
            "SELECT id, from_addr, to_addrs, cc_addrs, time_ms FROM messages "
            f"WHERE thread_id IS NOT NULL AND ({span}){extra} ORDER BY id",
            [int(v) for s in spans for v in s] + list(params))
        return df

    def thread_span_bounds(self) -> tuple[int | None, int | None, int]:
        """(earliest, latest) thread start and the highest message id: where a full
        rebuild of the kept leads runs."""
        lo, hi = self._execute("SELECT min(start_ms), max(start_ms) FROM threads").fetchone()
        top = self._execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0]
        return (None if lo is None else int(lo)), (None if hi is None else int(hi)), int(top)

    def messages_of_threads(self, thread_ids: Sequence[str]) -> pd.DataFrame:
        """Every message of these threads, as ``messages()`` reads them (without labels),
        in id order."""
        df = self._frame(
            "SELECT m.id, m.message_id, m.from_addr, m.to_addrs, m.cc_addrs, m.reply_to, "
            "m.subject, m.time_ms, m.automated, m.thread_id, m.extra, NULL AS labels "
            f"FROM messages m WHERE m.thread_id IN ({self.json_values}) ORDER BY m.id",
            (json.dumps(list(thread_ids)),),
        )
        df["automated"] = df["automated"].astype(bool)
        return df

    def subjects_of(self, ids: Sequence[int]) -> dict[int, str | None]:
        """Subject of each message id (the weekly summary's oldest unanswered leads)."""
        if not len(ids):
            return {}
        marks = ", ".join("?" for _ in ids)  # a handful: the top ten
        rows = self._execute(f"SELECT id, subject FROM messages WHERE id IN ({marks})",
                             [int(i) for i in ids]).fetchall()
        return {int(i): s for i, s in rows}


#: answered as of a bound ``?``: a first reply after as_of is none yet (docs/definitions.md,
#: "First reply")
_ANSWERED = "(reply_id IS NOT NULL AND reply_time_ms <= ?)"


def _span(column: str, since_ms: int | None, until_ms: int | None) -> tuple[str, list[int]]:
    """``column`` in [since, until) (None = open) as "?" filters joined by AND ("" for all
    time), and their parameters."""
    parts, params = [], []
    if since_ms is not None:
        parts.append(f"{column} >= ?")
        params.append(int(since_ms))
    if until_ms is not None:
        parts.append(f"{column} < ?")
        params.append(int(until_ms))
    return " AND ".join(parts), params


def _bound_rows(rows: pd.DataFrame, names: Sequence[str]) -> Iterator[list[tuple[Any, ...]]]:
    """``rows``' columns ``names`` as tuples of Python values (None for missing), a chunk at
    a time, built column by column (no Python loop per row besides the driver's own)."""
    for start in range(0, len(rows), _CHUNK):
        part = rows.iloc[start:start + _CHUNK]
        columns = [_values(part[c]) for c in names]
        yield list(zip(*columns, strict=True))


def _values(column: pd.Series) -> list[Any]:
    if column.dtype.kind == "b":
        return column.astype("int64").tolist()
    # object with None where a value is missing (NaN, pd.NA): what the drivers bind as NULL
    return column.astype(object).where(column.notna(), None).tolist()
