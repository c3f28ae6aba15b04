"""Dead letters: a malformed message goes to ``settings.topic_dead_letter`` with why and where from.

Each dead letter keeps the original value and key and carries the headers ``reason``,
``source_topic``, ``source_partition``, ``source_offset``, ``app`` (plus the original headers
prefixed with ``orig.``). Production is flushed before :meth:`DeadLetters.send` returns, so a dead
letter is on the broker before the offset of its source message can be committed (at-least-once).
Malformed messages are rare, so the synchronous flush costs nothing in steady state.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from quixstreams import message_context
from quixstreams.kafka import Producer

from workbench.config import Settings

__all__ = ["DeadLetters"]

logger = logging.getLogger(__name__)


def _bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode()


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
            ("reason", reason[:2000].encode()),
            ("source_topic", (topic or "").encode()),
            ("source_partition", str(partition).encode()),
            ("source_offset", str(offset).encode()),
            ("app", self.app_name.encode()),
        ]
        out_headers += [(f"orig.{k}", _bytes(v)) for k, v in (headers or ())]
        self.producer.produce(topic=self.topic, value=value, key=_bytes(key), headers=out_headers)
        self.producer.flush(10)
        self.sent += 1
        logger.warning("dead letter app=%s source=%s[%s]@%s reason=%r", self.app_name, topic, partition, offset,
                       reason[:200])

    def close(self) -> None:
        """Flush what is still queued."""
        self.producer.flush(10)
