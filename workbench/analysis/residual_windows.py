"""The scorer's runtime residual per 10-minute window of an instance: a mix-adjusted collective signal.

Raw window levels (mean runtime, slow share) move with the mix of queries: a busier hour of large
statements looks like a slow instance, and a whole instance running 1.5-2x slower hides in the mix
of a mid-size or serverless instance. The model already expects a runtime for every query, from its
fingerprint, shape and instance; the median over a window of ``ln(runtime / expectation)`` moves
when every query of the window runs slower than its own expectation, and hardly when the mix changes.

:func:`residual_windows` computes, per ``(instance_id, window_start)`` (windows aligned as
:mod:`workbench.analysis.windows` aligns them: ``floor(arrival_ms / window_ms) * window_ms``, UTC),
over the window's *judged* queries (executed: not a result-cache hit, not aborted, a positive
execution time; scored; and, when the caller says which, with an expectation that rests on the
statement's own history: see ``known``), their count ``residual_queries`` and the median of
``log1p(execution ms) - log1p(pred_mean_ms)`` (``median_log_residual``). ``pred_mean_ms`` is the
scorer's ``expm1`` of the model's mean log runtime, so this is the detector's own log residual of
runtime. Next to the median, how many of those queries ran past the model's tolerance for them
(``beyond_tolerance_queries``: longer than the larger of ``pred_mean_ms`` and ``pred_q_ms``, the
model's upper quantile): the median moves when most of the window runs slower, this share when a
part of it does (writes behind a vacuum, one user's queries, the reads of one table). It also
counts the executed rows still unscored (``unscored_queries``): a window with any is not final
(the rows are rescored later) and is left for then.

Why ``known``: a statement the model has no history of gets a prior (its instance's typical
runtime), so its residual says what the model does not know, not how fast the instance is. One
user's burst of new heavy statements is an ordinary event (stress log seed 0: 18 of a window's 38
queries, never seen, ran 30-86 s against expectations of ~0.1 s) and moved the window's median to
``ln 1.55`` while the 20 known statements sat at their expectation. The detector's evidence source
(:meth:`workbench.ml.features.FeatureBuilder.reference_source`, ``fingerprint``: the same rule as
``transform_with_evidence``, from two columns) says which expectations rest on history.

:func:`judge_residual_windows` judges windows against the instance's earlier residual windows with
the collective machinery (:mod:`workbench.analysis.collective`, signal ``runtime_residual``: shrunk
hour-of-week reference, MAD spread, ``min(z / z_threshold, excess / ln 1.5) >= 1``, the empirical
check and at least ``min_queries`` judged queries; signal ``beyond_tolerance_share``: the shares'
over-dispersed binomial test, floor 10 points and at least 5 queries beyond the expected share).
Pure functions: the same rows give the same windows and flags.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from workbench.analysis._columns import flags, numbers
from workbench.analysis.collective import CollectiveParams, flag_windows
from workbench.analysis.windows import DEFAULT_WINDOW_MS, arrival_ms

__all__ = ["RESIDUAL_COLUMNS", "RESIDUAL_SIGNAL", "RESIDUAL_SIGNALS", "TOLERANCE_SIGNAL", "judge_residual_windows",
           "residual_windows"]

#: The collective signal (:data:`workbench.analysis.collective.SIGNALS`) of the windows' median residual.
RESIDUAL_SIGNAL = "runtime_residual"
#: The collective signal of the share of their queries past the model's tolerance.
TOLERANCE_SIGNAL = "beyond_tolerance_share"
#: Every signal these windows feed (judged by the scoring app, never by the analytics app).
RESIDUAL_SIGNALS = (RESIDUAL_SIGNAL, TOLERANCE_SIGNAL)
#: Columns of :func:`residual_windows` (and of the ``window_residuals`` table, without ``unscored_queries``).
RESIDUAL_COLUMNS = ("instance_id", "window_start", "residual_queries", "median_log_residual",
                    "beyond_tolerance_queries", "unscored_queries")


def residual_windows(rows: pa.Table, known: np.ndarray | None = None, window_ms: int = DEFAULT_WINDOW_MS
                     ) -> pd.DataFrame:
    """Per ``(instance_id, window_start)``: judged queries, their median log runtime residual, unscored rows.

    Parameters
    ----------
    rows : pyarrow.Table
        Scored query rows (the shard schema, one row per query): ``instance_id``,
        ``arrival_timestamp``, ``execution_duration_ms``, ``was_cached``, ``was_aborted``,
        ``pred_mean_ms`` and ``model_version`` (null while unscored).
    known : ndarray of bool, optional
        Per row of ``rows``: the model's expectation rests on the statement's own history (the
        detector's evidence source ``fingerprint``). Other rows are not judged. None: every row.
    window_ms : int
        Window length (10 minutes).

    Returns
    -------
    DataFrame
        :data:`RESIDUAL_COLUMNS`, one row per window with at least one executed query, sorted by
        instance and window; ``window_start`` tz-aware UTC; ``median_log_residual`` NaN when no
        query is judged yet.
    """
    if rows.num_rows == 0:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
            RESIDUAL_COLUMNS, ("int64", "datetime64[ms, UTC]", "int64", "float64", "int64", "int64"), strict=True)})
    keep = pc.and_(pc.is_valid(rows.column("instance_id")), pc.is_valid(rows.column("arrival_timestamp")))
    known = np.ones(rows.num_rows, dtype=bool) if known is None else np.asarray(known, dtype=bool)
    known = known[keep.to_numpy(zero_copy_only=False)]
    rows = rows.filter(keep)
    exec_ms = np.nan_to_num(numbers(rows, "execution_duration_ms"), nan=0.0)
    executed = ~flags(rows, "was_cached") & ~flags(rows, "was_aborted") & (exec_ms > 0)
    pred = numbers(rows, "pred_mean_ms")
    # the model's own tolerance for the query: its upper quantile (the two regressors may cross)
    tolerance = np.fmax(pred, numbers(rows, "pred_q_ms")) if "pred_q_ms" in rows.column_names else pred
    scored = pc.is_valid(rows.column("model_version")).to_numpy(zero_copy_only=False) & ~np.isnan(pred)
    frame = pd.DataFrame({
        "instance_id": pc.cast(rows.column("instance_id"), pa.int64()).to_numpy(zero_copy_only=False),
        "start_ms": np.floor_divide(arrival_ms(rows), window_ms) * window_ms,
        "judged": executed & scored & known,
        "unscored": executed & ~scored,
        "beyond": executed & scored & known & (exec_ms > np.nan_to_num(tolerance, nan=np.inf)),
        "residual": np.where(executed & scored & known,
                             np.log1p(exec_ms) - np.log1p(np.clip(np.nan_to_num(pred), 0, None)), np.nan),
    })[executed]
    per = frame.groupby(["instance_id", "start_ms"], sort=True).agg(
        residual_queries=("judged", "sum"), median_log_residual=("residual", "median"),
        beyond_tolerance_queries=("beyond", "sum"), unscored_queries=("unscored", "sum")).reset_index()
    per["window_start"] = pd.to_datetime(per["start_ms"], unit="ms", utc=True).astype("datetime64[ms, UTC]")
    return per[list(RESIDUAL_COLUMNS)].astype({"instance_id": "int64", "residual_queries": "int64",
                                               "beyond_tolerance_queries": "int64", "unscored_queries": "int64"})


def judge_residual_windows(windows: pd.DataFrame, history: pd.DataFrame | None = None,
                           params: CollectiveParams | None = None) -> pa.Table:
    """Flagged residual windows as ``window_anomalies`` rows (the signals of :data:`RESIDUAL_SIGNALS`).

    ``windows`` and ``history`` are :func:`residual_windows` frames (or stored ``window_residuals``
    rows); each window is judged against the same instance's windows strictly before it (within
    ``params.lookback``, the last ``recent_guard`` left out) that ``history`` and ``windows`` hold.
    Windows with unscored rows are not judged (they are not final).
    """
    def final(frame: pd.DataFrame | None) -> pd.DataFrame | None:
        if frame is None or "unscored_queries" not in frame:
            return frame
        return frame[frame["unscored_queries"].fillna(0) == 0]

    flagged = flag_windows(final(windows), final(history), params)
    return flagged.filter(pc.is_in(flagged.column("signal"), pa.array(RESIDUAL_SIGNALS)))
