"""The ``replytime`` console script (pyproject's ``[project.scripts]``). ``replytime import
PATH...`` with at most ``--config``, ``--db`` and ``--account`` runs here without the
command-line parser: typer and click cost ~60 ms of the ~0.1 s a re-import that finds
nothing new takes (benchmarks/README.md, "Start-up floor (eighth session)"). Everything
else goes to ``cli.run``. Both run ``runner.import_files`` inside ``runner.guarded`` and
``runner.finish``, so they print, exit and leave the cache the same."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from replytime.runner import echo_err, finish, guarded, import_files, plain_stderr


def run() -> None:
    """The console script: ``replytime import`` answered here when its arguments are ones
    ``import_args`` reads exactly as the full command line would, else ``cli.run``."""
    found = import_args(sys.argv[1:], os.environ)
    if found is None or not plain_stderr():
        from replytime.cli import run as full_run

        full_run()
        return
    config, db, paths, account = found
    finish(guarded(lambda: import_files(config, db, paths, account, echo_err), debug=False,
                   echo=echo_err))


def import_args(argv: Sequence[str], environ: Mapping[str, str],
                ) -> tuple[str | None, str | None, list[Path], str] | None:
    """(config, db, paths, account) of ``[--config F] [--db D] import PATH... [--account A]``
    (``--opt=value`` too; REPLYTIME_CONFIG and REPLYTIME_DB when the option is absent), as
    the command line of docs/commands.md reads them; None for anything else (another
    command, any other option, ``--``, a repeated option, a value that is empty or starts
    with '-', shell completion), which the full command line then handles."""
    if any(k.startswith("_REPLYTIME_COMPLETE") for k in environ):
        return None
    try:
        cut = list(argv).index("import")
    except ValueError:
        return None
    before = _options(argv[:cut], ("--config", "--db"))
    after = _options(argv[cut + 1:], ("--account",), positional=True)
    if before is None or after is None:
        return None
    values, _ = before
    extra, paths = after
    for name, var in (("--config", "REPLYTIME_CONFIG"), ("--db", "REPLYTIME_DB")):
        if name not in values and var in environ:
            if not environ[var]:
                return None  # click reads an empty variable as unset: leave it to click
            values[name] = environ[var]
    if not paths:
        return None
    return (values.get("--config"), values.get("--db"), [Path(p) for p in paths],
            extra.get("--account", "import"))


def _options(args: Sequence[str], names: tuple[str, ...], positional: bool = False,
             ) -> tuple[dict[str, str], list[str]] | None:
    values: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            return None  # undecodable bytes in argv: click's handling, not ours
        name, eq, value = arg.partition("=")
        if name in names:
            if not eq:
                i += 1
                if i == len(args):
                    return None
                value = args[i]
            if name in values or not value or value.startswith("-"):
                return None
            values[name] = value
        elif positional and arg and not arg.startswith("-"):
            rest.append(arg)
        else:
            return None
        i += 1
    return values, rest
