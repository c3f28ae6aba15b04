"""Chaos benchmark: >= 20 seeded kill -9s across every process kind during a paced replay.

Usage: ``.venv/bin/python benchmarks/chaos.py [--kills 20] [--seed 11] [--days 4] [--instances 8]
[--rows-per-day 6000] [--speedup 1500] [--pack 20] [--encoding arrow_zstd] [--partitions 4] [--kinds all]``

Runs the same labelled log twice on a fresh workbench with a private managed Kafka: once without
kills, once while a seeded schedule kills the replay, the three apps, the broker, the supervisor
and the training subprocess (``tests/chaos_harness.py``). After each run the events topic,
shards, window_stats + late events, the lakehouse's anomalies and window anomalies and the runtime
residual windows are compared with an offline computation of the log and the final stores. Prints
``chaos: N kills, L lost, D duplicated, E extra``, the time until drained with and without kills,
and the seed (rerun a failure with ``--seed``). ``--kinds all`` replays the stress log (collective
episodes: more window anomalies to check). With the run without kills, the two runs' stores are
compared too (shard rows with version and score, anomalies, window anomalies, residual windows, model
versions): the same log must give the same results. Exit code 1 if anything was lost, duplicated or
extra, or the two runs differ.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shared harness lives in tests/

from _harness import demo_log

from tests.chaos_harness import differences, outcome, run_chaos


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("--rows-per-day", type=int, default=6000)
    parser.add_argument("--speedup", type=float, default=1500)
    parser.add_argument("--pack", type=int, default=20)
    parser.add_argument("--encoding", default=None, help="the replay's message encoding (default: the product's)")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the events topic")
    parser.add_argument("--kinds", default=None, help="the generator's kinds (e.g. all); default classic")
    parser.add_argument("--min-gap", type=float, default=5.0, help="least seconds between two kills")
    parser.add_argument("--max-gap", type=float, default=10.0, help="most seconds between two kills")
    parser.add_argument("--training-delay", type=float, nargs=2, default=(0.5, 3.0), metavar=("MIN", "MAX"),
                        help="seconds a training runs before it is killed (a small log's takes 1-2 s)")
    parser.add_argument("--root", type=Path, default=None, help="folder for the runs' homes (default: a temp folder)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run without kills")
    args = parser.parse_args()
    data = demo_log(days=args.days, instances=args.instances, seed=args.seed, rows_per_day=args.rows_per_day,
                    kinds=args.kinds)
    root = Path(tempfile.mkdtemp(prefix="workbench-chaos-", dir=args.root))
    common = {"speedup": args.speedup, "pack": args.pack, "encoding": args.encoding,
              "partitions": args.partitions, "max_speed_after": False, "first_kill_s": 10.0,
              "min_gap_s": args.min_gap, "max_gap_s": args.max_gap,
              "training_delay_s": tuple(args.training_delay)}
    baseline = None
    if not args.no_baseline:
        print(f"baseline: {data.name} without kills")
        started = time.monotonic()
        baseline = run_chaos(data, root / "baseline", seed=args.seed, kills=0, **common)
        print(f"  {baseline.summary()} ({time.monotonic() - started:.0f} s with start-up and checks)")
    print(f"chaos: {data.name} with {args.kills} kills, seed {args.seed}")
    started = time.monotonic()
    result = run_chaos(data, root / "chaos", seed=args.seed, kills=args.kills, **common)
    print(f"  ({time.monotonic() - started:.0f} s with start-up and checks)")
    print(result.summary())
    print(f"chaos: {len(result.done_kills)} kills, {sum(result.lost.values())} lost, "
          f"{sum(result.duplicated.values())} duplicated, {sum(result.extra.values())} extra")
    if baseline is not None:
        print(f"time to drain: {result.drain_seconds:.1f} s with kills vs {baseline.drain_seconds:.1f} s without "
              f"(+{result.drain_seconds - baseline.drain_seconds:.1f} s)")
    same = True
    if baseline is not None:
        # Same log, same results: the stores must not depend on the kills (nor on the machine's speed).
        diff = differences(outcome(root / "baseline"), outcome(root / "chaos"))
        same = not any(a or b for a, b in diff.values())
        print("against the run without kills (rows only there / only here): "
              + ", ".join(f"{name} {a}/{b}" for name, (a, b) in diff.items()))
    print(f"homes: {root}")
    if not result.ok or not same:
        print(f"FAILED with seed {args.seed}: rerun with --seed {args.seed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
