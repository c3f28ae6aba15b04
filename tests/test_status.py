"""Consumer lag as the workbench reports it, on the real broker with transactional producers."""

from __future__ import annotations

import uuid

from confluent_kafka import Consumer, Producer, TopicPartition

from workbench.broker import ensure_topics
from workbench.config import Settings
from workbench.runtime._status import consumer_lag


def _produce_in_transactions(settings: Settings, topic: str, messages: int) -> None:
    producer = Producer({**settings.kafka_client_config(), "transactional.id": f"test-{uuid.uuid4().hex[:8]}"})
    producer.init_transactions(30)
    for i in range(messages):  # one transaction each: every data message is followed by a marker
        producer.begin_transaction()
        producer.produce(topic, key=b"1", value=str(i).encode(), partition=0)
        producer.commit_transaction(30)


def _commit(settings: Settings, group: str, topic: str, offset: int) -> None:
    consumer = Consumer({**settings.kafka_client_config(), "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    finally:
        consumer.close()


def test_lag_counts_data_messages_not_transaction_markers(kafka_settings: Settings) -> None:
    ensure_topics(kafka_settings)
    topic = kafka_settings.topic_anomalies
    _produce_in_transactions(kafka_settings, topic, 3)  # offsets 0..5: data, marker, data, marker, ...
    assert consumer_lag(kafka_settings, "nobody-yet", topic) == 3
    _commit(kafka_settings, "halfway", topic, 2)  # consumed the first message and its marker
    assert consumer_lag(kafka_settings, "halfway", topic) == 2
    _commit(kafka_settings, "all-read", topic, 5)  # consumed up to the last marker, which is never delivered
    assert consumer_lag(kafka_settings, "all-read", topic) == 0
