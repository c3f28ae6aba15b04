"""The one place that builds a :class:`quixstreams.Application` for a workbench app.

Every app (stream analytics, anomaly sink, and the ML scoring app) gets the same consumer
behaviour:

* its own consumer group ``workbench-<app>`` and state folder ``<state_dir>/<app>``;
* ``auto_offset_reset="earliest"`` (a new group reads the whole retained topic);
* ``isolation.level=read_committed``: the replay writes inside Kafka transactions;
* ``session.timeout.ms`` 6000 on the managed broker, 15000 on a cluster (``Settings.session_timeout_ms``,
  ``WORKBENCH_SESSION_TIMEOUT_MS``) / ``heartbeat.interval.ms=2000``, so a restarted app gets its
  partitions back in seconds instead of 45 s, and on a cluster a group outlives its coordinator's
  failover (a dead broker is declared dead after 9 s);
* ``fetch.wait.max.ms=500`` (librdkafka's default): how long the broker holds a fetch that finds
  nothing new. It does not delay data: a held fetch is answered as soon as a transaction commits
  (~10 ms from commit to consume either way, measured), while an idle consumer asks 2 times a second
  instead of 20 (each fetch costs the broker CPU);
* at-least-once processing: every downstream store is idempotent (UPSERT / anti-join).

Run an app in the main thread of its own process (Quix installs SIGINT/SIGTERM handlers), or
through :func:`run_quix_app`, which bounds the run for tests and notebooks.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException
from quixstreams import Application
from quixstreams.kafka.configuration import ConnectionConfig

from workbench.config import Settings
from workbench.pipeline._names import app_state_dir, consumer_group
from workbench.pipeline._quix import (
    close_kafka_clients,
    close_producer,
    commit_first_checkpoint_at_once,
    register_periodic,
)
from workbench.pipeline._status import AppResult
from workbench.pipeline.exceptions import PipelineConfigError

__all__ = [
    "CONSUMER_DEFAULTS",
    "INFRASTRUCTURE_ERRORS",
    "WorkbenchApp",
    "build_application",
    "register_periodic",
    "run_quix_app",
]

logger = logging.getLogger(__name__)

#: Failures that are not one message's fault: they stop an app instead of dead-lettering a message.
INFRASTRUCTURE_ERRORS: Final = (OSError, MemoryError, KafkaException)

#: Consumer settings every app shares (see the module docstring).
CONSUMER_DEFAULTS: Final[dict[str, Any]] = {
    "isolation.level": "read_committed",
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 2000,
    "fetch.wait.max.ms": 500,
}


#: Commit refusals that mean the group dropped this consumer (no heartbeat within the session timeout: a
#: process stopped or starved that long), or moved its partitions meanwhile.
_LOST_MEMBERSHIP = frozenset({KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION,
                              KafkaError.REBALANCE_IN_PROGRESS, KafkaError.FENCED_INSTANCE_ID})


#: Commit failures while the group's coordinator (a broker) is away or moving: it died, restarts, or its
#: partition of ``__consumer_offsets`` has a new leader that is still loading it (a 3-broker cluster: a
#: broker killed, or restarted gracefully, ended the apps it coordinated with a traceback).
_COORDINATOR_AWAY = frozenset({KafkaError._WAIT_COORD, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                               KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR})


def refused_commit(exc: BaseException) -> KafkaError | None:
    """The group's refusal of a commit in ``exc`` (or what caused it), or None: this process is no longer
    the member owning its partitions (:data:`_LOST_MEMBERSHIP`), or the group's coordinator is away or
    moving (:data:`_COORDINATOR_AWAY`). Quix raises either as ``CheckpointConsumerCommitError`` carrying
    librdkafka's ``KafkaError``; the uncommitted messages are read again by whoever owns them next."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for arg in current.args:
            if isinstance(arg, KafkaError) and arg.code() in _LOST_MEMBERSHIP | _COORDINATOR_AWAY:
                return arg
        current = current.__cause__ or current.__context__
    return None


