"""The leads of one cache as of one instant (docs/definitions.md): the messages a report
needs, every lead with its first reply and business times, and the reply blocks, built once
and shared by every report of an ``Analysis``.

Reads the cache (``replytime.store``) and applies the matcher, business hours and follow-on
rules of this package; it renders nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Literal

import numpy as np
import pandas as pd

from replytime.analysis import metrics
from replytime.analysis.matcher import (
    UNASSIGNED,
    Roster,
    match_leads,
    prepare,
)
from replytime.analysis.rethread import refresh_threads
from replytime.config import Config
from replytime.errors import UsageError
from replytime.periods import Period, check_period, parse_instant, parse_period, utc_now, zone
from replytime.store import Cache
from replytime.store.leads import KEPT_READ

Basis = Literal["business", "calendar"]
# The end of a period open at the end, far past any message time (and far from int64 limits).
OPEN_END_MS = 2**53
#: An all-time analysis of a cache with more messages than this goes period by period.
PART_MESSAGES = 250_000


@dataclass
class Selection:
    """Which leads a report covers."""

    period: Period
    reps: tuple[str, ...] = ()
    team: str | None = None


class LeadSet:
    """Messages and leads of one cache as of one instant: what every report is built from.
    The report tables themselves are on ``replytime.analysis.reports.Analysis``."""

    def __init__(
        self,
        cache: Cache,
        config: Config,
        *,
        as_of: datetime | str | None = None,
        scope: Period | None = None,
    ) -> None:
        self.cache = cache
        self.config = config
        self.scope: Period | None = None
        self._form_start: int | None = None  # form leads before this are not exact
        self._sql_leads: dict[tuple[int | None, int | None], pd.DataFrame] = {}
        # (since, until, replied, unanswered, tally) -> leads read from the kept table
        self._kept_frames: dict[tuple[int | None, int | None, bool, bool, bool],
                                pd.DataFrame] = {}
        self.tz = zone(config.timezone)
        self.now = utc_now()
        if isinstance(as_of, str):
            try:
                as_of = parse_instant(as_of, self.tz, self.now)
            except ValueError as exc:
                raise UsageError(f"--as-of: {exc}") from None
        self.as_of = as_of or self.now
        self.as_of_ms = int(self.as_of.timestamp() * 1000)
        # Relative periods ("last-week", "7d") count back from the as-of time, so a report
        # "as of" a past date shows what it would have shown then.
        self.now = self.as_of
        if scope is not None:
            self.limit_to(scope)

    def limit_to(self, period: Period) -> None:
        """Read only what reports on leads of ``period`` need: the threads active in it
        (whole), which is exact for every lead, first reply and message of the period and
        keeps a report on one week of a ten-million-message cache fast. Call it before the
        first report. A period open at the end (``--since 7d``) reads the threads active
        since its start; one with no start reads everything."""
        if "messages" in self.__dict__:
            raise RuntimeError("limit_to() must come before the first report")
        if period.since_ms is None:
            self.scope = None
        else:
            until = period.until_ms if period.until_ms is not None else OPEN_END_MS
            self.scope = Period(period.since_ms, until)

    # -- frames ---------------------------------------------------------------------------
    @cached_property
    def kept(self) -> bool:
        """Whether the leads come from the cache's kept lead table (``analysis.kept``): when
        it is exact for this config, which it is after ``refresh_threads`` unless form
        rules or label filters are configured."""
        from replytime.analysis import kept

        refresh_threads(self.cache, self.config)
        return kept.usable(self.cache, self.config)

    def _kept_leads(self, since_ms: int | None, until_ms: int | None, *,
                    replied: bool = False, unanswered: bool = False,
                    tally: bool = False) -> pd.DataFrame:
        """Leads of [since, until) from the kept table (``replied``: and those first
        answered in it; ``unanswered``: only those not answered as of ``as_of``), each
        read once. ``tally``: only the columns the tallies need (``kept.TALLY_READ``), for
        reports that count and summarise rather than list; a frame of every column serves
        them too."""
        from replytime.analysis import kept

        key = (since_ms, until_ms, replied, unanswered)
        if (*key, False) in self._kept_frames:  # every column: it serves a tally too
            return self._kept_frames[(*key, False)]
        if tally and (*key, True) in self._kept_frames:
            return self._kept_frames[(*key, True)]
        columns = kept.TALLY_READ if tally else KEPT_READ
        rows = self.cache.kept_leads(since_ms, until_ms, self.as_of_ms, replied=replied,
                                     unanswered=unanswered, columns=columns)
        leads = kept.as_of(rows, self.config, self.as_of_ms)
        if not tally:
            rule = rows["rule"].reset_index(drop=True)  # as _with_rule adds it
            leads = leads.assign(rule=rule.astype(object).where(rule.notna(), None))
        # The column order of the other paths: rule, then the business times.
        times = [c for c in ("business_s", "business_age_s") if c in leads]
        self._kept_frames[(*key, tally)] = leads[[c for c in leads if c not in times] + times]
        return self._kept_frames[(*key, tally)]

    def _all_kept(self, *, tally: bool = False) -> pd.DataFrame:
        """``all_leads`` from the kept table: every lead, or limited to a period the leads
        of the period and those first answered in it."""
        scope = self.scope or Period(None, None)
        bounded = scope.since_ms is not None or scope.until_ms is not None
        return self._kept_leads(scope.since_ms, scope.until_ms, replied=bounded, tally=tally)

    @cached_property
    def messages(self) -> pd.DataFrame:
        refresh_threads(self.cache, self.config)
        roster = Roster(self.config)
        active = None
        if self.scope is not None:
            since, until = int(self.scope.since_ms), int(self.scope.until_ms)  # type: ignore[arg-type]
            if self.config.leads.forms:
                from replytime.analysis.kept import form_span

                since, until = form_span(self.cache, self.config, since, until, self.as_of_ms)
                self._form_start = since
            active = (since, until)
        raw = self.cache.messages(labels=bool(self.config.leads.labels), active=active)
        return prepare(raw, roster)

    def lead_counts(self) -> tuple[int, int, int]:
        """(leads, unanswered, clamped) as of ``as_of`` over all time (``status``): counted
        in the database from the kept table when it is exact, else from ``all_leads``."""
        if self.scope is None and self.kept:
            return self.cache.kept_lead_counts(self.as_of_ms)
        leads = self.all_leads
        return (int(len(leads)), int((~leads["answered"]).sum()),
                int(leads["clamped"].sum()))

    def _parts(self) -> list[Period]:
        """For an all-time analysis of a big cache: consecutive periods of about
        ``PART_MESSAGES`` messages each, from the first message to ``as_of``. Leads and
        blocks are then built part by part, each part reading only the threads active in it
        (exact, as ``limit_to`` is), so memory is that of one part, not of the whole cache."""
        if self.scope is not None or self.cache.message_count() <= PART_MESSAGES:
            return []
        first, end = self.cache.earliest_time_ms(), self.as_of_ms + 1
        if first is None or first >= end:
            return []
        n = -(-self.cache.message_count() // PART_MESSAGES)
        edges = [first + (end - first) * i // n for i in range(n)] + [end]
        return [Period(a, b) for a, b in zip(edges, edges[1:], strict=False) if a < b]

    def _leads_by_part(self, parts: list[Period]) -> pd.DataFrame:
        leads, blocks = [], []
        for period in parts:
            part = LeadSet(self.cache, self.config, as_of=self.as_of, scope=period)
            chunk = metrics.in_period(part.all_leads, period)
            if not chunk.empty:  # empty frames would turn typed columns into object
                leads.append(chunk)
                b = part.all_blocks
                blocks.append(b[b["lead_id"].isin(chunk["lead_id"])])
        if not leads:
            return self._whole_leads()
        blocks = [b for b in blocks if not b.empty] or blocks[:1]
        self.__dict__["all_blocks"] = (  # fills the cached property below
            pd.concat(blocks).sort_values(["lead_id", "block"]).reset_index(drop=True)
        )
        return pd.concat(leads).reset_index(drop=True)

    @cached_property
    def all_leads(self) -> pd.DataFrame:
        """Every lead as of ``as_of``, with business times. Limited to a period (and read
        from the kept table): the leads of the period and those first answered in it, all
        that any report of the period reads of them."""
        if self.kept:
            return self._all_kept()
        parts = self._parts()
        return self._leads_by_part(parts) if parts else self._whole_leads()

    def _whole_leads(self) -> pd.DataFrame:
        leads = match_leads(self.messages, self.config, self.as_of_ms)
        if self._form_start is not None:
            leads = leads[(leads["kind"] != "form") | (leads["lead_time_ms"] >= self._form_start)]
        return self._with_business(self._with_rule(leads.reset_index(drop=True)))

    def _with_rule(self, leads: pd.DataFrame) -> pd.DataFrame:
        """Add ``rule``: how the lead's thread was grouped (threads.RULES), as the threads
        table records it. One lookup per lead thread, the same on either pairing path."""
        rules = self.cache.thread_rules(leads["thread_id"].dropna().unique().tolist())
        rule = leads["thread_id"].map(rules) if rules else pd.Series(None, index=leads.index)
        return leads.assign(rule=rule.astype(object).where(rule.notna(), None))

    def _with_business(self, leads: pd.DataFrame) -> pd.DataFrame:
        leads = leads.copy()
        if not self.config.has_schedule or leads.empty:
            leads["business_s"] = leads["response_s"]
            leads["business_age_s"] = np.where(
                leads["answered"], np.nan, (self.as_of_ms - leads["lead_time_ms"]) / 1000.0
            )
            return leads
        from replytime.analysis.hours import business_seconds_by

        names = pd.concat([leads["responder"].dropna(), leads["rep"]]).unique()
        schedules = {n: self.config.schedule_for(n) for n in names}
        answered = leads["answered"].to_numpy()
        start = leads["lead_time_ms"].to_numpy(dtype="float64")
        reply = leads["reply_time_ms"].astype("float64").to_numpy()
        business = np.full(len(leads), np.nan)
        if answered.any():
            business[answered] = business_seconds_by(
                schedules, leads["responder"].to_numpy()[answered], start[answered],
                reply[answered],
            )
        leads["business_s"] = np.maximum(business, 0)
        age = np.full(len(leads), np.nan)
        if (~answered).any():
            age[~answered] = business_seconds_by(
                schedules, leads["rep"].to_numpy()[~answered], start[~answered],
                np.full(int((~answered).sum()), float(self.as_of_ms)),
            )
        leads["business_age_s"] = age
        return leads

    @cached_property
    def all_blocks(self) -> pd.DataFrame:
        """Every block of consecutive external messages in lead threads
        (docs/definitions.md, "Overall reply time")."""
        from replytime.analysis.followon import reply_blocks

        leads = self.all_leads  # built part by part, it brings the blocks along
        if "all_blocks" in self.__dict__:
            return self.__dict__["all_blocks"]
        return reply_blocks(self.messages, leads, self.config, self.as_of_ms)

    def basis(self, basis: Basis | None = None) -> Basis:
        """Business time by default when a schedule exists (docs/definitions.md, "Statistics")."""
        if basis is not None:
            return basis
        return "business" if self.config.has_schedule else "calendar"

    def selection(
        self,
        since: str | None = None,
        until: str | None = None,
        rep: str | Sequence[str] | None = None,
        team: str | None = None,
    ) -> Selection:
        try:
            period = parse_period(since, until, self.tz, self.now)
        except ValueError as exc:
            raise UsageError(f"--since/--until: {exc}") from None
        check_period(period, self.as_of_ms, self.tz)
        reps = (rep,) if isinstance(rep, str) else tuple(rep or ())
        known = {x.name.lower() for x in self.config.reps}
        for r in reps:
            # Internal addresses outside the roster are reps of their own
            # (docs/definitions.md, "Reps and attribution").
            if r.lower() not in known and "@" not in r and r != UNASSIGNED:
                names = ", ".join(x.name for x in self.config.reps) or "none in the config"
                raise UsageError(f"--rep: unknown rep {r!r} (reps: {names})")
        if team and not any((x.team or "").lower() == team.lower() for x in self.config.reps):
            raise UsageError(f"--team: no rep belongs to team {team!r}")
        return Selection(period, reps, team)

    def select(self, sel: Selection, *, with_messages: bool = False,
               tally: bool = False, unanswered: bool = False) -> pd.DataFrame:
        """The selected leads; ``with_messages``: the caller reads the messages too;
        ``tally``: the caller reads only ``kept.TALLY_READ``'s columns and what ``kept.as_of``
        derives from them (read alone from the kept table); ``unanswered``: the caller
        reads only the unanswered ones (the only ones read from the kept table)."""
        leads = self._period_leads(sel.period, with_messages, tally, unanswered)
        return metrics.select(leads, sel.reps, sel.team, self.config)

    def _period_leads(self, period: Period, with_messages: bool = False,
                      tally: bool = False, unanswered: bool = False) -> pd.DataFrame:
        """Leads with lead time in ``period``. For a limited analysis whose messages are not
        needed (and not read yet) and without form rules (form leads search every thread),
        they are paired in the database (``cache.pairing``: window functions over the
        period's messages): exactly the same rows, no message read into pandas. At a million
        messages a week's `report leads` takes 1.25 s instead of 1.4-1.9 s. Where the
        messages are read anyway (reps, threads, volume) pairing them in pandas is faster."""
        if self.kept:  # the period's rows, selected by lead time in the database
            return self._kept_leads(period.since_ms, period.until_ms, tally=tally,
                                    unanswered=unanswered)
        key = (period.since_ms, period.until_ms)
        if key in self._sql_leads:
            return self._sql_leads[key]
        sql = (self.scope is not None and period.since_ms is not None
               and not self.config.leads.forms and not with_messages
               and "messages" not in self.__dict__ and "all_leads" not in self.__dict__)
        if not sql:
            return metrics.in_period(self.all_leads, period)
        from replytime.analysis.sql_leads import email_leads

        refresh_threads(self.cache, self.config)
        leads = email_leads(self.cache, self.config, period.since_ms, period.until_ms,
                            self.as_of_ms)
        self._sql_leads[key] = self._with_business(self._with_rule(leads))
        return self._sql_leads[key]

    def _blocks_of(self, leads: pd.DataFrame) -> pd.DataFrame:
        """The reply blocks of ``leads``: of those leads only when the leads of the whole
        analysis were never built (blocks are per lead, so the rows are the same)."""
        if self.kept:
            return self._kept_blocks(leads)
        if "all_blocks" in self.__dict__ or "all_leads" in self.__dict__:
            return self.all_blocks[self.all_blocks["lead_id"].isin(leads["lead_id"])]
        from replytime.analysis.followon import reply_blocks

        return reply_blocks(self.messages, leads, self.config, self.as_of_ms)

    def _kept_blocks(self, leads: pd.DataFrame) -> pd.DataFrame:
        """Reply blocks of kept leads, from the kept blocks (``analysis.kept``): no message
        read."""
        from replytime.analysis.followon import kept_blocks_as_of, reply_blocks

        if leads.empty:  # no messages needed
            return reply_blocks(pd.DataFrame(), leads, self.config, self.as_of_ms)
        rows = self.cache.kept_blocks(int(leads["lead_time_ms"].min()),
                                      int(leads["lead_time_ms"].max()), self.as_of_ms)
        return kept_blocks_as_of(rows, leads, self.as_of_ms)

    def reply_times(self, leads: pd.DataFrame, period: Period) -> pd.DataFrame:
        """The reply blocks of ``leads`` (of ``period``) with what
        ``followon.overall_by_rep`` reads; of kept leads only those columns are read."""
        from replytime.analysis.followon import REPLY_TIME_COLUMNS, kept_reply_times

        if not self.kept or leads.empty:
            return self._blocks_of(leads)
        span: tuple[int | None, int | None] = (None, None)
        if period.since_ms is not None or period.until_ms is not None:
            span = int(leads["lead_time_ms"].min()), int(leads["lead_time_ms"].max())
        rows = self.cache.kept_blocks(*span, self.as_of_ms, REPLY_TIME_COLUMNS)
        return kept_reply_times(rows, leads, self.as_of_ms)

    def answered_reply_times(self, period: Period, basis: Basis) -> pd.DataFrame:
        """What ``followon.overall_by_rep`` reads on ``basis`` of the blocks of every kept
        lead of ``period`` (no rep or team chosen): of the answered blocks of the leads
        with lead time in it only the responder and that basis's time, without looking up
        each block's lead for all time."""
        from replytime.analysis.followon import answered_reply_times

        span: tuple[int | None, int | None] = (None, None)
        if period.since_ms is not None or period.until_ms is not None:
            span = (-(2**62) if period.since_ms is None else period.since_ms,
                    2**62 if period.until_ms is None else period.until_ms - 1)
        times = ("business_s",) if basis == "business" else ("block_start_ms", "reply_time_ms")
        rows = self.cache.kept_blocks(*span, self.as_of_ms, ("responder", *times),
                                      answered=True)
        return answered_reply_times(rows, basis)

    def _kept_thread_sizes(self, leads: pd.DataFrame) -> pd.DataFrame:
        """``metrics.thread_sizes`` of kept leads: messages and span from the threads
        table, turns from the kept rows."""
        if leads.empty:  # the empty frame's columns and types
            return metrics.thread_sizes(self.messages, leads.assign(thread_id=None))
        rows = self.cache.kept_thread_sizes(int(leads["lead_time_ms"].min()),
                                            int(leads["lead_time_ms"].max()))
        # By lead id, in the leads' order: the leads need no thread ids (``tally``). A thread
        # with two leads (form rules: a form lead and an email lead) counts once.
        rows = rows.set_index("lead_id").reindex(leads["lead_id"].to_numpy())
        rows = rows[~rows["thread_id"].duplicated()]
        out = pd.DataFrame({
            "messages": rows["messages"].to_numpy(),
            "turns": rows["turns"].to_numpy(),
            "duration_s": ((rows["last_ms"] - rows["first_ms"]) / 1000.0).to_numpy(),
        }, index=rows["thread_id"].to_numpy())
        return metrics.finish_thread_sizes(out, rows)

    def subjects(self, ids: pd.Series) -> pd.Series:
        """The subject of each message id in ``ids`` (indexed by id): from the messages
        when read, else from the cache (a report on kept leads reads no messages)."""
        if "messages" in self.__dict__ or not self.kept:
            m = self.messages
            return m.loc[m["id"].isin(ids), ["id", "subject"]].set_index("id")["subject"]
        found = self.cache.subjects_of([int(i) for i in ids])
        return pd.Series(found, dtype=object).rename_axis("id").rename("subject")
