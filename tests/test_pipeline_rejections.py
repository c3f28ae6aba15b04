"""Every malformed family, produced into the apps on the real broker: dead-lettered once with its reason,
the app keeps running (returns normally) and the valid events after each bad one are processed."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer

from tests.helpers import consume_all, make_log
from tests.test_codec import REJECTED, _batch
from workbench.broker import ensure_topics
from workbench.config import Settings
from workbench.data import codec
from workbench.pipeline import run_analytics
from workbench.pipeline.anomaly_sink import run_anomaly_sink
from workbench.pipeline.contracts import anomaly_headers
from workbench.pipeline.scoring import run_scoring
from workbench.replay import Replay
from workbench.replay.exceptions import ReplayError
from workbench.store.lakehouse import AnomalyLakehouse
from workbench.store.window_stats import WindowStatsStore

T0 = datetime(2024, 3, 4, 12, 0, tzinfo=UTC)
BIG = 16 * 1024 * 1024


def _event(i: int, when: datetime | None = None) -> bytes:
    row = orjson.loads(codec.encode_json(_batch(1))[0])
    row.update(query_id=10_000 + i, arrival_timestamp=(when or T0 + timedelta(seconds=i)).isoformat())
    return orjson.dumps(row)


def _families() -> list[tuple[str, bytes, list, bytes | None, str]]:
    """(family, value, headers, key, reason) of every malformed message, event-time and size included."""
    json_headers = codec.message_headers("json", 1)
    out = [(name, value, headers, key, reason) for name, (value, headers, key, reason) in sorted(REJECTED.items())]
    out += [
        ("year 2035", _event(900, datetime(2035, 1, 1, tzinfo=UTC)), json_headers, b"7", "event_time_out_of_range"),
        ("year 1999", _event(901, datetime(1999, 1, 1, tzinfo=UTC)), json_headers, b"7", "event_time_out_of_range"),
        ("year 9999", _event(902, datetime(9999, 1, 1, tzinfo=UTC)), json_headers, b"7", "event_time_out_of_range"),
        ("8 days ahead", _event(903, T0 + timedelta(days=8)), json_headers, b"7", "event_time_out_of_range"),
        ("2 MB of random bytes", os.urandom(2 * 1024 * 1024), json_headers, b"7", "invalid_json"),
        ("no key", _event(904), json_headers, None, "bad_key"),
        ("two minus signs in the key", _event(905), json_headers, b"--7", "bad_key"),
        ("an end-of-log marker that holds rows", _event(906),
         [*codec.message_headers("json", 0), (codec.END_OF_LOG_HEADER, b"1709769600000000")], None, "rows_mismatch"),
        ("an end-of-log header on a row", _event(907),
         [*json_headers, (codec.END_OF_LOG_HEADER, b"1709769600000000")], b"7", "bad_header"),
    ]
    return out


def _produce(settings: Settings) -> tuple[dict[int, tuple[str, str]], int]:
    """Valid, bad, valid, bad, ... into partition 0; returns {offset: (family, reason)} and the valid count."""
    producer = Producer({**settings.kafka_client_config(), "message.max.bytes": BIG, "enable.idempotence": True})
    topic = settings.topic_query_events
    json_headers = codec.message_headers("json", 1)
    sent: list[tuple[str, str] | None] = []
    for i, (family, value, headers, key, reason) in enumerate(_families()):
        producer.produce(topic, key=b"7", value=_event(i), headers=json_headers, partition=0)
        sent.append(None)
        producer.produce(topic, key=key, value=value, headers=headers, partition=0)
        sent.append((family, reason))
    producer.produce(topic, key=b"7", value=_event(999), headers=json_headers, partition=0)
    sent.append(None)
    assert producer.flush(30) == 0
    return {offset: s for offset, s in enumerate(sent) if s is not None}, sent.count(None)


def _assert_dead_letters(settings: Settings, app: str, expected: dict[int, tuple[str, str]]) -> None:
    dead = [m for m in consume_all(settings, settings.topic_dead_letter, timeout=60)
            if dict(m.headers())["app"] == app.encode()]
    by_offset: dict[int, list[str]] = {}
    truncated = 0
    for message in dead:
        headers = dict(message.headers())
        assert headers["source_topic"] == settings.topic_query_events.encode()
        assert headers["source_partition"] == b"0"
        by_offset.setdefault(int(headers["source_offset"]), []).append(headers["reason"].decode())
        if headers.get("truncated") == b"true":  # the 2 MB value: stored cut, with its size and checksum
            assert int(headers["original_size"]) == 2 * 1024 * 1024 and len(headers["original_sha256"]) == 64
            assert len(message.value()) == 512 * 1024
            truncated += 1
    assert truncated == 1
    wrong = {expected[o][0]: (expected[o][1], r) for o, r in by_offset.items()
             if o in expected and (len(r) != 1 or not r[0].startswith(expected[o][1] + ": "))}
    assert not wrong, wrong  # family: (expected reason, reasons got)
    assert set(by_offset) == set(expected), {expected[o][0] for o in set(expected) - set(by_offset)}


def test_analytics_and_scoring_dead_letter_every_family_once_and_keep_going(kafka_settings: Settings) -> None:
    settings = kafka_settings
    ensure_topics(settings)
    expected, valid = _produce(settings)

    result = run_analytics(settings, idle_exit=4, timeout=150, commit_interval=1.0)
    assert result["dead_letters"] == len(expected), result.counters
    assert result["events"] == valid
    _assert_dead_letters(settings, "analytics", expected)
    with WindowStatsStore(settings.sqlite_path, read_only=True) as store:
        windows = store.read().to_pylist()
    assert sum(w["total_queries"] for w in windows) == valid
    assert max(w["window_start"] for w in windows) < T0 + timedelta(hours=1)  # no window in 2035 or 9999

    result = run_scoring(settings, idle_exit=8, timeout=150, train=False, batch_seconds=0.3)
    assert result["dead_letters"] == len(expected), result.counters
    assert result["events"] == valid
    assert result.info["max_event_time"] < (T0 + timedelta(hours=1)).isoformat()  # the guard kept event time
    _assert_dead_letters(settings, "scoring", expected)


def test_a_header_name_that_is_not_utf8_is_dead_lettered_by_every_app_and_they_go_on(kafka_settings: Settings) -> None:
    """confluent-kafka cannot read such a name: Message.headers() raised, and a second call returned a list that
    crashed the interpreter. Scoring, analytics and the anomaly sink restarted for good on that one message."""
    from tests.helpers import produce_raw

    settings = kafka_settings
    ensure_topics(settings)
    bad_name = (b"\xff\xfe-bad-name", b"v")
    events = settings.topic_query_events
    producer = Producer({**settings.kafka_client_config(), "enable.idempotence": True})
    producer.produce(events, key=b"7", value=_event(1), headers=codec.message_headers("json", 1), partition=0)
    assert producer.flush(10) == 0
    contract = [(k.encode(), v) for k, v in codec.message_headers("json", 1)]
    assert produce_raw(settings.bootstrap_servers, events, 0, b"7", _event(2), [*contract, bad_name]) == 0
    producer.produce(events, key=b"7", value=_event(3), headers=codec.message_headers("json", 1), partition=0)
    good = {"instance_id": 1, "query_id": 1, "model_version": "v1", "arrival_timestamp": T0.isoformat(),
            "execution_duration_ms": 90_000, "pred_mean_ms": 1000.0}
    sink_contract = [(k.encode(), v) for k, v in anomaly_headers()]
    assert produce_raw(settings.bootstrap_servers, settings.topic_anomalies, 0, b"1", orjson.dumps(good),
                       [*sink_contract, bad_name]) == 0
    producer.produce(settings.topic_anomalies, key=b"1", value=orjson.dumps(dict(good, query_id=2)),
                     headers=anomaly_headers(), partition=0)
    assert producer.flush(10) == 0

    analytics = run_analytics(settings, idle_exit=4, timeout=120, commit_interval=1.0)
    scoring = run_scoring(settings, idle_exit=8, timeout=120, train=False, batch_seconds=0.3)
    sink = run_anomaly_sink(settings, idle_exit=4, timeout=90, commit_interval=0.5)
    for result in (analytics, scoring):
        assert (result["events"], result["dead_letters"]) == (2, 1), result.counters
    assert (sink["sink_rows"], sink["dead_letters"]) == (1, 1), sink.counters
    dead = consume_all(settings, settings.topic_dead_letter, expected=3, timeout=30)
    reasons = {(dict(m.headers())["app"].decode(), int(dict(m.headers())["source_offset"])):
               dict(m.headers())["reason"].decode() for m in dead}
    assert set(reasons) == {("analytics", 1), ("scoring", 1), ("anomaly-sink", 0)}
    assert all(r.startswith("bad_header: the Kafka client could not read the message's headers") and
               "a header name must be UTF-8 text" in r for r in reasons.values()), reasons
    assert all(m.value() for m in dead)  # the value is kept, to be read again


def test_an_unreadable_anomaly_as_a_partitions_last_message_is_dead_lettered_once_across_restarts(
        kafka_settings: Settings) -> None:
    """The sink dead-lettered it from Quix's consumer-error path, which stores no offset: each restart read
    it again and dead-lettered it again, as long as no later message came."""
    from tests.helpers import produce_raw

    settings = kafka_settings
    ensure_topics(settings)
    good = {"instance_id": 1, "query_id": 1, "model_version": "v1", "arrival_timestamp": T0.isoformat(),
            "execution_duration_ms": 90_000, "pred_mean_ms": 1000.0}
    producer = Producer({**settings.kafka_client_config(), "enable.idempotence": True})
    producer.produce(settings.topic_anomalies, key=b"1", value=orjson.dumps(good), headers=anomaly_headers(),
                     partition=0)
    assert producer.flush(10) == 0
    sink_contract = [(k.encode(), v) for k, v in anomaly_headers()]
    assert produce_raw(settings.bootstrap_servers, settings.topic_anomalies, 0, b"1",
                       orjson.dumps(dict(good, query_id=2)), [*sink_contract, (b"\xff-name", b"v")]) == 0
    first = run_anomaly_sink(settings, idle_exit=4, timeout=90, commit_interval=0.5)
    again = run_anomaly_sink(settings, idle_exit=4, timeout=90, commit_interval=0.5)
    assert (first["sink_rows"], first["dead_letters"]) == (1, 1), first.counters
    assert (again["sink_rows"], again["dead_letters"]) == (0, 0), again.counters
    dead = consume_all(settings, settings.topic_dead_letter, to_end=True)
    assert [int(dict(m.headers())["source_offset"]) for m in dead] == [1]


def test_an_end_of_log_marker_dated_past_the_horizon_is_dead_lettered_and_a_plausible_one_is_taken(
        kafka_settings: Settings) -> None:
    """Any producer can write a marker: one dated 2099 was taken as the log's end, and every later window
    of its partition was settled for good. It is held to an event's horizon now."""
    settings = kafka_settings
    ensure_topics(settings)
    events = settings.topic_query_events
    producer = Producer({**settings.kafka_client_config(), "enable.idempotence": True})
    json_headers = codec.message_headers("json", 1)
    producer.produce(events, key=b"7", value=_event(1), headers=json_headers, partition=0)
    forged, forged_headers = codec.end_of_log_message(int(datetime(2099, 1, 1, tzinfo=UTC).timestamp() * 1e6))
    producer.produce(events, value=forged, headers=forged_headers, partition=0)  # offset 1
    producer.produce(events, key=b"7", value=_event(2), headers=json_headers, partition=0)
    end_us = int((T0 + timedelta(seconds=2)).timestamp() * 1e6)
    plausible, plausible_headers = codec.end_of_log_message(end_us)
    producer.produce(events, value=plausible, headers=plausible_headers, partition=0)  # offset 3
    assert producer.flush(10) == 0

    analytics = run_analytics(settings, idle_exit=4, timeout=120, commit_interval=1.0)
    scoring = run_scoring(settings, idle_exit=8, timeout=120, train=False, batch_seconds=0.3)
    for result in (analytics, scoring):
        assert (result["events"], result["dead_letters"]) == (2, 1), result.counters
    dead = consume_all(settings, settings.topic_dead_letter, to_end=True)
    reasons = {dict(m.headers())["app"].decode(): (int(dict(m.headers())["source_offset"]),
                                                    dict(m.headers())["reason"].decode()) for m in dead}
    assert set(reasons) == {"analytics", "scoring"} and len(dead) == 2
    for offset, reason in reasons.values():
        assert offset == 1 and reason.startswith("event_time_out_of_range: end-of-log marker time 2099-01-01"), reason
    with WindowStatsStore(settings.sqlite_path, read_only=True) as store:
        assert store.log_ends() == {7: end_us // 1000}


def test_the_anomaly_sink_dead_letters_values_the_lakehouse_cannot_hold(kafka_settings: Settings) -> None:
    settings = kafka_settings
    ensure_topics(settings)
    good = {"instance_id": 1, "query_id": 1, "model_version": "v1", "arrival_timestamp": T0.isoformat(),
            "execution_duration_ms": 90_000, "pred_mean_ms": 1000.0}
    bad = {
        "int above 2**63": dict(good, query_id=2**63 + 5),
        "time overflows to UTC": dict(good, arrival_timestamp="9999-12-31T23:00:00-05:00"),
        "wrong type": dict(good, pred_mean_ms="fast"),
        "a negative duration": dict(good, execution_duration_ms=-5),
        "a name as long as a text": dict(good, model_version="v" * 100_000),
        "outside the events' years": dict(good, arrival_timestamp="3000-01-01T00:00:00+00:00"),
    }
    producer = Producer({**settings.kafka_client_config(), "enable.idempotence": True})
    topic = settings.topic_anomalies
    families: dict[int, str] = {}
    offset = 0
    envelopes = [("not json", b"{"), ("key not UTF-8", good), ("no key", good), ("another schema", good)]
    for i, (family, message) in enumerate([*bad.items(), *envelopes]):
        value = message if isinstance(message, bytes) else orjson.dumps(message)
        # the contract's key is the instance id as text
        key = {"key not UTF-8": b"\xff", "no key": None}.get(family, b"1")
        headers = [("schema", b"anomaly-v9")] if family == "another schema" else anomaly_headers()
        producer.produce(topic, key=key, value=value, headers=headers, partition=0)
        families[offset] = family
        # a valid one after each, the last without an actual execution time (a queue alert): null-safe
        after = dict(good, query_id=100 + i, execution_duration_ms=None if family == "key not UTF-8" else 90_000)
        producer.produce(topic, key=b"1", value=orjson.dumps(after), headers=anomaly_headers(), partition=0)
        offset += 2
    assert producer.flush(10) == 0
    result = run_anomaly_sink(settings, idle_exit=4, timeout=90, commit_interval=0.5)
    assert result["dead_letters"] == len(families) and result["sink_rows"] == len(families), result.counters
    dead = consume_all(settings, settings.topic_dead_letter, expected=len(families), timeout=30)
    got = {int(dict(m.headers())["source_offset"]): dict(m.headers())["reason"].decode() for m in dead}
    assert set(got) == set(families)
    late = [offset for offset, family in families.items() if family == "outside the events' years"]
    assert got.pop(late[0]).startswith("event_time_out_of_range: event time 3000-01-01T00:00:00+00:00 is outside")
    assert all(reason.startswith("anomaly_contract: ") for reason in got.values())
    with AnomalyLakehouse.from_settings(settings, read_only=True) as lake:
        rows = lake.read()
    assert rows.num_rows == len(families)
    assert pa.compute.sum(rows["true_ms"].is_null()).as_py() == 1
    envelope = {family: offset for offset, family in families.items()}
    assert "no key" in got[envelope["no key"]] and "'anomaly-v9'" in got[envelope["another schema"]]
    assert "must be >= 0" in got[envelope["a negative duration"]]
    assert "at most 200 characters" in got[envelope["a name as long as a text"]]


def test_replay_sends_the_named_encoding(kafka_settings: Settings, tmp_path: Path) -> None:
    ensure_topics(kafka_settings)
    log = make_log(tmp_path / "l.parquet", rows=300, instances=3)
    with pytest.raises(ReplayError, match="at most 1 row"):
        Replay(log, settings=kafka_settings, speedup=0, pack=5, encoding="json")
    Replay(log, settings=kafka_settings, speedup=0, pack=50, encoding="arrow-zstd").run()
    messages = consume_all(kafka_settings, kafka_settings.topic_query_events, expected=1, timeout=30)
    assert {codec.header(m.headers(), "encoding") for m in messages} == {"arrow-zstd"}
    decoded = codec.decode_values([m.value() for m in messages], headers=[m.headers() for m in messages],
                                  keys=[m.key() for m in messages])
    assert decoded.errors == [] and decoded.batch.num_rows == 300
    assert sorted(decoded.batch.column("query_id").to_pylist()) == sorted(pq.read_table(log)["query_id"].to_pylist())


def test_dead_letters_are_read_back_by_the_api_and_the_command(
        kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Reading the reasons needed a hand-written consumer (a tester's finding): `workbench dead-letters`
    counts them by app and reason and shows the newest with their source message."""
    from workbench.cli import main
    from workbench.pipeline import read_dead_letters

    settings = kafka_settings
    ensure_topics(settings)
    assert read_dead_letters(settings).num_rows == 0
    producer = Producer(settings.kafka_client_config())
    json_headers = codec.message_headers("json", 1)
    events = settings.topic_query_events
    producer.produce(events, key=b"7", value=b"{not json", headers=json_headers, partition=0)
    producer.produce(events, key=b"7", value=_event(1), headers=json_headers, partition=0)
    producer.produce(events, key=b"7", value=_event(2, datetime(2150, 1, 1, tzinfo=UTC)), headers=json_headers,
                     partition=0)
    assert producer.flush(10) == 0
    assert run_analytics(settings, idle_exit=4, timeout=120, commit_interval=1.0)["dead_letters"] == 2
    table = read_dead_letters(settings)
    rows = table.select(["app", "code", "source_topic", "source_partition", "source_offset", "value"]).to_pylist()
    assert sorted(rows, key=lambda r: r["source_offset"]) == [
        {"app": "analytics", "code": "invalid_json", "source_topic": events, "source_partition": 0,
         "source_offset": 0, "value": b"{not json"},
        {"app": "analytics", "code": "event_time_out_of_range", "source_topic": events, "source_partition": 0,
         "source_offset": 2, "value": _event(2, datetime(2150, 1, 1, tzinfo=UTC))}]
    assert read_dead_letters(settings, last=1)["source_offset"].to_pylist() == [2]
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    assert main(["dead-letters", "--last", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"2 dead letters on {settings.topic_dead_letter}\n")
    assert "1  analytics     invalid_json" in out and "1  analytics     event_time_out_of_range" in out
    assert f"analytics  {events}[0]@2" in out and f"{events}[0]@0" not in out  # the newest one only
    assert main(["dead-letters", "--code", "invalid_json", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert orjson.loads(line)["value_start"] == "{not json"
    with pytest.raises(SystemExit) as refused:
        main(["dead-letters", "--last", "0"])
    assert refused.value.code == 2 and "must be a positive whole number, not '0'" in capsys.readouterr().err


def test_a_dead_letter_the_broker_refuses_is_never_lost(kafka_settings: Settings) -> None:
    """Letters were produced and flushed without asking whether the broker took them: with the dead-letter
    topic deleted, or taking smaller messages than a letter, they were logged as sent and lost, and the app
    committed past their source (a tester's finding). Now the topic is made again, a letter too large for it
    is kept cut (the whole value is at its source offset), and anything else stops the app uncommitted."""
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

    settings = kafka_settings
    ensure_topics(settings)
    admin = AdminClient(settings.kafka_client_config())
    dead_topic = settings.topic_dead_letter
    admin.delete_topics([dead_topic], operation_timeout=20)[dead_topic].result(30)
    for _ in range(60):  # deletion is asynchronous
        if dead_topic not in admin.list_topics(timeout=10).topics:
            break
        time.sleep(0.5)
    producer = Producer(settings.kafka_client_config())
    json_headers = codec.message_headers("json", 1)
    producer.produce(settings.topic_query_events, key=b"7", value=b"{not json", headers=json_headers, partition=0)
    assert producer.flush(10) == 0
    assert run_analytics(settings, idle_exit=4, timeout=120, commit_interval=1.0)["dead_letters"] == 1
    (letter,) = consume_all(settings, dead_topic, to_end=True)
    assert letter.value() == b"{not json"

    resource = ConfigResource("topic", dead_topic, incremental_configs=[
        ConfigEntry("max.message.bytes", "20000", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([resource])[resource].result(30)
    junk = b"{" + b"x" * 200_000
    producer.produce(settings.topic_query_events, key=b"7", value=junk, headers=json_headers, partition=0)
    assert producer.flush(10) == 0
    assert run_analytics(settings, idle_exit=4, timeout=120, commit_interval=1.0)["dead_letters"] == 1
    letters = consume_all(settings, dead_topic, to_end=True)
    assert len(letters) == 2 and letters[1].value() == junk[:1024]
    headers = dict(letters[1].headers())
    assert headers["truncated"] == b"true" and headers["original_size"] == str(len(junk)).encode()
