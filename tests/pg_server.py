"""A private PostgreSQL server for the tests: Debian's ``postgresql`` binaries, a throw-away cluster.

The cluster lives in a fresh temp folder, listens on 127.0.0.1 and a free port (and a Unix socket
inside its folder), trusts local connections (test only) and is removed on :meth:`PostgresServer.stop`.
PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user (which the
Debian package creates) through ``runuser``; the folder is handed to that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

__all__ = ["PostgresServer", "PostgresUnavailable", "find_bin_dir"]


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries cannot be found (or the cluster cannot be started as root)."""


def find_bin_dir() -> Path:
    """Folder holding ``initdb`` and ``pg_ctl``: on PATH, else the newest /usr/lib/postgresql/N/bin.

    Raises
    ------
    PostgresUnavailable
        When neither exists (install Debian's ``postgresql``, e.g. ``make postgresql``).
    """
    on_path = shutil.which("pg_ctl")
    if on_path and Path(on_path).with_name("initdb").exists():
        return Path(on_path).parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if candidates:
        return candidates[-1].parent
    msg = ("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin. "
           "Install them with `make postgresql` (Debian: apt-get install postgresql).")
    raise PostgresUnavailable(msg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One private PostgreSQL cluster (superuser ``postgres``, trust authentication).

    Examples
    --------
    >>> with PostgresServer() as pg:  # doctest: +SKIP
    ...     dsn = pg.create_database("lake")
    """

    def __init__(self) -> None:
        self.bin_dir = find_bin_dir()
        self.port = _free_port()
        self._as_root = os.geteuid() == 0
        # As root the server runs as `postgres`, which must reach the folder: /tmp, not a private TMPDIR.
        parent = "/tmp" if self._as_root and os.path.isdir("/tmp") else None
        self.root = Path(tempfile.mkdtemp(prefix="wb-pg-", dir=parent))
        self.data_dir = self.root / "data"
        self._started = False

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)

    def start(self) -> PostgresServer:
        """initdb, then start and wait until the server accepts connections (about 3 s)."""
        if self._as_root:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError as exc:
                msg = "running as root, but there is no `postgres` user to run the server as (install postgresql)"
                raise PostgresUnavailable(msg) from exc
            os.chown(self.root, user.pw_uid, user.pw_gid)
        init = self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                         "--no-sync")
        if init.returncode != 0:
            msg = f"initdb failed (exit {init.returncode}): {init.stderr.strip()[-800:]}"
            raise RuntimeError(msg)
        self.start_existing()
        return self

    def restart(self) -> None:
        """Stop (fast: every session is cut) and start again on the same port and data."""
        stopped = self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")
        if stopped.returncode != 0:
            msg = f"pg_ctl stop failed (exit {stopped.returncode}): {stopped.stderr.strip()[-500:]}"
            raise RuntimeError(msg)
        self._started = False
        self.start_existing()

    def start_existing(self) -> None:
        """Start the initialised cluster (after :meth:`restart`'s stop)."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        started = self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.root / "server.log"), "-o", options,
                            "-w", "-t", "60", "start")
        if started.returncode != 0:
            log = (self.root / "server.log").read_text(errors="replace")[-1500:] if (
                self.root / "server.log").exists() else ""
            msg = f"pg_ctl start failed (exit {started.returncode}): {started.stderr.strip()[-500:]}\n{log}"
            raise RuntimeError(msg)
        self._started = True

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its folder."""
        if self._started:
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")
            self._started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def conninfo(self, dbname: str = "postgres") -> str:
        """libpq key/value connection string of ``dbname`` (what DuckLake's ``postgres:`` catalog takes)."""
        return f"dbname={dbname} host=127.0.0.1 port={self.port} user=postgres"

    def url(self, dbname: str = "postgres") -> str:
        """``postgresql://`` URL of ``dbname``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh database (a unique name by default) and return its name."""
        import psycopg

        name = name or f"wb_{uuid.uuid4().hex[:12]}"
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            msg = f"database name must be a plain lower-case identifier. Got {name!r} instead."
            raise ValueError(msg)
        with psycopg.connect(self.conninfo(), autocommit=True) as con:
            con.execute(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever is still connected."""
        import psycopg

        with contextlib.suppress(psycopg.Error), psycopg.connect(self.conninfo(), autocommit=True) as con:
            con.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
