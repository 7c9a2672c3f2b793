"""`send weekly` through a Microsoft 365 sign-in ([delivery] oauth_account naming a
``type = "microsoft"`` account or an imap one with ``oauth = "microsoft"``): the real msal
signs in against the fake identity platform on loopback HTTPS (tests/fake_graph.py), which
issues the SMTP.Send token; a real SMTP server (aiosmtpd, STARTTLS, tests/smtpd.py) checks
the XOAUTH2 login with that platform, as Exchange Online does."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from replytime.cli import main
from replytime.config import MICROSOFT_SMTP, load_config
from replytime.errors import ConfigError
from replytime.sources import msauth
from tests.fake_graph import USER, FakeMicrosoft
from tests.smtpd import SMTPServer
from tests.test_delivery import AS_OF, configure, example, parsed, run, send  # noqa: F401

NAME = "sales-ms"
SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"  # trusts neither fake: ca_file must win
ENV = {"REQUESTS_CA_BUNDLE": SYSTEM_CA, "CURL_CA_BUNDLE": SYSTEM_CA}


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeMicrosoft]:
    server = FakeMicrosoft(tmp_path / "certs")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def smtp(tmp_path: Path, fake: FakeMicrosoft) -> Iterator[SMTPServer]:
    with SMTPServer(tmp_path, token_check=fake.smtp_login) as server:
        yield server


def toml(values: dict[str, object]) -> str:
    from tests.smtpd import _toml

    return "".join(f"{k} = {_toml(v)}\n" for k, v in values.items())


def setup(example: Path, tmp_path: Path, fake: FakeMicrosoft, smtp: SMTPServer,  # noqa: F811
          kind: str = "microsoft") -> Path:
    ms = fake.account_options(tmp_path / f"{NAME}.msal.json")
    if kind == "microsoft":
        acct = {"name": NAME, "type": "microsoft",
                **{k: v for k, v in ms.items() if k not in ("retry_base", "retry_cap")}}
        user = {"username": USER}
    else:  # IMAP with Microsoft OAuth: [delivery] username comes from the account's
        acct = {"name": NAME, "type": "imap", "username": USER, "oauth": "microsoft",
                **{k: ms[k] for k in ("client_id", "tenant", "token_cache", "authority_host",
                                      "ca_file")}}
        user = {}
    delivery = smtp.toml(host="127.0.0.1").replace(
        'username = "reports@acme.example"\npassword_env = "REPLYTIME_SMTP_PW"\n',
        toml({**user, "oauth_account": NAME}))
    return configure(example, tmp_path, f"[[accounts]]\n{toml(acct)}\n{delivery}")


def sign_in(cfg: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["--config", str(cfg), "auth", NAME]) == 0
    return capsys.readouterr().err


def send_debug(where: Path, cfg: Path) -> subprocess.CompletedProcess[str]:
    return run("--debug", "--config", str(cfg), "--db", str(where / "acme.sqlite"), "send",
               "weekly", "--as-of", AS_OF, cwd=where, env=ENV)


def leaks(fake: FakeMicrosoft, text: str) -> list[str]:
    assert fake.issued
    return [s for s in fake.issued if s in text]


def test_a_graph_accounts_sign_in_sends_by_xoauth2_with_an_smtp_send_token(
        example: Path, tmp_path: Path, fake: FakeMicrosoft, smtp: SMTPServer,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = setup(example, tmp_path, fake, smtp)
    err = sign_in(cfg, capsys)
    # Graph and outlook.office.com cannot share a token request (AADSTS28000), and nothing
    # was consented yet: a second code for SMTP.Send.
    assert err.count("enter the code ABCD-EFGH") == 2
    assert f"authorised {NAME} as {USER}" in err
    assert fake.consented[USER] == {f"{fake.url}/Mail.Read", msauth.SMTP_SCOPE}
    r = send_debug(example, cfg)
    assert r.returncode == 0, r.stderr
    smtp_tokens = [t for t, i in fake.access.items() if i["scope"] == msauth.SMTP_SCOPE]
    assert len(smtp_tokens) == 1  # the sign-in's, still valid: no refresh
    assert smtp.handler.auth_strings == [
        f"user={USER}\x01auth=Bearer {smtp_tokens[0]}\x01\x01".encode()]
    (got,) = smtp.messages
    assert got.tls and got.login == USER and got.rcpt_tos == ["boss@acme.example"]
    assert parsed(got.data)["Subject"] == "Weekly lead response, Mon 26 Oct – Sun 1 Nov 2026"
    assert leaks(fake, err + r.stdout + r.stderr) == []


def test_consent_already_given_needs_one_code_and_an_expired_token_is_refreshed(
        example: Path, tmp_path: Path, fake: FakeMicrosoft, smtp: SMTPServer,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    fake.admin_consented.add(msauth.SMTP_SCOPE)
    fake.expires_in = 1  # msal counts it expired at once: sending refreshes it
    cfg = setup(example, tmp_path, fake, smtp)
    err = sign_in(cfg, capsys)
    fake.expires_in = 3600
    assert err.count("enter the code ABCD-EFGH") == 1
    before = fake.refreshes
    r = send_debug(example, cfg)
    assert r.returncode == 0, r.stderr
    assert fake.refreshes == before + 1 and len(smtp.messages) == 1
    assert leaks(fake, err + r.stdout + r.stderr) == []


def test_an_imap_accounts_microsoft_sign_in_asks_imap_and_smtp_at_once(
        example: Path, tmp_path: Path, fake: FakeMicrosoft, smtp: SMTPServer,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = setup(example, tmp_path, fake, smtp, kind="imap")
    err = sign_in(cfg, capsys)
    assert err.count("enter the code ABCD-EFGH") == 1
    assert [i["scope"] for i in fake.access.values()] == [
        f"{msauth.IMAP_SCOPE} {msauth.SMTP_SCOPE}"]
    r = send(example, cfg, env=ENV)
    assert r.returncode == 0, r.stderr
    assert smtp.messages[0].login == USER


def test_a_token_exchange_refuses_exits_3_in_one_line(
        example: Path, tmp_path: Path, fake: FakeMicrosoft, smtp: SMTPServer,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = setup(example, tmp_path, fake, smtp)
    err = sign_in(cfg, capsys)
    fake.expire_tokens()  # msal still holds the token; the server no longer accepts it
    r = send(example, cfg, env=ENV)
    assert r.returncode == 3
    assert r.stderr == (f"replytime: error: SMTP server 127.0.0.1:{smtp.port} refused the "
                        f"OAuth token of {USER} (535 5.7.3 Authentication unsuccessful)\n")
    assert smtp.messages == []
    debug = send_debug(example, cfg)
    assert debug.returncode == 3 and "Traceback" in debug.stderr
    assert leaks(fake, err + r.stdout + r.stderr + debug.stdout + debug.stderr) == []


def test_a_revoked_or_unconsented_sign_in_exits_3_saying_to_sign_in_again(
        example: Path, tmp_path: Path, fake: FakeMicrosoft, smtp: SMTPServer,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = setup(example, tmp_path, fake, smtp)
    # Signed in for sync alone, before [delivery] named the account: no SMTP.Send consent.
    acct = load_config(cfg).account(NAME)
    msauth.device_sign_in(acct)
    r = send(example, cfg, env=ENV)
    assert r.returncode == 3
    assert r.stderr == (f"replytime: error: Microsoft sign-in for {NAME} is no longer valid "
                        f"(invalid_grant AADSTS65001): run `replytime auth {NAME}`\n")
    sign_in(cfg, capsys)  # as told: now with SMTP.Send
    fake.expires_in = 1
    fake.revoked = True
    sign_in_again = send(example, cfg, env=ENV)
    assert sign_in_again.returncode == 0, sign_in_again.stderr  # the token is still valid
    Path(tmp_path / f"{NAME}.msal.json").unlink()
    fake.revoked = False
    sign_in(cfg, capsys)  # tokens now expire at once: the next send refreshes
    fake.revoked, fake.expires_in = True, 3600
    r = send_debug(example, cfg)
    assert r.returncode == 3
    assert r.stderr.splitlines()[-1] == (
        f"replytime: error: Microsoft sign-in for {NAME} is no longer valid "
        f"(invalid_grant AADSTS70000): run `replytime auth {NAME}`")
    assert len(smtp.messages) == 1 and leaks(fake, r.stdout + r.stderr) == []


def test_delivery_defaults_to_exchange_onlines_smtp_endpoint(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[accounts]]\nname = "m"\ntype = "microsoft"\nclient_id = "x"\n'
                   'mailbox = "desk@acme.example"\n\n[delivery]\nfrom = "desk@acme.example"\n'
                   'to = ["boss@acme.example"]\noauth_account = "m"\n')
    d = load_config(cfg).delivery
    assert d is not None
    assert (d.host, d.port, d.security, d.username) == (
        MICROSOFT_SMTP, 587, "starttls", "desk@acme.example")
    assert d.password() is None
    cfg.write_text('[[accounts]]\nname = "m"\ntype = "microsoft"\nclient_id = "x"\n\n'
                   '[delivery]\noauth_account = "m"\n')
    with pytest.raises(ConfigError, match=r"delivery\.username: is required with oauth_account"):
        load_config(cfg)


def test_app_only_sends_with_the_apps_default_scope(
        example: Path, tmp_path: Path, fake: FakeMicrosoft, smtp: SMTPServer,  # noqa: F811
        ) -> None:
    fake.client_secret = "app-secret-value"
    ms = fake.account_options(tmp_path / "unused.msal.json")
    acct = {"name": NAME, "type": "microsoft", "tenant": "acme.example",
            "mailbox": USER, "client_secret_env": "REPLYTIME_MS_SECRET",
            **{k: ms[k] for k in ("client_id", "authority_host", "graph_endpoint",
                                  "ca_file")}}
    delivery = smtp.toml(host="127.0.0.1").replace(
        'username = "reports@acme.example"\npassword_env = "REPLYTIME_SMTP_PW"\n',
        toml({"oauth_account": NAME}))
    cfg = configure(example, tmp_path, f"[[accounts]]\n{toml(acct)}\n{delivery}")
    r = send(example, cfg, env={**ENV, "REPLYTIME_MS_SECRET": "app-secret-value"})
    assert r.returncode == 0, r.stderr
    assert [i["scope"] for i in fake.access.values()] == [msauth.IMAP_APP_SCOPE]
    assert smtp.messages[0].login == USER  # username: the account's mailbox
    assert not (tmp_path / "unused.msal.json").exists()  # app-only keeps nothing on disk
    assert leaks(fake, r.stdout + r.stderr) == [] and "app-secret-value" not in r.stderr
