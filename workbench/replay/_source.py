"""Lazy, seekable reading of a sorted Parquet query log: bounded memory for any file size.

A log is one Parquet file or a folder of them (``workbench prepare --split day`` writes one file
per UTC day); the files of a folder, in name order, are one ordered stream whose row index is
global, so a saved replay position means the same row whichever file it falls in.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from workbench.data.exceptions import DataValidationError
from workbench.data.schema import COLUMNS, REDSET_SCHEMA, LogSummary, batches_by_row_group, open_parquet

if TYPE_CHECKING:
    from workbench.data.validation import ValidationReport

logger = logging.getLogger(__name__)

__all__ = ["LogFile", "check_log_columns", "check_order_across_files", "checked_part", "log_parts", "validate_log"]

_SCHEMA = REDSET_SCHEMA.remove_metadata()


def _to_us(value: object) -> int:
    if isinstance(value, datetime):
        return int(pa.scalar(value, pa.timestamp("us", tz="UTC")).value)
    return int(pa.scalar(value).cast(pa.int64()).as_py())


class _LogPart:
    """One Parquet file of a log: row counts, seeking, lazy batches.

    Only the 24 Redset columns are decoded (label columns are never read), one row group at
    a time.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().resolve()
        # Stream column chunks through a small buffer instead of pre-buffering whole row groups:
        # memory then depends on the batch size, not on the file's row-group size.
        self._file = open_parquet(self.path, pre_buffer=False, buffer_size=1 << 20)
        metadata = self._file.metadata
        self.num_rows = metadata.num_rows
        self._group_starts: list[int] = []
        start = 0
        for index in range(metadata.num_row_groups):
            self._group_starts.append(start)
            start += metadata.row_group(index).num_rows
        self._ts_column = self._file.schema_arrow.get_field_index("arrival_timestamp")

    @functools.cached_property
    def fingerprint(self) -> str:
        """Identifies the file's content cheaply: a hash of its Parquet footer (schema, row groups,
        statistics) and size, read once."""
        footer = self._file.metadata.serialized_size + 8  # footer, its length, the magic bytes
        size = self.path.stat().st_size
        with self.path.open("rb") as fh:
            fh.seek(max(0, size - footer))
            digest = hashlib.sha256(fh.read())
        digest.update(str(size).encode())
        return digest.hexdigest()[:16]

    def _group_of(self, row: int) -> int:
        return max(0, bisect.bisect_right(self._group_starts, row) - 1)

    def _read_group(self, group: int, columns: list[str]) -> pa.Table:
        return self._file.read_row_group(group, columns=columns)

    def event_time_us(self, row: int) -> int | None:
        """Arrival time (µs since epoch) of row ``row``; None past the end."""
        if row >= self.num_rows:
            return None
        group = self._group_of(row)
        column = self._read_group(group, ["arrival_timestamp"]).column(0)
        value = column[row - self._group_starts[group]].as_py()
        return None if value is None else _to_us(value)

    def first_time_us(self) -> int | None:
        """The first arrival time the file holds (rows without one, which the replay dead-letters, skipped)."""
        found = self._edge(["arrival_timestamp"], last=False)
        return None if found is None else _to_us(found[0])

    def last_time_us(self) -> int | None:
        """The last arrival time the file holds (rows without one skipped: a sort puts NULLs first or last)."""
        found = self._edge(["arrival_timestamp"], last=True)
        return None if found is None else _to_us(found[0])

    def edge_key(self, *, last: bool) -> tuple[int, int] | None:
        """``(arrival µs, query_id)`` of the first (or ``last``) row that has both; None when no row has."""
        found = self._edge(["arrival_timestamp", "query_id"], last=last)
        return None if found is None else (_to_us(found[0]), int(found[1]))

    def edge_query(self, *, last: bool) -> tuple[int, tuple[int, int, int]] | None:
        """``(row, (arrival µs, query_id, instance_id))`` of the first (or ``last``) row that has all three."""
        found = self._edge(["arrival_timestamp", "query_id", "instance_id"], last=last, with_row=True)
        return None if found is None else (found[3], (_to_us(found[0]), int(found[1]), int(found[2])))

    def _edge(self, columns: list[str], *, last: bool, with_row: bool = False) -> list[Any] | None:
        """The values of ``columns`` in the first (or last) row where none is NULL, row group by row group
        (and, ``with_row``, that row's number after them)."""
        groups = range(self._file.metadata.num_row_groups)
        for group in reversed(groups) if last else groups:
            table = self._read_group(group, columns)
            valid = pc.is_valid(table.column(0))
            for column in table.columns[1:]:
                valid = pc.and_(valid, pc.is_valid(column))
            rows = np.flatnonzero(valid.to_numpy(zero_copy_only=False))
            if len(rows):
                at = int(rows[-1] if last else rows[0])
                values = [column[at].as_py() for column in table.columns]
                return [*values, self._group_starts[group] + at] if with_row else values
        return None

    def row_at_or_after(self, event_us: int) -> int:
        """Index of the first row whose arrival time is >= ``event_us`` (num_rows if none)."""
        metadata = self._file.metadata
        for group in range(metadata.num_row_groups):
            stats = metadata.row_group(group).column(self._ts_column).statistics
            if stats is not None and stats.has_min_max and _to_us(stats.max) < event_us:
                continue
            column = self._read_group(group, ["arrival_timestamp"]).column(0).cast(pa.timestamp("us", tz="UTC"))
            # rows without a time (dead-lettered by the replay) take the time before them, or come first
            times = pc.fill_null_forward(pc.cast(column, pa.int64()))
            values = pc.fill_null(times, np.iinfo(np.int64).min).to_numpy()
            offset = int(values.searchsorted(event_us, side="left"))
            if offset < len(values):
                return self._group_starts[group] + offset
        return self.num_rows

    def batches(self, start_row: int = 0, batch_size: int = 8192, *,
                cast: bool = True) -> Iterator[tuple[int, pa.RecordBatch]]:
        """Yield ``(first_row_index, batch)`` from ``start_row`` to the end, in file order.

        ``cast=False`` yields the columns as stored, for a caller that checks rows before casting.
        """
        if start_row >= self.num_rows:
            return
        first_group = self._group_of(start_row)
        row = self._group_starts[first_group]
        groups = list(range(first_group, self._file.metadata.num_row_groups))
        for batch in batches_by_row_group(self._file, batch_size=batch_size, row_groups=groups, columns=COLUMNS,
                                          use_threads=False):
            end = row + batch.num_rows
            if end <= start_row:
                row = end
                continue
            if row < start_row:
                batch = batch.slice(start_row - row)
                row = start_row
            batch = batch.select(list(COLUMNS))
            yield row, batch.cast(_SCHEMA) if cast and batch.schema != _SCHEMA else batch
            row += batch.num_rows


