"""The one place that touches Quix Streams internals (pinned ``quixstreams==3.28.*``).

Three things the workbench needs have no public API in Quix 3.28:

* a callback on every iteration of the app's main loop, also while no message arrives (status
  files, training supervision, idle detection): ``app._dataframe_registry.register_periodic_task``,
  the hook ``join_lookup`` uses;
* forcing a checkpoint now (the scoring app flushes as soon as a partition's batch is full rather
  than waiting for ``commit_interval``): ``app._processing_context.commit_checkpoint(force=True)``;
* the partitions the consumer holds now (N scoring instances report them for the shared training
  watermark): ``app._consumer.assignment()``;
* pausing and resuming *one* partition (the scoring app's per-partition backpressure; Quix's own
  sink backpressure pauses and rewinds every partition): ``app._consumer.pause(partitions)`` /
  ``app._consumer.resume(partitions)``;
* whether the open checkpoint holds anything (:func:`commit_first_checkpoint_at_once`):
  ``app._processing_context.checkpoint.empty()``;
* consuming a batch of messages per loop iteration instead of one (:func:`consume_in_batches`,
  the scoring and stream-analytics apps' one-query-per-message path): ``app._process_message`` (the loop step),
  ``app._consumer.consume``, ``app._processing_context.store_offset``, ``app._producer.poll``,
  ``app._run_tracker.set_message_consumed`` and the ``_broker_available`` marks.
* closing the app's Kafka clients when a run ends (:func:`close_kafka_clients`): the lazily
  created librdkafka handles ``Producer._inner_producer``, ``BaseConsumer._inner_consumer`` and
  ``TopicAdmin._inner_admin`` of ``app._producer._producer``, ``app._consumer`` and
  ``app._topic_manager._admin``.
* a partition's committed offset and earliest offset on the broker (:func:`consume_in_batches`'s
  ``on_skipped``, :func:`low_offsets`): ``app._consumer.committed`` and
  ``app._consumer.get_watermark_offsets``.
* a callback after each rebalance that gave the consumer its (possibly empty) assignment
  (:func:`on_assignment`; Quix restarts its own idle timeout there): ``app._on_assign``.

All are resolved here, at build time, and a missing or changed internal raises
:class:`QuixInternalsError` instead of silently switching a feature off. ``tests/test_pipeline_quix.py``
asserts the attributes and their signatures on the installed version, so an upgrade fails loudly.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from quixstreams import Application

from workbench.pipeline.exceptions import PipelineError

logger = logging.getLogger(__name__)

__all__ = [
    "PartitionFlow",
    "QuixInternalsError",
    "assigned_partitions",
    "close_kafka_clients",
    "close_producer",
    "commit_first_checkpoint_at_once",
    "consume_in_batches",
    "force_checkpoint",
    "low_offsets",
    "on_assignment",
    "partition_flow",
    "register_periodic",
]


class QuixInternalsError(PipelineError):
    """The installed quixstreams lacks an internal the workbench relies on (see :mod:`._quix`)."""


def _internal(owner: Any, path: str, method: str, params: tuple[str, ...]) -> Callable[..., Any]:
    obj = getattr(owner, path, None)
    fn = getattr(obj, method, None)
    if fn is None or not callable(fn):
        msg = (f"quixstreams {_version()} has no Application.{path}.{method}; the workbench needs it "
               "(workbench/pipeline/_quix.py). Pin quixstreams==3.28.* or port the adapter.")
        raise QuixInternalsError(msg)
    names = tuple(inspect.signature(fn).parameters)
    if names[: len(params)] != params:
        msg = (f"quixstreams {_version()} changed Application.{path}.{method}{inspect.signature(fn)}; "
               f"expected parameters {params}. Port workbench/pipeline/_quix.py.")
        raise QuixInternalsError(msg)
    return fn


def _version() -> str:
    import quixstreams

    return getattr(quixstreams, "__version__", "?")


def register_periodic(app: Application, task: Callable[[], None]) -> None:
    """Call ``task()`` after every poll of ``app``'s main loop (keep it cheap; throttle it yourself)."""
    _internal(app, "_dataframe_registry", "register_periodic_task", ("task",))(task)


