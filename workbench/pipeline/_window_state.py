"""Exactly-once tumbling windows of the stream-analytics app: state in memory, committed to the
window_stats store (SQLite, or PostgreSQL for several machines) together with the consumed offsets at
every checkpoint.

Why not Quix's window operator
    ``tumbling_window().reduce()`` reads and writes the window in RocksDB, merges and calls the hooks
    once *per message*: with the per-message set-up around it, that was about half the CPU of a
    one-query JSON event. Here the app hands over decoded rows in batches; they are aggregated with
    :func:`~workbench.analysis.windows.partial_aggregates` (vectorised) and merged into the open
    windows in memory with :func:`~workbench.analysis.windows.merge`, and the state touches SQLite
    once per window per checkpoint. Partials stay the data model of :mod:`workbench.analysis.windows`
    (whatever keys it defines flow through unchanged).

State of one (consumer group, topic, partition)
    ``next_offset`` (messages below it are counted), ``watermark_ms`` (the partition's window clock,
    below) with ``recent_ms`` (the floors of its last ``k - 1`` messages), the clock and recent floors
    of every instance (``closing_strategy="key"``) and the merged partials of the windows not yet
    closed. It lives in memory and is written, with the window rows, in **one store transaction**
    (:meth:`WindowStatsStore.transaction`) at every checkpoint (the Quix sink flush, which Quix runs
    before it commits the Kafka offsets): ``window_stats`` (closed windows final, changed open
    windows provisional), ``late_event_sources``, ``analytics_progress``, ``analytics_open_windows``
    and ``analytics_key_time``, all in the store's database. On PostgreSQL the statements are
    translated, and every process's transaction takes turns on one advisory lock, as SQLite's write
    lock makes them do.

Why that is exactly once (a crash at any point neither loses nor duplicates a counted event)
    * Crash before the SQLite commit: nothing of the checkpoint is stored and Kafka's committed offset
      is at or before its first message: the messages are read again and counted once.
    * Crash between the SQLite commit and the Kafka commit: the messages are read again; a process
      loads a partition's state from SQLite when it first sees the partition and skips every message
      below the stored ``next_offset``.
    * A partition that moved to another process and back (rebalance): the flush checks, inside its
      transaction, that the stored ``next_offset`` is still the one this process last loaded or wrote.
      If another process wrote in between, this state is stale: it is dropped, nothing is written, and
      the flush raises Quix's ``SinkBackpressureError``, which seeks every partition back to the
      checkpoint's first offsets; the messages are then read again against the reloaded state.
    * Any failed flush drops the whole in-memory state (it is reloaded from SQLite on the next message),
      so contributions of a checkpoint that was not committed are never written later.

A query counted twice
    ``query_id`` is unique per instance (Redset's contract, which ``validate`` and ``prepare`` check), so
    a row whose query its open window has already counted is a second copy of one event: a producer's
    retry without idempotence, the same message sent twice, a log replayed again into a topic whose
    windows are still open. Each open window keeps the sorted ids of the queries it counted
    (``analytics_open_windows.query_ids``, written with the window); a later copy, in the same batch or
    after any restart, is not counted again (``repeated_events``). The first copy in message order
    counts; the shards keep one copy too (the latest: the copies are the same event). A closed
    window keeps its ids with its partial (below), so a copy that comes after it closed is still a
    copy. A state stored before
    the ids were kept knows no ids for its open windows: copies of their earlier rows count again.

Windows and late events
    A window ``[start, start + window_ms)`` closes once the window clock (of the partition, or of the
    instance with ``closing_strategy="key"``) reaches ``start + window_ms + grace_ms``; its row is then
    final, and its partial and counted ids are kept (``analytics_closed_windows``, in the same
    transaction). A row that comes for a closed window and was never sent before (a seek forward
    skipped it and a reset or seek back sent it, or another producer's event came out of order) opens
    it again (:meth:`WindowState._reopen`): it is merged into the kept partial, and the window closes
    again at once and its row is rewritten; a window never counted opens as new. So what is counted
    does not depend on when a row comes, nor on batch boundaries. A row is *late* when its message is
    marked re-sent (:data:`~workbench.data.codec.RESENT_HEADER`: the replay sent it before a seek or
    reset back in time) and its window counted its query then, open or closed (a marked row its window
    never counted, e.g. another producer copied the header, counts), or when its window
    was counted before partials were kept or lies ``retention_ms`` before the newest window; late rows
    are counted per (source message, window) in ``late_event_sources``, folded into one row per window
    in the transaction that stores the offset past them (never counted into ``window_stats``). The collective
    step does not judge a window opened again a second time.

The window clock: k consecutive messages must agree
    A message's *floor* is the earliest event time among its rows (of the instance, by key). The clock
    after a message is the larger of the clock before it and the smallest floor of the last ``k``
    messages (``Settings.window_clock_messages``, default 16): the latest time ``k`` consecutive
    messages have all reached. Why:

    * The running maximum of event time (the clock before, = ``k = 1`` on one-row messages) let one
      valid message dated hours or days ahead (within the event-time guard's horizon) close every
      window up to it: each on-time event after it was late. Now fewer than ``k`` adjacent messages
      ahead move nothing; their windows stay open, are written as provisional rows at every
      checkpoint, and close normally when the stream reaches them (counted in their own windows).
    * The unit is the message, not the row, because a message is what one producer writes at once: a
      packed Arrow message of any number of rows ahead is one vote, and the rows of one message never
      close each other's windows (a wide packed message no longer closes other instances' windows
      unless ``k`` messages in a row do).
    * A real jump of the stream (all messages after a gap are ahead) moves the clock after ``k``
      messages. The rule is a function of the partition's message order only, and the state it needs
      (the clock and ``k - 1`` floors) is committed with the offsets: the same at any replay speed,
      any batch boundaries, and across kill -9 and restarts.

    What it does not do: ``k`` or more adjacent messages ahead still move the clock (as a real jump
    does: in message order the two look alike). Windows close up to ``k`` messages later than with the
    running maximum (a provisional row stands in until then; on a sparse partition that can be hours
    of wall time). Windows an outlier leaves open are held (memory, ``analytics_open_windows``) until
    the clock passes them, i.e. until the stream reaches their time: at most the event-time guard's
    horizon (7 days) after the stream's latest accepted event, and no more windows than the distinct
    (instance, window) pairs the outliers' rows fall into (one window row each in any case). The
    guard's watermark follows accepted outliers, so a stream that keeps sending them, each up to a
    horizon ahead of the last, holds one open window per such pair: bounded by the outliers' rows.
    A state stored before the clock kept its floors starts with none: its clock moves again after
    ``k`` new messages.
"""

