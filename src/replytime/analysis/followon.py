"""Follow-on metrics (docs/definitions.md): overall reply time, stale leads, comparison.

Pure functions over the frames the matcher and metrics produce: messages frame (prepared by
``matcher.prepare``) and leads frame (``matcher.match_leads`` plus ``business_s``), in UTC
epoch milliseconds and float seconds like ``metrics``.

Statistical tests used by ``compare`` (print these names as they are):

- ``MEDIAN_TEST`` -- "Mann–Whitney U, two-sided": ``scipy.stats.mannwhitneyu`` with
  ``alternative="two-sided"`` and scipy's defaults (``method="auto"``: exact for small
  samples without ties, else the normal approximation with tie and continuity correction),
  on the response times of the answered leads of each period.
- ``SLA_TEST`` -- "two-proportion z-test": within-SLA share (answered within the target /
  all leads) of each period, pooled proportion p = (x_a + x_b) / (n_a + n_b),
  z = (p_b - p_a) / sqrt(p (1 - p) (1/n_a + 1/n_b)), two-sided p = 2 (1 - Phi(|z|)).
  NaN when undefined (a period without leads, or a pooled proportion of 0 or 1).
"""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from replytime.analysis.matcher import UNASSIGNED, Roster, prepare
from replytime.analysis.metrics import duration_column
from replytime.config import Config
from replytime.periods import Period, parse_period

MEDIAN_TEST = "Mann–Whitney U, two-sided"
SLA_TEST = "two-proportion z-test"
SMALL_SAMPLE = 10
SMALL_NOTE = f"fewer than {SMALL_SAMPLE} leads in a period"
TEAM = "TEAM"

BLOCK_COLUMNS = [
    "thread_id",
    "lead_id",
    "lead_message_id",
    "rep",  # the lead's attribution (docs/definitions.md), for filtering blocks like leads
    "block",  # 1-based; block 1 is the lead itself
    "block_start_ms",
    "block_message_id",
    "reply_message_id",
    "reply_time_ms",
    "responder",
    "response_s",
    "business_s",
    "answered",
]

COMPARE_COLUMNS = [
    "rep", "a_leads", "b_leads", "a_median_s", "b_median_s", "median_p", "a_within_sla",
    "b_within_sla", "sla_p", "median_change_s", "within_sla_change", "note",
]


# -- overall reply time ---------------------------------------------------------------------
def reply_blocks(
    messages: pd.DataFrame, leads: pd.DataFrame, config: Config, as_of_ms: int
) -> pd.DataFrame:
    """One row per block of consecutive external non-automated messages in a lead's
    conversation, with the internal reply that ends it (docs/definitions.md, "Overall reply time").

    A block ends at the next non-automated message from an internal address with an external
    recipient, at or after the block's first message and no later than ``as_of``; internal
    mail to colleagues only (forwards) neither ends nor splits a block. Equal times order
    external before internal, so a reply stamped at the same millisecond still answers.

    Email leads: the lead's thread from the lead message on, so block 1 is exactly the
    lead's first reply. Form leads: block 1 is the lead and its first reply as matched (the
    notification's own thread holds only notifications); later blocks come from the thread
    of that first reply, where the prospect's follow-ups land.
    """
    if leads.empty:
        return pd.DataFrame(columns=BLOCK_COLUMNS).astype({"answered": bool})
    roster = Roster(config)
    m = messages if "from_internal" in messages else prepare(messages, roster)
    m = m[m["timed"] & ~m["automated"] & m["thread_id"].notna() & (m["time_ms"] <= as_of_ms)]
    is_ext = ~m["from_internal"] & m["from_addr"].notna()
    is_reply = m["from_internal"] & m["to_external"]
    m = m.loc[is_ext | is_reply, ["id", "thread_id", "time_ms", "message_id", "from_addr"]]
    m = m.assign(ext=is_ext[m.index].to_numpy())

    email = leads[leads["kind"] == "email"]
    form = leads[leads["kind"] == "form"]
    # Where each lead's conversation is read: (lead, thread, rows after this point).
    parts = [
        pd.DataFrame({"lead_id": email["lead_id"], "thread_id": email["thread_id"],
                      "after_ms": email["lead_time_ms"], "after_id": -1, "first_block": 1}),
        _form_anchors(form, messages),
    ]
    # Skip empty parts: concatenating them would turn the int columns into object.
    anchors = pd.concat([p for p in parts if not p.empty] or parts[:1], ignore_index=True)
    rows = anchors.merge(m, on="thread_id", how="inner")
    after = (rows["time_ms"] > rows["after_ms"]) | (
        (rows["time_ms"] == rows["after_ms"]) & (rows["id"] > rows["after_id"])
    )
    blocks = _blocks(rows[after])

    # Form leads: block 1 straight from the matcher (its reply may be in any thread).
    if not form.empty:
        first = pd.DataFrame({
            "lead_id": form["lead_id"].to_numpy(), "block": 1,
            "block_start_ms": form["lead_time_ms"].to_numpy(),
            "block_message_id": form["lead_message_id"].to_numpy(),
            "reply_message_id": form["reply_message_id"].to_numpy(),
            "reply_time_ms": form["reply_time_ms"].astype("float64").to_numpy(),
            "reply_from": form["reply_from"].to_numpy(),
        })
        blocks = pd.concat([first, blocks] if not blocks.empty else [first], ignore_index=True)

    lead_cols = leads.set_index("lead_id")[["thread_id", "lead_message_id", "rep"]]
    out = blocks.join(lead_cols, on="lead_id")
    out["answered"] = out["reply_time_ms"].notna()
    out["responder"] = roster.rep_name(out["reply_from"]).where(out["answered"], None)
    out["reply_time_ms"] = out["reply_time_ms"].astype("Int64")
    out["block_start_ms"] = out["block_start_ms"].astype("int64")
    out["block"] = out["block"].astype("int64")
    out["response_s"] = ((out["reply_time_ms"] - out["block_start_ms"]) / 1000.0).astype(
        "float64").clip(lower=0)
    out["business_s"] = _business(out, config)
    out = out.sort_values(["lead_id", "block"]).reset_index(drop=True)
    return out[BLOCK_COLUMNS]


