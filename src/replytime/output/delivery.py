"""Getting a message out: SMTP for mail, HTTPS POST for chat webhooks, each with retries.

What is retried: a connection refused or dropped, a timeout, an SMTP 4xx reply, an HTTP
408, 429 (after its ``Retry-After``) or 5xx. What is not: a refused login (exit 3), an
untrusted certificate, an SMTP 5xx, any other HTTP 4xx. Either way the caller records
nothing as delivered unless this returned, so the next run tries again
(docs/configuration.md, "`[alerts]`").

Certificates are always verified (``ca_file`` trusts a private CA; the system store and
``SSL_CERT_FILE`` otherwise). Neither a password nor a webhook URL (the URL is the
credential) ever appears in a message: errors name the channel and the server's answer.
"""

from __future__ import annotations

import email.utils
import json
import smtplib
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from typing import Any

from replytime.config import Delivery, is_loopback
from replytime.errors import AuthError, ConfigError, DeliveryFailed

RETRY_AFTER_CAP_S = 60.0  # a longer Retry-After fails this run; cron runs again later
Sleep = Callable[[float], None]


class _Transient(Exception):
    """A failure worth another attempt; ``wait`` overrides the backoff (Retry-After)."""

    def __init__(self, text: str, wait: float | None = None) -> None:
        super().__init__(text)
        self.wait = wait


def _backoff(attempt: int) -> float:
    return min(2.0**attempt, 30.0)  # 1 s, 2 s, 4 s ...: a cron job's patience


def _with_retries(what: str, retries: int, once: Callable[[], None], sleep: Sleep) -> None:
    last: _Transient | None = None
    for attempt in range(retries + 1):
        try:
            once()
            return
        except _Transient as exc:
            last = exc
            if attempt < retries:
                sleep(exc.wait if exc.wait is not None else _backoff(attempt))
    tries = f"{retries + 1} attempt" + ("" if retries == 0 else "s")
    raise DeliveryFailed(f"{what} failed after {tries}: {last}")


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


# -- SMTP ----------------------------------------------------------------------------------
def smtp_ready(d: Delivery) -> None:
    """Raise a ConfigError when ``[delivery]`` cannot send (before any work is done)."""
    if not d.host:
        raise ConfigError("delivery.host", "is required to send mail (or use --dry-run)")
    if d.security == "none" and not is_loopback(d.host):
        raise ConfigError("delivery.security", "'none' is only allowed to a loopback address")
    d.password()  # a missing secret is a config error now, not after the report is built


