"""Security properties (README, docs/configuration.md): SQL only with bound parameters, CSV cells
safe in a spreadsheet unless --raw-csv, ~ and $VARS in config, token and password paths, and
no secret on a command line or in what a failing command prints (even with --debug)."""

from __future__ import annotations

import ast
import csv
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from replytime.config import Account
from replytime.sources.imap import Settings, get_password

if TYPE_CHECKING:
    import pandas as pd

SCRIPT = Path(sys.executable).with_name("replytime")
SRC = Path(__file__).resolve().parents[1] / "src" / "replytime"
PASSWORD = "pw-5ecret-Xq9"  # never on a command line, never printed


def run(tmp: Path, *args: str, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("REPLYTIME_")}
    full.update(NO_COLOR="1", HOME=str(tmp), XDG_CONFIG_HOME=str(tmp / "config"),
                XDG_DATA_HOME=str(tmp / "data"), RT_IMAP_PW=PASSWORD, **(env or {}))
    r = subprocess.run([str(SCRIPT), *args], capture_output=True, cwd=tmp, env=full,
                       timeout=120)
    # Decoded as is: text mode would turn a CR inside a CSV cell into a line break.
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode())


# -- SQL -------------------------------------------------------------------------------------
SQL_WORDS = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|WHERE|GLOB|LIKE|"
                       r"VALUES|PRAGMA|ORDER BY|LIMIT)\b")
# Formatted SQL allowed, by the expressions it interpolates: each is code, never user data.
ALLOWED_INTERPOLATIONS = {
    frozenset({"i + 1"}),  # the schema version number in a migration script (a loop index)
    frozenset({"column"}),  # _glob_filter: a column name from the code; globs are bound "?"
    frozenset({"bounds", "where"}),  # form-lead query: fragments of "?" placeholders only
    frozenset({"self.label_agg"}),  # the backend's aggregate function name
    frozenset({"label_sql", "where"}),  # messages(): a constant subquery and a "?" filter
    frozenset({"label_sql"}),
    frozenset({"select"}),  # messages(): the constant column list above
    frozenset({"select", "active_threads"}),  # ... and a constant subquery of "?" bounds
    # the upsert: column lists, "?" placeholders and the dialect's max function
    frozenset({'", ".join(MESSAGE_COLUMNS)', '", ".join("?" for _ in MESSAGE_COLUMNS)', "m",
               "greatest", "PROBLEM_NO_TIME"}),
    frozenset({"PROBLEM_NO_TIME"}),  # a constant bit mask in the upsert
    frozenset({"', '.join(THREAD_INPUT_COLUMNS)"}),  # the thread inputs' constant columns
    frozenset({"name"}),  # an index name from the constant DEFERRED_INDEXES
    # export.py: month bounds and keyset paging, fragments of "?" placeholders from the code
    frozenset({"where"}),
    frozenset({"where", "order", "cache.label_agg"}),
    # cache/pairing.py: the dialect's constant fragments (internal sets bound as "?" JSON,
    # a column's domain test, the recipient split, an index hint), a column name and the
    # optional detail columns
    frozenset({"address", "domain_in"}),
    frozenset({"values", "items", "item_internal", "time_index", "human_columns",
               "detail_sql", "detail_join"}),
    frozenset({"cache.label_agg"}),
    # thread_rules: the backend's constant reader of a JSON array; the thread ids are bound
    frozenset({"self.json_values"}),
    # the files table: its constant column list and "?" placeholders
    frozenset({"', '.join('?' * 8)", "', '.join(FILE_COLUMNS)"}),
    frozenset({"', '.join(FILE_COLUMNS[1:])"}),
    # migration 5 (maildir_places_sql): constant table names and the dialect's expressions
    frozenset({"table", "has_hash.format(col=col, d=d)"}),
    frozenset({"new", "table", "same", "last5.format(d=d)", "maildir"}),
    frozenset({"new", "sub", "table", "last5.format(d=d)", "maildir"}),
    # store/leads.py: the kept table's constant column list and "?" placeholders, its
    # columns picked from its constant KEPT_COLUMNS, its constant ORDER BY, "?" filters
    # joined by AND, the dialect's JSON-array subquery (thread ids bound as one "?" JSON
    # parameter), "?" marks for a few ids
    frozenset({"', '.join('?' for _ in KEPT_COLUMNS)", "', '.join(KEPT_COLUMNS)"}),
    frozenset({"', '.join(KEPT_COLUMNS)"}),
    frozenset({"cols", "' AND '.join(where)", "_ORDER"}),
    # kept_blocks: columns picked from BLOCK_KEPT_COLUMNS, constant "?" filters
    frozenset({"cols", "where"}),
    # kept_tally: its constant "answered as of ?" test, columns picked from KEPT_COLUMNS
    frozenset({"' AND '.join(where)", "_ANSWERED", "cols"}),
    frozenset({"marks"}),
    # kept_form_leads_touching: columns from KEPT_COLUMNS, "?" filters, the JSON-array reader
    frozenset({"cols", "' AND '.join(where)", "self.json_values"}),
    # store/leads.py, schema 8: the kept blocks' and volume's constant column lists and "?"
    # placeholders, constant table names, "?" filters joined by AND, "?" time spans and a
    # constant "id <= ?" filter
    frozenset({"', '.join(BLOCK_KEPT_COLUMNS)", "', '.join('?' for _ in BLOCK_KEPT_COLUMNS)"}),
    frozenset({"cols"}),
    frozenset({"' AND '.join(where)", "', '.join(VOLUME_COLUMNS)"}),
    frozenset({"span", "extra"}),
    frozenset({"table"}),
    frozenset({"self.json_values", "table"}),
    # postgres.py _frame: a query (itself checked here, its values bound) wrapped in
    # COPY (...) TO STDOUT and in a LIMIT 0 for its column types
    frozenset({"q"}),
    # status: the backend's constant count of an account's messages (a class constant)
    frozenset({"self.account_messages"}),
    # base._write_changed (an incremental regroup, the kept-lead update): constant table
    # names and column lists, "?" placeholders and "column = ?" tests of constant columns
    frozenset({"cols", "table", "where"}),  # where: the backend's constant JSON-array readers
    frozenset({"table", "key_match"}),
    frozenset({"table", "cols", "marks"}),
    frozenset({"table", "sets", "key_match"}),
}


