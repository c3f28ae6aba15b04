"""Anomaly decision: standardised residuals of every observed signal, calibrated on a holdout.

For each query and signal the detector computes a z-like residual in log space:

* ``exec``: ``(log1p(exec) - mean) / s`` where ``s = (q90 - mean) / 1.2816`` is the per-query
  spread implied by the quantile model (floored at ``min_scale``);
* ``queue``, ``scan``, ``spill``: ``(log1p(x) - median) / (IQR / 1.349)`` against the
  fingerprint's history in the training window (instance history when the fingerprint is rare).

Each residual is put on a common scale with the training holdout: ``u = (z - median_h) /
(q_h - median_h)`` with ``q_h`` its ``reference_quantile`` on the holdout. The anomaly score is
``max(u)`` over signals, the reason names the signal that attains it, and the threshold is the
``1 - alert_rate`` quantile of the holdout scores (a split-conformal calibration: on data like the
holdout, about ``alert_rate`` of queries alert). Every number is a function of the row and the
model version only, so the decision does not depend on how rows are batched.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workbench.ml.exceptions import NotFittedError

__all__ = ["REASONS", "ResidualDetector"]

#: Reason string per signal.
REASONS: dict[str, str] = {
    "exec": "slow_execution",
    "queue": "long_queue",
    "scan": "large_scan",
    "spill": "large_spill",
}
_Z90 = 1.2815515655446004  # standard normal 0.9 quantile
_IQR_TO_SIGMA = 1.349


class ResidualDetector:
    """Per-query anomaly score from standardised log-space residuals.

    Parameters
    ----------
    alert_rate : float, default=0.0025
        Target share of alerting queries on data like the training holdout.
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

    def __init__(self, *, alert_rate: float = 0.0025, signals: tuple[str, ...] = tuple(REASONS),
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
                center = pred_mean_log
                scale = np.maximum((pred_q_log - pred_mean_log) / z_q, self.min_scale)
            else:
                center, iqr = references[s]
                scale = np.maximum(iqr / _IQR_TO_SIGMA, self.min_scale)
            out[s] = (observed_log[s] - center) / scale
        return out

    def fit(self, residuals: dict[str, np.ndarray]) -> ResidualDetector:
        """Calibrate per-signal scales and the threshold on holdout residuals."""
        if not 0.0 < self.alert_rate < 0.5:
            msg = f"The 'alert_rate' parameter of ResidualDetector must be in (0, 0.5). Got {self.alert_rate}."
            raise ValueError(msg)
        self.center_: dict[str, float] = {}
        self.spread_: dict[str, float] = {}
        for s in self.signals:
            z = residuals[s]
            c = float(np.median(z))
            self.center_[s] = c
            self.spread_[s] = max(float(np.quantile(z, self.reference_quantile)) - c, 1e-3)
        score, _ = self._score(residuals)
        self.threshold_ = float(np.quantile(score, 1.0 - self.alert_rate))
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
