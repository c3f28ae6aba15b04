"""Collective (instance-level) anomalies: a 10-minute window against its instance's own history.

Per-query scoring cannot see many queries that are each only mildly odd, together, on one instance
(a WLM queue storm, a concurrency surge, a spill wave, a resize). Here each closed window of an
instance is compared with that instance's *earlier* windows, signal by signal, with pure functions
over ``window_stats`` rows (:data:`workbench.store.window_stats.WINDOW_STATS_SCHEMA`).

Signals (:data:`SIGNALS`; all from what a window already aggregates, and none that a single
query can move on its own):

* levels: arrivals (queries per window), mean runtime and mean queue wait per query without the
  window's largest one, p95 runtime, the cluster size (a resize, two-sided);
* silence (``arrivals_drop``): traffic that falls or stops, on the windows without any query too
  (:func:`with_silent_windows` adds them; no other signal reads them). Judged against the usual
  (its empirical check over the same hour on earlier days) *and* against the hour before (the
  median of its windows with queries, z against the spread of changes between adjacent such
  windows; for a silent window, the hour before the instance fell silent, so a pause of hours is
  flagged for as long as it runs through hours that are busy as a rule; for traffic that fell and goes
  on falling short, the hour before it fell, up to ``drop_memory`` earlier), the weaker of the two: a
  day that runs quieter than the days before all day long, or a batch instance whose busy hours
  move, is not an outage. Floor 30 queries, as the surge's; 15 for a window without any query (the
  instance stopped altogether).
* shares of the window's queries: queue/WLM-bound, waited over a second, ran over a second,
  compiled over ten seconds, spilled (these four out of the queries that did work, i.e. not
  result-cache hits), aborted,
  and result-cache hits (a *drop* is the anomaly: a cache invalidated, hits become executions);
* the execution pace: the geometric mean of execution time per MB scanned over the window's queries
  that scanned a material amount (``pace_queries``, ``pace_log_sum`` of
  :mod:`workbench.analysis.windows`), compared as its natural log, judged only over at least
  ``_PACE_MIN_QUERIES`` (50) such queries. Every query of an instance running slower (fewer
  nodes, a noisy neighbour, a degraded node, I/O throttling) moves it; a change in the mix of
  small and large queries moves it less than it moves raw runtimes. Floor ``ln 1.5``: the whole
  window's work 50 % slower per MB.
* the runtime residual (``runtime_residual``): the median over the window's executed, scored
  queries of ``ln(runtime / the model's expectation for that query)``
  (:mod:`workbench.analysis.residual_windows`), judged over at least ``min_queries`` such
  queries. Mix-adjusted by the model itself: it moves when every query runs slower than expected
  (a mid-size or serverless instance whose scans are too few for the pace), not when the mix of
  statements changes. Only the scoring app has the scores: its trainer stores these windows in
  ``window_residuals`` and judges them (``window_stats`` rows read NaN here: not judged). Floor
  ``ln 1.5``, as the pace's.

Sums (total queue time, MB spilled) are left out: one big query moves them as much as a storm does.
So is the mean compile time (even without the longest compile): a never-seen statement compiles for
minutes, and two of them in a window moved it as far as a cold compile cache (six false windows a
day on the stress log); the share compiling over ten seconds needs five such queries.
Windows stored before a count existed read NULL: they are neither judged nor part of a history.

Expected value (robust, shrunk): for the window's hour of the week, the median of the instance's
windows at the same hour of the week in earlier weeks, shrunk toward the median at the same hour of
the day on earlier days, shrunk in turn toward the instance's overall median (the hour just before
the window excluded, so that an ongoing episode does not become its own reference): ``m = (n_g * med_g + k * m_parent) /
(n_g + k)`` with ``k = shrink`` windows (an hour's worth), so a group with little history leans on
its parent and a long history speaks for itself. The spread is the MAD (x 1.4826) shrunk the same
way, floored at ``min_spread``. Counts, times and MB are compared in ``log1p`` space, shares as
they are. A level (a count, time, size or pace) is judged only once its reference holds an earlier
day of the instance (a window more than 20 hours before): until then its daily cycle is unknown, and
an instance's first busy afternoon was judged against its quiet morning. Shares are judged from the
first hours.

Decision: the same two-sided principle as the per-query detector
(:mod:`workbench.ml.detector`): a window is flagged on a signal when its evidence ``z`` clears
``z_threshold`` *and* the absolute excess (observed - expected, natural units) clears the signal's
floor, i.e. ``score = min(z / z_threshold, excess / floor) >= 1``. The floors are set by what an
operator would call material for a whole window (one second per query, five seconds of p95, 30
extra queries, one node; 5 points of queue-bound share, 20 of the long-compile share, 10 points for
the other shares).

* Levels: ``z`` is the robust z against the shrunk median/MAD above.
* Shares: ``z`` is the normal quantile of an exact binomial tail, over-dispersed
  (:func:`share_tail_z`): ``k`` of the window's ``n`` queries against the expected share ``p0``,
  with the between-window variance that the history shows beyond the binomial one as a design
  effect (so a busy window's small wobble is not significant, and a quiet window's few queries
  prove little). A share must also exceed its expectation by ``min_excess_queries`` (5) queries.
* Means and the p95 must be carried by as many queries: a trimmed mean's excess (times the
  queries it is over) must be at least ``min_excess_queries`` times the window's largest value
  (two or three never-seen statements of twenty minutes in one window move the mean without the
  longest by tens of seconds a query: false windows on stress seeds 1 and 2), and the p95 is only judged
  where 5 % of the window's queries are that many (100 queries; in a smaller window two or three
  queries are its top 5 %).
* Both: an empirical check on the assumed shape: a window is not unusual when more than
  ``max_history_share`` (1 %) of the instance's reference windows were as extreme.

A change that lasts can sit just under the bar in every window it touches. So each (window,
signal) is also judged with the window just before it (:func:`score_window_runs`, used by
:func:`flag_windows`): Stouffer's ``(z + z_before) / sqrt(2)``, each z counted up to
``z_threshold`` (one extreme window must not carry an ordinary one: an outage's last window carried
the first window back, "together z 40"), against :func:`pair_threshold`
(the single bar's tail probability halved, since every window is now looked at twice), and only
when *each* of the two windows is material on its own (floor, carriers, the empirical check).
Normal deviations of adjacent windows are positively correlated (a busy hour), which the
combination does not model; the per-window materiality and the halved tail are what hold its
false windows down (none added at z 5 on stress seeds 0-2, see docs/detector-notes.md).

The z threshold (5.0; robust z of heavy-tailed window statistics) aims at well under one false
window per instance and week (about 5,000 window-signal tests); ``benchmarks/detection.py``
chooses it leave-one-kind-out from {3, 4, 5} (5 for every kind held out since ``arrivals_drop``, 4 or 5
before; at 5 every labelled window of the stress log is flagged at window precision 0.92). Nothing here knows
about any generator or anomaly kind.

Every value depends only on the window and the instance's earlier windows (the pair: also the window
before it, scored the same way), so re-running over
the same store gives the same rows (the lakehouse write is insert-if-absent on
``(instance_id, window_start, signal)``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa

from workbench._units import human_ms, percent

logger = logging.getLogger(__name__)

__all__ = [
    "SIGNALS",
    "WINDOW_ANOMALY_SCHEMA",
    "CollectiveParams",
    "CollectiveStep",
    "Signal",
    "flag_windows",
    "format_signal_value",
    "pair_threshold",
    "reference_start",
    "score_window_runs",
    "score_windows",
    "window_score",
    "window_signals",
    "windows_of",
    "with_silent_windows",
]

_TS = pa.timestamp("ms", tz="UTC")
#: Rows of the ``window_anomalies`` table (one per flagged window and signal).
WINDOW_ANOMALY_SCHEMA = pa.schema([
    pa.field("instance_id", pa.int64(), nullable=False),
    pa.field("window_start", _TS, nullable=False),
    pa.field("signal", pa.string(), nullable=False),
    pa.field("expected", pa.float64()),
    pa.field("observed", pa.float64()),
    pa.field("score", pa.float64()),
    pa.field("reason", pa.string()),
])


@dataclass(frozen=True)
class Signal:
    """One window signal: how to read it, its floor and unit, and the reason text."""

    observe: Callable[[pd.DataFrame], np.ndarray]
    floor: float
    unit: str
    reason: str
    log: bool = True
    two_sided: bool = False
    #: Only judged in windows with at least ``min_queries`` queries. Shares need not: their test
    #: accounts for the window's size and their excess must be ``min_excess_queries`` queries.
    needs_many: bool = True
    #: For a share of queries: the denominator per window (queries the share is out of). The
    #: share is then judged by the over-dispersed binomial tail test (see the module docstring).
    base: Callable[[pd.DataFrame], np.ndarray] | None = None
    #: ``"up"`` (more than usual is bad) or ``"down"`` (fewer than usual is bad), for shares.
    tail: str = "up"
    #: For a mean over queries: per window, the fewest queries that can carry one unit of excess
    #: (``n - 1`` over the largest value). The excess must take ``min_excess_queries`` of them.
    carriers: Callable[[pd.DataFrame], np.ndarray] | None = None
    #: For a quantile: the share of the window's queries above it (0.05 for a p95). Judged only
    #: when that many queries are at least ``min_excess_queries``.
    above: float | None = None
    #: The queries the signal is computed over, per window, when they are not all of the window's
    #: (``needs_many`` then counts these against ``min_queries``). None: the window's queries.
    count: Callable[[pd.DataFrame], np.ndarray] | None = None
    #: The reason text of a flagged window, from ``(observed, expected, queries)``. None: the
    #: generic "observed vs expected (unit; reference)".
    describe: Callable[[float, float, float], str] | None = None
    #: The windows of the empirical check (``max_history_share``): ``"all"`` the whole reference, or
    #: ``"hour"`` the instance's windows at the same hour of the day on earlier days. Traffic *is* the
    #: daily cycle: against the whole reference, a quiet night's windows made any busy hour's silence
    #: ordinary.
    empirical: str = "all"
    #: Also judged against the instance's windows of the hour just before (the median of those with
    #: queries, z against the spread of changes between adjacent such windows): a level that the
    #: instance's whole day holds lower (a quieter weekday, a batch that moved) is not a window's
    #: anomaly; one that breaks off from the hour before and from the usual is.
    recent: bool = False
    #: The floor of a window without any query, when it differs from ``floor``: an instance that stops
    #: altogether is unavailable, which is material sooner than 30 fewer queries of a busy one.
    silent_floor: float | None = None


def _values(w: pd.DataFrame, column: str) -> np.ndarray:
    """A column as float (NaN where null, all NaN when the frame lacks it: stores of earlier versions)."""
    if column not in w:
        return np.full(len(w), np.nan)
    return pd.to_numeric(w[column], errors="coerce").to_numpy(float)


def _col(column: str) -> Callable[[pd.DataFrame], np.ndarray]:
    return lambda w: _values(w, column)


def _executed(w: pd.DataFrame) -> np.ndarray:
    """Queries that did work (not result-cache hits): the base of spill and wait shares."""
    return _values(w, "total_queries") - _values(w, "cached_queries")


def _share(column: str, base: Callable[[pd.DataFrame], np.ndarray]) -> Callable[[pd.DataFrame], np.ndarray]:
    def observe(w: pd.DataFrame) -> np.ndarray:
        n = base(w)
        with np.errstate(invalid="ignore", divide="ignore"):
            # clipped: a log may count a cached query as slow or spilled (numerator beyond its base)
            return np.where(n > 0, np.clip(_values(w, column) / np.where(n > 0, n, 1.0), 0.0, 1.0), np.nan)
    return observe


def _trimmed_mean(total_column: str, max_column: str) -> Callable[[pd.DataFrame], np.ndarray]:
    """Mean per query without the window's largest value (one runaway or one long wait is not collective)."""
    def observe(w: pd.DataFrame) -> np.ndarray:
        n = _values(w, "total_queries")  # NaN when the store has no maximum (an earlier version's window)
        return (_values(w, total_column) - _values(w, max_column)) / np.maximum(n - 1, 1.0)
    return observe


