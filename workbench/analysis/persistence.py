"""A statement that stays slower: runs that complete a streak of elevated runs of one statement in a day.

A plan that regresses and stays regressed makes every later run of a known statement 2-3x slower
for the rest of the day. One such run is within the statement's run-to-run spread (on the probe day
1 % of normal runs with their own history are 2.4 or more spreads above their expectation), so no
per-run score catches it without alerting on ordinary spread. What sets it apart is persistence:
ordinary spread does not repeat run after run.

:func:`persistent_runs` reads a day of scored rows (the shard schema) and, per statement
(``instance_id``, ``feature_fingerprint``) in arrival order, counts the consecutive *elevated* runs:

* judged runs only: executed (not a result-cache hit, not aborted, a positive execution time),
  scored, and with an expectation that rests on the statement's own history (``known``, the
  detector's evidence source ``fingerprint``: a never-seen statement's expectation is a prior, and
  its residual says what the model does not know). Other runs of the statement are skipped: a
  cache hit or an abort says nothing about the plan, and neither breaks nor extends a streak;
* elevated: the detector's own runtime residual ``z = (log1p(exec) - log1p(pred_mean)) / s``
  (``s`` the version's spread, ``(log q90 - log mean) / 1.2816`` clipped to its
  ``[min_scale, max_scale]``, as :meth:`workbench.ml.detector.ResidualDetector.residuals`) is at
  least ``bar`` *and* the run's excess over its expectation is at least the detector's runtime
  floor (1 s: below it a query never alerts, however large the relative deviation).

A run is flagged when it completes a streak of at least ``runs`` elevated runs: the first
``runs - 1`` runs after a change cannot be told from spread yet; every later run of the streak is
flagged. Streaks end at the day's end (the step judges one settled day). Rows the per-query
detector already alerted on are not flagged again (they have their alert and its evidence).

The constants (:class:`PersistenceParams`; ``benchmarks/detection.py`` and ``benchmarks/probes.py``
measure them, see docs/detector-notes.md): the bar follows from a nominal false rate (a tenth of the
detector's ``alert_rate``: ``runs`` independent runs of ordinary spread all clear it once in 20,000),
1.38 spreads for ``runs = 4``. Nothing here
knows about any generator or probe kind: it is a function of the rows and the version's spread only,
so the same day gives the same flags at any replay speed and after any restart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from workbench.analysis._columns import arrival_us, flags, numbers
from workbench.analysis._judged import judged_runs, runtime_spread

__all__ = ["PERSISTENCE_COLUMNS", "PERSISTENCE_REASON", "PERSISTENCE_SIGNAL", "PersistenceParams",
           "persistent_runs"]

#: The evidence signal of a flagged run (the per-query detector's are exec, queue, scan, spill, compile).
PERSISTENCE_SIGNAL = "exec_persistent"
#: The alert's reason.
PERSISTENCE_REASON = "persistent_slowdown"
#: Shard columns :func:`persistent_runs` reads.
PERSISTENCE_COLUMNS = ("instance_id", "query_id", "feature_fingerprint", "arrival_timestamp",
                       "execution_duration_ms", "was_cached", "was_aborted", "pred_mean_ms", "pred_q_ms",
                       "model_version", "is_anomaly")


@dataclass(frozen=True)
class PersistenceParams:
    """Constants of :func:`persistent_runs`.

    ``runs``: consecutive elevated runs a flag needs. ``false_rate``: the chance, were a statement's
    runs independent draws of its expected spread (the residual standard normal), that ``runs``
    runs in a row are all at least :attr:`bar` spreads slow; the bar follows from it. Default a tenth
    of the detector's ``alert_rate`` (5 per 10k; its realised rate on a new day runs up to twice
    that, close to the product's budget of 10 per 10k, so persistence gets what is left: 0.5).
    ``floor_ms``: the least excess of each run over its expectation (the detector's runtime floor).
    ``min_scale`` / ``max_scale``: the spread's clip for rows whose version does not say (the
    detector's defaults).
    """

    runs: int = 4
    false_rate: float = 0.00005
    floor_ms: float = 1_000.0
    min_scale: float = 0.25
    max_scale: float = 1.0

    @property
    def bar(self) -> float:
        """The least residual of each run, in spreads: ``P(Z >= bar) ** runs = false_rate`` (1.38 for 4 runs)."""
        return NormalDist().inv_cdf(1.0 - self.false_rate ** (1.0 / self.runs))




def persistent_runs(rows: pa.Table, known: np.ndarray | None = None, params: PersistenceParams | None = None,
                    scales: Mapping[str, tuple[float, float]] | None = None) -> pd.DataFrame:
    """The runs of ``rows`` that complete a streak of ``params.runs`` elevated runs of their statement.

    Parameters
    ----------
    rows : pyarrow.Table
        One day of scored query rows (the shard schema; :data:`PERSISTENCE_COLUMNS`, ``is_anomaly``
        optional).
    known : ndarray of bool, optional
        Per row: the version's expectation rests on the statement's own history. None: every row.
    params : PersistenceParams, optional
        The constants (defaults: 4 runs, 1.38 spreads (from a nominal false rate of 5e-5), 1 s).
    scales : mapping, optional
        ``model_version -> (min_scale, max_scale)`` of each version's detector; other versions use
        ``params``' clip.

    Returns
    -------
    DataFrame
        One row per flagged run, in arrival order: ``row`` (position in ``rows``), ``instance_id``,
        ``query_id``, ``model_version``, ``expected_ms`` (the version's mean expectation),
        ``observed_ms``, ``excess_ms``, ``spreads`` (the run's residual in spreads), ``streak``
        (elevated runs so far, this one included), ``least_spreads`` (the smallest residual of the
        last ``runs`` of them) and ``streak_start`` (the arrival time of the streak's first run).
    """
    params = params or PersistenceParams()
    columns = {"row": "int64", "instance_id": "int64", "query_id": "int64", "model_version": "object",
               "expected_ms": "float64", "observed_ms": "float64", "excess_ms": "float64", "spreads": "float64",
               "streak": "int64", "least_spreads": "float64", "streak_start": "datetime64[ms, UTC]"}
    empty = pd.DataFrame({c: pd.Series(dtype=t) for c, t in columns.items()})
    if rows.num_rows == 0:
        return empty
    judged = judged_runs(rows, known, ("feature_fingerprint", "instance_id", "arrival_timestamp"))
    if not judged.any():
        return empty
    idx = np.flatnonzero(judged)
    exec_ms = np.nan_to_num(numbers(rows, "execution_duration_ms"), nan=0.0)
    pred = numbers(rows, "pred_mean_ms")
    versions = rows.column("model_version").to_numpy(zero_copy_only=False)
    mean_log, spread = runtime_spread(rows, idx, params.min_scale, params.max_scale, scales)
    z = (np.log1p(exec_ms[idx]) - mean_log) / spread
    excess = exec_ms[idx] - pred[idx]
    frame = pd.DataFrame({
        "row": idx,
        "instance_id": pc.cast(rows.column("instance_id"), pa.int64()).to_numpy(zero_copy_only=False)[idx],
        "fingerprint": rows.column("feature_fingerprint").to_numpy(zero_copy_only=False)[idx],
        "arrival_us": arrival_us(rows)[idx],
        "query_id": pc.cast(rows.column("query_id"), pa.int64()).to_numpy(zero_copy_only=False)[idx],
        "model_version": versions[idx], "expected_ms": pred[idx], "observed_ms": exec_ms[idx],
        "excess_ms": excess, "spreads": z,
        "elevated": (z >= params.bar) & (excess >= params.floor_ms),
        "alerted": flags(rows, "is_anomaly")[idx],
    })
    # arrival order within each statement; the query id breaks ties, so the order is the log's, not the shards'
    frame = frame.sort_values(["instance_id", "fingerprint", "arrival_us", "query_id"], kind="stable",
                              ignore_index=True)
    statement = frame.groupby(["instance_id", "fingerprint"], sort=False).ngroup().to_numpy()
    elevated = frame["elevated"].to_numpy()
    # A streak restarts at every run that is not elevated and at every new statement; an elevated
    # run's streak is its distance from the block's start (plus one when the block starts elevated).
    restart = ~elevated | np.r_[True, statement[1:] != statement[:-1]]
    start = np.maximum.accumulate(np.where(restart, np.arange(len(frame)), 0))
    streak = np.where(elevated, np.arange(len(frame)) - start + elevated[start].astype(np.int64), 0)
    frame["streak"] = streak.astype(np.int64)
    spreads = frame["spreads"].to_numpy()
    # where streak >= runs, the last ``runs`` positions are all this streak's (no wrap-around)
    frame["least_spreads"] = np.minimum.reduce([np.roll(spreads, j) for j in range(params.runs)])
    arrival = frame["arrival_us"].to_numpy()
    frame["streak_start"] = pd.to_datetime(arrival[np.arange(len(frame)) - np.maximum(streak - 1, 0)],
                                           unit="us", utc=True)
    out = frame[(frame["streak"] >= params.runs) & ~frame["alerted"]]
    out = out.sort_values(["arrival_us", "instance_id", "query_id"], kind="stable", ignore_index=True)
    return out[list(columns)].astype({"streak_start": "datetime64[ms, UTC]"})
