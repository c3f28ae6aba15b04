"""DuckLake anomaly lakehouse: a SQLite or PostgreSQL catalog plus Parquet files, written offline and idempotently.

Layout under ``root`` (``settings.lakehouse_dir``): ``catalog.sqlite`` and ``data/``. For several
machines the catalog is a PostgreSQL database (``WORKBENCH_LAKEHOUSE_CATALOG='postgres:dbname=lake
host=... user=...'``) and the data a folder every machine mounts at the same path
(``WORKBENCH_LAKEHOUSE_DATA``); DuckLake records the data path in the catalog when it creates it.

Decisions
---------
* The ``ducklake`` and ``sqlite_scanner`` (or ``postgres_scanner``) extensions are LOADed from the
  files shipped by the PyPI packages ``duckdb-extension-ducklake``, ``duckdb-extension-sqlite-scanner``
  and ``duckdb-extension-postgres-scanner``; auto-install and auto-load are switched off, so nothing
  is ever fetched from the internet. A connection :func:`duckdb_connection` makes (every connection of
  the workbench's: the stores' and the notebooks' readers) skips DuckDB's signature check of those
  files (``allow_unsigned_extensions``): it hashes 70 MB per connection (~0.4 s of CPU, the largest
  part of the anomaly sink's start-up and of every notebook read of the lakehouse) and adds nothing to
  the trust in files that pip installed next to duckdb itself. A connection passed in keeps its own
  settings but for the two below.
* The SQLite catalog runs in WAL mode (set once by the writer), so readers in other processes never
  block commits and vice versa.
* Every connection runs with ``TimeZone = 'UTC'`` and no progress bar; times are ``TIMESTAMPTZ``.
* Ids are ``BIGINT`` (Redset ids can exceed int32). ``features`` is JSON **text** (``VARCHAR``): the
  feature set changes with the model version, and a struct column would force a schema change per
  model. Query it with ``features::JSON`` or ``json_extract``.
* Idempotency on ``(instance_id, query_id, model_version)``: DuckLake has no primary keys, so each
  batch is de-duplicated in itself and inserted with an anti-join (``INSERT ... WHERE NOT EXISTS``) in
  one statement, i.e. one transaction and one snapshot. ``MERGE INTO`` works too, but the anti-join
  also filters the target on the batch's ``arrival_timestamp`` range (constants), which lets DuckLake
  skip files by their min/max statistics instead of scanning the whole table every batch. A
  re-delivered row has the same arrival time, so the filter never misses a duplicate. This assumes
  one writer at a time; concurrent readers are fine. With a PostgreSQL catalog the writers (sinks
  on several machines) take turns on a cluster-wide advisory lock, so the check and the commit of
  one writer never interleave with another's.
* Small batches (<= 10 rows by default) are inlined into the catalog by DuckLake instead of becoming
  tiny Parquet files; :meth:`AnomalyLakehouse.maintain` flushes them, merges adjacent small files,
  expires snapshots older than a retention, deletes files no snapshot needs, and deletes orphaned
  files (written by a writer killed before its commit, so no snapshot ever knew them). Time travel
  (``AT (VERSION => n)``) works for every snapshot not yet expired.
* A locked catalog or a commit conflict raises :class:`LakehouseBusyError` (retry later; the failed
  write was rolled back). Anything else propagates unchanged.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self
from urllib.parse import urlsplit

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from workbench.store import _postgres
from workbench.store._base import ConnectionStore
from workbench.store.anomaly_schema import ANOMALY_KEY, ANOMALY_SCHEMA
from workbench.store.exceptions import (
    LakehouseBusyError,
    LakehouseNotFoundError,
    RowValidationError,
    StoreError,
)

if TYPE_CHECKING:
    from workbench.config import Settings

__all__ = [
    "ANOMALY_KEY",
    "ANOMALY_SCHEMA",
    "WINDOW_ANOMALY_KEY",
    "AnomalyLakehouse",
    "MaintenanceResult",
    "catalog_kind",
    "connect",
    "connect_settings",
    "duckdb_connection",
    "extension_paths",
    "sql_literal",
]

logger = logging.getLogger(__name__)

CATALOG_ALIAS: Final = "lake"
CATALOG_FILE: Final = "catalog.sqlite"
POSTGRES_PREFIX: Final = "postgres:"
DATA_DIR: Final = "data"
_TSZ = pa.timestamp("us", tz="UTC")
#: Key and columns of ``lake.window_anomalies`` (collective anomalies, :mod:`workbench.analysis.collective`).
WINDOW_ANOMALY_KEY: Final[tuple[str, ...]] = ("instance_id", "window_start", "signal")
_WINDOW_FIELDS: Final = (
    pa.field("instance_id", pa.int64()), pa.field("window_start", _TSZ), pa.field("signal", pa.string()),
    pa.field("expected", pa.float64()), pa.field("observed", pa.float64()), pa.field("score", pa.float64()),
    pa.field("reason", pa.string()), pa.field("inserted_at", _TSZ),
)
_WINDOW_COLUMNS: Final = ("instance_id BIGINT, window_start TIMESTAMPTZ, signal VARCHAR, expected DOUBLE, "
                          "observed DOUBLE, score DOUBLE, reason VARCHAR, inserted_at TIMESTAMPTZ")
_REQUIRED: Final = (*ANOMALY_KEY, "arrival_timestamp")
_INPUT_FIELDS: Final = tuple(f for f in ANOMALY_SCHEMA if f.name != "inserted_at")
_DUCK_TYPES: Final = {pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.string(): "VARCHAR", _TSZ: "TIMESTAMPTZ"}
#: A PostgreSQL catalog's session was lost (server restart, network): reconnect and retry later.
_PG_LOST = re.compile(r"server closed the connection|terminating connection|connection already closed|"
                      r"no connection to the server|could not (?:receive|send) data|Unable to connect to Postgres|"
                      r"connection to server .* failed|SSL connection has been closed", re.I)
#: Attempts to create the tables when other writers hold the catalog (about 20 s in all).
_OPEN_ATTEMPTS = 15
_BUSY = re.compile(r"database is locked|database is busy|SQLITE_BUSY|conflict|could not commit", re.I)


def sql_literal(text: str) -> str:
    """Quote a string as a SQL literal (for the few statements that take no parameters: LOAD, ATTACH)."""
    return "'" + text.replace("'", "''") + "'"


def _extension_file(package: str, name: str) -> Path:
    """The ``name`` extension file shipped by the PyPI package ``package`` for this DuckDB."""
    version = f"v{duckdb.__version__}"
    dist = package.replace("_", "-")
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError as exc:
        msg = (f"The DuckLake lakehouse needs the package {dist}=={duckdb.__version__}; it is not installed. "
               f"Run: pip install {dist}=={duckdb.__version__}")
        raise ImportError(msg) from exc
    path = Path(str(root / "extensions" / version / f"{name}.duckdb_extension"))
    if not path.is_file():
        msg = (f"{path} does not exist: the installed {package} does not match duckdb {duckdb.__version__}. "
               f"Install the matching version: pip install {dist}=={duckdb.__version__}")
        raise ImportError(msg)
    return path


def extension_paths() -> tuple[Path, Path]:
    """Paths of the shipped ``sqlite_scanner`` and ``ducklake`` extension files for this DuckDB.

    Raises
    ------
    ImportError
        If the extension packages are not installed (names the pip command).
    """
    return (_extension_file("duckdb_extension_sqlite_scanner", "sqlite_scanner"),
            _extension_file("duckdb_extension_ducklake", "ducklake"))


def catalog_kind(catalog: str) -> str:
    """``'sqlite'`` or ``'postgres'`` for a catalog setting (``'sqlite'`` or ``'postgres:<libpq string>'``).

    Raises
    ------
    StoreError
        For anything else.
    """
    if catalog == "sqlite":
        return "sqlite"
    if catalog.startswith(POSTGRES_PREFIX) and len(catalog) > len(POSTGRES_PREFIX):
        return "postgres"
    msg = (f"The lakehouse catalog must be 'sqlite' or 'postgres:<libpq connection string>'. Got "
           f"{_postgres.redact(catalog)!r} instead.")
    raise StoreError(msg)


def describe(root: str | os.PathLike[str], catalog: str = "sqlite") -> str:
    """Where the lakehouse's catalog is, for messages (passwords redacted)."""
    return str(Path(root) / CATALOG_FILE) if catalog == "sqlite" else _postgres.redact(catalog)


