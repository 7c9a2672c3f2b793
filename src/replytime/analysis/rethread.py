"""Keep thread ids current after writes, and the kept lead table with them
(``replytime.analysis.kept``). Checking costs a few small queries and loads no pandas, so a
sync or import that brought nothing new starts and ends quickly.

New messages under the same roster regroup only what they can change (``_regroup_new``),
exactly as a full regroup would (docs/definitions.md, "Threads"). A thread is a union of
reference components; only these links join or change them:

- references: a new message's In-Reply-To / References naming a cached message, or naming
  (or being) a Message-ID that a cached thread references but does not hold (a
  placeholder), or a provider thread id a cached thread holds;
- the subject rule, which pairs components within one (normalised subject, external
  participant) group, each with the one before it in start order: a new or changed
  component changes the pairs of every group it is (or was) in, and only those. Every
  component of a subject-rule thread has the subject of the thread's first message.

thread_keys holds a digest per thread of each such link (``link_keys``): its placeholders,
provider ids, and (first message's normalised subject, external participant) pairs. The
new messages plus every thread reached, repeated until nothing more is reached, is a set
whose groups are complete: ``group_threads`` on it gives what it gives on the whole cache,
and every other thread keeps its groups, so its id. Thread names depend only on their own
messages (the smallest provider id, else the first message's key), and the order of
components with equal starts is by their smallest message id, which reading in id order
keeps. A digest collision only reaches more threads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from replytime.analysis.threads import Threading
    from replytime.config import Config
    from replytime.store import Cache
    from replytime.store.base import Grouping


def refresh_threads(cache: Cache, config: Config, *, force: bool = False) -> int:
    """Re-assign thread ids when there is something to do: a message without one (new, or
    changed since: the upsert clears it), a message removed, or another internal roster
    (the subject rule depends on who is external); always with ``force``. An import or sync
    that wrote nothing new therefore costs no threading at all. Only new messages under
    the same roster regroup just the threads they can reach (``_regroup_new``); anything
    else, or ``force``, regroups every message. The threads table records the rule that
    grouped each thread, thread_links the subject rule's joins.

    Then bring the kept leads up to date: the threads whose messages changed are matched
    again, or every lead when the config they were kept for changed (docs/definitions.md,
    "Lead"). Returns how many messages changed thread."""
    fingerprint = config.fingerprint()
    # Which kept-lead state this config needs (None: not kept); the hash is cheap.
    want = _kept_state(config)

    def threads_current() -> bool:
        return not force and cache.get_meta("threads_fingerprint") == fingerprint and not (
            cache.has_unthreaded()
        )

    def leads_current() -> bool:
        return want is None or cache.kept_leads_state()[0] == want

    if threads_current() and leads_current():
        return 0
    # The kept rows are about to be written for this config's state, which then proves its
    # holiday codes good (config.Config.check_holidays): check them all first.
    config.check_holidays()
    # pandas and Arrow compute: imported only when there is threading to do
    from replytime.analysis import kept
    from replytime.analysis.matcher import Roster
    from replytime.analysis.threads import group_threads

    # One process at a time brings threads and kept leads up to date together; the others
    # wait, then find them current.
    changes = kept.Changes()
    grouped: list[tuple[pd.DataFrame, Threading]] = []  # a full regroup's, keys not computed
    matched: kept.Kept | None = None  # the kept-lead match its child sent with the keys
    try:
        with cache.leads_lock():
            redo_threads = not threads_current()
            state, covered = cache.kept_leads_state()
            # Only new or re-threaded messages under the same roster: the changed threads are
            # all that changes (a removal clears the thread fingerprint: a full rebuild).
            incremental = (want is not None and state == want
                           and cache.get_meta("threads_fingerprint") == fingerprint)
            changed = 0
            held = False  # changes.messages: every cached message (a full regroup's inputs)
            if redo_threads:
                cache.invalidate_kept_leads()  # until the rows match the new thread ids
                roster = Roster(config)
                regrouped = None
                if not force and cache.get_meta("threads_fingerprint") == fingerprint:
                    # The regroup holds every message of the threads it changes: with what
                    # the kept leads read besides, ``kept.update`` need not read them again.
                    whole = want is not None
                    regrouped = _regroup_new(
                        cache, lambda found: kept.capturing(lambda df: found, covered, changes,
                                                            whole=whole),
                        roster.is_internal, kept.INPUT_EXTRA if whole else ())
                if regrouped is None:
                    # A full regroup reads every message: with what the kept leads read besides,
                    # ``kept.rebuild`` matches them from memory (up to HELD_MESSAGES of them).
                    held = want is not None and cache.last_message_id() <= HELD_MESSAGES
                    # Matched in a forked child beside the thread writes (kept.start_rebuild),
                    # the thread_keys are computed there too: written after the thread ids.
                    deferring = held and kept.forks(cache.last_message_id())

                    def assign(df: pd.DataFrame) -> Grouping:
                        if not deferring:
                            return keyed(df, roster.is_internal)
                        found = group_threads(df, roster.is_internal)
                        grouped.append((df, found))
                        return _KeysLater(found, thread_keys)

                    def thread_keys() -> pd.DataFrame:
                        # The child's first value; computed here when there is none.
                        child = changes.pending
                        keys = child.take() if child is not None else None
                        return keys if keys is not None else link_keys(*grouped[-1],
                                                                       roster.is_internal)

                    def start(found: kept.Changes) -> None:
                        # The kept rows will be rebuilt: matched beside the thread writes.
                        if deferring and found.messages is not None and not (
                                incremental and not found.modified):
                            found.pending = kept.start_rebuild(
                                found.messages, config,
                                lambda: link_keys(*grouped[-1], roster.is_internal))

                    changed = cache.rebuild_threads(kept.capturing(
                        assign, covered, changes, everything=held, then=start), fingerprint,
                        kept.INPUT_EXTRA if held else ())
                    if changes.pending is not None:  # the child's second value
                        matched = changes.pending.take()
                else:
                    changed = regrouped
            if want is not None:
                if incremental and not changes.modified:
                    if redo_threads:
                        if held:  # the update takes the messages of the changed threads
                            changes.messages = kept.of_threads(changes.messages, changes.threads)
                        kept.update(cache, config, want, changes)
                else:
                    kept.rebuild(cache, config, want, changes.messages if held else None,
                                 matched)
    finally:  # a child still matching (an error or a stop on the way) ends with us
        if changes.pending is not None:
            changes.pending.cancel()
    # Nothing left running beside this thread when the command ends (the CLI then exits
    # without interpreter teardown).
    cache.settle()
    return changed


#: a full regroup keeps every message it read for the kept-lead rebuild after it up to this
#: many (ids), instead of that rebuild reading them again part by part: at a million
#: messages the second read was a quarter of a first import's time; memory grows by the
#: messages' pointers (their values are the regroup's own)
HELD_MESSAGES = 2_000_000


def kept_lead_counts(cache: Cache, config: Config, as_of_ms: int) -> tuple[int, int, int] | None:
    """(leads, unanswered, clamped) as of ``as_of_ms`` counted in the kept lead table, after
    bringing it up to date; None when leads are not kept for ``config`` (label filters).
    Without pandas: `status` on a current cache starts and ends quickly."""
    refresh_threads(cache, config)
    want = _kept_state(config)
    if want is None or cache.kept_leads_state()[0] != want:
        return None
    return cache.kept_lead_counts(as_of_ms)


def _kept_state(config: Config) -> str | None:
    # As kept.state_for, without importing pandas before it is needed.
    if config.leads.labels:
        config.check_holidays()  # no kept state proves the codes good
        return None
    return config.leads_fingerprint()


@dataclass(frozen=True)
class Keyed:
    """A ``threads.Threading`` with its thread_keys rows (``link_keys``)."""

    thread_id: pd.Series
    rule: pd.Series
    links: pd.DataFrame
    keys: pd.DataFrame


class _KeysLater:
    """A ``threads.Threading`` whose thread_keys rows are computed (``keys()``) only when
    ``CacheBase.rebuild_threads`` writes them, after the thread ids: meanwhile a forked
    child computes them (``kept.start_rebuild``)."""

    def __init__(self, found: Threading, keys: Callable[[], pd.DataFrame]) -> None:
        self.thread_id, self.rule, self.links = found.thread_id, found.rule, found.links
        self._keys = keys

    @property
    def keys(self) -> pd.DataFrame:
        return self._keys()


def keyed(df: pd.DataFrame, is_internal: Callable[[pd.Series], pd.Series] | None) -> Keyed:
    """``group_threads`` of ``df`` with the thread_keys rows of its threads."""
    from replytime.analysis.threads import group_threads

    found = group_threads(df, is_internal)
    return Keyed(found.thread_id, found.rule, found.links, link_keys(df, found, is_internal))


def digest(link: str) -> str:
    """A thread_keys key: 64 bits of BLAKE2b, hex (a collision only reaches more threads)."""
    return hashlib.blake2b(link.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def _references(df: pd.DataFrame) -> tuple[np.ndarray, pa.Array]:
    """(row, Message-ID) for every In-Reply-To and References entry of the rows without a
    provider thread id: the references ``threads.group_threads`` follows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from replytime.lists import arrow_strings, concat_chunks

    plain = df["provider_thread_id"].isna().to_numpy()
    irt = arrow_strings(df["in_reply_to"])
    irt_ok = plain & pc.fill_null(pc.not_equal(irt, ""), False).to_numpy(zero_copy_only=False)
    refs = pc.split_pattern(pc.fill_null(arrow_strings(df["refs"]), ""), " ")
    flat = concat_chunks([pc.list_flatten(refs)], pa.large_string()).combine_chunks()
    parent = concat_chunks([pc.list_parent_indices(refs)], pa.int64()).to_numpy()
    ref_ok = plain[parent] & pc.not_equal(flat, "").to_numpy(zero_copy_only=False)
    rows = np.concatenate([np.flatnonzero(irt_ok), parent[ref_ok]])
    tokens = concat_chunks([pc.filter(irt, pa.array(irt_ok)), flat.filter(pa.array(ref_ok))],
                           pa.large_string()).combine_chunks()
    return rows, tokens


