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
            from importlib.metadata import version

            holidays_data = version("holidays")  # another release may move a holiday
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
    holidays_codes = _str_list(table.get("holidays", []), f"{key}.holidays")
    for code in holidays_codes:
        _check_holiday_code(code, f"{key}.holidays")
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


def _check_holiday_code(code: str, key: str) -> None:
    import holidays as hol

    country, _, subdiv = code.partition("-")
    try:
        hol.country_holidays(country.upper(), subdiv=subdiv.upper() or None, years=2026)
    except (NotImplementedError, KeyError, AttributeError):
        raise ConfigError(
            key, f"unknown holiday calendar {code!r} (use e.g. US, US-CA, DE-BY)"
        ) from None


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
    _unknown(data, {"team", "reps", "teams", "schedules", "leads", "sla", "accounts"}, "")
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
    )


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
'''
