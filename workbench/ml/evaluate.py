"""Evaluation of a model version (or the baseline rules) on one labelled day of a query log.

Metrics (all from :mod:`sklearn.metrics` where one exists):

``PR-AUC``
    Average precision of the anomaly score against ``label_anomaly``.
``F1``, ``precision``, ``recall``, ``alerts per 10k``
    Of the detector's own decision (``is_anomaly``).
``recall[<kind>]``
    Share of each injected kind that alerts.
``F1 @ baseline volume``
    F1 of the top-k scores where k is the number of baseline alerts on the same day, so the
    detector and the baseline are compared at the same alert volume.
``MAE(log)``, ``q90 coverage``
    Mean absolute error of the mean regressor and share of runtimes at or below the q90
    prediction, in ``log1p(ms)``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

from workbench.config import Settings
from workbench.ml._train import load_log_window
from workbench.ml.baseline import baseline_decide
from workbench.ml.exceptions import MLError
from workbench.ml.registry import ModelRegistry
from workbench.ml.scorer import LoadedModel

__all__ = ["detection_metrics", "evaluate", "format_table", "regression_metrics", "top_k_f1"]

logger = logging.getLogger(__name__)


def detection_metrics(labels: np.ndarray, score: np.ndarray, alert: np.ndarray,
                      kinds: Sequence[str | None] | np.ndarray | None = None) -> dict[str, float]:
    """PR-AUC, F1, precision, recall, alerts per 10k and per-kind recall."""
    labels = np.asarray(labels, dtype=bool)
    alert = np.asarray(alert, dtype=bool)
    out: dict[str, float] = {
        "rows": float(len(labels)),
        "anomalies": float(labels.sum()),
        "alerts": float(alert.sum()),
        "PR-AUC": float(average_precision_score(labels, score)) if labels.any() else float("nan"),
        "F1": float(f1_score(labels, alert, zero_division=0.0)),
        "precision": float(precision_score(labels, alert, zero_division=0.0)),
        "recall": float(recall_score(labels, alert, zero_division=0.0)),
        "alerts per 10k": float(alert.mean() * 1e4) if len(alert) else 0.0,
    }
    if kinds is not None:
        kinds_arr = np.asarray(kinds, dtype=object)
        for kind in sorted({k for k in kinds_arr[labels] if k is not None}):
            sel = labels & (kinds_arr == kind)
            out[f"recall[{kind}]"] = float(alert[sel].mean())
    return out


def top_k_f1(labels: np.ndarray, score: np.ndarray, k: int) -> float:
    """F1 when exactly the ``k`` highest scores alert (ties broken by position)."""
    labels = np.asarray(labels, dtype=bool)
    alert = np.zeros(len(labels), dtype=bool)
    if k > 0:
        alert[np.argsort(-np.asarray(score), kind="stable")[:k]] = True
    return float(f1_score(labels, alert, zero_division=0.0))


def regression_metrics(y_log: np.ndarray, mean_log: np.ndarray, q_log: np.ndarray) -> dict[str, float]:
    """``MAE(log)`` of the mean model and ``q90 coverage`` of the quantile model."""
    return {"MAE(log)": float(np.mean(np.abs(y_log - mean_log))), "q90 coverage": float(np.mean(y_log <= q_log))}


def format_table(metrics: dict[str, Any]) -> str:
    """One ``label  value`` line per metric."""
    width = max(len(k) for k in metrics)
    lines = []
    for key, value in metrics.items():
        text = f"{value:.4f}" if isinstance(value, float) and not float(value).is_integer() else str(
            int(value) if isinstance(value, float) else value)
        lines.append(f"{key:<{width}}  {text}")
    return "\n".join(lines)


def evaluate(settings: Settings, day: dt.date, version: str = "current", *, data: Path,
             store: bool = True) -> dict[str, Any]:
    """Score one labelled day of ``data`` and return the metrics (also stored with the version).

    Parameters
    ----------
    settings : Settings
        Where the registry is (``settings.models_dir``).
    day : date
        UTC day of the log to score.
    version : str
        ``"current"``, a version id, or ``"baseline"`` (the earlier rules applied to the current
        version's predictions, ranks per instance over the day).
    data : Path
        Parquet query log with the label columns.
    store : bool
        Append the result to the version's ``evaluations.json``.
    """
    registry = ModelRegistry(settings.models_dir)
    use_baseline = version == "baseline"
    resolved = registry.resolve(None if use_baseline else version)
    table = load_log_window(Path(data), day, 1)
    if table.num_rows == 0 or "label_anomaly" not in table.column_names:
        msg = (f"{data} has no labelled rows on {day} (rows={table.num_rows}, columns with labels: "
               f"{'label_anomaly' in table.column_names}). Pick a day inside the log of a generated file.")
        raise MLError(msg)
    model = LoadedModel.load(registry, resolved)
    out = model.predict(table)
    labels = table.column("label_anomaly").to_numpy(zero_copy_only=False).astype(bool)
    kinds = np.asarray(table.column("label_kind").to_pylist(), dtype=object)
    inst = table.column("instance_id").to_numpy(zero_copy_only=False)
    exec_ms = pa.compute.fill_null(table.column("execution_duration_ms"), 0).to_numpy(zero_copy_only=False)
    b_score, b_alert, _ = baseline_decide(inst, exec_ms, out["pred_mean_ms"], out["pred_q_ms"])
    if use_baseline:
        metrics = detection_metrics(labels, b_score, b_alert, kinds)
    else:
        metrics = detection_metrics(labels, out["score"], out["is_anomaly"], kinds)
        metrics["F1 @ baseline volume"] = top_k_f1(labels, out["score"], int(b_alert.sum()))
        metrics["baseline F1"] = float(f1_score(labels, b_alert, zero_division=0.0))
        metrics["baseline alerts"] = float(b_alert.sum())
    y_log = np.log1p(np.clip(exec_ms.astype(np.float64), 0, None))
    metrics.update(regression_metrics(y_log, out["mean_log"], out["q_log"]))
    result = {"day": day.isoformat(), "detector": "baseline" if use_baseline else "residual",
              "version": resolved, "data": str(data), "metrics": metrics,
              "evaluated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    if store:
        registry.add_evaluation(resolved, result)
    logger.info("evaluation day=%s version=%s detector=%s PR-AUC=%.3f F1=%.3f", day, resolved,
                result["detector"], metrics["PR-AUC"], metrics["F1"])
    return result
