"""Resuming the training schedule after a restart, from durable state only.

Trainings follow the sink's event-time watermark (``_training``), which lives in memory: a scoring
app restarted after it had consumed every event never sees an event again, so without this it
would never schedule the last finished days, and their rows would wait unscored for new input.

So a restarted app (one that finds shards on disk) takes the watermark from the shards: the newest
stored event time. It does so only once nothing is left to deliver: every partition of the event
topic, read from the consumer group's committed offset (``read_committed``, as the app reads),
reaches its end without a record. Offsets are committed only after their events' shards are
written, so then every event is durably in the shards, and the stored maximum is exactly the
watermark an uninterrupted run reaches once its partitions fall silent: the restarted app schedules
the same trainings (a version is still a function of its fully stored window), and the waiting
rows are rescored by their event-time versions as usual.
"""

from __future__ import annotations

import logging
import time
from typing import Final

import pyarrow.compute as pc
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from workbench.config import Settings

__all__ = ["ResumeProbe", "backlog_empty", "stored_watermark_us"]

logger = logging.getLogger(__name__)

_RECHECK_S: Final = 2.0


def stored_watermark_us(settings: Settings) -> int | None:
    """The newest event time (epoch us) in the shards, or None when there are none."""
    from workbench.store.shards import list_days, read_shards

    days = list_days(settings.shards_dir)
    for day in reversed(days):  # the newest day with rows (a day folder may hold only empty files)
        times = read_shards(settings.shards_dir, [day], columns=["arrival_timestamp"], dedupe=False)
        if times.num_rows:
            return int(pc.max(times.column("arrival_timestamp").cast("int64")).as_py())
    return None


def backlog_empty(settings: Settings, topic: str, group: str, *, timeout: float = 10.0) -> bool:
    """True when no partition of ``topic`` has a committed record past ``group``'s committed offset.

    Transaction markers and aborted records do not count (``read_committed``). A partition the group
    never committed is read from its start. False also when the broker does not answer in ``timeout``.
    """
    consumer = Consumer({**settings.kafka_client_config(), "group.id": group, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "isolation.level": "read_committed",
                         "enable.partition.eof": True})
    try:  # assign() (not subscribe) never joins the group: the running app keeps its partitions
        metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return False
        committed = consumer.committed([TopicPartition(topic, p) for p in metadata.partitions], timeout=timeout)
        consumer.assign(committed)  # a negative (never committed) offset falls back to auto.offset.reset
        pending = {tp.partition for tp in committed}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error() is None:
                return False  # an event not yet processed
            if msg.error().code() == KafkaError._PARTITION_EOF:
                pending.discard(msg.partition())
        return not pending
    finally:
        consumer.close()


class ResumeProbe:
    """Once per restart: the stored watermark, as soon as the backlog is empty (see the module docstring)."""

    def __init__(self, settings: Settings, topic: str, group: str) -> None:
        self.settings = settings
        self.topic = topic
        self.group = group
        self._next_check = 0.0

    def __call__(self) -> tuple[bool, int | None]:
        """``(caught up, stored watermark)``; ``(False, None)`` while events wait or between checks."""
        now = time.monotonic()
        if now < self._next_check:
            return False, None
        self._next_check = now + _RECHECK_S
        try:
            if not backlog_empty(self.settings, self.topic, self.group):
                return False, None
        except KafkaException as exc:  # broker unavailable: try again later
            logger.warning("cannot check the scoring backlog: %s", exc)
            return False, None
        watermark = stored_watermark_us(self.settings)
        logger.info("caught up after a restart: stored watermark %s", watermark)
        return True, watermark
