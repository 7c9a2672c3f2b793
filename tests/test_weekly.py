"""The weekly report on a hand-made mailbox over two consecutive weeks, exact numbers.

Report zone UTC. The previous week is Mon 2 - Mon 9 Nov 2026, the report week Mon 9 -
Mon 16 Nov, as of Mon 16 Nov 12:00. Schedule (business tests): Mon-Fri 09:00-17:00 UTC.

    lead                          first reply              calendar  business
    previous week
    P1 Mon 2  09:00 alice         Alice Mon 2  11:00        7200      7200
    P2 Tue 3  10:00 alice         Alice Tue 3  10:20        1200      1200
    P3 Wed 4  13:00 bob           Bob   Wed 4  15:00        7200      7200
    P5 Thu 5  10:00 carol         Carol Thu 5  10:45        2700      2700
    P4 Fri 6  15:00 alice         Alice Mon 9  09:10      238200      7800
    report week
    L1 Mon 9  10:00 alice         Alice Mon 9  10:30        1800      1800
    L2 Mon 9  20:00 alice         Alice Tue 10 09:15       47700       900
    L3 Tue 10 16:30 bob           Bob   Wed 11 10:30       64800      7200
    L4 Wed 11 09:00 bob           Bob   Wed 11 09:05         300       300
    L5 Thu 12 14:00 carol         -  (age 338400 / 50400)
    L7 Fri 13 16:00 sales@        -  (unassigned; age 244800 / 14400)
    L6 Sat 14 11:00 sales@        Carol Mon 16 09:30      167400      1800
    outside both weeks: Sun 1 Nov 12:00 and Mon 16 Nov 10:00 (unanswered)
"""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from replytime.analysis.weekly import (
    WEEKLY_COLUMNS,
    WeeklyReport,
    heatmap,
    weekly_frame,
    weekly_periods,
    weekly_report,
)
from replytime.errors import UsageError
from replytime.output.render import machine_frame
from replytime.output.terminal import console as make_console
from replytime.output.weekly import delta, render_weekly_terminal
from replytime.periods import Period
from tests.mailbuilder import BASE_CONFIG, Mailbox, at

AS_OF = at(14, 12)
SCHEDULE = {"default": {"timezone": "UTC", **{d: ["09:00-17:00"] for d in (
    "monday", "tuesday", "wednesday", "thursday", "friday")}}}


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def lead_and_reply(mb: Mailbox, prospect: str, to: str, when: datetime,
                   rep: str | None = None, reply_at: datetime | None = None,
                   subject: str = "Pricing question") -> str:
    lead = mb.send(f"{prospect} <{prospect}@client.example>", to, when, subject=subject)
    if rep and reply_at:
        mb.send(f"{rep}@acme.example", f"{prospect}@client.example", reply_at, parent=lead,
                subject="Re: " + subject)
    return lead


def build(tmp: Path, business: bool = False) -> Mailbox:
    config = dict(BASE_CONFIG)
    if business:
        config["schedules"] = SCHEDULE
    mb = Mailbox(tmp, config_data=config)
    # outside both weeks
    lead_and_reply(mb, "early", "alice@acme.example", at(-1, 12), "alice", at(-1, 13))
    # previous week
    lead_and_reply(mb, "p1", "alice@acme.example", at(0, 9), "alice", at(0, 11))
    lead_and_reply(mb, "p2", "alice@acme.example", at(1, 10), "alice", at(1, 10, 20))
    lead_and_reply(mb, "p3", "bob@acme.example", at(2, 13), "bob", at(2, 15))
    lead_and_reply(mb, "p5", "carol@acme.example", at(3, 10), "carol", at(3, 10, 45))
    lead_and_reply(mb, "p4", "alice@acme.example", at(4, 15), "alice", at(7, 9, 10))
    # report week
    lead_and_reply(mb, "l1", "alice@acme.example", at(7, 10), "alice", at(7, 10, 30))
    lead_and_reply(mb, "l2", "alice@acme.example", at(7, 20), "alice", at(8, 9, 15))
    lead_and_reply(mb, "l3", "bob@acme.example", at(8, 16, 30), "bob", at(9, 10, 30))
    lead_and_reply(mb, "l4", "bob@acme.example", at(9, 9), "bob", at(9, 9, 5))
    lead_and_reply(mb, "l5", "carol@acme.example", at(10, 14),
                   subject='<script>alert("x")</script> & quote')
    lead_and_reply(mb, "l7", "sales@acme.example", at(11, 16), subject="Demo please")
    lead_and_reply(mb, "l6", "sales@acme.example", at(12, 11), "carol", at(14, 9, 30))
    # after the report week
    lead_and_reply(mb, "late", "bob@acme.example", at(14, 10))
    return mb


