"""A throw-away PostgreSQL server for tests and benchmarks.

Runs the real server binaries of the Debian package ``postgresql``
(``/usr/lib/postgresql/<version>/bin``): ``initdb`` a fresh cluster under a temporary
directory (trust authentication for one superuser, C locale, no fsync), then ``postgres``
in the foreground on a free loopback port with its unix socket in that directory. As root,
both run as the ``postgres`` system user (the server refuses to run as root), with a data
directory that user owns. ``stop()`` shuts the server down and removes everything.

    with PostgresServer() as pg:
        url = pg.create_database("t1")      # postgresql://replytime@127.0.0.1:PORT/t1
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.dovecot import free_port

PACKAGE = "postgresql"
USER = "replytime"


def bindir() -> Path:
    """The newest installed server's bin directory; fails (never skips) naming the package."""
    found = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not found:
        raise RuntimeError(
            "PostgreSQL server binaries (initdb, postgres) not found in /usr/lib/postgresql: "
            f"install the Debian package {PACKAGE} (apt-get install {PACKAGE})"
        )
    return found[-1]


def memory_dir(room: int = 4 << 30) -> str | None:
    """A tmpfs with ``room`` bytes free (Linux's /dev/shm), else None (the temp dir)."""
    shm = Path("/dev/shm")
    try:
        if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > room:
            return str(shm)
    except OSError:
        pass
    return None


def _as_server_user(argv: list[str]) -> list[str]:
    if os.getuid() != 0:
        return argv
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError(
            f"no postgres system user to run the test server as: install the Debian package "
            f"{PACKAGE}"
        ) from None
    return ["runuser", "-u", "postgres", "--", *argv]


@dataclass
class PostgresServer:
    """One running cluster; ``start()``, ``create_database()`` per test, ``stop()``."""

    port: int = 0
    user: str = USER
    # Where the cluster's directory goes (None: the system temp dir). The tests put it in
    # memory (memory_dir()): on a disk with online discard, removing a cluster that a
    # suite's hundred databases grew took a minute.
    parent: str | None = None
    root: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    _dbs: int = field(default=0, repr=False)

    def start(self, timeout: float = 30.0) -> PostgresServer:
        bin_ = bindir()
        # The postgres user must be able to enter it: a directory of its own, 0700, in the
        # system temp dir (pytest's tmp dirs belong to root, mode 0700).
        self.root = Path(tempfile.mkdtemp(prefix="replytime-pg-", dir=self.parent))
        if os.getuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        data = self.root / "data"
        init = subprocess.run(
            _as_server_user([
                str(bin_ / "initdb"), "-D", str(data), "-U", self.user, "--auth=trust",
                "--encoding=UTF8", "--locale=C", "--no-sync",
            ]),
            capture_output=True, text=True, check=False,
        )
        if init.returncode != 0:
            self._cleanup()
            raise RuntimeError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
        self.port = self.port or free_port()
        log = open(self.root / "server.log", "wb")  # noqa: SIM115 - kept open for the server
        with log:
            self.proc = subprocess.Popen(
                _as_server_user([
                    str(bin_ / "postgres"), "-D", str(data), "-p", str(self.port),
                    "-k", str(self.root), "-c", "listen_addresses=127.0.0.1",
                    "-c", "fsync=off", "-c", "synchronous_commit=off",
                    "-c", "full_page_writes=off", "-c", "max_connections=200",
                ]),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                diag = self.diagnostics()
                self.stop()
                raise RuntimeError(f"postgres exited at start-up:\n{diag}")
            ready = subprocess.run(
                [str(bin_ / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                check=False,
            )
            if ready.returncode == 0:
                return self
            time.sleep(0.1)
        diag = self.diagnostics()
        self.stop()
        raise RuntimeError(f"postgres did not answer on port {self.port}:\n{diag}")

    def url(self, database: str, password: str | None = None) -> str:
        auth = f"{self.user}:{password}" if password else self.user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its URL."""
        import psycopg
        from psycopg import sql

        if name is None:
            self._dbs += 1
            name = f"t{os.getpid()}_{self._dbs}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def diagnostics(self) -> str:
        if self.root is None or not (self.root / "server.log").exists():
            return "(no server log)"
        return (self.root / "server.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then remove the cluster."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None
        self._cleanup()

    def _cleanup(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
