"""Incremental regrouping (analysis/rethread.py) is exact: after random imports of new
messages that reply into old threads, join two old threads, follow up by subject within
and beyond the subject rule's 14 days, carry provider thread ids, or arrive before the
messages they answer (a placeholder filled, a new earliest message), every thread id, the
threads and thread_links tables and the thread_keys rows equal those of a full regroup
(``refresh_threads(force=True)``) of the same mail, on SQLite and PostgreSQL; and the
incremental path, not the full one, did the work."""

from __future__ import annotations

import os
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from replytime.analysis import rethread
from replytime.api import refresh_threads
from replytime.config import parse_config
from replytime.sources.headers import parse_header_block
from replytime.store import Cache, open_cache, sqlite
from tests.mailbuilder import BASE_CONFIG, Mailbox, at

INTERNAL = ["alice@acme.example", "bob@acme.example", "carol@acme.example",
            "sales@acme.example"]
SUBJECTS = ["Pricing", "Demo request", "Re: Pricing", "AW: [sales] demo  request", ""]


class Mail:
    """Generated mail, written in random order: each message's block, by message id."""

    def __init__(self, tmp: Path, seed: int) -> None:
        self.rng = random.Random(seed)
        self.box = Mailbox(tmp)
        self.sent: list[tuple[str, str, Any]] = []  # (message id, prospect, time)
        self.pending: list[bytes] = []  # generated, not yet imported

    def _when(self, near: Any = None) -> Any:
        r = self.rng
        if r.random() < 0.03:
            return None
        if near is not None and r.random() < 0.7:
            # a follow-up: inside or just outside the subject rule's window
            return near + timedelta(days=r.choice([1, 5, 13, 14, 15, 30]), minutes=r.randrange(60))
        return at(r.randrange(0, 60), r.randrange(24), r.randrange(60))

    def message(self) -> None:
        r = self.rng
        kind = r.random()
        headers: dict[str, str] = {}
        if r.random() < 0.05:
            headers["Auto-Submitted"] = "auto-replied"
        if r.random() < 0.08:
            headers["X-GM-THRID"] = str(r.randrange(6))
        if not self.sent or kind < 0.35:  # a new thread, or a follow-up without headers
            prospect = f"p{r.randrange(6)}@client.example"
            near = r.choice(self.sent)[2] if self.sent and r.random() < 0.5 else None
            when = self._when(near)
            frm, to = (prospect, r.choice(INTERNAL)) if r.random() < 0.8 else (
                r.choice(INTERNAL), prospect)
            cc = [f"p{r.randrange(6)}@client.example"] if r.random() < 0.15 else []
            mid = self.box.send(frm, to, when, cc=cc, subject=r.choice(SUBJECTS),
                                headers=headers)
        else:
            parent, prospect, near = r.choice(self.sent)
            refs = None
            if kind > 0.85 and len(self.sent) > 1:  # references two threads at once
                refs = [r.choice(self.sent)[0], parent]
            elif kind > 0.75:  # a reply to a message nobody has (a placeholder)
                parent = f"lost{r.randrange(8)}@elsewhere.example"
            when = self._when(near)
            frm, to = (r.choice(INTERNAL), prospect) if r.random() < 0.6 else (
                prospect, r.choice(INTERNAL))
            mid = self.box.send(frm, to, when, parent=parent, refs=refs,
                                subject="Re: " + r.choice(SUBJECTS), headers=headers)
        self.sent.append((mid, prospect, when))
        self.pending.append(self.box.blocks[-1])

    def write(self, caches: list[Cache], count: int) -> None:
        """Generate ``count`` messages and import a random part of what is pending (so
        replies may come before what they answer), into every cache."""
        for _ in range(count):
            self.message()
        self.rng.shuffle(self.pending)
        take = self.pending[: max(1, int(len(self.pending) * self.rng.uniform(0.3, 1)))]
        self.pending = self.pending[len(take):]
        for cache in caches:
            start = cache.message_count()
            cache.write_batch("test", [(f"test/{start + i}", parse_header_block(b))
                                       for i, b in enumerate(take)])


def state(cache: Cache) -> dict[str, Any]:
    def rows(sql: str) -> list[tuple[Any, ...]]:
        return sorted(tuple(r) for r in cache._execute(sql).fetchall())

    return {
        "ids": rows("SELECT msg_key, thread_id FROM messages"),
        "threads": rows("SELECT thread_id, start_ms, first_ms, last_ms, messages, rule "
                        "FROM threads"),
        "links": rows("SELECT thread_id, joined_key, to_key, address FROM thread_links"),
        "keys": rows("SELECT key, thread_id FROM thread_keys"),
    }


def config(seed: int) -> Any:
    data = dict(BASE_CONFIG)
    if seed % 2:  # a roster that counts a client address as internal
        data["reps"] = [*BASE_CONFIG["reps"], {"name": "Dee", "emails": ["p3@client.example"]}]
    return parse_config(data)