@pytest.fixture
def calendar(tmp_path: Path) -> WeeklyReport:
    return weekly_report(build(tmp_path).analysis(as_of=AS_OF))


@pytest.fixture
def business(tmp_path: Path) -> WeeklyReport:
    return weekly_report(build(tmp_path, business=True).analysis(as_of=AS_OF))


def rows(report: WeeklyReport) -> dict[str, dict]:
    return weekly_frame(report).set_index("rep").to_dict("index")


def test_default_period_is_last_full_week_before_as_of(calendar: WeeklyReport) -> None:
    assert calendar.period == Period(_ms(at(7)), _ms(at(14)))
    assert calendar.previous == Period(_ms(at(0)), _ms(at(7)))
    assert calendar.basis == "calendar"
    assert calendar.label() == "Mon 9 Nov – Sun 15 Nov 2026"


def test_weekly_frame_calendar(calendar: WeeklyReport) -> None:
    f = weekly_frame(calendar)
    assert list(f.columns) == WEEKLY_COLUMNS
    assert list(f["rep"]) == ["Alice", "Bob", "Carol", "(unassigned)", "TEAM"]
    assert list(f["team"][:3]) == ["East", "East", "West"]
    r = rows(calendar)
    assert [r[n]["leads"] for n in r] == [2, 2, 2, 1, 7]
    assert [r[n]["prev_leads"] for n in r] == [3, 1, 1, 0, 5]
    assert [r[n]["leads_change"] for n in r] == [-1, 1, 1, 1, 2]
    assert [r[n]["unanswered"] for n in r] == [0, 0, 1, 1, 2]
    assert [r[n]["prev_unanswered"] for n in r] == [0, 0, 0, 0, 0]

    assert r["Alice"]["median_s"] == 24750 and r["Alice"]["prev_median_s"] == 7200
    assert r["Alice"]["median_change_s"] == 17550
    assert r["Alice"]["p90_s"] == pytest.approx(43110)
    assert r["Alice"]["prev_p90_s"] == pytest.approx(192000)
    assert r["Bob"]["median_s"] == 32550 and r["Bob"]["p90_s"] == pytest.approx(58350)
    assert r["Carol"]["median_s"] == 167400 and r["Carol"]["prev_median_s"] == 2700
    assert np.isnan(r["(unassigned)"]["median_s"])
    assert r["TEAM"]["median_s"] == 47700 and r["TEAM"]["prev_median_s"] == 7200
    assert r["TEAM"]["p90_s"] == pytest.approx(126360)
    assert r["TEAM"]["prev_p90_s"] == pytest.approx(145800)
    assert r["TEAM"]["p90_change_s"] == pytest.approx(126360 - 145800)

    assert r["Alice"]["within_sla"] == 0.5 and r["Alice"]["prev_within_sla"] == pytest.approx(1 / 3)
    assert r["Carol"]["within_sla"] == 0 and r["Carol"]["prev_within_sla"] == 1
    assert r["TEAM"]["within_sla"] == pytest.approx(2 / 7)
    assert r["TEAM"]["prev_within_sla"] == pytest.approx(0.4)
    assert r["TEAM"]["within_sla_change"] == pytest.approx(2 / 7 - 0.4)
    assert r["Carol"]["reply_rate"] == 0.5 and r["(unassigned)"]["reply_rate"] == 0
    assert r["TEAM"]["reply_rate"] == pytest.approx(5 / 7)
    assert r["TEAM"]["prev_reply_rate"] == 1
    assert r["TEAM"]["reply_rate_change"] == pytest.approx(5 / 7 - 1)

    assert [r[n]["lead_share"] for n in r] == pytest.approx([2 / 7, 2 / 7, 2 / 7, 1 / 7, 1])
    assert [r[n]["prev_lead_share"] for n in r] == pytest.approx([0.6, 0.2, 0.2, 0, 1])
    share = calendar.share
    assert list(share["rep"]) == ["Alice", "Bob", "Carol", "(unassigned)"]


