"""What a run showed of its secrets: for the no-token-leaks tests of the Gmail and Graph
connectors (tests/test_gmail.py, tests/test_msgraph.py)."""

from __future__ import annotations

from collections.abc import Iterable

import pytest


def shown(secrets: Iterable[str], capfd: pytest.CaptureFixture[str],
          caplog: pytest.LogCaptureFixture, error: BaseException) -> list[str]:
    """The secrets that appear in what was printed (stdout, stderr), logged (at any level
    the test set) or raised."""
    out = capfd.readouterr()
    text = out.out + out.err + caplog.text + str(error)
    return [s for s in secrets if s in text]
