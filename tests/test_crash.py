"""`replytime import` killed, interrupted or raced, through the real console script.

A generated mailbox (examples/generate.py) of 10,500 messages, as one mbox and as a
Maildir, is imported by ``replytime --db X import PATH`` processes that are SIGKILLed at
seeded random points, interrupted with SIGINT / SIGTERM, or run two at a time on one cache.
Whatever happens, a rerun must end with exactly the cache of one uninterrupted import, and
SQLite must find the file intact (docs/architecture.md, "Sync state").
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(sys.executable).with_name("replytime")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SEED = 20261107  # every random choice below derives from it: reruns kill at the same points
N_THREADS = 3400
N_MESSAGES = 10_500  # three write batches (the importer writes 5,000 at a time)
KILLS = 20  # per format
CHAINS = 2  # kills are spread over at least this many caches, each finished by a clean rerun
FORMATS = ("mbox", "maildir")

Dump = dict[str, list[tuple[Any, ...]]]


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("replytime_example_generate",
                                                  EXAMPLES / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


@dataclass
class Mail:
    root: Path
    paths: dict[str, Path]
    count: int
    env: dict[str, str]
    references: dict[str, Dump] = field(default_factory=dict)
    timelines: dict[str, Timeline] = field(default_factory=dict)


@pytest.fixture(scope="module")
def mail(tmp_path_factory: pytest.TempPathFactory) -> Mail:
    gen = load_generator()
    root = tmp_path_factory.mktemp("crash")
    messages = list(gen.generate_messages(N_THREADS, seed=SEED, max_messages=N_MESSAGES))
    gen.write_mbox(root / "mail.mbox", messages)
    gen.write_maildir(root / "Maildir", messages)
    home = root / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLYTIME_")}
    # No config anywhere (an empty one is fine for an import), nothing of the user's.
    env.update(NO_COLOR="1", HOME=str(home), XDG_CONFIG_HOME=str(home / "config"),
               XDG_DATA_HOME=str(home / "data"))
    m = Mail(root, {"mbox": root / "mail.mbox", "maildir": root / "Maildir"},
             len({g.message_id for g in messages}), env)
    assert m.count == N_MESSAGES
    return m


# Run by a tiny launcher: a test runner started in the background ignores SIGINT, and its
# children would inherit that; the console script must see SIGINT as a terminal sends it.
DEFAULT_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                  "os.execv(sys.argv[1], sys.argv[1:])")


def start(mail: Mail, db: Path, fmt: str, *, stderr: Any = subprocess.DEVNULL
          ) -> subprocess.Popen[bytes]:
    # A session of its own: the test can signal the whole group like a terminal's Ctrl-C,
    # and clean up parser workers orphaned by a SIGKILL.
    return subprocess.Popen([sys.executable, "-c", DEFAULT_SIGINT, str(SCRIPT), "--db", str(db),
                             "import", str(mail.paths[fmt])],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                            cwd=mail.root / "home", env=mail.env, start_new_session=True)


def reap_group(pgid: int) -> None:
    """SIGKILL what is left of a process group this test started (orphaned pool workers)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def finish(mail: Mail, db: Path, fmt: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(SCRIPT), "--db", str(db), "import", str(mail.paths[fmt])],
                       capture_output=True, text=True, cwd=mail.root / "home", env=mail.env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    # A Maildir's files imported before the stop are passed over, not read again; an mbox
    # is recorded only once all of it is stored, so one stopped midway is read again.
    m = re.match(r"imported (\d+) messages \(0 skipped(?:, (\d+) files? unchanged)?\) "
                 r"from 1 path\(s\)", r.stderr)
    assert m is not None, r.stderr
    if fmt == "maildir":  # one message a file
        assert int(m[1]) + int(m[2] or 0) == mail.count
    else:  # stopped before all of it was stored, or after
        assert (int(m[1]), m[2]) in ((mail.count, None), (0, "1"))
    return r


def _without_folders(state: str) -> dict[str, object]:
    from replytime.sources.files import FOLDERS_STATE

    out = json.loads(state)
    out.pop(FOLDERS_STATE, None)
    return out


def dump(db: Path) -> Dump:
    """Everything an import writes, in a stable order; row ids and sync times left out."""
    con = sqlite3.connect(db)
    try:
        q = con.execute
        return {
            "integrity": q("PRAGMA integrity_check").fetchall(),
            "messages": q(
                "SELECT msg_key, message_id, from_addr, to_addrs, cc_addrs, reply_to, subject, "
                "time_ms, time_offset, time_source, in_reply_to, refs, automated, content_type, "
                "provider_thread_id, extra, problems, thread_id FROM messages ORDER BY msg_key"
            ).fetchall(),
            "locations": q("SELECT account, location, msg_key, labels FROM locations "
                           "ORDER BY account, location").fetchall(),
            "skipped": q("SELECT account, location, reason FROM skipped "
                         "ORDER BY account, location").fetchall(),
            # Without the Maildir folders' mtimes, which like the files table say when
            # files were read, not what the cache holds (files.FOLDERS_STATE).
            "accounts": [(n, t, _without_folders(st)) for n, t, st in q(
                "SELECT name, type, state FROM accounts ORDER BY name").fetchall()],
            "meta": q("SELECT key, value FROM meta ORDER BY key").fetchall(),
            "schema": q("SELECT version FROM schema_version").fetchall(),
        }
    finally:
        con.close()


