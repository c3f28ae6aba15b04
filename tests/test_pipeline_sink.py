"""Anomaly sink on the real broker: idempotent redelivery, dead letters, a concurrent reader; the lakehouse opens
with the first rows to write."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer
from quixstreams.sinks import SinkBackpressureError, SinkBatch

from tests.helpers import consume_all
from workbench.broker import ensure_topics
from workbench.config import Settings
from workbench.pipeline import read_app_status
from workbench.pipeline.anomaly_sink import DuckLakeSink, run_anomaly_sink
from workbench.pipeline.contracts import anomaly_headers, anomaly_key, anomaly_row, encode_anomaly
from workbench.pipeline.exceptions import AnomalyContractError
from workbench.store.exceptions import LakehouseBusyError
from workbench.store.lakehouse import AnomalyLakehouse

T0 = datetime(2024, 3, 4, tzinfo=UTC)


def anomaly(i: int) -> dict:
    return {
        "instance_id": i % 5, "user_id": 7, "database_id": 2, "query_id": 3_000_000_000 + i,
        "arrival_timestamp": (T0 + timedelta(seconds=i)).isoformat(), "query_type": "select", "cluster_size": 4,
        "execution_duration_ms": 90_000 + i, "queue_duration_ms": 10, "compile_duration_ms": 5,
        "pred_mean_ms": 1000.0, "pred_q_ms": 3000.0, "score": 4.5, "threshold": 3.0, "reason": "slow",
        "model_version": "v1", "features": {"num_joins": 2},
    }


def produce(settings: Settings, messages: list[bytes | dict]) -> None:
    producer = Producer(settings.kafka_client_config())
    for m in messages:
        if isinstance(m, dict):
            producer.produce(settings.topic_anomalies, key=anomaly_key(m), value=encode_anomaly(m),
                             headers=anomaly_headers())
        else:
            producer.produce(settings.topic_anomalies, key=b"1", value=m)
    producer.flush(10)


def test_contract_roundtrip_and_errors() -> None:
    row = anomaly_row(encode_anomaly(anomaly(3)))
    assert row["true_ms"] == 90_003 and row["pred_ms"] == 1000.0 and row["arrival_timestamp"].tzinfo is not None
    assert '"threshold":3.0' in row["features"]
    with pytest.raises(AnomalyContractError, match="query_id"):
        anomaly_row(encode_anomaly({k: v for k, v in anomaly(1).items() if k != "query_id"}))
    with pytest.raises(AnomalyContractError, match="invalid JSON"):
        anomaly_row(b"{")


def test_an_anomaly_of_an_event_with_megabytes_of_text_is_published_with_its_texts_cut(
        kafka_settings: Settings) -> None:
    import pyarrow as pa

    from workbench.pipeline.contracts import MAX_TEXT_CHARS, anomaly_messages
    from workbench.pipeline.scoring._publisher import AnomalyPublisher

    # a valid event as another producer may write it: the events topic takes 16 MB, a client message 1 MB
    tables, query_type = ",".join(["12345"] * 400_000), "select" + " " * 100_000
    scored = pa.table({
        "instance_id": pa.array([1, 2], pa.int64()), "query_id": pa.array([1, 2], pa.int64()),
        "arrival_timestamp": pa.array([T0, T0], pa.timestamp("us", "UTC")),
        "execution_duration_ms": pa.array([9_000_000, 9_000_000], pa.int64()), "query_type": [query_type, "select"],
        "read_table_ids": [tables, "1,2"], "pred_mean_ms": [10.0, 10.0], "score": [9.0, 9.0],
        "is_anomaly": [True, True], "model_version": ["v1", "v1"],
    })
    messages = anomaly_messages(scored)
    assert messages[0]["features"]["truncated"] == {"query_type": len(query_type), "read_table_ids": len(tables)}
    assert messages[0]["features"]["read_table_ids"] == tables[:MAX_TEXT_CHARS]
    assert "truncated" not in messages[1]["features"] and messages[1]["features"]["read_table_ids"] == "1,2"
    ensure_topics(kafka_settings)
    assert AnomalyPublisher(kafka_settings).publish(messages) == 2  # before: MSG_SIZE_TOO_LARGE stopped the app
    received = consume_all(kafka_settings, kafka_settings.topic_anomalies, expected=2)
    rows = sorted((anomaly_row(m.value()) for m in received), key=lambda row: row["query_id"])
    assert [row["query_id"] for row in rows] == [1, 2]
    assert orjson.loads(rows[0]["features"])["truncated"]["read_table_ids"] == len(tables)


def test_sink_idempotent_redelivery_dead_letters(kafka_settings: Settings) -> None:
    ensure_topics(kafka_settings)
    good = [anomaly(i) for i in range(500)]
    bad = orjson.dumps(dict(anomaly(9), query_id="nine"))
    produce(kafka_settings, [*good, b"not json", encode_anomaly(anomaly(1))[:-1], bad])  # type: ignore[list-item]
    first = run_anomaly_sink(kafka_settings, idle_exit=3, timeout=60, commit_interval=1.0)
    assert first["sink_rows"] == 500 and first["dead_letters"] == 3
    with AnomalyLakehouse.from_settings(kafka_settings, read_only=True) as lake:
        assert lake.count() == 500
    # re-delivery: the same messages again, and a fresh group re-reading everything
    produce(kafka_settings, good[:200])  # type: ignore[arg-type]
    second = run_anomaly_sink(kafka_settings, idle_exit=3, timeout=60, commit_interval=1.0)
    assert second["anomalies"] == 200 and second["sink_rows"] == 0
    third = run_anomaly_sink(kafka_settings, idle_exit=3, timeout=60, commit_interval=1.0, group="fresh")
    assert third["anomalies"] == 700 and third["sink_rows"] == 0
    with AnomalyLakehouse.from_settings(kafka_settings, read_only=True) as lake:
        assert lake.count() == 500
        table = lake.read()
        assert table["query_id"].to_pylist()[-1] == 3_000_000_499  # beyond int32
    dead = consume_all(kafka_settings, kafka_settings.topic_dead_letter, expected=3, timeout=20)
    assert len(dead) == 6  # 3 per pass of the first group + 3 again from the fresh group
    reasons = {dict(m.headers())["reason"].decode() for m in dead}
    assert any("invalid JSON" in r for r in reasons) and any("query_id" in r for r in reasons)
    assert all(dict(m.headers())["app"] == b"anomaly-sink" for m in dead)
    status = read_app_status(kafka_settings, "anomaly-sink")
    assert status is not None and status["state"] == "stopped"


_READER = """
import sys, time
from workbench.store.exceptions import LakehouseBusyError
from workbench.store.lakehouse import AnomalyLakehouse
counts = []
deadline = time.monotonic() + float(sys.argv[2])
# reads until it sees the final count (or the deadline), so a slow machine only makes it read longer
while time.monotonic() < deadline and (not counts or counts[-1] != int(sys.argv[3])):
    try:
        with AnomalyLakehouse(sys.argv[1], read_only=True) as lake:
            counts.append(lake.count())
    except Exception as exc:  # the catalog may not exist yet
        counts.append(-1)
    time.sleep(0.05)
