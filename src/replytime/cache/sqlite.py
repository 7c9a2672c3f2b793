"""The embedded cache: one SQLite file in WAL mode, versioned schema, idempotent upserts.

Storage details stay in this package; the matcher and metrics only see DataFrames.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from replytime.errors import CacheError, LockedError
from replytime.model import PROBLEM_NO_TIME, MessageRecord

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
        thread_id TEXT                     -- assigned by replytime.threads after each write
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
)
SCHEMA_VERSION = len(MIGRATIONS)

_UPSERT = f"""
INSERT INTO messages (msg_key, message_id, from_addr, to_addrs, cc_addrs, reply_to, subject,
    time_ms, time_offset, time_source, in_reply_to, refs, automated, content_type,
    provider_thread_id, extra, problems)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (msg_key) DO UPDATE SET
    time_ms = CASE WHEN excluded.time_source > time_source THEN excluded.time_ms ELSE time_ms END,
    time_offset = CASE WHEN excluded.time_source > time_source
                       THEN coalesce(excluded.time_offset, time_offset) ELSE time_offset END,
    problems = CASE WHEN excluded.time_source > time_source
                    THEN (problems & ~{PROBLEM_NO_TIME}) | (excluded.problems & {PROBLEM_NO_TIME})
                    ELSE problems END,
    time_source = max(time_source, excluded.time_source),
    provider_thread_id = coalesce(provider_thread_id, excluded.provider_thread_id),
    extra = CASE WHEN extra IS NULL OR extra = '{{}}' THEN excluded.extra ELSE extra END
WHERE excluded.time_source > time_source
   OR (provider_thread_id IS NULL AND excluded.provider_thread_id IS NOT NULL)
   OR ((extra IS NULL OR extra = '{{}}') AND excluded.extra <> '{{}}')
