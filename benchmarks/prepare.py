"""``workbench prepare`` throughput and peak memory on a Redset-shaped input in every messy variant.

Usage: ``.venv/bin/python benchmarks/prepare.py [--rows 20000000] [--variants double_ints,naive_ns,unsorted,parts50]
[--memory-limit 1GB]``

A generated log (cached) is cut to ``--rows`` rows and rewritten, one row group at a time (bounded
memory), as each variant: every integer column as double (a pandas export of nullable ints), the
arrival time as naive ``timestamp[ns]``, rows out of order (row groups in a random order, rows
shuffled inside each), and 50 part files by (instance, user) hash, each sorted but interleaved
(like Redset's ``parts/``); ``all`` combines them with upper-case column names. Each variant is
prepared by ``workbench prepare SRC --out OUT`` in its own process; the figures are rows read per
second of wall time and the peak RSS of that process and its children, summed and sampled every
50 ms with psutil (wait4's ru_maxrss would include the memory this script held when it forked).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from _harness import CACHE, WORKBENCH, demo_log

ROWS_PER_DAY = 500_000


def _base_groups(path: Path, rows: int) -> Iterator[pa.Table]:
    """The first ``rows`` rows of ``path``, one row group at a time, without the label columns."""
    pf = pq.ParquetFile(path)
    left = rows
    for group in range(pf.metadata.num_row_groups):
        if left <= 0:
            return
        table = pf.read_row_group(group).drop_columns(["label_anomaly", "label_kind"])
        table = table.slice(0, min(left, table.num_rows))
        left -= table.num_rows
        yield table


def _doubles(table: pa.Table) -> pa.Table:
    return pa.table({f.name: table.column(f.name).cast(pa.float64()) if pa.types.is_integer(f.type)
                     else table.column(f.name) for f in table.schema})


def _naive_ns(table: pa.Table) -> pa.Table:
    column = table.column("arrival_timestamp").cast(pa.timestamp("ns", tz="UTC")).cast(pa.timestamp("ns"))
    return table.set_column(table.schema.get_field_index("arrival_timestamp"), "arrival_timestamp", column)


def _shuffle(table: pa.Table, rng: np.random.Generator) -> pa.Table:
    return table.take(rng.permutation(table.num_rows))


def _write_single(groups: list[Callable[[], pa.Table]], out: Path, transform: Callable[[pa.Table], pa.Table]) -> None:
    writer = None
    try:
        for load in groups:
            table = transform(load())
            if writer is None:
                writer = pq.ParquetWriter(out, table.schema, compression="zstd")
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def _write_parts(groups: list[Callable[[], pa.Table]], folder: Path, transform: Callable[[pa.Table], pa.Table],
                 parts: int = 50) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    writers: dict[int, pq.ParquetWriter] = {}
    try:
        for load in groups:
            table = transform(load())
            key = (table.column("instance_id" if "instance_id" in table.column_names else "INSTANCE_ID")
                   .to_numpy(zero_copy_only=False).astype(np.int64) * 1_000_003
                   + np.nan_to_num(table.column("user_id" if "user_id" in table.column_names else "USER_ID")
                                   .to_numpy(zero_copy_only=False).astype(np.float64)).astype(np.int64)) % parts
            for part in range(parts):
                piece = table.filter(pa.array(key == part))
                if piece.num_rows == 0:
                    continue
                if part not in writers:
                    writers[part] = pq.ParquetWriter(folder / f"part-{part:02d}.parquet", piece.schema,
                                                     compression="zstd")
                writers[part].write_table(piece)
    finally:
        for writer in writers.values():
            writer.close()


def run_measured(command: list[str]) -> tuple[float, float, int, str]:
    """Wall seconds, peak RSS (MB) of the process tree, return code and stderr of ``command``."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
        root = psutil.Process(process.pid)
        peak = 0
        while process.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    return seconds, peak / 2**20, process.returncode, stderr


def build_variant(name: str, base: Path, rows: int, root: Path) -> Path:
    """The input of variant ``name`` (cached under ``root``)."""
    target = root / (name if name in ("parts50", "all") else f"{name}.parquet")
    if target.exists():
        return target
    rng = np.random.default_rng(0)
    pf = pq.ParquetFile(base)
    count = 0
    indices = []
    for group in range(pf.metadata.num_row_groups):
        if count >= rows:
            break
        indices.append(group)
        count += pf.metadata.row_group(group).num_rows

    def loader(position: int) -> Callable[[], pa.Table]:
        def load() -> pa.Table:
            # The last group is cut so that exactly `rows` rows are used.
            before = sum(pf.metadata.row_group(g).num_rows for g in indices[:position])
            table = pf.read_row_group(indices[position]).drop_columns(["label_anomaly", "label_kind"])
            return table.slice(0, max(0, min(table.num_rows, rows - before)))
        return load

    groups = [loader(i) for i in range(len(indices))]
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    if name == "double_ints":
        _write_single(groups, tmp, _doubles)
    elif name == "naive_ns":
        _write_single(groups, tmp, _naive_ns)
    elif name == "unsorted":
        order = rng.permutation(len(groups))
        _write_single([groups[i] for i in order], tmp, lambda t: _shuffle(t, rng))
    elif name == "parts50":
        _write_parts(groups, tmp, lambda t: t)
    elif name == "all":
        order = rng.permutation(len(groups))

        def everything(table: pa.Table) -> pa.Table:
            table = _shuffle(_naive_ns(_doubles(table)), rng)
            return table.rename_columns([c.upper() for c in table.column_names])

        _write_parts([groups[i] for i in order], tmp, everything)
    else:
        raise SystemExit(f"unknown variant {name!r}")
    tmp.rename(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--variants", default="double_ints,naive_ns,unsorted,parts50",
                        help="comma-separated: double_ints, naive_ns, unsorted, parts50, all")
    parser.add_argument("--memory-limit", default="1GB")
    parser.add_argument("--keep", action="store_true", help="keep the outputs (inputs are cached either way)")
    args = parser.parse_args()

    days = -(-args.rows // ROWS_PER_DAY) + 1
    base = demo_log(days, 16)
    available = pq.ParquetFile(base).metadata.num_rows
    rows = min(args.rows, available)
    root = CACHE / f"prepare_{rows}"
    root.mkdir(parents=True, exist_ok=True)
    print(f"base {base.name}: {available:,} rows; using {rows:,}")
    work = Path(tempfile.mkdtemp(prefix="workbench-bench-prepare-"))
    try:
        for name in args.variants.split(","):
            source = build_variant(name.strip(), base, rows, root)
            out = work / f"{name}.parquet"
            command = [*WORKBENCH, "--home", str(work / "home"), "prepare", str(source), "--out", str(out),
                       "--memory-limit", args.memory_limit, "--no-progress"]
            seconds, peak_mb, returncode, stderr = run_measured(command)
            if returncode != 0:
                raise SystemExit(f"prepare failed:\n{stderr[-3000:]}")
            written = pq.ParquetFile(out).metadata.num_rows
            print(f"prepare {name:<12} {rows:,} rows -> {written:,}: {rows / seconds:>9,.0f} rows/s, "
                  f"{seconds:7.1f} s, peak RSS {peak_mb:,.0f} MB (memory limit {args.memory_limit})", flush=True)
            if not args.keep:
                out.unlink()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
