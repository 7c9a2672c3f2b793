"""Every command on every cache state gives an answer: empty caches, periods without leads,
only outbound or only automated mail, one lead, only unanswered leads, filters that match
nothing. A hypothesis property drives the console script (tests/forked_cli.py) with drawn
states, commands, formats and options: it never prints an internal error or a traceback,
exits with a documented code (the exit codes at the top of docs/commands.md), and machine
formats carry the columns of docs/definitions.md, "Column reference"."""

from __future__ import annotations

import email
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.forked_cli import ForkedCLI, Result
from tests.mailbuilder import TEAM_TOML, Mailbox
from tests.states import BUILDERS, LEADLESS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("replytime")
EXAMPLES = ROOT / "examples"
# 400 drawn runs cover every state, command and format many times over (8 states, 8 reports
# x 7 formats); REPLYTIME_STATE_CASES asks for more.
CASES = int(os.environ.get("REPLYTIME_STATE_CASES", "400"))

CONFIG = TEAM_TOML + """\
[delivery]
from = "replytime@acme.example"
to = ["manager@acme.example"]
host = "127.0.0.1"
security = "none"
[alerts]
older_than = "2h"
slack_webhook_env = "REPLYTIME_TEST_UNSET_WEBHOOK"
"""
# The same team with working hours and a holiday in the middle of the mail.
BUSINESS_CONFIG = CONFIG + """\
[schedules.default]
timezone = "UTC"
monday = ["09:00-17:00"]
tuesday = ["09:00-17:00"]
wednesday = ["09:00-17:00"]
thursday = ["09:00-17:00"]
friday = ["09:00-17:00"]
dates_off = ["2026-11-04"]
"""
# Nothing says which mail is the team's.
NO_TEAM_CONFIG = '[team]\ntimezone = "UTC"\n'


def _documented_columns() -> dict[str, list[str]]:
    """Column names per report, from the tables of docs/definitions.md, "Column reference"."""
    text = (ROOT / "docs" / "definitions.md").read_text()
    ref = text.split("## Column reference", 1)[1].split("\n## ", 1)[0]
    out: dict[str, list[str]] = {}
    for section in ref.split("\n### ")[1:]:
        name = section.split("\n", 1)[0].strip()
        cols: list[str] = []
        for line in section.splitlines():
            m = re.match(r"\| (`[^|]+`) \|", line)
            if m:
                cols += re.findall(r"`([^`]+)`", m.group(1))
        out[name] = cols
    return out


DOCUMENTED = _documented_columns()


def _weekly_order(cols: list[str]) -> list[str]:
    """The weekly table documents columns in pairs (`leads`, `prev_leads`); the file's
    order is the frame's, so only the set is compared for it."""
    return sorted(cols)


@dataclass(frozen=True)
class State:
    name: str
    db: Path
    config: Path
    message_ids: tuple[str, ...]   # for explain
    reps: tuple[str, ...]          # --rep values that are valid for the config
    teams: tuple[str, ...]


