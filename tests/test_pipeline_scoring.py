"""ML scoring app on the real broker: real ONNX Runtime, scikit-learn training subprocesses and Kafka.

(a) end to end: no model at first, training of day 1 in a subprocess while scoring continues,
    retroactive scoring, each event exactly once in the shards, anomalies on the topic;
(b) a training subprocess killed with SIGKILL: scoring continues on the previous version and
    the training is retried;
(c) the app killed with SIGKILL mid-stream and restarted: each event still exactly once;
(d) malformed messages go to the dead-letter topic and the app keeps running.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer

from tests.helpers import consume_all, kill_scoring_child, make_log
from workbench.broker import ensure_topics
from workbench.config import Settings
from workbench.data import codec
from workbench.data.generator import generate
from workbench.ml._testing import day_slice
from workbench.ml._train import train_day
from workbench.ml.registry import ModelRegistry
from workbench.pipeline import read_app_status
from workbench.pipeline.contracts import anomaly_row
from workbench.pipeline.scoring import ScoringApp, run_scoring
from workbench.replay import Replay
from workbench.store.shards import read_shards

D1 = dt.date(2024, 3, 4)  # the generator's default first day
D2 = D1 + dt.timedelta(days=1)
D3 = D2 + dt.timedelta(days=1)


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 3-day generated log and its per-day slices (sorted Parquet files the replay accepts)."""
    folder = tmp_path_factory.mktemp("scoring-logs")
    full = folder / "full.parquet"
    generate(full, days=3, instances=6, seed=5, rows_per_day=15_000)
    table = pq.read_table(full)
    out = {"full": full}
    for name, days in {"d1": [D1], "d12": [D1, D2], "d2": [D2], "d3": [D3]}.items():
        part = pa.concat_tables([day_slice(table, d) for d in days])
        pq.write_table(part, folder / f"{name}.parquet")
        out[name] = folder / f"{name}.parquet"
    # day 3 split at 06:00 so that part of it can be replayed later
    d3 = day_slice(table, D3)
    cut = pa.scalar(dt.datetime.combine(D3, dt.time(6), dt.UTC), pa.timestamp("us", tz="UTC"))
    early = pc.less(d3.column("arrival_timestamp"), cut)
    pq.write_table(d3.filter(early), folder / "d3a.parquet")
    pq.write_table(d3.filter(pc.invert(early)), folder / "d3b.parquet")
    out["d3a"], out["d3b"] = folder / "d3a.parquet", folder / "d3b.parquet"
    return out


def _rows(path: Path) -> int:
    return pq.read_metadata(path).num_rows


def _assert_exactly_once(settings: Settings, expected: int) -> pa.Table:
    shards = read_shards(settings.shards_dir)
    assert shards.num_rows == expected
    ids = shards.select(["instance_id", "query_id"]).group_by(["instance_id", "query_id"]).aggregate([])
    assert ids.num_rows == expected
    return shards


def _training_state(settings: Settings) -> dict[str, Any]:
    path = settings.state_dir / "ml_training.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"days": {}}


