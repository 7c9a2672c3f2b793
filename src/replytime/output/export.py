"""Export the cache for bigger engines: messages, threads and leads as Parquet datasets,
Hive-partitioned by month (UTC), for DuckDB, Spark, polars or pyarrow.

    DIR/messages/month=2026-10/part-0.parquet
    DIR/threads/month=2026-10/part-0.parquet
    DIR/leads/month=2026-10/part-0.parquet
    DIR/<table>/_common_metadata      the table's schema, even when it has no rows
    DIR/_manifest.json                counts, as-of time, replytime version

The column schemas below are the contract (README.md, "Export to Parquet"). The work goes
one month at a time, so memory stays bounded by one month's mail, and into a hidden
directory beside DIR that is renamed into place at the end: a crash never leaves half an
export where a reader looks.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from replytime import __version__
from replytime.analysis.leadset import Selection
from replytime.analysis.matcher import Roster, prepare
from replytime.analysis.reports import Analysis
from replytime.analysis.rethread import refresh_threads
from replytime.config import Config, load_config
from replytime.errors import UsageError
from replytime.model import TIME_DATE, TIME_NONE, TIME_RECEIVED, TIME_SERVER
from replytime.output.render import machine_frame
from replytime.periods import Period
from replytime.store import Cache, open_cache

PAGE = 100_000  # messages per read and per row group: bounds memory on any cache size
# Where rows without a time go: the name Hive, Spark and pyarrow read back as a null month.
NULL_MONTH = "__HIVE_DEFAULT_PARTITION__"
MANIFEST = "_manifest.json"
TABLES = ("messages", "threads", "leads")

_TS = pa.timestamp("ms", tz="UTC")
_LIST = pa.list_(pa.string())

MESSAGES_SCHEMA = pa.schema([
    pa.field("message_key", pa.string(), nullable=False),
    ("message_id", pa.string()),
    ("thread_id", pa.string()),
    ("time", _TS),
    ("time_ms", pa.int64()),
    ("time_offset_min", pa.int32()),
    ("time_source", pa.string()),
    ("from_addr", pa.string()),
    ("to_addrs", _LIST),
    ("cc_addrs", _LIST),
    ("reply_to", _LIST),
    ("subject", pa.string()),
    ("in_reply_to", pa.string()),
    ("references", _LIST),
    ("automated", pa.bool_()),
    ("from_internal", pa.bool_()),
    ("to_external", pa.bool_()),
    ("content_type", pa.string()),
    ("provider_thread_id", pa.string()),
    ("labels", _LIST),
    ("kept_headers", pa.string()),
    ("problems", pa.int32()),
])

THREADS_SCHEMA = pa.schema([
    pa.field("thread_id", pa.string(), nullable=False),
    ("first_time", _TS),
    ("last_time", _TS),
    ("start_time", _TS),
    ("duration_s", pa.int64()),
    ("messages", pa.int64()),
    ("subject", pa.string()),
    ("first_from", pa.string()),
    ("first_time_ms", pa.int64()),
    ("last_time_ms", pa.int64()),
    ("start_time_ms", pa.int64()),
])

# The columns of `replytime report leads --format csv`, in its order, typed; then raw ms;
# then columns added since (the CSV appends them too).
LEADS_SCHEMA = pa.schema([
    ("thread_id", pa.string()),
    ("lead_message_id", pa.string()),
    ("lead_from", pa.string()),
    ("lead_time", _TS),
    ("rep", pa.string()),
    ("answered", pa.bool_()),
    ("reply_message_id", pa.string()),
    ("reply_time", _TS),
    ("response_s", pa.int64()),
    ("business_s", pa.int64()),
    ("kind", pa.string()),
    ("responder", pa.string()),
    ("addressed_rep", pa.string()),
    ("team", pa.string()),
    ("lead_time_ms", pa.int64()),
    ("reply_time_ms", pa.int64()),
    ("rule", pa.string()),  # appended later: columns are only ever added at the end
])

SCHEMAS = {"messages": MESSAGES_SCHEMA, "threads": THREADS_SCHEMA, "leads": LEADS_SCHEMA}

# Cache columns stored as one joined string, exported as lists: column -> separator.
_SPLIT = {"to_addrs": ",", "cc_addrs": ",", "reply_to": ",", "references": " ", "labels": ","}
_TIME_SOURCES = {TIME_SERVER: "server", TIME_DATE: "date", TIME_RECEIVED: "received",
                 TIME_NONE: "none"}


def export_parquet(
    db: str | os.PathLike[str] | Cache | None,
    config: str | os.PathLike[str] | Config | None,
    directory: str | os.PathLike[str],
    *,
    as_of: datetime | str | None = None,
    force: bool = False,
    on_month: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Write the cache's messages, threads and leads (as of ``as_of``, default now) to
    ``directory`` as month-partitioned Parquet; returns the row counts and months written.

    ``directory`` must be missing or empty, or with ``force`` a previous export (never any
    other directory: a mistyped path must not cost someone their files). ``on_month`` is
    called after each month, for progress."""
    cfg = config if isinstance(config, Config) else load_config(config)
    target = Path(os.path.expandvars(str(directory))).expanduser()
    _check_target(target, force)
    if isinstance(db, Cache):
        return _export(db, cfg, target, as_of, force, on_month)
    with open_cache(db, create=False) as cache:
        return _export(cache, cfg, target, as_of, force, on_month)