def _per_unit_past(max_column: str) -> Callable[[pd.DataFrame], np.ndarray]:
    """Queries per unit of a trimmed mean's excess when none adds more than the window's largest value.

    The mean without the largest value still moves when the next largest are huge (two or three
    never-seen statements, one user's burst of a heavy one): its excess times the ``n - 1``
    queries, over the largest value, is the fewest queries that can hold it.
    """
    def carriers(w: pd.DataFrame) -> np.ndarray:
        n = _values(w, "total_queries")
        return np.maximum(n - 1, 1.0) / np.maximum(np.nan_to_num(_values(w, max_column)), 1.0)
    return carriers


def _trimmed_mean_exec(w: pd.DataFrame) -> np.ndarray:
    """Mean runtime per query without the window's longest query (NaN-safe: no max counts as 0)."""
    n = _values(w, "total_queries")
    longest = np.nan_to_num(_values(w, "max_exec_time_ms"))
    return (_values(w, "total_exec_time_ms") - longest) / np.maximum(n - 1, 1.0)


#: The execution pace is judged over at least this many queries: per-query paces spread over about
#: 1.3 nepers, so the mean of 50 is known to about 0.2 (half the ``ln 1.5`` floor); fewer are one
#: or two queries' story.
_PACE_MIN_QUERIES = 50


def _log_pace(w: pd.DataFrame) -> np.ndarray:
    """Log of the geometric-mean execution ms per MB scanned (NaN below ``_PACE_MIN_QUERIES`` or not stored)."""
    n = _values(w, "pace_queries")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n >= _PACE_MIN_QUERIES, _values(w, "pace_log_sum") / 1000.0 / np.where(n > 0, n, 1.0), np.nan)


def _describe_residual(observed: float, expected: float, queries: float) -> str:
    """The runtime residual's reason: ratios to the model's expectation read better than nepers."""
    return (f"every query runs slower than the model expects for it (the whole instance slower?): the median "
            f"query ran {np.exp(observed):.2f}x its expected runtime over {queries:.0f} queries, vs "
            f"{np.exp(expected):.2f}x usually (the instance's earlier windows for this hour of the week, shrunk "
            f"toward its hour of day and overall)")


#: The tolerance share is read only from windows with at least this many judged queries, as a window
#: and as a reference: expected at one query in ten, a window of five mostly holds none, so the median
#: of small windows' shares is 0 and an ordinary window of fourteen with a few past the tolerance
#: looked like a storm against it (a two-instance test log, instance of five judged queries a window).
_TOLERANCE_MIN_QUERIES = 20


def _beyond_tolerance(w: pd.DataFrame) -> np.ndarray:
    """Share of the judged queries past the model's tolerance (NaN below ``_TOLERANCE_MIN_QUERIES`` of them)."""
    n = _values(w, "residual_queries")
    return np.where(n >= _TOLERANCE_MIN_QUERIES, _share("beyond_tolerance_queries", _col("residual_queries"))(w),
                    np.nan)


def _describe_beyond_tolerance(observed: float, expected: float, queries: float) -> str:
    """The tolerance share's reason, in the queries' own terms."""
    return (f"part of the workload runs slower than the model expects for it: {observed:.0%} of {queries:.0f} "
            f"queries ran past the model's tolerance for them (its upper quantile for each), vs {expected:.0%} "
            "usually (the instance's earlier windows for this hour of the week, shrunk toward its hour of day "
            "and overall)")