@pytest.fixture(scope="module")
def states(tmp_path_factory: pytest.TempPathFactory) -> dict[str, State]:
    root = tmp_path_factory.mktemp("states")
    configs = {}
    for name, text in (("plain", CONFIG), ("business", BUSINESS_CONFIG),
                       ("noteam", NO_TEAM_CONFIG)):
        configs[name] = root / f"{name}.toml"
        configs[name].write_text(text)
    roster = ("Alice", "Bob", "Carol", "(unassigned)", "priya@acme.example")
    out: dict[str, State] = {}

    # A first import that failed (file not found) leaves an empty cache behind.
    empty = root / "empty"
    empty.mkdir()
    r = subprocess.run([str(SCRIPT), "--db", str(empty / "cache.sqlite"), "--config",
                        str(configs["plain"]), "import", str(empty / "nope.mbox")],
                       capture_output=True, text=True, env=_env(empty))
    assert r.returncode == 2 and r.stderr.endswith("does not exist\n"), r.stderr
    assert (empty / "cache.sqlite").exists()
    out["empty"] = State("empty", empty / "cache.sqlite", configs["plain"], ("nope@x",),
                         roster, ("East", "West"))
    for name, build in BUILDERS.items():
        d = root / name
        d.mkdir()
        mb = Mailbox(d)
        build(mb)
        mb.analysis().cache.close()
        ids = tuple(re.findall(rb"Message-ID: <([^>]+)>", b"".join(mb.blocks))[i].decode()
                    for i in (0, -1))
        cfg = configs["business" if name == "mixed" else "plain"]
        out[name] = State(name, d / "cache.sqlite", cfg, ids, roster, ("East", "West"))
    # The mixed mail read with a config that names no internal address.
    out["noteam"] = State("noteam", out["mixed"].db, configs["noteam"], (),
                          ("(unassigned)",), ())
    ex = root / "example"
    ex.mkdir()
    r = subprocess.run([str(SCRIPT), "--db", str(ex / "cache.sqlite"), "--config",
                        str(EXAMPLES / "replytime.toml"), "import",
                        str(EXAMPLES / "mailbox.mbox")], capture_output=True, text=True,
                       env=_env(ex))
    assert r.returncode == 0, r.stderr
    out["example"] = State("example", ex / "cache.sqlite", EXAMPLES / "replytime.toml",
                           ("m0001.1@blueskyretail.example",),
                           ("Alice Ng", "Tom Okafor", "Hannah Clarke", "(unassigned)"),
                           ("Americas", "EMEA"))
    return out


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLYTIME_")}
    env.update(NO_COLOR="1", COLUMNS="120", HOME=str(home),
               XDG_CONFIG_HOME=str(home / "config"), XDG_DATA_HOME=str(home / "data"))
    return env


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkedCLI]:
    server = ForkedCLI(tmp_path_factory.mktemp("forked"))
    yield server
    server.close()


# -- what a run may print -------------------------------------------------------------------
KINDS = ("reps", "leads", "unanswered", "volume", "threads", "sla", "compare", "weekly")
FORMATS = ("table", "csv", "json", "jsonl", "markdown", "parquet", "html")
# Option values: mostly ones that must give an answer, now and then one that must be
# refused (an unknown name, a period after the as-of time, a malformed value).
INSTANTS = (None, None, None, "2026-11-02", "2026-11-04", "2026-11-09T09:00", "last-week",
            "this-week", "this-month", "7d", "4w", "yesterday", "2020-01-01")
BAD_INSTANTS = ("2030-01-01", "garbage")
AS_OF = (None, None, "2026-11-03T12:00", "2026-11-04T10:00+00:00", "2026-12-01")
BAD_AS_OF = ("2025-06-01", "soon")
RANGES = ("2026-11-02..2026-11-05", "2026-11-05..2026-11-12", "last-week", "..2026-11-04",
          "2026-11-04..")
BAD_RANGES = ("2030-01-01..2030-02-01", "2026-11-09..2026-11-02", "bad")
BAD = ("garbage", "soon", "bad", "Nobody", "Nowhere", "x", "2", "2030-01-01", "2025-06-01",
       "2030-01-01..2030-02-01", "2026-11-09..2026-11-02")


def pick(draw: st.DrawFn, good: tuple, bad: tuple) -> object:
    """A good value, or one time in twenty a bad one."""
    return draw(st.sampled_from(bad if draw(st.integers(0, 19)) == 0 else good))

def check_machine_output(kind: str, fmt: str, args: list[str], out: str, path: Path) -> None:
    """The file or stdout of a machine format parses, with the documented columns."""
    section = "leads --all-replies" if kind == "leads" and "--all-replies" in args else kind
    documented = DOCUMENTED[section]
    if fmt == "csv":
        frame = pd.read_csv(io.StringIO(out), keep_default_na=False)
        cols = list(frame.columns)
    elif fmt == "json":
        rows = json.loads(out)
        assert isinstance(rows, list)
        cols = list(rows[0]) if rows else documented
        assert all(list(r) == cols for r in rows)
    elif fmt == "jsonl":
        rows = [json.loads(line) for line in out.splitlines()]
        cols = list(rows[0]) if rows else documented
    else:  # parquet
        import pyarrow.parquet as pq

        cols = pq.read_schema(path).names
    if kind in ("weekly", "compare"):
        assert sorted(cols) == _weekly_order(documented), (cols, documented)
    else:
        assert cols == documented, (cols, documented)