def force_checkpoint(app: Application) -> Callable[[], None]:
    """A function that commits ``app``'s checkpoint now (sinks flush, offsets commit)."""
    commit = _internal(app, "_processing_context", "commit_checkpoint", ("force",))
    return lambda: commit(force=True)


class PartitionFlow:
    """Pause and resume single partitions of an app's consumer (see :func:`partition_flow`)."""

    def __init__(self, pause: Callable[..., Any], resume: Callable[..., Any]) -> None:
        self._pause = pause
        self._resume = resume

    def pause(self, topic: str, partition: int) -> None:
        """Stop fetching ``topic[partition]`` (what was fetched is still delivered)."""
        from confluent_kafka import TopicPartition

        self._pause([TopicPartition(topic, partition)])

    def resume(self, topic: str, partition: int) -> None:
        """Fetch ``topic[partition]`` again from where it stopped."""
        from confluent_kafka import TopicPartition

        self._resume([TopicPartition(topic, partition)])


def partition_flow(app: Application) -> PartitionFlow:
    """Per-partition pause/resume of ``app``'s Kafka consumer (``Application._consumer``)."""
    return PartitionFlow(_internal(app, "_consumer", "pause", ("partitions",)),
                         _internal(app, "_consumer", "resume", ("partitions",)))


class _HeadersReadOnce:
    """A confluent-kafka message whose ``headers()`` answers what was read once (the rest is the message's)."""

    __slots__ = ("_headers", "_message")

    def __init__(self, message: Any, headers: Any) -> None:
        self._message, self._headers = message, headers

    def headers(self) -> Any:
        return self._headers

    def __len__(self) -> int:
        return len(self._message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._message, name)


def read_headers_first(topic: Any) -> None:
    """Make ``topic`` (a Quix ``Topic`` of the app) read each message's headers through
    :func:`~workbench.data.codec.headers_of` before Quix's ``row_deserialize`` does. Headers the Kafka
    client cannot read (a header name that is not UTF-8) reach the pipeline as
    :class:`~workbench.data.codec.UnreadableHeaders`, so the app dead-letters the message as it does any
    other, and Quix stores its offset as processed. Quix's own ``message.headers()`` call crashed the
    app on such a message, or, once that call site ran often, went on with a half-built list; raising
    instead went to Quix's consumer-error path, which stores no offset (a partition's last such message
    was dead-lettered again after every restart)."""
    from workbench.data import codec

    original = getattr(topic, "row_deserialize", None)
    if not callable(original):
        msg = (f"quixstreams {_version()} has no Topic.row_deserialize; the workbench needs it "
               "(workbench/pipeline/_quix.py). Pin quixstreams==3.28.* or port the adapter.")
        raise QuixInternalsError(msg)

    def row_deserialize(message: Any) -> Any:
        headers = codec.headers_of(message)
        if isinstance(headers, codec.UnreadableHeaders):
            message = _HeadersReadOnce(message, headers)
        return original(message=message)

    topic.row_deserialize = row_deserialize


