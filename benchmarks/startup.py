"""App start-up: seconds from spawning each streaming app to its first committed offset.

Usage: ``.venv/bin/python benchmarks/startup.py [--repeat 2] [--apps scoring,analytics,anomaly-sink]``

Against a private Kafka (or KAFKA_BOOTSTRAP_SERVERS), each app gets fresh topics and a fresh home
with input already waiting: a small replayed log (JSON, one query per message) for scoring
(``--no-train``, no model registered yet: it stores the events unscored) and analytics, a few
hundred contract-valid anomaly messages for the anomaly sink. The app is spawned as
``python -m workbench.cli app NAME`` (what the workbench supervisor runs); the benchmark polls
the app's consumer group for a committed offset on any partition every 20 ms, then stops the
app (SIGTERM). Printed per app and run: seconds to the first commit, and the child's CPU
seconds up to then (sampled just before the poll that saw the commit). Imports are measured
separately with ``python -X importtime``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta

import psutil
from _harness import WORKBENCH, broker, demo_log, settings_env
from confluent_kafka import Consumer, Producer, TopicPartition

from workbench.broker import ensure_topics
from workbench.config import Settings
from workbench.pipeline._names import consumer_group
from workbench.pipeline.contracts import anomaly_headers, anomaly_key, encode_anomaly
from workbench.replay import Replay

APPS = ("scoring", "analytics", "anomaly-sink")


def _anomaly(i: int) -> dict:
    t0 = datetime(2024, 3, 4, tzinfo=UTC)
    return {
        "instance_id": i % 5, "user_id": 7, "database_id": 2, "query_id": 3_000_000_000 + i,
        "arrival_timestamp": (t0 + timedelta(seconds=i)).isoformat(), "query_type": "select", "cluster_size": 4,
        "execution_duration_ms": 90_000 + i, "queue_duration_ms": 10, "compile_duration_ms": 5,
        "pred_mean_ms": 1000.0, "pred_q_ms": 3000.0, "score": 4.5, "threshold": 3.0, "reason": "slow",
        "model_version": "v1", "features": {"num_joins": 2},
    }


def _prepare(settings: Settings, app: str, log: os.PathLike[str]) -> Settings:
    suffix = uuid.uuid4().hex[:6]
    home = settings.home / f"startup-{app}-{suffix}"
    s = settings.with_overrides(home=home, kafka_bootstrap_servers=settings.bootstrap_servers,
                                topic_query_events=f"bench.startup.events.{suffix}",
                                topic_anomalies=f"bench.startup.anomalies.{suffix}",
                                topic_dead_letter=f"bench.startup.dead.{suffix}",
                                topic_replay_control=f"bench.startup.control.{suffix}",
                                topic_replay_state=f"bench.startup.state.{suffix}")
    ensure_topics(s)
    if app == "anomaly-sink":
        producer = Producer(s.kafka_client_config())
        for i in range(500):
            message = _anomaly(i)
            producer.produce(s.topic_anomalies, key=anomaly_key(message), value=encode_anomaly(message),
                             headers=anomaly_headers())
        producer.flush(30)
    else:
        Replay(log, settings=s, speedup=0, replay_id=f"startup-{suffix}", reset=True).run()
    return s


def _cpu_seconds(process: psutil.Process) -> float | None:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


def _first_commit(settings: Settings, app: str, topic: str, partitions: int, child: subprocess.Popen,
                  limit: float) -> tuple[float, float | None] | None:
    """Seconds until the app's group has a committed offset on ``topic``, and the app's CPU seconds then
    (None: no commit within ``limit``).

    The CPU is sampled just before the poll that saw the commit: after it the app goes on with the
    rest of its input, so a sample taken when the (loaded) broker answers would add that work.
    """
    started = time.perf_counter()
    watcher = Consumer({**settings.kafka_client_config(), "group.id": consumer_group(settings, app),
                        "enable.auto.commit": False})
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    process = psutil.Process(child.pid)
    try:
        while time.perf_counter() - started < limit:
            if child.poll() is not None:
                return None
            cpu = _cpu_seconds(process)
            try:
                committed = watcher.committed(tps, timeout=5)
            except Exception:  # the group coordinator may still be loading
                committed = []
            if any(tp.offset >= 0 for tp in committed):
                return time.perf_counter() - started, cpu
            time.sleep(0.02)
    finally:
        watcher.close()
    return None


def measure(settings: Settings, app: str, log: os.PathLike[str], limit: float, idle_s: float = 0.0,
            nice: int = 0) -> dict:
    s = _prepare(settings, app, log)
    topic = s.topic_anomalies if app == "anomaly-sink" else s.topic_query_events
    command = [*WORKBENCH, "app", app, "--timeout", str(limit + 30)]
    if app == "scoring":
        command.append("--no-train")
    spawned = time.perf_counter()
    child = subprocess.Popen(command, env=settings_env(s), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             preexec_fn=(lambda: os.nice(nice)) if nice else None)
    try:
        seen = _first_commit(s, app, topic, s.partitions, child, limit)
        seconds, cpu = seen if seen is not None else (None, None)
        cpu = None if cpu is None else round(cpu, 2)
        idle_cpu = None
        try:
            process = psutil.Process(child.pid)
            if idle_s > 0 and seconds is not None:  # CPU of the app with nothing left to consume
                time.sleep(2.0)
                before = process.cpu_times()
                time.sleep(idle_s)
                after = process.cpu_times()
                idle_cpu = round((after.user + after.system - before.user - before.system) / idle_s, 3)
        except psutil.Error:
            pass
        spawn_overhead = time.perf_counter() - spawned - (seconds or 0.0)
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
        try:
            _, stderr = child.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            _, stderr = child.communicate()
    if seconds is None:
        tail = (stderr or b"").decode(errors="replace")[-1500:]
        return {"app": app, "first_commit_s": None, "error": f"no commit within {limit}s rc={child.returncode}: {tail}"}
    return {"app": app, "first_commit_s": round(seconds, 2), "cpu_s_until_commit": cpu, "idle_cpu_share": idle_cpu,
            "watcher_overhead_s": round(max(spawn_overhead, 0.0), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--apps", default=",".join(APPS))
    parser.add_argument("--limit", type=float, default=60.0, help="give up on an app after this many seconds")
    parser.add_argument("--nice", type=int, default=0,
                        help="start the app at this niceness (e.g. -20 as root: a quiet machine's share of "
                             "the CPU for the app on a shared one; the broker keeps its own)")
    parser.add_argument("--idle", type=float, default=0.0,
                        help="then measure the app's CPU share over this many seconds with nothing to consume")
    args = parser.parse_args()
    apps = [a for a in args.apps.split(",") if a]
    log = demo_log(days=1, instances=2, rows_per_day=2_000)
    with broker() as settings:
        print(f"load average {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores")
        for run in range(args.repeat):
            for app in apps:
                result = measure(settings, app, log, args.limit, args.idle, args.nice)
                if result.get("first_commit_s") is None:
                    print(f"run {run + 1} {app}: {result['error']}")
                else:
                    idle = result["idle_cpu_share"]
                    print(f"run {run + 1} {app}: first commit after {result['first_commit_s']:.2f} s "
                          f"(CPU {result['cpu_s_until_commit']} s)"
                          + (f"; idle: {idle:.1%} of a core" if idle is not None else ""))
        print(f"load average {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
