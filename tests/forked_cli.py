"""Run the console script many times, fast: each run is a real new process executing
``replytime.cli:run`` (the function the ``replytime`` script calls), forked from a server
that has already imported replytime, pandas and Arrow.

A fresh interpreter costs ~0.6 s of imports per run; a property test of hundreds of CLI
runs would spend minutes on nothing else. The server is a separate, single-threaded Python
process (never the test process, whose threads a fork could copy mid-lock). Each child gets
its own argv, environment, working directory and stdout/stderr files, and ends through
``run``'s own exit path, so its exit status is the one a shell would see.
``tests/test_cli_states.py`` checks that a sample of runs gives the same output through the
installed script.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SERVER = r"""
import json, os, sys
import pandas, pyarrow.parquet, rich.console  # noqa: F401 - imported once, before forking
import replytime.cli, replytime.api, replytime.output.emit, replytime.output.html  # noqa
import replytime.output.weekly, replytime.analysis.weekly, replytime.output.export  # noqa
import typer.main
# The click command typer builds from the app on every call (~45 ms), built once here
# before forking, as a long-lived process would: each child runs it.
_build = typer.main.get_command
_command = _build(replytime.cli.app)
typer.main.get_command = lambda app: _command if app is replytime.cli.app else _build(app)
for line in sys.stdin:
    req = json.loads(line)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        try:
            os.chdir(req["cwd"])
            os.environ.clear()
            os.environ.update(req["env"])
            fd_in = os.open(os.devnull, os.O_RDONLY)
            os.dup2(fd_in, 0)
            for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
                f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(f, fd)
                os.close(f)
            sys.argv = ["replytime", *req["argv"]]
            replytime.cli.run()
        finally:
            os._exit(99)  # run() always exits itself; 99 would mean it returned
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    sys.stdout.write(json.dumps({"rc": code}) + "\n")
    sys.stdout.flush()
"""


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class ForkedCLI:
    """``run(argv, cwd, env)`` like ``subprocess.run([replytime, *argv])``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.count = 0
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, argv: list[str], cwd: Path, env: dict[str, str]) -> Result:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.count += 1
        out, err = self.workdir / f"{self.count}.out", self.workdir / f"{self.count}.err"
        req = {"argv": argv, "cwd": str(cwd), "env": env, "stdout": str(out),
               "stderr": str(err)}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            raise RuntimeError(f"the fork server died (exit {self.proc.wait()})")
        result = Result(json.loads(reply)["rc"], out.read_text(errors="replace"),
                        err.read_text(errors="replace"))
        out.unlink()
        err.unlink()
        return result

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(10)
