"""The kept lead table (analysis/kept.py, store/leads.py) changes no number: after random
sequences of imports of generated mail, re-deliveries, removals, config edits and as-of
times, every report (CSV bytes through the CLI) equals the one computed from scratch, on a
fresh cache with the same mail and config, by the path that pairs messages (no kept table).
On both backends; and a process stopped while it updates the table leaves it exact."""

from __future__ import annotations

import json
import os
import random
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from replytime.analysis import kept, rethread
from replytime.api import Analysis, refresh_threads
from replytime.cli import main
from replytime.config import parse_config
from replytime.sources.headers import parse_header_block
from replytime.store import Cache, SQLiteCache, open_cache
from tests.conftest import no_kept_table
from tests.mailbuilder import BASE_CONFIG, Mailbox, at, toml

REPS = ["alice@acme.example", "a.ng@acme.example", "bob@acme.example", "carol@acme.example"]
INTERNAL = [*REPS, "sales@acme.example", "ops@acme.example", "lab@acme-labs.example"]
KINDS = ["reps", "leads", "unanswered", "sla", "volume", "threads", "weekly"]
#: web-form senders: an internal one (automated, as WordPress sends) and an external one (a
#: person's message too: a form lead first, else its thread's email lead)
FORM_SENDERS = ["wordpress@acme.example", "leads@forms.example"]
#: form rules the configs switch between: one, and two with different reply windows
PROSPECT_F = "p1@client0.example"  # one of the form notifications' prospects (Mail._form)
FORM_RULES = [
    [{"from": "wordpress@acme.example", "reply_window": "3d"}],
    [{"from": "wordpress@acme.example", "subject": "^New enquiry", "reply_window": "2d"},
     {"from": "*@forms.example", "reply_window": "5d"}],
]


