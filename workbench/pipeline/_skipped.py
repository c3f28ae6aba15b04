"""Messages the broker deleted before an app read them: told, not skipped in silence.

A consumer whose next offset the broker no longer holds (retention, ``kafka-delete-records``, a
broker's data lost) is reset by librdkafka to the earliest offset it still has (the apps'
``auto.offset.reset``), with a log line only: a whole day could be missing from the shards and the
training, the status clean. :func:`~workbench.pipeline._quix.consume_in_batches` reports every jump
of a partition's offsets; :class:`SkippedOffsets` asks the broker where the partition now starts.
Offsets below that start were deleted: one dead letter per jump names the topic, partition and
range (code ``deleted_before_read``, no value: the messages are gone), the status counts them, and
the app goes on. Offsets the partition still holds were skipped for another reason (aborted
transactions of a replay killed mid-batch, commit markers): nothing to tell.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from confluent_kafka import TopicPartition

__all__ = ["DELETED_BEFORE_READ", "SkippedOffsets"]

logger = logging.getLogger(__name__)

#: The reason code of the dead letter that names a deleted range.
DELETED_BEFORE_READ = "deleted_before_read"


class SkippedOffsets:
    """The ``on_skipped`` of :func:`~workbench.pipeline._quix.consume_in_batches` for one app.

    Parameters
    ----------
    low_offset : callable
        ``low_offset(TopicPartition)``: the partition's earliest offset on the broker now.
    dead_letters : DeadLetters
        Receives one letter per deleted range.
    status : AppStatus
        Counts the offsets deleted (``deleted_before_read``).
    """

    def __init__(self, low_offset: Callable[[Any], int], dead_letters: Any, status: Any) -> None:
        self.low_offset = low_offset
        self.dead_letters = dead_letters
        self.status = status
        status.counters.setdefault(DELETED_BEFORE_READ, 0)

    def __call__(self, topic: str, partition: int, expected: int, first: int) -> None:
        """Offsets ``expected`` .. ``first - 1`` of ``topic[partition]`` were not read: say so if deleted."""
        try:
            low = self.low_offset(TopicPartition(topic, partition))
        except Exception as exc:  # the check must never stop the app
            logger.warning("cannot tell whether offsets %d..%d of %s[%d] were deleted: %s", expected, first - 1,
                           topic, partition, exc)
            return
        end = min(low, first)
        if end <= expected:
            return  # still on the broker: aborted transactions or markers, never readable
        reason = (f"{DELETED_BEFORE_READ}: offsets {expected}..{end - 1} of {topic}[{partition}] ({end - expected} "
                  "messages or transaction markers) were deleted by the broker before this app read them "
                  "(retention, delete-records, or a broker's data lost); their rows are missing from this app's "
                  "results. A Reset of the replay (workbench replay-control reset) sends them again")
        logger.error("%s", reason)
        self.dead_letters.send(None, reason, topic=topic, partition=partition, offset=expected)
        self.status.add(DELETED_BEFORE_READ, end - expected)
