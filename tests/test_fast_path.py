"""The console script answers a plain `replytime import` without the command-line parser
(replytime/entry.py): it prints the same, exits with the same code and leaves the same cache
as the full command line (replytime.cli), with nothing new, with new mail and on errors; any
other command line is the full one's."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from replytime.entry import import_args
from tests.mailbuilder import TEAM_TOML

FAST = "import sys; from replytime.entry import run; sys.argv[0] = 'replytime'; run()"
FULL = "import sys; from replytime.cli import run; sys.argv[0] = 'replytime'; run()"
CONFIG = TEAM_TOML + """\
[schedules.default]
timezone = "UTC"
monday = ["09:00-17:00"]
holidays = ["US"]
"""


def message(n: int) -> bytes:
    return (f"From: Pat <pat{n}@client.example>\nTo: sales@acme.example\n"
            f"Subject: Quote {n}\nDate: Tue, 03 Nov 2026 0{n}:15:00 +0000\n"
            f"Message-ID: <{n}@client.example>\n\nHello\n").encode()


def settle(root: Path, age: float = 10.0) -> None:
    # Files modified just before an import are read again by the next one (files.RACY_NS),
    # as a user's mail files are not: date them back.
    when = time.time() - age
    for p in [root, *root.rglob("*")]:
        os.utime(p, (when, when), follow_symlinks=False)


def cli(code: str, *args: str, cwd: Path, env: dict[str, str] | None = None,
        ) -> tuple[int, str, str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("REPLYTIME_")}
    full_env.update({"NO_COLOR": "1", "COLUMNS": "200", "HOME": str(cwd), **(env or {})})
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                       cwd=cwd, env=full_env, timeout=120)
    return r.returncode, r.stdout, r.stderr


def timeless(out: tuple[int, str, str]) -> tuple[int, str, str]:
    """The seconds and rate an import prints, which differ from run to run."""
    rc, stdout, stderr = out
    return rc, stdout, re.sub(r" in \d+\.\ds( \([\d,]+ msg/s\))?", " in Ts", stderr)


def dump(db: Path, *, sync_time: bool) -> dict[str, list[tuple[object, ...]]]:
    """Every table of the cache in full (the accounts' sync time only with ``sync_time``)."""
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        out = {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
               for t in tables if t != "accounts"}
        cols = "*" if sync_time else "name, type, state"
        out["accounts"] = conn.execute(f"SELECT {cols} FROM accounts ORDER BY name").fetchall()
    conn.close()
    return out


@pytest.fixture
def imported(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(Maildir, cache imported from it twice, config) in tmp_path."""
    md = tmp_path / "Mail"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True)
    for n in range(1, 4):
        (md / "cur" / f"170000000{n}.M1P1.host:2,S").write_bytes(message(n))
    settle(md)
    cfg = tmp_path / "replytime.toml"
    cfg.write_text(CONFIG)
    db = tmp_path / "first.sqlite"
    for _ in range(2):  # the second run records the folders as unchanged
        rc, _, err = cli(FULL, "--db", str(db), "--config", str(cfg), "import", str(md),
                         cwd=tmp_path)
        assert rc == 0, err
    return md, db, cfg


def both(db: Path, *args: str, cwd: Path, env: dict[str, str] | None = None,
         ) -> tuple[tuple[int, str, str], tuple[int, str, str], Path, Path]:
    """The same command line run by the fast and the full path, each on its own copy of
    ``db``: (fast output, full output, fast cache, full cache)."""
    fast_db, full_db = cwd / "fast.sqlite", cwd / "full.sqlite"
    for copy in (fast_db, full_db):
        shutil.copy(db, copy)
    fast = cli(FAST, "--db", str(fast_db), *args, cwd=cwd, env=env)
    full = cli(FULL, "--db", str(full_db), *args, cwd=cwd, env=env)
    return fast, full, fast_db, full_db


def test_nothing_new_prints_and_keeps_the_same(imported: tuple[Path, Path, Path]) -> None:
    md, db, cfg = imported
    before = dump(db, sync_time=True)
    fast, full, fast_db, full_db = both(db, "--config", str(cfg), "import", str(md),
                                        "--account", "import", cwd=db.parent)
    assert timeless(fast) == timeless(full) == (
        0, "", "imported 0 messages (0 skipped, 3 files unchanged) from 1 path(s) in Ts\n")
    assert dump(fast_db, sync_time=True) == dump(full_db, sync_time=True) == before


def test_the_fast_path_loads_no_parser(imported: tuple[Path, Path, Path]) -> None:
    md, db, cfg = imported
    code = FAST.replace("run()", "import atexit; run()")
    probe = ("import sys, replytime.runner as r; f = r.finish; "
             "r.finish = lambda c: (print(sorted(m for m in sys.modules "
             "if m.split('.')[0] in ('typer', 'click', 'rich', 'pandas')), file=sys.stderr), "
             "f(c)); " + code)
    rc, _, err = cli(probe, "--db", str(db), "--config", str(cfg), "import", str(md),
                     cwd=db.parent)
    assert (rc, err.splitlines()[-1]) == (0, "[]"), err


def test_new_mail_prints_and_stores_the_same(imported: tuple[Path, Path, Path]) -> None:
    md, db, cfg = imported
    (md / "new" / "1700000009.M1P1.host").write_bytes(message(9))
    settle(md / "new")
    fast, full, fast_db, full_db = both(db, "import", str(md), cwd=db.parent,
                                        env={"REPLYTIME_CONFIG": str(cfg)})
    assert timeless(fast) == timeless(full) == (
        0, "", "imported 1 messages (0 skipped, 3 files unchanged) from 1 path(s) in Ts\n")
    assert dump(fast_db, sync_time=False) == dump(full_db, sync_time=False)
    assert dump(fast_db, sync_time=False) != dump(db, sync_time=False)


@pytest.mark.parametrize("args", [
    ["import", "{tmp}/missing"],  # a usage error, exit 2
    ["--config", "{tmp}/bad.toml", "import", "{md}"],  # a config error
    ["import", "{md}", "--account", "other"],  # no team: the warning after the work
    ["--debug", "import", "{tmp}/missing"],  # not read by the fast path: the full one
    ["import", "--help"],
    ["import"],
    ["--db"],
])
def test_errors_and_other_command_lines_are_the_same(
        imported: tuple[Path, Path, Path], args: list[str]) -> None:
    md, db, _ = imported
    tmp = db.parent
    (tmp / "bad.toml").write_text("[team\n")
    args = [a.format(tmp=tmp, md=md) for a in args]
    fast, full, fast_db, full_db = both(db, *args, cwd=tmp)
    assert timeless(fast) == timeless(full)
    assert fast[0] != 0 or "--help" in args or "other" in args
    assert dump(fast_db, sync_time=False) == dump(full_db, sync_time=False)


def test_import_args_reads_only_what_it_reads_exactly() -> None:
    p = [Path("a"), Path("b c")]
    assert import_args(["import", "a", "b c"], {}) == (None, None, p, "import")
    assert import_args(["--db", "x.sqlite", "--config=c.toml", "import", "a", "--account",
                        "work", "b c"], {}) == ("c.toml", "x.sqlite", p, "work")
    assert import_args(["import", "--account=w", "a"], {"REPLYTIME_DB": "e.sqlite",
                                                        "REPLYTIME_CONFIG": "e.toml"}) == (
        "e.toml", "e.sqlite", [Path("a")], "w")
    assert import_args(["--db", "x", "import", "a"], {"REPLYTIME_DB": "e"})[1] == "x"
    for argv, env in [
        (["status"], {}),
        (["import"], {}),  # no path: click's message
        (["--debug", "import", "a"], {}),
        (["import", "a", "--help"], {}),
        (["import", "--", "a"], {}),
        (["import", "a", "--account"], {}),
        (["import", "a", "--account", "x", "--account", "y"], {}),
        (["import", "a", "--account", "-x"], {}),
        (["import", "a", "--account="], {}),
        (["--config", "import", "a"], {}),
        (["report", "reps", "import"], {}),
        (["import", "a"], {"REPLYTIME_DB": ""}),
        (["import", "a"], {"_REPLYTIME_COMPLETE": "bash_complete"}),
        (["import", "a\udcff"], {}),
    ]:
        assert import_args(argv, env) is None, argv