# -- generated mail ----------------------------------------------------------------------------
class Mail:
    """A growing mailbox: ``batch`` writes new threads and replies to earlier messages."""

    def __init__(self, tmp: Path, seed: int, *, forms: bool = False) -> None:
        self.rng = random.Random(seed)
        self.forms = forms  # also web-form notifications (FORM_SENDERS)
        self.box = Mailbox(tmp)
        self.sent: list[tuple[str, str, str]] = []  # (message id, sender, thread's prospect)
        self.locations: dict[str, bytes] = {}  # location -> header block, as imported
        self.order: list[str] = []  # locations in import order
        self.written: list[tuple[str, bytes]] = []  # every location ever written, in order

    def _when(self) -> Any:
        r = self.rng
        if r.random() < 0.04:
            return None  # no usable time
        return at(r.randrange(0, 21), r.randrange(0, 24), r.randrange(0, 60), r.randrange(60))

    def _new_thread(self) -> None:
        r = self.rng
        prospect = f"p{r.randrange(40)}@client{r.randrange(5)}.example"
        if r.random() < 0.1:
            prospect = f"x{r.randrange(9)}@partner.example"
        first = r.choice(INTERNAL) if r.random() < 0.2 else prospect
        to = r.choice([*REPS, "sales@acme.example"]) if first == prospect else prospect
        cc = r.choice(REPS) if r.random() < 0.3 else ()
        headers = {"Auto-Submitted": "auto-generated"} if r.random() < 0.05 else None
        mid = self.box.send(first, to, self._when(), cc=cc, headers=headers,
                            subject=f"Question {r.randrange(30)}")
        self.sent.append((mid, first, prospect))

    def _form(self) -> None:
        """A web form's notification: the prospect in Reply-To (a few prospects, so forms
        repeat and meet the threads'), to the shared inbox or a rep."""
        r = self.rng
        prospect = f"p{r.randrange(6)}@client0.example"
        sender = r.choice(FORM_SENDERS)
        internal = sender.endswith("@acme.example")
        headers = {"Auto-Submitted": "auto-generated"} if internal else None
        mid = self.box.send(sender, r.choice(["sales@acme.example", *REPS[:2]]), self._when(),
                            reply_to=prospect, headers=headers,
                            subject=r.choice(["New enquiry from the site", "Chat transcript"]))
        self.sent.append((mid, sender, prospect))

    def _fresh_reply(self) -> None:
        """A rep writes a form's prospect a new email (as reps usually answer a form): a
        form lead's first reply in another thread, where the prospect may answer on."""
        r = self.rng
        prospect = f"p{r.randrange(6)}@client0.example"
        rep = r.choice(REPS)
        mid = self.box.send(rep, prospect, self._when(), subject="Your enquiry")
        self.sent.append((mid, rep, prospect))

    def _reply(self) -> None:
        r = self.rng
        parent, sender, prospect = r.choice(self.sent)
        if sender == prospect or r.random() < 0.6:
            frm, to = r.choice(INTERNAL), prospect  # a rep answers (or a colleague)
            if r.random() < 0.15:
                to = r.choice(REPS)  # internal only: a forward, not a reply
        else:
            frm, to = prospect, r.choice(REPS)
        headers = {"Auto-Submitted": "auto-replied"} if r.random() < 0.07 else None
        mid = self.box.send(frm, to, self._when(), parent=parent, headers=headers,
                            subject="Re: question")
        self.sent.append((mid, frm, prospect))

    def batch(self, cache: Cache) -> None:
        """Write a batch: new threads, replies, sometimes a re-delivery of an earlier
        message with a time it lacked (the upsert clears its thread id)."""
        r = self.rng
        start = len(self.box.blocks)
        for _ in range(r.randrange(3, 12)):
            if self.forms and r.random() < 0.25:
                self._form() if r.random() < 0.6 else self._fresh_reply()
            else:
                self._new_thread() if not self.sent or r.random() < 0.45 else self._reply()
        blocks = self.box.blocks[start:]
        if self.order and r.random() < 0.3:  # the same message again, now with a Date
            loc = r.choice(self.order)
            block = self.locations[loc]
            if b"\r\nDate:" not in block:
                blocks.append(block.replace(b"\r\n\r\n", b"\r\nDate: Mon, 09 Nov 2026 "
                                            b"10:00:00 +0000\r\n\r\n"))
        self.write(cache, blocks)

    def write(self, cache: Cache, blocks: list[bytes], removed: list[str] = ()) -> None:
        records = []
        for block in blocks:
            loc = f"test/{len(self.order)}"
            self.order.append(loc)
            self.locations[loc] = block
            self.written.append((loc, block))
            records.append((loc, parse_header_block(block)))
        cache.write_batch("test", records, removed=list(removed))
        for loc in removed:
            self.order.remove(loc)
            del self.locations[loc]

    def remove_one(self, cache: Cache) -> None:
        self.write(cache, [], removed=[self.rng.choice(self.order)])

    def replay(self, cache: Cache) -> None:
        """Everything as it stands now, into an empty cache: every location ever written in
        one batch, then those removed since in another, so each message has the id it has
        in the cache written batch by batch (lead ids are in the reports)."""
        cache.write_batch("test", [(loc, parse_header_block(b)) for loc, b in self.written])
        gone = [loc for loc, _ in self.written if loc not in self.locations]
        if gone:
            cache.write_batch("test", [], removed=gone)


# -- configs -------------------------------------------------------------------------------------
def edit_config(data: dict[str, Any], rng: random.Random, *, forms: bool = False
                ) -> dict[str, Any]:
    """One random edit of what leads depend on: internal domains, reps and their
    addresses, teams, schedules (holidays, dates off), lead filters; ``forms``: also the
    form rules (FORM_RULES, or none)."""
    d = json.loads(json.dumps(data))
    what = rng.choice(["domain", "rep", "email", "team", "schedule", "dates_off", "to",
                       "exclude", *(["forms"] * forms)])
    if what == "forms":
        leads = d.setdefault("leads", {})
        choices = [None, *range(len(FORM_RULES))]
        now = next((i for i, rules in enumerate(FORM_RULES) if leads.get("forms") == rules),
                   None)
        pick = rng.choice([c for c in choices if c != now])
        leads.pop("forms", None)
        if pick is not None:
            leads["forms"] = FORM_RULES[pick]
    domains = d["team"]["internal_domains"]
    if what == "domain":
        if "acme-labs.example" in domains:
            domains.remove("acme-labs.example")
        else:
            domains.append("acme-labs.example")
    elif what == "rep":
        if any(r["name"] == "Dave" for r in d["reps"]):
            d["reps"] = [r for r in d["reps"] if r["name"] != "Dave"]
        else:
            d["reps"].append({"name": "Dave", "emails": ["ops@acme.example"], "team": "West"})
    elif what == "email":
        alice = d["reps"][0]
        alice["emails"] = (["alice@acme.example"] if len(alice["emails"]) > 1
                           else ["alice@acme.example", "a.ng@acme.example"])
    elif what == "team":
        bob = d["reps"][1]
        bob["team"] = "West" if bob["team"] == "East" else "East"
    elif what == "schedule":
        if d.get("schedules"):
            d.pop("schedules")
            d.pop("teams", None)
        else:
            d["schedules"] = {
                "default": {"timezone": "UTC", "monday": ["09:00-17:00"],
                            "tuesday": ["09:00-17:00"], "wednesday": ["09:00-12:00",
                                                                      "13:00-17:00"],
                            "thursday": ["09:00-17:00"], "friday": ["09:00-15:00"],
                            "holidays": ["US"]},
                "late": {"timezone": "America/New_York", "monday": ["12:00-20:00"],
                         "tuesday": ["12:00-20:00"], "thursday": ["12:00-20:00"]},
            }
            d["teams"] = {"West": {"schedule": "late"}}
    elif what == "dates_off" and d.get("schedules"):
        off = d["schedules"]["default"].setdefault("dates_off", [])
        day = f"2026-11-{rng.randrange(2, 23):02d}"
        off.remove(day) if day in off else off.append(day)
    elif what == "to":
        leads = d.setdefault("leads", {})
        leads.pop("to") if "to" in leads else leads.update(to=["sales@acme.example"])
    elif what == "exclude":
        leads = d.setdefault("leads", {})
        if "exclude_from" in leads:
            leads.pop("exclude_from")
        else:
            leads["exclude_from"] = ["*@partner.example"]
    return d


