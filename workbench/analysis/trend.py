"""A statement that creeps: runs of one statement that get slower run after run through a day.

A staging table that is no longer truncated, a table that grows without a vacuum, statistics that go
staler by the hour: each run of a recurring statement is a little slower than the one before (10-20 %),
so its first slower runs lie inside the statement's run-to-run spread and no run stands out until it
has crept to several times its usual, and the persistence rule (:mod:`workbench.analysis.persistence`)
needs four runs in a row well above the spread. Ordinary spread has no direction: run after run rising
is the evidence.

:func:`creeping_runs` reads a day of scored rows (the shard schema) and, per statement (``instance_id``,
``feature_fingerprint``) over its *judged* runs in arrival order (as the persistence rule judges runs:
executed, scored, expected from the statement's own history), tests whether its runtime residual in
spreads (the detector's ``(log1p(exec) - log1p(pred_mean)) / s``) rises with the run's position:
Kendall's rank correlation, as a normal score ``z = 3 S / sqrt(n (n - 1) (2 n + 5) / 2)`` (``S`` the
concordant less the discordant pairs). A statement creeps when

* it has at least ``min_runs`` (10) judged runs that day (the normal score of fewer is not a normal
  score, and 9 runs in perfect order reach only z 3.8),
* ``z`` is at least the bar, from the persistence rule's nominal false rate (a tenth of the detector's
  ``alert_rate``): ``P(Z >= bar) = 5e-5``, 3.89: one statement in 20,000 of independent spread clears it,
* and since its *onset*, the run after its last run that was not slower than expected, its runs ran
  ``ln 1.5`` slower at the median (the floor of the collective signals) and at least the runtime floor
  (1 s) longer together: a statement whose latest runs are back at their usual, or a rise of a few
  per cent over thousands of runs, is not an incident.

Its runs since the onset that ran the floor (1 s) longer than expected are flagged (reason
:data:`TREND_REASON`, signal :data:`TREND_SIGNAL`); runs the per-query detector or an earlier rule
already alerted on keep their own alert. Every constant is the persistence rule's, the collective
machinery's or the detector's; none was chosen on an injected kind. The same day gives the same flags
at any replay speed and after any restart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from scipy.stats import kendalltau

from workbench.analysis._columns import arrival_us, numbers
from workbench.analysis._judged import RULE_RESULT, already_flagged, empty_result, judged_runs, runtime_spread

__all__ = ["TREND_COLUMNS", "TREND_REASON", "TREND_SIGNAL", "TrendParams", "creeping_runs"]

#: The evidence signal of a run of a creeping statement.
TREND_SIGNAL = "exec_trend"
#: Its alert's reason.
TREND_REASON = "creeping_slowdown"
#: Shard columns :func:`creeping_runs` reads.
TREND_COLUMNS = ("instance_id", "query_id", "feature_fingerprint", "arrival_timestamp", "execution_duration_ms",
                 "was_cached", "was_aborted", "pred_mean_ms", "pred_q_ms", "model_version", "is_anomaly")


@dataclass(frozen=True)
class TrendParams:
    """Constants of :func:`creeping_runs`.

    ``min_runs``: judged runs of a statement in the day. ``false_rate``: the chance that a statement of
    independent spread clears the bar (the persistence rule's). ``floor``: the least median log
    residual of the runs since the onset (``ln 1.5``). ``floor_ms``: the least excess of a flagged run,
    and of the runs since the onset together (the detector's runtime floor). ``min_scale`` /
    ``max_scale``: the spread's clip for rows whose version does not say (the detector's defaults).
    """

    min_runs: int = 10
    false_rate: float = 0.00005
    floor: float = math.log(1.5)
    floor_ms: float = 1_000.0
    min_scale: float = 0.25
    max_scale: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.min_runs, bool) or not isinstance(self.min_runs, int) or self.min_runs < 3:
            raise ValueError(f"TrendParams.min_runs must be an integer of at least 3; got {self.min_runs!r}")
        if not (isinstance(self.false_rate, (int, float)) and 0.0 < self.false_rate < 0.5):
            raise ValueError(f"TrendParams.false_rate must be a number in (0, 0.5); got {self.false_rate!r}")
        for name in ("floor", "floor_ms", "min_scale", "max_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f"TrendParams.{name} must be a finite number of at least 0; got {value!r}")
        if self.min_scale > self.max_scale or self.min_scale <= 0:
            raise ValueError(f"TrendParams.min_scale ({self.min_scale}) must be positive and not exceed max_scale "
                             f"({self.max_scale})")

    @property
    def bar(self) -> float:
        """The least normal score of the rise: ``P(Z >= bar) = false_rate`` (3.89)."""
        return NormalDist().inv_cdf(1.0 - self.false_rate)


_RESULT = {**RULE_RESULT, "trend_runs": "int64", "trend_position": "int64"}


def rise_score(values: np.ndarray) -> float:
    """Kendall's rank correlation of ``values`` with their order, as a normal score (0 for fewer than 3)."""
    n = len(values)
    if n < 3 or np.ptp(values) == 0:
        return 0.0
    tau = kendalltau(np.arange(n), values).statistic  # tau-b; the positions have no ties, the values hardly any
    concordance = tau * n * (n - 1) / 2.0  # S
    return float(concordance / math.sqrt(n * (n - 1) * (2 * n + 5) / 18.0))


def creeping_runs(rows: pa.Table, known: np.ndarray | None = None, params: TrendParams | None = None,
                  scales: Mapping[str, tuple[float, float]] | None = None,
                  exclude: np.ndarray | None = None) -> pd.DataFrame:
    """The runs of ``rows`` flagged as runs of a creeping statement (see the module docstring).

    Parameters
    ----------
    rows : pyarrow.Table
        One day of scored query rows (the shard schema; :data:`TREND_COLUMNS`, ``is_anomaly`` optional).
    known : ndarray of bool, optional
        Per row: the version's expectation rests on the statement's own history. None: every row.
    params : TrendParams, optional
        The constants (defaults: 10 runs, z 3.89, ``ln 1.5``, 1 s).
    scales : mapping, optional
        ``model_version -> (min_scale, max_scale)`` of each version's detector.
    exclude : ndarray of bool, optional
        Per row: flagged by another rule already (never flagged here; still judged).

    Returns
    -------
    DataFrame
        One row per flagged run, in arrival order, with the columns of
        :func:`~workbench.analysis.slower_groups.slower_group_runs` (``signal`` :data:`TREND_SIGNAL`,
        ``reason`` :data:`TREND_REASON`; ``group_key`` ``statement``, ``group_value`` its fingerprint,
        ``span_start`` / ``span_end`` the onset's and the last run's arrival, ``group_queries`` the
        statement's judged runs of the day, ``group_ratio`` the median runtime since the onset against
        the expectation, ``group_z`` the rise's normal score, ``score`` that over the bar), with
        ``trend_runs`` (runs since the onset) and ``trend_position`` (the run's place among them, 1 the onset).
    """
    params = params or TrendParams()
    if rows.num_rows == 0:
        return _empty()
    judged = judged_runs(rows, known, ("feature_fingerprint", "instance_id", "arrival_timestamp"))
    if judged.sum() < params.min_runs:
        return _empty()
    idx = np.flatnonzero(judged)
    exec_ms = np.nan_to_num(numbers(rows, "execution_duration_ms"), nan=0.0)[idx]
    pred = numbers(rows, "pred_mean_ms")[idx]
    mean_log, spread = runtime_spread(rows, idx, params.min_scale, params.max_scale, scales)
    residual = np.log1p(exec_ms) - mean_log
    frame = pd.DataFrame({
        "row": idx,
        "instance_id": pc.cast(rows.column("instance_id"), pa.int64()).to_numpy(zero_copy_only=False)[idx],
        "fingerprint": pc.cast(rows.column("feature_fingerprint"), pa.string()).to_numpy(zero_copy_only=False)[idx],
        "arrival_us": arrival_us(rows)[idx],
        "query_id": pc.cast(rows.column("query_id"), pa.int64()).to_numpy(zero_copy_only=False)[idx],
        "residual": residual, "spreads": residual / spread, "observed_ms": exec_ms, "expected_ms": pred,
        "excess_ms": exec_ms - pred,
    })
    frame = frame.sort_values(["instance_id", "fingerprint", "arrival_us", "query_id"], kind="stable",
                              ignore_index=True)
    statement = frame.groupby(["instance_id", "fingerprint"], sort=False).ngroup().to_numpy()
    frame["statement"] = statement
    # Each statement's onset (the run after its last run not slower than expected) and whether its runs since
    # are material, for every statement at once: the rank test runs only on the few that are.
    position = np.arange(len(frame))
    first = np.r_[True, statement[1:] != statement[:-1]]
    last = np.r_[statement[1:] != statement[:-1], True]
    start = np.maximum.accumulate(np.where(first, position, 0))
    not_slower = np.maximum.accumulate(np.where(frame["residual"].to_numpy() <= 0.0, position, -1))
    onset_at_end = np.maximum(not_slower[last] + 1, start[last])  # per statement, in statement order
    onset = onset_at_end[statement]
    since = frame[position >= onset]
    per = since.groupby("statement", sort=False).agg(median=("residual", "median"), excess=("excess_ms", "sum"))
    runs = np.bincount(statement)
    material = per.index[(per["median"] >= params.floor) & (per["excess"] >= params.floor_ms)
                         & (runs[per.index] >= params.min_runs)]
    taken = already_flagged(rows, exclude)
    first_at = start[last]  # per statement, its first run's position
    found = []
    candidates = frame[np.isin(statement, material)]
    for key, runs_of in candidates.groupby("statement", sort=False):
        flagged = _creeping(runs_of, int(onset_at_end[key] - first_at[key]), params)
        if flagged is not None:
            found.append(flagged[~taken[flagged["row"].to_numpy()]])
    found = [f for f in found if len(f)]
    if not found:
        return _empty()
    out = pd.concat(found, ignore_index=True).sort_values(["arrival_us", "instance_id", "query_id"], kind="stable")
    versions = rows.column("model_version").to_numpy(zero_copy_only=False)
    result = pd.DataFrame({
        "row": out["row"].to_numpy(np.int64), "instance_id": out["instance_id"].to_numpy(np.int64),
        "query_id": out["query_id"].to_numpy(np.int64), "model_version": versions[out["row"].to_numpy()],
        "signal": TREND_SIGNAL, "reason": TREND_REASON, "expected_ms": out["expected_ms"].to_numpy(),
        "observed_ms": out["observed_ms"].to_numpy(), "excess_ms": out["excess_ms"].to_numpy(),
        "group_key": "statement", "group_value": out["fingerprint"].to_numpy(),
        "span_start": pd.to_datetime(out["onset_us"].to_numpy(), unit="us", utc=True),
        "span_end": pd.to_datetime(out["last_us"].to_numpy(), unit="us", utc=True),
        "group_queries": out["runs"].to_numpy(np.int64), "group_ratio": out["ratio"].to_numpy(),
        "group_z": out["z"].to_numpy(), "score": out["z"].to_numpy() / params.bar,
        "exec_ratio": out["observed_ms"].to_numpy() / np.maximum(out["expected_ms"].to_numpy(), 1.0),
        "trend_runs": out["trend_runs"].to_numpy(np.int64), "trend_position": out["trend_position"].to_numpy(np.int64),
    })
    return result.astype(_RESULT).reset_index(drop=True)


def _creeping(runs: pd.DataFrame, onset: int, params: TrendParams) -> pd.DataFrame | None:
    """One statement's runs (arrival order; ``onset``: the position of its onset, its runs since material)
    flagged as creeping, or None when they do not rise."""
    z = rise_score(runs["spreads"].to_numpy())
    if z < params.bar:
        return None
    since = runs.iloc[onset:]
    beyond = since["excess_ms"].to_numpy() >= params.floor_ms
    return since[beyond].assign(z=z, runs=len(runs), trend_runs=len(since), trend_position=np.flatnonzero(beyond) + 1,
                                onset_us=int(since["arrival_us"].iloc[0]), last_us=int(runs["arrival_us"].iloc[-1]),
                                ratio=float(np.exp(np.median(since["residual"]))))


def _empty() -> pd.DataFrame:
    return empty_result(_RESULT)
