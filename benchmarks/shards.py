"""Reading a day of shards before and after compaction (what training and rescoring read).

Usage: ``python benchmarks/shards.py [--rows 400000] [--partitions 4] [--batch 500]``. Writes one
generated day as one shard per (partition, batch of ``--batch`` rows), like the scoring app at a
slow replay, times :func:`read_window`, compacts the day, and times it again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from workbench.data.schema import COLUMNS
from workbench.ml._testing import generated_log
from workbench.store.shards import compact_day, read_window, shard_paths, write_shard

DAY = dt.date(2024, 3, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    table = generated_log(days=1, rows_per_day=args.rows, seed=0).select(list(COLUMNS))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        per_part = table.num_rows // args.partitions + 1
        for p in range(args.partitions):
            part = table.slice(p * per_part, per_part)
            for start in range(0, part.num_rows, args.batch):
                chunk = part.slice(start, args.batch)
                n = chunk.num_rows
                chunk = chunk.append_column("kafka_partition", pa.array([p] * n, pa.int32()))
                chunk = chunk.append_column("kafka_offset", pa.array(range(start, start + n), pa.int64()))
                write_shard(root, DAY, p, start, chunk)
        print(f"rows={table.num_rows} files={len(shard_paths(root))} write={time.perf_counter() - t0:.1f}s")
        t0 = time.perf_counter()
        before = read_window(root, DAY, DAY)
        t_before = time.perf_counter() - t0
        t0 = time.perf_counter()
        files = compact_day(root, DAY)
        t_compact = time.perf_counter() - t0
        t0 = time.perf_counter()
        after = read_window(root, DAY, DAY)
        t_after = time.perf_counter() - t0
        assert after.equals(before)
        print(f"read_window before compaction: {t_before:.2f}s; compaction: {t_compact:.2f}s -> {files} files; "
              f"read_window after: {t_after:.2f}s (same rows: {after.num_rows})")


if __name__ == "__main__":
    main()
