"""`replytime alert` end to end: the console script against a real cache, posting to a
local HTTPS receiver that answers as Slack's incoming webhooks and Teams workflows do
(tests/webhook.py), and mailing through a real SMTP server (tests/smtpd.py). Faults:
429 with Retry-After, 5xx, 4xx, timeouts: nothing lost, nothing sent twice."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from replytime.config import parse_config
from replytime.errors import ConfigError
from replytime.store import SCHEMA_VERSION, open_cache
from tests.mailbuilder import TEAM_TOML, Mailbox, at
from tests.smtpd import PASSWORD, SMTPServer
from tests.webhook import TOKEN, WebhookServer, slack_problem, teams_problem

SCRIPT = Path(sys.executable).with_name("replytime")
AS_OF = at(3, 12)  # Thursday 5 Nov 2026 12:00 UTC

CONFIG = "\n" + TEAM_TOML


def lead(mb: Mailbox, who: str, to: str, when: object, reply: tuple[str, object] | None = None,
         subject: str = "Pricing question") -> str:
    mid = mb.send(f"{who} <{who}@client.example>", to, when, subject=subject)  # type: ignore[arg-type]
    if reply:
        mb.send(f"{reply[0]}@acme.example", f"{who}@client.example", reply[1],  # type: ignore[arg-type]
                parent=mid, subject="Re: " + subject)
    return mid


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """Open leads at AS_OF (calendar time, no schedule): a1 6h (Alice), e1 3h30 (the
    shared inbox), b1 1h (Bob), c1 30m (Carol); d1 answered at 11:00 after 4h; old, 10 days
    old and unanswered."""
    mb = Mailbox(tmp_path)
    lead(mb, "a1", "alice@acme.example", at(3, 6), subject='Quote <@U123> *now* [x](http://e.x)')
    lead(mb, "d1", "alice@acme.example", at(3, 7), reply=("alice", at(3, 11)))
    lead(mb, "e1", "sales@acme.example", at(3, 8, 30))
    lead(mb, "b1", "bob@acme.example", at(3, 11))
    lead(mb, "c1", "carol@acme.example", at(3, 11, 30))
    lead(mb, "old", "alice@acme.example", at(-7, 9))
    mb.analysis().cache.close()
    return tmp_path / "cache.sqlite"


def write_config(tmp: Path, alerts: str, extra: str = "") -> Path:
    path = tmp / "replytime.toml"
    path.write_text(CONFIG + extra + "\n[alerts]\n" + alerts)
    return path


def run(cfg: Path, db: Path, *args: str, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("REPLYTIME_")}
    full.update({"NO_COLOR": "1", "COLUMNS": "200", **(env or {})})
    return subprocess.run([str(SCRIPT), "--config", str(cfg), "--db", str(db), *args],
                          capture_output=True, text=True, env=full, timeout=120)


@pytest.fixture
def hooks(tmp_path: Path) -> Iterator[WebhookServer]:
    with WebhookServer(tmp_path) as server:
        yield server


def hook_env(hooks: WebhookServer) -> dict[str, str]:
    # The client trusts the receiver's self-signed certificate through the system-wide
    # SSL_CERT_FILE that OpenSSL reads: verification stays on.
    return {"SLACK_URL": hooks.url("slack"), "TEAMS_URL": hooks.url("teams"),
            "SSL_CERT_FILE": str(hooks.cert)}


HOOKS = """older_than = "2h"
slack_webhook_env = "SLACK_URL"
teams_webhook_env = "TEAMS_URL"
timeout = 2
retries = 2
[alerts.reps]
Bob = "30m"
[alerts.teams]
West = "1h"
"""


def alerted_rows(db: Path) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return sorted(conn.execute("SELECT lead_key, channel FROM alerts"))


def slack_senders(payloads: list[dict]) -> list[str]:
    out = []
    for p in payloads:
        for b in p["blocks"]:
            for f in b.get("fields", []):
                if f["text"].startswith("From: "):
                    out.append(f["text"].removeprefix("From: ").split("@")[0])
    return out


def teams_senders(payloads: list[dict]) -> list[str]:
    out = []
    for p in payloads:
        for item in p["attachments"][0]["content"]["body"]:
            for block in item.get("items", []):
                runs = block["inlines"]
                if runs[0]["text"] == "From: ":
                    out.append(runs[1]["text"].split("@")[0])
    return out


# -- what is due -----------------------------------------------------------------------------
def test_dry_run_json_lists_the_stale_leads_and_sends_nothing(
        tmp_path: Path, cache: Path, hooks: WebhookServer) -> None:
    cfg = write_config(tmp_path, HOOKS)
    r = run(cfg, cache, "alert", "--dry-run", "--format", "json", "--as-of", AS_OF.isoformat(),
            env=hook_env(hooks))
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [(x["lead_id"], x["rep"], x["age_s"], x["threshold_s"]) for x in rows] == [
        ("m1@test.example", "Alice", 6 * 3600, 7200),
        ("m4@test.example", "(unassigned)", 3 * 3600 + 1800, 7200),
        ("m5@test.example", "Bob", 3600, 1800),  # Bob's own threshold beats the default
    ]  # Carol's 30m lead is under West's 1h; d1 was answered; "old" is past the lookback
    assert all(x["channels"] == ["slack", "teams"] for x in rows)
    assert rows[0]["lead_from"] == "a1@client.example" and rows[0]["team"] == "East"
    assert hooks.attempts == [] and alerted_rows(cache) == []
    assert TOKEN not in r.stdout + r.stderr


def test_business_time_is_the_default_basis_with_a_schedule(tmp_path: Path, cache: Path,
                                                            hooks: WebhookServer) -> None:
    # Working hours 10:00-18:00: a1 (06:00) has waited 2h of business time at 12:00, not 6h.
    schedule = ('\n[schedules.default]\ntimezone = "UTC"\n'
                + "".join(f'{d} = ["10:00-18:00"]\n' for d in (
                    "monday", "tuesday", "wednesday", "thursday", "friday")))
    cfg = write_config(tmp_path, 'older_than = "1h30m"\nslack_webhook_env = "SLACK_URL"\n',
                       extra=schedule)
    r = run(cfg, cache, "alert", "--dry-run", "--format", "json", "--as-of", AS_OF.isoformat(),
            env=hook_env(hooks))
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [(x["lead_id"], x["waiting_s"], x["age_s"]) for x in rows] == [
        ("m1@test.example", 7200, 21600), ("m4@test.example", 7200, 12600)]


# -- sending once -------------------------------------------------------------------------------
def test_each_stale_lead_is_posted_once_to_slack_and_teams(tmp_path: Path, cache: Path,
                                                           hooks: WebhookServer) -> None:
    cfg = write_config(tmp_path, HOOKS)
    env = hook_env(hooks)
    r = run(cfg, cache, "alert", "--as-of", AS_OF.isoformat(), env=env)
    assert r.returncode == 0, r.stderr
    assert "alerted 3 lead(s) (slack 3, teams 3)" in r.stderr
    assert slack_senders(hooks.got("slack")) == ["a1", "e1", "b1"]
    assert teams_senders(hooks.got("teams")) == ["a1", "e1", "b1"]
    for p in hooks.got("slack"):
        assert slack_problem(p) is None and p["text"].startswith("Lead waiting")
    for p in hooks.got("teams"):
        assert teams_problem(p) is None
    # Header text goes as plain_text / TextRun: the subject's mention and link stay text.
    fields = [f for b in hooks.got("slack")[0]["blocks"] for f in b.get("fields", [])]
    assert {"type": "plain_text", "text": "Subject: Quote <@U123> *now* [x](http://e.x)",
            "emoji": False} in fields
    assert alerted_rows(cache) == sorted(
        (k, c) for k in ("m1@test.example", "m4@test.example", "m5@test.example")
        for c in ("slack", "teams"))
    # A rerun, and one an hour later (Carol's lead is over West's 1h then): only Carol's.
    again = run(cfg, cache, "alert", "--as-of", AS_OF.isoformat(), env=env)
    assert again.returncode == 0 and "alerted 0 lead(s)" in again.stderr
    later = run(cfg, cache, "alert", "--as-of", at(3, 13).isoformat(), env=env)
    assert later.returncode == 0, later.stderr
    assert slack_senders(hooks.got("slack")) == ["a1", "e1", "b1", "c1"]
    assert teams_senders(hooks.got("teams")) == ["a1", "e1", "b1", "c1"]
    assert TOKEN not in r.stdout + r.stderr + later.stdout + later.stderr


def test_digest_posts_one_message_per_run(tmp_path: Path, cache: Path,
                                          hooks: WebhookServer) -> None:
    cfg = write_config(tmp_path, HOOKS.replace('older_than = "2h"',
                                               'older_than = "2h"\ndigest = true'))
    r = run(cfg, cache, "alert", "--as-of", AS_OF.isoformat(), env=hook_env(hooks))
    assert r.returncode == 0, r.stderr
    (slack,), (teams,) = hooks.got("slack"), hooks.got("teams")
    assert slack["text"] == "3 leads waiting for a first reply"
    assert slack_senders([slack]) == ["a1", "e1", "b1"] and slack_problem(slack) is None
    assert teams_senders([teams]) == ["a1", "e1", "b1"] and teams_problem(teams) is None
    assert len(alerted_rows(cache)) == 6


def test_a_lead_answered_after_a_failed_run_is_never_alerted(tmp_path: Path, cache: Path,
                                                              hooks: WebhookServer) -> None:
    """At 10:00 d1 has waited 3h, but Slack is down; it is answered at 11:00; the run at
    12:00 posts what is still open and not d1."""
    cfg = write_config(tmp_path, HOOKS.replace("teams_webhook_env", "# teams_webhook_env")
                       .replace("retries = 2", "retries = 0"))
    env = hook_env(hooks)
    hooks.faults["slack"] = [(503, {}, b"rollup_error")] * 5
    early = run(cfg, cache, "alert", "--as-of", at(3, 10).isoformat(), env=env)
    assert early.returncode == 4, early.stderr
    assert "Slack webhook failed after 1 attempt: HTTP 503 rollup_error" in early.stderr
    assert hooks.received == [] and alerted_rows(cache) == []
    hooks.faults["slack"] = []
    r = run(cfg, cache, "alert", "--as-of", AS_OF.isoformat(), env=env)
    assert r.returncode == 0, r.stderr
    assert slack_senders(hooks.got("slack")) == ["a1", "e1", "b1"]  # no d1


# -- faults -----------------------------------------------------------------------------------
def test_429_waits_for_retry_after_then_posts_once(tmp_path: Path, cache: Path,
                                                   hooks: WebhookServer) -> None:
    cfg = write_config(tmp_path, HOOKS)
    hooks.faults["slack"] = [(429, {"Retry-After": "2"}, b"rate_limited")]
    started = time.monotonic()
    r = run(cfg, cache, "alert", "--as-of", AS_OF.isoformat(), env=hook_env(hooks))
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - started >= 2
    assert hooks.attempts.count("slack") == 4  # one refused, then three posts
    assert slack_senders(hooks.got("slack")) == ["a1", "e1", "b1"]


def test_overlapping_runs_post_each_lead_once(tmp_path: Path, cache: Path,
                                             hooks: WebhookServer) -> None:
    """A slow run (rate limited for 2 s) and a second one started meanwhile: the second
    waits for the first and then finds nothing new."""
    cfg = write_config(tmp_path, HOOKS)
    hooks.faults["slack"] = [(429, {"Retry-After": "2"}, b"rate_limited")]
    full = {k: v for k, v in os.environ.items() if not k.startswith("REPLYTIME_")}
    full.update(hook_env(hooks))
    args = [str(SCRIPT), "--config", str(cfg), "--db", str(cache), "alert", "--as-of",
            AS_OF.isoformat()]
    first = subprocess.Popen(args, env=full, stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    second = subprocess.Popen(args, env=full, stderr=subprocess.PIPE, text=True)
    outs = [p.communicate(timeout=60)[1] for p in (first, second)]
    assert first.returncode == second.returncode == 0, outs
    assert slack_senders(hooks.got("slack")) == ["a1", "e1", "b1"]
    assert teams_senders(hooks.got("teams")) == ["a1", "e1", "b1"]
    assert "alerted 0 lead(s)" in outs[1]


def test_failed_channel_is_resent_alone_by_the_next_run(tmp_path: Path, cache: Path,
                                                        hooks: WebhookServer) -> None:
    """Slack answers 500 to every try of the second lead: Slack stops there (exit 4), Teams
    gets all three; the rerun posts Slack's two missing leads and nothing else."""
    cfg = write_config(tmp_path, HOOKS)
    env = hook_env(hooks)
    # the first post passes; the second lead's three tries (1 + 2 retries) get a 500
    hooks.fail_requests["slack"] = dict.fromkeys((2, 3, 4), (500, {}, b"rollup_error"))
    r = run(cfg, cache, "alert", "--as-of", AS_OF.isoformat(), env=env)
    assert r.returncode == 4
    assert r.stderr.strip().endswith(
        "replytime: error: slack: Slack webhook failed after 3 attempts: HTTP 500 rollup_error")
    assert "alerted 3 lead(s) (slack 1, teams 3)" in r.stderr
    assert slack_senders(hooks.got("slack")) == ["a1"]
    assert TOKEN not in r.stdout + r.stderr
    again = run(cfg, cache, "alert", "--as-of", AS_OF.isoformat(), env=env)
    assert again.returncode == 0, again.stderr
    assert slack_senders(hooks.got("slack")) == ["a1", "e1", "b1"]
    assert teams_senders(hooks.got("teams")) == ["a1", "e1", "b1"]


