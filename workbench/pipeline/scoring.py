"""The ML scoring app: ``redshift.query_events`` -> scored Arrow shards + ``redshift.anomalies``.

Pipeline (one Quix app in its own process: ``workbench app scoring``)::

    bytes message --(no per-message work)--> ScoringSink.add (buffer per partition)
    checkpoint (every batch_seconds, or as soon as a partition buffers batch_rows rows):
        ScoringSink.write(partition batch):
            decode all buffered messages at once to Arrow (JSON lines vectorised; packed Arrow
            messages one IPC read each) -> malformed messages to the dead-letter topic
            -> Scorer.score(batch) (one vectorised ONNX call per partition batch)
            -> write_shard per event day (name = partition + first offset of those rows)
            -> publish the anomalies, wait for the broker's acknowledgement
        then Quix commits the offsets of the checkpoint.

Delivery guarantee (at-least-once, made effectively exactly-once by idempotence)
    Quix commits a checkpoint's offsets only after every sink's ``flush()`` returned (and its own
    producer flushed). :class:`ScoringSink` does all durable work inside ``write()``: the shard
    file is fsync-ed and atomically renamed, and the anomaly producer is flushed with every
    delivery acknowledged (a failed delivery raises, which aborts the checkpoint: no offset is
    committed). So an offset is committed only after its event is in a shard and its anomaly
    is on the broker. A crash before the commit makes the app re-read from the last committed
    offset: the shards are rewritten under the same deterministic names (same partition, same
    first offset of the day's rows in the batch, see :mod:`workbench.store.shards`), so they
    REPLACE the earlier files and every event is stored exactly once; the anomalies are
    published again, which is harmless because the anomaly sink is idempotent on
    ``(instance_id, query_id, model_version)``.

No query goes unscored
    Until the first model exists the Scorer returns null score columns; those rows are stored
    with ``model_version = null`` and their event days are recorded (durably, before the commit)
    in ``<state_dir>/scoring/unscored_days.json``. As soon as the Scorer reports a version, a
    helper thread runs :func:`~workbench.store.shards.rescore_unscored` over those days with a
    scorer pinned to that version, publishing each rescored shard's anomalies (acknowledged)
    *before* the shard is rewritten as scored, so a crash in between only re-publishes. The
    consuming thread never waits for it (rescoring shares the CPU, nothing else).

Training
    Event time is the maximum ``arrival_timestamp`` seen across all partitions; it only moves
    forward, so interleaved partitions or late events cannot flip the day back. Once event time
    is ``training_grace_s`` past midnight (default 10 minutes of event time, to let the other
    partitions deliver the day's last events), the finished day is handed to
    :meth:`TrainingSupervisor.maybe_schedule` - *after* the sink flushed, so the day's shards
    are on disk. Training runs as a subprocess on the shards and never blocks scoring; the
    Scorer hot-swaps the new version at its next batch. :meth:`TrainingSupervisor.poll` runs
    periodically (reaps, retries failed or killed runs with backoff).

Batching
    Rows are buffered per partition by Quix's ``BatchingSink`` and scored per partition batch;
    a flush happens every ``batch_seconds`` (the checkpoint interval) or as soon as one
    partition holds ``batch_rows`` rows (a forced checkpoint), never one row per inference call.
    Each flush writes one shard per (partition, event day): at very low event rates many small
    shards result; raise ``batch_seconds`` there (it is also the anomaly latency).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import Producer
from quixstreams import Application
from quixstreams.models import HeadersTuples
from quixstreams.sinks import BatchingSink, SinkBackpressureError, SinkBatch

from workbench._fs import write_atomic
from workbench.config import Settings
from workbench.data import codec
from workbench.data.schema import REDSET_SCHEMA
from workbench.pipeline._app import WorkbenchApp, app_state_dir, build_application, register_periodic
from workbench.pipeline._deadletter import DeadLetters
from workbench.pipeline._decode import event_topic
from workbench.pipeline._status import AppResult, AppStatus
from workbench.pipeline.contracts import anomaly_headers, anomaly_key, encode_anomaly
from workbench.pipeline.exceptions import PipelineConfigError, PipelineError

__all__ = [
    "APP_NAME",
    "AnomalyPublisher",
    "ScoringApp",
    "ScoringSink",
    "anomaly_messages",
    "run_scoring",
]

logger = logging.getLogger(__name__)

APP_NAME: Final = "scoring"
_DAY_US: Final = 86_400_000_000
_EVENT_SCHEMA: Final = REDSET_SCHEMA.remove_metadata()
UNSCORED_FILE: Final = "unscored_days.json"
#: Columns copied into an anomaly's ``features`` object (the model inputs and observed signals).
FEATURE_COLUMNS: Final = (
    "feature_fingerprint", "num_permanent_tables_accessed", "num_external_tables_accessed",
    "num_system_tables_accessed", "num_joins", "num_scans", "num_aggregations", "read_table_ids",
    "write_table_ids", "was_cached", "mbytes_scanned", "mbytes_spilled", "exec_ratio",
    "kafka_partition", "kafka_offset",
)
_TOP_LEVEL: Final = (
    "instance_id", "query_id", "model_version", "arrival_timestamp", "user_id", "database_id", "query_type",
    "cluster_size", "execution_duration_ms", "queue_duration_ms", "compile_duration_ms", "pred_mean_ms",
    "pred_q_ms", "expected_ms", "score", "reason",
)


# --- anomalies ------------------------------------------------------------------------------------
def anomaly_messages(scored: pa.Table | pa.RecordBatch, thresholds: Callable[[str], float | None] | None = None,
                     ) -> list[dict[str, Any]]:
    """The ``redshift.anomalies`` messages (:mod:`.contracts`) of the rows flagged ``is_anomaly``.

    Parameters
    ----------
    scored : Table or RecordBatch
        Scorer output (Redset columns plus score columns; ``kafka_*`` columns optional).
    thresholds : callable, optional
        ``model_version -> detector threshold`` (goes into the message's ``threshold``).
    """
    table = pa.Table.from_batches([scored]) if isinstance(scored, pa.RecordBatch) else scored
    flags = table.column("is_anomaly")
    if flags.null_count == len(flags) or not pc.any(flags).as_py():
        return []
    rows = table.filter(pc.fill_null(flags, False))
    names = set(rows.column_names)
    top = [c for c in _TOP_LEVEL if c in names]
    feats = [c for c in FEATURE_COLUMNS if c in names]
    out = []
    for row in rows.select(top + feats).to_pylist():
        message = {c: row[c] for c in top}
        message["features"] = {c: row[c] for c in feats}
        if thresholds is not None:
            message["threshold"] = thresholds(message["model_version"])
        out.append(message)
    return out


class AnomalyPublisher:
    """Publishes anomaly messages and returns only once the broker acknowledged all of them.

    Parameters
    ----------
    settings : Settings
        Broker and the ``topic_anomalies`` name.
    extra_config : dict, optional
        librdkafka producer settings on top of idempotent delivery with ``acks=all``.
    flush_timeout : float
        Seconds to wait for acknowledgements before failing.
    """

    def __init__(self, settings: Settings, *, extra_config: dict[str, Any] | None = None,
                 flush_timeout: float = 30.0) -> None:
        self.settings = settings
        self.topic = settings.topic_anomalies
        self.extra_config = extra_config
        self.flush_timeout = flush_timeout
        self.published = 0
        self._producer: Producer | None = None
        self._errors: list[str] = []
        self._thresholds: dict[str, float | None] = {}

    def _open(self) -> Producer:
        if self._producer is None:
            self._producer = Producer({**self.settings.kafka_client_config(), "enable.idempotence": True,
                                       "acks": "all", "linger.ms": 5, "compression.type": "lz4",
                                       **(self.extra_config or {})})
        return self._producer

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))

    def threshold(self, version: str | None) -> float | None:
        """The detector threshold of ``version`` (from its ``model.json``; cached)."""
        if version is None:
            return None
        if version not in self._thresholds:
            from workbench.ml.registry import ModelRegistry

            try:
                meta = ModelRegistry(self.settings.models_dir).info(version)
                self._thresholds[version] = float(meta["detector"]["threshold"])
            except (OSError, KeyError, TypeError, ValueError):
                self._thresholds[version] = None
        return self._thresholds[version]

    def publish_scored(self, scored: pa.Table | pa.RecordBatch) -> int:
        """Publish the anomalies of a scored batch and wait for their acknowledgement."""
        return self.publish(anomaly_messages(scored, self.threshold))

    def publish(self, messages: list[dict[str, Any]]) -> int:
        """Produce ``messages`` (key = instance id) and flush; raise if any is not acknowledged.

        Raises
        ------
        PipelineError
            A message was rejected or not acknowledged within ``flush_timeout`` (the caller's
            checkpoint must then fail so that the offsets are not committed).
        """
        if not messages:
            return 0
        producer = self._open()
        headers = anomaly_headers()
        for message in messages:
            value, key = encode_anomaly(message), anomaly_key(message)
            while True:
                try:
                    producer.produce(self.topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)
        remaining = producer.flush(self.flush_timeout)
        if remaining or self._errors:
            errors, self._errors = self._errors[:5], []
            msg = (f"Publishing anomalies to {self.topic!r} failed: {remaining} message(s) unacknowledged after "
                   f"{self.flush_timeout}s, delivery errors {errors}. The checkpoint is aborted so the offsets are "
                   "not committed; check the broker and restart the app (events are re-read).")
            raise PipelineError(msg)
        self.published += len(messages)
        return len(messages)

    def close(self) -> None:
        """Flush what is still queued."""
        if self._producer is not None:
            self._producer.flush(self.flush_timeout)


# --- unscored days (durable) ----------------------------------------------------------------------
class UnscoredDays:
    """The event days that have shards with unscored rows, persisted atomically (JSON)."""

    def __init__(self, path: os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self.days: set[str] = set()
        with contextlib.suppress(FileNotFoundError), open(self.path, "rb") as fh:
            self.days = set(json.loads(fh.read()).get("days", []))

    def add(self, days: set[str]) -> None:
        """Record ``days`` (written to disk before returning when anything is new)."""
        with self._lock:
            if days <= self.days:
                return
            self.days |= days
            self._save()

    def remove(self, days: set[str]) -> None:
        """Forget ``days`` (they are fully scored now)."""
        with self._lock:
            self.days -= days
            self._save()

    def snapshot(self) -> set[str]:
        """The days now."""
        with self._lock:
            return set(self.days)

    def _save(self) -> None:
        write_atomic(Path(self.path), json.dumps({"days": sorted(self.days)}).encode())


class _PublishingScorer:
    """A scorer for :func:`rescore_unscored` that publishes each rescored chunk's anomalies first."""

    def __init__(self, scorer: Any, publisher: AnomalyPublisher, status: AppStatus) -> None:
        self.scorer = scorer
        self.publisher = publisher
        self.status = status

    def score(self, batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch:
        scored = self.scorer.score(batch)
        n = self.publisher.publish_scored(scored)  # acknowledged before the shard is rewritten
        self.status.add("rescore_anomalies", n)  # only this thread writes this (pre-created) counter
        return scored


# --- the sink -------------------------------------------------------------------------------------
class ScoringSink(BatchingSink):
    """Quix sink: per partition batch, decode -> score -> shards -> anomalies (see the module docstring).

    Parameters
    ----------
    settings : Settings
        Paths (shards, models) and topics.
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
                 status: AppStatus, unscored: UnscoredDays, *, batch_rows: int = 16_384) -> None:
        super().__init__()
        self.settings = settings
        self.scorer = scorer
        self.publisher = publisher
        self.dead_letters = dead_letters
        self.status = status
        self.unscored = unscored
        self.batch_rows = batch_rows
        self.buffered: dict[int, int] = {}
        self.size_due = False
        self.last_message_at = 0.0
        self.first_message_wall: float | None = None  # epoch s of the first message (throughput)
        self.last_batch_wall: float | None = None  # epoch s when the last batch was durable
        self.max_event_us: int | None = None
        # [repro hook 6: watermark] per partition: newest durable event time, and when it last delivered
        self.partition_max_us: dict[int, int] = {}
        self.partition_seen: dict[int, float] = {}
        self.first_event_us: int | None = None
        self.on_flushed: Callable[[], None] | None = None
        self.training_running: Callable[[], bool] = lambda: False
        self.hold_day: Callable[[pa.Table], str | None] | None = None  # [repro hook 1] set by the app
        self.timings = {"decode": 0.0, "score": 0.0, "shards": 0.0, "publish": 0.0}

    def add(self, value: Any, key: Any, timestamp: int, headers: HeadersTuples, topic: str, partition: int,
            offset: int) -> None:
        """Buffer one message (no decoding here) and note when the partition's batch is full."""
        super().add(value, key, timestamp, headers, topic, partition, offset)
        rows = 1
        if headers:
            text = codec.header(headers, "rows")
            if text and text.isdigit():
                rows = int(text)
        n = self.buffered.get(partition, 0) + rows
        self.buffered[partition] = n
        if n >= self.batch_rows:
            self.size_due = True
        self.last_message_at = time.monotonic()
        if self.first_message_wall is None:
            self.first_message_wall = time.time()

    @property
    def buffered_rows(self) -> int:
        """Rows waiting for the next flush."""
        return sum(self.buffered.values())

    def flush(self) -> None:
        """Write every partition's batch, then let the app schedule training (shards are on disk)."""
        try:
            super().flush()
        finally:
            self.buffered.clear()
            self.size_due = False
        if self.on_flushed is not None:
            self.on_flushed()

    def _decode(self, batch: SinkBatch) -> tuple[pa.Table, list[tuple[Any, str]]]:
        """All rows of the batch's messages as one table (+ ``kafka_*`` columns), and the malformed ones.

        JSON messages are decoded in one vectorised call; each packed Arrow message is one IPC
        read, and the tables are concatenated once (a message whose schema is not exactly the
        event schema takes :func:`codec.decode_values`' validating path instead).
        """
        items = list(batch)
        encodings = [codec.header(item.headers, "encoding") or codec.ENCODING_JSON for item in items]
        json_pos = [i for i, enc in enumerate(encodings) if enc == codec.ENCODING_JSON]
        other_pos = [i for i, enc in enumerate(encodings) if enc != codec.ENCODING_JSON]
        pieces: list[tuple[pa.Table | pa.RecordBatch, np.ndarray]] = []  # rows, their message positions
        errors: list[tuple[Any, str]] = []

        def careful(positions: list[int]) -> None:
            result = codec.decode_values([items[i].value for i in positions], [encodings[i] for i in positions])
            errors.extend((items[positions[pos]], reason) for pos, reason in result.errors)
            if result.batch.num_rows:
                index = np.asarray(positions, dtype=np.int64)[np.asarray(result.source_index, dtype=np.int64)]
                pieces.append((result.batch, index))

        if json_pos:
            careful(json_pos)
        slow: list[int] = []
        for i in other_pos:
            table = None
            if encodings[i] == codec.ENCODING_ARROW and items[i].value is not None:
                try:
                    table = pa.ipc.open_stream(items[i].value).read_all()
                except (pa.ArrowInvalid, OSError):
                    table = None
            if table is None or not table.schema.equals(_EVENT_SCHEMA):
                slow.append(i)
            elif table.num_rows:
                pieces.append((table, np.full(table.num_rows, i, dtype=np.int64)))
        if slow:
            careful(slow)
        if not pieces:
            return pa.table({}), errors
        table = pa.concat_tables([p if isinstance(p, pa.Table) else pa.Table.from_batches([p]) for p, _ in pieces])
        index = np.concatenate([ix for _, ix in pieces])
        offsets = np.fromiter((item.offset for item in items), dtype=np.int64, count=len(items))[index]
        table = table.append_column("kafka_partition", pa.array(np.full(len(index), batch.partition, np.int32)))
        table = table.append_column("kafka_offset", pa.array(offsets))
        if len(pieces) > 1 and np.any(np.diff(offsets) < 0):
            table = table.sort_by([("kafka_offset", "ascending")])
        return table.combine_chunks(), errors

    def write(self, batch: SinkBatch) -> None:
        """Decode, score, store and publish one partition's batch (all durable on return)."""
        from workbench.store.shards import write_shard

        t0 = time.perf_counter()
        table, errors = self._decode(batch)
        for item, reason in errors:
            self.dead_letters.send(item.value, reason, key=item.key, headers=item.headers, topic=batch.topic,
                                   partition=batch.partition, offset=item.offset)
            self.status.add("dead_letters")
        self.status.add("messages", batch.size)
        n = table.num_rows
        if not n:
            return
        # [repro hook 1: hold] a day the selection rule does not accept yet is not stored: Quix
        # pauses all partitions and re-reads them from the committed offsets (bounded memory)
        held = self.hold_day(table) if self.hold_day is not None else None
        if held is not None:
            self.status.add("held_batches")
            self.status.info["holding_day"] = held
            raise SinkBackpressureError(retry_after=1.0)
        self.status.info["holding_day"] = None
        # [/repro hook 1]
        t1 = time.perf_counter()
        kafka = table.select(["kafka_partition", "kafka_offset"])
        scored = pa.Table.from_batches([self.scorer.score(table.drop_columns(["kafka_partition", "kafka_offset"]))])
        for name in kafka.column_names:
            scored = scored.append_column(name, kafka.column(name))
        # [repro hook 2: per-row versions] rows may carry different versions, or none (not ready yet)
        versions = scored.column("model_version")
        n_unscored = versions.null_count
        version = None if n_unscored == n else pc.max(versions).as_py()  # newest in this batch
        # [/repro hook 2]
        t2 = time.perf_counter()
        ts_us = scored.column("arrival_timestamp").cast(pa.int64()).to_numpy()
        day_index = ts_us // _DAY_US
        offsets = scored.column("kafka_offset").to_numpy()
        days = np.unique(day_index)
        day_names = {int(d): (dt.date(1970, 1, 1) + dt.timedelta(days=int(d))).isoformat() for d in days}
        if n_unscored:  # [repro hook 2] only the days of the unscored rows
            null_days = np.unique(day_index[pc.is_null(versions).to_numpy(zero_copy_only=False)])
            self.unscored.add({day_names[int(d)] for d in null_days})  # durable before the offsets can be committed
        for d in days:
            mask = day_index == d
            part = scored if len(days) == 1 else scored.filter(pa.array(mask))
            write_shard(self.settings.shards_dir, day_names[int(d)], batch.partition, int(offsets[mask].min()), part)
        self.status.add("shards", len(days))
        t3 = time.perf_counter()
        published = self.publisher.publish_scored(scored) if version is not None else 0  # unscored rows: no anomaly
        t4 = time.perf_counter()
        self.status.add("events", n)
        self.status.add("batches")
        self.status.add("scored", n - n_unscored)  # [repro hook 2]
        self.status.add("unscored", n_unscored)
        self.status.add("stream_anomalies", published)
        if self.training_running():
            self.status.add("events_while_training", n)
        lo, hi = int(ts_us.min()), int(ts_us.max())
        self.first_event_us = lo if self.first_event_us is None else min(self.first_event_us, lo)
        self.max_event_us = hi if self.max_event_us is None else max(self.max_event_us, hi)
        self.partition_max_us[batch.partition] = max(self.partition_max_us.get(batch.partition, hi), hi)  # hook 6
        self.partition_seen[batch.partition] = time.monotonic()
        for key, seconds in zip(self.timings, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            self.timings[key] += seconds
        self.status.info["model_version"] = version
        self.last_batch_wall = time.time()
        logger.debug("batch partition=%d rows=%d version=%s anomalies=%d days=%s", batch.partition, n, version,
                     published, sorted(day_names.values()))


# --- the app --------------------------------------------------------------------------------------
class ScoringApp(WorkbenchApp):
    """The scoring Quix app (see the module docstring).

    Parameters
    ----------
    settings : Settings
        Broker, topics and paths (shards, models, state, logs).
    batch_rows : int, default=16_384
        Rows one partition may buffer before the app flushes (scores) at once.
    batch_seconds : float, default=1.0
        Longest time between flushes (the Quix checkpoint interval; also the anomaly latency).
    every_n_days, window_days : int
        Training cadence and window, passed to :class:`~workbench.ml.TrainingSupervisor`.
    train : bool, default=True
        Schedule trainings (False: score with whatever version is current).
    max_train_rows : int, default=400_000
        Row cap of one training.
    training_backoff_s : float, default=60.0
        Delay before retrying a failed or killed training (doubles per attempt).
    max_training_attempts : int, default=3
        Attempts per day before the supervisor gives up (the previous version stays current).
    training_grace_s : float, default=600.0
        Event-time seconds past midnight before the finished day is trained (lets the other
        partitions deliver that day's last events).
    group : str, optional
        Consumer group (default ``workbench-scoring``).
    intra_op_threads : int, default=2
        ONNX Runtime threads per session.
    status_interval : float, default=1.0
        Least seconds between two writes of the status file.
    """

    def __init__(self, settings: Settings, *, batch_rows: int = 16_384, batch_seconds: float = 1.0,
                 every_n_days: int = 1, window_days: int = 7, train: bool = True, max_train_rows: int = 400_000,
                 training_backoff_s: float = 60.0, max_training_attempts: int = 3, training_grace_s: float = 600.0,
                 group: str | None = None, intra_op_threads: int = 2, status_interval: float = 1.0) -> None:
        if not 1 <= batch_rows <= 1_000_000:
            msg = f"The batch_rows of ScoringApp must be in [1, 1000000]. Got {batch_rows!r} instead."
            raise PipelineConfigError(msg)
        if not 0 < batch_seconds <= 600:
            msg = f"The batch_seconds of ScoringApp must be in (0, 600]. Got {batch_seconds!r} instead."
            raise PipelineConfigError(msg)
        if every_n_days < 1 or window_days < 1:
            msg = (f"every_n_days and window_days of ScoringApp must be >= 1. Got {every_n_days!r} and "
                   f"{window_days!r} instead.")
            raise PipelineConfigError(msg)
        if training_grace_s < 0 or training_backoff_s < 0:
            msg = (f"training_grace_s and training_backoff_s must be >= 0 seconds. Got {training_grace_s!r} and "
                   f"{training_backoff_s!r} instead.")
            raise PipelineConfigError(msg)
        self.settings = settings
        self.batch_rows = int(batch_rows)
        self.batch_seconds = float(batch_seconds)
        self.every_n_days = every_n_days
        self.window_days = window_days
        self.train = train
        self.max_train_rows = max_train_rows
        self.training_backoff_s = training_backoff_s
        self.max_training_attempts = max_training_attempts
        self.training_grace_us = int(training_grace_s * 1_000_000)
        self.group = group
        self.intra_op_threads = intra_op_threads
        self.status = AppStatus(settings, APP_NAME, interval=status_interval)
        self.app: Application | None = None
        self.sink: ScoringSink | None = None
        self.scorer: Any = None
        self.supervisor: Any = None
        self.publisher: AnomalyPublisher | None = None
        self.dead_letters: DeadLetters | None = None
        self.unscored = UnscoredDays(app_state_dir(settings, APP_NAME) / UNSCORED_FILE)
        self._rescorer: threading.Thread | None = None
        self._rescore_error: BaseException | None = None
        self._idle_exit: float | None = None
        self._started = 0.0
        self._last_slow_tick = 0.0
        self._force_commit: Callable[[], None] | None = None
        self._maintained_day: dt.date | None = None  # [repro hook 5]
        self._warmup_s = max(2.0, 4 * self.batch_seconds)  # [repro hook 6]
        # [repro hook 1] off: Quix's SinkBackpressureError pauses and rewinds *all* partitions, so
        # holding a fast partition also stops the slow one the watermark waits for (deadlock). Days
        # that are not ready are stored unscored on disk and scored once ready (bounded memory).
        self.hold_days = False
        self._paused: set[int] = set()  # [repro hook 7]
        self._events_topic_name = settings.topic_query_events

    # --- periodic work (main thread) ------------------------------------------------------------
    def _after_flush(self) -> None:
        """Hand finished event days to the supervisor (the sink just wrote every buffered row)."""
        sink = self.sink
        if sink is not None and sink.max_event_us is not None:  # [repro hook 5]
            self._maintain_shards(_day_of(self._watermark_us() - self.training_grace_us))
        if self.supervisor is None or sink is None or sink.max_event_us is None:
            return
        if self.supervisor.state["first_day"] is None and sink.first_event_us is not None:
            self.supervisor.maybe_schedule(_day_of(sink.first_event_us))
        if time.monotonic() - self._started < self._warmup_s:
            return  # [repro hook 6] let every partition with data deliver once before trusting the watermark
        scheduled = self.supervisor.maybe_schedule(_day_of(self._watermark_us() - self.training_grace_us))
        if scheduled:
            self.status.add("trainings_scheduled", len(scheduled))
            self._training_info()

    # [repro hook 4] helpers of the event-time selection (workbench.ml.selection)
    def _cadence(self) -> Any:
        from workbench.ml.selection import Cadence

        return None if self.supervisor is None else Cadence.from_state(self.supervisor.state)

    def _hold_day(self, table: pa.Table) -> str | None:
        """The first event day of ``table`` the app may not store yet (backpressure), or None."""
        ts = table.column("arrival_timestamp").cast(pa.int64())
        if self.supervisor is not None and self.supervisor.state["first_day"] is None:
            self.supervisor.maybe_schedule(_day_of(int(pc.min(ts).as_py())))  # the cadence starts here
        cadence = self._cadence()
        if cadence is None or not self.hold_days:
            return None
        for d in range(int(pc.min(ts).as_py()) // _DAY_US, int(pc.max(ts).as_py()) // _DAY_US + 1):
            if not self.scorer.accepts(_day_of(d * _DAY_US), cadence):
                return _day_of(d * _DAY_US).isoformat()
        return None

    def _ready_unscored(self) -> set[str]:
        """Days with unscored rows whose final version exists now."""
        days = self.unscored.snapshot()
        if not days or self.scorer is None:
            self.status.info["waiting_for_model"] = []
            return set()
        cadence = self._cadence()
        ready = {d for d in days if self.scorer.ready(dt.date.fromisoformat(d), cadence)}
        # what the status/panel shows: event days stored unscored until their model version exists
        self.status.info["waiting_for_model"] = sorted(days - ready)
        return ready
    # [/repro hook 4]

    # [repro hook 6: event-time watermark = the slowest partition that is still delivering]
    def _watermark_us(self) -> int:
        """Newest event time that every partition still delivering has durably stored.

        The max over partitions (what was used before) lets a fast partition trigger the
        training of a day whose events a slower partition has not delivered yet, so the model
        would depend on consumption order. A partition that has not delivered for ``_warmup_s``
        is caught up (the replay sends in event-time order) and no longer holds the watermark back.
        """
        sink = self.sink
        assert sink is not None and sink.max_event_us is not None
        now = time.monotonic()
        active = [us for p, us in sink.partition_max_us.items() if now - sink.partition_seen[p] < self._warmup_s]
        return min(active) if active else sink.max_event_us
    # [/repro hook 6]

    # [repro hook 7: backpressure per partition]
    def _pace_partitions(self) -> None:
        """Pause a partition whose newest event day is not accepted yet; resume it once it is.

        Only that partition stops fetching (Quix's own sink backpressure would pause and rewind all
        of them, including the slow ones the watermark waits for). The rows it delivered are stored
        (unscored until their version exists), so nothing is lost and memory stays bounded; a
        replay that outruns training is thus slowed down to what training allows.
        """
        sink, consumer, cadence = self.sink, _quix_consumer(self.app), self._cadence()
        if sink is None or consumer is None or cadence is None:
            return
        from confluent_kafka import TopicPartition

        for partition, newest_us in sink.partition_max_us.items():
            day = _day_of(newest_us)
            held = not self.scorer.accepts(day, cadence)
            if held == (partition in self._paused):
                continue
            tp = TopicPartition(self._events_topic_name, partition)
            try:
                if held:
                    consumer.pause([tp])
                    self._paused.add(partition)
                    self.status.add("partition_pauses")
                    logger.info("partition paused until training catches up partition=%d day=%s", partition, day)
                else:
                    consumer.resume([tp])
                    self._paused.discard(partition)
                    sink.last_message_at = time.monotonic()  # resumed: not idle yet
                    logger.info("partition resumed partition=%d day=%s", partition, day)
            except Exception as exc:  # not assigned any more (rebalance): nothing to pace
                logger.warning("cannot pause/resume partition=%d error=%s", partition, exc)
                self._paused.discard(partition)
        self.status.info["paused_partitions"] = sorted(self._paused)
    # [/repro hook 7]

    # [repro hook 5: compaction and retention of settled shard days]
    def _maintain_shards(self, watermark: dt.date) -> None:
        """Once per event-time day: compact the days before yesterday, apply shard_retention_days."""
        if watermark == self._maintained_day:
            return
        from workbench.store.shards import maintain

        self._maintained_day = watermark
        keep = self.settings.shard_retention_days
        if keep is not None and keep <= self.window_days:
            logger.warning("shard_retention_days=%d is shorter than the training window; keeping %d days",
                           keep, self.window_days + 1)
            keep = self.window_days + 1
        done = maintain(self.settings.shards_dir, watermark, retention_days=keep)
        self.status.add("shard_days_compacted", len(done["compacted"]))
        self.status.add("shard_days_deleted", len(done["deleted"]))
    # [/repro hook 5]

    def _training_info(self) -> None:
        sup = self.supervisor
        if sup is None:
            return
        days = sup.state["days"]
        self.status.info["training"] = {
            "running_day": next((d for d, e in days.items() if e["status"] == "running"), None),
            "pid": sup.pid,
            "days": {d: {"status": e["status"], "attempts": e["attempts"], "last_rc": e.get("last_rc")}
                     for d, e in sorted(days.items())[-7:]},
        }

    def _tick(self) -> None:
        """Called after every poll: force a flush when a batch is full; cheap otherwise."""
        sink = self.sink
        if sink is not None and sink.size_due and self._force_commit is not None:
            self._force_commit()
        now = time.monotonic()
        if now - self._last_slow_tick < 0.2:
            return
        self._last_slow_tick = now
        if self.supervisor is not None:
            self._after_flush()  # [repro hook 6] the watermark also moves when partitions fall idle
            self._pace_partitions()  # [repro hook 7]
            self.supervisor.poll()
            self._training_info()
        self._maybe_rescore()
        if self._rescore_error is not None:
            error, self._rescore_error = self._rescore_error, None
            raise error
        self._sum_anomalies()
        self._sink_info()
        self.status.maybe_publish()
        if self._idle_exit is not None and self.app is not None and self._idle():
            logger.info("scoring idle for %.1fs with nothing pending: stopping", self._idle_exit)
            self.app.stop()

    def _sink_info(self) -> None:
        sink = self.sink
        if sink is None:
            return
        self.status.info["timings_s"] = {k: round(v, 3) for k, v in sink.timings.items()}
        self.status.info["max_event_time"] = None if sink.max_event_us is None else _us_to_iso(sink.max_event_us)
        self.status.info["first_message_at"] = sink.first_message_wall
        self.status.info["last_batch_at"] = sink.last_batch_wall

    def _sum_anomalies(self) -> None:
        counters = self.status.counters
        counters["anomalies"] = counters.get("stream_anomalies", 0) + counters.get("rescore_anomalies", 0)

    def _idle(self) -> bool:
        sink = self.sink
        assert sink is not None and self._idle_exit is not None
        last = sink.last_message_at or self._started
        if time.monotonic() - last < self._idle_exit or sink.buffered_rows:
            return False
        if self._rescorer is not None and self._rescorer.is_alive():
            return False
        if self._paused:  # [repro hook 7] a paused partition still has events to deliver
            return False
        if self.supervisor is not None and any(e["status"] in ("running", "pending")
                                               for e in self.supervisor.state["days"].values()):
            return False
        return not self._ready_unscored()  # [repro hook 3]

    def _maybe_rescore(self) -> None:
        if self._rescorer is not None and self._rescorer.is_alive():
            return
        days = self._ready_unscored()  # [repro hook 3] only days whose final version exists
        if not days or self.scorer is None:
            return
        version = "event-time"
        self._rescorer = threading.Thread(target=self._rescore, args=(days, version), name="rescore", daemon=True)
        self._rescorer.start()

    def _rescore(self, days: set[str], version: str) -> None:
        """Helper thread: score the stored unscored rows of ``days`` with ``version``."""
        from workbench.ml.scorer import Scorer
        from workbench.store.shards import rescore_unscored

        t0 = time.perf_counter()
        publisher = AnomalyPublisher(self.settings)  # its own producer and delivery-error list
        try:
            cadence = self._cadence()  # [repro hook 3] each row gets its day's version, like the stream
            pinned = Scorer(self.settings.models_dir, by_event_time=True, cadence=lambda: cadence,
                            intra_op_threads=1)
            rows = rescore_unscored(self.settings.shards_dir, _PublishingScorer(pinned, publisher, self.status),
                                    days=sorted(days))
            publisher.close()
        except BaseException as exc:  # surfaced in the main thread by _tick
            logger.exception("rescoring failed days=%s version=%s", sorted(days), version)
            self._rescore_error = exc
            return
        self.unscored.remove(days)
        self.status.add("rescored", rows)  # only this thread writes this (pre-created) counter
        logger.info("rescored unscored events rows=%d days=%s version=%s seconds=%.2f", rows, sorted(days), version,
                    time.perf_counter() - t0)

    # --- lifecycle --------------------------------------------------------------------------------
    def build(self) -> Application:
        """Declare the Quix pipeline; returns the Application (not started)."""
        from workbench.broker import ensure_topics
        from workbench.ml.scorer import Scorer
        from workbench.ml.supervisor import TrainingSupervisor

        ensure_topics(self.settings)
        app = build_application(self.settings, APP_NAME, group=self.group, commit_interval=self.batch_seconds,
                                use_changelog_topics=False)
        self.dead_letters = DeadLetters(self.settings, APP_NAME, app.get_producer())
        self.publisher = AnomalyPublisher(self.settings)
        # [repro hook 4: event-time selection] see workbench.ml.selection
        self.scorer = Scorer(self.settings.models_dir, intra_op_threads=self.intra_op_threads, by_event_time=True,
                             cadence=self._cadence)
        if self.train:
            self.supervisor = TrainingSupervisor(self.settings, every_n_days=self.every_n_days,
                                                 window_days=self.window_days, max_rows=self.max_train_rows,
                                                 max_attempts=self.max_training_attempts,
                                                 backoff_seconds=self.training_backoff_s)
        self.sink = ScoringSink(self.settings, self.scorer, self.publisher, self.dead_letters, self.status,
                                self.unscored, batch_rows=self.batch_rows)
        self.sink.on_flushed = self._after_flush
        self.sink.hold_day = self._hold_day  # [repro hook 1]
        for name in ("events", "scored", "unscored", "rescored", "anomalies", "stream_anomalies", "rescore_anomalies",
                     "batches", "shards", "dead_letters", "events_while_training"):
            self.status.counters.setdefault(name, 0)  # the rescoring thread never inserts keys
        if self.supervisor is not None:
            supervisor = self.supervisor
            self.sink.training_running = lambda: supervisor.running
        topic = event_topic(app, self.settings)
        self._events_topic_name = topic.name  # [repro hook 7]
        sdf = app.dataframe(topic)
        sdf.sink(self.sink)
        if not register_periodic(app, self._tick):
            logger.warning("no periodic hook: flushes happen every batch_seconds only, idle_exit is not supported")
        context = getattr(app, "_processing_context", None)
        commit = getattr(context, "commit_checkpoint", None)
        if commit is not None:
            self._force_commit = lambda: commit(force=True)
        else:
            logger.warning("this quixstreams cannot force a checkpoint: batches flush every batch_seconds only")
        self.status.info.update({"topic": self.settings.topic_query_events, "anomalies": self.settings.topic_anomalies,
                                 "shards_dir": str(self.settings.shards_dir), "batch_rows": self.batch_rows,
                                 "batch_seconds": self.batch_seconds, "every_n_days": self.every_n_days,
                                 "window_days": self.window_days, "model_version": self.scorer.version})
        self.app = app
        return app

    def run(self, *, timeout: float | None = None, idle_exit: float | None = None,
            count: int | None = None) -> AppResult:
        """Run in the main thread until stopped, ``timeout`` s of wall time, or idle.

        Idle means: no message for ``idle_exit`` s, nothing buffered, no training running or
        pending, and no unscored rows left that a model could score (the app checks this itself,
        so Quix's own idle timeout is not used). Offsets are committed (after the last flush)
        when the run ends.
        """
        self._idle_exit = idle_exit
        self._started = time.monotonic()
        return super().run(timeout=timeout, idle_exit=None, count=count)

    def _after_run(self) -> None:
        if self._rescorer is not None:
            self._rescorer.join()
        if self._rescore_error is not None:
            raise self._rescore_error

    def _cleanup(self) -> None:
        if self.supervisor is not None:
            self.supervisor.poll()
            self._training_info()
        if self.publisher is not None:
            self.publisher.close()
        self._sink_info()
        if self.scorer is not None:
            self.status.info["model_version"] = self.scorer.version
        self._sum_anomalies()

    def _result(self) -> AppResult:
        return AppResult(dict(self.status.counters), dict(self.status.info))


def _quix_consumer(app: Application | None) -> Any:
    """The app's Kafka consumer (a Quix internal: ``Application._consumer``; None if it moved).

    The one place that reaches into Quix: pausing single partitions has no public API.
    tests/test_reproducible.py fails (no ``partition_pauses``) if this stops working.
    """
    consumer = getattr(app, "_consumer", None)
    return consumer if hasattr(consumer, "pause") and hasattr(consumer, "resume") else None


def _day_of(us: int) -> dt.date:
    return dt.date(1970, 1, 1) + dt.timedelta(days=us // _DAY_US)


def _us_to_iso(us: int) -> str:
    return (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)).isoformat()


def run_scoring(settings: Settings, *, timeout: float | None = None, idle_exit: float | None = None,
                batch_rows: int = 16_384, batch_seconds: float = 1.0, every_n_days: int = 1, window_days: int = 7,
                **options: Any) -> AppResult:
    """Build and run the scoring app in this (main) thread; see :class:`ScoringApp`.

    Parameters
    ----------
    settings : Settings
        Broker, topics, paths.
    timeout : float, optional
        Stop after this many seconds of wall time (a running training keeps running).
    idle_exit : float, optional
        Stop once idle this many seconds (see :meth:`ScoringApp.run`): the end of a replay,
        including the training it triggered and the rescoring of unscored events.
    batch_rows, batch_seconds
        Flush a partition's batch at this many rows, and flush everything at least this often.
    every_n_days, window_days : int
        Training cadence and window.
    **options
        Other keyword arguments of :class:`ScoringApp` (``train``, ``training_backoff_s``, ``group``, ...).

    Returns
    -------
    AppResult
        Final counters: ``events``, ``messages``, ``scored``, ``unscored``, ``rescored``, ``anomalies``
        (``stream_anomalies`` + ``rescore_anomalies``), ``batches``, ``shards``, ``dead_letters``,
        ``events_while_training``, ``trainings_scheduled``; ``info`` has ``model_version``, ``training``
        and ``timings_s``.
    """
    app = ScoringApp(settings, batch_rows=batch_rows, batch_seconds=batch_seconds, every_n_days=every_n_days,
                     window_days=window_days, **options)
    return app.run(timeout=timeout, idle_exit=idle_exit)
