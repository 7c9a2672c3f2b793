"""Keep the cache's lead table (``replytime.store.leads``) exact, and read it as of a time.

The table holds every lead (email and form) with its first reply as
``matcher.match_leads`` finds them over everything cached (no as-of cut), with
``business_s``. A report as of ``as_of`` derives
its rows exactly (docs/definitions.md, "Lead", "First reply"): a lead after ``as_of`` does
not exist yet, and a first reply after ``as_of`` means unanswered, since the replies after
a lead are taken in time order and every later candidate is later still. ``open``, age and
``business_age_s`` depend on ``as_of`` and are computed at report time.

Kept unless label filters are configured (``[leads] labels``): labels belong to a
message's locations and change without the message changing (its thread id stays), so no
update would see them; those reports pair messages as before.

Form rules (``[[leads.forms]]``) are kept too, although a form lead's reply may be in any
thread: the as-of cut stays exact (repeated notifications belong to a lead until its first
reply, so with that reply after ``as_of`` they are before it either way), and an update
matches again, besides the changed threads, every lead from the earliest one new
messages can reach (``_form_reach``: a reply window before the earliest of them), reading
what ``form_span`` says those leads need; an older form lead whose notification's or first
reply's thread changed keeps its pair, its thread size and blocks derived again.

Updates (``refresh``, called by ``refresh_threads``): after new messages get thread ids,
the threads of every message whose thread id changed (old and new) are matched again and
their rows replaced, in one transaction. A full rebuild (part by part, like an all-time
report) when the config's ``leads_fingerprint`` differs from the table's, when messages were
removed (the thread fingerprint is cleared), or when an already-kept message changed (its
upsert cleared its thread id, so its old thread is unknown). The table is marked not exact
before thread ids change and exact again with its rows: a process killed in between leaves
a table that is rebuilt, never one that is trusted wrongly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from replytime.analysis.followon import reply_blocks
from replytime.analysis.matcher import (
    LEAD_COLUMNS,
    UNASSIGNED,
    Roster,
    form_history_start,
    form_lead_threads,
    form_notifications,
    match_leads,
    prepare,
)
from replytime.analysis.metrics import (
    duration_column,
    finish_reps_table,
    group_stats,
    local_dates,
    thread_turns,
)
from replytime.config import Config
from replytime.periods import Period
from replytime.store.base import Grouping
from replytime.store.leads import (
    BLOCK_KEPT_COLUMNS,
    KEPT_COLUMNS,
    VOLUME_BUCKET_MS,
    VOLUME_COLUMNS,
)

if TYPE_CHECKING:
    from replytime.forked import Forked
    from replytime.store import Cache

#: an as-of time past every message: the kept rows are "as of everything cached"
EVERYTHING_MS = 2**53
#: messages per part of a full rebuild (memory: one part's messages at a time)
PART_MESSAGES = 250_000
#: what ``as_of`` needs of the kept rows for the tallies (reps, sla, volume, threads): the
#: times, attribution and response times; no message ids, addresses or thread ids
TALLY_READ = ("lead_id", "lead_time_ms", "addressed_rep", "reply_id", "reply_time_ms",
              "reply_from", "response_s", "clamped", "business_s")


def state_for(config: Config) -> str | None:
    """The state the kept rows must carry to serve ``config``; None: leads are not kept for
    it (label filters, see the module docstring)."""
    if config.leads.labels:
        return None
    return config.leads_fingerprint()


def form_span(cache: Cache, config: Config, since_ms: int, until_ms: int, as_of_ms: int
              ) -> tuple[int, int]:
    """The span of thread activity to read (``Cache.messages(active=...)``) so that every
    lead of [since, until) as of ``as_of`` comes out exactly under ``config``'s form rules
    (docs/definitions.md, "Form leads"): from where the history of the notifications that
    matter starts (reaching further back only while a chain of them may go on) to a reply
    window after ``until``, as a form lead's reply may come in any thread, but never after
    ``as_of``: nothing past it can be a reply as of ``as_of``. Without form rules,
    [since, until) itself."""
    forms = config.leads.forms
    if not forms:
        return since_ms, until_ms
    roster = Roster(config)
    globs = [r.from_glob for r in forms]
    window = max(r.reply_window_s for r in forms) * 1000
    # Two windows back: every notification that matters (from since - window on) then has a
    # whole window read before it, so one read settles it unless a chain runs on further.
    lookback = 2 * window
    while True:
        loaded_from = since_ms - lookback
        raw = cache.form_notifications(globs, since_ms=loaded_from, until_ms=until_ms)
        notes = form_notifications(raw, roster, config, as_of_ms)
        start, known = form_history_start(notes, since_ms, loaded_from)
        if known:
            return start, max(until_ms, min(until_ms + window, as_of_ms + 1))
        lookback *= 4


def _without_forms(config: Config) -> Config:
    """``config`` without its form rules: its email leads alone."""
    return replace(config, leads=replace(config.leads, forms=()))


def usable(cache: Cache, config: Config) -> bool:
    """Whether the kept rows are exact for ``config`` (call after ``refresh_threads``)."""
    state = state_for(config)
    return state is not None and cache.kept_leads_state()[0] == state


# -- business time ---------------------------------------------------------------------------
def business_s(leads: pd.DataFrame, config: Config) -> np.ndarray:
    """Business seconds from lead to first reply on the responder's schedule
    (docs/definitions.md, "Business time"); calendar seconds without schedules."""
    if not config.has_schedule or leads.empty:
        return leads["response_s"].to_numpy(dtype="float64")
    from replytime.analysis.hours import business_seconds_by

    answered = leads["answered"].to_numpy(dtype=bool)
    out = np.full(len(leads), np.nan)
    if answered.any():
        who = leads["responder"].to_numpy()[answered]
        schedules = {n: config.schedule_for(n) for n in pd.unique(who)}
        out[answered] = business_seconds_by(
            schedules, who, leads["lead_time_ms"].to_numpy(dtype="float64")[answered],
            leads["reply_time_ms"].astype("float64").to_numpy()[answered],
        )
    return np.maximum(out, 0)


def business_age_s(leads: pd.DataFrame, config: Config, as_of_ms: int) -> np.ndarray:
    """How long each unanswered lead has waited at ``as_of`` in business time on its rep's
    schedule (calendar time without schedules); NaN for answered leads."""
    answered = leads["answered"].to_numpy(dtype=bool)
    start = leads["lead_time_ms"].to_numpy(dtype="float64")
    if not config.has_schedule or leads.empty:
        return np.where(answered, np.nan, (as_of_ms - start) / 1000.0)
    from replytime.analysis.hours import business_seconds_by

    age = np.full(len(leads), np.nan)
    waiting = ~answered
    if waiting.any():
        who = leads["rep"].to_numpy()[waiting]
        schedules = {n: config.schedule_for(n) for n in pd.unique(who)}
        age[waiting] = business_seconds_by(
            schedules, who, start[waiting], np.full(int(waiting.sum()), float(as_of_ms)))
    return age


# -- reading -----------------------------------------------------------------------------------
def as_of(rows: pd.DataFrame, config: Config, as_of_ms: int, *, ages: bool = True
          ) -> pd.DataFrame:
    """Kept rows (lead time <= ``as_of``, as ``Cache.kept_leads`` selects them) as
    ``LeadSet`` holds leads as of ``as_of``: ``LEAD_COLUMNS``, ``business_s`` and
    ``business_age_s`` (not unless ``ages``), built as ``matcher.lead_table`` builds them
    (same dtypes). Rows read with fewer columns (``TALLY_READ``) give the columns derived
    from those alone."""
    out = rows.reset_index(drop=True)
    reply_time = out["reply_time_ms"].astype("Int64")
    # A first reply after as_of is not one yet; nor is any later candidate (time order).
    late = (reply_time > as_of_ms).fillna(False).to_numpy(dtype=bool)
    answered = out["reply_id"].notna().to_numpy() & ~late
    out["lead_id"] = out["lead_id"].astype("int64")
    out["lead_time_ms"] = out["lead_time_ms"].astype("int64")
    out["answered"] = answered
    out["reply_id"] = out["reply_id"].astype("Int64").where(answered, pd.NA)
    out["reply_time_ms"] = reply_time.where(answered, pd.NA)
    for column in ("reply_message_id", "reply_from"):
        if column in out:
            out[column] = out[column].astype(object).where(answered, None)
    out["responder"] = Roster(config).rep_name(out["reply_from"]).where(answered, None)
    out["rep"] = attribution(out["responder"], out["addressed_rep"])
    out["clamped"] = out["clamped"].astype(bool) & answered
    for column in ("response_s", "business_s"):
        out[column] = answered_times(out[column], answered)
    out = out[[c for c in (*LEAD_COLUMNS, "business_s") if c in out]]
    if ages:
        out["business_age_s"] = business_age_s(out, config, as_of_ms)
    return out


def answered_times(times: pd.Series, answered: np.ndarray | pd.Series) -> pd.Series:
    """Kept durations as of ``as_of``: NaN where the lead is not answered yet (its kept
    first reply comes after ``as_of``: docs/definitions.md, "First reply")."""
    return times.astype("float64").where(answered, np.nan)


def reps_table(cache: Cache, config: Config, period: Period, as_of_ms: int, basis: str, *,
               include_total: bool = False) -> pd.DataFrame:
    """``metrics.reps_table`` of every kept lead of ``period`` as of ``as_of`` (no rep or
    team chosen), counted in the database: per kept responder and addressed rep the leads,
    answered, within-SLA and handoff counts, and the durations of the answered leads
    alone, by responder. An answered lead's rep is its responder (never NULL: a reply comes
    from an internal address), an unanswered one's its addressed rep, else unassigned
    (docs/definitions.md, "Reps and attribution"); each rep's durations come in lead
    order, as ``match_leads`` orders the leads, so even the mean's sum is the same."""
    dur = duration_column(basis)
    since, until = period.since_ms, period.until_ms
    rows = cache.kept_rep_counts(since, until, as_of_ms, dur, config.sla_target_s)
    times = cache.kept_rep_times(since, until, as_of_ms, dur, lead_order=include_total)
    n = {c: rows[c].astype("int64").to_numpy() for c in ("leads", "answered", "within")}
    responder = _text(rows["responder"])
    addressed = _text(rows["addressed_rep"])
    waiting = pd.Series(None, index=rows.index, dtype=object)
    nothing = np.zeros(len(rows), dtype="int64")
    # The answered leads of each row under its responder, the others under their rep.
    parts = pd.DataFrame({
        "rep": pd.concat([attribution(responder, addressed), attribution(waiting, addressed)],
                         ignore_index=True),
        "leads": np.concatenate([n["answered"], n["leads"] - n["answered"]]),
        "answered": np.concatenate([n["answered"], nothing]),
        "within": np.concatenate([n["within"], nothing]),
    })
    parts = parts[parts["leads"] > 0]
    counts = parts.groupby("rep", sort=True)[["leads", "answered", "within"]].sum()
    who = _text(times["responder"])
    t = times["t"].astype("float64")
    table = group_stats(counts, t.groupby(who.to_numpy()))
    handed = addressed.notna() & (addressed != responder) & (n["answered"] > 0)
    moved = pd.Series(n["answered"][handed.to_numpy()])
    total = None
    if include_total:
        every = pd.DataFrame({"leads": [int(n["leads"].sum())],
                              "answered": [int(n["answered"].sum())],
                              "within": [int(n["within"].sum())]}, index=["TOTAL"])
        every = every[every["leads"] > 0]  # no leads: no total row (as reps_table)
        # Every answered lead's duration in lead order, as reps_table sums them.
        order = np.lexsort((times["lead_id"].to_numpy(), times["lead_time_ms"].to_numpy()))
        all_t = t.iloc[order].reset_index(drop=True)
        total = group_stats(every, all_t.groupby(np.full(len(all_t), "TOTAL")))
    return finish_reps_table(
        table, moved.groupby(responder[handed].to_numpy()).sum(),
        moved.groupby(addressed[handed].to_numpy()).sum(), int(moved.sum()), config, total)