def _export(cache: Cache, cfg: Config, target: Path, as_of: datetime | str | None,
            force: bool, on_month: Callable[[str], None] | None) -> dict[str, int]:
    refresh_threads(cache, cfg)
    # as_of is parsed once, in the report zone, so every month's leads share one instant.
    as_of = Analysis(cache, cfg, as_of=as_of).as_of
    as_of_ms = int(as_of.timestamp() * 1000)
    roster = Roster(cfg)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        counts = dict.fromkeys(TABLES, 0)
        months = 0
        for month, since, until in _months(cache):
            scope = None if since is None else Period(since, until)
            counts["messages"] += _write(tmp, "messages", month,
                                         _message_pages(cache, roster, scope))
            counts["threads"] += _write(tmp, "threads", month, [_threads(cache, scope)])
            # Leads always have a time, at or before as_of: later months have none.
            if scope is not None and int(scope.since_ms) <= as_of_ms:  # type: ignore[arg-type]
                counts["leads"] += _write(tmp, "leads", month, [_leads(cache, cfg, as_of, scope)])
            months += scope is not None
            if on_month:
                on_month(month)
        for table, schema in SCHEMAS.items():
            (tmp / table).mkdir(exist_ok=True)
            pq.write_metadata(schema, tmp / table / "_common_metadata")
        manifest = {"replytime_export": 1, "replytime_version": __version__,
                    "as_of": as_of.astimezone(UTC).isoformat(), "partitioning": "month (UTC)",
                    "rows": counts, "months": months}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _sync_tree(tmp)
        _swap_into_place(tmp, target, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**counts, "months": months}


# -- what goes where -----------------------------------------------------------------------
def _months(cache: Cache) -> Iterator[tuple[str, int | None, int | None]]:
    """(partition name, since_ms, until_ms) of every month (UTC) holding a message, then
    the null partition for messages without a time. Jumps from one month with mail to the
    next, so a stray 1970 Date header costs one query, not 600 empty months."""
    since: int | None = _min_time(cache, None)
    while since is not None:
        start = datetime.fromtimestamp(since / 1000, UTC).replace(
            day=1, hour=0, minute=0, second=0, microsecond=0)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else (
            start.replace(month=start.month + 1))
        until = int(end.timestamp() * 1000)
        yield start.strftime("%Y-%m"), int(start.timestamp() * 1000), until
        since = _min_time(cache, until)
    yield NULL_MONTH, None, None