def start_config() -> dict[str, Any]:
    d = json.loads(json.dumps(BASE_CONFIG))
    d["reps"][2]["emails"] = ["carol@acme.example"]
    return d


# -- reports -------------------------------------------------------------------------------------
def cli(*args: str) -> str:
    out = StringIO()
    with redirect_stdout(out):
        code = main(list(args))
    assert code == 0, (args, out.getvalue())
    return out.getvalue()


def reports(db: str, config: Path, as_of: str) -> dict[str, str]:
    """Every report's CSV over a week, over all time and since 7 days before ``as_of``,
    the reply blocks, and the status lead counts."""
    out = {}
    # A week the as-of time has reached: one starting after it is refused (docs/definitions.md,
    # "Periods").
    week = (["--since", "2026-11-09", "--until", "2026-11-16"] if as_of >= "2026-11-09"
            else ["--since", "2026-11-02", "--until", "2026-11-09"])
    periods = {"week": week, "all": [], "7d": ["--since", "7d"]}
    for kind in KINDS:
        for name, period in periods.items():
            if kind == "weekly" and name == "all":
                continue
            out[f"{kind} {name}"] = cli("--config", str(config), "--db", db, "report", kind,
                                        "--format", "csv", "--as-of", as_of, *period)
    # A rep and a team chosen: the tallies then attribute every lead as of as_of in pandas
    # instead of counting in the cache; and calendar time where a schedule makes business
    # time the default.
    for kind, chosen in (("reps", ["--rep", "Alice"]), ("sla", ["--team", "West"]),
                         ("volume", ["--rep", "Bob"]), ("threads", ["--team", "East"]),
                         ("reps", ["--calendar", "--since", "7d"]), ("sla", ["--calendar"]),
                         ("reps", ["--calendar"])):
        out[f"{kind} {' '.join(chosen)}"] = cli("--config", str(config), "--db", db, "report",
                                                 kind, "--format", "csv", "--as-of", as_of,
                                                 *chosen)
    # The terminal table: reps with its TOTAL row (counted and ranked in the cache for all
    # time: store.leads.kept_block_ranks), on both bases.
    for basis in ([], ["--calendar"]):
        out[f"reps table {basis}"] = cli("--config", str(config), "--db", db, "report", "reps",
                                         "--as-of", as_of, *basis)
    out["blocks"] = cli("--config", str(config), "--db", db, "report", "leads",
                        "--all-replies", "--format", "csv", "--as-of", as_of)
    out["blocks week"] = cli("--config", str(config), "--db", db, "report", "leads",
                             "--all-replies", "--format", "csv", "--as-of", as_of,
                             *periods["week"])
    status = json.loads(cli("--config", str(config), "--db", db, "status", "--format", "json"))
    out["status"] = json.dumps({k: status[k] for k in (
        "messages", "threads", "leads", "unanswered", "clamped_negative")})
    return out


