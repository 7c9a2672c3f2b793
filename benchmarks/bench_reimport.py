"""Benchmark: importing the same files again (nothing new, or an mbox that grew).

Times `replytime import` as a user runs it (the whole CLI process, median of 3):

- a 100,000-message Maildir: first import (fresh cache each run), then again with nothing
  new, beside `notmuch new` with nothing new on the same Maildir;
- a ~1 GB mbox (the same generator's messages, bodies padded; bodies are never stored):
  again with nothing new (target: under 0.5 s), and after growing by 1,000 messages.

    .venv/bin/python benchmarks/bench_reimport.py --workdir /tmp/br
    .venv/bin/python benchmarks/bench_reimport.py --baseline-src /path/to/old/src  # before

``--baseline-src`` also times the first Maildir import, and the imports with nothing new,
with another checkout's package (PYTHONPATH), to compare before and after a change.
``--config`` also times the Maildir import with nothing new under a config (a roster,
holiday calendars). Beside them: ``python -c pass`` (with and without ``-S``) and
``python -c "import typer"``, the floor of any Python CLI and of this one's parser.

``--floor`` times only the Maildir import with nothing new, round-robin in one run (each
command once per round, ``--rounds`` rounds, median and best): the console script's
``entry.run`` (which answers a plain import without typer), the full command line
``cli.run``, the baseline's ``cli.run`` with ``--baseline-src``, ``notmuch new`` and the
floor lines.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_import import cli_command, fresh, generate, local_maildir, run, warm  # noqa: E402

TARGET_MBOX_AGAIN = 0.5  # seconds
FROM_LINE = b"From MAILER-DAEMON Thu Jan  1 00:00:00 2026\n"


def write_mbox(path: Path, n: int, seed: int, pad: int, start: int = 0) -> None:
    """Append n messages (seeded, ids from ``start`` on) to the mbox at ``path``, each body
    padded to about ``pad`` bytes."""
    filler = (b"x" * 75 + b"\n") * (pad // 76)
    with open(path, "ab") as f:
        for msg in generate(n, seed):
            if start:  # other Message-IDs than the first batch's
                msg = msg.replace(b"Message-ID: <", b"Message-ID: <g%d." % start, 1)
            f.write(FROM_LINE + msg + filler + b"\n")


def median(cmd: list[str], env: dict[str, str] | None = None, runs: int = 3,
           before: object = None) -> tuple[float, list[float]]:
    times = []
    for _ in range(runs):
        if callable(before):
            before()
        times.append(run(cmd, env)[0])
    return statistics.median(times), times


def show(label: str, result: tuple[float, list[float]], extra: str = "") -> None:
    med, times = result
    digits = 3 if med < 1 else 2  # milliseconds for the runs that find nothing new
    print(f"{label:44s} median {med:6.{digits}f}s  "
          f"({', '.join(f'{t:.{digits}f}' for t in times)}){extra}")


ENTRY = "import sys; from replytime.entry import run; sys.argv[0] = 'replytime'; run()"
FULL = "import sys; from replytime.cli import run; sys.argv[0] = 'replytime'; run()"


def notmuch_env(work: Path, maildir: Path, env: dict[str, str]) -> dict[str, str] | None:
    """The environment of ``notmuch`` on its own database of ``maildir`` under ``work``
    (indexed once, untimed); None when notmuch is not installed."""
    if not shutil.which("notmuch"):
        return None
    nm = work / "notmuch"
    config = nm / "config"
    if not (nm / "db").exists():
        (nm / "db").mkdir(parents=True)
        config.write_text(
            f"[database]\npath={nm / 'db'}\nmail_root={maildir}\n"
            "[new]\ntags=unread;inbox\n[maildir]\nsynchronize_flags=false\n")
    nm_env = dict(env, NOTMUCH_CONFIG=str(config))
    start = time.perf_counter()
    run(["notmuch", "new", "--quiet"], nm_env)  # the first index (or a no-op)
    print(f"{'notmuch new, first (untimed)':44s} {time.perf_counter() - start:.1f}s")
    return nm_env


def floor(work: Path, maildir: Path, db: Path, baseline: Path | None, config: Path | None,
          rounds: int) -> None:
    """The nothing-new Maildir import against notmuch and the floor of a Python CLI, every
    command once per round so that a change in the machine's load hits them alike."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLYTIME_")}
    if not db.exists():
        start = time.perf_counter()
        run(cli_command(maildir, db), env)
        print(f"{'first import, Maildir (untimed)':44s} {time.perf_counter() - start:.1f}s")
    python = sys.executable
    args = ["--db", str(db), *(["--config", str(config)] if config else []),
            "import", str(maildir), "--account", "bench"]
    commands: dict[str, tuple[list[str], dict[str, str]]] = {
        "again, nothing new: entry.run (the script)": ([python, "-c", ENTRY, *args], env),
        "again, nothing new: cli.run (full parser)": ([python, "-c", FULL, *args], env),
    }
    if baseline is not None:
        commands["again, nothing new: baseline cli.run"] = (
            [python, "-c", FULL, *args], dict(env, PYTHONPATH=str(baseline)))
    nm_env = notmuch_env(work, maildir, env)
    if nm_env is not None:
        commands["notmuch new, nothing new"] = (["notmuch", "new", "--quiet"], nm_env)
    commands["python -c pass"] = ([python, "-c", "pass"], env)
    commands["python -c 'import typer'"] = ([python, "-c", "import typer"], env)
    for cmd, cmd_env in commands.values():
        run(cmd, cmd_env)  # once untimed: the same page cache and compiled bytecode for all
    times: dict[str, list[float]] = {label: [] for label in commands}
    for _ in range(rounds):
        for label, (cmd, cmd_env) in commands.items():
            times[label].append(run(cmd, cmd_env)[0])
    print(f"{rounds} rounds, load average {os.getloadavg()[0]:.2f} after")
    for label, ts in times.items():
        print(f"{label:44s} median {statistics.median(ts) * 1000:6.1f} ms  "
              f"best {min(ts) * 1000:6.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--mbox-messages", type=int, default=100_000)
    ap.add_argument("--pad", type=int, default=10_000, help="body bytes per mbox message")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, help="keep generated data here (reused if present)")
    ap.add_argument("--baseline-src", type=Path, help="another checkout's src/ to compare")
    ap.add_argument("--config", type=Path,
                    help="also time the Maildir import with nothing new under this config")
    ap.add_argument("--floor", action="store_true",
                    help="only the nothing-new Maildir import against notmuch and the floor")
    ap.add_argument("--rounds", type=int, default=15, help="rounds of --floor")
    args = ap.parse_args()
    tmp = None
    if args.workdir is None:
        tmp = tempfile.mkdtemp(prefix="replytime-reimport-")
        work = Path(tmp)
    else:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)
    try:
        maildir = work / f"maildir-{args.messages}-{args.seed}"
        mbox = work / f"big-{args.mbox_messages}-{args.pad}.mbox"
        if args.floor:
            if not maildir.exists():
                local_maildir(maildir, args.messages, args.seed)
                time.sleep(2.1)  # a file modified within 2 s of its import is read again
            print(f"{args.messages:,}-message Maildir; machine: {os.cpu_count()} cores, "
                  f"load average {os.getloadavg()[0]:.2f}")
            warm(maildir)
            floor(work, maildir, work / "maildir.sqlite", args.baseline_src, args.config,
                  args.rounds)
            return
        made = not maildir.exists() or not mbox.exists()
        if not maildir.exists():
            local_maildir(maildir, args.messages, args.seed)
        if not mbox.exists():
            write_mbox(mbox, args.mbox_messages, args.seed, args.pad)
        if made:  # a file modified within 2 s of its import is read again next time
            time.sleep(2.1)
        print(f"{args.messages:,}-message Maildir; mbox of {args.mbox_messages:,} messages, "
              f"{mbox.stat().st_size / 1e9:.2f} GB")
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
        warm(maildir)
        db = work / "maildir.sqlite"
        env = dict(os.environ)
        if args.baseline_src is not None:
            base_env = dict(env, PYTHONPATH=str(args.baseline_src))
            show("first import, Maildir (baseline src)", median(
                cli_command(maildir, db), base_env, before=lambda: fresh(db)))
        show("first import, Maildir", median(cli_command(maildir, db), env,
                                             before=lambda: fresh(db)))
        again_runs = 11  # tens of milliseconds: more runs for a steady median
        if args.baseline_src is not None:
            show("again, Maildir, nothing new (baseline src)",
                 median(cli_command(maildir, db), base_env, again_runs))
        show("again, Maildir, nothing new", median(cli_command(maildir, db), env, again_runs))
        if args.config is not None:
            # A config with a roster regroups once (its first run), then finds nothing.
            with_config = [*cli_command(maildir, db)[:1], "--config", str(args.config),
                           *cli_command(maildir, db)[1:]]
            run(with_config, env)
            if args.baseline_src is not None:
                show("again, Maildir, nothing new, --config (baseline)",
                     median(with_config, base_env, again_runs))
            show("again, Maildir, nothing new, --config", median(with_config, env, again_runs))
        # What no Python program can go below: the interpreter's own start, with and
        # without site-packages, and with the CLI's parser library (typer) loaded.
        python = sys.executable
        show("python -c pass", median([python, "-c", "pass"], env, again_runs))
        show("python -S -c pass", median([python, "-S", "-c", "pass"], env, again_runs))
        show("python -c 'import typer'", median([python, "-c", "import typer"], env,
                                                again_runs))

        nm_env = notmuch_env(work, maildir, env)
        if nm_env is not None:
            show("notmuch new, Maildir, nothing new", median(["notmuch", "new", "--quiet"],
                                                             nm_env, again_runs))
        else:
            print("notmuch not installed: no comparison")

        warm(mbox)
        db = fresh(work / "mbox.sqlite")
        first = run(cli_command(mbox, db), env)[0]
        print(f"{'first import, mbox (once)':44s}        {first:6.2f}s")
        if args.baseline_src is not None:
            show("again, mbox, nothing new (baseline src)",
                 median(cli_command(mbox, db), base_env, again_runs))
        again = median(cli_command(mbox, db), env, again_runs)
        ok = "ok" if again[0] < TARGET_MBOX_AGAIN else "ABOVE TARGET"
        show("again, mbox, nothing new", again, f"  [{ok}: < {TARGET_MBOX_AGAIN}s]")
        grown = iter(range(1, 4))
        show("again, mbox grown by 1,000 messages", median(
            cli_command(mbox, db), env,
            before=lambda: write_mbox(mbox, 1000, args.seed + 7, args.pad, next(grown))))
        print("command: " + " ".join(cli_command(mbox, db)))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