#: what ``overall_by_rep`` reads of kept blocks (``kept_reply_times``)
REPLY_TIME_COLUMNS = ("lead_id", "block_start_ms", "reply_time_ms", "responder", "business_s")


def kept_reply_times(rows: pd.DataFrame, leads: pd.DataFrame, as_of_ms: int) -> pd.DataFrame:
    """What ``overall_by_rep`` reads of ``kept_blocks_as_of`` (answered, responder,
    response_s, business_s), the same values, from ``REPLY_TIME_COLUMNS`` alone: no
    message ids read for ``report reps``."""
    rows = rows[rows["lead_id"].isin(leads["lead_id"])]
    reply = rows["reply_time_ms"].astype("Int64")
    answered = (reply.notna() & (reply <= as_of_ms)).fillna(False).to_numpy(dtype=bool)
    reply = pd.array(reply.where(answered, pd.NA), dtype="Int64")
    start = rows["block_start_ms"].astype("int64").to_numpy()
    return pd.DataFrame({
        "answered": answered,
        "responder": rows["responder"].where(answered, None).to_numpy(),
        "response_s": ((pd.Series(reply) - start) / 1000.0).astype("float64").clip(lower=0)
        .to_numpy(),
        "business_s": rows["business_s"].astype("float64").where(answered).to_numpy(),
    })


def answered_reply_times(rows: pd.DataFrame, basis: str) -> pd.DataFrame:
    """What ``overall_by_rep`` reads on ``basis``, from answered kept blocks alone
    (``responder`` and ``business_s``, or the block start and reply time): the same
    values as ``kept_reply_times`` gives for them."""
    if basis == "business":
        time = rows["business_s"].astype("float64").to_numpy()
    else:
        gap = rows["reply_time_ms"].astype("int64") - rows["block_start_ms"].astype("int64")
        time = (gap / 1000.0).clip(lower=0).to_numpy()
    return pd.DataFrame({"answered": np.ones(len(rows), bool),
                         "responder": rows["responder"].to_numpy(),
                         duration_column(basis): time})