def test_a_4xx_is_not_retried(tmp_path: Path, cache: Path, hooks: WebhookServer) -> None:
    cfg = write_config(tmp_path, HOOKS)
    hooks.faults["teams"] = [(404, {}, b"channel_not_found")]
    r = run(cfg, cache, "--debug", "alert", "--as-of", AS_OF.isoformat(), env=hook_env(hooks))
    assert r.returncode == 4
    assert "Traceback" in r.stderr and TOKEN not in r.stdout + r.stderr  # --debug too
    assert ("teams: Teams webhook refused the message (HTTP 404 channel_not_found)"
            in r.stderr)
    assert hooks.attempts.count("teams") == 1
    assert [c for _, c in alerted_rows(cache)] == ["slack"] * 3


def test_a_timeout_is_retried_and_delivered_once(tmp_path: Path, cache: Path,
                                                 hooks: WebhookServer) -> None:
    cfg = write_config(tmp_path, HOOKS.replace("slack_webhook_env", "# slack_webhook_env"))
    hooks.faults["teams"] = [("stall", 4)]  # answers after the 2 s timeout: not taken
    r = run(cfg, cache, "alert", "--as-of", AS_OF.isoformat(), env=hook_env(hooks))
    assert r.returncode == 0, r.stderr
    assert hooks.attempts.count("teams") == 4
    assert teams_senders(hooks.got("teams")) == ["a1", "e1", "b1"]


