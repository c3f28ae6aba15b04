"""Compaction and retention of settled shard days, once per event-time day; the trainer election.

The same thread then stores and judges the settled days' runtime-residual windows
(:mod:`._residuals`: ``window_residuals`` and the lakehouse's ``window_anomalies``).

Once the event-time watermark (minus the training grace) enters a new day,
:func:`workbench.store.shards.maintain` compacts the days that are a day past their end into one
file per partition and deletes days older than ``shard_retention_days`` (never fewer than the
training window + 1 days, so training always finds its window), in a thread of its own.

N scoring instances on one home (:class:`TrainerElection`): every instance scores, stores its
partitions' shards and records their progress; exactly one, the holder of the registry's
:class:`~workbench.ml.registry.TrainerLease`, schedules trainings and compacts, from the
watermark of every partition (:func:`~workbench.store.shards.cluster_watermark`). The others
follow the trainer's training state (the selection cadence) and hot-swap the versions it
registers. When the trainer stops or dies, the next instance to try takes the lease over. On
several machines (``WORKBENCH_TRAINER_ELECTION=broker``, the default when ``WORKBENCH_MODELS_DIR``
or ``WORKBENCH_SHARDS_DIR`` is set) the lease is partition 0 of a one-partition Kafka topic instead of a file
lock (:mod:`workbench.pipeline.scoring._election`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from workbench.config import Settings
from workbench.pipeline._status import AppStatus
from workbench.store.exceptions import LakehouseBusyError

if TYPE_CHECKING:
    from workbench.store.shards import ShardClock

__all__ = ["ShardMaintenance", "TrainerElection", "adopt_unscored_days", "trainer_lease"]

logger = logging.getLogger(__name__)

#: Seconds a heartbeat keeps naming a day this instance wrote (the trainer reads the heartbeats at
#: every flush; a trainer that starts later judges again the days written within this span).
WRITTEN_KEEP_S = 600.0

#: Seconds without a write after which a day a replay sent again is compacted (its pass is over).
QUIET_COMPACT_S = 10.0


class ShardMaintenance:
    """Runs :func:`~workbench.store.shards.maintain` in a thread of its own when the watermark day moves,
    then the settled days' runtime-residual windows (:class:`._residuals.ResidualWindowsStep`).

    Not in the scoring loop: a compaction reads and rewrites whole days and waits for each day's
    lock, which the rescoring threads of every instance take file by file; in the loop it held
    consumption, and the start of the next training, for 2-19 s at every day in the scale benchmark.
    Shard writers and readers already run beside it (day locks; readers skip covered files). A
    settled day whose rows still wait for rescoring is tried again (every ``retry_s``) until stored.
    """

    def __init__(self, settings: Settings, status: AppStatus, window_days: int,
                 waiting_days: Callable[[], set[str]] | None = None) -> None:
        from workbench.pipeline.scoring._residuals import ResidualWindowsStep

        self.settings = settings
        self.status = status
        self.window_days = window_days
        self.done_for: tuple[dt.date, int | None] | None = None  # (watermark, ended_us) of the last pass
        self.thread: threading.Thread | None = None
        self.residuals = ResidualWindowsStep(settings, status, waiting_days=waiting_days)
        self.quiet_s = QUIET_COMPACT_S
        self._written: dict[dt.date, float] = {}  # day -> wall time of the last write any writer reported
        self._compacted: dict[dt.date, float] = {}  # day -> wall time its last compaction pass began
        self._written_lock = threading.Lock()
        for name in ("shard_days_compacted", "shard_days_deleted"):
            status.counters.setdefault(name, 0)  # the thread never inserts keys

    @property
    def running(self) -> bool:
        """True while a maintenance pass works."""
        return self.thread is not None and self.thread.is_alive()

    def run(self, watermark: dt.date, *, ended_us: int | None = None) -> None:
        """Start compacting and applying retention for ``watermark`` (a no-op when done for that day or
        while a pass runs: the next call after it catches up).

        The residual step judges the days before ``watermark`` and, once every partition said the log
        ended (``ended_us``, its last event), the log's last day too, though no later event settles
        it (:meth:`._residuals.ResidualWindowsStep.run`). Compaction and retention keep to ``watermark``.
        """
        if self.running:
            return
        quiet = self.quiet_days(watermark, ended_us)
        if ((watermark, ended_us) == self.done_for and not quiet and not self.residuals.due()
                and not self.residuals.grown_due()):
            return
        self.done_for = (watermark, ended_us)
        self.thread = threading.Thread(target=self._maintain, args=(watermark, ended_us, quiet),
                                       name="shard-maintenance", daemon=True)
        self.thread.start()

    def note_stored(self, days: set[dt.date]) -> None:
        """Event days the sink wrote since the last call: a day judged already is judged again
        (:meth:`._residuals.ResidualWindowsStep.note_stored`), and compacted once quiet."""
        self._note_writes(dict.fromkeys(days, time.time()))
        self.residuals.note_stored(days)

    def note_written(self, written: Mapping[dt.date, float]) -> None:
        """Event days every scoring instance reported writing, with the wall time of the last write
        (:attr:`~workbench.store.shards.ShardClock.written`; :meth:`._residuals.ResidualWindowsStep.note_written`)."""
        self._note_writes(written)
        self.residuals.note_written(written)

    def _note_writes(self, written: Mapping[dt.date, float]) -> None:
        with self._written_lock:
            for day, at in written.items():
                self._written[day] = max(at, self._written.get(day, 0.0))

    def quiet_days(self, watermark: dt.date, ended_us: int | None) -> set[dt.date]:
        """Days written since their last compaction pass and quiet for ``quiet_s`` that are settled: up to
        the last day of a log that ended, or before it ended the days the watermark settled (those it
        compacts). A Reset or seek back sent them again, and the watermark, standing at the log's end,
        never settles them again: their files piled up a whole copy of the log per pass, for good
        (:func:`~workbench.store.shards.compact_day`). The first pass of a log is compacted as ever."""
        from workbench.pipeline.scoring._training import day_of

        last = watermark - dt.timedelta(days=2) if ended_us is None else max(watermark, day_of(ended_us))
        now = time.time()
        with self._written_lock:
            return {day for day, at in self._written.items()
                    if day <= last and now - at >= self.quiet_s and at >= self._compacted.get(day, float("-inf"))}

    def join(self, timeout: float | None = None) -> None:
        """Wait for a running pass (a pass cut short is safe: see :func:`~workbench.store.shards.compact_day`)."""
        if self.thread is not None:
            self.thread.join(timeout)

    def _maintain(self, watermark: dt.date, ended_us: int | None = None, quiet: set[dt.date] | None = None) -> None:
        from workbench.store.shards import maintain

        began = time.time()

        keep = self.settings.shard_retention_days
        if keep is not None and keep <= self.window_days:
            logger.warning("shard_retention_days=%d is shorter than the training window; keeping %d days",
                           keep, self.window_days + 1)
            keep = self.window_days + 1
        try:
            done = maintain(self.settings.shards_dir, watermark, retention_days=keep, also=quiet or ())
        except Exception:  # a full disk, a busy object store: the next watermark day tries again
            logger.exception("shard maintenance failed watermark=%s; retried when the watermark moves", watermark)
            self.done_for = None
        else:
            with self._written_lock:  # a write after `began` makes the day due again
                self._compacted.update(dict.fromkeys(quiet or (), began))
            self.status.add("shard_days_compacted", len(done["compacted"]))
            self.status.add("shard_days_deleted", len(done["deleted"]))
        try:
            self.residuals.run(watermark, ended_us=ended_us)
        except LakehouseBusyError as exc:  # another writer's commit or a lock held: expected, said in one line
            logger.warning("residual windows: the lakehouse was busy (%s); nothing was written, the next pass "
                           "writes it", exc)
        except Exception:  # a full disk, a store away: the day stays pending and is tried again
            logger.exception("residual windows failed watermark=%s; retried", watermark)


def heartbeat_id(settings: Settings, slot: int) -> int | str:
    """The name of a scoring instance's heartbeat among every writer of the shards.

    The slot when the shards are in the home (one machine); with shards shared by several homes
    (``WORKBENCH_SHARDS_DIR``), slots repeat across machines, so the host and home join the name.
    """
    if settings.shards_dir_override is None:
        return slot
    home = hashlib.sha256(str(settings.home).encode()).hexdigest()[:8]
    return f"{socket.gethostname()}-{home}-{slot}"


def trainer_lease(settings: Settings, group: str | None = None) -> Any:
    """The lease the scoring processes compete for, by ``settings.trainer_election_mode``.

    ``lock``: :class:`~workbench.ml.registry.TrainerLease` (a file lock in the models folder);
    ``broker``: :class:`~workbench.pipeline.scoring._election.BrokerLease` (partition 0 of a
    one-partition topic, fenced by the group generation). Both have ``held``, ``try_acquire()``
    and ``release()``.
    """
    if settings.trainer_election_mode == "broker":
        from workbench.pipeline._names import consumer_group
        from workbench.pipeline.scoring._election import BrokerLease

        return BrokerLease(settings, group or consumer_group(settings, "scoring"))
    from workbench.ml.registry import TrainerLease

    return TrainerLease(settings.models_dir)


class TrainerElection:
    """This scoring instance's part in the one-trainer election (see the module docstring).

    Parameters
    ----------
    settings : Settings
        ``models_dir`` (the lease) and ``shards_dir`` (progress and heartbeats).
    status : AppStatus
        Its ``instance`` slot names the heartbeat; ``info["trainer"]`` shows the role.
    assignment : callable
        The event-topic partitions the consumer holds now (:func:`workbench.pipeline._quix.assigned_partitions`).
    heartbeat_s : float
        Seconds between heartbeats (and lease attempts).
    alive_s : float
        A heartbeat older than this is a dead instance: its partitions hold the watermark.
    group : str, optional
        The scoring app's consumer group (default ``<consumer_group_prefix>-scoring``): the broker election's
        group derives from it.
    """

    def __init__(self, settings: Settings, status: AppStatus, assignment: Callable[[], list[int]], *,
                 heartbeat_s: float = 1.0, alive_s: float = 15.0, group: str | None = None) -> None:
        self.settings = settings
        self.status = status
        self.assignment = assignment
        self.heartbeat_s = heartbeat_s
        self.alive_s = alive_s
        self.lease = trainer_lease(settings, group)
        self.heartbeat_id = heartbeat_id(settings, status.instance)
        self._assigned_since: dict[int, float] = {}
        self._recorded: dict[int, tuple[int | None, int | None]] = {}
        self._last = 0.0
        #: event day -> wall time after this instance's last write of its rows (kept WRITTEN_KEEP_S)
        self.written: dict[dt.date, float] = {}

    @property
    def leader(self) -> bool:
        """Whether this instance is the elected trainer."""
        return self.lease.held

    def note_written(self, days: set[dt.date]) -> None:
        """This instance stored rows of ``days`` just now (the sink flushed): the next heartbeats say so,
        so the trainer judges such a day again if it judged it before (:attr:`ShardClock.written`)."""
        now = time.time()
        for day in days:
            self.written[day] = now

    def tick(self, sink: Any, supervisor: Any, active_s: float, *, force: bool = False) -> None:
        """About once a second: heartbeat (assigned and idle partitions), then try the lease or follow.

        A partition is idle when it delivered nothing for ``active_s`` since it was assigned here
        and the pacer has not paused it (the rule of :meth:`ScoringSink.watermark_us`, across instances).
        """
        now = time.monotonic()
        if not force and now - self._last < self.heartbeat_s:
            return
        self._last = now
        try:
            assigned = set(self.assignment())
        except Exception as exc:  # the consumer is between assignments: report nothing as idle
            logger.debug("cannot read the consumer assignment: %s", exc)
            assigned = set()
        for partition in assigned - set(self._assigned_since):
            self._assigned_since[partition] = now
        for partition in set(self._assigned_since) - assigned:
            del self._assigned_since[partition]
        seen = getattr(sink, "partition_seen", {}) if sink is not None else {}
        held = getattr(sink, "held_partitions", set()) if sink is not None else set()  # paused: not caught up

        def silent(p: int) -> float:  # while listening: a flush is no silence (ScoringSink.silent_s)
            return sink.silent_s(p, now) if hasattr(sink, "silent_s") else now - seen[p]

        idle = {p for p, since in self._assigned_since.items()
                if p not in held and now - since >= active_s and (p not in seen or silent(p) >= active_s)}
        from workbench.store.shards import write_heartbeat

        wall = time.time()
        self.written = {day: at for day, at in self.written.items() if wall - at < WRITTEN_KEEP_S}
        try:
            write_heartbeat(self.settings.shards_dir, self.heartbeat_id, assigned=assigned, idle=idle,
                            written=self.written)
        except OSError as exc:  # a missed heartbeat only makes the watermark wait
            logger.warning("cannot write the scoring heartbeat: %s", exc)
        if not self.lease.held and self.lease.try_acquire():
            logger.info("this scoring instance (slot %d) is the trainer now", self.status.instance)
            supervisor.reload()  # take over the state the previous trainer left
        elif not self.lease.held:
            supervisor.reload()  # follow the trainer: cadence, running and finished days
        self.status.info["trainer"] = self.lease.held
        self.status.info["assigned_partitions"] = sorted(assigned)

    def record(self, sink: Any) -> None:
        """Record the stored progress of this instance's partitions (the sink just flushed)."""
        from workbench.store.shards import record_progress

        first = sink.first_event_us
        ends = sink.partition_end_us
        for partition in sorted(set(sink.partition_max_us) | set(ends)):
            newest, end = sink.partition_max_us.get(partition), ends.get(partition)
            if self._recorded.get(partition) == (newest, end):
                continue
            record_progress(self.settings.shards_dir, partition,
                            first_us=newest if first is None or newest is None else first, max_us=newest,
                            end_us=end)
            self._recorded[partition] = (newest, end)

    def clock(self) -> ShardClock:
        """The trainer's clock over every partition of the home (:class:`~workbench.store.shards.ShardClock`)."""
        from workbench.store.shards import cluster_clock

        return cluster_clock(self.settings.shards_dir, alive_s=self.alive_s)

    def close(self) -> None:
        """The instance stops: drop the heartbeat and the lease (another instance takes it over)."""
        from workbench.store.shards import remove_heartbeat

        remove_heartbeat(self.settings.shards_dir, self.heartbeat_id)
        self.lease.release()


def adopt_unscored_days(settings: Settings, unscored: Any) -> set[str]:
    """Take over the unscored days of scoring slots no process holds (an instance that is gone for good).

    Their days join ``unscored`` (this instance rescores them) before their files are emptied, so a
    crash in between only rescores a day twice. Returns the days adopted.
    """
    from workbench.pipeline._instance import idle_slots
    from workbench.pipeline.scoring._days import UNSCORED_FILE, UnscoredDays

    adopted: set[str] = set()
    with idle_slots(settings.state_dir, "scoring") as slots:
        for slot, folder in slots.items():
            path = folder / UNSCORED_FILE
            if not path.is_file():
                continue
            other = UnscoredDays(path)
            days = other.snapshot()
            if days:
                unscored.add(days)
                other.remove(days)
                adopted |= days
                logger.info("adopted unscored days of idle scoring slot %d: %s", slot, sorted(days))
    return adopted