def overall_by_rep(cache: Cache, as_of_ms: int, basis: str, *,
                   include_total: bool = False) -> pd.DataFrame:
    """``followon.overall_by_rep`` of every kept block as of ``as_of`` (all time, no rep or
    team chosen), counted and ranked in the database: per responder the answered blocks
    and the median of their reply times (docs/definitions.md, "Overall reply time",
    "Statistics"), from the one or two times at its middle; ``include_total``: and the
    row ``TOTAL`` of every block."""
    calendar = basis != "business"
    rows = cache.kept_block_replies(as_of_ms, calendar=calendar)
    responder = _text(rows["responder"])
    replies = rows["replies"].astype("int64").to_numpy()
    timed = rows["timed"].astype("int64").to_numpy()
    named = responder.notna().to_numpy()  # a block without a responder counts in TOTAL
    groups = pd.DataFrame({"rep": responder[named].to_numpy(), "replies": replies[named],
                           "timed": timed[named]})
    # The ranks asked for: each responder's middle, and every block's (None) for TOTAL.
    ranks: list[tuple[str | None, int]] = list(zip(groups["rep"], (groups["timed"] - 1) // 2,
                                                   strict=True))
    if include_total and replies.sum():
        groups.loc[len(groups)] = ["TOTAL", int(replies.sum()), int(timed.sum())]
        ranks.append((None, (int(timed.sum()) - 1) // 2))
    wanted = (groups["timed"] > 0).to_numpy()
    asked = [r for r, w in zip(ranks, wanted, strict=True) if w]
    found = cache.kept_block_ranks(as_of_ms, asked, calendar=calendar)
    t = found["t"].astype("float64")
    if calendar:  # as answered_reply_times: seconds from the block start, at least 0
        t = (t / 1000.0).clip(lower=0)
    k = found["k"].astype("int64").to_numpy()
    lo = t.groupby(k).min().reindex(range(len(asked))).to_numpy()
    hi = t.groupby(k).max().reindex(range(len(asked))).to_numpy()
    # The median as pandas' groupby median takes it: the middle time, or the mean of the
    # middle two.
    odd = groups.loc[wanted, "timed"].to_numpy() % 2 == 1
    median = np.full(len(groups), np.nan)
    median[wanted] = np.where(odd, lo, (lo + hi) / 2)
    return pd.DataFrame({"rep": groups["rep"].astype(object),
                         "replies": groups["replies"].astype("int64"),
                         "overall_median_s": median})


def _text(column: pd.Series) -> pd.Series:
    """A text column read from the cache as object, None where missing."""
    return column.astype(object).where(column.notna(), None)


def attribution(responder: pd.Series, addressed_rep: pd.Series) -> pd.Series:
    """Each lead's rep (docs/definitions.md, "Reps and attribution"): the responder (None
    while unanswered), else the addressed rep, else unassigned."""
    rep = np.where(responder.notna(), responder, addressed_rep)
    return pd.Series(rep, index=responder.index, dtype=object).fillna(UNASSIGNED)


def volume_counts(cache: Cache, config: Config, period: Period, tz: ZoneInfo
                  ) -> dict[str, pd.Series]:
    """The messages of ``period`` per local date, as ``metrics.volume_table`` counts them
    (``inbound``, ``outbound``, ``messages``): from the kept buckets lying within the period
    and within one local date, and for the rest (the period's partial first and last
    buckets, a bucket across local midnight) from those messages themselves."""
    size = VOLUME_BUCKET_MS
    since, until = period.since_ms, period.until_ms
    first = None if since is None else -(-since // size)  # the first whole bucket
    end = None if until is None else until // size  # the end of the whole buckets
    spans = []
    if since is not None:
        edge = first * size if until is None else min(first * size, until)  # type: ignore[operator]
        if since < edge:
            spans.append((since, edge))
    if until is not None:
        edge = end * size if since is None else max(end * size, since)  # type: ignore[operator]
        if edge < until and not (spans and edge < spans[0][1]):
            spans.append((edge, until))
    rows = cache.kept_volume(first, end)
    start = rows["bucket"].astype("int64") * size
    day = local_dates(start, tz)
    across = (day != local_dates(start + size - 1, tz)).to_numpy(dtype=bool)
    spans += [(int(a), int(a) + size) for a in start[across]]
    whole = rows[~across].assign(day=day[~across].to_numpy())
    m = prepare(cache.timed_messages(sorted(spans)), Roster(config)) if spans else None
    out = {}
    for kind in ("inbound", "outbound", "messages"):
        counts = whole.groupby("day")[kind].sum() if len(whole) else pd.Series(dtype="int64")
        if m is not None and len(m):
            mine = {"inbound": ~m["from_internal"] & m["from_addr"].notna(),
                    "outbound": m["from_internal"] & m["to_external"],
                    "messages": m["timed"]}[kind]
            counts = counts.add(local_dates(m.loc[mine, "time_ms"], tz).value_counts(),
                                fill_value=0)
        out[kind] = counts[counts > 0].astype("int64")
    return out


# -- keeping -----------------------------------------------------------------------------------
@dataclass
class Changes:
    """What one thread rebuild changed, as ``assign`` saw it."""

    threads: set[str] = field(default_factory=set)  # old and new thread ids
    modified: bool = False  # an already-kept message lost its thread id (upserted)
    max_id: int = 0  # the highest message id the rebuild covered
    #: every message of ``threads`` as ``Cache.messages_of_threads`` reads them after the
    #: write, when the inputs held them all (an incremental regroup); None: read them
    messages: pd.DataFrame | None = None
    #: the kept-lead match of ``messages`` started beside the thread writes (a full regroup)
    pending: Forked[Any] | None = None


#: what the thread inputs lack of ``Cache.messages_of_threads``' columns: an incremental
#: regroup reads them too, so ``update`` need not read its messages again (``capturing``)
INPUT_EXTRA = ("message_id", "extra")
_MESSAGE_READ = ("id", "message_id", "from_addr", "to_addrs", "cc_addrs", "reply_to", "subject",
                 "time_ms", "automated", "thread_id", "extra")


def capturing(assign: Callable[[pd.DataFrame], Grouping | pd.Series], covered_id: int,
              changes: Changes, *, whole: bool = False, everything: bool = False,
              then: Callable[[Changes], None] | None = None
              ) -> Callable[[pd.DataFrame], Grouping | pd.Series]:
    """``assign`` (thread inputs -> thread id per message id) that also records in
    ``changes`` what ``CacheBase.set_threads`` will write: every message whose new thread
    id is set and differs from its current one. ``whole``: the inputs hold every message
    of every thread they touch, with ``INPUT_EXTRA``, and the assignment is written as it
    is: ``changes.messages`` keeps the messages of the changed threads; ``everything``:
    the inputs are every cached message (a full regroup), all kept, for ``rebuild``.
    ``then(changes)`` runs after, before the assignment is written (``start_rebuild``)."""

    def run(inputs: pd.DataFrame) -> Grouping | pd.Series:
        found = assign(inputs)
        new = found if isinstance(found, pd.Series) else found.thread_id
        current = inputs.set_index("id")["thread_id"]
        fresh = new.reindex(current.index)
        moved = fresh.notna() & fresh.ne(current)
        # Each distinct id once (a first import: a million messages, 250,000 threads).
        changes.threads.update(map(str, pd.unique(fresh[moved].to_numpy())))
        changes.threads.update(map(str, pd.unique(current[moved & current.notna()].to_numpy())))
        # A message kept before whose thread id was cleared: its old thread is unknown.
        ids = current.index.to_numpy()
        changes.modified = bool((current.isna().to_numpy() & (ids <= covered_id)).any())
        changes.max_id = int(ids.max()) if len(ids) else 0
        if whole or everything:
            changes.messages = _as_read(inputs, fresh.to_numpy(dtype=object),
                                        None if everything else changes.threads)
        if then is not None:
            then(changes)
        return found

    return run


def of_threads(messages: pd.DataFrame | None, threads: set[str]) -> pd.DataFrame | None:
    """The rows of ``messages`` (as ``_as_read`` keeps them) in ``threads``."""
    if messages is None:
        return None
    return messages[messages["thread_id"].isin(threads)].reset_index(drop=True)


def _as_read(inputs: pd.DataFrame, thread_id: np.ndarray, threads: set[str] | None
             ) -> pd.DataFrame:
    """The rows of ``inputs`` (in id order) whose thread (``thread_id``, per row) is one of
    ``threads`` (None: every row with a thread), with those thread ids, as
    ``Cache.messages_of_threads`` reads them: its columns in its order, ``automated``
    boolean, no labels, times integers when none is missing (a frame read in parts may
    hold them as floats)."""
    ids = pd.Series(thread_id)
    mine = (ids.notna() if threads is None else ids.isin(threads)).to_numpy()
    m = inputs.loc[mine, list(_MESSAGE_READ)].reset_index(drop=True)
    m["thread_id"] = thread_id[mine]
    m["automated"] = m["automated"].astype(bool)
    if m["time_ms"].dtype.kind == "f" and m["time_ms"].notna().all():
        m["time_ms"] = m["time_ms"].astype("int64")
    m["labels"] = None
    return m


@dataclass
class Kept:
    """What ``_match`` keeps of some whole threads: lead rows (``KEPT_COLUMNS``) and their
    reply blocks (``BLOCK_KEPT_COLUMNS``); ``_match_parts`` also their messages' volume
    counts (``VOLUME_COLUMNS``)."""

    rows: pd.DataFrame
    blocks: pd.DataFrame
    volume: pd.DataFrame | None = None


def _match(m: pd.DataFrame, config: Config, cache: Cache) -> Kept:
    """The email leads of ``m`` (whole threads, prepared), their turns, thread rule and
    size, and reply blocks as of everything cached."""
    return _with_rules(_match_rows(m, config), cache)


def _match_rows(m: pd.DataFrame, config: Config) -> Kept:
    """``_match`` without the thread rules (``rule`` None: ``_with_rules`` reads them), from
    the messages alone: what a forked child computes (``start_rebuild``)."""
    if m.empty:
        return _joined([])
    return _finish(m, match_leads(m, config, EVERYTHING_MS), config)


def _finish(m: pd.DataFrame, leads: pd.DataFrame, config: Config) -> Kept:
    """The kept rows (without thread rules) and reply blocks of ``leads`` (``LEAD_COLUMNS``)
    from ``m`` (prepared): every message of each lead's thread and, for a form lead, of its
    first reply's."""
    leads = leads.assign(business_s=business_s(leads, config))
    mine = m[m["thread_id"].isin(leads["thread_id"])]
    turns = thread_turns(mine)
    leads["turns"] = leads["thread_id"].map(turns).fillna(0).astype("int64")
    # As metrics.thread_sizes counts them: every cached message of the thread.
    g = mine.groupby("thread_id")
    leads["thread_messages"] = leads["thread_id"].map(g.size()).astype("int64")
    for column, how in (("thread_first_ms", "min"), ("thread_last_ms", "max")):
        leads[column] = leads["thread_id"].map(g["time_ms"].agg(how)).astype("Int64")
    leads["rule"] = None
    blocks = reply_blocks(m, leads, config, EVERYTHING_MS)
    return Kept(leads[list(KEPT_COLUMNS)], blocks[list(BLOCK_KEPT_COLUMNS)])


def _with_rules(found: Kept, cache: Cache) -> Kept:
    """``found`` with each lead's thread rule, as the threads table holds it."""
    rows = found.rows
    if not rows.empty:
        rules = cache.thread_rules(rows["thread_id"].unique().tolist())
        rows = rows.assign(rule=rows["thread_id"].map(rules) if rules else None)
    return Kept(rows, found.blocks)


def _concat(frames: list[pd.DataFrame], columns: tuple[str, ...]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames) if frames else pd.DataFrame(columns=list(columns))


def _joined(parts: list[Kept]) -> Kept:
    """The rows and blocks of ``parts`` together (none: empty, with the kept columns)."""
    return Kept(_concat([p.rows for p in parts], KEPT_COLUMNS),
                _concat([p.blocks for p in parts], BLOCK_KEPT_COLUMNS))


def volume_rows(m: pd.DataFrame) -> pd.DataFrame:
    """Per VOLUME_BUCKET_MS of the timed messages of ``m`` (prepared): inbound (external
    senders), outbound (internal senders to an external recipient) and all messages, as
    ``metrics.volume_table`` counts them (``VOLUME_COLUMNS``, buckets with a message)."""
    m = m[m["timed"]]
    if m.empty:
        return pd.DataFrame(columns=list(VOLUME_COLUMNS))
    bucket = (m["time_ms"].astype("int64") // VOLUME_BUCKET_MS).to_numpy()
    counts = pd.DataFrame({
        "bucket": bucket,
        "inbound": (~m["from_internal"] & m["from_addr"].notna()).to_numpy(dtype="int64"),
        "outbound": (m["from_internal"] & m["to_external"]).to_numpy(dtype="int64"),
        "messages": 1,
    }).groupby("bucket", sort=True).sum()
    return counts.reset_index()[list(VOLUME_COLUMNS)]


def rebuild(cache: Cache, config: Config, state: str,
            messages: pd.DataFrame | None = None, matched: Kept | None = None) -> None:
    """Every kept row again, period by period of about ``PART_MESSAGES`` messages: each
    period's leads from the threads active in it, read whole (exact, as ``LeadSet.limit_to``
    is), so memory is that of one period. The volume counts each period's messages, and
    those before the first thread start or after the last apart. ``messages``: every cached
    message as ``Changes.messages`` holds them after a full regroup; matched from memory
    (``_rebuild_from``; ``matched``: already, by ``start_rebuild``'s child) instead of read
    again."""
    if messages is not None:
        _rebuild_from(cache, config, state, messages, matched)
        return
    roster = Roster(config)
    first, last, top = cache.thread_span_bounds()
    if config.leads.forms:  # a form lead is a notification: automated, no thread start
        notes = cache.form_notifications([r.from_glob for r in config.leads.forms])
        if len(notes):
            t = notes["time_ms"].astype("int64")
            first = int(t.min()) if first is None else min(first, int(t.min()))
            last = int(t.max()) if last is None else max(last, int(t.max()))
    rows, blocks, volume = [], [], []
    if first is not None and last is not None:
        n = max(1, -(-cache.message_count() // PART_MESSAGES))
        end = last + 1
        edges = sorted({first + (end - first) * i // n for i in range(n)} | {end})
        for a, b in zip(edges, edges[1:], strict=False):
            # With form rules, what the period's form leads need besides.
            m = prepare(cache.messages(active=form_span(cache, config, a, b, EVERYTHING_MS)),
                        roster)
            found = _within(_match(m, config, cache), a, b)
            rows.append(found.rows)
            blocks.append(found.blocks)
            volume.append(volume_rows(
                m[(m["time_ms"] >= a) & (m["time_ms"] < b) & (m["id"] <= top)]))
        outside = cache.timed_messages([(-(2**62), first), (end, 2**62)], where="id <= ?",
                                       params=(top,))
    else:
        outside = cache.timed_messages([(-(2**62), 2**62)], where="id <= ?", params=(top,))
    volume.append(volume_rows(prepare(outside, roster)))
    counts = _concat(volume, VOLUME_COLUMNS)
    if not counts.empty:  # a bucket counted in two parts (messages on both sides of an edge)
        counts = counts.groupby("bucket", sort=True).sum().reset_index()[list(VOLUME_COLUMNS)]
    cache.replace_kept_leads(_concat(rows, KEPT_COLUMNS), _concat(blocks, BLOCK_KEPT_COLUMNS),
                             counts, threads=None, state=state, max_id=top)


#: a full rebuild from held messages matches them in a forked child (``start_rebuild``)
#: from this many messages on, on a machine with two cores or more: below it the fork and
#: the result's trip back cost more than the match beside the thread writes saves
FORK_MESSAGES = 100_000


def forks(messages: int) -> bool:
    """Whether a full rebuild from ``messages`` held messages is matched in a forked child
    (``FORK_MESSAGES``, two cores or more)."""
    return messages >= FORK_MESSAGES and (os.cpu_count() or 1) >= 2


def start_rebuild(messages: pd.DataFrame, config: Config, first: Callable[[], Any]
                  ) -> Forked[Any]:
    """``first()`` (a full regroup's thread_keys), then ``_rebuild_from``'s match of
    ``messages`` (a ``Kept``), computed in a forked child while the thread ids are
    written, each sent back when done (a million messages: ~7 s of work beside the ~6 s
    those writes take; ``forks`` says when it pays)."""
    from replytime.forked import Forked

    return Forked(lambda: (f() for f in (first, lambda: _match_parts(messages, config))))


def _match_parts(messages: pd.DataFrame, config: Config) -> Kept:
    """Every kept row and block of ``messages`` (every cached message, with thread ids),
    without thread rules, and the volume counts (``Kept.volume``): whole threads in parts
    of about ``PART_MESSAGES`` messages, in thread start order (a thread's one lead is at
    its start), matched part by part."""
    roster = Roster(config)
    thread = messages["thread_id"].to_numpy(dtype=object)
    code, _ = pd.factorize(thread)
    person = (messages["time_ms"].notna() & ~messages["automated"]).to_numpy(dtype=bool)
    start = pd.Series(np.where(person, messages["time_ms"].astype("float64"), np.nan)
                      ).groupby(code).min().to_numpy()  # NaN: no lead can start there
    sizes = np.bincount(code)
    linked = np.zeros(len(start), dtype=bool)
    email_config = config
    if config.leads.forms:
        # A form lead's reply may be in any thread: the threads form leads may depend on
        # (matcher.form_lead_threads) are matched together under the form rules, as part
        # -1; every other thread's leads are its email leads alone, matched in parts.
        linked[code[form_lead_threads(messages, roster, config, EVERYTHING_MS).to_numpy()]] = True
        email_config = _without_forms(config)
    counted = np.where(linked, 0, sizes)
    order = np.lexsort((np.arange(len(start)), np.nan_to_num(start, nan=np.inf)))
    # Part of each thread: consecutive threads in start order, PART_MESSAGES a part.
    part = np.empty(len(start), dtype=np.int64)
    part[order] = (np.cumsum(counted[order]) - counted[order]) // PART_MESSAGES
    part[linked] = -1
    of_message = part[code]
    found: list[Kept] = []
    for k in range(-1 if linked.any() else 0, int(part.max()) + 1 if len(part) else 0):
        m = prepare(messages[of_message == k].reset_index(drop=True), roster)
        found.append(_match_rows(m, config if k < 0 else email_config))
        found[-1].volume = volume_rows(m)
    joined = _joined(found)
    found_rows = joined.rows
    if not found_rows.empty:  # as ``rebuild`` writes them: in lead order
        found_rows = found_rows.sort_values(["lead_time_ms", "lead_id"], kind="stable")
    counts = _concat([f.volume for f in found if f.volume is not None], VOLUME_COLUMNS)
    if not counts.empty:  # a bucket with messages of two parts
        counts = counts.groupby("bucket", sort=True).sum().reset_index()[list(VOLUME_COLUMNS)]
    return Kept(found_rows, joined.blocks, counts)


def _rebuild_from(cache: Cache, config: Config, state: str, messages: pd.DataFrame,
                  matched: Kept | None = None) -> None:
    """``rebuild`` from every cached message, held (a full regroup read them all), matched
    here unless ``matched`` (``_match_parts`` of them, by ``start_rebuild``). Without form
    rules a thread's lead, first reply and blocks depend on that thread alone, so any split
    into whole threads keeps exactly the rows that ``rebuild`` keeps; with them, only the
    threads of ``matcher.form_lead_threads`` need matching together
    (tests/test_kept_leads.py)."""
    found = matched if matched is not None else _match_parts(messages, config)
    top = int(messages["id"].max()) if len(messages) else 0
    cache.replace_kept_leads(_with_rules(found, cache).rows, found.blocks, found.volume,
                             threads=None, state=state, max_id=top)


def update(cache: Cache, config: Config, state: str, changes: Changes) -> None:
    """Match the changed threads again and replace their rows; add the new messages (all
    in changed threads) to the volume. With form rules, also every lead from the earliest
    one the new messages can reach on (``_form_reach``), matched from what ``form_span``
    reads, since a form lead's reply may be in any thread; and the older form leads whose
    notification's or first reply's thread changed, with their pairs as they were."""
    threads = sorted(changes.threads)
    covered = cache.kept_leads_state()[1]
    m = None
    if threads:
        read = changes.messages if changes.messages is not None else (
            cache.messages_of_threads(threads))
        m = prepare(read, Roster(config))
    reach, touched = None, []
    if m is None or m.empty:
        found = _match(pd.DataFrame(), config, cache)
        volume = pd.DataFrame(columns=list(VOLUME_COLUMNS))
    else:
        new = m[(m["id"] > covered) & (m["id"] <= changes.max_id)]
        volume = volume_rows(new)
        if config.leads.forms:
            # The changed threads' email leads, as without form rules: exact before the
            # reach, which goes back to any of them whose message may be a form lead.
            found = _match(m, _without_forms(config), cache)
            reach = _form_reach(config, m, new, found.rows)
            if reach is not None:
                found = _within(found, None, reach)
            older = _form_leads_touched(cache, config, threads, reach)
            found = _joined([found, older])
            touched = older.rows["lead_id"].astype("int64").tolist()
        else:
            found = _match(m, config, cache)
    if reach is not None:
        span = form_span(cache, config, reach, EVERYTHING_MS, EVERYTHING_MS)
        since = _within(_match(prepare(cache.messages(active=span), Roster(config)), config,
                               cache), reach, None)
        found = _joined([found, since])
    cache.replace_kept_leads(found.rows, found.blocks, volume, threads=threads, state=state,
                             max_id=max(changes.max_id, covered), leads_since=reach,
                             lead_ids=touched)


def _form_reach(config: Config, m: pd.DataFrame, new: pd.DataFrame, email: pd.DataFrame
                ) -> int | None:
    """The earliest lead time from which new messages (``new``, of the changed threads
    ``m``) may change which form leads there are and their first replies (None: none).
    Only new messages can (a changed or removed message rebuilds every row): a form lead
    can gain a reply, or absorb a notification, up to its reply window after it, so a
    window before the earliest new message. Also a changed thread's email lead (``email``:
    the changed threads' matched without form rules) whose message is a form notification:
    a form lead there, it is no email lead."""
    window = max(r.reply_window_s for r in config.leads.forms) * 1000
    times = []
    timed = new["time_ms"].dropna()
    if len(timed):
        times.append(int(timed.min()) - window)
    notes = form_notifications(m, Roster(config), config, EVERYTHING_MS)
    hit = email.loc[email["lead_id"].isin(notes["id"]), "lead_time_ms"]
    if len(hit):
        times.append(int(hit.min()))
    return min(times) if times else None


def _form_leads_touched(cache: Cache, config: Config, threads: list[str], before: int | None
                        ) -> Kept:
    """The kept form leads before ``before`` (None: all) whose notification's or first
    reply's thread is one of ``threads``, with the same pairs (no new message reaches
    them: ``_form_reach``) and what their threads make of them now: thread size, turns,
    reply blocks."""
    rows = cache.kept_form_leads_touching(threads, before)
    if rows.empty:
        return _joined([])
    around = pd.unique(pd.concat([rows["thread_id"], rows["reply_thread_id"]]).dropna())
    m = prepare(cache.messages_of_threads(sorted(around)), Roster(config))
    leads = as_of(rows.drop(columns=["reply_thread_id"]), config, EVERYTHING_MS, ages=False)
    return _with_rules(_finish(m, leads.drop(columns=["business_s"]), config), cache)


def _within(found: Kept, since: int | None, until: int | None) -> Kept:
    """The rows of ``found`` with lead time in [since, until) (None: open), and their
    blocks."""
    t = found.rows["lead_time_ms"]
    mine = pd.Series(True, index=t.index)
    if since is not None:
        mine &= t >= since
    if until is not None:
        mine &= t < until
    rows = found.rows[mine]
    return Kept(rows, found.blocks[found.blocks["lead_id"].isin(rows["lead_id"])])
