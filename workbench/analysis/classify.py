"""Query classification: which resource most likely bounded a query (pulse-study 3.2).

Rules are evaluated in this exact order; the first one that matches wins. Nulls count as ``0`` (numbers)
or ``False`` (flags); ``q = lower(query_type)`` (``''`` when null); ``ratio = exec / (scanned + 1)``
when ``scanned > 0``, else ``0`` (ms per MB).

==  ===================  ==========================================================================
#   class                condition
==  ===================  ==========================================================================
0   ``normal``           ``was_cached`` is true (a result-cache hit did no work)
1   ``network_bound``    ``q in {copy, unload}`` and ``exec > 500``
2   ``cpu_bound``        ``q not in {copy, unload}`` and ``(joins > 1 or aggs > 1)`` and ``scanned > 0``
                         and ``ratio > 20.0`` and ``exec > 1000``
3   ``io_bound``         ``q not in {copy, unload}`` and ``scanned >= 2000`` and ``ratio < 0.061`` and
                         ``(spilled > 0 or scans > 1)`` and ``exec > 1000``
4   ``queue_wlm_bound``  ``queue >= exec`` and ``queue > 1000`` and ``exec > 0`` and
                         ``scans + joins + aggs < 4``
5   ``normal``           everything else
==  ===================  ==========================================================================

Aborted queries are classified like any other. The ratio is computed in float64 in both versions
(``float(exec) / float(scanned + 1)``) so that :func:`classify_query` and :func:`classify_batch`
agree bit for bit. The thresholds are module constants; ``workbench/analysis/remediation/*.md`` quotes
them and a test keeps the two in step.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from workbench.analysis.exceptions import MissingColumnsError
from workbench.data.schema import query_type_key

__all__ = [
    "CLASSES",
    "CLASSIFY_COLUMNS",
    "CPU_EXEC_MS",
    "CPU_RATIO",
    "IO_EXEC_MS",
    "IO_RATIO",
    "IO_SCANNED_MB",
    "NETWORK_EXEC_MS",
    "NETWORK_QUERY_TYPES",
    "PROBLEM_CLASSES",
    "QUEUE_MAX_OPERATORS",
    "QUEUE_MIN_MS",
    "classify_batch",
    "classify_codes",
    "classify_query",
]

logger = logging.getLogger(__name__)

#: Class names; a class's position is its code in :func:`classify_codes`.
CLASSES: Final[tuple[str, ...]] = ("normal", "cpu_bound", "io_bound", "network_bound", "queue_wlm_bound")
#: The four problem classes in severity order (the order badges and remediation use).
PROBLEM_CLASSES: Final[tuple[str, ...]] = ("cpu_bound", "io_bound", "queue_wlm_bound", "network_bound")

NETWORK_QUERY_TYPES: Final[frozenset[str]] = frozenset({"copy", "unload"})
_NETWORK_TYPES_ARRAY: Final = pa.array(sorted(NETWORK_QUERY_TYPES), pa.string())
NETWORK_EXEC_MS: Final = 500
CPU_RATIO: Final = 20.0
CPU_EXEC_MS: Final = 1000
IO_SCANNED_MB: Final = 2000
IO_RATIO: Final = 0.061
IO_EXEC_MS: Final = 1000
QUEUE_MIN_MS: Final = 1000
QUEUE_MAX_OPERATORS: Final = 4  # scans + joins + aggregations must be below this

#: Columns the classifier reads.
CLASSIFY_COLUMNS: Final[tuple[str, ...]] = (
    "was_cached",
    "query_type",
    "execution_duration_ms",
    "mbytes_scanned",
    "mbytes_spilled",
    "queue_duration_ms",
    "num_joins",
    "num_aggregations",
    "num_scans",
)

_NORMAL, _CPU, _IO, _NETWORK, _QUEUE = range(5)
_CLASS_ARRAY = pa.array(CLASSES, pa.string())


def _num(row: Mapping[str, Any], key: str) -> Any:
    value = row.get(key)
    return 0 if value is None else value


def classify_query(row: Mapping[str, Any]) -> str:
    """Classify one query row.

    Parameters
    ----------
    row : Mapping
        A Redset row (missing keys count as null).

    Returns
    -------
    str
        One of :data:`CLASSES`.

    Examples
    --------
    >>> classify_query({"query_type": "COPY", "execution_duration_ms": 501})
    'network_bound'
    >>> classify_query({"query_type": "copy", "execution_duration_ms": 501, "was_cached": True})
    'normal'
    """
    if row.get("was_cached"):
        return "normal"
    q = str(row.get("query_type") or "").strip().lower()  # as schema.query_type_key
    exec_ms = _num(row, "execution_duration_ms")
    scanned = _num(row, "mbytes_scanned")
    spilled = _num(row, "mbytes_spilled")
    queue = _num(row, "queue_duration_ms")
    joins = _num(row, "num_joins")
    aggs = _num(row, "num_aggregations")
    scans = _num(row, "num_scans")
    ratio = float(exec_ms) / float(scanned + 1) if scanned > 0 else 0.0
    transfer = q in NETWORK_QUERY_TYPES

    if transfer and exec_ms > NETWORK_EXEC_MS:
        return "network_bound"
    if (not transfer and (joins > 1 or aggs > 1) and scanned > 0 and ratio > CPU_RATIO
            and exec_ms > CPU_EXEC_MS):
        return "cpu_bound"
    if (not transfer and scanned >= IO_SCANNED_MB and ratio < IO_RATIO and (spilled > 0 or scans > 1)
            and exec_ms > IO_EXEC_MS):
        return "io_bound"
    if queue >= exec_ms and queue > QUEUE_MIN_MS and exec_ms > 0 and scans + joins + aggs < QUEUE_MAX_OPERATORS:
        return "queue_wlm_bound"
    return "normal"


def _column(batch: pa.RecordBatch | pa.Table, name: str) -> pa.Array | pa.ChunkedArray:
    return batch.column(batch.schema.get_field_index(name))


def numeric_values(batch: pa.RecordBatch | pa.Table, name: str, dtype: type = np.float64) -> np.ndarray:
    """Column ``name`` as a numpy array of ``dtype`` with nulls as 0 (shared by the window code)."""
    col = _column(batch, name)
    # Packed messages are ~100 rows, so per-call overhead is the cost here: integer columns (the
    # decoded message types) go through numpy only, one conversion, no compute kernels.
    if pa.types.is_integer(col.type):
        values = col.to_numpy(zero_copy_only=False)  # float64 with NaN where null
        if col.null_count:
            values = np.where(np.isnan(values), 0, values)
        return np.asarray(values, dtype=dtype)
    arrow_type = pa.from_numpy_dtype(np.dtype(dtype))
    if col.null_count == 0 and pa.types.is_floating(col.type) and pa.types.is_floating(arrow_type):
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=dtype)
    return pc.fill_null(pc.cast(col, arrow_type), 0).to_numpy(zero_copy_only=False)


def classify_codes(batch: pa.RecordBatch | pa.Table) -> np.ndarray:
    """Vectorised classification returning class codes (positions in :data:`CLASSES`).

    Parameters
    ----------
    batch : pyarrow.RecordBatch or pyarrow.Table
        Rows with at least the columns in :data:`CLASSIFY_COLUMNS`.

    Returns
    -------
    numpy.ndarray
        ``int8`` codes, one per row.

    Raises
    ------
    MissingColumnsError
        If a needed column is absent.
    """
    names = set(batch.schema.names)
    missing = tuple(name for name in CLASSIFY_COLUMNS if name not in names)
    if missing:
        msg = (f"classify needs the columns {list(CLASSIFY_COLUMNS)}; the batch lacks {list(missing[:5])}. "
               "Pass rows decoded with workbench.data.codec (REDSET_SCHEMA).")
        raise MissingColumnsError(msg, missing=missing)
    n = batch.num_rows
    cached_col = _column(batch, "was_cached")
    if cached_col.type != pa.bool_() or cached_col.null_count:
        cached_col = pc.fill_null(pc.cast(cached_col, pa.bool_()), False)
    cached = np.asarray(cached_col.to_numpy(zero_copy_only=False), dtype=bool)
    query_type = query_type_key(_column(batch, "query_type"))
    transfer_col = pc.is_in(query_type, value_set=_NETWORK_TYPES_ARRAY)  # null -> False
    transfer = np.asarray(transfer_col.to_numpy(zero_copy_only=False), dtype=bool)
    exec_ms = numeric_values(batch, "execution_duration_ms")
    scanned = numeric_values(batch, "mbytes_scanned")
    spilled = numeric_values(batch, "mbytes_spilled")
    queue = numeric_values(batch, "queue_duration_ms")
    joins = numeric_values(batch, "num_joins")
    aggs = numeric_values(batch, "num_aggregations")
    scans = numeric_values(batch, "num_scans")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(scanned > 0, exec_ms / (scanned + 1.0), 0.0)

    network = transfer & (exec_ms > NETWORK_EXEC_MS)
    cpu = (~transfer & ((joins > 1) | (aggs > 1)) & (scanned > 0) & (ratio > CPU_RATIO)
           & (exec_ms > CPU_EXEC_MS))
    io = (~transfer & (scanned >= IO_SCANNED_MB) & (ratio < IO_RATIO) & ((spilled > 0) | (scans > 1))
          & (exec_ms > IO_EXEC_MS))
    queued = ((queue >= exec_ms) & (queue > QUEUE_MIN_MS) & (exec_ms > 0)
              & (scans + joins + aggs < QUEUE_MAX_OPERATORS))

    codes = np.full(n, _NORMAL, dtype=np.int8)
    # Assign in reverse priority so that the earliest matching rule is written last and wins.
    codes[queued] = _QUEUE
    codes[io] = _IO
    codes[cpu] = _CPU
    codes[network] = _NETWORK
    codes[cached] = _NORMAL
    return codes


def classify_batch(batch: pa.RecordBatch | pa.Table) -> pa.Array:
    """Vectorised :func:`classify_query`: one class name per row, same semantics.

    Parameters
    ----------
    batch : pyarrow.RecordBatch or pyarrow.Table
        Rows with at least the columns in :data:`CLASSIFY_COLUMNS`.

    Returns
    -------
    pyarrow.Array
        A string array of class names.
    """
    return pc.take(_CLASS_ARRAY, pa.array(classify_codes(batch)))
