"""The subject rule links threads through people only, and addresses under an internal
domain are internal (docs/definitions.md, "Threads" and "Internal").

Issue 15: two prospects wrote to two reps with the same subject minutes apart; both answers
bounced, the reports coming from MAILER-DAEMON@mx.<company domain>. The daemon, present in
both threads and not literally at the internal domain, was taken for a shared external
participant, the enquiries merged and the later prospect's lead vanished.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replytime.analysis.matcher import Roster, match_leads, prepare
from replytime.analysis.sql_leads import email_lead_pairs
from replytime.analysis.threads import group_threads
from replytime.api import Analysis, import_files, refresh_threads
from replytime.config import Config, parse_config
from replytime.errors import ConfigError
from replytime.sources.headers import parse_header_block
from replytime.store import SCHEMA_VERSION, open_cache
from replytime.store import postgres as pg_cache
from replytime.store import sqlite as sqlite_cache
from replytime.store.pairing import _internal
from tests.mailbuilder import BASE_CONFIG, Mailbox, at

SUBJECT = "Security questionnaire"
DAEMON = "MAILER-DAEMON@mx.acme.example"
WEEKDAYS_9_TO_5 = {
    "timezone": "UTC",
    **{day: ["09:00-17:00"] for day in ("monday", "tuesday", "wednesday", "thursday", "friday")},
}


def config_data(subdomains: bool | None = None, schedule: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {**BASE_CONFIG, "team": dict(BASE_CONFIG["team"])}
    if subdomains is not None:
        data["team"]["internal_subdomains"] = subdomains
    if schedule:
        data["schedules"] = {"default": WEEKDAYS_9_TO_5}
    return data


# -- real RFC 5322 messages, written as .eml files ----------------------------------------------
def eml(frm: str, to: str, when: datetime, mid: str, subject: str, *,
        parent: list[str] | None = None, cc: str | None = None,
        headers: dict[str, str] | None = None, content_type: str = "text/plain; charset=utf-8",
        body: str = "Hello,\r\n\r\nThanks.\r\n") -> bytes:
    lines = [
        f"Received: from mx1.example (mx1.example [192.0.2.7]) by mx.acme.example with ESMTPS "
        f"id 4Q{abs(hash(mid)) % 10**8}; {format_datetime(when + timedelta(seconds=2))}",
        f"From: {frm}", f"To: {to}",
    ]
    if cc:
        lines.append(f"Cc: {cc}")
    lines += [f"Subject: {subject}", f"Date: {format_datetime(when)}", f"Message-ID: <{mid}>"]
    if parent:
        lines += [f"In-Reply-To: <{parent[-1]}>",
                  "References: " + " ".join(f"<{p}>" for p in parent)]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines += ["MIME-Version: 1.0", f"Content-Type: {content_type}"]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def bounce(to: str, when: datetime, mid: str, original: list[str], failed: str) -> bytes:
    """A Postfix-style delivery status notification (RFC 3464), threaded to the mail it
    returns as Gmail's and Exchange's reports are."""
    boundary = f"{mid.split('@')[0]}.bounce"
    body = (
        f"--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        f"This is the mail system at host mx.acme.example.\r\n\r\n"
        f"I'm sorry to have to inform you that your message could not\r\n"
        f"be delivered to one or more recipients.\r\n\r\n<{failed}>: host not found\r\n\r\n"
        f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.acme.example\r\n\r\nFinal-Recipient: rfc822; {failed}\r\n"
        f"Action: failed\r\nStatus: 5.1.2\r\n\r\n"
        f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: <{original[-1]}>\r\nSubject: Re: {SUBJECT}\r\n\r\n--{boundary}--\r\n"
    )
    return eml(f"Mail Delivery System <{DAEMON}>", to, when, mid,
               "Undelivered Mail Returned to Sender", parent=original, body=body,
               content_type=f'multipart/report; report-type=delivery-status; '
                            f'boundary="{boundary}"')


def write_emls(folder: Path, messages: list[bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, raw in enumerate(messages):
        (folder / f"{i:04d}.eml").write_bytes(raw)
    return folder


def issue_15_mailbox() -> list[bytes]:
    """Two prospects, two reps, one subject, minutes apart; both answers bounce."""
    return [
        eml("Priya Shah <priya@northwind.example>", "Alice <alice@acme.example>", at(0, 8, 40),
            "sq-1@northwind.example", SUBJECT),
        eml("Tom Berg <tom@contoso.example>", "Bob <bob@acme.example>", at(0, 8, 43),
            "sq-2@contoso.example", SUBJECT),
        eml("Alice <alice@acme.example>", "Priya Shah <priya@northwind.example>", at(0, 9, 30),
            "re-1@acme.example", f"Re: {SUBJECT}", parent=["sq-1@northwind.example"]),
        bounce("alice@acme.example", at(0, 9, 31), "dsn-1@mx.acme.example",
               ["sq-1@northwind.example", "re-1@acme.example"], "priya@northwind.example"),
        eml("Bob <bob@acme.example>", "Tom Berg <tom@contoso.example>", at(1, 9, 20),
            "re-2@acme.example", f"Re: {SUBJECT}", parent=["sq-2@contoso.example"]),
        bounce("bob@acme.example", at(1, 9, 21), "dsn-2@mx.acme.example",
               ["sq-2@contoso.example", "re-2@acme.example"], "tom@contoso.example"),
    ]


@pytest.mark.parametrize("subdomains", [True, False])
def test_two_bounced_answers_keep_both_leads(tmp_path: Path, subdomains: bool) -> None:
    """The exact case of issue 15, imported as files into a SQLite cache. With
    internal_subdomains = false the daemon is external, and the leads still stay apart:
    a bounce is automated, so it never links threads."""
    folder = write_emls(tmp_path / "mail", issue_15_mailbox())
    cfg = parse_config(config_data(subdomains))
    db = tmp_path / "cache.sqlite"
    import_files([folder], db=db, config=cfg)
    cache = open_cache(db)
    leads = Analysis(cache, cfg, as_of=at(7)).leads().set_index("lead_message_id")
    assert sorted(leads.index) == ["sq-1@northwind.example", "sq-2@contoso.example"]
    one, two = leads.loc["sq-1@northwind.example"], leads.loc["sq-2@contoso.example"]
    assert (one["responder"], one["reply_message_id"]) == ("Alice", "re-1@acme.example")
    assert (two["responder"], two["reply_message_id"]) == ("Bob", "re-2@acme.example")
    # Mon 08:40 -> Mon 09:30; business hours start at 09:00.
    assert one["response_s"] == 50 * 60 and one["business_s"] == 30 * 60
    # Mon 08:43 -> Tue 09:20: 24h37m; business Mon 09:00-17:00 then Tue 09:00-09:20.
    assert two["response_s"] == 24 * 3600 + 37 * 60
    assert two["business_s"] == 8 * 3600 + 20 * 60
    # Each thread is its enquiry, its answer and its bounce, joined by their headers.
    assert list(leads["rule"]) == ["headers", "headers"]
    assert cache.thread_links() == []
    assert cache.thread_count() == 2


# -- the property: robots' mail never regroups people's threads --------------------------------
PROSPECTS = ["priya@northwind.example", "tom@contoso.example", "li@fabrikam.example",
             "ana@tailspin.example", "omar@litware.example"]
REP_ADDRESSES = ["alice@acme.example", "bob@acme.example", "carol@acme.example"]
SUBJECTS = [SUBJECT, "Pricing", "Demo request"]
ROBOTS = ["autoresponder@helpdesk.example", "calendar-notification@calendar.example",
          "listserv@lists.example"]


@dataclass
class Enquiry:
    prospect: str
    rep: str
    subject: str
    minute: int
    cc: str | None
    reply_after: int | None  # minutes; None: unanswered
    followup_after: int | None  # a new message from the prospect without threading headers


@dataclass
class Robot:
    kind: str  # bounce | autoreply | ooo
    target: int  # the enquiry whose thread it answers
    refers: str  # "reply", "enquiry" or "none"
    after: int  # minutes after what it refers to
    sender: str
    to: str
    cc: str | None
    same_subject: bool


@st.composite
def people(draw: st.DrawFn) -> list[Enquiry]:
    return [Enquiry(
        prospect=draw(st.sampled_from(PROSPECTS)), rep=draw(st.sampled_from(REP_ADDRESSES)),
        subject=draw(st.sampled_from(SUBJECTS)), minute=draw(st.integers(0, 3 * 24 * 60)),
        cc=draw(st.none() | st.sampled_from(PROSPECTS)),
        reply_after=draw(st.none() | st.integers(1, 20 * 60)),
        followup_after=draw(st.none() | st.integers(1, 2 * 24 * 60)),
    ) for _ in range(draw(st.integers(1, 6)))]


@st.composite
def robots(draw: st.DrawFn, n: int) -> list[Robot]:
    out = []
    for _ in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(["bounce", "autoreply", "ooo"]))
        anyone = st.sampled_from(PROSPECTS + REP_ADDRESSES + ROBOTS + [DAEMON.lower()])
        out.append(Robot(
            kind=kind, target=draw(st.integers(0, n - 1)),
            refers=draw(st.sampled_from(["reply", "enquiry", "none"])),
            after=draw(st.integers(0, 3 * 24 * 60)),
            sender=DAEMON if kind == "bounce" else draw(st.sampled_from(PROSPECTS + ROBOTS)),
            to=draw(anyone), cc=draw(st.none() | anyone), same_subject=draw(st.booleans()),
        ))
    return out


def people_blocks(box: Mailbox, enquiries: list[Enquiry]) -> list[dict[str, Any]]:
    """Send every enquiry, answer and follow-up; returns what robots may answer."""
    sent = []
    for i, e in enumerate(enquiries):
        when = at(0, minute=e.minute)
        mid = box.send(e.prospect, e.rep, when, cc=e.cc or (), subject=e.subject,
                       message_id=f"enq{i}@people.example")
        reply = None
        if e.reply_after is not None:
            reply_when = when + timedelta(minutes=e.reply_after)
            reply = (box.send(e.rep, e.prospect, reply_when, subject=f"Re: {e.subject}",
                              parent=mid, message_id=f"re{i}@acme.example"), reply_when)
        if e.followup_after is not None:
            box.send(e.prospect, e.rep, when + timedelta(minutes=e.followup_after),
                     subject=f"Re: {e.subject}", message_id=f"fup{i}@people.example")
        sent.append({"enquiry": (mid, when), "reply": reply, "subject": e.subject})
    return sent


def add_robots(box: Mailbox, sent: list[dict[str, Any]], bots: list[Robot]) -> None:
    for j, r in enumerate(bots):
        target = sent[r.target]
        ref = target["reply"] if r.refers == "reply" else target["enquiry"]
        if ref is None:
            ref = target["enquiry"]
        parent = ref[0] if r.refers != "none" else None
        # After what it answers (a robot answers mail it has received).
        when = ref[1] + timedelta(minutes=r.after)
        subject = {"bounce": "Undelivered Mail Returned to Sender",
                   "autoreply": f"Re: {target['subject']}",
                   "ooo": f"Out of office: {target['subject']}"}[r.kind]
        if r.same_subject:
            subject = f"Re: {target['subject']}"
        headers = {"bounce": {"Content-Type": "multipart/report; report-type=delivery-status"},
                   "autoreply": {"Auto-Submitted": "auto-replied"},
                   "ooo": {"X-Autoreply": "yes"}}[r.kind]
        box.send(r.sender, r.to, when, cc=r.cc or (), subject=subject, parent=parent,
                 headers=headers, message_id=f"robot{j}@robots.example")


def outcome(analysis: Analysis) -> tuple[pd.DataFrame, list[frozenset[str]]]:
    """Every lead with its responder, reply and times; and how people's messages are
    grouped into threads."""
    leads = analysis.leads()[["lead_message_id", "lead_from", "responder", "reply_message_id",
                              "response_s", "business_s", "rep"]]
    m = analysis.messages
    human = m[~m["automated"]]
    groups = human.groupby("thread_id")["message_id"].agg(frozenset)
    return (leads.sort_values("lead_message_id").reset_index(drop=True),
            sorted(groups, key=sorted))


@settings(max_examples=40, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data(), people(), st.booleans())
def test_robots_mail_changes_no_lead(data: st.DataObject, enquiries: list[Enquiry],
                                     subdomains: bool) -> None:
    """Adding bounces (multipart/report from MAILER-DAEMON@mx.acme.example), auto-replies
    (Auto-Submitted) and out-of-office notices (X-Autoreply), which no other message
    references, changes no lead, responder, reply or response time, nor how people's
    messages are grouped."""
    bots = data.draw(robots(len(enquiries)))
    with tempfile.TemporaryDirectory() as tmp:
        plain = Mailbox(Path(tmp) / "plain", config_data(subdomains))
        noisy = Mailbox(Path(tmp) / "noisy", config_data(subdomains))
        for box in (plain, noisy):
            box.tmp.mkdir()
            sent = people_blocks(box, enquiries)
        add_robots(noisy, sent, bots)
        a, b = plain.analysis(as_of=at(14)), noisy.analysis(as_of=at(14))
        try:
            assert len(b.messages) == len(a.messages) + len(bots)
            assert b.messages["automated"].sum() == len(bots)
            want, got = outcome(a), outcome(b)
            pd.testing.assert_frame_equal(got[0], want[0])
            assert got[1] == want[1]
        finally:
            a.cache.close()
            b.cache.close()


@pytest.mark.parametrize("subdomains", [True, False])
def test_forty_same_subject_enquiries_stay_forty_leads(tmp_path: Path, subdomains: bool) -> None:
    """Forty prospects ask the same thing the same day; a helpdesk robot acknowledges each,
    every answer bounces. Nothing but robots is shared: forty leads, each with its answer."""
    box = Mailbox(tmp_path, config_data(subdomains))
    reps = ["alice@acme.example", "bob@acme.example", "carol@acme.example"]
    expected = {}
    for i in range(40):
        prospect = f"buyer{i}@customer{i}.example"
        when = at(0, 9, i * 10)
        enquiry = box.send(prospect, "sales@acme.example", when, subject=SUBJECT,
                           message_id=f"enq{i}@customer{i}.example")
        box.send("helpdesk@tickets.example", prospect, when + timedelta(minutes=1),
                 cc="sales@acme.example", subject=f"Re: {SUBJECT}", parent=enquiry,
                 headers={"Auto-Submitted": "auto-replied"}, message_id=f"ack{i}@tickets.example")
        rep = reps[i % 3]
        answer = box.send(rep, prospect, when + timedelta(minutes=30), subject=f"Re: {SUBJECT}",
                          parent=enquiry, message_id=f"ans{i}@acme.example")
        box.send(DAEMON, rep, when + timedelta(minutes=31), subject="Undelivered Mail",
                 parent=answer, refs=[enquiry, answer], message_id=f"dsn{i}@mx.acme.example",
                 headers={"Content-Type": "multipart/report; report-type=delivery-status"})
        expected[enquiry] = (answer, rep.split("@")[0].title())
    a = box.analysis(as_of=at(7))
    leads = a.leads()
    assert len(leads) == 40
    got = {r.lead_message_id: (r.reply_message_id, r.responder) for r in leads.itertuples()}
    assert got == expected
    assert (leads["response_s"] == 1800).all() and (leads["rule"] == "headers").all()
    assert a.cache.thread_links() == []


# -- internal subdomains: config, Roster, both backends' SQL ------------------------------------
ADDRESSES = ["x@acme.example", "x@mx.acme.example", "x@eu.mx.acme.example",
             "x@notacme.example", "x@acme.example.evil", "x@acmeexample", "acme.example",
             "mx.acme.example", "x@.acme.example", "x@acme.example@evil.example",
             "evil.example@x.acme.example", "sales@acme.example", "", "x@mx.other.example",
             "alice@acme.example", "y@partner.example"]


def expected_internal(address: str, subdomains: bool) -> bool:
    domain = address.rsplit("@", 1)[-1]
    return address != "" and (
        domain == "acme.example" or (subdomains and domain.endswith(".acme.example"))
        or address in {"sales@acme.example", "alice@acme.example", "y@partner.example"})


@pytest.mark.parametrize("subdomains", [True, False])
def test_internal_subdomains_everywhere(backend: str, subdomains: bool) -> None:
    """Config.is_internal, Roster.is_internal and the pairing SQL of each backend agree."""
    data = config_data(subdomains, schedule=False)
    data["team"]["shared_inboxes"] = ["sales@acme.example", "y@partner.example"]
    cfg = parse_config(data)
    want = [expected_internal(a, subdomains) for a in ADDRESSES]
    assert [cfg.is_internal(a) for a in ADDRESSES] == want
    assert Roster(cfg).is_internal(pd.Series(ADDRESSES, dtype=object)).tolist() == want
    cache = open_cache(backend)
    try:
        expr = _internal("x.column1", cache, subdomains)
        rows = ", ".join("(?)" for _ in ADDRESSES)
        got = cache._execute(
            f"WITH internal_domains(v) AS ({cache.json_values}), "
            f"internal_addresses(v) AS ({cache.json_values}) "
            f"SELECT {expr} FROM (VALUES {rows}) AS x",
            (json.dumps(["acme.example"]), json.dumps(sorted(Roster(cfg).addresses)),
             *ADDRESSES),
        ).fetchall()
        assert [bool(r[0]) for r in got] == want
    finally:
        cache.close()


@pytest.mark.parametrize("subdomains", [True, False])
def test_subdomain_senders_on_both_pairing_paths(backend: str, subdomains: bool,
                                                 tmp_path: Path) -> None:
    """A colleague at eu.acme.example answers; a robot at mx.acme.example writes first. With
    subdomains internal the colleague is the responder and the robot's thread no lead."""
    cfg = parse_config(config_data(subdomains, schedule=False))
    box = Mailbox(tmp_path, config_data(subdomains, schedule=False))
    lead = box.send("pat@client.example", "alice@acme.example", at(0, 10), subject="Quote",
                    message_id="lead@client.example")
    box.send("dave@eu.acme.example", "pat@client.example", at(0, 11), subject="Re: Quote",
             parent=lead, message_id="eu@acme.example")
    box.send("alice@acme.example", "pat@client.example", at(0, 12), subject="Re: Quote",
             parent=lead, message_id="alice@acme.example")
    box.send("ops@mx.acme.example", "pat@client.example", at(0, 13), subject="Maintenance",
             message_id="ops@acme.example")
    box.send("alice@acme.example", "ops@mx.acme.example", at(0, 14), subject="Re: Maintenance",
             parent="ops@acme.example", message_id="ops-re@acme.example")
    cache = open_cache(backend)
    try:
        cache.write_batch("t", [(f"t/{i}", parse_header_block(b))
                                for i, b in enumerate(box.blocks)])
        refresh_threads(cache, cfg)
        as_of = int(at(7).timestamp() * 1000)
        pandas = match_leads(prepare(cache.messages(), Roster(cfg)), cfg, as_of)
        sql = email_lead_pairs(cache, cfg, None, None, as_of, details=True)
        by_id = cache.messages().set_index("id")["message_id"]
        pairs = sorted(zip(sql["lead_message_id"], sql["reply_message_id"].fillna("-"),
                           strict=True))
        assert pairs == sorted(zip(pandas["lead_message_id"],
                                   pandas["reply_message_id"].fillna("-"), strict=True))
        if subdomains:
            assert pairs == [("lead@client.example", "eu@acme.example")]
            assert pandas["responder"].tolist() == ["dave@eu.acme.example"]
        else:
            # dave is a prospect's colleague now, and ops an external sender alice answered.
            assert pairs == [("lead@client.example", "alice@acme.example"),
                             ("ops@acme.example", "ops-re@acme.example")]
        assert set(by_id) >= {p[0] for p in pairs}
    finally:
        cache.close()


