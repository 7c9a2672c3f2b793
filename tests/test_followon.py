"""Follow-on metrics (docs/definitions.md): overall reply time, stale leads, comparison
(exact numbers)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import mannwhitneyu

from replytime.analysis.followon import (
    SMALL_NOTE,
    compare,
    overall_by_rep,
    parse_range,
    reply_blocks,
    stale_leads,
    two_proportion_p,
)
from replytime.api import Analysis
from replytime.config import parse_config
from replytime.periods import Period
from tests.mailbuilder import BASE_CONFIG, Mailbox, at

PROSPECT = "Pat Prospect <pat@client.example>"
PAT = "pat@client.example"


@pytest.fixture
def mb(tmp_path: Path) -> Mailbox:
    return Mailbox(tmp_path)


def blocks_of(a: Analysis) -> pd.DataFrame:
    return reply_blocks(a.messages, a.all_leads, a.config, a.as_of_ms)


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


# -- overall reply time ---------------------------------------------------------------------
def test_three_blocks_with_exact_seconds(mb: Mailbox) -> None:
    lead = mb.send(PROSPECT, "sales@acme.example", at(0, 9))
    again = mb.send(PROSPECT, "sales@acme.example", at(0, 9, 10), parent=lead)
    r1 = mb.send("alice@acme.example", PAT, at(0, 10), parent=again)
    q2 = mb.send(PROSPECT, "alice@acme.example", at(0, 11), parent=r1)
    r2 = mb.send("bob@acme.example", PAT, at(0, 11, 20, 30), parent=q2)
    mb.send("alice@acme.example", PAT, at(0, 12), parent=r2)  # a second reply: no new block
    q3 = mb.send(PROSPECT, "bob@acme.example", at(0, 13), parent=r2)
    a = mb.analysis(as_of=at(1))
    b = blocks_of(a)
    assert list(b["block"]) == [1, 2, 3]
    assert list(b["block_message_id"]) == [lead, q2, q3]
    assert list(b["block_start_ms"]) == [ms(at(0, 9)), ms(at(0, 11)), ms(at(0, 13))]
    assert list(b["reply_message_id"][:2]) == [r1, r2] and pd.isna(b["reply_message_id"][2])
    assert list(b["responder"][:2]) == ["Alice", "Bob"] and pd.isna(b["responder"][2])
    assert list(b["answered"]) == [True, True, False]
    assert b["response_s"][:2].tolist() == [3600.0, 20 * 60 + 30.0]
    assert np.isnan(b["response_s"][2])
    assert (b["lead_message_id"] == lead).all() and (b["rep"] == "Alice").all()
    # Block 1 is the lead's first reply, as the matcher finds it.
    row = a.all_leads.iloc[0]
    assert b["response_s"][0] == row["response_s"] and b["reply_message_id"][0] == (
        row["reply_message_id"])


def test_automated_messages_neither_start_nor_end_blocks(mb: Mailbox) -> None:
    lead = mb.send(PROSPECT, "sales@acme.example", at(0, 9))
    ack = mb.send("sales@acme.example", PAT, at(0, 9, 0, 5), parent=lead,
                  headers={"Auto-Submitted": "auto-replied"})
    r1 = mb.send("carol@acme.example", PAT, at(0, 9, 30), parent=ack)
    ooo = mb.send(PROSPECT, "carol@acme.example", at(0, 10), parent=r1,
                  headers={"X-Autoreply": "yes"})
    mb.send("carol@acme.example", PAT, at(0, 10, 5), parent=ooo)
    b = blocks_of(mb.analysis())
    assert len(b) == 1
    assert b["reply_message_id"][0] == r1 and b["response_s"][0] == 1800


def test_internal_forward_does_not_end_or_split_a_block(mb: Mailbox) -> None:
    lead = mb.send(PROSPECT, "alice@acme.example", at(0, 9))
    fwd = mb.send("alice@acme.example", "bob@acme.example", at(0, 9, 5), parent=lead,
                  subject="Fwd: Pricing question")
    more = mb.send(PROSPECT, "alice@acme.example", at(0, 9, 20), parent=lead)
    reply = mb.send("bob@acme.example", PAT, at(0, 10, 30), cc="alice@acme.example",
                    parent=more, refs=[lead, fwd, more])
    b = blocks_of(mb.analysis())
    assert len(b) == 1
    assert b["block_message_id"][0] == lead and b["reply_message_id"][0] == reply
    assert b["response_s"][0] == 5400 and b["responder"][0] == "Bob"


def test_reply_at_the_same_instant_answers_the_block(mb: Mailbox) -> None:
    # The reply is written first (smaller id) but stamped at the follow-up's second:
    # "at or after" the block's first message, so it answers that block in 0 s.
    lead = mb.send(PROSPECT, "sales@acme.example", at(0, 9))
    r1 = mb.send("alice@acme.example", PAT, at(0, 9, 30), parent=lead)
    r2 = mb.send("alice@acme.example", PAT, at(0, 11), parent=r1)
    mb.send(PROSPECT, "alice@acme.example", at(0, 11), parent=r1)
    b = blocks_of(mb.analysis())
    assert list(b["reply_message_id"]) == [r1, r2]
    assert b["response_s"].tolist() == [1800.0, 0.0]


def test_reply_after_as_of_leaves_the_block_open(mb: Mailbox) -> None:
    lead = mb.send(PROSPECT, "sales@acme.example", at(0, 9))
    mb.send("alice@acme.example", PAT, at(2), parent=lead)
    b = blocks_of(mb.analysis(as_of=at(1)))
    assert list(b["answered"]) == [False]


def test_first_block_equals_first_reply_on_many_leads(mb: Mailbox) -> None:
    for i, minutes in enumerate([1, 7, 30, 95]):
        who = f"p{i}@client.example"
        lead = mb.send(who, "sales@acme.example", at(0, 9), subject=f"L{i}")
        r = mb.send("bob@acme.example", who, at(0, 9, minutes), parent=lead)
        mb.send(who, "bob@acme.example", at(0, 12), parent=r)
    mb.send("p9@client.example", "sales@acme.example", at(0, 9), subject="open")
    a = mb.analysis()
    b = blocks_of(a)
    first = b[b["block"] == 1].set_index("lead_message_id")
    leads = a.all_leads.set_index("lead_message_id")
    assert len(first) == len(leads) == 5
    pd.testing.assert_series_equal(first["response_s"], leads.loc[first.index, "response_s"])
    assert (b["block"] == 2).sum() == 4 and not b.loc[b["block"] == 2, "answered"].any()


def test_overall_median_per_rep_exact(mb: Mailbox) -> None:
    # Alice answers blocks in 10m, 20m and 60m; Bob in 5m and 15m; one block unanswered.
    lead = mb.send(PROSPECT, "sales@acme.example", at(0, 9))
    r = mb.send("alice@acme.example", PAT, at(0, 9, 10), parent=lead)
    q = mb.send(PROSPECT, "alice@acme.example", at(0, 10), parent=r)
    r = mb.send("alice@acme.example", PAT, at(0, 10, 20), parent=q)
    q = mb.send(PROSPECT, "alice@acme.example", at(0, 11), parent=r)
    r = mb.send("bob@acme.example", PAT, at(0, 11, 5), parent=q)
    q = mb.send(PROSPECT, "alice@acme.example", at(0, 12), parent=r)
    mb.send("alice@acme.example", PAT, at(0, 13), parent=q)
    lead2 = mb.send("q@other.example", "sales@acme.example", at(1, 9), subject="Other")
    r = mb.send("bob@acme.example", "q@other.example", at(1, 9, 15), parent=lead2)
    mb.send("q@other.example", "bob@acme.example", at(1, 10), parent=r)
    a = mb.analysis()
    b = blocks_of(a)
    assert len(b) == 6 and int(b["answered"].sum()) == 5
    table = overall_by_rep(b, "calendar")
    assert table.to_dict("records") == [
        {"rep": "Alice", "replies": 3, "overall_median_s": 1200.0},
        {"rep": "Bob", "replies": 2, "overall_median_s": 600.0},
    ]


def test_business_basis_uses_responders_schedule(mb: Mailbox) -> None:
    mb.config_data = {**BASE_CONFIG, "schedules": {"default": {
        "timezone": "UTC", **{d: ["09:00-17:00"] for d in
                              ("monday", "tuesday", "wednesday", "thursday", "friday")}}}}
    lead = mb.send(PROSPECT, "sales@acme.example", at(0, 8, 30))
    r = mb.send("alice@acme.example", PAT, at(0, 9, 15), parent=lead)
    q = mb.send(PROSPECT, "alice@acme.example", at(0, 16, 30), parent=r)
    mb.send("alice@acme.example", PAT, at(1, 10, 30), parent=q)
    a = mb.analysis()
    b = blocks_of(a)
    assert b["response_s"].tolist() == [2700.0, 18 * 3600.0]
    assert b["business_s"].tolist() == [900.0, 7200.0]  # the worked examples of docs/definitions.md
    assert b["business_s"][0] == a.all_leads.iloc[0]["business_s"]
    table = overall_by_rep(b, "business")
    assert table.to_dict("records") == [{"rep": "Alice", "replies": 2,
                                         "overall_median_s": 4050.0}]


def test_form_lead_blocks_follow_the_reply_thread(mb: Mailbox) -> None:
    mb.config_data = {**BASE_CONFIG, "leads": {"forms": [{"from": "wordpress@acme.example"}]}}
    note = mb.send("wordpress@acme.example", "sales@acme.example", at(0, 9),
                   reply_to=PAT, subject="New lead: Pat",
                   headers={"Auto-Submitted": "auto-generated"})
    r1 = mb.send("carol@acme.example", PAT, at(0, 9, 40), subject="Your enquiry")
    q2 = mb.send(PROSPECT, "carol@acme.example", at(0, 12), parent=r1)
    r2 = mb.send("carol@acme.example", PAT, at(0, 12, 3), parent=q2)
    a = mb.analysis()
    b = blocks_of(a)
    assert list(b["block"]) == [1, 2]
    assert list(b["block_message_id"]) == [note, q2]
    assert list(b["reply_message_id"]) == [r1, r2]
    assert b["response_s"].tolist() == [2400.0, 180.0]
    assert b["response_s"][0] == a.all_leads.iloc[0]["response_s"]


def test_no_leads_gives_empty_blocks(mb: Mailbox) -> None:
    mb.send("alice@acme.example", "bob@acme.example", at(0, 9))
    b = blocks_of(mb.analysis())
    assert b.empty and "response_s" in b
    assert overall_by_rep(b, "calendar").empty


# -- stale leads ----------------------------------------------------------------------------
UNANSWERED = pd.DataFrame({
    "lead_message_id": ["a", "b", "c"],
    "lead_from": ["a@x.example", "b@x.example", "c@x.example"],
    "lead_time_ms": [0, 1000, 2000],
    "rep": ["Alice", "Bob", "(unassigned)"],
    "age_s": [7200.0, 3600.0, 3599.0],
    "business_age_s": [3600.0, 3601.0, 0.0],
})


def test_stale_is_strictly_longer_than_calendar() -> None:
    got = stale_leads(UNANSWERED, 3600, "calendar")
    assert list(got["lead_message_id"]) == ["a"]
    assert list(stale_leads(UNANSWERED, 3598, "calendar")["lead_message_id"]) == ["a", "b", "c"]


def test_stale_on_business_basis_uses_business_age() -> None:
    assert list(stale_leads(UNANSWERED, 3600, "business")["lead_message_id"]) == ["b"]
    assert stale_leads(UNANSWERED, 3601, "business").empty


def test_stale_from_a_mailbox(mb: Mailbox) -> None:
    mb.send(PROSPECT, "alice@acme.example", at(0, 9))
    mb.send("q@other.example", "bob@acme.example", at(0, 10), subject="Other")
    a = mb.analysis(as_of=at(0, 12))
    got = stale_leads(a.unanswered(), 2 * 3600, "calendar")
    assert list(got["lead_from"]) == [PAT] and got["age_s"][0] == 3 * 3600


# -- comparison -----------------------------------------------------------------------------
def leads_frame(rep: str, times: list[float | None]) -> pd.DataFrame:
    """Leads of one rep; None is an unanswered lead. business_s is half the calendar time."""
    t = pd.Series(times, dtype="float64")
    return pd.DataFrame({"rep": rep, "answered": t.notna(), "response_s": t,
                         "business_s": t / 2})


CONFIG = parse_config(BASE_CONFIG)  # SLA target 1h

A_ALICE = [60, 300, 900, 1800, 3000, 4000, 7200, 600, 120, 2400, None, None]
B_ALICE = [30, 45, 200, 100, 5000, 90, 400, 1000, 1500, 20, 10, None]
A_BOB = [100, 9000, None]
B_BOB = [50, 60]


def test_compare_exact_against_scipy() -> None:
    a = pd.concat([leads_frame("Alice", A_ALICE), leads_frame("Bob", A_BOB)])
    b = pd.concat([leads_frame("Alice", B_ALICE), leads_frame("Bob", B_BOB)])
    t = compare(a, b, CONFIG, "calendar").set_index("rep")
    assert list(t.index) == ["Alice", "Bob", "TEAM"]
    assert list(t.columns[:8]) == ["a_leads", "b_leads", "a_median_s", "b_median_s", "median_p",
                                   "a_within_sla", "b_within_sla", "sla_p"]
    al = t.loc["Alice"]
    ta = [x for x in A_ALICE if x is not None]
    tb = [x for x in B_ALICE if x is not None]
    assert al["a_leads"] == 12 and al["b_leads"] == 12
    assert al["a_median_s"] == 1350.0 and al["b_median_s"] == 100.0
    assert al["median_p"] == mannwhitneyu(ta, tb, alternative="two-sided").pvalue
    assert al["a_within_sla"] == 8 / 12 and al["b_within_sla"] == 10 / 12
    pooled = 18 / 24
    z = (10 / 12 - 8 / 12) / math.sqrt(pooled * (1 - pooled) * (2 / 12))
    assert al["sla_p"] == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-12)
    assert al["median_change_s"] == -1250.0 and al["within_sla_change"] == pytest.approx(2 / 12)
    assert al["note"] == ""
    bob = t.loc["Bob"]
    assert bob["median_p"] == mannwhitneyu([100, 9000], [50, 60],
                                           alternative="two-sided").pvalue
    assert bob["note"] == SMALL_NOTE
    team = t.loc["TEAM"]
    assert team["a_leads"] == 15 and team["b_leads"] == 14
    assert team["median_p"] == mannwhitneyu(ta + [100, 9000], tb + [50, 60],
                                            alternative="two-sided").pvalue
    assert team["a_within_sla"] == 9 / 15 and team["b_within_sla"] == 12 / 14
    assert team["note"] == ""


def test_compare_business_basis_uses_business_s() -> None:
    a = leads_frame("Alice", [4000.0, 7000.0, 100.0])  # business: 2000, 3500, 50
    b = leads_frame("Alice", [8000.0])  # business: 4000
    t = compare(a, b, CONFIG, "business").set_index("rep")
    assert t.loc["Alice", "a_median_s"] == 2000.0 and t.loc["Alice", "b_median_s"] == 4000.0
    assert t.loc["Alice", "a_within_sla"] == 1.0 and t.loc["Alice", "b_within_sla"] == 0.0
    assert t.loc["Alice", "median_p"] == mannwhitneyu([2000.0, 3500.0, 50.0], [4000.0],
                                                      alternative="two-sided").pvalue


def test_two_proportion_hand_computed() -> None:
    # 8/10 vs 4/10: pooled 0.6, z = 0.4 / sqrt(0.6 * 0.4 * 0.2) = 1.825742 -> p = 0.067889
    assert two_proportion_p(8, 10, 4, 10) == pytest.approx(0.0678891549, abs=1e-10)
    assert two_proportion_p(4, 10, 8, 10) == two_proportion_p(8, 10, 4, 10)
    assert math.isnan(two_proportion_p(0, 0, 3, 5))  # no leads in a period
    assert math.isnan(two_proportion_p(5, 5, 7, 7))  # pooled 1
    assert math.isnan(two_proportion_p(0, 5, 0, 7))  # pooled 0


def test_compare_undefined_tests_are_nan() -> None:
    a = leads_frame("Alice", [None, None])
    b = leads_frame("Carol", [30.0])
    t = compare(a, b, CONFIG, "calendar").set_index("rep")
    assert list(t.index) == ["Alice", "Carol", "TEAM"]
    assert t.loc["Alice", "b_leads"] == 0 and np.isnan(t.loc["Alice", "b_median_s"])
    assert np.isnan(t.loc["Alice", "median_p"]) and np.isnan(t.loc["Alice", "sla_p"])
    assert np.isnan(t.loc["TEAM", "median_p"])  # no answered lead in period A
    assert t.loc["TEAM", "sla_p"] == pytest.approx(two_proportion_p(0, 2, 1, 1))
    assert (t["note"] == SMALL_NOTE).all()


def test_compare_from_mailbox_periods(mb: Mailbox) -> None:
    for i, minutes in enumerate([10, 50, 70]):
        who = f"a{i}@client.example"
        lead = mb.send(who, "sales@acme.example", at(0, 9), subject=f"A{i}")
        mb.send("alice@acme.example", who, at(0, 9, minutes), parent=lead)
    for i, minutes in enumerate([5, 6]):
        who = f"b{i}@client.example"
        lead = mb.send(who, "sales@acme.example", at(7, 9), subject=f"B{i}")
        mb.send("alice@acme.example", who, at(7, 9, minutes), parent=lead)
    a = mb.analysis()
    now = datetime(2026, 11, 18, tzinfo=UTC)
    sel_a = a.selection(since="2026-11-02", until="2026-11-09")
    sel_b = a.selection(since="2026-11-09", until="2026-11-16")
    assert parse_range("2026-11-02..2026-11-09", a.tz, now) == sel_a.period
    t = compare(a.select(sel_a), a.select(sel_b), a.config, "calendar").set_index("rep")
    assert t.loc["Alice", "a_median_s"] == 3000.0 and t.loc["Alice", "b_median_s"] == 330.0
    assert t.loc["Alice", "a_within_sla"] == 2 / 3 and t.loc["Alice", "b_within_sla"] == 1.0
    assert t.loc["Alice", "median_p"] == mannwhitneyu([600, 3000, 4200], [300, 360],
                                                      alternative="two-sided").pvalue


def test_parse_range() -> None:
    tz = UTC
    now = datetime(2026, 11, 18, 15, tzinfo=UTC)  # a Wednesday
    nov2, nov9 = ms(datetime(2026, 11, 2, tzinfo=UTC)), ms(datetime(2026, 11, 9, tzinfo=UTC))
    oct1, nov1 = ms(datetime(2026, 10, 1, tzinfo=UTC)), ms(datetime(2026, 11, 1, tzinfo=UTC))
    assert parse_range("2026-10-01..2026-11-01", tz, now) == Period(oct1, nov1)
    assert parse_range(" 2026-10-01 .. 2026-11-01 ", tz, now) == Period(oct1, nov1)
    assert parse_range("last-week", tz, now) == Period(ms(datetime(2026, 11, 9, tzinfo=UTC)),
                                                       ms(datetime(2026, 11, 16, tzinfo=UTC)))
    assert parse_range("2026-11-02..", tz, now) == Period(nov2, None)
    assert parse_range("..2026-11-09", tz, now) == Period(None, nov9)
    for bad in ("", "..", "soon..later"):
        with pytest.raises(ValueError):
            parse_range(bad, tz, now)
