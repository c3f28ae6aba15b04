"""The earlier implementation's anomaly rules, kept as the named baseline ``baseline``.

Flag when ``long AND (ratio OR delta OR misrank)`` (pulse-study section 2.7):

* long: ``exec >= 60 s``; ratio: ``exec / max(pred, 1) >= 10``; delta: ``exec - pred >= 120 s``;
* misrank: percentile rank of the actual runtime ``>= 0.99`` and of the prediction ``<= 0.90``
  among the queries of the same instance. The earlier code ranked within each inference batch;
  here the ranks are computed per instance **over the whole scored frame** (one day in
  :func:`~workbench.ml.evaluate.evaluate`), which is the most favourable reading of the rule.

Aborted queries are neither ranked nor flagged: the earlier code dropped them before scoring
(pulse-study 2.4, ``drop_aborted=True`` at inference too), so a long aborted query never alerted.

``pred`` is ``max(mean, q90)`` of the same model version the detector uses, so comparisons run on
identical predictions. The continuous score used for PR-AUC is the under-prediction ratio among
long queries (0 otherwise), plus 1e6 for flagged rows so flagged rows rank first.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["baseline_decide", "baseline_for_table"]

LONG_MS = 60_000.0
RATIO = 10.0
DELTA_MS = 120_000.0


def baseline_decide(instance_id: np.ndarray, exec_ms: np.ndarray, pred_mean_ms: np.ndarray,
                    pred_q_ms: np.ndarray, aborted: np.ndarray | None = None,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(score, is_anomaly, reason)`` of the earlier rules over one scored frame; ``aborted`` rows (a
    boolean mask) are left out of the ranks and get score 0, no alert."""
    true = np.nan_to_num(exec_ms.astype(np.float64), nan=0.0)
    pred = np.maximum(pred_mean_ms, pred_q_ms)
    ratio = true / np.maximum(pred, 1.0)
    kept = np.ones(len(true), dtype=bool) if aborted is None else ~np.asarray(aborted, dtype=bool)
    frame = pd.DataFrame({"inst": instance_id, "true": true, "pred": pred})[kept]
    grouped = frame.groupby("inst", sort=False)
    true_q = np.zeros(len(true))
    pred_q = np.ones(len(true))
    true_q[kept] = grouped["true"].rank(pct=True, method="average").to_numpy()
    pred_q[kept] = grouped["pred"].rank(pct=True, method="average").to_numpy()
    long = (true >= LONG_MS) & kept
    by_ratio = long & (ratio >= RATIO)
    by_delta = long & (true - pred >= DELTA_MS)
    by_rank = long & (true_q >= 0.99) & (pred_q <= 0.90)
    alert = by_ratio | by_delta | by_rank
    reason = np.where(by_ratio, "underestimated_ratio",
                      np.where(by_delta, "underestimated_delta",
                               np.where(by_rank, "misrank_quantiles", None))).astype(object)
    reason[~alert] = None
    score = np.where(long, ratio, 0.0) + np.where(alert, 1e6, 0.0)
    return score, alert, reason


def baseline_for_table(table: pa.Table, prediction: Mapping[str, np.ndarray],
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`baseline_decide` over a log's rows (``instance_id``, ``execution_duration_ms`` with NULL as 0,
    ``was_aborted`` with NULL as not aborted) and a model's ``pred_mean_ms`` / ``pred_q_ms`` for them."""
    def column(name: str, null: object) -> np.ndarray:
        return pc.fill_null(table.column(name), null).to_numpy(zero_copy_only=False)

    aborted = column("was_aborted", False) if "was_aborted" in table.column_names else None
    return baseline_decide(column("instance_id", 0), column("execution_duration_ms", 0),
                           np.asarray(prediction["pred_mean_ms"]), np.asarray(prediction["pred_q_ms"]), aborted)
