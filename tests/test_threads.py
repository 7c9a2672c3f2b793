"""Thread reconstruction on the real notmuch corpora and on hand-made edge cases."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replytime.analysis.matcher import Roster
from replytime.analysis.threads import (
    _PREFIX_RE,
    LINK_COLUMNS,
    SUBJECT_WINDOW_MS,
    assign_threads,
    group_threads,
    normalise_subject,
)
from replytime.config import Config
from replytime.sources.headers import parse_header_block
from replytime.store import open_cache
from tests.paths import CORPORA


def load(tmp_path: Path, *folders: str) -> pd.DataFrame:
    """Parse every file of the folders into a fresh cache; return its thread inputs."""
    cache = open_cache(tmp_path / "c.sqlite")
    items = []
    for folder in folders:
        for f in sorted((CORPORA / folder).rglob("*")):
            if f.is_file():
                items.append((str(f), parse_header_block(f.read_bytes())))
    cache.write_batch("t", items)
    return cache.thread_inputs()


def groups(df: pd.DataFrame) -> list[set[str]]:
    threads = assign_threads(df)
    keyed = pd.Series(threads.to_numpy(), index=df["msg_key"].to_numpy())
    out = keyed.groupby(keyed).apply(lambda s: set(s.index)).tolist()
    return sorted(out, key=lambda s: sorted(s)[0])


def test_ghost_root_joins_messages_through_a_missing_parent(tmp_path: Path) -> None:
    got = groups(load(tmp_path, "threading/ghost-root"))
    assert [len(g) for g in got] == [6, 3]
    assert {
        "000-real-root@example.org", "001-child@example.org", "001-fake-message-root@example.org",
        "001-grand-child@example.org", "001-grand-child2@example.org",
        "001-great-grand-child@example.org",
    } == got[0]
    # The two RT messages never name the first one in References, but share a ghost ticket.
    assert "87bmc6lp3h.fsf@len.workgroup" in got[1]


def test_conflicting_parents_stay_one_thread(tmp_path: Path) -> None:
    got = groups(load(tmp_path, "threading/parent-priority"))
    assert got == [{"B00-root@example.org", "B01-child@example.org",
                    "B01-grand-child@example.org"}]


def test_reference_loops_do_not_hang_or_split(tmp_path: Path) -> None:
    got = groups(load(tmp_path, "broken/loop"))
    assert got == [{"mid-loop-12@example.org", "mid-loop-21@example.org"}]


def test_duplicates_are_one_message(tmp_path: Path) -> None:
    df = load(tmp_path, "duplicate")
    # 9 files, 3 distinct Message-IDs (msg-1-*, msg-2-*, msg-3-*): `grep -hi ^message-id`.
    assert len(df) == 3


def reference_components(df: pd.DataFrame) -> pd.Series:
    """Independent reference-linked components (simple union-find), by msg_key."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for row in df.itertuples():
        ids = [row.in_reply_to] if isinstance(row.in_reply_to, str) else []
        ids += (row.refs or "").split()
        for other in ids:
            parent[find(other)] = find(row.msg_key)
    return pd.Series({k: find(k) for k in df["msg_key"]})


@pytest.mark.parametrize(("folder", "components", "threads"), [("lkml", 19, 19),
                                                                 ("default", 24, 24)])
def test_corpus_threads_refine_an_independent_union_find(
    tmp_path: Path, folder: str, components: int, threads: int
) -> None:
    df = load(tmp_path, folder)
    ours = pd.Series(assign_threads(df).to_numpy(), index=df["msg_key"].to_numpy())
    ref = reference_components(df)
    assert ref.nunique() == components
    # Reference links are never split; the subject rule only merges whole components.
    assert (ours.groupby(ref.reindex(ours.index).to_numpy()).nunique() == 1).all()
    assert ours.nunique() == threads


def test_lkml_has_deep_threads(tmp_path: Path) -> None:
    df = load(tmp_path, "lkml")
    sizes = assign_threads(df).value_counts()
    # 210 files, 176 distinct Message-IDs: `grep -hi ^message-id: -r lkml | sort -u | wc -l`.
    assert len(df) == 176
    assert sizes.max() >= 20


