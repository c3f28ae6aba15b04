"""The Redset query-log schema (Redshift query metadata) as the workbench reads and writes it.

Redset publishes 24 columns per query. ``arrival_timestamp`` is UTC (Redset's own files store it
without a zone; the workbench writes it as ``timestamp[us, tz=UTC]`` and accepts both).
Table-id lists are comma-separated strings, sizes are MB, durations ms.

Generated logs may carry two label columns (:data:`LABEL_COLUMNS`) that say which rows were
injected anomalies. They are for evaluation only: the replay never sends them and no model
uses them as features.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from workbench.data.exceptions import DataValidationError

__all__ = [
    "COLUMNS",
    "LABEL_COLUMNS",
    "LABEL_SCHEMA",
    "REDSET_SCHEMA",
    "SCHEMA_VERSION",
    "LogSummary",
    "batches_by_row_group",
    "read_batches",
    "validate",
]

logger = logging.getLogger(__name__)

#: Bumped whenever a message's column set or types change; travels in every message header.
SCHEMA_VERSION = "redset/1"

TIMESTAMP = pa.timestamp("us", tz="UTC")

REDSET_SCHEMA = pa.schema(
    [
        pa.field("instance_id", pa.int64(), nullable=False),
        pa.field("cluster_size", pa.int64()),  # NULL for serverless instances
        pa.field("user_id", pa.int64()),
        pa.field("database_id", pa.int64()),
        pa.field("query_id", pa.int64(), nullable=False),
        pa.field("arrival_timestamp", TIMESTAMP, nullable=False),
        pa.field("compile_duration_ms", pa.int64()),
        pa.field("queue_duration_ms", pa.int64()),
        pa.field("execution_duration_ms", pa.int64()),
        pa.field("feature_fingerprint", pa.string()),  # NULL for result-cache hits
        pa.field("was_aborted", pa.bool_()),
        pa.field("was_cached", pa.bool_()),
        pa.field("cache_source_query_id", pa.int64()),
        pa.field("query_type", pa.string()),
        pa.field("num_permanent_tables_accessed", pa.int64()),
        pa.field("num_external_tables_accessed", pa.int64()),
        pa.field("num_system_tables_accessed", pa.int64()),
        pa.field("read_table_ids", pa.string()),  # comma-separated table ids
        pa.field("write_table_ids", pa.string()),
        pa.field("mbytes_scanned", pa.int64()),
        pa.field("mbytes_spilled", pa.int64()),
        pa.field("num_joins", pa.int64()),
        pa.field("num_scans", pa.int64()),
        pa.field("num_aggregations", pa.int64()),
    ],
    metadata={"schema_version": SCHEMA_VERSION},
)

COLUMNS: tuple[str, ...] = tuple(REDSET_SCHEMA.names)

LABEL_SCHEMA = pa.schema(
    [
        pa.field("label_anomaly", pa.bool_(), nullable=False),
        pa.field("label_kind", pa.string()),  # NULL when label_anomaly is false
    ]
)

LABEL_COLUMNS: tuple[str, ...] = tuple(LABEL_SCHEMA.names)


#: Columns that define the stream order of a query log.
SORT_KEY: tuple[str, str] = ("arrival_timestamp", "query_id")


@dataclass(frozen=True)
class LogSummary:
    """What :func:`validate` found in a valid query log."""

    path: Path
    rows: int
    row_groups: int
    first_arrival: dt.datetime
    last_arrival: dt.datetime
    has_labels: bool

    def __str__(self) -> str:
        labels = ", with anomaly labels" if self.has_labels else ""
        return (
            f"{self.path}: {self.rows:,} queries in {self.row_groups} row groups, "
            f"{self.first_arrival:%Y-%m-%d %H:%M:%S} .. {self.last_arrival:%Y-%m-%d %H:%M:%S} UTC{labels}"
        )


_SQL_TYPES = {"integer": "BIGINT", "string": "VARCHAR", "timestamp": "TIMESTAMP", "boolean": "BOOLEAN"}


def _type_family(type_: pa.DataType) -> str:
    """A coarse type family: the workbench accepts any member where the schema names one."""
    if pa.types.is_dictionary(type_):
        return _type_family(type_.value_type)
    if pa.types.is_integer(type_):
        return "integer"
    if pa.types.is_timestamp(type_):
        return "timestamp"
    if pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_string_view(type_):
        return "string"
    if pa.types.is_boolean(type_):
        return "boolean"
    if pa.types.is_null(type_):
        return "null"
    return str(type_)


def _open(path: Path) -> pq.ParquetFile:
    if not path.exists():
        msg = f"Query log {str(path)!r} does not exist. Check the path, or create one with `workbench generate`."
        raise DataValidationError(msg, path=str(path))
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        msg = (
            f"Query log {str(path)!r} is not a readable Parquet file ({exc}). "
            "Pass a Parquet file with the Redset columns, e.g. one written by `workbench generate`."
        )
        raise DataValidationError(msg, path=str(path)) from exc


def _check_schema(schema: pa.Schema, path: Path, *, required: Sequence[str] = COLUMNS) -> bool:
    """Raise on missing or mistyped columns; return whether the label columns are present."""
    expected = {f.name: f.type for f in list(REDSET_SCHEMA) + list(LABEL_SCHEMA)}
    names = set(schema.names)
    missing = [name for name in required if name not in names]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        msg = (
            f"Query log {str(path)!r} lacks {len(missing)} of the {len(required)} required Redset "
            f"column(s): {shown}. Add them (NULL is fine for nullable columns) or regenerate the file."
        )
        raise DataValidationError(msg, path=str(path), column=missing[0])
    has_labels = all(name in names for name in LABEL_COLUMNS)
    for name in [*required, *(LABEL_COLUMNS if has_labels else ())]:
        want, got = expected[name], schema.field(name).type
        family = _type_family(got)
        all_null_ok = family == "null" and name in REDSET_SCHEMA.names and REDSET_SCHEMA.field(name).nullable
        if family != _type_family(want) and not all_null_ok:
            sql_type = _SQL_TYPES.get(_type_family(want), str(want))
            msg = (
                f"Column {name!r} of query log {str(path)!r} must be {_type_family(want)} ({want}). "
                f"Got {got} instead. Convert it, e.g. with CAST({name} AS {sql_type}) in DuckDB."
            )
            raise DataValidationError(msg, path=str(path), column=name)
    return has_labels


def _as_us(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Timestamps as int64 microseconds since the epoch (naive values are UTC)."""
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    return values.cast(pa.timestamp("us", tz=values.type.tz)).cast(pa.int64()).to_numpy(zero_copy_only=False)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# What a Python datetime can hold, hence what every consumer can decode.
_MIN_US = (dt.datetime(1, 1, 1, tzinfo=dt.UTC) - _EPOCH) // dt.timedelta(microseconds=1)
_MAX_US = (dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC) - _EPOCH) // dt.timedelta(microseconds=1)


