"""The ML engine's offline core: features, regressors, detector, registry, scoring, training.

What the streaming pipeline calls::

    from workbench.ml import Scorer, TrainingSupervisor
    scorer = Scorer(settings.models_dir)          # follows models_dir/CURRENT, hot-swaps
    scored = scorer.score(record_batch)           # + pred_mean_ms, pred_q_ms, score, is_anomaly, ...
    supervisor = TrainingSupervisor(settings, every_n_days=1)
    supervisor.maybe_schedule(event_day); supervisor.poll()

Names are imported lazily so that ``import workbench.ml`` stays cheap.
"""

from __future__ import annotations

import os

from workbench._lazy import lazy_attributes

# Before sklearn loads libgomp: spinning OpenMP threads are pathological when other processes
# (the streaming app, tests) share the machine's two cores; HGB fits got 5-10x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = [
    "SCORE_FIELDS",
    "FeatureBuilder",
    "LoadedModel",
    "ModelRegistry",
    "ResidualDetector",
    "Scorer",
    "TrainResult",
    "TrainingSupervisor",
    "evaluate",
    "rescore",
    "select_version",
    "train_day",
    "train_table",
]

_WHERE = {
    "SCORE_FIELDS": "workbench.ml.scorer",
    "FeatureBuilder": "workbench.ml.features",
    "LoadedModel": "workbench.ml.scorer",
    "ModelRegistry": "workbench.ml.registry",
    "ResidualDetector": "workbench.ml.detector",
    "Scorer": "workbench.ml.scorer",
    "TrainResult": "workbench.ml._train",
    "TrainingSupervisor": "workbench.ml.supervisor",
    "evaluate": "workbench.ml.evaluate",
    "rescore": "workbench.ml.rescore",
    "select_version": "workbench.ml.selection",
    "train_day": "workbench.ml._train",
    "train_table": "workbench.ml._train",
}


__getattr__ = lazy_attributes(__name__, _WHERE)
