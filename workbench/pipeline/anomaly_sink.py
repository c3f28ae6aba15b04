"""Anomaly sink: ``redshift.anomalies`` into the DuckLake lakehouse, idempotently.

No window (the earlier app's window only added latency): each message is checked against the
contract (:mod:`workbench.pipeline.contracts`) and mapped to a lakehouse row; malformed ones go to
the dead-letter topic. :class:`DuckLakeSink` opens the lakehouse with the first batch that has rows
to write (DuckDB, its extensions and the catalog attach are not part of the app's start-up) and
writes each flushed batch (one per topic partition
per checkpoint) with :meth:`AnomalyLakehouse.write`, which skips rows already stored under
``(instance_id, query_id, model_version)``, so at-least-once redelivery never duplicates. A locked
catalog pauses the partitions (``SinkBackpressureError``) and the batch is re-read and retried.
Every ``maintain_every`` writes or ``maintain_interval_s`` seconds the sink compacts
(:meth:`AnomalyLakehouse.maintain`).

Run it as ``workbench app anomaly-sink``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from quixstreams import Application
from quixstreams.sinks import BatchingSink, SinkBackpressureError, SinkBatch

from workbench.config import Settings
from workbench.data import codec
from workbench.pipeline._app import WorkbenchApp, build_application
from workbench.pipeline._deadletter import DeadLetters
from workbench.pipeline._eventtime import EventTimeGuard
from workbench.pipeline._quix import read_headers_first, register_periodic
from workbench.pipeline._status import AppResult, AppStatus
from workbench.pipeline.contracts import ANOMALY_CONTRACT_VERSION, anomaly_row
from workbench.pipeline.exceptions import AnomalyContractError, PipelineConfigError
from workbench.store.exceptions import LakehouseBusyError
from workbench.store.lakehouse import AnomalyLakehouse

__all__ = ["APP_NAME", "AnomalySinkApp", "DuckLakeSink", "run_anomaly_sink"]

logger = logging.getLogger(__name__)

APP_NAME = "anomaly-sink"


class DuckLakeSink(BatchingSink):
    """Quix sink writing anomaly rows into the DuckLake lakehouse (idempotent, one snapshot per batch).

    Parameters
    ----------
    lakehouse : AnomalyLakehouse
        Not yet opened; the first :meth:`write` with rows opens it.
    maintain_every : int
        Compact after this many successful writes (0 disables the count trigger).
    maintain_interval_s : float
        ... or when this many seconds passed since the last compaction (0 disables).
    status : AppStatus, optional
        Receives ``sink_rows`` (inserted), ``sink_duplicates``, ``sink_writes``, ``backpressure``.
    """

    def __init__(self, lakehouse: AnomalyLakehouse, *, maintain_every: int = 200, maintain_interval_s: float = 600.0,
                 status: AppStatus | None = None) -> None:
        super().__init__()
        self.lakehouse = lakehouse
        self.maintain_every = maintain_every
        self.maintain_interval_s = maintain_interval_s
        self.status = status
        self._writes_since_maintain = 0
        self._last_maintain = time.monotonic()
        self._opened = False

    def setup(self) -> None:
        """Nothing to do at start: the lakehouse opens (and creates its tables) with the first rows to write."""

    def _count(self, name: str, n: int = 1) -> None:
        if self.status is not None:
            self.status.add(name, n)

    def write(self, batch: SinkBatch) -> None:
        """Insert the batch's rows that are not stored yet; a busy catalog means backpressure."""
        rows = [item.value for item in batch]
        if not rows:
            return
        try:
            if not self._opened:  # once: a lost PostgreSQL session is re-attached by the lakehouse itself
                self.lakehouse.open()
                self._opened = True
            inserted = self.lakehouse.write(rows)
        except LakehouseBusyError as exc:
            self._count("backpressure")
            logger.warning("lakehouse busy, pausing partition=%s[%s] retry_after=%s", batch.topic, batch.partition,
                           exc.retry_after)
            raise SinkBackpressureError(retry_after=float(exc.retry_after or 1.0)) from exc
        except Exception:
            logger.exception("lakehouse write failed partition=%s[%s] rows=%d", batch.topic, batch.partition, len(rows))
            raise
        self._count("sink_rows", inserted)
        self._count("sink_duplicates", len(rows) - inserted)
        self._count("sink_writes")
        self._writes_since_maintain += 1
        self.maybe_maintain()

    def maybe_maintain(self, *, force: bool = False) -> None:
        """Compact when due (or ``force``); a busy catalog just postpones it."""
        due = force or (self.maintain_every and self._writes_since_maintain >= self.maintain_every) or (
            self.maintain_interval_s and self._writes_since_maintain
            and time.monotonic() - self._last_maintain >= self.maintain_interval_s)
        if not due:
            return
        try:
            self.lakehouse.maintain()
        except LakehouseBusyError as exc:
            logger.info("lakehouse maintenance postponed: %s", exc)
            return
        self._writes_since_maintain = 0
        self._last_maintain = time.monotonic()
        self._count("maintenance_runs")