def progress(db: Path) -> tuple[int, int] | None:
    """(messages, messages without a thread) committed so far; None before the schema."""
    if not db.exists():
        return None
    con = sqlite3.connect(db)
    try:
        return (con.execute("SELECT count(*) FROM messages").fetchone()[0],
                con.execute("SELECT count(*) FROM messages WHERE thread_id IS NULL"
                            ).fetchone()[0])
    except sqlite3.OperationalError:  # the schema is not there yet
        return None
    finally:
        con.close()


# What a clean import is doing, in order; a kill is labelled by the phase its time falls in.
PHASES = ("opening and parsing", "writing batches", "threading", "exiting")


@dataclass
class Timeline:
    opened: float  # s after the start: the cache file exists
    marks: tuple[float, float, float, float]  # ends of PHASES

    def phase(self, t: float) -> str:
        return next((p for p, end in zip(PHASES, self.marks, strict=True) if t < end),
                    PHASES[-1])


def timed_reference(mail: Mail, fmt: str) -> tuple[Dump, Timeline]:
    """A clean import, watched: when it opens the cache, commits its first and last batch,
    has every message threaded, exits."""
    db = mail.root / f"reference-{fmt}.sqlite"
    began = time.monotonic()
    proc = start(mail, db, fmt)
    seen: dict[str, float] = {}
    while proc.poll() is None:
        now = time.monotonic() - began
        got = progress(db)
        if db.exists():
            seen.setdefault("opened", now)
        if got and got[0]:
            seen.setdefault("first batch", now)
        if got and got[0] == mail.count:
            seen.setdefault("last batch", now)
        if got and got[0] == mail.count and not got[1]:
            seen.setdefault("threaded", now)
        time.sleep(0.003)
    end = time.monotonic() - began
    assert proc.returncode == 0
    ref = dump(db)
    assert ref["integrity"] == [("ok",)]
    assert len(ref["messages"]) == mail.count
    assert len(ref["locations"]) == mail.count and ref["skipped"] == []
    assert all(row[-1] is not None for row in ref["messages"])  # every message threaded
    marks = [seen.get(k, end) for k in ("first batch", "last batch", "threaded")]
    return ref, Timeline(seen.get("opened", 0.0), (marks[0], marks[1], marks[2], end))


def reference(mail: Mail, fmt: str) -> Dump:
    """The cache of one uninterrupted import."""
    if fmt not in mail.references:
        mail.references[fmt], mail.timelines[fmt] = timed_reference(mail, fmt)
    return mail.references[fmt]


@dataclass
class KillReport:
    fmt: str
    kills: int = 0
    finished_first: int = 0
    phases: dict[str, int] = field(default_factory=dict)
    mismatches: list[str] = field(default_factory=list)


def kill_and_resume(mail: Mail, fmt: str) -> KillReport:
    ref = reference(mail, fmt)
    timeline = mail.timelines[fmt]
    rng = random.Random(f"{SEED}-{fmt}")
    report = KillReport(fmt)
    # The kill lands at a random fraction of a clean run, counted from the moment it opens
    # the cache (before that it only loads Python modules and cannot hurt anything). Each
    # chain's cache is killed again and again, then a last run must finish the work. A
    # chain also ends when a rerun finishes its work before the kill (a Maildir's reruns
    # read only the files not imported yet, so they get shorter); chains go on until the
    # format has had all its kills.
    t0, t1 = timeline.opened, timeline.marks[-1]
    per_chain = KILLS // CHAINS
    chain = 0
    # The window [lo, end) shrinks when runs are quicker than the timed one (less load by
    # then: a timed run on a loaded machine can open its cache later than any rerun ends).
    lo, end = t0, t1
    while report.kills < KILLS:
        db = mail.root / f"killed-{fmt}-{chain}.sqlite"
        chain += 1
        kills = 0
        while kills < min(per_chain, KILLS - report.kills):
            assert report.finished_first < 10 * KILLS, "the import kept finishing first"
            errors = db.with_name(db.name + ".stderr")  # what a run said, should it fail
            with errors.open("wb") as err:
                proc = start(mail, db, fmt, stderr=err)
            at = lo + rng.random() * (end - lo)
            time.sleep(at)
            if proc.poll() is not None:
                report.finished_first += 1
                assert proc.returncode == 0, errors.read_text()
                if kills:
                    break
                lo, end = lo * 0.8, lo * 0.8 + (end - lo) * 0.8
                continue
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            reap_group(proc.pid)
            kills += 1
            # ... and grows back after a kill, so kill points keep spanning a whole run.
            lo, end = min(t0, lo * 1.1), min(t1, min(t0, lo * 1.1) + (end - lo) * 1.1)
            phase = timeline.phase(at)
            report.phases[phase] = report.phases.get(phase, 0) + 1
        report.kills += kills
        finish(mail, db, fmt)
        got = dump(db)
        for key in ref:
            if got[key] != ref[key]:
                report.mismatches.append(f"chain {chain}: {key} differs")
    return report


