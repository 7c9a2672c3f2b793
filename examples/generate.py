"""Generate the bundled example mailbox: a small sales team's mail over about eight weeks.

Deterministic (a seeded ``random.Random``, no wall clock) and standard library only, so the
committed files can be checked against a fresh run and the benchmarks can reuse it::

    python examples/generate.py       # rewrites examples/mailbox.mbox and expected_leads.csv
    python examples/generate.py --messages 1000000 --format maildir --out /tmp/big
    python examples/generate.py --messages 100000 --reps 200 --out /tmp/team.mbox \
        --config-out /tmp/replytime.toml     # a team of 200 reps and its config
    python examples/generate.py --threads 3000 --robots 0.6 --same-subject 0.4 \
        --out /tmp/r.mbox --expected /tmp/r.csv   # bounces, robots, same-subject enquiries

While it writes messages it also records, for every thread it means as a lead, what the
definitions of docs/definitions.md say the answer is: lead message, first
reply, response time, attributed rep. That ground truth comes from the generator's own
knowledge of who answers whom, never from replytime's code, so it can check the matcher.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import heapq
import itertools
import json
import os
import random
import re
import sys
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from email.header import Header
from pathlib import Path
from zoneinfo import ZoneInfo

HERE = Path(__file__).resolve().parent
DEFAULT_START = datetime(2026, 9, 7, tzinfo=UTC)  # a Monday (and US Labor Day)
# The mailbox is "exported" on Friday 2026-11-06 at 20:00 UTC (3 pm in New York): later
# messages do not exist yet, which leaves the most recent leads unanswered.
DEFAULT_DAYS = 60 + 20 / 24
DEFAULT_THREADS = 300
DEFAULT_SEED = 7
# Slightly under the mean (about 3.26): --messages then starts enough threads to stop at
# exactly that many, a day or so before the export time.
MESSAGES_PER_THREAD = 3.2
FORM_REPLY_WINDOW = 14 * 86400  # must match reply_window in examples/replytime.toml

INTERNAL_DOMAIN = "acme.example"
CSV_COLUMNS = (
    "lead_message_id", "lead_from", "lead_time", "rep", "answered", "reply_message_id",
    "reply_time", "response_s", "kind", "addressed_rep",
)


# -- people ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Person:
    name: str
    addr: str  # as written in headers (prospects sometimes use mixed case)
    zone: str
    header: str  # "Name <addr>", RFC 2047-encoded when needed
    key: str  # the lower-case address, how docs/definitions.md compares addresses
    internal: bool  # in acme.example
    domain: str


@dataclass(frozen=True, slots=True)
class Rep:
    name: str
    emails: tuple[str, ...]
    team: str
    zone: str
    holidays: frozenset[int]  # local days since 1970-01-01
    people: tuple[Person, ...]  # one Person per address (the alias shares the name)

    @property
    def person(self) -> Person:
        return self.people[0]


Prospect = tuple[Person, str]  # a person at a prospect company, and the company's name

_HEADER_CACHE: dict[str, str] = {}
_SPECIALS = re.compile(r"[,.()]")  # a display name with these must be quoted


def encode_words(text: str) -> str:
    """RFC 2047-encode non-ASCII header text (cached: the pools are small)."""
    if text.isascii():
        return text
    out = _HEADER_CACHE.get(text)
    if out is None:
        # Header folds long values itself; keep each encoded word under 76 characters.
        out = _HEADER_CACHE[text] = Header(text, "utf-8", maxlinelen=76).encode()
    return out


def person(name: str, addr: str, zone: str) -> Person:
    if name.isascii():
        shown = f'"{name}"' if _SPECIALS.search(name) else name
    else:
        shown = encode_words(name)
    key = addr.lower()
    domain = key.rpartition("@")[2]
    return Person(name, addr, zone, f"{shown} <{addr}>" if name else addr, key,
                  domain == INTERNAL_DOMAIN, domain)


_US_2026 = frozenset({date(2026, 9, 7), date(2026, 10, 12), date(2026, 11, 11),
                      date(2026, 11, 26), date(2026, 12, 25)})
_GB_2026 = frozenset({date(2026, 8, 31), date(2026, 12, 25), date(2026, 12, 28)})


def _rep(name: str, emails: Sequence[str], team: str, zone: str, hol: frozenset[date]) -> Rep:
    days = frozenset(d.toordinal() - date(1970, 1, 1).toordinal() for d in hol)
    return Rep(name, tuple(emails), team, zone, days, tuple(person(name, e, zone) for e in emails))


# The roster: keep in step with examples/replytime.toml.
REPS: tuple[Rep, ...] = (
    _rep("Alice Ng", ["alice@acme.example", "a.ng@acme.example"], "Americas",
         "America/New_York", _US_2026),
    _rep("Marcus Reed", ["marcus.reed@acme.example"], "Americas", "America/New_York", _US_2026),
    _rep("Diego Alvarez", ["diego@acme.example"], "Americas", "America/Los_Angeles", _US_2026),
    _rep("Hannah Clarke", ["hannah.clarke@acme.example"], "EMEA", "Europe/London", _GB_2026),
    _rep("Tom Okafor", ["tom.okafor@acme.example"], "EMEA", "Europe/London", _GB_2026),
)
ALICE, MARCUS, DIEGO, HANNAH, TOM = REPS
REP_BY_ADDR = {e: r.name for r in REPS for e in r.emails}

Territory = tuple[tuple[Rep, ...], tuple[int, ...]]  # reps and cumulative hash buckets


@dataclass(frozen=True, slots=True)
class Roster:
    """Who works the leads: the example's five reps (``EXAMPLE_ROSTER``) or a generated
    team of any size (``build_roster``)."""

    reps: tuple[Rep, ...]  # reps[0] keeps New York hours (Priya's clock); reps[:3] get referrals
    # Who owns a prospect in Europe/Africa, in the west and Asia-Pacific, elsewhere: the rep
    # whose bucket holds a stable hash of the prospect's address.
    territories: tuple[Territory, Territory, Territory]
    away: Rep | None  # on holiday for two weeks mid-way (None: nobody); ``cover`` stands in
    cover: Rep | None
    fallback: Rep  # the colleague of a rep who has no teammates
    by_addr: dict[str, str]  # address -> rep name

    def toml(self) -> str:
        """A replytime config for this roster (examples/replytime.toml for the example's)."""
        return roster_toml(self)


EXAMPLE_ROSTER = Roster(
    REPS,
    (((HANNAH, TOM), (55, 100)), ((DIEGO, ALICE), (75, 100)), ((ALICE, MARCUS), (50, 100))),
    HANNAH, TOM, MARCUS, REP_BY_ADDR,
)

# A generated team (build_roster): (team, zone, schedule, holidays the generator's reply clock
# knows). Reps cycle through _TEAM_CYCLE, so 200 reps make teams of 50/30/30/40/30/20.
_BIG_TEAMS = (
    ("Americas East", "America/New_York", "default", _US_2026),
    ("Americas Central", "America/Chicago", "central", _US_2026),
    ("Americas West", "America/Los_Angeles", "pacific", _US_2026),
    ("EMEA UK", "Europe/London", "london", _GB_2026),
    ("EMEA DACH", "Europe/Berlin", "berlin", frozenset()),
    ("APAC", "Australia/Sydney", "sydney", frozenset()),
)
_TEAM_CYCLE = (0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 5, 5)
_TERRITORY_TEAMS = ((3, 4), (2, 5), (0, 1))  # Europe/Africa; west and APAC; the rest
# Business hours per schedule name, written into the generated replytime.toml.
_BIG_SCHEDULES = {
    "default": ("America/New_York", ("09:00-17:00",), "US"),
    "central": ("America/Chicago", ("09:00-17:00",), "US"),
    "pacific": ("America/Los_Angeles", ("09:00-17:00",), "US-CA"),
    "london": ("Europe/London", ("09:00-12:30", "13:30-17:30"), "GB"),
    "berlin": ("Europe/Berlin", ("08:30-17:00",), "DE"),
    "sydney": ("Australia/Sydney", ("09:00-17:00",), "AU-NSW"),
}


def build_roster(n: int) -> Roster:
    """A deterministic team of ``n`` reps (n >= 1) in six teams and six zones.

    Names come from the prospect name pools (stepped, so unique up to 992 reps; beyond that
    a number is appended); every tenth rep also writes from an alias. Nobody is on holiday
    (the example's two-week handoff is not modelled).
    """
    if n < 1:
        raise ValueError("a roster needs at least one rep")
    reps: list[Rep] = []
    used: set[str] = set()
    for i in range(n):
        team, zone_name, _, hol = _BIG_TEAMS[_TEAM_CYCLE[i % len(_TEAM_CYCLE)]]
        q = (i * _NAME_STEP + 5) % _NAMES
        (first, f), (last, la) = _FIRST[q % len(_FIRST)], _LAST[q // len(_FIRST)]
        suffix = str(i // _NAMES) if i >= _NAMES else ""
        name = f"{first} {last}" + (f" {suffix}" if suffix else "")
        emails = [f"{f}.{la}{suffix}@{INTERNAL_DOMAIN}"]
        if i % 10 == 3:
            alias = f"{f[0]}.{la}{suffix}"
            if alias in used:  # two reps share an initial and a last name
                alias += str(i)
            used.add(alias)
            emails.append(f"{alias}@{INTERNAL_DOMAIN}")
        reps.append(_rep(name, emails, team, zone_name, hol))
    team_of = {t[0]: k for k, t in enumerate(_BIG_TEAMS)}

    def territory(teams: tuple[int, ...]) -> Territory:
        pool = tuple(r for r in reps if team_of[r.team] in teams) or tuple(reps)
        return pool, tuple(range(1, len(pool) + 1))  # one hash bucket each

    t0, t1, t2 = (territory(t) for t in _TERRITORY_TEAMS)
    by_addr = {e: r.name for r in reps for e in r.emails}
    return Roster(tuple(reps), (t0, t1, t2), None, None, reps[0], by_addr)


def _toml_str(text: str) -> str:
    # JSON string escapes are valid TOML basic strings.
    return json.dumps(text, ensure_ascii=False)


def roster_toml(roster: Roster) -> str:
    """A replytime config for a generated roster: the example's lead rules and SLA, the
    roster's reps and teams, and business hours per team."""
    if roster is EXAMPLE_ROSTER:
        return (HERE / "replytime.toml").read_text(encoding="utf-8")
    lines = [
        f"# replytime config for a generated team of {len(roster.reps)} reps "
        "(examples/generate.py --reps).",
        "[team]",
        'internal_domains = ["acme.example"]',
        'shared_inboxes = ["sales@acme.example"]',
        'timezone = "America/New_York"',
        "",
    ]
    for r in roster.reps:
        emails = ", ".join(_toml_str(e) for e in r.emails)
        lines += ["[[reps]]", f"name = {_toml_str(r.name)}", f"emails = [{emails}]",
                  f"team = {_toml_str(r.team)}", ""]
    teams = sorted({r.team for r in roster.reps}, key=[t[0] for t in _BIG_TEAMS].index)
    for t in _BIG_TEAMS:
        if t[0] in teams:
            lines += [f"[teams.{_toml_str(t[0])}]", f"schedule = {_toml_str(t[2])}", ""]
    weekdays = ("monday", "tuesday", "wednesday", "thursday", "friday")
    for name, (tz, hours, hol) in _BIG_SCHEDULES.items():
        lines += [f"[schedules.{name}]", f"timezone = {_toml_str(tz)}"]
        intervals = ", ".join(_toml_str(h) for h in hours)
        lines += [f"{d} = [{intervals}]" for d in weekdays]
        lines += [f"holidays = [{_toml_str(hol)}]", ""]
    lines += [
        "[leads]",
        'exclude_from = ["*@northwind-partners.example"]',
        "",
        "[[leads.forms]]",
        'from = "wordpress@acme.example"',
        "subject = '^\\[Acme\\] New (?:enquiry|demo request)'",
        'lead_address = "reply-to"',
        f'reply_window = "{FORM_REPLY_WINDOW // 86400}d"',
        "",
        "[[leads.forms]]",
        'from = "noreply@chat-widget.example"',
        'subject = "^Chat transcript"',
        'lead_address = "header:X-Lead-Email"',
        f'reply_window = "{FORM_REPLY_WINDOW // 86400}d"',
        "",
        "[sla]",
        'target = "1h"',
        'buckets = ["5m", "15m", "1h", "4h", "24h"]',
        "",
    ]
    return "\n".join(lines)
SALES = person("Acme Sales", "sales@acme.example", "America/New_York")
WORDPRESS = person("Acme Website", "wordpress@acme.example", "UTC")
CHAT = person("Acme Chat", "noreply@chat-widget.example", "UTC")
# Internal people who are not in the roster: reported under their address
# (docs/definitions.md, "Reps and attribution").
PRIYA = person("Priya Shah", "priya.shah@acme.example", "America/New_York")
SAM = person("Sam Patel", "sam.patel@acme.example", "America/New_York")
DAEMON = person("Mail Delivery System", "MAILER-DAEMON@mail.acme.example", "UTC")
# Robots of --robots (issue 15): our MX's bounce daemon (a subdomain of the internal domain),
# a calendar service and a list server. Each answers mail of a lead's thread, threaded to it.
MX_DAEMON = person("Mail Delivery System", "MAILER-DAEMON@mx.acme.example", "UTC")
CALENDAR = person("Calendar", "calendar-notification@calendar.example", "UTC")
LISTSERV = person("Community list", "listserv@lists.example", "UTC")
_DAEMONS = (DAEMON, MX_DAEMON)

# (display name, ASCII local-part stem): a few need RFC 2047 in From.
_FIRST = [
    ("Jane", "jane"), ("John", "john"), ("Priscilla", "priscilla"), ("Omar", "omar"),
    ("Mei", "mei"), ("Lars", "lars"), ("Fatima", "fatima"), ("Carlos", "carlos"),
    ("Aiko", "aiko"), ("Ben", "ben"), ("Chloé", "chloe"), ("David", "david"),
    ("Elena", "elena"), ("Felix", "felix"), ("Grace", "grace"), ("Hiro", "hiro"),
    ("Ingrid", "ingrid"), ("José", "jose"), ("Kwame", "kwame"), ("Laura", "laura"),
    ("Mateo", "mateo"), ("Nina", "nina"), ("Oliver", "oliver"), ("Paula", "paula"),
    ("Rahul", "rahul"), ("Sofia", "sofia"), ("Tariq", "tariq"), ("Ursula", "ursula"),
    ("Victor", "victor"), ("Wen", "wen"), ("Zoë", "zoe"), ("Björn", "bjorn"),
]
_LAST = [
    ("Doe", "doe"), ("Kowalski", "kowalski"), ("Nakamura", "nakamura"), ("Haddad", "haddad"),
    ("Chen", "chen"), ("Lindqvist", "lindqvist"), ("Okonkwo", "okonkwo"), ("García", "garcia"),
    ("Müller", "muller"), ("Smith", "smith"), ("Dubois", "dubois"), ("Rossi", "rossi"),
    ("O'Brien", "obrien"), ("Patel", "patel"), ("Jensen", "jensen"), ("Santos", "santos"),
    ("Schneider", "schneider"), ("Tanaka", "tanaka"), ("Novak", "novak"), ("Ivanova", "ivanova"),
    ("Mensah", "mensah"), ("Brown", "brown"), ("Larsen", "larsen"), ("Moreau", "moreau"),
    ("Fischer", "fischer"), ("Kim", "kim"), ("Wright", "wright"), ("Søndergaard", "sondergaard"),
    ("Alvarez", "alvarez"), ("Byrne", "byrne"), ("Costa", "costa"),
]
_NAMES = len(_FIRST) * len(_LAST)  # 992, coprime with _NAME_STEP
_NAME_STEP = 37

# (company, domain, zone, local-part style): style 0 first.last, 1 first_last, 2 last.first
_COMPANIES = [
    ("Initech", "initech.example", "America/Chicago", 0),
    ("Globex", "globex.example", "America/New_York", 0),
    ("Umbrella Health", "umbrella-health.example", "America/Denver", 1),
    ("Hooli", "hooli.example", "America/Los_Angeles", 0),
    ("Vandelay Industries", "vandelay.example", "America/New_York", 0),
    ("Stark Logistics", "stark-logistics.example", "America/Chicago", 2),
    ("Wayne Analytics", "wayne-analytics.example", "America/New_York", 0),
    ("Cyberdyne", "cyberdyne.example", "America/Los_Angeles", 1),
    ("Soylent Foods", "soylent.example", "America/Toronto", 0),
    ("Tyrell Biotech", "tyrell.example", "America/Los_Angeles", 0),
    ("Nordwind Handel", "nordwind.example", "Europe/Berlin", 0),
    ("Brightside Retail", "brightside.example", "Europe/London", 0),
    ("Maison Lumière", "maison-lumiere.example", "Europe/Paris", 2),
    ("Castellana Seguros", "castellana.example", "Europe/Madrid", 0),
    ("Fjord Energy", "fjord-energy.example", "Europe/Oslo", 1),
    ("Oakfield Bank", "oakfield.example", "Europe/London", 0),
    ("Van Dijk Logistiek", "vandijk.example", "Europe/Amsterdam", 0),
    ("Sakura Devices", "sakura-devices.example", "Asia/Tokyo", 2),
    ("Kiwi Freight", "kiwi-freight.example", "Pacific/Auckland", 0),
    ("Bluegum Software", "bluegum.example", "Australia/Sydney", 0),
    ("Indus Payments", "indus-payments.example", "Asia/Kolkata", 0),
    ("Lagos Fintech", "lagosfin.example", "Africa/Lagos", 0),
    ("Sol de Mayo", "soldemayo.example", "America/Argentina/Buenos_Aires", 0),
    ("Pinnacle Realty", "pinnacle-realty.example", "America/Phoenix", 0),
    ("Northstar Schools", "northstar.example", "America/Chicago", 1),
    ("Redwood Clinics", "redwood-clinics.example", "America/Los_Angeles", 0),
    ("Harbor Insurance", "harbor-ins.example", "America/New_York", 0),
    ("Alpenblick Hotels", "alpenblick.example", "Europe/Zurich", 0),
    ("Shamrock Media", "shamrock-media.example", "Europe/Dublin", 0),
    ("Thames Water Tech", "thamestech.example", "Europe/London", 1),
    ("Bärenstark Maschinen", "baerenstark.example", "Europe/Berlin", 0),
    ("Vistula Software", "vistula.example", "Europe/Warsaw", 0),
    ("Porto Digital", "porto-digital.example", "Europe/Lisbon", 2),
    # Personal mailboxes: web-form visitors often use these.
    ("", "inbox.example", "America/New_York", 0),
    ("", "fastmail.example", "Europe/London", 1),
    ("", "webpost.example", "America/Los_Angeles", 0),
]
_PARTNER = ("Northwind Partners", "northwind-partners.example", "America/Chicago")

_SUBJECTS = [
    "Pricing for {n} seats", "Demo request - {company}", "Question about SSO / SAML support",
    "Quote for an annual plan", "Does Acme integrate with Salesforce?", "Volume discount?",
    "Trial extension request", "Reseller enquiry", "Security questionnaire for {company}",
    "Onboarding timeline", "Replacing our current tool ({n} users)", "Enterprise plan details",
    "Can we get a call this week?", "Data residency in the EU", "Nonprofit pricing",
    "Migrating from spreadsheets", "API rate limits", "Procurement: vendor form for Acme",
]
# Non-ASCII subjects, sent RFC 2047-encoded.
_SUBJECTS_INTL = [
    "Anfrage: Preise für {n} Lizenzen", "Demande de démo – {company}",
    "Cotización para {n} usuarios", "お見積もりのお願い（{n}名）", "Förfrågan om offert",
    "Prezzi e condizioni – {company}",
]
_OUTBOUND_SUBJECTS = [
    "Intro: Acme x {company}", "Following up on our call", "Acme proposal for {company}",
    "Quick question about your reporting stack", "Your Acme trial is ready",
    "Invitation: Acme customer roundtable",
]
_INTERNAL_SUBJECTS = [
    "Pipeline review Thursday", "Q4 pricing sheet v{n}", "Territory split for EMEA",
    "Lunch & learn: SSO deep dive", "Discount approval for {company}", "CRM hygiene reminder",
    "Forecast call moved to 2pm", "Win/loss notes: {company}",
]
_NEWSLETTERS = [  # (sender, List-Id, title, zone)
    ("SaaS Weekly <newsletter@saasweekly.example>", "<weekly.saasweekly.example>",
     "SaaS Weekly #{n}: pricing pages that convert", "America/Chicago"),
    ("Acme Partners Events <events@acme-partners.example>", "<events.acme-partners.example>",
     "[events] Partner webinar #{n}", "Europe/London"),
    ("G2 Digest <digest@reviews.example>", "<digest.reviews.example>",
     "Your weekly review digest ({n})", "America/New_York"),
]
_NOREPLY = [  # (sender, subject)
    ("Calendly <no-reply@calendly.example>", "New Event: Discovery call with {name}"),
    ("Zoom <no-reply@zoom.example>", "Cloud recording is now available ({n})"),
    ("LinkedIn <do-not-reply@linkedin.example>", "{name} accepted your invitation"),
    ("DocuSign <noreply@docusign.example>", "Completed: Acme order form #{n}"),
]

_KINDS = ("lead", "form", "outbound", "internal", "newsletter", "noreply", "partner")
_KIND_WEIGHTS = (40, 13, 14, 9, 12, 7, 5)
_KIND_CUM = tuple(itertools.accumulate(_KIND_WEIGHTS))
_TURNS_CUM = (0.35, 0.65, 0.85, 0.95)


# -- time --------------------------------------------------------------------------------------
_ZONES: dict[str, ZoneInfo] = {}
_HOURS: dict[tuple[str, int], tuple[int, str, str]] = {}
_CLOCKS: dict[tuple[str, int, int], int] = {}
_EPOCH_ORD = date(1970, 1, 1).toordinal()
_WDAY = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MON = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def zone(name: str) -> ZoneInfo:
    z = _ZONES.get(name)
    if z is None:
        z = _ZONES[name] = ZoneInfo(name)
    return z


def _hour(zone_name: str, ts: int) -> tuple[int, str, str]:
    """Offset, local "Mon, 07 Sep 2026 " and "-0400" for the half hour holding ``ts``.

    Cached per half hour (zones change offset on the hour, local days start on the hour or
    half hour): formatting dates is much of the work for a million messages.
    """
    key = (zone_name, ts // 1800)
    hit = _HOURS.get(key)
    if hit is None:
        delta = datetime.fromtimestamp(ts, zone(zone_name)).utcoffset()
        off = int(delta.total_seconds()) if delta else 0
        t = time.gmtime(ts - ts % 1800 + off)
        a = abs(off) // 60
        hit = _HOURS[key] = (
            off,
            f"{_WDAY[t.tm_wday]}, {t.tm_mday:02d} {_MON[t.tm_mon - 1]} {t.tm_year} ",
            f"{'-' if off < 0 else '+'}{a // 60:02d}{a % 60:02d}",
        )
    return hit


def utc_offset(zone_name: str, ts: int) -> int:
    """Seconds east of UTC at ``ts``."""
    return _hour(zone_name, ts)[0]


def rfc_date(ts: int, zone_name: str) -> str:
    """An RFC 5322 Date in the sender's local offset, e.g. 'Mon, 07 Sep 2026 10:05:33 -0400'."""
    off, day, sign = _hour(zone_name, ts)
    local = (ts + off) % 86400
    return f"{day}{local // 3600:02d}:{local // 60 % 60:02d}:{local % 60:02d} {sign}"


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _clock(zone_name: str, day_no: int, hour: int) -> int:
    """UTC epoch seconds of ``hour``:00 local time on local day ``day_no`` (days since 1970)."""
    key = (zone_name, day_no, hour)
    hit = _CLOCKS.get(key)
    if hit is None:
        d = date.fromordinal(day_no + _EPOCH_ORD)
        hit = _CLOCKS[key] = int(
            datetime(d.year, d.month, d.day, hour, tzinfo=zone(zone_name)).timestamp()
        )
    return hit


def local_ts(day: date, seconds: float, zone_name: str) -> int:
    """UTC epoch seconds of ``seconds`` after local midnight of ``day`` in a zone."""
    return _clock(zone_name, day.toordinal() - _EPOCH_ORD, 0) + int(seconds)


def _workday(rep: Rep, day_no: int) -> bool:
    return (day_no + 3) % 7 < 5 and day_no not in rep.holidays  # 1970-01-01 was a Thursday


def _next_start(rep: Rep, ts: int) -> int:
    """The next moment at or after ``ts`` inside the rep's working hours (09-17, Mon-Fri)."""
    day, sec = divmod(ts + utc_offset(rep.zone, ts), 86400)
    if _workday(rep, day) and sec < 17 * 3600:
        return ts if sec >= 9 * 3600 else _clock(rep.zone, day, 9)
    day += 1
    while not _workday(rep, day):
        day += 1
    return _clock(rep.zone, day, 9)


def _add_work(rep: Rep, ts: int, seconds: int) -> int:
    """``ts`` plus ``seconds`` of the rep's working time (the rep's clock, roughly)."""
    ts = _next_start(rep, ts)
    while True:
        end = _clock(rep.zone, (ts + utc_offset(rep.zone, ts)) // 86400, 17)
        if ts + seconds <= end:
            return ts + seconds
        seconds -= end - ts
        ts = _next_start(rep, end)


# -- generated data ----------------------------------------------------------------------------
@dataclass(slots=True)
class ExpectedLead:
    """One row of expected_leads.csv: what docs/definitions.md makes of a planned lead."""

    lead_message_id: str
    lead_from: str
    lead_time: int  # UTC epoch seconds
    rep: str  # responder, else the addressed rep, else "(unassigned)"
    answered: bool
    reply_message_id: str
    reply_time: int | None
    response_s: int | None
    kind: str  # email | form
    addressed_rep: str  # first roster rep in To, then Cc ("" when none): handoffs

    def row(self) -> dict[str, str]:
        return {
            "lead_message_id": self.lead_message_id,
            "lead_from": self.lead_from,
            "lead_time": iso(self.lead_time),
            "rep": self.rep,
            "answered": "true" if self.answered else "false",
            "reply_message_id": self.reply_message_id,
            "reply_time": iso(self.reply_time) if self.reply_time is not None else "",
            "response_s": str(self.response_s) if self.response_s is not None else "",
            "kind": self.kind,
            "addressed_rep": self.addressed_rep,
        }


@dataclass(slots=True)
class GeneratedMessage:
    raw: bytes  # the whole RFC 5322 message, LF line endings
    message_id: str  # without angle brackets
    ts: int  # UTC epoch seconds (the Date header's instant)
    sender: str  # envelope sender, for the mbox "From " line
    thread: str  # the generator's own thread label, e.g. "lead-00042"
    kind: str  # what the thread is: lead, form, outbound, internal, newsletter, ...
    lead: ExpectedLead | None = None  # set on the lead message of every planned lead

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.ts, UTC)


@dataclass(slots=True)
class _Msg:
    """A planned message; rendered to bytes once its thread is complete."""

    ts: int
    sender: Person
    to: list[Person]
    cc: Sequence[Person] = ()
    subject: str = ""
    parent: _Msg | None = None
    extra: Sequence[str] = ()  # extra header lines
    automated: bool = False
    body: str = ""
    thread: str = ""
    reply_to: Person | None = None
    content_type: str = 'text/plain; charset="UTF-8"'
    mid: str = ""
    refs: tuple[str, ...] = ()

    @property
    def recipients(self) -> list[str]:
        return [p.key for p in itertools.chain(self.to, self.cc)]


Planned = tuple[list[_Msg], "ExpectedLead | None"]  # a thread's messages and its ground truth


def _internal(addr: str) -> bool:
    return addr.lower().endswith("@" + INTERNAL_DOMAIN)


def _roster_rep(msg: _Msg, by_addr: dict[str, str] = REP_BY_ADDR) -> str:
    """Attribution for an unanswered lead: first roster rep in To, then in Cc."""
    for p in itertools.chain(msg.to, msg.cc):
        if p.key in by_addr:
            return by_addr[p.key]
    return ""


def _expected(lead: _Msg, lead_addr: str, candidates: Iterable[_Msg], kind: str,
              by_addr: dict[str, str] = REP_BY_ADDR) -> ExpectedLead:
    """Apply the first-reply rule of docs/definitions.md by hand to the messages that exist.

    Email lead (section 3): the earliest non-automated message in the lead's thread from an
    internal address, at or after the lead time, with an external address in To/Cc.
    Form lead (section 3b): the earliest such message in any thread with the lead address in
    To/Cc, within the reply window.
    """
    reply = None
    for m in sorted(candidates, key=lambda m: m.ts):
        if m.automated or not m.sender.internal or m.ts < lead.ts:
            continue
        if kind == "email":
            ok = m.thread == lead.thread and any(not _internal(a) for a in m.recipients)
        else:
            ok = lead_addr in m.recipients
        if ok:
            reply = m
            break
    if reply is not None and kind == "form" and reply.ts - lead.ts > FORM_REPLY_WINDOW:
        reply = None  # too late to count (reply_window)
    addressed = _roster_rep(lead, by_addr)
    if reply is None:
        return ExpectedLead(lead.mid, lead_addr, lead.ts, addressed or "(unassigned)", False,
                            "", None, None, kind, addressed)
    responder = by_addr.get(reply.sender.key, reply.sender.key)
    return ExpectedLead(lead.mid, lead_addr, lead.ts, responder, True, reply.mid, reply.ts,
                        reply.ts - lead.ts, kind, addressed)


def _render(m: _Msg) -> bytes:
    s = m.sender
    text = (f"From: {s.header}\nTo: {', '.join([p.header for p in m.to])}\n"
            + (f"Cc: {', '.join([p.header for p in m.cc])}\n" if m.cc else "")
            + (f"Reply-To: {m.reply_to.header}\n" if m.reply_to is not None else "")
            + f"Subject: {m.subject}\nDate: {rfc_date(m.ts, s.zone)}\nMessage-ID: <{m.mid}>\n")
    if not s.internal:
        # Stamped by our MX a few seconds after the Date (importers use Date when present).
        text = (f"Received: from mx.{s.domain} by mx.acme.example with ESMTPS; "
                f"{rfc_date(m.ts + 3, 'UTC')}\n{text}")
    if m.parent is not None:
        refs = "\n ".join([f"<{r}>" for r in m.refs])
        text += f"In-Reply-To: <{m.parent.mid}>\nReferences: {refs}\n"
    if m.extra:
        text += "\n".join(m.extra) + "\n"
    cte = "" if m.body.isascii() else "Content-Transfer-Encoding: 8bit\n"
    text += f"MIME-Version: 1.0\nContent-Type: {m.content_type}\n{cte}\n{m.body}\n"
    return text.encode()


# -- planning threads --------------------------------------------------------------------------
class _Planner:
    def __init__(self, seed: int, start: datetime, days: float,
                 roster: Roster = EXAMPLE_ROSTER, prospect_base: int = 0,
                 robots: float = 0.0, same_subject: float = 0.0) -> None:
        self.rng = random.Random(seed)
        # --robots / --same-subject draw from their own generator, and only when asked for:
        # with both at 0 the mailbox is byte for byte the one without them.
        self.robots = robots
        self.same_subject = same_subject
        self.xrng = random.Random(f"{seed}/robots")
        self.forced_subject: str | None = None  # a same-subject twin's enquiry
        self.roster = roster
        self.start = int(start.timestamp())
        self.cutoff = self.start + int(days * 86400)
        # Hannah is on holiday for two weeks in the middle (Oct 12-23 by default): her
        # out-of-office auto-reply answers mail sent to her, Tom takes over (handoffs).
        first = start.date() + timedelta(days=(7 - start.weekday()) % 7)
        vac = first + timedelta(weeks=5)
        away_zone = roster.away.zone if roster.away is not None else "UTC"
        self.vacation = (local_ts(vac - timedelta(days=2), 0, away_zone),
                         local_ts(vac + timedelta(days=14), 0, away_zone))
        self.n_mid = 0
        # Mailboxes generated to sit side by side (benchmarks/bench_scale.py) start at
        # different bases, so no prospect address appears in two of them.
        self.n_prospect = prospect_base
        self.n_ticket = 1000
        order = list(range(len(_COMPANIES)))
        self.rng.shuffle(order)
        self.company_order = order
        self.issue = [100 + i * 37 for i in range(len(_NEWSLETTERS))]

    # -- helpers ---------------------------------------------------------------------------
    def mid(self, sender: Person) -> str:
        """A unique Message-ID in the sender's provider's style."""
        self.n_mid += 1
        r = self.rng.getrandbits(64)
        domain = sender.domain
        if sender is WORDPRESS:  # PHPMailer: a hash at the web server's name
            return f"{r:016x}{self.n_mid:x}@www.acme.example"
        if domain == INTERNAL_DOMAIN:  # Google Workspace
            return f"CA{r:016X}{self.n_mid:x}@mail.gmail.com"
        if self.n_mid % 3 == 0:  # Outlook-ish
            return f"SN{self.n_mid:06d}{r:016X}@prod.outlook.example"
        return f"{r:016x}.{self.n_mid}@{domain}"

    def prospect(self, personal: bool = False) -> tuple[Person, str]:
        """A new person at a prospect company, never used by any other thread."""
        while True:
            k = self.n_prospect
            self.n_prospect += 1
            c = self.company_order[k % len(_COMPANIES)]
            company, domain, zone_name, style = _COMPANIES[c]
            if personal == (company == ""):
                break
        gen = k // len(_COMPANIES)
        q = (gen * _NAME_STEP + c * 11) % _NAMES
        (first, f), (last, la) = _FIRST[q % len(_FIRST)], _LAST[q // len(_FIRST)]
        local = (f"{f}.{la}", f"{f}_{la}", f"{la}.{f}")[style]
        if gen >= _NAMES:  # only for huge mailboxes: keep addresses unique
            local += str(gen // _NAMES)
        addr = f"{local}@{domain}"
        if self.rng.random() < 0.1:  # some people type their address with capitals
            addr = f"{local.title()}@{domain.capitalize()}"
        if zone_name.startswith("America/") and company == "":
            zone_name = self.rng.choice(["America/New_York", "America/Chicago",
                                         "America/Los_Angeles"])
        return person(f"{first} {last}", addr, zone_name), company

    def subject(self, company: str) -> str:
        if self.forced_subject is not None:
            return self.forced_subject
        rng = self.rng
        pool = _SUBJECTS_INTL if rng.random() < 0.08 else _SUBJECTS
        text = rng.choice(pool).format(n=rng.choice([5, 12, 25, 40, 80, 150]),
                                       company=company or "our team")
        return encode_words(text)

    def away(self, rep: Rep, ts: int) -> bool:
        return rep is self.roster.away and self.vacation[0] <= ts < self.vacation[1]

    def route(self, p: Person, ts: int, ignore_away: bool = False) -> Rep:
        """The territory rep who owns a prospect: EMEA for Europe/Africa, Diego for the west
        and Asia-Pacific, Alice or Marcus for the rest (stable per address)."""
        h = zlib.crc32(p.key.encode())
        region = p.zone.split("/")[0]
        if region in ("Europe", "Africa"):
            territory = 0
        elif p.zone in ("America/Los_Angeles", "America/Phoenix", "America/Denver") or region in (
            "Asia", "Australia", "Pacific"
        ):
            territory = 1
        else:
            territory = 2
        pool, buckets = self.roster.territories[territory]
        rep = pool[bisect.bisect_right(buckets, h % buckets[-1])]
        if not ignore_away and self.away(rep, ts) and self.roster.cover is not None:
            rep = self.roster.cover
        return rep

    def colleague(self, rep: Rep) -> Rep:
        away = self.roster.away
        mates = [r for r in self.roster.reps if r.team == rep.team and r is not rep
                 and r is not away]
        return self.rng.choice(mates or [self.roster.fallback])

    def reply_delay(self, rep: Rep, ts: int) -> int:
        """When ``rep`` answers a message that arrived at ``ts``: minutes to days."""
        rng = self.rng
        r = rng.random()
        if r < 0.08:  # answers from the phone: evenings, weekends
            return ts + rng.randint(180, 3000)
        if r < 0.45:
            return _add_work(rep, ts, rng.randint(90, 3300))
        if r < 0.75:
            return _add_work(rep, ts, rng.randint(3600, 5 * 3600))
        if r < 0.92:
            return _add_work(rep, ts, rng.randint(5 * 3600, 12 * 3600))
        return _add_work(rep, ts, rng.randint(14 * 3600, 30 * 3600))

    def prospect_delay(self, ts: int) -> int:
        rng = self.rng
        return ts + (rng.randint(600, 7200) if rng.random() < 0.5 else rng.randint(7200, 40 * 3600))

    def msg(self, thread: str, ts: int, sender: Person, to: list[Person], subject: str,
            parent: _Msg | None = None, **kw: object) -> _Msg:
        m = _Msg(ts, sender, to, subject=subject, parent=parent, thread=thread, **kw)  # type: ignore[arg-type]
        m.mid = self.mid(sender)
        if parent is not None:
            # Mail clients keep the root and the latest few ids when References grow long.
            refs = (*parent.refs, parent.mid)
            m.refs = refs if len(refs) <= 10 else (refs[0], *refs[-9:])
        return m

    def conversation(self, thread: str, msgs: list[_Msg], last: _Msg, p: Person, rep: Rep,
                     subject: str, cc: list[Person]) -> None:
        """Follow-up turns after a rep's message: the prospect writes, the rep answers."""
        rng = self.rng
        turns = bisect.bisect(_TURNS_CUM, rng.random())  # 0-4 turns: 35%, 30%, 20%, 10%, 5%
        rep_person = last.sender if last.sender.internal else rep.person
        for _ in range(turns):
            if rng.random() < 0.05:  # the prospect is away: their out-of-office answers
                ooo = self.msg(thread, last.ts + rng.randint(5, 90), p, [rep_person],
                               "Automatic reply: " + subject.removeprefix("Re: "), last,
                               extra=["Auto-Submitted: auto-replied", "X-Autoreply: yes"],
                               automated=True, body="I am out of the office until Monday.")
                msgs.append(ooo)
            t = self.prospect_delay(last.ts)
            if rng.random() < 0.15 and not cc:
                company_domain = p.key.rsplit("@", 1)[-1]
                cc = [person("", f"{rng.choice(['procurement', 'it', 'finance'])}@"
                             f"{company_domain}", p.zone)]
            last = self.msg(thread, t, p, [rep_person], subject, last, cc=list(cc),
                            body="Thanks, that helps. A couple more questions below.")
            msgs.append(last)
            if rng.random() < 0.12:
                break  # the prospect has the last word
            t = self.reply_delay(rep, last.ts)
            extra_cc = [PRIYA] if rng.random() < 0.1 else []
            last = self.msg(thread, t, rep_person, [p], subject, last, cc=cc + extra_cc,
                            body="Happy to help - answers inline.")
            msgs.append(last)

    # -- thread kinds ----------------------------------------------------------------------
    def plan(self, kind: str, thread: str, ts: int, who: Prospect | None) -> Planned:
        plan = getattr(self, f"plan_{kind}")
        return plan(thread, ts, who)  # type: ignore[no-any-return]

    def plan_lead(self, thread: str, ts: int, who: Prospect | None) -> Planned:
        """An inbound email lead, to the shared inbox or straight to a rep."""
        rng = self.rng
        assert who is not None
        p, company = who
        subject = self.subject(company)
        re_subject = "Re: " + subject
        direct = rng.random() < 0.42
        addressed: Rep | None = None
        cc: list[Person] = []
        if direct:
            addressed = self.route(p, ts, ignore_away=True)
            away = self.roster.away
            if away is not None and addressed.team == away.team and self.away(away, ts):
                addressed = away  # European prospects know her, not her holiday dates
            to = [addressed.people[-1] if rng.random() < 0.3 else addressed.person]
            if rng.random() < 0.1:  # wrote to two reps at once: the first one counts
                to.append(self.colleague(addressed).person)
        else:
            to = [SALES]
            if rng.random() < 0.12:  # copied the rep they met at a trade show
                addressed = self.route(p, ts, ignore_away=True)
                cc = [addressed.person]
        lead = self.msg(thread, ts, p, to, subject, cc=cc,
                        body="Hello, we are evaluating tools like yours and have a question.")
        msgs = [lead]
        if not direct:  # the shared inbox acknowledges everything: automated, not a reply
            msgs.append(self.msg(thread, ts + rng.randint(4, 40), SALES, [p], re_subject, lead,
                                 extra=["Auto-Submitted: auto-replied"], automated=True,
                                 body="Thanks for contacting Acme. A rep will be in touch."))
        intended: _Msg | None = None
        r = rng.random()
        responder: Rep | Person | None = addressed or self.route(p, ts)
        last = lead
        if addressed is not None and self.away(addressed, ts):
            # Out of office (internal, automated: not a reply), a teammate answers: handoff.
            msgs.append(self.msg(thread, ts + rng.randint(20, 120), addressed.person, [p],
                                 "Out of office: " + subject, lead,
                                 extra=["Auto-Submitted: auto-replied", "X-Autoreply: yes"],
                                 automated=True, body="I am on holiday, back on 26 October."))
            responder = self.roster.cover
        elif r < 0.07:
            responder = None  # never answered
        elif r < 0.15:
            # Forwarded to a colleague only (not a reply), who then answers the prospect.
            # Addressed to a rep: a handoff; sent to sales@: triage by the shared inbox.
            fwd_from = addressed or self.route(p, ts)
            target = self.route(p, ts) if addressed is None else self.colleague(fwd_from)
            if target is fwd_from:
                target = self.colleague(fwd_from)
            t = self.reply_delay(fwd_from, ts)
            fwd = self.msg(thread, t, fwd_from.person, [target.person], "Fwd: " + subject, lead,
                           body="Can you take this one? Your territory.")
            msgs.append(fwd)
            last, responder = fwd, target
            cc = [fwd_from.person]
        elif r < 0.18:
            responder = PRIYA  # a technical question the solutions engineer answers first
        if responder is not None:
            # Priya keeps New York hours (the first rep's).
            rep = responder if isinstance(responder, Rep) else self.roster.reps[0]
            t = max(self.reply_delay(rep, last.ts), max(m.ts for m in msgs) + 60)
            if t - ts > 20 * 3600 and rng.random() < 0.4:
                # The prospect chases before anyone answers: that does not restart the clock.
                chase = self.msg(thread, ts + int((t - ts) * rng.uniform(0.4, 0.9)), p, to,
                                 re_subject, lead, body="Just checking you got this?")
                msgs.append(chase)
                if last is lead:
                    last = chase
            who = responder.person if isinstance(responder, Rep) else responder
            if isinstance(responder, Rep) and len(responder.people) > 1 and rng.random() < 0.3:
                who = responder.people[1]  # replies from an alias now and then (Alice's)
            intended = self.msg(thread, t, who, [p], re_subject, last, cc=cc,
                                body="Thanks for reaching out - happy to help.")
            msgs.append(intended)
            if not (self.robots and self.xrng.random() < self.robots
                    and self.robot_mail(thread, msgs, intended, p, re_subject)):
                self.conversation(thread, msgs, intended, p, rep, re_subject, [])
        elif rng.random() < 0.5:
            msgs.append(self.msg(thread, ts + rng.randint(2, 4) * 86400 + rng.randint(0, 9000),
                                 p, to, re_subject, lead, body="Is anyone there?"))
        return self.finish(msgs, lead, p.key, "email", intended)

    def robot_mail(self, thread: str, msgs: list[_Msg], answer: _Msg, p: Person,
                   re_subject: str) -> bool:
        """--robots: automated mail answering a rep's first reply, threaded to it (In-Reply-To
        and References), as bounces, auto-replies and robots' notices are. None of it is a
        lead or a reply. True when the answer bounced (the conversation ends there)."""
        x = self.xrng
        k = x.random()
        rep_person = answer.sender
        at = answer.ts + x.randint(5, 120)
        if k < 0.4:  # the prospect's server rejects the answer: our MX reports it
            boundary = f"{answer.mid[:12]}/mx.acme.example"
            msgs.append(self.msg(
                thread, at, MX_DAEMON, [rep_person], "Undelivered Mail Returned to Sender",
                answer, automated=True,
                content_type='multipart/report; report-type=delivery-status;\n'
                             f' boundary="{boundary}"',
                body=f"--{boundary}\nContent-Type: text/plain\n\n"
                     f"Delivery to {p.addr} failed: mailbox unavailable.\n--{boundary}--"))
            return True
        if k < 0.65:  # the prospect is away: an auto-reply or an out-of-office notice
            if x.random() < 0.5:
                subject, extra = "Automatic reply: " + re_subject.removeprefix("Re: "), [
                    "Auto-Submitted: auto-replied", "X-Autoreply: yes"]
            else:
                subject, extra = "Out of Office: " + re_subject, ["X-Auto-Response-Suppress: All"]
            msgs.append(self.msg(thread, at, p, [rep_person], subject, answer, extra=extra,
                                 automated=True, body="I am out of the office this week."))
        elif k < 0.85:  # the calendar service confirms the call the answer proposed
            msgs.append(self.msg(thread, at, CALENDAR, [rep_person], re_subject, answer,
                                 cc=[p], extra=["Auto-Submitted: auto-generated"],
                                 automated=True, body="Invitation accepted."))
        else:  # the answer was copied to a list, whose server acknowledges it
            msgs.append(self.msg(thread, at, LISTSERV, [rep_person], re_subject, answer,
                                 extra=["List-Id: Acme community <community.lists.example>",
                                        "Precedence: list"],
                                 automated=True, body="Your post was received."))
        return False

    def plan_twin(self, label: str, msgs: list[_Msg], expected: ExpectedLead) -> Planned | None:
        """--same-subject: another prospect's enquiry with the lead's subject a few minutes
        later, in a new thread without threading headers (its own lead)."""
        lead = next(m for m in msgs if m.mid == expected.lead_message_id)
        ts = lead.ts + self.xrng.randint(60, 15 * 60)
        if ts >= self.cutoff:
            return None
        self.forced_subject = lead.subject
        try:
            return self.plan_lead(label, ts, self.prospect())
        finally:
            self.forced_subject = None

    def plan_form(self, thread: str, ts: int, who: Prospect | None) -> Planned:
        """A web-form (WordPress) or chat-widget notification; the prospect is in a header."""
        rng = self.rng
        assert who is not None
        p, company = who
        self.n_ticket += rng.randint(1, 9)
        chat = rng.random() < 0.25
        responder: Rep = self.route(p, ts)
        if chat:
            # The chat widget mails the rep on duty and names the visitor in X-Lead-Email.
            to = [responder.person]
            subject = f"Chat transcript #{self.n_ticket} - {encode_words(p.name)}"
            extra = [f"X-Lead-Email: {p.addr}", "Auto-Submitted: auto-generated"]
            sender, reply_to = CHAT, None
        else:
            to = [SALES]
            what = rng.choice(["enquiry", "demo request"])
            # Only the name is encoded: a subject may mix plain text and encoded words.
            subject = f"[Acme] New {what} #{self.n_ticket} from {encode_words(p.name)}"
            extra = ["Auto-Submitted: auto-generated"] if rng.random() < 0.7 else []
            sender, reply_to = WORDPRESS, p
        # Usually marked automated; the [[leads.forms]] rules make them leads regardless.
        note = self.msg(thread, ts, sender, to, subject, reply_to=reply_to, extra=extra,
                        automated=chat or bool(extra),
                        body=f"Name: {p.name} / Company: {company or '-'} / Message: (omitted)")
        msgs = [note]
        r = rng.random()
        if r < 0.06:
            return self.finish(msgs, note, p.key, "form", None)  # never answered
        t = self.reply_delay(responder, ts)
        if r < 0.10:
            t = ts + rng.randint(16, 20) * 86400  # answered, but after the 14-day window
        elif rng.random() < 0.1 and t - ts < 86400 and t < self.cutoff:
            # Submitted twice before anyone answered: both belong to the first notification.
            again = self.msg(thread + "b", ts + rng.randint(120, 1800), sender, to,
                             subject, reply_to=reply_to, extra=extra, automated=note.automated,
                             body=note.body)
            msgs.append(again)
            t = max(t, again.ts + 60)
        if rng.random() < 0.35 and not chat:
            # Hitting Reply on the notification goes to Reply-To, in the notification's thread.
            reply = self.msg(thread, t, responder.person, [p], "Re: " + subject, note,
                             body="Thanks for your enquiry!")
        else:  # reps usually write a fresh email: a new thread
            fresh = rng.choice(["Your Acme enquiry", "Acme demo - next steps",
                                f"Following up on your {'chat' if chat else 'form'} request"])
            reply = self.msg(thread + "r", t, responder.person, [p], fresh,
                             body="Thanks for getting in touch through our website.")
        msgs.append(reply)
        self.conversation(reply.thread, msgs, reply, p, responder,
                          "Re: " + reply.subject.removeprefix("Re: "), [])
        return self.finish(msgs, note, p.key, "form", reply if r >= 0.10 else None)

    def plan_outbound(self, thread: str, ts: int, who: Prospect | None) -> Planned:
        """A rep writes first: not a lead, whatever follows."""
        rng = self.rng
        assert who is not None
        p, company = who
        rep = self.route(p, ts)
        subject = rng.choice(_OUTBOUND_SUBJECTS).format(company=company or "your team")
        r = rng.random()
        if r < 0.12:  # a mistyped address bounces (multipart/report, automated)
            local, domain = p.key.split("@")
            bad = person(p.name, f"{local[1]}{local[0]}{local[2:]}@{domain}", p.zone)  # typo
            first = self.msg(thread, ts, rep.person, [bad], subject, body="Hi, quick intro.")
            boundary = f"{first.mid[:12]}/mail.acme.example"
            bounce = self.msg(thread + "x", ts + rng.randint(2, 40), DAEMON, [rep.person],
                              "Undelivered Mail Returned to Sender",
                              content_type=f'multipart/report; report-type=delivery-status;\n'
                                           f' boundary="{boundary}"',
                              extra=["Auto-Submitted: auto-replied"], automated=True,
                              body=f"--{boundary}\nContent-Type: text/plain\n\n"
                                   f"Delivery to {bad.addr} failed: user unknown.\n"
                                   f"--{boundary}--")
            return self.finish([first, bounce], None, "", "", None)
        first = self.msg(thread, ts, rep.person, [p], subject, body="Hi, following up.")
        msgs = [first]
        if r < 0.22:
            msgs.append(self.msg(thread, ts + rng.randint(5, 60), p, [rep.person],
                                 "Automatic reply: " + subject, first,
                                 extra=["X-Autoreply: yes", "Auto-Submitted: auto-replied"],
                                 automated=True, body="I am out of the office this week."))
        elif r < 0.65:
            answer = self.msg(thread, self.prospect_delay(ts), p, [rep.person], "Re: " + subject,
                              first, body="Thanks, interesting. Tell me more.")
            msgs.append(answer)
            t = self.reply_delay(rep, answer.ts)
            last = self.msg(thread, t, rep.person, [p], "Re: " + subject, answer,
                            body="Sure - details below.")
            msgs.append(last)
            self.conversation(thread, msgs, last, p, rep, "Re: " + subject, [])
        return self.finish(msgs, None, "", "", None)

    def plan_internal(self, thread: str, ts: int, who: Prospect | None) -> Planned:
        rng = self.rng
        people = [r.person for r in self.roster.reps if not self.away(r, ts)] + [SAM, PRIYA]
        sender = rng.choice([SAM, SAM, *people])
        k = rng.randint(1, 3)
        others = [x for x in people if x is not sender]
        to = rng.sample(others, min(k, len(others)))  # a roster of one has few to write to
        company = rng.choice([c for c in _COMPANIES if c[0]])[0]
        subject = rng.choice(_INTERNAL_SUBJECTS).format(n=rng.randint(2, 9), company=company)
        last = self.msg(thread, ts, sender, to, subject, body="See the notes in the doc.")
        msgs = [last]
        for _ in range(rng.choices((0, 1, 2, 3), (30, 35, 25, 10))[0]):
            who = rng.choice([x for x in [sender, *to] if x is not last.sender])
            t = last.ts + rng.randint(300, 20 * 3600)
            last = self.msg(thread, t, who, [last.sender], "Re: " + subject, last,
                            cc=[x for x in [sender, *to] if x not in (who, last.sender)],
                            body="Sounds good.")
            msgs.append(last)
        return self.finish(msgs, None, "", "", None)

    def plan_newsletter(self, thread: str, ts: int, who: Prospect | None) -> Planned:
        rng = self.rng
        i = rng.randrange(len(_NEWSLETTERS))
        sender_h, list_id, title, zone_name = _NEWSLETTERS[i]
        self.issue[i] += 1
        name, addr = sender_h[:-1].split(" <")
        sender = person(name, addr, zone_name)
        to = [SALES] if rng.random() < 0.5 else [rng.choice(self.roster.reps).person]
        extra = [f"List-Id: {name} {list_id}",
                 f"List-Unsubscribe: <https://{addr.split('@')[1]}/u/{rng.getrandbits(40):x}>"]
        if rng.random() < 0.6:
            extra.append("Precedence: bulk")
        m = self.msg(thread, ts, sender, to, title.format(n=self.issue[i]), extra=extra,
                     automated=True, body="View this email in your browser.")
        return self.finish([m], None, "", "", None)

    def plan_noreply(self, thread: str, ts: int, who: Prospect | None) -> Planned:
        rng = self.rng
        sender_h, subject = rng.choice(_NOREPLY)
        name, addr = sender_h[:-1].split(" <")
        p, _ = self.prospect()
        m = self.msg(thread, ts, person(name, addr, "UTC"), [rng.choice(self.roster.reps).person],
                     subject.format(name=encode_words(p.name), n=rng.randint(1000, 9999)),
                     automated=True, body="This is an automated notification.")
        return self.finish([m], None, "", "", None)

    def plan_partner(self, thread: str, ts: int, who: Prospect | None) -> Planned:
        """A channel partner writes to a rep: external, but excluded by leads.exclude_from."""
        rng = self.rng
        company = rng.choice([c for c in _COMPANIES if c[0]])[0]
        first, stem = rng.choice(_FIRST)
        partner = person(f"{first} (Northwind)", f"{stem}.partner@{_PARTNER[1]}", _PARTNER[2])
        rep = rng.choice(self.roster.reps[:3])
        first_msg = self.msg(thread, ts, partner, [rep.person], f"Referral: {company}",
                             body="Introducing a customer of ours who needs reporting.")
        msgs = [first_msg]
        if rng.random() < 0.8:
            msgs.append(self.msg(thread, self.reply_delay(rep, ts), rep.person, [partner],
                                 f"Re: Referral: {company}", first_msg, body="Thanks, on it."))
        return self.finish(msgs, None, "", "", None)

    def finish(self, msgs: list[_Msg], lead: _Msg | None, lead_addr: str, kind: str,
               intended: _Msg | None) -> Planned:
        """Drop what lies after the export time; work out the expected answer for a lead."""
        msgs = [m for m in msgs if m.ts < self.cutoff]
        msgs.sort(key=lambda m: m.ts)
        if lead is None:
            return msgs, None
        exp = _expected(lead, lead_addr, msgs, kind, self.roster.by_addr)
        # The by-hand rule must agree with what the plan meant to happen.
        want = intended.mid if intended is not None and intended.ts < self.cutoff else ""
        if exp.reply_message_id != want:
            raise AssertionError(f"{lead.thread}: expected reply {want!r}, rule says "
                                 f"{exp.reply_message_id!r}")
        return msgs, exp

    def arrival(self, kind: str, day: date) -> tuple[int, Prospect | None]:
        """When a thread of ``kind`` starts on ``day`` (office hours of whoever starts it),
        and the prospect it is about, if any."""
        rng = self.rng
        who = None
        if kind in ("lead", "form", "outbound"):
            who = self.prospect(personal=kind == "form" and rng.random() < 0.4)
        if kind in ("lead", "form"):
            zone_name = who[0].zone  # type: ignore[index]
            late = rng.random() < 0.15  # evenings and nights happen too
            hours = rng.uniform(0, 24) if late else rng.triangular(7.5, 18.5, 10.5)
        elif kind == "partner":
            zone_name = _PARTNER[2]
            late = rng.random() < 0.15  # evenings and nights happen too
            hours = rng.uniform(0, 24) if late else rng.triangular(7.5, 18.5, 10.5)
        elif kind == "newsletter":
            zone_name, hours = "America/Chicago", rng.uniform(5, 9)
        elif kind == "noreply":
            zone_name, hours = "UTC", rng.uniform(0, 24)
        else:
            # Outbound: the prospect's territory rep writes; internal: anyone on the team.
            zone_name = (self.route(who[0], 0).zone if who else rng.choice(self.roster.reps).zone)
            hours = rng.uniform(8.5, 18) if rng.random() < 0.9 else rng.uniform(18, 23)
        return local_ts(day, hours * 3600, zone_name), who


def generate_messages(
    n_threads: int = DEFAULT_THREADS,
    seed: int = DEFAULT_SEED,
    start: datetime = DEFAULT_START,
    days: float = DEFAULT_DAYS,
    max_messages: int | None = None,
    roster: Roster | None = None,
    prospect_base: int = 0,
    robots: float = 0.0,
    same_subject: float = 0.0,
) -> Iterator[GeneratedMessage]:
    """Yield a sales team's mailbox, message by message in time order.

    ``n_threads`` threads start between ``start`` and ``start + days`` (the export time);
    messages that would come later are not in the mailbox. Memory stays bounded by the
    threads still open (a few days' worth), so millions of messages stream fine.
    Lead messages carry ``.lead``, the ground truth for that lead. ``roster``: the team
    (default: the example's five reps; ``build_roster(200)`` for a big one).
    ``prospect_base``: where prospect addresses start (mailboxes meant to be merged use
    distinct bases, e.g. ``k * 10_000_000``, so they share no prospect).
    ``robots``: the share of answered email leads whose first reply draws robot mail
    (a bounce from MAILER-DAEMON@mx.acme.example, the prospect's auto-reply or out-of-office,
    a calendar or list server notice; ``_Planner.robot_mail``). ``same_subject``: the share
    of email leads followed minutes later by another prospect's enquiry with the same
    subject in a new thread (``_Planner.plan_twin``). Both 0: the mailbox without them.
    """
    planner = _Planner(seed, start, days, roster or EXAMPLE_ROSTER, prospect_base, robots,
                       same_subject)
    rng = planner.rng
    first_day = start.date()
    n_days = max(1, int(days + 0.999))
    # Threads per day: weekdays busy, weekends and US holidays quiet; the last day partial.
    weights = []
    for d in range(n_days):
        day = first_day + timedelta(days=d)
        w = 1.0 if day.weekday() < 5 else (0.18 if day.weekday() == 5 else 0.12)
        if day in _US_2026:
            w *= 0.5
        weights.append(w * min(1.0, days - d))
    total = sum(weights)
    heap: list[tuple[int, int, GeneratedMessage]] = []
    seq = 0
    emitted = 0
    done = 0
    acc = 0.0
    for d in range(n_days):
        acc += weights[d]
        count = round(n_threads * acc / total) - done
        day = first_day + timedelta(days=d)
        starts = []
        for _ in range(count):
            kind = rng.choices(_KINDS, cum_weights=_KIND_CUM)[0]
            ts, who = planner.arrival(kind, day)
            if not planner.start <= ts < planner.cutoff:
                ts = min(max(ts, planner.start + rng.randint(0, 3600)), planner.cutoff - 60)
            starts.append((ts, kind, who))
        starts.sort(key=lambda s: s[0])
        for ts, kind, who in starts:
            done += 1
            label = f"{kind}-{done:06d}"
            planned = [planner.plan(kind, label, ts, who)]
            if (kind == "lead" and same_subject and planned[0][1] is not None
                    and planner.xrng.random() < same_subject):
                twin = planner.plan_twin(label + "s", *planned[0])  # type: ignore[arg-type]
                if twin is not None:
                    planned.append(twin)
            for msgs, expected in planned:
                lead_id = expected.lead_message_id if expected else None
                for m in msgs:
                    gm = GeneratedMessage(
                        _render(m), m.mid, m.ts,
                        m.sender.key if m.sender not in _DAEMONS else "MAILER-DAEMON",
                        m.thread, kind, expected if m.mid == lead_id else None)
                    seq += 1
                    heapq.heappush(heap, (m.ts, seq, gm))
        # Threads of later days start no earlier than local midnight east of UTC (+14h).
        watermark = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) + (
            86400 - 14 * 3600)
        while heap and (heap[0][0] < watermark or d == n_days - 1):
            yield heapq.heappop(heap)[2]
            emitted += 1
            if max_messages is not None and emitted >= max_messages:
                return


# -- writers -----------------------------------------------------------------------------------
def write_mbox(path: str | os.PathLike[str], messages: Iterable[GeneratedMessage]) -> int:
    """Stream messages into an mbox file (mboxo: our one-line bodies never start with From)."""
    n = 0
    with open(path, "wb") as f:
        for m in messages:
            f.write(f"From {m.sender} {time.asctime(time.gmtime(m.ts))}\n".encode() + m.raw + b"\n")
            n += 1
    return n


def write_maildir(path: str | os.PathLike[str], messages: Iterable[GeneratedMessage]) -> int:
    """Stream messages into a Maildir (cur/, already seen); names are deterministic."""
    root = Path(path)
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    cur = os.fspath(root / "cur")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)
    n = 0
    for m in messages:
        # os.open/os.write: a million small files, the file object's overhead shows.
        fd = os.open(f"{cur}/{m.ts}.M{n}.replytime-example:2,S", flags, 0o644)
        try:
            os.write(fd, m.raw)
        finally:
            os.close(fd)
        n += 1
    return n


def collect_leads(
    messages: Iterable[GeneratedMessage], into: list[ExpectedLead]
) -> Iterator[GeneratedMessage]:
    """Pass messages through, keeping the ground truth of every lead they carry.

    A mailbox cut short (``max_messages``) ends at its last message: a lead whose planned
    first reply was not written by then is unanswered (its rep the addressed one, as for
    any unanswered lead). A mailbox that is not cut short has every planned reply.
    """
    pending: dict[str, ExpectedLead] = {}  # reply id -> its lead, until the reply passes
    for m in messages:
        if m.lead is not None:
            into.append(m.lead)
            if m.lead.answered:
                pending[m.lead.reply_message_id] = m.lead
        elif pending:
            pending.pop(m.message_id, None)
        yield m
    for lead in pending.values():
        lead.rep = lead.addressed_rep or "(unassigned)"
        lead.answered, lead.reply_message_id = False, ""
        lead.reply_time = lead.response_s = None


def write_expected(path: str | os.PathLike[str], leads: Iterable[ExpectedLead]) -> None:
    rows = sorted(leads, key=lambda e: (e.lead_time, e.lead_message_id))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, CSV_COLUMNS, lineterminator="\n")
        w.writeheader()
        for e in rows:
            w.writerow(e.row())


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, help=f"threads to start (default {DEFAULT_THREADS})")
    ap.add_argument("--messages", type=int, help="stop after exactly this many messages")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--start", default=DEFAULT_START.date().isoformat(), help="first day (UTC)")
    ap.add_argument("--days", type=float, default=DEFAULT_DAYS, help="span up to the export")
    ap.add_argument("--format", choices=("mbox", "maildir"), default="mbox")
    ap.add_argument("--out", type=Path, help="default: examples/mailbox.mbox")
    ap.add_argument("--expected", type=Path,
                    help="ground-truth CSV (default: examples/expected_leads.csv with no --out)")
    ap.add_argument("--reps", type=int,
                    help="a generated team of this many reps instead of the example's five")
    ap.add_argument("--config-out", type=Path,
                    help="write a matching replytime.toml here (useful with --reps)")
    ap.add_argument("--prospect-base", type=int, default=0,
                    help="first prospect number (distinct bases: mailboxes share no prospect)")
    ap.add_argument("--robots", type=float, default=0.0, metavar="RATE",
                    help="share of answered email leads whose answer draws robot mail: a "
                         "bounce from MAILER-DAEMON@mx.acme.example, an auto-reply or "
                         "out-of-office, a calendar or list server notice (default 0)")
    ap.add_argument("--same-subject", type=float, default=0.0, metavar="RATE",
                    help="share of email leads followed minutes later by another prospect's "
                         "enquiry with the same subject, a new thread (default 0)")
    args = ap.parse_args(argv)
    roster = build_roster(args.reps) if args.reps else EXAMPLE_ROSTER
    if args.config_out is not None:
        args.config_out.write_text(roster.toml(), encoding="utf-8")
    out = args.out or HERE / "mailbox.mbox"
    expected = args.expected or (HERE / "expected_leads.csv" if args.out is None else None)
    threads = args.threads
    if threads is None:
        threads = (int(args.messages / MESSAGES_PER_THREAD) + 10 if args.messages
                   else DEFAULT_THREADS)
    start = datetime.fromisoformat(args.start).replace(tzinfo=UTC)
    leads: list[ExpectedLead] = []
    began = time.perf_counter()
    msgs = generate_messages(threads, args.seed, start, args.days, args.messages, roster,
                             args.prospect_base, args.robots, args.same_subject)
    if expected is not None:
        msgs = collect_leads(msgs, leads)
    writer = write_mbox if args.format == "mbox" else write_maildir
    n = writer(out, msgs)
    if expected is not None:
        write_expected(expected, leads)
    took = time.perf_counter() - began
    print(f"{n:,} messages in {threads:,} threads -> {out}"
          + (f" ({len(leads)} leads -> {expected})" if expected else "")
          + f" in {took:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