def consume_in_batches(app: Application, on_messages: Callable[[list[Any]], None], *,
                       max_messages: int = 2000,
                       on_skipped: Callable[[str, int, int, int], None] | None = None) -> None:
    """Make each iteration of ``app``'s loop consume up to ``max_messages`` raw messages at once.

    Quix runs every message through its per-message machinery (a Row, a context copy, the
    composed dataframe, an offset store), about 15-20 us of Python per message: on
    one-query-per-message input that costs more than decoding and scoring the event. An app
    whose whole dataframe is one batching sink needs none of it, so this replaces the loop step:
    ``on_messages`` gets the confluent-kafka messages of one ``consume`` call (of partitions
    still assigned after the call, whose rebalance callbacks have run by then), and the first
    and last offset of each partition are stored in the checkpoint (a sink backpressure rewinds
    to the first). Checkpoints, commits, sinks, periodic tasks, rebalancing and pausing are
    Quix's as before; the dataframe (and so ``on_processing_error``) is bypassed, so
    ``on_messages`` must not raise for a message's fault. A consumer error raises, as Quix's
    default consumer error callback does.

    ``on_skipped(topic, partition, expected, first)`` is called before ``on_messages`` when a
    partition's first message in a batch is at least two offsets past the one expected (the offset
    after the last message read, or after a rebalance the committed offset; one offset is the
    commit marker of the replay's transactions). Aborted transactions skip offsets; so does a
    consumer whose position the broker deleted (retention, delete-records), which librdkafka resets
    to the earliest offset with a log line only: ``on_skipped`` tells them apart (:mod:`._skipped`).
    """
    from quixstreams.kafka.exceptions import KafkaConsumerException

    consume = _internal(app, "_consumer", "consume", ("num_messages", "timeout"))
    assignment = _internal(app, "_consumer", "assignment", ())
    store_offset = _internal(app, "_processing_context", "store_offset", ("topic", "partition", "offset"))
    producer_poll = _internal(app, "_producer", "poll", ("timeout",))
    consumed = _internal(app, "_run_tracker", "set_message_consumed", ("consumed",))
    marks = (_internal(app, "_producer", "_broker_available", ()), _internal(app, "_consumer", "_broker_available", ()))
    # The assignment is read again only after a rebalance callback ran (they run inside consume):
    # asking librdkafka for it on every call cost more than the rest of the loop step.
    owned_cache: dict[str, set[tuple[str, int]] | None] = {"owned": None}
    expected: dict[tuple[str, int], int] = {}  # the next offset of each partition read since the last rebalance
    committed = _internal(app, "_consumer", "committed", ("partitions", "timeout")) if on_skipped else None
    for name in ("_on_assign", "_on_revoke", "_on_lost"):
        callback = getattr(app, name, None)
        if not callable(callback):
            msg = (f"quixstreams {_version()} has no Application.{name}; the workbench needs it "
                   "(workbench/pipeline/_quix.py). Pin quixstreams==3.28.* or port the adapter.")
            raise QuixInternalsError(msg)

        def on_rebalance(*args: Any, _callback: Callable[..., Any] = callback, _name: str = name) -> Any:
            owned_cache["owned"] = None
            expected.clear()
            started = time.perf_counter()
            result = _callback(*args)
            partitions = args[1] if len(args) > 1 else []
            if partitions:  # with N instances every join or leave pauses the group: the logs show when, how long
                logger.info("rebalance %s topic=%s partitions=%s seconds=%.3f", _name.removeprefix("_on_"),
                            partitions[0].topic, sorted(tp.partition for tp in partitions),
                            time.perf_counter() - started)
            return result

        setattr(app, name, on_rebalance)
    if not callable(getattr(app, "_process_message", None)):
        msg = (f"quixstreams {_version()} has no Application._process_message; the workbench needs it "
               "(workbench/pipeline/_quix.py). Pin quixstreams==3.28.* or port the adapter.")
        raise QuixInternalsError(msg)
    poll_timeout = float(getattr(getattr(app, "_config", None), "consumer_poll_timeout", 0.2) or 0.2)

    from confluent_kafka import Message

    error_of, topic_of, partition_of, offset_of = Message.error, Message.topic, Message.partition, Message.offset

    def process(_dataframes: Any) -> None:
        producer_poll(0)
        messages = consume(num_messages=max_messages, timeout=poll_timeout)
        if not messages:
            consumed(False)
            return
        for error in filter(None, map(error_of, messages)):
            raise KafkaConsumerException(error=error)
        owned = owned_cache["owned"]
        if owned is None:
            owned = owned_cache["owned"] = {(tp.topic, tp.partition) for tp in assignment()}
        # per message only C-level loops (map/zip/dict): this step is part of every event's cost
        tps = list(zip(map(topic_of, messages), map(partition_of, messages), strict=True))
        offsets = list(map(offset_of, messages))
        if not owned.issuperset(tps):  # some revoked while this batch was fetched: the new owner reads them
            kept_at = [i for i, tp in enumerate(tps) if tp in owned]
            messages = [messages[i] for i in kept_at]
            tps = [tps[i] for i in kept_at]
            offsets = [offsets[i] for i in kept_at]
            if not messages:
                consumed(False)
                return
        last = dict(zip(tps, offsets, strict=True))  # the last offset of each partition wins
        first = dict(zip(reversed(tps), reversed(offsets), strict=True))  # ... and of the reversed: the first
        if on_skipped is not None:
            for tp, start, offset in _skips(tps, offsets, first, last, expected, committed):
                on_skipped(tp[0], tp[1], start, offset)
            expected.update((tp, offset + 1) for tp, offset in last.items())
        on_messages(messages)
        for tp, offset in first.items():
            store_offset(tp[0], tp[1], offset)
            if last[tp] != offset:
                store_offset(tp[0], tp[1], last[tp])
        consumed(True)
        for mark in marks:
            mark()

    app._process_message = process  # type: ignore[method-assign]