print(",".join(map(str, counts)))
"""


def test_concurrent_reader_while_sink_writes(kafka_settings: Settings) -> None:
    ensure_topics(kafka_settings)
    with AnomalyLakehouse.from_settings(kafka_settings):  # create the catalog first
        pass
    produce(kafka_settings, [anomaly(i) for i in range(3000)])  # type: ignore[arg-type]
    reader = subprocess.Popen([sys.executable, "-c", _READER, str(kafka_settings.lakehouse_dir), "90", "3000"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        result = run_anomaly_sink(kafka_settings, idle_exit=3, timeout=60, commit_interval=0.2, maintain_every=5)
        out, err = reader.communicate(timeout=120)
    finally:
        if reader.poll() is None:
            reader.kill()
    assert result["sink_rows"] == 3000
    counts = [int(c) for c in out.strip().split(",") if c]
    assert counts, err
    seen = [c for c in counts if c >= 0]
    assert len(seen) > len(counts) // 2, (counts, err[-2000:])
    assert seen == sorted(seen)  # a reader only ever sees committed snapshots, growing
    assert seen[-1] == 3000
    assert result["maintenance_runs"] >= 1


def _batch(messages: list[dict]) -> SinkBatch:
    batch = SinkBatch(topic="anomalies", partition=0)
    for offset, message in enumerate(messages):
        batch.append(anomaly_row(encode_anomaly(message)), anomaly_key(message), 0, [], offset)
    return batch


def test_the_sink_opens_the_lakehouse_with_its_first_rows_not_at_start(tmp_path: Path) -> None:
    lake = AnomalyLakehouse(tmp_path / "lake")
    sink = DuckLakeSink(lake, maintain_every=0, maintain_interval_s=0)
    sink.setup()  # what Quix calls when the app starts
    sink.write(_batch([]))
    assert not (tmp_path / "lake" / "catalog.sqlite").exists()
    sink.write(_batch([anomaly(1), anomaly(2)]))
    sink.write(_batch([anomaly(2), anomaly(3)]))  # a re-delivered row is skipped, as before
    lake.close()
    with AnomalyLakehouse(tmp_path / "lake", read_only=True) as reader:
        assert sorted(reader.read()["query_id"].to_pylist()) == [3_000_000_001, 3_000_000_002, 3_000_000_003]


def test_a_busy_catalog_at_the_first_open_is_backpressure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lake = AnomalyLakehouse(tmp_path / "lake")

    def busy() -> AnomalyLakehouse:
        raise LakehouseBusyError("catalog locked", retry_after=0.5)

    monkeypatch.setattr(lake, "open", busy)
    sink = DuckLakeSink(lake)
    with pytest.raises(SinkBackpressureError):
        sink.write(_batch([anomaly(1)]))
    monkeypatch.undo()
    sink.write(_batch([anomaly(1)]))  # the retried batch opens it
    assert lake.count() == 1
    lake.close()


def test_a_sink_fed_only_malformed_messages_dead_letters_them_without_opening_the_lakehouse(
        kafka_settings: Settings) -> None:
    ensure_topics(kafka_settings)
    produce(kafka_settings, [b"not json", encode_anomaly(anomaly(1))[:-1]])
    result = run_anomaly_sink(kafka_settings, idle_exit=3, timeout=60, commit_interval=1.0)
    assert result["dead_letters"] == 2 and result["sink_rows"] == 0 and result["anomalies"] == 0
    assert len(consume_all(kafka_settings, kafka_settings.topic_dead_letter, expected=2, timeout=20)) == 2
    assert not (kafka_settings.lakehouse_dir / "catalog.sqlite").exists()


def test_an_unreachable_postgres_catalog_stops_the_sink_process_at_start(kafka_settings: Settings) -> None:
    """The lakehouse opens lazily, with the first anomaly (maybe days into a replay): a PostgreSQL catalog
    that does not answer is found when the process starts, named, and exits it (no traceback)."""
    from tests.helpers import free_port_pair

    env = {**kafka_settings.to_env(), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "WORKBENCH_LAKEHOUSE_CATALOG": f"postgres:host=127.0.0.1 port={free_port_pair()} dbname=lake"}
    done = subprocess.run([sys.executable, "-m", "workbench.cli", "app", "anomaly-sink"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "WORKBENCH_LAKEHOUSE_CATALOG" in done.stderr and "Connection refused" in done.stderr, done.stderr


def test_a_nul_in_the_model_version_is_dead_lettered_and_the_batch_around_it_is_stored(
        kafka_settings: Settings) -> None:
    """DuckLake inlines the key's text into the SQL that lists the files to check: a NUL broke that SQL, so one
    such message failed the sink's whole batch at every redelivery (the app stopped, the anomalies beside it
    were never stored). The contract refuses it; NULs in other texts are stored as they are."""
    ensure_topics(kafka_settings)
    other_texts = dict(anomaly(2), reason="sl\x00ow", query_type="sel\x00ect", features={"fp\x00": "x\x00"})
    nul = orjson.dumps(dict(anomaly(1), query_id=3_000_000_003, model_version="v1\x00"))  # the encoder refuses it
    produce(kafka_settings, [anomaly(1), nul, other_texts, anomaly(4)])  # type: ignore[list-item]
    stats = run_anomaly_sink(kafka_settings, idle_exit=3, timeout=60, commit_interval=1.0)
    assert stats["sink_rows"] == 3 and stats["dead_letters"] == 1
    with AnomalyLakehouse.from_settings(kafka_settings, read_only=True) as lake:
        stored = lake.read()
    assert sorted(stored["query_id"].to_pylist()) == [3_000_000_001, 3_000_000_002, 3_000_000_004]
    assert "sl\x00ow" in stored["reason"].to_pylist()
    [dead] = consume_all(kafka_settings, kafka_settings.topic_dead_letter, expected=1, timeout=20)
    headers = dict(dead.headers())
    assert headers["reason"].decode() == ("anomaly_contract: anomaly field 'model_version' must not contain a NUL "
                                          "character. Got 'v1\\x00'.")
    assert (headers["source_topic"].decode(), headers["source_offset"]) == (kafka_settings.topic_anomalies, b"1")