#: Collective signals are counts, shares or statistics that one query cannot move on its own:
#: sums like the window's total queue time or MB spilled are one big query's story as often as
#: not (per-query scoring tells that one), so they are not signals here.
SIGNALS: dict[str, Signal] = {
    "arrivals": Signal(_col("total_queries"), 30.0, "queries", "arrival surge (concurrency)", needs_many=False),
    # The other side of arrivals, on windows without a query as well (with_silent_windows): an
    # outage, a paused or failed-over cluster, a client that lost its connection. Floor 30 queries,
    # as the surge's; 15 for a window without any query (the instance stopped: at 10, bursty small
    # instances' empty windows were flagged on three logs of eight; at 15, 5 windows on one log, after
    # a sporadic instance's batch, where its usual for the hour read 16): a quiet instance's empty
    # window is not news. Judged against the usual *and*
    # the hour before: whole days run 40 % quieter than the days before (weekday cycles), and
    # batch instances' busy hours move from day to day; an outage breaks off from both.
    "arrivals_drop": Signal(_col("total_queries"), 30.0, "queries",
                            "traffic fell or stopped (an outage, a paused cluster, clients cut off?)",
                            tail="down", needs_many=False, empirical="hour", recent=True, silent_floor=15.0),
    "queue_bound_share": Signal(_share("queue_wlm_bound_queries", _col("total_queries")), 0.05, "share",
                                "more queries wait in the WLM queue longer than they run", log=False,
                                base=_col("total_queries"), needs_many=False),
    "queued_share": Signal(_share("queued_queries", _executed), 0.10, "share",
                           "more queries wait in the queue for over a second", log=False, base=_executed,
                           needs_many=False),
    "queue_per_query_ms": Signal(_trimmed_mean("total_queue_time_ms", "max_queue_time_ms"), 1_000.0, "ms",
                                 "queries wait longer (mean wait without the longest wait)",
                                 carriers=_per_unit_past("max_queue_time_ms")),
    "exec_per_query_ms": Signal(_trimmed_mean_exec, 1_000.0, "ms",
                                "queries run slower (mean without the longest query)",
                                carriers=_per_unit_past("max_exec_time_ms")),
    "spill_share": Signal(_share("spilled_queries", _executed), 0.10, "share",
                          "more queries spill to disk (memory pressure)", log=False, base=_executed, needs_many=False),
    "abort_share": Signal(_share("aborted_queries", _col("total_queries")), 0.10, "share",
                          "more queries are aborted (cancellations, timeouts, retry loops)", log=False,
                          base=_col("total_queries"), needs_many=False),
    "cache_hit_share": Signal(_share("cached_queries", _col("total_queries")), 0.10, "share",
                              "fewer result-cache hits (cache invalidated: hits become executions)", log=False,
                              base=_col("total_queries"), tail="down", needs_many=False),
    # Floor 20 points, not 10: a burst of never-seen statements (each compiles for minutes) moves
    # this share by 10-17 points on an ordinary day; a cold compile cache moves it by 20-30.
    "long_compile_share": Signal(_share("long_compile_queries", _executed), 0.20, "share",
                                 "more queries compile for over 10 s (compile cache cold?)", log=False,
                                 base=_executed, needs_many=False),
    "slow_share": Signal(_share("slow_queries", _executed), 0.10, "share",
                         "more queries run longer than a second", log=False, base=_executed, needs_many=False),
    "p95_exec_ms": Signal(_col("p95_exec_time_ms"), 5_000.0, "ms", "p95 runtime up", above=0.05),
    "cluster_size": Signal(_col("cluster_size"), 1.0, "nodes", "cluster size changed (resize)",
                           two_sided=True, needs_many=False),
    # Already a log (a ratio of paces is what matters), so compared as it is; its own query minimum.
    "exec_pace": Signal(_log_pace, float(np.log(1.5)), "ln ms per MB scanned",
                        "queries run slower per MB scanned (the whole instance slower?)", log=False,
                        needs_many=False),
    # The scorer's runtime residual (workbench.analysis.residual_windows): the median over the
    # window's executed, scored queries of ln(runtime / the model's expectation for that query),
    # so a change of the mix that the model explains does not move it. Already a log; floor ln 1.5
    # as the pace's: the window's typical query 50 % slower than its own expectation. Only the
    # scoring app's ``window_residuals`` carry it (NaN in ``window_stats``: not judged there).
    "runtime_residual": Signal(_col("median_log_residual"), float(np.log(1.5)), "ln(runtime / expected)",
                               "every query runs slower than the model expects for it", log=False,
                               count=_col("residual_queries"), describe=_describe_residual),
    # The residual's share form: the share of the same queries that ran past the model's tolerance
    # for them (its upper quantile per query). The median moves when most queries run slower; this
    # moves when a part of the workload does (one query type, one user's queries, one table's).
    # Floor 10 points, as the other shares; the binomial test and its excess of 5 queries as theirs;
    # only over windows of at least 20 judged queries (_TOLERANCE_MIN_QUERIES).
    "beyond_tolerance_share": Signal(_beyond_tolerance, 0.10, "share",
                                     "more queries run past the model's tolerance for them", log=False,
                                     base=_col("residual_queries"), needs_many=False,
                                     count=_col("residual_queries"), describe=_describe_beyond_tolerance),
}


@dataclass(frozen=True)
class CollectiveParams:
    """Constants of the window comparison (see the module docstring)."""

    z_threshold: float = 5.0
    shrink: float = 6.0
    min_history: int = 36
    lookback: timedelta = timedelta(days=28)
    min_spread: float = 0.1
    min_share_spread: float = 0.02
    #: A collective claim needs many queries: a mean, share or sum over a handful of queries is
    #: one or two queries' story (per-query scoring tells it).
    min_queries: int = 20
    #: The latest hour before a window is not part of its reference: an ongoing episode must not
    #: become its own baseline.
    recent_guard: timedelta = timedelta(hours=1)
    #: How long before a window a drop that goes on may have begun (:func:`_level_before_drop`): the
    #: window is compared with the hour before the traffic fell, not with its own hour before, which the
    #: drop has emptied too. At one hour, a drop is judged against the level it broke off from for about
    #: its first 80 minutes (about half an hour before: while its own hour before held the level); at
    #: the lookback, a day whose traffic stepped down at midnight was a drop until morning (18 windows
    #: more on eight generated logs; 13 at two hours, 7 at one, see docs/detector-notes.md).
    #: None: the lookback.
    drop_memory: timedelta | None = timedelta(hours=1)
    #: A share is only a collective claim when it exceeds its expectation by this many queries.
    min_excess_queries: float = 5.0
    #: A window is only unusual when at most this share of the instance's reference windows were
    #: as extreme (an empirical check on the z's assumed shape).
    max_history_share: float = 0.01


def window_signals(windows: pd.DataFrame) -> pd.DataFrame:
    """The observed value of every signal per window (NaN where not defined)."""
    start = pd.DatetimeIndex(pd.to_datetime(windows["window_start"], utc=True))
    out = pd.DataFrame({"instance_id": windows["instance_id"].to_numpy(),
                        "start_ms": (start.as_unit("ms").asi8 if len(start) else np.zeros(0, np.int64)),
                        "how": start.day_of_week * 24 + start.hour, "hod": start.hour})
    for name, sig in SIGNALS.items():
        out[name] = sig.observe(windows)
        if sig.base is not None:
            out[_base_name(name)] = sig.base(windows)
        if sig.carriers is not None:
            out[_carriers_name(name)] = sig.carriers(windows)
        if sig.count is not None:
            out[_count_name(name)] = sig.count(windows)
    # A window without a query (with_silent_windows) is only the drop's: the surge's reference stays
    # the windows with queries (with zeros, a batch instance's moving busy hours were surges), and a
    # share or mean has no value there.
    silent = out["arrivals"].to_numpy() == 0
    if silent.any():
        rest = [c for c in out.columns[4:] if c != "arrivals_drop"]
        out.loc[silent, rest] = np.nan
    return out


def _base_name(signal: str) -> str:
    return f"{signal}:base"


def _carriers_name(signal: str) -> str:
    return f"{signal}:carriers"


def _count_name(signal: str) -> str:
    return f"{signal}:count"


def share_tail_z(share: np.ndarray, n: np.ndarray, p0: np.ndarray, spread: np.ndarray, n_typical: np.ndarray,
                 up: np.ndarray) -> np.ndarray:
    """Normal-equivalent z of a window's share under an over-dispersed binomial (one-sided tail).

    ``k = share * n`` queries out of ``n`` against the expected share ``p0``. Windows vary more than
    a binomial would (the mix of work changes): the extra between-window variance
    ``tau2 = max(0, spread**2 - p0 (1 - p0) / n_typical)`` is what the history's robust spread
    (at its typical window size) leaves over the binomial part. A window of ``n`` queries then has
    the design effect ``d = 1 + n tau2 / (p0 (1 - p0))``, and the test is the exact binomial tail
    with ``n / d`` queries and ``k / d`` hits (regularised incomplete beta, so non-integer counts
    work): ``P(X >= k)`` for an ``up`` signal, ``P(X <= k)`` otherwise, turned into the normal
    quantile (capped at 50).
    """
    from scipy.special import betainc, ndtri

    q = p0 * (1.0 - p0)
    with np.errstate(all="ignore"):
        tau2 = np.maximum(spread**2 - q / np.maximum(n_typical, 1.0), 0.0)
        d = 1.0 + n * tau2 / q
        n_eff, k_eff = n / d, share * n / d
        p_up = np.where(k_eff > 0, betainc(np.maximum(k_eff, 1e-12), n_eff - k_eff + 1.0, p0), 1.0)
        p_down = np.where(n_eff - k_eff > 0, betainc(np.maximum(n_eff - k_eff, 1e-12), k_eff + 1.0, 1.0 - p0), 1.0)
        p = np.clip(np.where(up, p_up, p_down), 0.0, 1.0)
        z = -ndtri(p)
    return np.clip(z, -50.0, 50.0)


def _nanmedian0(a: np.ndarray) -> np.ndarray:
    """``np.nanmedian(a, axis=0)`` of a non-empty 2-D array, bit for bit, by one sort (NaN for an all-NaN column).

    ``np.nanmedian`` of a reference group went through masked arrays (``np.ma.median``): about 2 ms
    a call, several calls per window and tens of thousands of windows in a replay.
    """
    s = np.sort(a, axis=0)  # NaN sorts last
    return _middle(s, np.count_nonzero(~np.isnan(s), axis=0))


