"""The TOML config (docs/configuration.md): team, reps, schedules, lead filters, SLA, accounts.

Every mistake becomes a ConfigError naming the key ("config: reps[2].emails: ...").
"""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from replytime.errors import ConfigError
from replytime.periods import parse_duration

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
DEFAULT_SLA_BUCKETS = (300, 900, 3600, 14400, 86400)
CONFIG_NAME = "replytime.toml"
_INTERVAL_RE = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")
_ACCOUNT_TYPES = ("gmail", "imap", "microsoft", "files")


@dataclass(frozen=True)
class Schedule:
    """Working hours: wall-clock intervals per weekday (minutes from midnight) in a zone."""

    name: str
    timezone: str
    # weekday (0 = Monday) -> ((start_min, end_min), ...), sorted, non-overlapping
    days: dict[int, tuple[tuple[int, int], ...]]
    holidays: tuple[str, ...] = ()  # "US", "US-CA", "DE-BY", ...
    dates_off: tuple[date, ...] = ()


@dataclass(frozen=True)
class Rep:
    name: str
    emails: tuple[str, ...]
    team: str | None = None
    schedule: str | None = None


@dataclass(frozen=True)
class FormRule:
    """A web-form or chat notification that is a lead despite its automated sender."""

    from_glob: str
    subject: re.Pattern[str] | None = None
    lead_address: str = "reply-to"  # or "header:NAME"
    reply_window_s: int = 14 * 86400

    @property
    def header(self) -> str | None:
        return self.lead_address[7:] if self.lead_address.startswith("header:") else None


@dataclass(frozen=True)
class LeadFilters:
    to: tuple[str, ...] = ()  # lead message addressed (To/Cc) to one of these
    exclude_from: tuple[str, ...] = ()  # globs on the sender
    labels: tuple[str, ...] = ()  # lead message carries one of these labels/folders
    forms: tuple[FormRule, ...] = ()


@dataclass(frozen=True)
class Account:
    name: str
    type: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def microsoft_sign_in(self) -> bool:
        """Signed in with msal: ``type = "microsoft"``, or imap with ``oauth = "microsoft"``."""
        return self.type == "microsoft" or (
            self.type == "imap" and str(self.options.get("oauth", "")).lower() == "microsoft")


MICROSOFT_SMTP = "smtp.office365.com"  # Exchange Online's SMTP AUTH endpoint (587, STARTTLS)


@dataclass(frozen=True)
class Delivery:
    """``[delivery]``: where `send weekly` (and mail alerts) go, and the SMTP server that
    takes them (docs/configuration.md, "`[delivery]`"). Never holds the password itself."""

    sender: str | None = None  # the From address ("from")
    to: tuple[str, ...] = ()
    subject: str = "Weekly lead response, {period}"
    attach_csv: bool = True
    host: str | None = None
    port: int = 587
    security: str = "starttls"  # ssl | starttls | none (loopback only)
    username: str | None = None
    ca_file: str | None = None
    timeout_s: float = 30.0
    retries: int = 3
    # password_env / password_file / password_command, as given (read by ``password``)
    secret: dict[str, Any] = field(default_factory=dict)
    # An [[accounts]] entry whose sign-in (its oauth_token_file, or its Microsoft msal
    # sign-in) gives the SASL XOAUTH2 token instead.
    oauth_account: str | None = None

    def password(self) -> str | None:
        """The SMTP password, or None without AUTH or with an OAuth sign-in."""
        if self.username is None or self.oauth_account is not None:
            return None
        value = read_secret(self.secret, "password", "delivery")
        if value is None:
            raise ConfigError("delivery", "username needs password_env, password_file or "
                              "password_command")
        return value


@dataclass(frozen=True)
class Alerts:
    """``[alerts]``: which open leads `replytime alert` posts, and where to
    (docs/configuration.md, "`[alerts]`"). Webhook URLs are secrets: only where to read them
    is kept here."""

    older_than_s: int = 7200
    team_older_than_s: dict[str, int] = field(default_factory=dict)  # team -> threshold
    rep_older_than_s: dict[str, int] = field(default_factory=dict)  # rep name -> threshold
    basis: str | None = None  # business | calendar; None: business when a schedule exists
    lookback_s: int = 7 * 86400
    digest: bool = False
    mail_to: tuple[str, ...] = ()
    timeout_s: float = 10.0
    retries: int = 3
    ca_file: str | None = None
    secret: dict[str, Any] = field(default_factory=dict)  # slack_webhook_*, teams_webhook_*

    def channels(self) -> tuple[str, ...]:
        """The configured channels, in the order they are posted to."""
        out = [c for c in ("slack", "teams") if any(
            self.secret.get(f"{c}_webhook_{how}") for how in ("env", "file", "command"))]
        return (*out, "mail") if self.mail_to else tuple(out)

    def webhook_url(self, channel: str) -> str:
        url = read_secret(self.secret, f"{channel}_webhook", "alerts")
        if url is None:  # channels() lists only configured ones
            raise ConfigError("alerts", f"no {channel}_webhook_env/_file/_command")
        if not url.startswith("https://"):
            # Never echo the value: the URL is the credential.
            raise ConfigError(f"alerts.{channel}_webhook", "must be an https:// URL")
        return url

    def threshold_s(self, rep: str | None, team: str | None) -> int:
        """The rep's own threshold, else their team's, else ``older_than``."""
        if rep is not None:
            for name, limit in self.rep_older_than_s.items():
                if name.lower() == rep.lower():
                    return limit
        if team is not None and team in self.team_older_than_s:
            return self.team_older_than_s[team]
        return self.older_than_s