from __future__ import annotations

import base64
import logging
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import orjson
import pyarrow as pa
from quixstreams.sinks import SinkBackpressureError

from workbench.analysis.windows import finalize, merge, partial_aggregates
from workbench.store.window_stats import WindowStatsStore

__all__ = ["WRONG_PARTITION", "FlushResult", "PartitionState", "Prepared", "StaleStateError", "WindowState"]

logger = logging.getLogger(__name__)

_CREATE: Final = (
    "CREATE TABLE IF NOT EXISTS analytics_progress (\n  consumer_group TEXT NOT NULL,\n  topic TEXT NOT NULL,\n"
    "  partition INTEGER NOT NULL,\n  next_offset INTEGER NOT NULL,\n  watermark_ms INTEGER,\n  topic_id TEXT,\n"
    "  recent_ms TEXT,\n  ended_ms INTEGER,\n  PRIMARY KEY (consumer_group, topic, partition)\n) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS analytics_open_windows (\n  consumer_group TEXT NOT NULL,\n  topic TEXT NOT NULL,\n"
    "  partition INTEGER NOT NULL,\n  instance_id INTEGER NOT NULL,\n  window_start_ms INTEGER NOT NULL,\n"
    "  partial TEXT NOT NULL,\n  query_ids TEXT,\n"
    "  PRIMARY KEY (consumer_group, topic, partition, instance_id, window_start_ms)\n"
    ") WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS analytics_closed_windows (\n  consumer_group TEXT NOT NULL,\n  topic TEXT NOT NULL,\n"
    "  partition INTEGER NOT NULL,\n  instance_id INTEGER NOT NULL,\n  window_start_ms INTEGER NOT NULL,\n"
    "  partial TEXT NOT NULL,\n  query_ids TEXT,\n"
    "  PRIMARY KEY (consumer_group, topic, partition, instance_id, window_start_ms)\n"
    ") WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS analytics_key_time (\n  consumer_group TEXT NOT NULL,\n  topic TEXT NOT NULL,\n"
    "  partition INTEGER NOT NULL,\n  instance_id INTEGER NOT NULL,\n  latest_ms INTEGER NOT NULL,\n"
    "  recent_ms TEXT,\n  PRIMARY KEY (consumer_group, topic, partition, instance_id)\n) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS analytics_instance_owner (\n  consumer_group TEXT NOT NULL,\n  topic TEXT NOT NULL,\n"
    "  instance_id INTEGER NOT NULL,\n  partition INTEGER NOT NULL,\n"
    "  PRIMARY KEY (consumer_group, topic, instance_id)\n) WITHOUT ROWID",
)
#: Columns added after the tables were first released: ``open`` adds them to a state stored before.
_ADDED: Final = {"analytics_progress": (("topic_id", "TEXT"), ("recent_ms", "TEXT"), ("ended_ms", "INTEGER")),
                 "analytics_key_time": (("recent_ms", "TEXT"),),
                 "analytics_open_windows": (("query_ids", "TEXT"),)}
_PROGRESS: Final = (
    "INSERT INTO analytics_progress (consumer_group, topic, partition, next_offset, watermark_ms, topic_id, "
    "recent_ms, ended_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (consumer_group, topic, partition) DO UPDATE "
    "SET next_offset = excluded.next_offset, watermark_ms = excluded.watermark_ms, topic_id = excluded.topic_id, "
    "recent_ms = excluded.recent_ms, ended_ms = excluded.ended_ms"
)
_UPSERT_WINDOW: Final = (
    "INSERT INTO {table} (consumer_group, topic, partition, instance_id, window_start_ms, partial, "
    "query_ids) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (consumer_group, topic, partition, instance_id, "
    "window_start_ms) DO UPDATE SET partial = excluded.partial, query_ids = excluded.query_ids"
)
_OPEN: Final = _UPSERT_WINDOW.format(table="analytics_open_windows")
_CLOSE: Final = ("DELETE FROM analytics_open_windows WHERE consumer_group = ? AND topic = ? AND partition = ? "
                 "AND instance_id = ? AND window_start_ms = ?")
_KEEP_CLOSED: Final = _UPSERT_WINDOW.format(table="analytics_closed_windows")
_CLOSED: Final = ("SELECT partial, query_ids FROM analytics_closed_windows WHERE consumer_group = ? AND topic = ? "
                  "AND partition = ? AND instance_id = ? AND window_start_ms = ?")
_STORED: Final = "SELECT 1 FROM window_stats WHERE instance_id = ? AND window_start = ?"
_KEY_TIME: Final = (
    "INSERT INTO analytics_key_time (consumer_group, topic, partition, instance_id, latest_ms, recent_ms) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (consumer_group, topic, partition, instance_id) DO UPDATE SET "
    "latest_ms = excluded.latest_ms, recent_ms = excluded.recent_ms"
)
_WHERE: Final = "WHERE consumer_group = ? AND topic = ? AND partition = ?"
_CLAIM: Final = ("INSERT INTO analytics_instance_owner (consumer_group, topic, instance_id, partition) "
                 "VALUES (?, ?, ?, ?) ON CONFLICT (consumer_group, topic, instance_id) DO NOTHING")
_OWNER: Final = ("SELECT partition FROM analytics_instance_owner "
                 "WHERE consumer_group = ? AND topic = ? AND instance_id = ?")