def send_mail(d: Delivery, msg: EmailMessage, to: Sequence[str], *,
              oauth_token: str | None = None, sleep: Sleep = time.sleep) -> None:
    """Send ``msg`` to ``to`` through ``d``'s SMTP server; returns once the server took it
    for every recipient. The same message (same Message-ID) is sent on each attempt.
    ``oauth_token``: an access token for ``d.oauth_account``'s sign-in (SASL XOAUTH2)."""
    smtp_ready(d)
    password = d.password()
    if d.oauth_account is not None and oauth_token is None:
        raise ConfigError("delivery.oauth_account", "no access token was obtained")
    assert d.host is not None and d.sender is not None
    where = f"{d.host}:{d.port}"
    ctx = tls_context(d.ca_file) if d.security != "none" else None

    def once() -> None:
        try:
            if d.security == "ssl":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(d.host, d.port, timeout=d.timeout_s,
                                                      context=ctx)
            else:
                smtp = smtplib.SMTP(d.host, d.port, timeout=d.timeout_s)
            with smtp:
                smtp.ehlo()
                if d.security == "starttls":
                    if not smtp.has_extn("starttls"):
                        raise DeliveryFailed(f"SMTP server {where} does not offer STARTTLS; "
                                             "use security = \"ssl\" if it expects TLS at once")
                    smtp.starttls(context=ctx)
                    smtp.ehlo()
                if d.username is not None and oauth_token is not None:
                    smtp.auth("XOAUTH2", _xoauth2(d.username, oauth_token))
                elif d.username is not None:
                    assert password is not None
                    smtp.login(d.username, password)
                refused = smtp.send_message(msg, from_addr=d.sender, to_addrs=list(to))
        except smtplib.SMTPAuthenticationError as exc:
            how = "the OAuth token" if oauth_token else "the login"
            raise AuthError(f"SMTP server {where} refused {how} of {d.username} "
                            f"({exc.smtp_code} {_said(exc.smtp_error)})") from None
        except ssl.SSLCertVerificationError as exc:
            raise DeliveryFailed(f"SMTP server {where}: certificate not trusted "
                                 f"({exc.verify_message}); set delivery.ca_file for a "
                                 "private CA") from None
        except smtplib.SMTPNotSupportedError as exc:  # no AUTH offered: a setup mistake
            raise DeliveryFailed(f"SMTP server {where}: {exc}") from None
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            text = "; ".join(f"{a}: {c} {_said(m)}" for a, (c, m) in exc.recipients.items())
            if all(400 <= c < 500 for c in codes):
                raise _Transient(f"recipients refused for now ({text})") from None
            raise DeliveryFailed(f"SMTP server {where} refused the recipients ({text})") from None
        except smtplib.SMTPResponseException as exc:
            text = f"SMTP server {where} answered {exc.smtp_code} {_said(exc.smtp_error)}"
            if 400 <= exc.smtp_code < 500:
                raise _Transient(text) from None
            raise DeliveryFailed(text) from None
        except (smtplib.SMTPException, OSError) as exc:  # refused, dropped, timed out
            raise _Transient(f"SMTP server {where}: {_describe(exc)}") from None
        if refused:  # some recipients took it, others not: resending would double it
            text = "; ".join(f"{a}: {c} {_said(m)}" for a, (c, m) in refused.items())
            raise DeliveryFailed(f"sent, but SMTP server {where} refused {text}")

    _with_retries(f"mail to {', '.join(to)}", d.retries, once, sleep)


def _xoauth2(username: str, token: str) -> Callable[[bytes | None], str]:
    """The SASL XOAUTH2 initial response as Google documents it; to the error challenge a
    refused token gets, an empty answer (the server then says 535)."""
    initial = f"user={username}\x01auth=Bearer {token}\x01\x01"
    return lambda challenge=None: initial if challenge is None else ""


def _said(text: bytes | str) -> str:
    s = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    return " ".join(s.split())[:200]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.reason or exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


# -- webhooks ------------------------------------------------------------------------------
def post_json(url: str, payload: dict[str, Any], *, what: str, timeout_s: float,
              retries: int, ca_file: str | None = None, sleep: Sleep = time.sleep) -> None:
    """POST ``payload`` as JSON to ``url`` (a secret: never shown; ``what`` names it in
    errors, e.g. "Slack webhook"); returns on any 2xx."""
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    ctx = tls_context(ca_file)

    def once() -> None:
        request = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "replytime"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s, context=ctx) as r:
                r.read()
        except urllib.error.HTTPError as exc:
            said = _said(exc.read()[:200] or exc.reason or "")
            text = f"HTTP {exc.code}" + (f" {said}" if said else "")
            if exc.code == 429:
                raise _Transient(text, _retry_after(exc.headers.get("Retry-After"))) from None
            if exc.code == 408 or exc.code >= 500:
                raise _Transient(text) from None
            raise DeliveryFailed(f"{what} refused the message ({text})") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise DeliveryFailed(f"{what}: certificate not trusted "
                                     f"({reason.verify_message})") from None
            raise _Transient(_describe(reason) if isinstance(reason, BaseException)
                             else str(reason)) from None
        except (OSError, ValueError) as exc:  # timed out reading, connection reset
            raise _Transient(_describe(exc)) from None

    _with_retries(what, retries, once, sleep)


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), capped."""
    if not value:
        return None
    try:
        wait = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        wait = when.timestamp() - time.time()
    return min(max(wait, 0.0), RETRY_AFTER_CAP_S)


__all__ = ["post_json", "send_mail", "smtp_ready", "tls_context"]
