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
import re
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

# Migration 4 (SQLite DDL; PostgreSQL maps INTEGER to BIGINT and REAL to DOUBLE PRECISION).
# lead_id is the key: a thread has one email lead, and a form lead is its own notification.
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
# Migration 11: what ``report reps`` counts and ranks in the database (``kept_rep_counts``,
# ``kept_rep_times``, ``kept_block_replies``, ``kept_block_ranks``), each read from an index
# alone, by responder: a block's rank is then a walk along its responder's times, and a
# count over every lead reads no table row (at a million messages the all-time reads fall
# from ~0.7 s to under 0.1 s).
REPS_INDEXES_SQL = """
    CREATE INDEX leads_responder ON leads(responder, addressed_rep, lead_time_ms, lead_id,
        reply_id, reply_time_ms, business_s, response_s);
    CREATE INDEX lead_blocks_responder ON lead_blocks(responder, business_s, block_start_ms,
        reply_time_ms);
"""
#: (name, CREATE INDEX) of every secondary index of the kept tables, as the migrations
#: above made them (a full replace drops and builds them again)
KEPT_INDEXES = tuple(
    (m.group(1), " ".join(m.group(0).split()))
    for m in re.finditer(r"CREATE INDEX (\w+) ON (?:leads|lead_blocks)\([^;]*\)",
                         LEADS_TABLE_SQL + KEPT_TABLES_SQL + REPS_INDEXES_SQL)
)
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
#: what ``kept_leads`` reads by default: what ``analysis.kept.as_of`` builds a report's
#: leads from (not the responder and rep, which it derives as of its time; not the thread's
#: turns and size, which ``report threads`` reads apart)
KEPT_READ = tuple(c for c in KEPT_COLUMNS[:KEPT_COLUMNS.index("thread_messages")]
                  if c not in ("responder", "rep", "turns"))
#: the Arrow type of each kept column (``LEADS_TABLE_SQL`` and migrations 8 and 10)
_KEPT_ARROW = {c: "int64" for c in ("lead_id", "lead_time_ms", "reply_id", "reply_time_ms",
                                    "clamped", "turns", "thread_messages", "thread_first_ms",
                                    "thread_last_ms")}
_KEPT_ARROW.update({"response_s": "double", "business_s": "double"})
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
#: rows fetched at a time by ``_arrow_frame``: the Python tuples of one batch at a time
#: (100,000 of them held ~110 MB), not the chunks of ``records_frame``
_FETCH_ROWS = 16_384


