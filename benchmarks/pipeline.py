"""End-to-end throughput of the whole pipeline at max replay speed, with lag and peak memory.

Usage: ``.venv/bin/python benchmarks/pipeline.py [--days 4] [--instances 16] [--pack 100] [--json-days 1]``

For each configuration it starts a fresh workbench (replay + scoring + analytics + anomaly sink,
each its own process, plus the broker) on a private Kafka, replays the generated log at max speed
with daily retraining, and samples every process once a second:

* ``end-to-end: N events/s``: events that *every* app has processed, per second, measured while
  the slowest app goes from 10 % to 90 % of the log (sustained, start-up and tail excluded);
* the total time until every app has consumed everything (drained);
* the largest consumer lag seen, in messages, per app;
* the peak resident memory of every process.

The one-query-per-message figure uses a shorter log (``--json-days``) so the run stays short.
"""

from __future__ import annotations

import argparse
import time
import uuid
from dataclasses import dataclass, field

import psutil
import pyarrow.parquet as pq
from _harness import broker, demo_log

from workbench.config import Settings
from workbench.runtime import Workbench


@dataclass
class Sample:
    at: float
    processed: int  # events the slowest app has processed


@dataclass
class Measurement:
    samples: list[Sample] = field(default_factory=list)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    max_lag: dict[str, int] = field(default_factory=dict)


def _sample_memory(wb: Workbench, broker_pid: int | None, m: Measurement) -> None:
    from workbench.runtime.supervisor import read_state

    state = read_state(wb.settings.home) or {}
    pids = {name: p.get("pid") for name, p in state.get("processes", {}).items()}
    pids["supervisor"] = state.get("supervisor_pid")
    if broker_pid:
        pids["kafka broker"] = broker_pid
    for name, pid in pids.items():
        if not pid:
            continue
        try:
            rss = psutil.Process(pid).memory_info().rss / 1024**2
        except psutil.Error:
            continue
        m.peak_rss_mb[name] = max(m.peak_rss_mb.get(name, 0.0), rss)


def run(settings: Settings, data, pack: int, broker_pid: int | None) -> tuple[Measurement, float, int]:
    rows = pq.ParquetFile(data).metadata.num_rows
    suffix = uuid.uuid4().hex[:6]
    settings = settings.with_overrides(
        home=settings.home / f"run-{suffix}", kafka_bootstrap_servers=settings.bootstrap_servers,
        topic_query_events=f"bench.events.{suffix}", topic_anomalies=f"bench.anomalies.{suffix}",
        topic_dead_letter=f"bench.dead.{suffix}", topic_replay_control=f"bench.control.{suffix}",
        topic_replay_state=f"bench.state.{suffix}",
    )
    m = Measurement()
    started = time.monotonic()
    wb = Workbench.start(data=data, speedup="max", pack=pack, settings=settings)
    try:
        while True:
            status = wb.status()
            processed = min(status.events_processed.values() or [0])
            m.samples.append(Sample(time.monotonic(), processed))
            for name, lag in status.lag.items():
                if lag is not None:
                    m.max_lag[name] = max(m.max_lag.get(name, 0), lag)
            _sample_memory(wb, broker_pid, m)
            if status.drained and processed >= rows:
                break
            if time.monotonic() - started > 3600:
                raise SystemExit("pipeline did not drain within an hour")
            time.sleep(1.0)
    finally:
        wb.stop(kafka=False)
    return m, time.monotonic() - started, rows


def sustained_rate(samples: list[Sample], rows: int) -> float:
    """Events/s of the slowest app between 10 % and 90 % of the log."""
    low = next(s for s in samples if s.processed >= 0.1 * rows)
    high = next(s for s in samples if s.processed >= 0.9 * rows)
    return (high.processed - low.processed) / max(high.at - low.at, 1e-9)


def report(label: str, m: Measurement, seconds: float, rows: int) -> None:
    print(f"--- {label}: {rows:,} events")
    print(f"end-to-end: {sustained_rate(m.samples, rows):,.0f} events/s (sustained, slowest app, 10-90 %)")
    print(f"drained after {seconds:.0f} s ({rows / seconds:,.0f} events/s including start-up and training)")
    print("max consumer lag (messages): " + ", ".join(f"{k} {v:,}" for k, v in sorted(m.max_lag.items())))
    print("peak RSS (MB): " + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(m.peak_rss_mb.items())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--instances", type=int, default=16)
    parser.add_argument("--pack", type=int, default=100)
    parser.add_argument("--json-days", type=int, default=1, help="days for the one-query-per-message run (0: skip)")
    args = parser.parse_args()

    packed_log = demo_log(args.days, args.instances)
    with broker() as settings:
        broker_pid = None
        from workbench.broker import LocalKafka

        if settings.manages_kafka:
            broker_pid = LocalKafka(settings).pid()
        m, seconds, rows = run(settings, packed_log, args.pack, broker_pid)
        report(f"packed {args.pack} queries per message, {args.days} days", m, seconds, rows)
        if args.json_days:
            json_log = demo_log(args.json_days, args.instances)
            m, seconds, rows = run(settings, json_log, 1, broker_pid)
            report(f"one query per message, {args.json_days} day(s)", m, seconds, rows)


if __name__ == "__main__":
    main()