def refusal(state: State, argv: list[str]) -> str | None:
    """The start of the one-line error the docs promise for this command line, if any
    (docs/configuration.md, "Without a team"; docs/definitions.md, "Periods")."""
    if state.name == "noteam" and argv[0] in ("report", "explain", "send", "alert"):
        return "replytime: error: " + str(state.config) + " sets no [team] internal_domains"
    if argv[0] != "report" or "--since" not in argv or "--until" not in argv:
        return None
    since, until = argv[argv.index("--since") + 1], argv[argv.index("--until") + 1]
    dated = ("2020-01-01", "2026-11-02", "2026-11-04", "2026-11-09T09:00")
    if since in dated and until in dated and since >= until and "--as-of" not in argv:
        return "replytime: error: --since/--until: the period is empty: "
    return None


def check_run(state: State, argv: list[str], r: Result, out_path: Path | None) -> None:
    text = r.stdout + r.stderr
    assert "internal error" not in text and "Traceback" not in text, (argv, text)
    assert r.returncode in (0, 1, 2), (argv, r.returncode, text)
    expected = refusal(state, argv)
    if expected and not any(a in BAD for a in argv):
        assert r.returncode == 2 and r.stderr.startswith(expected), (argv, text)
    if r.returncode:
        # A refusal or a failed check is one line on stderr, the last; before it at most
        # the note of a report written to a file (a failed check still writes it).
        lines = r.stderr.splitlines()
        assert lines and lines[-1].startswith("replytime: error: "), (argv, text)
        assert all(line.startswith("wrote ") for line in lines[:-1]), (argv, text)
        if r.returncode == 1:
            assert any(a.startswith("--fail-if") for a in argv), (argv, text)
        return
    if state.name == "noteam" and argv[0] in ("status", "export"):
        assert "replytime: warning: " in r.stderr, (argv, text)
    if argv[0] == "send":
        assert out_path is not None
        message = email.message_from_bytes(out_path.read_bytes())
        assert message.get_content_type() == "multipart/mixed" or message.is_multipart()
        assert "Weekly" in message["Subject"], message["Subject"]
        if state.name in LEADLESS:
            assert "no leads in this period" in out_path.read_text(errors="replace")
    if argv[0] == "alert" and "json" in argv:
        rows = json.loads(r.stdout)
        assert isinstance(rows, list)
        if state.name in LEADLESS:
            assert rows == []
    if argv[0] == "report":
        kind = argv[1]
        fmt = argv[argv.index("--format") + 1]
        if fmt in ("csv", "json", "jsonl", "parquet"):
            content = out_path.read_text() if out_path and fmt != "parquet" else r.stdout
            check_machine_output(kind, fmt, argv, content, out_path or Path())
        elif fmt == "html":
            html = out_path.read_text() if out_path else r.stdout
            assert html.lstrip().lower().startswith("<!doctype html>"), html[:80]
        elif fmt in ("table", "markdown"):
            content = out_path.read_text() if out_path else r.stdout
            assert len(content.splitlines()) >= 3, content
            if state.name in LEADLESS:
                note = {"unanswered": "no unanswered leads in this period",
                        "compare": "no leads in either period"}.get(kind, "no leads in this period")
                assert note in content, (argv, content)


