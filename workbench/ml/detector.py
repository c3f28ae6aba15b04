"""Anomaly decision: standardised residuals of every observed signal, calibrated on a holdout.

For each query and signal the detector computes a z-like residual in log space:

* ``exec``: ``(log1p(exec) - mean) / s`` where ``s = (q90 - mean) / 1.2816`` is the per-query
  spread implied by the quantile model (floored at ``min_scale``);
* ``scan``: ``(log1p(MB scanned) - median) / (IQR / 1.349)`` against the fingerprint's history in
  the training window (the instance's history when the fingerprint is rare);
* ``spill``: ``log1p(MB spilled) - log1p(MB scanned)`` (spill normally stays well below the scan);
* ``queue``: ``log1p(queue) - max(usual log queue, predicted log exec)``: waiting longer than the
  fingerprint usually waits *and* longer than the query is expected to run.

Each residual is put on a common scale with the training holdout: ``u = (z - median_h) /
(q99_h - median_h)``. The anomaly score is ``max(u)`` over signals and the reason names the signal
that attains it.

The threshold targets ``alert_rate`` false alerts on normal traffic. The holdout comes from the
training window and may itself contain anomalies (at a rate that may exceed ``alert_rate``), so
its raw ``1 - alert_rate`` quantile would land inside the anomalies. Instead the tail is
extrapolated from the holdout's 95th and 99th percentiles (robust to under 1 % contamination),
assuming an exponential tail: ``threshold = q95 + (q99 - q95) / ln 5 * ln(0.05 / alert_rate)``
(split-conformal calibration with a peaks-over-threshold tail). Every number is a function of the
row and the model version only, so decisions do not depend on how rows are batched.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workbench.ml.exceptions import NotFittedError

__all__ = ["REASONS", "ResidualDetector"]

#: Reason string per signal.
REASONS: dict[str, str] = {
    "exec": "slow_execution",
    "queue": "queue_longer_than_run",
    "scan": "scan_explosion",
    "spill": "spill_exceeds_scan",
}
_Z90 = 1.2815515655446004  # standard normal 0.9 quantile
_IQR_TO_SIGMA = 1.349


class ResidualDetector:
    """Per-query anomaly score from standardised log-space residuals.

    Parameters
    ----------
    alert_rate : float, default=0.001
        Target share of *normal* queries that alert (false alerts); true anomalies come on top.
    signals : tuple of str, default=("exec", "queue", "scan", "spill")
        Observed signals to score (subset of :data:`REASONS`).
    min_scale : float, default=0.25
        Floor of every spread in log units (a fingerprint that always runs in 100 ms still
        tolerates ~28 % variation per unit of z).
    reference_quantile : float, default=0.99
        Holdout quantile that maps to ``u = 1`` for each signal.
    quantile : float, default=0.9
        The quantile of the upper regressor (to turn its distance to the mean into a sigma).
    """

    def __init__(self, *, alert_rate: float = 0.001, signals: tuple[str, ...] = tuple(REASONS),
                 min_scale: float = 0.25, reference_quantile: float = 0.99, quantile: float = 0.9) -> None:
        self.alert_rate = alert_rate
        self.signals = signals
        self.min_scale = min_scale
        self.reference_quantile = reference_quantile
        self.quantile = quantile

    def residuals(self, observed_log: dict[str, np.ndarray], pred_mean_log: np.ndarray,
                  pred_q_log: np.ndarray, references: dict[str, tuple[np.ndarray, np.ndarray]]
                  ) -> dict[str, np.ndarray]:
        """Raw standardised residual ``z`` of each signal (positive = more than expected)."""
        unknown = [s for s in self.signals if s not in REASONS]
        if unknown:
            msg = (f"The 'signals' parameter of ResidualDetector must be a subset of {tuple(REASONS)}. "
                   f"Got unknown {unknown}.")
            raise ValueError(msg)
        z_q = _Z90 if self.quantile == 0.9 else float(np.sqrt(2) * _erfinv(2 * self.quantile - 1))
        out = {}
        for s in self.signals:
            if s == "exec":
                scale = np.maximum((pred_q_log - pred_mean_log) / z_q, self.min_scale)
                out[s] = (observed_log[s] - pred_mean_log) / scale
            elif s == "scan":
                center, iqr = references[s]
                out[s] = (observed_log[s] - center) / np.maximum(iqr / _IQR_TO_SIGMA, self.min_scale)
            elif s == "spill":
                out[s] = observed_log["spill"] - observed_log["scan"]
            else:  # queue
                out[s] = observed_log["queue"] - np.maximum(references["queue"][0], pred_mean_log)
        return out

    def fit(self, residuals: dict[str, np.ndarray]) -> ResidualDetector:
        """Calibrate per-signal scales and the threshold on holdout residuals."""
        if not 0.0 < self.alert_rate < 0.05:
            msg = f"The 'alert_rate' parameter of ResidualDetector must be in (0, 0.05). Got {self.alert_rate}."
            raise ValueError(msg)
        self.center_: dict[str, float] = {}
        self.spread_: dict[str, float] = {}
        for s in self.signals:
            z = residuals[s]
            c = float(np.median(z))
            self.center_[s] = c
            self.spread_[s] = max(float(np.quantile(z, self.reference_quantile)) - c, 1e-3)
        score, _ = self._score(residuals)
        q95, q99 = np.quantile(score, [0.95, 0.99])
        beta = max(float(q99 - q95), 1e-6) / np.log(5.0)
        self.threshold_ = float(q95 + beta * np.log(0.05 / self.alert_rate))
        self.n_calibration_ = len(score)
        return self

    def _score(self, residuals: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        u = np.stack([(residuals[s] - self.center_[s]) / self.spread_[s] for s in self.signals])
        which = np.argmax(u, axis=0)
        return np.take_along_axis(u, which[None, :], axis=0)[0], which

    def decide(self, residuals: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(score, is_anomaly, reason)``; reason is ``None`` for non-anomalies."""
        if not hasattr(self, "threshold_"):
            msg = "This ResidualDetector is not calibrated yet; call 'fit' (or from_dict) before 'decide'."
            raise NotFittedError(msg)
        score, which = self._score(residuals)
        alert = score >= self.threshold_
        names = np.array([REASONS[s] for s in self.signals], dtype=object)
        reason = np.where(alert, names[which], None)
        return score, alert, reason

    def to_dict(self) -> dict[str, Any]:
        """JSON-able parameters and calibration (stored in ``model.json``)."""
        return {
            "params": {"alert_rate": self.alert_rate, "signals": list(self.signals),
                       "min_scale": self.min_scale, "reference_quantile": self.reference_quantile,
                       "quantile": self.quantile},
            "center": self.center_, "spread": self.spread_, "threshold": self.threshold_,
            "n_calibration": self.n_calibration_,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> ResidualDetector:
        """Rebuild a calibrated detector from :meth:`to_dict`."""
        params = dict(state["params"])
        params["signals"] = tuple(params["signals"])
        det = cls(**params)
        det.center_ = {k: float(v) for k, v in state["center"].items()}
        det.spread_ = {k: float(v) for k, v in state["spread"].items()}
        det.threshold_ = float(state["threshold"])
        det.n_calibration_ = int(state["n_calibration"])
        return det


def _erfinv(y: float) -> float:
    from scipy.special import erfinv

    return float(erfinv(y))
