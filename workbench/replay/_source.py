"""Lazy, seekable reading of a sorted Parquet query log: bounded memory for any file size."""

from __future__ import annotations

import bisect
import functools
import hashlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workbench.data.schema import COLUMNS, REDSET_SCHEMA, batches_by_row_group

__all__ = ["LogFile"]

_SCHEMA = REDSET_SCHEMA.remove_metadata()


def _to_us(value: object) -> int:
    if isinstance(value, datetime):
        return int(pa.scalar(value, pa.timestamp("us", tz="UTC")).value)
    return int(pa.scalar(value).cast(pa.int64()).as_py())


class LogFile:
    """A Parquet query log opened for replay: row counts, seeking, lazy batches.

    Only the 24 Redset columns are decoded (label columns are never read), one row group at
    a time.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().resolve()
        # Stream column chunks through a small buffer instead of pre-buffering whole row groups:
        # memory then depends on the batch size, not on the file's row-group size.
        self._file = pq.ParquetFile(self.path, pre_buffer=False, buffer_size=1 << 20)
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
        return _to_us(column[row - self._group_starts[group]].as_py())

    def first_time_us(self) -> int | None:
        return self.event_time_us(0)

    def last_time_us(self) -> int | None:
        return self.event_time_us(self.num_rows - 1) if self.num_rows else None

    def row_at_or_after(self, event_us: int) -> int:
        """Index of the first row whose arrival time is >= ``event_us`` (num_rows if none)."""
        metadata = self._file.metadata
        for group in range(metadata.num_row_groups):
            stats = metadata.row_group(group).column(self._ts_column).statistics
            if stats is not None and stats.has_min_max and _to_us(stats.max) < event_us:
                continue
            column = self._read_group(group, ["arrival_timestamp"]).column(0).cast(pa.timestamp("us", tz="UTC"))
            values = pc.cast(column, pa.int64()).to_numpy()
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