def log_parts(path: str | os.PathLike[str]) -> list[Path]:
    """The Parquet files of a log: the file itself, or a folder's ``*.parquet`` (any case) in name order.

    Names starting with ``.`` or ``_`` (temp and side files) are skipped, and so are a folder's files
    of no rows (a day without queries in a per-day export), with a warning naming them; a file
    alone of no rows is refused by the validation, naming it. Parquet files in sub-folders are not
    part of the log (a copy or an archive beside the days); a warning names them, so that a partitioned
    layout is not read in part without a word.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        return [path]
    parts = sorted(p for p in path.iterdir() if _is_part(p))
    nested = sorted(p for p in path.rglob("*") if p.parent != path and _is_part(p)
                    and not any(name.startswith((".", "_")) for name in p.relative_to(path).parts))
    if parts and nested:
        _warn_nested(path, len(nested), str(nested[0].relative_to(path)))
    empty = [p for p in parts if _row_count(p) == 0]
    if empty and len(empty) < len(parts):
        _warn_skipped(path, tuple(p.name for p in empty))
        parts = [p for p in parts if p not in empty]
    if not parts:
        nested = next(iter(nested), None)
        where = (f" at its top level (there are some below it, e.g. {str(nested.relative_to(path))!r}: a "
                 f"partitioned dataset is not read as a log; `workbench prepare {path} --out NEW` reads every file "
                 "below a folder and writes a replayable log)") if nested else ""
        msg = (f"Folder {str(path)!r} holds no .parquet files{where}. Pass a query log file, or a folder written by "
               "`workbench prepare ... --split day`.")
        raise DataValidationError(msg, path=str(path))
    return parts


def _is_part(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".parquet" and not path.name.startswith((".", "_"))


@functools.cache
def _warn_nested(folder: Path, count: int, example: str) -> None:
    logger.warning("%s: %d .parquet file(s) in sub-folders (e.g. %r) are not part of the log, which is the folder's "
                   "top-level files; `workbench prepare %s --out NEW --split day` writes one log of every file below "
                   "it", folder, count, example, folder)


@functools.cache
def _warn_skipped(folder: Path, names: tuple[str, ...]) -> None:
    """Warn once per process: one command lists a folder's files several times (columns, rows, order, replay)."""
    logger.warning("%s: %d file(s) without rows skipped: %s", folder, len(names), ", ".join(names))