class _Sampler(threading.Thread):
    """Samples the app's status file and the training state while the app runs in the main thread."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.samples: list[tuple[float, int, bool]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            status = read_app_status(self.settings, "scoring")
            running = any(e["status"] == "running" for e in _training_state(self.settings)["days"].values())
            if status is not None:
                self.samples.append((time.monotonic(), status["counters"].get("events", 0), running))
            time.sleep(0.05)


def test_end_to_end_trains_without_stalling_and_scores_everything(kafka_settings: Settings,
                                                                  logs: dict[str, Path]) -> None:
    settings = kafka_settings
    ensure_topics(settings)
    expected = _rows(logs["d12"])
    Replay(logs["d1"], settings=settings, speedup=0, pack=1).run()
    # Day 2 streams in while the app runs (a day in ~20 s): its first events trigger day 1's training,
    # and the rest keeps arriving while the subprocess trains, however fast this machine drains Kafka.
    day2 = Replay(logs["d2"], settings=settings, speedup=4320, pack=1, replay_id="day2").start()
    sampler = _Sampler(settings)
    sampler.start()
    try:
        result = run_scoring(settings, idle_exit=3, timeout=150, batch_rows=4096, batch_seconds=0.5,
                             status_interval=0.1, training_backoff_s=1)
    finally:
        sampler.done.set()
        sampler.join()
        day2.join(60)
    # a model version was trained on day 1 by the subprocess, with ONNX/sklearn parity recorded
    registry = ModelRegistry(settings.models_dir)
    versions = registry.versions()
    assert len(versions) == 1
    meta = registry.info(versions[0])
    assert meta["training_day"] == D1.isoformat()
    assert meta["parity_max_abs_diff"] <= meta["parity_tolerance"]
    assert _training_state(settings)["days"][D1.isoformat()]["status"] == "done"
    # scoring kept consuming while the training ran
    assert result["events_while_training"] > 0
    during = [events for _, events, running in sampler.samples if running]
    assert during and max(during) > min(during), "events did not advance while training ran"
    # every event exactly once, all scored (the early ones retroactively)
    assert result["events"] == expected and result["dead_letters"] == 0
    assert result["unscored"] > 0 and result["rescored"] == result["unscored"]
    assert result["scored"] + result["unscored"] == expected
    shards = _assert_exactly_once(settings, expected)
    assert shards.column("model_version").null_count == 0
    assert set(shards.column("model_version").to_pylist()) == {versions[0]}
    assert shards.column("score").null_count == 0
    # anomalies: one message per flagged event, following the contract, key = instance id
    flagged = pc.sum(shards.column("is_anomaly").cast(pa.int64())).as_py()
    assert flagged > 0 and result["anomalies"] == flagged
    messages = consume_all(settings, settings.topic_anomalies, expected=flagged, timeout=30)
    assert len(messages) == flagged
    rows = [anomaly_row(m.value()) for m in messages]
    assert all(m.key() == str(r["instance_id"]).encode() for m, r in zip(messages, rows, strict=True))
    assert {r["model_version"] for r in rows} == {versions[0]}
    assert len({(r["instance_id"], r["query_id"]) for r in rows}) == flagged
    first = orjson.loads(messages[0].value())
    assert first["threshold"] is not None and "num_joins" in first["features"]
    status = read_app_status(settings, "scoring")
    assert status is not None and status["state"] == "stopped"
    assert status["info"]["model_version"] == versions[0]


def test_killed_training_is_retried_while_scoring_continues_on_previous_version(
        kafka_settings: Settings, logs: dict[str, Path]) -> None:
    settings = kafka_settings
    ensure_topics(settings)
    previous = train_day(settings, D1, window_days=1, data=logs["full"]).version
    Replay(logs["d2"], settings=settings, speedup=0, pack=100, replay_id="a").run()
    Replay(logs["d3a"], settings=settings, speedup=0, pack=100, replay_id="b").run()
    app = ScoringApp(settings, batch_rows=8192, batch_seconds=0.5, training_backoff_s=3, status_interval=0.1)
    app.build()
    seen: dict[str, Any] = {}

    def killer() -> None:
        log = settings.logs_dir / f"train_{D2.isoformat()}.log"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            entry = _training_state(settings)["days"].get(D2.isoformat(), {})
            if (entry.get("status") == "running" and entry.get("attempts") == 1
                    and "training window loaded" in (log.read_text() if log.exists() else "")):
                os.kill(int(entry["pid"]), signal.SIGKILL)  # mid-run
                seen["killed_pid"] = entry["pid"]
                seen["events_at_kill"] = read_app_status(settings, "scoring")["counters"]["events"]
                Replay(logs["d3b"], settings=settings, speedup=0, pack=100, replay_id="c").run()  # more events
                return
            time.sleep(0.02)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = app.run(idle_exit=3, timeout=150)
    thread.join(timeout=5)
    assert "killed_pid" in seen, "the training subprocess was never seen running"
    entry = _training_state(settings)["days"][D2.isoformat()]
    assert entry["attempts"] == 2 and entry["status"] == "done"
    registry = ModelRegistry(settings.models_dir)
    current = registry.current()
    assert current != previous and registry.info(current)["training_day"] == D2.isoformat()
    expected = _rows(logs["d2"]) + _rows(logs["d3"])
    assert result["events"] == expected and result["events"] > seen["events_at_kill"]
    shards = _assert_exactly_once(settings, expected)
    assert shards.column("model_version").null_count == 0 and result["rescored"] == result["unscored"]
    # event-time selection (workbench.ml.selection): day 2 by the day-1 version, day 3 - also the
    # events that arrived after the kill - by the day-2 version once its retried training finished
    day3 = pa.scalar(dt.datetime.combine(D3, dt.time(), dt.UTC))
    early = shards.filter(pc.less(shards.column("arrival_timestamp"), day3))
    late = shards.filter(pc.greater_equal(shards.column("arrival_timestamp"), day3))
    assert late.num_rows == _rows(logs["d3"])
    assert set(early.column("model_version").to_pylist()) == {previous}
    assert set(late.column("model_version").to_pylist()) == {current}


def test_a_first_day_too_small_to_train_does_not_stop_scoring(kafka_settings: Settings, logs: dict[str, Path],
                                                             tmp_path: Path) -> None:
    """A browser tester seeked forward right after the start: 284 usable rows of day 1 reached the
    pipeline, its training failed for good, and day 3's events waited in Kafka (paused partitions) for a
    version that only day 2's training could make, which needs day 3's events stored to be due: scoring
    stopped for good. Day 3 comes paced, so its first batches end before day 2's training is due."""
    settings = kafka_settings
    ensure_topics(settings)
    full = pq.read_table(logs["full"])
    first, later = tmp_path / "sliver_and_day2.parquet", tmp_path / "day3_start.parquet"
    pq.write_table(pa.concat_tables([day_slice(full, D1).slice(0, 150), day_slice(full, D2)]), first)
    day3 = day_slice(full, D3)
    cut = pa.scalar(dt.datetime.combine(D3, dt.time(0, 30), dt.UTC), pa.timestamp("us", tz="UTC"))
    pq.write_table(day3.filter(pc.less(day3.column("arrival_timestamp"), cut)), later)
    expected = _rows(first) + _rows(later)
    Replay(first, settings=settings, speedup=0, pack=100).run()
    paced = Replay(later, settings=settings, speedup=300, pack=1, replay_id="day3").start()  # ~6 s
    try:
        result = run_scoring(settings, idle_exit=3, timeout=90, batch_rows=4096, batch_seconds=0.5,
                             status_interval=0.1, training_backoff_s=1)
    finally:
        paced.join(60)
    days = _training_state(settings)["days"]
    assert days[D1.isoformat()]["status"] == "failed"
    assert days.get(D2.isoformat(), {}).get("status") == "done", "day 2 never trained: scoring waited for good"
    shards = _assert_exactly_once(settings, expected)
    assert result["events"] == expected
    version = ModelRegistry(settings.models_dir).current()
    assert version is not None and version.endswith(D2.isoformat())
    # every row scored: days 1 and 2 by the first version there is (in-sample), day 3 by it as the rule says
    assert shards.column("model_version").null_count == 0
    assert set(shards.column("model_version").to_pylist()) == {version}


