"""PostgreSQL plumbing shared by the stores that several machines can share (psycopg 3).

Only connection handling lives here: opening a connection from a URL or libpq string with a clear
error, hiding passwords in anything printed, and cluster-wide advisory locks. The SQL of each store
stays in its own module.
"""

from __future__ import annotations

import contextlib
import re
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from workbench.store.exceptions import StoreError

if TYPE_CHECKING:
    import psycopg

__all__ = ["POSTGRES_SCHEMES", "advisory_lock", "connect", "is_postgres_url", "lock_key", "redact"]

POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")
_URL_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.I)


def is_postgres_url(location: object) -> bool:
    """True for a ``postgresql://`` / ``postgres://`` URL (a store location that is not a file)."""
    return isinstance(location, str) and location.startswith(POSTGRES_SCHEMES)


def redact(conninfo: str) -> str:
    """A URL or libpq string with any password replaced by ``***`` (for reprs, logs and errors)."""
    return _KV_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", conninfo))


def connect(conninfo: str, *, read_only: bool = False, connect_timeout: int = 10) -> psycopg.Connection[Any]:
    """An autocommit psycopg connection (transactions are opened explicitly by the stores).

    Raises
    ------
    ImportError
        When psycopg is not installed (names the pip command).
    StoreError
        When the server cannot be reached or refuses the login (names the redacted address).
    """
    try:
        import psycopg
    except ModuleNotFoundError as exc:  # pragma: no cover - a declared dependency
        msg = "PostgreSQL stores need psycopg 3. Run: pip install 'psycopg[binary]>=3.3,<3.4'"
        raise ImportError(msg) from exc
    try:
        con = psycopg.connect(conninfo, autocommit=True, connect_timeout=connect_timeout,
                              application_name="pulse-workbench")
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        msg = (f"Cannot connect to PostgreSQL at {redact(conninfo)}: {first}. Check the URL (host, port, "
               "dbname, user) and that the server runs; put a password into PGPASSWORD or ~/.pgpass.")
        raise StoreError(msg) from exc
    if read_only:
        con.execute("SET default_transaction_read_only = on")
    return con


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name`` (the same on every machine)."""
    return zlib.crc32(f"pulse-workbench:{name}".encode()) - 2**31


@contextlib.contextmanager
def advisory_lock(con: psycopg.Connection[Any], name: str) -> Iterator[None]:
    """Hold the cluster-wide session advisory lock ``name`` for the ``with`` block.

    Every machine that takes the same name waits for the holder; a holder that dies loses its
    session and with it the lock, so nothing stays locked after a crash.
    """
    key = lock_key(name)
    con.execute("SELECT pg_advisory_lock(%s)", (key,))
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # a broken connection has released the lock already
            con.execute("SELECT pg_advisory_unlock(%s)", (key,))
