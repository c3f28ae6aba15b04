"""Throughput of the stream-analytics app (JSON one-per-message and packed Arrow) and the anomaly sink.

Usage: ``.venv/bin/python benchmarks/analytics.py [--rows 200000] [--pack 100]``

Starts a private Kafka (temporary WORKBENCH_HOME, free port) unless KAFKA_BOOTSTRAP_SERVERS is set,
and stops what it started. Each figure is events (rows) processed divided by the app's processing
time: from its first message to its last (the idle wait at the end and the start-up are excluded).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _harness import broker
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
        original = status.add  # type: ignore[attr-defined]

        def add(name: str, amount: int = 1) -> None:
            if name in ("events", "anomalies"):
                now = time.perf_counter()
                self.first = self.first or now
                self.last = now
            original(name, amount)

        status.add = add  # type: ignore[attr-defined]


def bench_analytics(settings: Settings, log: Path, pack: int) -> dict:
    s = _topics(settings)
    ensure_topics(s)
    t0 = time.perf_counter()
    Replay(log, settings=s, speedup=0, pack=pack, replay_id=f"bench-{pack}", reset=True).run()
    replay_s = time.perf_counter() - t0
    app = AnalyticsApp(s, closing_strategy="key" if pack > 1 else "partition")
    app.build()
    timed = _Timed(app.status)
    result = app.run(idle_exit=5, timeout=600)
    span = timed.last - (timed.first or timed.last)
    return {"pack": pack, "events": result["events"], "messages": result["messages"],
            "window_rows_written": result["sink_rows"], "seconds": round(span, 2),
            "events_per_s": round(result["events"] / span) if span else None, "replay_s": round(replay_s, 1)}


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
    args = parser.parse_args()
    with broker() as settings:
        log = settings.home / "log.parquet"
        generate(log, days=1, instances=8, seed=1, rows_per_day=args.rows)
        out = {"analytics_json": bench_analytics(settings, log, 1),
               "analytics_packed": bench_analytics(settings, log, args.pack),
               "anomaly_sink": bench_sink(settings, args.sink_rows)}
        print(json.dumps(out, indent=2))

if __name__ == "__main__":
    main()