def test_weekly_frame_business(business: WeeklyReport) -> None:
    assert business.basis == "business"
    r = rows(business)
    assert r["Alice"]["median_s"] == 1350 and r["Alice"]["p90_s"] == pytest.approx(1710)
    assert r["Alice"]["prev_median_s"] == 7200 and r["Alice"]["prev_p90_s"] == pytest.approx(7680)
    assert r["Alice"]["within_sla"] == 1 and r["Alice"]["prev_within_sla"] == pytest.approx(1 / 3)
    assert r["Bob"]["median_s"] == 3750 and r["Bob"]["p90_s"] == pytest.approx(6510)
    assert r["Bob"]["within_sla"] == 0.5
    assert r["Carol"]["median_s"] == 1800 and r["Carol"]["within_sla"] == 0.5
    assert r["TEAM"]["median_s"] == 1800 and r["TEAM"]["p90_s"] == pytest.approx(5040)
    assert r["TEAM"]["prev_median_s"] == 7200 and r["TEAM"]["prev_p90_s"] == pytest.approx(7560)
    assert r["TEAM"]["median_change_s"] == -5400
    assert r["TEAM"]["within_sla"] == pytest.approx(4 / 7)
    assert r["TEAM"]["prev_within_sla"] == pytest.approx(0.4)
    times = business.response_times.sort_values(["rep", "response_s"])
    assert list(times["rep"]) == ["Alice", "Alice", "Bob", "Bob", "Carol"]
    assert list(times["response_s"]) == [900, 1800, 300, 7200, 1800]


def test_machine_frame_whole_seconds(calendar: WeeklyReport) -> None:
    m = machine_frame(weekly_frame(calendar)).set_index("rep")
    assert m.loc["TEAM", "p90_s"] == 126360 and m.loc["TEAM", "p90_change_s"] == -19440
    assert m.loc["Alice", "median_change_s"] == 17550
    assert pd.isna(m.loc["(unassigned)", "median_s"])


def test_oldest_unanswered(calendar: WeeklyReport, business: WeeklyReport) -> None:
    u = calendar.oldest_unanswered
    assert calendar.unanswered_total == 2
    assert list(u["lead_from"]) == ["l5@client.example", "l7@client.example"]
    assert list(u["rep"]) == ["Carol", "(unassigned)"]
    assert list(u["age_s"]) == [338400, 244800]
    assert list(u["waiting_s"]) == [338400, 244800]
    assert u["subject"].iloc[0] == '<script>alert("x")</script> & quote'
    b = business.oldest_unanswered
    assert list(b["business_age_s"]) == [50400, 14400]
    assert list(b["waiting_s"]) == [50400, 14400]


def test_heatmap_and_daily(calendar: WeeklyReport) -> None:
    h = calendar.heatmap
    assert h.shape == (7, 24) and int(h.to_numpy().sum()) == 7
    cells = {(d, hr): int(h.loc[d, hr]) for d in h.index for hr in h.columns if h.loc[d, hr]}
    assert cells == {("Mon", 10): 1, ("Mon", 20): 1, ("Tue", 16): 1, ("Wed", 9): 1,
                     ("Thu", 14): 1, ("Fri", 16): 1, ("Sat", 11): 1}
    d = calendar.daily
    assert [str(x) for x in d["date"]] == [f"2026-11-{x:02d}" for x in range(9, 16)]
    assert list(d["leads"]) == [2, 1, 1, 1, 1, 1, 0]
    # P4's reply on Monday counts; L6's reply (Mon 16, after the week) does not.
    assert list(d["first_replies"]) == [2, 1, 2, 0, 0, 0, 0]


