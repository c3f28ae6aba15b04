"""Messages the broker deleted before the apps read them are told (a dead letter, a counter), not skipped in
silence; offsets skipped for another reason (an aborted transaction) are not."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from tests.helpers import consume_all, make_log
from tests.test_pipeline_analytics import produce_json
from workbench.broker import ensure_topics
from workbench.config import Settings
from workbench.data import codec
from workbench.pipeline import read_dead_letters, run_analytics, run_scoring
from workbench.replay import Replay
from workbench.store.shards import read_shards
from workbench.store.window_stats import WindowStatsStore


def _stored_queries(settings: Settings) -> int:
    with WindowStatsStore(settings.sqlite_path, read_only=True) as store:
        return sum(row["total_queries"] for row in store.read().to_pylist())


def _run_both(settings: Settings) -> tuple[dict, dict]:
    analytics = run_analytics(settings, idle_exit=4, timeout=90, commit_interval=1.0)
    scoring = run_scoring(settings, idle_exit=4, timeout=120, train=False, batch_seconds=0.3)
    return analytics.counters, scoring.counters


def test_records_deleted_before_the_apps_read_them_are_dead_lettered_with_their_range(
        kafka_settings: Settings, tmp_path: Path) -> None:
    """Tester A (32nd session): records deleted by delete-records (or retention) while the apps were stopped
    were skipped with a raw librdkafka line only: a whole day missing from the shards and the training,
    the status clean."""
    settings = kafka_settings
    ensure_topics(settings)
    topic = settings.topic_query_events
    first = make_log(tmp_path / "first.parquet", rows=300, instances=1, spacing_s=10)
    Replay(first, settings=settings, speedup=0, pack=1).run()
    partition = consume_all(settings, topic, expected=300)[0].partition()

    # another producer's transaction, aborted: offsets no reader sees, never deleted
    aborted = Producer({**settings.kafka_client_config(), "transactional.id": "test-aborted"})
    aborted.init_transactions(30)
    aborted.begin_transaction()
    rows = pq.read_table(first).slice(0, 5)
    for value in codec.encode_json(rows.to_batches()[0]):
        aborted.produce(topic, key=b"1", value=value, headers=codec.message_headers(codec.ENCODING_JSON, 1),
                        partition=partition)
    aborted.abort_transaction(30)

    counters = _run_both(settings)
    assert [c["deleted_before_read"] for c in counters] == [0, 0], counters
    assert _stored_queries(settings) == 300 and read_shards(settings.shards_dir).num_rows == 300
    assert read_dead_letters(settings).num_rows == 0

    # 300 later queries, of which the broker deletes the first 200 before the apps run again
    later = make_log(tmp_path / "later.parquet", rows=300, instances=1, spacing_s=10, start="2024-03-05T00:00:00")
    producer = Producer(settings.kafka_client_config())
    later_rows = pq.read_table(later)
    later_rows = later_rows.set_column(later_rows.schema.get_field_index("query_id"), "query_id",
                                       pc.add(later_rows.column("query_id"), 1))  # other queries than the first's
    produce_json(producer, topic, later_rows, partition=partition)
    producer.flush(30)
    admin = AdminClient(settings.kafka_client_config())
    high = consume_all(settings, topic, expected=600)[-1].offset() + 1
    deleted_to = high - 100
    for future in admin.delete_records([TopicPartition(topic, partition, deleted_to)]).values():
        future.result(30)

    counters = _run_both(settings)
    # the committed offset is the one after the aborted transaction's marker; the range ends before deleted_to
    for app_counters in counters:
        assert 200 <= app_counters["deleted_before_read"] <= 202, counters  # at most the two markers with them
    assert _stored_queries(settings) == 400 and read_shards(settings.shards_dir).num_rows == 400
    letters = read_dead_letters(settings).to_pylist()
    assert sorted(letter["app"] for letter in letters) == ["analytics", "scoring"], letters
    for letter in letters:
        assert letter["code"] == "deleted_before_read" and letter["value_bytes"] == 0
        assert (letter["source_topic"], letter["source_partition"]) == (topic, partition)
        assert f" of {topic}[{partition}] (" in letter["reason"] and "Reset" in letter["reason"], letter["reason"]
        start, end = letter["reason"].split("offsets ", 1)[1].split(" of ", 1)[0].split("..")
        assert int(end) == deleted_to - 1 and letter["source_offset"] == int(start)
        assert int(end) - int(start) + 1 in (counters[0]["deleted_before_read"], counters[1]["deleted_before_read"])
