"""Pre-execution features, computed column-wise from Arrow data (never row by row).

The model sees one ``float32`` matrix ``[N, F]`` (:attr:`FeatureBuilder.feature_names_`):

* what is known before a query runs: query type (ordinal code learned at fit), plan counts,
  table counts parsed from the comma-separated id lists, compile time, cluster size, arrival
  hour and day of week (UTC), missing-value indicators;
* the history of the query's fingerprint on its instance in the training window: how often it
  ran (log count), median, IQR and 90th percentile of ``log1p(execution_duration_ms)``, median
  ``log1p(mbytes_scanned)``; plus the same execution statistics per instance as a fallback.

History statistics are stored with the model version as Parquet lookup tables, keyed by
``(instance_id, feature_fingerprint)`` and ``instance_id``. During ``fit_transform`` the
training rows get *out-of-fold* history (statistics from the other folds), so a rare
fingerprint's own runtime never leaks into its features.

The same lookup supplies the detector's references for the observed signals (queue time,
scanned and spilled MB, compile time) via :meth:`FeatureBuilder.references`. Compile time is also a
feature; as a signal its history counts only the runs that compiled (:data:`COMPILED_MS`). Two
statistics serve the detector only: each instance's ordinary wait (the median of its runs that waited,
:data:`WAITED_MS`) and each statement's largest spill (for its first-spill path). One serves a settled
day's slower groups only: how far past that reference each instance's queries wait at each UTC hour of
the day as a rule (:meth:`FeatureBuilder.usual_wait`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workbench.analysis._columns import arrival_us
from workbench.data.schema import COLUMNS, LABEL_COLUMNS, query_type_key
from workbench.ml.detector import (
    RAN_IN_FULL,
    RUNTIME_SCALE,
    SCAN_KNOWN,
    SHORTEST_RUN,
    SMALLEST_SCAN,
    SPILL_HISTORY,
    THROUGHPUT,
)
from workbench.ml.exceptions import ColumnMismatchError, NotFittedError

__all__ = [
    "COMPILED_MS",
    "FEATURE_NAMES",
    "INPUT_COLUMNS",
    "OBSERVED_COLUMNS",
    "REFERENCE_SOURCES",
    "REFERENCE_SOURCE_COLUMNS",
    "RUN_FLAG_COLUMNS",
    "SIGNALS",
    "WAITED_MS",
    "FeatureBuilder",
    "as_never_seen_instance",
    "check_columns",
]

logger = logging.getLogger(__name__)

#: Columns the features are computed from (all known before execution).
INPUT_COLUMNS: tuple[str, ...] = (
    "instance_id",
    "cluster_size",
    "arrival_timestamp",
    "compile_duration_ms",
    "feature_fingerprint",
    "query_type",
    "num_permanent_tables_accessed",
    "num_external_tables_accessed",
    "num_system_tables_accessed",
    "read_table_ids",
    "write_table_ids",
    "num_joins",
    "num_scans",
    "num_aggregations",
)

#: Observed signals: the target and the detector's other residuals (compile time is an input too).
SIGNALS: dict[str, str] = {
    "exec": "execution_duration_ms",
    "queue": "queue_duration_ms",
    "scan": "mbytes_scanned",
    "spill": "mbytes_spilled",
    "compile": "compile_duration_ms",
}
#: Columns known only after execution.
OBSERVED_COLUMNS: tuple[str, ...] = tuple(c for c in SIGNALS.values() if c not in INPUT_COLUMNS)
#: Signals whose history statistics (:data:`_STATS`) are taken over all of a group's rows.
_ALL_RUNS_SIGNALS: tuple[str, ...] = ("exec", "queue", "scan", "spill")
#: A run compiled when its compile time reached this many ms: a query whose segments are cached
#: compiles nothing (Redshift reports 0 ms, a few ms at most). The compile signal's history is that of
#: the compiled runs: a fingerprint that compiles one run in five has a median compile time of ~0,
#: which would make every ordinary compilation of it look like a blow-up.
COMPILED_MS = 10.0
#: Statistics of the compiled runs kept per group (see :func:`_compiled_stats`): their median and IQR
#: of log compile time, NaN for a group with fewer compiled runs than the builder's ``min_history``.
_MED_COMPILE, _IQR_COMPILE = "med_compile", "iqr_compile"
#: Instance column: the typical IQR of a fingerprint's log compile time (see ``_add_compile_spread``).
_COMPILE_SPREAD = "fp_iqr_compile"
#: A run waited in the WLM queue when its queue time reached this many ms (an admitted query reports
#: 0 ms, a few ms at most).
WAITED_MS = 10.0
#: Instance column (and global value): the median log queue time of the runs that waited
#: (:data:`WAITED_MS`), the length of an ordinary wait on the instance (see :meth:`FeatureBuilder.references`).
_MED_WAITED = "med_waited_queue"
#: Fingerprint column: the largest log MB spilled of the statement's runs in the window (0: it never
#: spilled), for the detector's first-spill path (:data:`~workbench.ml.detector.SPILL_HISTORY`).
_MAX_SPILL = "max_spill"
#: Fingerprint columns: the shortest log runtime (ms) of the statement's runs in the window that ran in
#: full (no result-cache hit; aborted runs are not training rows), and how many there were, for the
#: detector's shortest-run path (:data:`~workbench.ml.detector.SHORTEST_RUN`). Absent when the window has
#: no ``was_cached`` column.
_MIN_EXEC, _FULL_RUNS = "min_full_exec", "full_runs"
#: Fingerprint columns: the smallest log MB scanned of the statement's runs in full whose scan was measured,
#: and how many there were, for the detector's smallest-scan path (:data:`~workbench.ml.detector.SMALLEST_SCAN`).
_MIN_SCAN, _SCAN_RUNS = "min_full_scan", "full_scan_runs"
#: Instance column: the log runtime (ms) of the instance's 1-in-100 query in the window (NaN with fewer
#: than :data:`_P99_MIN_RUNS` runs), the scale of its heavy work (:data:`~workbench.ml.detector.RUNTIME_SCALE`).
_P99_EXEC = "p99_exec"
#: Runs before an instance's 99th percentile is its own (a 1-in-100 level needs a few hundred runs).
_P99_MIN_RUNS = 200
#: Instance columns, one per UTC hour of the day: how far past their usual wait (the queue reference) the
#: instance's queries waited in that hour as a rule (:meth:`FeatureBuilder.usual_wait`); NaN: no rule.
_HOUR_WAIT_COLUMNS = tuple(f"hour_wait_{hour:02d}" for hour in range(24))
#: A 10-minute slot of one day speaks for its hour with at least this many judged runs.
_SLOT_MIN_RUNS = 5
#: ... and a slot's excess is a rule when it held on at least this many days of the window.
_SLOT_MIN_DAYS = 2
_SLOT_US = 600_000_000
_DAY_US = 86_400_000_000

_COUNT_COLUMNS = (
    "num_permanent_tables_accessed",
    "num_external_tables_accessed",
    "num_system_tables_accessed",
    "num_joins",
    "num_scans",
    "num_aggregations",
)

FEATURE_NAMES: tuple[str, ...] = (
    "query_type_code",
    *_COUNT_COLUMNS,
    "compile_duration_ms",
    "cluster_size",
    "read_table_count",
    "write_table_count",
    "arrival_hour",
    "arrival_dow",
    "fp_log_count",
    "fp_med_log_exec",
    "fp_iqr_log_exec",
    "fp_p90_log_exec",
    "fp_med_log_scan",
    "inst_med_log_exec",
    "inst_iqr_log_exec",
    "fp_is_missing",
    "fp_is_unseen",
    "cluster_size_is_missing",
    "compile_duration_ms_is_missing",
)

#: Statistics kept per group: (signal, quantile, name).
_STATS: tuple[tuple[str, float, str], ...] = (
    *[(s, q, f"{tag}_{s}") for s in _ALL_RUNS_SIGNALS for q, tag in ((0.25, "q25"), (0.5, "med"), (0.75, "q75"))],
    ("exec", 0.9, "p90_exec"),
    ("spill", 1.0, _MAX_SPILL),
)
_CARRIED = {"kafka_partition", "kafka_offset", "pred_mean_ms", "pred_q_ms", "score", "is_anomaly", "reason",
            "model_version", "expected_ms", "exec_ratio", "evidence_signal", "evidence_unit",
            "expected_value", "observed_value", "excess_value", "reference"}
#: Where a row's detector references come from (see :meth:`FeatureBuilder.transform_with_evidence`).
REFERENCE_SOURCES = np.array(["fingerprint", "instance", "global"], dtype=object)
_MISSING = -1.0  # sentinel for unknown numeric values (every real value is >= 0)
#: Reads of at least this many MB measure an instance's reading pace (the fixed overhead of a query
#: is small against them; the same 1 GB is the detector's materiality floor for a scan).
_PACE_MIN_MB = 1_000.0
#: Reads needed before an instance's own pace is used (else the fleet's).
_PACE_MIN_READS = 20
#: The pace is the slow end of the instance's reads (9 in 10 went faster): crediting extra MB at
#: it excuses a normal big read's runtime, so only time beyond any usual pace counts as a stall.
_PACE_QUANTILE = 0.9
_PACE = "q90_log_ms_per_mb"
_FP_TABLE = "fingerprint_stats.parquet"
_INSTANCE_TABLE = "instance_stats.parquet"


def check_columns(columns: list[str] | tuple[str, ...], required: tuple[str, ...], *,
                  what: str = "model") -> None:
    """Raise :class:`ColumnMismatchError` when ``columns`` lacks any of ``required``.

    The error lists the missing names and the input names the model does not know (at most
    five each), like scikit-learn's feature-name check.
    """
    present = set(columns)
    missing = [c for c in required if c not in present]
    if missing:
        # Other Redset, label, Kafka and score columns are expected extras, not "unseen".
        known = set(required) | set(OBSERVED_COLUMNS) | set(COLUMNS) | set(LABEL_COLUMNS) | _CARRIED
        unseen = [c for c in columns if c not in known]
        raise ColumnMismatchError(missing=missing, unseen=unseen, what=what)


def as_never_seen_instance(table: pa.Table, known: pa.ChunkedArray | pa.Array | None = None) -> pa.Table:
    """``table`` with every row moved to one instance id that neither its rows nor ``known`` (the instance
    ids a :class:`FeatureBuilder` was fitted on, when they are not all in ``table``) have: its queries as
    that builder reads those of an instance first seen after training (reference source ``global``), the
    calibration rows of that source (see :meth:`~workbench.ml.detector.ResidualDetector.fit`). The
    instance id is no feature of its own."""
    column = table.column("instance_id")
    extra = [] if known is None else known.chunks if isinstance(known, pa.ChunkedArray) else [known]
    ids = pa.chunked_array([*column.chunks, *(chunk.cast(column.type) for chunk in extra)], column.type)
    unseen = pa.array(np.full(table.num_rows, _unused_id(ids)), column.type)
    index = table.schema.get_field_index("instance_id")
    return table.set_column(index, table.schema.field(index), unseen)


def _unused_id(column: pa.ChunkedArray) -> int:
    """An integer of ``column``'s type that none of its values is: one past the largest, else one before
    the smallest, else the first gap (ids from another tool may reach either end of the type)."""
    ids = np.unique(pc.drop_null(column).to_numpy(zero_copy_only=False).astype(np.int64))
    if not len(ids):
        return 0
    info = np.iinfo(column.type.to_pandas_dtype())
    if ids[-1] < info.max:
        return int(ids[-1]) + 1
    if ids[0] > info.min:
        return int(ids[0]) - 1
    return int(ids[np.flatnonzero(ids[1:] > ids[:-1] + 1)[0]]) + 1  # np.diff of int64 ends would wrap


def _as_table(data: pa.Table | pa.RecordBatch) -> pa.Table:
    return pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data


def _num(table: pa.Table, name: str) -> np.ndarray:
    """A column as float64 with NaN for nulls."""
    col = table.column(name)
    return col.to_numpy(zero_copy_only=False).astype(np.float64, copy=False) if col.null_count == 0 \
        else pc.fill_null(pc.cast(col, pa.float64(), safe=False), np.nan).to_numpy(zero_copy_only=False)


def _instance_ids(table: pa.Table) -> np.ndarray:
    """``instance_id`` as exact int64 (a null is one unknown instance, the int64 minimum). Not through
    float64 (:func:`_num`): ids of another tool may be 64-bit hashes, which a double rounds together."""
    column = pc.cast(table.column("instance_id"), pa.int64())
    return pc.fill_null(column, np.iinfo(np.int64).min).to_numpy(zero_copy_only=False)


def _utc_hours(table: pa.Table) -> np.ndarray:
    """The UTC hour of the day of each row's arrival (-1 where it has none)."""
    arrival = arrival_us(table)
    return np.where(arrival == np.iinfo(np.int64).min, -1, np.floor_divide(arrival % _DAY_US, 3_600_000_000))


