"""The console the human formats are written to. Apart from ``render`` (pandas) so that a
command printing a few lines, such as ``status``, starts without pandas."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


def console(file: object = None) -> Console:
    """A console that draws colour only on a terminal and honours NO_COLOR. Off a terminal
    (a pipe, a cron mail) tables get 100 columns rather than rich's 80."""
    from rich.console import Console  # not loaded by the machine formats (csv, json, ...)

    width = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 100
    return Console(file=file, no_color="NO_COLOR" in os.environ or None, soft_wrap=False,
                   width=width)
