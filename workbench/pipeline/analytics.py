"""Stream analytics: per-instance tumbling windows of ``redshift.query_events`` into SQLite.

Pipeline (one Quix app in its own process: ``workbench app analytics``)::

    bytes message --(buffered)--> decode a batch of messages (codec.decode_values) --> event-time guard
        --> per partition: late rows counted, the rest aggregated (windows.partial_aggregates) and
            merged into the open windows (windows.merge) --> windows closed by event time
    at every checkpoint: one SQLite transaction writes closed windows (final), changed open windows
    (provisional), late counts, the window state and the consumed offsets (WindowStatsSink.flush)

Throughput
    Quix's per-message machinery (a Row, a context copy and an offset store per message) is bypassed:
    each loop iteration consumes a batch of raw messages
    (:func:`~workbench.pipeline._quix.consume_in_batches`, which stores each partition's first and
    last offset in the checkpoint) and appends them to a buffer. The buffer is processed as one batch
    when it holds :data:`BATCH_MESSAGES` messages (or :data:`BATCH_BYTES`), when the consumer is idle,
    and at every checkpoint: one codec call decodes and validates all its messages (one-row JSON and
    packed Arrow alike), the event-time guard checks them with one vectorised test, and the
    aggregation is vectorised. The window state is kept in memory and touches SQLite once per
    window per checkpoint (:mod:`workbench.pipeline._window_state`) instead of a RocksDB read and
    write per message; there is no repartition topic and no changelog topic.

Exactly once
    The window state, the late counts and each partition's next offset are committed in the same
    SQLite transaction as the window rows, before Quix commits the Kafka offsets; a message below
    its partition's stored offset is skipped. A kill -9 at any point neither loses nor duplicates a
    counted event (the argument, case by case, is in :mod:`workbench.pipeline._window_state`).

Keys
    The message key is the instance id (the replay's contract); windows are keyed by it with no
    repartition topic. A message whose key differs from its rows' ``instance_id`` is dead-lettered.

Bad input
    A message the codec rejects, or whose event time the guard (:mod:`._eventtime`) rejects, goes
    to the dead-letter topic with its reason; so does a message whose processing fails in a way
    nobody foresaw (``processing_error: ...``: the batch is then processed message by message to
    find it). The app goes on.

Open windows and the end of input
    At every checkpoint (``commit_interval``, default 5 s, only when messages were processed) the
    sink upserts the windows that closed, then the open windows that changed as **provisional**
    rows; the store UPSERTs on ``(instance_id, window_start)``, so the real close later replaces a
    provisional row. Hence every window, including each instance's last one, is in SQLite within one
    checkpoint of its last event, with no idle timer. A provisional row looks exactly like a final
    one; ``updated_at`` tells when it was written.

Late events
    A window closes once the window clock (per partition, or per instance with
    ``closing_strategy="key"``) reaches its end plus ``grace_ms``; events that come for it later
    cannot change it. The clock is the latest time ``Settings.window_clock_messages`` (k, default 16)
    consecutive messages have all reached, each message by its earliest row
    (:mod:`workbench.pipeline._window_state`): fewer than k messages far ahead move nothing. Late
    events are counted per window and source message into ``late_event_sources``
    (:meth:`WindowStatsStore.record_late`, the ``late_events`` view), in the status counters
    (``late_events``) and logged (the first and then every 1,000th); they are never silently dropped.
    With ``closing_strategy="partition"``, grace must cover the event-time disorder between a
    partition's messages: an unpaced packed replay puts up to ``batch_size`` rows of event time into
    one message; its later rows close nothing (the clock takes its earliest), but k such messages in a
    row close other instances' windows behind them. The app counts wide messages (``wide_messages``)
    and warns once; raise ``grace_ms`` or use ``closing_strategy="key"`` (per-instance event time).

The end of the log
    The replay ends every partition with an end-of-log marker after the log's last row. The marker
    closes the partition's open windows up to the log's end (:meth:`WindowState.end_of_log`): nothing
    later would, so each instance's last windows would stay provisional and unjudged. A row that comes
    after the marker for a window it closed opens it again if the window never counted its query (below),
    and is late if it did.

Events first sent after their window closed
    A row whose window the clock has closed, but that was never sent before (a seek forward skipped it,
    and a reset or a seek back sent it; or another producer's event out of order), is counted in its
    window all the same: the window is opened again from its stored partial (kept when it closed, in
    ``analytics_closed_windows``), or as new when it was never counted, and closed again at once; its
    row is written anew. Only copies the replay marks re-sent (their window counted the query), and rows
    of windows past ``retention_days``, are late.

Second copies of an event
    A query already counted in its open window (same instance and ``query_id``) is not counted again
    (``repeated_events``, logged the first and then every 1,000th): the window keeps the ids it
    counted (:mod:`workbench.pipeline._window_state`).

Sums
    Window sums saturate at the int64 bounds (:func:`~workbench.analysis.windows.merge`).

Retention
    Every ``archive_every_s`` (default 1 h) the app calls
    :meth:`WindowStatsStore.archive_older_than` with ``retention_days`` (data time).

Collective anomalies
    Every 30 s (in a thread of its own, so consumption goes on) and when the app stops,
    :class:`~workbench.analysis.collective.CollectiveStep` scores the closed windows. It reads every
    instance's windows from the store, so of N analytics processes on one home only the holder of a
    :class:`~workbench.pipeline._instance.HomeLease` runs it (another takes over when it stops or dies).
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from itertools import accumulate
from typing import Any, Final, Literal

import numpy as np
from confluent_kafka import Message
from quixstreams import Application
from quixstreams.sinks import BaseSink

from workbench.analysis.collective import CollectiveStep
from workbench.analysis.windows import DEFAULT_WINDOW_MS, partial_aggregates
from workbench.config import Settings
from workbench.data import codec
from workbench.pipeline._app import INFRASTRUCTURE_ERRORS, WorkbenchApp, build_application
from workbench.pipeline._deadletter import DeadLetters
from workbench.pipeline._decode import event_topic
from workbench.pipeline._eventtime import EventTimeGuard
from workbench.pipeline._instance import HomeLease
from workbench.pipeline._names import consumer_group
from workbench.pipeline._quix import consume_in_batches, low_offsets, register_periodic
from workbench.pipeline._skipped import SkippedOffsets
from workbench.pipeline._status import AppResult, AppStatus
from workbench.pipeline._window_state import WRONG_PARTITION, FlushResult, Prepared, WindowState
from workbench.pipeline.exceptions import PipelineConfigError
from workbench.store.exceptions import LakehouseBusyError
from workbench.store.window_stats import WindowStatsStore, database_errors

__all__ = ["APP_NAME", "BATCH_BYTES", "BATCH_MESSAGES", "AnalyticsApp", "WindowStatsSink", "row_partial",
           "run_analytics"]

logger = logging.getLogger(__name__)

APP_NAME = "analytics"
ClosingStrategy = Literal["partition", "key"]
#: Buffered messages processed as one batch (more: fewer Python calls per event, more memory and latency).
BATCH_MESSAGES: Final = 4096
#: ... or buffered value bytes (packed Arrow messages carry many rows each).
BATCH_BYTES: Final = 8 * 1024 * 1024
#: Seconds between two log lines about late events (each says the running total).
LATE_LOG_EVERY_S: Final = 10.0


def _fatal() -> tuple[type[BaseException], ...]:
    """Failures that are not a message's fault (the broker, the disk, SQLite, PostgreSQL): they stop the app,
    which then recounts from the last committed state; never a reason to dead-letter messages.

    Called in ``except`` clauses, i.e. only when a batch failed: psycopg (~0.1 s) is not imported at start.
    """
    return (*INFRASTRUCTURE_ERRORS, *database_errors())


# the fields of a buffered (confluent-kafka) message, as functions for map()
# (headers through codec.headers_of: a header name the client cannot read must not raise, nor be asked twice)
_VALUE, _KEY, _HEADERS, _TOPIC, _PARTITION, _OFFSET = (Message.value, Message.key, codec.headers_of, Message.topic,
                                                       Message.partition, Message.offset)


def row_partial(row: Mapping[str, Any], window_ms: int = DEFAULT_WINDOW_MS) -> dict[str, Any]:
    """The partial aggregate of one decoded row (:func:`~workbench.data.codec.decode_row`).

    It is :func:`~workbench.analysis.windows.partial_aggregates` of that row as a one-row batch, so
    every key the partial model defines is there.
    """
    return partial_aggregates(codec.rows_to_batch([dict(row)]), window_ms)[0]


class WindowStatsSink(BaseSink):
    """The checkpoint hook: Quix flushes it before committing offsets, and it writes the window state.

    No message reaches it (``add`` is never called): :meth:`flush` first processes the app's buffered
    messages, then commits :class:`~workbench.pipeline._window_state.WindowState` in one SQLite
    transaction.

    Parameters
    ----------
    state : WindowState
        The app's window state.
    before_flush : callable, optional
        Called first (the app processes its buffered messages).
    status : AppStatus, optional
        Receives ``windows_emitted``, ``provisional_rows`` and ``sink_rows`` counts.
    """

    def __init__(self, state: WindowState, *, before_flush: Any = None, status: AppStatus | None = None) -> None:
        super().__init__()
        self.state = state
        self.store = state.store
        self.before_flush = before_flush
        self.status = status
        self.flushed = FlushResult()

    def add(self, value: Any, key: Any, timestamp: int, headers: Any, topic: str, partition: int,
            offset: int) -> None:
        """Unused: the app's pipeline ends before the sink (the state is written in :meth:`flush`)."""

    def flush(self) -> None:
        """Process the buffered messages, then write the window state (one transaction)."""
        with self.state.lock:
            if self.before_flush is not None:
                try:
                    self.before_flush()
                except BaseException:  # the checkpoint fails: nothing of it may be written later
                    self.state.reset()
                    raise
            result = self.state.flush()
        if self.status is not None and (result.final_rows or result.provisional_rows):
            # what the collective step must have read before a caller calls the windows judged
            self.status.info["windows_written_at"] = time.time()
            self.status.add("windows_emitted", result.final_rows)
            self.status.add("provisional_rows", result.provisional_rows)
            self.status.add("sink_rows", result.final_rows + result.provisional_rows)
        self.flushed = result