def _min_time(cache: Cache, after: int | None) -> int | None:
    where, params = ("time_ms >= ?", (after,)) if after is not None else ("1 = 1", ())
    value = _query(cache, f"SELECT min(time_ms) AS t FROM messages WHERE {where}", params)["t"]
    return None if value.isna().all() else int(value.iloc[0])


def _query(cache: Cache, sql: str, params: tuple[Any, ...] = ()) -> pd.DataFrame:
    # The cache's own read-a-frame primitive (both dialects, ``?`` placeholders): the
    # cache has no public read of all columns by time range and id page yet.
    return cache._frame(sql, params)


def _in_month(column: str, scope: Period | None) -> tuple[str, tuple[int, ...]]:
    if scope is None:
        return f"{column} IS NULL", ()
    return f"{column} >= ? AND {column} < ?", (int(scope.since_ms), int(scope.until_ms))  # type: ignore[arg-type]


def _message_pages(cache: Cache, roster: Roster, scope: Period | None) -> Iterator[pa.Table]:
    """The month's messages, ``PAGE`` at a time, in time order (ties by id): the time
    index yields them so without a sort or a scan of other months, and each row group then
    covers a narrow time range that engines can skip by its statistics."""
    if scope is None:
        where, order, after = "m.time_ms IS NULL AND m.id > ?", "m.id", (-1,)
    else:
        # Keyset paging from the last row read: (time, id) after it, up to the month's end.
        where = "m.time_ms >= ? AND m.time_ms < ? AND (m.time_ms > ? OR m.id > ?)"
        order, after = "m.time_ms, m.id", (scope.since_ms, scope.until_ms, scope.since_ms, -1)
    while True:
        df = _query(
            cache,
            "SELECT m.id, m.msg_key AS message_key, m.message_id, m.thread_id, m.time_ms, "
            "m.time_offset AS time_offset_min, m.time_source, m.from_addr, m.to_addrs, "
            "m.cc_addrs, m.reply_to, m.subject, m.in_reply_to, m.refs, m.automated, "
            "m.content_type, m.provider_thread_id, m.extra AS kept_headers, m.problems, "
            f"(SELECT {cache.label_agg} FROM locations l WHERE l.msg_key = m.msg_key) "
            f"AS labels FROM messages m WHERE {where} ORDER BY {order} LIMIT ?",
            (*after, PAGE),
        )
        if df.empty:
            return
        last_id = int(df["id"].iloc[-1])
        if scope is None:
            after = (last_id,)
        else:
            last_ms = int(df["time_ms"].iloc[-1])
            after = (last_ms, scope.until_ms, last_ms, last_id)
        df["automated"] = df["automated"].astype(bool)
        df = prepare(df, roster)  # from_internal, to_external: the matcher's own reading
        df["time_source"] = df["time_source"].map(_TIME_SOURCES)
        yield _arrow(df.rename(columns={"refs": "references"}), MESSAGES_SCHEMA, splits=_SPLIT)
        if len(df) < PAGE:
            return


def _threads(cache: Cache, scope: Period | None) -> pa.Table:
    """Threads whose first (earliest timed) message is in the month, from the cache's
    threads table, with the subject and sender of that message (lowest id on a tie, and
    for a thread without any time)."""
    where, params = _in_month("t.first_ms", scope)
    df = _query(
        cache,
        "SELECT t.thread_id, t.first_ms AS first_time_ms, t.last_ms AS last_time_ms, "
        "t.start_ms AS start_time_ms, t.messages, m.subject, m.from_addr AS first_from "
        "FROM threads t LEFT JOIN messages m ON m.id = (SELECT min(x.id) FROM messages x "
        "WHERE x.thread_id = t.thread_id AND (x.time_ms = t.first_ms OR t.first_ms IS NULL)) "
        f"WHERE {where} ORDER BY t.first_ms, t.thread_id",
        params,
    )
    span = pd.to_numeric(df["last_time_ms"]) - pd.to_numeric(df["first_time_ms"])
    df["duration_s"] = (span / 1000).round()
    return _arrow(df, THREADS_SCHEMA)


