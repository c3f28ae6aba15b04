"""The scoring app's periodic step: what runs after every poll and after every flush.

Split out of ``_app`` (the wiring and lifecycle) so each module has one job: this mixin holds
the running app's per-poll work (flushes forced by a full batch or an empty poll, trainer
election, training hand-off, pacing, rescoring, idle exit) and the status figures it publishes.
:class:`ScoringApp` sets every attribute it uses (``__init__``/``build``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
from quixstreams import Application

from workbench.pipeline._status import AppStatus
from workbench.pipeline.scoring._maintenance import ShardMaintenance, TrainerElection
from workbench.pipeline.scoring._pacing import PartitionPacer, held_day
from workbench.pipeline.scoring._rescore import Rescorer
from workbench.pipeline.scoring._sink import ScoringSink
from workbench.pipeline.scoring._training import TrainingSchedule, day_of, us_to_iso

__all__ = ["ScoringLoop"]

logger = logging.getLogger(__name__)

#: Seconds an app with ``idle_exit`` waits for its first assignment before its idle clock runs anyway
#: (Quix's own idle timeout waits as long), so one that never joins its group still ends.
FIRST_ASSIGNMENT_WAIT_S = 60.0
#: Seconds a trained day's version must stay unreadable before the selection rule takes it for gone.
GONE_AFTER_S = 30.0


class ScoringLoop:
    """The per-poll and after-flush methods of :class:`~workbench.pipeline.scoring.ScoringApp`."""

    # set by ScoringApp.__init__ / ScoringApp.build
    app: Application | None
    sink: ScoringSink | None
    scorer: Any
    supervisor: Any
    status: AppStatus
    rescorer: Rescorer
    schedule: TrainingSchedule | None
    maintenance: ShardMaintenance
    election: TrainerElection | None
    pacer: PartitionPacer | None
    training_grace_us: int
    hold_days: bool
    _idle_exit: float | None
    _started: float
    _assigned_at: float | None
    _last_slow_tick: float
    _watermark_held: bool
    _force_commit: Callable[[], None] | None
    _warmup_s: float
    batch_seconds: float

    @property
    def _idle_flush_gap(self) -> float:
        """Least seconds between two flushes forced by an empty poll.

        A poll that comes back empty (nothing for ``consumer_poll_timeout``) means the stream
        paused: holding its partial batch until the checkpoint only delays its anomalies and its
        commit (at the end of a drain, up to ``batch_seconds``). The gap keeps the flushes, and so
        the small shards, of a trickling stream within four per ``batch_seconds``.
        """
        return self.batch_seconds / 4

    def _tick(self) -> None:
        """Called after every poll: force a flush when a batch is full or the poll came back empty; cheap otherwise."""
        sink = self.sink
        now = time.monotonic()
        if sink is not None and self._force_commit is not None:
            idle_poll = not sink.take_delivered()
            if sink.size_due or (idle_poll and sink.buffered_rows and now - sink.last_flush_at >= self._idle_flush_gap):
                self._force_commit()
        if now - self._last_slow_tick < 0.2:
            return
        self._last_slow_tick = now
        if self.election is not None and self.sink is not None:
            self.election.tick(self.sink, self.supervisor, self._warmup_s)
        self._after_flush()  # the watermark also moves when partitions fall idle (maintenance, training)
        if self.schedule is not None:
            if self.pacer is not None and self.sink is not None:
                self.pacer.pace(self.sink, self.scorer, self._cadence())
            if self._trains:
                self.schedule.poll()
        self.rescorer.maybe_start(self.scorer, self._cadence())
        self.rescorer.raise_error()
        self._sum_anomalies()
        self._sink_info()
        self.status.maybe_publish()
        if self._idle_exit is not None and self.app is not None and self._idle():
            logger.info("scoring idle for %.1fs with nothing pending: stopping", self._idle_exit)
            self.app.stop()

    @property
    def _trains(self) -> bool:
        """Whether this instance is the elected trainer (always, without an election)."""
        return self.election is None or self.election.leader

    def _after_flush(self) -> None:
        """Hand finished days to training, then compact settled shard days (the sink just flushed).

        Every instance records its partitions' progress; only the elected trainer compacts and
        schedules, from the watermark of *all* partitions (:func:`~workbench.store.shards.cluster_watermark`).
        Training first: the next day's training is the drain's critical path (partitions wait paused
        for its model), so a training that ended is reaped and the next one started before anything
        else here; the compaction runs in a thread of its own (:class:`ShardMaintenance`).
        """
        sink = self.sink
        if sink is None:
            return
        stored = sink.take_days_stored()
        if self._trains:  # only the trainer's maintenance judges days (another instance's notes never clear)
            self.maintenance.note_stored(stored)
        if self.election is not None:
            self.election.note_written(stored)  # in the heartbeats: the trainer judges such days again
            self.election.record(sink)
            if not self.election.leader:
                return
            clock = self.election.clock()
            first_us, watermark, ended_us = clock.first_us, clock.watermark_us, clock.ended_us
            self.maintenance.note_written(clock.written)  # every instance's writes, this one's included
        else:
            first_us, watermark = sink.first_event_us, sink.watermark_us(self._warmup_s)
            ended_us = sink.log_ended_us()
            # a partition that stored its last batch less than warm-up ago still holds the watermark below
            # the newest event: the day that event settles has not reached the maintenance yet
            self._watermark_held = watermark is not None and watermark != sink.max_event_us
        if self.schedule is not None:  # after a restart: the stored watermark, once
            quiet = not sink.buffered_rows and time.monotonic() - sink.last_message_at >= self._warmup_s
            watermark = self.schedule.resumed_watermark(watermark, quiet=quiet)
        if watermark is None:
            return
        if self.schedule is not None:  # warm-up from the first message: joining the group can take longer
            self.schedule.after_flush(first_us, watermark, warming_up=self._warming_up)
            self.schedule.poll()  # a training that ended is reaped and the next due one starts now
        if not self._warming_up:  # as for training: a partition not heard from yet holds nothing back
            # a log that ended: its last day is judged too (never trained on: training waits for a later
            # day's events, as live)
            self.maintenance.run(day_of(watermark - self.training_grace_us), ended_us=ended_us)

    @property
    def _warming_up(self) -> bool:
        """Less than the warm-up since the first message: a partition with data may not have delivered yet,
        and a partition never heard from does not hold the watermark back (a day it passes may be partial)."""
        sink = self.sink
        return sink is not None and time.time() - (sink.first_message_wall or 0.0) < self._warmup_s

    def _cadence(self) -> Any:
        """The training cadence the selection rule needs (None without training or before the first event).

        A trained day whose version this process does not see is taken for gone (deleted or damaged: the
        rule then skips it) only once it has been missing for :data:`GONE_AFTER_S`: a registry on a shared
        filesystem can list a new version seconds after the training state says it is done, and the
        rule must not score that day's successors with the version before it meanwhile.
        """
        cadence = None if self.schedule is None else self.schedule.cadence()
        missing_since: dict[Any, float] = self.__dict__.setdefault("_missing_since", {})
        if cadence is None or self.scorer is None or not cadence.done_days:
            missing_since.clear()
            return cadence
        missing = cadence.done_days - {w.end for w in self.scorer.windows}
        now = time.monotonic()
        for day in set(missing_since) - missing:
            del missing_since[day]
        settling = frozenset(d for d in missing if now - missing_since.setdefault(d, now) < GONE_AFTER_S)
        return dataclasses.replace(cadence, done_days=cadence.done_days - settling) if settling else cadence

    def _hold_day(self, table: pa.Table) -> str | None:
        # Only the trainer writes the training state; the others follow it (TrainerElection.tick).
        return held_day(table, self.scorer, self.schedule if self._trains else None, hold=self.hold_days)

    def _sink_info(self) -> None:
        sink = self.sink
        if sink is None:
            return
        self.status.info["timings_s"] = {k: round(v, 3) for k, v in sink.timings.items()}
        # a damaged version's days are scored by the version before it: only the log said so
        self.status.info["unreadable_versions"] = getattr(self.scorer, "unreadable_versions", [])
        self.status.info["max_event_time"] = None if sink.max_event_us is None else us_to_iso(sink.max_event_us)
        self.status.info["first_message_at"] = sink.first_message_wall
        self.status.info["last_batch_at"] = sink.last_batch_wall
        # what Workbench.wait() waits for after a Reset: the days judged again once their rows stop coming
        self.status.info["judging_again"] = self.maintenance.residuals.grown_days() if self._trains else []
        # the newest day judged: a judged day that yields no runtime-residual window (all-zero runtimes, a sparse
        # log) stores nothing, and Workbench.wait() waited 300 s for the store to show it
        done = self.maintenance.residuals.done_through if self._trains else None
        self.status.info["judged_through"] = None if done is None else done.isoformat()
        if sink.first_message_cpu is not None and sink.last_batch_cpu is not None:
            self.status.info["cpu_s_first_to_last_batch"] = round(sink.last_batch_cpu - sink.first_message_cpu, 3)

    def _sum_anomalies(self) -> None:
        counters = self.status.counters
        counters["anomalies"] = counters.get("stream_anomalies", 0) + counters.get("rescore_anomalies", 0)

    def _note_assignment(self) -> None:
        """A rebalance gave the consumer its partitions (possibly none): the idle clock starts over, and the
        offset bases are read again."""
        self._assigned_at = time.monotonic()
        if self.sink is not None:
            self.sink.forget_offset_bases()

    def _idle(self) -> bool:
        sink = self.sink
        assert sink is not None and self._idle_exit is not None
        # Idle since the last message or the last assignment, whichever came later: no message can come
        # before the consumer holds its partitions, and a restarted app waits for the group to drop its
        # killed predecessor (the session timeout) first; counted from the run's start, it stopped
        # before its first message. Without any assignment yet it waits as long as Quix's own idle
        # timeout does.
        assigned = self._assigned_at if self._assigned_at is not None else self._started + FIRST_ASSIGNMENT_WAIT_S
        last = max(sink.last_message_at, assigned)
        if time.monotonic() - last < self._idle_exit or sink.buffered_rows:
            return False
        if self.rescorer.running or (self.schedule is not None and self.schedule.busy):
            return False
        if self.pacer is not None and self.pacer.paused:  # a paused partition still has events to deliver
            return False
        # The days the stream settled reach the maintenance only after the warm-up, and the newest event
        # only once its partition's last stored batch is a warm-up old; the idle clock starts at the last
        # message's receipt, which can be earlier: with idle_exit no longer than the warm-up the app could
        # stop first, and a run missed a settled day's residual windows and persistent runs.
        if self._watermark_held or self._warming_up:
            return False
        # a settled day whose rows waited for rescoring gets one more residual pass after the rescoring: one
        # that started after the rescoring thread took its days out of the unscored set (a pass that overlapped
        # the thread's end can still have found the day waiting)
        residuals = self.maintenance.residuals
        if self.maintenance.running or (residuals.pending is not None
                                        and residuals.last_try <= self.rescorer.finished_at):
            return False
        if residuals.grown:  # a judged day written to since waits for its quiet time, then is judged again
            return False
        return not self.rescorer.ready_days(self.scorer, self._cadence())
