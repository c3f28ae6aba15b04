"""The same log on warehouses of other speeds: does the detector's false-alert rate depend on the units?

Usage::

    python benchmarks/warehouse_speed.py [--data FILE] [--factors 1,10,30] [--days 3 --instances 8
                                         --rows-per-day 40000 --seed 3]

Generates a labelled log (unless ``--data``) and writes a copy per factor in which every query's
execution time is multiplied by it (normal and anomalous alike: a warehouse that is that much slower,
or a workload that much heavier). For each copy it trains one version on every day but the last (a
window of the days before) and scores the last day, then prints per factor and per stake rule: the
false alerts per 10k normal queries, recall, PR-AUC and the alerts by reason. ``scaled`` is the
product (runtime stakes grow with each instance's 1-in-100 query, ``runtime_scale_factor`` 5);
``fixed`` the same versions with fixed stakes (10 minutes costly, 2 minutes beyond a known statement's
tolerance, whatever the instance), the rule before the twenty-first session.

A relative residual is unit-free, so the spread of the rates over the factors is what the absolute
stakes add. Their anchor stays absolute on purpose (10 minutes are costly on an instance whose heavy
queries take seconds), so copies whose instances are all past it alert alike, and below it not.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sklearn.metrics import average_precision_score

from workbench.data.generator import generate
from workbench.ml._testing import slower
from workbench.ml._train import load_log_window, train_table
from workbench.ml.evaluate import anomaly_labels
from workbench.ml.registry import ModelRegistry
from workbench.ml.scorer import LoadedModel


def _row(factor: float, rule: str, out: dict, labels: np.ndarray) -> dict:
    alert, score = out["is_anomaly"], out["score"]
    reasons = pd.Series(out["reason"][alert & ~labels]).value_counts()
    return {"factor": factor, "stakes": rule, "false / 10k": alert[~labels].mean() * 1e4,
            "recall": alert[labels].mean() if labels.any() else float("nan"),
            "PR-AUC": average_precision_score(labels, score) if labels.any() else float("nan"),
            "false alerts by reason": ", ".join(f"{k} {v}" for k, v in reasons.items())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, help="a labelled Parquet log (default: a generated one)")
    parser.add_argument("--factors", default="1,10,30")
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("--rows-per-day", type=int, default=40_000)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    factors = [float(f) for f in args.factors.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "log.parquet"
            generate(data, days=args.days, instances=args.instances, rows_per_day=args.rows_per_day,
                     seed=args.seed)
        ts = pq.read_table(data, columns=["arrival_timestamp"]).column("arrival_timestamp")
        last = pc.max(ts).as_py().date()
        train_day, window_days = last - dt.timedelta(days=1), (last - pc.min(ts).as_py().date()).days
        for factor in factors:
            copy = Path(tmp) / f"x{factor:g}.parquet"
            pq.write_table(slower(pq.read_table(data), factor), copy)
            result = train_table(Path(tmp) / f"models{factor:g}", load_log_window(copy, train_day, window_days),
                                 train_day, window_days=window_days)
            model = LoadedModel.load(ModelRegistry(Path(tmp) / f"models{factor:g}"), result.version)
            day = load_log_window(copy, last, 1)
            labels = anomaly_labels(day, copy)
            rows.append(_row(factor, "scaled", model.predict(day), labels))
            model.detector.runtime_scale_factor = 0.0
            rows.append(_row(factor, "fixed", model.predict(day), labels))
            print(f"x{factor:g}: trained on {train_day} ({window_days}-day window), scored {last}", flush=True)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_colwidth", 120)
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