def test_provider_thread_ids_win_over_references() -> None:
    df = pd.DataFrame(
        {
            "id": [1, 2, 3, 4],
            "msg_key": ["a", "b", "c", "d"],
            "message_id": ["a", "b", "c", "d"],
            "in_reply_to": [None, "a", "a", "c"],
            "refs": ["", "a", "a", "c"],
            "provider_thread_id": ["T1", "T1", "T2", None],
            "subject": ["x", "Re: x", "new subject", "Re: new subject"],
            "from_addr": ["p@c.example"] * 4,
            "to_addrs": ["s@acme.example"] * 4,
            "cc_addrs": [""] * 4,
            "time_ms": [1, 2, 3, 4],
        }
    )
    t = assign_threads(df)
    # Gmail split c off into its own thread; d, without a provider id, joins c's thread.
    assert t[1] == t[2] == "T1" and t[3] == t[4] == "T2"


def test_normalise_subject() -> None:
    s = pd.Series(["Re: RE: Fwd:  Pricing  ", "AW: [sales] Pricing", "pricing", None])
    assert normalise_subject(s).tolist() == ["pricing", "pricing", "pricing", ""]


def test_subject_rule_needs_shared_external_participant() -> None:
    cfg = Config(internal_domains=("acme.example",))
    df = pd.DataFrame(
        {
            "id": [1, 2, 3],
            "msg_key": ["a", "b", "c"],
            "message_id": ["a", "b", "c"],
            "in_reply_to": [None, None, None],
            "refs": ["", "", ""],
            "provider_thread_id": [None, None, None],
            "subject": ["Pricing", "Re: Pricing", "Re: Pricing"],
            "from_addr": ["p@c.example", "rep@acme.example", "rep@acme.example"],
            "to_addrs": ["rep@acme.example", "p@c.example", "q@other.example"],
            "cc_addrs": ["", "", ""],
            "time_ms": [0, 1000, 2000],
        }
    )
    t = assign_threads(df, Roster(cfg).is_internal)
    assert t[1] == t[2] != t[3]


# Whitespace of every kind \s knows (incl. \x1c-\x1f, NBSP, ideographic space), prefix letters
# (incl. ones re.I folds: long s, Kelvin sign, dotted I) and list-tag brackets.
SUBJECT_CHARS = list(" \t\n\x0b\x0c\r\x1c\x1f\x85\xa0\u2000\u3000reRfwFWdaAsSvVtn:：[]1xſKİ")


@settings(max_examples=500, derandomize=True, deadline=None, database=None)
@given(st.lists(st.text(alphabet=st.sampled_from(SUBJECT_CHARS), max_size=16), max_size=5))
def test_normalise_subject_is_its_regex_definition(subjects: list[str]) -> None:
    want = [re.sub(r"\s+", " ", _PREFIX_RE.sub("", s)).strip().lower() for s in subjects]
    assert normalise_subject(pd.Series(subjects, dtype=object)).tolist() == want


def test_subject_rule_window_null_sender_and_thread_names() -> None:
    day = 86400 * 1000
    df = pd.DataFrame(
        {
            "id": [10, 11, 12, 13, 14, 15],
            "msg_key": ["m", "b", "a", "c", "d", "e"],
            "message_id": ["m", "b", "a", "c", "d", "e"],
            "in_reply_to": [None, "m", None, None, None, None],
            "refs": ["", "m", None, "", "", ""],
            "provider_thread_id": [None] * 6,
            "subject": ["Pricing", "Re: Pricing", "Re: Pricing", "pricing", "PRICING", "Pricing"],
            "from_addr": ["p@c.example", "rep@acme.example", "p@c.example", "p@c.example",
                          "p@c.example", None],
            "to_addrs": ["rep@acme.example", "p@c.example", None, "rep@acme.example",
                         "rep@acme.example", None],
            "cc_addrs": [""] * 6,
            # m's thread's last dated message is b (a has no time): c starts exactly 14 days
            # after it, and d 14 days and 1 ms after c.
            "time_ms": [0.0, 1000.0, np.nan, 1000.0 + SUBJECT_WINDOW_MS,
                        1001.0 + 2 * SUBJECT_WINDOW_MS, 3 * day],
        }
    )
    df.loc[2, ["in_reply_to", "refs"]] = ["b", "m b"]
    t = assign_threads(df, Roster(Config(internal_domains=("acme.example",))).is_internal)
    # m, b, a and c are one thread named after its earliest dated message; d is too late for
    # it; e has no participants (a null sender must not break the rule).
    assert t.to_dict() == {10: "m", 11: "m", 12: "m", 13: "m", 14: "d", 15: "e"}


