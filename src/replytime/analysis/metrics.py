"""Report tables computed from the leads and messages frames (docs/definitions.md).

Pure functions: frames in, frames out. Times stay UTC epoch milliseconds and durations
float seconds here; ``render`` turns them into ISO strings and whole seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from replytime.analysis.matcher import UNASSIGNED
from replytime.config import Config
from replytime.periods import Period, short_duration

if TYPE_CHECKING:
    from pandas.api.typing import SeriesGroupBy

THREAD_BUCKETS: tuple[tuple[str, int, float], ...] = (
    ("1", 1, 1),
    ("2", 2, 2),
    ("3", 3, 3),
    ("4-5", 4, 5),
    ("6-10", 6, 10),
    ("11+", 11, np.inf),
)

REPS_COLUMNS = [
    "rep", "team", "leads", "answered", "unanswered", "reply_rate", "mean_s", "median_s",
    "p90_s", "min_s", "max_s", "within_sla", "handoffs_in", "handoffs_out",
]


def in_period(leads: pd.DataFrame, period: Period) -> pd.DataFrame:
    """Leads whose lead time is in the half-open period [since, until)."""
    keep = pd.Series(True, index=leads.index)
    if period.since_ms is not None:
        keep &= leads["lead_time_ms"] >= period.since_ms
    if period.until_ms is not None:
        keep &= leads["lead_time_ms"] < period.until_ms
    return leads[keep]


def duration_column(basis: str) -> str:
    return "business_s" if basis == "business" else "response_s"


def stats(durations: pd.Series) -> dict[str, float]:
    """docs/definitions.md, "Statistics": count, mean, median, p90 (linear), min, max."""
    d = durations.dropna().astype("float64")
    if d.empty:
        return {"count": 0, "mean_s": np.nan, "median_s": np.nan, "p90_s": np.nan,
                "min_s": np.nan, "max_s": np.nan}
    return {
        "count": int(d.size),
        "mean_s": float(d.mean()),
        "median_s": float(np.percentile(d, 50)),
        "p90_s": float(np.percentile(d, 90)),
        "min_s": float(d.min()),
        "max_s": float(d.max()),
    }


def _group_stats(leads: pd.DataFrame, by: str, basis: str, sla_target_s: int) -> pd.DataFrame:
    dur = duration_column(basis)
    answered = leads[leads["answered"]]
    g = leads.groupby(by, sort=True)
    counts = pd.DataFrame({"leads": g.size(), "answered": g["answered"].sum().astype("int64")})
    within = (answered[dur] <= sla_target_s).groupby(answered[by]).sum()
    counts["within"] = within.reindex(counts.index).fillna(0)
    return group_stats(counts, answered[dur].groupby(answered[by]))


def group_stats(counts: pd.DataFrame, times: SeriesGroupBy) -> pd.DataFrame:
    """docs/definitions.md, "Statistics" and "Reply rate and SLA", per group: from
    ``counts`` (by group, sorted: ``leads``, ``answered``, ``within``, those answered within
    the SLA target) and the response times of the answered leads by group."""
    out = counts[["leads", "answered"]].copy()
    out["unanswered"] = out["leads"] - out["answered"]
    out["reply_rate"] = out["answered"] / out["leads"]
    out["mean_s"] = times.mean()
    out["median_s"] = times.median()
    out["p90_s"] = times.quantile(0.9)  # linear interpolation, as numpy.percentile
    out["min_s"] = times.min()
    out["max_s"] = times.max()
    out["within_sla"] = counts["within"] / out["leads"]
    return out


def reps_table(
    leads: pd.DataFrame, config: Config, basis: str, *, include_total: bool = False
) -> pd.DataFrame:
    """Per-rep table (the columns of docs/definitions.md), roster reps with no leads
    included as zeros."""
    table = _group_stats(leads, "rep", basis, config.sla_target_s)
    handed = leads[leads["answered"] & leads["addressed_rep"].notna()
                   & (leads["addressed_rep"] != leads["responder"])]
    total = None
    if include_total:
        total = _group_stats(leads.assign(_all="TOTAL"), "_all", basis, config.sla_target_s)
    return finish_reps_table(table, handed.groupby("responder").size(),
                             handed.groupby("addressed_rep").size(), len(handed), config, total)


def finish_reps_table(table: pd.DataFrame, handoffs_in: pd.Series, handoffs_out: pd.Series,
                      handoffs: int, config: Config, total: pd.DataFrame | None = None
                      ) -> pd.DataFrame:
    """``reps_table`` from its per-rep statistics (``group_stats``), the handoffs by
    responder, by addressed rep and in all, and (``include_total``) the statistics of
    every lead as one group."""
    names = [r.name for r in config.reps]
    index = list(dict.fromkeys(names + sorted(table.index, key=_rep_sort_key)))
    table = table.reindex(index)
    for c in ("leads", "answered", "unanswered"):
        table[c] = table[c].fillna(0).astype("int64")
    table["within_sla"] = table["within_sla"].fillna(0.0)
    team = {r.name: r.team for r in config.reps}
    table.insert(0, "team", [team.get(n) for n in table.index])
    table["handoffs_in"] = handoffs_in.reindex(table.index).fillna(0)
    table["handoffs_out"] = handoffs_out.reindex(table.index).fillna(0)
    table[["handoffs_in", "handoffs_out"]] = table[["handoffs_in", "handoffs_out"]].astype("int64")
    table = table.rename_axis("rep").reset_index()
    if total is not None:
        total = total.rename_axis("rep").reset_index()
        total["team"] = None
        total["handoffs_in"] = total["handoffs_out"] = handoffs
        table = pd.concat([table, total[table.columns]], ignore_index=True)
    return table[REPS_COLUMNS]


def _rep_sort_key(name: str) -> tuple[int, str]:
    return (1 if name == UNASSIGNED else 0, name)


def team_summary(leads: pd.DataFrame, config: Config, basis: str) -> dict[str, float]:
    t = _group_stats(leads.assign(_all="team"), "_all", basis, config.sla_target_s)
    if t.empty:
        return {"leads": 0, "answered": 0, "unanswered": 0, "reply_rate": np.nan,
                "mean_s": np.nan, "median_s": np.nan, "p90_s": np.nan, "min_s": np.nan,
                "max_s": np.nan, "within_sla": np.nan}
    return t.iloc[0].to_dict()


def unanswered_table(leads: pd.DataFrame, as_of_ms: int) -> pd.DataFrame:
    """Unanswered leads, oldest first, with their age at ``as_of``."""
    u = leads[~leads["answered"]].copy()
    u["age_s"] = (as_of_ms - u["lead_time_ms"]) / 1000.0
    u = u.sort_values(["lead_time_ms", "lead_id"])
    cols = ["lead_message_id", "lead_from", "lead_time_ms", "rep", "age_s", "thread_id"]
    if "business_age_s" in u:
        cols.insert(5, "business_age_s")
    return u[cols].reset_index(drop=True)


def leads_table(leads: pd.DataFrame, config: Config) -> pd.DataFrame:
    team = {r.name: r.team for r in config.reps}
    out = leads.copy(deep=False)  # copy-on-write: the columns are shared until written
    out["team"] = out["rep"].map(team)
    cols = ["thread_id", "lead_message_id", "lead_from", "lead_time_ms", "rep", "answered",
            "reply_message_id", "reply_time_ms", "response_s", "business_s", "kind",
            "responder", "addressed_rep", "team", "rule"]
    if "rule" not in out:  # leads matched without a cache (match_leads alone)
        out["rule"] = None
    return out[cols].reset_index(drop=True)


def sla_table(leads: pd.DataFrame, config: Config, basis: str) -> pd.DataFrame:
    """Leads per response-time bucket (at most each edge), then ``more``, ``unanswered``."""
    edges = list(config.sla_buckets_s)
    labels = []
    lower = 0
    for e in edges:
        labels.append(f"{short_duration(lower) if lower else '0'}-{short_duration(e)}")
        lower = e
    labels += ["more", "unanswered"]
    dur = leads.loc[leads["answered"], duration_column(basis)].to_numpy(dtype="float64")
    # side="left": a duration equal to an edge belongs to that edge's bucket ("at most").
    idx = np.searchsorted(np.asarray(edges, dtype="float64"), dur, side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1).tolist()
    counts.append(int((~leads["answered"]).sum()))
    total = len(leads)
    return pd.DataFrame(
        {
            "bucket": labels,
            "leads": counts,
            "share": [c / total if total else np.nan for c in counts],
        }
    )


def local_dates(ms: pd.Series, tz: ZoneInfo) -> pd.Series:
    return pd.to_datetime(ms, unit="ms", utc=True).dt.tz_convert(tz).dt.date


def volume_table(
    messages: pd.DataFrame,
    leads: pd.DataFrame,
    all_leads: pd.DataFrame,
    period: Period,
    tz: ZoneInfo,
) -> pd.DataFrame:
    """Per calendar day in the report zone: leads received, first replies sent, inbound
    external messages, outbound messages to external recipients, all messages."""
    m = messages[messages["timed"]]
    m = _within(m, "time_ms", period)
    return volume_from(leads, all_leads, period, tz, {
        "inbound": local_dates(m.loc[~m["from_internal"] & m["from_addr"].notna(), "time_ms"],
                                tz).value_counts(),
        "outbound": local_dates(m.loc[m["from_internal"] & m["to_external"], "time_ms"],
                                 tz).value_counts(),
        "messages": local_dates(m["time_ms"], tz).value_counts(),
    })


def volume_from(leads: pd.DataFrame, all_leads: pd.DataFrame, period: Period, tz: ZoneInfo,
                message_counts: dict[str, pd.Series]) -> pd.DataFrame:
    """``volume_table`` from the messages' counts per local date (``inbound``, ``outbound``,
    ``messages``: Series of counts indexed by date, dates without messages left out)."""
    replies = all_leads[all_leads["answered"]]
    replies = _within(replies.assign(t=replies["reply_time_ms"].astype("float64")), "t", period)
    parts = {
        "leads": local_dates(leads["lead_time_ms"], tz).value_counts(),
        "first_replies": local_dates(replies["t"], tz).value_counts(),
        **message_counts,
    }
    counts = pd.DataFrame(parts).fillna(0)
    if period.since_ms is not None and period.until_ms is not None:
        first = local_dates(pd.Series([period.since_ms]), tz).iloc[0]
        last = local_dates(pd.Series([period.until_ms - 1]), tz).iloc[0]
    elif len(counts):
        first, last = min(counts.index), max(counts.index)
    else:
        return pd.DataFrame(columns=["date", *parts])
    days = pd.date_range(first, last, freq="D").date
    counts = counts.reindex(days, fill_value=0).astype("int64")
    return counts.rename_axis("date").reset_index()


def _within(df: pd.DataFrame, col: str, period: Period) -> pd.DataFrame:
    keep = df[col].notna()
    if period.since_ms is not None:
        keep &= df[col] >= period.since_ms
    if period.until_ms is not None:
        keep &= df[col] < period.until_ms
    return df[keep]


def thread_sizes(messages: pd.DataFrame, leads: pd.DataFrame) -> pd.DataFrame:
    """Per lead thread: messages (all cached, automated included), turns, duration."""
    m = messages[messages["thread_id"].isin(leads["thread_id"])]
    g = m.groupby("thread_id")
    size = g.size()
    duration = (g["time_ms"].max() - g["time_ms"].min()) / 1000.0
    out = pd.DataFrame({"messages": size, "turns": thread_turns(m), "duration_s": duration})
    return finish_thread_sizes(out, leads)


def thread_turns(messages: pd.DataFrame) -> pd.Series:
    """Per thread of ``messages`` (whole threads, prepared): turns, the rep -> lead
    exchanges, i.e. switches from external to internal human senders."""
    human = messages[~messages["automated"] & messages["timed"]].sort_values(
        ["thread_id", "time_ms", "id"])
    side = human["from_internal"].astype("int8")
    prev = side.groupby(human["thread_id"]).shift()
    return ((side == 1) & (prev == 0)).groupby(human["thread_id"]).sum()


def finish_thread_sizes(out: pd.DataFrame, leads: pd.DataFrame) -> pd.DataFrame:
    """``thread_sizes``' rows (messages, turns, duration_s by thread id) for the threads of
    ``leads``, in their order."""
    out = out.reindex(leads["thread_id"].unique())
    out["messages"] = out["messages"].fillna(0).astype("int64")
    out["turns"] = out["turns"].fillna(0).astype("int64")
    return out.rename_axis("thread_id").reset_index()


def threads_table(sizes: pd.DataFrame) -> pd.DataFrame:
    counts = []
    for _, lo, hi in THREAD_BUCKETS:
        counts.append(int(((sizes["messages"] >= lo) & (sizes["messages"] <= hi)).sum()))
    return pd.DataFrame({"bucket": [b[0] for b in THREAD_BUCKETS], "threads": counts})


def thread_summary(sizes: pd.DataFrame) -> dict[str, float]:
    s = sizes["messages"]
    return {
        "threads": int(s.size),
        "mean_messages": float(s.mean()) if s.size else np.nan,
        "median_messages": float(s.median()) if s.size else np.nan,
        "mean_turns": float(sizes["turns"].mean()) if s.size else np.nan,
        "median_duration_s": float(sizes["duration_s"].median()) if s.size else np.nan,
    }


def select(leads: pd.DataFrame, reps: Sequence[str] = (), team: str | None = None,
           config: Config | None = None) -> pd.DataFrame:
    """Leads of the given reps (by attribution) and/or team."""
    out = leads
    if reps:
        out = out[out["rep"].str.lower().isin([r.lower() for r in reps])]
    if team and config is not None:
        members = {r.name for r in config.reps if (r.team or "").lower() == team.lower()}
        out = out[out["rep"].isin(members)]
    return out