def _skips(tps: list[tuple[str, int]], offsets: list[int], first: dict[tuple[str, int], int],
           last: dict[tuple[str, int], int], expected: dict[tuple[str, int], int | None],
           committed: Callable[..., Any] | None) -> list[tuple[tuple[str, int], int, int]]:
    """Where a batch skipped two offsets or more: ``(partition, first offset not read, next offset read)``.

    Before its first message (against ``expected``, the committed offset after a rebalance) and between
    its messages: a partition's span less its messages counts the offsets skipped inside the batch (a
    C-level count), so only a batch that skipped at least two is walked message by message.
    """
    found = []
    counts = Counter(tps)
    for tp, offset in first.items():
        start = expected.get(tp)
        if start is None:
            start = expected[tp] = _committed_offset(committed, tp)
        if start is not None and offset >= start + 2:
            found.append((tp, start, offset))
    walk = {tp for tp, offset in first.items() if last[tp] - offset + 1 - counts[tp] >= 2}
    if walk:  # one pass for every partition that skipped offsets inside the batch
        previous: dict[tuple[str, int], int] = {}
        for at, offset in zip(tps, offsets, strict=True):
            if at in walk:
                before = previous.get(at)
                if before is not None and offset >= before + 3:
                    found.append((at, before + 1, offset))
                previous[at] = offset
    return found


def _committed_offset(committed: Callable[..., Any] | None, tp: tuple[str, int]) -> int | None:
    """The group's committed offset of ``tp`` (0 when it has none: the group reads from the earliest), or None
    when the broker does not say (then nothing is checked until the next message of the partition)."""
    from confluent_kafka import TopicPartition

    if committed is None:
        return None
    try:
        found = committed([TopicPartition(tp[0], tp[1])], timeout=5.0)
    except Exception as exc:  # the check must never stop the app
        logger.warning("cannot read the committed offset of %s[%d]: %s", tp[0], tp[1], exc)
        return None
    offset = found[0].offset if found else -1
    return offset if offset >= 0 else 0


def commit_first_checkpoint_at_once(app: Application) -> None:
    """Commit ``app``'s first checkpoint that holds processed messages at once, not after ``commit_interval``.

    An app with a 5 s checkpoint interval would otherwise make its first commit (the sink's first
    write, the first offset a restart resumes from) 5 s after it got going; later checkpoints keep
    the interval. Costs one flag test per loop iteration after that.
    """
    commit = _internal(app, "_processing_context", "commit_checkpoint", ("force",))
    context = app._processing_context
    from quixstreams.checkpointing import Checkpoint

    if not hasattr(type(context), "checkpoint") or not callable(getattr(Checkpoint, "empty", None)):
        msg = (f"quixstreams {_version()} has no ProcessingContext.checkpoint / Checkpoint.empty; the workbench "
               "needs them (workbench/pipeline/_quix.py). Pin quixstreams==3.28.* or port the adapter.")
        raise QuixInternalsError(msg)
    done = False

    def task() -> None:
        nonlocal done
        if done:
            return
        if not context.checkpoint.empty():
            done = True
            commit(force=True)

    register_periodic(app, task)


