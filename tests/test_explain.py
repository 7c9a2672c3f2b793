"""`replytime explain`: one thread with every rule that decided its numbers, and the same
numbers as the reports (docs/definitions.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from replytime.analysis.explain import explain
from replytime.api import Analysis, import_files
from replytime.config import load_config, parse_config
from replytime.errors import UsageError
from replytime.store import open_cache
from tests.mailbuilder import Mailbox, at
from tests.test_subject_rule import config_data, issue_15_mailbox, write_emls

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
AS_OF = "2026-11-06T20:00:00Z"
JSON_KEYS = {"thread_id", "rule", "lead", "reasons", "messages", "first_reply", "rep",
             "response_s", "business_s"}


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("explain") / "acme.sqlite"
    import_files([EXAMPLES / "mailbox.mbox"], db=db, config=EXAMPLES / "replytime.toml")
    return db


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from replytime.cli import run; sys.argv[0] = 'replytime'; run()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=120)


def test_every_lead_of_the_example_is_explained_with_the_reports_numbers(example: Path) -> None:
    """For each of the example's 152 leads, explain names the same thread, first reply, rep
    and calendar and business seconds as `report leads`."""
    cfg = load_config(EXAMPLES / "replytime.toml")
    cache = open_cache(example, create=False)
    leads = Analysis(cache, cfg, as_of=AS_OF).leads(since="2000-01-01")
    assert len(leads) == 152
    for row in leads.itertuples(index=False):
        e = explain(cache, cfg, row.lead_message_id, as_of=AS_OF)
        assert e.lead, row.lead_message_id
        assert (e.kind, e.lead_message_id, e.rep) == (row.kind, row.lead_message_id, row.rep)
        if row.kind == "email":
            assert e.thread_id == row.thread_id
        assert e.first_reply == (row.reply_message_id if row.answered else None)
        if row.answered:
            assert e.response_s == round(row.response_s)
            assert e.business_s == round(row.business_s)
            assert e.responder == row.responder
        else:
            assert e.response_s is None and e.business_s is None


def test_the_leads_formerly_lost_to_bounces_name_their_own_thread_and_reply(
    tmp_path: Path,
) -> None:
    """Issue 15: both enquiries of the bounce case explain as leads of their own threads,
    each with its own reply; the bounces are named automated, with their marker."""
    folder = write_emls(tmp_path / "mail", issue_15_mailbox())
    cfg = parse_config(config_data())
    db = tmp_path / "cache.sqlite"
    import_files([folder], db=db, config=cfg)
    cache = open_cache(db)
    expect = {"sq-1@northwind.example": ("re-1@acme.example", "Alice", 3000, 1800),
              "sq-2@contoso.example": ("re-2@acme.example", "Bob", 88620, 30000)}
    threads = set()
    for lead, (reply, rep, calendar, business) in expect.items():
        e = explain(cache, cfg, f"<{lead}>", as_of=at(7))
        assert (e.lead, e.thread_id, e.lead_message_id, e.first_reply) == (True, lead, lead,
                                                                             reply)
        assert (e.rep, e.response_s, e.business_s) == (rep, calendar, business)
        assert e.rule == "headers"
        bounce = next(m for m in e.messages if m.from_ == "mailer-daemon@mx.acme.example")
        assert bounce.automated and bounce.marker is not None and "Auto" not in bounce.marker
        assert bounce.who == "internal address"  # mx.acme.example is under acme.example
        threads.add(e.thread_id)
    assert len(threads) == 2
    # Asked about the bounce itself: the same thread and verdict.
    e = explain(cache, cfg, "dsn-2@mx.acme.example", as_of=at(7))
    assert (e.thread_id, e.lead_message_id) == ("sq-2@contoso.example", "sq-2@contoso.example")


def test_business_seconds_come_with_the_working_time_that_counted(tmp_path: Path) -> None:
    """Mon 16:30 -> Tue 10:30 on a 09:00-17:00 schedule: 18 h calendar, 2 h business, made
    of Mon 16:30-17:00 and Tue 09:00-10:30."""
    box = Mailbox(tmp_path, config_data(schedule=True))
    lead = box.send("Lead <p@prospect.example>", "alice@acme.example", at(0, 16, 30))
    box.send("alice@acme.example", "p@prospect.example", at(1, 10, 30), parent=lead)
    a = box.analysis(as_of=at(7))
    e = explain(a.cache, a.config, lead, as_of=at(7))
    assert (e.response_s, e.business_s, e.schedule) == (18 * 3600, 2 * 3600, "default")
    assert e.business_intervals == [
        ["2026-11-02T16:30:00+00:00", "2026-11-02T17:00:00+00:00"],
        ["2026-11-03T09:00:00+00:00", "2026-11-03T10:30:00+00:00"],
    ]


def test_why_earlier_internal_messages_are_not_the_reply(tmp_path: Path) -> None:
    """A forward to a colleague and an out-of-office don't count; the colleague's answer
    does, and explain says why for each."""
    box = Mailbox(tmp_path)
    lead = box.send("Lead <p@prospect.example>", "sales@acme.example", at(0, 9))
    box.send("sales@acme.example", "p@prospect.example", at(0, 9, 1), parent=lead,
             headers={"Auto-Submitted": "auto-replied"})
    fwd = box.send("alice@acme.example", "bob@acme.example", at(0, 10), parent=lead,
                   subject="Fwd: Pricing question")
    reply = box.send("bob@acme.example", "p@prospect.example", at(0, 11), parent=fwd)
    a = box.analysis(as_of=at(7))
    e = explain(a.cache, a.config, reply, as_of=at(7))
    assert (e.lead_message_id, e.first_reply, e.responder) == (lead, reply, "Bob")
    notes = {m.message_id: (m.role, m.note) for m in e.messages}
    assert notes[lead][0] == "lead" and notes[reply][0] == "first reply"
    assert "automated (Auto-Submitted header" in notes["m2@test.example"][1]
    assert "no external address in To/Cc" in notes[fwd][1]


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        ("outbound", "outbound: the earliest non-automated message is from alice@acme.example"),
        ("internal", "internal: every participant of the thread is internal"),
        ("automated", "every message of the thread is automated"),
        ("filtered", "sender excluded by [leads].exclude_from: *@partner.example"),
    ],
)
def test_why_a_thread_is_not_a_lead(tmp_path: Path, build: str, reason: str) -> None:
    data = config_data(schedule=False)
    data["leads"] = {"exclude_from": ["*@partner.example"]}
    box = Mailbox(tmp_path, data)
    if build == "outbound":
        first = box.send("alice@acme.example", "p@prospect.example", at(0, 9))
        box.send("p@prospect.example", "alice@acme.example", at(0, 10), parent=first)
    elif build == "internal":
        first = box.send("alice@acme.example", "bob@acme.example", at(0, 9))
    elif build == "automated":
        first = box.send("news@vendor.example", "alice@acme.example", at(0, 9),
                         headers={"List-Id": "<news.vendor.example>"})
    else:
        first = box.send("ref@partner.example", "alice@acme.example", at(0, 9))
    a = box.analysis(as_of=at(7))
    e = explain(a.cache, a.config, first, as_of=at(7))
    assert not e.lead
    assert any(reason in r for r in e.reasons), e.reasons
    assert e.first_reply is None and e.response_s is None


def test_period_says_whether_the_lead_is_in_it(tmp_path: Path) -> None:
    box = Mailbox(tmp_path)
    lead = box.send("Lead <p@prospect.example>", "alice@acme.example", at(0, 9))
    a = box.analysis(as_of=at(7))
    inside = explain(a.cache, a.config, lead, as_of=at(7), since="2026-11-02", until="2026-11-03")
    outside = explain(a.cache, a.config, lead, as_of=at(7), since="2026-11-03")
    assert (inside.in_period, outside.in_period) == (True, False)
    assert any("outside the period" in r for r in outside.reasons)


def test_unknown_message_id_is_a_usage_error(tmp_path: Path) -> None:
    box = Mailbox(tmp_path)
    box.send("Lead <p@prospect.example>", "alice@acme.example", at(0, 9))
    a = box.analysis(as_of=at(7))
    with pytest.raises(UsageError, match="no message with Message-ID 'nope@x' in the cache"):
        explain(a.cache, a.config, "<nope@x>")


def test_cli_json_has_the_documented_keys_and_matches_report_leads(example: Path) -> None:
    config = str(EXAMPLES / "replytime.toml")
    leads = cli("--config", config, "--db", str(example), "report", "leads", "--since",
                "2026-11-02", "--as-of", AS_OF, "--format", "json")
    assert leads.returncode == 0, leads.stderr
    row = next(r for r in json.loads(leads.stdout) if r["answered"] and r["kind"] == "email")
    r = cli("--config", config, "--db", str(example), "explain", row["reply_message_id"],
            "--as-of", AS_OF, "--format", "json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert set(got) >= JSON_KEYS
    assert (got["thread_id"], got["lead"], got["first_reply"], got["rep"]) == (
        row["thread_id"], True, row["reply_message_id"], row["rep"])
    assert (got["response_s"], got["business_s"]) == (row["response_s"], row["business_s"])
    assert got["rule"] == row["rule"]
    first = got["messages"][0]
    assert {"message_id", "time", "from", "internal", "automated"} <= set(first)
    times = [pd.Timestamp(m["time"]) for m in got["messages"]]
    assert times == sorted(times)


def test_cli_unknown_id_exits_2_with_one_line(example: Path) -> None:
    r = cli("--config", str(EXAMPLES / "replytime.toml"), "--db", str(example), "explain",
            "no-such@example")
    assert r.returncode == 2
    assert r.stderr == ("replytime: error: explain: no message with Message-ID "
                        "'no-such@example' in the cache\n")
    assert r.stdout == ""


def test_cli_table_names_the_thread_rule_and_verdict(example: Path) -> None:
    cfg = load_config(EXAMPLES / "replytime.toml")
    leads = Analysis(open_cache(example, create=False), cfg, as_of=AS_OF).leads(
        since="2026-11-02")
    row = leads[leads["answered"] & (leads["kind"] == "email")].iloc[0]
    r = cli("--config", str(EXAMPLES / "replytime.toml"), "--db", str(example), "explain",
            row["lead_message_id"], "--as-of", AS_OF)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"thread {row['thread_id']}: ")
    assert "LEAD (email)" in lines
    assert f"  first reply {row['reply_message_id']} at " in r.stdout
    assert f"({round(row['response_s'])} s) calendar" in r.stdout


def test_same_explanation_on_both_backends(backend: str, tmp_path: Path) -> None:
    """SQLite file and PostgreSQL server: the same thread, verdict and seconds."""
    folder = write_emls(tmp_path / "mail", issue_15_mailbox())
    cfg = parse_config(config_data())
    import_files([folder], db=backend, config=cfg)
    e = explain(open_cache(backend), cfg, "re-2@acme.example", as_of=at(7))
    got = e.to_dict()
    assert (got["thread_id"], got["lead"], got["first_reply"], got["rep"]) == (
        "sq-2@contoso.example", True, "re-2@acme.example", "Bob")
    assert (got["response_s"], got["business_s"], got["rule"]) == (88620, 30000, "headers")
    assert [m["message_id"] for m in got["messages"]] == [
        "sq-2@contoso.example", "re-2@acme.example", "dsn-2@mx.acme.example"]
    assert [m["automated"] for m in got["messages"]] == [False, False, True]