@st.composite
def commands(draw: st.DrawFn, states: dict[str, State], tmp: Path) -> tuple[State, list[str],
                                                                              Path | None]:
    state = states[draw(st.sampled_from(sorted(states)))]
    base = ["--db", str(state.db), "--config", str(state.config)]
    command = draw(st.sampled_from(("report",) * 12 + ("status", "explain", "export", "send",
                                                        "alert")))
    if command == "send":  # never sent: --dry-run writes the message
        target = tmp / f"weekly-{draw(st.integers(0, 10**9))}.eml"
        argv = [*base, "send", "weekly", "--dry-run", "-o", str(target)]
        for flag, good, bad in (("--since", INSTANTS, BAD_INSTANTS),
                                ("--as-of", AS_OF, BAD_AS_OF)):
            value = pick(draw, good, bad)
            if value:
                argv += [flag, str(value)]
        if draw(st.integers(0, 3)) == 0:
            argv += ["--rep", str(pick(draw, state.reps, ("Nobody",)))]
        return state, argv, target
    if command == "alert":
        argv = [*base, "alert", "--dry-run", "--format", draw(st.sampled_from(("table", "json")))]
        value = pick(draw, AS_OF, BAD_AS_OF)
        if value:
            argv += ["--as-of", str(value)]
        return state, argv, None
    if command == "status":
        return state, [*base, "status", "--format", draw(st.sampled_from(("table", "json")))], None
    if command == "explain":
        ids = (*state.message_ids, "unknown@nowhere.example")
        argv = [*base, "explain", draw(st.sampled_from(ids)), "--format",
                draw(st.sampled_from(("table", "json")))]
        if draw(st.booleans()):
            argv += ["--as-of", str(pick(draw, AS_OF[2:], BAD_AS_OF))]
        return state, argv, None
    if command == "export":
        target = tmp / f"export-{draw(st.integers(0, 10**9))}"
        return state, [*base, "export", str(target)], None
    kind = draw(st.sampled_from(KINDS))
    fmt = draw(st.sampled_from(FORMATS))
    argv = ["report", kind, "--format", fmt]
    for flag, good, bad in (("--since", INSTANTS, BAD_INSTANTS),
                            ("--until", INSTANTS, BAD_INSTANTS), ("--as-of", AS_OF, BAD_AS_OF)):
        value = pick(draw, good, bad)
        if value and (flag == "--since" or draw(st.integers(0, 2)) == 0):
            argv += [flag, str(value)]
    if draw(st.booleans()):
        argv += ["--rep", str(pick(draw, state.reps, ("Nobody",)))]
    if draw(st.integers(0, 4)) == 0:
        argv += ["--team", str(pick(draw, state.teams or ("Nowhere",), ("Nowhere",)))]
    basis = draw(st.sampled_from((None, "--business", "--calendar")))
    if basis:
        argv.append(basis)
    if kind == "unanswered":
        older = pick(draw, (None, "30m", "4h", "2d"), ("soon",))
        if older:
            argv += ["--older-than", str(older)]
        if draw(st.booleans()):
            argv.append("--fail-if-any")
    if kind == "leads" and draw(st.booleans()):
        argv.append("--all-replies")
    if kind == "compare":
        for flag in ("--a", "--b"):
            if draw(st.integers(0, 9)):
                argv += [flag, str(pick(draw, RANGES, BAD_RANGES))]
    if draw(st.integers(0, 5)) == 0:
        argv += ["--fail-if-over", str(pick(draw, ("1h", "10m"), ("x",)))]
    if draw(st.integers(0, 5)) == 0:
        argv += ["--fail-if-under", str(pick(draw, ("0.5", "0.99"), ("2",)))]
    out_path = None
    if fmt in ("parquet", "html") or draw(st.integers(0, 3)) == 0:
        out_path = tmp / f"out-{draw(st.integers(0, 10**9))}.{fmt}"
        argv += ["-o", str(out_path)]
    return state, [*base, *argv], out_path


