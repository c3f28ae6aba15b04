"""Runtime regressors: a mean and a q-quantile HistGradientBoosting model on ``log1p(ms)``.

Both models take the one ``float32`` matrix built by :class:`~workbench.ml.features.FeatureBuilder`
(categoricals are already ordinal codes, so no native categorical split is needed: skl2onnx
ignores those). :func:`export_onnx` writes one ONNX graph per model (opset 17, dynamic batch,
one input ``X`` of shape ``[N, F]``); :class:`OnnxPair` runs them with ONNX Runtime.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from threadpoolctl import threadpool_limits

if TYPE_CHECKING:  # scoring needs only ONNX Runtime: sklearn (~1-2 s to import) loads for training
    from sklearn.ensemble import HistGradientBoostingRegressor

from workbench.ml.exceptions import NotFittedError, ParityError

__all__ = ["DurationModel", "OnnxPair", "export_onnx", "parity_max_abs_diff"]

logger = logging.getLogger(__name__)

TARGET_OPSET = 17


class DurationModel:
    """Mean and upper-quantile regressors of ``log1p(execution_duration_ms)``.

    Parameters
    ----------
    quantile : float, default=0.9
        Quantile of the second model; its distance to the mean model is the per-query spread
        the detector standardises residuals with.
    max_iter, learning_rate, max_leaf_nodes, min_samples_leaf, l2_regularization
        Passed to both :class:`~sklearn.ensemble.HistGradientBoostingRegressor` (``learning_rate``:
        the mean model's only).
    quantile_learning_rate : float, default=0.2
        Shrinkage of the quantile model. Its pinball loss has no curvature, so each tree fits the
        sign of the residuals and its leaves are then set to the residuals' quantile (a line
        search); the shrinkage only slows that descent. On a 400k-row day, 0.2 reaches the same
        blocked-holdout pinball loss as 0.1 (0.1242 vs 0.1241) and q90 coverage (0.910 vs 0.912)
        in 54 iterations instead of 101, at ~70 CPU ms per iteration.
    n_iter_no_change : int, default=10
        Early-stopping patience: the fit stops when none of the last ``n_iter_no_change``
        iterations lowered the validation loss by more than ``tol``.
    tol : float, default=1e-4
        Smallest validation-loss improvement (log units: squared error for the mean model,
        pinball loss for the quantile model) that counts as progress. The default of
        scikit-learn (1e-7) lets a fit go on for tens of iterations that lower the holdout loss
        by less than 0.001 % each (400k-row day, quantile model at learning rate 0.1: 161
        iterations instead of 101 for a pinball loss of 0.1241 either way).
    mean_max_rows : int or None, default=150_000
        The mean model is fitted on a seeded sample of at most this many rows (``None``: all).
        Detection quality does not depend on its rows beyond ~150k (``benchmarks/detection.py``
        on the demo and the 13-kind log, five training seeds: per-kind recall, PR-AUC and false
        alerts at 150k rows equal those at 345k within the spread between seeds), while its fit
        cost grows with them: on a 400k-row day the cap takes it from ~4 to ~1 CPU seconds.
    quantile_max_rows : int, default=200_000
        The same for the quantile model. Its rows matter more: the detector's spread comes from
        it, and 100k rows cost ~0.015 per-kind PR-AUC (the tail of a q90 is estimated from the
        10 % of rows above it), so it keeps 200k.
    n_threads : int, optional
        OpenMP threads of each fit. ``None``: 1 below 50,000 rows (thread start-up and spin
        costs dominate on small data, badly so on a busy 2-core machine), else half the cores
        (at least 1) for the mean model and all of them for the quantile model, the longer fit,
        which so gets every core once the mean model is done. On 2 cores (the two fits alone on a
        400k-row day, load ~3.4, 4 runs each): 1+2 threads 4.2-6.3 s wall (median ~4.45), 1+1
        4.4-7.4 s, 2+2 4.8-7.1 s (~1 CPU s more: OpenMP barriers of 4 threads on 2 cores). The
        fitted trees do not depend on the thread count (scikit-learn's HGB sums each feature's
        histogram in one thread), so neither do the exported models.
    random_state : int, default=0
        Seed of both models.
    """

    def __init__(self, *, quantile: float = 0.9, max_iter: int = 200, learning_rate: float = 0.1,
                 quantile_learning_rate: float = 0.2,
                 max_leaf_nodes: int = 31, min_samples_leaf: int = 50, l2_regularization: float = 0.1,
                 n_iter_no_change: int = 10, tol: float = 1e-4, mean_max_rows: int | None = 150_000,
                 quantile_max_rows: int = 200_000, n_threads: int | None = None, random_state: int = 0) -> None:
        self.quantile = quantile
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.quantile_learning_rate = quantile_learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.min_samples_leaf = min_samples_leaf
        self.l2_regularization = l2_regularization
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.mean_max_rows = mean_max_rows
        self.quantile_max_rows = quantile_max_rows
        self.n_threads = n_threads
        self.random_state = random_state

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters (for ``model.json``)."""
        return {k: getattr(self, k) for k in ("quantile", "max_iter", "learning_rate", "quantile_learning_rate",
                                             "max_leaf_nodes",
                                             "min_samples_leaf", "l2_regularization", "n_iter_no_change", "tol",
                                             "mean_max_rows", "quantile_max_rows", "n_threads", "random_state")}

    def _hgb(self, learning_rate: float, **loss: Any) -> HistGradientBoostingRegressor:
        from sklearn.ensemble import HistGradientBoostingRegressor

        return HistGradientBoostingRegressor(
            max_iter=self.max_iter, learning_rate=learning_rate, max_leaf_nodes=self.max_leaf_nodes,
            min_samples_leaf=self.min_samples_leaf, l2_regularization=self.l2_regularization,
            early_stopping=True, validation_fraction=0.1, n_iter_no_change=self.n_iter_no_change, tol=self.tol,
            random_state=self.random_state, **loss,
        )

    def fit(self, X: np.ndarray, y_log: np.ndarray, X_val: np.ndarray | None = None,
            y_val: np.ndarray | None = None, *,
            on_fitted: Callable[[str, HistGradientBoostingRegressor], object] | None = None) -> DurationModel:
        """Fit both models on features ``X`` and the log target ``y_log``.

        ``X_val, y_val``: the validation rows of early stopping (training passes its blocked
        holdout: hours whose new fingerprints are as unseen as tomorrow's, so the fits stop where
        the next day's error stops falling). Without them each fit holds out a random 10 % of
        its rows, whose fingerprints it has seen, and keeps improving on them for longer.

        The two fits run at the same time, each in its own Python thread (OpenMP threads: see
        ``n_threads``): an HGB fit keeps ~1 of 2 cores busy (its per-iteration Python work and
        small parallel regions leave the other idle), so overlapping them cuts the wall time by
        about the shorter fit. Each thread sets its own OpenMP thread count (OpenMP thread counts
        are per calling thread), and the trees do not depend on it, so they are identical to
        sequential fits (tests/test_train_fit.py compares the ONNX bytes).

        ``on_fitted(name, estimator)``: called in a fit's thread as soon as that model
        (``"mean"`` or ``"quantile"``) is fitted, while the other may still be fitting (training
        exports each model then, filling the core the shorter fit leaves idle). An exception in
        it fails the fit.
        """
        if not 0.5 < self.quantile < 1.0:
            msg = f"The 'quantile' parameter of DurationModel must be in (0.5, 1). Got {self.quantile}."
            raise ValueError(msg)
        small = len(y_log) < 50_000
        mean_threads = self.n_threads or (1 if small else max(1, _usable_cores() // 2))
        quantile_threads = self.n_threads or (1 if small else _usable_cores())
        Xm, ym = self._sample(X, y_log, self.mean_max_rows)
        Xq, yq = self._sample(X, y_log, self.quantile_max_rows)
        jobs = {"mean": (self._hgb(self.learning_rate, loss="squared_error"), Xm, ym, mean_threads),
                "quantile": (self._hgb(self.quantile_learning_rate, loss="quantile", quantile=self.quantile),
                             Xq, yq, quantile_threads)}
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="hgb-fit") as pool:
            futures = {name: pool.submit(_timed_fit, est, Xs, ys, threads, X_val, y_val,
                                         None if on_fitted is None else partial(on_fitted, name))
                       for name, (est, Xs, ys, threads) in jobs.items()}
            seconds = {name: future.result() for name, future in futures.items()}
        self.mean_, self.quantile_model_ = jobs["mean"][0], jobs["quantile"][0]
        self.fit_seconds_ = seconds
        self.n_iter_ = {"mean": int(self.mean_.n_iter_), "quantile": int(self.quantile_model_.n_iter_)}
        logger.info("duration models fitted rows=%d wall_s=%.1f mean_s=%.1f quantile_s=%.1f iters=%s",
                    len(y_log), time.perf_counter() - t0, seconds["mean"], seconds["quantile"], self.n_iter_)
        return self

    def _sample(self, X: np.ndarray, y: np.ndarray, cap: int | None) -> tuple[np.ndarray, np.ndarray]:
        """A seeded uniform sample of at most ``cap`` rows (in their original order)."""
        if cap is None or len(y) <= cap:
            return X, y
        rows = np.sort(np.random.default_rng(self.random_state).choice(len(y), cap, replace=False))
        return X[rows], y[rows]

    def predict_log(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """sklearn predictions ``(mean, quantile)`` in log space."""
        if not hasattr(self, "mean_"):
            msg = "This DurationModel is not fitted yet; call 'fit' before 'predict_log'."
            raise NotFittedError(msg)
        return self.mean_.predict(X), self.quantile_model_.predict(X)


def _usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks (macOS, Windows)
        return os.cpu_count() or 1


def _timed_fit(estimator: HistGradientBoostingRegressor, X: np.ndarray, y: np.ndarray,
               threads: int | None, X_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
               on_fitted: Callable[[HistGradientBoostingRegressor], object] | None = None) -> float:
    """Fit ``estimator`` with ``threads`` OpenMP threads (``None``: all cores), snap its thresholds to
    float32, then call ``on_fitted(estimator)``; the fit's wall seconds."""
    t0 = time.perf_counter()
    with threadpool_limits(limits=threads, user_api="openmp"):
        if X_val is not None and y_val is not None and len(y_val):
            estimator.fit(X, y, X_val=X_val, y_val=y_val)
        else:
            estimator.fit(X, y)
    seconds = time.perf_counter() - t0
    _snap_thresholds_to_float32(estimator)
    if on_fitted is not None:
        on_fitted(estimator)
    return seconds


def _snap_thresholds_to_float32(estimator: HistGradientBoostingRegressor) -> None:
    """Replace every split threshold ``t`` by the largest float32 ``<= t``.

    HGB thresholds are float64 midpoints between neighbouring feature values, while ONNX
    TreeEnsemble compares in float32. A float32 input ``x`` satisfies ``x <= t`` exactly when it
    satisfies ``x <= floor32(t)``, so this leaves sklearn's predictions on float32 features
    unchanged and makes the ONNX comparisons identical (without it, values next to a threshold
    flip branches: a 0.05 log-space parity error was seen on generated data).
    """
    for stage in estimator._predictors:
        for predictor in stage:
            t = predictor.nodes["num_threshold"]
            f = t.astype(np.float32)
            above = f.astype(np.float64) > t
            f[above] = np.nextafter(f[above], np.float32(-np.inf))
            predictor.nodes["num_threshold"] = f.astype(np.float64)


def export_onnx(estimator: HistGradientBoostingRegressor, n_features: int) -> bytes:
    """Serialised ONNX graph of a fitted regressor: input ``X`` float32 ``[N, n_features]``."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    with warnings.catch_warnings():  # skl2onnx passes bools where protobuf 6 expects ints
        warnings.simplefilter("ignore", DeprecationWarning)
        onx = to_onnx(estimator, initial_types=[("X", FloatTensorType([None, n_features]))],
                      target_opset=TARGET_OPSET)
    return onx.SerializeToString()


class OnnxPair:
    """ONNX Runtime sessions of the mean and quantile models (CPU, bounded intra-op threads).

    Parameters
    ----------
    mean, quantile : bytes or Path
        The two serialised graphs (or their files).
    intra_op_threads : int, default=2
        ONNX Runtime intra-op threads; inter-op parallelism is off (one session call at a time).
    """

    def __init__(self, mean: bytes | Path, quantile: bytes | Path, *, intra_op_threads: int = 2) -> None:
        self.mean = mean
        self.quantile = quantile
        self.intra_op_threads = intra_op_threads
        import onnxruntime as ort  # here, not at import: an app starts (and stores unscored rows) without it

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._sessions = [
            ort.InferenceSession(str(m) if isinstance(m, Path) else m, sess_options=opts,
                                 providers=["CPUExecutionProvider"])
            for m in (mean, quantile)
        ]

    def predict_log(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ONNX predictions ``(mean, quantile)`` in log space (float64)."""
        if len(X) == 0:
            empty = np.zeros(0)
            return empty, empty
        X = np.ascontiguousarray(X, dtype=np.float32)
        return self._run(0, X), self._run(1, X)

    def predict_mean_log(self, X: np.ndarray) -> np.ndarray:
        """The mean model's ONNX predictions alone, in log space (float64)."""
        if len(X) == 0:
            return np.zeros(0)
        return self._run(0, np.ascontiguousarray(X, dtype=np.float32))

    def _run(self, model: int, X: np.ndarray) -> np.ndarray:
        """One session's predictions (0: mean, 1: quantile) of a C-contiguous ``float32`` matrix."""
        return self._sessions[model].run(None, {"X": X})[0].reshape(-1).astype(np.float64)


def parity_max_abs_diff(model: DurationModel, pair: OnnxPair, X: np.ndarray, *,
                        tolerance: float | None = None,
                        onnx_log: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """Largest ``|sklearn - ONNX|`` over both models on ``X`` (log space).

    ``onnx_log``: ``pair``'s predictions on ``X`` when the caller already made them (saves a run).
    Raises :class:`ParityError` when ``tolerance`` is given and exceeded.
    """
    sk_mean, sk_q = model.predict_log(X)
    ox_mean, ox_q = onnx_log if onnx_log is not None else pair.predict_log(X)
    diff = float(max(np.max(np.abs(sk_mean - ox_mean), initial=0.0),
                     np.max(np.abs(sk_q - ox_q), initial=0.0)))
    if tolerance is not None and not diff <= tolerance:
        msg = (f"The ONNX export does not reproduce the sklearn models: max |diff| in log space is "
               f"{diff:.3g} on {len(X)} holdout rows, above the tolerance {tolerance:g}. The version is "
               "not registered; check the skl2onnx/onnxruntime versions (pinned in pyproject.toml).")
        raise ParityError(msg)
    return diff
