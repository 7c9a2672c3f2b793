"""The lead/first-reply pairing statement (docs/definitions.md, "Lead", "First reply"),
run in the database.

The pandas path reads every message of the threads active in a period, with all its
columns, into pandas (``Cache.messages(active=...)`` + ``matcher.match_leads``). Here one
statement ranks the human messages of the period with window functions (``row_number()``
for the lead, ``lead()`` over the reply candidates for its first reply) and returns one
row per email lead, so a report reads a handful of columns of the period's messages and
holds only the leads in memory. Form leads (``[[leads.forms]]``) search every thread and
stay in pandas.

Precondition, as for ``Cache.messages(active=...)``: the thread assignment and the
``threads`` table are current (``replytime.api.refresh_threads``): a lead thread is one
whose ``threads.start_ms`` (its earliest timed non-automated message) is in the period.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import pandas as pd

from replytime.store.base import CacheBase

PAIR_COLUMNS = ["thread_id", "lead_id", "lead_time_ms", "reply_id", "reply_time_ms"]
#: with ``details=True``: what the lead filters, attribution and reports need besides
DETAIL_COLUMNS = ["lead_message_id", "lead_from", "to_addrs", "cc_addrs", "labels",
                  "reply_message_id", "reply_from"]

# Open period bounds as numbers, so one statement (and one plan) serves every period.
_NO_START = -(2**62)
_NO_END = 2**62

def _internal(address: str, cache: CacheBase | type[CacheBase], subdomains: bool) -> str:
    """SQL true when ``address`` (not null) is internal, as ``Roster.is_internal``: its
    domain is an internal domain (or, with ``subdomains``, under one), or it is a listed
    address; never the empty address."""
    domain_in = (cache.subdomain_in if subdomains else cache.domain_in).replace("{a}", address)
    return (f"({address} <> '' AND ({domain_in} "
            f"OR {address} IN (SELECT v FROM internal_addresses)))")


def pairs_sql(cache: CacheBase | type[CacheBase], details: bool = False,
              labels_sql: str = "NULL", subdomains: bool = True) -> str:
    """The pairing statement in the dialect of ``cache`` (a cache or its class). Parameters,
    in order: internal domains (JSON array), internal addresses (JSON array), then the
    bounds since, until, as_of, since, until, as_of, until, until, as_of. ``subdomains``:
    addresses under an internal domain are internal (``[team] internal_subdomains``)."""
    values, items = cache.json_values, cache.recipient_items
    time_index = cache.pair_time_index
    from_internal = _internal("m.from_addr", cache, subdomains)
    item_internal = _internal("r.value", cache, subdomains)
    detail_sql = (
        ", lm.message_id AS lead_message_id, lm.from_addr AS lead_from, lm.to_addrs, "
        f"lm.cc_addrs, {labels_sql} AS labels, rm.message_id AS reply_message_id, "
        "rm.from_addr AS reply_from" if details else ""
    )
    detail_join = (
        " JOIN messages lm ON lm.id = l.id LEFT JOIN messages rm ON rm.id = l.reply_id"
        if details else ""
    )
    # The period is applied to threads.start_ms (the lead time of a lead thread), so only
    # threads starting in it are leads; as_of cuts every message after it (nothing later is
    # a lead or a reply as of as_of). A lead thread has no human message before its start,
    # so its human messages are (1) those of the period, read as one range of the time index
    # (rows near each other on disk: the file is in arrival order), and (2) those after the
    # period of the few threads running on past it, looked up by thread id. (1) also holds
    # later messages of threads started before the period: their first row there is no
    # lead, as it is not the thread's start: checked last, for the first rows only, by a
    # scalar subquery on the primary key. (PostgreSQL guesses one row out of the window
    # filters, and turned a join or EXISTS there into a nested loop over every thread:
    # minutes for a quarter.) CROSS JOIN makes SQLite loop over the lead threads in (2);
    # PostgreSQL plans it as any inner join.
    # The window runs over narrow rows (sender kind 0 external, 1 internal, 2 none). Of the
    # threads whose first human message is external, the candidates are that message and
    # the internal ones with an external recipient (recipients read by id for these only),
    # so the candidate after the lead is its first reply: lead() over them pairs them
    # without a join (PostgreSQL, guessing a few rows per CTE, nested-looped such a join:
    # two minutes for a quarter of 500k messages).
    human_columns = (
        "m.thread_id, m.id, m.time_ms, CASE WHEN m.from_addr IS NULL THEN 2 "
        f"WHEN {from_internal} THEN 1 ELSE 0 END AS kind"
    )
    return f"""
