"""Benchmark: header-only import of a Maildir and an mbox, against `notmuch new`.

Target: at least 20,000 messages/s end to end on a 2-core machine, and at least
10x faster than `notmuch new` on the same Maildir. Run from the project root:

    .venv/bin/python benchmarks/bench_import.py                  # 100,000 messages
    .venv/bin/python benchmarks/bench_import.py --messages 1000000

Each import runs as its own process on a fresh cache, twice: `api` is import_paths alone
(through `python -c`), `cli` is `replytime import` as a user runs it, which also assigns
threads afterwards. Every tool starts after one untimed read of the files (warm page
cache). Peak RSS is the largest of the process and its waited-for children (wait4()).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATE = 20_000
TARGET_RATIO = 10.0

# -- a small generator of realistic sales mail (used until examples/generate.py exists) ------
_FIRST = ["ana", "ben", "chloe", "dev", "emma", "farid", "gita", "hugo", "ines", "jon", "kai",
          "lea", "mo", "nina", "omar", "pia", "quinn", "rosa", "sam", "tara"]
_DOMAINS = ["example.com", "client.example", "corp.example", "mail.example", "shop.example"]
_REPS = ["alice", "bob", "carol", "dan", "erin"]
_SUBJECTS = ["Pricing question", "Demo request", "Quote for 40 seats", "Partnership",
             "Renewal", "Integration with our CRM", "Volume discount", "Trial extension"]


def _date(t: float) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(t))


def generate(n: int, seed: int = 1) -> Iterator[bytes]:
    """n messages as bytes, in threads of 1-6 messages: a lead from outside, replies from reps,
    some newsletters (automated). Headers look like real delivered mail: Received chains,
    DKIM, MIME; bodies are short."""
    rnd = random.Random(seed)
    t = 1_767_225_600.0  # 2026-01-01
    i = 0
    while i < n:
        cust = f"{rnd.choice(_FIRST)}.{rnd.choice(_FIRST)}@{rnd.choice(_DOMAINS)}"
        rep = f"{rnd.choice(_REPS)}@acme.example"
        subject = rnd.choice(_SUBJECTS)
        t += rnd.uniform(10, 600)
        refs: list[str] = []
        automated = rnd.random() < 0.15
        for k in range(min(n - i, 1 if automated else rnd.randint(1, 6))):
            mid = f"<{i}.{rnd.getrandbits(40):x}@{'acme.example' if k % 2 else 'mx.example'}>"
            sender, to = (rep, cust) if k % 2 else (cust, "sales@acme.example")
            when = t + k * rnd.uniform(60, 20_000)
            lines = [
                f"Received: from mx{rnd.randint(1, 9)}.example (mx.example [192.0.2.{i % 250}])"
                f"\n\tby mail.acme.example with ESMTPS id {rnd.getrandbits(48):x}"
                f"\n\tfor <{to}>; {_date(when + 2)}",
                f"Received: from [10.0.0.{i % 250}] by mx.example with HTTP; {_date(when + 1)}",
                "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=s1;"
                f"\n\tbh={rnd.getrandbits(200):x}=;\n\tb={rnd.getrandbits(600):x}",
                f"From: {sender.split('@')[0].replace('.', ' ').title()} <{sender}>",
                f"To: {to}",
                f"Subject: {'Re: ' if k else ''}{subject}",
                f"Date: {_date(when)}",
                f"Message-ID: {mid}",
                "MIME-Version: 1.0",
                "Content-Type: text/plain; charset=utf-8",
            ]
            if automated:
                lines[3] = "From: Acme News <newsletter@news.example>"
                lines += ["List-Unsubscribe: <mailto:unsub@news.example>", "Precedence: bulk"]
            if k % 3 == 2:
                lines.append("Cc: sales@acme.example")
            if refs:
                lines += [f"In-Reply-To: {refs[-1]}", "References: " + " ".join(refs[-8:])]
            refs.append(mid)
            body = f"Hello,\n\nmessage {i} of the benchmark.\n\n-- \n{sender}\n"
            yield ("\n".join(lines) + "\n\n" + body).encode()
            i += 1


def local_maildir(root: Path, n: int, seed: int) -> None:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    cur = root / "cur"
    for i, msg in enumerate(generate(n, seed)):
        (cur / f"1767225600.M{i}P1.bench:2,S").write_bytes(msg)


def local_mbox(path: Path, n: int, seed: int) -> None:
    with open(path, "wb") as f:
        for msg in generate(n, seed):
            f.write(b"From MAILER-DAEMON Thu Jan  1 00:00:00 2026\n" + msg + b"\n")


def _shared_generator() -> object | None:
    """examples/generate.py (the project's example mailbox generator), if it is there."""
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import generate as shared  # type: ignore[import-not-found]
    except ImportError:
        return None
    finally:
        sys.path.pop(0)
    ok = all(hasattr(shared, f) for f in ("generate_messages", "write_maildir", "write_mbox"))
    return shared if ok else None


def write_mailboxes(maildir: Path, mbox: Path, n: int, seed: int, which: str) -> str:
    """Write n messages twice, as a Maildir and as an mbox; returns the generator's name."""
    shared = _shared_generator() if which == "examples" else None
    if which == "examples" and shared is None:
        raise SystemExit("examples/generate.py is missing: use --generator local")
    if shared is not None:
        threads = int(n / shared.MESSAGES_PER_THREAD) + 10  # type: ignore[attr-defined]

        def msgs() -> Iterator[object]:
            return shared.generate_messages(threads, seed, max_messages=n)  # type: ignore

        if not maildir.exists():
            shared.write_maildir(maildir, msgs())  # type: ignore[attr-defined]
        if not mbox.exists():
            shared.write_mbox(mbox, msgs())  # type: ignore[attr-defined]
        return "examples/generate.py"
    if not maildir.exists():
        local_maildir(maildir, n, seed)
    if not mbox.exists():
        local_mbox(mbox, n, seed)
    return "benchmarks/bench_import.py --generator local (Received chains, DKIM)"


# -- measuring -------------------------------------------------------------------------------
def run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MiB) and CPU seconds (user + system, its worker processes
    included) of one command run as a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err}")
    return seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def cli_command(path: Path, db: Path) -> list[str]:
    """`replytime import` as a user runs it (the CLI also assigns threads afterwards)."""
    cli = Path(sys.executable).with_name("replytime")
    return [str(cli), "--db", str(db), "import", str(path), "--account", "bench"]


