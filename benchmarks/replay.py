"""Replay throughput at speedup=0 (unpaced) and peak memory, one query per message and packed.

Usage: ``.venv/bin/python benchmarks/replay.py [--days 4] [--instances 16] [--pack 100] [--skip-4x]``

Each configuration runs ``workbench replay FILE --speedup max --reset`` as its own process against a
private local Kafka (or KAFKA_BOOTSTRAP_SERVERS), so the figures include validation, Parquet reading,
encoding and transactional produce. Peak RSS comes from the process's rusage. The 4x file (4x the
days) shows that memory does not grow with file size: record batches are read lazily.
"""

from __future__ import annotations

import argparse
import uuid

import pyarrow.parquet as pq
from _harness import WORKBENCH, broker, demo_log, run_child, settings_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--instances", type=int, default=16)
    parser.add_argument("--pack", type=int, default=100)
    parser.add_argument("--skip-4x", action="store_true", help="only the 1x file")
    args = parser.parse_args()

    files = {"1x": demo_log(args.days, args.instances)}
    if not args.skip_4x:
        files["4x"] = demo_log(args.days * 4, args.instances)
    with broker() as base:
        print(f"broker {base.bootstrap_servers}, {base.partitions} partitions")
        for size, path in files.items():
            rows = pq.ParquetFile(path).metadata.num_rows
            for pack in (1, args.pack):
                suffix = uuid.uuid4().hex[:6]
                settings = base.with_overrides(topic_query_events=f"bench.replay.{suffix}")
                command = [*WORKBENCH, "replay", str(path), "--speedup", "max", "--reset", "--quiet",
                           "--pack", str(pack), "--replay-id", f"bench-{suffix}"]
                run = run_child(command, env=settings_env(settings))
                if run.returncode != 0:
                    raise SystemExit(f"replay failed:\n{run.stderr[-2000:]}")
                mode = "one query per message" if pack == 1 else f"packed {pack}"
                print(f"replay {size} ({rows:,} rows), {mode:>21}: {rows / run.seconds:>9,.0f} rows/s, "
                      f"{run.seconds:6.1f} s, peak RSS {run.peak_rss_mb:,.0f} MB")


if __name__ == "__main__":
    main()
