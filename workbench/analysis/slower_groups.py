"""A part of an instance that runs slower: one user's, one database's or one query type's queries for an hour.

A database on a slower disk, one user's queries routed to a starved queue or scanning a grown table,
the writes behind a vacuum: each query runs 1.5-3x its expectation, seconds at most, so none clears
the per-query floor (1 s of excess) or stands out from its statement's run-to-run spread, and the
part is too small to move the instance's 10-minute windows (6 queries of 200 in a window). Together,
over an hour, they are unmistakable: the model expects each query's runtime from its own statement's
history, so the *median* residual of many queries of one user sits near 0 (on the evaluation days of
eight generated logs and a blind evaluation's, the largest of 18,276 user-, database- and
query-type-hours with 20 or more judged queries and no labelled one was ``ln 1.40``; the blind
evaluation's slower database and user ``ln 2.2`` to ``ln 3.1``).

:func:`slower_group_runs` reads a day of scored rows (the shard schema) and, per instance, clock hour
(UTC) and value of each grouping column (:attr:`GroupParams.keys`: ``user_id``, ``database_id``,
``query_type``), takes the *judged* queries (as :mod:`workbench.analysis.persistence` judges runs:
executed, scored, and with an expectation from the statement's own history, ``known``) and their
log runtime residual ``r = log1p(exec) - log1p(pred_mean)``. A group is slower when

* it holds at least ``min_queries`` (20) judged queries,
* the median residual ``m`` clears both the collective machinery's bars: ``m >= ln 1.5`` (the floor
  of the ``runtime_residual`` window signal) and ``z = m / se >= 5`` (its z threshold), with ``se =
  sqrt(pi / 2) * s / sqrt(n)`` the standard error of a median of ``n`` residuals of spread ``s`` (the
  median of the queries' own spreads, as :mod:`~workbench.analysis.persistence` reads them from the
  version's quantile model): a group of 20 queries needs about 1.5x at least, and more where the
  model knows its statements loosely,
* and its queries' summed excess over their expectations is at least the runtime floor (1 s): twenty
  5 ms queries that took 10 ms are not an incident, however consistent.

Every constant is the window machinery's or the detector's; none was chosen on an injected kind.

Within a slower group, the queries that ran past the model's tolerance for them (longer than the
larger of ``pred_mean_ms`` and ``pred_q_ms``: the ``beyond_tolerance_share`` signal's test) *in a
10-minute window where the group's median residual clears the floor too* are flagged: which queries
of the group the cause touched cannot be told apart otherwise, and these are the ones it shows in.
The hour gives the evidence, the window where in the hour it lies: an episode of 20 minutes proves its
hour slower, and without the window the hour's other 40 minutes gave their ordinary queries past the
tolerance (1 in 10, by the quantile's definition) as alerts too (59 normal rows beside 555 labelled in a
resize hour of stress seed 0; none with it, and no labelled row fewer). Queries the per-query
detector already alerted on, and those in ``exclude`` (the persistence step's), are left to their own
alert. A query in several slower groups (its user's and its database's) carries the evidence of the
one with the highest score.

The scoring app's deferred step (:class:`~workbench.pipeline.scoring._residuals.ResidualWindowsStep`)
runs it over each settled day next to the persistence rule, and ``workbench evaluate`` counts its
flags (:func:`group_flags`), so the same day gives the same flags at any replay speed and after any
restart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from workbench.analysis._columns import flags, numbers
from workbench.analysis._judged import judged_runs, offline_scored, runtime_spread

__all__ = ["GROUP_COLUMNS", "GROUP_KEYS", "GROUP_REASON", "GROUP_SIGNAL", "GroupParams", "group_flags",
           "slower_group_runs"]

#: The evidence signal of a flagged query.
GROUP_SIGNAL = "exec_group"
#: The alert's reason.
GROUP_REASON = "group_slowdown"
#: The grouping columns an instance's queries may be split by (Redset columns present on every row).
GROUP_KEYS = ("user_id", "database_id", "query_type")
#: Shard columns :func:`slower_group_runs` reads.
GROUP_COLUMNS = ("instance_id", "query_id", "arrival_timestamp", "execution_duration_ms", "was_cached",
                 "was_aborted", "pred_mean_ms", "pred_q_ms", "model_version", "is_anomaly", *GROUP_KEYS)
_MEDIAN_SE = math.sqrt(math.pi / 2.0)  # the standard error of a normal sample's median, in sigma / sqrt(n)
_HOUR_US = 3_600_000_000


@dataclass(frozen=True)
class GroupParams:
    """Constants of :func:`slower_group_runs` (see the module docstring for where each comes from).

    ``keys``: grouping columns, each of :data:`GROUP_KEYS`. ``min_queries``: judged queries a group
    needs. ``floor``: the least median log residual (``ln 1.5``), of the hour and of a flagged query's
    window. ``z_threshold``: the least median in standard errors. ``floor_ms``: the least summed excess
    of the group's queries. ``window_ms``: the windows within the hour (10 minutes, the analytics
    windows; a divisor of an hour). ``min_scale`` / ``max_scale``: the spread's clip for rows whose
    version does not say (the detector's defaults).
    """

    keys: tuple[str, ...] = GROUP_KEYS
    min_queries: int = 20
    floor: float = math.log(1.5)
    z_threshold: float = 5.0
    floor_ms: float = 1_000.0
    window_ms: int = 600_000
    min_scale: float = 0.25
    max_scale: float = 1.0

    def __post_init__(self) -> None:
        unknown = [k for k in self.keys if k not in GROUP_KEYS]
        if not self.keys or unknown:
            raise ValueError(f"GroupParams.keys must be a non-empty selection of {GROUP_KEYS}; got {self.keys!r}")
        if int(self.min_queries) != self.min_queries or self.min_queries < 2:
            raise ValueError(f"GroupParams.min_queries must be an integer of at least 2; got {self.min_queries!r}")
        for name in ("floor", "z_threshold", "floor_ms", "min_scale", "max_scale"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"GroupParams.{name} must be a positive finite number; got {value!r}")
        if not (isinstance(self.window_ms, int) and self.window_ms > 0 and _HOUR_US % (self.window_ms * 1000) == 0):
            raise ValueError(f"GroupParams.window_ms must divide an hour (3,600,000 ms); got {self.window_ms!r}")
        if self.min_scale > self.max_scale:
            raise ValueError(f"GroupParams.min_scale ({self.min_scale}) must not exceed max_scale ({self.max_scale})")


_RESULT = {"row": "int64", "instance_id": "int64", "query_id": "int64", "model_version": "object",
           "expected_ms": "float64", "observed_ms": "float64", "excess_ms": "float64", "group_key": "object",
           "group_value": "object", "hour_start": "datetime64[ms, UTC]", "group_queries": "int64",
           "group_ratio": "float64", "group_z": "float64", "score": "float64"}


def _empty() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in _RESULT.items()})


def slower_group_runs(rows: pa.Table, known: np.ndarray | None = None, params: GroupParams | None = None,
                      scales: Mapping[str, tuple[float, float]] | None = None,
                      exclude: np.ndarray | None = None) -> pd.DataFrame:
    """The queries of ``rows`` flagged as part of a slower group (see the module docstring).

    Parameters
    ----------
    rows : pyarrow.Table
        One day of scored query rows (the shard schema; :data:`GROUP_COLUMNS`; a missing grouping
        column is skipped, ``is_anomaly`` optional).
    known : ndarray of bool, optional
        Per row: the version's expectation rests on the statement's own history. None: every row.
    params : GroupParams, optional
        The constants (defaults: user, database and query type; 20 queries; ``ln 1.5`` and z 5; 1 s).
    scales : mapping, optional
        ``model_version -> (min_scale, max_scale)`` of each version's detector.
    exclude : ndarray of bool, optional
        Per row: flagged by another rule already (never flagged here).

    Returns
    -------
    DataFrame
        One row per flagged query, in arrival order: ``row`` (position in ``rows``), ``instance_id``,
        ``query_id``, ``model_version``, ``expected_ms``, ``observed_ms``, ``excess_ms``, and its
        group's evidence: ``group_key`` (the column), ``group_value`` (as text), ``hour_start``,
        ``group_queries`` (judged), ``group_ratio`` (``exp`` of the median residual), ``group_z``
        and ``score`` (``min(z / z_threshold, median / floor)``, at least 1).
    """
    params = params or GroupParams()
    n_rows = rows.num_rows
    keys = [k for k in params.keys if k in rows.column_names]
    if n_rows == 0 or not keys:
        return _empty()
    judged = judged_runs(rows, known, ("instance_id", "arrival_timestamp"))
    if judged.sum() < params.min_queries:
        return _empty()
    idx = np.flatnonzero(judged)
    exec_ms = np.nan_to_num(numbers(rows, "execution_duration_ms"), nan=0.0)
    pred = numbers(rows, "pred_mean_ms")
    pred_q = numbers(rows, "pred_q_ms")
    versions = rows.column("model_version").to_numpy(zero_copy_only=False)
    mean_log, spread = runtime_spread(rows, idx, params.min_scale, params.max_scale, scales)
    arrival = pc.cast(rows.column("arrival_timestamp"), pa.timestamp("us", tz="UTC"), safe=False).cast(pa.int64())
    arrival_us = arrival.to_numpy(zero_copy_only=False)[idx]
    tolerance = np.fmax(pred[idx], np.nan_to_num(pred_q[idx], nan=-np.inf))
    frame = pd.DataFrame({
        "row": idx,
        "instance_id": pc.cast(rows.column("instance_id"), pa.int64()).to_numpy(zero_copy_only=False)[idx],
        "hour_us": np.floor_divide(arrival_us, _HOUR_US) * _HOUR_US,
        "window_us": np.floor_divide(arrival_us, params.window_ms * 1000),
        "arrival_us": arrival_us,
        "query_id": pc.cast(rows.column("query_id"), pa.int64()).to_numpy(zero_copy_only=False)[idx],
        "model_version": versions[idx], "expected_ms": pred[idx], "observed_ms": exec_ms[idx],
        "excess_ms": exec_ms[idx] - pred[idx],
        "residual": np.log1p(exec_ms[idx]) - mean_log,
        "spread": spread,
        "beyond": exec_ms[idx] > tolerance,
        "alerted": flags(rows, "is_anomaly")[idx] | (np.zeros(n_rows, bool) if exclude is None
                                                     else np.asarray(exclude, dtype=bool))[idx],
    })
    found: list[pd.DataFrame] = []
    for key in keys:
        column = rows.column(key)
        valid = pc.is_valid(column).to_numpy(zero_copy_only=False)[idx]
        # as text: user and database ids are integers, the query type a name; one evidence column holds both
        frame["value"] = pc.cast(column, pa.string()).to_numpy(zero_copy_only=False)[idx]
        part = frame[valid]
        part = part.assign(window_median=part.groupby(["instance_id", "window_us", "value"], sort=False)[
            "residual"].transform("median"))
        per = part.groupby(["instance_id", "hour_us", "value"], sort=False).agg(
            n=("residual", "size"), median=("residual", "median"), spread=("spread", "median"),
            excess=("excess_ms", "sum")).reset_index()
        per["z"] = per["median"] / (_MEDIAN_SE * per["spread"] / np.sqrt(per["n"]))
        per["score"] = np.minimum(per["z"] / params.z_threshold, per["median"] / params.floor)
        slower = per[(per["n"] >= params.min_queries) & (per["score"] >= 1.0) & (per["excess"] >= params.floor_ms)]
        if slower.empty:
            continue
        hits = part.merge(slower, on=["instance_id", "hour_us", "value"], suffixes=("", "_group"))
        hits = hits[hits["beyond"] & (hits["window_median"] >= params.floor) & ~hits["alerted"]]
        found.append(pd.DataFrame({
            "row": hits["row"], "instance_id": hits["instance_id"], "query_id": hits["query_id"],
            "model_version": hits["model_version"], "expected_ms": hits["expected_ms"],
            "observed_ms": hits["observed_ms"], "excess_ms": hits["excess_ms"], "group_key": key,
            "group_value": hits["value"], "hour_us": hits["hour_us"], "arrival_us": hits["arrival_us"],
            "group_queries": hits["n"], "group_ratio": np.exp(hits["median"]), "group_z": hits["z"],
            "score": hits["score"], "key_order": keys.index(key)}))
    if not found:
        return _empty()
    out = pd.concat(found, ignore_index=True)
    # one alert per query: its strongest group (ties: the keys' order)
    out = out.sort_values(["row", "score", "key_order"], ascending=[True, False, True], kind="stable")
    out = out.drop_duplicates("row", keep="first")
    out = out.sort_values(["arrival_us", "instance_id", "query_id"], kind="stable", ignore_index=True)
    out["hour_start"] = pd.to_datetime(out["hour_us"], unit="us", utc=True)
    return out[list(_RESULT)].astype(_RESULT)


def group_flags(table: pa.Table, pred_mean_ms: np.ndarray, pred_q_ms: np.ndarray, alerted: np.ndarray,
                known: np.ndarray, version: str, params: GroupParams | None = None,
                scales: Mapping[str, tuple[float, float]] | None = None,
                exclude: np.ndarray | None = None) -> np.ndarray:
    """Per row of one day of a log scored offline by one ``version``: flagged by
    :func:`slower_group_runs` as the scoring app's step would flag it (for ``workbench evaluate`` and
    ``benchmarks/detection.py``, which score a log's rows rather than read shards)."""
    scored = offline_scored(table, GROUP_COLUMNS, pred_mean_ms, pred_q_ms, alerted, version)
    out = np.zeros(table.num_rows, dtype=bool)
    out[slower_group_runs(scored, known, params, scales, exclude)["row"].to_numpy()] = True
    return out