def link_keys(df: pd.DataFrame, found: Threading,
              is_internal: Callable[[pd.Series], pd.Series] | None) -> pd.DataFrame:
    """The thread_keys rows (thread_id, key) of the threads of ``df`` as grouped in
    ``found`` (see the module docstring): digests of "r:" + each Message-ID its messages
    reference that none of them has, "p:" + each provider thread id, and, when its first
    message is dated and has a subject, "s:" + that normalised subject + "\x1f" + each
    external participant of its people's messages (as the subject rule counts them).

    Vectorised: each link is a (thread, text) pair of integer codes; a text is built and
    digested once however many threads share it, and pairs are deduplicated as integers."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    from replytime.analysis.threads import _address_pairs, _normalise
    from replytime.lists import arrow_strings

    if df.empty:
        return pd.DataFrame({"thread_id": np.zeros(0, object), "key": np.zeros(0, object)})
    codes, heads = found.member, found.heads
    # Thread names as codes (rows with equal names are one thread's rows, as before).
    name_of, names = pd.factorize(found.rule.index.to_numpy(dtype=object))
    threads: list[np.ndarray] = []  # per link: its thread's name code
    texts: list[np.ndarray] = []  # per link: its text's position in ``distinct``
    distinct: list[str] = []

    def add(thread: np.ndarray, text: np.ndarray, values: list[str]) -> None:
        threads.append(name_of[thread])
        texts.append(text.astype(np.int64) + len(distinct))
        distinct.extend(values)

    rows, tokens = found.placeholders
    if len(rows):
        encoded = pc.dictionary_encode(tokens)
        add(codes[rows], encoded.indices.to_numpy(),
            ["r:" + t for t in encoded.dictionary.to_pylist()])
    prov = np.flatnonzero(df["provider_thread_id"].notna().to_numpy())
    if len(prov):
        prov_codes, prov_ids = pd.factorize(df["provider_thread_id"].iloc[prov].astype(str))
        add(codes[prov], prov_codes, ["p:" + p for p in prov_ids])

    time_ms = df["time_ms"].to_numpy(dtype="float64")
    # Normalised once per distinct subject (threads.normalise_subject's rule), numbered.
    subject = pc.fill_null(arrow_strings(df["subject"]), "")
    subject = subject.combine_chunks() if isinstance(subject, pa.ChunkedArray) else subject
    encoded_subject = pc.dictionary_encode(subject.take(pa.array(heads)))
    normal_of, normals = pd.factorize(np.array(
        [_normalise(x) for x in encoded_subject.dictionary.to_pylist()] or [""], dtype=object))
    subjects = normal_of[encoded_subject.indices.to_numpy()]  # per thread
    ok = ~np.isnan(time_ms[heads]) & (normals[subjects] != "")
    people = np.flatnonzero(ok[codes])
    if "automated" in df:
        people = people[~df["automated"].to_numpy(dtype=bool)[people]]
    at, addrs = _address_pairs(df, people)
    if len(at):
        encoded = pc.dictionary_encode(addrs)
        values = encoded.dictionary.to_numpy(zero_copy_only=False)
        external = np.ones(len(values), dtype=bool)
        if is_internal is not None:
            external = ~is_internal(pd.Series(values, dtype=object)).to_numpy(dtype=bool)
        addr = encoded.indices.to_numpy().astype(np.int64)
        thread = codes[people[at]]
        keep = external[addr]
        pairs = np.unique(thread[keep] * len(values) + addr[keep])
        thread, addr = np.divmod(pairs, len(values))
        # The text depends on (subject, address) only: one per distinct pair of those.
        combos, text = np.unique(subjects[thread] * len(values) + addr, return_inverse=True)
        subject_of, addr_of = np.divmod(combos, len(values))
        add(thread, text.reshape(-1), [f"s:{normals[s]}\x1f{values[a]}" for s, a in
                                       zip(subject_of.tolist(), addr_of.tolist(), strict=True)])
    if not threads:
        return link_keys(df.iloc[:0], found, is_internal)  # the empty frame
    # Equal digests of different texts (a collision) are one key, as their rows were.
    key_of, keys = pd.factorize(np.array([digest(t) for t in distinct], dtype=object))
    thread = np.concatenate(threads).astype(np.int64)
    key = key_of[np.concatenate(texts)].astype(np.int64)
    pairs = np.unique(thread * len(keys) + key)
    thread, key = np.divmod(pairs, len(keys))
    return pd.DataFrame({"thread_id": names[thread], "key": keys[key]})


def _reach(new: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(Message-IDs the new messages reference, thread_keys they may share with a cached
    thread): their references, their own keys (a cached thread's placeholders) and their
    provider thread ids."""
    _, tokens = _references(new)
    referenced = sorted(set(tokens.to_pylist()))
    own = new["msg_key"].astype(str).tolist()
    provider = new["provider_thread_id"].dropna().astype(str).tolist()
    keys = [digest("r:" + k) for k in {*referenced, *own}]
    keys += [digest("p:" + p) for p in set(provider)]
    return referenced, keys