"""

_LOCATION = """
INSERT INTO locations (account, location, msg_key, labels) VALUES (?, ?, ?, ?)
ON CONFLICT (account, location) DO UPDATE SET msg_key = excluded.msg_key, labels = excluded.labels
WHERE msg_key <> excluded.msg_key OR labels <> excluded.labels
"""


def _row(r: MessageRecord) -> tuple[Any, ...]:
    return (
        r.key,
        r.message_id,
        r.from_addr,
        ",".join(r.to_addrs),
        ",".join(r.cc_addrs),
        ",".join(r.reply_to),
        r.subject,
        r.time_ms,
        r.time_offset,
        r.time_source,
        r.in_reply_to,
        " ".join(r.references),
        int(r.automated),
        r.content_type,
        r.provider_thread_id,
        json.dumps(r.extra, sort_keys=True) if r.extra else "{}",
        r.problems,
    )


class SQLiteCache:
    """A replytime cache in one SQLite file."""

    backend = "sqlite"

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = Path(path).expanduser()
        if not create and not self.path.exists():
            raise CacheError(f"no cache at {self.path}: run `replytime import` or `sync` first")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise CacheError(f"{self.path} is not a usable replytime cache ({exc})") from None

    # -- schema ---------------------------------------------------------------------
    def _migrate(self) -> None:
        c = self.conn
        c.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = c.execute("SELECT version FROM schema_version").fetchone()
        version = row[0] if row else 0
        if version > SCHEMA_VERSION:
            raise CacheError(
                f"{self.path} was written by a newer replytime (schema {version}); upgrade"
            )
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

    @property
    def schema_version(self) -> int:
        return self.conn.execute("SELECT version FROM schema_version").fetchone()[0]

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    @contextmanager
    def lock(self, what: str = "cache") -> Iterator[None]:
        """Hold an exclusive lock for a writer, so two imports or syncs never interleave."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LockedError(
                    f"another replytime process is writing to {self.path}; try again later"
                ) from None
            yield
        finally:
            os.close(fd)

    def close(self) -> None:
        self.conn.close()

    # -- writes ---------------------------------------------------------------------
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
        with self.transaction() as c:
            c.executemany(_UPSERT, [_row(r) for _, r in items])
            c.executemany(
                _LOCATION,
                [(account, loc, r.key, ",".join(r.labels)) for loc, r in items],
            )
            if skipped:
                c.executemany(
                    "INSERT OR IGNORE INTO skipped (account, location, reason) VALUES (?, ?, ?)",
                    [(account, loc, reason) for loc, reason in skipped],
                )
            if removed:
                self._remove(c, account, removed)
            self._touch_account(c, account, account_type, state)

    def _remove(self, c: sqlite3.Connection, account: str, locations: Sequence[str]) -> None:
        keys = [
            row[0]
            for loc in locations
            for row in c.execute(
                "SELECT msg_key FROM locations WHERE account = ? AND location = ?", (account, loc)
            )
        ]
        c.executemany(
            "DELETE FROM locations WHERE account = ? AND location = ?",
            [(account, loc) for loc in locations],
        )
        c.executemany(
            "DELETE FROM messages WHERE msg_key = ? "
            "AND NOT EXISTS (SELECT 1 FROM locations WHERE locations.msg_key = messages.msg_key)",
            [(k,) for k in keys],
        )

    def _touch_account(
        self, c: sqlite3.Connection, account: str, account_type: str, state: dict[str, Any] | None
    ) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
        c.execute(
            "INSERT INTO accounts (name, type, last_sync, state) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET last_sync = excluded.last_sync, "
            "state = CASE WHEN ? THEN excluded.state ELSE state END",
            (account, account_type, now, json.dumps(state or {}), state is not None),
        )

    def set_state(self, account: str, state: dict[str, Any], account_type: str = "files") -> None:
        with self.transaction() as c:
            self._touch_account(c, account, account_type, state)

    def account_state(self, account: str) -> dict[str, Any]:
        row = self.conn.execute("SELECT state FROM accounts WHERE name = ?", (account,)).fetchone()
        return json.loads(row[0]) if row else {}

    def known_locations(self, account: str, prefix: str = "") -> set[str]:
        rows = self.conn.execute(
            "SELECT location FROM locations WHERE account = ? AND substr(location, 1, ?) = ?",
            (account, len(prefix), prefix),
        )
        return {r[0] for r in rows}

    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- threads --------------------------------------------------------------------
    def thread_inputs(self) -> pd.DataFrame:
        return pd.read_sql_query(
            "SELECT id, msg_key, message_id, in_reply_to, refs, provider_thread_id, subject, "
            "from_addr, to_addrs, cc_addrs, time_ms, thread_id FROM messages",
            self.conn,
        )

    def set_threads(self, assignments: pd.Series) -> int:
        """Write thread ids (indexed by message id); returns how many changed."""
        current = pd.read_sql_query("SELECT id, thread_id FROM messages", self.conn, index_col="id")
        new = assignments.reindex(current.index)
        changed = new[new.ne(current["thread_id"])]
        with self.transaction() as c:
            c.executemany(
                "UPDATE messages SET thread_id = ? WHERE id = ?",
                zip(changed.tolist(), changed.index.tolist(), strict=True),
            )
        return len(changed)

    def has_unthreaded(self) -> bool:
        q = "SELECT 1 FROM messages WHERE thread_id IS NULL LIMIT 1"
        return self.conn.execute(q).fetchone() is not None

    def rebuild_threads(self, assign: Callable[[pd.DataFrame], pd.Series], fingerprint: str) -> int:
        changed = self.set_threads(assign(self.thread_inputs()))
        with self.transaction() as c:
            c.execute("DELETE FROM threads")
            c.execute(
                "INSERT INTO threads (thread_id, start_ms, first_ms, last_ms, messages) "
                "SELECT thread_id, min(CASE WHEN automated = 0 THEN time_ms END), "
                "min(time_ms), max(time_ms), count(*) FROM messages "
                "WHERE thread_id IS NOT NULL GROUP BY thread_id"
            )
            self.set_meta("threads_fingerprint", fingerprint)
        return changed

    def message_count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM messages").fetchone()[0])

    def latest_time_ms(self) -> int | None:
        return self.conn.execute("SELECT max(time_ms) FROM messages").fetchone()[0]

    def form_notifications(
        self, globs: Sequence[str], since_ms: int, until_ms: int
    ) -> pd.DataFrame:
        """Messages in [since, until) whose sender matches one of the form rules' globs."""
        where = " OR ".join("from_addr GLOB ?" for _ in globs) or "0"
        return pd.read_sql_query(
            "SELECT id, time_ms, from_addr, reply_to, subject, extra FROM messages "
            f"WHERE time_ms >= ? AND time_ms < ? AND ({where})",
            self.conn,
            params=(int(since_ms), int(until_ms), *globs),
        )

    # -- reads ----------------------------------------------------------------------
    def messages(
        self, *, labels: bool = False, active: tuple[int, int] | None = None
    ) -> pd.DataFrame:
        """Cached messages with what the matcher and metrics need.

        ``active=(a, b)`` keeps whole threads with a timed message in [a, b) (and a few
        more whose span covers it): every lead, first reply and message of that window
        with its complete thread, without reading the rest of the cache. ``labels`` adds
        each message's labels over its locations (costly, so only on request).
        """
        label_sql = (
            "(SELECT group_concat(labels, ',') FROM locations l WHERE l.msg_key = m.msg_key)"
            if labels else "NULL"
        )
        where, params = "", ()
        if active is not None:
            where = (" WHERE m.thread_id IN (SELECT thread_id FROM threads "
                     "WHERE last_ms >= ? AND first_ms < ?)")
            params = (int(active[0]), int(active[1]))
        df = pd.read_sql_query(
            "SELECT m.id, m.message_id, m.from_addr, m.to_addrs, m.cc_addrs, m.reply_to, "
            "m.subject, m.time_ms, m.automated, m.thread_id, m.extra, "
            f"{label_sql} AS labels FROM messages m{where}",
            self.conn,
            params=params,
        )
        df["automated"] = df["automated"].astype(bool)
        return df

    def status(self) -> dict[str, Any]:
        q = self.conn.execute
        out: dict[str, Any] = {
            "messages": q("SELECT count(*) FROM messages").fetchone()[0],
            "threads": q("SELECT count(DISTINCT thread_id) FROM messages").fetchone()[0],
            "no_time": q(
                "SELECT count(*) FROM messages WHERE time_ms IS NULL"
            ).fetchone()[0],
            "malformed": q(
                "SELECT count(*) FROM messages WHERE problems & ~?", (PROBLEM_NO_TIME,)
            ).fetchone()[0],
            "skipped": q("SELECT count(*) FROM skipped").fetchone()[0],
            "accounts": [
                {"name": n, "type": t, "last_sync": s, "messages": cnt}
                for n, t, s, cnt in q(
                    "SELECT a.name, a.type, a.last_sync, "
                    "(SELECT count(DISTINCT msg_key) FROM locations l WHERE l.account = a.name) "
                    "FROM accounts a ORDER BY a.name"
                )
            ],
        }
        return out