@dataclass(frozen=True)
class Config:
    internal_domains: tuple[str, ...] = ()
    # Addresses at a subdomain of an internal domain (mx.acme.example) are internal too.
    internal_subdomains: bool = True
    shared_inboxes: tuple[str, ...] = ()
    timezone: str | None = None  # report zone; None = the machine's
    reps: tuple[Rep, ...] = ()
    teams: dict[str, str] = field(default_factory=dict)  # team -> schedule name
    schedules: dict[str, Schedule] = field(default_factory=dict)
    leads: LeadFilters = LeadFilters()
    sla_target_s: int = 3600
    sla_buckets_s: tuple[int, ...] = DEFAULT_SLA_BUCKETS
    accounts: tuple[Account, ...] = ()
    delivery: Delivery | None = None
    alerts: Alerts | None = None
    path: Path | None = None

    # -- derived ----------------------------------------------------------------------
    def rep_by_address(self) -> dict[str, str]:
        return {e: r.name for r in self.reps for e in r.emails}

    def internal_addresses(self) -> frozenset[str]:
        return frozenset(self.rep_by_address()) | frozenset(self.shared_inboxes)

    def rep(self, name: str) -> Rep | None:
        return next((r for r in self.reps if r.name.lower() == name.lower()), None)

    def schedule_for(self, rep_name: str | None) -> Schedule | None:
        """Rep schedule, else team schedule, else the default one; None = calendar time."""
        rep = self.rep(rep_name) if rep_name else None
        if rep and rep.schedule:
            return self.schedules[rep.schedule]
        if rep and rep.team and rep.team in self.teams:
            return self.schedules[self.teams[rep.team]]
        return self.schedules.get("default")

    def kept_headers(self) -> tuple[str, ...]:
        """Extra headers connectors must fetch and keep (form rules' ``header:NAME``)."""
        return tuple(sorted({r.header for r in self.leads.forms if r.header}))

    @property
    def has_schedule(self) -> bool:
        return bool(self.schedules)

    def team_problem(self) -> str | None:
        """Why no report can be meaningful with this config, or None: without an internal
        domain or address every message is external, so no reply is ever found
        (docs/definitions.md, "Internal and external addresses")."""
        if self.internal_domains or self.internal_addresses():
            return None
        if self.path is None:
            return ("no config file found (./replytime.toml, ~/.config/replytime/config.toml)"
                    ": run `replytime init` and set [team] internal_domains")
        return (f"{self.path} sets no [team] internal_domains and no [[reps]]: every "
                "message would count as external and no reply could be found")

    def fingerprint(self) -> str:
        """What thread assignment depends on (which participants are external)."""
        return "|".join(sorted(self.internal_domains)) + "#" + "|".join(
            sorted(self.internal_addresses())
        ) + ("#sub" if self.internal_subdomains else "#exact")

    def internal_domain(self, domain: str) -> bool:
        """Whether ``domain`` (lower case) is internal: one of ``internal_domains`` or, with
        ``internal_subdomains``, under one (docs/definitions.md)."""
        if domain in self.internal_domains:
            return True
        return self.internal_subdomains and any(
            domain.endswith("." + d) for d in self.internal_domains
        )

    def leads_fingerprint(self) -> str:
        """What the kept lead table depends on besides the messages (docs/definitions.md,
        "Lead", "First reply", "Attribution", "Business time"): the thread fingerprint,
        who is internal, the reps with their addresses, teams and schedules, every schedule
        (holiday calendars with the version of the holidays data), the lead filters and
        form rules. Not the SLA or the report zone: no kept number depends on them."""
        import hashlib

        holidays_data = ""
        if any(s.holidays for s in self.schedules.values()):
            holidays_data = holidays_version()  # another release may move a holiday
        parts = (
            "leads-v1",  # the kept table's layout: bump when what is kept changes
            self.fingerprint(),
            sorted(self.shared_inboxes),
            sorted((r.name, sorted(r.emails), r.team, r.schedule) for r in self.reps),
            sorted(self.teams.items()),
            sorted(
                (s.name, s.timezone, sorted(s.days.items()), sorted(s.holidays),
                 sorted(d.isoformat() for d in s.dates_off))
                for s in self.schedules.values()
            ),
            holidays_data,
            (sorted(self.leads.to), sorted(self.leads.exclude_from), sorted(self.leads.labels)),
            [(f.from_glob, f.subject.pattern if f.subject else None, f.lead_address,
              f.reply_window_s) for f in self.leads.forms],
        )
        return hashlib.sha256(repr(parts).encode()).hexdigest()

    def check_holidays(self) -> None:
        """Refuse an unknown holiday code (one-line ``ConfigError`` naming the key), every
        schedule's, in file order. Not done while loading: the codes are checked by building
        their calendars, which imports all of the holidays data (~0.1 s), and a kept lead
        table whose state is this config's ``leads_fingerprint`` (it holds the codes and the
        holidays version) proves they were good when it was built. So whatever builds or
        reads leads without such a table calls this first (``analysis.rethread``)."""
        for s in self.schedules.values():
            for code in s.holidays:
                check_holiday_code(code, f"schedules.{s.name}.holidays")

    def is_internal(self, address: str) -> bool:
        """As ``matcher.Roster.is_internal``, for one address. The domain is the part after
        the last '@' (the whole address without one)."""
        address = address.lower()
        if not address:
            return False
        return self.internal_domain(address.rsplit("@", 1)[-1]) or (
            address in self.internal_addresses()
        )

    def excluded_sender(self, address: str) -> bool:
        return any(fnmatch.fnmatchcase(address, g) for g in self.leads.exclude_from)

    def account(self, name: str) -> Account:
        for a in self.accounts:
            if a.name == name:
                return a
        known = ", ".join(a.name for a in self.accounts) or "none configured"
        raise ConfigError("accounts", f"no account named {name!r} (known: {known})")


