"""Throughput of the stream-analytics app (JSON one-per-message and packed Arrow) and the anomaly sink.

Usage: ``.venv/bin/python benchmarks/analytics.py [--rows 200000] [--pack 100] [--only json,packed,sink]
[--profile DIR]``

Starts a private Kafka (temporary WORKBENCH_HOME, free port) unless KAFKA_BOOTSTRAP_SERVERS is set,
and stops what it started. Each figure is events (rows) processed divided by the app's processing
time: from its first message to its last (the idle wait at the end and the start-up are excluded).
``cpu_us_per_event`` is this process's CPU time (all threads, librdkafka's included) over the same
span divided by the events: on a shared machine it is steadier than the wall-clock rate. The load
average is printed with the figures. ``--profile DIR`` records the app with ``py-spy`` (PyPI) while
it drains: ``DIR/analytics-<json|packed>.txt`` (collapsed stacks, for flame graph tools) and the top
frames by own and total samples on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _harness import broker, summarize_profile
from confluent_kafka import Producer

from workbench.broker import ensure_topics
from workbench.config import Settings
from workbench.data.generator import generate
from workbench.pipeline.analytics import AnalyticsApp
from workbench.pipeline.anomaly_sink import AnomalySinkApp
from workbench.pipeline.contracts import anomaly_headers, anomaly_key, encode_anomaly
from workbench.replay import Replay


def _topics(settings: Settings) -> Settings:
    suffix = uuid.uuid4().hex[:6]
    return settings.with_overrides(topic_query_events=f"bench.events.{suffix}",
                                   topic_anomalies=f"bench.anomalies.{suffix}",
                                   topic_dead_letter=f"bench.dead.{suffix}",
                                   home=settings.home / suffix)


class _Timed:
    """Wraps a status object: remembers when the first and last counted event arrived."""

    def __init__(self, status: object) -> None:
        self.first: float | None = None
        self.last = 0.0
        self.cpu_sampled = 0.0
        self.cpu_first = self.cpu_last = 0.0  # process CPU seconds at the first and (about) the last event
        original = status.add  # type: ignore[attr-defined]

        def add(name: str, amount: int = 1) -> None:
            if name in ("events", "anomalies"):
                now = time.perf_counter()
                if self.first is None:
                    self.first, self.cpu_first = now, time.process_time()
                # process_time sums every thread's CPU (a costly system call): sampled every 20 ms
                if now - self.cpu_sampled > 0.02:
                    self.cpu_last, self.cpu_sampled = time.process_time(), now
                self.last = now
            original(name, amount)

        status.add = add  # type: ignore[attr-defined]


def _start_profiler(out: Path) -> subprocess.Popen:
    """``py-spy record`` of this process into ``out`` (collapsed stacks); stop it with :func:`_stop_profiler`."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([exe, "record", "--pid", str(os.getpid()), "--rate", "200", "--format", "raw",
                             "--output", str(out), "--nonblocking"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy attaches
    return proc


def _stop_profiler(proc: subprocess.Popen, out: Path, top: int = 25) -> None:
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    summarize_profile(out, top)


def bench_analytics(settings: Settings, log: Path, pack: int, profile: Path | None = None) -> dict:
    s = _topics(settings)
    ensure_topics(s)
    t0 = time.perf_counter()
    Replay(log, settings=s, speedup=0, pack=pack, replay_id=f"bench-{pack}", reset=True).run()
    replay_s = time.perf_counter() - t0
    app = AnalyticsApp(s, closing_strategy="key" if pack > 1 else "partition")
    timed = _Timed(app.status)
    # The app counts events per batch of messages: the span starts at its first consumed batch instead.
    hook = "_on_messages" if hasattr(app, "_on_messages") else "_on_message"  # (per message before the batches)
    on_consumed = getattr(app, hook, None)  # (absent in earlier versions, which counted per message)

    def first_consumed(*args: object) -> object:
        if timed.first is None:
            timed.first, timed.cpu_first = time.perf_counter(), time.process_time()
        return on_consumed(*args)

    if on_consumed is not None:
        setattr(app, hook, first_consumed)
    app.build()
    label = "json" if pack == 1 else "packed"
    profiler = _start_profiler(profile / f"analytics-{label}.txt") if profile else None
    try:
        result = app.run(idle_exit=5, timeout=600)
    finally:
        if profiler is not None:
            _stop_profiler(profiler, profile / f"analytics-{label}.txt")
    span = timed.last - (timed.first or timed.last)
    cpu = timed.cpu_last - timed.cpu_first
    return {"pack": pack, "events": result["events"], "messages": result["messages"],
            "window_rows_written": result["sink_rows"], "seconds": round(span, 2),
            "events_per_s": round(result["events"] / span) if span else None,
            "cpu_us_per_event": round(1e6 * cpu / result["events"], 1) if result["events"] else None,
            "replay_s": round(replay_s, 1)}


def bench_sink(settings: Settings, rows: int) -> dict:
    s = _topics(settings)
    ensure_topics(s)
    producer = Producer(s.kafka_client_config())
    t0 = datetime(2024, 3, 4, tzinfo=UTC)
    for i in range(rows):
        m = {"instance_id": i % 16, "query_id": i, "model_version": "bench", "arrival_timestamp":
             (t0 + timedelta(milliseconds=250 * i)).isoformat(), "execution_duration_ms": 50_000 + i,
             "pred_mean_ms": 900.0, "pred_q_ms": 2000.0, "score": 5.0, "threshold": 3.0, "reason": "slow",
             "query_type": "select", "cluster_size": 4, "user_id": 1, "database_id": 1, "features": {"a": 1}}
        while True:
            try:
                producer.produce(s.topic_anomalies, key=anomaly_key(m), value=encode_anomaly(m),
                                 headers=anomaly_headers())
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush(60)
    app = AnomalySinkApp(s)
    app.build()
    timed = _Timed(app.status)
    result = app.run(idle_exit=5, timeout=600)
    span = timed.last - (timed.first or timed.last)
    return {"rows": result["sink_rows"], "writes": result["sink_writes"], "seconds": round(span, 2),
            "rows_per_s": round(result["sink_rows"] / span) if span else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000, help="rows of generated log")
    parser.add_argument("--pack", type=int, default=100)
    parser.add_argument("--sink-rows", type=int, default=50_000)
    parser.add_argument("--only", default="json,packed,sink", help="comma-separated subset of json,packed,sink")
    parser.add_argument("--profile", type=Path, help="record the analytics app with py-spy into this folder")
    args = parser.parse_args()
    only = set(args.only.split(","))
    with broker() as settings:
        log = settings.home / "log.parquet"
        generate(log, days=1, instances=8, seed=1, rows_per_day=args.rows)
        out: dict[str, object] = {}
        if "json" in only:
            out["analytics_json"] = bench_analytics(settings, log, 1, args.profile)
        if "packed" in only:
            out["analytics_packed"] = bench_analytics(settings, log, args.pack, args.profile)
        if "sink" in only:
            out["anomaly_sink"] = bench_sink(settings, args.sink_rows)
        out["load_average"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(out, indent=2))

if __name__ == "__main__":
    main()
