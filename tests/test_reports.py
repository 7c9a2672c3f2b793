"""The Python API on empty results: every ``Analysis`` method returns a DataFrame with the
same columns, in the same order, as on a cache full of leads, and never raises
``KeyError``: empty caches, only outbound or automated mail, one lead, only unanswered
leads, periods and filters that match nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from replytime.analysis.weekly import weekly_frame, weekly_report
from replytime.api import Analysis
from replytime.store import open_cache
from tests.mailbuilder import Mailbox, at
from tests.states import BUILDERS, LEADLESS

AS_OF = at(30)
SCHEDULE = {"default": {"timezone": "UTC", **{d: ["09:00-17:00"] for d in (
    "monday", "tuesday", "wednesday", "thursday", "friday")}, "dates_off": ["2026-11-04"]}}

# Each call takes an Analysis and returns what the API user gets.
CALLS: dict[str, Callable[[Analysis], pd.DataFrame]] = {
    "leads": lambda a: a.leads(),
    "leads_week": lambda a: a.leads(since="2026-11-02", until="2026-11-09"),
    "reps": lambda a: a.reps(),
    "reps_total": lambda a: a.reps(include_total=True),
    "reps_business": lambda a: a.reps(basis="business"),
    "unanswered": lambda a: a.unanswered(),
    "unanswered_stale": lambda a: a.unanswered(older_than="2d"),
    "blocks": lambda a: a.blocks(),
    "compare": lambda a: a.compare("2026-11-02..2026-11-05", "2026-11-05..2026-11-12"),
    "sla": lambda a: a.sla(),
    "volume": lambda a: a.volume(),
    "volume_rep": lambda a: a.volume(rep="Carol"),
    "threads": lambda a: a.threads(),
    "thread_sizes": lambda a: a.thread_sizes(),
    "all_leads": lambda a: a.all_leads,
    "all_blocks": lambda a: a.all_blocks,
    "weekly": lambda a: weekly_frame(weekly_report(a, "2026-11-02", "2026-11-09")),
}
# Selections that hold no lead on any of the states.
NOTHING = {
    "period_without_leads": {"since": "2020-01-01", "until": "2020-02-01"},
    "rep_without_leads": {"rep": "priya@acme.example"},
}


def _analysis(tmp: Path, state: str) -> Analysis:
    mb = Mailbox(tmp)
    mb.config_data = {**mb.config_data, "schedules": SCHEDULE}
    if state == "empty":
        cache = open_cache(tmp / "cache.sqlite")
        return Analysis(cache, mb.config, as_of=AS_OF)
    BUILDERS[state](mb)
    return mb.analysis(as_of=AS_OF)


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    """What each call returns on a mailbox with answered, unanswered and handed-off leads."""
    a = _analysis(tmp_path_factory.mktemp("full"), "mixed")
    out = {name: call(a) for name, call in CALLS.items()}
    assert len(out["leads"]) == 4 and out["leads"]["answered"].sum() == 3
    return out


@pytest.mark.parametrize("state", ["empty", *BUILDERS])
def test_every_method_keeps_its_columns(state: str, tmp_path: Path,
                                        full: dict[str, pd.DataFrame]) -> None:
    a = _analysis(tmp_path, state)
    for name, call in CALLS.items():
        got = call(a)
        assert isinstance(got, pd.DataFrame), name
        assert list(got.columns) == list(full[name].columns), (state, name)
    leads = a.leads()
    if state in LEADLESS:
        assert leads.empty and a.lead_counts() == (0, 0, 0)
        assert a.reps()["leads"].tolist() == [0, 0, 0]
        assert a.sla()["leads"].sum() == 0 and a.sla()["share"].isna().all()


@pytest.mark.parametrize("state", ["empty", "one_lead", "mixed"])
@pytest.mark.parametrize("nothing", sorted(NOTHING))
def test_selections_without_leads(state: str, nothing: str, tmp_path: Path,
                                  full: dict[str, pd.DataFrame]) -> None:
    a = _analysis(tmp_path, state)
    kw = NOTHING[nothing]
    for name, got in (("leads", a.leads(**kw)), ("unanswered", a.unanswered(**kw)),
                      ("blocks", a.blocks(**kw)), ("threads", a.threads(**kw)),
                      ("sla", a.sla(**kw)), ("volume", a.volume(**kw))):
        assert list(got.columns) == list(full[name].columns), (name, kw)
    assert a.leads(**kw).empty and a.unanswered(**kw).empty and a.blocks(**kw).empty
    reps = a.reps(include_total=True, **kw)
    assert list(reps.columns) == list(full["reps_total"].columns)
    assert reps["leads"].sum() == 0 and reps["median_s"].isna().all()
    assert a.threads(**kw)["threads"].sum() == 0


def test_one_lead_exact(tmp_path: Path) -> None:
    """The single lead: answered in 45 minutes, on Monday inside working hours."""
    a = _analysis(tmp_path, "one_lead")
    reps = a.reps(include_total=True).set_index("rep")
    assert reps.loc["Alice", ["leads", "answered", "median_s", "p90_s"]].tolist() == [
        1, 1, 2700.0, 2700.0]
    assert reps.loc["TOTAL", "leads"] == 1
    assert a.sla().set_index("bucket").loc["15m-1h", "leads"] == 1


def test_only_unanswered_leads(tmp_path: Path) -> None:
    """Three leads, none answered: ages from the lead to as-of; no response time anywhere."""
    a = _analysis(tmp_path, "unanswered_only")
    u = a.unanswered()
    assert u["rep"].tolist() == ["Alice", "Bob", "(unassigned)"]
    assert u["age_s"].tolist() == [(AS_OF - at(i, 10 + i)).total_seconds() for i in range(3)]
    reps = a.reps(include_total=True).set_index("rep")
    assert reps.loc["TOTAL", ["leads", "answered", "unanswered"]].tolist() == [3, 0, 3]
    assert reps["median_s"].isna().all() and reps.loc["TOTAL", "reply_rate"] == 0