def _text(node: ast.AST) -> str:
    return "".join(n.value for n in ast.walk(node)
                   if isinstance(n, ast.Constant) and isinstance(n.value, str))


def formatted_sql(root: Path = SRC) -> list[tuple[str, int, frozenset[str]]]:
    """(file, line, interpolated expressions) of every SQL text built by formatting."""
    found = []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.JoinedStr):
                parts = {ast.get_source_segment(source, v.value) or "?"
                         for v in node.values if isinstance(v, ast.FormattedValue)}
            elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and isinstance(
                    node.left, ast.Constant | ast.JoinedStr):
                parts = {"%: " + (ast.get_source_segment(source, node.right) or "?")}
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "format" and isinstance(node.func.value, ast.Constant)):
                parts = {"format: " + (ast.get_source_segment(source, a) or "?")
                         for a in [*node.args, *(k.value for k in node.keywords)]}
            else:
                continue
            if parts and SQL_WORDS.search(_text(node)):
                found.append((str(path.relative_to(root)), node.lineno, frozenset(parts)))
    return found


def test_sql_is_formatted_only_with_code_constants() -> None:
    found = formatted_sql()
    assert found, "the scan sees the known, allowed cases"
    unexpected = [f for f in found if f[2] not in ALLOWED_INTERPOLATIONS]
    assert unexpected == [], "SQL built with formatting: bind values with ? instead"