def _regroup_new(cache: Cache, capture: Callable[[Keyed], Callable[[pd.DataFrame], Grouping]],
                 is_internal: Callable[[pd.Series], pd.Series] | None,
                 extra: Sequence[str] = ()) -> int | None:
    """Group the messages without a thread id with every thread they can change, and
    write only that (see the module docstring). None when this cannot be exact (no
    thread_keys, or a message that had a thread id lost it: an upsert changed it, its old
    thread is unknown) or would not pay (over 50,000 new messages and a fifth of the
    cache); the caller regroups everything then. ``capture(found)`` gives the assignment
    to write: the grouping ``found``, seen by ``kept.capturing``; the inputs given it hold
    the messages columns ``extra`` too."""
    import pandas as pd

    from replytime.analysis.threads import group_threads

    top = cache.threads_max_id()
    if top is None:
        return None
    new = cache.unthreaded_inputs(extra)
    if new.empty or bool((new["id"] <= top).any()):
        return None
    if len(new) > max(top // 4, 50_000):  # much of the cache is new: one pass costs less
        return None
    referenced, keys = _reach(new)
    asked = set(keys)
    reached = cache.threads_reached(referenced, keys)
    threads: set[str] = set()
    frames = [new]
    while True:
        if reached:
            threads |= reached
            frames.append(cache.thread_inputs_of(sorted(reached), extra))
        inputs = pd.concat(frames, ignore_index=True).sort_values("id", ignore_index=True)
        # The groups the components are in now, and were in (the reached threads' keys).
        grouped = group_threads(inputs, is_internal)
        found = Keyed(grouped.thread_id, grouped.rule, grouped.links,
                      link_keys(inputs, grouped, is_internal))
        wanted = set(found.keys["key"])
        wanted |= cache.keys_of_threads(sorted(reached))
        wanted -= asked
        asked |= wanted
        reached = cache.threads_reached([], sorted(wanted)) - threads if wanted else set()
        if not reached:
            break
    # The last grouping is of these inputs: nothing more was reached.
    capture(found)(inputs)
    return cache.regroup_threads(inputs, found, sorted(threads),
                                 max(top, int(new["id"].max())))
