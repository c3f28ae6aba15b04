"""Seconds to train one day of 400k rows (features, both HGB models, ONNX export, parity, calibration).

Usage: ``python benchmarks/training.py [--rows 400000] [--repeat 1] [--threads N] [--days 1] [--data LOG]``
(``--threads``: OpenMP threads of each HGB fit, default: DurationModel's choice). The window comes from
the synthetic generator (``--days`` days of about ``--rows`` rows each, 16 instances, seed 0) or, with
``--data``, is the last ``--days`` days of that Parquet log; the registry lives in a temp folder. With
more than one day the history statistics count every run of the window outside the holdout hours
while the regressors train on the ``--rows`` sample (a week: ~2.8M history rows, 400k trained).

Prints wall seconds and process CPU seconds (every thread) per run and per phase, with the load
average: on a shared machine the wall figure depends on the other work, the CPU figure much less.
Phases: ``prepare`` (split; the input hash and the HGB import run in a background thread),
``features`` (training features), ``holdout_features`` (the blocked holdout's, the fits' early-stopping
set), ``fit`` (the two HGB fits, run concurrently, each followed by its ONNX conversion in its own
thread; ``fit_mean``/``fit_quantile`` are each fit's own wall time), ``export`` (files written),
``usual_hours`` (the training sample's in-sample predictions and the slower groups' hour rules),
``parity`` (ONNX predictions, sklearn parity), ``calibrate``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pyarrow.compute as pc
import pyarrow.parquet as pq

from workbench.data.generator import generate
from workbench.ml._train import load_log_window, train_table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--days", type=int, default=1, help="days in the training window")
    parser.add_argument("--data", type=Path, help="a Parquet log (default: a generated one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "log.parquet"
            generate(data, days=args.days, rows_per_day=int(args.rows * 1.02), seed=0)
        ts = pq.read_table(data, columns=["arrival_timestamp"]).column("arrival_timestamp")
        day = pc.max(ts).as_py().date()
        table = load_log_window(data, day, args.days)
        print(f"cores={os.cpu_count()} window={args.days} days ending {day} rows_in_window={table.num_rows} "
              f"cap={args.rows}")
        for i in range(args.repeat):
            load_before = os.getloadavg()[0]
            t0, c0 = time.perf_counter(), time.process_time()
            result = train_table(Path(tmp) / f"models{i}", table, day, window_days=args.days,
                                 max_rows=args.rows, model_params={"n_threads": args.threads})
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            m = result.meta
            timings = dict(m["timings"])
            phases_cpu = timings.pop("cpu", {})
            print(f"train one day: {wall:.1f} s wall, {cpu:.1f} s CPU (load average {load_before:.1f} before, "
                  f"{os.getloadavg()[0]:.1f} after; rows {result.rows}, trained {m['rows']['trained']}, "
                  f"history {m['rows']['history']}, "
                  f"iterations {m['n_iter']}, parity {m['parity_max_abs_diff']:.1e})")
            print(f"  wall per phase: {timings}")
            print(f"  CPU per phase:  {phases_cpu}")


if __name__ == "__main__":
    main()
