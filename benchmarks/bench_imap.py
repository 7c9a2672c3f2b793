"""IMAP sync throughput against a local Dovecot, side by side with mbsync (isync).

    .venv/bin/python benchmarks/bench_imap.py [--messages 100000] [--chunks 250,500,1000,2000]

Generates a sales mailbox with examples/generate.py (INBOX: mail from outside, "Sent Items":
mail from acme.example), serves it with a throw-away Dovecot (tests/dovecot.py) and measures:

- first sync, cold: Dovecot has never seen the Maildir (it builds its index while we fetch);
- mbsync, cold: the same on an identical fresh copy of the Maildir, pulling into a local
  Maildir (what mbsync does: whole messages);
- both again, warm: Dovecot's index exists and the files are in the page cache;
  mbsync runs with ``FSync no`` (its fastest); ``--mbsync-fsync`` adds its default setting;
- incremental sync with nothing new;
- messages/s of a warm first sync for several FETCH chunk sizes.

Targets (PRODUCT.md section 6): >= 10,000 messages/s, >= 5x mbsync, nothing new < 1 s.
Figures are printed; the exit status is 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "examples"))

from dovecot import Dovecot, require_binaries  # noqa: E402
from generate import generate_messages  # noqa: E402

from replytime.cache import open_cache  # noqa: E402
from replytime.config import Account, Config  # noqa: E402
from replytime.connectors.imap import sync  # noqa: E402

SENT = "Sent Items"
PASSWORD_ENV = "REPLYTIME_BENCH_IMAP_PASSWORD"


def fill(d: Dovecot, n: int) -> tuple[int, int]:
    """Write n generated messages into the server's Maildir; INTERNALDATE = Date."""
    inbox: list[tuple[bytes, int]] = []
    sent: list[tuple[bytes, int]] = []
    for m in generate_messages(n_threads=n // 3 + 1000, seed=7, max_messages=n):
        (sent if m.sender.lower().endswith("@acme.example") else inbox).append((m.raw, m.ts))
    return d.add_many("INBOX", iter(inbox)), d.add_many(SENT, iter(sent))


def our_sync(d: Dovecot, db: Path, chunk: int | None = None) -> tuple[float, int]:
    options = d.account_options(password_env=PASSWORD_ENV, folders=["INBOX", SENT])
    if chunk:
        options["fetch_chunk"] = chunk
    cache = open_cache(db)
    try:
        t = time.perf_counter()
        stats = sync(cache, Account("bench", "imap", options), Config())
        return time.perf_counter() - t, stats.fetched
    finally:
        cache.close()


def mbsync(d: Dovecot, work: Path, fsync: bool = False) -> tuple[float, int]:
    """Pull both folders with mbsync into a fresh local Maildir; (seconds, messages)."""
    local = work / "mbsync-local"
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)
    pwfile = work / "pw"
    pwfile.write_text(d.password)
    pwfile.chmod(0o600)
    rc = work / "mbsyncrc"
    rc.write_text(
        # mbsync's default fsyncs every message it stores, which makes it several times
        # slower; by default we compare with its fastest setting (FSync no).
        f"FSync {'yes' if fsync else 'no'}\n\n"
        f"IMAPAccount bench\nHost 127.0.0.1\nPort {d.port}\nUser {d.user}\n"
        f'PassCmd "cat {pwfile}"\nSSLType None\nAuthMechs LOGIN\n\n'
        "IMAPStore remote\nAccount bench\n\n"
        f"MaildirStore local\nPath {local}/\nInbox {local}/INBOX\nSubFolders Verbatim\n\n"
        "Channel bench\nFar :remote:\nNear :local:\n"
        f'Patterns INBOX "{SENT}"\nCreate Near\nSync Pull\nSyncState *\n'
    )
    t = time.perf_counter()
    done = subprocess.run(["mbsync", "-q", "-c", str(rc), "bench"], capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"mbsync failed: {done.stderr.decode(errors='replace')}")
    seconds = time.perf_counter() - t
    count = sum(len(os.listdir(p)) for p in local.rglob("cur"))
    count += sum(len(os.listdir(p)) for p in local.rglob("new"))
    return seconds, count


