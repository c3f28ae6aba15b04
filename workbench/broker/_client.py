"""Client-side reading helpers shared by the replay state and the lag check."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from workbench.broker.exceptions import IncompleteReadError

__all__ = ["CLIENT_LOG", "NOT_READY_YET", "NO_SUCH_TOPIC", "RANGE_READER", "quiet_logs", "read_range", "when_ready"]

T = TypeVar("T")

#: Errors that mean the topic or partition does not exist (yet).
NO_SUCH_TOPIC = (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION, KafkaError._UNKNOWN_TOPIC)
#: Errors of a broker that will answer shortly: a topic created a moment ago has no leader yet, a
#: group coordinator is still loading, a request timed out on a busy machine, a partition's leader
#: moved and the new one has not caught up its high watermark yet (a cluster's preferred-leader
#: election, every 5 minutes by default: `workbench status` failed for a second).
NOT_READY_YET = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError._TIMED_OUT,
                 KafkaError.REQUEST_TIMED_OUT, KafkaError._TRANSPORT, KafkaError.NOT_COORDINATOR,
                 KafkaError._WAIT_COORD, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                 KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.OFFSET_NOT_AVAILABLE,
                 KafkaError.FENCED_LEADER_EPOCH, KafkaError.UNKNOWN_LEADER_EPOCH, KafkaError.REPLICA_NOT_AVAILABLE,
                 KafkaError._DESTROY_BROKER)

#: Consumer settings of a short :func:`read_range` read. The end of a range is often a transaction
#: marker, which is never delivered: the read ends on end-of-partition, which the client reports
#: only after a fetch comes back empty, and the broker holds an empty fetch ``fetch.wait.max.ms``
#: (500 ms by default). Per partition that added 0.5-1 s to a status read: right after a pause the
#: notebook panel's lag check read four such ends and took 3.6 s, so the pause showed late. These
#: readers fetch nothing between reads, so the short wait costs the broker nothing while idle.
RANGE_READER: dict[str, Any] = {"enable.partition.eof": True, "fetch.wait.max.ms": 10}

#: Where librdkafka's own lines go (debug level: ``workbench -v`` shows them) from :func:`quiet_logs` clients.
CLIENT_LOG = logging.getLogger("workbench.kafka.client")


class _AtDebug(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Logs every line at DEBUG, whatever librdkafka's level (confluent-kafka calls ``log(level, ...)``)."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        self.logger.debug(msg, *args, **kwargs)


_AT_DEBUG = _AtDebug(CLIENT_LOG)


def quiet_logs(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with librdkafka's log lines sent to :data:`CLIENT_LOG` at debug level.

    Without a ``logger`` librdkafka prints raw ``%3|...|FAIL|`` lines on stderr for every failed
    connection: a CLI command without a broker printed them above its own error, which already says
    what failed and what to check. A ``logger`` the caller set (a notebook's) is kept. The lines are
    forwarded when the client is polled (``poll``, ``flush``, ``consume``); unpolled ones are dropped.
    """
    return {"logger": _AT_DEBUG, **config}


def when_ready(call: Callable[[float], T], deadline: float) -> T:
    """``call(remaining_seconds)``, retried while the broker answers :data:`NOT_READY_YET`.

    Any other error, or a not-ready one at ``deadline`` (a ``time.monotonic()`` value), is
    raised as the :class:`KafkaException` it is.
    """
    while True:
        try:
            return call(max(0.1, deadline - time.monotonic()))
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if error is None or error.code() not in NOT_READY_YET or time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def read_range(consumer: Consumer, topic: str, partition: int, start: int, end: int,
               deadline: float) -> Iterator[Message]:
    """The data messages in offsets [start, end) of one partition, in order.

    Ends only at the range's end (its last record, or end-of-partition: the last offsets are
    often transaction markers, which are never delivered), never after a quiet poll: a busy
    broker may take seconds to answer the first fetch, and an early "nothing there" would pass
    for an empty range. The consumer needs ``enable.partition.eof``; under ``read_committed``
    pass the last stable offset as ``end`` (what the watermark query reports there).

    Raises
    ------
    IncompleteReadError
        At ``deadline`` (a ``time.monotonic()`` value) before the end was reached.
    """
    consumer.assign([TopicPartition(topic, partition, start)])
    while time.monotonic() < deadline:
        for message in consumer.consume(num_messages=10_000, timeout=0.05):
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF and message.offset() >= end:
                    return
                continue
            if message.offset() >= end:
                return
            yield message
            if message.offset() >= end - 1:
                return
    msg = f"reading {topic}[{partition}] offsets {start}..{end} did not finish in time"
    raise IncompleteReadError(msg)
