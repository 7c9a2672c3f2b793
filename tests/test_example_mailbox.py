"""The bundled example (examples/): reproducible, parseable, and its ground truth right.

The ground truth (expected_leads.csv) is written by the generator from its own plan. Here
it is checked a second way, from the mailbox bytes alone, with a small by-hand reading of
the definitions (docs/definitions.md), so a mistake in either shows up.
"""

from __future__ import annotations

import csv
import importlib.util
import itertools
import re
import sys
from datetime import datetime
from fnmatch import fnmatchcase
from pathlib import Path
from types import ModuleType

import pytest

from replytime.config import Config, load_config
from replytime.model import MessageRecord
from replytime.sources.headers import parse_header_block

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MBOX = EXAMPLES / "mailbox.mbox"
EXPECTED = EXAMPLES / "expected_leads.csv"
CONFIG = EXAMPLES / "replytime.toml"


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("replytime_example_generate",
                                                  EXAMPLES / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def mbox_messages(data: bytes) -> list[bytes]:
    """Split an mbox on its "From " lines (the generator never writes one in a body)."""
    return re.split(rb"(?m)^From [^\n]*\n", data)[1:]


@pytest.fixture(scope="module")
def records() -> list[MessageRecord]:
    return [parse_header_block(m, keep=("X-Lead-Email",)) for m in mbox_messages(MBOX.read_bytes())]


@pytest.fixture(scope="module")
def expected() -> list[dict[str, str]]:
    with open(EXPECTED, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(CONFIG)


def test_committed_files_equal_a_fresh_generation(gen: ModuleType, tmp_path: Path) -> None:
    mbox, csv_path = tmp_path / "m.mbox", tmp_path / "e.csv"
    assert gen.main(["--out", str(mbox), "--expected", str(csv_path)]) == 0
    # On a mismatch after an intended change: python examples/generate.py
    assert mbox.read_bytes() == MBOX.read_bytes()
    assert csv_path.read_bytes() == EXPECTED.read_bytes()
    assert MBOX.stat().st_size < 2_000_000


def test_config_loads_and_matches_the_generator(gen: ModuleType, config: Config) -> None:
    assert {r.name: r.emails for r in config.reps} == {r.name: r.emails for r in gen.REPS}
    assert {r.name: r.team for r in config.reps} == {r.name: r.team for r in gen.REPS}
    assert config.internal_domains == (gen.INTERNAL_DOMAIN,)
    assert config.shared_inboxes == (gen.SALES.key,)
    assert config.sla_target_s == 3600
    assert {r.from_glob for r in config.leads.forms} == {gen.WORDPRESS.key, gen.CHAT.key}
    assert all(r.reply_window_s == gen.FORM_REPLY_WINDOW for r in config.leads.forms)
    for rep in gen.REPS:  # each rep works (in the generator) in the schedule's zone
        schedule = config.schedule_for(rep.name)
        assert schedule is not None and schedule.timezone == rep.zone


def test_every_message_parses_with_a_time_and_an_id(records: list[MessageRecord]) -> None:
    assert 700 < len(records) < 2000
    assert all(r.message_id and r.time_ms is not None and not r.problems for r in records)
    assert len({r.message_id for r in records}) == len(records)
    times = [r.time_ms for r in records]
    assert times == sorted(times)  # written in time order, like a real export
    assert len({r.time_offset for r in records}) >= 5  # senders' local offsets


def test_ground_truth_is_consistent(expected: list[dict[str, str]]) -> None:
    assert expected and {e["kind"] for e in expected} == {"email", "form"}
    for e in expected:
        lead = datetime.fromisoformat(e["lead_time"])
        assert e["lead_time"].endswith("+00:00") and e["lead_from"] == e["lead_from"].lower()
        if e["answered"] == "true":
            reply = datetime.fromisoformat(e["reply_time"])
            assert reply >= lead and e["reply_message_id"]
            assert int(e["response_s"]) == (reply - lead).total_seconds()
        else:
            assert e["answered"] == "false"
            assert not (e["reply_time"] or e["reply_message_id"] or e["response_s"])
            assert e["rep"] == (e["addressed_rep"] or "(unassigned)")


def _by_hand(records: list[MessageRecord], config: Config) -> dict[str, dict[str, str]]:
    """The leads and first replies of docs/definitions.md, read straight off the parsed headers."""
    rep_of = config.rep_by_address()
    by_id = {r.message_id: r for r in records}

    def root(r: MessageRecord) -> str:  # every reply here keeps its thread root first
        return r.references[0] if r.references else r.message_id or ""

    def internal(addr: str | None) -> bool:
        return bool(addr) and config.is_internal(addr)  # type: ignore[arg-type]

    def replies(r: MessageRecord, start: int, addr: str | None) -> bool:
        recipients = r.to_addrs + r.cc_addrs
        return (not r.automated and internal(r.from_addr) and r.time_ms >= start  # type: ignore[operator]
                and (addr in recipients if addr else any(not internal(a) for a in recipients)))

    def row(lead: MessageRecord, addr: str, reply: MessageRecord | None, kind: str) -> dict:
        addressed = next((rep_of[a] for a in lead.to_addrs + lead.cc_addrs if a in rep_of), "")
        who = rep_of.get(reply.from_addr, reply.from_addr) if reply else addressed
        return {"lead_from": addr, "rep": who or "(unassigned)", "kind": kind,
                "reply_message_id": reply.message_id if reply else "",
                "addressed_rep": addressed}

    leads: dict[str, dict[str, str]] = {}
    threads: dict[str, list[MessageRecord]] = {}
    for r in records:
        threads.setdefault(root(r), []).append(r)
    for tid, msgs in threads.items():
        first = next((m for m in msgs if not m.automated), None)
        if first is None or internal(first.from_addr) or config.excluded_sender(first.from_addr):
            continue
        assert first.message_id == tid and tid in by_id
        reply = next((m for m in msgs if replies(m, first.time_ms, None)), None)  # type: ignore[arg-type]
        leads[tid] = row(first, first.from_addr, reply, "email")  # type: ignore[arg-type]
    waiting: dict[str, int] = {}  # lead address -> time of its open form lead's reply
    for r in records:
        rule = next((f for f in config.leads.forms if fnmatchcase(r.from_addr or "", f.from_glob)
                     and (f.subject is None or f.subject.search(r.subject or ""))), None)
        if rule is None:
            continue
        addr = r.extra[rule.header.lower()].lower() if rule.header else r.reply_to[0]
        if waiting.get(addr, -1) > r.time_ms:  # type: ignore[operator]
            continue  # a repeat before the first one was answered belongs to it
        reply = next((m for m in records if replies(m, r.time_ms, addr)), None)  # type: ignore[arg-type]
        if reply and reply.time_ms - r.time_ms > rule.reply_window_s * 1000:  # type: ignore[operator]
            reply = None
        waiting[addr] = reply.time_ms if reply else 2**62  # type: ignore[assignment]
        leads[r.message_id] = row(r, addr, reply, "form")  # type: ignore[index]
    return leads


def test_ground_truth_agrees_with_the_mailbox(
    records: list[MessageRecord], expected: list[dict[str, str]], config: Config
) -> None:
    found = _by_hand(records, config)
    assert set(found) == {e["lead_message_id"] for e in expected}
    for e in expected:
        assert {k: e[k] for k in found[e["lead_message_id"]]} == found[e["lead_message_id"]]


def test_example_shows_every_case(
    records: list[MessageRecord], expected: list[dict[str, str]], config: Config
) -> None:
    rows = expected
    answered = [e for e in rows if e["answered"] == "true"]
    handoffs = [e for e in answered if e["addressed_rep"] and e["addressed_rep"] != e["rep"]]
    assert len(handoffs) >= 3
    assert sum(e["answered"] == "false" for e in rows) >= 5
    assert max(e["lead_time"] for e in rows if e["answered"] == "false") >= "2026-11-05"
    assert sum(e["kind"] == "form" for e in answered) >= 10
    assert "(unassigned)" in {e["rep"] for e in rows}
    assert "priya.shah@acme.example" in {e["rep"] for e in rows}  # internal, not in roster
    assert {r.name for r in config.reps} <= {e["rep"] for e in answered}
    spans = [int(e["response_s"]) for e in answered]
    assert min(spans) < 15 * 60 and max(spans) > 2 * 86400
    weekend = [e for e in answered if datetime.fromisoformat(e["reply_time"]).weekday() >= 5]
    assert weekend

    auto = [r for r in records if r.automated]
    assert any(r.from_addr == "sales@acme.example" for r in auto)  # auto-acknowledgements
    assert any("list-id" in r.extra or r.from_addr and "saasweekly" in r.from_addr for r in auto)
    assert any(r.content_type == "multipart/report" for r in auto)  # a bounce
    assert any(r.from_addr and r.from_addr.startswith("no-reply@") for r in auto)
    assert any(r.from_addr == "hannah.clarke@acme.example" for r in auto)  # out of office
    forwards = [r for r in records if r.subject and r.subject.startswith("Fwd:")
                and all(config.is_internal(a) for a in r.to_addrs + r.cc_addrs)]
    assert forwards
    assert any(r.from_addr and r.from_addr.endswith("@northwind-partners.example")
               for r in records)
    assert any(r.subject and not r.subject.isascii() for r in records)  # RFC 2047 decoded


def test_streams_other_sizes_and_formats(gen: ModuleType, tmp_path: Path) -> None:
    msgs = list(gen.generate_messages(60, seed=3, max_messages=150))
    assert len(msgs) == 150
    assert [m.ts for m in msgs] == sorted(m.ts for m in msgs)
    assert gen.write_maildir(tmp_path / "md", iter(msgs)) == 150
    files = sorted((tmp_path / "md" / "cur").iterdir())
    assert len(files) == 150 and all(parse_header_block(f.read_bytes()).message_id for f in files)
    other = [m.raw for m in gen.generate_messages(60, seed=4, max_messages=150)]
    assert other != [m.raw for m in msgs]


def test_one_copy_shared_with_the_package() -> None:
    """examples/mailbox.mbox and examples/replytime.toml are links to the package data that
    `replytime demo` reads (src/replytime/demo/), so the two can never differ."""
    from importlib.resources import files

    package = files("replytime.demo")
    for name in ("mailbox.mbox", "replytime.toml"):
        assert (EXAMPLES / name).is_symlink(), name
        assert (EXAMPLES / name).samefile(Path(str(package / name))), name


@pytest.mark.parametrize("args", [
    ["--threads", "400", "--robots", "0.6", "--same-subject", "0.4"],
    ["--threads", "400", "--messages", "700", "--robots", "0.3", "--same-subject", "0.2"],
])
def test_robots_and_same_subject_keep_the_ground_truth(
    gen: ModuleType, tmp_path: Path, config: Config, args: list[str]
) -> None:
    """--robots and --same-subject (the mail of issue 15) record their leads' ground truth
    as the mailbox bytes say it, also when --messages cuts the mailbox short (a reply not
    yet written is no reply)."""
    mbox, csv_path = tmp_path / "m.mbox", tmp_path / "e.csv"
    assert gen.main(["--out", str(mbox), "--expected", str(csv_path), *args]) == 0
    records = [parse_header_block(m, keep=("X-Lead-Email",))
               for m in mbox_messages(mbox.read_bytes())]
    with open(csv_path, newline="", encoding="utf-8") as f:
        expected = list(csv.DictReader(f))
    test_ground_truth_is_consistent(expected)
    found = _by_hand(records, config)
    assert set(found) == {e["lead_message_id"] for e in expected}
    for e in expected:
        assert {k: e[k] for k in found[e["lead_message_id"]]} == found[e["lead_message_id"]]
    if "--messages" in args:
        assert len(records) == 700
        return
    # The pattern: bounces of reps' answers from our MX, threaded to them ...
    bounces = [r for r in records if r.from_addr == "mailer-daemon@mx.acme.example"]
    assert len(bounces) >= 20 and all(r.content_type == "multipart/report" and r.automated
                                      and r.in_reply_to for r in bounces)
    robots = {r.from_addr for r in records if r.automated and r.in_reply_to}
    assert {"calendar-notification@calendar.example", "listserv@lists.example"} <= robots
    # ... and enquiries from two prospects with one subject minutes apart, no threading headers.
    heads = sorted((r for r in records if r.message_id in found and not r.references
                    and found[r.message_id]["kind"] == "email"), key=lambda r: r.time_ms or 0)
    twins = [(a, b) for a, b in itertools.combinations(heads, 2)
             if a.subject == b.subject and a.from_addr != b.from_addr
             and 0 < (b.time_ms or 0) - (a.time_ms or 0) <= 15 * 60 * 1000]
    assert len(twins) >= 20
