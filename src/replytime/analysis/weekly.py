"""The weekly summary (docs/definitions.md, "Weekly report"): per-rep response times for one
period next to the previous period of the same length, the oldest unanswered leads, when
leads arrive, and the daily flow of leads and first replies. Frames in, one dataclass out;
``render_weekly_*`` draw it for a terminal (``replytime.output.weekly``) or as a
self-contained HTML page (``replytime.output.html``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from replytime.analysis import metrics
from replytime.analysis.leadset import Basis, LeadSet, Selection
from replytime.analysis.matcher import UNASSIGNED
from replytime.errors import UsageError
from replytime.periods import Period, check_period, parse_period

TEAM = "TEAM"
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
TOP_UNANSWERED = 10

# Column order of ``weekly_frame``: the stable columns first, then extras.
WEEKLY_COLUMNS = [
    "rep", "team", "leads", "prev_leads", "reply_rate", "prev_reply_rate", "median_s",
    "prev_median_s", "p90_s", "prev_p90_s", "within_sla", "prev_within_sla", "unanswered",
    "lead_share",
    "answered", "prev_answered", "prev_unanswered", "prev_lead_share", "leads_change",
    "reply_rate_change", "median_change_s", "p90_change_s", "within_sla_change",
    "unanswered_change",
]


@dataclass
class WeeklyReport:
    """Everything the weekly summary shows. Durations are float seconds in ``basis`` time,
    instants UTC epoch milliseconds, rates fractions 0-1."""

    period: Period
    previous: Period
    basis: Basis
    tz: ZoneInfo | timezone
    as_of_ms: int
    sla_target_s: int
    selection: Selection
    # One row per rep (roster reps always, others when they have leads) plus TEAM last:
    # current value, previous value and change of each metric (WEEKLY_COLUMNS).
    table: pd.DataFrame
    # Oldest unanswered leads of the period (at most 10): lead_message_id, lead_from,
    # subject, lead_time_ms, rep, age_s, business_age_s, waiting_s (age in ``basis``).
    oldest_unanswered: pd.DataFrame
    unanswered_total: int
    # 7 x 24 counts of the period's leads, index Mon..Sun, columns hours 0..23 (report zone).
    heatmap: pd.DataFrame
    # date (report zone), leads, first_replies: one row per day of the period.
    daily: pd.DataFrame
    # rep, response_s (``basis``), lead_message_id: answered leads of the period.
    response_times: pd.DataFrame
    # Who covered for whom: addressed_rep, responder, leads (handoffs of the period).
    handoffs: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["addressed_rep", "responder", "leads"]))

    @property
    def team(self) -> dict[str, object]:
        """The TEAM row as a dict."""
        return self.table.iloc[-1].to_dict()

    @property
    def share(self) -> pd.DataFrame:
        """rep, leads, lead_share (reps with leads only)."""
        reps = self.table[(self.table["rep"] != TEAM) & (self.table["leads"] > 0)]
        return reps[["rep", "leads", "lead_share"]].reset_index(drop=True)

    def label(self, period: Period | None = None) -> str:
        return _period_label(period or self.period, self.tz)


# -- periods -------------------------------------------------------------------------------
def weekly_periods(
    since: str | None, until: str | None, tz: ZoneInfo | timezone, as_of: datetime
) -> tuple[Period, Period]:
    """The report period and the one before it.

    Relative forms are resolved against ``as_of`` (not the wall clock), so a report "as of
    Monday 16 Nov" covers the week before it. Default: the last full week, Monday 00:00 to
    Monday 00:00 in the report zone. Without --until a period ends at ``as_of``; with
    --until alone it is the 7 days before. The previous period has the same wall-clock
    length in the report zone, so a week across a DST change still starts at midnight.
    """
    try:
        if since is None and until is None:
            period = parse_period("last-week", None, tz, as_of)
        else:
            period = parse_period(since, until, tz, as_of)
    except ValueError as exc:
        raise UsageError(f"--since/--until: {exc}") from None
    end = period.until_ms if period.until_ms is not None else int(as_of.timestamp() * 1000)
    end_dt = datetime.fromtimestamp(end / 1000, tz)
    if period.since_ms is None:
        start_dt = end_dt - timedelta(days=7)
    else:
        start_dt = datetime.fromtimestamp(period.since_ms / 1000, tz)
    check_period(Period(_ms(start_dt), _ms(end_dt)), _ms(as_of), tz)
    # Same tzinfo on both sides: Python subtracts and adds wall-clock times here.
    length = end_dt.replace(tzinfo=None) - start_dt.replace(tzinfo=None)
    prev_dt = (start_dt.replace(tzinfo=None) - length).replace(tzinfo=tz)
    # Round trip through fromtimestamp keeps DST folds right for zoneinfo zones.
    return (
        Period(_ms(start_dt), _ms(end_dt)),
        Period(_ms(prev_dt), _ms(start_dt)),
    )


def _ms(dt: datetime) -> int:
    return int(round(dt.timestamp() * 1000))


def _period_label(period: Period, tz: ZoneInfo | timezone) -> str:
    """``Mon 9 Nov – Sun 15 Nov 2026`` for whole days, else with times."""
    a = datetime.fromtimestamp((period.since_ms or 0) / 1000, tz)
    b = datetime.fromtimestamp((period.until_ms or 0) / 1000, tz)
    if a.time() == b.time() == datetime.min.time():
        last = b - timedelta(days=1)
        return f"{a:%a} {a.day} {a:%b} – {last:%a} {last.day} {last:%b %Y}"
    return f"{a:%a %Y-%m-%d %H:%M} – {b:%a %Y-%m-%d %H:%M}"


# -- the report ----------------------------------------------------------------------------
def weekly_report(
    analysis: LeadSet,
    since: str | None = None,
    until: str | None = None,
    rep: str | Sequence[str] | None = None,
    team: str | None = None,
    basis: Basis | None = None,
) -> WeeklyReport:
    """The weekly summary for ``analysis`` (see ``weekly_periods`` for the periods)."""
    base = analysis.selection(None, None, rep, team)  # validates --rep / --team
    period, previous = weekly_periods(since, until, analysis.tz, analysis.as_of)
    sel = Selection(period, base.reps, base.team)
    prev_sel = Selection(previous, base.reps, base.team)
    used = analysis.basis(basis)

    table = _compare(_reps(analysis, sel, used), _reps(analysis, prev_sel, used))
    if base.team:
        table.loc[table["rep"] == TEAM, "team"] = base.team

    leads = analysis.select(sel)
    dur = metrics.duration_column(used)
    answered = leads[leads["answered"]]
    response_times = pd.DataFrame({
        "rep": answered["rep"].to_numpy(),
        "response_s": answered[dur].to_numpy(dtype="float64"),
        "lead_message_id": answered["lead_message_id"].to_numpy(),
    })
    oldest, total = _oldest_unanswered(analysis, leads, used)
    selected_all = metrics.select(analysis.all_leads, base.reps, base.team, analysis.config)
    return WeeklyReport(
        period=period,
        previous=previous,
        basis=used,
        tz=analysis.tz,
        as_of_ms=analysis.as_of_ms,
        sla_target_s=analysis.config.sla_target_s,
        selection=sel,
        table=table,
        oldest_unanswered=oldest,
        unanswered_total=total,
        heatmap=heatmap(leads["lead_time_ms"], analysis.tz),
        daily=daily_flow(leads, selected_all, period, analysis.tz),
        response_times=response_times,
        handoffs=handoffs(leads),
    )


def handoffs(leads: pd.DataFrame) -> pd.DataFrame:
    """Answered leads addressed to one rep and first answered by another
    (docs/definitions.md, "Handoffs"), counted per (addressed rep, responder), most first."""
    h = leads[leads["answered"] & leads["addressed_rep"].notna()
              & (leads["addressed_rep"] != leads["responder"])]
    out = h.groupby(["addressed_rep", "responder"]).size().rename("leads").reset_index()
    return out.sort_values(["leads", "addressed_rep", "responder"],
                           ascending=[False, True, True]).reset_index(drop=True)


def _reps(analysis: LeadSet, sel: Selection, basis: Basis) -> pd.DataFrame:
    """Per-rep table with a TOTAL row, like ``Analysis.reps`` but without the follow-on
    extras (reply blocks need a pass over every thread: too slow for a 2 s report)."""
    leads = analysis.select(sel)
    table = metrics.reps_table(leads, analysis.config, basis, include_total=True)
    if sel.reps or sel.team:
        # Roster reps named by --rep/--team (even without leads) and whoever has leads.
        roster = pd.DataFrame({"rep": [r.name for r in analysis.config.reps]})
        wanted = set(metrics.select(roster, sel.reps, sel.team, analysis.config)["rep"])
        table = table[table["rep"].isin(wanted | set(leads["rep"])) | (table["rep"] == "TOTAL")]
    return table.reset_index(drop=True)


_METRICS = ["leads", "answered", "unanswered", "reply_rate", "median_s", "p90_s", "within_sla"]


def _compare(cur: pd.DataFrame, prev: pd.DataFrame) -> pd.DataFrame:
    """Current and previous per-rep tables side by side, with changes and lead shares."""
    cur = cur.assign(rep=cur["rep"].replace({"TOTAL": TEAM})).set_index("rep")
    prev = prev.assign(rep=prev["rep"].replace({"TOTAL": TEAM})).set_index("rep")
    # Reps of either period; TEAM last, (unassigned) just before it.
    names = [n for n in dict.fromkeys([*cur.index, *prev.index]) if n != TEAM]
    names.sort(key=lambda n: n == UNASSIGNED)
    order = [*names, TEAM]
    cur, prev = cur.reindex(order), prev.reindex(order)
    out = pd.DataFrame(index=pd.Index(order, name="rep"))
    out["team"] = cur["team"].combine_first(prev["team"])
    for col in _METRICS:
        out[col] = cur[col]
        out[f"prev_{col}"] = prev[col]
    for col in ("leads", "answered", "unanswered"):
        out[col] = out[col].fillna(0).astype("int64")
        out[f"prev_{col}"] = out[f"prev_{col}"].fillna(0).astype("int64")
    # No leads, no rate: reps_table reports within SLA 0 there; "-" says it better here.
    out["within_sla"] = out["within_sla"].where(out["leads"] > 0)
    out["prev_within_sla"] = out["prev_within_sla"].where(out["prev_leads"] > 0)
    team_leads = out.loc[TEAM, "leads"]
    prev_team_leads = out.loc[TEAM, "prev_leads"]
    out["lead_share"] = out["leads"] / team_leads if team_leads else np.nan
    out["prev_lead_share"] = out["prev_leads"] / prev_team_leads if prev_team_leads else np.nan
    out["leads_change"] = out["leads"] - out["prev_leads"]
    out["reply_rate_change"] = out["reply_rate"] - out["prev_reply_rate"]
    out["median_change_s"] = out["median_s"] - out["prev_median_s"]
    out["p90_change_s"] = out["p90_s"] - out["prev_p90_s"]
    out["within_sla_change"] = out["within_sla"] - out["prev_within_sla"]
    out["unanswered_change"] = out["unanswered"] - out["prev_unanswered"]
    return out.reset_index()[WEEKLY_COLUMNS]


def _oldest_unanswered(
    analysis: LeadSet, leads: pd.DataFrame, basis: Basis
) -> tuple[pd.DataFrame, int]:
    u = leads[~leads["answered"]].sort_values(["lead_time_ms", "lead_id"])
    top = u.head(TOP_UNANSWERED)
    subjects = analysis.subjects(top["lead_id"])
    age = (analysis.as_of_ms - top["lead_time_ms"]) / 1000.0
    out = pd.DataFrame({
        "lead_message_id": top["lead_message_id"],
        "lead_from": top["lead_from"],
        "subject": top["lead_id"].map(subjects),
        "lead_time_ms": top["lead_time_ms"],
        "rep": top["rep"],
        "age_s": age,
        "business_age_s": top["business_age_s"].astype("float64"),
    })
    out["waiting_s"] = out["business_age_s"] if basis == "business" else out["age_s"]
    return out.reset_index(drop=True), len(u)


def heatmap(lead_time_ms: pd.Series, tz: ZoneInfo | timezone) -> pd.DataFrame:
    """Leads per weekday (rows Mon..Sun) and hour (columns 0..23) in the report zone."""
    local = pd.to_datetime(lead_time_ms.astype("int64"), unit="ms", utc=True).dt.tz_convert(tz)
    cell = local.dt.day_of_week.to_numpy() * 24 + local.dt.hour.to_numpy()
    counts = np.bincount(cell.astype("int64"), minlength=7 * 24).reshape(7, 24)
    return pd.DataFrame(counts, index=pd.Index(WEEKDAYS, name="weekday"), columns=range(24))


def daily_flow(
    leads: pd.DataFrame, all_leads: pd.DataFrame, period: Period, tz: ZoneInfo | timezone
) -> pd.DataFrame:
    """Per day of the period (report zone): leads received, first replies sent in it (as
    ``report volume`` counts them: any lead's first reply sent that day)."""
    answered = all_leads[all_leads["answered"]]
    reply_ms = answered["reply_time_ms"].astype("float64")
    reply_ms = reply_ms[(reply_ms >= period.since_ms) & (reply_ms < period.until_ms)]

    def dates(ms: pd.Series) -> pd.Series:
        return pd.to_datetime(ms.astype("int64"), unit="ms", utc=True).dt.tz_convert(tz).dt.date

    first = datetime.fromtimestamp(period.since_ms / 1000, tz).date()  # type: ignore[operator]
    last = datetime.fromtimestamp((period.until_ms - 1) / 1000, tz).date()  # type: ignore[operator]
    days = pd.date_range(first, last, freq="D").date
    out = pd.DataFrame({
        "leads": dates(leads["lead_time_ms"]).value_counts(),
        "first_replies": dates(reply_ms).value_counts(),
    }).reindex(days).fillna(0).astype("int64")
    return out.rename_axis("date").reset_index()


def weekly_frame(report: WeeklyReport) -> pd.DataFrame:
    """The flat per-rep table for csv/json/jsonl/parquet (rates 0-1, durations seconds)."""
    return report.table[WEEKLY_COLUMNS].reset_index(drop=True)