def coordinator_away(error: KafkaError) -> bool:
    """Whether a :func:`refused_commit` error is the coordinator's absence, not this member's."""
    return error.code() in _COORDINATOR_AWAY


def lost_group_membership(exc: BaseException) -> bool:
    """Whether ``exc`` holds a commit the group refused (:func:`refused_commit`)."""
    return refused_commit(exc) is not None


def build_application(
    settings: Settings,
    app_name: str,
    *,
    group: str | None = None,
    commit_interval: float = 5.0,
    consumer_extra_config: dict[str, Any] | None = None,
    producer_extra_config: dict[str, Any] | None = None,
    use_changelog_topics: bool = True,
    on_processing_error: Any = None,
) -> Application:
    """A Quix Application for one workbench app, configured from ``settings``.

    Parameters
    ----------
    settings : Settings
        Broker address and security (``settings.kafka_client_config()``) and paths.
    app_name : str
        Short name (``analytics``, ``anomaly-sink``, ``scoring``); names the group and state folder.
    group : str, optional
        Consumer group; default ``workbench-<app_name>``. Tests pass a fresh one to re-read a topic.
    commit_interval : float
        Seconds between checkpoints (sink flushes and offset commits).
    consumer_extra_config, producer_extra_config : dict, optional
        librdkafka settings on top of :data:`CONSUMER_DEFAULTS`.
    use_changelog_topics : bool
        Back window state with changelog topics (needed to recover state on another machine).
    on_processing_error : callable, optional
        Quix's per-message error callback (:meth:`WorkbenchApp.on_processing_error`).

    Returns
    -------
    quixstreams.Application
    """
    if not app_name or "/" in app_name:
        msg = f"The app_name of build_application must be a short name without '/'. Got {app_name!r} instead."
        raise PipelineConfigError(msg)
    if commit_interval <= 0:
        msg = f"The commit_interval of build_application must be > 0 seconds. Got {commit_interval!r} instead."
        raise PipelineConfigError(msg)
    from workbench.pipeline._instance import claim_instance

    # N instances of an app share the home: each has its own slot folder (Quix state must not collide).
    state_dir = app_state_dir(settings, app_name, claim_instance(settings.state_dir, app_name))
    state_dir.mkdir(parents=True, exist_ok=True)
    connection = ConnectionConfig.from_librdkafka_dict(settings.kafka_client_config())
    return Application(
        broker_address=connection,
        consumer_group=group or consumer_group(settings, app_name),
        state_dir=str(state_dir / "quix"),
        auto_offset_reset="earliest",
        commit_interval=commit_interval,
        consumer_extra_config={**CONSUMER_DEFAULTS, "session.timeout.ms": settings.session_timeout_ms,
                               **(consumer_extra_config or {})},
        producer_extra_config={"linger.ms": 20, **(producer_extra_config or {})},
        processing_guarantee="at-least-once",
        auto_create_topics=True,
        use_changelog_topics=use_changelog_topics,
        consumer_poll_timeout=0.2,
        on_processing_error=on_processing_error,
    )


