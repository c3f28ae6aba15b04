"""Throughput of the whole pipeline with 1, 2 and 4 processes per app on one WORKBENCH_HOME.

Usage: ``.venv/bin/python benchmarks/scale.py [--days 2] [--rows-per-day 100000] [--pack 100] [--counts 1,2,4]``

For each count N it starts a fresh workbench (``Workbench.start(app_instances=N)``: N scoring, N
analytics and N anomaly-sink processes, one consumer group per app, on ``WORKBENCH_PARTITIONS``
partitions; one scoring instance is the elected trainer) on a private Kafka, replays the
generated log at max speed and samples every process once a second. It prints per N:

* ``end-to-end``: events that *every* app has processed (summed over its instances) per second,
  while the slowest app goes from 10 % to 90 % of the log;
* the time until everything drained (start-up and the daily trainings included; not the stop
  afterwards, printed apart with the time from which each app's lag stayed 0);
* CPU microseconds per event of each app (all its instances and their training subprocesses),
  of the broker and the replay, and their sum: while the slowest app goes from 10 % to 90 % of the
  log (no start-up: every extra process pays its imports once), and over the whole run (also by process).

On a 2-core machine more processes cannot add throughput; what the figures show there is that
N > 1 costs little extra CPU per event (the point on bigger machines is the per-event cost times
the cores). Use ``WORKBENCH_PARTITIONS`` >= the largest count (default 4).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import time

import psutil
import pyarrow.parquet as pq
from _harness import broker, demo_log, private_run, until_drained

from workbench.config import Settings
from workbench.runtime import Workbench


def _cpu(wb: Workbench, seen: dict[tuple[str, int], float]) -> None:
    """Latest CPU seconds of every supervised process (and its training children), by (group, pid)."""
    from workbench.runtime.supervisor import read_state

    state = read_state(wb.settings.home) or {}
    pids = {name: p.get("pid") for name, p in state.get("processes", {}).items()}
    for name, pid in pids.items():
        if not pid:
            continue
        group = re.sub(r"-\d+$", "", name)  # scoring-2 counts as scoring
        try:
            process = psutil.Process(pid)
            with process.oneshot():
                cpu = process.cpu_times()
                for child in process.children(recursive=True):
                    child_cpu = child.cpu_times()
                    seen[(group, child.pid)] = child_cpu.user + child_cpu.system
        except psutil.Error:
            continue
        seen[(group, pid)] = cpu.user + cpu.system


def run(base: Settings, data, pack: int, count: int, broker_pid: int | None) -> dict:
    """One workbench with ``count`` processes per app; returns its figures."""
    rows = pq.ParquetFile(data).metadata.num_rows
    settings = private_run(base, f"scale-{count}")
    broker_cpu0 = psutil.Process(broker_pid).cpu_times() if broker_pid else None
    samples: list[tuple[float, int, dict[str, float]]] = []  # (time, slowest app's events, CPU s by app)
    cpu: dict[tuple[str, int], float] = {}
    started = time.monotonic()
    load0 = os.getloadavg()[0]
    wb = Workbench.start(data=data, speedup="max", pack=pack, settings=settings, app_instances=count)
    lags: list[tuple[float, dict[str, int | None]]] = []  # (seconds, lag by app) of every fresh status
    last_status = None
    try:
        for status, processed in until_drained(wb, rows):
            _cpu(wb, cpu)
            samples.append((time.monotonic(), processed, _by_app(cpu, broker_pid)))
            if status is not last_status:
                lags.append((time.monotonic() - started, dict(status.lag)))
                last_status = status
        seconds = time.monotonic() - started  # drained: the stop below (apps' final steps, grace) is not in it
    finally:
        _cpu(wb, cpu)
        stop_started = time.monotonic()
        wb.stop(kafka=False)
    stop_seconds = time.monotonic() - stop_started
    per_app = _by_app(cpu, broker_pid)
    if broker_cpu0 is not None:
        per_app["kafka broker"] -= broker_cpu0.user + broker_cpu0.system
    low = next(s for s in samples if s[1] >= 0.1 * rows)
    high = next(s for s in samples if s[1] >= 0.9 * rows)
    events = max(high[1] - low[1], 1)
    # sustained CPU: what each app spent while the slowest app went from 10 % to 90 % (no start-up)
    sustained_cpu = {k: (high[2].get(k, 0.0) - low[2].get(k, 0.0)) * 1e6 / events for k in sorted(high[2])}
    # per app: the first fresh status from which on its lag stayed 0 (what the drain waited for last)
    caught_up = {app: next((t for k, (t, _) in enumerate(lags) if all(lag.get(app) == 0 for _, lag in lags[k:])),
                           None) for app in wb.apps}
    return {"count": count, "rows": rows, "seconds": seconds, "stop_seconds": stop_seconds, "caught_up": caught_up,
            "sustained": events / max(high[0] - low[0], 1e-9),
            "us_per_event": {k: v * 1e6 / rows for k, v in sorted(per_app.items())},
            "sustained_us_per_event": sustained_cpu,
            "load": (load0, os.getloadavg()[0])}


def _by_app(cpu: dict[tuple[str, int], float], broker_pid: int | None) -> dict[str, float]:
    """CPU seconds so far by app (all its instances and training children), plus the broker's."""
    out: dict[str, float] = {}
    for (group, _), value in cpu.items():
        out[group] = out.get(group, 0.0) + value
    if broker_pid:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(broker_pid).cpu_times()
            out["kafka broker"] = times.user + times.system
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--instances", type=int, default=16, help="Redshift instances of the generated log")
    parser.add_argument("--rows-per-day", type=int, default=100_000)
    parser.add_argument("--pack", type=int, default=100)
    parser.add_argument("--counts", default="1,2,4", help="processes per app to measure, comma-separated")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]

    data = demo_log(args.days, args.instances, rows_per_day=args.rows_per_day)
    with broker() as settings:
        if settings.partitions < max(counts):
            print(f"note: {settings.partitions} partitions; instances beyond that stay idle")
        from workbench.broker import LocalKafka

        broker_pid = LocalKafka(settings).pid() if settings.manages_kafka else None
        results = [run(settings, data, args.pack, count, broker_pid) for count in counts]
    print(f"--- {results[0]['rows']:,} events, pack {args.pack}, {settings.partitions} partitions, "
          f"{os.cpu_count()} cores")
    print(f"{'per app':>8} {'end-to-end ev/s':>16} {'drained (s)':>12} {'CPU us/event 10-90 %':>21} "
          f"{'whole run':>10}  by process, 10-90 %  (load avg before/after)")
    for r in results:
        total = sum(r["us_per_event"].values())
        sustained = sum(r["sustained_us_per_event"].values())
        by = ", ".join(f"{k} {v:,.1f}" for k, v in r["sustained_us_per_event"].items())
        print(f"{r['count']:>8} {r['sustained']:>16,.0f} {r['seconds']:>12.0f} {sustained:>21,.1f} {total:>10,.1f}  "
              f"{by}  ({r['load'][0]:.1f}/{r['load'][1]:.1f})")
    for r in results:  # which app the drain waited for last (lag sampled every few seconds), and the stop
        apps = ", ".join(f"{app} {t:.0f} s" if t is not None else f"{app} -" for app, t in r["caught_up"].items())
        print(f"{r['count']:>8} per app, lag 0 from (s after start): {apps}; stop took {r['stop_seconds']:.0f} s")
    for r in results:  # start-up, the last trainings and the end of the drain fall outside the 10-90 % window
        whole = ", ".join(f"{k} {v:,.1f}" for k, v in r["us_per_event"].items())
        print(f"{r['count']:>8} per app, CPU us/event over the whole run by process: {whole}")


if __name__ == "__main__":
    main()
