"""One snapshot of a running workbench: replay progress, apps, lag, models, anomalies."""

from __future__ import annotations

import atexit
import html
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from confluent_kafka import Consumer, TopicPartition

from workbench.broker import RANGE_READER, IncompleteReadError, quiet_logs, read_range, when_ready
from workbench.config import Settings
from workbench.replay import ReplayStatus
from workbench.runtime._format import LATE_HINT, PARTLY_TRAINED_HINT, SKIPPED_HINT, format_bytes, format_speed

__all__ = [
    "WorkbenchStatus",
    "anomaly_count",
    "close_status_clients",
    "consumer_lag",
    "disk_usage",
    "format_bytes",
    "lakehouse_counts",
    "late_event_count",
    "replay_predates_process",
    "topic_message_count",
]

logger = logging.getLogger(__name__)


class _StatusClients:
    """The Kafka clients the status functions share in one process, opened once and reused.

    Every new client costs the broker ~20-50 ms of CPU (connection, authentication, metadata), and
    the notebook panel polls the status every second or so: with fresh clients per call (4-5 of
    them) that was ~70 ms of broker CPU per call; a query on an open client costs ~0-2 ms. One
    consumer per group (it never joins the group: it only asks for the group's committed offsets
    and the partitions), an admin client for the watermarks and a read-committed consumer (opened on first need) that
    counts the data messages of a small remainder, whose count is remembered: a fully read range
    never changes. Calls are serialised (the panel's thread and the user's may overlap).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._consumers: dict[str, Consumer] = {}
        self._reader: Consumer | None = None
        self._admin: Any = None
        self._counted: dict[tuple[str, int, int, int], int] = {}
        self._tallies: dict[tuple[str, int], tuple[int, int]] = {}  # (topic, partition) -> (read up to, records)

    def _consumer(self, group: str) -> Consumer:
        consumer = self._consumers.get(group)
        if consumer is None:
            consumer = self._consumers[group] = Consumer({**self._config, "group.id": group,
                                                          "enable.auto.commit": False, "log_level": 3})
        return consumer

    def partitions(self, group: str, topic: str, timeout: float) -> list[int] | None:
        """Partition ids of ``topic`` (None if it does not exist)."""
        with self._lock:
            metadata = self._consumer(group).list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return None
        return list(metadata.partitions)

    def watermarks(self, topic: str, partitions: list[int], timeout: float, *,
                   stable: bool = False) -> dict[int, tuple[int, int]]:
        """``(low, high)`` offsets of each partition (high: the high watermark, uncommitted data included;
        with ``stable``, the last stable offset: the end a read-committed reader can reach now).

        Two requests for all partitions (an admin client's ``list_offsets``), not two per partition.
        """
        from confluent_kafka import IsolationLevel
        from confluent_kafka.admin import AdminClient, OffsetSpec

        isolation = IsolationLevel.READ_COMMITTED if stable else IsolationLevel.READ_UNCOMMITTED

        def fetch(remaining: float) -> dict[int, tuple[int, int]]:
            out: dict[int, list[int]] = {p: [0, 0] for p in partitions}
            with self._lock:
                if self._admin is None:
                    self._admin = AdminClient({**self._config, "log_level": 3})
                for side, spec in enumerate((OffsetSpec.earliest(), OffsetSpec.latest())):
                    futures = self._admin.list_offsets({TopicPartition(topic, p): spec for p in partitions},
                                                       isolation_level=isolation, request_timeout=remaining)
                    for tp, future in futures.items():
                        out[tp.partition][side] = future.result(remaining).offset
            return {p: (low, high) for p, (low, high) in out.items()}

        return when_ready(fetch, time.monotonic() + timeout)  # a new topic's leader may not be known yet

    def data_count(self, topic: str, partition: int, low: int, stable: int, high: int, timeout: float) -> int:
        """Data records in ``[low, high)`` of one partition: those below the last stable offset ``stable``
        read and counted once (transaction markers and aborted records are not records), at most
        :data:`_TALLY_CHUNK` more and :data:`_TALLY_READ_S` seconds per call, what was read kept (a dead
        letter carries its whole message, up to megabytes); the offsets not read yet count as records."""
        key = (topic, partition)
        with self._lock:
            start, counted = self._tallies.get(key, (low, 0))
            if start < low:  # records before it were deleted (retention): count what is held again
                start, counted = low, 0
            end = min(stable, start + _TALLY_CHUNK)
            if end > start:
                if self._reader is None:
                    self._reader = self._new_reader()
                deadline = time.monotonic() + min(timeout, _TALLY_READ_S)
                try:
                    for message in read_range(self._reader, topic, partition, start, end, deadline):
                        counted += 1
                        start = message.offset() + 1
                    start = end  # read to the end: the markers after the last record are passed too
                except IncompleteReadError:
                    pass  # the next call reads on from the last record counted
                finally:
                    self._reader.unassign()
                self._tallies[key] = (start, counted)
            return counted + max(0, high - start)

    def _new_reader(self) -> Consumer:
        return Consumer({**self._config, "group.id": f"workbench-lag-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "isolation.level": "read_committed",
                         **RANGE_READER, "log_level": 3})

    def committed(self, group: str, topic: str, partitions: list[int], timeout: float) -> dict[int, int]:
        """The offset ``group`` committed on each partition (negative: none)."""
        def fetch(remaining: float) -> dict[int, int]:
            with self._lock:
                found = self._consumer(group).committed([TopicPartition(topic, p) for p in partitions],
                                                        timeout=remaining)
            return {tp.partition: tp.offset for tp in found}

        return when_ready(fetch, time.monotonic() + timeout)

    def data_between(self, topic: str, partition: int, start: int, end: int, timeout: float) -> int:
        """Committed data messages in [start, end) of one partition; transaction markers don't count.

        If the end is not reached in time, every offset counts (not remembered): a pipeline is
        never called drained too early.
        """
        key = (topic, partition, start, end)
        with self._lock:
            if key in self._counted:
                return self._counted[key]
            if self._reader is None:
                self._reader = self._new_reader()
            try:
                count = sum(1 for _ in read_range(self._reader, topic, partition, start, end,
                                                  time.monotonic() + timeout))
            except IncompleteReadError:
                return end - start
            finally:
                self._reader.unassign()  # no fetching in the background between calls
            if len(self._counted) >= 4096:
                self._counted.clear()
            self._counted[key] = count
            return count

    def close(self) -> None:
        """Close every client (none is a member of a group: closing leaves nothing behind)."""
        with self._lock:
            clients = [*self._consumers.values(), *([self._reader] if self._reader is not None else [])]
            self._consumers, self._reader, self._admin = {}, None, None  # an AdminClient has no close()
            self._counted.clear()
            self._tallies.clear()
        for client in clients:
            client.close()


#: The group id of the consumer that only reads topic sizes (it never commits).
_SIZE_GROUP = "workbench-status"

_clients: dict[tuple[int, tuple[tuple[str, str], ...]], _StatusClients] = {}
_clients_lock = threading.Lock()


def _status_clients(settings: Settings) -> _StatusClients:
    """This process's shared clients for the broker (and credentials) of ``settings``."""
    key = _status_key(settings)
    with _clients_lock:
        clients = _clients.get(key)
        if clients is None:
            clients = _clients[key] = _StatusClients(quiet_logs(settings.kafka_client_config()))
        return clients


def _status_key(settings: Settings) -> tuple[int, tuple[tuple[str, str], ...]]:
    # a forked child must not use its parent's librdkafka handles: the pid is part of the key
    return os.getpid(), tuple(sorted((name, str(value)) for name, value in settings.kafka_client_config().items()))


def _discard_status_clients(clients: _StatusClients) -> None:
    """Close ``clients`` after a failure (a broker gone or replaced): the next call opens new ones."""
    with _clients_lock:
        for key, found in list(_clients.items()):
            if found is clients:
                del _clients[key]
    clients.close()


def close_status_clients(settings: Settings | None = None) -> None:
    """Close this process's shared status clients: those of ``settings``' broker, or all of them.

    Runs at exit; :meth:`Workbench.stop` calls it before stopping a broker, so no client keeps
    reconnecting to it. The next status call opens new clients.
    """
    wanted = None if settings is None else _status_key(settings)
    with _clients_lock:
        mine = [key for key in _clients if key[0] == os.getpid() and (wanted is None or key == wanted)]
        closing = [_clients.pop(key) for key in mine]
    for clients in closing:
        clients.close()


atexit.register(close_status_clients)


def _budget(seconds: float) -> Callable[[], float]:
    """Seconds left of ``seconds`` from now, for request after request (at least 50 ms: a last try)."""
    deadline = time.monotonic() + seconds
    return lambda: max(0.05, deadline - time.monotonic())


def consumer_lag(settings: Settings, group: str, topic: str, timeout: float = 5.0) -> int | None:
    """Messages of ``topic`` that consumer group ``group`` has not committed yet (None if unknown).

    Transactional producers (the replay) leave a commit marker after their last message, which
    occupies an offset but is never delivered; a small remainder is therefore checked by reading
    it, so a fully consumed partition reports 0. The Kafka clients are shared (:class:`_StatusClients`).
    """
    clients = _status_clients(settings)
    left = _budget(timeout)  # for the whole read: with the broker gone, each request would wait it again
    try:
        partitions = clients.partitions(group, topic, left())
        if partitions is None:
            return None
        committed = clients.committed(group, topic, partitions, left())
        lag = 0
        for partition, (low, high) in clients.watermarks(topic, partitions, left()).items():
            offset = committed.get(partition, -1)
            position = offset if offset >= 0 else low
            gap = max(0, high - position)
            if 0 < gap <= 16:
                gap = clients.data_between(topic, partition, position, high, left())
            lag += gap
        return lag
    except Exception as exc:
        logger.debug("lag of %s unknown: %s", group, exc)
        _discard_status_clients(clients)
        return None


#: Records, and seconds, a status call spends at most per partition to count a topic's messages exactly.
_TALLY_CHUNK = 50_000
_TALLY_READ_S = 0.5


def topic_message_count(settings: Settings, topic: str, timeout: float = 5.0) -> int | None:
    """Messages currently held by ``topic`` (None if unknown).

    Records, not offsets: the replay writes its dead letters in transactions, whose commit markers
    take offsets too (the status read 4 dead letters for 3). Each record is read once per process
    (:meth:`_StatusClients.data_count`); a record not read yet counts by its offset meanwhile.
    """
    clients = _status_clients(settings)
    left = _budget(timeout)
    try:
        partitions = clients.partitions(_SIZE_GROUP, topic, left())
        if partitions is None:
            return None
        ends = clients.watermarks(topic, partitions, left())
        stable = clients.watermarks(topic, partitions, left(), stable=True)
        return sum(clients.data_count(topic, p, low, stable[p][1], high, left()) for p, (low, high) in ends.items())
    except Exception as exc:
        logger.debug("size of %s unknown: %s", topic, exc)
        _discard_status_clients(clients)
        return None


def late_event_count(settings: Settings) -> int | None:
    """Late events recorded in the window-stats store (None if it cannot be read yet)."""
    from workbench.store.window_stats import WindowStatsStore

    if settings.window_stats_url is None and not settings.sqlite_path.exists():
        return None
    try:
        with WindowStatsStore.from_settings(settings, read_only=True) as store:
            return store.late_event_total()
    except Exception as exc:
        logger.debug("late-event count unavailable: %s", exc)
        return None


def anomaly_count(settings: Settings) -> int | None:
    """Rows in the anomaly lakehouse now (None if it cannot be read yet)."""
    return lakehouse_counts(settings)[0]


def lakehouse_counts(settings: Settings) -> tuple[int | None, int | None]:
    """``(anomalies, flagged windows)`` stored in the lakehouse now, of every run (None: not readable yet)."""
    from workbench.store.lakehouse import AnomalyLakehouse

    try:
        with AnomalyLakehouse.from_settings(settings, read_only=True) as lake:
            return lake.count(), lake.count_window_anomalies()
    except Exception as exc:
        logger.debug("lakehouse counts unavailable: %s", exc)
        return None, None


def _tree_bytes(path: Path) -> int:
    """Bytes on disk under ``path`` (a file or a folder; 0 when missing)."""
    total = 0
    try:
        if path.is_file():
            return path.stat().st_blocks * 512
        for folder, _dirs, files in os.walk(path):
            for name in files:
                try:
                    total += os.lstat(os.path.join(folder, name)).st_blocks * 512
                except OSError:
                    continue  # removed while we walked
    except OSError:
        return total
    return total


def disk_usage(settings: Settings) -> dict[str, int]:
    """Bytes on local disk per store (Kafka data, shards, models, window stats, lakehouse, app state, logs).

    A store kept elsewhere (window stats or the lakehouse catalog in PostgreSQL, shards or lakehouse data
    behind an object-store URL, a broker not managed here) is left out, not shown as "0 B": a tester read
    ``window_stats 0 B`` and ``lakehouse 0 B`` beside 4,157 anomalies as empty stores.
    """
    usage: dict[str, int] = {}
    if settings.manages_kafka:
        usage["kafka"] = _tree_bytes(settings.kafka_dir)
    if isinstance(settings.shards_dir, Path):  # a URL: not local
        usage["shards"] = _tree_bytes(settings.shards_dir)
    usage["models"] = _tree_bytes(settings.models_dir)
    if settings.window_stats_url is None:
        stats = [settings.sqlite_path.with_name(settings.sqlite_path.name + suffix) for suffix in ("", "-wal", "-shm")]
        usage["window_stats"] = sum(_tree_bytes(p) for p in stats) + _tree_bytes(settings.archive_dir)
    elif archive := _tree_bytes(settings.archive_dir):
        usage["window_stats archive"] = archive
    data = settings.lakehouse_data_path
    local_data = "://" not in data
    lakehouse = _tree_bytes(Path(data)) if local_data and settings.lakehouse_data is not None else 0
    if settings.lakehouse_catalog == "sqlite" or settings.lakehouse_data is None:
        lakehouse += _tree_bytes(settings.lakehouse_dir)  # the SQLite catalog, and the data unless elsewhere
    if local_data or settings.lakehouse_catalog == "sqlite":
        usage["lakehouse"] = lakehouse
    usage["state"] = _tree_bytes(settings.state_dir)
    usage["logs"] = _tree_bytes(settings.logs_dir)
    return usage


def replay_predates_process(replay: Any, processes: dict[str, dict[str, Any]] | None) -> bool:
    """Whether ``replay`` (a replay status) was published before the replay process now running started.

    The one rule for a previous run's status still on the state topic; ``replay`` may be any object
    with ``updated_at``, ``processes`` the supervisor's process table.
    """
    proc = (processes or {}).get("replay") or {}
    started = proc.get("started_at")
    updated = getattr(replay, "updated_at", None)
    return bool(replay is not None and started and updated and proc.get("state") in ("running", "starting")
                and updated < started)


@dataclass(frozen=True)
class WorkbenchStatus:
    """Everything ``Workbench.status()`` reports, at one moment."""

    replay: ReplayStatus | None
    processes: dict[str, dict[str, Any]]
    apps: dict[str, dict[str, Any]]
    lag: dict[str, int | None]
    model_version: str | None
    model_versions: int
    anomalies: int | None
    late_events: int | None
    dead_letters: int | None
    disk: dict[str, int] = field(default_factory=dict)
    taken_at: float = field(default_factory=time.time)
    #: app -> the last status of each of its instance slots (N processes per app on one home)
    instances: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: pid of the elected trainer (the scoring instance holding the registry's trainer lease)
    trainer_pid: int | None = None
    #: the version a person pinned (``models set-current``): it scores every event; None: each day's version
    model_pinned: str | None = None
    #: ``CURRENT`` names a version the registry no longer holds (deleted by a person or ``prune``)
    model_deleted: bool = False
    #: flagged windows stored in the lakehouse (every run, as ``anomalies``); None: not read
    stored_window_anomalies: int | None = None
    #: versions trained on part of their days (a seek skipped rows while they trained), one line each
    partly_trained: list[str] = field(default_factory=list)

    # -- convenience views ------------------------------------------------------------------
    @property
    def current_replay(self) -> ReplayStatus | None:
        """The replay's status, or None while the one on record is a previous run's (:attr:`replay_is_stale`)."""
        return None if self.replay_is_stale else self.replay

    @property
    def event_time(self) -> datetime | None:
        replay = self.current_replay
        return replay.event_time if replay else None

    @property
    def rows_sent(self) -> int:
        replay = self.current_replay
        return replay.next_row if replay else 0

    @property
    def rows_total(self) -> int:
        return self.replay.rows_total if self.replay else 0

    @property
    def speedup(self) -> float | None:
        replay = self.current_replay
        return replay.speedup if replay else None

    @property
    def replay_state(self) -> str | None:
        """The replay's state; ``starting`` while only a previous run's status is on record."""
        if self.replay_is_stale:
            return "starting"
        return self.replay.state if self.replay else None

    @property
    def events_per_process(self) -> dict[tuple[str, Any, Any], int]:
        """Events each process of an event-consuming app has processed since its start, by ``(app, pid,
        started_at)``."""
        return {(name, s.get("pid"), s.get("started_at")): int(s["counters"]["events"])
                for name, app in self.apps.items() for s in self.instances.get(name) or [app]
                if "events" in s.get("counters", {})}

    @property
    def events_processed(self) -> dict[str, int]:
        """Events each event-consuming app has processed so far (since its last start; all its instances)."""
        out: dict[str, int] = {}
        for (name, _, _), count in self.events_per_process.items():
            out[name] = out.get(name, 0) + count
        return out

    @property
    def running_instances(self) -> dict[str, int]:
        """Instances of each app whose status says running and whose process is alive (a process killed with
        ``kill -9`` leaves its last status saying running)."""
        return {name: sum(1 for s in found if s.get("state") == "running" and _status_process_alive(s))
                for name, found in self.instances.items()}

    @property
    def window_anomalies(self) -> int | None:
        """Collective anomalies (flagged windows) in the lakehouse, of every run as ``anomalies`` is;
        without that read, those the apps stored since their last start (the analytics app's window
        statistics and the scoring instances' runtime residual). After a restart the status line read
        "flagged windows 0" beside the anomalies of every run while the lakehouse held 3."""
        if self.stored_window_anomalies is not None:
            return self.stored_window_anomalies
        found = [(self.apps.get("analytics") or {}).get("counters"),
                 *((s or {}).get("counters") for s in self.instances.get("scoring") or [self.apps.get("scoring")])]
        counters = [c for c in found if c is not None]
        return sum(int(c.get("window_anomalies", 0)) for c in counters) if counters else None

    @property
    def failed_trainings(self) -> list[str]:
        """Days whose training failed for good: every attempt failed, or the one run found too few usable
        rows to fit (their log: ``<home>/logs/train_<day>.log``).

        The previous model stays current; without one, the days wait for the next day's version, which
        then scores them too.
        """
        return sorted({day for day, entry in self._training_days() if entry.get("status") == "failed"})

    @property
    def trainings_due(self) -> dict[str, str]:
        """Days whose training runs or waits for its retry, with the attempts started so far."""
        due: dict[str, str] = {}
        for day, entry in self._training_days():
            if entry.get("status") in ("running", "pending"):
                attempts = int(entry.get("attempts") or 0)
                due[day] = f"{entry['status']}, {attempts} attempt{'' if attempts == 1 else 's'} started"
        return dict(sorted(due.items()))

    def _training_days(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(day, entry)`` of the trainings every scoring instance reports (its status ``info``)."""
        for found in self.instances.get("scoring") or [self.apps.get("scoring") or {}]:
            training = (found.get("info") or {}).get("training") or {}
            yield from (training.get("days") or {}).items()

    @property
    def failed_judging(self) -> dict[str, str]:
        """Settled days the scoring app's deferred step (persistent runs, runtime-residual windows) gave
        up on after repeated failures, with the error (its log: ``<home>/logs/scoring.log``)."""
        return self._scoring_info_by_day("judging_failed")

    @property
    def judged_with_unscored(self) -> dict[str, int]:
        """Settled days the deferred step judged without rows that stayed unscored (no rescoring was due for
        them: their version was deleted while it scored them), with the count of such rows."""
        return self._scoring_info_by_day("judged_with_unscored")

    def _scoring_slots(self) -> list[dict[str, Any]]:
        """The scoring instances' statuses, without those of an instance killed while running: its last words
        ("waits for a model", paused partitions) are stale once another instance took its partitions (a
        status read "waits for a model" and advised `train --waiting` for 35 s after both versions existed)."""
        slots = self.instances.get("scoring") or [self.apps.get("scoring") or {}]
        return [slot for slot in slots if slot.get("state") != "running" or _status_process_alive(slot)]

    def _scoring_info_by_day(self, key: str) -> dict[str, Any]:
        """A day-keyed ``info`` entry of every scoring instance, merged and ordered by day."""
        merged: dict[str, Any] = {}
        for found in self._scoring_slots():
            merged.update((found.get("info") or {}).get(key) or {})
        return dict(sorted(merged.items()))

    def _scoring_info(self, key: str) -> list[Any]:
        found: set[Any] = set()
        for slot in self._scoring_slots():
            found.update((slot.get("info") or {}).get(key) or [])
        return sorted(found)

    @property
    def waiting_for_model(self) -> list[str]:
        """Event days stored unscored because their version is not trained yet (all scoring instances)."""
        return self._scoring_info("waiting_for_model")

    @property
    def unreadable_versions(self) -> list[str]:
        """Model versions the scoring app skips as unreadable now (damaged): the version before each scores."""
        return self._scoring_info("unreadable_versions")

    @property
    def paused_partitions(self) -> list[int]:
        """Event-topic partitions the scoring app paused until training catches up (all its instances)."""
        return self._scoring_info("paused_partitions")

    @property
    def replay_is_stale(self) -> bool:
        """Whether the replay status is a previous run's: it predates the replay process now running.

        The state topic keeps the last status of a replay id until the new process publishes its
        first (a second or two after its start), so a new run on a home would read as "finished".
        """
        return replay_predates_process(self.replay, self.processes)

    @property
    def drained(self) -> bool:
        """The replay is done and every app has consumed everything it was sent."""
        return (bool(self.replay and not self.replay.active) and not self.replay_is_stale
                and all(v == 0 for v in self.lag.values()))

    def as_dict(self) -> dict[str, Any]:
        """A flat, JSON-friendly view (for tables and logs); a previous run's replay status is not shown as
        this run's."""
        replay = self.current_replay
        return {
            "event_time": self.event_time.isoformat() if self.event_time else None,
            "replay_state": self.replay_state,
            "rows_sent": self.rows_sent,
            "rows_total": self.rows_total,
            "speedup": self.speedup,
            "rate_now": replay.rate_now if replay else None,
            "rate_avg": replay.rate_avg if replay else None,
            "eta_seconds": replay.eta_seconds if replay else None,
            "lag": dict(self.lag),
            "model_version": self.model_version,
            "model_versions": self.model_versions,
            "model_pinned": self.model_pinned,
            "anomalies": self.anomalies,
            "window_anomalies": self.window_anomalies,
            "late_events": self.late_events,
            "dead_letters": self.dead_letters,
            "processes": {name: p.get("state") for name, p in self.processes.items()},
            "instances": self.running_instances,
            "trainer_pid": self.trainer_pid,
            "failed_trainings": self.failed_trainings,
            "failed_judging": self.failed_judging,
            "judged_with_unscored": self.judged_with_unscored,
            "unreadable_versions": self.unreadable_versions,
            "partly_trained": list(self.partly_trained),
            "waiting_for_model": self.waiting_for_model,
            "paused_partitions": self.paused_partitions,
            "disk": dict(self.disk),
        }

    def __str__(self) -> str:
        replay_process = (self.processes.get("replay") or {}).get("state")
        if self.replay_is_stale or (self.replay is None and replay_process in ("running", "starting", "pending")):
            # a first run's replay process publishes its first status 10-20 s after its start on a busy
            # machine: "not started" read as "will not run"
            lines = ["replay: starting (its first status is not in yet)"]
        else:
            lines = [str(self.replay) if self.replay else "replay: not started"]
            silent = self.replay.silence(self.taken_at) if self.replay else None
            if silent is not None:  # its figures are from before: "282 rows/s now, ETA 2m 42s" through a stall
                lines.append(f"(the replay's status is {silent:,.0f} s old, and a running replay reports every "
                             "second: its writes wait for Kafka (a broker down, fewer in-sync replicas than "
                             "min.insync.replicas), or it stopped; see logs/replay.log)")

        def count(value: int | None) -> str:  # "1,082,798": the status line read late events 1082798
            return "?" if value is None else f"{value:,}"

        lag = ", ".join(f"{name} {count(value)}" for name, value in self.lag.items())
        lines.append(f"lag (messages): {lag or '-'}")
        versions = f"{self.model_versions} version{'' if self.model_versions == 1 else 's'}"
        pin = "; pinned: scores every event" if self.model_pinned else ""
        gone = " [deleted from the registry]" if self.model_deleted else ""
        lines.append(f"model: {self.model_version or 'none yet'}{gone} ({versions}{pin}) | "
                     # None: no lakehouse yet (the sink creates it with the first anomaly), as the panel says
                     f"anomalies {count(self.anomalies) if self.anomalies is not None else 'none yet'} | "
                     f"flagged windows {count(self.window_anomalies)} | "
                     f"late events {count(self.late_events)} | dead letters {count(self.dead_letters)}")
        if self.late_events:
            lines.append(f"late events: {LATE_HINT}")
        skipped = self.replay.rows_skipped if self.replay is not None else 0
        if skipped:
            lines.append(f"a seek forward skipped {skipped:,} rows, not sent yet: {SKIPPED_HINT}")
        failed = self.failed_trainings
        if failed:
            lines.append(f"training failed for good: {', '.join(failed)} (the days after such a day are scored by "
                         "the version trained before it, or, with none before it, by the first one trained "
                         "after it; see logs/train_<day>.log in the home)")
        if self.failed_judging:
            days = "; ".join(f"{day} ({why})" for day, why in self.failed_judging.items())
            lines.append(f"judging failed, days left unjudged: {days} (see logs/scoring.log in the home)")
        if self.unreadable_versions:
            lines.append(f"model versions skipped as unreadable: {', '.join(self.unreadable_versions)} (damaged: the "
                         "version before each scores its days meanwhile, and keeps them; `workbench models list`)")
        if self.partly_trained:
            lines.append(f"model versions trained on part of their days: {'; '.join(self.partly_trained)} "
                         f"({PARTLY_TRAINED_HINT})")
        if self.judged_with_unscored:
            days = "; ".join(f"{day} ({n:,} rows)" for day, n in self.judged_with_unscored.items())
            lines.append(f"rows left unscored, judged without them: {days} (no version could score them: "
                         "see logs/scoring.log in the home)")
        waiting, paused = self.waiting_for_model, self.paused_partitions
        if waiting or paused:
            parts = [f"days {', '.join(waiting)} (waiting_for_model)"] if waiting else []
            if paused:
                parts.append(f"paused partitions {', '.join(map(str, paused))} (paused_partitions)")
            lines.append(f"scoring waits for a model: {'; '.join(parts)}")
        due = self.trainings_due
        if due:
            lines.append("training runs or waits for its retry: " + ", ".join(f"{d} ({s})" for d, s in due.items()))
        elif waiting and self.drained:
            # the replay is over, so no later day will come to finish these: say how to score them (a day
            # waiting for a retry of an earlier training was given this hint, with the wrong day)
            lines.append(f"the stream ended before passing the end of {', '.join(waiting)}, so no training is due: "
                         "`workbench train --waiting` (Workbench.train_waiting_days()) trains them from the stored "
                         "events now, and the scoring app scores them")
        def restarts(n: int) -> str:
            return f" ({n} restart{'' if n == 1 else 's'})" if n else ""

        procs = ", ".join(f"{name}: {p.get('state')}{restarts(p.get('restarts') or 0)}"
                          for name, p in self.processes.items())
        lines.append(f"processes: {procs or '-'}")
        lines.extend(f"{name} exited: {p['error']}" for name, p in self.processes.items() if p.get("error"))
        if any(len(found) > 1 for found in self.instances.values()):
            per_app = ", ".join(f"{name} {n}" for name, n in self.running_instances.items())
            lines.append(f"instances running: {per_app} | trainer pid {self.trainer_pid or '-'}")
        if self.disk:
            lines.append("disk: " + ", ".join(f"{name} {format_bytes(n)}" for name, n in self.disk.items()))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """The fields of :meth:`as_dict`, readable: rates and ETA rounded, counts with separators,
        disk use in KB/MB/GB, the event time to the second (raw, a notebook's status cell showed
        ``rate_now 37.17738630666017``, ``eta_seconds 396.3184604483333`` and bytes)."""
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(_HTML_LABELS.get(k, k.replace('_', ' ')))}"
                       f"</th><td style='text-align:left'>{html.escape(_readable(k, v))}</td></tr>"
                       for k, v in self.as_dict().items())
        return f"<table>{rows}</table>"


#: The status table's names as the panel says them (it read ``rows_sent`` beside the panel's "Log position"
#: and snake_case throughout; browser tester, 40th session); the other keys read with spaces.
_HTML_LABELS: Final = {"event_time": "replay clock", "replay_state": "replay", "rows_sent": "log position (rows)",
                       "rows_total": "rows in the log", "rate_avg": "rate (average)", "eta_seconds": "ETA",
                       "lag": "lag (messages)", "model_version": "model", "window_anomalies": "flagged windows",
                       "instances": "instances running"}


def _status_process_alive(app_status: dict[str, Any]) -> bool:
    """Whether the process that wrote ``app_status`` still runs: its pid is alive and was created before the
    status's ``started_at`` (not a later process given the same pid). A status without a pid counts as alive."""
    import psutil

    pid, started = app_status.get("pid"), app_status.get("started_at")
    if not isinstance(pid, int):
        return True
    try:
        created = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # another user's process that cannot be read: it exists
        return True
    return not isinstance(started, int | float) or created <= float(started) + 1.0


def _readable(key: str, value: Any) -> str:
    """One :meth:`WorkbenchStatus.as_dict` value as a person reads it."""
    if value is None:
        return "-"
    if key == "disk" and isinstance(value, dict):
        return ", ".join(f"{name} {format_bytes(n)}" for name, n in value.items()) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{name} {_readable(name, v)}" for name, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(_readable(key, v) for v in value) or "-"
    if key == "event_time" and isinstance(value, str):
        try:
            return f"{datetime.fromisoformat(value):%Y-%m-%d %H:%M:%S} UTC"
        except ValueError:
            return value
    if key == "speedup" and isinstance(value, int | float) and not isinstance(value, bool):
        return format_speed(value)
    if isinstance(value, bool):
        return str(value)
    if key.endswith("pid") and isinstance(value, int):
        return str(value)  # a name, not a quantity: "trainer_pid 10,018" read as a count
    if key in ("rate_now", "rate_avg") and isinstance(value, int | float):
        return f"{value:,.1f} rows/s"  # a tester read "rate_now 0.0" without a unit
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if key == "eta_seconds":
            return f"{value:,.0f} s"
        return f"{value:,.1f}"
    return str(value)