def test_an_untrusted_certificate_fails_without_sending(tmp_path: Path, cache: Path,
                                                        hooks: WebhookServer) -> None:
    cfg = write_config(tmp_path, HOOKS)
    env = {**hook_env(hooks), "SSL_CERT_FILE": "/dev/null"}
    r = run(cfg, cache, "alert", "--as-of", AS_OF.isoformat(), env=env)
    assert r.returncode == 4
    assert "certificate not trusted" in r.stderr and TOKEN not in r.stderr
    assert hooks.attempts == [] and alerted_rows(cache) == []


# -- mail -------------------------------------------------------------------------------------
def test_mail_alerts_go_through_the_delivery_smtp_server(tmp_path: Path, cache: Path) -> None:
    with SMTPServer(tmp_path) as smtp:
        cfg = write_config(tmp_path, 'older_than = "2h"\nmail_to = ["desk@acme.example"]\n',
                           extra="\n" + smtp.toml(host="127.0.0.1"))
        env = {"REPLYTIME_SMTP_PW": PASSWORD}
        r = run(cfg, cache, "alert", "--as-of", AS_OF.isoformat(), env=env)
        assert r.returncode == 0, r.stderr
        assert [m.rcpt_tos for m in smtp.messages] == [["desk@acme.example"]] * 2
        first = message_from_bytes(smtp.messages[0].data, policy=policy.default)
        assert first["Subject"] == "Lead waiting 6h 00m: a1@client.example"
        assert first["Auto-Submitted"] == "auto-generated"
        body = first.get_body(("plain",)).get_content()
        assert "From:       a1@client.example" in body and "Rep:        Alice" in body
        again = run(cfg, cache, "alert", "--as-of", AS_OF.isoformat(), env=env)
        assert again.returncode == 0 and len(smtp.messages) == 2


