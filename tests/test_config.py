"""Config parsing: the documented example loads; every mistake is one line naming the key."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from replytime.config import TEMPLATE, holidays_version, load_config, parse_config
from replytime.errors import ConfigError
from tests.paths import DATA


def spec_config_text() -> str:
    """The documented example config, kept as a file of the tests."""
    return (DATA / "spec_config.toml").read_text()


def test_the_documented_example_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "replytime.toml"
    path.write_text(spec_config_text().replace('schedule = "east"', 'schedule = "default"'))
    cfg = load_config(path)
    assert cfg.internal_domains == ("acme.example",)
    assert cfg.reps[0].emails == ("alice@acme.example", "a.ng@acme.example")
    assert cfg.schedules["default"].days == {0: ((540, 1020),)}
    assert cfg.schedules["default"].dates_off == (date(2026, 12, 24),)
    assert cfg.leads.forms[0].lead_address == "reply-to"
    assert cfg.leads.forms[0].reply_window_s == 14 * 86400
    assert cfg.sla_target_s == 3600 and cfg.sla_buckets_s == (300, 900, 3600, 14400, 86400)
    assert [a.type for a in cfg.accounts] == ["gmail", "imap"]
    assert cfg.kept_headers() == ()
    assert cfg.is_internal("Someone@ACME.example") and not cfg.is_internal("x@client.example")


def test_template_loads(tmp_path: Path) -> None:
    p = tmp_path / "t.toml"
    p.write_text(TEMPLATE)
    assert load_config(p).shared_inboxes == ("sales@acme.example",)


def test_schedule_precedence() -> None:
    cfg = parse_config({
        "reps": [{"name": "A", "emails": ["a@x.example"], "schedule": "london"},
                 {"name": "B", "emails": ["b@x.example"], "team": "T"},
                 {"name": "C", "emails": ["c@x.example"]}],
        "teams": {"T": {"schedule": "tokyo"}},
        "schedules": {
            "default": {"timezone": "America/New_York", "monday": ["09:00-17:00"]},
            "london": {"timezone": "Europe/London", "monday": ["09:00-12:00", "13:00-17:30"]},
            "tokyo": {"timezone": "Asia/Tokyo"},
        },
    })
    assert cfg.schedule_for("A").name == "london"
    assert cfg.schedule_for("B").name == "tokyo"
    assert cfg.schedule_for("C").name == "default"
    assert cfg.schedule_for("someone@x.example").name == "default"
    assert cfg.schedules["london"].days[0] == ((540, 720), (780, 1050))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"teem": {}}, "config: teem: unknown key"),
        ({"team": {"internal_domain": []}}, "config: team.internal_domain: unknown key"),
        ({"team": {"timezone": "Mars/Base"}}, "config: team.timezone: unknown time zone"),
        ({"team": {"shared_inboxes": ["sales"]}},
         "config: team.shared_inboxes[0]: 'sales' is not an email address"),
        ({"reps": [{"name": "A"}]}, "config: reps[0].emails: needs at least one address"),
        ({"reps": [{"emails": ["a@x.example"]}]}, "config: reps[0].name: must be"),
        ({"reps": [{"name": "A", "emails": ["a@x.example"]},
                   {"name": "B", "emails": ["A@x.example"]}]},
         "config: reps[1].emails: a@x.example already belongs to A"),
        ({"reps": [{"name": "A", "emails": ["a@x.example"], "schedule": "east"}]},
         "config: reps[0].schedule: no [schedules.east] defined"),
        ({"schedules": {"d": {"monday": ["09:00-17:00"]}}},
         "config: schedules.d.timezone: is required"),
        ({"schedules": {"d": {"timezone": "UTC", "monday": ["9-5"]}}},
         "config: schedules.d.monday[0]: '9-5' is not an interval"),
        ({"schedules": {"d": {"timezone": "UTC", "monday": ["17:00-09:00"]}}},
         "ends before it starts"),
        ({"schedules": {"d": {"timezone": "UTC", "monday": ["09:00-12:00", "11:00-13:00"]}}},
         "config: schedules.d.monday: intervals overlap"),
        ({"schedules": {"d": {"timezone": "UTC", "monday": ["25:00-26:00"]}}},
         "impossible time"),
        ({"schedules": {"d": {"timezone": "UTC", "dates_off": ["christmas"]}}},
         "config: schedules.d.dates_off[0]: 'christmas' is not a date"),
        ({"sla": {"target": "soon"}}, "config: sla.target: 'soon' is not a duration"),
        ({"sla": {"buckets": ["1h", "5m"]}}, "config: sla.buckets: must be increasing"),
        ({"leads": {"forms": [{"subject": "x"}]}}, "config: leads.forms[0].from: is required"),
        ({"leads": {"forms": [{"from": "a@x", "subject": "("}]}},
         "config: leads.forms[0].subject: bad regular expression"),
        ({"leads": {"forms": [{"from": "a@x", "lead_address": "body"}]}},
         "config: leads.forms[0].lead_address: must be"),
        ({"accounts": [{"name": "a", "type": "pop3"}]},
         "config: accounts[0].type: must be one of gmail, imap, microsoft, files"),
    ],
)
def test_mistakes_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("code", ["XX", "US-XX", "-CA", ""])
def test_unknown_holiday_code_names_the_key(code: str) -> None:
    # Checked when leads are built or read without a kept table that proves the codes
    # (Config.check_holidays), not while loading; every schedule's, the unused one's too.
    cfg = parse_config({"schedules": {
        "default": {"timezone": "UTC", "holidays": ["US", "us-ca", "GB", "DE-BY"]},
        "d": {"timezone": "UTC", "holidays": ["US", code]},
    }})
    with pytest.raises(ConfigError) as err:
        cfg.check_holidays()
    assert str(err.value) == (f"config: schedules.d.holidays: unknown holiday calendar {code!r} "
                              "(use e.g. US, US-CA, DE-BY)")
    parse_config({"schedules": {"d": {"timezone": "UTC", "holidays": ["US", "us-ca", "GB-SCT"]}}}
                 ).check_holidays()


def test_holidays_version_is_the_installed_release() -> None:
    from importlib.metadata import version

    assert holidays_version() == version("holidays")


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[team\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_no_config_means_empty_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    cfg = load_config(None)
    assert cfg.reps == () and not cfg.has_schedule and cfg.path is None


def test_form_rule_header_is_kept() -> None:
    cfg = parse_config({"leads": {"forms": [{"from": "*@forms.example",
                                             "lead_address": "header:X-Lead-Email"}]}})
    assert cfg.kept_headers() == ("x-lead-email",)