def _row_count(part: Path) -> int | None:
    """Rows of a Parquet file by its footer; None when it has none to read (the validation names why)."""
    try:
        return open_parquet(part).metadata.num_rows
    except (OSError, pa.ArrowException):
        return None


def check_log_columns(path: str | os.PathLike[str]) -> None:
    """Raise DataValidationError naming the file when a part of the log is missing, is no Parquet or lacks
    a Redset column: the checks that read no row, for a caller about to wait on something slow (a broker)
    before its own full validation."""
    from workbench.data.schema import _check_schema, _open

    for part in log_parts(path):
        _check_schema(_open(part).schema_arrow, part)


def validate_log(path: str | os.PathLike[str], *, skip_bad_rows: bool = False) -> LogSummary:
    """:func:`~workbench.data.schema.validate` for a file or a folder of files.

    For a folder each file is validated, and the order must hold across file boundaries too:
    the first row of a file may not sort before the last row of the file before it.
    ``skip_bad_rows``: row problems the replay can dead-letter row by row
    (:data:`~workbench.data.validation.SKIPPABLE_KINDS`) pass, as the replay's ``--skip-bad-rows`` takes them.
    """
    parts = log_parts(path)
    if len(parts) == 1 and not Path(path).expanduser().is_dir():
        return checked_part(parts[0], skip_bad_rows=skip_bad_rows).summary()
    summaries = [checked_part(part, skip_bad_rows=skip_bad_rows).summary() for part in parts]
    check_order_across_files(path)
    labels = {s.has_labels for s in summaries}
    return LogSummary(path=Path(path).expanduser().resolve(), rows=sum(s.rows for s in summaries),
                      row_groups=sum(s.row_groups for s in summaries), first_arrival=summaries[0].first_arrival,
                      last_arrival=summaries[-1].last_arrival, has_labels=labels == {True})


def checked_part(part: Path, *, skip_bad_rows: bool) -> ValidationReport:
    """:func:`~workbench.data.validation.check` of one file of a log, raising its error unless every row
    passed or, with ``skip_bad_rows``, every problem is one the replay dead-letters row by row."""
    from workbench.data.validation import check

    report = check(part)
    if not (report.ok or (skip_bad_rows and report.skippable)):
        raise report.error(skipping=skip_bad_rows)
    return report


def check_order_across_files(path: str | os.PathLike[str]) -> None:
    """Raise DataValidationError when a folder's files, in name order, are not one sorted log."""
    previous: tuple[Path, tuple[int, int]] | None = None
    for part in log_parts(path):
        log = _LogPart(part)
        first, last = log.edge_key(last=False), log.edge_key(last=True)
        if first is None or last is None:  # no row with a time and an id: the row checks name them
            continue
        if previous is not None and first == previous[1]:
            _refuse_repeat_across(previous[0], part)
        if previous is not None and first < previous[1]:
            msg = (f"Query log folder {str(Path(path))!r} is not sorted across files: the first row of "
                   f"{part.name} (arrival {_stamp(first[0])}, query_id {first[1]}) sorts before the last row of "
                   f"{previous[0].name} (arrival {_stamp(previous[1][0])}, query_id {previous[1][1]}). Files are "
                   "replayed in name order; rebuild the folder with `workbench prepare SRC --out DIR --split day`.")
            raise DataValidationError(msg, path=str(part), column="arrival_timestamp", row=0)
        previous = (part, last)