#: Dead-letter reason of an event on another partition than the one its instance's windows are counted from.
WRONG_PARTITION: Final = "wrong_partition"

WindowKey = tuple[int, int]  # (instance_id, window_start_ms)

#: The clock before k messages have reached any time: no window closes by it. Far from the int64 bounds,
#: so ``NO_CLOCK - grace`` cannot wrap around.
NO_CLOCK: Final = -(1 << 62)
#: Messages that must all have reached a time before the window clock moves to it (see the module docstring).
DEFAULT_CLOCK_MESSAGES: Final = 16


def message_clock(clock: int, recent: list[int], floors: np.ndarray, k: int) -> tuple[np.ndarray, list[int]]:
    """The window clock after each message, and the floors the next call needs.

    ``floors`` are the earliest event times (ms) of consecutive messages, in their order; ``recent`` the
    floors of the (at most ``k - 1``) messages before them, ``clock`` the clock after those
    (:data:`NO_CLOCK` if none). After message ``j`` the clock is the larger of the clock before it and
    the smallest floor of the last ``k`` messages up to ``j``: the latest time ``k`` consecutive
    messages have all reached. Returns the clocks (one per floor) and the last ``k - 1`` floors.
    """
    seq = np.concatenate((np.asarray(recent, dtype=np.int64), floors.astype(np.int64, copy=False)))
    candidate = np.full(len(floors), NO_CLOCK, dtype=np.int64)
    if len(seq) >= k:
        mins = _sliding_min(seq, k)
        first = k - 1 - len(recent)  # the first message with k floors up to it (may be < 0)
        lo = max(first, 0)
        candidate[lo:] = mins[lo - first:]
    clocks = np.maximum.accumulate(np.maximum(candidate, clock))
    return clocks, (seq[-(k - 1):].tolist() if k > 1 else [])


def _sliding_min(values: np.ndarray, k: int) -> np.ndarray:
    """``out[i] = min(values[i:i + k])`` for every full window, in O(n log k) contiguous passes (a strided
    ``sliding_window_view(...).min(axis=1)`` was several times slower on one-row messages)."""
    spans, width = values, 1  # spans[i] = min(values[i:i + width])
    while width * 2 <= k:
        spans = np.minimum(spans[:-width], spans[width:])
        width *= 2
    n = len(values) - k + 1  # two overlapping spans of the largest power of two <= k cover a window
    return np.minimum(spans[:n], spans[k - width:k - width + n])


