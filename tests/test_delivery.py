"""`replytime send weekly` end to end: the console script mails the weekly summary of the
example mailbox to a real SMTP server on loopback (aiosmtpd, STARTTLS required before
AUTH, a self-signed certificate trusted through ``ca_file``: tests/smtpd.py). What arrives
is parsed and checked against `report weekly`; its HTML part is rendered in headless
Chromium. Faults: server down, 4xx and 5xx replies, a hung server, a refused login, an
untrusted certificate."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from replytime.output.weekly import HEADLINE, format_value
from tests.dovecot import free_port
from tests.smtpd import PASSWORD, TOKEN, USER, SMTPServer, StallOnce
from tests.test_html import parse, png_size, run_chromium

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("replytime")
AS_OF = "2026-11-06T20:00:00Z"  # the example's export time (docs/commands.md)
ENV = {"REPLYTIME_SMTP_PW": PASSWORD}


def run(*args: str, cwd: Path, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("REPLYTIME_")}
    full.update({"NO_COLOR": "1", "COLUMNS": "200", "TZ": "UTC", **(env or {})})
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd,
                          env=full, timeout=180)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the example's cache (acme.sqlite) and config, imported once."""
    where = tmp_path_factory.mktemp("example")
    (where / "base.toml").write_text((ROOT / "examples" / "replytime.toml").read_text())
    r = run("--config", "base.toml", "--db", "acme.sqlite", "import",
            str(ROOT / "examples" / "mailbox.mbox"), cwd=where)
    assert r.returncode == 0, r.stderr
    return where


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SMTPServer]:
    with SMTPServer(tmp_path) as server:
        yield server


def configure(example: Path, tmp_path: Path, delivery: str) -> Path:
    cfg = tmp_path / "replytime.toml"
    cfg.write_text((example / "base.toml").read_text() + "\n" + delivery)
    return cfg


def send(example: Path, cfg: Path, *args: str, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return run("--config", str(cfg), "--db", str(example / "acme.sqlite"), "send", "weekly",
               "--as-of", AS_OF, *args, cwd=example, env={**ENV, **(env or {})})


def parsed(data: bytes) -> EmailMessage:
    return message_from_bytes(data, policy=policy.default)  # type: ignore[return-value]


def weekly_json(example: Path) -> list[dict]:
    r = run("--config", "base.toml", "--db", "acme.sqlite", "report", "weekly", "--as-of",
            AS_OF, "--format", "json", cwd=example)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# -- the message ------------------------------------------------------------------------------
def test_the_weekly_mail_arrives_over_starttls_with_auth(example: Path, tmp_path: Path,
                                                         smtp: SMTPServer) -> None:
    cfg = configure(example, tmp_path, smtp.toml(host="127.0.0.1"))
    r = send(example, cfg)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ("sent the weekly summary (Mon 26 Oct – Sun 1 Nov 2026) to "
                        "boss@acme.example\n")
    (got,) = smtp.messages
    assert got.tls and got.login == USER
    assert got.mail_from == "replytime@acme.example" and got.rcpt_tos == ["boss@acme.example"]
    msg = parsed(got.data)
    assert msg["From"] == "replytime@acme.example" and msg["To"] == "boss@acme.example"
    assert msg["Subject"] == "Weekly lead response, Mon 26 Oct – Sun 1 Nov 2026"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert re.fullmatch(r"<[^<>@]+@acme\.example>", msg["Message-ID"])
    assert msg["Date"].datetime is not None
    # multipart/mixed: multipart/alternative (text, then HTML), then the CSV
    assert msg.get_content_type() == "multipart/mixed"
    alt, csv_part = msg.get_payload()  # type: ignore[misc]
    assert alt.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in alt.get_payload()] == ["text/plain", "text/html"]
    assert csv_part.get_filename() == "replytime-weekly-2026-10-26.csv"
    assert csv_part.get_content_disposition() == "attachment"
    # The attachment is `report weekly --format csv`, byte for byte.
    r = run("--config", "base.toml", "--db", "acme.sqlite", "report", "weekly", "--as-of",
            AS_OF, "--format", "csv", cwd=example)
    assert csv_part.get_content().replace("\r\n", "\n") == r.stdout.replace("\r\n", "\n")
    assert PASSWORD not in r.stdout + r.stderr