def _leads(cache: Cache, config: Config, as_of: datetime, scope: Period) -> pa.Table:
    """The month's leads exactly as ``report leads`` has them: an Analysis limited to the
    month reads only the threads active in it, and is exact for every lead of the month."""
    analysis = Analysis(cache, config, as_of=as_of, scope=scope)
    leads = analysis.leads(Selection(scope))
    leads = leads.sort_values(["lead_time_ms", "lead_message_id"], kind="stable")
    df = machine_frame(leads)  # the CSV's columns and whole seconds
    for col in ("lead_time_ms", "reply_time_ms"):
        df[col] = leads[col].to_numpy()
    return _arrow(df, LEADS_SCHEMA)


# -- Arrow and files -----------------------------------------------------------------------
def _arrow(df: pd.DataFrame, schema: pa.Schema, splits: dict[str, str] | None = None,
           ) -> pa.Table:
    """``df`` as a table of exactly ``schema``: a timestamp column comes from its ``_ms``
    twin (or ``time_ms``), a list column is split from the cache's joined string."""
    splits = splits or {}
    arrays = []
    for field in schema:
        name = field.name
        if field.type == _TS:
            arrays.append(_ints(df[f"{name}_ms"]).cast(_TS))
        elif name in splits:
            text = pc.fill_null(pa.array(df[name], pa.string(), from_pandas=True), "")
            parts = pc.split_pattern(text, splits[name])
            # Nothing listed is an empty list, not [""].
            arrays.append(pc.if_else(pc.equal(text, ""), pa.scalar([], _LIST), parts))
        elif pa.types.is_integer(field.type):
            arrays.append(_ints(df[name]).cast(field.type))
        else:
            arrays.append(pa.array(df[name], field.type, from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=schema)


def _ints(values: pd.Series) -> pa.Array:
    # PostgreSQL frames give a nullable integer column as floats or objects; SQLite as ints.
    return pa.array(pd.array(pd.to_numeric(values), dtype="Int64"), pa.int64())


def _write(root: Path, table: str, month: str, pages: Iterable[pa.Table]) -> int:
    """Write the pages as one file's row groups; no file (and no directory) when empty."""
    rows = 0
    writer: pq.ParquetWriter | None = None
    try:
        for page in pages:
            if not page.num_rows:
                continue
            if writer is None:
                folder = root / table / f"month={month}"
                folder.mkdir(parents=True)
                writer = pq.ParquetWriter(folder / "part-0.parquet", page.schema)
            writer.write_table(page, row_group_size=PAGE)
            rows += page.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows


def _check_target(target: Path, force: bool) -> None:
    if not target.parent.is_dir():
        raise UsageError(f"export: directory {target.parent} does not exist")
    if target.exists() and not target.is_dir():
        raise UsageError(f"export: {target} exists and is not a directory")
    if not target.is_dir() or not any(target.iterdir()):
        return
    if not (target / MANIFEST).is_file():
        raise UsageError(f"export: {target} is not empty and not a replytime export; "
                         "choose a new or empty directory")
    if not force:
        raise UsageError(f"export: {target} already holds an export; use --force to replace it")


def _sync_tree(root: Path) -> None:
    """fsync every file and directory, so the rename below publishes complete files."""
    for folder, _, files in os.walk(root):
        for name in [*files, "."]:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _swap_into_place(tmp: Path, target: Path, force: bool) -> None:
    """Rename the finished export to ``target``. An old export is moved aside first and
    removed after: a crash in between leaves it whole in a hidden ``.NAME.old-*``."""
    _check_target(target, force)  # again: the directory may have changed meanwhile
    old = None
    if target.is_dir() and any(target.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old)  # over the empty directory mkdtemp made
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; an export is meant to be shared
    os.replace(tmp, target)  # an empty target directory is replaced, too
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
