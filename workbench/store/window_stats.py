"""Store of the stream-analytics windows (``window_stats``), idempotent and with retention.

SQLite in the home by default (one machine); a PostgreSQL database when the location is a
``postgresql://`` URL (``WORKBENCH_WINDOW_STATS_URL``), so instances on several machines write one
table. Both are generated from the one declaration :data:`WINDOW_STATS_SCHEMA` (a new column is one
edit there) and behave alike; only the SQL dialect differs (:class:`_Dialect`).

Decisions
---------
* ``window_start`` / ``window_end`` (and ``first_arrival`` / ``last_arrival``) are **integer epoch
  milliseconds, UTC**. Integers compare and sort correctly with no format ambiguity (text ISO times
  compare wrongly as soon as two writers format them differently, e.g. ``Z`` vs ``+00:00``), are
  compact in the primary key, and read back as ``TIMESTAMPTZ`` with ``to_timestamp(ms / 1000)``.
  :meth:`WindowStatsStore.read` returns them as ``timestamp[ms, tz=UTC]``.
* ``PRIMARY KEY (instance_id, window_start)`` and ``INSERT ... ON CONFLICT DO UPDATE``: a window
  emitted twice (at-least-once replay) replaces itself, so the table never holds duplicates.
* WAL, ``synchronous=NORMAL`` and a busy timeout, so readers (notebooks, DuckDB) never block the
  writer and a short lock is waited for instead of failing.
* PostgreSQL: the same tables with ``BIGINT`` / ``DOUBLE PRECISION``; ``upsert`` is the same ``ON
  CONFLICT DO UPDATE`` (rows sorted by key, so concurrent writers never deadlock); archiving locks
  the tables against other writers (``SHARE ROW EXCLUSIVE``) as SQLite's ``BEGIN IMMEDIATE`` does;
  the tables are created under an advisory lock (instances starting together), and columns added
  to the declaration later are added to an existing table (nullable).
* Late events (arrived after their window closed) are stored per source message in
  ``late_event_sources``, keyed by ``(topic, partition, offset)`` of the late message plus the
  window: a message re-processed after a crash (at-least-once) replaces its own count instead of
  adding it again. A consumer that stores its next offset in the same transaction folds the rows below
  it into one row per window (:meth:`WindowStatsStore.merge_late_sources`), so the table stays as
  small as the windows however often a log is replayed. The ``late_events`` view sums them per window.
* Retention (:meth:`WindowStatsStore.archive_older_than`) moves old windows into one Parquet file per
  UTC day, ``window_stats_<YYYY-MM-DD>.parquet``. Each file is rewritten atomically (temp file then
  ``os.replace``) as the union of what it held and the new rows, de-duplicated on the key, all inside
  one SQLite write transaction that deletes the archived rows. A crash between the Parquet write and
  the delete therefore leaves rows that the next run merges into the same file again: nothing is
  archived twice and nothing is lost.
* The schema is declared once, :data:`WINDOW_STATS_SCHEMA` (another backend derives its DDL from
  it). Columns added later (:data:`ADDED_COLUMNS`: the per-window counts of cached, aborted,
  spilled, queued, slow and long-compiling queries, the longest wait, the total and longest compilation,
  the execution pace's count and log sum) are nullable: ``NULL`` means "not counted" (a window
  written by an earlier version).
  :meth:`WindowStatsStore.open` migrates an existing database by ``ALTER TABLE ... ADD COLUMN`` for
  each schema column it lacks, inside one write transaction that checks again, so it is idempotent
  and safe with two processes opening at once.
  A read-only store of an unmigrated database reads the missing columns as nulls, and archive
  files of earlier versions read the same way.
* ``window_residuals`` (the scoring app's runtime residual per window,
  :mod:`workbench.analysis.residual_windows`) sits beside ``window_stats`` with the same key. Its
  writes are insert-if-absent (``ON CONFLICT DO NOTHING``): a window's residual depends only on its
  scored rows, so a window written again (a replay, a restart) is the same value and the first row
  stays. Retention deletes its rows with the windows they belong to (derived data: not archived).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workbench._fs import atomic_path
from workbench.store import _postgres
from workbench.store._base import ConnectionStore
from workbench.store.exceptions import RowValidationError, StoreError, StoreNotFoundError

if TYPE_CHECKING:
    from workbench.config import Settings

__all__ = ["ADDED_COLUMNS", "WINDOW_RESIDUALS_SCHEMA", "WINDOW_STATS_COLUMNS", "WINDOW_STATS_SCHEMA", "ArchiveResult",
           "Transaction",
           "WindowStatsStore", "database_errors",
           "migrate", "to_epoch_ms"]

logger = logging.getLogger(__name__)

_DAY_MS: Final = 86_400_000
_TS = pa.timestamp("ms", tz="UTC")

#: Arrow schema of ``window_stats`` as :meth:`WindowStatsStore.read` returns it (and the archive holds).
WINDOW_STATS_SCHEMA: Final = pa.schema([
    pa.field("instance_id", pa.int64(), nullable=False),
    pa.field("window_start", _TS, nullable=False),
    pa.field("window_end", _TS, nullable=False),
    pa.field("cluster_size", pa.int64()),
    pa.field("total_queries", pa.int64(), nullable=False),
    pa.field("normal_queries", pa.int64(), nullable=False),
    pa.field("cpu_bound_queries", pa.int64(), nullable=False),
    pa.field("io_bound_queries", pa.int64(), nullable=False),
    pa.field("network_bound_queries", pa.int64(), nullable=False),
    pa.field("queue_wlm_bound_queries", pa.int64(), nullable=False),
    pa.field("cached_queries", pa.int64()),
    pa.field("aborted_queries", pa.int64()),
    pa.field("spilled_queries", pa.int64()),
    pa.field("queued_queries", pa.int64()),
    pa.field("slow_queries", pa.int64()),
    pa.field("long_compile_queries", pa.int64()),
    pa.field("total_spilled_mb", pa.int64(), nullable=False),
    pa.field("total_queue_time_ms", pa.int64(), nullable=False),
    pa.field("total_exec_time_ms", pa.int64(), nullable=False),
    pa.field("p95_exec_time_ms", pa.float64()),
    pa.field("max_exec_time_ms", pa.int64()),
    pa.field("max_queue_time_ms", pa.int64()),
    pa.field("total_compile_time_ms", pa.int64()),
    pa.field("max_compile_time_ms", pa.int64()),
    pa.field("pace_queries", pa.int64()),
    pa.field("pace_log_sum", pa.int64()),
    pa.field("anomalies", pa.int64(), nullable=False),
    pa.field("first_arrival", _TS),
    pa.field("last_arrival", _TS),
    pa.field("updated_at", _TS, nullable=False),
])
WINDOW_STATS_COLUMNS: Final[tuple[str, ...]] = tuple(WINDOW_STATS_SCHEMA.names)
#: Columns added after the first release (nullable: NULL = not counted); :meth:`WindowStatsStore.open`
#: adds whichever schema column an existing table lacks, these included.
ADDED_COLUMNS: Final[tuple[str, ...]] = ("cached_queries", "aborted_queries", "spilled_queries", "queued_queries",
                                         "slow_queries", "max_queue_time_ms", "total_compile_time_ms",
                                         "max_compile_time_ms", "long_compile_queries", "pace_queries",
                                         "pace_log_sum")
_TIME_COLUMNS: Final = frozenset({"window_start", "window_end", "first_arrival", "last_arrival", "updated_at"})
_REQUIRED: Final = ("instance_id", "window_start", "window_end", "total_queries")
_DEFAULTS: Final[dict[str, Any]] = {
    "cluster_size": None, "normal_queries": 0, "cpu_bound_queries": 0, "io_bound_queries": 0,
    "network_bound_queries": 0, "queue_wlm_bound_queries": 0, "total_spilled_mb": 0,
    "total_queue_time_ms": 0, "total_exec_time_ms": 0, "p95_exec_time_ms": None, "max_exec_time_ms": None,
    **dict.fromkeys(ADDED_COLUMNS),
    "anomalies": 0, "first_arrival": None, "last_arrival": None,
}
_INPUT_COLUMNS: Final = tuple(c for c in WINDOW_STATS_COLUMNS if c != "updated_at")

@dataclass(frozen=True)
class _Dialect:
    """What differs between the SQLite and the PostgreSQL ``window_stats`` (the schema does not)."""

    name: str
    param: str  # placeholder of a bound value
    types: Mapping[pa.DataType, str]
    table_options: str  # after the closing parenthesis of CREATE TABLE
    begin_write: str  # a transaction that writes (SQLite takes the write lock up front)
    lock_tables: str | None  # run after begin_write when the transaction must shut other writers out
    create_view: str  # CREATE VIEW that does not fail when it exists


_SQLITE: Final = _Dialect("sqlite", "?", {pa.int64(): "INTEGER", pa.float64(): "REAL", _TS: "INTEGER"},
                          " WITHOUT ROWID", "BEGIN IMMEDIATE", None, "CREATE VIEW IF NOT EXISTS")
_POSTGRES: Final = _Dialect(
    "postgres", "%s", {pa.int64(): "BIGINT", pa.float64(): "DOUBLE PRECISION", _TS: "BIGINT"}, "", "BEGIN",
    # SHARE ROW EXCLUSIVE: readers go on; other writers (and another archiver) wait until commit.
    "LOCK TABLE window_stats, late_event_sources IN SHARE ROW EXCLUSIVE MODE", "CREATE OR REPLACE VIEW")
#: The late-event source table's key columns ("partition" and "offset" are quoted: keywords in PostgreSQL).
_LATE_KEY: Final = ('topic', '"partition"', '"offset"', 'instance_id', 'window_start')


#: Arrow schema of ``window_residuals`` as :meth:`WindowStatsStore.read_residuals` returns it.
WINDOW_RESIDUALS_SCHEMA: Final = pa.schema([
    pa.field("instance_id", pa.int64(), nullable=False),
    pa.field("window_start", _TS, nullable=False),
    pa.field("residual_queries", pa.int64(), nullable=False),
    pa.field("median_log_residual", pa.float64()),
    pa.field("written_at", _TS, nullable=False),
    # added later: windows stored before read NULL (not judged on the share, nor part of its history)
    pa.field("beyond_tolerance_queries", pa.int64()),
])
_RESIDUAL_COLUMNS: Final = tuple(WINDOW_RESIDUALS_SCHEMA.names)


def _create(d: _Dialect) -> tuple[str, ...]:
    """CREATE statements of one dialect, generated from :data:`WINDOW_STATS_SCHEMA`."""
    integer = d.types[pa.int64()]
    return (
        "CREATE TABLE IF NOT EXISTS window_residuals (\n"
        + ",\n".join(f"  {f.name} {d.types[f.type]}{'' if f.nullable else ' NOT NULL'}"
                     for f in WINDOW_RESIDUALS_SCHEMA)
        + f",\n  PRIMARY KEY (instance_id, window_start)\n){d.table_options}",
        "CREATE INDEX IF NOT EXISTS window_residuals_by_start ON window_residuals (window_start)",
        "CREATE TABLE IF NOT EXISTS window_stats (\n"
        + ",\n".join(f"  {f.name} {d.types[f.type]}{'' if f.nullable else ' NOT NULL'}" for f in WINDOW_STATS_SCHEMA)
        + f",\n  PRIMARY KEY (instance_id, window_start)\n){d.table_options}",
        "CREATE INDEX IF NOT EXISTS window_stats_by_start ON window_stats (window_start)",
        f'CREATE TABLE IF NOT EXISTS late_event_sources (\n  topic TEXT NOT NULL,\n  "partition" {integer} NOT NULL,\n'
        f'  "offset" {integer} NOT NULL,\n  instance_id {integer} NOT NULL,\n  window_start {integer} NOT NULL,\n'
        f"  late_count {integer} NOT NULL,\n  last_seen_at {integer} NOT NULL,\n"
        f"  PRIMARY KEY ({', '.join(_LATE_KEY)})\n){d.table_options}",
        "CREATE INDEX IF NOT EXISTS late_event_sources_by_window ON late_event_sources (window_start, instance_id)",
    )


#: The tables whose schema grew after release, and their schemas (columns added by migration).
_GROWN: Final = {"window_stats": WINDOW_STATS_SCHEMA, "window_residuals": WINDOW_RESIDUALS_SCHEMA}


def _add_columns(d: _Dialect, table: str, existing: Iterable[str]) -> tuple[str, ...]:
    """Columns of ``table`` declared after it was made, to add (nullable: the old rows have no value).

    Only the missing ones: ``ALTER TABLE`` locks the table exclusively even when it changes nothing.
    """
    have = set(existing)
    return tuple(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {f.name} {d.types[f.type]}"
                 for f in _GROWN[table] if f.name not in have)


#: Databases of earlier versions held additive counters in a ``late_events`` table: move them over.
_MIGRATE_LATE: Final = (
    "INSERT OR IGNORE INTO late_event_sources (topic, partition, offset, instance_id, window_start, late_count, "
    "last_seen_at) SELECT '(migrated)', -1, 0, instance_id, window_start, late_count, last_seen_at FROM late_events",
    "DROP TABLE late_events",
)


def _late_view(d: _Dialect) -> str:
    return (f"{d.create_view} late_events AS SELECT instance_id, window_start, sum(late_count) AS late_count, "
            "max(last_seen_at) AS last_seen_at FROM late_event_sources GROUP BY instance_id, window_start")


def _upsert(d: _Dialect) -> str:
    return (
        f"INSERT INTO window_stats ({', '.join(WINDOW_STATS_COLUMNS)}) "
        f"VALUES ({', '.join(d.param for _ in WINDOW_STATS_COLUMNS)}) "
        "ON CONFLICT (instance_id, window_start) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in WINDOW_STATS_COLUMNS if c not in ("instance_id", "window_start"))
    )


def _late(d: _Dialect) -> str:
    return (
        f"INSERT INTO late_event_sources ({', '.join(_LATE_KEY)}, late_count, last_seen_at) "
        f"VALUES ({', '.join(d.param for _ in range(7))}) ON CONFLICT ({', '.join(_LATE_KEY)}) DO UPDATE SET "
        "late_count = excluded.late_count, last_seen_at = excluded.last_seen_at"
    )


#: The key of the one row per window that holds the late counts of messages a consumer is past
#: (:meth:`WindowStatsStore.merge_late_sources`; a Kafka topic name cannot hold parentheses).
MERGED_LATE_SOURCE: Final = ("(merged)", -1, 0)


def _merge_late(d: _Dialect) -> tuple[str, str]:
    """Add the per-message rows of one partition below an offset into the merged row of their window, then
    delete them."""
    keys, p = ", ".join(_LATE_KEY), d.param
    latest = "max" if d.name == "sqlite" else "greatest"  # of two values
    where = f'topic = {p} AND "partition" = {p} AND "offset" < {p}'
    # WHERE before ON CONFLICT: SQLite parses an INSERT ... SELECT's upsert only after one
    insert = (f"INSERT INTO late_event_sources ({keys}, late_count, last_seen_at) "
              f"SELECT '{MERGED_LATE_SOURCE[0]}', {MERGED_LATE_SOURCE[1]}, {MERGED_LATE_SOURCE[2]}, instance_id, "
              "window_start, sum(late_count), max(last_seen_at) "
              f"FROM late_event_sources WHERE {where} GROUP BY instance_id, window_start "
              f"ON CONFLICT ({keys}) DO UPDATE SET late_count = late_event_sources.late_count + excluded.late_count, "
              f"last_seen_at = {latest}(late_event_sources.last_seen_at, excluded.last_seen_at)")
    return insert, f"DELETE FROM late_event_sources WHERE {where}"


def _select(d: _Dialect, lo: int | None, hi: int | None, instances: list[int] | None,
            columns: str) -> tuple[str, list[Any]]:
    """The windows query of :meth:`WindowStatsStore.read` with only the bounds given (values bound)."""
    clause, params = _where(d, lo, hi, instances)
    return (f"SELECT {columns} FROM window_stats{clause} "
            "ORDER BY window_start, instance_id"), params


def _where(d: _Dialect, lo: int | None, hi: int | None, instances: list[int] | None) -> tuple[str, list[Any]]:
    """The ``WHERE`` clause (empty without a bound) of the windows with ``lo <= window_start < hi`` of
    ``instances``, and its bound values."""
    where: list[str] = []
    params: list[Any] = []
    if lo is not None:
        where.append(f"window_start >= {d.param}")
        params.append(lo)
    if hi is not None:
        where.append(f"window_start < {d.param}")
        params.append(hi)
    if instances is not None:
        if d is _POSTGRES:
            where.append(f"instance_id = ANY({d.param})")
            params.append(instances)
        else:
            where.append(f"instance_id IN (SELECT value FROM json_each({d.param}))")
            params.append(json.dumps(instances))
    return (f" WHERE {' AND '.join(where)}" if where else ""), params


def _column_sql(existing: frozenset[str], columns: Sequence[str] = WINDOW_STATS_COLUMNS) -> str:
    """The select list of ``columns``; ``NULL`` for one an unmigrated (read-only) table lacks."""
    return ", ".join(c if c in existing else f"NULL AS {c}" for c in columns)


def _add_column_sql(table: str, field: pa.Field) -> str:
    """``ALTER TABLE`` adding one schema column (a NOT NULL one needs a default for existing rows)."""
    tail = "" if field.nullable else " NOT NULL DEFAULT 0"
    return f"ALTER TABLE {table} ADD COLUMN {field.name} {_SQLITE.types[field.type]}{tail}"


def _existing_columns(con: sqlite3.Connection, table: str = "window_stats") -> frozenset[str]:
    return frozenset(r[1] for r in con.execute(f"PRAGMA table_info({table})"))


def migrate(con: sqlite3.Connection) -> tuple[str, ...]:
    """Add the schema columns existing tables (``window_stats``, ``window_residuals``) lack; returns
    their names (``table.column``).

    Idempotent: runs in one ``BEGIN IMMEDIATE`` transaction that reads the tables' columns again,
    so a second run (or a second process racing this one) adds nothing.
    """
    if not any(set(schema.names) - _existing_columns(con, table) for table, schema in _GROWN.items()):
        return ()
    con.execute("BEGIN IMMEDIATE")
    try:
        added: list[str] = []
        for table, schema in _GROWN.items():
            existing = _existing_columns(con, table)
            for field in schema:
                if field.name not in existing:
                    con.execute(_add_column_sql(table, field))
                    added.append(f"{table}.{field.name}")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    logger.info("window stats store migrated: added columns %s", added)
    return tuple(added)


def to_epoch_ms(value: datetime | int | None, *, name: str = "value") -> int | None:
    """Epoch milliseconds (UTC) of a tz-aware datetime, or an int taken as epoch ms already.

    Raises
    ------
    RowValidationError
        For a naive datetime (ambiguous: its zone is unknown) or another type.
    """
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            msg = (f"{name} must be a timezone-aware datetime (UTC) or epoch ms. Got the naive datetime "
                   f"{value.isoformat()} instead; attach a zone, e.g. value.replace(tzinfo=datetime.UTC).")
            raise RowValidationError(msg)
        delta = value - datetime(1970, 1, 1, tzinfo=UTC)
        return delta // timedelta(milliseconds=1)
    msg = f"{name} must be a tz-aware datetime or epoch-ms int. Got {type(value).__name__} {value!r} instead."
    raise RowValidationError(msg)


@dataclass(frozen=True)
class ArchiveResult:
    """What one :meth:`WindowStatsStore.archive_older_than` run did.

    Attributes
    ----------
    cutoff : datetime or None
        Windows starting before this were archived (``None``: the table was empty).
    rows : int
        Rows moved out of SQLite.
    files : tuple of Path
        Parquet files written (one per UTC day touched).
    """

    cutoff: datetime | None
    rows: int
    files: tuple[Path, ...]


def database_errors() -> tuple[type[BaseException], ...]:
    """Errors of the databases a store can sit on (SQLite; PostgreSQL's psycopg when it is installed)."""
    try:
        import psycopg
    except ImportError:
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)