def test_app_killed_mid_stream_restarts_without_duplicates(kafka_settings: Settings, logs: dict[str, Path]) -> None:
    settings = kafka_settings
    ensure_topics(settings)
    version = train_day(settings, D1, window_days=1, data=logs["full"]).version
    expected = _rows(logs["full"])  # 3 days: the child's status file (1 s period) must catch it mid-stream
    Replay(logs["full"], settings=settings, speedup=0, pack=1).run()
    kill_scoring_child(settings, "--no-train", "--batch-rows", "2048", "--batch-seconds", "0.3", "--timeout", "120",
                       events=4000, timeout=180)  # the child's start-up and group join on a loaded machine
    before = read_shards(settings.shards_dir).num_rows
    assert 0 < before < expected, "kill the app mid-stream, not after it finished"
    # idle_exit < session.timeout.ms (6 s): the partitions are reassigned once the killed member timed out;
    # the idle clock starts at the assignment (from the run's start, the app stopped before its first message)
    restarted = run_scoring(settings, idle_exit=5, timeout=120, train=False, batch_rows=4096, batch_seconds=0.5)
    assert restarted["events"] < expected  # it resumed from the committed offsets
    shards = _assert_exactly_once(settings, expected)
    assert set(shards.column("model_version").to_pylist()) == {version}


