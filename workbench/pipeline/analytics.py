"""Stream analytics: per-instance tumbling windows of ``redshift.query_events`` into SQLite.

Pipeline (one Quix app in its own process: ``workbench app analytics``)::

    bytes message --decode--> partial aggregates (1 per window the message touches)
        --set_timestamp(first arrival of the partial)--> tumbling_window(window_ms, grace_ms)
        .reduce(merge).final(closing_strategy="partition") --finalize--> WindowStatsSink (UPSERT)

Throughput
    A message is decoded once. A packed Arrow message (N rows of one instance) becomes one or a
    few partials with the vectorised :func:`~workbench.analysis.windows.partial_aggregates`; a
    one-row JSON message becomes its partial with a scalar fast path (:func:`row_partial`, same
    result, no Arrow round trip). The window state only ever holds partials; ``cluster_size``
    travels inside them (never a process-global dict).

Keys
    The message key is the instance id (the replay's contract); windows are keyed by it with no
    repartition topic. A message whose key differs from its rows' ``instance_id`` is dead-lettered.

Open windows and the end of input (the flush mechanism)
    The window's ``after_update`` hook keeps the latest *complete* aggregate of every open window
    (Quix passes the merged state value, so it includes what was merged before a restart). At every
    checkpoint (``commit_interval``, default 5 s, only when messages were processed) the sink
    first upserts the windows that closed, then upserts the open windows that changed as
    **provisional** rows; it does so once more when the app stops. The store UPSERTs on
    ``(instance_id, window_start)``, so the real close later replaces a provisional row. Hence
    every window, including each instance's last one, is in SQLite within one checkpoint of its
    last event, with no idle timer and no read of Quix state from outside. A provisional row looks
    exactly like a final one; ``updated_at`` tells when it was written.

Late events
    Events older than a closed window (``grace_ms`` of event time after its end, per partition)
    cannot change it. The window's ``on_late`` hook counts them per window into the
    ``late_events`` table (:meth:`WindowStatsStore.record_late`), in the status counters
    (``late_events``) and logs the first and then every 1,000th; they are never silently dropped.
    With ``closing_strategy="partition"``, grace must cover the event-time disorder inside a
    partition: an unpaced packed replay puts up to ``batch_size`` rows of event time into one
    message, so its later windows close other instances' earlier ones. The app counts such wide
    messages (``wide_messages``) and warns once; raise ``grace_ms`` or use ``closing_strategy="key"``
    (per-instance event time, safe for any packing) for such replays.

Retention
    Every ``archive_every_s`` (default 1 h) the app calls
    :meth:`WindowStatsStore.archive_older_than` with ``retention_days`` (data time).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from quixstreams import Application
from quixstreams.sinks import BatchingSink, SinkBatch

from workbench.analysis.classify import QUEUE_MIN_MS, classify_query
from workbench.analysis.collective import CollectiveStep
from workbench.analysis.windows import (
    CLASS_COUNT_KEYS,
    DEFAULT_WINDOW_MS,
    SLOW_MS,
    finalize,
    hist_bin,
    merge,
    partial_aggregates,
)
from workbench.config import Settings
from workbench.data import codec
from workbench.data.codec import MessageDecodeError
from workbench.pipeline._app import WorkbenchApp, build_application
from workbench.pipeline._deadletter import DeadLetters
from workbench.pipeline._decode import event_topic
from workbench.pipeline._eventtime import EventTimeGuard
from workbench.pipeline._quix import register_periodic
from workbench.pipeline._status import AppResult, AppStatus
from workbench.pipeline.exceptions import PipelineConfigError
from workbench.store.window_stats import WindowStatsStore

__all__ = ["APP_NAME", "AnalyticsApp", "WindowStatsSink", "row_partial", "run_analytics"]

logger = logging.getLogger(__name__)

APP_NAME = "analytics"
ClosingStrategy = Literal["partition", "key"]


def row_partial(row: Mapping[str, Any], window_ms: int = DEFAULT_WINDOW_MS) -> dict[str, Any]:
    """The partial aggregate of one row; equal to ``partial_aggregates`` of that row as a batch.

    Parameters
    ----------
    row : Mapping
        A decoded event (:func:`~workbench.data.codec.decode_row`, with ``arrival_us``).
    window_ms : int
        Window length in ms.
    """
    arrival = int(row["arrival_us"]) // 1000
    cls = classify_query(row)
    exec_ms = row.get("execution_duration_ms")
    size = row.get("cluster_size")
    counts = dict.fromkeys(CLASS_COUNT_KEYS, 0)
    counts[f"{cls}_queries"] = 1
    spilled, queue = int(row.get("mbytes_spilled") or 0), int(row.get("queue_duration_ms") or 0)
    return {
        "instance_id": int(row["instance_id"]),
        "window_start_ms": arrival // window_ms * window_ms,
        "window_ms": int(window_ms),
        "cluster_size": None if size is None else int(size),
        "cluster_size_at_ms": -1 if size is None else arrival,
        "total_queries": 1,
        **counts,
        "cached_queries": int(bool(row.get("was_cached"))),
        "aborted_queries": int(bool(row.get("was_aborted"))),
        "spilled_queries": int(spilled > 0),
        "queued_queries": int(queue > QUEUE_MIN_MS),
        "slow_queries": int(int(exec_ms or 0) > SLOW_MS),
        "queue_max_ms": queue,
        "spilled_mb": spilled,
        "queue_ms": queue,
        "exec_ms": int(exec_ms or 0),
        "exec_count": 0 if exec_ms is None else 1,
        "exec_min_ms": None if exec_ms is None else int(exec_ms),
        "exec_max_ms": None if exec_ms is None else int(exec_ms),
        "exec_hist": {} if exec_ms is None else {str(int(hist_bin(np.array([exec_ms]))[0])): 1},
        "anomalies": 0,
        "first_arrival_ms": arrival,
        "last_arrival_ms": arrival,
    }


class OpenWindows:
    """The latest merged aggregate of every open window, and which changed since the last flush."""

    def __init__(self) -> None:
        self.windows: dict[tuple[int, int], dict[str, Any]] = {}
        self.dirty: set[tuple[int, int]] = set()

    def update(self, aggregated: Mapping[str, Any]) -> None:
        """Remember ``aggregated`` (called from the window's ``after_update`` hook)."""
        key = (int(aggregated["instance_id"]), int(aggregated["window_start_ms"]))
        self.windows[key] = dict(aggregated)
        self.dirty.add(key)

    def close(self, aggregated: Mapping[str, Any]) -> None:
        """Forget a window that was emitted as final."""
        key = (int(aggregated["instance_id"]), int(aggregated["window_start_ms"]))
        self.windows.pop(key, None)
        self.dirty.discard(key)

    def take_dirty(self, *, everything: bool = False) -> list[dict[str, Any]]:
        """Finalized rows of the changed (or all) open windows; clears the changed set."""
        keys = list(self.windows) if everything else [k for k in self.dirty if k in self.windows]
        self.dirty.clear()
        return [finalize(self.windows[k]) for k in sorted(keys)]


class WindowStatsSink(BatchingSink):
    """Quix sink that UPSERTs window rows into ``window_stats`` (SQLite, WAL) at each checkpoint.

    Besides the closed windows it receives, it writes the changed open windows of ``open_windows``
    as provisional rows after them (see the module docstring).

    Parameters
    ----------
    store : WindowStatsStore
        Not yet opened; :meth:`setup` opens it.
    open_windows : OpenWindows, optional
        Open windows to write provisionally at each flush.
    status : AppStatus, optional
        Receives ``windows_emitted``, ``provisional_rows`` and ``sink_rows`` counts.
    """

    def __init__(self, store: WindowStatsStore, *, open_windows: OpenWindows | None = None,
                 status: AppStatus | None = None) -> None:
        super().__init__()
        self.store = store
        self.open_windows = open_windows
        self.status = status

    def setup(self) -> None:
        """Open the SQLite store (creates the table)."""
        self.store.open()

    def _count(self, name: str, n: int) -> None:
        if self.status is not None:
            self.status.add(name, n)

    def write(self, batch: SinkBatch) -> None:
        """UPSERT the closed windows of one topic partition."""
        rows = [item.value for item in batch]
        written = self.store.upsert(rows)
        self._count("windows_emitted", written)
        self._count("sink_rows", written)

    def flush(self) -> None:
        """Write the closed windows, then the changed open windows (provisional rows)."""
        super().flush()
        self.flush_open_windows()

    def flush_open_windows(self, *, everything: bool = False) -> int:
        """UPSERT the changed (or all) open windows as provisional rows; returns rows written."""
        if self.open_windows is None:
            return 0
        rows = self.open_windows.take_dirty(everything=everything)
        written = self.store.upsert(rows) if rows else 0
        self._count("provisional_rows", written)
        self._count("sink_rows", written)
        return written


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
        Consumer group (default ``workbench-analytics``).
    commit_interval : float
        Seconds between checkpoints (sink writes and offset commits).
    """

    def __init__(self, settings: Settings, *, window_ms: int = DEFAULT_WINDOW_MS, grace_ms: int = 300_000,
                 closing_strategy: ClosingStrategy = "partition", retention_days: float | None = 8.0,
                 archive_every_s: float = 3600.0, group: str | None = None, commit_interval: float = 5.0,
                 status_interval: float = 1.0) -> None:
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
        self.settings = settings
        self.window_ms = int(window_ms)
        self.grace_ms = int(grace_ms)
        self.closing_strategy = closing_strategy
        self.retention_days = retention_days
        self.archive_every_s = archive_every_s
        self.group = group
        self.commit_interval = commit_interval
        self.status = AppStatus(settings, APP_NAME, interval=status_interval)
        self.open_windows = OpenWindows()
        self.app: Application | None = None
        self.sink: WindowStatsSink | None = None
        self.dead_letters: DeadLetters | None = None
        self.guard: EventTimeGuard | None = None
        self._last_archive = time.monotonic()
        self._last_collective = time.monotonic()
        self.collective = CollectiveStep(settings)
        self._warned_wide = False

    # --- per-message steps (main thread) --------------------------------------------------------
    def _partials(self, value: bytes | None, key: Any, _timestamp: int, headers: Any) -> list[dict[str, Any]]:
        """Decode one message into its partial aggregates; dead-letter it when it is not a valid event.

        The codec decides validity (key included); the event-time guard then decides whether
        the event may move event time. Anything else that fails for this one message is caught by
        :meth:`on_processing_error` (the app's per-message boundary).
        """
        assert self.dead_letters is not None and self.guard is not None
        try:
            if (codec.header(headers, "encoding") or codec.ENCODING_JSON) == codec.ENCODING_JSON:
                row = codec.decode_row(value, headers, key=key, check_key=True)
                arrival_us = row["arrival_us"]
                self.guard.check(arrival_us, arrival_us)
                partials = [row_partial(row, self.window_ms)]
                rows = 1
            else:
                decoded = codec.decode_values([value], headers=[headers], keys=[key])
                if decoded.errors:
                    code, _, detail = decoded.errors[0][1].partition(": ")
                    raise MessageDecodeError(code, detail)
                batch = decoded.batch
                rows = batch.num_rows
                if rows:
                    self.guard.check(*codec.int64_bounds(batch.column("arrival_timestamp")))
                partials = partial_aggregates(batch, self.window_ms)
        except MessageDecodeError as exc:
            self.dead_letters.send(value, str(exc), key=key, headers=headers)
            self.status.add("dead_letters")
            return []
        self.status.add("events", rows)
        self.status.add("messages")
        if len(partials) > 1:
            span = max(p["last_arrival_ms"] for p in partials) - min(p["first_arrival_ms"] for p in partials)
            if span > self.grace_ms and self.closing_strategy == "partition":
                self.status.add("wide_messages")
                if not self._warned_wide:
                    self._warned_wide = True
                    logger.warning(
                        "a message spans %d ms of event time, more than grace_ms=%d: with closing_strategy="
                        "'partition' its later windows can close other instances' windows early (their events "
                        "then count as late). Raise grace_ms or use closing_strategy='key' for such replays.",
                        span, self.grace_ms)
        return partials

    def _after_update(self, aggregated: Any, _value: Any, _key: Any, _ts: int, _headers: Any) -> bool:
        self.open_windows.update(aggregated)
        return False

    def _on_late(self, value: Any, _key: Any, _ts: int, late_by_ms: int, start: int, _end: int, _name: str,
                 topic: str, partition: int, offset: int) -> bool:
        n = int(value.get("total_queries", 1)) if isinstance(value, Mapping) else 1
        before = self.status.counters.get("late_events", 0)
        self.status.add("late_events", n)
        if self.sink is not None:
            # Keyed by the late message: a re-processed message (after a crash) replaces its count.
            self.sink.store.record_late(int(value["instance_id"]), int(start), n, source=(topic, partition, offset))
        if before == 0 or before // 1000 != (before + n) // 1000:
            logger.warning("late events dropped from closed window instance_id=%s window_start_ms=%d count=%d "
                           "late_by_ms=%d source=%s[%s]@%s total_late=%d", value.get("instance_id"), start, n,
                           late_by_ms, topic, partition, offset, before + n)
        return False

    def _closed(self, window: Mapping[str, Any]) -> dict[str, Any]:
        agg = window["value"]
        self.open_windows.close(agg)
        return finalize(agg)

    def _tick(self) -> None:
        self.status.maybe_publish()
        if time.monotonic() - self._last_collective >= 30.0:  # collective anomalies of closed windows
            self._last_collective = time.monotonic()
            self._collective_step()
        if (self.retention_days is not None and self.sink is not None
                and time.monotonic() - self._last_archive >= self.archive_every_s):
            self._last_archive = time.monotonic()
            self.archive()

    def _collective_step(self) -> None:
        from workbench.pipeline._instance import exclusive

        try:
            with exclusive(self.settings.state_dir, "collective"):  # N instances: one insert-if-absent at a time
                self.status.add("window_anomalies", self.collective.run())
        except Exception:  # never stop the stream for the collective step; retried on the next tick
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
        app = build_application(self.settings, APP_NAME, group=self.group, commit_interval=self.commit_interval,
                                on_processing_error=self.on_processing_error)
        self.dead_letters = DeadLetters(self.settings, APP_NAME, app.get_producer())
        self.guard = EventTimeGuard.from_settings(self.settings)
        store = WindowStatsStore.from_settings(self.settings)  # SQLite in the home, or PostgreSQL
        self.sink = WindowStatsSink(store, open_windows=self.open_windows, status=self.status)
        sdf = app.dataframe(event_topic(app, self.settings))
        sdf = sdf.apply(self._partials, metadata=True, expand=True)
        sdf = sdf.set_timestamp(lambda value, _key, _ts, _headers: int(value["first_arrival_ms"]))
        window = sdf.tumbling_window(duration_ms=self.window_ms, grace_ms=self.grace_ms, name="window_stats",
                                     on_late=self._on_late, after_update=self._after_update)
        sdf = window.reduce(reducer=merge, initializer=lambda value: value).final(
            closing_strategy=self.closing_strategy)
        sdf = sdf.apply(self._closed)
        sdf.sink(self.sink)
        register_periodic(app, self._tick)
        self.status.info.update({"window_ms": self.window_ms, "grace_ms": self.grace_ms,
                                 "closing_strategy": self.closing_strategy, "topic": self.settings.topic_query_events,
                                 "sqlite_path": str(self.settings.sqlite_path), "window_stats": repr(store)})
        self.app = app
        return app

    def _cleanup(self) -> None:
        # Every window still open (each instance's last one included) is written before exit.
        if self.sink is not None:
            try:
                if self.open_windows.windows:
                    self.sink.store.open()
                    self.sink.flush_open_windows(everything=True)
            finally:
                self.sink.store.close()
            self._collective_step()


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
        ``late_events``, ``dead_letters``, ``sink_rows``, ``wide_messages``.
    """
    return AnalyticsApp(settings, **options).run(timeout=timeout, idle_exit=idle_exit, count=count)