def test_the_text_part_carries_the_figures_of_report_weekly(example: Path, tmp_path: Path,
                                                            smtp: SMTPServer) -> None:
    cfg = configure(example, tmp_path, smtp.toml(host="127.0.0.1", attach_csv=False))
    assert send(example, cfg).returncode == 0
    msg = parsed(smtp.messages[0].data)
    assert msg.get_content_type() == "multipart/alternative"  # nothing attached
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    rows = {r["rep"]: r for r in weekly_json(example)}
    lines = text.splitlines()
    # The headline: each team figure under its label.
    head = next(i for i, line in enumerate(lines) if line.startswith("Leads   Reply rate"))
    values = lines[head + 1]
    team = rows["TEAM"]
    for _, metric in HEADLINE:
        assert format_value(metric, team[metric]) in values, metric
    assert values.split()[0] == str(team["leads"]) == "16"
    # Each rep's row: leads, reply rate, median, p90, within SLA, as report weekly says.
    for rep, row in rows.items():
        line = next(x for x in lines if x.startswith(rep + " ") and "%" in x
                    or x.startswith(rep + " ") and row["leads"] == 0)
        for metric in ("reply_rate", "median_s", "p90_s", "within_sla"):
            assert format_value(metric, row[metric]) in line, (rep, metric, line)
        assert re.search(rf"\b{row['leads']} ", line), (rep, line)
    assert "Oldest unanswered leads" in text and "felix.jensen@oakfield.exam" in text


def test_the_html_part_is_email_safe_and_renders_in_chromium(example: Path, tmp_path: Path,
                                                             smtp: SMTPServer) -> None:
    cfg = configure(example, tmp_path, smtp.toml(host="127.0.0.1"))
    assert send(example, cfg).returncode == 0
    html = parsed(smtp.messages[0].data).get_body(("html",)).get_content()  # type: ignore[union-attr]
    p = parse(html)
    tags = [t for t, _ in p.tags]
    # What webmail strips or never renders: no stylesheet, no SVG, no script, no images.
    for tag in ("style", "link", "svg", "script", "img"):
        assert tag not in tags, tag
    assert all("class" not in attrs or attrs["class"] in ("bar", "heat") for _, attrs in p.tags)
    assert not re.search(r"https?://", html)
    rows = {r["rep"]: r for r in weekly_json(example)}
    text = " ".join("".join(p.text).split())
    assert "Leads16▲1" in text.replace(" ", "")
    for rep in rows:
        assert rep in text
    page = tmp_path / "mail.html"
    page.write_text(html)
    # Rendered: every bar as wide as its count says (the longest 180 px), every heatmap
    # cell drawn, and no image missing (none is used).
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", """<script>
const bars = [...document.querySelectorAll('td.bar')].map(
  b => [b.dataset.bar, +b.dataset.value, Math.round(b.getBoundingClientRect().width)]);
const heat = [...document.querySelectorAll('td.heat')].filter(
  c => c.getBoundingClientRect().width >= 12).length;
const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).length;
document.body.setAttribute('data-probe', JSON.stringify({bars, heat, broken,
  images: document.images.length, width: document.body.scrollWidth}));
