"""The restart check of the scoring app's training schedule (``scoring._resume``), on the real broker.

``backlog_empty`` decides when a restarted app may take its watermark from the shards: only when the
consumer group has no committed record left to deliver. Transaction commit markers (the replay writes
in transactions) and aborted records must not count as events.
"""

from __future__ import annotations

import uuid

from confluent_kafka import Consumer, Producer, TopicPartition

from workbench.broker import ensure_topics
from workbench.config import Settings
from workbench.pipeline.scoring._resume import backlog_empty


def _produce_in_transactions(settings: Settings, topic: str, *, commit: int, abort: int) -> None:
    producer = Producer({**settings.kafka_client_config(), "transactional.id": f"test-{uuid.uuid4().hex[:8]}"})
    producer.init_transactions(30)
    for n, finish in ((commit, producer.commit_transaction), (abort, producer.abort_transaction)):
        if not n:
            continue
        producer.begin_transaction()
        for i in range(n):
            producer.produce(topic, key=b"1", value=b"%d" % i, partition=0)
        finish(30)


def _commit(settings: Settings, topic: str, group: str, offset: int) -> None:
    consumer = Consumer({**settings.kafka_client_config(), "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    finally:
        consumer.close()


def test_backlog_is_empty_only_when_every_committed_record_was_consumed(kafka_settings: Settings) -> None:
    settings = kafka_settings
    ensure_topics(settings)
    topic, group = settings.topic_query_events, "workbench-scoring"
    assert backlog_empty(settings, topic, group)  # an empty topic, never committed
    _produce_in_transactions(settings, topic, commit=5, abort=0)
    assert not backlog_empty(settings, topic, group)  # never committed: read from the start
    _commit(settings, topic, group, 3)
    assert not backlog_empty(settings, topic, group)  # records 3 and 4 wait
    _commit(settings, topic, group, 5)  # offset 5 holds the commit marker, never delivered
    assert backlog_empty(settings, topic, group)
    _produce_in_transactions(settings, topic, commit=0, abort=4)  # aborted records are no events
    assert backlog_empty(settings, topic, group)
    _produce_in_transactions(settings, topic, commit=1, abort=0)
    assert not backlog_empty(settings, topic, group)
