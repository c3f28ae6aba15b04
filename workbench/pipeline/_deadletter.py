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
the same way. Production is flushed before :meth:`DeadLetters.send` returns, so a dead
letter is on the broker before the offset of its source message can be committed (at-least-once).
Malformed messages are rare, so the synchronous flush costs nothing in steady state.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any, Final

from quixstreams import message_context
from quixstreams.kafka import Producer

from workbench.config import Settings

__all__ = ["MAX_VALUE_BYTES", "DeadLetters"]

logger = logging.getLogger(__name__)


#: Largest dead-letter value stored whole (below librdkafka's 1 MB default ``message.max.bytes``).
MAX_VALUE_BYTES: Final = 512 * 1024
_MAX_KEY_BYTES: Final = 1024
_MAX_HEADER_BYTES: Final = 1024


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
        if value is not None and len(value) > MAX_VALUE_BYTES:
            data = bytes(value)
            out_headers += [("truncated", b"true"), ("original_size", str(len(data)).encode()),
                            ("original_sha256", hashlib.sha256(data).hexdigest().encode())]
            value = data[:MAX_VALUE_BYTES]
        out_headers += [(f"orig.{str(k)[:200]}", _bytes(v)) for k, v in list(headers or ())[:32]]
        self.producer.produce(topic=self.topic, value=value, key=_bytes(key, _MAX_KEY_BYTES), headers=out_headers)
        self.producer.flush(10)
        self.sent += 1
        logger.warning("dead letter app=%s source=%s[%s]@%s reason=%r", self.app_name, topic, partition, offset,
                       reason[:200])

    def close(self) -> None:
        """Flush what is still queued."""
        self.producer.flush(10)
