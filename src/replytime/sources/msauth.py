"""Microsoft sign-in with msal, for ``type = "microsoft"`` accounts and IMAP ``oauth =
"microsoft"`` (README.md, "Microsoft 365"; docs/configuration.md, "Microsoft 365").

- Delegated: ``replytime auth ACCOUNT`` runs msal's device-code flow (a URL and a code to
  enter on any machine, no browser or open port needed here) and keeps msal's
  ``SerializableTokenCache`` in ``token_cache``, a file created with mode 0600; a file
  others can read is refused. Later runs get tokens with ``acquire_token_silent``, which
  refreshes them; a refused refresh token is an ``AuthError`` (exit 3) saying to run
  ``replytime auth ACCOUNT`` again.
- App-only: with ``client_secret_env``, ``client_secret_file`` or ``client_certificate``
  the client-credentials flow runs at every sync; nothing is written to disk.

Every request msal sends goes through :class:`PinnedSession`, whose ``verify`` (the
account's ``ca_file``, else the system store) cannot be overridden by ``REQUESTS_CA_BUNDLE``
or ``CURL_CA_BUNDLE`` from the environment.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from replytime.config import Account
from replytime.errors import AuthError, ConfigError, SourceUnreachable
from replytime.sources import write_secret

DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
DEFAULT_GRAPH = "https://graph.microsoft.com/v1.0"
IMAP_SCOPE = "https://outlook.office.com/IMAP.AccessAsUser.All"
IMAP_APP_SCOPE = "https://outlook.office365.com/.default"
# SMTP AUTH (XOAUTH2) to smtp.office365.com, for [delivery] oauth_account; app-only uses
# IMAP_APP_SCOPE, whose .default covers the app's SMTP.SendAsApp role.
SMTP_SCOPE = "https://outlook.office.com/SMTP.Send"
# Delegated Graph permissions by `scope` (README.md, "Microsoft 365", why Mail.Read).
GRAPH_SCOPES = {"read": "Mail.Read", "basic": "Mail.ReadBasic"}


class PinnedSession(requests.Session):
    """A requests session whose certificate check is always ``verify``.

    requests merges the environment into every request (``merge_environment_settings``):
    ``REQUESTS_CA_BUNDLE`` replaces a session's ``verify`` whenever the request passes
    none, which is how msal calls it. A private CA given as ``ca_file`` must win."""

    def __init__(self, verify: str | bool = True) -> None:
        super().__init__()
        self.verify = verify  # proxies (HTTPS_PROXY, NO_PROXY) still come from the environment

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> dict[str, Any]:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        settings["verify"] = self.verify
        return settings


@dataclass(frozen=True)
class MsSettings:
    account: str
    client_id: str
    tenant: str
    authority_host: str
    graph_endpoint: str
    ca_file: str | None
    token_cache: Path
    mailbox: str  # "me" or an address / user id
    scope: str  # read | basic
    secret: str | None = None
    certificate: tuple[str, str] | None = None  # (certificate PEM path, key PEM path)

    @property
    def app_only(self) -> bool:
        return self.secret is not None or self.certificate is not None

    @property
    def authority(self) -> str:
        return f"{self.authority_host}/{self.tenant}"

    @property
    def graph_origin(self) -> str:
        parts = urlsplit(self.graph_endpoint)
        return f"{parts.scheme}://{parts.netloc}"

    def graph_scopes(self) -> list[str]:
        if self.app_only:
            return [f"{self.graph_origin}/.default"]
        name = GRAPH_SCOPES[self.scope]
        # Another user's or a shared mailbox needs the ".Shared" permission.
        if self.mailbox != "me":
            name = "Mail.Read.Shared"
        return [f"{self.graph_origin}/{name}"]

    def imap_scopes(self) -> list[str]:
        return [IMAP_APP_SCOPE] if self.app_only else [IMAP_SCOPE]

    def smtp_scopes(self) -> list[str]:
        return [IMAP_APP_SCOPE] if self.app_only else [SMTP_SCOPE]

    def session(self) -> PinnedSession:
        return PinnedSession(self.ca_file or True)


def _url(value: Any, key: str, default: str) -> str:
    text = str(value if value is not None else default).rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ConfigError(key, f"{text!r} is not an http(s) URL")
    return text


def _expand(value: Any) -> Path:
    return Path(os.path.expandvars(str(value))).expanduser()


def settings(account: Account) -> MsSettings:
    """The msal settings of ``account`` (a microsoft account, or imap with oauth =
    "microsoft"); every mistake is a ConfigError naming its key."""
    o = account.options
    key = f"accounts.{account.name}"
    client_id = o.get("client_id")
    if not isinstance(client_id, str) or not client_id.strip():
        raise ConfigError(f"{key}.client_id", "is required (the app registration's "
                          "Application (client) ID)")
    tenant = o.get("tenant", "organizations")
    if not isinstance(tenant, str) or not tenant.strip() or "/" in tenant:
        raise ConfigError(f"{key}.tenant", "must be a tenant id or domain, organizations, "
                          "common or consumers")
    authority_host = _url(o.get("authority_host"), f"{key}.authority_host", DEFAULT_AUTHORITY)
    if not authority_host.startswith("https://"):
        raise ConfigError(f"{key}.authority_host", "must be an https URL (msal requires it)")
    graph = _url(o.get("graph_endpoint"), f"{key}.graph_endpoint", DEFAULT_GRAPH)
    ca_file = o.get("ca_file")
    if ca_file is not None:
        ca_file = str(_expand(ca_file))
        if not os.path.isfile(ca_file):
            raise ConfigError(f"{key}.ca_file", f"{ca_file} does not exist")
    cache = o.get("token_cache", f"~/.local/share/replytime/{account.name}.msal.json")
    if not isinstance(cache, str) or not cache:
        raise ConfigError(f"{key}.token_cache", "must be a file path")
    mailbox = o.get("mailbox", "me")
    if not isinstance(mailbox, str) or not mailbox.strip() or "/" in mailbox:
        raise ConfigError(f"{key}.mailbox", "must be \"me\" or a mailbox address")
    scope = str(o.get("scope", "read")).lower()
    if scope not in GRAPH_SCOPES:
        raise ConfigError(f"{key}.scope", "must be 'read' (Mail.Read) or 'basic' "
                          "(Mail.ReadBasic)")
    secret = _secret(o, key)
    certificate = None
    if o.get("client_certificate"):
        cert = _expand(o["client_certificate"])
        if not cert.is_file():
            raise ConfigError(f"{key}.client_certificate", f"{cert} does not exist")
        key_path = _expand(o.get("client_certificate_key", cert))
        if not key_path.is_file():
            raise ConfigError(f"{key}.client_certificate_key", f"{key_path} does not exist")
        certificate = (str(cert), str(key_path))
    if secret is not None and certificate is not None:
        raise ConfigError(f"{key}.client_certificate", "give a client secret or a "
                          "certificate, not both")
    if (secret is not None or certificate is not None) and tenant.lower() in (
            "organizations", "common", "consumers"):
        raise ConfigError(f"{key}.tenant", "app-only access needs your tenant's id or "
                          "domain (e.g. \"acme.example\"), not organizations or common")
    if (secret is not None or certificate is not None) and mailbox == "me":
        raise ConfigError(f"{key}.mailbox", "app-only access (a client secret or "
                          "certificate) needs the mailbox to read, e.g. \"rep@acme.example\"")
    return MsSettings(
        account=account.name, client_id=client_id.strip(), tenant=tenant.strip(),
        authority_host=authority_host, graph_endpoint=graph, ca_file=ca_file,
        token_cache=_expand(cache), mailbox=mailbox.strip(), scope=scope, secret=secret,
        certificate=certificate,
    )


def _secret(o: dict[str, Any], key: str) -> str | None:
    if o.get("client_secret_env"):
        name = str(o["client_secret_env"])
        value = os.environ.get(name)
        if not value:
            raise ConfigError(f"{key}.client_secret_env",
                              f"environment variable {name} is not set")
        return value
    if o.get("client_secret_file"):
        path = _expand(o["client_secret_file"])
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{key}.client_secret_file",
                              f"cannot read {path} ({exc.strerror})") from None
        if not value:
            raise ConfigError(f"{key}.client_secret_file", f"{path} is empty")
        return value
    return None


# -- the token cache file --------------------------------------------------------------------

def _again(s: MsSettings) -> str:
    return f"run `replytime auth {s.account}`"


def load_cache(s: MsSettings, *, must_exist: bool = True) -> Any:
    """msal's token cache from ``token_cache``; refuses a file other users can read."""
    import msal

    cache = msal.SerializableTokenCache()
    path = s.token_cache
    try:
        st = path.stat()
    except FileNotFoundError:
        if must_exist:
            raise AuthError(f"no Microsoft sign-in at {path}: {_again(s)}") from None
        return cache
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AuthError(
            f"refusing to read {path}: it is readable by other users "
            f"(mode {stat.S_IMODE(st.st_mode):o}); run `chmod 600 {path}`"
        )
    try:
        cache.deserialize(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        raise AuthError(f"{path} is not an msal token cache: {_again(s)}") from None
    return cache


def save_cache(cache: Any, path: Path) -> None:
    """Write the cache atomically, created 0600 (never on disk with wider permissions)."""
    write_secret(path, cache.serialize())


# -- msal applications ------------------------------------------------------------------

def _app(s: MsSettings, cache: Any) -> Any:
    import msal

    known = urlsplit(s.authority_host).hostname in msal.authority.WELL_KNOWN_AUTHORITY_HOSTS
    common: dict[str, Any] = {
        "authority": s.authority, "token_cache": cache, "http_client": s.session(),
        # Instance discovery asks login.microsoftonline.com about the authority host;
        # for a national cloud's or a test's host we know it already.
        "instance_discovery": None if known else False,
        "validate_authority": known,
    }
    try:
        if s.secret is not None:
            return msal.ConfidentialClientApplication(
                s.client_id, client_credential=s.secret, **common)
        if s.certificate is not None:
            return msal.ConfidentialClientApplication(
                s.client_id, client_credential=_certificate_credential(s), **common)
        return msal.PublicClientApplication(s.client_id, **common)
    except ValueError as exc:  # msal's OIDC discovery refused the authority
        raise ConfigError(f"accounts.{s.account}.tenant",
                          f"the authority {s.authority} was refused ({exc})") from None
    except requests.RequestException as exc:
        raise SourceUnreachable(f"cannot reach {s.authority_host} ({_describe(exc)})") from None


def _certificate_credential(s: MsSettings) -> dict[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    assert s.certificate is not None
    cert_path, key_path = s.certificate
    key = f"accounts.{s.account}.client_certificate"
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
        pem_key = Path(key_path).read_bytes()
        serialization.load_pem_private_key(pem_key, password=None)
    except (ValueError, OSError, TypeError) as exc:
        raise ConfigError(key, f"needs a PEM certificate and an unencrypted PEM key ({exc})"
                          ) from None
    thumbprint = hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return {"private_key": pem_key.decode(), "thumbprint": thumbprint}


def _describe(exc: BaseException) -> str:
    text = str(exc).split("\n")[0]
    return f"{type(exc).__name__}: {text[:160]}"


def _refused(s: MsSettings, result: dict[str, Any]) -> AuthError:
    # Only the error code and the AADSTS number: the description is long and can quote
    # request details; never a token.
    code = result.get("error", "error")
    aadsts = next((w.rstrip(":") for w in str(result.get("error_description", "")).split()
                   if w.startswith("AADSTS")), "")
    why = f"{code}{' ' + aadsts if aadsts else ''}"
    if s.app_only:
        return AuthError(f"Microsoft refused the app's credentials ({why}); check client_id, "
                         "tenant and the client secret or certificate")
    return AuthError(f"Microsoft sign-in for {s.account} is no longer valid ({why}): "
                     f"{_again(s)}")


class TokenSource:
    """Access tokens for one account, refreshed by msal; the cache file is rewritten
    (0600) whenever msal changed it."""

    def __init__(self, s: MsSettings, scopes: list[str]) -> None:
        self.s = s
        self.scopes = scopes
        self.cache = None if s.app_only else load_cache(s)
        import msal

        self.app = _app(s, self.cache if self.cache is not None else msal.TokenCache())
        self.refreshes = 0

    def _save(self) -> None:
        if self.cache is not None and self.cache.has_state_changed:
            save_cache(self.cache, self.s.token_cache)
            self.cache.has_state_changed = False

    def token(self, *, force: bool = False) -> str:
        """A valid access token; ``force`` after the resource refused the last one."""
        try:
            if self.s.app_only:
                result = self.app.acquire_token_for_client(self.scopes)
            else:
                accounts = self.app.get_accounts()
                if not accounts:
                    raise AuthError(f"no Microsoft sign-in in {self.s.token_cache}: "
                                    f"{_again(self.s)}")
                result = self.app.acquire_token_silent_with_error(
                    self.scopes, accounts[0], force_refresh=force)
                if result is None:
                    raise AuthError(f"the Microsoft sign-in in {self.s.token_cache} has no "
                                    f"token for {' '.join(self.scopes)}: {_again(self.s)}")
        except requests.RequestException as exc:
            raise SourceUnreachable(
                f"cannot reach {self.s.authority_host} ({_describe(exc)})") from None
        if "access_token" not in result:
            raise _refused(self.s, result)
        if result.get("token_source") == "identity_provider":
            self.refreshes += 1
        self._save()
        return str(result["access_token"])


def device_sign_in(account: Account, scopes: list[str] | None = None, *,
                   smtp: bool = False) -> str:
    """``replytime auth ACCOUNT``: msal's device-code flow; prints where to go and the code
    (stderr), waits for the user, stores the token cache (0600). Returns the signed-in
    user's name as Microsoft reports it. ``smtp``: the account is [delivery]
    oauth_account, so consent to SMTP.Send is asked for too."""
    s = settings(account)
    if s.app_only:
        raise ConfigError(f"accounts.{s.account}",
                          "uses app-only access (a client secret or certificate): there is "
                          "no one to sign in; `replytime sync` gets tokens by itself")
    cache = load_cache(s, must_exist=False)
    app = _app(s, cache)
    scopes = scopes or (s.imap_scopes() if account.type == "imap" else s.graph_scopes())
    # A token request may name one resource only (Microsoft answers AADSTS28000 to more):
    # SMTP.Send joins IMAP's request (both outlook.office.com); beside Graph it is a token
    # of its own, silent when the consent covers it already, else a second code to enter.
    extra = [x for x in (s.smtp_scopes() if smtp else []) if x not in scopes]
    same = [x for x in extra if _resource(x) == _resource(scopes[0])]
    try:
        result = _device_flow(s, app, scopes + same)
        others = [x for x in extra if x not in same]
        if others:
            held = app.acquire_token_silent_with_error(others, app.get_accounts()[0])
            if not held or "access_token" not in held:
                _device_flow(s, app, others)
    except requests.RequestException as exc:
        raise SourceUnreachable(f"cannot reach {s.authority_host} ({_describe(exc)})") from None
    save_cache(cache, s.token_cache)
    claims = result.get("id_token_claims") or {}
    with contextlib.suppress(AttributeError):
        return str(claims.get("preferred_username") or claims.get("name") or account.name)
    return account.name


def _resource(scope: str) -> str:
    return scope.rsplit("/", 1)[0] if "://" in scope else "https://graph.microsoft.com"


def _device_flow(s: MsSettings, app: Any, scopes: list[str]) -> dict[str, Any]:
    flow = app.initiate_device_flow(scopes=scopes)
    if "user_code" not in flow:
        raise _refused(s, flow)
    print(flow.get("message") or f"To sign in, open {flow['verification_uri']} and "
          f"enter the code {flow['user_code']}", file=sys.stderr, flush=True)
    result: dict[str, Any] = app.acquire_token_by_device_flow(flow)
    if "access_token" not in result:
        code = result.get("error", "")
        if code in ("authorization_declined", "expired_token", "bad_verification_code"):
            raise AuthError(f"Microsoft sign-in did not complete ({code})")
        raise _refused(s, result)
    return result


def smtp_access_token(account: Account, username: str) -> str:
    """An access token for Exchange Online's SMTP AUTH as ``username`` ([delivery]
    oauth_account naming ``account``): SMTP.Send, or the app's .default app-only."""
    s = settings(Account(account.name, account.type, {"mailbox": username,
                                                      **account.options}))
    return TokenSource(s, s.smtp_scopes()).token()
