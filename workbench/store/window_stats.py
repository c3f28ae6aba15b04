"""SQLite store of the stream-analytics windows (``window_stats``), idempotent and with retention.

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
* Late events (arrived after their window closed) are stored per source message in
  ``late_event_sources``, keyed by ``(topic, partition, offset)`` of the late message plus the
  window: a message re-processed after a crash (at-least-once) replaces its own count instead of
  adding it again. The ``late_events`` view sums them per window.
* Retention (:meth:`WindowStatsStore.archive_older_than`) moves old windows into one Parquet file per
  UTC day, ``window_stats_<YYYY-MM-DD>.parquet``. Each file is rewritten atomically (temp file then
  ``os.replace``) as the union of what it held and the new rows, de-duplicated on the key, all inside
  one SQLite write transaction that deletes the archived rows. A crash between the Parquet write and
  the delete therefore leaves rows that the next run merges into the same file again: nothing is
  archived twice and nothing is lost.
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workbench._fs import atomic_path
from workbench.store._base import ConnectionStore
from workbench.store.exceptions import RowValidationError, StoreError, StoreNotFoundError

if TYPE_CHECKING:
    from workbench.config import Settings

__all__ = ["WINDOW_STATS_COLUMNS", "WINDOW_STATS_SCHEMA", "ArchiveResult", "WindowStatsStore", "to_epoch_ms"]

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
    pa.field("total_spilled_mb", pa.int64(), nullable=False),
    pa.field("total_queue_time_ms", pa.int64(), nullable=False),
    pa.field("total_exec_time_ms", pa.int64(), nullable=False),
    pa.field("p95_exec_time_ms", pa.float64()),
    pa.field("max_exec_time_ms", pa.int64()),
    pa.field("anomalies", pa.int64(), nullable=False),
    pa.field("first_arrival", _TS),
    pa.field("last_arrival", _TS),
    pa.field("updated_at", _TS, nullable=False),
])
WINDOW_STATS_COLUMNS: Final[tuple[str, ...]] = tuple(WINDOW_STATS_SCHEMA.names)
_TIME_COLUMNS: Final = frozenset({"window_start", "window_end", "first_arrival", "last_arrival", "updated_at"})
_REQUIRED: Final = ("instance_id", "window_start", "window_end", "total_queries")
_DEFAULTS: Final[dict[str, Any]] = {
    "cluster_size": None, "normal_queries": 0, "cpu_bound_queries": 0, "io_bound_queries": 0,
    "network_bound_queries": 0, "queue_wlm_bound_queries": 0, "total_spilled_mb": 0,
    "total_queue_time_ms": 0, "total_exec_time_ms": 0, "p95_exec_time_ms": None, "max_exec_time_ms": None,
    "anomalies": 0, "first_arrival": None, "last_arrival": None,
}
_INPUT_COLUMNS: Final = tuple(c for c in WINDOW_STATS_COLUMNS if c != "updated_at")

_SQL_TYPES: Final = {pa.int64(): "INTEGER", pa.float64(): "REAL", _TS: "INTEGER"}
_CREATE: Final = (
    "CREATE TABLE IF NOT EXISTS window_stats (\n"
    + ",\n".join(
        f"  {f.name} {_SQL_TYPES[f.type]}{'' if f.nullable else ' NOT NULL'}" for f in WINDOW_STATS_SCHEMA
    )
    + ",\n  PRIMARY KEY (instance_id, window_start)\n) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS window_stats_by_start ON window_stats (window_start)",
    "CREATE TABLE IF NOT EXISTS late_event_sources (\n  topic TEXT NOT NULL,\n  partition INTEGER NOT NULL,\n"
    "  offset INTEGER NOT NULL,\n  instance_id INTEGER NOT NULL,\n  window_start INTEGER NOT NULL,\n"
    "  late_count INTEGER NOT NULL,\n  last_seen_at INTEGER NOT NULL,\n"
    "  PRIMARY KEY (topic, partition, offset, instance_id, window_start)\n) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS late_event_sources_by_window ON late_event_sources (window_start, instance_id)",
)
#: Databases of earlier versions held additive counters in a ``late_events`` table: move them over.
_MIGRATE_LATE: Final = (
    "INSERT OR IGNORE INTO late_event_sources (topic, partition, offset, instance_id, window_start, late_count, "
    "last_seen_at) SELECT '(migrated)', -1, 0, instance_id, window_start, late_count, last_seen_at FROM late_events",
    "DROP TABLE late_events",
)
_LATE_VIEW: Final = (
    "CREATE VIEW IF NOT EXISTS late_events AS SELECT instance_id, window_start, sum(late_count) AS late_count, "
    "max(last_seen_at) AS last_seen_at FROM late_event_sources GROUP BY instance_id, window_start"
)
_UPSERT: Final = (
    f"INSERT INTO window_stats ({', '.join(WINDOW_STATS_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in WINDOW_STATS_COLUMNS)}) "
    "ON CONFLICT (instance_id, window_start) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in WINDOW_STATS_COLUMNS if c not in ("instance_id", "window_start"))
)
_LATE: Final = (
    "INSERT INTO late_event_sources (topic, partition, offset, instance_id, window_start, late_count, last_seen_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (topic, partition, offset, instance_id, window_start) DO UPDATE SET "
    "late_count = excluded.late_count, last_seen_at = excluded.last_seen_at"
)
_SELECT: Final = (
    f"SELECT {', '.join(WINDOW_STATS_COLUMNS)} FROM window_stats "
    "WHERE (? IS NULL OR window_start >= ?) AND (? IS NULL OR window_start < ?) "
    "AND (? IS NULL OR instance_id IN (SELECT value FROM json_each(?))) "
    "ORDER BY window_start, instance_id"
)


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


class WindowStatsStore(ConnectionStore):
    """The ``window_stats`` SQLite table: idempotent upserts, reads and Parquet archiving.

    Parameters
    ----------
    path : str or Path
        SQLite database file (created on :meth:`open`, with its parent folder).
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
        self.path = Path(path)
        self.read_only = read_only
        self.archive_dir = None if archive_dir is None else Path(archive_dir)
        self.busy_timeout_ms = busy_timeout_ms
        self._con: sqlite3.Connection | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, read_only: bool = False) -> WindowStatsStore:
        """A store at ``settings.sqlite_path`` archiving into ``settings.archive_dir``."""
        return cls(settings.sqlite_path, archive_dir=settings.archive_dir, read_only=read_only)

    # --- lifecycle ---------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"WindowStatsStore({str(self.path)!r})"

    def open(self) -> Self:
        """Connect, apply the pragmas and create the tables if needed."""
        if self._con is not None:
            return self
        if self.read_only:
            if not self.path.exists():
                msg = (f"No window stats database at {self.path}. Run the stream-analytics app first, or point "
                       "settings.home at the workbench that has one.")
                raise StoreNotFoundError(msg)
            con = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                  timeout=self.busy_timeout_ms / 1000, isolation_level=None)
            con.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            self._con = con
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread=False: Quix flushes sinks from a worker thread on a partition revoke (never
        # at the same time as the main thread, which waits for it).
        con = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None,
                              check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        con.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
        for statement in _CREATE:
            con.execute(statement)
        kind = con.execute("SELECT type FROM sqlite_master WHERE name = 'late_events'").fetchone()
        if kind and kind[0] == "table":
            con.execute("BEGIN IMMEDIATE")
            for statement in _MIGRATE_LATE:
                con.execute(statement)
            con.execute("COMMIT")
        con.execute(_LATE_VIEW)
        self._con = con
        logger.debug("window stats store opened path=%s", self.path)
        return self

    @property
    def _db(self) -> sqlite3.Connection:
        return self._open_connection()

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
        db = self._db
        if db.in_transaction:  # inside transaction(): part of the caller's atomic write
            db.executemany(_UPSERT, params)
            return len(params)
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(_UPSERT, params)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return len(params)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: :meth:`upsert`, :meth:`record_late` and the statements run on the
        yielded connection inside it commit together, or not at all (the stream-analytics app stores
        its consumed offsets and window state with the windows this way)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

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
        self._db.execute(_LATE, (str(topic), int(partition), int(offset), int(instance_id), start, int(count),
                                 now_ns // 1_000_000))

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
        inst = None if instances is None else json.dumps([int(i) for i in instances])
        cur = self._db.execute(_SELECT, (lo, lo, hi, hi, inst, inst))
        return _to_table(cur.fetchall())

    def late_events(self) -> pa.Table:
        """All late-event counters (``instance_id, window_start, late_count, last_seen_at``)."""
        cur = self._db.execute("SELECT instance_id, window_start, sum(late_count), max(last_seen_at) "
                               "FROM late_event_sources GROUP BY instance_id, window_start "
                               "ORDER BY window_start, instance_id")
        cols = list(zip(*cur.fetchall(), strict=False)) or [(), (), (), ()]
        return pa.table({"instance_id": pa.array(cols[0], pa.int64()),
                         "window_start": pa.array(cols[1], pa.int64()).cast(_TS),
                         "late_count": pa.array(cols[2], pa.int64()),
                         "last_seen_at": pa.array(cols[3], pa.int64()).cast(_TS)})

    def count(self) -> int:
        """Number of windows in SQLite."""
        return int(self._db.execute("SELECT count(*) FROM window_stats").fetchone()[0])

    def newest_window_end(self) -> datetime | None:
        """The latest ``window_end`` stored (the data's "now"), or ``None`` when empty."""
        value = self._db.execute("SELECT max(window_end) FROM window_stats").fetchone()[0]
        return None if value is None else datetime.fromtimestamp(value / 1000, tz=UTC)

    def newest_window_start(self) -> datetime | None:
        """The latest ``window_start`` stored (data time, not wall time), or ``None`` when empty."""
        value = self._db.execute("SELECT max(window_start) FROM window_stats").fetchone()[0]
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
        db = self._db
        db.execute("BEGIN IMMEDIATE")  # blocks other writers until the rows are gone: nothing slips between
        try:
            newest = db.execute("SELECT max(window_start) FROM window_stats").fetchone()[0]
            if newest is None:
                db.execute("COMMIT")
                return ArchiveResult(None, 0, ())
            cutoff = int(newest - days * _DAY_MS)
            rows = db.execute(
                f"SELECT {', '.join(WINDOW_STATS_COLUMNS)} FROM window_stats WHERE window_start < ? "
                "ORDER BY window_start, instance_id", (cutoff,)).fetchall()
            files: list[Path] = []
            if rows:
                table = _to_table(rows)
                day = pc.floor_temporal(table["window_start"], unit="day")
                for value in pc.unique(day).to_pylist():
                    part = table.filter(pc.equal(day, pa.scalar(value, _TS)))
                    files.append(_merge_into_day_file(target, value, part))
                db.execute("DELETE FROM window_stats WHERE window_start < ?", (cutoff,))
                db.execute("DELETE FROM late_event_sources WHERE window_start < ?", (cutoff,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
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
