"""The scoring sink: per partition batch, decode -> guard -> score -> shards -> anomalies.

Every step that can fail because of one message is isolated to that message, which goes to the
dead-letter topic while the rest of the batch goes on:

* decoding and validation: :func:`workbench.data.codec.decode_values` (key checked too);
* event time: :class:`~workbench.pipeline._eventtime.EventTimeGuard`, vectorised per message
  against the watermark at the start of the batch (so event time moves at most one horizon per
  batch), or the median of the first batch when there is no watermark yet;
* scoring: a failing ``Scorer.score`` is retried on halves of the batch (by message) until the
  failing message is found (``processing_error``); when no message of a batch of several scores,
  the fault is the model's, not a message's, and the batch fails (the app stops);
* publishing: a message the anomaly contract refuses is dead-lettered (``anomaly_contract``),
  its event stays in the shard.

Only infrastructure failures (disk for the shards, broker for the anomalies) raise, which aborts
the checkpoint: no offset is committed and the batch is re-read after a restart.
The decode, guard and score steps are in ``_steps``; this module buffers, stores and publishes.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import operator
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from quixstreams.models import HeadersTuples
from quixstreams.sinks import BatchingSink, SinkBackpressureError

from workbench import defaults
from workbench.config import Settings
from workbench.data import codec
from workbench.pipeline._deadletter import DeadLetters
from workbench.pipeline._eventtime import EventTimeGuard
from workbench.pipeline._status import AppStatus
from workbench.pipeline.exceptions import PipelineError
from workbench.pipeline.scoring._collector import BatchCollector
from workbench.pipeline.scoring._days import UnscoredDays
from workbench.pipeline.scoring._publisher import AnomalyPublisher
from workbench.pipeline.scoring._steps import decode_messages, guard_event_time, score_by_message

__all__ = ["ScoringSink"]

logger = logging.getLogger(__name__)

_DAY_US: Final = 86_400_000_000


class _Buffer:
    """One partition's buffered messages as four parallel lists (value, key, headers, offset).

    Parallel lists filled by C-level ``map`` calls: no Python-level step and no container per
    message (each would be one more object for the cyclic GC to walk while the batch is buffered).
    """

    __slots__ = ("headers", "keys", "offsets", "values")

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.keys: list[Any] = []
        self.headers: list[Any] = []
        self.offsets: list[int] = []

    def __len__(self) -> int:
        return len(self.offsets)

    def append(self, value: Any, key: Any, headers: Any, offset: int) -> None:
        """Buffer one message's fields."""
        self.values.append(value)
        self.keys.append(key)
        self.headers.append(headers)
        self.offsets.append(offset)

    def extend(self, messages: Iterable[Any]) -> None:
        """Buffer confluent-kafka messages (any objects with the ``value()``... methods)."""
        messages = messages if isinstance(messages, list) else list(messages)
        self.values += map(_VALUE, messages)
        self.keys += map(_KEY, messages)
        self.headers += map(_HEADERS, messages)
        self.offsets += map(_OFFSET, messages)

    def item(self, position: int) -> tuple[Any, Any, Any, int]:
        """``(value, key, headers, offset)`` of one buffered message."""
        return self.values[position], self.keys[position], self.headers[position], self.offsets[position]


_VALUE: Final = operator.methodcaller("value")
_KEY: Final = operator.methodcaller("key")
_HEADERS: Final = codec.headers_of  # a header name the client cannot read: dead-lettered, never raised
_OFFSET: Final = operator.methodcaller("offset")
_PARTITION: Final = operator.methodcaller("partition")


@dataclass(frozen=True)
class _Batch:
    """One partition's buffered messages."""

    topic: str
    partition: int
    buffer: _Buffer

    @property
    def size(self) -> int:
        return len(self.buffer)