def _stamp(us: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)


def batches_by_row_group(pf: pq.ParquetFile, *, columns: Sequence[str], batch_size: int,
                         row_groups: Sequence[int] | None = None,
                         use_threads: bool = True) -> Iterator[pa.RecordBatch]:
    """``pf.iter_batches`` one row group at a time, in file order.

    One reader over many row groups keeps memory it no longer needs (pyarrow 26: 67 MB of Arrow
    pool for 40 row groups against 13 MB read group by group), so peak memory grew with the file.
    """
    groups = range(pf.metadata.num_row_groups) if row_groups is None else row_groups
    for group in groups:
        yield from pf.iter_batches(batch_size=batch_size, row_groups=[group], columns=list(columns),
                                   use_threads=use_threads)


def validate(path: str | os.PathLike[str], *, batch_size: int = 262_144) -> LogSummary:
    """Check that a Parquet query log can be replayed: readable, non-empty, typed and sorted.

    Only the two sort-key columns are read, one batch at a time, so memory stays bounded
    whatever the file size.

    Parameters
    ----------
    path : str or PathLike
        The Parquet file.
    batch_size : int
        Rows per batch read while checking the order.

    Returns
    -------
    LogSummary
        Row and row-group counts, the arrival span and whether anomaly labels are present.

    Raises
    ------
    DataValidationError
        With ``path`` (and ``column``/``row`` where they apply) for an unreadable file, an empty
        file, missing or mistyped columns, NULL sort keys, or rows not sorted by
        ``(arrival_timestamp, query_id)``.
    """
    path = Path(path)
    pf = _open(path)
    has_labels = _check_schema(pf.schema_arrow, path)
    rows = pf.metadata.num_rows
    if rows == 0:
        msg = f"Query log {str(path)!r} has no rows. Regenerate it or point at a log with queries."
        raise DataValidationError(msg, path=str(path))
    offset = 0
    prev_ts: int | None = None
    prev_id: int | None = None
    first_ts = last_ts = 0
    for batch in batches_by_row_group(pf, columns=SORT_KEY, batch_size=batch_size):
        n = batch.num_rows
        if n == 0:
            continue
        for name in SORT_KEY:
            column = batch.column(name)
            if column.null_count:
                row = offset + int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
                msg = (f"Query log {str(path)!r} has a NULL {name} at row {row}. Every query needs "
                       f"{' and '.join(SORT_KEY)}; drop or fix such rows.")
                raise DataValidationError(msg, path=str(path), column=name, row=row)
        ts = _as_us(batch.column("arrival_timestamp"))
        out_of_range = (ts < _MIN_US) | (ts > _MAX_US)
        if out_of_range.any():
            row = offset + int(np.flatnonzero(out_of_range)[0])
            msg = (f"Query log {str(path)!r} has an arrival_timestamp outside years 1..9999 at row {row} "
                   f"({int(ts[row - offset])} µs since 1970). Fix or drop that row.")
            raise DataValidationError(msg, path=str(path), column="arrival_timestamp", row=row)
        qid = batch.column("query_id").cast(pa.int64()).to_numpy(zero_copy_only=False)
        if prev_ts is not None:
            ts = np.concatenate([[prev_ts], ts])
            qid = np.concatenate([[prev_id], qid])
        bad = (ts[1:] < ts[:-1]) | ((ts[1:] == ts[:-1]) & (qid[1:] < qid[:-1]))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            row = offset + i + (0 if prev_ts is not None else 1)
            msg = (
                f"Query log {str(path)!r} is not sorted by (arrival_timestamp, query_id): row {row} "
                f"(arrival {_stamp(int(ts[i + 1])):%Y-%m-%d %H:%M:%S.%f}, query_id {int(qid[i + 1])}) "
                f"comes after row {row - 1} (arrival {_stamp(int(ts[i])):%Y-%m-%d %H:%M:%S.%f}, "
                f"query_id {int(qid[i])}). Sort it, e.g. in DuckDB: COPY (SELECT * FROM 'in.parquet' "
                "ORDER BY arrival_timestamp, query_id) TO 'out.parquet'."
            )
            raise DataValidationError(msg, path=str(path), column="arrival_timestamp", row=row)
        if prev_ts is None:
            first_ts = int(ts[0])
        prev_ts, prev_id = int(ts[-1]), int(qid[-1])
        last_ts = prev_ts
        offset += n
    summary = LogSummary(
        path=path, rows=rows, row_groups=pf.metadata.num_row_groups,
        first_arrival=_stamp(first_ts), last_arrival=_stamp(last_ts), has_labels=has_labels,
    )
    logger.debug("validated path=\"%s\" rows=%d", path, rows)
    return summary


