"""Email leads and first replies computed in the database (cache.pairing) give exactly the
pandas matcher's email leads, on both backends: the bundled example over several periods
and as-of times, and one small hand-built thread per rule of docs/definitions.md."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from replytime.analysis.matcher import Roster, match_leads, prepare
from replytime.analysis.sql_leads import email_lead_pairs, email_leads
from replytime.api import refresh_threads
from replytime.config import Config, load_config, parse_config
from replytime.model import MessageRecord
from replytime.sources.files import import_paths
from replytime.sources.headers import parse_header_block
from replytime.store import Cache, open_cache
from replytime.store.pairing import PAIR_COLUMNS
from tests.conftest import BACKENDS
from tests.mailbuilder import BASE_CONFIG, Mailbox, at
from tests.pg import PostgresServer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PROSPECT = "Pat Prospect <pat@client.example>"


def ms(when: str | datetime) -> int:
    return int(pd.Timestamp(when).timestamp() * 1000)


def pandas_pairs(cache: Cache, cfg: Config, since: int | None, until: int | None,
                 as_of: int) -> tuple[pd.DataFrame, pd.Series]:
    """The matcher's email leads of [since, until) over the whole cache, and the form leads'
    ids (the matcher's email leads leave those out)."""
    leads = match_leads(prepare(cache.messages(labels=True), Roster(cfg)), cfg, as_of)
    email = leads[leads["kind"] == "email"]
    if since is not None:
        email = email[email["lead_time_ms"] >= since]
    if until is not None:
        email = email[email["lead_time_ms"] < until]
    return email.reset_index(drop=True), leads.loc[leads["kind"] == "form", "lead_id"]


def check(cache: Cache, cfg: Config, since: int | None, until: int | None,
          as_of: int) -> pd.DataFrame:
    """SQL pairs (and the full lead rows built from them) equal to the matcher's."""
    expected, forms = pandas_pairs(cache, cfg, since, until, as_of)
    got = email_lead_pairs(cache, cfg, since, until, as_of, exclude_lead_ids=forms)
    pd.testing.assert_frame_equal(got, expected[PAIR_COLUMNS])
    full = email_leads(cache, cfg, since, until, as_of, exclude_lead_ids=forms)
    # addressed_rep is float NaN, not str, where no lead of the frame was addressed to a rep:
    # the reference is cut from the whole cache's frame, so compare the values.
    pd.testing.assert_frame_equal(full.astype({"addressed_rep": object}),
                                  expected.astype({"addressed_rep": object}))
    return got


def new_cache(request: pytest.FixtureRequest, backend: str, where: Path) -> Cache:
    if backend == "sqlite":
        cache = open_cache(where / "cache.sqlite")
    else:
        server: PostgresServer = request.getfixturevalue("pg_server")
        cache = open_cache(server.create_database())
    request.addfinalizer(cache.close)
    return cache


# -- the bundled example ---------------------------------------------------------------------
EX_AS_OF = ms("2026-11-06T21:00:00+00:00")


@pytest.fixture(scope="module", params=BACKENDS)
def example(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> tuple[Cache, Config]:
    cfg = load_config(EXAMPLES / "replytime.toml")
    cache = new_cache(request, request.param, tmp_path_factory.mktemp("ex"))
    import_paths(cache, [EXAMPLES / "mailbox.mbox"], account="example", keep=cfg.kept_headers())
    refresh_threads(cache, cfg, force=True)
    return cache, cfg


@pytest.mark.parametrize(
    ("since", "until"),
    [(None, None),  # all time
     ("2026-10-12", "2026-10-19"), ("2026-09-07", "2026-09-14"),  # a week
     ("2026-09-20T13:00Z", "2026-10-03T02:00Z"),
     ("2026-10-26", None), (None, "2026-10-01")],  # open at one end
)
def test_example_pairs_equal_the_matcher(example: tuple[Cache, Config], since: str | None,
                                         until: str | None) -> None:
    cache, cfg = example
    got = check(cache, cfg, since and ms(since), until and ms(until), EX_AS_OF)
    assert len(got) > 0 and got["reply_id"].notna().any() and got["reply_id"].isna().any()


@pytest.mark.parametrize("which", [0, 7, -1])
@pytest.mark.parametrize("period", [(None, None), ("2026-10-12", "2026-10-19")])
def test_example_as_of_in_the_middle_of_threads(
    example: tuple[Cache, Config], which: int, period: tuple[str | None, str | None]
) -> None:
    cache, cfg = example
    since, until = (p and ms(p) for p in period)
    # as_of halfway between a lead and its first reply (one answered after some minutes)
    later = email_lead_pairs(cache, cfg, since, until, EX_AS_OF)
    slow = later[(later["reply_time_ms"] - later["lead_time_ms"]) > 600_000]
    lead = slow.iloc[which]
    as_of = int(lead["lead_time_ms"] + (lead["reply_time_ms"] - lead["lead_time_ms"]) // 2)
    got = check(cache, cfg, since, until, as_of)
    assert (got["lead_time_ms"] <= as_of).all()
    assert got.loc[got["lead_id"] == lead["lead_id"], "reply_id"].isna().all()
    assert len(got) <= len(later)


def test_example_filters_apply_as_in_the_matcher(example: tuple[Cache, Config]) -> None:
    cache, cfg = example
    assert cfg.leads.exclude_from  # partners' mail is external but no lead
    unfiltered = dataclasses.replace(cfg, leads=dataclasses.replace(cfg.leads, exclude_from=()))
    assert len(check(cache, unfiltered, None, None, EX_AS_OF)) > len(
        check(cache, cfg, None, None, EX_AS_OF))
    to_sales = dataclasses.replace(cfg, leads=dataclasses.replace(
        cfg.leads, to=("sales@acme.example",)))
    assert len(check(cache, to_sales, None, None, EX_AS_OF)) > 0


# -- hand-built threads, one rule each -------------------------------------------------------
@pytest.fixture(params=BACKENDS)
def hand(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Mailbox, Any]]:
    """A Mailbox, and a function storing its messages (plus raw records) in a fresh cache
    of the backend and returning that cache."""
    mb = Mailbox(tmp_path)

    def store(*records: MessageRecord, config: Config | None = None) -> Cache:
        cfg = config or mb.config
        cache = new_cache(request, request.param, tmp_path)
        rows = [(f"test/{i}", parse_header_block(b, keep=cfg.kept_headers()))
                for i, b in enumerate(mb.blocks)]
        rows += [(f"raw/{i}", r) for i, r in enumerate(records)]
        cache.write_batch("test", rows)
        refresh_threads(cache, cfg, force=True)
        return cache

    yield mb, store


AS_OF = ms(at(30))


def pairs_by_message_id(cache: Cache, cfg: Config, as_of: int = AS_OF,
                        since: int | None = None, until: int | None = None
                        ) -> list[tuple[str, str | None]]:
    """(lead Message-ID, reply Message-ID or None) per email lead, checked against pandas."""
    got = check(cache, cfg, since, until, as_of)
    ids = dict(cache._frame("SELECT id, message_id FROM messages").itertuples(index=False))
    return [(ids[int(r.lead_id)], None if pd.isna(r.reply_id) else ids[int(r.reply_id)])
            for r in got.itertuples()]


def test_first_human_reply(hand: tuple[Mailbox, Any]) -> None:
    mb, store = hand
    lead = mb.send(PROSPECT, "sales@acme.example", at(0, 10))
    reply = mb.send("alice@acme.example", "pat@client.example", at(0, 10, 42), parent=lead)
    mb.send(PROSPECT, "alice@acme.example", at(0, 11), parent=reply)
    mb.send("bob@acme.example", "pat@client.example", at(0, 12), parent=reply)
    other = mb.send("x@other.example", "bob@acme.example", at(1, 9), subject="Other")
    assert pairs_by_message_id(store(), mb.config) == [(lead, reply), (other, None)]


def test_automated_first_message_is_skipped(hand: tuple[Mailbox, Any]) -> None:
    mb, store = hand
    # An automated external message starts the thread; the human one after it is the lead.
    first = mb.send(PROSPECT, "sales@acme.example", at(0, 9), headers={"X-Autoreply": "yes"})
    lead = mb.send(PROSPECT, "sales@acme.example", at(0, 9, 5), parent=first)
    mb.send("sales@acme.example", "pat@client.example", at(0, 9, 6), parent=lead,
            headers={"Auto-Submitted": "auto-replied"})  # automated: never a reply
    reply = mb.send("bob@acme.example", "pat@client.example", at(0, 10), parent=lead)
    # An automated internal message first: the thread is still a lead.
    ack = mb.send("noreply@acme.example", "lee@client.example", at(1, 8), subject="Ticket")
    lead2 = mb.send("lee@client.example", "sales@acme.example", at(1, 9), parent=ack)
    assert pairs_by_message_id(store(), mb.config) == [(lead, reply), (lead2, None)]


def test_internal_only_forward_is_not_a_reply(hand: tuple[Mailbox, Any]) -> None:
    mb, store = hand
    lead = mb.send(PROSPECT, "sales@acme.example", at(0, 9))
    mb.send("alice@acme.example", ["bob@acme.example", "sales@acme.example"], at(0, 9, 30),
            cc="carol@acme.example", parent=lead)
    reply = mb.send("bob@acme.example", "pat@client.example", at(0, 11), parent=lead,
                    cc="alice@acme.example")
    assert pairs_by_message_id(store(), mb.config) == [(lead, reply)]


def test_reply_before_the_lead_time(hand: tuple[Mailbox, Any]) -> None:
    mb, store = hand
    # A rep's answer with a clock behind the lead's: the thread's earliest human message is
    # internal, so it is outbound, not a lead (no negative reply time).
    lead = mb.send(PROSPECT, "sales@acme.example", at(0, 10))
    mb.send("alice@acme.example", "pat@client.example", at(0, 9, 50), parent=lead)
    # An automated internal message before the lead is neither a start nor a reply.
    ack = mb.send("mailer-daemon@acme.example", "kim@client.example", at(1, 9), subject="B")
    lead2 = mb.send("kim@client.example", "sales@acme.example", at(1, 10), parent=ack)
    reply2 = mb.send("carol@acme.example", "kim@client.example", at(1, 10), parent=lead2)
    assert pairs_by_message_id(store(), mb.config) == [(lead2, reply2)]  # same second: 0 s


def test_as_of_cuts_replies_and_leads(hand: tuple[Mailbox, Any]) -> None:
    mb, store = hand
    lead = mb.send(PROSPECT, "sales@acme.example", at(0, 10))
    reply = mb.send("alice@acme.example", "pat@client.example", at(0, 12), parent=lead)
    late = mb.send("lee@client.example", "sales@acme.example", at(0, 13), subject="Late")
    cache = store()
    assert pairs_by_message_id(cache, mb.config, ms(at(0, 11))) == [(lead, None)]
    assert pairs_by_message_id(cache, mb.config, ms(at(0, 12))) == [(lead, reply)]
    assert pairs_by_message_id(cache, mb.config, ms(at(0, 13))) == [(lead, reply), (late, None)]
    # The period selects by lead time, half open; replies are looked up as of as_of.
    assert pairs_by_message_id(cache, mb.config, since=ms(at(0, 10)), until=ms(at(0, 13))) == [
        (lead, reply)]
    assert pairs_by_message_id(cache, mb.config, since=ms(at(0, 10, 0, 1))) == [(late, None)]
    assert pairs_by_message_id(cache, mb.config, since=ms(at(5))) == []
    assert pairs_by_message_id(cache, mb.config, ms(at(0, 9))) == []


def test_address_with_two_at_signs(hand: tuple[Mailbox, Any]) -> None:
    mb, store = hand
    # The domain is what follows the LAST '@'.
    lead = mb.send('"alice@acme.example"@evil.example', "sales@acme.example", at(0, 9))
    mb.send('"x@evil.example"@acme.example', '"alice@acme.example"@evil.example',
            at(0, 9, 10), parent=lead)  # internal sender: the reply
    not_lead = mb.send('"y@client.example"@acme.example', "pat@client.example", at(1, 9),
                       subject="Outbound")
    mb.send(PROSPECT, '"y@client.example"@acme.example', at(1, 10), parent=not_lead)
    cache = store()
    got = pairs_by_message_id(cache, mb.config)
    assert [lead_id for lead_id, _ in got] == [lead] and got[0][1] is not None


def test_roster_address_at_an_outside_domain_is_internal(hand: tuple[Mailbox, Any]) -> None:
    mb, store = hand
    data = dict(BASE_CONFIG)
    data["reps"] = [*BASE_CONFIG["reps"],
                    {"name": "Dee", "emails": ["dee.consult@gmail.example"]}]
    mb.config_data = data
    # From the rep's outside address: outbound, not a lead.
    out = mb.send("dee.consult@gmail.example", "pat@client.example", at(0, 8), subject="Hi")
    mb.send(PROSPECT, "dee.consult@gmail.example", at(0, 9), parent=out)
    # A lead answered from the rep's outside address ...
    lead = mb.send("lee@client.example", "sales@acme.example", at(1, 9), subject="Q")
    reply = mb.send("dee.consult@gmail.example", "lee@client.example", at(1, 10), parent=lead)
    # ... and a lead only forwarded to it (internal only: no reply).
    lead2 = mb.send("kim@client.example", "sales@acme.example", at(2, 9), subject="R")
    mb.send("alice@acme.example", "dee.consult@gmail.example", at(2, 10), parent=lead2)
    # Someone else at gmail.example stays external.
    lead3 = mb.send("sam@gmail.example", "dee.consult@gmail.example", at(3, 9), subject="S")
    cache = store(config=mb.config)
    assert pairs_by_message_id(cache, mb.config) == [(lead, reply), (lead2, None),
                                                     (lead3, None)]


def test_empty_recipients(hand: tuple[Mailbox, Any]) -> None:
    mb, store = hand
    lead = mb.send(PROSPECT, "undisclosed-recipients:;", at(0, 9))  # no recipient: a lead
    mb.send("alice@acme.example", "undisclosed-recipients:;", at(0, 10), parent=lead)
    reply = mb.send("bob@acme.example", [], at(0, 11), cc="pat@client.example", parent=lead)
    cache = store()
    assert pairs_by_message_id(cache, mb.config) == [(lead, reply)]


def test_odd_characters_and_missing_sender(hand: tuple[Mailbox, Any]) -> None:
    """Stored addresses with quotes, backslashes, control characters and empty list items
    split as the matcher splits them; a thread whose first message has no sender is no
    lead."""
    mb, store = hand
    t = ms(at(0, 9))
    rec = dict(time_source=1, automated=False)
    odd = 'a"b\\c\t@client.example'
    records = [
        MessageRecord(message_id="l1", from_addr=odd, to_addrs=("sales@acme.example",),
                      time_ms=t, **rec),
        MessageRecord(message_id="r0", from_addr="alice@acme.example",
                      to_addrs=("", "bob@acme.example", ""), cc_addrs=("",),
                      in_reply_to="l1", time_ms=t + 1000, **rec),
        MessageRecord(message_id="r1", from_addr="bob@acme.example",
                      to_addrs=("", "alice@acme.example", odd), in_reply_to="l1",
                      time_ms=t + 2000, **rec),
        MessageRecord(message_id="n1", from_addr=None, to_addrs=("sales@acme.example",),
                      subject="anonymous", time_ms=t + 5000, **rec),
        MessageRecord(message_id="n2", from_addr="lee@client.example",
                      to_addrs=("sales@acme.example",), in_reply_to="n1",
                      time_ms=t + 6000, **rec),
        MessageRecord(message_id="e1", from_addr="", to_addrs=("sales@acme.example",),
                      subject="empty sender", time_ms=t + 9000, **rec),
    ]
    cache = store(*records)
    assert pairs_by_message_id(cache, mb.config) == [("l1", "r1"), ("e1", None)]


def test_untimed_messages_and_unthreaded_are_ignored(hand: tuple[Mailbox, Any]) -> None:
    mb, store = hand
    lead = mb.send(PROSPECT, "sales@acme.example", at(0, 9))
    mb.send("alice@acme.example", "pat@client.example", None, parent=lead)  # no time
    reply = mb.send("bob@acme.example", "pat@client.example", at(0, 9, 1), parent=lead)
    mb.send("lee@client.example", "sales@acme.example", None, subject="No date")
    assert pairs_by_message_id(store(), mb.config) == [(lead, reply)]


def test_form_notification_from_outside_is_a_form_lead(hand: tuple[Mailbox, Any]) -> None:
    mb, store = hand
    data = dict(BASE_CONFIG)
    data["leads"] = {"forms": [{"from": "forms@webflow.example", "subject": "^New"}]}
    mb.config_data = data
    note = mb.send("forms@webflow.example", "sales@acme.example", at(0, 9),
                   reply_to="pat@client.example", subject="New form")
    mb.send("bob@acme.example", "pat@client.example", at(0, 10), subject="Hello")
    lead = mb.send("lee@client.example", "sales@acme.example", at(1, 9), subject="Q")
    cache = store()
    # Left to itself the SQL counts the notification as an email lead; excluding the form
    # leads' ids (check() does) gives the matcher's email leads.
    raw = email_lead_pairs(cache, mb.config, None, None, AS_OF)
    assert len(raw) == 2
    assert pairs_by_message_id(cache, mb.config) == [(lead, None)]
    assert note


def test_lead_filters_on_labels_and_recipients(hand: tuple[Mailbox, Any]) -> None:
    mb, store = hand
    t = ms(at(0, 9))
    rec = dict(time_source=1, automated=False)
    records = [
        MessageRecord(message_id="a", from_addr="pat@client.example",
                      to_addrs=("sales@acme.example",), labels=("Leads",), time_ms=t, **rec),
        MessageRecord(message_id="b", from_addr="lee@client.example",
                      to_addrs=("alice@acme.example",), subject="b", time_ms=t + 1, **rec),
        MessageRecord(message_id="c", from_addr="kim@client.example",
                      to_addrs=("alice@acme.example",), cc_addrs=("sales@acme.example",),
                      labels=("INBOX", "Leads"), subject="c", time_ms=t + 2, **rec),
    ]
    data = dict(BASE_CONFIG)
    data["leads"] = {"labels": ["Leads"]}
    cache = store(*records)
    assert [x for x, _ in pairs_by_message_id(cache, parse_config(data))] == ["a", "c"]
    data["leads"] = {"to": ["sales@acme.example"], "exclude_from": ["kim@*"]}
    assert [x for x, _ in pairs_by_message_id(cache, parse_config(data))] == ["a"]


def test_sqlite_reads_the_period_through_indexes(tmp_path: Path) -> None:
    """The plan reads messages of the period by the time index and the later messages of
    lead threads by thread id: never a scan of every message."""
    from replytime.store.pairing import pairs_sql

    cache = open_cache(tmp_path / "cache.sqlite")
    params = ("[]", "[]", 0, 1, 2, 0, 1, 2, 1, 1, 2)
    plan = [row[3] for row in cache._execute("EXPLAIN QUERY PLAN " + pairs_sql(cache, True),
                                             params)]
    cache.close()
    assert any("USING INDEX messages_time" in p for p in plan), plan
    assert any("USING INDEX messages_thread" in p for p in plan), plan
    assert not any(p.startswith("SCAN m") or p == "SCAN messages" for p in plan), plan


# -- reports: the database pairing in Analysis ----------------------------------------------
@pytest.mark.parametrize(("since", "until"), [("2026-10-12", "2026-10-19"),
                                              ("2026-09-20", None)])
def test_reports_paired_in_the_database_equal_the_pandas_ones(
    example: tuple[Cache, Config], since: str, until: str | None, without_kept_table: None
) -> None:
    """Without the kept lead table (tests/test_kept_leads.py tests it) and form rules, a
    limited analysis pairs its period's leads in the database and reads no messages for
    leads, unanswered and SLA; every report equals the one built from the messages in
    pandas (an unlimited analysis of the same cache)."""
    from replytime.api import Analysis
    from replytime.periods import Period

    cache, cfg = example
    cfg = dataclasses.replace(cfg, leads=dataclasses.replace(cfg.leads, forms=()))
    as_of = "2026-11-06T21:00:00+00:00"
    whole = Analysis(cache, cfg, as_of=as_of)
    sel = whole.selection(since=since, until=until)
    limited = Analysis(cache, cfg, as_of=as_of, scope=sel.period)
    assert isinstance(sel.period, Period) and sel.period.since_ms is not None

    for name in ("leads", "unanswered", "sla"):
        got, expected = getattr(limited, name)(sel), getattr(whole, name)(sel)
        pd.testing.assert_frame_equal(got.astype(object), expected.astype(object))
    assert "messages" not in limited.__dict__ and limited._sql_leads  # paired in SQL
    assert len(limited.leads(sel)) > 10
    for name in ("reps", "blocks"):  # these read the lead threads' messages
        pd.testing.assert_frame_equal(getattr(limited, name)(sel).astype(object),
                                      getattr(whole, name)(sel).astype(object))
    assert "all_leads" not in limited.__dict__  # leads still from the database
    team = whole.selection(since=since, until=until, rep=cfg.reps[0].name)
    pd.testing.assert_frame_equal(limited.reps(team).astype(object),
                                  whole.reps(team).astype(object))