# -- config -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("alerts", "message"), [
    ('older_than = "soon"', "config: alerts.older_than:"),
    ('[alerts.teams]\nNorth = "1h"', "config: alerts.teams.North: no rep has this team"),
    ('[alerts.reps]\nZed = "1h"', "config: alerts.reps.Zed: no [[reps]] entry has this name"),
    ('basis = "lunar"', "config: alerts.basis: must be business or calendar"),
    ('slack_webhook_env = "A"\nslack_webhook_file = "b"',
     "config: alerts.slack_webhook_file: give only one of"),
    ('mail_to = ["nobody"]', "config: alerts.mail_to[0]: 'nobody' is not an email address"),
    ('slack_hook = "x"', "config: alerts.slack_hook: unknown key"),
])
def test_config_mistakes_name_the_key(alerts: str, message: str) -> None:
    import tomllib

    data = tomllib.loads(CONFIG + "\n[alerts]\n" + alerts)
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert str(info.value).startswith(message)


def test_secret_problems_are_one_line_and_never_show_the_url(tmp_path: Path, cache: Path,
                                                             hooks: WebhookServer) -> None:
    cfg = write_config(tmp_path, 'slack_webhook_env = "SLACK_URL"\n')
    r = run(cfg, cache, "alert", "--as-of", AS_OF.isoformat())
    assert r.returncode == 2
    assert r.stderr == ("replytime: error: config: alerts.slack_webhook_env: environment "
                        "variable SLACK_URL is not set\n")
    plain = f"http://localhost:{hooks.port}/slack/{TOKEN}"
    r = run(cfg, cache, "--debug", "alert", "--as-of", AS_OF.isoformat(),
            env={"SLACK_URL": plain})
    assert r.returncode == 2 and "alerts.slack_webhook: must be an https:// URL" in r.stderr
    assert TOKEN not in r.stdout + r.stderr
    none = write_config(tmp_path, 'older_than = "1h"\n')
    r = run(none, cache, "alert")
    assert r.returncode == 2 and "config: alerts: no channel" in r.stderr