WITH internal_domains(v) AS ({values}),
internal_addresses(v) AS ({values}),
lead_threads AS (
    SELECT thread_id, last_ms FROM threads
    WHERE start_ms >= ? AND start_ms < ? AND start_ms <= ?
),
human_messages AS (
    SELECT {human_columns}
    FROM messages m{time_index}
    WHERE m.time_ms >= ? AND m.time_ms < ? AND m.time_ms <= ? AND m.automated = 0
      AND m.thread_id IS NOT NULL
    UNION ALL
    SELECT {human_columns}
    FROM lead_threads t CROSS JOIN messages m
    WHERE t.last_ms >= ? AND m.thread_id = t.thread_id AND m.time_ms >= ?
      AND m.time_ms <= ? AND m.automated = 0
),
human AS (
    SELECT h.thread_id, h.id, h.time_ms, h.kind,
           row_number() OVER w AS rn, first_value(h.kind) OVER w AS first_kind
    FROM human_messages h
    WINDOW w AS (PARTITION BY h.thread_id ORDER BY h.time_ms, h.id)
),
candidates AS (
    SELECT h.thread_id, h.id, h.time_ms, h.rn, h.kind FROM human h
    WHERE h.first_kind = 0 AND (h.rn = 1 OR (h.kind = 1 AND EXISTS (
        SELECT 1 FROM messages m, {items}
        WHERE m.id = h.id AND r.value <> '' AND NOT {item_internal})))
),
paired AS (
    SELECT c.thread_id, c.id, c.time_ms, c.rn,
           lead(c.id) OVER w AS reply_id, lead(c.time_ms) OVER w AS reply_time_ms
    FROM candidates c
    WINDOW w AS (PARTITION BY c.thread_id ORDER BY c.time_ms, c.id)
)
SELECT l.thread_id, l.id AS lead_id, l.time_ms AS lead_time_ms, l.reply_id,
       l.reply_time_ms{detail_sql}
FROM paired l{detail_join}
WHERE l.rn = 1
  AND l.time_ms = (SELECT t.start_ms FROM threads t WHERE t.thread_id = l.thread_id)
ORDER BY l.time_ms, l.id
"""


def lead_pairs(
    cache: CacheBase,
    internal_domains: Iterable[str],
    internal_addresses: Iterable[str],
    since_ms: int | None,
    until_ms: int | None,
    as_of_ms: int,
    *,
    details: bool = False,
    labels: bool = False,
    subdomains: bool = True,
) -> pd.DataFrame:
    """Every email lead with lead time in [since_ms, until_ms) (None = open) as of
    ``as_of_ms`` and its first reply: columns ``PAIR_COLUMNS`` (reply columns null when
    unanswered), ordered by lead time and id; ``details`` adds ``DETAIL_COLUMNS`` (``labels``
    filled only when asked for); ``subdomains``: addresses at subdomains of an internal
    domain are internal (``[team] internal_subdomains``). No lead filter is applied here
    (``replytime.analysis.sql_leads`` does that)."""
    labels_sql = (
        f"(SELECT {cache.label_agg} FROM locations lo WHERE lo.msg_key = lm.msg_key)"
        if labels else "NULL"
    )
    since = _NO_START if since_ms is None else int(since_ms)
    until = _NO_END if until_ms is None else int(until_ms)
    as_of = int(as_of_ms)
    # A domain holding an '@' is never the part after the last '@' (SQLiteCache.domain_in).
    domains = sorted(d for d in internal_domains if "@" not in d)
    params = (json.dumps(domains), json.dumps(sorted(internal_addresses)),
              since, until, as_of, since, until, as_of, until, until, as_of)
    # The backend's own reader: dialect placeholders, chunked fetch, read_sql typing.
    sql = pairs_sql(cache, details, labels_sql, subdomains=subdomains)
    df = cache.analytic_frame(sql, params)
    if df.empty:  # no rows to infer from: text columns typed as a read of some rows types them
        text = ["thread_id", *(c for c in DETAIL_COLUMNS if c in df)]
        df = df.astype(dict.fromkeys(text, "str"))
    df["lead_id"] = df["lead_id"].astype("int64")
    df["lead_time_ms"] = df["lead_time_ms"].astype("int64")
    df["reply_id"] = df["reply_id"].astype("Int64")
    df["reply_time_ms"] = df["reply_time_ms"].astype("Int64")
    return df