class KeptLeads:
    """Reads and writes of the kept lead table, mixed into both backends (``CacheBase``
    supplies ``_execute``, ``_executemany``, ``_frame``, ``transaction``, ``json_values``
    and the meta table)."""

    json_values: str
    backend: str
    frame_chunk: int

    if TYPE_CHECKING:  # what CacheBase supplies (defined here they would shadow it)
        def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...
        def _executemany(self, sql: str, rows: Any) -> None: ...
        def _frame(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame: ...
        def transaction(self) -> AbstractContextManager[Any]: ...
        def get_meta(self, key: str) -> str | None: ...
        def set_meta(self, key: str, value: str) -> None: ...
        def message_count(self) -> int: ...
        def _write_changed(self, table: str, columns: Sequence[str], keys: int,
                           thread_ids: str, rows: Any, lead_ids: str | None = None
                           ) -> None: ...

    def leads_lock(self) -> AbstractContextManager[None]:
        """Cache-wide lock held while the thread ids and the kept leads are brought up to
        date together (waits for it); the backend supplies it."""
        raise NotImplementedError

    # -- state ------------------------------------------------------------------------
    def kept_leads_state(self) -> tuple[str, int]:
        """(fingerprint the rows are exact for, "" when none; highest message id covered)."""
        return self.get_meta("leads_state") or "", int(self.get_meta("leads_max_id") or 0)

    def kept_form_leads_touching(self, thread_ids: Sequence[str], before_ms: int | None
                                 ) -> pd.DataFrame:
        """The kept form leads with lead time before ``before_ms`` (None: any) whose row's
        thread, notification's thread or first reply's thread is one of ``thread_ids``:
        ``KEPT_COLUMNS`` with ``thread_id`` the notification's thread now, and
        ``reply_thread_id`` the first reply's, in lead order."""
        cols = ", ".join("n.thread_id AS thread_id" if c == "thread_id" else f"l.{c}"
                         for c in KEPT_COLUMNS)
        where, params = ["l.kind = 'form'"], []
        if before_ms is not None:
            where.append("l.lead_time_ms < ?")
            params.append(int(before_ms))
        ids = json.dumps(list(thread_ids))
        return self._frame(
            f"SELECT {cols}, r.thread_id AS reply_thread_id FROM leads l "
            "JOIN messages n ON n.id = l.lead_id LEFT JOIN messages r ON r.id = l.reply_id "
            f"WHERE {' AND '.join(where)} AND (l.thread_id IN ({self.json_values}) "
            f"OR n.thread_id IN ({self.json_values}) OR r.thread_id IN ({self.json_values})) "
            "ORDER BY l.lead_time_ms, l.lead_id", (*params, ids, ids, ids))

    def invalidate_kept_leads(self) -> None:
        """Mark the rows as not exact (before thread ids change under them), so a process
        killed before they are brought up to date leaves a table nobody trusts."""
        if self.get_meta("leads_state"):
            with self.transaction():
                self.set_meta("leads_state", "")

    # -- writes -------------------------------------------------------------------------
    def replace_kept_leads(self, rows: pd.DataFrame, blocks: pd.DataFrame,
                           volume: pd.DataFrame, *, threads: Sequence[str] | None,
                           state: str, max_id: int, leads_since: int | None = None,
                           lead_ids: Sequence[int] = ()) -> None:
        """In one transaction: drop the rows and blocks of ``threads`` (every row, block and
        volume count when None), of the leads from ``leads_since`` on and of ``lead_ids``
        (form rules: ``analysis.kept.update``), write ``rows`` (``KEPT_COLUMNS``) and ``blocks``
        (``BLOCK_KEPT_COLUMNS``), add ``volume`` (``VOLUME_COLUMNS``: the counts of the
        messages after those covered before), and record that the tables are exact for
        ``state`` up to message ``max_id``."""
        with self.transaction():
            if threads is None:
                for table in ("leads", "lead_blocks", "message_volume"):
                    self._execute(f"DELETE FROM {table}")
                # Every row anew: the secondary indexes built after, each in one sorted
                # pass, instead of a random index page touched per row (at a million
                # messages 2.1 s -> 1.3 s of a first import).
                for name, _ in KEPT_INDEXES:
                    self._execute(f"DROP INDEX {name}")
                written = ((_INSERT, rows, KEPT_COLUMNS),
                           (_INSERT_BLOCKS, blocks, BLOCK_KEPT_COLUMNS))
                for sql, frame, columns in written:
                    for chunk in _bound_rows(frame, columns):
                        self._executemany(sql, chunk)
                for _, create in KEPT_INDEXES:
                    self._execute(create)
            else:
                # Only what differs: most rows of the threads matched again are as they
                # were, or differ in a column or two (a new message's thread size), and
                # a row deleted and inserted again rewrites every index it is in.
                ids = json.dumps(list(threads))
                scope = [int(i) for i in lead_ids]
                if leads_since is not None:
                    scope += [r for (r,) in self._execute(
                        "SELECT lead_id FROM leads WHERE lead_time_ms >= ?", (int(leads_since),)
                    ).fetchall()]
                leads = json.dumps(scope) if scope else None
                for table, frame, columns, keys in (("leads", rows, KEPT_COLUMNS, 1),
                                                    ("lead_blocks", blocks, BLOCK_KEPT_COLUMNS,
                                                     2)):
                    self._write_changed(table, columns, keys, ids,
                                        [r for chunk in _bound_rows(frame, columns)
                                         for r in chunk], leads)
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
        names = [c for c in KEPT_COLUMNS if c in columns]
        cols = ", ".join(names)
        sql = f"SELECT {cols} FROM leads WHERE {' AND '.join(where)}{_ORDER}"
        # All time: a scan ("+": not by the lead-time index), sorted after, when the sort
        # keys are read: the index visits the rows out of their order on disk (SQLite: 0.2 s
        # of 111,000 rows; PostgreSQL sorts 580,000 in 0.5 s, numpy in a tenth of that).
        ordered = bool(lead_span) or not {"lead_id", "lead_time_ms"} <= set(names)
        scan = sql if ordered else sql.removesuffix(_ORDER).replace(" WHERE ", " WHERE +", 1)
        table = self._kept_table(scan, params, names)
        if table is not None:
            import numpy as np  # not at import: `replytime import` starts without it
            import pyarrow as pa

            from replytime.store.base import records_frame

            if not ordered:
                keys = (table["lead_id"].to_numpy(), table["lead_time_ms"].to_numpy())
                # Taken even when in order already: the frame's columns are then whole
                # arrays, not slices of the fetched batches (40 MB less at the peak at 1M).
                table = table.take(np.lexsort(keys))
            frame = records_frame(table, self.frame_chunk)
            del table
            # Arrow's allocator keeps what the read freed (the unsorted rows: ~55 MB of an
            # all-time read at 1M messages) for reuse; a report's peak is lower without it.
            pa.default_memory_pool().release_unused()
            if frame is not None:
                return frame
        return self._frame(sql, params)

    def _kept_table(self, sql: str, params: Sequence[Any], names: Sequence[str]) -> Any:
        """The rows of ``sql`` (columns ``names`` of ``KEPT_COLUMNS``) as an Arrow table
        that ``records_frame`` makes ``_frame``'s frame; None where it is not read so (no
        rows, a value not of its column's type), for ``_frame`` to read. SQLite: the
        cursor's rows a batch at a time (``_sqlite_table``); PostgreSQL: one COPY."""
        return _sqlite_table(self._execute(sql, params), names)

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

    def kept_rep_counts(self, since_ms: int | None, until_ms: int | None, as_of_ms: int,
                        duration: str, target_s: int) -> pd.DataFrame:
        """Per kept ``responder`` and ``addressed_rep`` (either NULL) of the kept leads with
        lead time in [since, until) and at most ``as_of``: ``leads``; ``answered`` as of
        ``as_of``; ``within``: answered with ``duration`` (``business_s`` or
        ``response_s``) at most ``target_s``; ``timed``: answered with a ``duration``.
        Ordered by responder and addressed rep: ``kept_rep_times`` reads the responders
        in this order."""
        d = _duration(duration)
        where, params = _lead_rows(since_ms, until_ms, as_of_ms)
        cols = (f"sum(CASE WHEN {_ANSWERED} THEN 1 ELSE 0 END) AS answered, "
                f"sum(CASE WHEN {_ANSWERED} AND {d} <= ? THEN 1 ELSE 0 END) AS within, "
                f"sum(CASE WHEN {_ANSWERED} AND {d} IS NOT NULL THEN 1 ELSE 0 END) AS timed")
        return self._frame(
            f"SELECT responder, addressed_rep, count(*) AS leads, {cols} FROM leads "
            f"WHERE {where} GROUP BY responder, addressed_rep ORDER BY responder, addressed_rep",
            [int(as_of_ms), int(as_of_ms), int(target_s), int(as_of_ms), *params])

    def kept_rep_times(self, since_ms: int | None, until_ms: int | None, as_of_ms: int,
                       duration: str, *, lead_order: bool = False) -> pd.DataFrame:
        """``responder`` and ``t``, the ``duration``, of each lead ``kept_rep_counts``
        counts as ``timed``: by responder, each responder's in lead order
        (``lead_time_ms``, ``lead_id``; ``lead_order``: with those columns too)."""
        d = _duration(duration)
        where, params = _lead_rows(since_ms, until_ms, as_of_ms)
        where = f"{where} AND {_ANSWERED} AND {d} IS NOT NULL"
        params.append(int(as_of_ms))
        names = {"t": d, "lead_time_ms": "lead_time_ms", "lead_id": "lead_id"}
        if not lead_order:
            del names["lead_time_ms"], names["lead_id"]
        if self.backend == "postgresql":
            return self._packed_times(where, params, names)
        cols = ", ".join(["responder", *(f"{c} AS {n}" for n, c in names.items())])
        return self._frame(f"SELECT {cols} FROM leads WHERE {where} "
                           "ORDER BY responder, lead_time_ms, lead_id", params)

    def _packed_times(self, where: str, params: Sequence[Any], names: dict[str, str]
                      ) -> pd.DataFrame:
        """``kept_rep_times`` on PostgreSQL: each responder's columns as one bytea of
        big-endian 8-byte values in lead order, so a row per responder crosses the wire,
        not one per lead (a row costs the COPY about a microsecond: 0.6 s for the 530,000
        answered leads at 5M messages)."""
        import numpy as np
        import pandas as pd

        cols = ", ".join("string_agg(" + ("float8send" if n == "t" else "int8send")
                         + "(" + c + "), ''::bytea ORDER BY lead_time_ms, lead_id)"
                         for n, c in names.items())
        rows = self._execute(f"SELECT responder, {cols} FROM leads WHERE {where} "
                             "GROUP BY responder ORDER BY responder", params).fetchall()
        # One row per responder (a few hundred at most): numpy reads each column at once.
        sizes = [len(r[1]) // 8 for r in rows]
        out = {"responder": np.repeat(np.array([r[0] for r in rows], dtype=object), sizes)}
        for i, n in enumerate(names, 1):
            packed = np.frombuffer(b"".join(bytes(r[i]) for r in rows),
                                   dtype=">f8" if n == "t" else ">i8")
            out[n] = packed.astype("float64" if n == "t" else "int64")
        return pd.DataFrame(out)

    def kept_block_replies(self, as_of_ms: int, *, calendar: bool) -> pd.DataFrame:
        """Per kept ``responder`` (NULL included) of the kept blocks starting and answered at
        most at ``as_of``: ``replies`` (blocks) and ``timed`` (those with a reply time on
        the basis: ``business_s``, or calendar time), ordered by responder."""
        cols = _block_time(calendar)
        where = "b.block_start_ms <= ? AND b.reply_time_ms <= ?"
        return self._frame(
            f"SELECT b.responder, count(*) AS replies, count({cols}) AS timed "
            f"FROM lead_blocks b WHERE {where} GROUP BY b.responder ORDER BY b.responder",
            [int(as_of_ms), int(as_of_ms)])

    def kept_block_ranks(self, as_of_ms: int, ranks: Sequence[tuple[str | None, int]], *,
                         calendar: bool) -> pd.DataFrame:
        """For each (responder, None for every block; rank r) of ``ranks``: the reply times
        at ranks r and r + 1 (0-based, ascending; one row at the last rank) of the blocks
        ``kept_block_replies`` counts as ``timed``, as rows ``k`` (the position in
        ``ranks``) and ``t`` (``business_s``, or on the calendar basis the reply's
        distance from the block start in ms). Walks each responder's times in the
        ``lead_blocks_responder`` index up to the rank: no block read into Python."""
        cols = _block_time(calendar)
        where = f"b.block_start_ms <= ? AND b.reply_time_ms <= ? AND {cols} IS NOT NULL"
        one = (f"SELECT ? AS k, t FROM (SELECT {cols} AS t FROM lead_blocks b WHERE {where} "
               "AND b.responder = ? ORDER BY t LIMIT 2 OFFSET ?) q")
        every = (f"SELECT ? AS k, t FROM (SELECT {cols} AS t FROM lead_blocks b WHERE {where} "
                 "ORDER BY t LIMIT 2 OFFSET ?) q")
        frames = []
        # A few hundred branches per statement (SQLite's limit of a compound SELECT is 500).
        for start in range(0, len(ranks), _RANKS_PER_QUERY):
            parts, params = [], []
            for k, (responder, rank) in enumerate(ranks[start:start + _RANKS_PER_QUERY], start):
                parts.append(every if responder is None else one)
                params += [k, int(as_of_ms), int(as_of_ms)]
                params += [int(rank)] if responder is None else [responder, int(rank)]
            frames.append(self._frame(" UNION ALL ".join(parts), params))
        if len(frames) == 1:
            return frames[0]
        import pandas as pd

        if not frames:
            return pd.DataFrame({"k": pd.Series(dtype="int64"), "t": pd.Series(dtype="float64")})
        return pd.concat(frames, ignore_index=True)

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


_RANKS_PER_QUERY = 200


def _duration(column: str) -> str:
    """A lead's duration column on a basis (``metrics.duration_column``), checked."""
    if column not in ("business_s", "response_s"):
        raise ValueError(f"not a duration column: {column!r}")
    return column


def _block_time(calendar: bool) -> str:
    """A block's reply time: ``business_s``, or on the calendar basis the reply's distance
    from the block start in ms (in the order of its calendar seconds, which clip it at 0:
    ``followon.answered_reply_times``)."""
    return "(b.reply_time_ms - b.block_start_ms)" if calendar else "b.business_s"


def _lead_rows(since_ms: int | None, until_ms: int | None, as_of_ms: int
               ) -> tuple[str, list[int]]:
    """The kept leads with lead time in [since, until) and at most ``as_of``, as "?"
    filters joined by AND, and their parameters."""
    span, params = _span("lead_time_ms", since_ms, until_ms)
    return " AND ".join(["lead_time_ms <= ?", *([span] if span else [])]), [int(as_of_ms),
                                                                              *params]


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


def _sqlite_table(cursor: Any, names: Sequence[str]) -> Any:
    """The kept rows of an SQLite ``cursor`` (columns ``names``) as an Arrow table of the
    declared types (``base.arrow_rows``): not through pandas' per-value type inference
    (from_records: half of an all-time read of 111,000 kept leads)."""
    from replytime.store.base import arrow_rows  # base imports this module

    table = arrow_rows(cursor, {n: _KEPT_ARROW.get(n, "string") for n in names}, _FETCH_ROWS)
    # The page cache (up to 64 MB) holds the rows' pages: read once, needed no more.
    cursor.connection.execute("PRAGMA shrink_memory")
    return table


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
