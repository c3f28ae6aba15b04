"""Tumbling-window aggregation math for the stream analytics (pulse-study 3.3), as mergeable partials.

The streaming app turns each Arrow batch into small per-``(instance_id, window_start)`` partial
aggregates (:func:`partial_aggregates`), keeps only partials in window state and combines them with
:func:`merge`, which is associative and commutative, so that the order in which partials arrive (or
a re-delivery split across batches) cannot change the result. :func:`finalize` turns a partial into
the ``window_stats`` output row.

A partial is a plain JSON-safe ``dict`` (ints, strings and a ``dict[str, int]`` histogram), so it
survives any state serializer. Keys:

``instance_id``, ``window_start_ms``, ``window_ms``
    The window identity; ``window_start_ms = floor(arrival_ms / window_ms) * window_ms`` (UTC).
``cluster_size``, ``cluster_size_at_ms``
    The last non-null ``cluster_size`` by arrival time (ties: later rows win), and its arrival
    time; ``None`` / ``-1`` when none was seen.
``total_queries`` and ``normal_queries``, ``cpu_bound_queries``, ``io_bound_queries``,
``network_bound_queries``, ``queue_wlm_bound_queries``
    Row counts (see :mod:`workbench.analysis.classify`).
``cached_queries``, ``aborted_queries``, ``spilled_queries``, ``queued_queries``, ``slow_queries``,
``long_compile_queries``
    Row counts of result-cache hits (``was_cached``), aborted queries (``was_aborted``; nulls, or
    a batch without the column, count as false), queries that spilled (``mbytes_spilled > 0``),
    queries that waited in the queue longer than :data:`~workbench.analysis.classify.QUEUE_MIN_MS`,
    queries that ran longer than :data:`SLOW_MS` (the classifier's one-second bars) and queries
    that compiled longer than :data:`LONG_COMPILE_MS`.
    Shares of a window's queries, judged against the instance's history by
    :mod:`workbench.analysis.collective`. Partials of earlier versions lack them: :func:`merge`
    reads a missing count as 0.
``queue_max_ms``, ``compile_max_ms``
    The longest queue wait and the longest compilation (nulls count as 0), so that a mean without
    the longest one can be told from one query's wait or compilation.
``spilled_mb``, ``queue_ms``, ``compile_ms``, ``exec_ms``
    Exact integer sums (nulls, and a batch without ``compile_duration_ms``, count as 0), saturating
    at the int64 bounds (:data:`INT64_MAX`):
    a sum never wraps around to a wrong value on either path (numpy for batches, Python ints
    for single rows and merges), and SQLite never sees an integer it cannot store. A saturated
    sum reads "at least INT64_MAX". A single value that does not fit int64 never gets here: the
    codec rejects its message (``int_out_of_range``). Partials of earlier versions lack the
    compile keys: :func:`merge` reads them as 0.
``pace_queries``, ``pace_log_sum``
    The execution pace of the window's queries that did material scanning work (executed, not a
    result-cache hit, not aborted, at least :data:`PACE_MIN_MB` MB scanned): their count and the
    sum of ``round(1000 * ln(execution ms per MB scanned))`` (milli-nepers; execution times under
    1 ms count as 1 ms). Integers, so that merging stays exact; ``pace_log_sum / pace_queries``
    is the log of the geometric-mean pace. Time per MB is what a whole instance running slower
    (fewer nodes, a noisy neighbour, a degraded disk, I/O throttling) moves, and it moves less than
    raw runtime when the mix of small and large queries changes. Partials of earlier versions lack
    them: :func:`merge` reads them as 0.
``exec_count``, ``exec_min_ms``, ``exec_max_ms``, ``exec_hist``
    Non-null execution times: count, exact min/max, and a histogram with
    :data:`HIST_BINS_PER_DECADE` log-spaced bins per decade (keys are bin numbers as strings).
``anomalies``
    Always 0 here; the ML side counts anomalies.
``first_arrival_ms``, ``last_arrival_ms``
    Earliest and latest arrival time seen in the window.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from workbench.analysis.classify import CLASSES, CLASSIFY_COLUMNS, QUEUE_MIN_MS, classify_codes, numeric_values
from workbench.analysis.exceptions import AnalysisError, MissingColumnsError

__all__ = [
    "CLASS_COUNT_KEYS",
    "DEFAULT_WINDOW_MS",
    "FLAG_COUNT_KEYS",
    "HIST_BINS_PER_DECADE",
    "HIST_MAX_MS",
    "INT64_MAX",
    "LONG_COMPILE_MS",
    "PACE_MIN_MB",
    "SLOW_MS",
    "WindowMergeError",
    "arrival_ms",
    "finalize",
    "hist_bin",
    "hist_quantile",
    "merge",
    "merge_all",
    "partial_aggregates",
]

logger = logging.getLogger(__name__)

DEFAULT_WINDOW_MS: Final = 600_000
#: Histogram resolution: bin edges are 10 ** (k / 20) ms, i.e. ~12 % wide; quantiles are reported
#: at the bin's geometric middle (error at most ~6 %) and clipped to the exact min/max.
HIST_BINS_PER_DECADE: Final = 20
#: Times from this value up share the last bin (1e8 ms is about 28 hours).
HIST_MAX_MS: Final = 100_000_000
_LAST_BIN: Final = round(math.log10(HIST_MAX_MS) * HIST_BINS_PER_DECADE) + 1
#: ``<class>_queries`` count keys, in :data:`~workbench.analysis.classify.CLASSES` order.
CLASS_COUNT_KEYS: Final[tuple[str, ...]] = tuple(f"{c}_queries" for c in CLASSES)
#: Per-window counts of flagged queries (cache hits, aborts, spills, waits and runs over a second,
#: compilations over ten seconds); each is
#: a column of ``window_stats`` under the same name.
FLAG_COUNT_KEYS: Final[tuple[str, ...]] = ("cached_queries", "aborted_queries", "spilled_queries", "queued_queries",
                                           "slow_queries", "long_compile_queries")
_NEEDED: Final = ("instance_id", "arrival_timestamp", "cluster_size", *CLASSIFY_COLUMNS)
INT64_MAX: Final = 2**63 - 1
#: A query that ran longer than this counts as ``slow_queries`` (the classifier's CPU/IO bar, 1 s).
SLOW_MS: Final = 1000
#: A query that compiled longer than this counts as ``long_compile_queries``. Ten seconds, not one:
#: ordinary compilations of a busy instance pass one second often (a fifth of its queries in the
#: stress log), so a cold compile cache would move a one-second share by a few points only.
LONG_COMPILE_MS: Final = 10_000
#: A query counts towards the execution pace when it scanned at least this many MB: below it,
#: fixed per-query costs (dispatch, commit, result transfer) rather than scanning set the time,
#: and time per MB of a 10 MB query says little about the instance's speed.
PACE_MIN_MB: Final = 100
INT64_MIN: Final = -(2**63)
_SAFE: Final = 2**62  # |sum| bound under which numpy's int64 sum cannot have wrapped

_SUM_KEYS: Final = ("total_queries", *CLASS_COUNT_KEYS, "spilled_mb", "queue_ms", "exec_ms", "exec_count",
                    "anomalies")
_PACE_KEYS: Final = ("pace_queries", "pace_log_sum")
_NEW_SUM_KEYS: Final = (*FLAG_COUNT_KEYS, *_PACE_KEYS)  # absent from partials written by earlier versions


class WindowMergeError(AnalysisError, ValueError):
    """Two partials of different windows were merged."""


def hist_bin(exec_ms: np.ndarray) -> np.ndarray:
    """Histogram bin of each execution time (ms): 0 below 1 ms, then 20 per decade, capped.

    Parameters
    ----------
    exec_ms : numpy.ndarray
        Non-negative times in ms.

    Returns
    -------
    numpy.ndarray
        ``int64`` bin numbers in ``[0, 161]``.
    """
    values = np.asarray(exec_ms, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        bins = np.floor(np.log10(np.maximum(values, 1.0)) * HIST_BINS_PER_DECADE).astype(np.int64) + 1
    bins = np.where(values < 1.0, 0, bins)  # >= 0 from here on
    return np.minimum(bins, _LAST_BIN)


def _bin_middle(b: int) -> float:
    if b <= 0:
        return 0.5
    return 10.0 ** ((b - 0.5) / HIST_BINS_PER_DECADE)


def hist_quantile(agg: Mapping[str, Any], q: float = 0.95) -> float | None:
    """Approximate quantile of the execution time from a partial's histogram (nearest rank).

    Parameters
    ----------
    agg : Mapping
        A partial aggregate.
    q : float
        Quantile in ``(0, 1]``.

    Returns
    -------
    float or None
        The quantile in ms, ``None`` when no execution time was seen.
    """
    if not 0.0 < q <= 1.0:
        msg = f"The quantile q must be in (0, 1]. Got {q!r} instead."
        raise AnalysisError(msg)
    n = int(agg["exec_count"])
    if n == 0:
        return None
    rank = max(1, math.ceil(q * n))
    seen = 0
    for key in sorted(agg["exec_hist"], key=int):
        seen += int(agg["exec_hist"][key])
        if seen >= rank:
            value = _bin_middle(int(key))
            return float(min(max(value, agg["exec_min_ms"]), agg["exec_max_ms"]))
    return float(agg["exec_max_ms"])  # unreachable when the histogram and count agree


def arrival_ms(batch: pa.RecordBatch | pa.Table) -> np.ndarray:
    """``arrival_timestamp`` as epoch ms (floored), the time every window is aligned on (no nulls)."""
    col = batch.column("arrival_timestamp")
    typ = col.type
    if pa.types.is_timestamp(typ):  # nulls are filtered out before this
        micros = np.asarray(col.to_numpy(zero_copy_only=False)).astype("datetime64[us]").view(np.int64)
        return np.floor_divide(micros, 1000)
    if pa.types.is_integer(typ):  # already epoch ms
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.int64)
    msg = (f"arrival_timestamp must be a timestamp (UTC) or epoch-ms integer column. Got {typ} instead. "
           "Decode messages with workbench.data.codec.decode_values.")
    raise AnalysisError(msg)


def saturate(value: int) -> int:
    """``value`` clipped to the int64 range."""
    return INT64_MAX if value > INT64_MAX else INT64_MIN if value < INT64_MIN else value


def _may_overflow(values: np.ndarray) -> bool:
    """True when some sum of ``values``' elements could leave the int64 range (checked once per batch)."""
    if not len(values):
        return False
    bound = max(abs(int(values.max())), abs(int(values.min())))
    return bound * len(values) >= _SAFE


