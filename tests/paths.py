"""Where the tests' data lives: inside the repository, next to this file, so a fresh clone
needs nothing beside it."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent
# Real mail from the notmuch project's test suite (see corpora/README.md).
CORPORA = TESTS / "corpora" / "notmuch"
# Small data files: documented examples the code must accept.
DATA = TESTS / "data"