def test_internal_subdomains_is_validated_and_fingerprinted() -> None:
    assert parse_config({}).internal_subdomains is True
    assert parse_config({"team": {"internal_subdomains": False}}).internal_subdomains is False
    with pytest.raises(ConfigError, match=r"team\.internal_subdomains: must be true or false"):
        parse_config({"team": {"internal_subdomains": "yes"}})
    a = Config(internal_domains=("acme.example",))
    assert a.fingerprint() != dataclasses.replace(a, internal_subdomains=False).fingerprint()


def test_template_describes_internal_subdomains() -> None:
    import tomllib

    from replytime.config import TEMPLATE

    assert "internal_subdomains = true" in TEMPLATE
    assert parse_config(tomllib.loads(TEMPLATE)).internal_subdomains is True


# -- the rule that grouped each thread ------------------------------------------------------
def known_threads(box: Mailbox) -> None:
    """One thread per rule, plus a subject-rule join through a person."""
    box.send("pat@client.example", "alice@acme.example", at(0, 9), subject="Alone",
             message_id="single@client.example")
    lead = box.send("kim@client.example", "bob@acme.example", at(0, 10), subject="Headers",
                    message_id="h1@client.example")
    box.send("bob@acme.example", "kim@client.example", at(0, 11), subject="Re: Headers",
             parent=lead, message_id="h2@acme.example")
    box.send("sam@client.example", "carol@acme.example", at(0, 12), subject="Gmail",
             headers={"X-GM-THRID": "1790000000000000001"}, message_id="g1@client.example")
    box.send("carol@acme.example", "sam@client.example", at(0, 13), subject="Re: Gmail",
             headers={"X-GM-THRID": "1790000000000000001"}, message_id="g2@acme.example")
    # Lee writes twice with the same subject, the second time without threading headers
    # and Cc'ing a colleague: the subject rule joins it through lee.
    box.send("lee@client.example", "alice@acme.example", at(1, 9), subject="Subject rule",
             message_id="s1@client.example")
    box.send("alice@acme.example", "lee@client.example", at(1, 10), subject="Re: Subject rule",
             parent="s1@client.example", message_id="s2@acme.example")
    box.send("lee@client.example", "alice@acme.example", at(3, 9), subject="RE: Subject rule",
             cc="boss@client.example", message_id="s3@client.example")
    # A robot with that subject, addressed to lee, stays on its own.
    box.send("noreply@robot.example", "lee@client.example", at(3, 10),
             subject="Re: Subject rule", message_id="r1@robot.example")


