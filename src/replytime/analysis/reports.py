"""Every report as a pandas DataFrame (docs/definitions.md, "Column reference").

``Analysis`` adds the report tables to a ``LeadSet``: the lead reports (leads, unanswered,
sla, compare) read only the leads; reps adds the reply blocks; volume and threads read the
messages too.
"""

from __future__ import annotations

import pandas as pd

from replytime.analysis import metrics
from replytime.analysis.leadset import Basis, LeadSet, Selection
from replytime.analysis.matcher import any_listed, recipients
from replytime.errors import UsageError
from replytime.periods import Period, check_period, parse_duration


class Analysis(LeadSet):
    """Messages and leads of one cache as of one instant, with report tables on demand."""

    def leads(self, sel: Selection | None = None, **kw: object) -> pd.DataFrame:
        sel = sel or self.selection(**kw)  # type: ignore[arg-type]
        return metrics.leads_table(self.select(sel), self.config)

    def reps(self, sel: Selection | None = None, basis: Basis | None = None,
             include_total: bool = False, **kw: object) -> pd.DataFrame:
        from replytime.analysis import kept

        sel = sel or self.selection(**kw)  # type: ignore[arg-type]
        b = self.basis(basis)
        # Overall reply time (docs/definitions.md) is counted by responder.
        if self._counted_in_cache(sel):  # counted (and ranked) in the database
            table = kept.reps_table(self.cache, self.config, sel.period, self.as_of_ms, b,
                                    include_total=include_total)
            overall = self._kept_overall(sel.period, b, bool(table["leads"].sum()),
                                         include_total)
        else:
            leads = self.select(sel, with_messages=True, tally=True)  # for the reply blocks
            table = metrics.reps_table(leads, self.config, b, include_total=include_total)
            overall = _overall(self.reply_times(leads, sel.period), b, include_total)
        table = table.merge(overall, on="rep", how="left")
        table["replies"] = table["replies"].fillna(0).astype("int64")
        if sel.reps or sel.team:
            wanted = set(self.select(sel, tally=True)["rep"]) | {
                r.name for r in self.config.reps
                if r.name.lower() in {x.lower() for x in sel.reps}
                or (sel.team and (r.team or "").lower() == sel.team.lower())
            }
            table = table[table["rep"].isin(wanted) | (table["rep"] == "TOTAL")]
        return table.reset_index(drop=True)

    def _kept_overall(self, period: Period, basis: Basis, any_leads: bool,
                      include_total: bool) -> pd.DataFrame:
        """``followon.overall_by_rep`` of the blocks of every kept lead of ``period`` (and
        ``TOTAL``): for all time counted and ranked in the database, for a period from its
        answered blocks."""
        from replytime.analysis import kept

        if any_leads and period.since_ms is None and period.until_ms is None:
            return kept.overall_by_rep(self.cache, self.as_of_ms, basis,
                                       include_total=include_total)
        blocks = self.answered_reply_times(period, basis) if any_leads else self._blocks_of(
            pd.DataFrame())
        return _overall(blocks, basis, include_total)

    def unanswered(self, sel: Selection | None = None, older_than: str | int | None = None,
                   basis: Basis | None = None, **kw: object) -> pd.DataFrame:
        """The unanswered queue, oldest first; ``older_than`` keeps only stale leads (waiting
        longer than that, in business or calendar time as the report)."""
        from replytime.analysis.followon import stale_leads

        sel = sel or self.selection(**kw)  # type: ignore[arg-type]
        table = metrics.unanswered_table(self.select(sel, unanswered=True), self.as_of_ms)
        if older_than is None:
            return table
        try:
            limit = older_than if isinstance(older_than, int) else parse_duration(older_than)
        except ValueError as exc:
            raise UsageError(f"--older-than: {exc}") from None
        return stale_leads(table, limit, self.basis(basis)).reset_index(drop=True)

    def blocks(self, sel: Selection | None = None, **kw: object) -> pd.DataFrame:
        """Every reply block of the selected leads (``report leads --all-replies``)."""
        sel = sel or self.selection(**kw)  # type: ignore[arg-type]
        return self._blocks_of(self.select(sel, with_messages=True)).reset_index(drop=True)

    def compare(self, a: str, b: str, sel: Selection | None = None,
                basis: Basis | None = None) -> pd.DataFrame:
        """Per rep and team: leads, median and within-SLA in periods A and B, with p-values
        (Mann–Whitney U on response times, two-proportion z-test on within-SLA)."""
        from replytime.analysis import followon

        sel = sel or self.selection()
        try:
            pa, pb = (followon.parse_range(x, self.tz, self.now) for x in (a, b))
        except ValueError as exc:
            raise UsageError(f"--a/--b: {exc}") from None
        for flag, period in (("--a", pa), ("--b", pb)):
            check_period(period, self.as_of_ms, self.tz, flag)
        la, lb = (
            metrics.select(metrics.in_period(self.all_leads, p), sel.reps, sel.team, self.config)
            for p in (pa, pb)
        )
        return followon.compare(la, lb, self.config, self.basis(basis))

    def sla(self, sel: Selection | None = None, basis: Basis | None = None,
            **kw: object) -> pd.DataFrame:
        sel = sel or self.selection(**kw)  # type: ignore[arg-type]
        b = self.basis(basis)
        if self._counted_in_cache(sel):  # the period's durations alone
            from replytime.analysis.kept import answered_times

            column = metrics.duration_column(b)
            leads = self._kept_tally(sel, (column,))
            leads[column] = answered_times(leads[column], leads["answered"])
        else:
            leads = self.select(sel, tally=True)
        return metrics.sla_table(leads, self.config, b)

    def volume(self, sel: Selection | None = None, **kw: object) -> pd.DataFrame:
        sel = sel or self.selection(**kw)  # type: ignore[arg-type]
        if self._counted_in_cache(sel, unread=True):
            from replytime.analysis import kept

            counts = kept.volume_counts(self.cache, self.config, sel.period, self.tz)
            leads = self._kept_tally(sel, ("lead_time_ms",))
            replies = self._kept_tally(sel, ("reply_time_ms",), by="reply_time_ms")
            return metrics.volume_from(leads, replies, sel.period, self.tz, counts)
        messages = self.messages
        if sel.reps or sel.team:
            # Per-rep volume: that rep's own mail (sent by or to one of their addresses).
            emails = self._emails_of(sel)
            mine = messages["from_addr"].isin(emails) | any_listed(recipients(messages), emails)
            messages = messages[mine]
        all_leads = metrics.select(self.all_leads, sel.reps, sel.team, self.config)
        return metrics.volume_table(messages, self.select(sel), all_leads, sel.period, self.tz)

    def _emails_of(self, sel: Selection) -> set[str]:
        out: set[str] = set()
        for r in self.config.reps:
            if r.name.lower() in {x.lower() for x in sel.reps} or (
                sel.team and (r.team or "").lower() == sel.team.lower()
            ):
                out.update(r.emails)
        out.update(x.lower() for x in sel.reps if "@" in x)
        return out

    def thread_sizes(self, sel: Selection | None = None, **kw: object) -> pd.DataFrame:
        sel = sel or self.selection(**kw)  # type: ignore[arg-type]
        if self._counted_in_cache(None, unread=True):
            return self._kept_thread_sizes(self.select(sel, tally=True))
        return metrics.thread_sizes(self.messages, self.select(sel, with_messages=True))

    def threads(self, sel: Selection | None = None, **kw: object) -> pd.DataFrame:
        sel = sel or self.selection(**kw)  # type: ignore[arg-type]
        if self._counted_in_cache(sel):  # each lead's thread size, kept on its row
            sizes = self._kept_tally(sel, ("thread_id", "thread_messages"))
            # With form rules a thread can hold two leads (a form lead and its thread's
            # email lead): it counts once.
            sizes = sizes[~sizes["thread_id"].duplicated()]
            return metrics.threads_table(sizes.rename(columns={"thread_messages": "messages"}))
        return metrics.threads_table(self.thread_sizes(sel))

    def _counted_in_cache(self, sel: Selection | None, *, unread: bool = False) -> bool:
        """Whether a count over ``sel`` reads only the kept columns it counts: kept leads,
        no rep or team (attribution is derived as of as_of: ``kept.as_of``; ``sel`` None:
        a count per lead, which needs none); ``unread``: and the messages not read yet (a
        report that has them counts from them)."""
        chosen = sel is not None and bool(sel.reps or sel.team)
        return self.kept and not chosen and not (unread and "messages" in self.__dict__)

    def _kept_tally(self, sel: Selection, columns: tuple[str, ...],
                    by: str = "lead_time_ms") -> pd.DataFrame:
        """``answered`` (as of as_of) and ``columns`` of the kept leads of ``sel``'s period
        (``by`` lead or first-reply time)."""
        p = sel.period
        rows = self.cache.kept_tally(p.since_ms, p.until_ms, self.as_of_ms, columns, by=by)
        return rows.assign(answered=rows["answered"].astype(bool))


def _overall(blocks: pd.DataFrame, basis: Basis, include_total: bool) -> pd.DataFrame:
    """``followon.overall_by_rep`` of ``blocks``, with the row ``TOTAL`` of them all."""
    from replytime.analysis import followon

    overall = followon.overall_by_rep(blocks, basis)
    if include_total:
        overall = pd.concat(
            [overall, followon.overall_by_rep(blocks.assign(responder="TOTAL"), basis)])
    return overall
