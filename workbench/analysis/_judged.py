"""The runs a settled day's per-query rules judge, and the runtime spread each is judged by.

Shared by :mod:`workbench.analysis.persistence` and :mod:`workbench.analysis.slower_groups`: the same
rows are judged (executed, scored, expected from the statement's own history) and a run's residual is
measured in the same spreads, so the two rules of the scoring app's deferred step cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from workbench.analysis._columns import flags, numbers

__all__ = ["RULE_RESULT", "Z90", "already_flagged", "empty_result", "judged_runs", "offline_scored", "runtime_spread"]

Z90 = 1.2815515655446004  # the standard normal 0.9 quantile: the upper regressor's quantile
#: The flagged rows' columns of the rules that report in the slower groups' shape (slower groups, a creeping
#: statement, a moved workload), each rule adding its own after them.
RULE_RESULT = {"row": "int64", "instance_id": "int64", "query_id": "int64", "model_version": "object",
               "signal": "object", "reason": "object", "expected_ms": "float64", "observed_ms": "float64",
               "excess_ms": "float64", "group_key": "object", "group_value": "object",
               "span_start": "datetime64[ms, UTC]", "span_end": "datetime64[ms, UTC]", "group_queries": "int64",
               "group_ratio": "float64", "group_z": "float64", "score": "float64", "exec_ratio": "float64"}
#: Columns the offline wrappers take from the caller's scoring rather than from the log.
_GIVEN = ("pred_mean_ms", "pred_q_ms", "model_version", "is_anomaly")


def judged_runs(rows: pa.Table, known: np.ndarray | None, required: Sequence[str]) -> np.ndarray:
    """Per row: executed (not a result-cache hit, not aborted, a positive execution time), scored,
    ``known`` (the version's expectation rests on the statement's own history; None: every row)
    and non-null in every column of ``required``."""
    known = np.ones(rows.num_rows, dtype=bool) if known is None else np.asarray(known, dtype=bool)
    exec_ms = np.nan_to_num(numbers(rows, "execution_duration_ms"), nan=0.0)
    scored = (pc.is_valid(rows.column("model_version")).to_numpy(zero_copy_only=False)
              & ~np.isnan(numbers(rows, "pred_mean_ms")))
    judged = ~flags(rows, "was_cached") & ~flags(rows, "was_aborted") & (exec_ms > 0) & scored & known
    for column in required:
        judged &= pc.is_valid(rows.column(column)).to_numpy(zero_copy_only=False)
    return judged


def runtime_spread(rows: pa.Table, idx: np.ndarray, min_scale: float, max_scale: float,
                   scales: Mapping[str, tuple[float, float]] | None) -> tuple[np.ndarray, np.ndarray]:
    """For rows ``idx``: ``(mean_log, spread)``, the version's mean expectation in ``log1p`` ms and
    its runtime spread ``(log q90 - log mean) / 1.2816``, clipped to each version's ``scales`` (else
    ``[min_scale, max_scale]``), as :meth:`workbench.ml.detector.ResidualDetector.residuals` reads it."""
    versions = rows.column("model_version").to_numpy(zero_copy_only=False)[idx]
    lo = np.full(len(idx), min_scale)
    hi = np.full(len(idx), max_scale)
    for version, (v_lo, v_hi) in (scales or {}).items():
        mine = versions == version
        lo[mine], hi[mine] = v_lo, v_hi
    mean_log = np.log1p(np.clip(numbers(rows, "pred_mean_ms")[idx], 0.0, None))
    q_log = np.log1p(np.clip(np.nan_to_num(numbers(rows, "pred_q_ms")[idx], nan=0.0), 0.0, None))
    return mean_log, np.clip((q_log - mean_log) / Z90, lo, hi)


def offline_scored(table: pa.Table, columns: Sequence[str], pred_mean_ms: np.ndarray, pred_q_ms: np.ndarray,
                   alerted: np.ndarray, version: str) -> pa.Table:
    """One day of a log scored offline by one ``version`` as the shards hold it: ``columns`` of
    ``table`` with the caller's ``pred_mean_ms``, ``pred_q_ms`` and per-query decision ``alerted``
    (for the evaluations, which score a log's rows rather than read shards)."""
    scored = table.select([c for c in columns if c in table.column_names and c not in _GIVEN])
    return (scored.append_column("pred_mean_ms", pa.array(np.asarray(pred_mean_ms, dtype=float)))
            .append_column("pred_q_ms", pa.array(np.asarray(pred_q_ms, dtype=float)))
            .append_column("model_version", pa.array([version] * table.num_rows, pa.string()))
            .append_column("is_anomaly", pa.array(np.asarray(alerted, dtype=bool))))


def empty_result(columns: dict[str, str]) -> pd.DataFrame:
    """A rule's result without rows: ``columns`` (name -> dtype) and nothing else."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in columns.items()})


def already_flagged(rows: pa.Table, exclude: np.ndarray | None) -> np.ndarray:
    """Per row: alerted by the per-query detector (``is_anomaly``) or flagged by an earlier rule (``exclude``):
    a run keeps that alert and is not flagged again."""
    flagged = flags(rows, "is_anomaly")
    return flagged if exclude is None else flagged | np.asarray(exclude, dtype=bool)