def _middle(s: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Per column of ``s`` (sorted, NaN last), the median of its first ``n`` values: the mean of the two middle ones."""
    cols = np.arange(s.shape[1])
    # n == 0: row 0 of an all-NaN column, so NaN; for odd n both rows are the middle one, (a + a) / 2 == a
    return (s[np.maximum(n - 1, 0) // 2, cols] + s[n // 2, cols]) / 2


def _robust(tr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column: median, MAD x 1.4826 and count of non-NaN values (NaN medians for empty columns)."""
    n = np.count_nonzero(~np.isnan(tr), axis=0)
    if not len(tr):
        nan = np.full(tr.shape[1], np.nan)
        return nan, nan, n
    with np.errstate(all="ignore"):
        s = np.sort(tr, axis=0)
        med = _middle(s, n)
        mad = _nanmedian0(np.abs(s - med)) * 1.4826  # its own NaN count: inf - inf is NaN
    return med, mad, n


def _blend(child: tuple[np.ndarray, np.ndarray, np.ndarray], parent: tuple[np.ndarray, np.ndarray],
           k: float) -> tuple[np.ndarray, np.ndarray]:
    med, mad, n = child
    w = n / (n + k)
    has = n > 0
    return (np.where(has, w * np.nan_to_num(med) + (1 - w) * parent[0], parent[0]),
            np.where(has, w * np.nan_to_num(mad) + (1 - w) * parent[1], parent[1]))


@dataclass(frozen=True)
class _SignalTable:
    """:data:`SIGNALS` as per-signal arrays (one column per signal, in :data:`SIGNALS` order)."""

    names: list[str]
    logged: np.ndarray
    two_sided: np.ndarray
    floors: np.ndarray
    reasons: np.ndarray
    needs_many: np.ndarray
    up: np.ndarray
    above: np.ndarray  # 0: not a quantile
    share_idx: np.ndarray
    base_cols: list[str]
    is_share: np.ndarray
    mean_idx: np.ndarray
    carrier_cols: list[str]
    count_idx: np.ndarray
    count_cols: list[str]
    hour_empirical: np.ndarray
    recent: np.ndarray
    silent_floors: np.ndarray  # the floor of a window without any query (Signal.silent_floor, else floor)

    @classmethod
    def of(cls, signals: dict[str, Signal]) -> _SignalTable:
        names = list(signals)
        is_share = np.array([signals[n].base is not None for n in names])
        share_idx = np.flatnonzero(is_share)
        mean_idx = np.flatnonzero([signals[n].carriers is not None for n in names])
        count_idx = np.flatnonzero([signals[n].count is not None for n in names])
        return cls(names=names, logged=np.array([signals[n].log for n in names]),
                   two_sided=np.array([signals[n].two_sided for n in names]),
                   floors=np.array([signals[n].floor for n in names]),
                   reasons=np.array([signals[n].reason for n in names], dtype=object),
                   needs_many=np.array([signals[n].needs_many for n in names]),
                   up=np.array([signals[n].tail == "up" for n in names]),
                   above=np.array([signals[n].above or 0.0 for n in names]),
                   share_idx=share_idx, base_cols=[_base_name(names[i]) for i in share_idx],
                   is_share=is_share,
                   mean_idx=mean_idx, carrier_cols=[_carriers_name(names[i]) for i in mean_idx],
                   count_idx=count_idx, count_cols=[_count_name(names[i]) for i in count_idx],
                   hour_empirical=np.array([signals[n].empirical == "hour" for n in names]),
                   recent=np.array([signals[n].recent for n in names]),
                   silent_floors=np.array([signals[n].floor if signals[n].silent_floor is None
                                           else signals[n].silent_floor for n in names]))

    def transform(self, v: np.ndarray) -> np.ndarray:
        """Counts, times and MB in ``log1p`` space, shares and logs as they are."""
        with np.errstate(invalid="ignore"):
            return np.where(self.logged, np.log1p(np.clip(v, 0, None)), v)

    def deviation(self, d: np.ndarray) -> np.ndarray:
        """How far ``d`` (a value minus its expectation) is toward the unusual side of each signal."""
        dev = np.where(self.up, d, -d)  # -(x - c) is exactly c - x
        return np.where(self.two_sided, np.abs(d), dev)


_SCORE_COLUMNS = ["instance_id", "window_start", "signal", "expected", "recent", "observed", "excess", "z", "ratio",
                  "score",
                  "queries", "reason"]


@dataclass(frozen=True)
class _Rows:
    """:func:`window_signals` rows as arrays (pandas indexing per instance and pass cost more than the scoring)."""

    start_ms: np.ndarray
    how: np.ndarray
    hod: np.ndarray
    observed: np.ndarray  # per signal
    base: np.ndarray  # per share signal: the queries it is out of
    carriers: np.ndarray  # per mean signal
    counts: np.ndarray  # per signal with a count of its own
    arrivals: np.ndarray

    @classmethod
    def of(cls, signals: pd.DataFrame, table: _SignalTable) -> _Rows:
        return cls(signals["start_ms"].to_numpy(), signals["how"].to_numpy(), signals["hod"].to_numpy(),
                   signals[table.names].to_numpy(float), signals[table.base_cols].to_numpy(float),
                   signals[table.carrier_cols].to_numpy(float), signals[table.count_cols].to_numpy(float),
                   signals["arrivals"].to_numpy(float))

    def take(self, rows: np.ndarray | slice) -> _Rows:
        return _Rows(*(getattr(self, f.name)[rows] for f in fields(self)))


def score_windows(windows: pd.DataFrame, history: pd.DataFrame | None = None,
                  params: CollectiveParams | None = None) -> pd.DataFrame:
    """Score each window of ``windows`` on every signal against the instance's earlier windows.

    Parameters
    ----------
    windows : DataFrame
        ``window_stats`` rows to score (``instance_id``, ``window_start`` and the aggregates).
    history : DataFrame, optional
        Earlier ``window_stats`` rows (may overlap ``windows``; duplicates are dropped). For each
        window only rows of the same instance strictly before it, within ``params.lookback``, count.
    params : CollectiveParams, optional

    Returns
    -------
    DataFrame
        One row per (window, signal) with enough history: ``instance_id``, ``window_start``,
        ``signal``, ``expected``, ``observed``, ``excess``, ``z``, ``score``, ``reason``.
    """
    params = params or CollectiveParams()
    if windows is None or not len(windows):
        return pd.DataFrame(columns=_SCORE_COLUMNS)
    allw = windows if history is None or not len(history) else pd.concat([history, windows], ignore_index=True)
    # every instance's history in time order (one start per instance and window: no ties)
    obs_all = (window_signals(allw).drop_duplicates(["instance_id", "start_ms"], keep="last")
               .sort_values(["instance_id", "start_ms"]))
    wanted = window_signals(windows)
    table = _SignalTable.of(SIGNALS)
    hist_rows, targets = _Rows.of(obs_all, table), _Rows.of(wanted, table)
    hist_instance = obs_all["instance_id"].to_numpy()
    out = []
    for inst, rows in wanted.groupby("instance_id", sort=True).indices.items():
        lo, hi = np.searchsorted(hist_instance, inst, side="left"), np.searchsorted(hist_instance, inst, side="right")
        scored = _score_instance(int(inst), targets.take(rows), hist_rows.take(slice(lo, hi)), table, params)
        if len(scored):
            out.append(scored)
    if not out:
        return pd.DataFrame(columns=_SCORE_COLUMNS)
    return pd.concat(out, ignore_index=True)[_SCORE_COLUMNS]


@dataclass
class _References:
    """Per judged window (rows) and signal (columns): its reference statistics from earlier windows."""

    center: np.ndarray
    spread: np.ndarray
    count: np.ndarray  # reference windows with a value
    as_extreme: np.ndarray  # share of them at least as unusual as the window
    base_sum: np.ndarray  # shares only: the reference's queries in all, and per window (median)
    base_median: np.ndarray


def _references(hist: _Rows, values: np.ndarray, targets: _Rows, x: np.ndarray, bounds: np.ndarray,
                table: _SignalTable, params: CollectiveParams) -> _References:
    """The shrunk median/MAD reference of each target window (see the module docstring).

    ``values`` are the history's observed values, transformed (:meth:`_SignalTable.transform`). ``bounds``
    holds per target the history rows ``[lo, hi)`` of its reference, then the ends of its
    same-hour-of-day and same-hour-of-week candidates.
    """
    shape = (len(targets.start_ms), len(table.names))
    overall, day, week = ((np.empty(shape), np.empty(shape), np.empty(shape, np.int64)) for _ in range(3))
    shares = (len(targets.start_ms), len(table.share_idx))
    base_sum, base_median = np.empty(shares), np.empty(shares)
    for j, (lo, hi, day_hi, week_hi) in enumerate(bounds.T):
        for stats, robust in ((overall, _robust(values[lo:hi])),
                              # same hour of the day on *earlier days*, same hour of the week in *earlier weeks*
                              (day, _robust(values[lo:day_hi][hist.hod[lo:day_hi] == targets.hod[j]])),
                              (week, _robust(values[lo:week_hi][hist.how[lo:week_hi] == targets.how[j]]))):
            for into, value in zip(stats, robust, strict=True):
                into[j] = value
        if len(table.share_idx):
            base_sum[j] = np.nansum(hist.base[lo:hi], axis=0)
            base_median[j] = _nanmedian0(hist.base[lo:hi])
    # shrunk: the hour of the week toward the hour of the day, toward the whole reference
    center, spread = _blend(week, _blend(day, overall[:2], params.shrink), params.shrink)
    as_extreme = np.empty(shape)
    hourly = table.hour_empirical
    with np.errstate(invalid="ignore"):
        now = table.deviation(x - center)
        for j, (lo, hi, day_hi) in enumerate(bounds[:3].T):
            as_extreme[j] = np.count_nonzero(table.deviation(values[lo:hi] - center[j]) >= now[j],
                                             axis=0) / np.maximum(overall[2][j], 1)
            if hourly.any():  # the same hour of the day on earlier days (Signal.empirical)
                same = values[lo:day_hi][hist.hod[lo:day_hi] == targets.hod[j]]
                as_extreme[j, hourly] = (np.count_nonzero((table.deviation(same - center[j]) >= now[j])[:, hourly],
                                                          axis=0)
                                         / np.maximum(np.count_nonzero(~np.isnan(same[:, hourly]), axis=0), 1))
    return _References(center, spread, overall[2], as_extreme, base_sum, base_median)


def _hour_before(hist: _Rows, active: np.ndarray, t: np.ndarray, now: np.ndarray, silent: np.ndarray,
                 guard: int) -> tuple[np.ndarray, np.ndarray]:
    """Per target, the history rows ``[lo, hi)`` of the hour a recent signal compares it with.

    The hour before the window; for a silent window, the hour before its instance fell silent (the
    start of the run of windows without traffic that it ends): a pause of hours is the same pause in
    its fourth hour as in its first, and its own silent windows are no level to compare with.
    ``active``: per history row, whether it had traffic.
    """
    active = np.flatnonzero(active)
    before = np.searchsorted(active, now, side="left")  # active rows before each target
    # one past each target's last active row (0: none; residual windows have no arrivals at all)
    run_start = np.append(active, -1)[np.where(before > 0, before - 1, len(active))] + 1
    hi = np.where(silent, run_start, now)
    anchor = np.where(hi < now, np.append(hist.start_ms, 0)[hi], t)
    return np.searchsorted(hist.start_ms, anchor - guard, side="left"), hi


def _busy_medians(before: np.ndarray, active: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per pair of ``lo``/``hi`` and recent signal: the median of rows ``[lo, hi)`` with traffic (NaN: none)."""
    levels = np.full((len(lo), before.shape[1]), np.nan)
    for i, (start, end) in enumerate(zip(lo, hi, strict=True)):
        busy = before[start:end][active[start:end]]
        if len(busy):
            levels[i] = _nanmedian0(busy)
    return levels


def _level_before_drop(observed: np.ndarray, before: np.ndarray, levels: np.ndarray, floors: np.ndarray,
                       silent_floors: np.ndarray, down: np.ndarray, bar: float) -> np.ndarray:
    """Per recent signal, the level of the hour before a drop that goes on up to a window (NaN: none).

    ``observed``/``before`` (natural and transformed values), ``levels`` (each row's hour before,
    :func:`_busy_medians`) are the
    history rows from the earliest possible start of the drop up to the window. A row ``r`` starts a
    drop when every window from ``r`` on is a drop against the hour before ``r`` by the recent
    comparison's own test (its floor, and ``bar``: the z threshold times the window-to-window
    spread): clients cut off for hours are compared with the traffic they broke off from, not with
    the hour before, which they have emptied too. Of such starts, the highest level counts (the
    unusual side's most extreme). A smooth daily ramp is no drop (no window breaks off by the bar
    from the hour before it), and the usual (the same hour on earlier days) still decides.
    """
    with np.errstate(invalid="ignore"):
        floor = np.where(observed == 0, silent_floors, floors)
        # every window from r on: the least unusual of them must clear the bar (NaN: no value, no veto)
        least = np.nan_to_num(down * observed - floor, nan=np.inf)
        least_x = np.nan_to_num(down * before, nan=np.inf)
        least = np.minimum.accumulate(least[::-1], axis=0)[::-1]
        least_x = np.minimum.accumulate(least_x[::-1], axis=0)[::-1]
        starts = (least >= down * np.expm1(levels)) & (least_x >= down * levels + bar) & np.isfinite(levels)
        most = np.where(starts, -down * levels, -np.inf).max(axis=0, initial=-np.inf)
    return np.where(np.isfinite(most), -down * most, np.nan)


def _may_drop(hist: _Rows, lo: np.ndarray, hi: np.ndarray, table: _SignalTable) -> np.ndarray:
    """Per target, whether a window of its hour before (rows ``[lo, hi)``) held a recent signal's floor for
    a window without any query (``silent_floor``).

    A silent window's excess is at most the hour before's median, so without such a window it cannot be
    flagged: it is not scored (a sparse instance has silent windows by the thousand, and judging every one
    of them doubled the step's time on a log of 64 instances).
    """
    floor = float(table.silent_floors[table.recent].min()) if table.recent.any() else np.inf
    busy = np.flatnonzero(hist.arrivals >= floor)  # NaN (silent) is not
    # a busy row in [lo, hi): the first busy row at or after lo comes before hi
    first = np.searchsorted(busy, lo, side="left")
    return (first < len(busy)) & (np.append(busy, len(hist.start_ms))[first] < hi)


def _score_instance(inst: int, targets: _Rows, hist: _Rows, table: _SignalTable,
                    params: CollectiveParams) -> pd.DataFrame:
    """:func:`score_windows` for one instance's ``targets`` against its ``hist`` (in time order)."""
    lookback = int(params.lookback.total_seconds() * 1000)
    guard = int(params.recent_guard.total_seconds() * 1000)
    t = targets.start_ms
    bounds = np.searchsorted(hist.start_ms, np.stack([t - lookback, t - guard, t - 20 * 3_600_000,
                                                      t - 6 * 86_400_000]), side="left")
    now = np.searchsorted(hist.start_ms, t, side="left")  # the history before each target
    enough = bounds[1] - bounds[0] >= params.min_history
    # with_silent_windows' rows: no arrivals (window_signals), 0 on the drop (NaN too: a residual window)
    silent = np.isnan(targets.arrivals) & (targets.observed[:, table.recent] == 0).any(axis=1)
    # the history rows with traffic (NaN arrivals, silent or residual, are not): the levels of the hour before
    active = hist.arrivals > 0
    recent_lo, recent_hi = _hour_before(hist, active, t, now, silent, guard)
    recent_lo = np.maximum(recent_lo, bounds[0])  # within the lookback, as the stream reads it
    if silent.any():
        enough &= ~silent | _may_drop(hist, recent_lo, recent_hi, table)
    judged = np.flatnonzero(enough)
    if not len(judged):
        return pd.DataFrame(columns=_SCORE_COLUMNS)
    targets, bounds, now = targets.take(judged), bounds[:, judged], now[judged]
    recent_lo, recent_hi = recent_lo[judged], recent_hi[judged]
    observed = targets.observed
    x = table.transform(observed)
    values = table.transform(hist.observed)
    refs = _references(hist, values, targets, x, bounds, table, params)
    down = np.where(table.up, 1.0, -1.0)  # a level where fewer is the anomaly (arrivals_drop): its z and excess
    if table.recent.any():  # the hour before (Signal.recent): its median, and the window-to-window spread.
        # Over windows with traffic: an outage's own silent windows are no level (its fourth window was
        # judged against a last hour of three silent windows and three busy ones). A silent window's hour
        # is the hour before the silence began (_hour_before): an outage is flagged for as long as it
        # lasts through hours that are busy as a rule (only its first hour was, the blind evaluation's
        # 4-hour pause 6 of 24 windows).
        before = values[:, table.recent]
        step = np.diff(hist.start_ms)
        adjacent = np.concatenate([[False], step == (np.median(step) if len(step) else 0)])
        change = np.vstack([np.full((1, before.shape[1]), np.nan), np.diff(before, axis=0)])
        change[~adjacent] = np.nan
        # the noise of traffic while there is traffic (not a sporadic instance's on/off)
        change[~(active & np.concatenate([[False], active[:-1]]))] = np.nan
        local = np.full((len(now), before.shape[1]), np.nan)
        last_hour = _busy_medians(before, active, recent_lo, recent_hi)  # the hour's traffic while there was some
        for j, (lo, guard_lo) in enumerate(zip(bounds[0], bounds[1], strict=True)):
            if guard_lo > lo + 1:
                local[j] = _nanmedian0(np.abs(change[lo + 1:guard_lo])) * 1.4826 / np.sqrt(2.0)
        local = np.maximum(np.nan_to_num(local, nan=np.inf), params.min_spread)
        # A drop that goes on: the hour before it began, when that hour stood higher (_level_before_drop).
        rc = table.recent
        memory = int((params.lookback if params.drop_memory is None else params.drop_memory).total_seconds() * 1000)
        first = np.maximum(bounds[0], np.searchsorted(hist.start_ms, t[judged] - memory, side="left"))
        for j, (lo, hi) in enumerate(zip(first, now, strict=True)):
            if hi <= lo:
                continue
            # a row of [lo, hi) starts a drop only when the last row before the window broke off from a
            # level of the hours before it, which is at most their most extreme window: most rows stop here
            h_lo = np.searchsorted(hist.start_ms, hist.start_ms[lo] - guard, side="left")
            seen = np.where(active[h_lo:hi - 1, None], -down[rc] * before[h_lo:hi - 1], -np.inf)
            extreme = seen.max(axis=0, initial=-np.inf)
            with np.errstate(invalid="ignore"):
                if ((down[rc] * before[hi - 1] - params.z_threshold * local[j] + extreme) < 0).all():
                    continue
            levels = _busy_medians(before, active, np.searchsorted(hist.start_ms, hist.start_ms[lo:hi] - guard,
                                                                   side="left"), np.arange(lo, hi))
            level = _level_before_drop(hist.observed[lo:hi, rc], before[lo:hi], levels, table.floors[rc],
                                       table.silent_floors[rc], down[rc], params.z_threshold * local[j])
            higher = np.isfinite(level) & ~(-down[rc] * level <= -down[rc] * last_hour[j])
            last_hour[j] = np.where(higher, level, last_hour[j])
    # The queries each signal is over: the window's, or the signal's own count (NaN: none).
    t_counts = np.repeat(targets.arrivals[:, None], len(table.names), axis=1)
    t_counts[:, table.count_idx] = targets.counts
    with np.errstate(invalid="ignore"):
        t_many = t_counts >= params.min_queries
    # A quantile is moved by the queries above it: judged only when they are enough for a claim.
    t_quantile_ok = (table.above == 0) | (table.above * targets.arrivals[:, None] >= params.min_excess_queries)

    center = refs.center
    share_idx, mean_idx = table.share_idx, table.mean_idx
    recent = np.full(observed.shape, np.nan)  # the hour before's level, for a recent signal (its evidence)
    share_spread = refs.spread[:, share_idx]
    spread = np.maximum(refs.spread, np.where(table.logged, params.min_spread, params.min_share_spread))
    with np.errstate(invalid="ignore", over="ignore"):
        z = down * (x - center) / spread
        expected = np.where(table.logged, np.expm1(center), center)
        excess = down * (observed - expected)
        if table.recent.any():  # the weaker of the two comparisons: the usual and the hour before
            rc = table.recent
            recent[:, rc] = np.expm1(last_hour)
            z[:, rc] = np.minimum(z[:, rc], down[rc] * (x[:, rc] - last_hour) / local)
            excess[:, rc] = np.minimum(excess[:, rc], down[rc] * (observed[:, rc] - np.expm1(last_hour)))
        z = np.where(table.two_sided, np.abs(z), z)
        excess = np.where(table.two_sided, np.abs(excess), excess)
        ratio = excess / np.where(observed == 0, table.silent_floors, table.floors)
        if len(share_idx):
            # Shares: the over-dispersed binomial tail, p0 kept off 0 and 1 by half a query
            # of the reference (a share never seen is not impossible), and the excess must
            # also be at least min_excess_queries queries (a collective claim).
            eps = 0.5 / np.maximum(refs.base_sum, 1.0)
            p0 = np.clip(center[:, share_idx], eps, 1.0 - eps)
            n_now = targets.base
            up = table.up[share_idx]
            share_z = share_tail_z(observed[:, share_idx], n_now, p0, share_spread, refs.base_median, up)
            share_excess = np.where(up, 1.0, -1.0) * (observed[:, share_idx] - p0)
            z[:, share_idx] = share_z
            expected[:, share_idx] = p0
            excess[:, share_idx] = share_excess
            ratio[:, share_idx] = np.minimum(share_excess / table.floors[share_idx],
                                             share_excess * n_now / params.min_excess_queries)
        # Means: the excess must take at least min_excess_queries queries as long as the
        # window's longest (else two or three huge queries are the story, not the window).
        ratio[:, mean_idx] = np.minimum(ratio[:, mean_idx],
                                        excess[:, mean_idx] * targets.carriers / params.min_excess_queries)
        # Empirical tail: the z above assumes a shape (log-normal spread, binomial); a value that
        # the instance's own reference reached in more than max_history_share of its windows is
        # ordinary for it whatever the z says (a median that flips between two modes).
        ratio = np.minimum(ratio, params.max_history_share / np.maximum(refs.as_extreme, 1e-12))
        score = np.minimum(z / params.z_threshold, ratio)
    ok = (refs.count >= params.min_history) & ~np.isnan(observed) & ~np.isnan(score)
    ok &= (t_many | ~table.needs_many) & t_quantile_ok
    # A level (arrivals, runtimes, p95, pace, size) follows the instance's daily cycle, which is unknown
    # until the reference holds an earlier day: on its first day a busy afternoon was judged against its
    # quiet morning (the demo's first afternoon: 14 "arrival surges"). A share is a proportion, judged
    # from the first hours (its test accounts for the window's size).
    ok &= (bounds[2] > bounds[0])[:, None] | table.is_share[None, :]
    rows, cols = np.nonzero(ok)
    return pd.DataFrame({
        "instance_id": np.full(len(rows), inst, np.int64),
        "window_start": pd.to_datetime(targets.start_ms[rows], unit="ms", utc=True),
        "signal": np.array(table.names, dtype=object)[cols], "expected": expected[ok], "recent": recent[ok],
        "observed": observed[ok], "excess": excess[ok], "z": z[ok], "ratio": ratio[ok], "score": score[ok],
        "queries": t_counts[ok], "reason": table.reasons[cols]})


def reference_start(first_start: pd.Timestamp, params: CollectiveParams | None = None,
                    window: timedelta = timedelta(minutes=10)) -> pd.Timestamp:
    """The earliest window start that judging windows from ``first_start`` on reads.

    :func:`score_window_runs` also scores the window before the first one (``window`` earlier)
    against *its* reference, ``params.lookback`` before it: a history read from
    ``first_start - lookback`` would leave that window's reference one window short.
    """
    params = params or CollectiveParams()
    return first_start - pd.Timedelta(window) - pd.Timedelta(params.lookback)


def pair_threshold(z_threshold: float) -> float:
    """The bar of the two-window test: ``z_threshold``'s one-sided tail probability halved.

    Each (window, signal) is looked at twice (alone, and with the window before it), so the tail
    probability one look would be allowed is split between the two (Bonferroni): 5.13 for 5.0.
    """
    from scipy.special import ndtr, ndtri

    return float(-ndtri(ndtr(-z_threshold) / 2.0))


def window_score(scored: pd.DataFrame, z_threshold: float) -> np.ndarray:
    """Per row of :func:`score_window_runs`, the decision score at ``z_threshold`` (flagged when ``>= 1``).

    The larger of the window's own ``min(z / z_threshold, ratio)`` and, with the window before it,
    ``min(pair_z / pair_threshold(z_threshold), pair_ratio)`` (NaN pair: no window before it).
    """
    single = np.minimum(scored["z"].to_numpy(float) / z_threshold, scored["ratio"].to_numpy(float))
    pair = np.minimum(scored["pair_z"].to_numpy(float) / pair_threshold(z_threshold),
                      scored["pair_ratio"].to_numpy(float))
    return np.where(np.isnan(pair), single, np.fmax(single, pair))


def score_window_runs(windows: pd.DataFrame, history: pd.DataFrame | None = None,
                      params: CollectiveParams | None = None) -> pd.DataFrame:
    """:func:`score_windows`, each (window, signal) also judged together with the window just before it.

    A change that lasts (most collective episodes last 20 minutes or more) can sit just under the
    bar in each window: a result cache that stops hitting for 40 minutes reached z 4.2-4.8 in each
    of four windows (stress seed 2). Two consecutive windows of an instance on one signal are judged
    by Stouffer's combination of their z, each counted up to ``z_threshold``,
    ``pair_z = (min(z, z_threshold) + min(z_before, z_threshold)) / sqrt(2)`` (standard normal
    when the two are independent null deviations), against :func:`pair_threshold`, and only when
    *each* window on its own is material (excess floor, carried by enough queries, at most 1 % of
    the reference as extreme): ``pair_ratio = min(ratio, ratio_before)``. The window before is the
    one starting one window length earlier (``window_end - window_start``); it is scored against its
    own earlier windows exactly as if it were a target, so the pair depends only on the store.
    Returns a pandas DataFrame: :func:`score_windows`' columns, with ``pair_z`` and ``pair_ratio`` added
    (NaN without a scored window before) and ``score`` set to :func:`window_score` at
    ``params.z_threshold``.
    """
    params = params or CollectiveParams()
    scored = score_windows(windows, history, params)
    if not len(scored):
        return scored.assign(pair_z=pd.Series(dtype=float), pair_ratio=pd.Series(dtype=float))
    keys = ["instance_id", "start_ms"]
    rows = windows if history is None or not len(history) else pd.concat([history, windows], ignore_index=True)
    found = _starts(rows)
    targets = _starts(windows)
    wanted = targets.assign(start_ms=targets["start_ms"] - targets["length_ms"])[keys]
    before = (found.drop_duplicates(keys, keep="last").merge(wanted, on=keys)
              .merge(targets[keys], on=keys, how="left", indicator=True))
    before = before[before["_merge"] == "left_only"]  # windows before a target that are not targets
    sources = [scored]
    if len(before):
        picked = pd.MultiIndex.from_frame(before[keys])
        wanted_rows = pd.MultiIndex.from_arrays([found["instance_id"], found["start_ms"]]).isin(picked)
        sources.append(score_windows(rows[wanted_rows], rows, params))
    prior = pd.concat(sources, ignore_index=True)
    length = targets.drop_duplicates(keys, keep="last").set_index(keys)["length_ms"]
    start_ms = _ms(scored["window_start"])
    step = length.reindex(pd.MultiIndex.from_arrays([scored["instance_id"], start_ms])).to_numpy()
    prior_key = pd.MultiIndex.from_arrays([prior["instance_id"], _ms(prior["window_start"]), prior["signal"]])
    prior = prior.set_axis(prior_key)[["z", "ratio"]]
    prior = prior[~prior.index.duplicated(keep="first")]
    got = prior.reindex(pd.MultiIndex.from_arrays([scored["instance_id"], start_ms - step, scored["signal"]]))
    with np.errstate(invalid="ignore"):
        # each window's z counts up to the single bar: one extreme window does not carry an ordinary one
        # (the first window back after an outage read "together z 40" with the outage's own window)
        bar = params.z_threshold
        pair_z = (np.minimum(scored["z"].to_numpy(float), bar)
                  + np.minimum(got["z"].to_numpy(float), bar)) / np.sqrt(2.0)
        pair_ratio = np.minimum(scored["ratio"].to_numpy(float), got["ratio"].to_numpy(float))
    out = scored.assign(pair_z=pair_z, pair_ratio=pair_ratio)
    out["score"] = window_score(out, params.z_threshold)
    return out


def _queries(value: float) -> str:
    if value == 1:
        return "1 query"
    return f"{value:,.0f} queries" if abs(value) >= 10 or value == int(value) else f"{value:.1f} queries"


#: How a value reads in each signal unit (a flagged window's observed and expected, in its reason
#: and in the notebooks' tables): the stored values stay the raw figures the test compared.
_SHOWN: dict[str, Callable[[float], str]] = {
    "queries": _queries,
    "share": percent,
    "ms": human_ms,
    "nodes": lambda value: f"{value:g} nodes",
    "ln ms per MB scanned": lambda value: f"{np.exp(value):.3g} ms per MB scanned",
    "ln(runtime / expected)": lambda value: f"{np.exp(value):.2f}x the expected runtime",
}


def format_signal_value(signal: str, value: float | None) -> str:
    """How an observed or expected value of ``signal`` reads, in the signal's unit ("18 %", "3.1 min",
    "1,326 queries", "1.61x the expected runtime"); a signal this version does not know: 4 digits."""
    if value is None or not np.isfinite(value):
        return "n/a"
    known = SIGNALS.get(signal)
    show = _SHOWN.get(known.unit) if known is not None else None
    return show(float(value)) if show is not None else f"{value:,.4g}"


def _ms(starts: pd.Series) -> np.ndarray:
    return pd.DatetimeIndex(pd.to_datetime(starts, utc=True)).as_unit("ms").asi8


def _starts(windows: pd.DataFrame) -> pd.DataFrame:
    """``instance_id``, ``start_ms`` and ``length_ms`` (``window_end - window_start``; 10 minutes without an end)."""
    from workbench.analysis.windows import DEFAULT_WINDOW_MS

    start = _ms(windows["window_start"])
    ends = windows.get("window_end")
    length = np.full(len(start), DEFAULT_WINDOW_MS, np.int64) if ends is None else _ms(ends) - start
    return pd.DataFrame({"instance_id": windows["instance_id"].to_numpy(), "start_ms": start, "length_ms": length})


def with_silent_windows(windows: pd.DataFrame) -> pd.DataFrame:
    """``windows`` and a row of zero queries for each window an instance had no query in.

    ``window_stats`` holds a row only for a window with queries, so an instance's silence (an outage,
    a paused cluster) had no row to judge and its quiet hours no zeros in its reference. A window is
    silent for an instance when it lies between the instance's first and last window and *another*
    instance has a window there: a stretch without any window of any instance is the log's own gap
    (an export that missed an hour, a replay not there yet), not one instance's silence. So a log of
    one instance has no silent windows. After an instance's last window there is none either: clusters
    come and go (about 80 of Redset's 200 provisioned clusters span fewer than 8 days, and the
    generator's instances end at midnight); judged as silence, the windows after an instance's last day
    were 137-270 false drops on five of eight logs (thirty-sixth session). So the stream flags an outage
    once its instance is back. The added rows have ``total_queries`` 0, ``window_start``,
    ``window_end`` and ``instance_id``, and nothing else (NaN): only ``arrivals_drop`` reads them.
    ``window_start`` and ``window_end`` come back as UTC timestamps, rows in instance and time order.

    In the stream the other instances' windows are those stored when the collective step runs. An
    instance's partition-mates progress with it, so a silent window is left unjudged only when every
    instance sharing its partition was silent there too *and* every other partition was more than the
    settle time (15 minutes of event time) behind; a restart judges the store again and flags it then.
    A seek forward skips the rows of every instance: no window there, no silence flagged.
    """
    if windows is None or not len(windows):
        return windows
    frame = windows.assign(window_start=pd.to_datetime(windows["window_start"], utc=True))
    if "window_end" in frame:
        frame["window_end"] = pd.to_datetime(frame["window_end"], utc=True)
    keys = _starts(frame)
    fleet = np.unique(keys["start_ms"].to_numpy())
    added = []
    for instance, starts in keys.groupby("instance_id")["start_ms"]:
        own = np.unique(starts.to_numpy())
        inside = fleet[(fleet > own[0]) & (fleet < own[-1])]
        missing = np.setdiff1d(inside, own, assume_unique=True)
        if len(missing):
            added.append(pd.DataFrame({"instance_id": np.full(len(missing), instance, np.int64),
                                       "start_ms": missing}))
    if not added:
        return frame.sort_values(["instance_id", "window_start"], ignore_index=True)
    gaps = pd.concat(added, ignore_index=True)
    length = int(keys["length_ms"].mode().iloc[0])
    start = pd.to_datetime(gaps["start_ms"], unit="ms", utc=True)
    silent = pd.DataFrame({"instance_id": gaps["instance_id"], "window_start": start,
                           "window_end": start + pd.Timedelta(milliseconds=length), "total_queries": 0})
    return pd.concat([frame, silent], ignore_index=True).sort_values(["instance_id", "window_start"],
                                                                     ignore_index=True)


def flag_windows(windows: pd.DataFrame, history: pd.DataFrame | None = None,
                 params: CollectiveParams | None = None) -> pa.Table:
    """Flagged (window, signal) rows as a pyarrow Table of :data:`WINDOW_ANOMALY_SCHEMA` (``instance_id``,
    ``window_start``, ``signal``, ``expected``, ``observed``, ``score``, ``reason``; ``score >= 1``, alone or
    with the window before it: :func:`score_window_runs`, which returns a pandas DataFrame). The window
    statistics' signals only, unless ``windows`` carry the model's residual columns
    (:func:`workbench.ml.residual_history.with_residuals`); ``workbench evaluate --details DIR`` writes
    the flagged windows of every signal, as the evaluation judges them."""
    params = params or CollectiveParams()
    scored = score_window_runs(windows, history, params)
    flagged = scored[scored["score"] >= 1.0]
    alone = np.minimum(flagged["z"] / params.z_threshold, flagged["ratio"]) >= 1.0
    reason = [(SIGNALS[s].describe(o, e, q) if SIGNALS[s].describe is not None else
               f"{r}: observed {format_signal_value(s, o)} vs expected {format_signal_value(s, e)} (the "
               "instance's own history for this hour of the week, shrunk toward its hour of day and overall)")
              + ("" if np.isnan(h) else f", and {format_signal_value(s, h)} in the hour before "
                 f"{'the instance fell silent' if o == 0 else 'the traffic fell'} (the median of its windows "
                 "with any)")
              + ("" if a else f"; so is the window before it (together z {pz:.1f})")
              for r, o, e, h, q, s, a, pz in zip(flagged["reason"], flagged["observed"], flagged["expected"],
                                                 flagged["recent"], flagged["queries"], flagged["signal"], alone,
                                                 flagged["pair_z"], strict=True)]
    return pa.table({
        "instance_id": pa.array(flagged["instance_id"].to_numpy(), pa.int64()),
        "window_start": pa.array(flagged["window_start"].to_list(), _TS),
        "signal": pa.array(flagged["signal"].to_list(), pa.string()),
        "expected": pa.array(flagged["expected"].to_numpy(), pa.float64()),
        "observed": pa.array(flagged["observed"].to_numpy(), pa.float64()),
        "score": pa.array(flagged["score"].to_numpy(), pa.float64()),
        "reason": pa.array(reason, pa.string()),
    }, schema=WINDOW_ANOMALY_SCHEMA)


def windows_of(table: pa.Table) -> pd.DataFrame:
    """``window_stats`` rows of a whole query log, computed offline (evaluation, tests).

    The same math as the stream analytics (:mod:`workbench.analysis.windows`), applied to the
    table in one go.
    """
    from workbench.analysis.windows import finalize, merge_all, partial_aggregates

    partials = []
    for batch in table.to_batches(max_chunksize=262_144):
        partials.extend(partial_aggregates(batch))
    return pd.DataFrame([finalize(p) for p in merge_all(partials)])


_NEVER: Final = np.iinfo(np.int64).min
_ALWAYS: Final = np.iinfo(np.int64).max


def _per_instance(instance: np.ndarray, values: Mapping[int, int], default: int) -> np.ndarray:
    """Each row's instance's value (int64, exact), ``default`` for an instance without one.

    Not ``Series.map(...).fillna(default)``: an instance missing turns the column into floats, and the
    int64 maximum as a float is 2**63, which casts back to the int64 *minimum*: an instance without an
    open window while another had one was never judged.
    """
    return np.fromiter((values.get(int(i), default) for i in instance), dtype=np.int64, count=len(instance))


def _window_stats_signals() -> tuple[str, ...]:
    """The signals judged from ``window_stats`` (the step's own): all but the scoring app's two, judged
    on scores (:mod:`workbench.analysis.residual_windows`), whose flags a judging again must not touch."""
    from workbench.analysis.residual_windows import RESIDUAL_SIGNAL, TOLERANCE_SIGNAL

    return tuple(s for s in SIGNALS if s not in (RESIDUAL_SIGNAL, TOLERANCE_SIGNAL))


class CollectiveStep:
    """Reads closed windows from the SQLite ``window_stats``, flags them, stores them in the lakehouse.

    Incremental: each :meth:`run` scores the final windows of each instance that started after the
    last scored window *of that instance* (a window is final once the store holds windows of the
    same instance at least ``settle_ms`` later, window length plus grace, or its partition delivered an
    end-of-log marker after it (:meth:`WindowStatsStore.log_ends`: the analytics app closed the log's
    last windows, and no later window will come); and the analytics app no longer holds it or an
    earlier window of the instance open: a message dated hours ahead writes a provisional window far
    ahead while the windows before it are still filling). The cursor is kept per
    instance because instances close their windows at different paces (one partition lags, or
    another analytics process owns it): with one cursor over all instances, a lagging instance's
    windows that close after a faster instance's later ones would be skipped for good. The read
    starts ``lookback`` before the slowest instance's cursor, so every known instance's unscored
    windows and their history are read (an instance first seen later is scored from there on).
    The lakehouse write is insert-if-absent on ``(instance_id, window_start, signal)``, so a crash
    and restart (cursors lost, windows scored again) neither loses nor duplicates a row. A busy
    lakehouse leaves the cursors where they were.

    A window written behind an instance's cursor after its windows there were judged (a seek forward
    skipped rows, a seek back or a reset sent them: new windows, or closed ones opened again) changes
    the history of every later window: the instance is judged again from that window on, and its
    flags there are replaced (:meth:`~workbench.store.lakehouse.AnomalyLakehouse.replace_window_anomalies`),
    so the lakehouse holds what a replay without the seek gives. Found by a tester comparing runs: a
    seek forward and back lost a flagged window until the app restarted, and judged two windows flagged
    against a history without the skipped rows, which no restart took back.
    """

    def __init__(self, settings: Any, params: CollectiveParams | None = None, *, settle_ms: int = 900_000) -> None:
        self.settings = settings
        self.params = params or CollectiveParams()
        self.settle_ms = settle_ms
        self.cursor_ms: dict[int, int] = {}  # instance_id -> start of its last scored window (ms)
        #: the newest ``updated_at`` (ms, the writer's clock) seen by the last run: what was written since
        self.seen_through_ms: int | None = None

    def run(self) -> int:
        """Score new final windows; returns the number of window anomalies inserted."""
        from workbench.store.lakehouse import AnomalyLakehouse
        from workbench.store.window_stats import WindowStatsStore

        lookback_ms = int(self.params.lookback.total_seconds() * 1000)
        with WindowStatsStore.from_settings(self.settings, read_only=True) as store:
            # open windows first: one that closes between the two reads is only left for the next run
            still_open = store.earliest_open_windows()
            ended = store.log_ends()
            again = self._judge_again(store)
            cursors = {i: (min(c, again[i] - 1) if i in again else c) for i, c in self.cursor_ms.items()}
            start = min(cursors.values()) - lookback_ms if cursors else None
            table = store.read(start=start)
        if table.num_rows == 0:
            return 0
        frame = with_silent_windows(table.to_pandas())
        start_ms = pd.DatetimeIndex(frame["window_start"]).as_unit("ms").asi8
        instance = frame["instance_id"].to_numpy()
        newest = frame.assign(_ms=start_ms).groupby("instance_id")["_ms"].transform("max").to_numpy()
        final = start_ms <= newest - self.settle_ms
        if ended:  # the log ended: its last windows are closed, no later window will come to settle them
            final |= start_ms <= _per_instance(instance, ended, _NEVER)
        if still_open:
            final &= start_ms < _per_instance(instance, still_open, _ALWAYS)
        if cursors:
            final &= start_ms > _per_instance(instance, cursors, _NEVER)
        if not final.any():
            return 0
        flagged = flag_windows(frame[final], frame, self.params)
        inserted = 0
        scopes = {i: (t, self.cursor_ms[i]) for i, t in again.items()}
        if flagged.num_rows or scopes:
            with AnomalyLakehouse.from_settings(self.settings) as lake:
                inserted = lake.replace_window_anomalies(flagged, scopes, _window_stats_signals())
        done = pd.Series(start_ms[final]).groupby(instance[final]).max()
        for k, v in done.items():
            # judged again from an earlier window: the cursor is where this pass ended (it may end earlier
            # than before, when a window there is held open)
            self.cursor_ms[int(k)] = int(v) if int(k) in again else max(int(v), self.cursor_ms.get(int(k), _NEVER))
        return inserted

    def _judge_again(self, store: Any) -> dict[int, int]:
        """Per instance, the earliest window behind its cursor written since the last run read the store.

        A window written after this read is newer than the mark kept here, so the next run finds it
        (one this run also judges is judged twice: the same flags)."""
        if self.seen_through_ms is None:  # the first run judges everything it reads
            self.seen_through_ms = store.newest_write_ms()
            return {}
        again: dict[int, int] = {}
        for instance, start, updated in store.written_since(self.seen_through_ms):
            self.seen_through_ms = max(self.seen_through_ms, updated)
            cursor = self.cursor_ms.get(instance)
            if cursor is not None and start <= cursor:
                again.setdefault(instance, start)
        if again:
            logger.info("collective step: windows written behind the judged ones, judging again from %s",
                        ", ".join(f"instance {i} {pd.Timestamp(t, unit='ms', tz='UTC'):%Y-%m-%d %H:%M}"
                                  for i, t in sorted(again.items())))
        return again
