"""The consumer settings every app shares (CONSUMER_DEFAULTS), on the real broker."""

from __future__ import annotations

import statistics
import time
import uuid

from confluent_kafka import Consumer, Producer

from workbench.broker import ensure_topics
from workbench.config import Settings
from workbench.pipeline import CONSUMER_DEFAULTS


def _first_message(consumer: Consumer, deadline: float):
    while time.monotonic() < deadline:
        message = consumer.poll(0.02)
        if message is not None and not message.error():
            return message
    raise AssertionError("no message before the deadline")


def test_a_held_fetch_is_answered_when_a_transaction_commits(kafka_settings: Settings) -> None:
    """The apps let the broker hold a fetch that finds nothing (fetch.wait.max.ms) so that idle apps ask
    rarely; that must not delay data: the broker answers the held fetch once a transaction commits.
    The wait here is 5 s, so an answer only at the end of the wait could not pass."""
    ensure_topics(kafka_settings)
    topic = kafka_settings.topic_query_events
    config = kafka_settings.kafka_client_config()
    consumer = Consumer({**config, **CONSUMER_DEFAULTS, "fetch.wait.max.ms": 5000,
                         "group.id": f"held-fetch-{uuid.uuid4().hex[:8]}", "auto.offset.reset": "earliest"})
    producer = Producer({**config, "transactional.id": f"held-fetch-{uuid.uuid4().hex[:8]}"})
    try:
        consumer.subscribe([topic])
        producer.init_transactions(30)
        deadline = time.monotonic() + 30
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(0.1)
        assert consumer.assignment(), "the consumer was never assigned its partitions"
        latencies = []
        for index in range(5):
            consumer.poll(0.5)  # nothing new: the consumer's next fetch waits at the broker
            producer.begin_transaction()
            sent = time.monotonic()
            producer.produce(topic, key=b"1", value=str(index).encode())
            producer.commit_transaction(30)
            assert _first_message(consumer, sent + 30).value() == str(index).encode()
            latencies.append(time.monotonic() - sent)
    finally:
        consumer.close()
    assert statistics.median(latencies) < 1.0, latencies
