"""``replytime.forked``: values computed in a forked child come back in order, each as soon
as it is sent; a child that fails (or is stopped) leaves ``take`` returning None, so the
caller computes the rest itself."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

from replytime.forked import Forked


def test_values_come_back_in_order_from_another_process() -> None:
    parent = os.getpid()
    child = Forked(lambda: ((os.getpid(), n) for n in range(3)))
    got = [child.take() for _ in range(3)]
    assert [n for _, n in got] == [0, 1, 2]  # type: ignore[misc]
    assert {pid for pid, _ in got} != {parent}  # type: ignore[misc]
    assert child.take() is None and child.take() is None  # sent everything: gone


def test_a_value_arrives_before_the_child_ends(tmp_path: Path) -> None:
    """The first value is there while the child still computes the second."""
    gate = tmp_path / "go"

    def slow() -> Iterator[str]:
        yield "first"
        while not gate.exists():  # the parent lets it finish once it has the first
            time.sleep(0.01)
        yield "second"

    child = Forked(slow)
    assert child.take() == "first"
    gate.touch()
    assert child.take() == "second"


def test_a_failing_child_gives_what_it_sent_then_none() -> None:
    def failing() -> Iterator[int]:
        yield 1
        raise RuntimeError("the child fails")

    child = Forked(failing)
    assert child.take() == 1
    assert child.take() is None
    assert child.take() is None


def test_cancel_stops_a_child_that_still_runs(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"

    def forever() -> Iterator[int]:
        pid_file.write_text(str(os.getpid()))
        while True:
            time.sleep(0.05)
        yield 0  # never reached

    child = Forked(forever)
    deadline = time.monotonic() + 10
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    pid = int(pid_file.read_text())
    child.cancel()
    assert child.take() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pass  # gone, as it must be
    else:
        raise AssertionError(f"child {pid} still runs")
