"""Anomaly decision: relative surprise *and* absolute impact, calibrated on a holdout.

Relative surprise
-----------------
For each query and signal the detector computes a z-like residual in log space:

* ``exec``: ``(log1p(exec) - mean) / s`` where ``s = (q90 - mean) / 1.2816`` is the per-query
  spread implied by the quantile model, clipped to ``[min_scale, max_scale]``. The upper cap is the
  point: an unseen fingerprint gets a wide quantile interval, and without a cap a query predicted
  at 0.3 s that ran 42 minutes would look unremarkable. Beyond the cap the expectation falls back
  to what the regressor knows without the fingerprint's history (instance statistics, query type,
  plan shape, tables, compile time), with bounded tolerance;
* ``scan``: ``(log1p(MB scanned) - median) / (IQR / 1.349)`` against the fingerprint's history in
  the training window (the instance's history when the fingerprint is rare), spread clipped the
  same way;
* ``spill``: ``max(0, log1p(MB spilled) - log1p(MB scanned))`` (spill normally stays well below the
  scan);
* ``queue``: ``max(0, log1p(queue) - max(usual log queue, predicted log exec))``: waiting longer than the
  fingerprint usually waits *and* longer than the query is expected to run; the usual wait is at least
  an ordinary wait on the instance (the median of its runs that waited at all). How long a query
  waits is the state of its instance, not of its statement: most statements never wait, so their own
  usual wait is 0 ms and an ordinary wait of a minute on a busy instance would otherwise be a surprise;
* ``compile``: ``max(0, (log1p(compile ms) - median) /
  (IQR / 1.349))`` against the fingerprint's compiled runs in the training window (a query
  compiles only when its segments are not cached, so the reference is its compile-when-compiled
  level, not a median of cache hits; the IQR at least the instance's typical one), spread clipped
  the same way; 0 (no verdict) without at least ``min_history`` compiled runs. A cold segment cache
  (after a patch or a restart) turns seconds of compilation into minutes; the runtime model only
  sees compile time as a feature, so without this signal it is invisible.

Each residual is put on a common scale with the training holdout: ``u = (z - median_h) /
(q99_h - median_h)``, so ``u = 1`` is a 1-in-100 surprise of that signal on normal traffic. The
sparse signals (:data:`ONE_SIDED`: queue, spill, compile) count only upwards and take ``q99_h``
among the holdout runs above their reference, extrapolated from those runs' median and 90th
percentile (an exponential tail: a few hundred such runs, whose largest are the window's own
anomalies): most runs wait, spill or compile nothing and sit at 0, and a quantile over them would
measure the distance from "nothing" to any event, not the surprise among events.

Absolute impact
---------------
Next to each residual the detector computes what is at stake in natural units, the *excess*
``e = observed - expected``: seconds of runtime (expected = the mean model), seconds of queueing
(expected = the larger of the usual wait and the expected runtime), seconds of compilation
(expected = the usual compile-when-compiled time), MB scanned (expected = the history's median)
and MB spilled (expected = the history's median spill). Two per-signal constants
frame it, both chosen from what an operator would call material, never from injected kinds:

* ``floors``: the smallest excess worth a human's attention (1 s of runtime, queueing or
  compilation, 1 GB scanned or spilled). Below it a query never alerts, however large the *relative* deviation:
  a 5 ms query that took 400 ms is noise, not an incident;
* ``costly``: an excess that is expensive on its own (10 minutes of runtime, queueing or
  compilation, 1 TB scanned, 100 GB spilled).

Combination (a two-sided test with a stake-dependent evidence bar)
------------------------------------------------------------------
The relative evidence a query needs falls as the stake grows: at the floor it needs the full
calibrated threshold ``T`` (the ``1 - alert_rate`` tail of normal traffic), at the costly level
only ``u = 1`` (a 1-in-100 surprise), and less still beyond::

    s = u * (e / floor) ** gamma,   gamma = ln(T0) / ln(costly / floor)

(``T0`` = the threshold of ``u`` alone). ``T`` is then calibrated on ``s`` over the holdout (tail
extrapolation, below), and the relative path's score is ``min(s / T, e / floor)``: above 1 exactly
when the relative evidence clears the stake-adjusted bar *and* the excess clears the floor.

The costly path stands next to it for the time signals (runtime, queue wait, compilation: the
cost a user feels directly; MB scanned or spilled go the relative path only, a costly scan that costs time
shows in the runtime): ``min(e / costly, z / costly_z)`` with the raw (capped, not recalibrated)
residual ``z``: an excess that is expensive on its own alerts as soon as the query is at least
``costly_z = 2`` capped units above its expectation, whatever the calibration of its group (for a
never-seen fingerprint: at least ``e^2 ~ 7x`` its prior). Below the costly level, runtime that the
work done does not explain trades stake for evidence on the same path: the runtime residual after
crediting the extra MB scanned (``z_u = (z * scale - credit) / scale``, ``credit`` the smaller of
``max(0, log scan - log reference scan)`` and the time the instance needs to read the extra MB at
its observed pace, :func:`_work_credit`) gives
``min(z_u / costly_z, e / costly * z_u / costly_z)``, so half the costly excess needs twice the
evidence. A query expected in 2 s that sat for 7 minutes reading a few MB (a stall: lock, S3
throttling, a hung COPY) alerts; a never-seen query that ran 7 minutes because it read 100 GB
does not (its time is explained by its work). A per-signal score is the
larger of the two paths; the query's score is the maximum over signals, the signal attaining it
is the reason and its evidence (expected, observed, excess, reference) travels with the alert. A
query running tens of minutes longer than expected alerts whatever its fingerprint's history;
sub-second noise never does (floor).

A run of a statement with its own history on the instance (group 0 of the reference sources: the
expectation is the statement's own, not a prior) has a third way onto the costly path: its runtime
beyond the model's *upper* expectation (the q90 regressor, the tolerance the model itself gives the
statement; the mean where the two regressors cross) against ``known_costly`` (2 minutes),
``min(beyond / known_costly, z / costly_z)``. A 5-minute statement that takes 15 is minutes longer
than its own history allows, however much its group's relative residuals spread (a heavy statement's
run-to-run spread in log units is no narrower than a light one's, so its relative evidence stays
ordinary while its stake is large). Never-seen statements keep the 10-minute level: their
expectation is a prior, and runs minutes longer than a prior are everyday traffic.

The runtime stakes of these paths (``costly["exec"]`` and ``known_costly``) are absolute, but not
below the instance's own heavy work: with the instance's 1-in-100 runtime of the training window as
its :data:`RUNTIME_SCALE`, a row's stakes are multiplied by ``max(1, runtime_scale_factor * p99 /
costly["exec"])`` (:data:`STAKE_SCALE`). Ten minutes are costly on an instance whose 1-in-100 query
takes seconds; on one where it takes half an hour, ten minutes more are the run-to-run variation of
its heavy statements, and with fixed stakes a copy of a log with every query 10x / 30x as long alerted
6x / 15x as often (``benchmarks/warehouse_speed.py``).

A first spill is the spill signal's own second path, for the same group 0: a statement that spilled
in none of its ``first_spill_runs`` (5) runs of the window spills at least the spill floor (1 GB); the
reason is ``first_spill``. The statement's clean history is the relative evidence and the floor the
stake, and the score is the smaller of the two as on every other path:
``min(MB spilled / spill floor, clean runs / first_spill_runs)``. The spill signal proper (spill against
the run's own scan) judges a spill among spills, which are heavy-tailed, so a first massive spill is no
rarer there than any other (a first spill as large as the scan that doubled the runtime cleared it 1
time in 100). The evidence bounds the score because the stake alone does not rank: a statement with 6
clean runs that spills 300 GB of its 400 GB read is ordinary traffic of a big statement now and then,
and scored by its gigabytes alone it outranked every other alert of the day.

A statement that did spill in its ``first_spill_runs`` or more runs has the same path against its
largest spill ``L``: a run that spills ``S``, at least the spill floor beyond ``L``, scores
``min((S - L) / spill floor, ln((1 + S) / (1 + L)) / ln(record_spill_factor))``, reason
``spill_beyond_record``: the record is the evidence once it is ``record_spill_factor`` (5) times the
statement's largest. The spill signal proper misses it whenever the spill stays below the run's scan
(a statement that spills a few hundred MB of its 10 GB read now spills 5 GB of it), and so did this
path's first-spill half (the statement had spilled); on the demo day 13 normal runs of 242,616 with such
a history spill 10x their largest and 1 GB beyond it, 27 five times.

Work that did not happen has a path of its own, for the same group 0: a run that did its work (not
a result-cache hit, not aborted) of a statement with ``first_spill_runs`` such runs or more, at least
the runtime floor (1 s) short of the shortest of them, scores ``min((L - R) / runtime floor,
ln((1 + L) / (1 + R)) / ln(short_run_factor))`` (``L`` the shortest run, ``R`` this one, ms), reason
``shorter_than_ever``: a nightly load of minutes that ends in 40 ms found no input. Every other path
prices excess only. Normal runs of such statements came at most 2.7x under their shortest run on eight
generated logs (thirty-sixth session), so ``short_run_factor`` 5 is evidence on its own, as the
record-spill factor is; an aborted run is not judged (aborts end runs early every day).

The same in the MB (the scan signal's second path, group 0): a load that finds a twentieth of its
input still pays its fixed costs and ends in an ordinary time. A run that did its work, with a
measured scan, of a statement with ``first_spill_runs`` or more such runs, scores ``min(M / runtime
floor, ln((1 + L) / (1 + S)) / ln(short_run_factor))`` (``L`` its smallest scan, ``S`` this one's, MB;
``M`` the ms the instance needs to read ``L - S`` at its reading pace, :data:`THROUGHPUT`, as extra MB
are credited by :func:`_work_credit`), reason ``scanned_less_than_ever``. No normal row of ten logs'
evaluation days reads 5x under its statement's smallest scan by a second of reading.

Calibration: the threshold targets ``alert_rate`` false alerts on normal traffic. The holdout
comes from the training window and may itself contain anomalies, so its raw ``1 - alert_rate``
quantile would land inside them. Instead the tail is extrapolated from the holdout's 95th and
99th percentiles, assuming an exponential tail: ``T = q95 + (q99 - q95) / ln 5 * ln(0.05 /
alert_rate)`` (split-conformal calibration with a peaks-over-threshold tail), per reference source
(Mondrian: a statement's own history, a prior of its instance, the global prior each get their own
``T`` from their own holdout rows, so each alerts on about ``alert_rate`` of its normal queries; one
pooled bar let never-seen statements alert five times as often as known ones, and the queries of an
instance first seen after training 20 to 35 times as often). The global prior's rows are the holdout
re-read as a never-seen instance: the holdout's instances are all known. The floor gate only
removes alerts, so on the holdout the rate is at most the target (a new day runs 1.15-1.3x above
it on the demo logs measured: traffic shifts). Every number is a
function of the row and the model version only, so decisions do not depend on batching.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workbench.ml.exceptions import NotFittedError

__all__ = [
    "ALERT_REASONS",
    "BEYOND_TOLERANCE",
    "CLEAN_RUNS",
    "COSTLY",
    "FIRST_SPILL",
    "FIRST_SPILL_REASON",
    "FIRST_SPILL_RUNS",
    "FLOORS",
    "HISTORY_SIGNALS",
    "KNOWN_COSTLY",
    "ONE_SIDED",
    "RAN_IN_FULL",
    "REASONS",
    "RECORD_RATIO",
    "RECORD_SPILL",
    "RECORD_SPILL_FACTOR",
    "RECORD_SPILL_REASON",
    "RUNTIME_SCALE",
    "RUNTIME_SCALE_FACTOR",
    "SCAN_KNOWN",
    "SCAN_SHORT_MS",
    "SCAN_SHORT_RATIO",
    "SHORTEST_RUN",
    "SHORT_OF_SHORTEST",
    "SHORT_RATIO",
    "SHORT_RUN_FACTOR",
    "SHORT_RUN_REASON",
    "SHORT_SCAN_REASON",
    "SMALLEST_SCAN",
    "SPILL_HISTORY",
    "STAKE_SCALE",
    "THROUGHPUT",
    "TIME_SIGNALS",
    "UNEXPLAINED",
    "UNITS",
    "ResidualDetector",
]

#: Reason string per signal.
REASONS: dict[str, str] = {
    "exec": "slow_execution",
    "queue": "queue_longer_than_run",
    "scan": "scan_explosion",
    "spill": "spill_exceeds_scan",
    "compile": "slow_compile",
}
#: Unit of each signal's expected / observed / excess values.
UNITS: dict[str, str] = {"exec": "ms", "queue": "ms", "scan": "MB", "spill": "MB", "compile": "ms"}
#: Signals measured in time, the cost a user feels directly: only they have the costly path (a big
#: scan or spill that costs time shows up in the runtime; on its own it goes the relative path).
TIME_SIGNALS: tuple[str, ...] = ("exec", "queue", "compile")
#: Smallest excess that may alert (natural units): 1 s of runtime, wait or compilation, 1 GB scanned
#: or spilled.
FLOORS: dict[str, float] = {"exec": 1_000.0, "queue": 1_000.0, "scan": 1_000.0, "spill": 1_000.0,
                            "compile": 1_000.0}
#: Excess that is costly on its own: 10 min of runtime, wait or compilation, 1 TB scanned, 100 GB
#: spilled.
COSTLY: dict[str, float] = {"exec": 600_000.0, "queue": 600_000.0, "scan": 1_000_000.0, "spill": 100_000.0,
                            "compile": 600_000.0}
#: Runtime beyond the model's upper (q90) expectation that is costly on its own for a run of a statement
#: with its own history on the instance (ms): 2 minutes, the overrun the earlier implementation's users
#: acted on (its ``delta`` rule) and "minutes longer than expected". A prior's expectation keeps
#: :data:`COSTLY` (10 minutes): never-seen statements run minutes beyond a prior every day.
KNOWN_COSTLY: float = 120_000.0
#: Signals judged against their own history's median and IQR (the reference of
#: :meth:`workbench.ml.features.FeatureBuilder.references`), not against the runtime model.
HISTORY_SIGNALS: tuple[str, ...] = ("scan", "compile")
#: Sparse signals: their residual counts only upwards (0 at or below the reference) and their scale is
#: taken among the runs above it. Most queries do not compile (cached segments: 0 ms), wait (admitted at
#: once) or spill at all, so the raw residual of most holdout rows is a run without the event, far below
#: any run with it: the holdout median, which centres a two-sided calibration, would be such a run,
#: placed wherever the reference happens to put it, and the 1-in-100 spread would measure the distance
#: from "no event" to an event rather than the surprise among events (moving a reference then moved
#: every other signal's bar; see docs/detector-notes.md, nineteenth session).
ONE_SIDED: tuple[str, ...] = ("queue", "spill", "compile")
#: The one-sided signals of a model saved before the queue and spill became one-sided (``from_dict``).
_ONE_SIDED_BEFORE: tuple[str, ...] = ("compile",)
#: Key of the extra residual :meth:`ResidualDetector.residuals` adds: the runtime residual after
#: crediting the extra work done (MB scanned beyond the reference), used by the costly path.
UNEXPLAINED = "exec_unexplained_by_work"
#: Key of the extra quantity :meth:`ResidualDetector.residuals` adds: the runtime beyond the model's upper
#: expectation (the larger of q90 and mean), in ms (negative below it), used by the costly path of
#: statements with history.
BEYOND_TOLERANCE = "exec_beyond_tolerance_ms"
#: Key of the observed signals' mask of rows whose scan was measured (``features.observed_signals``): a
#: NULL scan reads as 0 MB, and the spill and scan signals keep no verdict on such rows.
SCAN_KNOWN = "scan_known"
#: Key of the optional reference with a statement's own spill history: ``(largest log1p MB spilled, runs)``
#: in the training window (NaN for a row whose references are not its statement's own).
SPILL_HISTORY = "spill_history"
#: Key of the extra quantity :meth:`ResidualDetector.residuals` adds: the MB spilled by a run of a
#: statement that never spilled in at least ``first_spill_runs`` runs (0 for every other run).
FIRST_SPILL = "spill_first_mb"
#: Key of the extra quantity :meth:`ResidualDetector.residuals` adds next to :data:`FIRST_SPILL`: the
#: clean runs of that statement's history (0 for every other run), the first-spill path's evidence.
CLEAN_RUNS = "spill_clean_runs"
#: Reason of an alert the first-spill path decided (the spill signal's own reason says "beyond the scan").
FIRST_SPILL_REASON = "first_spill"
#: Key of the extra quantity :meth:`ResidualDetector.residuals` adds: MB spilled beyond the largest spill
#: of the statement's history, for a statement that spilled in it (0 for every other run).
RECORD_SPILL = "spill_beyond_record_mb"
#: Key of the extra quantity next to :data:`RECORD_SPILL`: ``log1p(MB spilled) - log1p(largest spill)``.
RECORD_RATIO = "spill_record_log_ratio"
#: Reason of an alert the record-spill path decided.
RECORD_SPILL_REASON = "spill_beyond_record"
#: How many times its largest spill a statement must spill for the record itself to be the evidence.
RECORD_SPILL_FACTOR = 5.0
#: Key of the observed signals' mask of rows that ran their work (``features.observed_signals``): not a
#: result-cache hit, not aborted. Only those are judged for running short.
RAN_IN_FULL = "ran_in_full"
#: Key of the optional reference with a statement's own shortest run: ``(log1p ms of its shortest run in
#: full in the training window, how many runs in full)`` (NaN for a row whose references are not its
#: statement's own).
SHORTEST_RUN = "exec_shortest_run"
#: Key of the extra quantity :meth:`ResidualDetector.residuals` adds: ms by which a run in full of a
#: statement with at least ``first_spill_runs`` such runs fell short of the shortest of them (0 otherwise).
SHORT_OF_SHORTEST = "exec_short_of_shortest_ms"
#: Key of the extra quantity next to :data:`SHORT_OF_SHORTEST`: ``log1p(shortest) - log1p(runtime)``.
SHORT_RATIO = "exec_short_log_ratio"
#: Reason of an alert the shortest-run path decided: work that did not happen.
SHORT_RUN_REASON = "shorter_than_ever"
#: How many times shorter than its shortest run in full a run must be for that alone to be the evidence.
SHORT_RUN_FACTOR = 5.0
#: Key of the optional reference of the smallest-scan path: ``(log1p MB of the statement's smallest scan among
#: its runs in full with a measured scan, their number)`` (NaN without the statement's own history).
SMALLEST_SCAN = "scan_smallest_run"
#: Key of the extra quantity :meth:`ResidualDetector.residuals` adds: the time the instance needs to read
#: the MB by which a run in full scanned less than the statement's smallest scan, at its pace (0 otherwise).
SCAN_SHORT_MS = "scan_short_of_smallest_ms"
#: Key of the extra quantity next to :data:`SCAN_SHORT_MS`: ``log1p(smallest) - log1p(MB scanned)``.
SCAN_SHORT_RATIO = "scan_short_log_ratio"
#: Reason of an alert the smallest-scan path decided: input that was not there.
SHORT_SCAN_REASON = "scanned_less_than_ever"
#: Every reason an alert can carry: a signal's, one of the spill paths', or one of the work-not-done paths'.
ALERT_REASONS: tuple[str, ...] = (*REASONS.values(), FIRST_SPILL_REASON, RECORD_SPILL_REASON, SHORT_RUN_REASON,
                                  SHORT_SCAN_REASON)
#: Runs of a statement's history without a spill after which its first spill is news: a statement that
#: spills one run in two shows 5 clean runs 3 % of the time (one in four: 24 %), and 5 is more than the
#: 3 runs after which its history is its own reference at all.
FIRST_SPILL_RUNS = 5
#: Key of the optional reference with the instance's observed reading pace: ``(log ms per MB, its
#: IQR)`` (:meth:`workbench.ml.features.FeatureBuilder.references`), which caps the work credit.
THROUGHPUT = "ms_per_mb"
#: Key of the optional reference with the scale of the instance's heavy work: ``(log1p ms of its 1-in-100
#: query in the training window, 0)`` (NaN for an instance without one), which scales the runtime stakes.
RUNTIME_SCALE = "exec_p99"
#: Key of the extra quantity :meth:`ResidualDetector.residuals` adds: each row's multiplier (at least 1) of
#: the runtime stakes, :data:`COSTLY` and :data:`KNOWN_COSTLY`, from its instance's :data:`RUNTIME_SCALE`.
STAKE_SCALE = "exec_stake_scale"
#: Runtime stakes grow with the instance's heavy work beyond this many times its 1-in-100 query: 10 minutes
#: stay costly while they are at least 5 such queries (every instance of the demo and stress logs: their
#: 1-in-100 queries take 13-105 s), and an instance whose 1-in-100 query takes 30 minutes needs 2.5 hours. On a
#: warehouse where every query runs 10x or 30x as long the fixed 10 minutes alerted 6x / 15x as often as on
#: the same log at its own speed (docs/detector-notes.md, twenty-first session); 5x the 1-in-100 query is
#: about the instance's 1-in-1000 query (2-3x its p99 on the demo log), which its incidents would set itself.
RUNTIME_SCALE_FACTOR = 5.0
_Z90 = 1.2815515655446004  # standard normal 0.9 quantile
_IQR_TO_SIGMA = 1.349


class ResidualDetector:
    """Per-query anomaly score from log-space surprise weighted by absolute excess.

    Parameters
    ----------
    alert_rate : float, default=0.0005
        Target share of *normal* queries that alert (false alerts); true anomalies come on top.
        Half the product's budget of 10 per 10k: on a new day the realised rate runs above the
        holdout's (traffic shifts, statements and instances never seen): 1.15-1.3x on demo logs of
        three seeds with the per-group thresholds (1.7-3x with one pooled bar).
    signals : tuple of str, default=("exec", "queue", "scan", "spill", "compile")
        Observed signals to score (subset of :data:`REASONS`).
    known_costly : float, default=120_000.0
        Runtime (ms) beyond the upper expectation that is costly on its own for a run of a statement
        with its own history (group 0); see :data:`KNOWN_COSTLY`.
    first_spill_runs : float, default=5
        Runs without a spill in a statement's history before a first spill of at least the spill floor
        alerts on its own; see :data:`FIRST_SPILL_RUNS`. The same history length opens the record-spill path
        and the shortest-run path.
    record_spill_factor : float, default=5.0
        How many times its largest spill (of at least ``first_spill_runs`` runs) a statement must spill,
        at least the spill floor beyond it, for the record alone to alert; see :data:`RECORD_SPILL_FACTOR`.
        1 or less turns the path off.
    short_run_factor : float, default=5.0
        How many times shorter than the shortest of its runs in full (of at least ``first_spill_runs``
        such runs) a run in full of a statement must be, at least the runtime floor short of it, for that
        alone to alert (reason :data:`SHORT_RUN_REASON`: a load that found no input, a statement that
        skipped its work); see :data:`SHORT_RUN_FACTOR`. 1 or less turns the path off.
    runtime_scale_factor : float, default=5.0
        The runtime stakes (``costly["exec"]`` and ``known_costly``) of a row are multiplied by
        ``max(1, runtime_scale_factor * p99 / costly["exec"])``, ``p99`` its instance's 1-in-100 runtime
        (:data:`RUNTIME_SCALE`; no multiplier without it): minutes are costly on an instance whose heavy
        queries take seconds, not on one whose heavy queries take hours. 0 turns the scaling off.
    one_sided : tuple of str, default=("queue", "spill", "compile")
        Sparse signals, counted only upwards and scaled among the runs above their reference; see
        :data:`ONE_SIDED`.
    min_scale, max_scale : float, default=0.25, 1.0
        Bounds of every spread in log units: a fingerprint that always runs in 100 ms still
        tolerates ~28 % per unit of z, and no history, however thin, tolerates more than a
        factor ``e`` per unit of z (a 20x runtime is always at least 3 units).
    reference_quantile : float, default=0.99
        Holdout quantile that maps to ``u = 1`` for each signal.
    quantile : float, default=0.9
        The quantile of the upper regressor (to turn its distance to the mean into a sigma).
    floors, costly : dict, optional
        Per-signal excess levels (see the module docstring); default :data:`FLOORS`, :data:`COSTLY`.
    """

    def __init__(self, *, alert_rate: float = 0.0005, signals: tuple[str, ...] = tuple(REASONS),
                 min_scale: float = 0.25, max_scale: float = 1.0, reference_quantile: float = 0.99,
                 quantile: float = 0.9, floors: dict[str, float] | None = None,
                 costly: dict[str, float] | None = None, min_group_rows: int = 500,
                 costly_z: float = 2.0, known_costly: float = KNOWN_COSTLY,
                 first_spill_runs: float = FIRST_SPILL_RUNS, one_sided: tuple[str, ...] = ONE_SIDED,
                 runtime_scale_factor: float = RUNTIME_SCALE_FACTOR,
                 record_spill_factor: float = RECORD_SPILL_FACTOR,
                 short_run_factor: float = SHORT_RUN_FACTOR) -> None:
        self.alert_rate = alert_rate
        self.signals = signals
        self.min_scale = min_scale
        self.max_scale = max_scale
        self.reference_quantile = reference_quantile
        self.quantile = quantile
        self.floors = dict(FLOORS if floors is None else floors)
        self.costly = dict(COSTLY if costly is None else costly)
        self.min_group_rows = min_group_rows
        self.costly_z = costly_z
        self.known_costly = known_costly
        self.first_spill_runs = first_spill_runs
        self.one_sided = tuple(one_sided)
        self.runtime_scale_factor = runtime_scale_factor
        self.record_spill_factor = record_spill_factor
        self.short_run_factor = short_run_factor
        self.n_groups = 1

    # --- per-row quantities -----------------------------------------------------------------
    def _check_signals(self) -> None:
        unknown = [s for s in self.signals if s not in REASONS]
        if unknown:
            msg = (f"The 'signals' parameter of ResidualDetector must be a subset of {tuple(REASONS)}. "
                   f"Got unknown {unknown}.")
            raise ValueError(msg)
        if self.max_scale < self.min_scale:
            msg = (f"The 'max_scale' parameter of ResidualDetector must be >= min_scale ({self.min_scale}). "
                   f"Got {self.max_scale}.")
            raise ValueError(msg)

    def residuals(self, observed_log: dict[str, np.ndarray], pred_mean_log: np.ndarray,
                  pred_q_log: np.ndarray, references: dict[str, tuple[np.ndarray, np.ndarray]]
                  ) -> dict[str, np.ndarray]:
        """Raw standardised residual ``z`` of each signal (positive = more than expected)."""
        self._check_signals()
        z_q = _Z90 if self.quantile == 0.9 else float(np.sqrt(2) * _erfinv(2 * self.quantile - 1))
        scan_known = observed_log.get(SCAN_KNOWN)  # rows whose scan was measured (features.observed_signals)
        out = {}
        for s in self.signals:
            if s == "exec":
                scale = np.clip((pred_q_log - pred_mean_log) / z_q, self.min_scale, self.max_scale)
                out[s] = (observed_log[s] - pred_mean_log) / scale
                if "scan" in observed_log and "scan" in references:
                    more_work = _work_credit(observed_log["scan"], references["scan"][0], pred_mean_log,
                                             references.get(THROUGHPUT))
                    out[UNEXPLAINED] = (observed_log[s] - pred_mean_log - more_work) / scale
                upper = np.maximum(pred_q_log, pred_mean_log)  # the two regressors may cross
                out[BEYOND_TOLERANCE] = np.expm1(observed_log[s]) - np.expm1(np.clip(upper, 0.0, 50.0))
                if SHORTEST_RUN in references and RAN_IN_FULL in observed_log:
                    shortest, runs = references[SHORTEST_RUN]
                    judged = observed_log[RAN_IN_FULL] & (runs >= self.first_spill_runs)  # NaN runs: False
                    out[SHORT_OF_SHORTEST] = np.where(judged, np.expm1(shortest) - np.expm1(observed_log[s]), 0.0)
                    out[SHORT_RATIO] = np.where(judged, shortest - observed_log[s], 0.0)
                if RUNTIME_SCALE in references and self.runtime_scale_factor > 0:
                    heavy = self.runtime_scale_factor * np.expm1(np.clip(references[RUNTIME_SCALE][0], 0.0, 50.0))
                    out[STAKE_SCALE] = np.fmax(heavy / self.costly["exec"], 1.0)  # fmax: NaN (no scale) -> 1
            elif s in HISTORY_SIGNALS:
                center, iqr = references[s]
                out[s] = (observed_log[s] - center) / np.clip(iqr / _IQR_TO_SIGMA, self.min_scale, self.max_scale)
                if s == "scan" and scan_known is not None:
                    out[s] = np.where(scan_known, out[s], 0.0)  # a scan nobody measured: no verdict
                    if SMALLEST_SCAN in references and RAN_IN_FULL in observed_log and THROUGHPUT in references:
                        smallest, runs = references[SMALLEST_SCAN]
                        judged = scan_known & observed_log[RAN_IN_FULL] & (runs >= self.first_spill_runs)
                        missing_mb = np.expm1(smallest) - np.expm1(observed_log[s])
                        # priced as the time the instance needs to read what was not read (its pace, the
                        # slow end of its reads), as extra MB are credited (_work_credit): NaN pace, no stake
                        missing_ms = np.nan_to_num(missing_mb * np.exp(references[THROUGHPUT][0]), nan=0.0)
                        out[SCAN_SHORT_MS] = np.where(judged, missing_ms, 0.0)
                        out[SCAN_SHORT_RATIO] = np.where(judged, smallest - observed_log[s], 0.0)
            elif s == "spill":
                out[s] = observed_log["spill"] - observed_log["scan"]
                if scan_known is not None:  # against a scan nobody measured (NULL, read as 0 MB): no verdict
                    out[s] = np.where(scan_known, out[s], 0.0)
                if SPILL_HISTORY in references:
                    largest, runs = references[SPILL_HISTORY]
                    never = (largest == 0.0) & (runs >= self.first_spill_runs)  # NaN (no own history): False
                    out[FIRST_SPILL] = np.where(never, np.expm1(observed_log["spill"]), 0.0)
                    out[CLEAN_RUNS] = np.where(never, runs, 0.0)
                    record = (largest > 0.0) & (runs >= self.first_spill_runs)
                    out[RECORD_SPILL] = np.where(record, np.expm1(observed_log["spill"]) - np.expm1(largest), 0.0)
                    out[RECORD_RATIO] = np.where(record, observed_log["spill"] - largest, 0.0)
            else:  # queue
                out[s] = observed_log["queue"] - np.maximum(references["queue"][0], pred_mean_log)
            if s in self.one_sided:  # fmax: a row without a spread (NaN, no history) gets 0, no verdict
                out[s] = np.fmax(out[s], 0.0)
        return out

    def expected(self, pred_mean_log: np.ndarray, references: dict[str, tuple[np.ndarray, np.ndarray]]
                 ) -> dict[str, np.ndarray]:
        """Expected value of each signal in natural units (ms or MB), the base of the excess."""
        out = {}
        for s in self.signals:
            if s == "exec":
                level = pred_mean_log
            elif s == "queue":
                level = np.maximum(references["queue"][0], pred_mean_log)
            else:
                level = references[s][0]
            out[s] = np.expm1(np.clip(level, 0.0, 50.0))
        return out

    def excess(self, observed_log: dict[str, np.ndarray], expected: dict[str, np.ndarray]
               ) -> dict[str, np.ndarray]:
        """Observed minus expected, natural units (negative = less than expected)."""
        return {s: np.expm1(observed_log[s]) - expected[s] for s in self.signals}

    # --- calibration ------------------------------------------------------------------------
    def _group_index(self, groups: np.ndarray | None, n: int) -> np.ndarray:
        """Each row's index into the per-group calibrations (group 0 for every row without ``groups``)."""
        g = np.zeros(n, dtype=np.int64) if groups is None else np.asarray(groups)
        # A group the holdout did not contain has no calibration of its own: it borrows the pooled
        # one, stored after the fitted groups, rather than the calibration of whichever fitted group
        # happens to have the nearest index.
        return np.where((g >= 0) & (g < self.n_groups), g, self.n_groups)

    def _u(self, residuals: dict[str, np.ndarray], groups: np.ndarray | None) -> np.ndarray:
        g = self._group_index(groups, len(residuals[self.signals[0]]))
        return np.stack([(residuals[s] - np.asarray(self.center_[s])[g]) / np.asarray(self.spread_[s])[g]
                         for s in self.signals])

    def _stake(self, excess: dict[str, np.ndarray]) -> np.ndarray:
        """``(e / floor) ** gamma`` per signal (1 at or below the floor)."""
        rows = []
        for s in self.signals:
            ratio = np.maximum(excess[s] / self.floors[s], 1.0)
            rows.append(ratio ** self.gamma_[s])
        return np.stack(rows)

    def fit(self, residuals: dict[str, np.ndarray], excess: dict[str, np.ndarray] | None = None,
            groups: np.ndarray | None = None, *,
            group_only: tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None, np.ndarray] | None = None
            ) -> ResidualDetector:
        """Calibrate per-signal scales, the stake exponents and the threshold on holdout rows.

        ``excess`` (from :meth:`excess`) is needed for the impact weighting; without it the
        detector is purely relative (stake exponents 0, floors still applied at decision time).
        ``groups`` (small ints, e.g. the reference source of each row: own fingerprint history,
        instance prior, global) calibrate each signal's scale per group (Mondrian calibration):
        a residual of a well-known fingerprint is judged against well-known fingerprints, not
        against the wider spread of never-seen ones. Groups with fewer than
        ``min_group_rows`` holdout rows use the pooled scale, and so does a group the holdout
        does not contain at all (at decision time: rows whose instance was never seen in training).
        At decision time group 0 also means "the expectation rests on the statement's own history"
        (:data:`~workbench.ml.features.REFERENCE_SOURCES`), which opens the ``known_costly`` path.

        The threshold is calibrated per group as well: each group with ``min_group_rows`` rows gets the
        ``1 - alert_rate`` tail of its own stake-weighted scores, so every group alerts on about
        ``alert_rate`` of its normal rows (a never-seen statement's prior is looser than a statement's
        own history, and one pooled bar let it alert five times as often). ``group_only``
        ``(residuals, excess, groups)`` are rows that calibrate only the groups they belong to (their
        scales and thresholds), never the pooled calibration: training passes the holdout re-read as a
        never-seen instance (:func:`~workbench.ml.features.as_never_seen_instance`), the only rows that
        can calibrate the ``global`` group, which a holdout of known instances never holds.
        """
        self._check_signals()
        if not 0.0 < self.alert_rate < 0.05:
            msg = f"The 'alert_rate' parameter of ResidualDetector must be in (0, 0.05). Got {self.alert_rate}."
            raise ValueError(msg)
        g = np.zeros(len(residuals[self.signals[0]]), dtype=np.int64) if groups is None else np.asarray(groups)
        every_z, every_e, every_g = residuals, excess, g
        if group_only is not None:
            only_z, only_e, only_g = group_only
            every_z = {s: np.concatenate([residuals[s], only_z[s]]) for s in self.signals}
            every_g = np.concatenate([g, np.asarray(only_g)])
            if excess is not None:
                if only_e is None:
                    msg = "ResidualDetector.fit: 'group_only' needs its excess when 'excess' is given."
                    raise ValueError(msg)
                every_e = {s: np.concatenate([excess[s], only_e[s]]) for s in self.signals}
        self.n_groups = int(every_g.max()) + 1 if len(every_g) else 1
        sizes = np.bincount(every_g[every_g >= 0], minlength=self.n_groups)  # a negative group: no calibration
        own = sizes >= self.min_group_rows
        self.center_: dict[str, list[float]] = {}
        self.spread_: dict[str, list[float]] = {}
        for s in self.signals:
            pooled = self._calibration_point(s, residuals[s])
            centers, spreads = [], []
            pooled_spread = max(pooled[1] - pooled[0], 1e-3)
            for k in range(self.n_groups):
                c, q = self._calibration_point(s, every_z[s][every_g == k]) if own[k] else pooled
                centers.append(c)
                # A group may be tighter than the pool, but not degenerate (e.g. never-seen
                # fingerprints that mostly neither scan nor spill): at least half the pooled spread.
                spreads.append(max(q - c, 0.5 * pooled_spread))
            # Last entry: the pooled calibration, for groups unseen in the holdout.
            self.center_[s] = [*centers, pooled[0]]
            self.spread_[s] = [*spreads, pooled_spread]
        u = self._u(residuals, g)
        t0 = _tail_threshold(u.max(axis=0), self.alert_rate)
        self.relative_threshold_ = t0
        self.gamma_: dict[str, float] = {}
        for s in self.signals:
            span = np.log(max(self.costly[s] / self.floors[s], 1.0 + 1e-9))
            self.gamma_[s] = float(np.log(max(t0, 1.0)) / span) if excess is not None else 0.0
        if excess is not None:
            self.threshold_ = _tail_threshold((u * self._stake(excess)).max(axis=0), self.alert_rate)
            every = (self._u(every_z, every_g) * self._stake(every_e)).max(axis=0)
            self.group_threshold_ = [_tail_threshold(every[every_g == k], self.alert_rate) if own[k]
                                     else self.threshold_ for k in range(self.n_groups)] + [self.threshold_]
        else:
            self.threshold_ = t0
            self.group_threshold_ = [t0] * (self.n_groups + 1)
        self.n_calibration_ = int(u.shape[1])
        return self

    def _calibration_point(self, signal: str, z: np.ndarray) -> tuple[float, float]:
        """Median and ``reference_quantile`` of a signal's holdout residuals ``z``.

        A one-sided signal's quantile is taken among its residuals above 0 (the rest sit at 0 and
        carry no surprise): ``u = 1`` is then a 1-in-100 surprise among the runs it judges, however
        rarely it is active (a statement that compiles one run in five, a cache that mostly hits).
        Those runs are few (a few hundred in a day's holdout), so their 99th percentile would be their
        handful of largest, which are the training window's own anomalies (a labelled spill storm set
        it at 9.7 where the 90th percentile was 1.5). It is extrapolated instead from their median and
        90th percentile with an exponential tail, as the threshold is from q95 and q99.
        """
        if signal not in self.one_sided:
            return float(np.median(z)), float(np.quantile(z, self.reference_quantile))
        above = z[z > 0]
        if not len(above):
            return float(np.median(z)), float(np.quantile(z, self.reference_quantile))
        q50, q90 = np.quantile(above, [0.5, 0.9])
        tail = np.log(0.5 / (1.0 - self.reference_quantile)) / np.log(5.0)  # q50 -> q90 is ln 5 of the tail
        return float(np.median(z)), float(q50 + (q90 - q50) * tail)

    # --- decision -----------------------------------------------------------------------------
    def _signal_scores(self, residuals: dict[str, np.ndarray], excess: dict[str, np.ndarray] | None,
                       groups: np.ndarray | None = None) -> np.ndarray:
        u = self._u(residuals, groups)
        if excess is None:  # relative only (no impact information): the old behaviour
            return u / self.threshold_
        threshold = np.asarray(self.group_threshold_)[self._group_index(groups, u.shape[1])]
        s = u * self._stake(excess) / threshold
        gate = np.stack([excess[sig] / self.floors[sig] for sig in self.signals])
        relative = np.minimum(s, gate)
        # Costly path: the excess alone is expensive and the residual is at least ``costly_z``
        # capped units above the expectation (not the upper tail of a long query's variation).
        raw = np.stack([residuals[sig] for sig in self.signals])
        stake = np.stack([excess[sig] / self.costly[sig] for sig in self.signals])
        if STAKE_SCALE in residuals and "exec" in self.signals:  # the instance's heavy work scales its stakes
            stake[self.signals.index("exec")] /= residuals[STAKE_SCALE]
        costly = np.minimum(stake, raw / self.costly_z)
        if UNEXPLAINED in residuals and "exec" in self.signals:
            # Below the costly level, runtime the work done does not explain (a stall) trades
            # stake for evidence: half the costly excess needs twice the evidence.
            i = self.signals.index("exec")
            z_u = np.maximum(residuals[UNEXPLAINED], 0.0) / self.costly_z
            costly[i] = np.maximum(costly[i], np.minimum(z_u, stake[i] * z_u))
        if BEYOND_TOLERANCE in residuals and "exec" in self.signals and groups is not None:
            # A statement with its own history: minutes beyond the model's own tolerance for it are costly.
            i = self.signals.index("exec")
            own = np.asarray(groups) == 0
            beyond = np.where(own, residuals[BEYOND_TOLERANCE], 0.0) / self.known_costly
            if STAKE_SCALE in residuals:
                beyond = beyond / residuals[STAKE_SCALE]
            costly[i] = np.maximum(costly[i], np.minimum(beyond, raw[i] / self.costly_z))
        on_path = np.array([sig in TIME_SIGNALS for sig in self.signals])[:, None]
        scores = np.where(on_path, np.maximum(relative, costly), relative)
        first = self._first_spill(residuals, groups)
        if first is not None:
            i = self.signals.index("spill")
            scores[i] = np.maximum(scores[i], first)
        short = self._short_run(residuals, groups)
        if short is not None:
            i = self.signals.index("exec")
            scores[i] = np.maximum(scores[i], short)
        less = self._short_scan(residuals, groups)
        if less is not None:
            i = self.signals.index("scan")
            scores[i] = np.maximum(scores[i], less)
        return scores

    def _short_scan(self, residuals: dict[str, np.ndarray], groups: np.ndarray | None) -> np.ndarray | None:
        """Score of the smallest-scan path per row, or None without its inputs: the smaller of the stake (the
        time the instance needs to read the MB the run did not read, below the statement's smallest scan in
        full, over the runtime floor) and the evidence (``ln(smallest / scanned) / ln(short_run_factor)``).

        Work that did not happen, seen in the MB: a load that found a tenth of its input runs on its fixed
        costs and ends in an ordinary time, so the shortest-run path does not see it, and the scan signal
        prices extra MB only. The evidence is the shortest-run path's (5x under the statement's record);
        the stake is priced as :func:`_work_credit` prices extra MB, in the time the instance takes to read
        them, and held to the runtime floor like a run that ended a second early.
        """
        return self._work_not_done(residuals, groups, "scan", SCAN_SHORT_MS, SCAN_SHORT_RATIO)

    def _work_not_done(self, residuals: dict[str, np.ndarray], groups: np.ndarray | None, signal: str,
                       short_ms: str, ratio: str) -> np.ndarray | None:
        """The work-not-done paths' score (:meth:`_short_run`, :meth:`_short_scan`): the smaller of the stake
        (``residuals[short_ms]`` over the runtime floor) and the evidence (``residuals[ratio]`` over
        ``ln(short_run_factor)``), for a statement's own history (group 0) only; None without the inputs."""
        if short_ms not in residuals or groups is None or signal not in self.signals or self.short_run_factor <= 1.0:
            return None
        score = np.minimum(residuals[short_ms] / self.floors["exec"], residuals[ratio] / np.log(self.short_run_factor))
        return np.where(np.asarray(groups) == 0, score, 0.0)

    def _short_run(self, residuals: dict[str, np.ndarray], groups: np.ndarray | None) -> np.ndarray | None:
        """Score of the shortest-run path per row, or None without its inputs: the smaller of the stake
        (ms short of the statement's shortest run in full, over the runtime floor) and the evidence
        (``ln(shortest / runtime) / ln(short_run_factor)``).

        Work that did not happen: a load that found no input, a statement aborted by nobody that skipped
        its work. The runtime signal prices excess only. Normal runs of a statement with five runs in full
        or more came at most 2.7x under the shortest of them on eight generated logs, so 5x under it is
        evidence on its own, as a spill five times the statement's largest is. Runs served from the
        result cache, and aborted runs, are not judged: they do not run the work.
        """
        return self._work_not_done(residuals, groups, "exec", SHORT_OF_SHORTEST, SHORT_RATIO)

    def _first_spill(self, residuals: dict[str, np.ndarray], groups: np.ndarray | None) -> np.ndarray | None:
        """Score of the first-spill path per row, or None without its inputs: the smaller of the stake (MB
        spilled over the spill floor) and the evidence (clean runs over ``first_spill_runs``).

        A statement that spilled in none of ``first_spill_runs`` runs of its own history spills at
        least the spill floor: the history is the relative evidence (the event is new for the
        statement), the floor the stake. Without it a first spill as large as the scan was caught 1
        time in 100: among runs that spill, the generator's and Redshift's spills are heavy-tailed, so
        a first massive spill is no rarer than any other spill. Both terms are at least 1 exactly when
        the path alerts; the smaller one ranks (a long clean history is stronger evidence than a short one).
        """
        if FIRST_SPILL not in residuals or groups is None:
            return None
        stake = residuals[FIRST_SPILL] / self.floors["spill"]
        evidence = residuals[CLEAN_RUNS] / self.first_spill_runs
        score = np.minimum(stake, evidence)
        if RECORD_SPILL in residuals and self.record_spill_factor > 1.0:
            record = np.minimum(residuals[RECORD_SPILL] / self.floors["spill"],
                                residuals[RECORD_RATIO] / np.log(self.record_spill_factor))
            score = np.maximum(score, record)
        return np.where(np.asarray(groups) == 0, score, 0.0)

    def reasons(self, residuals: dict[str, np.ndarray], groups: np.ndarray | None, score: np.ndarray,
                which: np.ndarray, alert: np.ndarray) -> np.ndarray:
        """The reason of each alert (None for other rows), from :meth:`decide_with_signal`'s values: the
        deciding signal's :data:`REASONS` entry, or :data:`FIRST_SPILL_REASON` (:data:`RECORD_SPILL_REASON`,
        :data:`SHORT_RUN_REASON`) where that path gave the score (``groups`` None: no such path, as in
        :meth:`decide_with_signal`)."""
        names = np.array([REASONS[s] for s in self.signals], dtype=object)[which]
        first = self._first_spill(residuals, groups)
        if first is not None:
            path = (which == self.signals.index("spill")) & (first > 0) & (first >= score)
            names = np.where(path, np.where(residuals[CLEAN_RUNS] > 0, FIRST_SPILL_REASON, RECORD_SPILL_REASON), names)
        short = self._short_run(residuals, groups)
        if short is not None:
            path = (which == self.signals.index("exec")) & (short > 0) & (short >= score)
            names = np.where(path, SHORT_RUN_REASON, names)
        less = self._short_scan(residuals, groups)
        if less is not None:
            path = (which == self.signals.index("scan")) & (less > 0) & (less >= score)
            names = np.where(path, SHORT_SCAN_REASON, names)
        return np.where(alert, names, None)

    def decide(self, residuals: dict[str, np.ndarray], excess: dict[str, np.ndarray] | None = None,
               groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(score, is_anomaly, reason)``; alert when ``score >= 1``; reason ``None`` otherwise."""
        score, alert, which = self.decide_with_signal(residuals, excess, groups)
        return score, alert, self.reasons(residuals, groups if excess is not None else None, score, which, alert)

    def decide_with_signal(self, residuals: dict[str, np.ndarray], excess: dict[str, np.ndarray] | None = None,
                           groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(score, is_anomaly, index of the deciding signal in self.signals)``."""
        if not hasattr(self, "threshold_"):
            msg = "This ResidualDetector is not calibrated yet; call 'fit' (or from_dict) before 'decide'."
            raise NotFittedError(msg)
        per_signal = self._signal_scores(residuals, excess, groups)
        which = np.argmax(per_signal, axis=0)
        score = np.take_along_axis(per_signal, which[None, :], axis=0)[0]
        return score, score >= 1.0, which

    # --- persistence ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able parameters and calibration (stored in ``model.json``).

        ``threshold`` is the decision threshold of the *score* (always 1.0: scores are already
        divided by the calibrated ``score_threshold``).
        """
        return {
            "params": {"alert_rate": self.alert_rate, "signals": list(self.signals),
                       "min_scale": self.min_scale, "max_scale": self.max_scale,
                       "reference_quantile": self.reference_quantile, "quantile": self.quantile,
                       "floors": self.floors, "costly": self.costly, "min_group_rows": self.min_group_rows,
                       "costly_z": self.costly_z, "known_costly": self.known_costly,
                       "first_spill_runs": self.first_spill_runs, "one_sided": list(self.one_sided),
                       "runtime_scale_factor": self.runtime_scale_factor,
                       "record_spill_factor": self.record_spill_factor,
                       "short_run_factor": self.short_run_factor},
            "center": self.center_, "spread": self.spread_, "gamma": self.gamma_,
            "relative_threshold": self.relative_threshold_, "score_threshold": self.threshold_,
            "group_threshold": self.group_threshold_,
            "threshold": 1.0, "n_calibration": self.n_calibration_, "n_groups": self.n_groups,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> ResidualDetector:
        """Rebuild a calibrated detector from :meth:`to_dict`."""
        params = dict(state["params"])
        params["signals"] = tuple(params["signals"])
        params.setdefault("known_costly", float("inf"))  # saved before the path existed: keep its decisions
        params.setdefault("first_spill_runs", float("inf"))  # likewise
        params.setdefault("runtime_scale_factor", 0.0)  # likewise (fixed stakes)
        params.setdefault("record_spill_factor", 1.0)  # likewise (no record-spill path)
        params.setdefault("short_run_factor", 1.0)  # likewise (no shortest-run path)
        params["one_sided"] = tuple(params.get("one_sided", _ONE_SIDED_BEFORE))
        det = cls(**params)
        det.n_groups = int(state.get("n_groups", 1))
        det.center_ = {k: [float(x) for x in np.atleast_1d(v)] for k, v in state["center"].items()}
        det.spread_ = {k: [float(x) for x in np.atleast_1d(v)] for k, v in state["spread"].items()}
        for per_signal in (*det.center_.values(), *det.spread_.values()):
            if len(per_signal) == det.n_groups:  # saved before the pooled entry existed: keep its old
                per_signal.append(per_signal[-1])  # behaviour (unseen groups used the last fitted group)
        det.gamma_ = {k: float(v) for k, v in state.get("gamma", {s: 0.0 for s in det.signals}).items()}
        det.relative_threshold_ = float(state.get("relative_threshold", state["threshold"]))
        det.threshold_ = float(state.get("score_threshold", state["threshold"]))
        # saved before per-group thresholds: the pooled one for every group (its old decisions)
        det.group_threshold_ = [float(t) for t in state.get("group_threshold",
                                                            [det.threshold_] * (det.n_groups + 1))]
        det.n_calibration_ = int(state["n_calibration"])
        return det


def _work_credit(scan_log: np.ndarray, reference_scan_log: np.ndarray, pred_mean_log: np.ndarray,
                 throughput: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """Log-runtime the extra MB scanned (beyond the reference) may explain.

    Proportional: runtime scaled up by how much more the query read than its reference
    (``log scan - log reference``). That credit is only right when the expected runtime is spent
    reading; when the reference reads little (a COPY's few MB, an instance median for a
    never-seen query) it would excuse minutes of runtime for a few hundred MB. So the credit is
    also capped by the time the instance needs to read the extra MB at its observed pace
    (``THROUGHPUT``: ms per MB of its reads of at least 1 GB in the training window): runtime
    beyond that is not explained by the work done (a stall: lock, S3 throttling, a hung load).
    Without a known pace the proportional credit stands.
    """
    extra_log = np.maximum(scan_log - reference_scan_log, 0.0)
    if throughput is None:
        return extra_log
    extra_mb = np.maximum(np.expm1(scan_log) - np.expm1(reference_scan_log), 0.0)
    expected_ms = np.expm1(np.clip(pred_mean_log, 0.0, 50.0))
    paced = np.log1p(expected_ms + extra_mb * np.exp(throughput[0])) - np.log1p(expected_ms)
    return np.where(np.isnan(paced), extra_log, np.minimum(extra_log, paced))


def _tail_threshold(score: np.ndarray, alert_rate: float) -> float:
    """Exponential-tail extrapolation of the ``1 - alert_rate`` quantile from q95 and q99."""
    q95, q99 = np.quantile(score, [0.95, 0.99])
    beta = max(float(q99 - q95), 1e-6) / np.log(5.0)
    return float(q95 + beta * np.log(0.05 / alert_rate))


def _erfinv(y: float) -> float:
    from scipy.special import erfinv

    return float(erfinv(y))