class AnomalySinkApp(WorkbenchApp):
    """The anomaly-sink Quix app (see the module docstring).

    Parameters
    ----------
    settings : Settings
        Broker, topics, lakehouse path.
    group : str, optional
        Consumer group (default ``<consumer_group_prefix>-anomaly-sink``).
    commit_interval : float
        Seconds between checkpoints, i.e. between lakehouse writes (one snapshot per partition each).
    maintain_every, maintain_interval_s
        See :class:`DuckLakeSink`.
    """

    def __init__(self, settings: Settings, *, group: str | None = None, commit_interval: float = 5.0,
                 maintain_every: int = 200, maintain_interval_s: float = 600.0, status_interval: float = 1.0) -> None:
        if maintain_every < 0 or maintain_interval_s < 0:
            msg = (f"maintain_every and maintain_interval_s must be >= 0 (0 disables). Got {maintain_every!r} and "
                   f"{maintain_interval_s!r} instead.")
            raise PipelineConfigError(msg)
        self.settings = settings
        self.group = group
        self.commit_interval = commit_interval
        self.maintain_every = maintain_every
        self.maintain_interval_s = maintain_interval_s
        self.status = AppStatus(settings, APP_NAME, interval=status_interval)
        self.app: Application | None = None
        self.sink: DuckLakeSink | None = None
        self.dead_letters: DeadLetters | None = None
        self._time_bounds = EventTimeGuard.from_settings(settings)

    def _row(self, value: bytes | None, key: Any, _ts: int, headers: Any) -> dict[str, Any] | None:
        """The message's lakehouse row, or None when it is dead-lettered (``anomaly_contract``)."""
        assert self.dead_letters is not None
        if isinstance(headers, codec.UnreadableHeaders):  # see _quix.read_headers_first
            self.dead_letters.send(value, f"bad_header: {headers.why}", key=key, headers=None)
            self.status.add("dead_letters")
            return None
        try:
            schema = next((v for k, v in headers or () if k == "schema"), None)
            if schema is not None and bytes(schema) != ANOMALY_CONTRACT_VERSION.encode():
                shown = bytes(schema)[:40].decode("utf-8", errors="backslashreplace")
                msg = f"header 'schema' says {shown!r}; this sink reads {ANOMALY_CONTRACT_VERSION!r} anomalies"
                raise AnomalyContractError(msg)
            row = anomaly_row(value)
            if key is None or bytes(key) != str(row["instance_id"]).encode():
                # the contract's key is the instance id as text: Kafka's per-instance order depends on it
                shown = "no key" if key is None else bytes(key)[:40].decode("utf-8", errors="backslashreplace")
                msg = f"the message key must be the instance id {row['instance_id']} as text. Got {shown!r} instead."
                raise AnomalyContractError(msg)
        except AnomalyContractError as exc:
            self.dead_letters.send(value, f"anomaly_contract: {exc}", key=key, headers=headers)
            self.status.add("dead_letters")
            return None
        # The events' absolute bounds only (no watermark: anomalies of many days arrive in any order);
        # the scoring app alerts only on events inside them.
        reason = self._time_bounds.outside_bounds(row["arrival_timestamp"])
        if reason is not None:
            self.dead_letters.send(value, reason, key=key, headers=headers)
            self.status.add("dead_letters")
            return None
        self.status.add("anomalies")
        return row

    def build(self) -> Application:
        """Declare the Quix pipeline; returns the Application (not started)."""
        app = build_application(self.settings, APP_NAME, group=self.group, commit_interval=self.commit_interval,
                                use_changelog_topics=False, on_processing_error=self.on_processing_error)
        self.dead_letters = DeadLetters(self.settings, APP_NAME, app.get_producer())
        lakehouse = AnomalyLakehouse.from_settings(self.settings)
        lakehouse.check_reachable()
        self.sink = DuckLakeSink(lakehouse, maintain_every=self.maintain_every,
                                 maintain_interval_s=self.maintain_interval_s, status=self.status)
        topic = app.topic(self.settings.topic_anomalies, value_deserializer="bytes", key_deserializer="bytes")
        read_headers_first(topic)
        sdf = app.dataframe(topic)
        sdf = sdf.apply(self._row, metadata=True).filter(lambda row: row is not None)
        sdf.sink(self.sink)
        register_periodic(app, self.status.maybe_publish)
        self.status.info.update({"topic": self.settings.topic_anomalies,
                                 "lakehouse": str(self.settings.lakehouse_dir)})
        self.app = app
        return app

    def _after_run(self) -> None:
        # One compaction at the end when anything was written since the last one.
        if self.sink is not None and self.sink._writes_since_maintain:
            self.sink.maybe_maintain(force=True)

    def _cleanup(self) -> None:
        if self.sink is not None:
            self.sink.lakehouse.close()


def run_anomaly_sink(settings: Settings, *, timeout: float | None = None, idle_exit: float | None = None,
                     count: int | None = None, **options: Any) -> AppResult:
    """Build and run the anomaly sink in this (main) thread; see :class:`AnomalySinkApp`.

    Returns
    -------
    AppResult
        Final counters: ``anomalies``, ``sink_rows`` (inserted), ``sink_duplicates``, ``sink_writes``,
        ``dead_letters``, ``backpressure``, ``maintenance_runs``.
    """
    return AnomalySinkApp(settings, **options).run(timeout=timeout, idle_exit=idle_exit, count=count)
