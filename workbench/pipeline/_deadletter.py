"""Dead letters: a malformed message goes to ``settings.topic_dead_letter`` with why and where from.

Each dead letter keeps the original value and key and carries the headers ``reason`` (a reason
code from :data:`workbench.data.codec.REASONS`, ``event_time_out_of_range``, ``anomaly_contract``
or ``processing_error``, then ``: `` and the detail), ``source_topic``, ``source_partition``,
``source_offset``, ``app`` (plus the original headers prefixed with ``orig.``).

The dead-letter topic must accept anything the source topics accept (16 MB), but a client
producer is limited by ``message.max.bytes`` (1 MB by default) and the broker may be configured
lower: a value larger than :data:`MAX_VALUE_BYTES` is stored truncated to that size, with the
headers ``truncated=true``, ``original_size`` and ``original_sha256`` (so the payload can be
matched to its source offset, where the full value still is). Keys and header values are capped
the same way. :meth:`DeadLetters.send` returns once the broker acknowledged the letter, so a dead
letter is on the broker before the offset of its source message can be committed (at-least-once); a
letter the broker does not take raises (an infrastructure error: the app stops uncommitted), after the
topic was created again if it was gone, or the value cut to 1 KiB if the topic takes less. Malformed
messages are rare, so the synchronous wait costs nothing in steady state.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import pyarrow as pa
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from quixstreams import message_context
from quixstreams.kafka import Producer

from workbench.config import Settings

__all__ = ["DEAD_LETTER_SCHEMA", "MAX_VALUE_BYTES", "DeadLetters", "read_dead_letters"]

logger = logging.getLogger(__name__)


#: Largest dead-letter value stored whole (below librdkafka's 1 MB default ``message.max.bytes``).
MAX_VALUE_BYTES: Final = 512 * 1024
_MAX_KEY_BYTES: Final = 1024
_MAX_HEADER_BYTES: Final = 1024


#: What is kept of a letter's value when the dead-letter topic refuses :data:`MAX_VALUE_BYTES`.
_SMALL_VALUE_BYTES: Final = 1024


def _cut(value: bytes | None, limit: int, headers: list[tuple[str, Any]]) -> tuple[bytes | None, list[tuple[str, Any]]]:
    """``value`` cut to ``limit`` bytes, and ``headers`` plus the ones that say so when it was."""
    if value is None or len(value) <= limit:
        return value, list(headers)
    data = bytes(value)
    return data[:limit], [*headers, ("truncated", b"true"), ("original_size", str(len(data)).encode()),
                          ("original_sha256", hashlib.sha256(data).hexdigest().encode())]


def _bytes(value: Any, limit: int = _MAX_HEADER_BYTES) -> bytes | None:
    if value is None:
        return None
    data = bytes(value) if isinstance(value, bytes | bytearray | memoryview) else str(value).encode(errors="replace")
    return data[:limit]


class DeadLetters:
    """Sends malformed messages to the dead-letter topic.

    Parameters
    ----------
    settings : Settings
        Names the dead-letter topic.
    app_name : str
        Written into the ``app`` header.
    producer : quixstreams.kafka.Producer
        Usually ``app.get_producer()``; opened lazily by its first ``produce``.
    """

    def __init__(self, settings: Settings, app_name: str, producer: Producer) -> None:
        self.settings = settings
        self.topic = settings.topic_dead_letter
        self.app_name = app_name
        self.producer = producer
        self.sent = 0

    def send(self, value: bytes | None, reason: str, *, key: Any = None,
             headers: Sequence[tuple[str, Any]] | None = None, topic: str | None = None,
             partition: int | None = None, offset: int | None = None) -> None:
        """Dead-letter one message; the source position defaults to the message being processed."""
        if topic is None:
            try:
                ctx = message_context()
                topic, partition, offset = ctx.topic, ctx.partition, ctx.offset
            except Exception:
                topic, partition, offset = "", -1, -1
        out_headers = [
            ("reason", reason[:2000].encode(errors="replace")),
            ("source_topic", (topic or "").encode()),
            ("source_partition", str(partition).encode()),
            ("source_offset", str(offset).encode()),
            ("app", self.app_name.encode()),
        ]
        original = [(f"orig.{str(k)[:200]}", _bytes(v)) for k, v in list(headers or ())[:32]]
        letter = _cut(value, MAX_VALUE_BYTES, out_headers)
        failure = self._deliver(*letter, original, key)
        if (failure is not None and failure.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC)
                and self._made_again()):
            failure = self._deliver(*letter, original, key)
        if failure is not None and failure.code() == KafkaError.MSG_SIZE_TOO_LARGE and value:
            # the topic takes less than a letter of MAX_VALUE_BYTES: its start, named as cut (the whole
            # value is still at its source offset)
            failure = self._deliver(*_cut(value, _SMALL_VALUE_BYTES, out_headers), [], key)
        if failure is not None:
            # Not delivered: the app must not go on and commit past the source message (it was logged as
            # sent and lost). An infrastructure error: the app stops, and its restart reads the message again.
            msg = (f"dead letter of {topic}[{partition}]@{offset} ({reason[:200]}) was not delivered to "
                   f"{self.topic}: {failure.str()}")
            raise KafkaException(KafkaError(failure.code(), msg))
        self.sent += 1
        logger.warning("dead letter app=%s source=%s[%s]@%s reason=%r", self.app_name, topic, partition, offset,
                       reason[:200])

    def _made_again(self) -> bool:
        """Create the dead-letter topic when it is missing (an operator deleted it); True when it was."""
        from workbench.broker import ensure_topics, topic_specs

        specs = [spec for spec in topic_specs(self.settings) if spec.name == self.topic]
        try:
            made = bool(specs) and bool(ensure_topics(self.settings, specs))
        except Exception as exc:  # the letter's own failure is what gets raised
            logger.warning("cannot check the dead-letter topic %s: %s", self.topic, exc)
            return False
        if made:
            logger.warning("the dead-letter topic %s was missing: created it again", self.topic)
        return made

    def _deliver(self, value: bytes | None, headers: list[tuple[str, Any]], original: list[tuple[str, Any]],
                 key: Any) -> KafkaError | None:
        """Produce one letter and wait for the broker's answer: None once it holds it, else why not."""
        answers: list[KafkaError | None] = []

        def delivered(error: KafkaError | None, _message: Any) -> None:
            answers.append(error)

        self.producer.produce(topic=self.topic, value=value, key=_bytes(key, _MAX_KEY_BYTES),
                              headers=headers + original, on_delivery=delivered)
        self.producer.flush(10)
        if not answers and self._made_again():  # still queued, for a topic that was gone: it goes now
            self.producer.flush(30)
        if not answers:
            return KafkaError(KafkaError._MSG_TIMED_OUT, "not acknowledged by the broker in time")
        return answers[0]

    def close(self) -> None:
        """Flush what is still queued."""
        self.producer.flush(10)


