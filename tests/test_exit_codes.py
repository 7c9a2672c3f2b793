"""Every exit code (docs/commands.md) through the real console script: 0 ok, 1 a check
failed or the cache is locked, 2 usage / config / path / cache errors, 3 authentication, 4 a
source unreachable after retries, 70 an internal error. Each error is exactly one line on
stderr, no traceback; with --debug the traceback comes first, then the same line."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_gmail import FakeGmail, generate_mailbox  # noqa: E402

from tests.dovecot import free_port

SCRIPT = Path(sys.executable).with_name("replytime")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PASSWORD_ENV = "REPLYTIME_TEST_EXIT_PW"


def run(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLYTIME_")}
    env.update(NO_COLOR="1", HOME=str(tmp), XDG_CONFIG_HOME=str(tmp / "config"),
               XDG_DATA_HOME=str(tmp / "data"))
    env[PASSWORD_ENV] = "s3cret-imap-pw"
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, cwd=tmp,
                          env=env, timeout=120)


def one_line_error(r: subprocess.CompletedProcess[str], code: int, line: str) -> None:
    """Exit ``code`` with exactly ``line`` on stderr."""
    assert (r.returncode, r.stderr) == (code, line + "\n")
    assert "Traceback" not in r.stdout


def with_debug(tmp: Path, args: list[str], code: int, line: str) -> None:
    """The same command with --debug: the traceback, then the same one-line message."""
    r = run(tmp, "--debug", *args)
    assert r.returncode == code
    assert r.stderr.startswith("Traceback (most recent call last):\n"), r.stderr
    assert r.stderr.endswith("\n" + line + "\n")


@pytest.fixture(scope="module")
def example_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("exit")
    db = tmp / "acme.sqlite"
    r = run(tmp, "--config", str(EXAMPLES / "replytime.toml"), "--db", str(db), "import",
            str(EXAMPLES / "mailbox.mbox"))
    assert r.returncode == 0, r.stderr
    return db


def report(tmp: Path, db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(tmp, "--config", str(EXAMPLES / "replytime.toml"), "--db", str(db), "report",
               "reps", "--as-of", "2026-11-06T21:00Z", "--format", "csv", *args)


# -- 0 ---------------------------------------------------------------------------------------
def test_0_ok(example_cache: Path, tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite"
    r = run(tmp_path, "--config", str(EXAMPLES / "replytime.toml"), "--db", str(db), "import",
            str(EXAMPLES / "mailbox.mbox"))
    assert r.returncode == 0 and r.stdout == ""
    assert r.stderr.startswith("imported 898 messages (0 skipped) from 1 path(s) in ")
    r = report(tmp_path, example_cache, "--fail-if-over", "30d")
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.startswith("rep,team,leads,answered,")


# -- 1 ---------------------------------------------------------------------------------------
def test_1_check_failed(example_cache: Path, tmp_path: Path) -> None:
    r = report(tmp_path, example_cache, "--rep", "Alice Ng", "--fail-if-over", "1m")
    one_line_error(r, 1, "replytime: error: target missed: Alice Ng median 37m > 1m; "
                         "team median 37m > 1m")
    assert r.stdout.startswith("rep,team,")  # the report is still written
    r = run(tmp_path, "--config", str(EXAMPLES / "replytime.toml"), "--db", str(example_cache),
            "report", "unanswered", "--as-of", "2026-11-06T21:00Z", "--format", "csv",
            "--fail-if-any")
    one_line_error(r, 1, "replytime: error: 18 unanswered lead(s)")


def test_1_cache_locked_by_another_process(tmp_path: Path) -> None:
    db = tmp_path / "locked.sqlite"
    args = ["--db", str(db), "import", str(EXAMPLES / "mailbox.mbox")]
    locks = tmp_path / "locked.sqlite.locks"  # one lock file per account (here "import")
    locks.mkdir()
    digest = hashlib.sha1(b"import").hexdigest()[:12]
    fd = os.open(locks / f"account-import-{digest}.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # this test process is the other writer
        line = (f"replytime: error: account 'import' is being imported or synced into {db} by "
                "another replytime process; try again when it has finished")
        one_line_error(run(tmp_path, *args), 1, line)
        with_debug(tmp_path, args, 1, line)
    finally:
        os.close(fd)
    assert run(tmp_path, *args).returncode == 0


# -- 2 ---------------------------------------------------------------------------------------
def test_2_missing_path_corrupt_cache_bad_config(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite"
    missing = tmp_path / "nowhere.mbox"
    args = ["--db", str(db), "import", str(missing)]
    one_line_error(run(tmp_path, *args), 2, f"replytime: error: {missing} does not exist")
    with_debug(tmp_path, args, 2, f"replytime: error: {missing} does not exist")

    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database at all " * 200)
    one_line_error(run(tmp_path, "--db", str(bad), "status"), 2,
                   f"replytime: error: {bad} is not a usable replytime cache "
                   "(file is not a database)")

    cfg = tmp_path / "bad.toml"
    cfg.write_text('[sla]\ntarget = "soon"\n')
    r = run(tmp_path, "--config", str(cfg), "--db", str(db), "import", str(missing))
    assert r.returncode == 2 and r.stderr.startswith("replytime: error: config: sla.target: ")
    assert r.stderr.count("\n") == 1

    one_line_error(run(tmp_path, "--config", str(tmp_path / "none.toml"), "status"), 2,
                   f"replytime: error: config: config file {tmp_path / 'none.toml'} "
                   "does not exist")


@pytest.mark.parametrize(("args", "needle"), [
    (["report", "reps", "--bogus"], "--bogus"),
    (["frobnicate"], "frobnicate"),
    (["import"], "paths"),
    (["report", "nonsense"], "nonsense"),
])
def test_2_bad_usage_is_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    r = run(tmp_path, *args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("replytime: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr


# -- 3 ---------------------------------------------------------------------------------------
@pytest.fixture
def fake() -> Iterator[FakeGmail]:
    server = FakeGmail(generate_mailbox(5, seed=3), quota_rate=4000.0, seed=7)
    server.start()
    yield server
    server.stop()


def gmail_config(tmp: Path, token: Path, fake: FakeGmail) -> Path:
    cfg = tmp / "gmail.toml"
    cfg.write_text(
        '[[accounts]]\nname = "sales-gmail"\ntype = "gmail"\n'
        f'token_file = "{token}"\napi_endpoint = "{fake.url}"\n'
        'retry_base = 0.005\nretry_cap = 0.05\nmax_attempts = 3\n')
    return cfg


def test_3_missing_token(tmp_path: Path, fake: FakeGmail) -> None:
    token = tmp_path / "missing.token.json"
    args = ["--config", str(gmail_config(tmp_path, token, fake)), "--db",
            str(tmp_path / "c.sqlite"), "sync"]
    line = (f"replytime: error: sales-gmail: no Gmail token at {token}: "
            "run `replytime auth gmail sales-gmail`")
    one_line_error(run(tmp_path, *args), 3, line)
    with_debug(tmp_path, args, 3, line)
    assert fake.log == []  # nothing was sent anywhere


def test_3_revoked_token(tmp_path: Path, fake: FakeGmail) -> None:
    token = tmp_path / "token.json"
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, json.dumps({"refresh_token": "refresh-secret-1", "client_id": "cid",
                             "client_secret": "client-secret-xyz",
                             "token_uri": fake.url + "token"}).encode())
    os.close(fd)
    fake.revoked = True
    args = ["--config", str(gmail_config(tmp_path, token, fake)), "--db",
            str(tmp_path / "c.sqlite"), "sync"]
    r = run(tmp_path, *args)
    assert r.returncode == 3, r.stderr
    assert r.stderr.startswith("replytime: error: ") and r.stderr.count("\n") == 1
    assert "run `replytime auth gmail sales-gmail`" in r.stderr
    for secret in ("refresh-secret-1", "client-secret-xyz", *fake.issued):
        assert secret not in r.stderr + r.stdout
    with_debug(tmp_path, args, 3, r.stderr.rstrip("\n"))


# -- 4 ---------------------------------------------------------------------------------------
def test_4_source_unreachable(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "imap.toml"
    cfg.write_text(
        '[[accounts]]\nname = "sales-imap"\ntype = "imap"\nhost = "127.0.0.1"\n'
        f'port = {port}\nsecurity = "none"\nusername = "rep@acme.example"\n'
        f'password_env = "{PASSWORD_ENV}"\nretries = 2\nretry_delay = 0.01\n')
    args = ["--config", str(cfg), "--db", str(tmp_path / "c.sqlite"), "sync"]
    line = (f"replytime: error: sales-imap: IMAP server 127.0.0.1:{port} unreachable after 2 "
            "retries "
            "(connection refused); 0 messages synced before the failure are kept")
    r = run(tmp_path, *args)
    one_line_error(r, 4, line)
    assert "s3cret-imap-pw" not in r.stderr + r.stdout
    with_debug(tmp_path, args, 4, line)


def test_70_internal_error_is_never_a_check_failure(example_cache: Path, tmp_path: Path) -> None:
    """A bug ends with one line and exit 70, not 1 (what `--fail-if-*` means): here a real
    `report` run whose reps table is made to raise, through the console script's entry."""
    code = ("import sys; import replytime.analysis.reports as r\n"
            "def broken(*a, **k): raise KeyError('rep')\n"
            "r.Analysis.reps = broken\n"
            "from replytime.cli import run; sys.argv[0] = 'replytime'; run()")
    args = ["--config", str(EXAMPLES / "replytime.toml"), "--db", str(example_cache), "report",
            "reps", "--fail-if-over", "1h"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLYTIME_")}
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                       cwd=tmp_path, env={**env, "HOME": str(tmp_path)}, timeout=120)
    one_line_error(r, 70, "replytime: internal error: KeyError('rep') (run with --debug for "
                   "details)")