def api_command(path: Path, db: Path) -> list[str]:
    """The import alone (connectors/files.py), without the CLI's thread assignment."""
    code = (
        "import sys; from pathlib import Path; from replytime.store import open_cache; "
        "from replytime.sources.files import import_paths; "
        "import_paths(open_cache(sys.argv[1]), [Path(sys.argv[2])], account='bench')"
    )
    return [sys.executable, "-c", code, str(db), str(path)]


def fresh(db: Path) -> Path:
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    return db


def count_messages(db: Path) -> int:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM messages").fetchone()[0]


def warm(path: Path) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                while f.read(1 << 20):
                    pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--generator", choices=("examples", "local"), default="examples",
                    help="examples/generate.py (default) or this script's heavier headers")
    ap.add_argument("--workdir", type=Path, help="keep generated data here (reused if present)")
    ap.add_argument("--no-notmuch", action="store_true", help="skip the notmuch comparison")
    ap.add_argument("--no-cli", action="store_true", help="time the import API only")
    args = ap.parse_args()

    tmp = None
    if args.workdir is None:
        tmp = tempfile.mkdtemp(prefix="replytime-bench-")
        work = Path(tmp)
    else:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)
    n = args.messages
    tag = f"{args.generator}-{n}-{args.seed}"
    maildir, mbox = work / f"maildir-{tag}", work / f"mbox-{tag}.mbox"
    try:
        start = time.perf_counter()
        source = write_mailboxes(maildir, mbox, n, args.seed, args.generator)
        print(f"generator: {source}; {n:,} messages as a Maildir and as an mbox "
              f"({mbox.stat().st_size / 2**20:.0f} MiB); {time.perf_counter() - start:.1f}s")
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} "
              "before the runs")

        results: dict[str, float] = {}
        kinds = [("api", api_command)] + ([] if args.no_cli else [("cli", cli_command)])
        for name, path in (("maildir", maildir), ("mbox", mbox)):
            warm(path)
            for kind, command in kinds:
                db = fresh(work / f"cache-{name}-{kind}.sqlite")
                seconds, rss, cpu = run(command(path, db))
                stored = count_messages(db)
                results[f"{name}-{kind}"] = seconds
                ok = "ok" if n / seconds >= TARGET_RATE else "BELOW TARGET"
                print(f"{kind} import {name:8s}: {seconds:6.2f}s {n / seconds:9,.0f} msg/s  "
                      f"cpu {cpu:6.2f}s  peak RSS {rss:5.0f} MiB  stored {stored:,}  "
                      f"[{ok}: >= {TARGET_RATE:,}/s]")
                again, _, _ = run(command(path, db))
                print(f"   again, nothing new   : {again:6.2f}s")
        print("commands:")
        for _, command in kinds:
            print("  " + " ".join(command(maildir, work / "cache.sqlite")))

        if not args.no_notmuch and shutil.which("notmuch"):
            nm = work / "notmuch"
            shutil.rmtree(nm, ignore_errors=True)
            (nm / "db").mkdir(parents=True)
            config = nm / "config"
            config.write_text(
                f"[database]\npath={nm / 'db'}\nmail_root={maildir}\n"
                "[new]\ntags=unread;inbox\n[maildir]\nsynchronize_flags=false\n"
            )
            env = dict(os.environ, NOTMUCH_CONFIG=str(config))
            warm(maildir)
            seconds, rss, cpu = run(["notmuch", "new", "--quiet"], env)
            print(f"notmuch new maildir : {seconds:6.2f}s {n / seconds:9,.0f} msg/s  "
                  f"cpu {cpu:6.2f}s  peak RSS {rss:5.0f} MiB")
            print(f"  (NOTMUCH_CONFIG={config} notmuch new --quiet)")
            for kind, _ in kinds:
                ratio = seconds / results[f"maildir-{kind}"]
                ok = "ok" if ratio >= TARGET_RATIO else "BELOW TARGET"
                print(f"  {kind} import is {ratio:5.1f}x faster than notmuch new "
                      f"[{ok}: >= {TARGET_RATIO:.0f}x]")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