def on_assignment(app: Application, callback: Callable[[], None]) -> None:
    """Call ``callback()`` each time a rebalance has given ``app``'s consumer its assignment (possibly empty).

    Quix's own idle timeout (``app.run(timeout=...)``) starts over there; an app that judges idleness
    itself needs the same moment (before it, no message can have come).
    """
    original = getattr(app, "_on_assign", None)
    if not callable(original):
        msg = (f"quixstreams {_version()} has no Application._on_assign; the workbench needs it "
               "(workbench/pipeline/_quix.py). Pin quixstreams==3.28.* or port the adapter.")
        raise QuixInternalsError(msg)

    def on_assign(*args: Any) -> Any:
        result = original(*args)
        callback()
        return result

    app._on_assign = on_assign  # type: ignore[method-assign]


def low_offsets(app: Application) -> Callable[[Any], int]:
    """A function that returns a partition's earliest offset on the broker now (``app``'s consumer, uncached)."""
    watermarks = _internal(app, "_consumer", "get_watermark_offsets", ("partition", "timeout", "cached"))

    def low_offset(partition: Any) -> int:
        return int(watermarks(partition, timeout=5.0, cached=False)[0])

    return low_offset


def assigned_partitions(app: Application, topic: str) -> Callable[[], list[int]]:
    """A function that returns the partitions of ``topic`` that ``app``'s consumer holds now."""
    assignment = _internal(app, "_consumer", "assignment", ())

    def partitions() -> list[int]:
        return sorted(tp.partition for tp in assignment() if tp.topic == topic)

    return partitions


def close_producer(producer: Any, timeout: float = 10.0) -> int:
    """Flush a Quix ``Producer`` and free its librdkafka handle now; returns the messages not delivered.

    confluent-kafka's producer has no ``close()``: its handle is destroyed when the last reference
    goes. Quix's ``Producer`` holds it and is referenced back by the handle's callbacks (a cycle), so
    without this the handle (its threads and broker connections) lives until the garbage collector
    runs. A later use opens a new handle (Quix creates it on demand).
    """
    if not hasattr(producer, "_inner_producer"):
        msg = (f"quixstreams {_version()} has no Producer._inner_producer; the workbench needs it "
               "(workbench/pipeline/_quix.py). Pin quixstreams==3.28.* or port the adapter.")
        raise QuixInternalsError(msg)
    inner = producer._inner_producer
    if inner is None:
        return 0
    left = int(inner.flush(timeout))
    producer._inner_producer = None
    return left


def close_kafka_clients(app: Application, timeout: float = 10.0) -> int:
    """Close ``app``'s own Kafka clients (producer, consumer, topic admin) now, not at garbage collection.

    The producer is flushed first (``timeout`` s at most); returns the messages it could not deliver.
    Quix closes the consumer when ``run`` ends; this also covers a run that failed before that and
    drops the closed handle. Clients never opened stay unopened.
    """
    internal_producer = getattr(app, "_producer", None)
    consumer = getattr(app, "_consumer", None)
    admin = getattr(getattr(app, "_topic_manager", None), "_admin", None)
    if (not hasattr(internal_producer, "_producer") or not hasattr(consumer, "_inner_consumer")
            or not hasattr(admin, "_inner_admin")):
        msg = (f"quixstreams {_version()} has no Application._producer._producer, _consumer._inner_consumer or "
               "_topic_manager._admin._inner_admin; the workbench needs them (workbench/pipeline/_quix.py). "
               "Pin quixstreams==3.28.* or port the adapter.")
        raise QuixInternalsError(msg)
    left = close_producer(internal_producer._producer, timeout)
    if consumer._inner_consumer is not None:
        consumer._inner_consumer.close()  # a no-op on a handle Quix closed already
        consumer._inner_consumer = None
    admin._inner_admin = None  # an AdminClient has no close(): its last reference frees it
    return left
