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
import glob
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from workbench.data.exceptions import DataValidationError

__all__ = [
    "COLUMNS",
    "FALSE_WORDS",
    "FIELDS",
    "LABEL_COLUMNS",
    "LABEL_SCHEMA",
    "NON_NEGATIVE_COLUMNS",
    "READ_OPTIONS",
    "REDSET_SCHEMA",
    "SCHEMA_VERSION",
    "TRUE_WORDS",
    "VERIFY_PAGES",
    "LogSummary",
    "batches_by_row_group",
    "datetime_from_us",
    "kind_names",
    "label_words",
    "open_parquet",
    "query_type_key",
    "read_batches",
    "require_log",
    "type_fits",
    "validate",
]

logger = logging.getLogger(__name__)

#: Bumped whenever a message's column set or types change; travels in every message header.
SCHEMA_VERSION = "redset/1"

TIMESTAMP = pa.timestamp("us", tz="UTC")


def datetime_from_us(us: int | None) -> dt.datetime | None:
    """An event time in microseconds since the epoch (the unit of every event time) as a UTC datetime; None
    stays None."""
    return None if us is None else dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=int(us))

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

#: Text that other tools write for booleans (compared trimmed and lower-cased): what ``prepare``
#: converts, and what the evaluation accepts as labels.
TRUE_WORDS: tuple[str, ...] = ("t", "true", "1", "y", "yes")
FALSE_WORDS: tuple[str, ...] = ("f", "false", "0", "n", "no")