def fresh_copy(src: Dovecot, root: Path) -> Dovecot:
    """A second server over an identical Maildir that Dovecot has never indexed."""
    d = Dovecot(root)
    d.start()
    d.stop()  # creates the (empty) data directories with the right owner
    shutil.rmtree(d.maildir, ignore_errors=True)
    shutil.copytree(src.maildir, d.maildir, symlinks=True,
                    ignore=shutil.ignore_patterns("dovecot*"))
    if os.getuid() == 0:
        for p in [d.maildir, *d.maildir.rglob("*")]:
            if p.is_dir():
                os.chown(p, d.mail_uid, d.mail_gid)
    return d.start()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--chunks", default="250,500,1000,2000,5000")
    ap.add_argument("--mbsync-fsync", action="store_true",
                    help="also time mbsync with its default FSync yes (slow: minutes)")
    args = ap.parse_args(argv)
    require_binaries("dovecot", "mbsync", "openssl")
    work = Path(tempfile.mkdtemp(prefix="replytime-bench-imap-"))
    servers: list[Dovecot] = []
    try:
        a = Dovecot(work / "a").start()
        servers.append(a)
        os.environ[PASSWORD_ENV] = a.password
        t = time.perf_counter()
        n_inbox, n_sent = fill(a, args.messages)
        n = n_inbox + n_sent
        print(f"mailbox: {n} messages (INBOX {n_inbox}, {SENT} {n_sent}), "
              f"written in {time.perf_counter() - t:.1f} s")
        b = fresh_copy(a, work / "b")
        servers.append(b)

        cold_s, fetched = our_sync(a, work / "cold.sqlite")
        assert fetched == n, (fetched, n)
        mb_cold_s, mb_count = mbsync(b, work)
        assert mb_count == n, (mb_count, n)
        warm_s, _ = our_sync(a, work / "warm.sqlite")
        mb_warm_s, _ = mbsync(b, work)
        mb_fsync_s = mbsync(b, work, fsync=True)[0] if args.mbsync_fsync else None
        again = []
        for _ in range(3):
            again.append(our_sync(a, work / "cold.sqlite"))
        nothing_new = max(s for s, _ in again)
        assert all(f == 0 for _, f in again)

        rows = [
            ("first sync, cold index", n / cold_s, cold_s),
            ("mbsync, cold index", n / mb_cold_s, mb_cold_s),
            ("first sync, warm", n / warm_s, warm_s),
            ("mbsync, warm", n / mb_warm_s, mb_warm_s),
        ]
        print(f"\n{'run':<26}{'messages/s':>12}{'seconds':>10}")
        for name, rate, secs in rows:
            print(f"{name:<26}{rate:>12,.0f}{secs:>10.2f}")
        if mb_fsync_s is not None:
            print(f"{'mbsync, warm, FSync yes':<26}{n / mb_fsync_s:>12,.0f}{mb_fsync_s:>10.2f}")
        print(f"{'incremental, nothing new':<26}{'':>12}{nothing_new:>10.3f}")
        print(f"\nspeed-up over mbsync: cold {mb_cold_s / cold_s:.1f}x, "
              f"warm {mb_warm_s / warm_s:.1f}x")

        print(f"\n{'FETCH chunk (warm)':<26}{'messages/s':>12}{'seconds':>10}")
        for chunk in (int(c) for c in args.chunks.split(",")):
            secs, _ = our_sync(a, work / f"chunk{chunk}.sqlite", chunk)
            print(f"{chunk:<26}{n / secs:>12,.0f}{secs:>10.2f}")

        worst_rate = min(n / cold_s, n / warm_s)
        worst_ratio = min(mb_cold_s / cold_s, mb_warm_s / warm_s)
        ok = worst_rate >= 10_000 and worst_ratio >= 5 and nothing_new < 1.0
        print(f"\ntargets (>= 10,000 msg/s, >= 5x mbsync, nothing new < 1 s): "
              f"{'met' if ok else 'MISSED'}")
        return 0 if ok else 1
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