def _message_floors(times: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each message's earliest event time, and each row's message index (rows of a message are adjacent)."""
    boundary = np.empty(len(offsets), dtype=bool)
    boundary[0] = True
    np.not_equal(offsets[1:], offsets[:-1], out=boundary[1:])
    starts = np.flatnonzero(boundary)
    return np.minimum.reduceat(times, starts), np.cumsum(boundary) - 1


def first_copies(windows: tuple[np.ndarray, ...], query_id: np.ndarray,
                 counted: Callable[[tuple[int, ...]], np.ndarray | None],
                 ) -> tuple[np.ndarray, dict[tuple[int, ...], np.ndarray]]:
    """Which rows count: not a repeat of a query their window counted before, nor of an earlier row.

    ``windows`` are the columns that name each row's window (e.g. partition, instance, start);
    ``counted(window)`` gives the sorted ids that window counted before (None: none). Returns the mask
    of the rows to count (of each query, its first copy in row order) and, per window present, the
    sorted ids it has counted after them.
    """
    n = len(query_id)
    keep = np.ones(n, dtype=bool)
    if not n:
        return keep, {}
    code = _one_code(windows)
    # stable: copies keep their row order; one window key where the columns fit one int64 (a sort key fewer)
    order = np.lexsort((query_id, code) if code is not None else (query_id, *reversed(windows)))
    keys = [column[order] for column in windows]
    q = query_id[order]
    head = np.zeros(n, dtype=bool)
    head[0] = True
    for column in ([code[order]] if code is not None else keys):
        head[1:] |= column[1:] != column[:-1]
    repeat = np.zeros(n, dtype=bool)
    repeat[1:] = ~head[1:] & (q[1:] == q[:-1])
    starts = np.flatnonzero(head)
    bounds = np.append(starts, n).tolist()
    labels = list(zip(*(column[starts].tolist() for column in keys), strict=True))
    after: dict[tuple[int, ...], np.ndarray] = {}
    for label, lo, hi in zip(labels, bounds[:-1], bounds[1:], strict=True):
        ids = q[lo:hi]
        before = counted(label)
        if before is not None and len(before):
            at = np.searchsorted(before, ids)
            repeat[lo:hi] |= before[np.minimum(at, len(before) - 1)] == ids
            new = ids[~repeat[lo:hi]]
            after[label] = np.insert(before, np.searchsorted(before, new), new) if len(new) else before
        else:
            after[label] = ids[~repeat[lo:hi]]
    keep[order] = ~repeat
    return keep, after


def _one_code(columns: tuple[np.ndarray, ...]) -> np.ndarray | None:
    """The columns as one int64 that orders like them (mixed radix over each column's range), or None
    when their ranges do not fit."""
    code = np.zeros(len(columns[0]), dtype=np.int64)
    span = 1
    for column in columns:
        low, high = int(column.min()), int(column.max())
        width = high - low + 1
        if span * width >= 1 << 62:
            return None
        code = code * width + (column - low)
        span *= width
    return code


#: Prefix of the compact form of a window's counted ids (text, so that one column type fits SQLite and PostgreSQL).
_PACKED_IDS: Final = "z:"


def _ids_text(ids: np.ndarray | None) -> str | None:
    """A window's sorted ids as text: the gaps between them, deflated and base64 (~1-2 bytes an id, where a
    JSON list took ~13 and made the state 10x the size of ``window_stats`` on the demo log)."""
    if ids is None:
        return None
    gaps = np.diff(ids.astype(np.int64, copy=False), prepend=np.int64(0)).astype("<i8", copy=False)
    return _PACKED_IDS + base64.b64encode(zlib.compress(gaps.tobytes(), 1)).decode()


def _ids_of(text: str | None) -> np.ndarray | None:
    if text is None:
        return None
    if text.startswith(_PACKED_IDS):
        gaps = np.frombuffer(zlib.decompress(base64.b64decode(text[len(_PACKED_IDS):])), dtype="<i8")
        return np.cumsum(gaps, dtype=np.int64)
    return np.asarray(orjson.loads(text), dtype=np.int64)  # a list, as the first release of the ids wrote them


def _recent_json(recent: list[int]) -> str:
    return orjson.dumps(recent).decode()


def _recent_of(text: str | None, k: int) -> list[int]:
    """Stored floors (None: a state written before the clock kept them), the last ``k - 1``."""
    if text is None or k <= 1:
        return []
    return [int(t) for t in orjson.loads(text)][-(k - 1):]


class StaleStateError(RuntimeError):
    """Another process wrote a partition's state after this process last loaded or wrote it."""


@dataclass
class PartitionState:
    """The window state of one topic partition (see the module docstring)."""

    topic: str
    partition: int
    next_offset: int = 0
    stored_next: int | None = None  # next_offset as SQLite holds it (None: no row yet)
    watermark_ms: int | None = None  # the window clock (None: no k messages yet)
    recent: list[int] = field(default_factory=list)  # floors of the last k - 1 messages
    ended_ms: int | None = None  # the newest end-of-log marker's time (ms) the partition delivered
    topic_id: str | None = None  # Kafka's id of the topic the offsets belong to (None: unknown)
    key_time: dict[int, int] = field(default_factory=dict)
    key_recent: dict[int, list[int]] = field(default_factory=dict)
    open: dict[WindowKey, dict[str, Any]] = field(default_factory=dict)
    counted: dict[WindowKey, np.ndarray] = field(default_factory=dict)  # sorted query ids an open window counted
    # changed since the last flush:
    dirty: set[WindowKey] = field(default_factory=set)
    #: closed since the last flush: each window's partial and counted ids (once, however often it closed)
    closed: dict[WindowKey, tuple[dict[str, Any], np.ndarray | None]] = field(default_factory=dict)
    late: dict[tuple[int, int, int], int] = field(default_factory=dict)  # (offset, instance, start) -> rows
    key_dirty: set[int] = field(default_factory=set)
    claims: set[int] = field(default_factory=set)  # instances this partition counts from now, not yet stored
    changed: bool = False


@dataclass(frozen=True)
class Prepared:
    """The effect of one batch of one partition's rows, computed by :meth:`WindowState.prepare`."""

    state: PartitionState
    partials: list[dict[str, Any]]
    late: dict[tuple[int, int, int], int]  # (offset, instance, window start) -> late rows
    key_time: dict[int, int]
    key_recent: dict[int, list[int]]
    watermark: int | None
    recent: list[int]
    rows: int
    counted: dict[WindowKey, np.ndarray] = field(default_factory=dict)  # the windows' counted ids after the batch
    repeats: int = 0  # rows not counted: their query was counted before in their window
    #: closed windows the batch's rows open again: (stored partial or None for a window never counted, its ids)
    reopened: dict[WindowKey, tuple[dict[str, Any] | None, np.ndarray | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class FlushResult:
    """Rows one :meth:`WindowState.flush` wrote."""

    final_rows: int = 0
    provisional_rows: int = 0
    late_rows: int = 0


#: Instance ids below this are mapped to their partition through a table (no sort); larger ones through np.unique.
_OWNER_TABLE_MAX: Final = 1 << 20


def _instance_owner(instance: np.ndarray, row_state: np.ndarray) -> dict[int, int] | None:
    """Each instance's partition (index into the states) when every instance came from one; None if some from two.

    Called per batch on every row: small non-negative ids (the usual) go through a lookup table in two
    linear passes; the general case sorts (``np.unique``), several times slower per row.
    """
    if not len(instance):
        return {}
    low, high = int(instance.min()), int(instance.max())
    if low >= 0 and high < _OWNER_TABLE_MAX:
        table = np.full(high + 1, -1, dtype=np.int64)
        table[instance] = row_state  # one of each instance's partitions (the last row's)
        if not (table[instance] == row_state).all():
            return None
        present = np.flatnonzero(table >= 0)
        return dict(zip(present.tolist(), table[present].tolist(), strict=True))
    pairs = np.unique(np.stack([instance, row_state]), axis=1)
    owner = dict(zip(pairs[0].tolist(), pairs[1].tolist(), strict=True))
    return owner if len(owner) == pairs.shape[1] else None


def _int64(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A null-free int64 or timestamp column as a numpy int64 view (no copy for one chunk)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    return np.frombuffer(array.buffers()[1], dtype=np.int64, count=len(array), offset=array.offset * 8)


class WindowState:
    """Open windows, event time and consumed offsets per partition; flushed to SQLite atomically.

    Parameters
    ----------
    store : WindowStatsStore
        Opened by :meth:`open`.
    group : str
        Consumer group: the state is the group's, like its Kafka offsets (another group re-reads
        everything from its own, empty, state).
    window_ms, grace_ms : int
        Window length and the event time a window stays open after its end.
    closing_strategy : {"partition", "key"}
        Whose event time closes windows: the partition's or the instance's.
    topic_id : callable, optional
        Kafka's id of a topic (tells a topic created again under the same name).
    clock_messages : int
        ``k`` of the window clock: the consecutive messages that must all have reached a time before
        windows close by it (``Settings.window_clock_messages``).
    retention_ms : int, optional
        A row first sent after its window closed is counted in it (:meth:`_reopen`) unless the window
        starts more than this before the newest window (the app's ``retention_days``: archived, or about
        to be); None: no limit.
    """

    def __init__(self, store: WindowStatsStore, group: str, *, window_ms: int, grace_ms: int,
                 closing_strategy: Literal["partition", "key"],
                 topic_id: Callable[[str], str | None] | None = None,
                 clock_messages: int = DEFAULT_CLOCK_MESSAGES, retention_ms: int | None = None) -> None:
        if isinstance(clock_messages, bool) or not isinstance(clock_messages, int) or clock_messages < 1:
            msg = f"clock_messages must be an integer >= 1. Got {clock_messages!r} instead."
            raise ValueError(msg)
        self.k = clock_messages
        self.retention_ms = retention_ms
        self.store = store
        self.topic_id = topic_id
        self._topic_ids: dict[str, str | None] = {}
        self.group = group
        self.window_ms = int(window_ms)
        self.grace_ms = int(grace_ms)
        self.by_key = closing_strategy == "key"
        self.partitions: dict[tuple[str, int], PartitionState] = {}
        #: topic -> instance_id -> the partition its windows are counted from (stored, or claimed in memory)
        self.owners: dict[str, dict[int, int]] = {}
        self.lock = threading.RLock()  # Quix flushes from a worker thread on a revoke

    # --- lifecycle ----------------------------------------------------------------------------------
    def open(self) -> None:
        """Open the store, create the state tables and add the columns a state stored before lacks."""
        self.store.open()
        with self.store.transaction() as db:
            for statement in _CREATE:
                db.execute(statement)
            for table, columns in _ADDED.items():
                present = self.store.table_columns(table)
                for name, kind in columns:
                    if name not in present:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
                        logger.info("window state migrated: added %s.%s", table, name)

    def reset(self) -> None:
        """Forget everything in memory (reloaded from SQLite, partition by partition, when next seen)."""
        with self.lock:
            self.partitions.clear()
            self.owners.clear()

    def open_window_count(self) -> int:
        """Open windows held in memory (all partitions)."""
        return sum(len(p.open) for p in self.partitions.values())

    # --- reading ------------------------------------------------------------------------------------
    def partition(self, topic: str, partition: int) -> PartitionState:
        """The state of ``topic[partition]``, loaded from SQLite the first time it is asked for."""
        state = self.partitions.get((topic, partition))
        if state is None:
            state = self._load(topic, partition)
            self.partitions[(topic, partition)] = state
        return state

    def _load(self, topic: str, partition: int) -> PartitionState:
        if topic not in self._topic_ids:  # asked once per topic and process (outside the transaction)
            self._topic_ids[topic] = self.topic_id(topic) if self.topic_id is not None else None
        with self.store.transaction() as db:  # one consistent snapshot of the partition's rows
            return self._read(db, topic, partition)

    def _read(self, db: Any, topic: str, partition: int) -> PartitionState:
        args = (self.group, topic, partition)
        state = PartitionState(topic, partition)
        row = db.execute(f"SELECT next_offset, watermark_ms, topic_id, recent_ms, ended_ms FROM analytics_progress "
                         f"{_WHERE}", args).fetchone()
        state.topic_id = self._topic_ids.get(topic)
        if row is not None:
            state.next_offset = state.stored_next = int(row[0])
            state.watermark_ms = None if row[1] is None else int(row[1])
            state.recent = _recent_of(row[3], self.k)
            state.ended_ms = None if row[4] is None else int(row[4])
            if row[2] is not None and state.topic_id is not None and row[2] != state.topic_id:
                # The topic was deleted and created again: its offsets start over, the stored ones
                # belong to the old topic (skipping below them would drop the new topic's messages).
                logger.warning("topic %s was created again (id %s, stored offsets were of %s): reading partition "
                               "%d from its start", topic, state.topic_id, row[2], partition)
                state.next_offset = 0
                state.ended_ms = None  # the new topic's log has not ended yet
            elif state.topic_id is None:
                state.topic_id = row[2]
        owners = self.owners.setdefault(topic, {})
        for instance, owner in db.execute("SELECT instance_id, partition FROM analytics_instance_owner "
                                          "WHERE consumer_group = ? AND topic = ?", (self.group, topic)):
            owners.setdefault(int(instance), int(owner))  # a claim in memory that conflicts fails at the flush
        for instance, latest, recent in db.execute(
                f"SELECT instance_id, latest_ms, recent_ms FROM analytics_key_time {_WHERE}", args):
            state.key_time[int(instance)] = int(latest)
            state.key_recent[int(instance)] = _recent_of(recent, self.k)
        dropped = 0
        for instance, start, text, ids in db.execute(
                f"SELECT instance_id, window_start_ms, partial, query_ids FROM analytics_open_windows {_WHERE}", args):
            partial = orjson.loads(text)
            if int(partial.get("window_ms", -1)) != self.window_ms:
                dropped += 1  # the app was restarted with another window length: those windows cannot merge
                continue
            state.open[(int(instance), int(start))] = partial
            counted = _ids_of(ids)
            if counted is not None:
                state.counted[(int(instance), int(start))] = counted
        if dropped:
            logger.warning("dropped %d open windows of %s[%d] stored with another window_ms (now %d)",
                           dropped, topic, partition, self.window_ms)
        if row is not None:
            logger.info("window state loaded topic=%s partition=%d next_offset=%d open_windows=%d",
                        topic, partition, state.next_offset, len(state.open))
        return state

    # --- counting -----------------------------------------------------------------------------------
    def foreign_partition(self, states: list[PartitionState], instances: np.ndarray,
                          state_of: np.ndarray) -> dict[int, int]:
        """``{message index: owning partition}`` of the messages whose instance is counted from another
        partition; an instance seen for the first time is claimed by the partition of its first message.

        One partition counts each instance: the window rows are per (instance, window), so the counts of
        two partitions' open windows of one instance replaced each other (a valid event a producer with
        another partitioner sent elsewhere wiped a window's count). ``instances`` and ``state_of`` are per
        message (a message's rows share its key's instance). Claims are stored at the next flush, which
        fails as stale when another process claimed the instance first.
        """
        if not len(instances):
            return {}
        _, first = np.unique(np.stack([instances, state_of]), axis=1, return_index=True)
        foreign: dict[tuple[int, int], int] = {}
        for index in sorted(first.tolist()):  # in message order: the first message's partition claims
            instance, j = int(instances[index]), int(state_of[index])
            state = states[j]
            owners = self.owners.setdefault(state.topic, {})
            owner = owners.get(instance)
            if owner is None:
                owners[instance] = state.partition
                state.claims.add(instance)
            elif owner != state.partition:
                foreign[(instance, j)] = owner
        if not foreign:
            return {}
        return {i: foreign[(inst, j)] for i, (inst, j) in enumerate(zip(instances.tolist(), state_of.tolist(),
                                                                          strict=True)) if (inst, j) in foreign}

    def prepare(self, states: list[PartitionState], batch: pa.RecordBatch, row_state: np.ndarray,
                offsets: np.ndarray, *, resent: np.ndarray | None = None) -> list[Prepared]:
        """What counting decoded rows would do, per partition; changes nothing (:meth:`apply` does, so a
        failure here leaves the state as it was).

        ``batch`` holds the rows in message order; row ``i`` came from the message at ``offsets[i]`` of
        partition ``states[row_state[i]]``. ``resent`` marks rows sent before (counted then, or late
        then): they are late whether or not their window is still open.
        """
        n = batch.num_rows
        w, grace = self.window_ms, self.grace_ms
        if n == 0:
            return []
        arrival = np.floor_divide(_int64(batch.column("arrival_timestamp")), 1000)
        instance = _int64(batch.column("instance_id"))
        start = np.floor_divide(arrival, w) * w
        late = np.zeros(n, dtype=bool)
        single = len(states) == 1
        rows_of = [None] if single else [np.flatnonzero(row_state == j) for j in range(len(states))]
        key_times: list[dict[int, int]] = []
        key_recents: list[dict[int, list[int]]] = []
        watermarks: list[int | None] = []
        recents: list[list[int]] = []
        for j, state in enumerate(states):
            rows = rows_of[j]
            arr = arrival if rows is None else arrival[rows]
            key_time, key_recent = dict(state.key_time), dict(state.key_recent)
            key_times.append(key_time)
            key_recents.append(key_recent)
            if not len(arr):
                watermarks.append(state.watermark_ms)
                recents.append(state.recent)
                continue
            offs = offsets if rows is None else offsets[rows]
            st = start if rows is None else start[rows]
            # A row is late when the clock after its message had closed its window; the clock is at most
            # the message's earliest row, so only the clock before the message can have closed it.
            if self.by_key:
                inst = instance if rows is None else instance[rows]
                part_late = np.zeros(len(arr), dtype=bool)
                for i in np.unique(inst).tolist():
                    sel = np.flatnonzero(inst == i)
                    floors, message_of = _message_floors(arr[sel], offs[sel])
                    clocks, key_recent[i] = message_clock(key_time.get(i, NO_CLOCK), key_recent.get(i, []),
                                                          floors, self.k)
                    part_late[sel] = st[sel] + w <= clocks[message_of] - grace
                    key_time[i] = int(clocks[-1])
                top = int(arr.max())  # the partition's latest event time: kept, closes nothing
                watermarks.append(top if state.watermark_ms is None else max(state.watermark_ms, top))
                recents.append(state.recent)
            else:
                floors, message_of = _message_floors(arr, offs)
                prior = NO_CLOCK if state.watermark_ms is None else state.watermark_ms
                clocks, recent = message_clock(prior, state.recent, floors, self.k)
                part_late = st + w <= clocks[message_of] - grace
                watermarks.append(None if clocks[-1] == NO_CLOCK else int(clocks[-1]))
                recents.append(recent)
            if rows is None:
                late = part_late
            else:
                late[rows] = part_late
        reopened_of: list[dict[WindowKey, tuple[dict[str, Any] | None, np.ndarray | None]]] = [{} for _ in states]
        query_id = _int64(batch.column("query_id"))
        maybe = late if resent is None else late | resent
        if maybe.any():
            # A row the clock made late, or one marked re-sent, still counts in its window when that window
            # can be opened again and never counted its query (a seek forward skipped it, or another
            # producer's header says re-sent): the window's kept ids tell a copy from a new row.
            late = maybe & ~self._reopen(states, row_state, instance, start, maybe, reopened_of)
            if resent is not None:
                late |= self._ids_unknown(states, row_state, instance, start, resent & ~late, reopened_of)
        kept = np.flatnonzero(~late)
        kept_state, kept_instance, kept_start = row_state[kept], instance[kept], start[kept]

        # a query its window counted before (or an earlier row counts now) is a second copy: not counted again
        def counted_before(window: tuple[int, ...]) -> np.ndarray | None:
            j, key = window[0], (window[1], window[2])
            ids = states[j].counted.get(key)
            if ids is None and key in reopened_of[j]:
                ids = reopened_of[j][key][1]
            return ids

        first, ids_after = first_copies((kept_state, kept_instance, kept_start), query_id[kept], counted_before)
        repeats_of = [0] * len(states)
        if not first.all():
            copies = kept[~first]
            if resent is not None:  # a re-sent copy was counted when first sent: late, as the replay said
                late[copies[resent[copies]]] = True
                copies = copies[~resent[copies]]
            for j in row_state[copies].tolist():
                repeats_of[j] += 1
            kept_state, kept_instance = kept_state[first], kept_instance[first]
        late_counts: list[dict[tuple[int, int, int], int]] = [{} for _ in states]
        if late.any():
            where = np.flatnonzero(late)
            for j, key in zip((row_state[where] if not single else np.zeros(len(where), np.int64)).tolist(),
                              zip(offsets[where].tolist(), instance[where].tolist(), start[where].tolist(),
                                  strict=True), strict=True):
                late_counts[j][key] = late_counts[j].get(key, 0) + 1
        counted = batch if len(kept) == n and first.all() else batch.take(pa.array(kept[first]))
        counted_of: list[dict[WindowKey, np.ndarray]] = [{} for _ in states]
        for (j, inst, st), ids in ids_after.items():
            counted_of[j][(inst, st)] = ids
        partials_of: list[list[dict[str, Any]]] = [[] for _ in states]
        if single:
            partials_of[0] = partial_aggregates(counted, w)
        else:
            # Partials group by instance; an instance lives in one partition (the key is the instance id),
            # so route them by instance, unless some instance came from two partitions in this batch.
            owner = _instance_owner(kept_instance, kept_state)
            if owner is not None:
                for p in partial_aggregates(counted, w):
                    partials_of[owner[int(p["instance_id"])]].append(p)
            else:
                for j in range(len(states)):
                    mask = kept_state == j
                    if mask.any():
                        partials_of[j] = partial_aggregates(counted.filter(pa.array(mask)), w)
        counts = np.bincount(row_state, minlength=len(states)) if not single else np.array([n])
        return [Prepared(state, partials_of[j], late_counts[j], key_times[j], key_recents[j], watermarks[j],
                         recents[j], int(counts[j]), counted_of[j], repeats_of[j], reopened_of[j])
                for j, state in enumerate(states)]

    def _reopen(self, states: list[PartitionState], row_state: np.ndarray, instance: np.ndarray, start: np.ndarray,
                rows: np.ndarray, reopened_of: list[dict[WindowKey, tuple[dict[str, Any] | None, np.ndarray | None]]],
                ) -> np.ndarray:
        """Of the ``rows`` (a mask: rows the clock made late, or marked re-sent), those whose window can
        count them (:meth:`prepare` then keeps the ones it never counted).

        A row sent for the first time after its window closed was skipped by a seek forward (and sent by
        a reset or a seek back), or came out of order from another producer: counting it as late lost it
        for good (a seek forward and a reset left 22 k of a log's 60 k queries out of ``window_stats``).
        Its window is opened again: from its stored partial and counted ids
        (``analytics_closed_windows``, written when it closed), as a new window when it was never counted
        (no row in ``window_stats``), or as it is when still held in memory; it closes again at once, and
        its row is written anew. A window counted but closed before its partial was kept, or older than
        ``retention_ms`` before the newest window (archived, or about to be), keeps its row: those rows are
        late. Fills ``reopened_of``; returns the mask of the rows to count.
        """
        where = np.flatnonzero(rows)
        js = row_state[where].tolist() if len(states) > 1 else [0] * len(where)
        keys = list(zip(js, instance[where].tolist(), start[where].tolist(), strict=True))
        counts: set[tuple[int, int, int]] = set()
        unknown = []
        for j, inst, st in dict.fromkeys(keys):
            state = states[j]
            if (inst, st) in state.open:  # closed by the clock of this batch, not yet at apply
                counts.add((j, inst, st))
            elif (inst, st) in state.closed:  # closed since the last flush, not written yet
                reopened_of[j][(inst, st)] = state.closed[(inst, st)]
                counts.add((j, inst, st))
            else:
                unknown.append((j, inst, st))
        if unknown:
            newest_start = self.store.newest_window_start()
            newest = None if newest_start is None else int(newest_start.timestamp() * 1000)
            with self.store.transaction() as db:
                for j, inst, st in unknown:
                    state = states[j]
                    row = db.execute(_CLOSED, (self.group, state.topic, state.partition, inst, st)).fetchone()
                    if row is not None:
                        partial = orjson.loads(row[0])
                        if int(partial.get("window_ms", -1)) == self.window_ms:
                            reopened_of[j][(inst, st)] = (partial, _ids_of(row[1]))
                            counts.add((j, inst, st))
                        continue
                    recent = self.retention_ms is None or newest is None or st >= newest - self.retention_ms
                    if recent and db.execute(_STORED, (inst, st)).fetchone() is None:
                        reopened_of[j][(inst, st)] = (None, None)
                        counts.add((j, inst, st))
        mask = np.zeros(len(rows), dtype=bool)
        mask[where[np.fromiter((k in counts for k in keys), dtype=bool, count=len(keys))]] = True
        return mask

    @staticmethod
    def _ids_unknown(states: list[PartitionState], row_state: np.ndarray, instance: np.ndarray, start: np.ndarray,
                     rows: np.ndarray,
                     reopened_of: list[dict[WindowKey, tuple[dict[str, Any] | None, np.ndarray | None]]],
                     ) -> np.ndarray:
        """Of the ``rows`` (a mask), those whose window counted rows but kept no ids (a state an earlier
        release stored): a copy cannot be told from a new row there."""
        where = np.flatnonzero(rows)
        unknown = np.zeros(len(rows), dtype=bool)
        if not len(where):
            return unknown
        js = row_state[where].tolist() if len(states) > 1 else [0] * len(where)
        keys = list(zip(js, instance[where].tolist(), start[where].tolist(), strict=True))
        blind = set()
        for j, inst, st in dict.fromkeys(keys):
            key = (inst, st)
            if key in states[j].open:
                known = key in states[j].counted
            else:
                partial, ids = reopened_of[j].get(key, (None, None))
                known = partial is None or ids is not None  # (None, None): a window never counted
            if not known:
                blind.add((j, inst, st))
        if blind:
            unknown[where[np.fromiter((k in blind for k in keys), dtype=bool, count=len(keys))]] = True
        return unknown

    def apply(self, prepared: Prepared) -> int:
        """Merge prepared partials into the open windows, record late rows, move event time, close
        the windows whose time has come; returns how many closed."""
        state = prepared.state
        if not prepared.rows:
            return 0
        for p in prepared.partials:
            k = (int(p["instance_id"]), int(p["window_start_ms"]))
            current = state.open.get(k)
            if current is None and k in prepared.reopened:  # a closed window opened again by a row never sent before
                current = prepared.reopened[k][0]
            state.open[k] = p if current is None else merge(current, p)
            state.dirty.add(k)
        state.counted.update((k, ids) for k, ids in prepared.counted.items() if k in state.open)
        for k, c in prepared.late.items():
            state.late[k] = state.late.get(k, 0) + c
        if self.by_key:
            recent = prepared.key_recent
            state.key_dirty.update(i for i, t in prepared.key_time.items()
                                   if state.key_time.get(i) != t or state.key_recent.get(i) != recent.get(i))
            state.key_time = prepared.key_time
            state.key_recent = prepared.key_recent
        state.watermark_ms = prepared.watermark
        state.recent = prepared.recent
        state.changed = True
        return self._close(state)

    def end_of_log(self, state: PartitionState, end_ms: int) -> int:
        """The partition delivered an end-of-log marker (the log's rows up to ``end_ms`` are all in): close
        every open window that starts at or before ``end_ms``; returns how many closed.

        Nothing later would close them: each instance's last windows stayed open, so the collective step
        never judged the last quarter of an hour of a replayed log. The clock (the partition's, or each
        instance's) moves to close the latest such window; a row that comes for one of them later opens it
        again if it was never sent before (:meth:`_reopen`), and is late if re-sent. Windows after
        ``end_ms`` (rows dated ahead of the log) stay open. The marker has its place in the partition's
        message order, so this is the same at any replay speed and batch boundaries.
        """
        w, grace = self.window_ms, self.grace_ms
        ending = [k for k in state.open if k[1] <= end_ms]
        state.ended_ms = end_ms if state.ended_ms is None else max(state.ended_ms, end_ms)
        state.changed = True
        if not ending:
            return 0
        if self.by_key:
            latest: dict[int, int] = {}
            for instance, start in ending:
                latest[instance] = max(latest.get(instance, start), start)
            for instance, start in latest.items():
                if state.key_time.get(instance, NO_CLOCK) < start + w + grace:
                    state.key_time[instance] = start + w + grace
                    state.key_dirty.add(instance)
        else:
            clock = max(start for _, start in ending) + w + grace
            if state.watermark_ms is None or state.watermark_ms < clock:
                state.watermark_ms = clock
        return self._close(state)

    @staticmethod
    def advance(state: PartitionState, offset: int) -> None:
        """Mark every message of ``state``'s partition up to ``offset`` as counted."""
        if offset >= state.next_offset:
            state.next_offset = offset + 1
            state.changed = True

    def _close(self, state: PartitionState) -> int:
        w, grace = self.window_ms, self.grace_ms
        if self.by_key:
            done = [k for k in state.open if k[0] in state.key_time and k[1] + w <= state.key_time[k[0]] - grace]
        else:
            limit = (state.watermark_ms or 0) - grace
            done = [k for k in state.open if k[1] + w <= limit] if state.watermark_ms is not None else []
        for k in sorted(done):
            state.closed[k] = (state.open.pop(k), state.counted.pop(k, None))
            state.dirty.discard(k)
        return len(done)

    # --- checkpoint ---------------------------------------------------------------------------------
    def flush(self) -> FlushResult:
        """Write every change since the last flush in one SQLite transaction (see the module docstring).

        Raises ``SinkBackpressureError`` (after dropping the in-memory state) when another process
        wrote a partition in between; any other failure also drops the in-memory state, then raises.
        """
        with self.lock:
            touched = [p for p in self.partitions.values() if p.changed]
            if not touched:
                return FlushResult()
            try:
                result = self._write(touched)
            except StaleStateError as exc:
                logger.warning("window state is stale (%s); dropping it and reading the checkpoint again", exc)
                self.partitions.clear()
                self.owners.clear()
                raise SinkBackpressureError(retry_after=0.0) from exc
            except BaseException:
                self.partitions.clear()
                self.owners.clear()
                raise
            for p in touched:
                p.claims.clear()
                p.stored_next = p.next_offset
                p.dirty.clear()
                p.closed.clear()
                p.late.clear()
                p.key_dirty.clear()
                p.changed = False
            return result

    def _write(self, touched: list[PartitionState]) -> FlushResult:
        store = self.store
        finals = provisional = lates = 0
        with store.transaction() as db:
            for p in touched:
                row = db.execute(f"SELECT next_offset FROM analytics_progress {_WHERE}",
                                 (self.group, p.topic, p.partition)).fetchone()
                stored = None if row is None else int(row[0])
                if stored != p.stored_next:
                    msg = (f"{p.topic}[{p.partition}] next_offset is {stored} in SQLite, this process expected "
                           f"{p.stored_next}")
                    raise StaleStateError(msg)
            for p in touched:
                for instance in sorted(p.claims):
                    db.execute(_CLAIM, (self.group, p.topic, instance, p.partition))
                    owner = int(db.execute(_OWNER, (self.group, p.topic, instance)).fetchone()[0])
                    if owner != p.partition:
                        msg = f"instance {instance} of {p.topic} is counted from partition {owner}, not {p.partition}"
                        raise StaleStateError(msg)
            for p in touched:
                g = (self.group, p.topic, p.partition)
                rows = [finalize(c) for c, _ in p.closed.values()]
                dirty = sorted(p.dirty)
                rows.extend(finalize(p.open[k]) for k in dirty)
                store.upsert(rows)
                finals += len(p.closed)
                provisional += len(dirty)
                db.executemany(_CLOSE, [(*g, *k) for k in p.closed])
                # kept, so that a row sent for the first time after the window closed still counts in it
                db.executemany(_KEEP_CLOSED, [(*g, *k, orjson.dumps(c).decode(), _ids_text(ids))
                                              for k, (c, ids) in p.closed.items()])
                db.executemany(_OPEN, [(*g, k[0], k[1], orjson.dumps(p.open[k]).decode(), _ids_text(p.counted.get(k)))
                                       for k in dirty])
                if p.late:  # these messages are below the offset stored next: never counted again
                    store.record_late_messages(p.topic, p.partition, p.late)
                    store.merge_late_sources(p.topic, p.partition, p.next_offset)
                lates += len(p.late)
                db.executemany(_KEY_TIME, [(*g, inst, p.key_time[inst], _recent_json(p.key_recent.get(inst, [])))
                                           for inst in sorted(p.key_dirty)])
                db.execute(_PROGRESS, (*g, p.next_offset, p.watermark_ms, p.topic_id, _recent_json(p.recent),
                                       p.ended_ms))
        return FlushResult(finals, provisional, lates)