class Transaction:
    """The connection of one :meth:`WindowStatsStore.transaction`, taking SQLite-dialect statements.

    ``?`` placeholders, ``INTEGER`` columns and ``WITHOUT ROWID`` tables are translated for PostgreSQL,
    so a caller keeping its own tables beside ``window_stats`` writes its SQL once.
    """

    def __init__(self, connection: Any, dialect: _Dialect) -> None:
        self._db = connection
        self._dialect = dialect

    def _sql(self, sql: str) -> str:
        if self._dialect is _SQLITE:
            return sql
        return sql.replace("?", "%s").replace(" WITHOUT ROWID", "").replace(" INTEGER", " BIGINT")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement; returns the cursor (iterable, ``fetchone``)."""
        return self._db.execute(self._sql(sql), params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement for every row of ``rows``."""
        cur = self._db.cursor()
        try:
            cur.executemany(self._sql(sql), list(rows))
        finally:
            cur.close()


class WindowStatsStore(ConnectionStore):
    """The ``window_stats`` table in SQLite or PostgreSQL: idempotent upserts, reads and Parquet archiving.

    Parameters
    ----------
    path : str or Path
        SQLite database file (created on :meth:`open`, with its parent folder), or a
        ``postgresql://user@host:port/dbname`` URL: a database every instance on every machine can
        write (the tables are created on :meth:`open`; the database must exist).
    archive_dir : str or Path, optional
        Where :meth:`archive_older_than` writes Parquet files.
    busy_timeout_ms : int
        How long a statement waits for another connection's lock.
    read_only : bool
        Open an existing database for reading only (notebooks); never creates anything.

    Examples
    --------
    >>> with WindowStatsStore(tmp / "stats.sqlite") as store:  # doctest: +SKIP
    ...     store.upsert([finalize(p) for p in partials])
    """

    def __init__(self, path: str | os.PathLike[str], *, archive_dir: str | os.PathLike[str] | None = None,
                 busy_timeout_ms: int = 10_000, read_only: bool = False) -> None:
        self.url: str | None = path if _postgres.is_postgres_url(path) else None
        self.path: Path | None = None if self.url is not None else Path(path)
        self.dialect = _POSTGRES if self.url is not None else _SQLITE
        self.read_only = read_only
        self.archive_dir = None if archive_dir is None else Path(archive_dir)
        self.busy_timeout_ms = busy_timeout_ms
        self._con: Any = None
        self._select_list = _column_sql(frozenset(WINDOW_STATS_COLUMNS))
        self._residual_list = ", ".join(_RESIDUAL_COLUMNS)
        self._upsert_sql = _upsert(self.dialect)
        self._late_sql = _late(self.dialect)
        self._merge_late_sql = _merge_late(self.dialect)
        self._wal_tried_at = float("-inf")  # monotonic time of the last WAL truncation tried (_bound_wal)

    @classmethod
    def from_settings(cls, settings: Settings, *, read_only: bool = False) -> WindowStatsStore:
        """The configured store (``settings.window_stats_location``: the PostgreSQL URL, else the SQLite
        file) archiving into ``settings.archive_dir``."""
        return cls(settings.window_stats_location, archive_dir=settings.archive_dir, read_only=read_only)

    # --- lifecycle ---------------------------------------------------------------------------------
    def __repr__(self) -> str:
        where = _postgres.redact(self.url) if self.url is not None else str(self.path)
        return f"WindowStatsStore({where!r})"

    def open(self) -> Self:
        """Connect, apply the pragmas and create the tables if needed."""
        if self._con is not None:
            return self
        if self.url is not None:
            self._con = self._open_postgres(self.url)
            return self
        assert self.path is not None
        if self.read_only:
            if not self.path.exists():
                msg = (f"No window stats database at {self.path}. Run the stream-analytics app first, or point "
                       "settings.home at the workbench that has one.")
                raise StoreNotFoundError(msg)
            con = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                  timeout=self.busy_timeout_ms / 1000, isolation_level=None)
            con.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            self._con = con
            self._select_list = _column_sql(_existing_columns(con))
            self._residual_list = _column_sql(_existing_columns(con, "window_residuals"), _RESIDUAL_COLUMNS)
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread=False: Quix flushes sinks from a worker thread on a partition revoke (never
        # at the same time as the main thread, which waits for it).
        con = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None,
                              check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        con.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
        for statement in _create(_SQLITE):
            con.execute(statement)
        migrate(con)
        kind = con.execute("SELECT type FROM sqlite_master WHERE name = 'late_events'").fetchone()
        if kind and kind[0] == "table":
            con.execute("BEGIN IMMEDIATE")
            for statement in _MIGRATE_LATE:
                con.execute(statement)
            con.execute("COMMIT")
        con.execute(_late_view(_SQLITE))
        self._con = con
        self._select_list = _column_sql(frozenset(WINDOW_STATS_COLUMNS))
        logger.debug("window stats store opened path=%s", self.path)
        return self

    def _open_postgres(self, url: str) -> Any:
        try:
            con = _postgres.connect(url, read_only=self.read_only)
        except StoreError as exc:  # the message says which setting to fix, as the lakehouse catalog's does
            msg = f"The window stats database (WORKBENCH_WINDOW_STATS_URL) does not answer. {exc}"
            raise StoreError(msg) from None
        try:
            con.execute(f"SET lock_timeout = {int(self.busy_timeout_ms)}")
            if self.read_only:
                row = con.execute("SELECT to_regclass('window_stats') IS NOT NULL").fetchone()
                if not (row and row[0]):
                    msg = (f"No window_stats table in {_postgres.redact(url)}. Run the stream-analytics app "
                           "(with the same WORKBENCH_WINDOW_STATS_URL) first.")
                    raise StoreNotFoundError(msg)
                return con
            # Several instances may open a fresh database at once: one creates, the others wait.
            with con.transaction():
                con.execute("SELECT pg_advisory_xact_lock(%s)", (_postgres.lock_key("window_stats.schema"),))
                # DDL locks tables even when it changes nothing: only what is missing (all of it, the first time)
                made = con.execute("SELECT to_regclass('window_stats') IS NOT NULL AND "
                                   "to_regclass('late_event_sources') IS NOT NULL AND "
                                   "to_regclass('window_residuals') IS NOT NULL AND "
                                   "to_regclass('late_events') IS NOT NULL").fetchone()
                if not (made and made[0]):
                    for statement in (*_create(_POSTGRES), _late_view(_POSTGRES)):
                        con.execute(statement)
                for table in _GROWN:
                    existing = [r[0] for r in con.execute(
                        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                        "AND table_name = %s", (table,)).fetchall()]
                    for statement in _add_columns(_POSTGRES, table, existing):
                        con.execute(statement)
        except BaseException:
            con.close()
            raise
        logger.debug("window stats store opened url=%s", _postgres.redact(url))
        return con

    @property
    def _db(self) -> Any:
        """The open connection (``sqlite3.Connection`` or ``psycopg.Connection``).

        A PostgreSQL session lost since the last call (server restart, network) is replaced by a new
        one here, so the caller's next statement runs instead of failing again.
        """
        con = self._open_connection()
        if self.url is not None and con.broken:
            logger.warning("window stats: PostgreSQL session lost; reconnecting url=%s", _postgres.redact(self.url))
            with contextlib.suppress(Exception):
                con.close()
            self._con = None
            con = self.open()._con
        return con

    @contextlib.contextmanager
    def _write_transaction(self, *, exclusive: bool = False) -> Iterator[Any]:
        """One write transaction; ``exclusive`` also shuts other writers out until commit (archiving)."""
        db = self._db
        db.execute(self.dialect.begin_write)
        try:
            if exclusive and self.dialect.lock_tables:
                db.execute(self.dialect.lock_tables)
            yield db
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                db.execute("ROLLBACK")
            raise
        if self.url is None:
            self._bound_wal()

    #: Bytes of write-ahead log past which a writer checkpoints and truncates it.
    WAL_LIMIT_BYTES: int = 64 * 1024 * 1024

    def _bound_wal(self) -> None:
        """Truncate the WAL once it passed :attr:`WAL_LIMIT_BYTES`. SQLite starts it over only at a moment
        no reader holds it; with a status read every second beside a writer that moment did not come, and
        in a long session the file grew without end (2 -> 105 MB in 50 minutes). A TRUNCATE checkpoint
        leaves the file empty; it is tried without waiting (a reader of an older snapshot, a notebook's
        long query, would hold the writer up to the busy timeout), at most every 10 s."""
        assert self.path is not None
        now = time.monotonic()
        if now - self._wal_tried_at < 10.0:
            return
        try:
            size = self.path.with_name(self.path.name + "-wal").stat().st_size
        except FileNotFoundError:
            return
        if size <= self.WAL_LIMIT_BYTES:
            return
        self._wal_tried_at = now
        db = self._db
        db.execute("PRAGMA busy_timeout=0")
        try:
            busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
        logger.debug("window stats WAL of %d bytes checkpointed (%s)", size, "readers held it" if busy else "emptied")

    # --- writes ------------------------------------------------------------------------------------
    def _tuple(self, row: Mapping[str, Any], now_ms: int) -> tuple[Any, ...]:
        missing = tuple(c for c in _REQUIRED if row.get(c) is None)
        if missing:
            msg = (f"window_stats rows need {list(_REQUIRED)}; a row lacks {list(missing)} "
                   f"(instance_id={row.get('instance_id')!r}). Pass rows from windows.finalize().")
            raise RowValidationError(msg, missing=missing)
        values: list[Any] = []
        for col in _INPUT_COLUMNS:
            value = row.get(col, _DEFAULTS.get(col))
            values.append(to_epoch_ms(value, name=col) if col in _TIME_COLUMNS else value)
        values.append(now_ms)
        return tuple(values)

    def upsert(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert or replace windows by ``(instance_id, window_start)``, in one transaction.

        Parameters
        ----------
        rows : iterable of Mapping
            Rows as :func:`workbench.analysis.windows.finalize` returns them (times as tz-aware
            datetimes or epoch ms). Unknown keys are ignored.

        Returns
        -------
        int
            Number of rows written.
        """
        now_ms = time.time_ns() // 1_000_000
        params = [self._tuple(r, now_ms) for r in rows]
        if not params:
            return 0
        # Key order: two writers of overlapping windows lock rows in the same order (no deadlock).
        params.sort(key=lambda p: (p[0], p[1]))
        if self._in_transaction():  # inside transaction(): part of the caller's atomic write
            self._transaction_view().executemany(self._upsert_sql, params)
            return len(params)
        for attempt in (1, 2):
            try:
                with self._write_transaction() as db:
                    cur = db.cursor()
                    try:
                        cur.executemany(self._upsert_sql, params)
                    finally:
                        cur.close()
                return len(params)
            except Exception:
                # A PostgreSQL session lost mid-transaction rolled it back: once more on a new session
                # (an UPSERT repeated writes the same rows). Anything else, or a second loss, is raised.
                if attempt == 2 or self.url is None or not self._db_broken():
                    raise
        return len(params)  # pragma: no cover - the loop returns or raises

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement outside a transaction and return its rows (none for a write).

        A PostgreSQL session found lost is replaced and the statement run once more (every
        statement run here is a read or a keyed upsert, so running it twice changes nothing).
        """
        for attempt in (1, 2):
            try:
                cur = self._db.execute(sql, params)
                return cur.fetchall() if cur.description is not None else []
            except Exception:
                if attempt == 2 or self.url is None or not self._db_broken():
                    raise
        return []  # pragma: no cover - the loop returns or raises

    def _db_broken(self) -> bool:
        return self._con is not None and bool(getattr(self._con, "broken", False))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One write transaction: :meth:`upsert`, :meth:`record_late` and the statements run on the
        yielded :class:`Transaction` inside it commit together, or not at all (the stream-analytics app
        stores its consumed offsets and window state with the windows this way).

        Statements are written once, in SQLite's dialect (``?`` placeholders); on PostgreSQL they are
        translated, and the transactions of all processes take turns on one advisory lock, so a
        read-check-write inside one (e.g. a stored offset compared before it is replaced) is as
        serial as SQLite's ``BEGIN IMMEDIATE`` makes it.
        """
        with self._write_transaction() as db:
            if self.url is not None:
                db.execute("SELECT pg_advisory_xact_lock(%s)", (_postgres.lock_key("window_stats.transaction"),))
            yield self._transaction_view()

    def _transaction_view(self) -> Transaction:
        return Transaction(self._db, self.dialect)

    def _in_transaction(self) -> bool:
        con = self._con
        if con is None:
            return False
        if self.url is None:
            return bool(con.in_transaction)
        import psycopg

        return con.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def record_late(self, instance_id: int, window_start: datetime | int, count: int = 1, *,
                    source: tuple[str, int, int] | None = None) -> None:
        """Record ``count`` late (dropped) events of one window from one source message.

        ``source`` is the ``(topic, partition, offset)`` of the late message: recording the same
        message again (re-processed after a crash) replaces its count, so counts never double.
        Without a source every call adds (each gets a key of its own).
        """
        start = to_epoch_ms(window_start, name="window_start")
        now_ns = time.time_ns()
        topic, partition, offset = source if source is not None else ("(unkeyed)", -1, now_ns)
        self._fetch(self._late_sql, (str(topic), int(partition), int(offset), int(instance_id), start, int(count),
                                 now_ns // 1_000_000))

    def record_late_messages(self, topic: str, partition: int, counts: Mapping[tuple[int, int, int], int]) -> None:
        """:meth:`record_late` for many messages of ``topic[partition]`` in one statement; ``counts`` maps
        ``(offset, instance_id, window start ms)`` to late rows. Call it inside :meth:`transaction`
        (a Reset of a log of one-row messages recorded 400 k rows one statement each)."""
        now_ms = time.time_ns() // 1_000_000
        cur = self._db.cursor()  # the statement is in the store's dialect already
        try:
            cur.executemany(self._late_sql, [
                (str(topic), int(partition), int(offset), int(instance), int(start), int(count), now_ms)
                for (offset, instance, start), count in counts.items()])
        finally:
            cur.close()

    def merge_late_sources(self, topic: str, partition: int, below_offset: int) -> None:
        """Fold the late counts recorded for messages of ``topic[partition]`` below ``below_offset`` into
        one row per window (:data:`MERGED_LATE_SOURCE`).

        Call it in the transaction that stores the consumer's next offset ``below_offset``: a message
        below it is never processed again, so its own key no longer guards against counting it twice.
        Every Reset of a replay adds a row per re-sent message otherwise (930 k rows after 85 passes of
        one log, summed by every status read)."""
        params = (str(topic), int(partition), int(below_offset))
        for sql in self._merge_late_sql:  # not _fetch: an addition must not be run again on another session
            self._db.execute(sql, params)

    def late_event_total(self) -> int:
        """All late events recorded (the sum of :meth:`late_events`, counted in the database)."""
        # CAST: PostgreSQL's sum of BIGINT is NUMERIC (a Decimal in Python).
        return int(self._fetch("SELECT CAST(coalesce(sum(late_count), 0) AS BIGINT) FROM late_event_sources")[0][0])

    # --- reads -------------------------------------------------------------------------------------
    def read(self, start: datetime | int | None = None, end: datetime | int | None = None,
             instances: Sequence[int] | None = None) -> pa.Table:
        """Windows with ``start <= window_start < end`` (bounds optional), ordered by time then instance.

        Returns
        -------
        pyarrow.Table
            With :data:`WINDOW_STATS_SCHEMA` (times as ``timestamp[ms, tz=UTC]``).
        """
        lo, hi = to_epoch_ms(start, name="start"), to_epoch_ms(end, name="end")
        ids = None if instances is None else [int(i) for i in instances]
        sql, params = _select(self.dialect, lo, hi, ids, self._select_list)
        return _to_table(self._fetch(sql, params))

    def late_events(self) -> pa.Table:
        """All late-event counters (``instance_id, window_start, late_count, last_seen_at``)."""
        # CAST: PostgreSQL's sum of BIGINT is NUMERIC (a Decimal in Python).
        rows = self._fetch("SELECT instance_id, window_start, CAST(sum(late_count) AS BIGINT), max(last_seen_at) "
                           "FROM late_event_sources GROUP BY instance_id, window_start "
                           "ORDER BY window_start, instance_id")
        cols = list(zip(*rows, strict=False)) or [(), (), (), ()]
        return pa.table({"instance_id": pa.array(cols[0], pa.int64()),
                         "window_start": pa.array(cols[1], pa.int64()).cast(_TS),
                         "late_count": pa.array(cols[2], pa.int64()),
                         "last_seen_at": pa.array(cols[3], pa.int64()).cast(_TS)})

    def completed_queries_per_day(self) -> dict[date, int]:
        """The queries not aborted counted per UTC day of their windows' start (not archived; late events aside)."""
        # CAST: PostgreSQL's sum of BIGINT is NUMERIC (a Decimal in Python).
        rows = self._fetch("SELECT window_start / 86400000, CAST(coalesce(sum(coalesce(total_queries, 0) "
                           "- coalesce(aborted_queries, 0)), 0) AS BIGINT) FROM window_stats "
                           "GROUP BY window_start / 86400000")
        epoch = date(1970, 1, 1)
        return {epoch + timedelta(days=int(day)): int(n) for day, n in rows}

    def instance_ids(self) -> list[int]:
        """The instances with windows stored (not archived), sorted."""
        return [int(r[0]) for r in self._fetch("SELECT DISTINCT instance_id FROM window_stats ORDER BY 1")]

    def count(self) -> int:
        """Number of windows stored (not archived)."""
        return int(self._fetch("SELECT count(*) FROM window_stats")[0][0])

    def newest_window_end(self, instances: Sequence[int] | None = None) -> datetime | None:
        """The latest ``window_end`` stored (the data's "now"; of ``instances`` when given), or ``None`` when
        there is none."""
        clause, params = _where(self.dialect, None, None, None if instances is None else [int(i) for i in instances])
        value = self._fetch(f"SELECT max(window_end) FROM window_stats{clause}", params)[0][0]
        return None if value is None else datetime.fromtimestamp(value / 1000, tz=UTC)

    def newest_window_start(self) -> datetime | None:
        """The latest ``window_start`` stored (data time, not wall time), or ``None`` when empty."""
        value = self._fetch("SELECT max(window_start) FROM window_stats")[0][0]
        return None if value is None else datetime.fromtimestamp(value / 1000, tz=UTC)

    def newest_write_ms(self) -> int:
        """The latest ``updated_at`` stored (epoch ms, the writer's clock), 0 when empty."""
        value = self._fetch("SELECT max(updated_at) FROM window_stats")[0][0]
        return 0 if value is None else int(value)

    def written_since(self, after_ms: int) -> list[tuple[int, int, int]]:
        """``(instance_id, window_start, updated_at)`` (epoch ms) of every window written after
        ``after_ms`` (the writer's clock), oldest window first: what changed since a reader last looked."""
        rows = self._fetch(f"SELECT instance_id, window_start, updated_at FROM window_stats WHERE updated_at > "
                           f"{self.dialect.param} ORDER BY window_start, instance_id", [int(after_ms)])
        return [(int(i), int(s), int(u)) for i, s, u in rows]

    def earliest_open_windows(self) -> dict[int, int]:
        """Per instance, the start (epoch ms) of its earliest window the analytics app holds open (its
        state table ``analytics_open_windows``, every group and partition); empty before the app ran.

        An instance's windows before that one are closed for good (its window clock only moves forward),
        so a reader can tell final windows from provisional ones without guessing from the newest row.
        """
        if not self.table_columns("analytics_open_windows"):
            return {}
        rows = self._fetch("SELECT instance_id, min(window_start_ms) FROM analytics_open_windows GROUP BY instance_id")
        return {int(instance): int(start) for instance, start in rows}

    def log_ends(self) -> dict[int, int]:
        """Per instance, the time (epoch ms) of the newest end-of-log marker its partition delivered to the
        analytics app (the log's rows up to it are all counted, its windows up to it closed); empty before
        any marker or before the app ran."""
        if not self.table_columns("analytics_instance_owner") or "ended_ms" not in self.table_columns(
                "analytics_progress"):
            return {}
        rows = self._fetch(
            "SELECT o.instance_id, max(p.ended_ms) FROM analytics_instance_owner o JOIN analytics_progress p "
            "ON p.consumer_group = o.consumer_group AND p.topic = o.topic AND p.partition = o.partition "
            "WHERE p.ended_ms IS NOT NULL GROUP BY o.instance_id")
        return {int(instance): int(end) for instance, end in rows}

    def table_columns(self, table: str) -> set[str]:
        """The column names of ``table`` in this store's database (empty when there is no such table: the
        analytics app's state tables exist only once it ran). Runs on the store's connection, so inside
        a :meth:`transaction` too."""
        if self.url is None:
            return {str(r[1]) for r in self._fetch(f"PRAGMA table_info({table})")}
        return {str(r[0]) for r in self._fetch("SELECT column_name FROM information_schema.columns "
                                               "WHERE table_schema = current_schema() AND table_name = %s", (table,))}

    # --- runtime residuals per window (the scoring app) ---------------------------------------------
    def insert_residuals(self, windows: Any) -> int:
        """Store residual windows that are not stored yet (insert-if-absent on ``(instance_id, window_start)``).

        Parameters
        ----------
        windows : DataFrame
            ``instance_id``, ``window_start`` (tz-aware), ``residual_queries``, ``median_log_residual``
            and ``beyond_tolerance_queries`` (:func:`workbench.analysis.residual_windows.residual_windows`;
            without the last, stored as NULL).

        Returns
        -------
        int
            Rows inserted (windows already stored are left as they are).
        """
        import pandas as pd

        if windows is None or not len(windows):
            return 0
        now_ms = time.time_ns() // 1_000_000
        starts = pd.DatetimeIndex(pd.to_datetime(windows["window_start"], utc=True)).as_unit("ms").asi8
        medians = pd.to_numeric(windows["median_log_residual"], errors="coerce")
        beyond = (pd.to_numeric(windows["beyond_tolerance_queries"], errors="coerce")
                  if "beyond_tolerance_queries" in windows else pd.Series(float("nan"), index=windows.index))
        params = sorted((int(i), int(t), int(n), None if pd.isna(m) else float(m), now_ms,
                         None if pd.isna(b) else int(b))
                        for i, t, n, m, b in zip(windows["instance_id"], starts, windows["residual_queries"], medians,
                                                 beyond, strict=True))
        q = self.dialect.param
        sql = (f"INSERT INTO window_residuals ({', '.join(_RESIDUAL_COLUMNS)}) VALUES "
               f"({', '.join(q for _ in _RESIDUAL_COLUMNS)}) ON CONFLICT (instance_id, window_start) DO NOTHING")
        for attempt in (1, 2):
            try:
                with self._write_transaction() as db:
                    cur = db.cursor()
                    try:
                        inserted = 0
                        for row in params:  # one by one: rowcount of an executemany is not portable
                            cur.execute(sql, row)
                            inserted += max(cur.rowcount, 0)
                    finally:
                        cur.close()
                return inserted
            except Exception:
                # a PostgreSQL session lost mid-transaction rolled it back: once more (keyed, so idempotent)
                if attempt == 2 or self.url is None or not self._db_broken():
                    raise
        return 0  # pragma: no cover - the loop returns or raises

    def read_residuals(self, start: datetime | int | None = None, end: datetime | int | None = None,
                       instances: Sequence[int] | None = None) -> pa.Table:
        """Residual windows with ``start <= window_start < end`` (:data:`WINDOW_RESIDUALS_SCHEMA`;
        empty for a read-only database written before the table existed)."""
        if self.url is None and self.read_only and not self._fetch(
                "SELECT 1 FROM sqlite_master WHERE name = 'window_residuals'"):
            return WINDOW_RESIDUALS_SCHEMA.empty_table()
        lo, hi = to_epoch_ms(start, name="start"), to_epoch_ms(end, name="end")
        ids = None if instances is None else [int(i) for i in instances]
        sql, params = _select(self.dialect, lo, hi, ids, self._residual_list)
        rows = self._fetch(sql.replace("FROM window_stats", "FROM window_residuals"), params)
        columns = list(zip(*rows, strict=False)) if rows else [() for _ in _RESIDUAL_COLUMNS]
        return pa.Table.from_arrays(
            [pa.array(v, pa.int64()).cast(_TS) if f.type == _TS else pa.array(v, f.type)
             for f, v in zip(WINDOW_RESIDUALS_SCHEMA, columns, strict=True)], schema=WINDOW_RESIDUALS_SCHEMA)

    def newest_residual_window(self) -> datetime | None:
        """The latest ``window_start`` in ``window_residuals``, or ``None`` when empty."""
        value = self._fetch("SELECT max(window_start) FROM window_residuals")[0][0]
        return None if value is None else datetime.fromtimestamp(value / 1000, tz=UTC)

    # --- retention ---------------------------------------------------------------------------------
    def archive_older_than(self, days: float, archive_dir: str | os.PathLike[str] | None = None) -> ArchiveResult:
        """Move windows older than ``newest window_start - days`` into daily Parquet files.

        The cut-off is data time (the newest window), never the wall clock, so replaying an old log
        does not archive it as soon as it arrives. Safe to run repeatedly and after a crash (see the
        module docstring).

        Parameters
        ----------
        days : float
            Retention in days (positive).
        archive_dir : path, optional
            Overrides the store's ``archive_dir``.

        Returns
        -------
        ArchiveResult
        """
        if not days > 0:
            msg = f"days must be a positive number of days to keep. Got {days!r} instead."
            raise StoreError(msg)
        target = Path(archive_dir) if archive_dir is not None else self.archive_dir
        if target is None:
            msg = ("archive_older_than needs an archive folder: pass archive_dir= here or to the "
                   "WindowStatsStore constructor (settings.archive_dir).")
            raise StoreError(msg)
        # Blocks other writers until the rows are gone: nothing slips between the read and the delete.
        q = self.dialect.param
        with self._write_transaction(exclusive=True) as db:
            newest = db.execute("SELECT max(window_start) FROM window_stats").fetchone()[0]
            if newest is None:
                return ArchiveResult(None, 0, ())
            cutoff = int(newest - days * _DAY_MS)
            rows = db.execute(
                f"SELECT {self._select_list} FROM window_stats WHERE window_start < {q} "
                "ORDER BY window_start, instance_id", (cutoff,)).fetchall()
            files: list[Path] = []
            if rows:
                table = _to_table(rows)
                day = pc.floor_temporal(table["window_start"], unit="day")
                for value in pc.unique(day).to_pylist():
                    part = table.filter(pc.equal(day, pa.scalar(value, _TS)))
                    files.append(_merge_into_day_file(target, value, part))
                db.execute(f"DELETE FROM window_stats WHERE window_start < {q}", (cutoff,))
                db.execute(f"DELETE FROM late_event_sources WHERE window_start < {q}", (cutoff,))
                db.execute(f"DELETE FROM window_residuals WHERE window_start < {q}", (cutoff,))
                if self.table_columns("analytics_closed_windows"):  # the analytics app's partials of them
                    db.execute(f"DELETE FROM analytics_closed_windows WHERE window_start_ms < {q}", (cutoff,))
        cut_dt = datetime.fromtimestamp(cutoff / 1000, tz=UTC)
        logger.info("archived windows rows=%d files=%d cutoff=%s", len(rows), len(files), cut_dt.isoformat())
        return ArchiveResult(cut_dt, len(rows), tuple(files))


def _to_table(rows: list[tuple[Any, ...]]) -> pa.Table:
    columns = list(zip(*rows, strict=False)) if rows else [() for _ in WINDOW_STATS_COLUMNS]
    arrays = []
    for field, values in zip(WINDOW_STATS_SCHEMA, columns, strict=True):
        if field.type == _TS:
            arrays.append(pa.array(values, pa.int64()).cast(_TS))
        else:
            arrays.append(pa.array(values, field.type))
    return pa.Table.from_arrays(arrays, schema=WINDOW_STATS_SCHEMA)


def _merge_into_day_file(folder: Path, day: datetime, part: pa.Table) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"window_stats_{day:%Y-%m-%d}.parquet"
    table = part
    if path.exists():
        old = pq.read_table(path, schema=WINDOW_STATS_SCHEMA)
        # New rows win over archived ones with the same key (a window re-emitted after archiving).
        new_keys = pa.table({"instance_id": part["instance_id"], "window_start": part["window_start"],
                             "_new": pa.array([True] * part.num_rows)})
        kept = old.join(new_keys, ["instance_id", "window_start"], join_type="left outer")
        kept = kept.filter(pc.is_null(kept["_new"])).drop_columns(["_new"]).select(WINDOW_STATS_COLUMNS)
        table = pa.concat_tables([kept.cast(WINDOW_STATS_SCHEMA), part]).sort_by(
            [("window_start", "ascending"), ("instance_id", "ascending")])
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path