# -- the cache's alerts table -------------------------------------------------------------------
def test_a_schema_6_cache_gets_the_alerts_table(backend: str) -> None:
    if backend.startswith("postgresql"):
        import psycopg

        from replytime.store.postgres import MIGRATIONS as PG

        with psycopg.connect(backend, autocommit=True) as conn:
            conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            for m in PG[:6]:
                conn.execute(m)
            conn.execute("INSERT INTO schema_version VALUES (6)")
    else:
        from replytime.store.sqlite import MIGRATIONS as LITE

        with contextlib.closing(sqlite3.connect(backend)) as conn:
            conn.executescript("CREATE TABLE schema_version (version INTEGER NOT NULL);"
                               + "".join(LITE[:6]) + "INSERT INTO schema_version VALUES (6);")
    c = open_cache(backend)
    try:
        assert c.schema_version == SCHEMA_VERSION >= 7
        assert c.alerted("slack", ["<a>", "<b>"]) == set()
        c.mark_alerted("slack", ["<a>", "<b>"])
        c.mark_alerted("slack", ["<a>"])  # again: kept once, first time kept
        c.mark_alerted("teams", ["<b>"])
        assert c.alerted("slack", ["<a>", "<b>", "<c>"]) == {"<a>", "<b>"}
        assert c.alerted("teams", ["<a>", "<b>"]) == {"<b>"}
        keys = [f"<k{i}>" for i in range(1200)]  # more than one chunk of parameters
        c.mark_alerted("mail", keys)
        assert c.alerted("mail", keys) == set(keys)
    finally:
        c.close()


