"""Mail sources: the connectors (``files`` for mbox/Maildir/.eml/Takeout, ``gmail``, ``imap``)
and header parsing (``headers``). Each connector turns its source into (location,
MessageRecord) batches that it hands to ``Cache.write_batch`` together with its resumable
sync state.

May import: the core modules (``replytime.config``, ``errors``, ``model``, ``lists``,
``periods``, ``progress``) and ``replytime.store``. Never ``analysis``, ``output``, ``api``
or ``cli`` (tests/test_layout.py checks it)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
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


def write_secret(path: Path, text: str) -> None:
    """Write a token file atomically, readable by the owner only: created 0600 with O_EXCL,
    so the secret is never on disk with wider permissions (its directory 0700 when made)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # in case the umask or the filesystem did something odd
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