def as_of_values(cache: Cache, rng: random.Random) -> list[str]:
    """After everything, and at (or a millisecond before) a random message's time: a
    reply exactly at as_of counts, one a millisecond later does not."""
    times = [t for (t,) in cache._execute(
        "SELECT time_ms FROM messages WHERE time_ms IS NOT NULL").fetchall()]
    picks = [at(40).isoformat()]
    for t in rng.sample(times, min(1, len(times))):
        t -= rng.choice([0, 1])
        picks.append(pd.Timestamp(t, unit="ms", tz="UTC").isoformat())
    return picks


def check_against_scratch(tmp: Path, mail: Mail, db: str, config: Path, as_ofs: list[str],
                          fresh_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    got = {a: reports(db, config, a) for a in as_ofs}
    with open_cache(fresh_db) as fresh:
        mail.replay(fresh)
    with no_kept_table(monkeypatch):
        want = {a: reports(fresh_db, config, a) for a in as_ofs}
    for a in as_ofs:
        for name in want[a]:
            assert got[a][name] == want[a][name], f"{name} as of {a}"


# -- the tests --------------------------------------------------------------------------------
@pytest.mark.parametrize(("seed", "forms"), [(1, False), (2, False), (3, False), (4, True),
                                           (6, True)])
def test_random_sequences_equal_scratch(seed: int, forms: bool, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``forms``: with web-form notifications in the mail and form rules in the config
    (FORM_RULES), switched by the edits."""
    rng = random.Random(seed * 7919)
    mail = Mail(tmp_path, seed, forms=forms)
    db = str(tmp_path / "kept.sqlite")
    config = tmp_path / "replytime.toml"
    data = start_config()
    if forms:
        data["leads"] = {"forms": FORM_RULES[seed % 2]}
    config.write_text(toml(data))
    for step in range(6):
        action = rng.random()
        with open_cache(db) as cache:
            if action < 0.6 or not mail.order:
                mail.batch(cache)
                refresh_threads(cache, parse_config(data))  # what `import` does after
            elif action < 0.7:
                mail.remove_one(cache)
            else:
                mail.batch(cache)  # written, but no refresh: the next report does it
            if rng.random() < 0.4:
                data = edit_config(data, rng, forms=forms)
                config.write_text(toml(data))
            as_ofs = as_of_values(cache, rng)
        check_against_scratch(tmp_path, mail, db, config, as_ofs,
                              str(tmp_path / f"fresh{step}.sqlite"), monkeypatch)
    with open_cache(db) as cache:  # the table was kept (and used) all along
        assert kept.usable(cache, parse_config(data))


@pytest.mark.parametrize("forms", [False, True])
def test_random_sequence_postgresql(forms: bool, pg_server: Any, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(5)
    mail = Mail(tmp_path, 5, forms=forms)
    db = pg_server.create_database()
    config = tmp_path / "replytime.toml"
    data = start_config()
    if forms:
        data["leads"] = {"forms": FORM_RULES[1]}
    config.write_text(toml(data))
    for step in range(4):
        with open_cache(db) as cache:
            mail.batch(cache)
            if step % 2:
                refresh_threads(cache, parse_config(data))
            if step == 2:
                data = edit_config(data, rng, forms=forms)
                config.write_text(toml(data))
            as_ofs = as_of_values(cache, rng)
        check_against_scratch(tmp_path, mail, db, config, as_ofs,
                              pg_server.create_database(), monkeypatch)


def test_kept_frames_equal_paired_frames(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Not only the CSV cells: the lead frames themselves, every column and dtype."""
    mail = Mail(tmp_path, 11)
    data = start_config()
    data["schedules"] = {"default": {"timezone": "UTC", "monday": ["09:00-17:00"],
                                     "friday": ["09:00-17:00"]}}
    cfg = parse_config(data)
    with open_cache(tmp_path / "c.sqlite") as cache:
        for _ in range(4):
            mail.batch(cache)
        refresh_threads(cache, cfg)
        assert kept.usable(cache, cfg)
        for as_of in [at(40), at(9, 12)]:
            a = Analysis(cache, cfg, as_of=as_of)
            sel = a.selection("2026-11-02", "2026-11-16")
            got = a.select(sel)
            with no_kept_table(monkeypatch):
                b = Analysis(cache, cfg, as_of=as_of)
                want = b.select(b.selection("2026-11-02", "2026-11-16"))
                want_all = b.all_leads
            assert a.kept
            # Text columns may be str or object by what pandas infers from the rows read
            # (as in tests/test_pairing.py): the values must be equal.
            def same(x: pd.DataFrame, y: pd.DataFrame) -> None:
                text = {c: object for c in x.columns if x[c].dtype.kind in "OT"
                        or str(x[c].dtype) == "str"}
                pd.testing.assert_frame_equal(x.reset_index(drop=True).astype(text),
                                              y.reset_index(drop=True).astype(text))
            same(got, want)
            # all_leads of an unlimited analysis: every lead as of as_of
            same(a.all_leads, want_all)
            # reply blocks, thread sizes and volume from the kept tables, not the messages;
            # the reps table with its total on either basis (counted in the cache)
            def reps_total(x: Analysis, sel: Any) -> pd.DataFrame:
                return x.reps(sel, include_total=True)

            def reps_calendar(x: Analysis, sel: Any) -> pd.DataFrame:
                return x.reps(sel, basis="calendar", include_total=True)

            for period in (("2026-11-02", "2026-11-16"), (None, None)):
                reports = (Analysis.blocks, Analysis.thread_sizes, Analysis.volume,
                           Analysis.reps, reps_total, reps_calendar)
                a = Analysis(cache, cfg, as_of=as_of)
                got_frames = [f(a, a.selection(*period)) for f in reports]
                assert a.kept and "messages" not in a.__dict__
                with no_kept_table(monkeypatch):
                    b = Analysis(cache, cfg, as_of=as_of)
                    want_frames = [f(b, b.selection(*period)) for f in reports]
                for x, y in zip(got_frames, want_frames, strict=True):
                    same(x, y)


def test_volume_buckets_across_local_midnight_equal_scratch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kept volume counts messages per bucket of UTC time; a bucket that crosses local
    midnight, or that a period cuts (``--since 7d``, a week in New York time), is counted
    from its messages. Buckets of 7 h 13 ms cross midnight and every period edge: still
    the same report, after a rebuild and after new messages added to the counts."""
    monkeypatch.setattr(kept, "VOLUME_BUCKET_MS", 7 * 3600 * 1000 + 13)
    mail = Mail(tmp_path, 31)
    db = str(tmp_path / "kept.sqlite")
    config = tmp_path / "replytime.toml"
    data = start_config()
    data["team"]["timezone"] = "America/New_York"
    config.write_text(toml(data))
    with open_cache(db) as cache:
        for _ in range(2):
            mail.batch(cache)
        refresh_threads(cache, parse_config(data))  # a rebuild: every bucket counted
        buckets = cache._execute("SELECT count(*) FROM message_volume").fetchone()[0]
        mail.batch(cache)
        refresh_threads(cache, parse_config(data))  # an update: the new messages added
        assert kept.usable(cache, parse_config(data)) and buckets > 0
        as_ofs = as_of_values(cache, random.Random(3))
    check_against_scratch(tmp_path, mail, db, config, as_ofs, str(tmp_path / "fresh.sqlite"),
                          monkeypatch)


def test_form_rules_are_kept_and_label_filters_not(tmp_path: Path) -> None:
    box = Mailbox(tmp_path)
    box.send("pat@client.example", "alice@acme.example", at(1, 10))
    box.send("forms@acme.example", "sales@acme.example", at(1, 11), reply_to="jo@client.example",
             headers={"Auto-Submitted": "auto-generated"})
    data = start_config()
    data["leads"] = {"forms": [{"from": "forms@acme.example"}]}
    box.config_data = data
    a = box.analysis()
    assert a.kept
    assert a.all_leads[["kind", "lead_from"]].values.tolist() == [
        ["email", "pat@client.example"], ["form", "jo@client.example"]]
    data["leads"] = {"labels": ["INBOX"]}
    assert not Analysis(a.cache, parse_config(data), as_of=at(30)).kept


def test_stopped_during_the_update_leaves_it_exact(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped after the thread ids are written, before the kept rows are: the table is
    marked not exact, and the next report rebuilds it."""
    mail = Mail(tmp_path, 21)
    db = str(tmp_path / "kept.sqlite")
    config = tmp_path / "replytime.toml"
    data = start_config()
    config.write_text(toml(data))
    cfg = parse_config(data)
    with open_cache(db) as cache:
        mail.batch(cache)
        refresh_threads(cache, cfg)
        for _ in range(3):
            mail.batch(cache)
            with monkeypatch.context() as m:
                def stop(*args: Any, **kw: Any) -> None:
                    raise KeyboardInterrupt
                m.setattr(type(cache), "replace_kept_leads", stop)
                with pytest.raises(KeyboardInterrupt):
                    refresh_threads(cache, cfg)
            assert cache.kept_leads_state()[0] == ""  # not trusted
            assert not cache.has_unthreaded()  # the threads were done
    check_against_scratch(tmp_path, mail, db, config, [at(40).isoformat()],
                          str(tmp_path / "fresh.sqlite"), monkeypatch)
    with open_cache(db) as cache:
        assert kept.usable(cache, cfg)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_block_ranks_equal_sorted_times(backend: str, tmp_path: Path,
                                        request: pytest.FixtureRequest,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``kept_block_ranks`` (the middle of each responder's reply times, for report reps'
    overall medians) gives the times at ranks r and r + 1 of the sorted answered blocks,
    on either basis, for every responder and for all blocks together, also when more ranks
    are asked than one statement holds (here 3); nothing asked, nothing read."""
    from replytime.store import leads as store_leads

    monkeypatch.setattr(store_leads, "_RANKS_PER_QUERY", 3)
    mail = Mail(tmp_path, 41)
    db = (str(tmp_path / "kept.sqlite") if backend == "sqlite"
          else request.getfixturevalue("pg_server").create_database())
    cfg = parse_config(start_config())
    with open_cache(db) as cache:
        for _ in range(8):
            mail.batch(cache)
        refresh_threads(cache, cfg)
        as_of = int(pd.Timestamp(at(40)).value // 10**6)
        blocks = cache.kept_blocks(None, None, as_of, answered=True)
        for calendar in (False, True):
            t = (blocks["reply_time_ms"].astype("int64") - blocks["block_start_ms"]
                 if calendar else blocks["business_s"]).astype("float64")
            timed = blocks.assign(t=t)[t.notna()]
            want: dict[str | None, list[float]] = {
                r: sorted(g["t"]) for r, g in timed.groupby("responder")}
            want[None] = sorted(timed["t"])
            ranks = [(r, k) for r, times in want.items() for k in range(len(times))]
            assert len(ranks) > store_leads._RANKS_PER_QUERY  # more than one statement
            got = cache.kept_block_ranks(as_of, ranks, calendar=calendar)
            for k, (r, rank) in enumerate(ranks):
                found = sorted(got.loc[got["k"].astype("int64") == k, "t"].astype("float64"))
                assert found == want[r][rank:rank + 2], (r, rank, calendar)
            counted = cache.kept_block_replies(as_of, calendar=calendar)
            assert dict(zip(counted["responder"], counted["timed"].astype("int64"),
                            strict=True)) == {r: len(v) for r, v in want.items() if r}
        assert cache.kept_block_ranks(as_of, [], calendar=False).empty


def kept_tables(cache: Cache) -> dict[str, list[tuple[Any, ...]]]:
    return {t: sorted(tuple(r) for r in cache._execute(f"SELECT * FROM {t}").fetchall())
            for t in ("leads", "lead_blocks", "message_volume")}


@pytest.mark.parametrize("regroup", ["incremental", "full", "full-read"])
def test_update_writes_what_a_rebuild_writes(regroup: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """After each batch, the kept rows an update leaves (only the rows and columns that
    differ written) equal a rebuild's, value for value: whether the update took the
    messages the regroup held (incremental, or full and holding every message), or read
    them (after a full regroup of more than ``HELD_MESSAGES``)."""
    mail = Mail(tmp_path, 41)
    cfg = parse_config(start_config())
    read: list[int] = []
    updates: list[bool] = []
    real_read, real_update = SQLiteCache.messages_of_threads, kept.update

    def reading(self: Cache, threads: Any) -> pd.DataFrame:
        read.append(len(threads))
        return real_read(self, threads)

    def updating(cache: Cache, config: Any, state: str, changes: kept.Changes) -> None:
        updates.append(changes.messages is not None)
        real_update(cache, config, state, changes)

    monkeypatch.setattr(SQLiteCache, "messages_of_threads", reading)
    monkeypatch.setattr(kept, "update", updating)
    if regroup != "incremental":
        monkeypatch.setattr(rethread, "_regroup_new", lambda *args: None)
    if regroup == "full-read":
        monkeypatch.setattr(rethread, "HELD_MESSAGES", 0)
    with open_cache(tmp_path / "kept.sqlite") as cache:
        for _ in range(8):
            for _ in range(3):
                mail.batch(cache)
            refresh_threads(cache, cfg)
            got = kept_tables(cache)
            kept.rebuild(cache, cfg, kept.state_for(cfg))
            assert got == kept_tables(cache)
    assert updates and all(updates) == (regroup != "full-read"), updates
    assert bool(read) == (regroup == "full-read")


@pytest.mark.parametrize(("part", "forked", "forms"), [
    (7, False, False), (40, False, False), (250_000, False, False), (7, True, False),
    (250_000, True, False), (7, False, True), (40, False, True), (250_000, True, True)])
def test_rebuild_from_a_full_regroup_writes_what_reading_writes(
        part: int, forked: bool, forms: bool, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A full regroup hands every message it read to the kept-lead rebuild, which splits
    them into whole threads in start order, matched here or (``forked``) in a child process
    while the thread ids are written; the rows it writes equal those of the rebuild that
    reads the messages again period by period, value for value, however many parts either
    makes (``part`` messages a part). ``forms``: with form rules, whose leads' threads the
    held rebuild matches together."""
    from replytime.forked import Forked

    monkeypatch.setattr(kept, "PART_MESSAGES", part)
    monkeypatch.setattr(kept, "FORK_MESSAGES", 0 if forked else 10**9)
    monkeypatch.setattr(rethread, "_regroup_new", lambda *args: None)  # always in full
    mail = Mail(tmp_path, 7, forms=forms)
    data = start_config()
    if forms:
        data["leads"] = {"forms": FORM_RULES[1]}
    cfg = parse_config(data)
    held: list[int] = []
    from_child: list[bool] = []
    real, real_take = kept._rebuild_from, Forked.take

    def rebuilding(cache: Cache, config: Any, state: str, messages: pd.DataFrame,
                   matched: Any = None) -> None:
        held.append(len(messages))
        real(cache, config, state, messages, matched)

    def take(self: Forked[Any]) -> Any:
        value = real_take(self)
        if isinstance(value, kept.Kept):  # the match, after the thread keys
            from_child.append(True)
        return value

    monkeypatch.setattr(kept, "_rebuild_from", rebuilding)
    monkeypatch.setattr(Forked, "take", take)
    with open_cache(tmp_path / "kept.sqlite") as cache:
        for _ in range(4):
            mail.batch(cache)
            cache.invalidate_kept_leads()  # the next refresh rebuilds every kept row
            refresh_threads(cache, cfg)
            got = kept_tables(cache)
            assert len(got["leads"]) > 0
            kinds = {k for (k,) in cache._execute("SELECT DISTINCT kind FROM leads")}
            assert kinds == ({"email", "form"} if forms else {"email"})
            kept.rebuild(cache, cfg, kept.state_for(cfg))  # read again
            assert got == kept_tables(cache)
        assert held == sorted(held) and held[-1] == cache.message_count()
    assert len(held) == 4
    assert from_child == ([True] * 4 if forked else [])


def test_held_rebuild_matches_a_form_lead_answered_in_another_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A form lead answered by a fresh email, the prospect answering on in that thread: the
    held rebuild matches the reply's thread with the notification's (the lead's reply and
    its second block come from it) and writes what reading the messages again writes."""
    monkeypatch.setattr(rethread, "_regroup_new", lambda *args: None)  # always in full
    monkeypatch.setattr(kept, "PART_MESSAGES", 2)  # the two threads in different parts
    mail = Mail(tmp_path, 0, forms=True)
    box = mail.box
    data = start_config()
    data["leads"] = {"forms": FORM_RULES[0]}
    cfg = parse_config(data)
    box.send("wordpress@acme.example", "sales@acme.example", at(0, 9), reply_to=PROSPECT_F,
             subject="New enquiry from the site", headers={"Auto-Submitted": "auto-generated"})
    fresh = box.send("bob@acme.example", PROSPECT_F, at(0, 10), subject="Your enquiry")
    follow = box.send(PROSPECT_F, "bob@acme.example", at(0, 11), parent=fresh,
                      subject="Re: Your enquiry")
    box.send("bob@acme.example", PROSPECT_F, at(0, 13), parent=follow, subject="Re: Your enquiry")
    with open_cache(tmp_path / "kept.sqlite") as cache:
        mail.write(cache, box.blocks)
        refresh_threads(cache, cfg)
        got = kept_tables(cache)
        lead = cache._execute("SELECT kind, reply_time_ms FROM leads").fetchall()
        assert lead == [("form", at(0, 10).timestamp() * 1000)]
        blocks = cache._execute("SELECT block, reply_time_ms FROM lead_blocks ORDER BY block")
        assert blocks.fetchall() == [(1, at(0, 10).timestamp() * 1000),
                                     (2, at(0, 13).timestamp() * 1000)]
        kept.rebuild(cache, cfg, kept.state_for(cfg))  # read again
        assert got == kept_tables(cache)


@pytest.mark.parametrize("schedules", [False, True])
def test_update_derives_older_form_leads_again_when_their_threads_change(
        schedules: bool, tmp_path: Path) -> None:
    """New messages long after a form lead (past its reply window) cannot change its pair,
    but the prospect answering on in the thread of its first reply adds a reply block, and
    a reply to the notification grows the lead's thread: the update derives that lead's
    row and blocks again, equal to a rebuild's; so too an unanswered one's (``schedules``:
    with business time, whose age the update does not compute)."""
    mail = Mail(tmp_path, 0, forms=True)
    box = mail.box
    data = start_config()
    data["leads"] = {"forms": FORM_RULES[0]}  # a three-day reply window
    if schedules:
        data["schedules"] = {"default": {"timezone": "UTC", **{
            day: ["09:00-17:00"] for day in ("monday", "tuesday", "wednesday", "thursday",
                                             "friday")}}}
    cfg = parse_config(data)
    other = box.send("wordpress@acme.example", "sales@acme.example", at(0, 8),
                     reply_to="p2@client0.example", subject="New enquiry from the site",
                     headers={"Auto-Submitted": "auto-generated"})
    note = box.send("wordpress@acme.example", "sales@acme.example", at(0, 9),
                    reply_to=PROSPECT_F, subject="New enquiry from the site",
                    headers={"Auto-Submitted": "auto-generated"})
    fresh = box.send("bob@acme.example", PROSPECT_F, at(0, 10), subject="Your enquiry")
    with open_cache(tmp_path / "kept.sqlite") as cache:
        mail.write(cache, box.blocks)
        refresh_threads(cache, cfg)
        start = len(box.blocks)
        follow = box.send(PROSPECT_F, "bob@acme.example", at(10, 11), parent=fresh,
                          subject="Re: Your enquiry")
        box.send("bob@acme.example", PROSPECT_F, at(10, 13), parent=follow,
                 subject="Re: Your enquiry")
        box.send("alice@acme.example", PROSPECT_F, at(10, 14), parent=note,
                 subject="Re: New enquiry from the site")
        box.send("ops@acme.example", "carol@acme.example", at(10, 15), parent=other,
                 subject="Fwd: New enquiry from the site")  # internal only: no reply
        mail.write(cache, box.blocks[start:])
        refresh_threads(cache, cfg)  # an update: the new messages are ten days later
        got = kept_tables(cache)
        rows = cache._execute("SELECT kind, lead_time_ms, reply_id IS NULL, thread_messages "
                              "FROM leads ORDER BY lead_time_ms").fetchall()
        assert rows == [("form", at(0, 8).timestamp() * 1000, 1, 2),
                        ("form", at(0, 9).timestamp() * 1000, 0, 2)]
        blocks = cache._execute("SELECT block, reply_time_ms FROM lead_blocks "
                                "WHERE lead_id = (SELECT id FROM messages WHERE message_id = ?) "
                                "ORDER BY block", (note,))
        assert blocks.fetchall() == [(1, at(0, 10).timestamp() * 1000),
                                     (2, at(10, 13).timestamp() * 1000)]
        kept.rebuild(cache, cfg, kept.state_for(cfg))
        assert got == kept_tables(cache)


def test_a_failed_child_is_matched_in_the_parent(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A forked match that fails (here: the child dies of an error) leaves the parent to
    match the messages itself: the same rows, no error."""
    monkeypatch.setattr(kept, "FORK_MESSAGES", 0)
    monkeypatch.setattr(rethread, "_regroup_new", lambda *args: None)
    real = kept._match_parts
    parent = os.getpid()

    def failing(messages: pd.DataFrame, config: Any) -> kept.Kept:
        if os.getpid() != parent:
            raise RuntimeError("the child fails")
        return real(messages, config)

    monkeypatch.setattr(kept, "_match_parts", failing)
    mail = Mail(tmp_path, 8)
    cfg = parse_config(start_config())
    with open_cache(tmp_path / "kept.sqlite") as cache:
        for _ in range(3):
            mail.batch(cache)
        refresh_threads(cache, cfg)
        got = kept_tables(cache)
        assert len(got["leads"]) > 0
        kept.rebuild(cache, cfg, kept.state_for(cfg))
        assert got == kept_tables(cache)