def test_the_sql_scan_catches_formatting_of_user_data(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text(
        "def f(c, name):\n"
        "    c.execute(f\"SELECT * FROM messages WHERE from_addr = '{name}'\")\n"
        "    c.execute(\"DELETE FROM t WHERE a = %s\" % name)\n"
        "    c.execute(\"UPDATE t SET a = {}\".format(name))\n"
        "    c.execute(\"SELECT 1 FROM t WHERE a = ?\", (name,))\n"
        "    print(f\"hello {name}\")\n")
    assert formatted_sql(tmp_path) == [
        ("bad.py", 2, frozenset({"name"})),
        ("bad.py", 3, frozenset({"%: name"})),
        ("bad.py", 4, frozenset({"format: name"})),
    ]


# -- CSV -------------------------------------------------------------------------------------
DANGEROUS = ["=SUM(A1)", "+1 Plus", "-1 Minus", "@Handle", "\tTab", "\rCarriage"]


@pytest.fixture(scope="module")
def hostile_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A cache with one unanswered lead per rep; rep names start with formula characters."""
    tmp = tmp_path_factory.mktemp("csv")
    mail = tmp / "mail"
    mail.mkdir()
    reps = []
    for i, name in enumerate(DANGEROUS):
        (mail / f"{i}.eml").write_bytes(
            f"From: Prospect {i} <p{i}@client.example>\nTo: rep{i}@acme.example\n"
            f"Subject: Quote {i}\nDate: Mon, 2 Nov 2026 1{i}:00:00 +0000\n"
            f"Message-ID: <lead{i}@client.example>\n\nbody\n".encode())
        reps.append(f"[[reps]]\nname = {json.dumps(name)}\nemails = [\"rep{i}@acme.example\"]\n")
    cfg = tmp / "replytime.toml"
    cfg.write_text('[team]\ninternal_domains = ["acme.example"]\ntimezone = "UTC"\n'
                   + "".join(reps))
    db = tmp / "c.sqlite"
    r = run(tmp, "--config", str(cfg), "--db", str(db), "import", str(mail))
    assert r.returncode == 0, r.stderr
    return tmp, cfg, db


@pytest.mark.parametrize("raw", [False, True], ids=["neutralised", "raw-csv"])
def test_csv_cells_are_neutralised_unless_raw(hostile_cache: tuple[Path, Path, Path],
                                              raw: bool) -> None:
    tmp, cfg, db = hostile_cache
    r = run(tmp, "--config", str(cfg), "--db", str(db), "report", "leads", "--format", "csv",
            "--as-of", "2026-11-03T00:00Z", *(["--raw-csv"] if raw else []))
    assert r.returncode == 0, r.stderr
    # Parsed as a spreadsheet would: a CR inside a cell must be quoted, or the row splits.
    rows = list(csv.DictReader(io.StringIO(r.stdout, newline="")))
    assert len(rows) == len(DANGEROUS), r.stdout
    got = sorted((row["rep"] for row in rows), key=lambda s: s.lstrip("'"))
    want = sorted(DANGEROUS if raw else ["'" + n for n in DANGEROUS],
                  key=lambda s: s.lstrip("'"))
    assert got == want
    assert sorted(row["lead_from"] for row in rows) == [f"p{i}@client.example"
                                                        for i in range(len(DANGEROUS))]


def test_to_csv_prefixes_only_text_cells_that_start_a_formula() -> None:
    """Column by column: text, mixed object, numbers and an object column without text."""
    import pandas as pd

    from replytime.output.render import to_csv

    df = pd.DataFrame({
        "text": pd.Series(["=1+1", "ok", None, "-2", "@a", "\tx", "a=b"], dtype="str"),
        "mixed": pd.Series([None, "+x", 3, "fine", "\rcr", 1.5, True], dtype=object),
        "number": [-1, 2, 3, 4, 5, 6, 7],
        "flags": pd.Series([True, False, None, True, False, True, False], dtype=object),
    })
    rows = list(csv.reader(io.StringIO(to_csv(df), newline="")))
    assert rows[1:] == [
        ["'=1+1", "", "-1", "True"], ["ok", "'+x", "2", "False"], ["", "3", "3", ""],
        ["'-2", "fine", "4", "True"], ["'@a", "'\rcr", "5", "False"],
        ["'\tx", "1.5", "6", "True"], ["a=b", "True", "7", "False"],
    ]
    raw = list(csv.reader(io.StringIO(to_csv(df, raw=True), newline="")))
    assert [r[0] for r in raw[1:]] == ["=1+1", "ok", "", "-2", "@a", "\tx", "a=b"]


NASTY_TEXT = ["=1+1", "ok", None, "-2", "@a", "\tx", "a=b", 'say "hi", then', "two\nlines",
              "\r", "", "é€𝄞 Ünïcode", " spaced ", "'", "+", ",", '"', "\r\n", "x" * 300]


def _nasty_frame(n: int) -> pd.DataFrame:
    """Every column type the reports write, with each awkward value, repeated to ``n`` rows
    (more than one Arrow batch of render._csv_batches when n is large)."""
    import numpy as np
    import pandas as pd

    k = len(NASTY_TEXT)
    text = [NASTY_TEXT[i % k] for i in range(n)]
    return pd.DataFrame({
        "text": pd.Series(text, dtype="str"),
        "object": pd.Series([np.nan if t is None and i % 2 else t for i, t in enumerate(text)],
                            dtype=object),
        "with, comma": pd.Series(list(reversed(text)), dtype=object),
        "number": np.arange(n, dtype="int64") - n // 2,
        "float": np.array([1.0, np.nan, 1e-5, 1e20, 0.1, -0.0, np.inf, 2 / 3, -1.5])[
            np.arange(n) % 9],
        "nullable": pd.array([None if i % 4 == 0 else i * 1000 for i in range(n)],
                             dtype="Int64"),
        "flag": np.arange(n) % 3 == 0,
        "empty": pd.Series([None] * n, dtype=object),
    })


@pytest.mark.parametrize("raw", [False, True], ids=["neutralised", "raw-csv"])
@pytest.mark.parametrize("n", [0, 1, 19, 120_003], ids=["no-rows", "one", "each", "batches"])
def test_to_csv_writes_what_pandas_writes(n: int, raw: bool) -> None:
    """The Arrow writer behind to_csv, byte for byte what pandas' writer made of the same
    frame (quoting, doubled quotes, CR/LF, formula prefixes, NaN/None/<NA>, floats, bools,
    non-ASCII), and its UTF-8 bytes in parts for the report writer."""
    from replytime.output import render

    df = _nasty_frame(n)
    assert render._arrow_csv(df, raw=raw) is not None  # not pandas' fallback
    want = render._pandas_csv(df, raw=raw)
    assert render.to_csv(df, raw=raw) == want
    parts = render.csv_payload(df, raw=raw, encoded=True)
    assert b"".join(parts).decode("utf-8") == want  # type: ignore[arg-type]
    assert render.csv_payload(df, raw=raw, encoded=False) == want


def test_to_csv_leaves_other_frames_to_pandas() -> None:
    """A mixed object column, one column, or a date column: pandas' writer, as before."""
    import pandas as pd

    from replytime.output import render

    for df in (pd.DataFrame({"a": ["x", 3], "b": [1, 2]}), pd.DataFrame({"a": [None, "=x"]}),
               pd.DataFrame({"d": pd.to_datetime(["2026-11-02"]), "b": [1]})):
        assert render._arrow_csv(df, raw=False) is None
        assert render.to_csv(df) == render._pandas_csv(df)


# -- ~ and $VARS -------------------------------------------------------------------------------
def test_config_path_with_tilde_and_variables(hostile_cache: tuple[Path, Path, Path]) -> None:
    tmp, cfg, db = hostile_cache
    for given in ("~/replytime.toml", "$RT_CFG_DIR/replytime.toml", "${RT_CFG_DIR}/replytime.toml"):
        r = run(tmp, "--config", given, "--db", "$RT_CFG_DIR/c.sqlite", "status", "--format",
                "json", env={"RT_CFG_DIR": str(tmp)})
        assert r.returncode == 0, (given, r.stderr)
        assert json.loads(r.stdout)["messages"] == len(DANGEROUS)


@pytest.mark.parametrize("token_file", ["~/tokens/g.json", "$RT_TOKENS/g.json"])
def test_gmail_token_path_expanded(tmp_path: Path, token_file: str) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text(f'[[accounts]]\nname = "g"\ntype = "gmail"\ntoken_file = "{token_file}"\n')
    r = run(tmp_path, "--config", str(cfg), "--db", str(tmp_path / "c.sqlite"), "sync",
            env={"RT_TOKENS": str(tmp_path / "tokens")})
    assert (r.returncode, r.stderr) == (3, f"replytime: error: g: no Gmail token at "
                                           f"{tmp_path / 'tokens' / 'g.json'}: run "
                                           "`replytime auth gmail g`\n")


@pytest.mark.parametrize("where", ["~/secrets/pw", "$RT_SECRETS/pw"])
def test_imap_password_file_and_ca_file_paths_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "pw").write_text(PASSWORD + "\n")
    (tmp_path / "secrets" / "ca.pem").write_text("not used before connecting\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RT_SECRETS", str(tmp_path / "secrets"))
    account = Account("i", "imap", {"host": "imap.example.com", "username": "u",
                                    "password_file": where,
                                    "ca_file": where.replace("/pw", "/ca.pem"),
                                    "oauth_token_file": where.replace("/pw", "/tok.json")})
    assert get_password(account) == PASSWORD
    s = Settings.from_account(account)
    assert s.ca_file == str(tmp_path / "secrets" / "ca.pem")
    assert s.oauth_token_file == str(tmp_path / "secrets" / "tok.json")