def _refuse_repeat_across(before: Path, after: Path) -> None:
    """Raise DataValidationError when ``after``'s first row repeats ``before``'s last (overlapping exports).

    Within a file the row checks refuse a query that appears twice (the copies of a sorted log are next
    to each other); across two files the pair was passed over, and a second copy that differed was kept
    by the shards while the windows kept the first.
    """
    end, start = _LogPart(before).edge_query(last=True), _LogPart(after).edge_query(last=False)
    if end is None or start is None or end[1] != start[1]:
        return  # the same arrival and id on two instances: two queries
    arrival, query_id, instance = start[1]
    msg = (f"Row {start[0]} of {after.name} (instance_id {instance}, query_id {query_id}, arrival {_stamp(arrival)}) "
           f"repeats row {end[0]} of {before.name}: a query_id is unique per instance (overlapping exports?). "
           "Drop one copy, or rebuild the folder with `workbench prepare SRC --out DIR --split day`, which keeps "
           "one copy of each query.")
    raise DataValidationError(msg, path=str(after), column="query_id", row=start[0])


def _stamp(us: int) -> str:
    return f"{datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us):%Y-%m-%d %H:%M:%S.%f}"


def _folder_fingerprint(parts: list[_LogPart]) -> str:
    """A folder's :attr:`LogFile.fingerprint`: a hash over its files' names and fingerprints, in order."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(f"{part.path.name}:{part.fingerprint};".encode())
    return digest.hexdigest()[:16]


class LogFile:
    """A query log opened for replay, one file or a folder of files read as one ordered stream.

    Row indices are global over the files in name order (see :func:`log_parts`); every method
    takes and returns global indices.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().resolve()
        self.parts = [_LogPart(part) for part in log_parts(self.path)]
        self._starts: list[int] = []
        start = 0
        for part in self.parts:
            self._starts.append(start)
            start += part.num_rows
        self.num_rows = start

    @functools.cached_property
    def fingerprint(self) -> str:
        """Identifies the content: a single file's footer hash; for a folder, a hash over its files."""
        if len(self.parts) == 1 and not self.path.is_dir():
            return self.parts[0].fingerprint
        return _folder_fingerprint(self.parts)

    def grew_from(self, fingerprint: str, rows: int) -> bool:
        """Whether this log is an earlier log (its :attr:`fingerprint` and row count) with files added after
        its last: a folder that gained a day. The earlier files must be unchanged and first in name order, so
        every row keeps its index (a replay's position and the rows it sent stay valid)."""
        if not self.path.is_dir() or not 0 < rows < self.num_rows or rows not in self._starts:
            return False
        return _folder_fingerprint(self.parts[:self._starts.index(rows)]) == fingerprint

    def _part_of(self, row: int) -> int:
        return max(0, bisect.bisect_right(self._starts, row) - 1)

    def event_time_us(self, row: int) -> int | None:
        """Arrival time (µs since epoch) of row ``row``; None past the end."""
        if row >= self.num_rows:
            return None
        index = self._part_of(row)
        return self.parts[index].event_time_us(row - self._starts[index])

    def first_time_us(self) -> int | None:
        """The log's first arrival time (rows without one skipped)."""
        return next((t for part in self.parts if (t := part.first_time_us()) is not None), None)

    def last_time_us(self) -> int | None:
        """The log's last arrival time (rows without one skipped)."""
        return next((t for part in reversed(self.parts) if (t := part.last_time_us()) is not None), None)

    def row_at_or_after(self, event_us: int) -> int:
        """Index of the first row whose arrival time is >= ``event_us`` (num_rows if none)."""
        for index, part in enumerate(self.parts):
            if not part.num_rows:
                continue
            last = part.last_time_us()
            if last is not None and last < event_us:
                continue
            return self._starts[index] + part.row_at_or_after(event_us)
        return self.num_rows

    def batches(self, start_row: int = 0, batch_size: int = 8192, *,
                cast: bool = True) -> Iterator[tuple[int, pa.RecordBatch]]:
        """Yield ``(first_row_index, batch)`` from ``start_row`` to the end, in stream order.

        ``cast=False`` yields the columns as stored, for a caller that checks rows before casting.
        """
        if start_row >= self.num_rows:
            return
        for index in range(self._part_of(start_row), len(self.parts)):
            offset = self._starts[index]
            local = max(0, start_row - offset)
            for row, batch in self.parts[index].batches(local, batch_size, cast=cast):
                yield offset + row, batch