def test_a_long_digest_stays_within_the_documented_limits() -> None:
    from replytime.output.alerts import DIGEST_MAX_LEADS, Plan, Stale, slack_payload, teams_payload

    leads = [Stale(f"<l{i}@x>", f"l{i}@x", "Alice", "East", f"p{i}@client.example",
                   "S" * 5000, 1_700_000_000_000 + i, 9000.0, None, 9000.0, 7200)
             for i in range(DIGEST_MAX_LEADS + 15)]
    plan = Plan("calendar", __import__("datetime").UTC, 0, leads, {"slack": leads})
    slack = slack_payload(leads, plan)
    assert slack_problem(slack) is None and len(slack["blocks"]) <= 50
    assert slack["blocks"][-2]["elements"][0]["text"] == (
        "and 15 more: replytime report unanswered")
    teams = teams_payload(leads, plan)
    assert teams_problem(teams) is None
    assert len(teams_senders([teams])) == DIGEST_MAX_LEADS
    one = slack_payload(leads[:1], plan)
    assert slack_problem(one) is None  # a 5000-character subject is clipped to 2000
    assert max(len(f["text"]) for f in one["blocks"][1]["fields"]) == 2000


def test_retry_after_takes_seconds_or_an_http_date_and_is_capped() -> None:
    from email.utils import format_datetime

    from replytime.output.delivery import RETRY_AFTER_CAP_S, _retry_after

    assert _retry_after("3") == 3.0
    assert _retry_after("3600") == RETRY_AFTER_CAP_S
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=20), usegmt=True)
    assert 15 < (_retry_after(soon) or 0) <= 20
    assert _retry_after("not a date") is None and _retry_after(None) is None


def test_mail_alerts_can_use_the_oauth_sign_in(tmp_path: Path, cache: Path) -> None:
    from tests.smtpd import TOKEN as ACCESS_TOKEN
    from tests.test_delivery import oauth_delivery

    with SMTPServer(tmp_path) as smtp:
        cfg = write_config(tmp_path, 'older_than = "2h"\nmail_to = ["desk@acme.example"]\n',
                           extra="\n" + oauth_delivery(smtp, tmp_path, ACCESS_TOKEN))
        r = run(cfg, cache, "alert", "--as-of", AS_OF.isoformat())
        assert r.returncode == 0, r.stderr
        assert len(smtp.messages) == 2 and {m.login for m in smtp.messages} == {
            "reports@acme.example"}  # a1 and e1, each signed in by XOAUTH2
        assert len(smtp.handler.auth_strings) == 2