def read_batches(
    path: str | os.PathLike[str],
    *,
    columns: Sequence[str] | None = None,
    batch_size: int = 65_536,
    labels: bool = False,
) -> Iterator[pa.RecordBatch]:
    """Lazily read a query log as record batches cast to :data:`REDSET_SCHEMA` types.

    Parameters
    ----------
    path : str or PathLike
        The Parquet file (see :func:`validate`; the row order is not re-checked here).
    columns : sequence of str, optional
        Columns to read, in this order (default: all 24 Redset columns).
    batch_size : int
        Maximum rows per batch.
    labels : bool
        Append the label columns (:data:`LABEL_COLUMNS`); the file must have them.

    Yields
    ------
    pyarrow.RecordBatch
        Integers as int64, strings as string, ``arrival_timestamp`` as ``timestamp[us, tz=UTC]``
        (naive values are taken as UTC).
    """
    path = Path(path)
    wanted = list(COLUMNS if columns is None else columns)
    known = {f.name: f for f in list(REDSET_SCHEMA) + list(LABEL_SCHEMA)}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        msg = (f"read_batches() got unknown column(s) {', '.join(map(repr, unknown[:5]))}. "
               f"Choose from the Redset columns: {', '.join(COLUMNS)}.")
        raise DataValidationError(msg, path=str(path), column=unknown[0])
    if labels:
        wanted += [name for name in LABEL_COLUMNS if name not in wanted]
    return _iter_batches(path, wanted, batch_size, known)


def _iter_batches(path: Path, wanted: list[str], batch_size: int,
                  known: dict[str, pa.Field]) -> Iterator[pa.RecordBatch]:
    pf = _open(path)
    _check_schema(pf.schema_arrow, path, required=wanted)
    target = pa.schema([known[name] for name in wanted], metadata=REDSET_SCHEMA.metadata)
    for batch in batches_by_row_group(pf, columns=wanted, batch_size=batch_size):
        arrays = []
        for name, field in zip(wanted, target, strict=True):
            column = batch.column(name)
            if pa.types.is_dictionary(column.type):
                column = column.dictionary_decode()
            arrays.append(column if column.type == field.type else column.cast(field.type))
        yield pa.RecordBatch.from_arrays(arrays, schema=target)
