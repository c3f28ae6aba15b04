"""Seconds to train one day of 400k rows (features, both HGB models, ONNX export, parity, calibration).

Usage: ``python benchmarks/training.py [--rows 400000] [--repeat 1] [--threads N]``
(``--threads``: OpenMP threads of each HGB fit, default: DurationModel's choice). The day comes from the
synthetic generator (one day, 16 instances, seed 0); the registry lives in a temp folder.

Prints wall seconds and process CPU seconds (every thread) per run and per phase, with the load
average: on a shared machine the wall figure depends on the other work, the CPU figure much less.
Phases: ``prepare`` (split; the input hash and the HGB import run in a background thread),
``features`` (training features), ``holdout_features`` (the blocked holdout's, the fits' early-stopping
set), ``fit`` (the two HGB fits, run concurrently, each followed by its ONNX conversion in its own
thread; ``fit_mean``/``fit_quantile`` are each fit's own wall time), ``export`` (files written),
``parity`` (ONNX predictions, sklearn parity), ``calibrate``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pyarrow.parquet as pq

from workbench.data.generator import generate
from workbench.ml._train import train_table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "day.parquet"
        generate(data, days=1, rows_per_day=int(args.rows * 1.02), seed=0)
        table = pq.read_table(data)
        print(f"cores={os.cpu_count()} rows_in_day={table.num_rows} cap={args.rows}")
        for i in range(args.repeat):
            load_before = os.getloadavg()[0]
            t0, c0 = time.perf_counter(), time.process_time()
            result = train_table(Path(tmp) / f"models{i}", table, dt.date(2024, 3, 4), window_days=1,
                                 max_rows=args.rows, model_params={"n_threads": args.threads})
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            m = result.meta
            timings = dict(m["timings"])
            phases_cpu = timings.pop("cpu", {})
            print(f"train one day: {wall:.1f} s wall, {cpu:.1f} s CPU (load average {load_before:.1f} before, "
                  f"{os.getloadavg()[0]:.1f} after; rows {result.rows}, trained {m['rows']['trained']}, "
                  f"iterations {m['n_iter']}, parity {m['parity_max_abs_diff']:.1e})")
            print(f"  wall per phase: {timings}")
            print(f"  CPU per phase:  {phases_cpu}")


if __name__ == "__main__":
    main()