def run_quix_app(app: Application, *, timeout: float | None = None, count: int | None = None) -> None:
    """Run ``app`` in this (main) thread until stopped, idle for ``timeout`` s, or ``count`` outputs.

    The SIGINT/SIGTERM handlers Quix installs are restored afterwards, so a notebook kernel keeps
    its own interrupt handler. ``app.stop()`` (or a signal) ends the run; offsets are committed.
    """
    if threading.current_thread() is not threading.main_thread():
        msg = ("Quix applications must run in the main thread (they install signal handlers). "
               "Got a call from thread " + repr(threading.current_thread().name) + "; run the app in its own "
               "process instead (`workbench app NAME`).")
        raise PipelineConfigError(msg)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        app.run(timeout=float(timeout or 0.0), count=int(count or 0), collect=False)
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """Keep the objects alive at start-up (libraries, Quix, the app and its model) out of the cyclic GC while running.

    The stream allocates millions of short-lived containers (message tuples, headers, decoded
    rows); every full collection they trigger walked the ~200k objects the imports left behind as
    well: ~10 us per JSON message, more than decoding it. Frozen, a full collection walks only the
    live batch. No collection first (it costs seconds in a large test process): what is garbage
    already is only kept until the run ends, when the heap is unfrozen and can be collected again.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class WorkbenchApp:
    """The run lifecycle every workbench app shares (subclasses implement :meth:`build`).

    :meth:`run` runs the Quix app in the main thread, bounded by wall time (``timeout``), idleness
    (``idle_exit``) or output count, publishes ``running``/``stopped``/``failed`` in the status
    file, and always releases resources, its Kafka clients included (the app's producer, consumer
    and topic admin and the dead-letter producer are flushed and closed when :meth:`run` returns,
    not left to the garbage collector with their threads and broker connections).
    Hooks: :meth:`_after_run` (only after a clean run) and :meth:`_cleanup` (always); :meth:`_result`
    builds the returned :class:`AppResult`.
    """

    app: Application | None = None
    dead_letters: Any = None
    status: Any = None

    def on_processing_error(self, exc: Exception, row: Any, _logger: Any) -> bool:
        """The per-message error boundary: dead-letter the message whose processing raised, go on.

        Quix calls it for any exception raised while one message runs through the pipeline.
        Infrastructure failures (:data:`INFRASTRUCTURE_ERRORS`: broker, disk, memory) are not
        suppressed: they stop the app (the supervisor restarts it, nothing is committed).
        """
        if isinstance(exc, INFRASTRUCTURE_ERRORS) or row is None or self.dead_letters is None:
            return False
        reason = f"processing_error: {type(exc).__name__}: {exc}"
        logger.warning("message failed in processing, dead-lettered: %s", reason[:300], exc_info=exc)
        self.dead_letters.send(row.value, reason, key=row.key, headers=row.headers, topic=row.topic,
                               partition=row.partition, offset=row.offset)
        if self.status is not None:
            self.status.add("dead_letters")
        return True

    def build(self) -> Application:  # pragma: no cover - every app overrides it
        raise NotImplementedError

    def stop(self) -> None:
        """Ask a running app to stop (safe from signal handlers and other threads)."""
        if self.app is not None:
            self.app.stop()

    def _after_run(self) -> None:
        """Work after a run that ended without an error (e.g. a last compaction)."""

    def _cleanup(self) -> None:
        """Release what the app holds; runs after every run, failed or not."""

    def _result(self) -> Any:
        return AppResult(dict(self.status.counters))

    def run(self, *, timeout: float | None = None, idle_exit: float | None = None,
            count: int | None = None) -> Any:
        """Run until stopped, ``timeout`` s of wall time, ``idle_exit`` s idle or ``count`` outputs.

        The first checkpoint with processed messages commits at once (start-up to first commit),
        the later ones at the app's checkpoint interval.
        """
        app = self.app or self.build()
        if not getattr(self, "_first_commit_hooked", False):
            commit_first_checkpoint_at_once(app)
            self._first_commit_hooked = True
        timer = threading.Timer(timeout, self.stop) if timeout else None
        self.status.publish("running")
        state = "stopped"
        try:
            if timer is not None:
                timer.daemon = True
                timer.start()
            with _frozen_heap():
                run_quix_app(app, timeout=idle_exit, count=count)
            self._after_run()
        except BaseException:
            state = "failed"
            raise
        finally:
            if timer is not None:
                timer.cancel()
            try:
                self._cleanup()
            finally:
                try:
                    self._close_clients()
                finally:
                    self.status.publish(state)
                    self.status.release()
        return self._result()

    def _close_clients(self) -> None:
        """Flush and close the dead-letter producer and the Quix app's own clients (see the class docstring).

        Each dead letter was flushed when it was sent; the flush here only guards a send that failed
        half-way. Messages still undelivered after the flush timeout are logged, never dropped silently.
        """
        left = 0
        try:
            if self.dead_letters is not None:
                self.dead_letters.close()
                left += close_producer(self.dead_letters.producer)
        finally:
            if self.app is not None:
                left += close_kafka_clients(self.app)
        if left:
            logger.error("%d produced messages were not delivered before the Kafka clients closed", left)
