"""Shard columns as numpy arrays, for the passes over a settled day of scored rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["arrival_us", "flags", "numbers"]


def flags(table: pa.Table, name: str) -> np.ndarray:
    """A boolean column as a numpy array (nulls, or a missing column, count as False)."""
    if name not in table.column_names:
        return np.zeros(table.num_rows, dtype=bool)
    return pc.fill_null(table.column(name), False).to_numpy(zero_copy_only=False).astype(bool)


def numbers(table: pa.Table, name: str) -> np.ndarray:
    """A numeric column as float (NaN where null)."""
    # unchecked: an int64 beyond 2**53 (a corrupt duration of 2**63 - 1 ms) rounds instead of raising,
    # which stopped the judging of its day and of every later one
    return pc.cast(table.column(name), pa.float64(), safe=False).to_numpy(zero_copy_only=False).astype(float)


def arrival_us(table: pa.Table) -> np.ndarray:
    """``arrival_timestamp`` as epoch microseconds, UTC (the log's resolution: finer is cut, never rounded
    into another run's place), ``int64``; a null reads the int64 minimum."""
    column = pc.cast(table.column("arrival_timestamp"), pa.timestamp("us", tz="UTC"), safe=False)
    return pc.fill_null(column.cast(pa.int64()), np.iinfo(np.int64).min).to_numpy(zero_copy_only=False)