# -- loading ---------------------------------------------------------------------------
def find_config(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """--config / REPLYTIME_CONFIG, else ./replytime.toml, else the user config directory."""
    if explicit:
        p = Path(os.path.expandvars(str(explicit))).expanduser()
        if not p.is_file():
            raise ConfigError("", f"config file {p} does not exist")
        return p
    local = Path.cwd() / CONFIG_NAME
    if local.is_file():
        return local
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config")
    user = Path(base) / "replytime" / "config.toml"
    return user if user.is_file() else None


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate a config file; None finds the default one, or returns an empty
    config (everything external, calendar time) when there is none."""
    found = find_config(path)
    if found is None:
        return Config()
    try:
        data = tomllib.loads(found.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{found} is not valid TOML ({exc})") from None
    except OSError as exc:
        raise ConfigError("", f"cannot read {found} ({exc.strerror})") from None
    cfg = parse_config(data)
    return Config(**{**cfg.__dict__, "path": found})


def _expect(value: Any, kind: type | tuple[type, ...], key: str, what: str) -> Any:
    if not isinstance(value, kind):
        raise ConfigError(key, f"must be {what}")
    return value


def _str_list(value: Any, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    _expect(value, list, key, "a list of strings")
    for i, v in enumerate(value):
        _expect(v, str, f"{key}[{i}]", "a string")
    return tuple(value)


def _unknown(table: dict[str, Any], allowed: set[str], key: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        where = f"{key}.{extra[0]}" if key else extra[0]
        raise ConfigError(where, f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _duration(value: Any, key: str) -> int:
    try:
        return parse_duration(str(value))
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


def _zone(value: Any, key: str) -> str:
    _expect(value, str, key, "an IANA time zone name such as 'America/New_York'")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(key, f"unknown time zone {value!r}") from None
    return value


def _address(value: str, key: str) -> str:
    if "@" not in value or " " in value.strip():
        raise ConfigError(key, f"{value!r} is not an email address")
    return value.strip().lower()


def read_secret(options: dict[str, Any], name: str, key: str) -> str | None:
    """A secret from ``{name}_env``, ``{name}_file`` or ``{name}_command`` of ``options``
    (the table at config key ``key``); None when none of them is set. Never read from the
    config itself nor the command line, and never part of any message."""
    where = f"{key}.{name}"
    if options.get(f"{name}_env"):
        var = str(options[f"{name}_env"])
        value = os.environ.get(var)
        if not value:
            raise ConfigError(f"{where}_env", f"environment variable {var} is not set")
        return value
    if options.get(f"{name}_file"):
        path = Path(os.path.expanduser(os.path.expandvars(str(options[f"{name}_file"]))))
        try:
            value = path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"{where}_file", f"cannot read {path} ({exc.strerror})") from None
        if not value:
            raise ConfigError(f"{where}_file", f"{path} is empty")
        return value
    if options.get(f"{name}_command"):
        import shlex
        import subprocess

        cmd = options[f"{name}_command"]
        argv = shlex.split(cmd) if isinstance(cmd, str) else [str(a) for a in cmd]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"{where}_command", f"could not run it ({exc})") from None
        if done.returncode != 0:
            raise ConfigError(f"{where}_command", f"exited with status {done.returncode}")
        value = done.stdout.decode("utf-8", "replace").rstrip("\r\n")
        if not value:
            raise ConfigError(f"{where}_command", "printed nothing")
        return value
    return None


def parse_schedule(name: str, table: Any) -> Schedule:
    key = f"schedules.{name}"
    _expect(table, dict, key, "a table")
    _unknown(table, {"timezone", "holidays", "dates_off", *WEEKDAYS}, key)
    if "timezone" not in table:
        raise ConfigError(f"{key}.timezone", "is required")
    tz = _zone(table["timezone"], f"{key}.timezone")
    days: dict[int, tuple[tuple[int, int], ...]] = {}
    for i, day in enumerate(WEEKDAYS):
        spans = []
        for j, text in enumerate(_str_list(table.get(day, []), f"{key}.{day}")):
            m = _INTERVAL_RE.match(text.strip())
            where = f"{key}.{day}[{j}]"
            if not m:
                raise ConfigError(where, f"{text!r} is not an interval like '09:00-17:00'")
            h1, m1, h2, m2 = map(int, m.groups())
            if h1 > 24 or h2 > 24 or m1 > 59 or m2 > 59 or (h1 == 24 and m1) or (h2 == 24 and m2):
                raise ConfigError(where, f"{text!r} has an impossible time")
            start, end = h1 * 60 + m1, h2 * 60 + m2
            if end <= start:
                raise ConfigError(where, f"{text!r} ends before it starts (overnight: split it)")
            spans.append((start, end))
        spans.sort()
        for a, b in zip(spans, spans[1:], strict=False):
            if b[0] < a[1]:
                raise ConfigError(f"{key}.{day}", "intervals overlap")
        if spans:
            days[i] = tuple(spans)
    # Checked later, by Config.check_holidays: building calendars is slow.
    holidays_codes = _str_list(table.get("holidays", []), f"{key}.holidays")
    dates_off = []
    for j, d in enumerate(table.get("dates_off", [])):
        if isinstance(d, date):
            dates_off.append(d)
            continue
        try:
            dates_off.append(date.fromisoformat(str(d)))
        except ValueError:
            raise ConfigError(f"{key}.dates_off[{j}]", f"{d!r} is not a date YYYY-MM-DD") from None
    return Schedule(name, tz, days, holidays_codes, tuple(dates_off))


#: holiday codes whose calendar was built in this process (the holidays data cannot change)
_GOOD_HOLIDAY_CODES: set[str] = set()


def check_holiday_code(code: str, key: str) -> None:
    """A ``ConfigError`` at ``key`` unless ``code`` ("US", "US-CA") names a calendar."""
    if code not in _GOOD_HOLIDAY_CODES:
        holiday_calendar(code, 2026, key)


def holiday_calendar(code: str, years: int | tuple[int, ...], key: str) -> Any:
    """The holidays calendar of ``code`` for ``years``; an unknown code is a ``ConfigError``
    at ``key``."""
    import holidays as hol  # imported lazily: it is slow to import and often unneeded

    country, _, subdiv = code.partition("-")
    try:
        cal = hol.country_holidays(country.upper(), subdiv=subdiv.upper() or None, years=years)
    except (NotImplementedError, KeyError, AttributeError):
        raise ConfigError(
            key, f"unknown holiday calendar {code!r} (use e.g. US, US-CA, DE-BY)"
        ) from None
    _GOOD_HOLIDAY_CODES.add(code)
    return cal


def holidays_version() -> str:
    """The installed holidays release, as ``importlib.metadata.version("holidays")`` gives
    it, read from the METADATA beside the package when there is exactly one: importing
    importlib.metadata costs ~20 ms of every report."""
    from importlib.util import find_spec

    spec = find_spec("holidays")
    if spec is not None and spec.origin:
        found = list(Path(spec.origin).parent.parent.glob("holidays-*.dist-info"))
        if len(found) == 1:
            try:
                with open(found[0] / "METADATA", encoding="utf-8") as f:
                    for line in f:
                        if line.startswith("Version:"):
                            return line[8:].strip()
                        if not line.strip():
                            break  # the headers end here
            except OSError:
                pass
    from importlib.metadata import version

    return version("holidays")


def _parse_forms(value: Any, key: str) -> tuple[FormRule, ...]:
    _expect(value, list, key, "a list of tables ([[leads.forms]])")
    rules = []
    for i, t in enumerate(value):
        k = f"{key}[{i}]"
        _expect(t, dict, k, "a table")
        _unknown(t, {"from", "subject", "lead_address", "reply_window"}, k)
        if "from" not in t:
            raise ConfigError(f"{k}.from", "is required (a glob on the notification's sender)")
        subject = None
        if "subject" in t:
            try:
                subject = re.compile(_expect(t["subject"], str, f"{k}.subject", "a string"))
            except re.error as exc:
                raise ConfigError(f"{k}.subject", f"bad regular expression ({exc})") from None
        lead_address = str(t.get("lead_address", "reply-to")).lower()
        if lead_address != "reply-to" and not (
            lead_address.startswith("header:") and len(lead_address) > 7
        ):
            raise ConfigError(f"{k}.lead_address", "must be 'reply-to' or 'header:NAME'")
        rules.append(
            FormRule(
                from_glob=_expect(t["from"], str, f"{k}.from", "a string").lower(),
                subject=subject,
                lead_address=lead_address,
                reply_window_s=_duration(t.get("reply_window", "14d"), f"{k}.reply_window"),
            )
        )
    return tuple(rules)


def parse_config(data: dict[str, Any]) -> Config:
    _unknown(data, {"team", "reps", "teams", "schedules", "leads", "sla", "accounts",
                    "delivery", "alerts"}, "")
    team = _expect(data.get("team", {}), dict, "team", "a table")
    _unknown(team, {"internal_domains", "internal_subdomains", "shared_inboxes", "timezone"},
             "team")
    domains = tuple(d.lower().lstrip("@") for d in _str_list(
        team.get("internal_domains", []), "team.internal_domains"))
    subdomains = _expect(team.get("internal_subdomains", True), bool,
                         "team.internal_subdomains", "true or false")
    shared = tuple(
        _address(a, f"team.shared_inboxes[{i}]")
        for i, a in enumerate(_str_list(team.get("shared_inboxes", []), "team.shared_inboxes"))
    )
    tz = _zone(team["timezone"], "team.timezone") if "timezone" in team else None

    schedules_t = _expect(data.get("schedules", {}), dict, "schedules", "a table of schedules")
    schedules = {name: parse_schedule(name, t) for name, t in schedules_t.items()}

    teams_t = _expect(data.get("teams", {}), dict, "teams", "a table")
    teams: dict[str, str] = {}
    for name, t in teams_t.items():
        _expect(t, dict, f"teams.{name}", "a table")
        _unknown(t, {"schedule"}, f"teams.{name}")
        if "schedule" in t:
            teams[name] = _known_schedule(t["schedule"], schedules, f"teams.{name}.schedule")

    reps = []
    seen: dict[str, str] = {}
    for i, r in enumerate(_expect(data.get("reps", []), list, "reps", "a list ([[reps]])")):
        k = f"reps[{i}]"
        _expect(r, dict, k, "a table")
        _unknown(r, {"name", "emails", "team", "schedule"}, k)
        name = _expect(r.get("name"), str, f"{k}.name", "a non-empty string")
        if not name.strip():
            raise ConfigError(f"{k}.name", "must be a non-empty string")
        emails = tuple(
            _address(e, f"{k}.emails[{j}]")
            for j, e in enumerate(_str_list(r.get("emails", []), f"{k}.emails"))
        )
        if not emails:
            raise ConfigError(f"{k}.emails", "needs at least one address")
        for e in emails:
            if e in seen and seen[e] != name:
                raise ConfigError(f"{k}.emails", f"{e} already belongs to {seen[e]}")
            seen[e] = name
        if any(x.name.lower() == name.lower() for x in reps):
            raise ConfigError(f"{k}.name", f"{name!r} appears twice")
        schedule = r.get("schedule")
        if schedule is not None:
            schedule = _known_schedule(schedule, schedules, f"{k}.schedule")
        team_name = r.get("team")
        if team_name is not None:
            _expect(team_name, str, f"{k}.team", "a string")
        reps.append(Rep(name, emails, team_name, schedule))

    leads_t = _expect(data.get("leads", {}), dict, "leads", "a table")
    _unknown(leads_t, {"to", "exclude_from", "labels", "forms"}, "leads")
    leads = LeadFilters(
        to=tuple(a.lower() for a in _str_list(leads_t.get("to", []), "leads.to")),
        exclude_from=tuple(g.lower() for g in _str_list(
            leads_t.get("exclude_from", []), "leads.exclude_from")),
        labels=_str_list(leads_t.get("labels", []), "leads.labels"),
        forms=_parse_forms(leads_t.get("forms", []), "leads.forms"),
    )

    sla_t = _expect(data.get("sla", {}), dict, "sla", "a table")
    _unknown(sla_t, {"target", "buckets"}, "sla")
    target = _duration(sla_t.get("target", "1h"), "sla.target")
    buckets = tuple(
        _duration(b, f"sla.buckets[{i}]") for i, b in enumerate(
            _expect(sla_t.get("buckets", ["5m", "15m", "1h", "4h", "24h"]), list,
                    "sla.buckets", "a list of durations"))
    )
    if list(buckets) != sorted(set(buckets)) or not buckets:
        raise ConfigError("sla.buckets", "must be increasing durations, e.g. ['5m', '1h', '24h']")

    accounts = []
    for i, a in enumerate(
        _expect(data.get("accounts", []), list, "accounts", "a list ([[accounts]])")
    ):
        k = f"accounts[{i}]"
        _expect(a, dict, k, "a table")
        name = _expect(a.get("name"), str, f"{k}.name", "a non-empty string")
        kind = a.get("type")
        if kind not in _ACCOUNT_TYPES:
            raise ConfigError(f"{k}.type", f"must be one of {', '.join(_ACCOUNT_TYPES)}")
        if any(x.name == name for x in accounts):
            raise ConfigError(f"{k}.name", f"{name!r} appears twice")
        options = {x: v for x, v in a.items() if x not in ("name", "type")}
        accounts.append(Account(name, kind, options))

    return Config(
        internal_domains=domains,
        internal_subdomains=subdomains,
        shared_inboxes=shared,
        timezone=tz,
        reps=tuple(reps),
        teams=teams,
        schedules=schedules,
        leads=leads,
        sla_target_s=target,
        sla_buckets_s=buckets,
        accounts=tuple(accounts),
        delivery=_parse_delivery(data["delivery"], accounts) if "delivery" in data else None,
        alerts=_parse_alerts(data["alerts"], reps, teams) if "alerts" in data else None,
    )


_SECRET_WAYS = ("env", "file", "command")


def _secrets(table: dict[str, Any], names: tuple[str, ...], key: str) -> dict[str, Any]:
    """The ``{name}_env|_file|_command`` keys of ``table``, checked: strings (a command may
    be a list), at most one way per secret."""
    out: dict[str, Any] = {}
    for name in names:
        given = [w for w in _SECRET_WAYS if f"{name}_{w}" in table]
        if len(given) > 1:
            raise ConfigError(f"{key}.{name}_{given[1]}",
                              f"give only one of {name}_env, {name}_file, {name}_command")
        for w in given:
            k = f"{name}_{w}"
            value = table[k]
            if w == "command" and isinstance(value, list):
                _str_list(value, f"{key}.{k}")
            else:
                _expect(value, str, f"{key}.{k}", "a string")
            out[k] = value
    return out


def _positive_int(value: Any, key: str, most: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= most:
        raise ConfigError(key, f"must be a whole number from 0 to {most}")
    return value


def _seconds(value: Any, key: str) -> float:
    """A timeout: a duration ("30s") or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        seconds = float(_duration(value, key))
    if seconds <= 0:
        raise ConfigError(key, "must be more than 0 seconds")
    return seconds


def _path(value: Any, key: str) -> str | None:
    if value is None:
        return None
    return os.path.expanduser(_expect(value, str, key, "a file path"))


_DEFAULT_PORTS = {"ssl": 465, "starttls": 587, "none": 25}


def _parse_delivery(table: Any, accounts: list[Account]) -> Delivery:
    key = "delivery"
    _expect(table, dict, key, "a table")
    secret_keys = {f"password_{w}" for w in _SECRET_WAYS}
    _unknown(table, {"from", "to", "subject", "attach_csv", "host", "port", "security",
                     "username", "ca_file", "timeout", "retries", "oauth_account",
                     *secret_keys}, key)
    security = str(table.get("security", "starttls")).lower()
    if security not in _DEFAULT_PORTS:
        raise ConfigError(f"{key}.security", "must be ssl, starttls or none")
    host = table.get("host")
    if host is not None:
        _expect(host, str, f"{key}.host", "a host name")
        if security == "none" and not is_loopback(host):
            raise ConfigError(f"{key}.security", "'none' (no TLS) is only allowed to a "
                              "loopback address such as 127.0.0.1; use ssl or starttls")
    port = table.get("port", _DEFAULT_PORTS[security])
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ConfigError(f"{key}.port", "must be a port number (1-65535)")
    sender = table.get("from")
    if sender is not None:
        sender = _address(_expect(sender, str, f"{key}.from", "an email address"),
                          f"{key}.from")
    subject = _expect(table.get("subject", Delivery.subject), str, f"{key}.subject",
                      "a string")
    try:
        subject.format(period="")
    except (KeyError, IndexError, ValueError):
        raise ConfigError(f"{key}.subject", "may only use the placeholder {period}") from None
    username = table.get("username")
    if username is not None:
        _expect(username, str, f"{key}.username", "a string")
    oauth_account = table.get("oauth_account")
    if oauth_account is not None:
        # Sign in as that account's sync does (an IMAP account's Google token; scope
        # https://mail.google.com/ covers SMTP too; or a Microsoft account's msal sign-in,
        # asking for SMTP.Send): no second secret to keep.
        _expect(oauth_account, str, f"{key}.oauth_account", "an account name")
        acct = next((a for a in accounts if a.name == oauth_account), None)
        if acct is None or not (acct.options.get("oauth_token_file")
                                or acct.microsoft_sign_in):
            raise ConfigError(f"{key}.oauth_account", f"needs an [[accounts]] entry named "
                              f"{oauth_account!r} with oauth_token_file, of type "
                              "microsoft, or with oauth = \"microsoft\"")
        if secret_keys & set(table):
            raise ConfigError(f"{key}.oauth_account", "give either oauth_account or a "
                              "password_env/_file/_command, not both")
        mailbox = acct.options.get("mailbox")
        username = username or acct.options.get("username") or (
            mailbox if acct.microsoft_sign_in and mailbox not in (None, "me") else None)
        if not isinstance(username, str):
            raise ConfigError(f"{key}.username", "is required with oauth_account (the "
                              "address it signs in as)")
        if acct.microsoft_sign_in and host is None:
            host = MICROSOFT_SMTP
    ca_file = _path(table.get("ca_file"), f"{key}.ca_file")
    return Delivery(
        sender=sender,
        to=tuple(_address(a, f"{key}.to[{i}]")
                 for i, a in enumerate(_str_list(table.get("to", []), f"{key}.to"))),
        subject=subject,
        attach_csv=_expect(table.get("attach_csv", True), bool, f"{key}.attach_csv",
                           "true or false"),
        host=host, port=port, security=security, username=username, ca_file=ca_file,
        timeout_s=_seconds(table.get("timeout", 30), f"{key}.timeout"),
        retries=_positive_int(table.get("retries", 3), f"{key}.retries", 10),
        secret=_secrets(table, ("password",), key),
        oauth_account=oauth_account,
    )


def _parse_alerts(table: Any, reps: list[Rep], teams: dict[str, str]) -> Alerts:
    key = "alerts"
    _expect(table, dict, key, "a table")
    secret_keys = {f"{c}_webhook_{w}" for c in ("slack", "teams") for w in _SECRET_WAYS}
    _unknown(table, {"older_than", "teams", "reps", "basis", "lookback", "digest", "mail_to",
                     "timeout", "retries", "ca_file", *secret_keys}, key)
    known_teams = {r.team for r in reps if r.team} | set(teams)
    per_team: dict[str, int] = {}
    for name, value in _expect(table.get("teams", {}), dict, f"{key}.teams",
                               'a table of team = "duration"').items():
        if name not in known_teams:
            raise ConfigError(f"{key}.teams.{name}", "no rep has this team")
        per_team[name] = _duration(value, f"{key}.teams.{name}")
    per_rep: dict[str, int] = {}
    for name, value in _expect(table.get("reps", {}), dict, f"{key}.reps",
                               'a table of "rep name" = "duration"').items():
        if not any(r.name.lower() == name.lower() for r in reps):
            raise ConfigError(f"{key}.reps.{name}", "no [[reps]] entry has this name")
        per_rep[name] = _duration(value, f"{key}.reps.{name}")
    basis = table.get("basis")
    if basis is not None and basis not in ("business", "calendar"):
        raise ConfigError(f"{key}.basis", "must be business or calendar")
    older_than = _duration(table.get("older_than", "2h"), f"{key}.older_than")
    lookback = _duration(table.get("lookback", "7d"), f"{key}.lookback")
    if lookback <= 0:
        raise ConfigError(f"{key}.lookback", "must be longer than 0")
    return Alerts(
        older_than_s=older_than, team_older_than_s=per_team, rep_older_than_s=per_rep,
        basis=basis, lookback_s=lookback,
        digest=_expect(table.get("digest", False), bool, f"{key}.digest", "true or false"),
        mail_to=tuple(_address(a, f"{key}.mail_to[{i}]") for i, a in enumerate(
            _str_list(table.get("mail_to", []), f"{key}.mail_to"))),
        timeout_s=_seconds(table.get("timeout", 10), f"{key}.timeout"),
        retries=_positive_int(table.get("retries", 3), f"{key}.retries", 10),
        ca_file=_path(table.get("ca_file"), f"{key}.ca_file"),
        secret=_secrets(table, ("slack_webhook", "teams_webhook"), key),
    )


def is_loopback(host: str) -> bool:
    """Only literal loopback addresses and 'localhost': a name that merely resolves to one
    today could resolve elsewhere tomorrow and send a password in clear."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _known_schedule(value: Any, schedules: dict[str, Schedule], key: str) -> str:
    _expect(value, str, key, "a schedule name")
    if value not in schedules:
        raise ConfigError(key, f"no [schedules.{value}] defined")
    return value


TEMPLATE = '''\
# replytime configuration. Every key is optional unless marked required.
# Docs: README.md. Durations: 90s, 15m, 1h30m, 14d. Addresses are case-insensitive.

[team]
# Mail from these domains is internal (your reps); everything else is external.
internal_domains = ["acme.example"]
# Subdomains of those are internal too (mx.acme.example, eu.acme.example): bounces from
# your own mail servers are not external participants. false = the exact domains only.
internal_subdomains = true
# Shared inboxes are internal but are not reps (leads addressed here are "unassigned").
shared_inboxes = ["sales@acme.example"]
# Zone for --since/--until and for per-day counts. Default: this machine's zone.
timezone = "America/New_York"

# One [[reps]] table per person. Internal addresses not listed here are reported as-is.
[[reps]]
name = "Alice Ng"
emails = ["alice@acme.example", "a.ng@acme.example"]
team = "East"            # optional
# schedule = "east"      # optional; else the team's, else [schedules.default]

# Business hours. Without any schedule, business time equals calendar time.
# [schedules.default]
# timezone = "America/New_York"
# monday = ["09:00-17:00"]            # several intervals allowed: ["09:00-12:00", "13:00-17:00"]
# tuesday = ["09:00-17:00"]
# wednesday = ["09:00-17:00"]
# thursday = ["09:00-17:00"]
# friday = ["09:00-17:00"]            # a day left out is a day off
# holidays = ["US"]                   # country or country-subdivision codes (US-CA, DE-BY)
# dates_off = ["2026-12-24"]

# [teams.East]
# schedule = "default"

[leads]
# Only threads whose first message went to one of these addresses are leads.
# to = ["sales@acme.example"]
# Senders never counted as leads (globs).
# exclude_from = ["*@partner.example"]
# labels = ["INBOX"]                  # lead message must carry one of these labels/folders

# Web-form notifications: the prospect is in Reply-To (or a header you name).
# [[leads.forms]]
# from = "wordpress@acme.example"
# subject = "^New (lead|enquiry)"
# lead_address = "reply-to"           # or "header:X-Lead-Email"
# reply_window = "14d"

[sla]
target = "1h"
buckets = ["5m", "15m", "1h", "4h", "24h"]

# Mail sources for `replytime sync`. Files can always be loaded with `replytime import`.
# [[accounts]]
# name = "sales-gmail"
# type = "gmail"
# client_secrets = "~/client_secret.json"
# token_file = "~/.local/share/replytime/sales-gmail.token.json"
# query = "-in:chats"

# [[accounts]]
# name = "sales-imap"
# type = "imap"
# host = "imap.example.com"
# port = 993
# security = "ssl"                    # ssl | starttls | none (loopback only)
# username = "sales@acme.example"
# password_env = "REPLYTIME_IMAP_PASSWORD"   # or password_file / password_command
# folders = ["INBOX", "Sent"]
# oauth = "microsoft"                 # Exchange Online: XOAUTH2 with the msal keys below

# Microsoft 365 / Outlook.com through Microsoft Graph (README.md, "Microsoft 365").
# Sign in once with `replytime auth sales-m365` (a device code: works over SSH).
# [[accounts]]
# name = "sales-m365"
# type = "microsoft"
# client_id = "11111111-2222-3333-4444-555555555555"   # the app registration's client ID
# tenant = "organizations"            # your tenant id or domain; "consumers" for Outlook.com
# token_cache = "~/.local/share/replytime/sales-m365.msal.json"   # written 0600
# mailbox = "me"                      # or "sales@acme.example" (shared / app-only)
# folders = ["Inbox", "Sent Items"]   # well-known names or top-level display names
# since = "2026-01-01"                # skip older messages
# scope = "read"                      # Mail.Read; "basic" = Mail.ReadBasic (no Sent Items
#                                     # In-Reply-To: threads by conversationId alone)
# client_secret_env = "REPLYTIME_MS_SECRET"   # app-only: or client_secret_file, or
# client_certificate = "~/app.pem"            # client_certificate (+ client_certificate_key)
# graph_endpoint = "https://graph.microsoft.com/v1.0"    # national clouds, tests
# authority_host = "https://login.microsoftonline.com"
# ca_file = "~/private-ca.pem"        # trusted for both, over REQUESTS_CA_BUNDLE

# `replytime send weekly`: mail the weekly summary (and mail alerts) through this server.
# [delivery]
# from = "replytime@acme.example"
# to = ["manager@acme.example"]
# host = "smtp.example.com"
# port = 587
# security = "starttls"               # ssl | starttls | none (loopback only)
# username = "replytime@acme.example"
# password_env = "REPLYTIME_SMTP_PASSWORD"   # or password_file / password_command
# oauth_account = "sales-imap"        # or: the Google sign-in of that account's sync;
#                                     # a Microsoft account: smtp.office365.com, SMTP.Send
#                                     # (sign in again with `replytime auth` after adding it)
# attach_csv = true

# `replytime alert` (cron, every few minutes): post leads open longer than older_than,
# once each. Webhook URLs are secrets: from the environment, a file or a command.
# [alerts]
# older_than = "2h"                   # business time when a schedule exists
# slack_webhook_env = "REPLYTIME_SLACK_WEBHOOK"
# teams_webhook_env = "REPLYTIME_TEAMS_WEBHOOK"
# mail_to = ["desk@acme.example"]     # through [delivery]
# digest = false                      # true: one message per run
'''