def test_rules_of_known_threads(backend: str, tmp_path: Path) -> None:
    box = Mailbox(tmp_path)
    known_threads(box)
    cfg = box.config
    cache = open_cache(backend)
    try:
        cache.write_batch("t", [(f"t/{i}", parse_header_block(b))
                                for i, b in enumerate(box.blocks)])
        refresh_threads(cache, cfg)
        grouping = group_threads(cache.thread_inputs(), Roster(cfg).is_internal)
        expected = {"single@client.example": "single", "h1@client.example": "headers",
                    "1790000000000000001": "provider", "s1@client.example": "subject",
                    "r1@robot.example": "single"}
        assert grouping.rule.to_dict() == expected
        assert cache.thread_rules(list(expected)) == expected
        links = [("s1@client.example", "s3@client.example", "s1@client.example",
                  "lee@client.example")]
        assert cache.thread_links() == links
        assert cache.thread_links("s1@client.example") == links
        assert cache.thread_links("h1@client.example") == []
        assert list(grouping.links.itertuples(index=False, name=None)) == links
        leads = Analysis(cache, cfg, as_of=at(7)).leads()
        rules = dict(zip(leads["lead_message_id"], leads["rule"], strict=True))
        assert rules == {"single@client.example": "single", "h1@client.example": "headers",
                         "g1@client.example": "provider", "s1@client.example": "subject"}
        # The period path pairs in SQL; it reports the same rules.
        week = Analysis(cache, cfg, as_of=at(7))
        week.limit_to(week.selection(since="2026-11-02", until="2026-11-09").period)
        sql_leads = week.leads(since="2026-11-02", until="2026-11-09")
        assert dict(zip(sql_leads["lead_message_id"], sql_leads["rule"], strict=True)) == rules
        assert list(sql_leads.columns) == list(leads.columns)
        assert list(leads.columns)[-1] == "rule"
    finally:
        cache.close()