</script></body>"""))
    dom = run_chromium("--window-size=700,2400", "--dump-dom", probe.as_uri()).stdout
    found = json.loads(re.search(r"data-probe=\"([^\"]+)\"", dom).group(1)  # type: ignore[union-attr]
                       .replace("&quot;", '"'))
    assert found["images"] == 0 and found["broken"] == 0
    assert found["heat"] == 7 * 24
    assert found["width"] <= 700  # one 640 px column: no sideways scrolling
    bars = found["bars"]
    top = max(v for _, v, _ in bars)
    assert bars and all(abs(w - round(v / top * 180)) <= 1 for _, v, w in bars), bars
    daily_leads = sum(v for kind, v, _ in bars if kind == "leads")
    assert daily_leads == rows["TEAM"]["leads"]
    png = tmp_path / "mail.png"
    run_chromium(f"--screenshot={png}", "--window-size=700,2400", page.as_uri())
    assert png_size(png) == (700, 2400) and png.stat().st_size > 20_000


def test_to_overrides_the_recipients_and_dry_run_sends_nothing(example: Path, tmp_path: Path,
                                                               smtp: SMTPServer) -> None:
    cfg = configure(example, tmp_path, smtp.toml(host="127.0.0.1"))
    eml = tmp_path / "weekly.eml"
    r = send(example, cfg, "--to", "a@acme.example", "--to", "B@Acme.example", "--dry-run",
             "--output", str(eml))
    assert r.returncode == 0, r.stderr
    assert r.stderr == f"wrote {eml} (not sent)\n"
    assert smtp.messages == []
    msg = parsed(eml.read_bytes())
    assert msg["To"] == "a@acme.example, b@acme.example"
    assert msg.get_body(("html",)) is not None and len(list(msg.iter_attachments())) == 1
    r = send(example, cfg, "--to", "a@acme.example", "--to", "b@acme.example")
    assert r.returncode == 0, r.stderr
    assert [m.rcpt_tos for m in smtp.messages] == [["a@acme.example", "b@acme.example"]]
    # --output alone would look like a send: refused
    r = send(example, cfg, "--output", str(eml))
    assert r.returncode == 2 and "add --dry-run" in r.stderr


def test_implicit_tls(example: Path, tmp_path: Path) -> None:
    with SMTPServer(tmp_path, security="ssl") as server:
        cfg = configure(example, tmp_path, server.toml(host="127.0.0.1"))
        r = send(example, cfg)
        assert r.returncode == 0, r.stderr
        assert len(server.messages) == 1 and server.messages[0].tls


def oauth_delivery(smtp: SMTPServer, tmp_path: Path, access_token: str) -> str:
    """An IMAP account signed in with a Google token (as its sync does), and [delivery]
    using the same sign-in. The token is valid for an hour: nothing to refresh."""
    token = tmp_path / "token.json"
    expiry = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    token.write_text(json.dumps({
        "token": access_token, "refresh_token": "1//refresh", "client_id": "cid",
        "client_secret": "secret", "expiry": expiry, "scopes": ["https://mail.google.com/"]}))
    delivery = smtp.toml(host="127.0.0.1").replace(
        'username = "reports@acme.example"\npassword_env = "REPLYTIME_SMTP_PW"\n',
        'oauth_account = "gmail-imap"\n')
    return (f'[[accounts]]\nname = "gmail-imap"\ntype = "imap"\nhost = "imap.gmail.com"\n'
            f'username = "{USER}"\noauth_token_file = "{token}"\n\n{delivery}')


def test_the_sync_accounts_oauth_sign_in_sends_by_xoauth2(example: Path, tmp_path: Path,
                                                          smtp: SMTPServer) -> None:
    cfg = configure(example, tmp_path, oauth_delivery(smtp, tmp_path, TOKEN))
    r = send(example, cfg, env={"REPLYTIME_SMTP_PW": ""})
    assert r.returncode == 0, r.stderr
    assert smtp.handler.auth_strings == [
        f"user={USER}\x01auth=Bearer {TOKEN}\x01\x01".encode()]
    (got,) = smtp.messages
    assert got.tls and got.login == USER


def test_a_refused_oauth_token_exits_3(example: Path, tmp_path: Path,
                                       smtp: SMTPServer) -> None:
    cfg = configure(example, tmp_path, oauth_delivery(smtp, tmp_path, "ya29.revoked"))
    r = send(example, cfg)
    assert r.returncode == 3
    assert r.stderr == (f"replytime: error: SMTP server 127.0.0.1:{smtp.port} refused the "
                        f"OAuth token of {USER} (535 5.7.8 Username and Password not "
                        "accepted)\n")
    assert "ya29.revoked" not in r.stderr and smtp.messages == []


# -- faults -----------------------------------------------------------------------------------
def test_server_down_exits_4_after_retries(example: Path, tmp_path: Path,
                                           smtp: SMTPServer) -> None:
    cfg = configure(example, tmp_path, smtp.toml(host="127.0.0.1", port=free_port()))
    started = time.monotonic()
    r = send(example, cfg)
    assert r.returncode == 4
    assert r.stderr.startswith("replytime: error: mail to boss@acme.example failed after 3 "
                               "attempts: SMTP server 127.0.0.1:")
    assert "connection refused" in r.stderr
    assert time.monotonic() - started >= 3  # 1 s + 2 s between the attempts
    assert smtp.messages == []


def test_a_4xx_reply_is_retried_and_the_mail_arrives_once(example: Path, tmp_path: Path,
                                                          smtp: SMTPServer) -> None:
    cfg = configure(example, tmp_path, smtp.toml(host="127.0.0.1"))
    smtp.fail_next("451 4.3.0 Try again later")
    r = send(example, cfg)
    assert r.returncode == 0, r.stderr
    assert len(smtp.messages) == 1


def test_a_5xx_reply_is_not_retried(example: Path, tmp_path: Path, smtp: SMTPServer) -> None:
    cfg = configure(example, tmp_path, smtp.toml(host="127.0.0.1"))
    smtp.fail_next("554 5.7.1 Message rejected", "250 2.0.0 never reached")
    r = send(example, cfg)
    assert r.returncode == 4
    assert "554 5.7.1 Message rejected" in r.stderr
    assert smtp.messages == [] and smtp.handler.data_faults == ["250 2.0.0 never reached"]


def test_a_hung_server_times_out_and_the_retry_delivers(example: Path, tmp_path: Path,
                                                        smtp: SMTPServer) -> None:
    hung = StallOnce(("127.0.0.1", smtp.port))
    try:
        cfg = configure(example, tmp_path, smtp.toml(host="127.0.0.1", port=hung.port,
                                                     timeout=2))
        r = send(example, cfg)
        assert r.returncode == 0, r.stderr
        assert hung.connections == 2 and len(smtp.messages) == 1
    finally:
        hung.close()


def test_a_refused_login_exits_3_and_never_shows_the_password(example: Path, tmp_path: Path,
                                                              smtp: SMTPServer) -> None:
    cfg = configure(example, tmp_path, smtp.toml(host="127.0.0.1"))
    r = run("--debug", "--config", str(cfg), "--db", str(example / "acme.sqlite"), "send",
            "weekly", "--as-of", AS_OF, cwd=example,
            env={"REPLYTIME_SMTP_PW": PASSWORD + "-wrong"})
    assert r.returncode == 3
    assert f"SMTP server 127.0.0.1:{smtp.port} refused the login of {USER} (535" in r.stderr
    assert PASSWORD not in r.stdout + r.stderr and smtp.messages == []


def test_an_untrusted_certificate_is_refused(example: Path, tmp_path: Path,
                                             smtp: SMTPServer) -> None:
    delivery = smtp.toml(host="127.0.0.1").replace(f'ca_file = "{smtp.cert}"\n', "")
    cfg = configure(example, tmp_path, delivery)
    r = send(example, cfg)
    assert r.returncode == 4
    assert "certificate not trusted" in r.stderr and "delivery.ca_file" in r.stderr
    assert smtp.messages == []


@pytest.mark.parametrize(("delivery", "message"), [
    ('host = "smtp.example.com"\nsecurity = "none"\nfrom = "r@acme.example"',
     "config: delivery.security: 'none' (no TLS) is only allowed to a loopback address"),
    ('host = "smtp.example.com"\nport = 0', "config: delivery.port: must be a port number"),
    ('host = "h"\nfrom = "me"', "config: delivery.from: 'me' is not an email address"),
    ('host = "h"\nsubject = "{week}"', "config: delivery.subject: may only use the placeholder"),
    ('host = "h"\nusername = "u"\npassword_env = "REPLYTIME_NOPE"\nfrom = "r@acme.example"\n'
     'to = ["b@acme.example"]',
     "config: delivery.password_env: environment variable REPLYTIME_NOPE is not set"),
    ('host = "h"\nfrom = "r@acme.example"', "config: delivery.to: no recipients"),
    ('host = "h"\noauth_account = "nope"',
     "config: delivery.oauth_account: needs an [[accounts]] entry named 'nope' with "
     "oauth_token_file"),
])
def test_config_mistakes_are_one_line_naming_the_key(example: Path, tmp_path: Path,
                                                     delivery: str, message: str) -> None:
    cfg = configure(example, tmp_path, "[delivery]\n" + delivery + "\n")
    r = send(example, cfg)
    assert r.returncode == 2
    assert r.stderr.startswith(f"replytime: error: {message}") and r.stderr.count("\n") == 1
