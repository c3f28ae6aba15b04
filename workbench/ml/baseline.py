"""The earlier implementation's anomaly rules, kept as the named baseline ``baseline``.

Flag when ``long AND (ratio OR delta OR misrank)`` (pulse-study section 2.7):

* long: ``exec >= 60 s``; ratio: ``exec / max(pred, 1) >= 10``; delta: ``exec - pred >= 120 s``;
* misrank: percentile rank of the actual runtime ``>= 0.99`` and of the prediction ``<= 0.90``
  among the queries of the same instance. The earlier code ranked within each inference batch;
  here the ranks are computed per instance **over the whole scored frame** (one day in
  :func:`~workbench.ml.evaluate.evaluate`), which is the most favourable reading of the rule.

``pred`` is ``max(mean, q90)`` of the same model version the detector uses, so comparisons run on
identical predictions. The continuous score used for PR-AUC is the under-prediction ratio among
long queries (0 otherwise), plus 1e6 for flagged rows so flagged rows rank first.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["baseline_decide"]

LONG_MS = 60_000.0
RATIO = 10.0
DELTA_MS = 120_000.0


def baseline_decide(instance_id: np.ndarray, exec_ms: np.ndarray, pred_mean_ms: np.ndarray,
                    pred_q_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(score, is_anomaly, reason)`` of the earlier rules over one scored frame."""
    true = np.nan_to_num(exec_ms.astype(np.float64), nan=0.0)
    pred = np.maximum(pred_mean_ms, pred_q_ms)
    ratio = true / np.maximum(pred, 1.0)
    frame = pd.DataFrame({"inst": instance_id, "true": true, "pred": pred})
    grouped = frame.groupby("inst", sort=False)
    true_q = grouped["true"].rank(pct=True, method="average").to_numpy()
    pred_q = grouped["pred"].rank(pct=True, method="average").to_numpy()
    long = true >= LONG_MS
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