#: The table :func:`read_dead_letters` returns.
DEAD_LETTER_SCHEMA: Final = pa.schema([
    ("written_at", pa.timestamp("ms", tz="UTC")), ("app", pa.string()), ("code", pa.string()), ("reason", pa.string()),
    ("source_topic", pa.string()), ("source_partition", pa.int32()), ("source_offset", pa.int64()),
    ("source_file", pa.string()), ("source_row", pa.int64()), ("value_bytes", pa.int64()), ("truncated", pa.bool_()),
    ("value", pa.binary()), ("partition", pa.int32()), ("offset", pa.int64())])


def _text(value: Any) -> str | None:
    return None if value is None else bytes(value).decode("utf-8", errors="backslashreplace")


def _int_or_none(value: Any) -> int | None:
    text = _text(value)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def read_dead_letters(settings: Settings, *, last: int | None = None, timeout: float = 30.0) -> Any:
    """The dead letters on ``settings.topic_dead_letter`` as a ``pyarrow.Table`` (:data:`DEAD_LETTER_SCHEMA`),
    oldest first: when and by which app, the reason (``code`` is its part before ``: ``), the source
    message's topic, partition and offset (for the replay's letters: ``source_file`` and ``source_row``),
    and the value kept (``value_bytes`` is the original size
    when it was truncated). ``last`` reads only about the newest ``last`` of each partition (the
    topic can hold millions). Reads up to the end of every partition and stops; ``timeout`` bounds it.
    """
    if last is not None and last < 1:
        msg = f"The last of read_dead_letters must be a positive number of dead letters. Got {last!r} instead."
        raise ValueError(msg)
    topic = settings.topic_dead_letter
    consumer = Consumer({**settings.kafka_client_config(), "group.id": f"workbench-dead-letters-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         "isolation.level": "read_committed"})
    rows: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        found = consumer.list_topics(topic, timeout=min(timeout, 10.0)).topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            return DEAD_LETTER_SCHEMA.empty_table()
        assignment, pending = [], set()
        for partition in sorted(found.partitions):
            low, high = _watermarks(consumer, TopicPartition(topic, partition), deadline)
            if high <= low:
                continue
            start = low if last is None else max(low, high - last)
            assignment.append(TopicPartition(topic, partition, start))
            pending.add(partition)
        if not assignment:
            return DEAD_LETTER_SCHEMA.empty_table()
        consumer.assign(assignment)
        while pending and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(message.partition())
                continue
            headers = {}
            for key, value in message.headers() or ():
                headers.setdefault(key, value)
            reason = _text(headers.get("reason")) or ""
            value = message.value()
            truncated = _text(headers.get("truncated")) == "true"
            rows.append({
                "written_at": datetime.fromtimestamp(message.timestamp()[1] / 1000, UTC),
                "app": _text(headers.get("app")), "code": reason.split(": ", 1)[0] if reason else None,
                "reason": reason, "source_topic": _text(headers.get("source_topic")),
                "source_partition": _int_or_none(headers.get("source_partition")),
                "source_offset": _int_or_none(headers.get("source_offset")),
                # the replay's letters come from a log's row, not a message
                "source_file": _text(headers.get("file")), "source_row": _int_or_none(headers.get("row")),
                "value_bytes": (_int_or_none(headers.get("original_size")) if truncated else None)
                or (len(value) if value is not None else 0),
                "truncated": truncated, "value": value, "partition": message.partition(), "offset": message.offset(),
            })
        if pending:
            logger.warning("dead letters: partitions %s of %s not read to their end within %.0f s", sorted(pending),
                           topic, timeout)
    finally:
        consumer.close()
    rows.sort(key=lambda row: (row["written_at"], row["partition"], row["offset"]))
    if last is not None:
        rows = rows[-last:]
    return pa.Table.from_pylist(rows, schema=DEAD_LETTER_SCHEMA)


def _watermarks(consumer: Any, partition: Any, deadline: float) -> tuple[int, int]:
    """A partition's low and high offsets; a leader still being elected (a topic just made) is waited for."""
    electing = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._TIMED_OUT}
    while True:
        try:
            return consumer.get_watermark_offsets(partition, timeout=max(1.0, min(10.0, deadline - time.monotonic())))
        except KafkaException as exc:
            error = exc.args[0]
            if not (error.retriable() or error.code() in electing) or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)

