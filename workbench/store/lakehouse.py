"""DuckLake anomaly lakehouse: a SQLite catalog plus Parquet files, written offline and idempotently.

Layout under ``root`` (``settings.lakehouse_dir``): ``catalog.sqlite`` and ``data/``.

Decisions
---------
* The ``ducklake`` and ``sqlite_scanner`` extensions are LOADed from the files shipped by the PyPI
  packages ``duckdb-extension-ducklake`` and ``duckdb-extension-sqlite-scanner``; auto-install and
  auto-load are switched off, so nothing is ever fetched from the internet.
* The SQLite catalog runs in WAL mode (set once by the writer), so readers in other processes never
  block commits and vice versa.
* Every connection runs with ``TimeZone = 'UTC'``; times are ``TIMESTAMPTZ``.
* Ids are ``BIGINT`` (Redset ids can exceed int32). ``features`` is JSON **text** (``VARCHAR``): the
  feature set changes with the model version, and a struct column would force a schema change per
  model. Query it with ``features::JSON`` or ``json_extract``.
* Idempotency on ``(instance_id, query_id, model_version)``: DuckLake has no primary keys, so each
  batch is de-duplicated in itself and inserted with an anti-join (``INSERT ... WHERE NOT EXISTS``) in
  one statement, i.e. one transaction and one snapshot. ``MERGE INTO`` works too, but the anti-join
  also filters the target on the batch's ``arrival_timestamp`` range (constants), which lets DuckLake
  skip files by their min/max statistics instead of scanning the whole table every batch. A
  re-delivered row has the same arrival time, so the filter never misses a duplicate. This assumes
  one writer per lakehouse (the sink); concurrent readers are fine.
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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from workbench.store._base import ConnectionStore
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
    "connect",
    "extension_paths",
    "sql_literal",
]

logger = logging.getLogger(__name__)

CATALOG_ALIAS: Final = "lake"
CATALOG_FILE: Final = "catalog.sqlite"
DATA_DIR: Final = "data"
_TSZ = pa.timestamp("us", tz="UTC")

#: Columns of ``lake.anomalies`` (``inserted_at`` is set by the writer).
ANOMALY_SCHEMA: Final = pa.schema([
    pa.field("instance_id", pa.int64(), nullable=False),
    pa.field("query_id", pa.int64(), nullable=False),
    pa.field("model_version", pa.string(), nullable=False),
    pa.field("arrival_timestamp", _TSZ, nullable=False),
    pa.field("user_id", pa.int64()),
    pa.field("database_id", pa.int64()),
    pa.field("query_type", pa.string()),
    pa.field("cluster_size", pa.int64()),
    pa.field("true_ms", pa.float64()),  # actual execution_duration_ms
    pa.field("pred_ms", pa.float64()),  # prediction used for the decision
    pa.field("pred_mean_ms", pa.float64()),
    pa.field("pred_q_ms", pa.float64()),
    pa.field("excess_ms", pa.float64()),  # true - pred (positive = slower than expected)
    pa.field("under_ratio", pa.float64()),  # true / max(pred, 1)
    pa.field("expected_ms", pa.float64()),  # the fingerprint's (or instance's) typical runtime
    pa.field("score", pa.float64()),
    pa.field("reason", pa.string()),
    pa.field("features", pa.string()),  # JSON text
    pa.field("inserted_at", _TSZ, nullable=False),
])
#: Key and columns of ``lake.window_anomalies`` (collective anomalies, :mod:`workbench.analysis.collective`).
WINDOW_ANOMALY_KEY: Final[tuple[str, ...]] = ("instance_id", "window_start", "signal")
_WINDOW_FIELDS: Final = (
    pa.field("instance_id", pa.int64()), pa.field("window_start", _TSZ), pa.field("signal", pa.string()),
    pa.field("expected", pa.float64()), pa.field("observed", pa.float64()), pa.field("score", pa.float64()),
    pa.field("reason", pa.string()), pa.field("inserted_at", _TSZ),
)
_WINDOW_COLUMNS: Final = ("instance_id BIGINT, window_start TIMESTAMPTZ, signal VARCHAR, expected DOUBLE, "
                          "observed DOUBLE, score DOUBLE, reason VARCHAR, inserted_at TIMESTAMPTZ")
#: The idempotency key.
ANOMALY_KEY: Final[tuple[str, ...]] = ("instance_id", "query_id", "model_version")
_REQUIRED: Final = (*ANOMALY_KEY, "arrival_timestamp")
_INPUT_FIELDS: Final = tuple(f for f in ANOMALY_SCHEMA if f.name != "inserted_at")
_DUCK_TYPES: Final = {pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.string(): "VARCHAR", _TSZ: "TIMESTAMPTZ"}
#: Attempts to create the tables when other writers hold the catalog (about 20 s in all).
_OPEN_ATTEMPTS = 15
_BUSY = re.compile(r"database is locked|database is busy|SQLITE_BUSY|conflict|could not commit", re.I)


def sql_literal(text: str) -> str:
    """Quote a string as a SQL literal (for the few statements that take no parameters: LOAD, ATTACH)."""
    return "'" + text.replace("'", "''") + "'"


def extension_paths() -> tuple[Path, Path]:
    """Paths of the shipped ``sqlite_scanner`` and ``ducklake`` extension files for this DuckDB.

    Raises
    ------
    ImportError
        If the extension packages are not installed (names the pip command).
    """
    version = f"v{duckdb.__version__}"
    paths = []
    for package, name in (("duckdb_extension_sqlite_scanner", "sqlite_scanner"), ("duckdb_extension_ducklake",
                                                                                  "ducklake")):
        try:
            root = importlib.resources.files(package)
        except ModuleNotFoundError as exc:
            dist = package.replace("_", "-")
            msg = (f"The DuckLake lakehouse needs the package {dist}=={duckdb.__version__}; it is not installed. "
                   f"Run: pip install {dist}=={duckdb.__version__}")
            raise ImportError(msg) from exc
        path = Path(str(root / "extensions" / version / f"{name}.duckdb_extension"))
        if not path.is_file():
            msg = (f"{path} does not exist: the installed {package} does not match duckdb {duckdb.__version__}. "
                   f"Install the matching version: pip install {package.replace('_', '-')}=={duckdb.__version__}")
            raise ImportError(msg)
        paths.append(path)
    return paths[0], paths[1]


def connect(root: str | os.PathLike[str], *, read_only: bool = False, alias: str = CATALOG_ALIAS,
            connection: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the lakehouse at ``root`` attached as ``alias``.

    Parameters
    ----------
    root : path
        Lakehouse folder (``catalog.sqlite`` and ``data/`` inside).
    read_only : bool
        Attach read-only (readers); the catalog must exist then.
    alias : str
        Catalog name in SQL (an identifier).
    connection : duckdb.DuckDBPyConnection, optional
        Attach into this connection instead of a new in-memory one.

    Raises
    ------
    LakehouseNotFoundError
        When ``read_only`` and no catalog exists yet.
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", alias):
        msg = f"alias must be a plain SQL identifier. Got {alias!r} instead."
        raise StoreError(msg)
    root = Path(root)
    catalog = root / CATALOG_FILE
    if read_only and not catalog.exists():
        msg = (f"No anomaly lakehouse at {root} ({CATALOG_FILE} missing). Start the anomaly sink first, "
               "or point settings.home at the workbench that has one.")
        raise LakehouseNotFoundError(msg)
    con = connection or duckdb.connect(config={"autoinstall_known_extensions": False,
                                                "autoload_known_extensions": False})
    sqlite_ext, ducklake_ext = extension_paths()
    con.execute(f"LOAD {sql_literal(str(sqlite_ext))}")
    con.execute(f"LOAD {sql_literal(str(ducklake_ext))}")
    con.execute("SET TimeZone = 'UTC'")
    data = root / DATA_DIR
    if not read_only:
        data.mkdir(parents=True, exist_ok=True)
        _prepare_catalog(catalog)
    options = "READ_ONLY" if read_only else f"DATA_PATH {sql_literal(str(data) + os.sep)}"
    try:
        con.execute(f"ATTACH {sql_literal('ducklake:sqlite:' + str(catalog))} AS {alias} ({options})")
    except duckdb.Error as exc:
        raise _translate(exc, "attach") from exc
    return con


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


class AnomalyLakehouse(ConnectionStore):
    """The ``anomalies`` DuckLake table: idempotent batch writes, reads, time travel, maintenance.

    Parameters
    ----------
    root : path
        Lakehouse folder (``settings.lakehouse_dir``).
    read_only : bool
        Open as a reader (never creates anything).

    Examples
    --------
    >>> with AnomalyLakehouse(tmp / "lake") as lake:  # doctest: +SKIP
    ...     lake.write(rows)
    """

    def __init__(self, root: str | os.PathLike[str], *, read_only: bool = False) -> None:
        self.root = Path(root)
        self.read_only = read_only
        self._con: duckdb.DuckDBPyConnection | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, read_only: bool = False) -> AnomalyLakehouse:
        """The lakehouse at ``settings.lakehouse_dir``."""
        return cls(settings.lakehouse_dir, read_only=read_only)

    def __repr__(self) -> str:
        return f"AnomalyLakehouse({str(self.root)!r})"

    def open(self) -> Self:
        """Connect, attach and (writers) create the table if needed."""
        if self._con is None:
            # Several writers start at once on a fresh lake (N sink and analytics processes): the
            # table creation of all but one conflicts or finds the catalog locked; retry, then it exists.
            # (The first ATTACH of a new catalog creates DuckLake's own tables: the same race.)
            for attempt in range(_OPEN_ATTEMPTS):
                last = attempt == _OPEN_ATTEMPTS - 1
                try:
                    con = connect(self.root, read_only=self.read_only)
                except LakehouseBusyError:
                    if last:
                        raise
                    time.sleep(min(0.2 * 1.5**attempt, 2.0))
                    continue
                if self.read_only:
                    break
                columns = ", ".join(f"{f.name} {_DUCK_TYPES[f.type]}" for f in ANOMALY_SCHEMA)
                try:
                    con.execute(f"CREATE TABLE IF NOT EXISTS {CATALOG_ALIAS}.anomalies ({columns})")
                    con.execute(f"CREATE TABLE IF NOT EXISTS {CATALOG_ALIAS}.window_anomalies ({_WINDOW_COLUMNS})")
                    break
                except duckdb.Error as exc:
                    con.close()
                    error = _translate(exc, "create table")
                    if not isinstance(error, LakehouseBusyError) or last:
                        raise error from exc
                    time.sleep(min(0.2 * 1.5**attempt, 2.0))
            self._con = con
        return self

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The open DuckDB connection (``lake`` attached)."""
        return self._open_connection()

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
            msg = f"AnomalyLakehouse({str(self.root)!r}) was opened read_only; open it with read_only=False to write."
            raise StoreError(msg)
        table = _to_arrow(rows)
        if table.num_rows == 0:
            return 0
        con = self.connection
        lo, hi = pc.min_max(table["arrival_timestamp"]).values()
        key_match = " AND ".join(f"t.{k} = s.{k}" for k in ANOMALY_KEY)
        cols = ", ".join(f.name for f in _INPUT_FIELDS)
        sql = (
            f"INSERT INTO {CATALOG_ALIAS}.anomalies ({cols}, inserted_at) "
            f"SELECT {cols}, now() FROM ("
            f"  SELECT * FROM _wb_batch QUALIFY row_number() OVER (PARTITION BY {', '.join(ANOMALY_KEY)}) = 1"
            f") s WHERE NOT EXISTS ("
            f"  SELECT 1 FROM {CATALOG_ALIAS}.anomalies t"
            f"  WHERE t.arrival_timestamp BETWEEN $lo AND $hi AND {key_match})"
        )
        con.register("_wb_batch", table)
        try:
            inserted = con.execute(sql, {"lo": lo.as_py(), "hi": hi.as_py()}).fetchone()
        except duckdb.Error as exc:
            _rollback(con)
            raise _translate(exc, "write") from exc
        finally:
            con.unregister("_wb_batch")
        count = int(inserted[0]) if inserted else 0
        logger.debug("lakehouse write rows=%d inserted=%d", table.num_rows, count)
        return count

    def write_window_anomalies(self, rows: pa.Table) -> int:
        """Insert flagged windows not stored yet (key ``(instance_id, window_start, signal)``).

        ``rows`` follow :data:`workbench.analysis.collective.WINDOW_ANOMALY_SCHEMA`; one snapshot;
        re-delivered rows are skipped, so the collective step may run over the same windows again.
        """
        if self.read_only:
            msg = f"AnomalyLakehouse({str(self.root)!r}) was opened read_only; open it with read_only=False to write."
            raise StoreError(msg)
        if rows.num_rows == 0:
            return 0
        con = self.connection
        cols = ", ".join((*WINDOW_ANOMALY_KEY, "expected", "observed", "score", "reason"))
        sql = (
            f"INSERT INTO {CATALOG_ALIAS}.window_anomalies ({cols}, inserted_at) "
            f"SELECT {cols}, now() FROM ("
            f"  SELECT * FROM _wb_windows QUALIFY row_number() OVER (PARTITION BY {', '.join(WINDOW_ANOMALY_KEY)}) = 1"
            f") s WHERE NOT EXISTS (SELECT 1 FROM {CATALOG_ALIAS}.window_anomalies t WHERE "
            + " AND ".join(f"t.{k} = s.{k}" for k in WINDOW_ANOMALY_KEY) + ")"
        )
        con.register("_wb_windows", rows)
        try:
            inserted = con.execute(sql).fetchone()
        except duckdb.Error as exc:
            _rollback(con)
            raise _translate(exc, "write window anomalies") from exc
        finally:
            con.unregister("_wb_windows")
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
            raise _translate(exc, "maintenance") from exc
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