def test_malformed_messages_go_to_dead_letters(kafka_settings: Settings, tmp_path: Path) -> None:
    settings = kafka_settings
    ensure_topics(settings)
    log = make_log(tmp_path / "l.parquet", rows=400, instances=3)
    Replay(log, settings=settings, speedup=0, pack=50).run()
    producer = Producer(settings.kafka_client_config())
    topic = settings.topic_query_events
    json_headers = codec.message_headers(codec.ENCODING_JSON, 1)
    good = orjson.loads(codec.encode_json(pq.read_table(log).to_batches()[0].slice(0, 1))[0])
    producer.produce(topic, key=b"1", value=b"{not json", headers=json_headers)
    producer.produce(topic, key=b"1", value=orjson.dumps(dict(good, execution_duration_ms="slow")),
                     headers=json_headers)
    producer.produce(topic, key=b"1", value=b"\x00garbage", headers=codec.message_headers("arrow", 3))
    producer.produce(topic, key=b"1", value=b"{}", headers=codec.message_headers("xml", 1))
    # valid (the key is its instance id, as for every app: the codec checks it)
    producer.produce(topic, key=str(good["instance_id"]).encode(), value=orjson.dumps(dict(good, query_id=42)),
                     headers=json_headers)
    producer.flush(10)
    result = run_scoring(settings, idle_exit=2, timeout=60, train=False, batch_seconds=0.3)
    assert result["dead_letters"] == 4 and result["events"] == 401
    shards = _assert_exactly_once(settings, 401)
    assert shards.column("model_version").null_count == 401  # no model: stored unscored, scored later
    dead = consume_all(settings, settings.topic_dead_letter, expected=4, timeout=20)
    assert len(dead) == 4
    headers = [dict(m.headers()) for m in dead]
    assert all(h["app"] == b"scoring" and h["source_topic"] == topic.encode() for h in headers)
    reasons = " ".join(h["reason"].decode() for h in headers)
    assert "invalid JSON" in reasons and "unknown encoding" in reasons and "Arrow" in reasons
    status = read_app_status(settings, "scoring")
    assert status is not None and status["counters"]["dead_letters"] == 4
    # the unscored day is remembered for retroactive scoring once a model exists
    state = json.loads((settings.state_dir / "scoring" / "unscored_days.json").read_text())
    assert state["days"] == ["2024-03-04"]


def test_a_topic_created_again_never_replaces_stored_shards(kafka_settings: Settings, tmp_path: Path) -> None:
    """A topic deleted and made again starts its offsets at 0: the scoring app's shards of the new topic took
    the names of stored ones and replaced their rows (169 queries of a day lost, found by a tester). Its
    offsets are now stored past the old ones."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from workbench.store.shards import read_shards

    settings = kafka_settings
    ensure_topics(settings)
    topic = settings.topic_query_events
    first = make_log(tmp_path / "first.parquet", rows=120, instances=2, spacing_s=30)
    Replay(first, settings=settings, speedup=0, pack=1).run()
    assert run_scoring(settings, idle_exit=6, timeout=120, train=False, batch_seconds=0.3)["events"] == 120
    admin = AdminClient(settings.kafka_client_config())
    admin.delete_topics([topic], operation_timeout=20)[topic].result(30)
    for _ in range(60):  # deletion is asynchronous
        try:
            made = admin.create_topics([NewTopic(topic, settings.partitions, 1, config={"retention.ms": "-1"})])
            made[topic].result(30)
            break
        except Exception:
            time.sleep(0.5)
    second = pq.read_table(first)
    second = second.set_column(second.schema.get_field_index("query_id"), "query_id",
                               pc.add(second.column("query_id"), 10**9))  # other queries, the same offsets
    pq.write_table(second, tmp_path / "second.parquet")
    Replay(tmp_path / "second.parquet", settings=settings, speedup=0, pack=1, reset=True).run()
    assert run_scoring(settings, idle_exit=6, timeout=120, train=False, batch_seconds=0.3)["events"] == 120
    stored = read_shards(settings.shards_dir, dedupe=False)
    assert stored.num_rows == 240
    assert set(stored.column("query_id").to_pylist()) == set(pq.read_table(first).column("query_id").to_pylist()) | \
        set(second.column("query_id").to_pylist())