#: Seconds without a message after which windows written since the last collective pass are judged
#: at once (not at the next 30 s tick).
_COLLECTIVE_IDLE_S: Final = 2.0


class AnalyticsApp(WorkbenchApp):
    """The stream-analytics Quix app (see the module docstring).

    Parameters
    ----------
    settings : Settings
        Broker, topics and paths.
    window_ms : int
        Tumbling window length (default 10 minutes).
    grace_ms : int
        Event time a window stays open after its end (default 5 minutes).
    closing_strategy : {"partition", "key"}
        What advances event time for closing windows: the partition (default) or the instance.
    retention_days : float, optional
        Archive windows older than this (data time) every ``archive_every_s``; None disables.
    group : str, optional
        Consumer group (default ``<consumer_group_prefix>-analytics``); the window state belongs to it.
    commit_interval : float
        Seconds between checkpoints (sink writes and offset commits).
    batch_messages : int
        Buffered messages processed as one batch (default :data:`BATCH_MESSAGES`).
    """

    def __init__(self, settings: Settings, *, window_ms: int = DEFAULT_WINDOW_MS, grace_ms: int = 300_000,
                 closing_strategy: ClosingStrategy = "partition", retention_days: float | None = 8.0,
                 archive_every_s: float = 3600.0, group: str | None = None, commit_interval: float = 5.0,
                 status_interval: float = 1.0, batch_messages: int = BATCH_MESSAGES) -> None:
        if window_ms <= 0 or grace_ms < 0:
            msg = (f"AnalyticsApp needs window_ms > 0 and grace_ms >= 0 (milliseconds). Got window_ms={window_ms!r}, "
                   f"grace_ms={grace_ms!r} instead.")
            raise PipelineConfigError(msg)
        if closing_strategy not in ("partition", "key"):
            msg = (f"The closing_strategy of AnalyticsApp must be 'partition' or 'key'. "
                   f"Got {closing_strategy!r} instead.")
            raise PipelineConfigError(msg)
        if retention_days is not None and not retention_days > 0:
            msg = f"retention_days must be a positive number of days or None. Got {retention_days!r} instead."
            raise PipelineConfigError(msg)
        if int(batch_messages) < 1:
            msg = f"batch_messages must be at least 1. Got {batch_messages!r} instead."
            raise PipelineConfigError(msg)
        self.settings = settings
        self.window_ms = int(window_ms)
        self.grace_ms = int(grace_ms)
        self.closing_strategy = closing_strategy
        self.retention_days = retention_days
        self.archive_every_s = archive_every_s
        self.group = group
        self.commit_interval = commit_interval
        self.batch_messages = int(batch_messages)
        self.status = AppStatus(settings, APP_NAME, interval=status_interval)
        self.app: Application | None = None
        self.sink: WindowStatsSink | None = None
        self.state: WindowState | None = None
        self.dead_letters: DeadLetters | None = None
        self.guard: EventTimeGuard | None = None
        self._buffer: list[Message] = []
        self._buffered_bytes = 0
        self._seen_at_tick = 0
        self._last_archive = time.monotonic()
        self._last_collective = time.monotonic()
        self._last_message_at = time.monotonic()
        self._collective_failed = False
        self.collective = CollectiveStep(settings)
        self._collective_lease = HomeLease(settings.state_dir, "collective")  # one runner per home
        self._collective_thread: threading.Thread | None = None
        self._warned_wide = False
        self._late_total = 0
        self._late_logged_at = 0.0  # monotonic time of the last late-events line (one per LATE_LOG_EVERY_S)
        self._repeats_total = 0
        self._stop_after: int | None = None
        self._applying = False  # True while a processed batch changes the state (no retry past that point)

    # --- consumed batches (main thread): buffer only ------------------------------------------------
    def _on_messages(self, messages: list[Message]) -> None:
        """Buffer the raw messages of one consume call; process the buffer each time it is full.

        One consume call can return far more than a batch (librdkafka prefetches up to 64 MB: a
        whole packed replay at once). The buffer is cut where it gets full, as message by message:
        batches beyond :data:`BATCH_BYTES` decode and aggregate slower per event (their arrays
        no longer fit the CPU caches: packed input ran ~20 % slower in 2-4 huge batches).
        """
        self._last_message_at = time.monotonic()
        sizes = list(map(len, messages))  # len() of a message: its value's size
        while messages:
            room = self.batch_messages - len(self._buffer)
            total = self._buffered_bytes + sum(sizes)
            if len(messages) < room and total < BATCH_BYTES:  # the usual case
                self._buffer.extend(messages)
                self._buffered_bytes = total
                return
            # bytes buffered after each message: the batch ends at the first that reaches the limit
            ends = list(accumulate(sizes[:room], initial=self._buffered_bytes))
            take = min(bisect_left(ends, BATCH_BYTES, lo=1), room)
            self._buffer.extend(messages[:take])
            self._buffered_bytes = ends[take]
            messages, sizes = messages[take:], sizes[take:]
            self.process_buffer()

    # --- batch processing --------------------------------------------------------------------------
    def process_buffer(self) -> None:
        """Count every buffered message (a batch); dead-letter those that are not valid events."""
        assert self.state is not None
        with self.state.lock:
            messages, self._buffer, self._buffered_bytes = self._buffer, [], 0
            self._seen_at_tick = 0
            if not messages:
                return
            try:
                self._process(messages)
            except _fatal():
                raise
            except Exception:
                if self._applying:  # the state was half changed: stop; a restart recounts from SQLite exactly
                    raise
                logger.warning("a batch of %d messages failed; processing them one by one", len(messages),
                               exc_info=True)
                for message in messages:
                    self._process_alone(message)
            if self._stop_after and self.status.counters.get("windows_closed", 0) >= self._stop_after:
                self.stop()

    def _process_alone(self, message: Message) -> None:
        try:
            self._process([message])
        except _fatal():
            raise
        except Exception as exc:  # this message's fault: dead-letter it and go on
            if self._applying:
                raise
            assert self.state is not None and self.dead_letters is not None
            reason = f"processing_error: {type(exc).__name__}: {exc}"
            logger.warning("message failed in processing, dead-lettered: %s", reason[:300], exc_info=exc)
            self._dead_letter(message, reason)
            self.state.advance(self.state.partition(message.topic(), message.partition()), message.offset())

    def _dead_letter(self, message: Message, reason: str) -> None:
        """Send ``message`` to the dead-letter topic with ``reason`` and count it."""
        assert self.dead_letters is not None
        self.dead_letters.send(message.value(), reason, key=message.key(), headers=_HEADERS(message),
                               topic=message.topic(), partition=message.partition(), offset=message.offset())
        self.status.add("dead_letters")

    def _process(self, messages: Sequence[Message]) -> None:
        """Decode, guard, aggregate and count ``messages``; changes state only once all succeeded."""
        assert self.state is not None and self.guard is not None and self.dead_letters is not None
        state = self.state
        # the partitions of the batch, and each message's index into them
        topics = set(map(_TOPIC, messages))
        if len(topics) == 1:  # the app reads one topic: index by partition number, vectorised
            topic = topics.pop()
            partitions = np.fromiter(map(_PARTITION, messages), dtype=np.int64, count=len(messages))
            numbers, message_state = np.unique(partitions, return_inverse=True)
            states = [state.partition(topic, p) for p in numbers.tolist()]
        else:
            tps = list(zip(map(_TOPIC, messages), map(_PARTITION, messages), strict=True))
            states = [state.partition(*tp) for tp in dict.fromkeys(tps)]
            index = {(s.topic, s.partition): j for j, s in enumerate(states)}
            message_state = np.fromiter(map(index.__getitem__, tps), dtype=np.int64, count=len(messages))
        message_offset = np.fromiter(map(_OFFSET, messages), dtype=np.int64, count=len(messages))
        next_offsets = np.array([s.next_offset for s in states], dtype=np.int64)
        fresh_mask = message_offset >= next_offsets[message_state]
        if not fresh_mask.all():  # read again after a crash: counted before, skipped
            self.status.add("skipped_counted", int((~fresh_mask).sum()))
            fresh_idx = np.flatnonzero(fresh_mask)
            fresh = [messages[i] for i in fresh_idx.tolist()]
            fresh_state, fresh_offset = message_state[fresh_idx], message_offset[fresh_idx]
        else:
            fresh, fresh_state, fresh_offset = list(messages), message_state, message_offset
        if not fresh:
            return
        decoded = codec.decode_values(list(map(_VALUE, fresh)), headers=list(map(_HEADERS, fresh)),
                                      keys=list(map(_KEY, fresh)))
        ended: tuple[int, int] | None = None  # (partition state index, end-of-log time ms) of a marker
        marker: tuple[int, int] | None = None  # (message position, end-of-log time µs)
        if decoded.end_of_log_markers:
            first, end_us = decoded.end_of_log_markers[0]
            if first < len(fresh) - 1:
                # messages after the log's end (re-sent rows, say): counted after the marker's effect, as they
                # would be in the next batch, so batch boundaries never change what is late
                self._process(fresh[:first + 1])
                self._process(fresh[first + 1:])
                return
            ended = (int(fresh_state[first]), end_us // 1000)
            marker = (first, end_us)
        rejected: dict[int, str] = dict(decoded.errors)
        batch = decoded.batch
        n = batch.num_rows
        prepared: list[Prepared] = []
        accepted_messages = rows_counted = wide = 0
        if n:
            source = np.asarray(decoded.source_index, dtype=np.int64)
            times = _int64_column(batch, "arrival_timestamp")
            # one row per message (JSON): no grouping. As many rows as messages is not enough: a message of
            # no rows beside one of two is too, and the guard would then judge the two rows one by one
            if len(source) == len(fresh) and not rejected and np.array_equal(source, np.arange(len(fresh))):
                starts = ends = None
                positions = source
                lo = hi = times
            else:
                starts = np.flatnonzero(np.concatenate(([True], source[1:] != source[:-1])))
                ends = np.append(starts[1:], n)
                positions = source[starts]
                lo = np.minimum.reduceat(times, starts)
                hi = np.maximum.reduceat(times, starts)
            ok = np.ones(len(positions), dtype=bool)
            reasons = self.guard.check_many(lo, hi)
            if reasons.count(None) != len(reasons):  # some rejected (rare): find them
                for i, why in enumerate(reasons):
                    if why is not None:
                        rejected[int(positions[i])] = why
                        ok[i] = False
            # each instance is counted from one partition (its first): an event elsewhere would replace counts
            instances = _int64_column(batch, "instance_id")  # per row = per message when starts is None
            instances = instances if starts is None else instances[starts]
            checked = np.flatnonzero(ok)
            foreign = state.foreign_partition(states, instances[checked], fresh_state[positions[checked]])
            for i, owner in foreign.items():
                message = fresh[int(positions[checked[i]])]
                rejected[int(positions[checked[i]])] = (
                    f"{WRONG_PARTITION}: instance {int(instances[checked[i]])}'s windows are counted from partition "
                    f"{owner} of {message.topic()}, and this event came on partition {message.partition()}: produce "
                    "with the key's partitioner (murmur2, as Kafka's Java clients and the replay do) so that every "
                    "event of an instance reaches one partition, and never add partitions to a topic that holds "
                    "events (the partition is the key's hash modulo their count)")
                ok[checked[i]] = False
            if starts is None:
                keep = ok
                row_message = positions
            else:
                sizes = ends - starts
                keep = np.repeat(ok, sizes)
                row_message = np.repeat(positions, sizes)
            if self.closing_strategy == "partition" and starts is not None:
                lo_ms, hi_ms = lo // 1000, hi // 1000
                is_wide = (hi_ms - lo_ms > self.grace_ms) & (lo_ms // self.window_ms != hi_ms // self.window_ms)
                wide = int((is_wide & ok).sum())
            accepted_messages = int(ok.sum())
            rows_counted = int(keep.sum())
            if rows_counted:
                if rows_counted < n:
                    rows = np.flatnonzero(keep)
                    batch, row_message = batch.take(rows), row_message[rows]
                # rows the replay sent before (a seek or reset back) were counted then: late, whatever their window
                resent = np.fromiter(map(codec.is_resent, map(_HEADERS, fresh)), dtype=bool, count=len(fresh))
                prepared = state.prepare(states, batch, fresh_state[row_message], fresh_offset[row_message],
                                         resent=resent[row_message] if resent.any() else None)
        if marker is not None:  # after the rows before it moved the watermark
            why = self.guard.marker_reason(marker[1])
            if why is not None:
                rejected[marker[0]] = why
                ended = None
        # --- everything computed: change the state, then tell ----------------------------------------
        self._applying = True
        closed = 0
        late: dict[tuple[int, int, int], int] = {}
        repeats = 0
        for prep in prepared:
            closed += state.apply(prep)
            repeats += prep.repeats
            for (offset, inst, start), count in prep.late.items():
                late[(inst, start, offset)] = late.get((inst, start, offset), 0) + count
        if ended is not None:
            closed += state.end_of_log(states[ended[0]], ended[1])
        last = np.full(len(states), -1, dtype=np.int64)
        np.maximum.at(last, fresh_state, fresh_offset)
        for j, top in enumerate(last.tolist()):
            if top >= 0:
                state.advance(states[j], top)
        if rows_counted:
            self.status.add("events", rows_counted)
            self.status.add("messages", accepted_messages)
        if closed:
            self.status.add("windows_closed", closed)
        if late:
            self._count_late(late)
        if wide:
            self._count_wide(wide)
        if repeats:
            self._count_repeats(repeats)
        for position in sorted(rejected):
            self._dead_letter(fresh[position], rejected[position])
        self._applying = False

    def _count_late(self, late: Mapping[tuple[int, int, int], int]) -> None:
        for (inst, start, offset), n in sorted(late.items()):
            before = self._late_total
            self._late_total += n
            self.status.add("late_events", n)
            now = time.monotonic()
            if before == 0 or now - self._late_logged_at >= LATE_LOG_EVERY_S:  # a seek back: 35 lines a second
                self._late_logged_at = now
                # "dropped" read as data lost: these rows were counted when first sent (the README, the status)
                logger.warning("late events for a closed window, not counted again (sent again by a seek or reset "
                               "back, or older than the windows kept for late rows) instance_id=%s window_start_ms=%d "
                               "count=%d source_offset=%s total_late=%d", inst, start, n, offset, self._late_total)

    def _count_repeats(self, repeats: int) -> None:
        before = self._repeats_total
        self._repeats_total += repeats
        self.status.add("repeated_events", repeats)
        if before == 0 or before // 1000 != self._repeats_total // 1000:
            logger.warning("events not counted again: their query_id was already counted in their window (a second "
                           "copy of one event, e.g. a producer's retry or the same message sent twice) count=%d "
                           "total_repeated=%d", repeats, self._repeats_total)

    def _count_wide(self, wide: int) -> None:
        self.status.add("wide_messages", wide)
        if not self._warned_wide:
            self._warned_wide = True
            logger.warning(
                "a message spans more than grace_ms=%d of event time: with closing_strategy='partition' a run of "
                "such messages can close other instances' windows early (their events then count as late). Raise "
                "grace_ms or use closing_strategy='key' for such replays.", self.grace_ms)

    def _tick(self) -> None:
        # Called after every poll: an idle poll (no new message since the last tick) processes the buffer,
        # so counts and the end of a replay do not wait for a full batch or the checkpoint.
        pending = len(self._buffer)
        if pending:
            if pending == self._seen_at_tick:
                self.process_buffer()
            else:
                self._seen_at_tick = pending
        self.status.maybe_publish()
        now = time.monotonic()
        # Collective anomalies of closed windows: every 30 s, and soon once the stream is idle with windows
        # written since the last pass (a drained replay's last windows were judged up to 30 s after
        # Workbench.wait() had returned).
        info = self.status.info
        unjudged = info.get("windows_written_at", 0.0) > info.get("collective_checked_at", 0.0)
        idle = now - max(self._last_message_at, self._last_collective) >= _COLLECTIVE_IDLE_S
        if now - self._last_collective >= 30.0 or (unjudged and idle and not self._collective_failed):
            self._last_collective = now
            self._start_collective_step()
        if (self.retention_days is not None and self.sink is not None
                and now - self._last_archive >= self.archive_every_s):
            self._last_archive = now
            self.archive()

    def _start_collective_step(self) -> None:
        # In a thread of its own: it reads SQLite and writes the lakehouse through its own connections and
        # takes seconds, which would stall consumption if it ran in the main loop. One at a time.
        if self._collective_thread is not None and self._collective_thread.is_alive():
            return
        self._collective_thread = threading.Thread(target=self._collective_step, name="collective-step",
                                                   daemon=True)
        self._collective_thread.start()

    def _collective_step(self) -> None:
        # N instances on one home: the step reads *every* instance's windows from the shared store, so
        # one process (the lease holder) runs it; the others would repeat the same pass (CPU the training
        # needs, and at stop each waited its turn for a whole pass past the supervisor's grace).
        if not self._collective_lease.try_acquire():
            return
        started = time.time()
        try:
            self.status.add("window_anomalies", self.collective.run())
            # every window written before this pass started has been read (and judged once final)
            self.status.info["collective_checked_at"] = started
            self._collective_failed = False
        except LakehouseBusyError as exc:  # another writer's commit: expected with several instances
            self._collective_failed = True
            logger.warning("collective window step: the lakehouse was busy (%s); nothing was written, the next pass "
                           "(within 30 s) writes it", exc)
        except Exception:  # never stop the stream for the collective step; retried on the next tick
            self._collective_failed = True  # retried at the 30 s pace, not at every idle tick
            logger.exception("collective window step failed; will retry")

    def archive(self) -> None:
        """Archive windows older than ``retention_days`` (data time) into Parquet."""
        if self.retention_days is None or self.sink is None:
            return
        result = self.sink.store.archive_older_than(self.retention_days)
        self.status.add("archived_rows", result.rows)
        logger.info("archived windows rows=%d cutoff=%s", result.rows, result.cutoff)

    # --- lifecycle --------------------------------------------------------------------------------
    def build(self) -> Application:
        """Declare the Quix pipeline; returns the Application (not started)."""
        # no on_processing_error: no message runs through Quix's dataframe (see consume_in_batches); a batch
        # dead-letters its own bad messages, and whatever else raises stops the app
        app = build_application(self.settings, APP_NAME, group=self.group, commit_interval=self.commit_interval,
                                use_changelog_topics=False)
        self.dead_letters = DeadLetters(self.settings, APP_NAME, app.get_producer())
        self.guard = EventTimeGuard.from_settings(self.settings)
        store = WindowStatsStore.from_settings(self.settings)  # SQLite in the home, or PostgreSQL
        retention_ms = None if self.retention_days is None else int(self.retention_days * 86_400_000)
        self.state = WindowState(store, self.group or consumer_group(self.settings, APP_NAME), window_ms=self.window_ms,
                                 grace_ms=self.grace_ms, closing_strategy=self.closing_strategy,
                                 topic_id=self._topic_id, clock_messages=self.settings.window_clock_messages,
                                 retention_ms=retention_ms)
        self.state.open()
        self.sink = WindowStatsSink(self.state, before_flush=self.process_buffer, status=self.status)
        sdf = app.dataframe(event_topic(app, self.settings))
        sdf.sink(self.sink)  # registers the sink with Quix's checkpoints (flushed before every commit)
        # nothing else runs per message: skip Quix's per-message machinery (see consume_in_batches)
        consume_in_batches(app, self._on_messages, max_messages=self.batch_messages,
                           on_skipped=SkippedOffsets(low_offsets(app), self.dead_letters, self.status))
        register_periodic(app, self._tick)
        self.status.info.update({"window_ms": self.window_ms, "grace_ms": self.grace_ms,
                                 "closing_strategy": self.closing_strategy,
                                 "window_clock_messages": self.settings.window_clock_messages,
                                 "topic": self.settings.topic_query_events,
                                 "sqlite_path": str(self.settings.sqlite_path), "window_stats": repr(store)})
        self.app = app
        return app

    def run(self, *, timeout: float | None = None, idle_exit: float | None = None,
            count: int | None = None) -> AppResult:
        """Run until stopped, ``timeout`` s of wall time, ``idle_exit`` s idle or ``count`` closed windows."""
        self._stop_after = count
        return super().run(timeout=timeout, idle_exit=idle_exit)

    def _topic_id(self, topic: str) -> str | None:
        """Kafka's id of ``topic`` (tells a topic created again under the same name); None when unknown."""
        from workbench.broker import topic_id

        return topic_id(self.settings, topic)

    def _cleanup(self) -> None:
        # Quix's last checkpoint (at stop) already wrote everything counted; what is still buffered
        # here was never committed and is read again by the next run.
        try:
            if self.sink is not None:
                self.sink.store.close()
                if self._collective_thread is not None:
                    self._collective_thread.join(300)
                self._collective_step()
        finally:
            self._collective_lease.release()


def _int64_column(batch: Any, name: str) -> np.ndarray:
    array = batch.column(name)
    return np.frombuffer(array.buffers()[1], dtype=np.int64, count=len(array), offset=array.offset * 8)


def run_analytics(settings: Settings, *, timeout: float | None = None, idle_exit: float | None = None,
                  count: int | None = None, **options: Any) -> AppResult:
    """Build and run the stream-analytics app in this (main) thread; see :class:`AnalyticsApp`.

    Parameters
    ----------
    settings : Settings
        Broker, topics, paths.
    timeout : float, optional
        Stop after this many seconds of wall time.
    idle_exit : float, optional
        Stop once no message arrived for this many seconds (end of a replay).
    count : int, optional
        Stop after this many closed windows.
    **options
        Keyword arguments of :class:`AnalyticsApp` (``window_ms``, ``grace_ms``, ...).

    Returns
    -------
    AppResult
        The final counters: ``events``, ``messages``, ``windows_emitted``, ``provisional_rows``,
        ``late_events``, ``repeated_events``, ``dead_letters``, ``sink_rows``, ``wide_messages``.
    """
    return AnalyticsApp(settings, **options).run(timeout=timeout, idle_exit=idle_exit, count=count)