def query_type_key(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """``query_type`` as every reader compares it: trimmed and lower-cased (NULL stays NULL).

    Redset writes ``select``, ``copy``, ...; a log exported by another tool may write ``SELECT`` or
    pad it (``'select '``). The stored value is kept as the log has it; the model's categories, the
    query classes and the profile read this key, so such a log is not a log of unknown query types.
    """
    import pyarrow.compute as pc

    return pc.utf8_lower(pc.utf8_trim_whitespace(column.cast(pa.string())))


def label_words(text: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Label text as every reader of labels compares it with :data:`TRUE_WORDS` and :data:`FALSE_WORDS`:
    trimmed, lower-cased, NULL as "" (a normal row). Any string type (cast to ``string``: the text
    kernels have no string_view kernel)."""
    import pyarrow.compute as pc

    text = text.cast(pa.string())
    return pc.utf8_lower(pc.utf8_trim_whitespace(text.fill_null(""))).to_numpy(zero_copy_only=False)

#: Durations, sizes and counts: a negative value is a broken row, not a measurement (the log
#: validator reports it, the event contract dead-letters it).
NON_NEGATIVE_COLUMNS: tuple[str, ...] = (
    "cluster_size", "compile_duration_ms", "queue_duration_ms", "execution_duration_ms",
    "num_permanent_tables_accessed", "num_external_tables_accessed", "num_system_tables_accessed",
    "mbytes_scanned", "mbytes_spilled", "num_joins", "num_scans", "num_aggregations",
)

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
    if pa.types.is_floating(type_):
        return "float"
    if pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_string_view(type_):
        return "string"
    if pa.types.is_binary(type_) or pa.types.is_large_binary(type_) or pa.types.is_binary_view(type_):
        return "binary"
    if pa.types.is_boolean(type_):
        return "boolean"
    if pa.types.is_null(type_):
        return "null"
    return str(type_)


def require_log(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path; DataValidationError naming it when no query log (file or folder) is there."""
    path = Path(path)
    if not path.exists():
        if glob.has_magic(str(path)):  # quoted, so the shell did not expand it
            matched = len(glob.glob(str(path)))
            msg = (f"Query log {str(path)!r} is a pattern ({matched:,} files match): a log is one Parquet file or a "
                   "folder of them read in name order. Name the folder, or gather the files into a folder of one "
                   f"file per day with `workbench prepare '{path}' --out DIR --split day`.")
            raise DataValidationError(msg, path=str(path))
        msg = f"Query log {str(path)!r} does not exist. Check the path, or create one with `workbench generate`."
        raise DataValidationError(msg, path=str(path))
    return path


#: How every reader of a query log opens it. INT96 times (Spark's and Impala's legacy type) are read in
#: microseconds, the unit of every event time: read in nanoseconds (pyarrow's default) a time outside
#: 1677..2262 wraps around silently, and year 1500 read as 2084-07-20 23:34:33.709551616.
READ_OPTIONS: dict[str, str] = {"coerce_int96_timestamp_unit": "us"}


#: Pages written with a checksum (Spark's writer adds them; pyarrow's on request) are checked when read:
#: a flipped byte in a page otherwise decodes into other values (times decades away, wrong ids).
VERIFY_PAGES: dict[str, bool] = {"page_checksum_verification": True}


def open_parquet(path: str | os.PathLike[str], **options: object) -> pq.ParquetFile:
    """``pq.ParquetFile(path, **options)`` with :data:`READ_OPTIONS` and :data:`VERIFY_PAGES` (errors as
    pyarrow raises them)."""
    return pq.ParquetFile(path, **READ_OPTIONS, **VERIFY_PAGES, **options)


def _open(path: Path) -> pq.ParquetFile:
    require_log(path)
    try:
        return open_parquet(path)
    except (pa.ArrowException, OSError) as exc:
        msg = (
            f"Query log {str(path)!r} is not a readable Parquet file ({exc}). "
            "Pass a Parquet file with the Redset columns, e.g. one written by `workbench generate`."
        )
        raise DataValidationError(msg, path=str(path)) from exc


#: Stored types the workbench converts on reading: floats holding whole numbers (as pandas writes
#: integer columns with NULLs) and UTF-8 bytes. Row validation rejects the values that do not convert.
_COERCIBLE = {"integer": {"float"}, "string": {"binary"}}


#: Every Redset and label column by name: its type and nullability (the one map; readers and checks use it).
FIELDS: dict[str, pa.Field] = {f.name: f for f in list(REDSET_SCHEMA) + list(LABEL_SCHEMA)}


def type_fits(name: str, got: pa.DataType, *, stored: bool = True) -> bool:
    """Whether values of type ``got`` can stand for the Redset or label column ``name`` (the one rule).

    Its own type family always fits: any integer width, signed or not, for an integer column;
    string, large string, string view or a dictionary of them for text; a timestamp of any unit and
    zone for a time; bool for bool. A stored file (``stored``) may also hold what other writers leave:
    floats for integers (pandas' nullable ints), bytes for text, a NULL-typed nullable column. A
    message (``stored=False``) may not: as in JSON, 1.0 or ``true`` is not an integer, ``"true"`` or 2
    not a boolean, an integer not a time (in which unit?). The values are checked after (row rules,
    safe casts): a fitting type is no promise that every value converts.
    """
    want = _type_family(FIELDS[name].type)
    family = _type_family(got)
    if family == want:
        return True
    if not stored:
        return False
    all_null_ok = family == "null" and FIELDS[name].nullable
    return all_null_ok or family in _COERCIBLE.get(want, ()) or family in _LABEL_FORMS.get(name, ())


#: Other tools' forms of a label that every reader of labels takes: ``label_anomaly`` as 0/1 (also as
#: floats beside NaN, as pandas writes them) or true/false text (``evaluate.anomaly_labels``),
#: ``label_kind`` as integer codes, also stored as floats (:func:`kind_names`). The replay never sends
#: labels, so a log must not be refused for holding them so.
_LABEL_FORMS: dict[str, frozenset[str]] = {"label_anomaly": frozenset({"integer", "string", "float"}),
                                           "label_kind": frozenset({"integer", "float"})}


#: What each label column may hold, as its type errors say it.
_LABEL_TEXT = {"label_anomaly": "booleans (or 0/1, or true/false text)",  # 0/1 as floats too
               "label_kind": "kind names: text, or whole-number codes"}


def kind_names(column: pa.Array | pa.ChunkedArray, path: str | os.PathLike[str],
               name: str = "label_kind") -> pa.ChunkedArray:
    """Anomaly kinds (``label_kind``, a window sidecar's ``kind``) as text: the one reading every reader uses.

    Text is taken as it is (any string type, a dictionary of it, UTF-8 bytes); an integer code as its
    decimal text (kind ``3`` is ``"3"``); a float that holds a whole number as the same text (pandas
    stores integer codes beside NULLs as floats: ``3.0`` is ``"3"`` too, so both files name one kind);
    a NULL-typed column as all NULL. So ``recall[3]`` and ``--window-kinds 3`` name the kind whatever
    the file stored.

    Raises
    ------
    DataValidationError
        Naming ``path``, the column and the first value that names no kind: a float that is not a whole
        number (or NaN, or beyond 2**53, where floats round), bytes that are not UTF-8, or a column of
        another type (bool, time, ...). ``workbench validate`` reports the same values row by row.
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out = []
    for chunk in chunks:
        if pa.types.is_dictionary(chunk.type):
            chunk = chunk.dictionary_decode()
        family = _type_family(chunk.type)
        if family == "float":
            values = chunk.to_numpy(zero_copy_only=False).astype("float64")
            valid = chunk.is_valid().to_numpy(zero_copy_only=False)
            with np.errstate(invalid="ignore"):
                bad = valid & ~(np.isfinite(values) & (values == np.floor(values)) & (np.abs(values) <= 2.0**53))
            if bad.any():
                msg = (f"Column {name!r} of {str(path)!r} holds {float(values[bad][0])!r}, which names no kind: "
                       "kinds are text or whole-number codes. Store the column as text or integers.")
                raise DataValidationError(msg, path=str(path), column=name)
            chunk = chunk.cast(pa.int64())
        elif family == "null":
            chunk = pa.nulls(len(chunk), pa.string())
        elif family not in ("string", "binary", "integer"):
            msg = (f"Column {name!r} of {str(path)!r} must hold kind names: text, or whole-number codes. "
                   f"Got {chunk.type} instead.")
            raise DataValidationError(msg, path=str(path), column=name)
        try:
            out.append(chunk if chunk.type == pa.string() else chunk.cast(pa.string()))
        except pa.ArrowInvalid as exc:  # bytes that are not UTF-8
            msg = f"Column {name!r} of {str(path)!r} holds bytes that are not UTF-8 text ({exc})."
            raise DataValidationError(msg, path=str(path), column=name) from exc
    return pa.chunked_array(out, pa.string())


#: Id columns another tool may hold as names (text) rather than numbers.
_ID_COLUMNS = ("instance_id", "user_id", "database_id")


def _conversion(name: str, want: pa.DataType, got: pa.DataType) -> str:
    """The DuckDB expression that converts a column of type ``got`` to ``want`` (for a type error's hint).

    A plain CAST where it converts: not from integers to a time (DuckDB has no such cast: the number
    needs its unit), from a list to text (CAST writes '[1, 2]', not the comma-separated '1,2'), from a
    duration in another unit than milliseconds, or from a decimal to an integer (CAST rounds 12.5 to 13
    without a word).
    """
    family, want_family = _type_family(got), _type_family(want)
    if want_family == "timestamp" and family in ("integer", "float"):
        return f"epoch_ms({name}) (milliseconds since 1970; epoch_us for microseconds, to_timestamp for seconds)"
    if want_family == "string" and (pa.types.is_list(got) or pa.types.is_large_list(got)):
        return f"array_to_string({name}, ',')"
    if want_family == "integer" and pa.types.is_duration(got) and got.unit != "ms":
        # DuckDB reads a Parquet duration as the bare count of its unit
        return {"s": f"{name} * 1000", "us": f"{name} // 1000", "ns": f"{name} // 1000000"}[got.unit]
    if want_family == "integer" and pa.types.is_decimal(got):
        return f"CAST({name} AS BIGINT) where every value is whole (CAST rounds 12.5 to 13)"
    if name in _ID_COLUMNS and family == "string":
        # names (a cluster's 'prod-cluster-173') do not CAST, and prepare sets every such row aside
        return (f"CAST({name} AS BIGINT) if its texts are numbers; if they are names, number them: "
                f"dense_rank() OVER (ORDER BY {name}) AS {name}")
    return f"CAST({name} AS {_SQL_TYPES.get(want_family, str(want))})"


def _check_schema(schema: pa.Schema, path: Path, *, required: Sequence[str] = COLUMNS) -> bool:
    """Raise on missing, duplicated or mistyped columns (a label column present is checked too); return
    whether the file is labelled (has ``label_anomaly``; ``label_kind`` is optional, as for evaluate)."""
    expected = {name: field.type for name, field in FIELDS.items()}
    seen: dict[str, int] = {}
    for name in schema.names:
        seen[name] = seen.get(name, 0) + 1
    duplicated = [name for name, count in seen.items() if count > 1 and name in expected]
    if duplicated:
        name = duplicated[0]
        msg = (f"Query log {str(path)!r} has {seen[name]} columns named {name!r}; the workbench cannot tell "
               "which one holds the data. Keep one of them.")
        raise DataValidationError(msg, path=str(path), column=name)
    names = set(schema.names)
    # Names as `workbench prepare` matches them (letter case and spaces around ignored): 'query_id' beside
    # 'Query_ID' is two columns for one, which prepare refuses; reading the first as if the other were
    # not there would be a guess.
    folded = {name.strip().lower(): name for name in schema.names if name not in expected}
    twins = [(name, folded[name]) for name in expected if name in names and name in folded]
    if twins:
        name, twin = twins[0]
        msg = (f"Query log {str(path)!r} has columns {name!r} and {twin!r}, one Redset column under two "
               "spellings; the workbench cannot tell which one holds the data. Keep or rename one of them.")
        raise DataValidationError(msg, path=str(path), column=name)
    missing = [name for name in required if name not in names]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        other_case = [folded[name] for name in missing if name in folded]
        spaced = any(name != name.strip() for name in other_case)
        hint = (f" The file has {len(other_case)} of them under other letter cases"
                f"{' or with spaces around them' if spaced else ''} (e.g. {other_case[0]!r}): "
                f"`workbench prepare {path} --out NEW` matches names case-insensitively and writes a "
                "replayable copy." if other_case else
                " Add them (NULL is fine for nullable columns) or regenerate the file.")
        msg = (f"Query log {str(path)!r} lacks {len(missing)} of the {len(required)} required Redset "
               f"column(s): {shown}.{hint}")
        raise DataValidationError(msg, path=str(path), column=missing[0])
    # Each label column is checked on its own: evaluate reads label_anomaly without label_kind (kinds
    # "unnamed"), so a file holding only it is labelled, and its values must be readable.
    for name in [*required, *(name for name in LABEL_COLUMNS if name in names and name not in required)]:
        want, got = expected[name], schema.field(name).type
        if not type_fits(name, got):
            if name in _LABEL_FORMS:
                msg = (f"Column {name!r} of query log {str(path)!r} must hold {_LABEL_TEXT[name]}. Got {got} instead. "
                       "Convert it, or drop the column (the replay never sends labels; `workbench evaluate` "
                       "reads them).")
                raise DataValidationError(msg, path=str(path), column=name)
            msg = (
                f"Column {name!r} of query log {str(path)!r} must be {_type_family(want)} ({want}). "
                f"Got {got} instead. Convert it, e.g. with {_conversion(name, want, got)} in DuckDB, or "
                f"`workbench prepare {path} --out NEW` (it converts what converts without loss and "
                "sets aside, with reasons, the rows it cannot)."
            )
            raise DataValidationError(msg, path=str(path), column=name)
    return "label_anomaly" in names


def batches_by_row_group(pf: pq.ParquetFile, *, columns: Sequence[str], batch_size: int,
                         row_groups: Sequence[int] | None = None,
                         use_threads: bool = True) -> Iterator[pa.RecordBatch]:
    """``pf.iter_batches`` one row group at a time, in file order; small consecutive groups together.

    One reader over many row groups keeps memory it no longer needs (pyarrow 26: 67 MB of Arrow
    pool for 40 row groups against 13 MB read group by group), so peak memory grew with the file.
    Groups smaller than a batch are read in runs of at most ``batch_size`` rows (:func:`group_runs`):
    a reader per group costs ~0.4 ms and yields its own batch, so a file written a few rows per
    group (a streaming writer's) read at a few thousand rows a second, in batches of a few rows.
    """
    groups = range(pf.metadata.num_row_groups) if row_groups is None else row_groups
    for run in group_runs(pf.metadata, batch_size, groups):
        yield from pf.iter_batches(batch_size=batch_size, row_groups=run, columns=list(columns),
                                   use_threads=use_threads)


def group_runs(metadata: pq.FileMetaData, batch_size: int,
               row_groups: Iterable[int] | None = None) -> list[list[int]]:
    """``row_groups`` (default: all) in order, in runs to read together: consecutive groups of at most
    ``batch_size`` rows in all (a larger group is a run of its own)."""
    runs: list[list[int]] = []
    rows = 0
    previous = -2
    for group in range(metadata.num_row_groups) if row_groups is None else row_groups:
        size = metadata.row_group(group).num_rows
        if runs and group == previous + 1 and rows + size <= batch_size:
            runs[-1].append(group)
            rows += size
        else:
            runs.append([group])
            rows = size
        previous = group
    return runs


def validate(path: str | os.PathLike[str], *, batch_size: int = 65_536) -> LogSummary:
    """Check that a Parquet query log can be replayed: every column of every row (bounded memory).

    See :func:`workbench.data.validation.validate`, which this forwards to; raises
    :class:`DataValidationError` naming file, first problem (column, row, value) and the count.
    A folder is validated as the replay reads it: each file, and the order across files.
    """
    from workbench.data.validation import validate as validate_all

    if Path(path).expanduser().is_dir():
        from workbench.replay._source import validate_log  # the folder layout is the replay's contract

        return validate_log(path)
    return validate_all(path, batch_size=batch_size)


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
        The Parquet file. A row :func:`validate` refuses (a NULL id, NaN, a negative duration, a time
        out of range) raises :class:`DataValidationError` naming its row; the order is not re-checked.
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
    from workbench.data.validation import find_bad_rows

    pf = _open(path)
    _check_schema(pf.schema_arrow, path, required=wanted)
    target = pa.schema([known[name] for name in wanted], metadata=REDSET_SCHEMA.metadata)
    offset = 0
    batches = batches_by_row_group(pf, columns=wanted, batch_size=batch_size)
    while True:
        try:
            batch = next(batches, None)
        except (OSError, pa.ArrowException) as exc:  # a damaged page: name the file, not a codec
            msg = (f"Query log {str(path)!r} cannot be read after row {offset:,} ({exc}). The file is damaged: "
                   "write it again from its source.")
            raise DataValidationError(msg, path=str(path), row=offset) from exc
        if batch is None:
            return
        # a row the replay would refuse (NULL id, NaN, negative, out of range) is refused here too, by row
        bad = find_bad_rows(batch)
        if bad.mask.any():
            index = int(np.flatnonzero(bad.mask)[0])
            reason = bad.reasons()[index]
            msg = (f"Query log {str(path)!r}: row {offset + index:,} cannot be read as a Redset row ({reason}; "
                   f"{int(bad.mask.sum()):,} such row(s) in rows {offset:,}-{offset + batch.num_rows - 1:,}). "
                   f"Run `workbench validate {path}` to list them; `workbench prepare {path} --out NEW` writes a "
                   "copy without them.")
            raise DataValidationError(msg, path=str(path), column=reason.split(":", 1)[0], row=offset + index)
        arrays = []
        for name, field in zip(wanted, target, strict=True):
            column = batch.column(name)
            if name == "label_kind":  # 2.5 must not pass as kind "2.5": read as every reader of kinds reads them
                column = kind_names(column, path).combine_chunks()
            elif pa.types.is_dictionary(column.type):
                column = column.dictionary_decode()
            arrays.append(column if column.type == field.type else column.cast(field.type))
        offset += batch.num_rows
        yield pa.RecordBatch.from_arrays(arrays, schema=target)
