"""The scoring app: wires the sink, the publisher, rescoring and the training schedule into Quix.

Each event is scored by the version of its own event day (:mod:`workbench.ml.selection`); days
whose version does not exist yet are stored unscored and rescored once it does (``_rescore``);
partitions that get too far ahead of training pause (``_pacing``); training follows the slowest
delivering partition (``ScoringSink.watermark_us``); settled days are compacted (``_maintenance``).
The per-poll and after-flush step of the running app is the mixin in ``_loop``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

from quixstreams import Application

from workbench import defaults
from workbench.config import Settings
from workbench.pipeline._app import WorkbenchApp, build_application
from workbench.pipeline._deadletter import DeadLetters
from workbench.pipeline._decode import event_topic
from workbench.pipeline._names import app_state_dir, consumer_group
from workbench.pipeline._quix import (
    assigned_partitions,
    consume_in_batches,
    force_checkpoint,
    low_offsets,
    on_assignment,
    partition_flow,
    register_periodic,
)
from workbench.pipeline._skipped import SkippedOffsets
from workbench.pipeline._status import AppResult, AppStatus
from workbench.pipeline.exceptions import PipelineConfigError
from workbench.pipeline.scoring._collector import BatchCollector
from workbench.pipeline.scoring._days import UNSCORED_FILE, UnscoredDays
from workbench.pipeline.scoring._loop import ScoringLoop
from workbench.pipeline.scoring._maintenance import ShardMaintenance, TrainerElection, adopt_unscored_days
from workbench.pipeline.scoring._pacing import PartitionPacer
from workbench.pipeline.scoring._publisher import AnomalyPublisher
from workbench.pipeline.scoring._rescore import Rescorer
from workbench.pipeline.scoring._resume import ResumeProbe
from workbench.pipeline.scoring._sink import ScoringSink
from workbench.pipeline.scoring._training import TrainingSchedule

__all__ = ["APP_NAME", "ScoringApp", "run_scoring"]

APP_NAME: Final = "scoring"
#: Messages per consume call: JSON one-per-message pays the loop once per 256 events; packed
#: messages (100 rows) still give batches near ``batch_rows``.
_CONSUME_MESSAGES: Final = 256


class ScoringApp(ScoringLoop, WorkbenchApp):
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
    max_train_rows : int, default=defaults.TRAIN_MAX_ROWS
        Row cap of one training.
    training_backoff_s : float, default=60.0
        Delay before retrying a failed or killed training (doubles per attempt).
    max_training_attempts : int, default=3
        Attempts per day before the supervisor gives up (the previous version stays current).
    training_grace_s : float, default=600.0
        Event-time seconds past midnight before the finished day is trained (lets the other
        partitions deliver that day's last events).
    group : str, optional
        Consumer group (default ``<consumer_group_prefix>-scoring``).
    intra_op_threads : int, default=2
        ONNX Runtime threads per session.
    status_interval : float, default=1.0
        Least seconds between two writes of the status file.
    """

    def __init__(self, settings: Settings, *, batch_rows: int = defaults.SCORING_BATCH_ROWS,
                 batch_seconds: float = defaults.SCORING_BATCH_SECONDS, every_n_days: int = defaults.TRAIN_EVERY_N_DAYS,
                 window_days: int = defaults.TRAIN_WINDOW_DAYS, train: bool = True,
                 max_train_rows: int = defaults.TRAIN_MAX_ROWS,
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
        self.unscored = UnscoredDays(app_state_dir(settings, APP_NAME, self.status.instance) / UNSCORED_FILE)
        adopt_unscored_days(settings, self.unscored)
        self.rescorer = Rescorer(settings, self.unscored, self.status)
        self.schedule: TrainingSchedule | None = None
        self._idle_exit: float | None = None
        self._started = 0.0
        self._assigned_at: float | None = None  # the last rebalance that gave the consumer its partitions
        self._last_slow_tick = 0.0
        self._watermark_held = False
        self._force_commit: Callable[[], None] | None = None
        self.maintenance = ShardMaintenance(settings, self.status, window_days, self.unscored.snapshot)
        self.election: TrainerElection | None = None  # N instances, one home: one of them trains
        self.pacer: PartitionPacer | None = None
        self._warmup_s = max(2.0, 4 * self.batch_seconds)  # every partition with data delivers once
        # Quix's sink backpressure (hold a batch whose day is not accepted) stays off: it pauses and
        # rewinds *all* partitions, so holding a fast one also stops the slow one the watermark
        # waits for (deadlock). Not-ready days are stored unscored instead; see _pacing.
        self.hold_days = False

    # --- lifecycle --------------------------------------------------------------------------------
    def build(self) -> Application:
        """Declare the Quix pipeline; returns the Application (not started)."""
        from workbench.broker import ensure_topics
        from workbench.ml.scorer import Scorer
        from workbench.ml.supervisor import TrainingSupervisor
        from workbench.store.shards import list_days

        ensure_topics(self.settings)
        app = build_application(self.settings, APP_NAME, group=self.group, commit_interval=self.batch_seconds,
                                use_changelog_topics=False, on_processing_error=self.on_processing_error)
        self.dead_letters = DeadLetters(self.settings, APP_NAME, app.get_producer())
        self.publisher = AnomalyPublisher(self.settings)
        self.publisher.connect()  # while the consumer joins its group, not on the first batch
        self.scorer = Scorer(self.settings.models_dir, intra_op_threads=self.intra_op_threads, by_event_time=True,
                             cadence=self._cadence)  # each event day gets its version (workbench.ml.selection)
        if self.train:
            self.supervisor = TrainingSupervisor(self.settings, every_n_days=self.every_n_days,
                                                 window_days=self.window_days, max_rows=self.max_train_rows,
                                                 max_attempts=self.max_training_attempts,
                                                 backoff_seconds=self.training_backoff_s)
            shards_dir = self.settings.shards_dir
            self.schedule = TrainingSchedule(self.supervisor, self.status, self.training_grace_us,
                                             stored_days=lambda: list_days(shards_dir))
        self.sink = ScoringSink(self.settings, self.scorer, self.publisher, self.dead_letters, self.status,
                                self.unscored, batch_rows=self.batch_rows)
        self.sink.on_flushed = self._after_flush
        self.sink.hold_day = self._hold_day
        for name in ("events", "scored", "unscored", "rescored", "anomalies", "stream_anomalies", "rescore_anomalies",
                     "batches", "shards", "dead_letters", "events_while_training"):
            self.status.counters.setdefault(name, 0)  # the rescoring thread never inserts keys
        if self.supervisor is not None:
            supervisor = self.supervisor
            self.sink.training_running = lambda: supervisor.running
        topic = event_topic(app, self.settings)
        if self.schedule is not None:
            self.pacer = PartitionPacer(partition_flow(app), topic.name, self.status)
            self.election = TrainerElection(self.settings, self.status, assigned_partitions(app, topic.name),
                                            group=self.group or consumer_group(self.settings, APP_NAME))
            self.supervisor.is_trainer = lambda: self._trains  # its reaper thread starts runs only while elected
            self.election.tick(self.sink, self.supervisor, self._warmup_s, force=True)
            if list_days(self.settings.shards_dir):  # a restart: resume the schedule from the shards
                self.schedule.resume_probe = ResumeProbe(self.settings, topic.name,
                                                         self.group or consumer_group(self.settings, APP_NAME))
        sdf = app.dataframe(topic)
        sdf.sink(self.sink)  # registers the sink with Quix's checkpoints (flush before commit)
        # the whole dataframe is this sink: skip Quix's per-message machinery (see consume_in_batches)
        consume_in_batches(app, self.sink.add_messages, max_messages=_CONSUME_MESSAGES,
                           on_skipped=SkippedOffsets(low_offsets(app), self.dead_letters, self.status))
        on_assignment(app, self._note_assignment)  # the idle clock (idle_exit) starts there
        register_periodic(app, self._tick)
        self._force_commit = force_checkpoint(app)
        self.status.info.update({"topic": self.settings.topic_query_events, "anomalies": self.settings.topic_anomalies,
                                 "shards_dir": str(self.settings.shards_dir), "batch_rows": self.batch_rows,
                                 "batch_seconds": self.batch_seconds, "every_n_days": self.every_n_days,
                                 "window_days": self.window_days,
                                 "model_version": self.scorer.current_name})  # no model load before a batch
        self.app = app
        return app

    def run(self, *, timeout: float | None = None, idle_exit: float | None = None,
            count: int | None = None) -> AppResult:
        """Run in the main thread until stopped, ``timeout`` s of wall time, or idle.

        Idle means: no message for ``idle_exit`` s (counted from the last message or the consumer's
        last assignment, whichever came later, as Quix's own idle timeout), nothing buffered, no
        training running or pending (after a restart: the schedule resumed from the shards, see ``_resume``), and no
        unscored rows left that a model could score (the app checks this itself, so Quix's own idle
        timeout is not used). Offsets are committed (after the last flush) when the run ends.
        """
        self._idle_exit = idle_exit
        if self.app is None:
            self.build()
        self._started = time.monotonic()
        self._assigned_at = None  # a run joins the group again
        with BatchCollector.paced():  # the sink collects between batches (see _collector)
            return super().run(timeout=timeout, idle_exit=None, count=count)

    def _after_run(self) -> None:
        self.rescorer.join()

    def _cleanup(self) -> None:
        if self.schedule is not None and self._trains:
            self.schedule.poll()
        if self.supervisor is not None:
            self.supervisor.close()  # the warm standby trainer goes; a running training keeps running
        self.maintenance.join(60)  # before the lease goes: the next trainer compacts what is left
        if self.election is not None:
            self.election.close()
        if self.publisher is not None:
            self.publisher.close()
        self._sink_info()
        if self.scorer is not None:
            self.status.info["model_version"] = self.scorer.current_name  # the CURRENT pointer, no load
        self._sum_anomalies()

    def _result(self) -> AppResult:
        return AppResult(dict(self.status.counters), dict(self.status.info))




def run_scoring(settings: Settings, *, timeout: float | None = None, idle_exit: float | None = None,
                batch_rows: int = defaults.SCORING_BATCH_ROWS, batch_seconds: float = defaults.SCORING_BATCH_SECONDS,
                every_n_days: int = defaults.TRAIN_EVERY_N_DAYS, window_days: int = defaults.TRAIN_WINDOW_DAYS,
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