def _grouped_medians(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct column of ``keys`` (``[k, n]``): the key, the median of its ``values`` and their count."""
    if not values.size:
        return keys[:, :0], values[:0], np.zeros(0, dtype=np.int64)
    order = np.lexsort((values, *keys[::-1]))
    keys, values = keys[:, order], values[order]
    starts = np.flatnonzero(np.r_[True, (keys[:, 1:] != keys[:, :-1]).any(axis=0)])
    counts = np.diff(np.r_[starts, len(values)])
    lower = values[starts + (counts - 1) // 2]
    upper = values[starts + counts // 2]
    return keys[:, starts], (lower + upper) / 2.0, counts


def _log_signal(table: pa.Table, signal: str) -> np.ndarray:
    """``log1p`` of an observed signal; nulls and negatives count as 0."""
    values = np.nan_to_num(_num(table, SIGNALS[signal]), nan=0.0)
    return np.log1p(np.clip(values, 0.0, None))


def observed_signals(table: pa.Table) -> dict[str, np.ndarray]:
    """The observed signals the detector judges (:func:`_log_signal` each), and :data:`SCAN_KNOWN`.

    A NULL scan counts as 0 MB in the signals, and a spill against 0 MB scanned is a verdict about a
    scan nobody measured: Redset's serverless SELECTs lack ``mbytes_scanned`` about half the time, and
    195 of 196 ``spill_exceeds_scan`` alerts of a tester's log were such rows. The mask lets the detector
    keep no verdict on them.
    """
    out = {s: _log_signal(table, s) for s in SIGNALS}
    out[SCAN_KNOWN] = pc.is_valid(table.column(SIGNALS["scan"])).to_numpy(zero_copy_only=False)
    out[RAN_IN_FULL] = _ran_in_full(table)
    return out


#: The flags of a run that did not do its work: a result-cache hit, an abort.
RUN_FLAG_COLUMNS = ("was_cached", "was_aborted")


def _ran_in_full(table: pa.Table, flags: tuple[str, ...] = RUN_FLAG_COLUMNS) -> np.ndarray:
    """Per row: the query ran its work (each of ``flags`` false; a NULL, or a log without the column, is
    not known to have: no verdict on how short it ran)."""
    full = np.ones(table.num_rows, dtype=bool)
    for name in flags:
        if name not in table.column_names:
            return np.zeros(table.num_rows, dtype=bool)
        flag = pc.cast(table.column(name), pa.bool_(), safe=False)
        full &= pc.fill_null(pc.invert(flag), False).to_numpy(zero_copy_only=False)
    return full


def _id_count(table: pa.Table, name: str) -> np.ndarray:
    """Number of ids in a comma-separated list (0 for null or empty)."""
    col = pc.utf8_trim_whitespace(pc.cast(table.column(name), pa.string()))
    commas = pc.count_substring(col, ",")
    nonempty = pc.greater(pc.utf8_length(col), 0)
    count = pc.if_else(nonempty, pc.add(commas, 1), 0)
    return pc.fill_null(count, 0).to_numpy(zero_copy_only=False).astype(np.float64)


#: The columns :meth:`FeatureBuilder.reference_source` reads (those of :func:`_fp_keys`).
REFERENCE_SOURCE_COLUMNS = ("instance_id", "feature_fingerprint")
#: :meth:`FeatureBuilder.statement_homes` finds no home when more than this share of a window's fingerprints
#: ran on several instances: Redset's fingerprints virtually never repeat across clusters, and a log whose
#: fingerprints do is not scoped by them.
SHARED_FINGERPRINTS_MAX = 0.01
#: The history statistics :meth:`FeatureBuilder._source` reads.
_SOURCE_STATISTICS = ("n", "med_exec")
#: The history statistics :meth:`FeatureBuilder.queue_reference` reads.
_QUEUE_STATISTICS = ("n", "med_queue", _MED_WAITED)


def _fp_keys(table: pa.Table) -> pa.ChunkedArray:
    """``"<instance_id>|<fingerprint>"``; null when the fingerprint is null."""
    inst = pc.cast(table.column("instance_id"), pa.string())
    return pc.binary_join_element_wise(inst, pc.cast(table.column("feature_fingerprint"), pa.string()), "|")


def _group_quantiles(codes: np.ndarray, values: np.ndarray, n_groups: int,
                     qs: tuple[float, ...]) -> np.ndarray:
    """Per-group linear-interpolated quantiles, ``[n_groups, len(qs)]`` (NaN for empty groups)."""
    order = np.lexsort((values, codes))
    return _sorted_group_quantiles(codes[order], values[order], n_groups, qs)


def _sorted_group_quantiles(codes: np.ndarray, v: np.ndarray, n_groups: int,
                            qs: tuple[float, ...]) -> np.ndarray:
    """:func:`_group_quantiles` of rows already sorted by ``(code, value)``."""
    return _counted_group_quantiles(np.bincount(codes, minlength=n_groups), v, qs)


def _counted_group_quantiles(counts: np.ndarray, v: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """:func:`_sorted_group_quantiles` given each group's number of rows instead of the rows' codes."""
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    out = np.full((len(counts), len(qs)), np.nan)
    has = counts > 0
    last = max(len(v) - 1, 0)
    for j, q in enumerate(qs):
        pos = starts + q * np.maximum(counts - 1, 0)
        lo = np.clip(np.floor(pos).astype(np.int64), 0, last)
        hi = np.clip(np.ceil(pos).astype(np.int64), 0, last)
        frac = pos - np.floor(pos)
        if len(v):
            out[has, j] = (v[lo] + (v[hi] - v[lo]) * frac)[has]
    return out


def _group_order(codes: np.ndarray, value_order: np.ndarray, n_groups: int) -> np.ndarray:
    """The rows of ``value_order`` (sorted by value) sorted by ``(code, value)``.

    A stable sort by code of rows already in value order: with at most 65,536 groups the codes
    sort as ``uint16``, which numpy sorts stably with a radix sort (~5x faster than the
    ``lexsort`` of ``(value, code)`` it replaces; one value sort per signal serves every grouping).
    Up to 2**32 groups (a week's fingerprints: ~200k) they sort in two such passes, low then high
    16 bits (a stable sort's result is unique, so the same order as one int64 sort, ~3x faster).
    """
    group = codes[value_order]
    if n_groups <= 1 << 16:
        return value_order[np.argsort(group.astype(np.uint16), kind="stable")]
    if n_groups <= 1 << 32:
        by_low = np.argsort((group & 0xFFFF).astype(np.uint16), kind="stable")
        by_high = np.argsort((group[by_low] >> 16).astype(np.uint16), kind="stable")
        return value_order[by_low[by_high]]
    return value_order[np.argsort(group, kind="stable")]


def _signal_stats(signal: str) -> tuple[tuple[float, ...], list[str]]:
    """The quantiles and statistic names of :data:`_STATS` for one signal."""
    wanted = [(q, name) for s, q, name in _STATS if s == signal]
    return tuple(q for q, _ in wanted), [name for _, name in wanted]


def _stats(codes: np.ndarray, logs: dict[str, np.ndarray], n_groups: int) -> dict[str, np.ndarray]:
    """Count plus every statistic of :data:`_STATS` for each group code."""
    result: dict[str, np.ndarray] = {"n": np.bincount(codes, minlength=n_groups).astype(np.float64)}
    for signal in _ALL_RUNS_SIGNALS:
        qs, names = _signal_stats(signal)
        table = _group_quantiles(codes, logs[signal], n_groups, qs)
        for j, name in enumerate(names):
            result[name] = table[:, j]
    return result


def _sorted_stats(codes: np.ndarray, logs: dict[str, np.ndarray], orders: dict[str, np.ndarray],
                  n_groups: int) -> dict[str, np.ndarray]:
    """:func:`_stats` of the rows in ``orders`` (row indices sorted by ``(code, value)`` per signal)."""
    result: dict[str, np.ndarray] = {}
    for signal in _ALL_RUNS_SIGNALS:
        order = orders[signal]
        sorted_codes = codes[order]
        if not result:
            result["n"] = np.bincount(sorted_codes, minlength=n_groups).astype(np.float64)
        qs, names = _signal_stats(signal)
        table = _sorted_group_quantiles(sorted_codes, logs[signal][order], n_groups, qs)
        for j, name in enumerate(names):
            result[name] = table[:, j]
    return result


def _out_of_fold_stats(codes: np.ndarray, logs: dict[str, np.ndarray], orders: dict[str, np.ndarray],
                       n_groups: int, folds: np.ndarray, n_folds: int, targets: np.ndarray) -> dict[str, np.ndarray]:
    """Per row of ``targets`` (row numbers), :func:`_stats` of its group over the rows of the other
    folds (NaN for rows without a group, ``code < 0``; the statistics are NaN too where the other
    folds hold none of the group). Every row counts in the statistics, targeted or not.

    ``orders``: per signal, the rows with a group sorted by ``(code, value)``. Leaving out one
    fold keeps that order sorted, so each signal's values and fold labels are laid out in it once
    and a fold's statistics take one sequential mask per signal (random gathers per fold and
    signal were most of the training features' time); the values equal :func:`_stats` of the
    other folds' rows.
    """
    grouped = np.flatnonzero(codes >= 0)
    per_fold = np.bincount(folds[grouped] * n_groups + codes[grouped],
                           minlength=n_folds * n_groups).reshape(n_folds, n_groups)
    total = per_fold.sum(axis=0)
    laid_out = {s: (folds[orders[s]], logs[s][orders[s]]) for s in _ALL_RUNS_SIGNALS}
    n = len(targets)
    result = {"n": np.full(n, np.nan)}
    for signal in _ALL_RUNS_SIGNALS:
        result.update({name: np.full(n, np.nan) for name in _signal_stats(signal)[1]})
    target_codes, target_folds = codes[targets], folds[targets]
    for k in range(n_folds):
        counts = total - per_fold[k]
        rows = np.flatnonzero((target_folds == k) & (target_codes >= 0))  # positions in ``targets``
        row_codes = target_codes[rows]
        result["n"][rows] = counts[row_codes]
        for signal in _ALL_RUNS_SIGNALS:
            qs, names = _signal_stats(signal)
            fold_of, values = laid_out[signal]
            table = _counted_group_quantiles(counts, values[fold_of != k], qs)
            for j, name in enumerate(names):
                result[name][rows] = table[row_codes, j]
    return result


def _sorted_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)`` of int64 values by hashing instead of sorting them all."""
    encoded = pc.dictionary_encode(pa.array(values))
    distinct = encoded.dictionary.to_numpy()
    order = np.argsort(distinct)
    rank = np.empty(len(order), dtype=np.intp)
    rank[order] = np.arange(len(order))
    return distinct[order], rank[encoded.indices.to_numpy()]


def _global_stats(logs: dict[str, np.ndarray]) -> dict[str, float]:
    """Every statistic of :data:`_STATS` over all rows (``np.quantile``: one partition per signal)."""
    values: dict[str, float] = {}
    for signal in _ALL_RUNS_SIGNALS:
        qs, names = _signal_stats(signal)
        values.update(zip(names, (float(v) for v in np.quantile(logs[signal], qs)), strict=True))
    out = {name: values[name] for _, _, name in _STATS}
    for name, signal, at_least in ((_MED_COMPILE, "compile", COMPILED_MS), (_MED_WAITED, "queue", WAITED_MS)):
        above = logs[signal][logs[signal] >= np.log1p(at_least)]
        if len(above):  # model.json stays strict JSON (no NaN)
            out[name] = float(np.median(above))
    return out


def _compiled_stats(codes: np.ndarray, log_compile: np.ndarray, value_order: np.ndarray, n_groups: int,
                    min_runs: int) -> dict[str, np.ndarray]:
    """Per group: median and IQR of log compile time over its compiled runs (:data:`COMPILED_MS`),
    NaN for a group with fewer than ``min_runs`` of them.

    ``value_order``: all rows sorted by ``log_compile``; rows without a group (``code < 0``) are left out.
    """
    med, iqr = _stats_above(codes, log_compile, value_order, n_groups, min_runs, COMPILED_MS)
    return {_MED_COMPILE: med, _IQR_COMPILE: iqr}


def _stats_above(codes: np.ndarray, log_values: np.ndarray, value_order: np.ndarray, n_groups: int,
                 min_runs: int, at_least: float) -> tuple[np.ndarray, np.ndarray]:
    """Per group: ``(median, IQR)`` of ``log_values`` over its runs of at least ``at_least`` (natural
    units), NaN for a group with fewer than ``min_runs`` of them; ``value_order`` sorts ``log_values``."""
    keep = (log_values[value_order] >= np.log1p(at_least)) & (codes[value_order] >= 0)
    order = _group_order(codes, value_order[keep], n_groups)
    counts = np.bincount(codes[order], minlength=n_groups)
    q25, med, q75 = _counted_group_quantiles(counts, log_values[order], (0.25, 0.5, 0.75)).T
    thin = counts < min_runs
    return np.where(thin, np.nan, med), np.where(thin, np.nan, q75 - q25)


def _shortest_full_runs(codes: np.ndarray, log_exec: np.ndarray, order: np.ndarray, n_groups: int,
                        full: np.ndarray, names: tuple[str, str] = (_MIN_EXEC, _FULL_RUNS)) -> dict[str, np.ndarray]:
    """Per group: the smallest ``log_exec`` of its runs in full (``full``) and their number (NaN, 0: none),
    under ``names``.

    ``order``: the rows with a group sorted by ``(code, log_exec)``, so each group's first run in full is
    its shortest (its smallest, for another value sorted the same way)."""
    kept = order[full[order]]
    group = codes[kept]
    runs = np.bincount(group, minlength=n_groups).astype(np.float64)
    shortest = np.full(n_groups, np.nan)
    first = np.flatnonzero(np.concatenate(([True], group[1:] != group[:-1]))) if len(group) else group
    shortest[group[first]] = log_exec[kept[first]]
    return {names[0]: shortest, names[1]: runs}


def _reading_pace(codes: np.ndarray, logs: dict[str, np.ndarray], n_groups: int) -> tuple[np.ndarray, float]:
    """Per group and fleet-wide :data:`_PACE_QUANTILE` of ``log(ms per MB)`` over reads of at least
    :data:`_PACE_MIN_MB` (NaN for a group with fewer than :data:`_PACE_MIN_READS` such reads)."""
    exec_ms, scan_mb = np.expm1(logs["exec"]), np.expm1(logs["scan"])
    big = (scan_mb >= _PACE_MIN_MB) & (exec_ms > 0)
    log_pace = np.log(exec_ms[big]) - np.log(scan_mb[big])
    per = _group_quantiles(codes[big], log_pace, n_groups, (_PACE_QUANTILE,))[:, 0]
    per[np.bincount(codes[big], minlength=n_groups) < _PACE_MIN_READS] = np.nan
    fleet = float(np.quantile(log_pace, _PACE_QUANTILE)) if len(log_pace) >= _PACE_MIN_READS else float("nan")
    return per, fleet


@dataclass
class _Lookup:
    """History statistics of each input row (NaN where the group is unknown)."""

    fp: dict[str, np.ndarray]
    inst: dict[str, np.ndarray]
    fp_missing: np.ndarray
    fp_unseen: np.ndarray


class FeatureBuilder:
    """Learns categories and history tables from a training window; builds the model matrix.

    Parameters
    ----------
    n_folds : int, default=5
        Folds for the out-of-fold history features of the training rows.
    min_history : int, default=3
        Runs of a fingerprint needed before its own statistics serve as a detector reference
        (otherwise the instance's statistics are used).
    seed : int, default=0
        Seed of the fold assignment.
    """

    def __init__(self, *, n_folds: int = 5, min_history: int = 3, seed: int = 0) -> None:
        self.n_folds = n_folds
        self.min_history = min_history
        self.seed = seed

    # --- fitting --------------------------------------------------------------------------
    def fit(self, data: pa.Table | pa.RecordBatch) -> FeatureBuilder:
        """Learn query-type codes and the history tables from a training window."""
        self.fit_transform(data)
        return self

    def fit_transform(self, data: pa.Table | pa.RecordBatch, rows: np.ndarray | None = None) -> np.ndarray:
        """Fit, then return the training matrix with out-of-fold history features.

        ``rows``: row numbers of ``data`` to transform (default: every row), in that order. The
        history statistics count every row of ``data``; a window whose history is larger than its
        training sample transforms only the sample (the same values as subsetting the full matrix).
        """
        table = _as_table(data)
        check_columns(table.column_names, INPUT_COLUMNS + OBSERVED_COLUMNS, what="feature builder")
        if self.n_folds < 2:
            msg = f"The 'n_folds' parameter of FeatureBuilder must be >= 2. Got {self.n_folds} instead."
            raise ValueError(msg)
        n = table.num_rows
        targets = np.arange(n) if rows is None else np.asarray(rows, dtype=np.intp)
        qtypes = pc.unique(pc.drop_null(query_type_key(table.column("query_type"))))
        self.categories_: list[str] = sorted(qtypes.to_pylist())
        logs = {s: _log_signal(table, s) for s in SIGNALS}

        # Group codes for (instance, fingerprint) and instance.
        keys = _fp_keys(table).combine_chunks()
        encoded = pc.dictionary_encode(keys)
        fp_codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        fp_dict = encoded.dictionary
        inst_ids, inst_codes = _sorted_codes(_instance_ids(table))

        has_fp = fp_codes >= 0
        # One value sort per signal; each grouping re-sorts it stably by group code (a radix sort),
        # and the full-window and every fold's statistics are read off these orders.
        value_orders = {s: np.argsort(v) for s, v in logs.items()}
        history = {s: value_orders[s] for s in _ALL_RUNS_SIGNALS}
        orders = {s: _group_order(fp_codes, o[has_fp[o]], len(fp_dict)) for s, o in history.items()}
        inst_orders = {s: _group_order(inst_codes, o, len(inst_ids)) for s, o in history.items()}
        full_fp = _sorted_stats(fp_codes, logs, orders, len(fp_dict))
        full_inst = _sorted_stats(inst_codes, logs, inst_orders, len(inst_ids))
        for stats, codes, n_groups in ((full_fp, fp_codes, len(fp_dict)), (full_inst, inst_codes, len(inst_ids))):
            stats.update(_compiled_stats(codes, logs["compile"], value_orders["compile"], n_groups, self.min_history))
        del full_inst[_IQR_COMPILE]  # an instance's compiled runs are only a prior level (no verdict)
        full_inst[_MED_WAITED] = _stats_above(inst_codes, logs["queue"], value_orders["queue"], len(inst_ids),
                                              self.min_history, WAITED_MS)[0]
        pace, fleet_pace = _reading_pace(inst_codes, logs, len(inst_ids))
        full_inst[_PACE] = pace
        if "was_cached" in table.column_names:  # the statement's shortest run in full (training rows are not aborted)
            flags = tuple(c for c in RUN_FLAG_COLUMNS if c in table.column_names)
            full = _ran_in_full(table, flags)
            full_fp.update(_shortest_full_runs(fp_codes, logs["exec"], orders["exec"], len(fp_dict), full))
            measured = pc.is_valid(table.column(SIGNALS["scan"])).to_numpy(zero_copy_only=False)
            full_fp.update(_shortest_full_runs(fp_codes, logs["scan"], orders["scan"], len(fp_dict), full & measured,
                                               (_MIN_SCAN, _SCAN_RUNS)))
        by_runtime = inst_orders["exec"]  # rows sorted by (instance, log runtime)
        p99 = _sorted_group_quantiles(inst_codes[by_runtime], logs["exec"][by_runtime], len(inst_ids), (0.99,))[:, 0]
        full_inst[_P99_EXEC] = np.where(full_inst["n"] < _P99_MIN_RUNS, np.nan, p99)

        # Stored lookup tables (full window).
        split = pc.split_pattern(fp_dict, "|", max_splits=1)
        self.fp_table_ = pa.table(
            {
                "instance_id": pc.cast(pc.list_element(split, 0), pa.int64()),
                "feature_fingerprint": pc.list_element(split, 1),
                **{k: pa.array(v) for k, v in full_fp.items()},
            }
        )
        self.instance_table_ = pa.table(
            {"instance_id": pa.array(inst_ids), **{k: pa.array(v) for k, v in full_inst.items()}}
        )
        self.global_: dict[str, float] = _global_stats(logs)
        self._add_compile_spread()
        if not np.isnan(fleet_pace):  # model.json stays strict JSON (no NaN)
            self.global_[_PACE] = fleet_pace
        self._build_index()
        hourly = self._hourly_wait_excess(table, logs["queue"])
        if hourly is not None:  # the queue reference above is the owner of the rule these start from
            for column, values in zip(_HOUR_WAIT_COLUMNS, hourly, strict=True):
                self.instance_table_ = self.instance_table_.append_column(column, pa.array(values))
            self._build_index()
        self.feature_names_: tuple[str, ...] = FEATURE_NAMES
        self.input_columns_: tuple[str, ...] = INPUT_COLUMNS

        # Out-of-fold history for the training rows. Every row of ``data`` gets its fold (a row's
        # fold and its statistics do not depend on which rows are transformed).
        rng = np.random.default_rng(self.seed)
        folds = rng.integers(0, self.n_folds, n)
        fp_oof = _out_of_fold_stats(fp_codes, logs, orders, len(fp_dict), folds, self.n_folds, targets)
        scale = self.n_folds / (self.n_folds - 1)
        fp_oof["n"] = fp_oof["n"] * scale
        seen = fp_oof["n"] > 0
        for name in fp_oof:
            if name != "n":
                fp_oof[name][~seen] = np.nan
        target_inst, target_has_fp = inst_codes[targets], has_fp[targets]
        lookup = _Lookup(
            fp=fp_oof,
            inst={k: v[target_inst] for k, v in full_inst.items()},
            fp_missing=~target_has_fp,
            fp_unseen=target_has_fp & ~seen,
        )
        return self._matrix(table if rows is None else table.take(targets), lookup)

    # --- persistence ----------------------------------------------------------------------
    def save(self, directory: Path) -> dict[str, Any]:
        """Write the lookup tables into ``directory``; return the JSON-able rest of the state."""
        self._check_fitted("save")
        pq.write_table(self.fp_table_, directory / _FP_TABLE, compression="zstd")
        pq.write_table(self.instance_table_, directory / _INSTANCE_TABLE, compression="zstd")
        return {
            "params": {"n_folds": self.n_folds, "min_history": self.min_history, "seed": self.seed},
            "categories": self.categories_,
            "global": self.global_,
            "feature_names": list(self.feature_names_),
            "input_columns": list(self.input_columns_),
            "tables": [_FP_TABLE, _INSTANCE_TABLE],
        }

    @classmethod
    def load(cls, directory: Path, state: dict[str, Any]) -> FeatureBuilder:
        """Rebuild a fitted builder from :meth:`save`'s files and returned state."""
        builder = cls(**state["params"])
        builder.categories_ = list(state["categories"])
        builder.global_ = {k: float(v) for k, v in state["global"].items()}
        builder.feature_names_ = tuple(state["feature_names"])
        builder.input_columns_ = tuple(state["input_columns"])
        builder.fp_table_ = pq.read_table(directory / _FP_TABLE)
        builder.instance_table_ = pq.read_table(directory / _INSTANCE_TABLE)
        builder._build_index()
        return builder

    # --- transforming ---------------------------------------------------------------------
    def transform(self, data: pa.Table | pa.RecordBatch) -> np.ndarray:
        """The ``float32`` model matrix ``[N, F]`` of new rows (history from the stored tables)."""
        self._check_fitted("transform")
        table = _as_table(data)
        check_columns(table.column_names, self.input_columns_)
        return self._matrix(table, self._lookup(table))

    def transform_with_references(self, data: pa.Table | pa.RecordBatch
                                  ) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
        """:meth:`transform` plus the detector references (see :meth:`references`)."""
        X, refs, _ = self.transform_with_evidence(data)
        return X, refs

    def transform_with_evidence(self, data: pa.Table | pa.RecordBatch
                                ) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray]:
        """:meth:`transform_with_references` plus where each row's references come from.

        The third value is an ``int8`` index into :data:`REFERENCE_SOURCES` per row: ``fingerprint`` (its own
        history, at least ``min_history`` runs), ``instance`` (rare or unseen fingerprint: the
        instance's history) or ``global`` (unknown instance: the whole training window).
        """
        self._check_fitted("transform_with_evidence")
        table = _as_table(data)
        check_columns(table.column_names, self.input_columns_)
        lookup = self._lookup(table)
        return self._matrix(table, lookup), self._references(lookup), self._source(lookup)

    def as_never_seen_instance(self, table: pa.Table) -> pa.Table:
        """:func:`as_never_seen_instance` of ``table`` with an id none of this builder's instances has either."""
        self._check_fitted("as_never_seen_instance")
        return as_never_seen_instance(table, known=self.instance_table_.column("instance_id"))

    def reference_source(self, data: pa.Table | pa.RecordBatch) -> np.ndarray:
        """Only the third value of :meth:`transform_with_evidence`, from ``instance_id`` and ``feature_fingerprint``.

        The same rule without the model matrix and references: a day of scored rows can be told
        which expectations rest on their statement's history at a small part of the cost.
        """
        self._check_fitted("reference_source")
        table = _as_table(data)
        check_columns(table.column_names, REFERENCE_SOURCE_COLUMNS)
        return self._source(self._lookup(table, only=_SOURCE_STATISTICS))

    def statement_homes(self, data: pa.Table | pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
        """Per row: ``(home, home_ms)``, the other instance whose regular statement the row runs although its
        own instance never ran it in the window, and the statement's median runtime there (ms); -1 and NaN
        for every other row (a statement of its own instance, a null fingerprint, an instance without
        history, a statement regular on none or on several other instances).

        Redset's fingerprints are scoped to one cluster (they virtually never repeat across clusters), so
        another instance's statement arriving here is a workload that moved: a failover or a connection
        pointed at the wrong cluster. The rule holds only where the window shows it: when more than
        :data:`SHARED_FINGERPRINTS_MAX` of the window's fingerprints ran on several instances (a log whose
        fingerprints are global), no row has a home.
        """
        self._check_fitted("statement_homes")
        table = _as_table(data)
        check_columns(table.column_names, REFERENCE_SOURCE_COLUMNS)
        n = table.num_rows
        home, home_ms = np.full(n, -1, dtype=np.int64), np.full(n, np.nan)
        homes = self._statement_home_table()
        if not homes or n == 0:
            return home, home_ms
        lookup = self._lookup(table, only=("n",))
        inst = _instance_ids(table)
        candidates = np.flatnonzero(lookup.fp_unseen & np.isin(inst, self._inst_ids))
        if len(candidates) == 0:
            return home, home_ms
        fingerprints = pc.cast(table.column("feature_fingerprint"), pa.string()).to_numpy(zero_copy_only=False)
        for i in candidates:
            found = homes.get(fingerprints[i])
            if found is not None and found[0] != inst[i]:
                home[i], home_ms[i] = found
        return home, home_ms

    def _statement_home_table(self) -> dict[str, tuple[int, float]]:
        """``fingerprint -> (instance, median runtime ms)`` of the window's statements that ran on one
        instance only, at least ``min_history`` times; empty when the window's fingerprints are not scoped
        to an instance (:meth:`statement_homes`)."""
        if self._homes is not None:
            return self._homes
        t = self.fp_table_.filter(pc.is_valid(self.fp_table_.column("feature_fingerprint")))
        per_fp = t.group_by("feature_fingerprint").aggregate([("instance_id", "count")])
        shared = pc.sum(pc.greater(per_fp.column("instance_id_count"), 1)).as_py() or 0
        self._homes = {}
        if per_fp.num_rows == 0 or shared / per_fp.num_rows > SHARED_FINGERPRINTS_MAX:
            return self._homes
        single = per_fp.filter(pc.equal(per_fp.column("instance_id_count"), 1)).column("feature_fingerprint")
        regular = t.filter(pc.and_(pc.is_in(t.column("feature_fingerprint"), single),
                                   pc.greater_equal(t.column("n"), self.min_history)))
        runtime = np.expm1(regular.column("med_exec").to_numpy(zero_copy_only=False))
        for fp, instance, ms in zip(regular.column("feature_fingerprint").to_pylist(),
                                    regular.column("instance_id").to_pylist(), runtime, strict=True):
            self._homes[fp] = (int(instance), float(ms))
        return self._homes

    def queue_reference(self, data: pa.Table | pa.RecordBatch) -> np.ndarray:
        """Only the queue's level of :meth:`references` (the usual ``log1p`` wait, at least the
        instance's ordinary wait), from ``instance_id`` and ``feature_fingerprint``: a settled day's
        slower groups judge the waits of scored rows without the whole feature matrix."""
        self._check_fitted("queue_reference")
        table = _as_table(data)
        check_columns(table.column_names, REFERENCE_SOURCE_COLUMNS)
        return self._queue_level(self._lookup(table, only=_QUEUE_STATISTICS))

    def _queue_level(self, lookup: _Lookup) -> np.ndarray:
        """:meth:`queue_reference` of looked-up rows (their :data:`_QUEUE_STATISTICS` at least)."""
        use_fp = self._uses_fingerprint(lookup)
        med = np.where(use_fp, lookup.fp["med_queue"], lookup.inst["med_queue"])
        med = np.where(np.isnan(med), self.global_["med_queue"], med)
        if _MED_WAITED in lookup.inst:  # the same rule as references()
            waited = lookup.inst[_MED_WAITED]
            med = np.maximum(med, np.where(np.isnan(waited), self.global_.get(_MED_WAITED, 0.0), waited))
        return med

    def usual_wait(self, data: pa.Table | pa.RecordBatch) -> np.ndarray:
        """:meth:`queue_reference`, raised where the row's instance waits longer at that UTC hour of the day
        as a rule: a settled day's slower groups judge a wait against what the hour usually brings.

        An instance whose queries all wait longer every afternoon (a nightly load that moved, a WLM
        queue that saturates at the daily peak) is not slower each afternoon. For each hour, the
        largest of its 10-minute slots' usual excess: the median, over the window's days, of that
        slot's median ``log1p`` wait past the queue reference (judged runs: the statement's own
        history, executed in full; at least :data:`_SLOT_MIN_RUNS` of them on a day, on at least
        :data:`_SLOT_MIN_DAYS` days, so one day's storm is not a rule). Only an excess raises the
        reference. Needs ``arrival_timestamp`` besides :data:`REFERENCE_SOURCE_COLUMNS`; versions
        trained before this was kept, and rows without an arrival time, read :meth:`queue_reference`.
        """
        usual = self.queue_reference(data)
        table = _as_table(data)
        if self._hour_waits is None or "arrival_timestamp" not in table.column_names:
            return usual
        inst = _instance_ids(table)
        pos = np.clip(np.searchsorted(self._inst_ids, inst), 0, max(len(self._inst_ids) - 1, 0))
        found = (self._inst_ids[pos] == inst) if len(self._inst_ids) else np.zeros(len(inst), bool)
        hour = _utc_hours(table)
        found &= hour >= 0
        excess = np.zeros(len(inst))
        excess[found] = np.nan_to_num(self._hour_waits[hour[found], pos[found]], nan=0.0)
        return usual + np.clip(excess, 0.0, None)

    def _hourly_wait_excess(self, table: pa.Table, log_queue: np.ndarray) -> list[np.ndarray] | None:
        """Per hour of the day, per instance of the instance table: the usual wait excess of
        :meth:`usual_wait` (NaN where no slot of the hour has a rule); None without arrival times."""
        if "arrival_timestamp" not in table.column_names or not table.num_rows:
            return None
        flags = tuple(c for c in RUN_FLAG_COLUMNS if c in table.column_names)
        lookup = self._lookup(table, only=(*_SOURCE_STATISTICS, *_QUEUE_STATISTICS))  # one lookup for both
        judged = (self._source(lookup) == 0) & _ran_in_full(table, flags) & np.isfinite(_num(table, SIGNALS["exec"]))
        arrival = arrival_us(table)
        judged &= arrival != np.iinfo(np.int64).min
        inst_ids = self._inst_ids
        out = [np.full(len(inst_ids), np.nan) for _ in range(24)]
        if not judged.any():
            return out  # all NaN: the order does not matter
        residual = (log_queue - self._queue_level(lookup))[judged]
        arrival = arrival[judged]
        inst = np.searchsorted(inst_ids, _instance_ids(table)[judged])  # every training instance is in the table
        slot = np.floor_divide(arrival % _DAY_US, _SLOT_US)
        day = np.floor_divide(arrival, _DAY_US)
        # median per (instance, slot, day), then over days, then the hour's largest slot: one numpy sort each
        keys = np.stack([inst, slot, day])
        daily_key, daily_median, daily_n = _grouped_medians(keys, residual)
        daily = daily_n >= _SLOT_MIN_RUNS
        slot_key, slot_median, slot_days = _grouped_medians(daily_key[:2, daily], daily_median[daily])
        usual = slot_days >= _SLOT_MIN_DAYS
        for i, s, value in zip(slot_key[0, usual], slot_key[1, usual], slot_median[usual], strict=True):
            hour = int(s) // 6
            out[hour][i] = value if np.isnan(out[hour][i]) else max(out[hour][i], value)
        # in the instance table's row order (self._inst_ids is sorted)
        rows = np.searchsorted(inst_ids, self.instance_table_.column("instance_id").to_numpy())
        return [by_instance[rows] for by_instance in out]

    def references(self, data: pa.Table | pa.RecordBatch) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Expected ``log1p`` level and spread of each observed signal, per row.

        Returns ``{signal: (median, iqr)}`` from the fingerprint's history when it ran at least
        ``min_history`` times in the window, else from the instance's, else global. The queue's
        level is at least the instance's ordinary wait (the median of its runs that waited). Extra
        keys: :data:`~workbench.ml.detector.THROUGHPUT` (the instance's reading pace) and
        :data:`~workbench.ml.detector.SPILL_HISTORY` (the statement's largest log spill and its
        number of runs; NaN without its own history) and :data:`~workbench.ml.detector.RUNTIME_SCALE`
        (the log runtime of the instance's 1-in-100 query; NaN for an instance seen fewer than 200 times).
        """
        self._check_fitted("references")
        table = _as_table(data)
        check_columns(table.column_names, self.input_columns_)
        return self._references(self._lookup(table))

    # --- internals ------------------------------------------------------------------------
    def _check_fitted(self, method: str) -> None:
        if not hasattr(self, "fp_table_"):
            msg = (f"This FeatureBuilder is not fitted yet; call 'fit' (or FeatureBuilder.load) "
                   f"before '{method}'.")
            raise NotFittedError(msg)

    def _build_index(self) -> None:
        t = self.fp_table_
        # Each key's first row, as pc.index_in finds it. index_in hashes its whole value set on
        # every call (~25 ms for a day's ~100 k fingerprints: ~1.5 us a row of a 16 k-row scoring
        # batch); this table is hashed once per model instead.
        self._homes: dict[str, tuple[int, float]] | None = None  # statement_homes' table, built when first asked
        self._fp_rows: dict[str | None, int] = {}
        for row, key in enumerate(_fp_keys(t).to_pylist()):
            self._fp_rows.setdefault(key, row)
        self._fp_cols = {name: t.column(name).to_numpy() for name in t.column_names[2:]}
        self._inst_ids = self.instance_table_.column("instance_id").to_numpy()
        order = np.argsort(self._inst_ids)
        self._inst_ids = self._inst_ids[order]
        self._inst_cols = {name: self.instance_table_.column(name).to_numpy()[order]
                           for name in self.instance_table_.column_names[1:]}
        self._qtype_set = pa.array(self.categories_, pa.string())
        # [hour, instance], kept out of the per-row lookups (24 columns a row that only usual_wait reads)
        hourly = [self._inst_cols.pop(c, None) for c in _HOUR_WAIT_COLUMNS]
        self._hour_waits = None if any(h is None for h in hourly) else np.stack(hourly).astype(np.float64)

    def _lookup(self, table: pa.Table, only: tuple[str, ...] | None = None) -> _Lookup:
        """History statistics of each row; ``only``: just these statistic names (the rest are absent)."""
        n = table.num_rows
        keys = _fp_keys(table)
        idx_np = self._fp_index(keys)
        found = idx_np >= 0
        fp = {}
        for name, col in self._fp_cols.items():
            if only is not None and name not in only:
                continue
            values = np.full(n, np.nan)
            values[found] = col[idx_np[found]]
            fp[name] = values
        inst = _instance_ids(table)
        pos = np.clip(np.searchsorted(self._inst_ids, inst), 0, max(len(self._inst_ids) - 1, 0))
        inst_found = self._inst_ids[pos] == inst if len(self._inst_ids) else np.zeros(n, bool)
        inst_stats = {}
        for name, col in self._inst_cols.items():
            if only is not None and name not in only:
                continue
            values = np.full(n, np.nan)
            values[inst_found] = col[pos[inst_found]]
            inst_stats[name] = values
        fp_missing = pc.is_null(keys).to_numpy(zero_copy_only=False)
        return _Lookup(fp=fp, inst=inst_stats, fp_missing=fp_missing, fp_unseen=~fp_missing & ~found)

    def _uses_fingerprint(self, lookup: _Lookup) -> np.ndarray:
        """Per row: its references come from its fingerprint's history (at least ``min_history`` runs)."""
        return np.nan_to_num(lookup.fp["n"], nan=0.0) >= self.min_history

    def _source(self, lookup: _Lookup) -> np.ndarray:
        """Per row, the index into :data:`REFERENCE_SOURCES` (see :meth:`transform_with_evidence`)."""
        use_fp = self._uses_fingerprint(lookup)
        known_inst = ~np.isnan(lookup.inst["med_exec"])
        return np.where(use_fp, 0, np.where(known_inst, 1, 2)).astype(np.int8)

    def _fp_index(self, keys: pa.ChunkedArray) -> np.ndarray:
        """Each key's row in the fingerprint table (``pc.index_in``'s answer), -1 where it has none.

        Only the batch's distinct keys are looked up (a batch repeats its fingerprints).
        """
        encoded = pc.dictionary_encode(keys.combine_chunks())
        distinct = encoded.dictionary.to_pylist()
        rows = np.fromiter(map(self._fp_rows.get, distinct, repeat(-1)), dtype=np.int64, count=len(distinct))
        rows = np.append(rows, self._fp_rows.get(None, -1))  # a null key matches a null in the table, as in index_in
        codes = pc.fill_null(encoded.indices, len(distinct)).to_numpy(zero_copy_only=False)
        return rows[codes]

    def _references(self, lookup: _Lookup) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        use_fp = self._uses_fingerprint(lookup)
        refs = {}
        for signal in _ALL_RUNS_SIGNALS:
            med = np.where(use_fp, lookup.fp[f"med_{signal}"], lookup.inst[f"med_{signal}"])
            iqr = np.where(use_fp, lookup.fp[f"q75_{signal}"] - lookup.fp[f"q25_{signal}"],
                           lookup.inst[f"q75_{signal}"] - lookup.inst[f"q25_{signal}"])
            med = np.where(np.isnan(med), self.global_[f"med_{signal}"], med)
            glob_iqr = self.global_[f"q75_{signal}"] - self.global_[f"q25_{signal}"]
            iqr = np.where(np.isnan(iqr), glob_iqr, iqr)
            refs[signal] = (med, iqr)
        if _MED_WAITED in lookup.inst:  # versions trained before the waited level was kept have none
            # A wait no longer than an ordinary wait on the instance is no evidence, whatever the
            # statement's usual (mostly zero) wait: how long a query waits is the instance's state.
            waited = lookup.inst[_MED_WAITED]
            waited = np.where(np.isnan(waited), self.global_.get(_MED_WAITED, 0.0), waited)
            refs["queue"] = (np.maximum(refs["queue"][0], waited), refs["queue"][1])
        if _MAX_SPILL in lookup.fp:  # versions trained before the largest spill was kept have none
            refs[SPILL_HISTORY] = (np.where(use_fp, lookup.fp[_MAX_SPILL], np.nan),
                                   np.where(use_fp, lookup.fp["n"], np.nan))
        if _MIN_EXEC in lookup.fp:  # versions trained before the shortest run was kept (or without was_cached)
            refs[SHORTEST_RUN] = (np.where(use_fp, lookup.fp[_MIN_EXEC], np.nan),
                                  np.where(use_fp, lookup.fp[_FULL_RUNS], np.nan))
        if _MIN_SCAN in lookup.fp:  # versions trained before the smallest scan was kept (or without was_cached)
            refs[SMALLEST_SCAN] = (np.where(use_fp, lookup.fp[_MIN_SCAN], np.nan),
                                   np.where(use_fp, lookup.fp[_SCAN_RUNS], np.nan))
        if _PACE in lookup.inst:  # versions trained before the pace was kept have none
            pace = lookup.inst[_PACE]
            pace = np.where(np.isnan(pace), self.global_.get(_PACE, np.nan), pace)
            refs[THROUGHPUT] = (pace, np.zeros_like(pace))
        if _MED_COMPILE in lookup.inst:  # versions trained before the compile signal have none
            refs["compile"] = self._compile_reference(lookup)
        if _P99_EXEC in lookup.inst:  # versions trained before the runtime scale was kept have none
            # NaN for an instance never seen (or seen too little): no scale, the detector's fixed stakes
            refs[RUNTIME_SCALE] = (lookup.inst[_P99_EXEC], np.zeros(len(lookup.inst[_P99_EXEC])))
        return refs

    def _add_compile_spread(self) -> None:
        """Keep each instance's (and the fleet's) typical run-to-run spread of a fingerprint's compile
        time: the median IQR over fingerprints with at least ``min_history`` compiled runs.

        A fingerprint's own IQR from a handful of compiled runs is often far too narrow (three runs
        can land within a few percent), which would make its next ordinary compilation a surprise;
        its spread is therefore never taken below the typical one (:meth:`_compile_reference`).
        """
        fp = self.fp_table_
        iqr = fp.column(_IQR_COMPILE).to_numpy()
        keep = ~np.isnan(iqr)  # fingerprints with at least min_history compiled runs
        inst = fp.column("instance_id").to_numpy()[keep]
        codes = np.searchsorted(self.instance_table_.column("instance_id").to_numpy(), inst)
        typical = _group_quantiles(codes, iqr[keep], self.instance_table_.num_rows, (0.5,))[:, 0]
        self.instance_table_ = self.instance_table_.append_column(_COMPILE_SPREAD, pa.array(typical))
        if keep.any():
            self.global_[_COMPILE_SPREAD] = float(np.median(iqr[keep]))

    def _compile_reference(self, lookup: _Lookup) -> tuple[np.ndarray, np.ndarray]:
        """``(median, IQR)`` of log compile time over the compiled runs of the fingerprint (at least
        ``min_history`` of them; the IQR at least the instance's typical one). Otherwise the median
        of the instance's compiled runs (else the training window's) and a NaN IQR: no verdict."""
        use_fp = ~np.isnan(lookup.fp[_MED_COMPILE])
        prior = lookup.inst[_MED_COMPILE]
        med = np.where(use_fp, lookup.fp[_MED_COMPILE], np.where(np.isnan(prior), self.global_.get(_MED_COMPILE, 0.0),
                                                                 prior))
        typical = lookup.inst.get(_COMPILE_SPREAD, np.full(len(med), np.nan))
        typical = np.where(np.isnan(typical), self.global_.get(_COMPILE_SPREAD, 0.0), typical)
        # Without its own compiled history a statement gets no spread (no compile verdict; the prior
        # is still its expected value): compile cost varies between statements by a factor of ~5 per
        # sigma and nothing known before the run predicts it, so judged against the instance prior
        # normal never-seen statements compiling for many minutes alerted (33 per 384k normal rows
        # of the stress log) and their tail raised every signal's calibrated bar.
        return med, np.where(use_fp, np.maximum(lookup.fp[_IQR_COMPILE], typical), np.nan)

    def _matrix(self, table: pa.Table, lookup: _Lookup) -> np.ndarray:
        code = pc.fill_null(pc.index_in(query_type_key(table.column("query_type")), value_set=self._qtype_set), -1)
        cols: list[np.ndarray] = [code.to_numpy(zero_copy_only=False).astype(np.float64)]
        cols += [_num(table, c) for c in _COUNT_COLUMNS]
        compile_ms = _num(table, "compile_duration_ms")
        cluster = _num(table, "cluster_size")
        cols += [compile_ms, cluster, _id_count(table, "read_table_ids"), _id_count(table, "write_table_ids")]
        ts = table.column("arrival_timestamp")
        cols += [pc.hour(ts).to_numpy(zero_copy_only=False).astype(np.float64),
                 pc.day_of_week(ts).to_numpy(zero_copy_only=False).astype(np.float64)]
        fp_n = np.nan_to_num(lookup.fp["n"], nan=0.0)
        cols += [
            np.where(lookup.fp_missing, _MISSING, np.log1p(fp_n)),
            lookup.fp["med_exec"],
            lookup.fp["q75_exec"] - lookup.fp["q25_exec"],
            lookup.fp["p90_exec"],
            lookup.fp["med_scan"],
            lookup.inst["med_exec"],
            lookup.inst["q75_exec"] - lookup.inst["q25_exec"],
            lookup.fp_missing.astype(np.float64),
            lookup.fp_unseen.astype(np.float64),
            np.isnan(cluster).astype(np.float64),
            np.isnan(compile_ms).astype(np.float64),
        ]
        # Filled one contiguous row per feature, then transposed in one copy: writing the columns
        # of the [N, F] matrix in place strides through all of it once per feature (~2x slower).
        by_feature = np.empty((len(cols), table.num_rows), dtype=np.float32)
        for j, values in enumerate(cols):
            by_feature[j] = np.where(np.isnan(values), _MISSING, values)
        return np.ascontiguousarray(by_feature.T)