# -- secrets -----------------------------------------------------------------------------------
def test_no_command_line_option_takes_a_secret() -> None:
    import typer.main

    from replytime.cli import app

    def walk(cmd: object, path: str) -> list[str]:
        names = [f"{path} {opt}" for p in getattr(cmd, "params", []) for opt in
                 [*getattr(p, "opts", []), *getattr(p, "secondary_opts", []), p.name or ""]]
        for name, sub in getattr(cmd, "commands", {}).items():
            names += walk(sub, f"{path} {name}")
        return names

    options = walk(typer.main.get_command(app), "replytime")
    assert any("--db" in o for o in options) and any(" sync " in o for o in options)
    assert [o for o in options if re.search(r"pass|secret|token|credential|key", o, re.I)] == []


def test_imap_password_never_on_a_command_line_or_printed(tmp_path: Path) -> None:
    """A sync hanging on a server that never greets: its /proc cmdline is free of the
    password; when it gives up, neither the message nor the --debug traceback shows it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def hold() -> None:  # accept and say nothing
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    cfg = tmp_path / "i.toml"
    cfg.write_text(
        '[[accounts]]\nname = "i"\ntype = "imap"\nhost = "127.0.0.1"\n'
        f'port = {port}\nsecurity = "none"\nusername = "rep@acme.example"\n'
        'password_env = "RT_IMAP_PW"\nretries = 0\ntimeout = 1.5\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLYTIME_")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "config"), RT_IMAP_PW=PASSWORD)
    try:
        proc = subprocess.Popen([str(SCRIPT), "--debug", "--config", str(cfg), "--db",
                                 str(tmp_path / "c.sqlite"), "sync"], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not accepted and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        assert accepted, "the sync never connected"
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        out, err = proc.communicate(timeout=60)
    finally:
        stop.set()
        holder.join()
        for s in accepted:
            s.close()
        listener.close()
    assert b"sync" in cmdline and not any(PASSWORD.encode() in a for a in cmdline)
    assert proc.returncode == 4, err
    assert err.startswith("Traceback") and err.endswith(
        f"replytime: error: i: IMAP server 127.0.0.1:{port} unreachable after 0 retries "
        "(timed out); 0 messages synced before the failure are kept\n")
    assert PASSWORD not in out + err
