"""A run on an instance the model never saw, far slower than its instance's record of the day.

A version judges an instance it never saw (a cluster that came into the log after the version's training
window) by its global prior: what the whole window knows of statements like it, on no instance in
particular. The prior's spread is the spread of every instance's workload, so a statement predicted at
0.3 s that runs two minutes is a 1-in-100 overrun of it; on the instance's own earlier runs of the day it may
be far beyond anything seen. The instance's own reference is missing only because the version is older than
the instance; the day's earlier runs rebuild it.

:func:`instance_record_runs` reads a day of scored rows and, per instance the version never saw (``unseen``)
and query type, walks its executed runs in arrival order. Each run's overrun is its runtime against the
version's prediction, ``log1p(exec) - log1p(predicted)``; the *record* is the largest overrun of the type's
earlier runs on the instance. Runs the per-query detector or an earlier rule alerted on are no part of it (an
alert is not the instance's normal work, and a runaway query must not hide the next one) and keep their own
alert. A run is flagged when at least ``min_runs`` (300) runs make the record, it overran ``factor`` (5) times
the record, and it ran at least ``floor_ms`` (1 s, the detector's runtime floor) longer than the record allows.
A run the rule flags is the new record: the first run of a new level of work alerts, the runs like it after it
do not, so a type's alerts of a day are few whatever comes (each at least ``factor`` times the last).

The constants follow the detector's conventions, none chosen on an injected kind. ``min_runs`` is the number of
runs among which a 1-in-100 run (the detector's unit of surprise, ``u = 1``) has shown at least once with 95 %
probability (``ln 0.05 / ln 0.99``, 298): a record is then the instance's rare work, not only its common work.
On the new instances of the demo logs of seeds 5 and 7 (14,189 and 16,703 runs of the evaluation day), 100
runs flagged 2 normal runs, 200 one, 300 none. The record factor is the spill record's
(:data:`workbench.ml.detector.RECORD_SPILL_FACTOR`), the floor the runtime floor
(:data:`workbench.ml.detector.FLOORS`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from workbench.analysis._columns import arrival_us, numbers
from workbench.analysis._judged import RULE_RESULT, already_flagged, empty_result, judged_runs
from workbench.data.schema import query_type_key

__all__ = ["RECORD_COLUMNS", "RECORD_REASON", "RECORD_SIGNAL", "RecordParams", "instance_record_runs"]

#: The evidence signal of a run beyond its instance's record.
RECORD_SIGNAL = "exec_instance_record"
#: Its alert's reason.
RECORD_REASON = "beyond_instance_record"
#: Shard columns :func:`instance_record_runs` reads.
RECORD_COLUMNS = ("instance_id", "query_id", "arrival_timestamp", "execution_duration_ms", "query_type",
                  "was_cached", "was_aborted", "pred_mean_ms", "model_version", "is_anomaly")


@dataclass(frozen=True)
class RecordParams:
    """Constants of :func:`instance_record_runs`.

    ``min_runs``: the least number of earlier runs of the type on the instance that make a record.
    ``factor``: how many times the record's overrun a run must overrun its prediction.
    ``floor_ms``: the least runtime beyond what the record allows (the detector's runtime floor).
    """

    min_runs: int = 300
    factor: float = 5.0
    floor_ms: float = 1_000.0

    def __post_init__(self) -> None:
        if isinstance(self.min_runs, bool) or not isinstance(self.min_runs, int) or self.min_runs < 1:
            raise ValueError(f"RecordParams.min_runs must be an integer of at least 1; got {self.min_runs!r}")
        if not _finite(self.factor) or self.factor <= 1.0:
            raise ValueError(f"RecordParams.factor must be a finite number greater than 1; got {self.factor!r}")
        if not _finite(self.floor_ms) or self.floor_ms < 0.0:
            raise ValueError(f"RecordParams.floor_ms must be a finite number at least 0; got {self.floor_ms!r}")


def _finite(value: object) -> bool:
    """A real number (not a bool), finite."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and bool(np.isfinite(value))


_RESULT = {**RULE_RESULT, "record_ratio": "float64"}


def instance_record_runs(rows: pa.Table, unseen: np.ndarray | None, params: RecordParams | None = None,
                         exclude: np.ndarray | None = None) -> pd.DataFrame:
    """The runs of ``rows`` flagged beyond their instance's record (see the module docstring).

    Parameters
    ----------
    rows : pyarrow.Table
        One day of scored query rows (the shard schema; :data:`RECORD_COLUMNS`, ``is_anomaly`` optional).
    unseen : ndarray of bool, optional
        Per row: the version that scored it never saw its instance (the detector's evidence source
        ``global``). None: no row's.
    params : RecordParams, optional
        The constants (defaults: 300 runs, 5x, 1 s).
    exclude : ndarray of bool, optional
        Per row: flagged by another rule already (never flagged here, and no part of a record).

    Returns
    -------
    DataFrame
        One row per flagged run, in arrival order, with the columns of
        :func:`~workbench.analysis.slower_groups.slower_group_runs` (``signal`` :data:`RECORD_SIGNAL`,
        ``reason`` :data:`RECORD_REASON`; ``expected_ms`` the prediction times the record's overrun, what
        the instance's runs of the day allow; ``group_key`` ``query_type`` and ``group_value`` the type
        (trimmed, lower-cased); ``span_start`` the first of the record's runs, ``span_end`` the run;
        ``group_queries`` the record's runs, ``group_ratio`` the run's overrun against the record's,
        ``group_z`` NaN, ``score`` the smaller of that ratio's log over the log of ``factor`` and the excess
        over ``floor_ms``) and ``record_ratio``, the record's runtime against its prediction.
    """
    params = params or RecordParams()
    if unseen is None:
        return _empty()
    unseen = np.asarray(unseen, dtype=bool)
    if len(unseen) != rows.num_rows:
        raise ValueError(f"unseen must have one value per row ({rows.num_rows}); got {len(unseen)}")
    # runs another alert took are no part of any record and never flagged
    idx = np.flatnonzero(judged_runs(rows, unseen, ()) & ~already_flagged(rows, exclude))
    if not len(idx):
        return _empty()
    exec_ms = numbers(rows, "execution_duration_ms")[idx]
    pred = np.clip(numbers(rows, "pred_mean_ms")[idx], 0.0, None)
    # as every reader compares query types ('SELECT ' is a select); a null type is a group of its own
    kinds = pc.fill_null(query_type_key(rows.column("query_type")), "").to_numpy(zero_copy_only=False)[idx]
    part = pd.DataFrame({"row": idx, "instance_id": pc.cast(rows.column("instance_id"), pa.int64())
                         .to_numpy(zero_copy_only=False)[idx], "query_type": kinds, "arrival_us": arrival_us(rows)[idx],
                         "query_id": pc.cast(rows.column("query_id"), pa.int64()).to_numpy(zero_copy_only=False)[idx],
                         "overrun": np.log1p(exec_ms) - np.log1p(pred), "exec_ms": exec_ms, "pred_ms": pred})
    # Every run left, flagged here or not, raises its group's record: the record is a running maximum. Runs of
    # the same microsecond go in query-id order: the order the shards were read in (the stream's batching) must
    # not decide which of them makes the record.
    part = part.sort_values(["arrival_us", "query_id", "row"], kind="stable")
    groups = part.groupby(["instance_id", "query_type"], sort=False)
    part["record"] = groups["overrun"].cummax().groupby([part["instance_id"], part["query_type"]]).shift(1)
    part["count"] = groups.cumcount()
    part["first_us"] = groups["arrival_us"].transform("first")
    part["allowed_ms"] = np.expm1(np.log1p(part["pred_ms"]) + part["record"])
    part["beyond"] = part["overrun"] - part["record"]
    hit = part[(part["count"] >= params.min_runs) & (part["beyond"] >= np.log(params.factor))
               & (part["exec_ms"] - part["allowed_ms"] >= params.floor_ms)]
    if hit.empty:
        return _empty()
    rows_idx = hit["row"].to_numpy(np.int64)
    excess = hit["exec_ms"].to_numpy() - hit["allowed_ms"].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        exec_ratio = np.where(hit["pred_ms"] > 0, hit["exec_ms"] / hit["pred_ms"], np.nan)
    result = pd.DataFrame({
        "row": rows_idx,
        "instance_id": hit["instance_id"].to_numpy(np.int64),
        "query_id": hit["query_id"].to_numpy(np.int64),
        "model_version": rows.column("model_version").to_numpy(zero_copy_only=False)[rows_idx],
        "signal": RECORD_SIGNAL,
        "reason": RECORD_REASON,
        "expected_ms": hit["allowed_ms"].to_numpy(),
        "observed_ms": hit["exec_ms"].to_numpy(),
        "excess_ms": excess,
        "group_key": "query_type",
        "group_value": hit["query_type"].to_numpy(dtype=object),
        "span_start": pd.to_datetime(hit["first_us"].to_numpy(np.int64), unit="us", utc=True),
        "span_end": pd.to_datetime(hit["arrival_us"].to_numpy(np.int64), unit="us", utc=True),
        "group_queries": hit["count"].to_numpy(np.int64),
        "group_ratio": np.exp(hit["beyond"].to_numpy()),
        "group_z": np.nan,
        "score": np.minimum(hit["beyond"].to_numpy() / np.log(params.factor), excess / max(params.floor_ms, 1.0)),
        "exec_ratio": exec_ratio,
        "record_ratio": np.exp(hit["record"].to_numpy()),
    })
    return result.astype(_RESULT).reset_index(drop=True)


def _empty() -> pd.DataFrame:
    return empty_result(_RESULT)
