"""The bundled example end to end: import, match, and compare with the generator's own
ground truth (examples/expected_leads.csv), written without calling replytime code."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from replytime.api import Analysis, refresh_threads
from replytime.config import load_config
from replytime.output.render import machine_frame
from replytime.sources.files import import_paths
from replytime.store import open_cache

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
AS_OF = "2026-11-06T21:00:00+00:00"


@pytest.fixture(scope="module")
def analysis(tmp_path_factory: pytest.TempPathFactory) -> Analysis:
    cfg = load_config(EXAMPLES / "replytime.toml")
    cache = open_cache(tmp_path_factory.mktemp("ex") / "cache.sqlite")
    import_paths(cache, [EXAMPLES / "mailbox.mbox"], account="example", keep=cfg.kept_headers())
    refresh_threads(cache, cfg, force=True)
    return Analysis(cache, cfg, as_of=AS_OF)


def test_leads_match_the_independent_ground_truth(analysis: Analysis) -> None:
    expected = pd.read_csv(EXAMPLES / "expected_leads.csv", keep_default_na=False)
    got = machine_frame(analysis.leads()).astype(object).fillna("")
    cols = ["lead_message_id", "lead_from", "lead_time", "rep", "reply_message_id",
            "reply_time", "kind"]
    e = expected.set_index("lead_message_id").sort_index()
    g = got.set_index("lead_message_id").sort_index()
    assert sorted(g.index) == sorted(e.index)
    for col in cols[1:]:
        mismatch = e[col].astype(str) != g[col].astype(str)
        assert not mismatch.any(), (col, e.loc[mismatch, col].head(), g.loc[mismatch, col].head())
    assert (g["answered"].astype(bool) == (e["answered"].astype(str).str.lower() == "true")).all()
    answered = e["answered"].astype(str).str.lower() == "true"
    assert (g.loc[answered, "response_s"].astype(int)
            == e.loc[answered, "response_s"].astype(int)).all()


def test_example_covers_the_interesting_cases(analysis: Analysis) -> None:
    leads = analysis.all_leads
    assert (leads["kind"] == "form").sum() >= 3
    assert (~leads["answered"]).sum() >= 5
    handoffs = leads["answered"] & leads["addressed_rep"].notna() & (
        leads["addressed_rep"] != leads["responder"])
    assert handoffs.sum() >= 3


@pytest.mark.parametrize(
    ("since", "until"),
    [("2026-09-07", "2026-09-14"), ("2026-10-12", "2026-10-19"), ("2026-10-26", "2026-11-02"),
     ("2026-09-20T13:00", "2026-10-03T02:00"), ("2026-11-02", "2026-11-09"),
     ("2026-10-26", None), ("2w", None)],  # open at the end: threads active since the start
)
def test_reading_only_the_active_threads_changes_no_number(
    analysis: Analysis, since: str, until: str | None
) -> None:
    scoped = Analysis(analysis.cache, analysis.config, as_of=AS_OF)
    sel = scoped.selection(since, until)
    scoped.limit_to(sel.period)
    assert len(scoped.messages) < len(analysis.messages)
    pd.testing.assert_frame_equal(scoped.leads(sel), analysis.leads(sel))
    pd.testing.assert_frame_equal(scoped.reps(sel), analysis.reps(sel))
    pd.testing.assert_frame_equal(scoped.volume(sel), analysis.volume(sel))
    pd.testing.assert_frame_equal(scoped.threads(sel), analysis.threads(sel))
    pd.testing.assert_frame_equal(scoped.unanswered(sel), analysis.unanswered(sel))


def test_all_time_analysis_part_by_part_changes_no_number(
    analysis: Analysis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big cache is analysed for all time in parts of about PART_MESSAGES messages (each
    reading only its active threads); parts of 100 messages (9 parts) must give every
    number of the whole analysis."""
    import replytime.analysis.leadset as leadset

    reports = ("leads", "reps", "unanswered", "sla")
    whole = Analysis(analysis.cache, analysis.config, as_of=AS_OF)
    assert whole._parts() == []
    expected = {r: getattr(whole, r)() for r in reports}
    monkeypatch.setattr(leadset, "PART_MESSAGES", 100)
    parted = Analysis(analysis.cache, analysis.config, as_of=AS_OF)
    assert len(parted._parts()) == 9
    pd.testing.assert_frame_equal(parted.all_leads, whole.all_leads)
    assert "messages" not in parted.__dict__  # never read the whole cache
    pd.testing.assert_frame_equal(parted.all_blocks, whole.all_blocks)
    for report in reports:
        pd.testing.assert_frame_equal(getattr(parted, report)(), expected[report])
