"""Mail sources: the connectors (``files`` for mbox/Maildir/.eml/Takeout, ``gmail``, ``imap``)
and header parsing (``headers``). Each connector turns its source into (location,
MessageRecord) batches that it hands to ``Cache.write_batch`` together with its resumable
sync state.

May import: the core modules (``replytime.config``, ``errors``, ``model``, ``lists``,
``periods``, ``progress``) and ``replytime.store``. Never ``analysis``, ``output``, ``api``
or ``cli`` (tests/test_layout.py checks it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SyncStats:
    """What one import or sync did, for the one-line summary and for tests."""

    account: str
    fetched: int = 0  # messages written (new or updated)
    skipped: int = 0  # places that could not be read as a message
    removed: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # connector-specific figures