def test_every_command_on_every_state_answers(states: dict[str, State], cli: ForkedCLI,
                                              tmp_path: Path) -> None:
    seen: dict[int, int] = {}

    @settings(max_examples=CASES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(commands(states, tmp_path))
    def prop(case: tuple[State, list[str], Path | None]) -> None:
        state, argv, out_path = case
        r = cli.run(argv, tmp_path, _env(tmp_path))
        check_run(state, argv[4:], r, out_path)
        seen[r.returncode] = seen.get(r.returncode, 0) + 1

    prop()
    print(f"{sum(seen.values())} CLI runs, exit codes {sorted(seen.items())}")
    # The property must have exercised both answers and refusals.
    assert sum(seen.values()) >= CASES and seen.get(0, 0) > CASES // 3 and seen.get(2)


# -- the same promises, case by case ----------------------------------------------------------
FIXED_AS_OF = ["--as-of", "2026-12-01T00:00:00+00:00"]


def _report(cli: ForkedCLI, state: State, tmp: Path, *args: str) -> Result:
    argv = ["--db", str(state.db), "--config", str(state.config), "report", *args, *FIXED_AS_OF]
    return cli.run(argv, tmp, _env(tmp))


def _kind_args(kind: str) -> list[str]:
    return [kind, "--a", "2026-11-02..2026-11-05", "--b", "2026-11-05..2026-11-12"] \
        if kind == "compare" else [kind]


@pytest.mark.parametrize("kind", KINDS)
def test_empty_cache_in_every_format(kind: str, states: dict[str, State], cli: ForkedCLI,
                                     tmp_path: Path) -> None:
    """The empty cache left by a failed first import: the full report's header row, `[]`,
    no JSON lines, a Parquet file with the full report's columns, and the empty-state note
    in the human formats; exit 0 every time."""
    empty, full = states["empty"], states["mixed"]
    csv_empty = _report(cli, empty, tmp_path, *_kind_args(kind), "--format", "csv")
    csv_full = _report(cli, full, tmp_path, *_kind_args(kind), "--format", "csv")
    assert (csv_empty.returncode, csv_full.returncode) == (0, 0), csv_empty.stderr
    assert csv_empty.stdout.splitlines()[0] == csv_full.stdout.splitlines()[0]
    fixed_rows = {"reps": 3, "sla": 7, "threads": 6, "weekly": 4, "compare": 1}
    assert len(csv_empty.stdout.splitlines()) == 1 + fixed_rows.get(kind, 0)
    if kind not in fixed_rows:
        assert _report(cli, empty, tmp_path, *_kind_args(kind), "--format", "json").stdout \
            == "[]\n"
        assert _report(cli, empty, tmp_path, *_kind_args(kind), "--format", "jsonl").stdout \
            == ""
    import pyarrow.parquet as pq

    names = []
    for state in (empty, full):
        path = tmp_path / f"{state.name}-{kind}.parquet"
        r = _report(cli, state, tmp_path, *_kind_args(kind), "--format", "parquet", "-o", str(path))
        assert r.returncode == 0, r.stderr
        names.append(pq.read_schema(path).names)
    assert names[0] == names[1]
    note = {"unanswered": "no unanswered leads in this period",
            "compare": "no leads in either period"}.get(kind, "no leads in this period")
    for fmt in ("table", "markdown", "html"):
        r = _report(cli, empty, tmp_path, *_kind_args(kind), "--format", fmt)
        assert r.returncode == 0 and note in r.stdout, (fmt, r.stdout, r.stderr)
    if kind == "weekly":  # no chart drawn from nothing: the note stands in each one's place
        html = _report(cli, empty, tmp_path, "weekly", "--format", "html").stdout
        assert "<svg" not in html and html.count(f'<p class="empty">{note}</p>') == 3


@pytest.mark.parametrize(("args", "line"), [
    (["reps", "--since", "2026-11-01", "--until", "2026-09-01"],
     "--since/--until: the period is empty: 2026-11-01 00:00 is not before 2026-09-01 00:00"),
    (["leads", "--since", "2026-11-04", "--until", "2026-11-04"],
     "--since/--until: the period is empty: 2026-11-04 00:00 is not before 2026-11-04 00:00"),
    (["weekly", "--since", "2026-11-09", "--until", "2026-11-02"],
     "--since/--until: the period is empty: 2026-11-09 00:00 is not before 2026-11-02 00:00"),
    (["reps", "--since", "2030-01-01", "--until", "2030-02-01"],
     "--since/--until: the period starts at 2030-01-01 00:00, after the as-of time "
     "2026-12-01 00:00: no lead of it can be known yet (--as-of looks back)"),
    (["weekly", "--since", "2030-01-01"],
     "--since/--until: the period starts at 2030-01-01 00:00, after the as-of time "
     "2026-12-01 00:00: no lead of it can be known yet (--as-of looks back)"),
    (["compare", "--a", "2026-11-02..2026-11-05", "--b", "2031-01-01..2031-02-01"],
     "--b: the period starts at 2031-01-01 00:00, after the as-of time 2026-12-01 00:00: "
     "no lead of it can be known yet (--as-of looks back)"),
])
def test_periods_that_cannot_hold_leads_are_refused(args: list[str], line: str,
                                                    states: dict[str, State],
                                                    cli: ForkedCLI, tmp_path: Path) -> None:
    r = _report(cli, states["mixed"], tmp_path, *args)
    assert (r.returncode, r.stdout, r.stderr) == (2, "", f"replytime: error: {line}\n")


def test_a_config_without_a_team(states: dict[str, State], cli: ForkedCLI,
                                 tmp_path: Path) -> None:
    """Reports and explain refuse (nothing could be a reply); import, status and export
    work and warn. Without any config file the message says how to get one."""
    noteam = states["noteam"]
    line = (f"replytime: error: {noteam.config} sets no [team] internal_domains and no "
            "[[reps]]: every message would count as external and no reply could be found\n")
    r = _report(cli, noteam, tmp_path, "reps")
    assert (r.returncode, r.stdout, r.stderr) == (2, "", line)
    r = cli.run(["--db", str(noteam.db), "--config", str(noteam.config), "explain",
                 "m1@test.example"], tmp_path, _env(tmp_path))
    assert (r.returncode, r.stderr) == (2, line)
    r = cli.run(["--db", str(noteam.db), "--config", str(noteam.config), "status", "--format",
                 "json"], tmp_path, _env(tmp_path))
    assert r.returncode == 0 and json.loads(r.stdout)["messages"] == 11
    assert r.stderr == line.replace("error", "warning", 1)
    bare = tmp_path / "bare"
    bare.mkdir()
    r = cli.run(["--db", str(noteam.db), "report", "reps"], bare, _env(bare))
    assert (r.returncode, r.stderr) == (2, "replytime: error: no config file found "
                                        "(./replytime.toml, ~/.config/replytime/config.toml)"
                                        ": run `replytime init` and set [team] "
                                        "internal_domains\n")
    mbox = tmp_path / "one.mbox"
    mbox.write_bytes(b"From x Mon Nov  2 09:00:00 2026\nFrom: a@b.example\nTo: c@d.example\n"
                     b"Date: Mon, 02 Nov 2026 09:00:00 +0000\nMessage-ID: <one@b.example>\n"
                     b"Subject: hi\n\nbody\n")
    r = cli.run(["--db", str(tmp_path / "new.sqlite"), "import", str(mbox)], bare, _env(bare))
    assert r.returncode == 0 and r.stderr.startswith("imported 1 messages")
    assert r.stderr.splitlines()[1].startswith("replytime: warning: no config file found")


def test_forked_runs_match_the_installed_script(states: dict[str, State], cli: ForkedCLI,
                                                tmp_path: Path) -> None:
    """The property test's runs are the console script's: same exit code, same output."""
    cases = [
        ("empty", ["report", "reps", "--format", "table"]),
        ("empty", ["report", "weekly", "--format", "json"]),
        ("mixed", ["report", "leads", "--format", "csv", "--since", "2026-11-02"]),
        ("mixed", ["report", "unanswered", "--format", "jsonl", "--fail-if-any"]),
        ("mixed", ["report", "reps", "--since", "2026-11-09", "--until", "2026-11-02"]),
        ("one_lead", ["report", "sla", "--format", "markdown", "--calendar"]),
        ("noteam", ["report", "volume"]),
        ("example", ["report", "weekly", "--format", "table"]),
        ("example", ["status", "--format", "json"]),
        ("automated_only", ["explain", "m2@test.example", "--format", "json"]),
    ]
    for name, args in cases:
        state = states[name]
        argv = ["--db", str(state.db), "--config", str(state.config), *args, *FIXED_AS_OF] \
            if args[0] != "status" else ["--db", str(state.db), "--config", str(state.config),
                                         *args]
        forked = cli.run(argv, tmp_path, _env(tmp_path))
        real = subprocess.run([str(SCRIPT), *argv], capture_output=True, text=True,
                              cwd=tmp_path, env=_env(tmp_path), timeout=120)
        assert (forked.returncode, forked.stdout, forked.stderr) == (
            real.returncode, real.stdout, real.stderr), args