def duckdb_connection() -> duckdb.DuckDBPyConnection:
    """A new in-memory DuckDB connection set up as every workbench reader and writer uses one.

    Nothing is downloaded or loaded behind our back (extensions are LOADed by path, :func:`connect`),
    times read in UTC, and no progress bar is drawn.
    """
    # DuckDB verifies an extension file's signature at every LOAD: ~0.2 s of CPU per 35 MB file, 0.4 s
    # per connection (the anomaly sink's first commit, every reader). The only files LOADed are those
    # the PyPI packages installed beside duckdb for its version (nothing is downloaded), as trusted as
    # duckdb's own files, so these connections skip the check (see :func:`connect`).
    return _session(duckdb.connect(config={"autoinstall_known_extensions": False,
                                           "autoload_known_extensions": False, "allow_unsigned_extensions": True}))


def _session(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    con.execute("SET TimeZone = 'UTC'")
    # DuckDB draws a progress bar on stdout for a query past 2 s (a count on a loaded machine): in a cell's
    # output, an app's log, or the stdout a reader process answers on (it broke a test's parsing).
    con.execute("SET enable_progress_bar = false")
    return con


def connect(root: str | os.PathLike[str], *, read_only: bool = False, alias: str = CATALOG_ALIAS,
            connection: duckdb.DuckDBPyConnection | None = None, catalog: str = "sqlite",
            data_path: str | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the lakehouse attached as ``alias``.

    Parameters
    ----------
    root : path
        Lakehouse folder (``catalog.sqlite`` and, by default, ``data/`` inside).
    read_only : bool
        Attach read-only (readers); the catalog must exist then.
    alias : str
        Catalog name in SQL (an identifier).
    connection : duckdb.DuckDBPyConnection, optional
        Attach into this connection instead of a new in-memory one.
    catalog : str
        ``'sqlite'`` (``root/catalog.sqlite``) or ``'postgres:<libpq connection string>'`` (a
        PostgreSQL database that several machines attach; it must exist, DuckLake creates its tables).
    data_path : str, optional
        Folder (or object-store URL) of the Parquet files; default ``root/data/``. It is recorded in
        the catalog when the lakehouse is created, and every writer must name the same one.

    Raises
    ------
    LakehouseNotFoundError
        When ``read_only`` and no catalog exists yet.
    StoreError
        When the data path differs from the one the catalog was created with, or PostgreSQL cannot
        be reached (passwords are redacted).
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", alias):
        msg = f"alias must be a plain SQL identifier. Got {alias!r} instead."
        raise StoreError(msg)
    kind = catalog_kind(catalog)
    root = Path(root)
    sqlite_catalog = root / CATALOG_FILE
    if kind == "sqlite" and read_only and not sqlite_catalog.exists():
        msg = (f"No anomaly lakehouse at {root} ({CATALOG_FILE} missing). Start the anomaly sink first, "
               "or point settings.home at the workbench that has one.")
        raise LakehouseNotFoundError(msg)
    con = duckdb_connection() if connection is None else _session(connection)
    scanner = (extension_paths()[0] if kind == "sqlite"
               else _extension_file("duckdb_extension_postgres_scanner", "postgres_scanner"))
    con.execute(f"LOAD {sql_literal(str(scanner))}")
    con.execute(f"LOAD {sql_literal(str(extension_paths()[1]))}")
    data = data_path or str(root / DATA_DIR)
    if not data.endswith(("/", os.sep)):
        data += "/"
    if "://" in data and not data.startswith("file://"):
        # s3:// (AWS or S3-compatible: MinIO, R2, ...): DuckDB reads and writes through httpfs.
        con.execute(f"LOAD {sql_literal(str(_extension_file('duckdb_extension_httpfs', 'httpfs')))}")
        if data.startswith(("s3://", "s3a://")):
            _s3_secret(con)
    if not read_only:
        if "://" not in data:
            Path(data).mkdir(parents=True, exist_ok=True)
        if kind == "sqlite":
            # the data may live elsewhere (WORKBENCH_LAKEHOUSE_DATA): the catalog's folder is made here then
            sqlite_catalog.parent.mkdir(parents=True, exist_ok=True)
            _prepare_catalog(sqlite_catalog)
    # No data inlining: a reader on a SQLite catalog reads the catalog tables one by one, so while
    # maintenance flushed inlined rows into a file it could miss them (a count that went 3000, 2999).
    options = "READ_ONLY" if read_only else f"DATA_PATH {sql_literal(data)}, DATA_INLINING_ROW_LIMIT 0"
    target = "ducklake:sqlite:" + str(sqlite_catalog) if kind == "sqlite" else "ducklake:" + catalog
    try:
        with _attach_lock(catalog if kind == "postgres" and not read_only else None):
            con.execute(f"ATTACH {sql_literal(target)} AS {alias} ({options})")
    except duckdb.Error as exc:
        text = str(exc)
        if read_only and "creating a new DuckLake is explicitly disabled" in text:
            msg = (f"No anomaly lakehouse in the catalog {describe(root, catalog)} yet. Start the anomaly sink "
                   "(with the same WORKBENCH_LAKEHOUSE_CATALOG) first.")
            raise LakehouseNotFoundError(msg) from exc
        if "does not match existing data path" in text:
            msg = (f"The lakehouse catalog {describe(root, catalog)} was created with another data path than "
                   f"{data}: {text.splitlines()[0][:300]} Set WORKBENCH_LAKEHOUSE_DATA to the catalog's data path "
                   "(the same shared folder on every machine).")
            raise StoreError(msg) from exc
        translated = _translate(exc, "attach")
        if translated is exc and kind == "postgres":
            msg = f"Cannot attach the lakehouse catalog {describe(root, catalog)}: {_postgres.redact(text)[:500]}"
            raise StoreError(msg) from exc
        raise translated from exc
    return con


def _s3_secret(con: duckdb.DuckDBPyConnection) -> None:
    """S3 credentials for this connection from the standard AWS environment variables.

    ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``, ``AWS_REGION`` or
    ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for an S3-compatible
    server, path-style). Like PGPASSWORD they stay in the environment, never in the settings.
    Without a key nothing is created and DuckDB's defaults apply.
    """
    env = os.environ
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret:
        return
    parts = [f"KEY_ID {sql_literal(key)}", f"SECRET {sql_literal(secret)}"]
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        parts.append(f"REGION {sql_literal(region)}")
    if env.get("AWS_SESSION_TOKEN"):
        parts.append(f"SESSION_TOKEN {sql_literal(env['AWS_SESSION_TOKEN'])}")
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        url = urlsplit(endpoint if "://" in endpoint else "https://" + endpoint)
        parts += [f"ENDPOINT {sql_literal(url.netloc)}", "URL_STYLE 'path'",
                  f"USE_SSL {'true' if url.scheme == 'https' else 'false'}"]
    con.execute(f"CREATE OR REPLACE TEMPORARY SECRET workbench_s3 (TYPE s3, {', '.join(parts)})")


@contextlib.contextmanager
def _attach_lock(catalog: str | None) -> Iterator[None]:
    """Writers attaching a PostgreSQL catalog take turns: the first attach creates DuckLake's tables,
    and two instances creating them at once collide (duplicate key in ``pg_type``)."""
    if catalog is None:
        yield
        return
    session = _postgres.connect(catalog[len(POSTGRES_PREFIX):])
    try:
        with _postgres.advisory_lock(session, "lakehouse.writers"):
            yield
    finally:
        session.close()


def connect_settings(settings: Settings, *, read_only: bool = False,
                     connection: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyConnection:
    """:func:`connect` to the lakehouse ``settings`` configure (catalog, data path, folder)."""
    return connect(settings.lakehouse_dir, read_only=read_only, connection=connection,
                   catalog=settings.lakehouse_catalog, data_path=settings.lakehouse_data_path)


def _prepare_catalog(catalog: Path) -> None:
    """Put the SQLite catalog in WAL mode (persistent), so that readers never block the writer.

    In the default rollback-journal mode a reader's shared lock makes every commit wait (and a
    commit makes readers wait). Done with Python's sqlite3 before DuckDB attaches; harmless if the
    catalog already is in WAL mode.
    """
    try:
        con = sqlite3.connect(catalog, timeout=10)
        try:
            con.execute("PRAGMA journal_mode=WAL")
        finally:
            con.close()
    except sqlite3.Error as exc:  # e.g. locked by a running writer: it already set WAL
        logger.warning("could not set WAL on the lakehouse catalog path=%s error=%s", catalog, exc)


def _translate(exc: duckdb.Error, action: str) -> Exception:
    text = str(exc)
    if isinstance(exc, duckdb.TransactionException) or _BUSY.search(text):
        msg = (f"The lakehouse catalog was locked or a concurrent commit conflicted during {action}: "
               f"{text.splitlines()[0][:300]}. Nothing was written; retry the same batch later.")
        return LakehouseBusyError(msg, retry_after=1.0)
    return exc


@dataclass(frozen=True)
class MaintenanceResult:
    """What :meth:`AnomalyLakehouse.maintain` did (file counts are live Parquet data files)."""

    files_before: int
    files_after: int
    snapshots_expired: int
    files_deleted: int
    orphans_deleted: int = 0


#: An anomaly of the batch ``s`` that is stored as ``t`` (key :data:`ANOMALY_KEY`).
_KEY_MATCH: Final = " AND ".join(f"t.{k} = s.{k}" for k in ANOMALY_KEY)
#: Inserts the rows of ``_wb_batch`` not stored yet (one of each key), looking among the stored rows that
#: arrived in ``[$lo, $hi]`` (:func:`_arrival_span`): :meth:`AnomalyLakehouse.write` and
#: :meth:`AnomalyLakehouse.replace_judged`.
_INSERT_NEW: Final = (
    f"INSERT INTO {CATALOG_ALIAS}.anomalies ({', '.join(f.name for f in _INPUT_FIELDS)}, inserted_at) "
    f"SELECT {', '.join(f.name for f in _INPUT_FIELDS)}, now() FROM ("
    f"  SELECT * FROM _wb_batch QUALIFY row_number() OVER (PARTITION BY {', '.join(ANOMALY_KEY)}) = 1"
    f") s WHERE NOT EXISTS ("
    f"  SELECT 1 FROM {CATALOG_ALIAS}.anomalies t"
    f"  WHERE t.arrival_timestamp BETWEEN $lo AND $hi AND {_KEY_MATCH})"
)


def _arrival_span(table: pa.Table) -> dict[str, Any]:
    """:data:`_INSERT_NEW`'s parameters: the batch's first and last arrival."""
    lo, hi = pc.min_max(table["arrival_timestamp"]).values()
    return {"lo": lo.as_py(), "hi": hi.as_py()}


class AnomalyLakehouse(ConnectionStore):
    """The ``anomalies`` DuckLake table: idempotent batch writes, reads, time travel, maintenance.

    Parameters
    ----------
    root : path
        Lakehouse folder (``settings.lakehouse_dir``).
    read_only : bool
        Open as a reader (never creates anything).
    catalog : str
        ``'sqlite'`` (``root/catalog.sqlite``) or ``'postgres:<libpq connection string>'`` (shared by
        several machines; writers then take turns on a PostgreSQL advisory lock).
    data_path : str, optional
        Folder of the Parquet files (default ``root/data/``); with a PostgreSQL catalog, one that
        every machine mounts at the same path.

    Examples
    --------
    >>> with AnomalyLakehouse(tmp / "lake") as lake:  # doctest: +SKIP
    ...     lake.write(rows)
    """

    def __init__(self, root: str | os.PathLike[str], *, read_only: bool = False, catalog: str = "sqlite",
                 data_path: str | None = None) -> None:
        self.root = Path(root)
        self.read_only = read_only
        self.catalog = catalog
        self.catalog_kind = catalog_kind(catalog)
        self.data_path = data_path
        self._con: duckdb.DuckDBPyConnection | None = None
        self._lock_con: Any = None  # PostgreSQL catalog: the session holding the writers' advisory lock
        self._lost = False  # a PostgreSQL session was lost: re-attach on the next use

    @classmethod
    def from_settings(cls, settings: Settings, *, read_only: bool = False) -> AnomalyLakehouse:
        """The lakehouse ``settings`` configure (``lakehouse_catalog``, ``lakehouse_data_path``, ``lakehouse_dir``)."""
        return cls(settings.lakehouse_dir, read_only=read_only, catalog=settings.lakehouse_catalog,
                   data_path=settings.lakehouse_data_path)

    def __repr__(self) -> str:
        if self.catalog_kind == "sqlite":
            return f"AnomalyLakehouse({str(self.root)!r})"
        return f"AnomalyLakehouse({describe(self.root, self.catalog)!r})"

    def check_reachable(self) -> None:
        """A PostgreSQL catalog: one connection now, so a wrong or unreachable catalog stops a writer at its
        start with a StoreError naming it, not at its first anomaly (the lakehouse opens lazily)."""
        if self.catalog_kind == "postgres":
            try:
                _postgres.connect(self.catalog[len(POSTGRES_PREFIX):]).close()
            except StoreError as exc:
                msg = f"The lakehouse catalog (WORKBENCH_LAKEHOUSE_CATALOG) does not answer. {exc}"
                raise StoreError(msg) from None

    def open(self) -> Self:
        """Connect, attach and (writers) create the table if needed."""
        if self._con is None:
            # Several writers start at once on a fresh lake (N sink and analytics processes): the
            # table creation of all but one conflicts or finds the catalog locked; retry, then it exists.
            # (The first ATTACH of a new catalog creates DuckLake's own tables: the same race.)
            for attempt in range(_OPEN_ATTEMPTS):
                last = attempt == _OPEN_ATTEMPTS - 1
                try:
                    con = connect(self.root, read_only=self.read_only, catalog=self.catalog,
                                  data_path=self.data_path)
                except LakehouseBusyError:
                    if last:
                        raise
                    time.sleep(min(0.2 * 1.5**attempt, 2.0))
                    continue
                if self.read_only:
                    break
                columns = ", ".join(f"{f.name} {_DUCK_TYPES[f.type]}" for f in ANOMALY_SCHEMA)
                try:
                    with self._exclusive():
                        con.execute(f"CREATE TABLE IF NOT EXISTS {CATALOG_ALIAS}.anomalies ({columns})")
                        con.execute(f"CREATE TABLE IF NOT EXISTS {CATALOG_ALIAS}.window_anomalies "
                                    f"({_WINDOW_COLUMNS})")
                    break
                except duckdb.Error as exc:
                    con.close()
                    error = _translate(exc, "create table")
                    if not isinstance(error, LakehouseBusyError) or last:
                        raise error from exc
                    time.sleep(min(0.2 * 1.5**attempt, 2.0))
                except BaseException:
                    con.close()
                    raise
            self._con = con
        return self

    def close(self) -> None:
        """Close the DuckDB connection and the lock session (idempotent)."""
        super().close()
        if self._lock_con is not None:
            with contextlib.suppress(Exception):
                self._lock_con.close()
            self._lock_con = None

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Writers of a PostgreSQL catalog take turns (a cluster-wide advisory lock); no-op for SQLite.

        DuckLake has no primary keys: the insert-if-absent of :meth:`write` is exact only when no
        other writer commits the same key between its check and its commit. With a PostgreSQL
        catalog the writers may be on several machines, so they serialise their write transactions
        on one advisory lock; a writer that dies releases it with its session.
        """
        if self.catalog_kind != "postgres":
            yield
            return
        key = _postgres.lock_key("lakehouse.writers")
        try:
            if self._lock_con is None or self._lock_con.closed or self._lock_con.broken:
                self._lock_con = _postgres.connect(self.catalog[len(POSTGRES_PREFIX):])
            self._lock_con.execute("SELECT pg_advisory_lock(%s)", (key,))
        except Exception as exc:  # StoreError (cannot connect) or a psycopg error (session lost)
            with contextlib.suppress(Exception):
                self._lock_con.close()
            self._lock_con = None
            msg = (f"The lakehouse catalog {describe(self.root, self.catalog)} is unreachable for the writers' "
                   f"lock: {_postgres.redact(str(exc)).splitlines()[0][:300]}. Nothing was written; retry later.")
            raise LakehouseBusyError(msg, retry_after=2.0) from exc
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # a lost session has released the lock already
                self._lock_con.execute("SELECT pg_advisory_unlock(%s)", (key,))

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The open DuckDB connection (``lake`` attached); re-attached after a lost PostgreSQL catalog.

        Raises
        ------
        LakehouseBusyError
            When the PostgreSQL catalog is still unreachable (retry later).
        """
        if self._con is None and self._lost:
            try:
                self.open()
            except (StoreError, duckdb.Error) as exc:
                msg = (f"The lakehouse catalog {describe(self.root, self.catalog)} is unreachable: "
                       f"{_postgres.redact(str(exc)).splitlines()[0][:300]}. Retry later.")
                raise LakehouseBusyError(msg, retry_after=2.0) from exc
            self._lost = False
        return self._open_connection()

    def _failed(self, exc: duckdb.Error, action: str) -> Exception:
        """The error to raise for a failed statement: a lost PostgreSQL session means "retry later"."""
        if self.catalog_kind == "postgres" and _PG_LOST.search(str(exc)):
            logger.warning("lakehouse: PostgreSQL catalog session lost during %s; will re-attach", action)
            self._drop_sessions()
            msg = (f"The lakehouse catalog's PostgreSQL session was lost during {action}: "
                   f"{_postgres.redact(str(exc)).splitlines()[0][:300]}. Nothing was written; retry the batch.")
            return LakehouseBusyError(msg, retry_after=2.0)
        return _translate(exc, action)

    def _drop_sessions(self) -> None:
        """Forget the DuckDB connection and the lock session; the next use re-attaches."""
        self.close()
        self._lost = True

    # --- writes ------------------------------------------------------------------------------------
    def write(self, rows: pa.Table | pa.RecordBatch | Iterable[Mapping[str, Any]]) -> int:
        """Insert anomalies that are not stored yet (key :data:`ANOMALY_KEY`), as one snapshot.

        Parameters
        ----------
        rows : pyarrow.Table, pyarrow.RecordBatch or iterable of Mapping
            Columns of :data:`ANOMALY_SCHEMA` except ``inserted_at``; optional ones may be missing.
            ``arrival_timestamp`` must be tz-aware (or a UTC timestamp column); ``features`` may be a
            dict (serialised to JSON) or JSON text.

        Returns
        -------
        int
            Rows actually inserted (re-delivered rows are skipped).

        Raises
        ------
        RowValidationError
            Unknown or missing columns, or nulls in the key.
        LakehouseBusyError
            The catalog is locked or a commit conflicted; retry the same batch.
        """
        if self.read_only:
            msg = f"{self!r} was opened read_only; open it with read_only=False to write."
            raise StoreError(msg)
        table = _to_arrow(rows)
        if table.num_rows == 0:
            return 0
        con = self.connection
        con.register("_wb_batch", table)
        try:
            with self._exclusive():
                inserted = con.execute(_INSERT_NEW, _arrival_span(table)).fetchone()
        except duckdb.Error as exc:
            _rollback(con)
            raise self._failed(exc, "write") from exc
        finally:
            con.unregister("_wb_batch")
        count = int(inserted[0]) if inserted else 0
        logger.debug("lakehouse write rows=%d inserted=%d", table.num_rows, count)
        return count

    def replace_judged(self, rows: pa.Table, start: datetime, end: datetime, versions: Sequence[str],
                       reasons: Sequence[str]) -> int:
        """Judge a span again: in one transaction, delete the stored anomalies of ``reasons`` by ``versions``
        that arrived in ``[start, end)`` and that ``rows`` does not hold (key :data:`ANOMALY_KEY`), then insert
        ``rows`` as :meth:`write` does. Returns rows inserted.

        The scoring app's deferred step judges a settled day as a whole (a user's clock hour, a statement's
        streak); a log that ended mid-day had that day judged on part of its hour, and a flag the whole hour
        does not raise stayed when the rest of the day came (insert-if-absent kept it). Alerts of other
        reasons (the per-query detector's) and of other versions (a rescoring's) stay.
        """
        if self.read_only:
            msg = f"{self!r} was opened read_only; open it with read_only=False to write."
            raise StoreError(msg)
        table = _to_arrow(rows) if rows.num_rows else None
        if not versions or not reasons:
            return self.write(rows) if table is not None else 0
        con = self.connection
        keep = f" AND NOT EXISTS (SELECT 1 FROM _wb_batch s WHERE {_KEY_MATCH})" if table is not None else ""
        statements = [(
            f"DELETE FROM {CATALOG_ALIAS}.anomalies t WHERE t.arrival_timestamp >= $lo AND t.arrival_timestamp < $hi"
            " AND t.model_version IN (SELECT v FROM _wb_versions) AND t.reason IN (SELECT r FROM _wb_reasons)" + keep,
            {"lo": start, "hi": end})]
        if table is not None:
            statements.append((_INSERT_NEW, _arrival_span(table)))  # as write() inserts
            con.register("_wb_batch", table)
        con.register("_wb_versions", pa.table({"v": pa.array(list(versions), pa.string())}))
        con.register("_wb_reasons", pa.table({"r": pa.array(list(reasons), pa.string())}))
        inserted = None
        try:
            with self._exclusive():
                con.execute("BEGIN TRANSACTION")
                for sql, params in statements:
                    inserted = con.execute(sql, params).fetchone()
                con.execute("COMMIT")
        except duckdb.Error as exc:
            _rollback(con)
            raise self._failed(exc, "replace judged anomalies") from exc
        finally:
            for name in ("_wb_batch", "_wb_versions", "_wb_reasons"):
                with contextlib.suppress(Exception):
                    con.unregister(name)
        return int(inserted[0]) if inserted and table is not None else 0

    def write_window_anomalies(self, rows: pa.Table) -> int:
        """Insert flagged windows not stored yet (key ``(instance_id, window_start, signal)``).

        ``rows`` follow :data:`workbench.analysis.collective.WINDOW_ANOMALY_SCHEMA`; one snapshot;
        re-delivered rows are skipped, so the collective step may run over the same windows again.
        """
        return self.replace_window_anomalies(rows, {}, ())

    def replace_window_anomalies(self, rows: pa.Table, scopes: Mapping[int, tuple[int, int]],
                                 signals: Sequence[str]) -> int:
        """Judge windows again: in one transaction, delete the stored flags of ``signals`` in each scope
        (``instance_id -> (first, last window_start)``, epoch ms, inclusive) that ``rows`` does not hold
        as they are, then insert ``rows`` as :meth:`write_window_anomalies` does. Returns rows inserted.

        The collective step judged those windows before windows earlier than them were written (a seek
        forward, then a seek back or a reset): their references lacked that history. Flags of other
        signals (the scoring app's, judged on scores) and of windows outside the scopes stay.
        """
        if self.read_only:
            msg = f"{self!r} was opened read_only; open it with read_only=False to write."
            raise StoreError(msg)
        if rows.num_rows == 0 and not scopes:
            return 0
        con = self.connection
        key = (*WINDOW_ANOMALY_KEY, "expected", "observed", "score", "reason")
        cols = ", ".join(key)
        statements = []
        if scopes:
            names = ", ".join(f"'{s}'" for s in signals if s.replace("_", "").isalnum())
            statements.append(
                f"DELETE FROM {CATALOG_ALIAS}.window_anomalies t WHERE t.signal IN ({names}) AND EXISTS ("
                "  SELECT 1 FROM _wb_scopes c WHERE c.instance_id = t.instance_id"
                "  AND epoch_ms(t.window_start) BETWEEN c.lo AND c.hi)"
                " AND NOT EXISTS (SELECT 1 FROM _wb_windows s WHERE "
                + " AND ".join(f"s.{k} IS NOT DISTINCT FROM t.{k}" for k in key) + ")")
        statements.append(
            f"INSERT INTO {CATALOG_ALIAS}.window_anomalies ({cols}, inserted_at) "
            f"SELECT {cols}, now() FROM ("
            f"  SELECT * FROM _wb_windows QUALIFY row_number() OVER (PARTITION BY {', '.join(WINDOW_ANOMALY_KEY)}) = 1"
            f") s WHERE NOT EXISTS (SELECT 1 FROM {CATALOG_ALIAS}.window_anomalies t WHERE "
            + " AND ".join(f"t.{k} = s.{k}" for k in WINDOW_ANOMALY_KEY) + ")")
        con.register("_wb_windows", rows)
        con.register("_wb_scopes", pa.table({"instance_id": pa.array(list(scopes), pa.int64()),
                                             "lo": pa.array([lo for lo, _ in scopes.values()], pa.int64()),
                                             "hi": pa.array([hi for _, hi in scopes.values()], pa.int64())}))
        try:
            with self._exclusive():
                con.execute("BEGIN TRANSACTION")
                for sql in statements:
                    inserted = con.execute(sql).fetchone()
                con.execute("COMMIT")
        except duckdb.Error as exc:
            _rollback(con)
            raise self._failed(exc, "write window anomalies") from exc
        finally:
            con.unregister("_wb_windows")
            con.unregister("_wb_scopes")
        return int(inserted[0]) if inserted else 0

    def read_window_anomalies(self) -> pa.Table:
        """All flagged windows, ordered by window start, instance and signal (empty before the first)."""
        con = self.connection
        try:
            return con.execute(f"SELECT * FROM {CATALOG_ALIAS}.window_anomalies ORDER BY window_start, "
                               "instance_id, signal").to_arrow_table()
        except duckdb.CatalogException:
            return pa.table({f.name: pa.array([], f.type) for f in _WINDOW_FIELDS})

    # --- reads -------------------------------------------------------------------------------------
    def count(self, version: int | None = None) -> int:
        """Rows in ``anomalies`` now, or at snapshot ``version`` (time travel)."""
        at = "" if version is None else " AT (VERSION => $v)"
        params = {} if version is None else {"v": int(version)}
        row = self.connection.execute(f"SELECT count(*) FROM {CATALOG_ALIAS}.anomalies{at}", params).fetchone()
        return int(row[0]) if row else 0

    def count_window_anomalies(self) -> int:
        """Rows in ``window_anomalies`` now (flagged windows of every run)."""
        row = self.connection.execute(f"SELECT count(*) FROM {CATALOG_ALIAS}.window_anomalies").fetchone()
        return int(row[0]) if row else 0

    def read(self, version: int | None = None) -> pa.Table:
        """The whole table (optionally at snapshot ``version``), ordered by arrival then key."""
        at = "" if version is None else " AT (VERSION => $v)"
        params = {} if version is None else {"v": int(version)}
        return self.connection.execute(
            f"SELECT * FROM {CATALOG_ALIAS}.anomalies{at} ORDER BY arrival_timestamp, {', '.join(ANOMALY_KEY)}",
            params).to_arrow_table()

    def current_version(self) -> int:
        """The latest snapshot id."""
        row = self.connection.execute(f"SELECT max(snapshot_id) FROM {CATALOG_ALIAS}.snapshots()").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def snapshots(self) -> pa.Table:
        """Snapshot ids, times and changes (``lake.snapshots()``)."""
        return self.connection.execute(f"SELECT * FROM {CATALOG_ALIAS}.snapshots() ORDER BY snapshot_id"
                                       ).to_arrow_table()

    def data_files(self) -> int:
        """Number of live Parquet data files of ``anomalies``."""
        row = self.connection.execute("SELECT count(*) FROM ducklake_list_files($c, 'anomalies')",
                                      {"c": CATALOG_ALIAS}).fetchone()
        return int(row[0]) if row else 0

    # --- maintenance -------------------------------------------------------------------------------
    def maintain(self, *, keep_snapshots: timedelta = timedelta(days=7),
                 orphan_age: timedelta = timedelta(minutes=10)) -> MaintenanceResult:
        """Compact and clean up: flush inlined rows, merge small files, expire old snapshots, delete files.

        Parameters
        ----------
        keep_snapshots : timedelta
            Snapshots younger than this stay available for time travel; older ones are expired and
            the files only they referenced are deleted. ``timedelta(0)`` keeps only the current one.
        orphan_age : timedelta
            Files in the data path that the catalog does not know and that are older than this are
            deleted (leftovers of a writer killed mid-commit; the age spares a write in flight).

        Returns
        -------
        MaintenanceResult
        """
        con = self.connection
        before = self.data_files()
        cat = {"c": CATALOG_ALIAS}
        try:
            with self._exclusive():
                con.execute("SELECT * FROM ducklake_flush_inlined_data($c)", cat).fetchall()
                con.execute("SELECT * FROM ducklake_merge_adjacent_files($c)", cat).fetchall()
                expired = con.execute(
                    "SELECT count(*) FROM ducklake_expire_snapshots($c, older_than => now() - $keep)",
                    {**cat, "keep": keep_snapshots}).fetchone()
                deleted = con.execute(
                    "SELECT count(*) FROM ducklake_cleanup_old_files($c, cleanup_all => true)", cat).fetchone()
                orphans = con.execute(
                    "SELECT count(*) FROM ducklake_delete_orphaned_files($c, older_than => now() - $age)",
                    {**cat, "age": orphan_age}).fetchone()
        except duckdb.Error as exc:
            _rollback(con)
            if isinstance(exc, duckdb.IOException) and "No such file or directory" in str(exc):
                # another process's maintenance merged away a file this one was about to read (anomaly sinks
                # of --app-instances N stopping together: a traceback, the data intact): done, not failed
                msg = f"Lakehouse maintenance met a file another writer's maintenance removed: {str(exc)[:200]}"
                raise LakehouseBusyError(msg, retry_after=2.0) from exc
            raise self._failed(exc, "maintenance") from exc
        result = MaintenanceResult(before, self.data_files(), int(expired[0]) if expired else 0,
                                   int(deleted[0]) if deleted else 0, int(orphans[0]) if orphans else 0)
        logger.info("lakehouse maintenance files_before=%d files_after=%d snapshots_expired=%d files_deleted=%d "
                    "orphans_deleted=%d", result.files_before, result.files_after, result.snapshots_expired,
                    result.files_deleted, result.orphans_deleted)
        return result


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    # Usually no transaction is open any more: the failed statement already rolled itself back.
    with contextlib.suppress(duckdb.Error):
        con.execute("ROLLBACK")


def _to_arrow(rows: pa.Table | pa.RecordBatch | Iterable[Mapping[str, Any]]) -> pa.Table:
    if isinstance(rows, pa.RecordBatch):
        table = pa.Table.from_batches([rows])
    elif isinstance(rows, pa.Table):
        table = rows
    else:
        records = [dict(r) for r in rows]
        for r in records:
            if isinstance(r.get("features"), dict | list):
                r["features"] = orjson.dumps(r["features"], option=orjson.OPT_SERIALIZE_NUMPY).decode()
        names = {k for r in records for k in r}
        _check_names(names)
        _check_naive(records)
        schema = pa.schema([f.with_nullable(True) for f in _INPUT_FIELDS if f.name in names])
        try:
            table = pa.Table.from_pylist(records, schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            msg = f"anomaly rows do not fit ANOMALY_SCHEMA: {exc}. Check the types of the fields named."
            raise RowValidationError(msg) from exc
    _check_names(set(table.column_names))
    arrays = []
    for field in _INPUT_FIELDS:
        if field.name in table.column_names:
            col = table[field.name]
            if field.name == "arrival_timestamp" and pa.types.is_timestamp(col.type) and col.type.tz is None:
                msg = ("arrival_timestamp must be timezone-aware (UTC). Got a naive timestamp column instead; "
                       "cast it to timestamp('us', tz='UTC').")
                raise RowValidationError(msg)
            try:
                arrays.append(col.cast(field.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                msg = f"anomaly column {field.name} must be {field.type}. Got {col.type} instead ({exc})."
                raise RowValidationError(msg) from exc
        else:
            arrays.append(pa.nulls(table.num_rows, field.type))
    out = pa.Table.from_arrays(arrays, schema=pa.schema([f.with_nullable(True) for f in _INPUT_FIELDS]))
    for name in _REQUIRED:
        nulls = out[name].null_count
        if nulls:
            msg = f"anomaly column {name} must not be null (it is part of the key). Got {nulls} null value(s)."
            raise RowValidationError(msg, missing=(name,))
    return out


def _check_names(names: set[str]) -> None:
    known = {f.name for f in _INPUT_FIELDS}
    unexpected = tuple(sorted(names - known))[:5]
    missing = tuple(sorted(set(_REQUIRED) - names))[:5]
    if unexpected or missing:
        msg = (f"anomaly rows must have the columns of ANOMALY_SCHEMA. Missing: {list(missing)}; unknown: "
               f"{list(unexpected)}. Rename or drop them (put extra model outputs into 'features').")
        raise RowValidationError(msg, missing=missing, unexpected=unexpected)


def _check_naive(records: list[dict[str, Any]]) -> None:
    for r in records:
        ts = r.get("arrival_timestamp")
        if ts is not None and getattr(ts, "tzinfo", "n/a") is None:
            msg = (f"arrival_timestamp must be timezone-aware (UTC). Got the naive value {ts!r} instead; "
                   "attach tzinfo=datetime.UTC.")
            raise RowValidationError(msg)