def kept_blocks_as_of(rows: pd.DataFrame, leads: pd.DataFrame, as_of_ms: int) -> pd.DataFrame:
    """``reply_blocks`` of kept email leads as of ``as_of_ms``, from their blocks as of
    everything cached (``store.leads.BLOCK_KEPT_COLUMNS``, those starting at most at
    ``as_of``): a block's messages are in time order, so cutting at ``as_of`` drops the
    blocks starting later and leaves the one whose reply is later unanswered."""
    rows = rows[rows["lead_id"].isin(leads["lead_id"])]
    reply = rows["reply_time_ms"].astype("Int64")
    answered = (reply.notna() & (reply <= as_of_ms)).fillna(False).to_numpy(dtype=bool)
    out = pd.DataFrame({
        "lead_id": rows["lead_id"].to_numpy(),
        "block": rows["block"].astype("int64").to_numpy(),
        "block_start_ms": rows["block_start_ms"].astype("int64").to_numpy(),
        "block_message_id": rows["block_message_id"].to_numpy(),
        "reply_message_id": rows["reply_message_id"].where(answered).to_numpy(),
    })
    lead_cols = leads.set_index("lead_id")[["thread_id", "lead_message_id", "rep"]]
    out = out.join(lead_cols, on="lead_id")
    out["answered"] = answered
    # Text as reply_blocks' rep_name of the messages' text gives it (missing: NaN).
    out["responder"] = rows["responder"].astype("str").where(answered, None).reset_index(
        drop=True)
    out["reply_time_ms"] = pd.array(reply.where(answered, pd.NA), dtype="Int64")
    out["response_s"] = ((out["reply_time_ms"] - out["block_start_ms"]) / 1000.0).astype(
        "float64").clip(lower=0)
    out["business_s"] = rows["business_s"].astype("float64").where(answered).to_numpy()
    out = out.sort_values(["lead_id", "block"]).reset_index(drop=True)
    return out[BLOCK_COLUMNS]


def _form_anchors(form: pd.DataFrame, messages: pd.DataFrame) -> pd.DataFrame:
    """Follow-ups of answered form leads: the first reply's thread, after the reply."""
    answered = form[form["answered"]]
    if answered.empty:
        return pd.DataFrame(columns=["lead_id", "thread_id", "after_ms", "after_id",
                                     "first_block"])
    thread_of = messages.set_index("id")["thread_id"]
    reply_id = answered["reply_id"].astype("int64")
    return pd.DataFrame({
        "lead_id": answered["lead_id"].to_numpy(),
        "thread_id": thread_of.reindex(reply_id).to_numpy(),
        "after_ms": answered["reply_time_ms"].astype("int64").to_numpy(),
        "after_id": reply_id.to_numpy(),
        "first_block": 2,
    })


def _blocks(rows: pd.DataFrame) -> pd.DataFrame:
    """Blocks of one or more conversations (rows: lead_id, ext flag, message columns)."""
    rows = rows.assign(internal=~rows["ext"]).sort_values(
        ["lead_id", "time_ms", "internal", "id"])
    prev_ext = rows.groupby("lead_id")["ext"].shift(fill_value=False).astype(bool)
    start = rows["ext"] & ~prev_ext  # an external message after a reply (or first of all)
    close = ~rows["ext"] & prev_ext  # the first reply after external messages
    seq = start.astype("int64").groupby(rows["lead_id"]).cumsum()
    starts = rows[start].assign(seq=seq[start])
    closes = rows[close].assign(seq=seq[close])
    out = starts[["lead_id", "seq", "first_block", "time_ms", "message_id"]].merge(
        closes[["lead_id", "seq", "time_ms", "message_id", "from_addr"]],
        on=["lead_id", "seq"], how="left", suffixes=("", "_reply"),
    )
    return pd.DataFrame({
        "lead_id": out["lead_id"],
        "block": out["seq"] + out["first_block"] - 1,
        "block_start_ms": out["time_ms"],
        "block_message_id": out["message_id"],
        "reply_message_id": out["message_id_reply"],
        "reply_time_ms": out["time_ms_reply"].astype("float64"),
        "reply_from": out["from_addr"],
    })


def _business(blocks: pd.DataFrame, config: Config) -> np.ndarray:
    """Business seconds of answered blocks on the responder's schedule
    (docs/definitions.md, "Business time")."""
    calendar = blocks["response_s"].to_numpy(dtype="float64")
    answered = blocks["answered"].to_numpy()
    if not config.has_schedule or not answered.any():
        return calendar
    from replytime.analysis.hours import business_seconds_by

    who = blocks["responder"].to_numpy()[answered]
    schedules = {n: config.schedule_for(n) for n in pd.unique(who)}
    out = np.full(len(blocks), np.nan)
    out[answered] = business_seconds_by(
        schedules, who, blocks["block_start_ms"].to_numpy(dtype="float64")[answered],
        blocks["reply_time_ms"].to_numpy(dtype="float64", na_value=np.nan)[answered],
    )
    return np.maximum(out, 0)