# -- a cache written at the previous schema version ---------------------------------------------
OLD_THREADS_SQL = (  # the threads refill of schema 3
    "INSERT INTO threads (thread_id, start_ms, first_ms, last_ms, messages) "
    "SELECT thread_id, min(CASE WHEN automated = 0 THEN time_ms END), "
    "min(time_ms), max(time_ms), count(*) FROM messages "
    "WHERE thread_id IS NOT NULL GROUP BY thread_id"
)


def old_cache(backend: str, monkeypatch: pytest.MonkeyPatch, box: Mailbox, cfg: Config) -> None:
    """A cache as schema 3 left it: messages threaded, threads filled, fingerprint set."""
    module = sqlite_cache if "://" not in backend else pg_cache
    with monkeypatch.context() as m:
        m.setattr(module, "SCHEMA_VERSION", 3)  # the last schema without thread rules
        cache = open_cache(backend)
        assert cache.schema_version == 3
        cache.write_batch("t", [(f"t/{i}", parse_header_block(b))
                                for i, b in enumerate(box.blocks)])
        ids = group_threads(cache.thread_inputs(), Roster(cfg).is_internal).thread_id
        with cache.transaction():
            cache._apply_thread_ids(ids.index.tolist(), ids.tolist())
            cache._execute(OLD_THREADS_SQL)
            cache.set_meta("threads_fingerprint", cfg.fingerprint())
        cache.close()


def test_a_cache_of_the_previous_schema_is_migrated(backend: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    box = Mailbox(tmp_path)
    known_threads(box)
    cfg = box.config
    old_cache(backend, monkeypatch, box, cfg)
    cache = open_cache(backend, create=False)
    try:
        assert cache.schema_version == SCHEMA_VERSION
        # The rules are not known yet: the migration asks for the next refresh to rebuild.
        assert cache.get_meta("threads_fingerprint") is None
        assert set(cache.thread_rules(["h1@client.example"]).values()) == {None}
        assert cache.thread_links() == []
        refresh_threads(cache, cfg)
        assert cache.thread_rules(["h1@client.example", "s1@client.example"]) == {
            "h1@client.example": "headers", "s1@client.example": "subject"}
        assert len(cache.thread_links()) == 1
        leads = Analysis(cache, cfg, as_of=at(7)).leads()
        assert set(leads["rule"]) == {"single", "headers", "provider", "subject"}
    finally:
        cache.close()
    if "://" not in backend:  # and the file is an ordinary SQLite database of the newest schema
        with sqlite3.connect(backend) as conn:
            cols = [r[1] for r in conn.execute("PRAGMA table_info(threads)")]
            assert cols[-1] == "rule"