def test_thread_takes_least_provider_id_and_earliest_key() -> None:
    df = pd.DataFrame(
        {
            "id": [1, 2, 3, 4, 5, 6],
            "msg_key": ["p", "q", "r", "z", "y", "x"],
            "message_id": ["p", "q", "r", "z", "y", "x"],
            "in_reply_to": [None, None, "p", None, "z", "z"],
            "refs": ["", "", "p q", "", "z", "z"],
            "provider_thread_id": ["T9", "T10", None, None, None, None],
            "subject": ["s", "t", "u", "v", "w", "x"],
            "from_addr": ["a@b.example"] * 6,
            "to_addrs": [""] * 6,
            "cc_addrs": [""] * 6,
            "time_ms": [1.0, 2.0, 3.0, np.nan, 5.0, 5.0],
        }
    )
    t = assign_threads(df)
    # r joins both provider threads: the least id (as strings) names them. z has no time, so
    # x and y (same time) are the earliest, and x has the lesser key.
    assert t.tolist() == ["T10", "T10", "T10", "x", "x", "x"]


def subject_frame(**columns: list) -> pd.DataFrame:
    """Three messages with the subject "Pricing" and no threading headers."""
    base = {
        "id": [1, 2, 3], "msg_key": ["a", "b", "c"], "in_reply_to": [None] * 3,
        "refs": [""] * 3, "provider_thread_id": [None] * 3, "subject": ["Pricing"] * 3,
        "from_addr": ["p@c.example", "q@d.example", "p@c.example"],
        "to_addrs": ["rep@acme.example"] * 3, "cc_addrs": [""] * 3, "reply_to": [""] * 3,
        "automated": [0, 0, 0], "time_ms": [0.0, 1000.0, 2000.0],
    }
    return pd.DataFrame({**base, **columns})


def test_subject_rule_links_people_not_robots() -> None:
    internal = Roster(Config(internal_domains=("acme.example",))).is_internal
    # b is an auto-reply Cc'ing p: it never links p's threads a and c to itself...
    robot = subject_frame(cc_addrs=["", "p@c.example", ""], automated=[0, 1, 0])
    got = group_threads(robot, internal)
    assert got.thread_id.to_dict() == {1: "a", 2: "b", 3: "a"}
    assert got.rule.to_dict() == {"a": "subject", "b": "single"}
    assert got.links.to_dict("records") == [
        {"thread_id": "a", "joined_key": "c", "to_key": "a", "address": "p@c.example"}]
    # ... whereas a person Cc'ing p does (and the least address explains the join).
    person = subject_frame(cc_addrs=["", "p@c.example", ""])
    assert set(assign_threads(person, internal)) == {"a"}
    assert group_threads(person, internal).links["address"].tolist() == [
        "p@c.example", "p@c.example"]
    # Reply-To names a participant too; a robot's activity keeps no thread open.
    reply_to = subject_frame(from_addr=["p@c.example", "y@e.example", "x@e.example"],
                             reply_to=["", "", "p@c.example"])
    assert assign_threads(reply_to, internal).tolist() == ["a", "b", "a"]
    late = subject_frame(from_addr=["p@c.example", "p@c.example", "p@c.example"],
                         automated=[0, 1, 0],
                         time_ms=[0.0, SUBJECT_WINDOW_MS, SUBJECT_WINDOW_MS + 1001.0])
    assert assign_threads(late, internal).tolist() == ["a", "b", "c"]


def test_rules_without_subject_joins() -> None:
    df = pd.DataFrame({
        "id": [1, 2, 3, 4], "msg_key": ["a", "b", "c", "d"], "in_reply_to": [None, "a", None, None],
        "refs": ["", "a", "", ""], "provider_thread_id": [None, None, "T1", None],
        "subject": ["x", "Re: x", "y", "z"], "from_addr": ["p@c.example"] * 4,
        "to_addrs": [""] * 4, "cc_addrs": [""] * 4, "time_ms": [1.0, 2.0, 3.0, 4.0],
    })
    got = group_threads(df)
    assert got.rule.to_dict() == {"a": "headers", "T1": "provider", "d": "single"}
    assert got.links.empty and list(got.links.columns) == LINK_COLUMNS
    assert group_threads(df.iloc[:0]).rule.empty