def test_sigkill_at_random_points_then_rerun_gives_the_uninterrupted_cache(mail: Mail) -> None:
    # Both formats at once (references too, so they are timed under the same load): the kill
    # points are random anyway, and it halves the wait.
    with ThreadPoolExecutor(len(FORMATS)) as pool:
        list(pool.map(lambda f: reference(mail, f), FORMATS))
        reports = list(pool.map(lambda f: kill_and_resume(mail, f), FORMATS))
    summary = {r.fmt: {"kills": r.kills, "phases": r.phases, "finished first": r.finished_first}
               for r in reports}
    print(f"\nkills survived (seed {SEED}): {summary}")
    for r in reports:
        assert r.mismatches == [], (r.fmt, r.mismatches, SEED)
        assert r.kills == KILLS
        # Where the kills landed (parsing, writing, threading) is printed above, not
        # asserted: how long each phase lasts depends on the machine's load.


def wait_for_first_batch(db: Path, proc: subprocess.Popen[bytes]) -> None:
    """Until the import has committed at least one batch (read side by side: WAL)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        got = progress(db)
        if got and got[0]:
            return
        time.sleep(0.005)
    raise AssertionError(f"no batch committed while the import ran (exit {proc.returncode})")


# (signal, to the whole process group like a terminal's Ctrl-C, exit code, stderr line)
INTERRUPTS = [
    (signal.SIGINT, False, 130, "replytime: interrupted; work done so far is saved"),
    (signal.SIGINT, True, 130, "replytime: interrupted; work done so far is saved"),
    (signal.SIGTERM, False, 143, "replytime: terminated; work done so far is saved"),
]


@pytest.mark.parametrize(("sig", "group", "code", "line"), INTERRUPTS,
                         ids=["sigint", "ctrl-c-group", "sigterm"])
def test_interrupt_stops_cleanly_keeps_work_and_rerun_completes(
    mail: Mail, sig: signal.Signals, group: bool, code: int, line: str
) -> None:
    # Maildir: the importer runs its pool of parser processes, which must stay quiet too.
    ref = reference(mail, "maildir")
    db = mail.root / f"interrupted-{sig.name}-{int(group)}.sqlite"
    err = mail.root / f"interrupted-{sig.name}-{int(group)}.stderr"
    with err.open("wb") as f:
        proc = start(mail, db, "maildir", stderr=f)
        try:
            wait_for_first_batch(db, proc)
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
            rc = proc.wait(timeout=60)
        finally:
            reap_group(proc.pid)
    assert (rc, err.read_text()) == (code, line + "\n")
    partial = dump(db)
    assert partial["integrity"] == [("ok",)]
    assert 0 < len(partial["messages"]) <= N_MESSAGES
    assert len(partial["locations"]) == len(partial["messages"])  # whole batches only
    finish(mail, db, "maildir")
    assert dump(db) == ref


def holds_flock(path: Path, pid: int) -> bool:
    """Whether process ``pid`` holds a flock on ``path`` (from /proc/locks: no probing lock
    of our own that could make the process under test fail)."""
    try:
        ino = path.stat().st_ino
    except FileNotFoundError:
        return False
    for row in Path("/proc/locks").read_text().splitlines():
        parts = row.split()
        if len(parts) > 5 and parts[1] == "FLOCK" and parts[4] == str(pid) and (
            parts[5].rsplit(":", 1)[-1] == str(ino)
        ):
            return True
    return False


def wait_until(check: Callable[[], bool], proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while not check():
        assert proc.poll() is None and time.monotonic() < deadline, proc.returncode
        time.sleep(0.002)


def test_second_import_on_a_locked_cache_exits_1_and_the_cache_stays_whole(mail: Mail) -> None:
    ref = reference(mail, "mbox")
    db = mail.root / "raced.sqlite"
    first = start(mail, db, "mbox")
    try:
        digest = hashlib.sha1(b"import").hexdigest()[:12]  # the account's lock file
        lock = db.with_name(db.name + ".locks") / f"account-import-{digest}.lock"
        wait_until(lambda: holds_flock(lock, first.pid), first)
        # Frozen while it holds the lock, so the second one surely meets it. (WAL: the
        # second one's open only reads, even if the first stopped inside a transaction.)
        first.send_signal(signal.SIGSTOP)
        second = subprocess.run([str(SCRIPT), "--db", str(db), "import", str(mail.paths["mbox"])],
                                capture_output=True, text=True, cwd=mail.root / "home",
                                env=mail.env, timeout=120)
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=120) == 0
    finally:
        reap_group(first.pid)
    assert (second.returncode, second.stdout, second.stderr) == (
        1, "", f"replytime: error: account 'import' is being imported or synced into {db} by "
               "another replytime process; try again when it has finished\n")
    assert dump(db) == ref