def check(db: str, tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sixteen random imports into ``db`` (regrouped as `import` does) and into a SQLite
    twin regrouped in full each time: the same thread state after every one."""
    cfg = config(seed)
    mail = Mail(tmp_path, seed)
    regroups: list[int | None] = []
    real = rethread._regroup_new

    def counted(*args: Any) -> int | None:
        regroups.append(real(*args))
        return regroups[-1]

    monkeypatch.setattr(rethread, "_regroup_new", counted)
    with open_cache(db) as cache, open_cache(tmp_path / "twin.sqlite") as full:
        for step in range(16):
            mail.write([cache, full], mail.rng.randrange(1, 15))
            refresh_threads(cache, cfg)
            refresh_threads(full, cfg, force=True)
            assert state(cache) == state(full), f"step {step}"
    # The first refresh (no thread fingerprint yet) regroups everything and fills
    # thread_keys; every later one is incremental.
    assert len(regroups) == 15 and None not in regroups, regroups


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6, 7, 8])
def test_incremental_equals_full(seed: int, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    check(str(tmp_path / "cache.sqlite"), tmp_path, seed, monkeypatch)


@pytest.mark.parametrize("seed", [1, 2])
def test_incremental_equals_full_postgresql(seed: int, pg_server: Any, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    check(pg_server.create_database(), tmp_path, seed, monkeypatch)


@pytest.mark.parametrize("child", ["works", "fails"])
def test_a_full_regroup_takes_its_keys_from_the_child(
        child: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full regroup whose kept-lead match runs in a forked child computes the
    thread_keys there too and writes them after the thread ids; the parent computes them
    when the child fails. Either way the thread state (keys included), threads_max_id and
    the kept tables equal those of a regroup that computes everything in one process."""
    from replytime.analysis import kept

    cfg = config(3)
    mail = Mail(tmp_path, 3)
    where = tmp_path / "key-pids"
    real = rethread.link_keys
    parent = os.getpid()

    def recorded(*args: Any) -> Any:
        with where.open("a") as f:
            f.write(f"{os.getpid()}\n")
        if child == "fails" and os.getpid() != parent:
            raise RuntimeError("the child fails")
        return real(*args)

    monkeypatch.setattr(rethread, "link_keys", recorded)

    def tables(cache: Cache) -> dict[str, Any]:
        return {**state(cache), "top": cache.threads_max_id(),
                **{t: sorted(cache._execute(f"SELECT * FROM {t}").fetchall())
                   for t in ("leads", "lead_blocks", "message_volume")}}

    with open_cache(tmp_path / "forked.sqlite") as forked, \
            open_cache(tmp_path / "inline.sqlite") as inline:
        for step in range(4):
            mail.write([forked, inline], mail.rng.randrange(5, 40))
            where.unlink(missing_ok=True)
            for cache in (forked, inline):
                cache.invalidate_kept_leads()  # every kept row rebuilt, not updated
            monkeypatch.setattr(kept, "FORK_MESSAGES", 0)
            refresh_threads(forked, cfg, force=True)
            pids = [int(p) for p in where.read_text().split()]
            # computed once in the child; failing there, once more here
            assert pids[0] != parent and pids[1:] == ([parent] if child == "fails" else [])
            monkeypatch.setattr(kept, "FORK_MESSAGES", 10**9)
            refresh_threads(inline, cfg, force=True)
            got = tables(forked)
            assert got == tables(inline), f"step {step}"
            assert got["top"] == forked.last_message_id() and got["keys"] and got["leads"]


@pytest.mark.parametrize("where", ["sqlite", "postgresql"])
def test_a_component_leaving_a_subject_group(where: str, tmp_path: Path,
                                             request: pytest.FixtureRequest) -> None:
    """A new first message gives an old reply's thread another subject: the reply leaves
    its old (subject, participant) group, so the threads before and after it there become
    neighbours and the subject rule joins them (V 10 days after U's last message)."""
    db = (str(tmp_path / "cache.sqlite") if where == "sqlite"
          else request.getfixturevalue("pg_server").create_database())
    box = Mailbox(tmp_path)
    p = "p1@client.example"
    u = box.send(p, "sales@acme.example", at(0), subject="Pricing")
    box.send(p, "sales@acme.example", at(10), subject="Re: Pricing", parent=u)
    box.send(p, "sales@acme.example", at(2), subject="Re: Pricing", parent="orig@client.example")
    v = box.send(p, "sales@acme.example", at(20), subject="Pricing")
    box.send(p, "sales@acme.example", at(1), subject="Demo request",
             message_id="orig@client.example")
    cfg = parse_config(BASE_CONFIG)
    with open_cache(db) as cache, open_cache(tmp_path / "twin.sqlite") as full:
        for blocks in (box.blocks[:4], box.blocks[4:]):
            for c in (cache, full):
                start = c.message_count()
                c.write_batch("test", [(f"test/{start + i}", parse_header_block(b))
                                       for i, b in enumerate(blocks)])
            refresh_threads(cache, cfg)
            refresh_threads(full, cfg, force=True)
            assert state(cache) == state(full)
        ids = dict(state(cache)["ids"])
        assert ids[v] == ids[u] == u  # joined by the subject rule
        assert cache.threads_max_id() == 5


def test_checkpoints_beside_the_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite commits without checkpointing (the import's commits no longer copy the WAL
    into the file and fsync it); a thread does it once CHECKPOINT_FRAMES frames wait, and
    the writer waits for it before its next write and at the end of a refresh, so the WAL
    stays as short as SQLite's own checkpoints kept it. Closed, the file alone holds
    everything: no WAL left, the same thread state as a full regroup."""
    monkeypatch.setattr(sqlite, "CHECKPOINT_FRAMES", 20)
    cfg = config(4)
    mail = Mail(tmp_path, 4)
    db = tmp_path / "cache.sqlite"
    backlogs = []
    with open_cache(db) as cache, open_cache(tmp_path / "twin.sqlite") as full:
        assert cache._execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        shm = os.open(tmp_path / "cache.sqlite-shm", os.O_RDONLY)
        for _ in range(12):
            mail.write([cache, full], mail.rng.randrange(5, 30))
            refresh_threads(cache, cfg)
            refresh_threads(full, cfg, force=True)
            backlogs.append(sqlite._wal_backlog(shm))
        os.close(shm)
        want = state(full)
    assert all(b is not None and b < 20 for b in backlogs), backlogs
    assert not (tmp_path / "cache.sqlite-wal").exists()
    with open_cache(db) as cache:
        assert state(cache) == want
