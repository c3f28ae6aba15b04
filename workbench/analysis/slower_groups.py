"""A part of an instance that runs slower or waits longer: one user's, one database's or one query type's
queries for an hour, or a whole instance's wait for 10 minutes.

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
``query_type`` and the plan shape :data:`JOIN_SHAPE`, derived from ``num_joins``), takes the *judged*
queries (as :mod:`workbench.analysis.persistence` judges runs:
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

**The hour's rule.** The model knows the hour of the day but not each instance's, so a part of an
instance that runs slower at the same hour every day (its daily contention, a user's reports that meet
the nightly load) was a slower group every day (54 normal queries of one demo instance made 2x slower at
15:00 on every day). So was a part that waits at the same hour every day (one user's loads in a queue
that saturates every afternoon; a whole instance's hour is
:meth:`~workbench.ml.features.FeatureBuilder.usual_wait`'s).
A version keeps, per measure, group and UTC hour, what the group runs past the model or waits past its
usual wait at that hour as a rule (:func:`usual_group_hours`, from the training rows; ``usual_hours``),
and a group's hour is judged past it: the queries' expectations, residuals and tolerance are raised by it.

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

**The wait** is judged the same way when the caller gives each query's usual wait (``queue_reference``:
the detector's queue reference, its statement's usual ``log1p`` wait and at least an ordinary wait
on its instance, raised at an hour of the day that its instance waits through as a rule,
:meth:`workbench.ml.features.FeatureBuilder.usual_wait`: a WLM queue that saturates every afternoon
is the afternoon's usual, and without the hour it flagged such an instance's peak windows every day,
35 queries in one hour of a generated log given a daily peak): the residual is
``log1p(queue ms) - usual``, a group waits longer when its median
residual is at least ``ln 1.5`` and its median query waited at least the floor (1 s) longer than usual
(the wait has no model spread to take a z from; a typical query a second or more late is the stake),
and its flagged queries each waited ``ln 1.5`` and 1 s longer than their usual (reason
:data:`QUEUE_GROUP_REASON`, signal :data:`QUEUE_GROUP_SIGNAL`). One user's queries in the wrong WLM
queue wait 3-40 s where the instance's wait a second; the median query of every other group waits
nothing or its usual. A part (a user, database or query type) is judged against its instance too
(``contrast``): its median residual must clear the floor above the median residual of all the
instance's judged queries in the same hour, so an hour that the whole instance waits through (a
recurring daily peak beyond the statements' usual waits, a WLM saturation) is not each user's alert
but the instance's. A whole instance's window (``instance_windows``) is judged on the wait as well:
it holds as many queries as one user's hour, and "every query waits a few seconds longer for 20
minutes" moves no hour but two windows. Its runtime is not (the window layer's ``runtime_residual``
judges it, against the instance's history). On the evaluation days of the same nine logs, no group
of a user, database or query type (26,363 hours of 20 or more queries) or instance (9,302 windows)
without a labelled query waited longer; the stress logs' WLM saturations and concurrency surges and
the blind evaluation's wrong queue did.

The scoring app's deferred step (:class:`~workbench.pipeline.scoring._residuals.ResidualWindowsStep`)
runs it over each settled day after the persistence rule (:mod:`workbench.analysis.deferred`), and
``workbench evaluate`` counts its flags the same way, so the same day gives the same flags at any
replay speed and after any restart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from workbench.analysis._columns import arrival_us, numbers
from workbench.analysis._judged import RULE_RESULT, already_flagged, empty_result, judged_runs, runtime_spread

__all__ = [
    "GROUP_COLUMNS",
    "GROUP_KEYS",
    "GROUP_REASON",
    "GROUP_REASONS",
    "GROUP_SIGNAL",
    "JOIN_SHAPE",
    "QUEUE_GROUP_REASON",
    "QUEUE_GROUP_SIGNAL",
    "USUAL_HOURS_SCHEMA",
    "GroupParams",
    "group_column",
    "slower_group_runs",
    "usual_group_hours",
]

#: The evidence signal of a query of a group that runs slower.
GROUP_SIGNAL = "exec_group"
#: Its alert's reason.
GROUP_REASON = "group_slowdown"
#: The evidence signal of a query of a group that waits longer in the queue.
QUEUE_GROUP_SIGNAL = "queue_group"
#: Its alert's reason.
QUEUE_GROUP_REASON = "group_waits_longer"
#: Every reason this module's alerts carry.
GROUP_REASONS = (GROUP_REASON, QUEUE_GROUP_REASON)
#: The plan-shape grouping, derived from ``num_joins``: ``joins`` (one or more) or ``no joins``. Queries that
#: join and queries that only scan meet different trouble (a distribution style that broadcasts, hash joins
#: short of memory; a slow disk), and a part defined by how the plan runs, not by who sent it, is a part too.
JOIN_SHAPE = "join_shape"
#: The grouping columns an instance's queries may be split by (Redset columns present on every row, and the
#: plan shape derived from one).
GROUP_KEYS = ("user_id", "database_id", "query_type", JOIN_SHAPE)
#: Shard columns :func:`slower_group_runs` reads.
GROUP_COLUMNS = ("instance_id", "query_id", "arrival_timestamp", "execution_duration_ms", "queue_duration_ms",
                 "was_cached", "was_aborted", "pred_mean_ms", "pred_q_ms", "model_version", "is_anomaly",
                 "user_id", "database_id", "query_type", "num_joins")


def group_column(rows: pa.Table, key: str) -> pa.ChunkedArray | pa.Array | None:
    """The values ``rows`` are grouped by for ``key``: its column, or for :data:`JOIN_SHAPE` the plan shape
    derived from ``num_joins`` (null where that is); None when ``rows`` lack it."""
    if key == JOIN_SHAPE:
        if "num_joins" not in rows.column_names:
            return None
        joins = rows.column("num_joins")
        return pc.if_else(pc.greater_equal(pc.cast(joins, pa.float64()), 1.0), "joins", "no joins")
    return rows.column(key) if key in rows.column_names else None
_MEDIAN_SE = math.sqrt(math.pi / 2.0)  # the standard error of a normal sample's median, in sigma / sqrt(n)
_HOUR_US = 3_600_000_000
_DAY_US = 24 * _HOUR_US
#: A group's hour of one training day speaks for it with at least this many judged runs ...
_USUAL_MIN_RUNS = 5
#: ... and its excess is the group's rule at that hour when it held on at least this many days.
_USUAL_MIN_DAYS = 2
#: The rows of :func:`usual_group_hours` (a model version keeps them): the groups that run slower than
#: the model expects, or wait longer than usual, at an hour of the day as a rule, and by how much (median
#: log residual; ``measure``: ``runtime`` or ``queue``).
USUAL_HOURS_SCHEMA = pa.schema([
    pa.field("measure", pa.string()), pa.field("instance_id", pa.int64()), pa.field("group_key", pa.string()),
    pa.field("group_value", pa.string()), pa.field("hour", pa.int8()), pa.field("excess", pa.float64()),
])


def usual_group_hours(rows: pa.Table, residuals: Mapping[str, np.ndarray], judged: np.ndarray,
                      keys: tuple[str, ...] = GROUP_KEYS) -> pa.Table:
    """The groups of a training window that run slower or wait longer at a UTC hour of the day *as a
    rule* (:data:`USUAL_HOURS_SCHEMA`): per measure of ``residuals`` (``runtime``: ``log1p`` runtime minus
    the model's ``log1p`` expectation; ``queue``: ``log1p`` wait minus the usual wait), instance,
    grouping column and value, and hour, the median over days of the day's median residual of the
    ``judged`` rows, on at least :data:`_USUAL_MIN_DAYS` days with :data:`_USUAL_MIN_RUNS` runs each,
    less one standard error of a median of those runs (``sqrt(pi/2)`` times their robust spread over
    the root of their number: what the rule is known to be at least), kept where positive.

    A user whose reports run slower every afternoon (the instance's daily contention, which the model,
    knowing the hour but not the instance's, does not learn), or whose loads wait every night in a
    saturated queue, is slower each afternoon or night *as usual*: :func:`slower_group_runs` judges a
    group's hour past it. One day's incident in the window is not a rule (the median over days)."""
    found = [_usual_hours_of(rows, measure, residual, judged, keys) for measure, residual in residuals.items()]
    found = [f for f in found if len(f)]
    if not found:
        return USUAL_HOURS_SCHEMA.empty_table()
    return pa.Table.from_pandas(pd.concat(found, ignore_index=True), schema=USUAL_HOURS_SCHEMA, preserve_index=False)


def _usual_hours_of(rows: pa.Table, measure: str, residual: np.ndarray, judged: np.ndarray,
                    keys: tuple[str, ...]) -> pd.DataFrame:
    """:func:`usual_group_hours` of one measure, as a frame."""
    empty = USUAL_HOURS_SCHEMA.empty_table().to_pandas()
    judged = np.asarray(judged, dtype=bool) & np.isfinite(residual)
    if not judged.any():
        return empty
    arrival = arrival_us(rows)
    judged &= pc.is_valid(rows.column("instance_id")).to_numpy(zero_copy_only=False)
    judged &= pc.is_valid(rows.column("arrival_timestamp")).to_numpy(zero_copy_only=False)
    base = pd.DataFrame({"instance_id": pc.cast(rows.column("instance_id"), pa.int64()).to_numpy(
        zero_copy_only=False)[judged], "hour": (arrival[judged] % _DAY_US) // _HOUR_US,
        "day": arrival[judged] // _DAY_US, "residual": np.asarray(residual, dtype=float)[judged]})
    found = []
    for key in keys:
        column = group_column(rows, key)
        if column is None:
            continue
        part = base.assign(group_value=pc.cast(column, pa.string()).to_numpy(zero_copy_only=False)[judged])
        part = part[pc.is_valid(column).to_numpy(zero_copy_only=False)[judged]]
        daily = part.groupby(["instance_id", "group_value", "hour", "day"], sort=False)["residual"].agg(
            ["median", "size"])
        daily = daily[daily["size"] >= _USUAL_MIN_RUNS].reset_index()
        hour_keys = ["instance_id", "group_value", "hour"]
        usual = daily.groupby(hour_keys, sort=True)["median"].agg(["median", "size"])
        usual = usual[(usual["size"] >= _USUAL_MIN_DAYS) & (usual["median"] > 0)]
        # what the rule is known to at least: one standard error of a median of its runs below it (the
        # runs of the days that counted, their robust spread), so that a rule is not the noise of a few
        # days' medians (an excess of a few hundredths moved groups sitting on the bar)
        counted = part.merge(daily[[*hour_keys, "day"]], on=[*hour_keys, "day"])
        center = counted.groupby(hour_keys, sort=False)["residual"].transform("median")
        spread = counted.assign(deviation=(counted["residual"] - center).abs()).groupby(hour_keys)["deviation"].agg(
            ["median", "size"])
        se = _MEDIAN_SE * 1.4826 * spread["median"] / np.sqrt(spread["size"])
        usual = usual.assign(rule=usual["median"] - se.reindex(usual.index).fillna(0.0))
        usual = usual[usual["rule"] > 0].reset_index()
        found.append(pd.DataFrame({"measure": measure, "instance_id": usual["instance_id"], "group_key": key,
                                   "group_value": usual["group_value"], "hour": usual["hour"],
                                   "excess": usual["rule"]}))
    return pd.concat(found, ignore_index=True) if found else empty


def _usual_excess(part: pd.DataFrame, measure: str, key: str, usual: pd.DataFrame | None) -> np.ndarray:
    """Per row of ``part`` (one grouping column's values): its group's usual log excess of ``measure``
    at that hour of the day under the version that scored it (0 without one)."""
    if usual is None or usual.empty:
        return np.zeros(len(part))
    mine = usual[(usual["group_key"] == key) & (usual["measure"] == measure)]
    if mine.empty:
        return np.zeros(len(part))
    keys = ["model_version", "instance_id", "group_value", "hour"]
    rows = pd.DataFrame({"model_version": part["model_version"].to_numpy(),
                         "instance_id": part["instance_id"].to_numpy(), "group_value": part["value"].to_numpy(),
                         "hour": ((part["hour_us"].to_numpy() % _DAY_US) // _HOUR_US).astype(np.int64)})
    mine = mine.assign(hour=mine["hour"].astype(np.int64), instance_id=mine["instance_id"].astype(np.int64))
    merged = rows.merge(mine[[*keys, "excess"]], on=keys, how="left")
    return np.nan_to_num(merged["excess"].to_numpy(dtype=float), nan=0.0)


@dataclass(frozen=True)
class GroupParams:
    """Constants of :func:`slower_group_runs` (see the module docstring for where each comes from).

    ``keys``: grouping columns, each of :data:`GROUP_KEYS`. ``min_queries``: judged queries a group
    needs. ``floor``: the least median log residual (``ln 1.5``), of the hour and of a flagged query's
    window. ``z_threshold``: the least median in standard errors. ``floor_ms``: the least summed excess
    of the group's queries (for the wait: of its median query). ``window_ms``: the windows within the
    hour (10 minutes, the analytics windows; a divisor of an hour). ``instance_windows``: also judge the
    wait of a whole instance's window. ``contrast``: a part's wait counts only what it waited beyond
    the median of its whole instance in the same span. ``min_scale`` / ``max_scale``: the spread's clip for rows whose
    version does not say (the detector's defaults).
    """

    keys: tuple[str, ...] = GROUP_KEYS
    min_queries: int = 20
    floor: float = math.log(1.5)
    z_threshold: float = 5.0
    floor_ms: float = 1_000.0
    window_ms: int = 600_000
    instance_windows: bool = True
    contrast: bool = True
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


#: A measure's signal and reason: the runtime against the model, the wait against the usual wait.
_MEASURES = {"runtime": (GROUP_SIGNAL, GROUP_REASON), "queue": (QUEUE_GROUP_SIGNAL, QUEUE_GROUP_REASON)}


def _empty() -> pd.DataFrame:
    return empty_result(RULE_RESULT)


def _slower(part: pd.DataFrame, span: str, measure: str, params: GroupParams) -> pd.DataFrame:
    """The groups ``(instance_id, span, value)`` of ``part`` that clear ``measure``'s bars, with their
    figures (``n``, ``median``, ``z``, ``score``)."""
    per = part.groupby(["instance_id", span, "value"], sort=False).agg(
        n=("residual", "size"), median=("residual", "median"), spread=("spread", "median"),
        excess_sum=("excess_ms", "sum"), excess_median=("excess_ms", "median")).reset_index()
    if measure == "runtime":
        per["z"] = per["median"] / (_MEDIAN_SE * per["spread"] / np.sqrt(per["n"]))
        per["score"] = np.minimum(per["z"] / params.z_threshold, per["median"] / params.floor)
        material = per["excess_sum"] >= params.floor_ms
    else:  # the wait has no model spread: the typical query of the group waited the floor longer
        per["z"] = np.nan
        per["score"] = per["median"] / params.floor
        material = per["excess_median"] >= params.floor_ms
        if "instance_median" in part:
            # a part waits longer than the rest of its instance did then: a busy hour that every group
            # waits through is the whole instance's (its windows), not each user's
            per = per.merge(part.groupby(["instance_id", span], sort=False)["instance_median"].first().reset_index(),
                            on=["instance_id", span])
            per["score"] = np.minimum(per["score"], (per["median"] - per["instance_median"]) / params.floor)
    return per[(per["n"] >= params.min_queries) & (per["score"] >= 1.0) & material]


def _waited_past(residual: np.ndarray, waited: np.ndarray, usual: np.ndarray, params: GroupParams) -> np.ndarray:
    """Per query: waited past its usual wait (``usual`` ms; ``residual`` in ``log1p``) by the floor, and by
    the detector's queue floor of time."""
    return (residual >= params.floor) & (waited - usual >= params.floor_ms)


def _past_the_hours_rule(part: pd.DataFrame, measure: str, usual: np.ndarray, params: GroupParams) -> pd.DataFrame:
    """``part``'s figures of ``measure`` with each query's expectation raised by its group's usual log
    excess at that hour (``usual``, 0 where none): its residual, expectation, excess and the test of a
    query past it (the runtime's tolerance; the wait's floors)."""
    if not usual.any():
        return part
    expected = np.expm1(np.log1p(np.clip(part["expected_ms"].to_numpy(), 0.0, None)) + usual)
    residual = part["residual"].to_numpy() - usual
    observed = part["observed_ms"].to_numpy()
    if measure == "runtime":
        beyond = observed > np.expm1(np.log1p(np.clip(part["tolerance"].to_numpy(), 0.0, None)) + usual)
    else:
        beyond = _waited_past(residual, observed, expected, params)
    return part.assign(residual=residual, expected_ms=expected, excess_ms=observed - expected, beyond=beyond)


def _measure_frame(base: pd.DataFrame, values: dict[str, np.ndarray]) -> pd.DataFrame:
    """``base`` with one measure's columns, the rows where its residual is known."""
    return base.assign(**values)[np.isfinite(values["residual"])]


def slower_group_runs(rows: pa.Table, known: np.ndarray | None = None, params: GroupParams | None = None,
                      scales: Mapping[str, tuple[float, float]] | None = None,
                      exclude: np.ndarray | None = None, queue_reference: np.ndarray | None = None,
                      usual_hours: pd.DataFrame | None = None) -> pd.DataFrame:
    """The queries of ``rows`` flagged as part of a slower group (see the module docstring).

    Parameters
    ----------
    rows : pyarrow.Table
        One day of scored query rows (the shard schema; :data:`GROUP_COLUMNS`; a missing grouping
        column is skipped, ``is_anomaly`` optional).
    known : ndarray of bool, optional
        Per row: the version's expectation rests on the statement's own history. None: every row.
    params : GroupParams, optional
        The constants (defaults: user, database, query type and plan shape; 20 queries; ``ln 1.5`` and z 5; 1 s).
    scales : mapping, optional
        ``model_version -> (min_scale, max_scale)`` of each version's detector.
    exclude : ndarray of bool, optional
        Per row: flagged by another rule already (never flagged here).
    queue_reference : ndarray of float, optional
        Per row: the usual ``log1p`` wait of the query (its statement's, at least an ordinary wait on
        its instance, and what its instance waits through at that hour as a rule:
        :meth:`workbench.ml.features.FeatureBuilder.usual_wait`; NaN where unknown). None: the wait
        is not judged.
    usual_hours : DataFrame, optional
        :func:`usual_group_hours` of each version that scored rows, with its ``model_version``: a
        group's runtime is judged past what it runs at that hour of the day as a rule. None: past the
        model's expectation alone.

    Returns
    -------
    DataFrame
        One row per flagged query, in arrival order: ``row`` (position in ``rows``), ``instance_id``,
        ``query_id``, ``model_version``, ``signal`` and ``reason`` (:data:`GROUP_SIGNAL` /
        :data:`GROUP_REASON` for runtime, :data:`QUEUE_GROUP_SIGNAL` / :data:`QUEUE_GROUP_REASON`
        for the wait), ``expected_ms``, ``observed_ms``, ``excess_ms`` (of that measure), and its
        group's evidence: ``group_key`` (the column; ``instance_id`` for a whole instance's window),
        ``group_value`` (as text), ``span_start`` and ``span_end``, ``group_queries`` (judged),
        ``group_ratio`` (``exp`` of the median residual), ``group_z`` (NaN for the wait),
        ``score`` (at least 1) and ``exec_ratio`` (the runtime against the model's expectation, as
        the scorer's, whichever measure flagged the query).
    """
    params = params or GroupParams()
    n_rows = rows.num_rows
    keys = [k for k in params.keys if group_column(rows, k) is not None]
    if n_rows == 0:
        return _empty()
    judged = judged_runs(rows, known, ("instance_id", "arrival_timestamp"))
    if judged.sum() < params.min_queries:
        return _empty()
    idx = np.flatnonzero(judged)
    exec_ms = np.nan_to_num(numbers(rows, "execution_duration_ms"), nan=0.0)[idx]
    pred = numbers(rows, "pred_mean_ms")[idx]
    tolerance = np.fmax(pred, np.nan_to_num(numbers(rows, "pred_q_ms")[idx], nan=-np.inf))
    mean_log, spread = runtime_spread(rows, idx, params.min_scale, params.max_scale, scales)
    arrival = arrival_us(rows)[idx]
    window_us = params.window_ms * 1000
    base = pd.DataFrame({
        "row": idx,
        "instance_id": pc.cast(rows.column("instance_id"), pa.int64()).to_numpy(zero_copy_only=False)[idx],
        "hour_us": np.floor_divide(arrival, _HOUR_US) * _HOUR_US,
        "window_us": np.floor_divide(arrival, window_us) * window_us,
        "arrival_us": arrival,
        "query_id": pc.cast(rows.column("query_id"), pa.int64()).to_numpy(zero_copy_only=False)[idx],
        "model_version": rows.column("model_version").to_numpy(zero_copy_only=False)[idx],
        "alerted": already_flagged(rows, exclude)[idx],
        "exec_ratio": exec_ms / np.maximum(np.nan_to_num(pred, nan=0.0), 1.0),  # as the scorer's, whichever measure
    })
    measures = {"runtime": _measure_frame(base, {
        "expected_ms": pred, "observed_ms": exec_ms, "excess_ms": exec_ms - pred,
        "residual": np.log1p(exec_ms) - mean_log, "spread": spread, "beyond": exec_ms > tolerance,
        "tolerance": tolerance})}
    if queue_reference is not None and "queue_duration_ms" in rows.column_names:
        usual_log = np.asarray(queue_reference, dtype=float)[idx]
        waited = numbers(rows, "queue_duration_ms")[idx]
        usual = np.expm1(usual_log)
        residual = np.log1p(np.clip(waited, 0.0, None)) - usual_log
        measures["queue"] = _measure_frame(base, {
            "expected_ms": usual, "observed_ms": waited, "excess_ms": waited - usual, "residual": residual,
            "spread": np.full(len(idx), np.nan), "beyond": _waited_past(residual, waited, usual, params)})
    # (grouping column, evidence span): the parts by the hour; a whole instance, whose window holds the
    # queries an hour of one user does, by the window, for the wait (its runtime is the window layer's)
    groupings = [(key, "hour_us") for key in keys]
    found: list[pd.DataFrame] = []
    for measure, frame in measures.items():
        whole = [("instance_id", "window_us")] if measure == "queue" and params.instance_windows else []
        for order, (key, span) in enumerate([*groupings, *whole]):
            column = group_column(rows, key)
            valid = pc.is_valid(column).to_numpy(zero_copy_only=False)[frame["row"].to_numpy()]
            # as text: user and database ids are integers, the query type a name; one evidence column holds both
            part = frame.assign(value=pc.cast(column, pa.string()).to_numpy(zero_copy_only=False)[
                frame["row"].to_numpy()])[valid]
            part = _past_the_hours_rule(part, measure, _usual_excess(part, measure, key, usual_hours), params)
            if measure == "queue" and key != "instance_id" and params.contrast:
                part = part.assign(instance_median=frame.groupby(["instance_id", span], sort=False)[
                    "residual"].transform("median")[valid])
            slower = _slower(part, span, measure, params)
            if slower.empty:
                continue
            part = part.assign(window_median=part.groupby(["instance_id", "window_us", "value"], sort=False)[
                "residual"].transform("median"))
            hits = part.merge(slower, on=["instance_id", span, "value"], suffixes=("", "_group"))
            hits = hits[hits["beyond"] & (hits["window_median"] >= params.floor) & ~hits["alerted"]]
            start = hits[span].to_numpy()
            signal, reason = _MEASURES[measure]
            found.append(pd.DataFrame({
                "row": hits["row"], "instance_id": hits["instance_id"], "query_id": hits["query_id"],
                "model_version": hits["model_version"], "signal": signal, "reason": reason,
                "expected_ms": hits["expected_ms"], "observed_ms": hits["observed_ms"],
                "excess_ms": hits["excess_ms"], "group_key": key, "group_value": hits["value"],
                "span_us": start, "span_end_us": start + (_HOUR_US if span == "hour_us" else window_us),
                "arrival_us": hits["arrival_us"], "group_queries": hits["n"], "group_ratio": np.exp(hits["median"]),
                "group_z": hits["z"], "score": hits["score"], "exec_ratio": hits["exec_ratio"], "order": order}))
    if not found:
        return _empty()
    out = pd.concat(found, ignore_index=True)
    # one alert per query: its strongest group (ties: runtime before the wait, then the keys' order)
    out = out.sort_values(["row", "score", "order"], ascending=[True, False, True], kind="stable")
    out = out.drop_duplicates("row", keep="first")
    out = out.sort_values(["arrival_us", "instance_id", "query_id"], kind="stable", ignore_index=True)
    out["span_start"] = pd.to_datetime(out["span_us"], unit="us", utc=True)
    out["span_end"] = pd.to_datetime(out["span_end_us"], unit="us", utc=True)
    return out[list(RULE_RESULT)].astype(RULE_RESULT)