def _sum(values: np.ndarray, exact: bool) -> int:
    if not exact:
        return int(values.sum())
    return saturate(sum(values.tolist()))  # Python ints: exact, then clipped


def _ints(batch: pa.RecordBatch | pa.Table, name: str) -> np.ndarray:
    """An integer column as exact int64 with nulls as 0 (never through float64, which rounds above 2**53)."""
    col = batch.column(name)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.type != pa.int64():
        return numeric_values(batch, name, np.int64)
    n, buffers = len(col), col.buffers()
    values = np.frombuffer(buffers[1], dtype=np.int64, count=n, offset=col.offset * 8)
    if col.null_count:
        bits = np.unpackbits(np.frombuffer(buffers[0], dtype=np.uint8), bitorder="little")
        values = np.where(bits[col.offset:col.offset + n].astype(bool), values, 0)
    return values


def _ints_or_zeros(batch: pa.RecordBatch | pa.Table, name: str) -> np.ndarray:
    """:func:`_ints`, or all zeros when the batch lacks the column (an optional input)."""
    if name not in batch.schema.names:
        return np.zeros(batch.num_rows, dtype=np.int64)
    return _ints(batch, name)


def _flags(batch: pa.RecordBatch | pa.Table, name: str) -> np.ndarray:
    """A boolean column as numpy ``bool`` with nulls as false (all false when the batch lacks it)."""
    if name not in batch.schema.names:
        return np.zeros(batch.num_rows, dtype=bool)
    col = batch.column(name)
    if col.null_count:
        col = pc.fill_null(col, False)
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=bool)