def test_heatmap_uses_report_zone() -> None:
    ny = ZoneInfo("America/New_York")
    ms = pd.Series([_ms(datetime(2026, 11, 10, 3, 30, tzinfo=UTC)),  # Mon 22:30 EST
                    _ms(datetime(2026, 11, 10, 4, 59, tzinfo=UTC)),  # Mon 23:59 EST
                    _ms(datetime(2026, 11, 10, 5, 0, tzinfo=UTC))])  # Tue 00:00 EST
    h = heatmap(ms, ny)
    assert h.loc["Mon", 22] == 1 and h.loc["Mon", 23] == 1 and h.loc["Tue", 0] == 1
    assert int(h.to_numpy().sum()) == 3


def test_explicit_period_compares_with_previous_of_same_length(tmp_path: Path) -> None:
    a = build(tmp_path).analysis(as_of=AS_OF)
    rep = weekly_report(a, since="2026-11-09", until="2026-11-12")
    assert rep.period == Period(_ms(at(7)), _ms(at(10)))
    assert rep.previous == Period(_ms(at(4)), _ms(at(7)))
    team = rep.team
    assert team["leads"] == 4 and team["prev_leads"] == 1  # L1-L4; P4
    assert team["prev_median_s"] == 238200
    assert len(rep.daily) == 3


def test_last_week_across_dst_starts_at_local_midnight() -> None:
    ny = ZoneInfo("America/New_York")
    # DST ended Sun 1 Nov 2026: the week Oct 26 - Nov 2 is 7 days and 1 hour long.
    period, prev = weekly_periods(None, None, ny, datetime(2026, 11, 4, 12, tzinfo=UTC))
    assert period == Period(_ms(datetime(2026, 10, 26, tzinfo=ny)), _ms(datetime(2026, 11, 2,
                                                                                  tzinfo=ny)))
    assert prev == Period(_ms(datetime(2026, 10, 19, tzinfo=ny)), _ms(datetime(2026, 10, 26,
                                                                                tzinfo=ny)))
    assert period.until_ms - period.since_ms == (7 * 24 + 1) * 3600 * 1000


def test_rep_filter(tmp_path: Path) -> None:
    rep = weekly_report(build(tmp_path).analysis(as_of=AS_OF), rep="Alice")
    f = weekly_frame(rep)
    assert list(f["rep"]) == ["Alice", "TEAM"]
    assert list(f["leads"]) == [2, 2] and list(f["prev_leads"]) == [3, 3]
    assert list(f["lead_share"]) == [1, 1]
    assert list(rep.daily["leads"]) == [2, 0, 0, 0, 0, 0, 0]
    assert list(rep.daily["first_replies"]) == [2, 1, 0, 0, 0, 0, 0]
    with pytest.raises(UsageError, match="unknown rep"):
        weekly_report(build(tmp_path).analysis(as_of=AS_OF), rep="Zed")


def test_empty_mailbox(tmp_path: Path) -> None:
    mb = Mailbox(tmp_path)
    mb.send("alice@acme.example", "bob@acme.example", at(7, 9), subject="internal")
    rep = weekly_report(mb.analysis(as_of=AS_OF))
    r = rows(rep)
    assert r["TEAM"]["leads"] == 0 and np.isnan(r["TEAM"]["lead_share"])
    assert rep.oldest_unanswered.empty and int(rep.heatmap.to_numpy().sum()) == 0
    out = io.StringIO()
    render_weekly_terminal(rep, make_console(out))
    assert "No unanswered leads" in out.getvalue()


