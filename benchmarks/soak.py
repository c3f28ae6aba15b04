"""A long session of Resets: does anything grow with the passes that should stay the size of one log?

Usage: ``.venv/bin/python benchmarks/soak.py [--passes 10] [--days 2] [--instances 8] [--seed 5]``

Starts the whole workbench on a generated log (cached; against a private Kafka or
KAFKA_BOOTSTRAP_SERVERS) at max speed, waits until every result landed, then ``--passes`` times:
Reset, ``wait()``, and once the days sent again are compacted (no write for their quiet time),
one line of figures. A tester's soak (85 passes of a 2-day log, 49 minutes) found the shards
holding 69 copies of the log (5.6 GB for 83 MB), 930 k late-event rows summed by every status read,
the scoring app's peak memory at 14.4 GB and a growing window-stats WAL; each column below is one
of those. At the end the stores are compared with the first pass's, row by row (the latest pass
wins: a Reset replays the same rows, so nothing may change).

Columns: shard files and MB, raw shard rows per distinct query (copies), late-event rows,
window-stats WAL MB, the scoring process's peak RSS (VmHWM) MB, seconds of one ``Workbench.status()``,
seconds of ``wait()`` after the Reset, and of a whole-day ``shards()`` read.
"""

from __future__ import annotations

import argparse
import sqlite3
import time
from pathlib import Path
from typing import Any

from _harness import broker, demo_log, private_run

from workbench.runtime import Workbench
from workbench.store.shards import dedupe_latest, read_shards, shard_paths


def _scoring_peak_mb(home: Path) -> float:
    """VmHWM of the home's scoring process (0 when not found)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
            if b"scoring" not in command or str(home).encode() not in b" ".join(command):
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            continue
    return 0.0


def _stores(wb: Workbench) -> dict[str, Any]:
    """What a pass must not change: the shards' latest rows, windows, anomalies, flagged windows."""
    shards = read_shards(wb.settings.shards_dir, columns=["instance_id", "query_id", "model_version", "score"])
    windows = wb.window_stats().drop(columns=["updated_at"], errors="ignore")
    return {"shards": sorted(zip(*(shards.column(c).to_pylist() for c in shards.column_names), strict=True)),
            # a frame, not records: NaN (a window without executed queries) equals NaN in DataFrame.equals
            "window_stats": windows.sort_values(["instance_id", "window_start"]).reset_index(drop=True),
            "anomalies": len(wb.anomalies()), "window_anomalies": len(wb.window_anomalies())}


def _differing(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The stores that differ between two :func:`_stores` reads."""
    return [name for name in a if not (a[name].equals(b[name]) if hasattr(a[name], "equals") else a[name] == b[name])]


def _copies(wb: Workbench) -> tuple[int, int]:
    """Raw shard rows and distinct queries among them, from one read."""
    raw = read_shards(wb.settings.shards_dir, columns=["instance_id", "query_id", "kafka_partition", "kafka_offset"],
                      dedupe=False)
    return raw.num_rows, dedupe_latest(raw).num_rows


def _row(wb: Workbench, waited: float) -> dict[str, float]:
    settings = wb.settings
    files = shard_paths(settings.shards_dir)
    raw, rows = _copies(wb)
    with sqlite3.connect(f"{settings.sqlite_path.resolve().as_uri()}?mode=ro", uri=True) as con:
        late_rows = con.execute("SELECT count(*) FROM late_event_sources").fetchone()[0]
    wal = settings.sqlite_path.with_name(settings.sqlite_path.name + "-wal")
    began = time.perf_counter()
    wb.status()
    status_s = time.perf_counter() - began
    began = time.perf_counter()
    first_day = min(p.parent.name for p in files).removeprefix("date=")
    wb.shards(days=[first_day])
    read_s = time.perf_counter() - began
    return {"files": len(files), "MB": sum(p.stat().st_size for p in files) / 1e6, "copies": raw / max(rows, 1),
            "late rows": late_rows, "WAL MB": wal.stat().st_size / 1e6 if wal.exists() else 0.0,
            "scoring peak MB": _scoring_peak_mb(settings.home), "status s": status_s, "wait s": waited,
            "day read s": read_s}


def _compacted(wb: Workbench, limit_s: float = 120.0) -> None:
    """Until the days sent again hold one copy (their quiet time passed and the compaction ran)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        raw, rows = _copies(wb)
        if raw == rows:
            return
        time.sleep(2.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=10)
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    data = demo_log(days=args.days, instances=args.instances, seed=args.seed)
    with broker() as settings:
        wb = Workbench.start(data=data, speedup="max", settings=private_run(settings, "soak"))
        try:
            began = time.perf_counter()
            wb.wait(progress=False)
            first = _stores(wb)
            _compacted(wb)
            rows = [("start", _row(wb, time.perf_counter() - began))]
            for n in range(1, args.passes + 1):
                wb.reset()
                began = time.perf_counter()
                wb.wait(progress=False)
                waited = time.perf_counter() - began
                _compacted(wb)
                rows.append((str(n), _row(wb, waited)))
                print(f"pass {n}: " + ", ".join(f"{k} {v:,.2f}" for k, v in rows[-1][1].items()), flush=True)
            differing = _differing(first, _stores(wb))
        finally:
            wb.stop()
    names = list(rows[0][1])
    print(f"\nsoak: {args.passes} Resets of {data.name}")
    print("| pass | " + " | ".join(names) + " |")
    print("|" + " --- |" * (len(names) + 1))
    for label, row in rows:
        print(f"| {label} | " + " | ".join(f"{row[k]:,.0f}" if row[k] >= 100 else f"{row[k]:.2f}" for k in names)
              + " |")
    print(f"stores after the last pass that differ from the first pass's: {differing or 'none'}")


if __name__ == "__main__":
    main()