def _not_null(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if not col.null_count:
        return np.ones(len(col), dtype=bool)
    return ~np.asarray(pc.is_null(col).to_numpy(zero_copy_only=False), dtype=bool)


def _pace(batch: pa.RecordBatch | pa.Table, exec_ms: np.ndarray, counted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: counts towards the pace (0/1), and its log pace in milli-nepers (0 where it does not).

    ``counted`` marks the rows that may count: an execution time, not a cache hit, not aborted.
    """
    scanned = _ints(batch, "mbytes_scanned")
    paced = counted & (scanned >= PACE_MIN_MB)
    mnp = np.zeros(len(paced), dtype=np.int64)
    if paced.any():  # the log only where it counts (a third to a half of the rows)
        ratio = np.maximum(exec_ms[paced], 1).astype(np.float64) / scanned[paced]
        mnp[paced] = np.rint(1000.0 * np.log(ratio))
    return paced.astype(np.int64), mnp


def partial_aggregates(batch: pa.RecordBatch | pa.Table, window_ms: int = DEFAULT_WINDOW_MS) -> list[dict]:
    """Per ``(instance_id, window_start)`` partial aggregates of one batch of rows.

    Parameters
    ----------
    batch : pyarrow.RecordBatch or pyarrow.Table
        Redset rows in arrival order (``instance_id``, ``arrival_timestamp``, ``cluster_size`` and the
        classifier's columns are needed).
    window_ms : int
        Tumbling window length in ms (default 10 minutes).

    Returns
    -------
    list of dict
        One partial per window present in the batch, sorted by instance then window start.
        Rows with a null ``instance_id`` or ``arrival_timestamp`` are skipped (and logged).
    """
    if window_ms <= 0:
        msg = f"window_ms must be a positive number of milliseconds. Got {window_ms!r} instead."
        raise AnalysisError(msg)
    names = set(batch.schema.names)
    missing = tuple(n for n in _NEEDED if n not in names)
    if missing:
        msg = f"partial_aggregates needs the columns {list(_NEEDED)}; the batch lacks {list(missing[:5])}."
        raise MissingColumnsError(msg, missing=missing)
    if batch.num_rows == 0:
        return []
    inst_col = batch.column("instance_id")
    ts_col = batch.column("arrival_timestamp")
    if inst_col.null_count or ts_col.null_count:
        valid = _not_null(inst_col) & _not_null(ts_col)
        logger.warning("skipping rows without instance_id or arrival_timestamp count=%d", int((~valid).sum()))
        batch = batch.filter(pa.array(valid))
        if batch.num_rows == 0:
            return []

    instance = _ints(batch, "instance_id")
    arrival = arrival_ms(batch)
    start = np.floor_divide(arrival, window_ms) * window_ms
    codes = classify_codes(batch).astype(np.int64)
    spilled = _ints(batch, "mbytes_spilled")
    queue = _ints(batch, "queue_duration_ms")
    compile_ms = _ints_or_zeros(batch, "compile_duration_ms")
    exec_col = batch.column("execution_duration_ms")
    exec_valid = _not_null(exec_col)
    exec_ms = _ints(batch, "execution_duration_ms")
    cached, aborted = _flags(batch, "was_cached"), _flags(batch, "was_aborted")
    flags = np.stack([cached, aborted, spilled > 0,
                      queue > QUEUE_MIN_MS, exec_ms > SLOW_MS, compile_ms > LONG_COMPILE_MS]).astype(np.int64)
    size_col = batch.column("cluster_size")
    size_valid = _not_null(size_col)
    size = _ints(batch, "cluster_size")
    bins = hist_bin(exec_ms)
    paced, pace_mnp = _pace(batch, exec_ms, exec_valid & ~cached & ~aborted)
    exact = {"spilled": _may_overflow(spilled), "queue": _may_overflow(queue), "exec": _may_overflow(exec_ms),
             "compile": _may_overflow(compile_ms)}

    # Stable sort by (instance, window): keeps arrival order inside each group.
    order = np.lexsort((start, instance))
    inst_s, start_s = instance[order], start[order]
    boundary = np.ones(len(order), dtype=bool)
    boundary[1:] = (inst_s[1:] != inst_s[:-1]) | (start_s[1:] != start_s[:-1])
    group_starts = np.flatnonzero(boundary)
    group_ends = np.append(group_starts[1:], len(order))
    # Compile time per group in one call each (not two numpy calls per window); exact sums as below
    # when the batch could overflow int64.
    compile_sorted = compile_ms[order]
    compile_max = np.maximum.reduceat(compile_sorted, group_starts).tolist()
    compile_sum = None if exact["compile"] else np.add.reduceat(compile_sorted, group_starts).tolist()
    pace_count = np.add.reduceat(paced[order], group_starts).tolist()
    pace_sum = np.add.reduceat(pace_mnp[order], group_starts).tolist()

    out: list[dict] = []
    for k, (g0, g1) in enumerate(zip(group_starts, group_ends, strict=True)):
        idx = order[g0:g1]
        counts = np.bincount(codes[idx], minlength=len(CLASSES))
        arr = arrival[idx]
        ev = exec_valid[idx]
        ex = exec_ms[idx][ev]
        hist_c = np.bincount(bins[idx][ev], minlength=_LAST_BIN + 1)
        hist_b = np.flatnonzero(hist_c)
        sv = size_valid[idx]
        cluster_size: int | None = None
        cluster_at = -1
        if sv.any():
            sized = np.flatnonzero(sv)
            # latest arrival wins; among equal arrivals the later row (stable argmax on reversed order)
            arr_sized = arr[sized]
            best = sized[len(sized) - 1 - int(np.argmax(arr_sized[::-1]))]
            cluster_size, cluster_at = int(size[idx][best]), int(arr[best])
        agg: dict[str, Any] = {
            "instance_id": int(inst_s[g0]),
            "window_start_ms": int(start_s[g0]),
            "window_ms": int(window_ms),
            "cluster_size": cluster_size,
            "cluster_size_at_ms": cluster_at,
            "total_queries": len(idx),
            **{key: int(c) for key, c in zip(CLASS_COUNT_KEYS, counts, strict=True)},
            **dict(zip(FLAG_COUNT_KEYS, flags[:, idx].sum(axis=1).tolist(), strict=True)),
            "queue_max_ms": int(queue[idx].max()),
            "spilled_mb": _sum(spilled[idx], exact["spilled"]),
            "queue_ms": _sum(queue[idx], exact["queue"]),
            "compile_max_ms": compile_max[k],
            "compile_ms": compile_sum[k] if compile_sum is not None else _sum(compile_ms[idx], True),
            "exec_ms": _sum(exec_ms[idx], exact["exec"]),
            "pace_queries": pace_count[k],
            "pace_log_sum": pace_sum[k],
            "exec_count": len(ex),
            "exec_min_ms": int(ex.min()) if len(ex) else None,
            "exec_max_ms": int(ex.max()) if len(ex) else None,
            "exec_hist": dict(zip(map(str, hist_b.tolist()), hist_c[hist_b].tolist(), strict=True)),
            "anomalies": 0,
            "first_arrival_ms": int(arr.min()),
            "last_arrival_ms": int(arr.max()),
        }
        out.append(agg)
    return out


def _opt(fn: Any, a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return fn(a, b)


def merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Combine two partials of the same window (associative and commutative; inputs are not changed).

    Parameters
    ----------
    a, b : Mapping
        Partials from :func:`partial_aggregates` or :func:`merge`; ``b`` wins ``cluster_size`` ties.

    Returns
    -------
    dict
        The combined partial.

    Raises
    ------
    WindowMergeError
        If ``a`` and ``b`` belong to different windows.
    """
    key_a = (a["instance_id"], a["window_start_ms"], a["window_ms"])
    key_b = (b["instance_id"], b["window_start_ms"], b["window_ms"])
    if key_a != key_b:
        msg = (f"merge combines partials of one window (instance_id, window_start_ms, window_ms); got {key_a} "
               f"and {key_b}. Group partials by that key first (see merge_all).")
        raise WindowMergeError(msg)
    out: dict[str, Any] = {"instance_id": key_a[0], "window_start_ms": key_a[1], "window_ms": key_a[2]}
    if b["cluster_size"] is not None and (a["cluster_size"] is None
                                          or b["cluster_size_at_ms"] >= a["cluster_size_at_ms"]):
        out["cluster_size"], out["cluster_size_at_ms"] = b["cluster_size"], b["cluster_size_at_ms"]
    else:
        out["cluster_size"], out["cluster_size_at_ms"] = a["cluster_size"], a["cluster_size_at_ms"]
    for key in _SUM_KEYS:
        out[key] = saturate(int(a[key]) + int(b[key]))
    for key in _NEW_SUM_KEYS:
        out[key] = int(a.get(key, 0)) + int(b.get(key, 0))
    out["queue_max_ms"] = max(int(a.get("queue_max_ms", 0)), int(b.get("queue_max_ms", 0)))
    out["compile_ms"] = saturate(int(a.get("compile_ms", 0)) + int(b.get("compile_ms", 0)))
    out["compile_max_ms"] = max(int(a.get("compile_max_ms", 0)), int(b.get("compile_max_ms", 0)))
    out["exec_min_ms"] = _opt(min, a["exec_min_ms"], b["exec_min_ms"])
    out["exec_max_ms"] = _opt(max, a["exec_max_ms"], b["exec_max_ms"])
    hist = dict(a["exec_hist"])
    for k, c in b["exec_hist"].items():
        hist[k] = hist.get(k, 0) + int(c)
    out["exec_hist"] = hist
    out["first_arrival_ms"] = min(a["first_arrival_ms"], b["first_arrival_ms"])
    out["last_arrival_ms"] = max(a["last_arrival_ms"], b["last_arrival_ms"])
    return out


def merge_all(partials: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Merge any number of partials by window key; result sorted by (instance_id, window_start_ms)."""
    acc: dict[tuple[int, int, int], dict[str, Any]] = {}
    for p in partials:
        key = (p["instance_id"], p["window_start_ms"], p["window_ms"])
        acc[key] = merge(acc[key], p) if key in acc else dict(p)
    return [acc[k] for k in sorted(acc)]


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def finalize(agg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``window_stats`` output row of a (fully merged) partial.

    Parameters
    ----------
    agg : Mapping
        A partial aggregate.

    Returns
    -------
    dict
        ``window_start``, ``window_end`` (tz-aware UTC datetimes), ``instance_id``, ``cluster_size``
        (``None`` when unknown), ``total_queries``, the five ``<class>_queries`` counts,
        the :data:`FLAG_COUNT_KEYS` counts, ``total_spilled_mb``, ``total_queue_time_ms``,
        ``total_exec_time_ms``, ``total_compile_time_ms`` (exact ints), ``max_queue_time_ms``,
        ``max_compile_time_ms``, ``pace_queries``, ``pace_log_sum``,
        ``p95_exec_time_ms`` (approximate, ``None`` without execution times), ``max_exec_time_ms``,
        ``anomalies``, ``first_arrival``, ``last_arrival`` (UTC datetimes).
    """
    start = int(agg["window_start_ms"])
    return {
        "window_start": _dt(start),
        "window_end": _dt(start + int(agg["window_ms"])),
        "instance_id": int(agg["instance_id"]),
        "cluster_size": agg["cluster_size"],
        "total_queries": int(agg["total_queries"]),
        **{key: int(agg[key]) for key in CLASS_COUNT_KEYS},
        **{key: int(agg.get(key, 0)) for key in FLAG_COUNT_KEYS},
        "total_spilled_mb": int(agg["spilled_mb"]),
        "total_queue_time_ms": int(agg["queue_ms"]),
        "max_queue_time_ms": int(agg.get("queue_max_ms", 0)),
        "total_compile_time_ms": int(agg.get("compile_ms", 0)),
        "max_compile_time_ms": int(agg.get("compile_max_ms", 0)),
        "total_exec_time_ms": int(agg["exec_ms"]),
        "pace_queries": int(agg.get("pace_queries", 0)),
        "pace_log_sum": int(agg.get("pace_log_sum", 0)),
        "p95_exec_time_ms": hist_quantile(agg, 0.95),
        "max_exec_time_ms": agg["exec_max_ms"],
        "anomalies": int(agg["anomalies"]),
        "first_arrival": _dt(int(agg["first_arrival_ms"])),
        "last_arrival": _dt(int(agg["last_arrival_ms"])),
    }