def test_delta_meaning() -> None:
    assert delta("median_s", 600, 1800) == ("▼20m", 1)  # faster: better
    assert delta("p90_s", 7200, 3600) == ("▲1h", -1)
    assert delta("reply_rate", 0.9, 0.8) == ("▲10pp", 1)
    assert delta("within_sla", 0.5, 0.75) == ("▼25pp", -1)
    assert delta("unanswered", 3, 1) == ("▲2", -1)
    assert delta("leads", 12, 9) == ("▲3", 0)  # more leads is neither
    assert delta("median_s", 600, 600) == ("=", 0)
    assert delta("median_s", 600, float("nan")) == ("new", 0)


ANSI = re.compile(r"\x1b\[")


def test_terminal_plain_when_not_a_tty(calendar: WeeklyReport) -> None:
    out = io.StringIO()
    con = make_console(out)
    con.width = 100
    render_weekly_terminal(calendar, con)
    text = out.getvalue()
    assert not ANSI.search(text)
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "Mon 9 Nov – Sun 15 Nov 2026" in text
    # Team headline: median 13h 15m, up 11h against 2h 00m; within SLA 29% down 11pp.
    headline = text.splitlines()[4]
    assert headline.split() == ["7", "▲2", "71%", "▼29pp", "13h", "15m", "▲11h", "1d", "11h",
                                "▼5.4h", "29%", "▼11pp", "2", "▲2"]
    assert '<script>alert("x")</script> & quote' in text
    assert "(10 of" not in text


def test_terminal_colours_better_and_worse(calendar: WeeklyReport) -> None:
    out = io.StringIO()
    from rich.console import Console

    render_weekly_terminal(calendar, Console(file=out, force_terminal=True, width=100,
                                             color_system="standard"))
    text = out.getvalue()
    # Team median got slower (red), p90 faster (green).
    assert "\x1b[31m▲11h" in text
    assert "\x1b[32m▼5.4h" in text


def test_terminal_no_color_env(calendar: WeeklyReport, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    out = io.StringIO()
    con = make_console(out)
    con._force_terminal = True  # as on a TTY
    render_weekly_terminal(calendar, con)
    text = out.getvalue()
    assert not re.search(r"\x1b\[[0-9;]*3[0-7]m|\x1b\[[0-9;]*38;", text)  # no colour codes
    assert "▲11h" in text


def test_team_filter(tmp_path: Path) -> None:
    rep = weekly_report(build(tmp_path).analysis(as_of=AS_OF), team="West")
    f = weekly_frame(rep)
    assert list(f["rep"]) == ["Carol", "TEAM"]
    assert list(f["team"]) == ["West", "West"]
    assert list(f["leads"]) == [2, 2] and list(f["prev_leads"]) == [1, 1]
    assert list(f["unanswered"]) == [1, 1]
    assert list(rep.oldest_unanswered["lead_from"]) == ["l5@client.example"]


def test_weekly_shows_who_covered_for_whom(tmp_path: Path) -> None:
    from replytime.analysis.weekly import handoffs, weekly_report
    from replytime.output.weekly import render_weekly_terminal
    from tests.mailbuilder import Mailbox, at

    mb = Mailbox(tmp_path)
    for i, responder in enumerate(["bob", "bob", "carol", "alice"]):
        lead = mb.send(f"p{i}@client.example", "alice@acme.example", at(0, 9 + i),
                       subject=f"L{i}")
        mb.send(f"{responder}@acme.example", f"p{i}@client.example", at(0, 10 + i), parent=lead)
    a = mb.analysis(as_of=at(7, 1))
    wr = weekly_report(a, since="2026-11-02", until="2026-11-09", basis="calendar")
    assert wr.handoffs.to_dict("list") == {"addressed_rep": ["Alice", "Alice"],
                                           "responder": ["Bob", "Carol"], "leads": [2, 1]}
    assert handoffs(a.all_leads.iloc[3:]).empty
    from io import StringIO

    from rich.console import Console

    buf = StringIO()
    render_weekly_terminal(wr, Console(file=buf, width=100, no_color=True))
    assert "Who covered for whom" in buf.getvalue()
    from replytime.output.html import render_weekly_html

    assert "<h2>Who covered for whom</h2>" in render_weekly_html(wr)