def overall_by_rep(blocks: pd.DataFrame, basis: str) -> pd.DataFrame:
    """Per responder: ``replies`` (blocks answered) and ``overall_median_s`` on the basis."""
    answered = blocks[blocks["answered"].astype(bool)]  # object dtype when empty
    g = answered.groupby("responder")[duration_column(basis)]
    out = pd.DataFrame({"replies": g.size().astype("int64"), "overall_median_s": g.median()})
    return out.rename_axis("rep").reset_index()


# -- stale leads ----------------------------------------------------------------------------
def stale_leads(unanswered: pd.DataFrame, older_than_s: int, basis: str) -> pd.DataFrame:
    """Unanswered leads waiting strictly longer than ``older_than_s`` (business age on the
    business basis, else calendar age), in the order given (oldest first)."""
    col = "business_age_s" if basis == "business" and "business_age_s" in unanswered else "age_s"
    return unanswered[unanswered[col] > older_than_s].reset_index(drop=True)


# -- comparison -----------------------------------------------------------------------------
def parse_range(text: str, tz: ZoneInfo | timezone, now: datetime) -> Period:
    """``SINCE..UNTIL`` (either end may be empty) or a single named range like ``last-week``;
    both ends accept what ``--since``/``--until`` accept."""
    s = text.strip()
    if not s or s == "..":
        raise ValueError(f"{text!r} is not a range (examples: 2026-10-01..2026-11-01, last-week)")
    since, sep, until = s.partition("..")
    if not sep:
        return parse_period(s, None, tz, now)
    return parse_period(since.strip() or None, until.strip() or None, tz, now)


def two_proportion_p(x_a: int, n_a: int, x_b: int, n_b: int) -> float:
    """Two-sided p of the pooled two-proportion z-test; NaN when undefined."""
    if n_a == 0 or n_b == 0:
        return float("nan")
    pooled = (x_a + x_b) / (n_a + n_b)
    if pooled <= 0 or pooled >= 1:
        return float("nan")
    z = (x_b / n_b - x_a / n_a) / np.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    from scipy import stats as sps  # slow to import; only `report compare` needs it

    return float(2 * sps.norm.sf(abs(z)))


def mann_whitney_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Mann–Whitney U p-value; NaN when a sample is empty."""
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    from scipy import stats as sps

    return float(sps.mannwhitneyu(a, b, alternative="two-sided").pvalue)


def compare(
    leads_a: pd.DataFrame, leads_b: pd.DataFrame, config: Config, basis: str
) -> pd.DataFrame:
    """Per rep (attribution) and for the team (row ``TEAM``): leads, median response time
    and within-SLA share in periods A and B, their change, and p-values (see module doc)."""
    dur = duration_column(basis)
    target = config.sla_target_s
    present = set(leads_a["rep"]) | set(leads_b["rep"])
    roster = [r.name for r in config.reps if r.name in present]
    others = sorted(present - set(roster), key=lambda n: (n == UNASSIGNED, n))
    groups = [(name, leads_a[leads_a["rep"] == name], leads_b[leads_b["rep"] == name])
              for name in roster + others]
    groups.append((TEAM, leads_a, leads_b))
    # One loop iteration per rep (a handful), each over that rep's leads vectorised.
    rows = [_compare_row(name, a, b, dur, target) for name, a, b in groups]
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)


def _compare_row(name: str, a: pd.DataFrame, b: pd.DataFrame, dur: str, target: int) -> dict:
    ta = a.loc[a["answered"], dur].to_numpy(dtype="float64")
    tb = b.loc[b["answered"], dur].to_numpy(dtype="float64")
    wa, wb = int((ta <= target).sum()), int((tb <= target).sum())
    na, nb = len(a), len(b)
    a_med = float(np.median(ta)) if ta.size else np.nan
    b_med = float(np.median(tb)) if tb.size else np.nan
    a_sla = wa / na if na else np.nan
    b_sla = wb / nb if nb else np.nan
    return {
        "rep": name, "a_leads": na, "b_leads": nb, "a_median_s": a_med, "b_median_s": b_med,
        "median_p": mann_whitney_p(ta, tb), "a_within_sla": a_sla, "b_within_sla": b_sla,
        "sla_p": two_proportion_p(wa, na, wb, nb), "median_change_s": b_med - a_med,
        "within_sla_change": b_sla - a_sla,
        "note": SMALL_NOTE if min(na, nb) < SMALL_SAMPLE else "",
    }
