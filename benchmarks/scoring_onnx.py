"""ONNX inference throughput of the ML engine at batch sizes 1k / 8k / 64k.

* ``models only``: both ONNX regressors on a prepared ``float32 [N, F]`` matrix;
* ``features+models+detector``: from an Arrow batch (feature building, fingerprint lookup,
  both models, residuals and decision), i.e. :meth:`LoadedModel.predict`;
* ``Scorer.score``: the same plus the output RecordBatch.

Usage: ``python benchmarks/scoring_onnx.py [--train-rows 200000]``; trains a model on generated data
in a temp folder first (not timed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pyarrow as pa
import pyarrow.parquet as pq

from workbench.data.generator import generate
from workbench.ml._train import train_table
from workbench.ml.registry import ModelRegistry
from workbench.ml.scorer import LoadedModel, Scorer


def _rate(fn: Callable[[], object], n: int, min_seconds: float = 1.5) -> float:
    fn()  # warm-up
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        fn()
        done += n
    return done / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-rows", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "log.parquet"
        generate(data, days=2, rows_per_day=args.train_rows, seed=0)
        log = pq.read_table(data)
        half = log.num_rows // 2
        models = Path(tmp) / "models"
        train_table(models, log.slice(0, half), dt.date(2024, 3, 4), window_days=1)
        registry = ModelRegistry(models)
        model = LoadedModel.load(registry, registry.current())
        scorer = Scorer(models)
        fresh = log.slice(half)
        print(f"cores={os.cpu_count()} features={len(model.features.feature_names_)} "
              f"trees={model.meta['n_iter']} ort_threads=2")
        print(f"{'batch':>7} {'models only':>14} {'features+models+detector':>26} {'Scorer.score':>14}  (rows/s)")
        for size in (1_000, 8_192, 65_536):
            batch: pa.RecordBatch = fresh.slice(0, size).combine_chunks().to_batches()[0]
            X = model.features.transform(batch)
            r_models = _rate(lambda X=X: model.regressors.predict_log(X), size)
            r_full = _rate(lambda b=batch: model.predict(b), size)
            r_scorer = _rate(lambda b=batch: scorer.score(b), size)
            print(f"{size:>7} {r_models:>14,.0f} {r_full:>26,.0f} {r_scorer:>14,.0f}")


if __name__ == "__main__":
    main()