class ScoringSink(BatchingSink):
    """Quix sink: per partition batch, decode -> score -> shards -> anomalies (see the module docstring).

    Parameters
    ----------
    settings : Settings
        Paths (shards, models), topics and the event-time bounds.
    scorer : Scorer
        Follows the registry's current version (hot swap).
    publisher : AnomalyPublisher
        Anomaly producer.
    dead_letters : DeadLetters
        Destination of malformed messages.
    status : AppStatus
        Counters.
    unscored : UnscoredDays
        Durable record of days with unscored rows.
    batch_rows : int
        Rows buffered in one partition that make the app flush at once.
    """

    def __init__(self, settings: Settings, scorer: Any, publisher: AnomalyPublisher, dead_letters: DeadLetters,
                 status: AppStatus, unscored: UnscoredDays, *, batch_rows: int = defaults.SCORING_BATCH_ROWS) -> None:
        super().__init__()
        self.settings = settings
        self.scorer = scorer
        self.publisher = publisher
        self.dead_letters = dead_letters
        self.status = status
        self.unscored = unscored
        self.batch_rows = batch_rows
        self.guard = EventTimeGuard.from_settings(settings)
        self._offset_bases: dict[int, int] = {}  # per partition (see offset_base)
        self._topic_id: str | None = None
        self._topic_id_read = False
        self.buffered: dict[int, int] = {}
        self.size_due = False
        self.last_message_at = 0.0
        self.first_message_wall: float | None = None  # epoch s of the first message (throughput)
        self.last_batch_wall: float | None = None  # epoch s when the last batch was durable
        # process CPU seconds at the first message and when the last batch was durable (cost per event)
        self.first_message_cpu: float | None = None
        self.last_batch_cpu: float | None = None
        self.max_event_us: int | None = None
        self.first_event_us: int | None = None
        # per partition: newest durable event time, and when it last delivered (the watermark)
        self.partition_max_us: dict[int, int] = {}
        self.partition_seen: dict[int, float] = {}
        #: monotonic seconds spent in flushes (no partition can deliver then), in all and at each partition's
        #: last delivery: silence is counted while the app listens (:meth:`silent_s`)
        self.busy_s = 0.0
        self._busy_at_seen: dict[int, float] = {}
        self._flush_started: float | None = None
        #: per partition: the newest end-of-log marker (the replay sent the log's last row before it)
        self.partition_end_us: dict[int, int] = {}
        #: event days written since :meth:`take_days_stored` (a day judged before more of it came is judged again)
        self.days_stored: set[dt.date] = set()
        #: partitions the pacer paused (``_pacing``): silent, but their backlog waits in Kafka
        self.held_partitions: set[int] = set()
        self.on_flushed: Callable[[], None] | None = None
        self.training_running: Callable[[], bool] = lambda: False
        #: set by the app: called with each batch's valid rows before scoring; a day returned
        #: means "do not store this yet" (Quix sink backpressure), None means go on.
        self.hold_day: Callable[[pa.Table], str | None] | None = None
        self.timings = {"decode": 0.0, "score": 0.0, "shards": 0.0, "publish": 0.0, "acks": 0.0}
        #: whether a message arrived since the app last looked (:meth:`take_delivered`)
        self.delivered = False
        self.last_flush_at = 0.0  # monotonic s of the last flush that wrote
        #: (topic, partition) -> buffered messages
        self._raw: dict[tuple[str, int], _Buffer] = {}
        self.collector = BatchCollector()

    def add(self, value: Any, key: Any, timestamp: int, headers: HeadersTuples, topic: str, partition: int,
            offset: int) -> None:
        """Buffer one message (Quix's per-message path; the app uses :meth:`add_messages`)."""
        self._buffer(topic, partition).append(value, key, headers, offset)
        self._note_rows(topic, partition, headers)

    def add_messages(self, messages: list[Any]) -> None:
        """Buffer raw confluent-kafka messages of one consume call (no decoding here).

        Only the four fields are kept, taken by C-level ``map`` calls per partition (this is part of
        every event's cost); the ``rows`` header of each partition's last message is the size hint
        for the whole partition's buffer.
        """
        if not messages:
            return
        topic = messages[0].topic()  # the app reads one topic
        partitions = list(map(_PARTITION, messages))
        if partitions.count(partitions[0]) == len(partitions):  # the usual call: one partition
            runs: Iterable[tuple[int, Iterable[Any]]] = ((partitions[0], messages),)
        else:
            runs = itertools.groupby(messages, key=_PARTITION)
        touched = set()
        for partition, run in runs:
            self._buffer(topic, partition).extend(run)
            touched.add(partition)
        for partition in touched:
            self._note_rows(topic, partition, self._raw[(topic, partition)].headers[-1])

    def _buffer(self, topic: str, partition: int) -> _Buffer:
        buffer = self._raw.get((topic, partition))
        if buffer is None:
            buffer = self._raw[(topic, partition)] = _Buffer()
        return buffer

    def _note_rows(self, topic: str, partition: int, headers: Any) -> None:
        """Estimate the partition's buffered rows (messages x the last message's ``rows`` header)."""
        rows = 1
        for name, text in headers or ():
            if name == "rows" and isinstance(text, bytes) and text.isdigit() and len(text) < 8:
                rows = max(1, int(text))  # only a size hint: decoding checks the header properly
        n = len(self._raw[(topic, partition)]) * rows
        self.buffered[partition] = n
        if n >= self.batch_rows:
            self.size_due = True
        self.last_message_at = time.monotonic()
        self.delivered = True
        if self.first_message_wall is None:
            self.first_message_wall = time.time()
            self.first_message_cpu = time.process_time()

    def take_days_stored(self) -> set[dt.date]:
        """The event days written since the last call."""
        days, self.days_stored = self.days_stored, set()
        return days

    def take_delivered(self) -> bool:
        """Whether a message arrived since the last call (after a poll: False means the poll came back empty)."""
        delivered, self.delivered = self.delivered, False
        return delivered

    @property
    def buffered_rows(self) -> int:
        """Rows waiting for the next flush."""
        return sum(self.buffered.values())

    def flush(self) -> None:
        """Write every partition's batch, then let the app schedule training (shards are on disk).

        Each partition's anomalies are produced before its shards are written and acknowledged
        once, after the last partition: the broker's acknowledgements arrive while the shards are
        written and the next partitions scored. Quix commits the offsets only after this returned.
        """
        wrote = bool(self._raw)
        self._flush_started = time.monotonic()
        try:
            for (topic, partition), buffer in self._raw.items():
                self.write(_Batch(topic, partition, buffer))
            if wrote:
                t0 = time.perf_counter()
                self.publisher.confirm()  # raises if one was not acknowledged: no commit
                self.timings["acks"] += time.perf_counter() - t0
                self.last_flush_at = time.monotonic()
                self.last_batch_wall = time.time()
                self.last_batch_cpu = time.process_time()
        finally:
            self.busy_s += time.monotonic() - self._flush_started
            self._flush_started = None
            self._raw.clear()
            self._batches.clear()
            self.buffered.clear()
            self.size_due = False
        if wrote:
            self.collector.after_batch()  # the batch's objects are gone: the young generations are small now
        if self.on_flushed is not None:
            self.on_flushed()

    def on_paused(self) -> None:
        """Quix's sink backpressure: the buffered messages are dropped (Quix re-reads them)."""
        self._raw.clear()
        self.buffered.clear()
        self.size_due = False
        super().on_paused()

    # --- steps -------------------------------------------------------------------------------
    def _dead_letter(self, position: int, reason: str, batch: _Batch) -> None:
        value, key, headers, offset = batch.buffer.item(position)
        self.dead_letters.send(value, reason, key=key, headers=headers, topic=batch.topic,
                               partition=batch.partition, offset=offset)
        self.status.add("dead_letters")

    def mark_seen(self, partition: int) -> None:
        """``partition`` delivered (or was resumed) now."""
        now = time.monotonic()
        self.partition_seen[partition] = now
        self._busy_at_seen[partition] = self._busy_until(now)

    def _busy_until(self, now: float) -> float:
        return self.busy_s + (now - self._flush_started if self._flush_started is not None else 0.0)

    def silent_s(self, partition: int, now: float | None = None) -> float:
        """Seconds ``partition`` has not delivered while the app was listening for it.

        Flushes do not count: no partition delivers during one. On a slow machine a flush of a few
        seconds made every partition look silent, and a partition whose backlog had not come in that
        cycle stopped holding the watermark back (a day could be trained before all of it was stored).
        """
        now = time.monotonic() if now is None else now
        busy = self._busy_until(now) - self._busy_at_seen.get(partition, 0.0)
        return max(0.0, now - self.partition_seen[partition] - busy)

    def watermark_us(self, active_s: float) -> int | None:
        """Newest event time every partition still delivering has durably stored.

        The max over partitions would let a fast partition trigger the training of a day whose
        events a slower partition has not delivered yet (the model would depend on consumption
        order). A partition silent for ``active_s`` is caught up (the replay sends in event-time
        order) and no longer holds the watermark back; unless it is silent because the pacer paused
        it (:attr:`held_partitions`): its backlog waits in Kafka, and a day trained without it would
        miss its events (its newest day is later than any training it waits for, so no deadlock).
        """
        if self.max_event_us is None:
            return None
        now = time.monotonic()
        active = [us for p, us in self.partition_max_us.items()
                  if p in self.held_partitions or self.silent_s(p, now) < active_s]
        return min(active) if active else self.max_event_us

    def log_ended_us(self) -> int | None:
        """The newest stored event time when every partition that stored events has since delivered an
        end-of-log marker at or after its newest event (the log's last day is complete), else None."""
        from workbench.store.shards import log_ended_us

        return log_ended_us(self.partition_max_us, self.partition_end_us)

    def _store(self, scored: pa.Table, partition: int) -> tuple[np.ndarray, dict[int, str]]:
        from workbench.store.shards import write_shard

        ts_us = scored.column("arrival_timestamp").cast(pa.int64()).to_numpy()
        day_index = ts_us // _DAY_US
        offsets = scored.column("kafka_offset").to_numpy()
        days = np.unique(day_index)
        day_names = {int(d): (dt.date(1970, 1, 1) + dt.timedelta(days=int(d))).isoformat() for d in days}
        unscored = pc.is_null(scored.column("model_version")).to_numpy(zero_copy_only=False)
        unscored_days = {day_names[int(d)] for d in np.unique(day_index[unscored])} if unscored.any() else set()
        self.unscored.add(unscored_days)  # rows whose version does not exist yet: durable before commit
        stored = scored.drop_columns(["_message"])
        for d in days:
            mask = day_index == d
            part = stored if len(days) == 1 else stored.filter(pa.array(mask))
            write_shard(self.settings.shards_dir, day_names[int(d)], partition, int(offsets[mask].min()), part)
        self.unscored.add(unscored_days)  # again once written: a rescoring pass that began before keeps the day
        self.days_stored.update(dt.date.fromisoformat(name) for name in day_names.values())
        self.status.add("shards", len(days))
        return ts_us, day_names

    def forget_offset_bases(self) -> None:
        """Read the topic's id and each partition's offset base again before the next writes (after a
        rebalance: the topic may have been created again)."""
        self._offset_bases.clear()
        self._topic_id_read = False

    def _offset_base(self, partition: int) -> int:
        """What this partition's Kafka offsets get added before they name shards
        (:func:`~workbench.store.shards.offset_base`: past the stored ones for a topic created again)."""
        base = self._offset_bases.get(partition)
        if base is None:
            from workbench.broker import topic_id
            from workbench.store.shards import offset_base

            if not self._topic_id_read:
                self._topic_id = topic_id(self.settings, self.settings.topic_query_events)
                self._topic_id_read = True
            base = self._offset_bases[partition] = offset_base(self.settings.shards_dir, partition, self._topic_id)
        return base

    def write(self, batch: _Batch) -> None:  # type: ignore[override]
        """Decode, score, publish and store one partition's batch.

        The shards are durable on return; the anomalies are produced, and acknowledged by
        :meth:`flush` (which calls this) before it returns.
        """
        t0 = time.perf_counter()
        buffer = batch.buffer
        base = self._offset_base(batch.partition)
        offsets = buffer.offsets if not base else [offset + base for offset in buffer.offsets]
        table, errors, markers = decode_messages(buffer.values, buffer.keys, buffer.headers, offsets, batch.partition)
        table, late = guard_event_time(self.guard, table)
        end_of_log_us = None
        for position, end_us in markers:  # held to an event's bounds, after the rows before them moved the watermark
            why = self.guard.marker_reason(end_us)
            if why is not None:
                errors.append((position, why))
            elif end_of_log_us is None or end_us > end_of_log_us:
                end_of_log_us = end_us
        held = self.hold_day(table) if self.hold_day is not None and table.num_rows else None
        if held is not None:  # not stored: Quix pauses, then re-reads from the committed offsets
            self.status.add("held_batches")
            self.status.info["holding_day"] = held
            raise SinkBackpressureError(retry_after=1.0)
        if end_of_log_us is not None:  # the log ended: this partition brings nothing newer from it
            # (noted once the batch is not held back: its rows are stored before anything reads the note)
            self.partition_end_us[batch.partition] = max(end_of_log_us,
                                                         self.partition_end_us.get(batch.partition, end_of_log_us))
        self.status.add("messages", batch.size)
        t1 = time.perf_counter()
        scored, failed = score_by_message(self.scorer, table) if table.num_rows else (None, [])
        if scored is None and len(failed) > 1:  # nothing in the batch scores: the model, not a message
            msg = f"scoring failed for all {len(failed)} messages of the batch, first: {failed[0][1][:300]}"
            raise PipelineError(msg)
        for position, reason in sorted(errors + late + failed):
            self._dead_letter(position, reason, batch)
        if scored is None or not scored.num_rows:
            return
        n = scored.num_rows
        versions = scored.column("model_version")  # per row: each event day has its own version
        n_unscored = versions.null_count
        version = None if n_unscored == n else pc.max(versions).as_py()  # newest in this batch
        t2 = time.perf_counter()
        published = 0
        if version is not None:  # the publisher skips unscored rows (is_anomaly null)
            # produced first, acknowledged in flush(): the broker answers while the shards are written
            published = self.publisher.send_scored(scored.drop_columns(["_message"]))
            if self.publisher.rejected:
                position_of = {offset: i for i, offset in enumerate(offsets)}
                for message, reason in self.publisher.rejected:
                    position = position_of.get((message.get("features") or {}).get("kafka_offset"))
                    if position is not None:
                        self._dead_letter(position, reason, batch)
            self.publisher.rejected.clear()
        t3 = time.perf_counter()
        ts_us, day_names = self._store(scored, batch.partition)
        t4 = time.perf_counter()
        self.status.add("events", n)
        self.status.add("batches")
        self.status.add("scored", n - n_unscored)
        self.status.add("unscored", n_unscored)
        self.status.add("stream_anomalies", published)
        if self.training_running():
            self.status.add("events_while_training", n)
        lo, hi = int(ts_us.min()), int(ts_us.max())
        self.first_event_us = lo if self.first_event_us is None else min(self.first_event_us, lo)
        self.max_event_us = hi if self.max_event_us is None else max(self.max_event_us, hi)
        self.partition_max_us[batch.partition] = max(self.partition_max_us.get(batch.partition, hi), hi)
        self.mark_seen(batch.partition)
        for key, seconds in (("decode", t1 - t0), ("score", t2 - t1), ("publish", t3 - t2), ("shards", t4 - t3)):
            self.timings[key] += seconds
        self.status.info["model_version"] = version
        logger.debug("batch partition=%d rows=%d version=%s anomalies=%d days=%s", batch.partition, n, version,
                     published, sorted(day_names.values()))
