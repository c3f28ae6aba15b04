"""The replay: a sorted Parquet query log turned into a paced stream on ``redshift.query_events``.

Exactly-once by construction: every batch of events is produced inside one Kafka transaction
together with the replay's new position (on the compacted state topic). A replay killed at
any point resumes from the last committed position, and consumers reading committed data
(``isolation.level=read_committed``) never see a row twice nor miss one.

A row the replay cannot send (found by the same rules as ``workbench validate``, or failing to
encode) goes to the dead-letter topic, with its reason, in the transaction that moves the
position past it: it is dead-lettered exactly once and can never stop the replay in a loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from workbench import defaults
from workbench.broker import IncompleteReadError, ensure_topics, quiet_logs, read_range, when_ready
from workbench.config import Settings, get_settings
from workbench.data import COLUMNS, codec
from workbench.data.validation import MAX_EVENT_TIME, conform, find_bad_rows
from workbench.replay._control import (
    Command,
    InvalidCommand,
    ReplayStatus,
    _parse_time,
    latest_state_value,
    validate_speed,
)
from workbench.replay._pacing import Clock, Pacer, SystemClock
from workbench.replay._position import Position, PositionSigner, add_sent, sent_mask
from workbench.replay._source import LogFile, check_order_across_files, checked_part, log_parts
from workbench.replay.exceptions import ReplayError

__all__ = ["BatchReport", "Replay"]

logger = logging.getLogger(__name__)

_US = 1_000_000
#: Event times past this are unusable for pacing (see workbench.data.validation).
_MAX_EVENT_US = (MAX_EVENT_TIME - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)

#: What encoding a row can raise (e.g. a timestamp beyond year 9999 has no Python datetime).
_ENCODE_ERRORS = (TypeError, ValueError, OverflowError, pa.ArrowException)
#: The replay producer's ``message.max.bytes``: librdkafka's default, which a cluster's default topic
#: limit (1 MB) also takes. A larger value would fail the produce and stop the replay.
_MESSAGE_MAX_BYTES = 1_000_000
#: The share of a message its key, headers and record framing may need (headers are ~60 bytes).
_MESSAGE_OVERHEAD = 4_096
#: Largest encoded value sent: a packed run above it is split, a single row above it is dead-lettered.
MAX_VALUE_BYTES = _MESSAGE_MAX_BYTES - _MESSAGE_OVERHEAD
#: A dead letter keeps at most this many characters of each value (the row is still in its file):
#: 24 columns of it stay far below one message.
_DEAD_LETTER_TEXT = 16_384


@dataclass(frozen=True)
class BatchReport:
    """What one committed batch contained (passed to the optional observer)."""

    first_row: int
    rows: int
    messages: int
    first_event_us: int
    last_event_us: int
    wall_time: float
    speedup: float


def _runs(indices: np.ndarray, times_us: np.ndarray, size: int, span_us: int) -> list[np.ndarray]:
    """Split one instance's rows into runs of at most ``size`` rows and ``span_us`` of event time.

    The span bound keeps a packed message's rows inside a short stretch of event time, so a
    consumer's event-time windows never see a message reaching far into the past.
    """
    runs: list[np.ndarray] = []
    start = 0
    while start < len(indices):
        end = min(start + size, len(indices))
        limit = times_us[start] + span_us
        end = start + max(1, int(np.searchsorted(times_us[start:end], limit, side="right")))
        runs.append(indices[start:end])
        start = end
    return runs


def replay_format(pack: int | None, encoding: str | None) -> tuple[int, str]:
    """``(pack, encoding)`` with the defaults filled in.

    Neither given: the fast default (:data:`workbench.defaults.REPLAY_ENCODING`, packed
    :data:`~workbench.defaults.REPLAY_PACK`). Only the encoding: as many rows per message as it
    carries, at most the default pack (``json``: 1). Only the pack: ``json`` for 1, ``arrow``
    above (:func:`workbench.data.codec.default_encoding`).
    """
    if pack is not None and (isinstance(pack, bool) or not isinstance(pack, int) or pack < 1):
        msg = f"The pack (queries per Kafka message) must be an integer >= 1. Got {pack!r} instead."
        raise ReplayError(msg)
    if encoding is not None and encoding not in codec.ENCODINGS:  # Workbench.start's replay would crash-loop on it
        msg = f"The encoding must be one of {sorted(codec.ENCODINGS)}. Got {encoding!r} instead."
        raise ReplayError(msg)
    if encoding is None:
        if pack is None:
            return defaults.REPLAY_PACK, defaults.REPLAY_ENCODING
        return pack, codec.default_encoding(pack)
    if pack is None:
        max_rows = codec.ENCODINGS[encoding].max_rows
        return min(defaults.REPLAY_PACK, max_rows or defaults.REPLAY_PACK), encoding
    return pack, encoding


def _us_to_datetime(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value / _US, tz=UTC)


class Replay:
    """Replay a query log into Kafka, paced by its own arrival times.

    Parameters
    ----------
    data : str or Path
        A Parquet query log sorted by ``(arrival_timestamp, query_id)``, or a folder of them
        replayed in name order as one log (``workbench prepare --split day``); validated first.
    settings : Settings, optional
        Broker and topics; from the environment when omitted.
    speedup : float or "max"
        Event seconds per wall second (600 = an hour of log in 6 s); 0 or "max" = unpaced.
    pack : int, optional
        Most queries per message: up to N consecutive queries of one instance go into one message.
        None: as :func:`replay_format` (the encoding's most, else the default pack).
    encoding : str, optional
        A registered encoding of :mod:`workbench.data.codec` (``json``, ``arrow``, ``arrow-zstd``);
        default ``json`` for ``pack=1``, ``arrow`` otherwise; with neither given, the workbench's
        default (:data:`workbench.defaults.REPLAY_ENCODING`). ``json`` carries one row per message.
    replay_id : str
        Names the replay's position, status and commands; one running replay per id.
    reset : bool
        Ignore the saved position and start from the first row.
    batch_size : int, optional
        Most rows per transaction; also the largest catch-up burst. Default:
        :data:`~workbench.defaults.REPLAY_BATCH_SIZE` rows, at most
        :data:`~workbench.defaults.REPLAY_BATCH_MESSAGES` messages of ``pack`` rows.
    pack_span_s : float
        A packed message never spans more than this much event time. Keep it below the stream
        analytics' grace period (5 min): then no packed message can reach into a window that
        event time has already closed.
    clock : Clock, optional
        Wall clock (tests pass a fake one).
    observer : callable, optional
        Called with a :class:`BatchReport` after each committed batch.
    validate : bool
        Check every row of the file first (as ``workbench validate``) and refuse a file with problems.
    skip_bad_rows : bool
        Replay a file with row problems anyway: the bad rows go to the dead-letter topic with their
        reason, the rest is replayed. Rows out of order or undecodable pages still refuse the file.
    linger : bool
        Keep listening after the last row (as under the workbench): seek and reset replay again,
        pause/resume/speed are rejected with a notice, stop ends the run.
    run_token : str, optional
        Names one logical run across restarts. With ``reset``, a restart that finds a position
        written by the same run token resumes from it instead of resetting again, so a supervisor
        can restart with the very same arguments and never skips nor repeats a row.
    commands_since : float, optional
        Apply control commands sent since this Unix time (default: when this object was created),
        so commands sent before the replay listens are not lost. A restart of the same run resumes
        at the control offset saved with the position instead.
    commit_timeout : float
        Seconds to wait for a transaction commit before retrying it.
    """

    def __init__(
        self,
        data: str | Path,
        *,
        settings: Settings | None = None,
        speedup: float | str = 600.0,
        pack: int | None = 1,
        encoding: str | None = None,
        replay_id: str = "default",
        reset: bool = False,
        batch_size: int | None = None,
        clock: Clock | None = None,
        observer: Callable[[BatchReport], None] | None = None,
        tick: float = 0.1,
        validate: bool = True,
        pack_span_s: float = 180.0,
        skip_bad_rows: bool = False,
        linger: bool = False,
        run_token: str | None = None,
        commands_since: float | None = None,
        commit_timeout: float = 60.0,
    ) -> None:
        self.data = Path(data).expanduser().resolve()
        self.settings = settings or get_settings()
        self.speedup = validate_speed(speedup)
        pack, encoding = replay_format(pack, encoding)
        if not isinstance(pack, int) or pack < 1:
            msg = f"The pack parameter of Replay must be an integer >= 1. Got {pack!r} instead."
            raise ReplayError(msg)
        if batch_size is None:
            batch_size = min(defaults.REPLAY_BATCH_SIZE, defaults.REPLAY_BATCH_MESSAGES * pack)
        if batch_size < 1:
            msg = f"The batch_size parameter of Replay must be >= 1. Got {batch_size!r} instead."
            raise ReplayError(msg)
        self.pack = pack
        self.encoding = encoding  # a known one (replay_format)
        max_rows = codec.ENCODINGS[self.encoding].max_rows
        if max_rows is not None and pack > max_rows:
            msg = (f"The {self.encoding!r} encoding carries at most {max_rows} row(s) per message; got pack={pack}. "
                   "Use --encoding arrow for packed messages.")
            raise ReplayError(msg)
        if pack_span_s <= 0:
            msg = f"The pack_span_s parameter of Replay must be > 0 seconds. Got {pack_span_s!r} instead."
            raise ReplayError(msg)
        self.pack_span_s = pack_span_s
        self.replay_id = replay_id
        self.reset = reset
        self.batch_size = batch_size
        self.clock = clock or SystemClock()
        self.observer = observer
        self.tick = tick
        self.validate = validate
        self.skip_bad_rows = skip_bad_rows
        self.linger = linger
        self.run_token = run_token
        self.commands_since = time.time() if commands_since is None else float(commands_since)
        self.commit_timeout = commit_timeout
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._status_lock = threading.Lock()
        self._status: ReplayStatus | None = None
        self._error: BaseException | None = None
        self._rows_checked: bool | None = None

    def check_rows(self) -> bool:
        """Check every row as ``workbench validate`` does (once; later calls return the first answer).

        Returns whether every row passed (then the batches need not be checked again). A file with
        bad rows raises its report's error, unless ``skip_bad_rows`` and every problem is a row's own:
        then it returns ``False`` and the bad rows go to the dead-letter topic as they come.
        """
        if self._rows_checked is None:
            self._rows_checked = self._check_every_row() if self.validate else False
        return self._rows_checked

    def _check_every_row(self) -> bool:
        from workbench.pipeline._eventtime import refuse_log_outside

        passed = True
        reports = []
        for part in log_parts(self.data):  # one file, or each file of a prepared folder
            report = checked_part(part, skip_bad_rows=self.skip_bad_rows)
            reports.append(report)
            if not report.ok:
                passed = False
                logger.warning("replay %s: %s; %s", self.replay_id, report.verdict(),
                               "only labels are bad, which the replay never sends: every row is replayed"
                               if report.labels_only else "the bad rows go to the dead-letter topic")
        check_order_across_files(self.data)
        times = [t for r in reports for t in (r.first_arrival, r.last_arrival) if t is not None]
        warning = refuse_log_outside(self.settings, min(times), max(times), self.data) if times else None
        if warning:
            logger.warning("replay %s: %s", self.replay_id, warning)
        return passed

    # -- control (thread-safe; the same commands arrive from other processes via the topic) ----
    def _command(self, name: str, value: object = None) -> None:
        self._commands.put(Command(self.replay_id, name, value))

    def set_speed(self, speedup: float | str) -> None:
        """Change the speed; takes effect within one tick without a jump in event time."""
        self._command("set_speed", validate_speed(speedup))

    def pause(self) -> None:
        self._command("pause")

    def resume(self) -> None:
        self._command("resume")

    def seek(self, event_time: datetime | str) -> None:
        """Continue from the first row at or after ``event_time``."""
        self._command("seek", _parse_time(event_time).isoformat())

    def reset_position(self) -> None:
        """Start over from the first row (``reset`` as a live command)."""
        self._command("reset")

    def stop(self) -> None:
        """Ask the replay to stop after the current batch (safe from signal handlers)."""
        self._command("stop")

    # -- status --------------------------------------------------------------------------------
    def status(self) -> ReplayStatus | None:
        """The latest status snapshot (None before the replay starts)."""
        with self._status_lock:
            return self._status

    def _set_status(self, snapshot: ReplayStatus) -> None:
        with self._status_lock:
            self._status = snapshot

    def _take_commands(self) -> list[Command]:
        commands: list[Command] = []
        while True:
            try:
                commands.append(self._commands.get_nowait())
            except queue.Empty:
                return commands

    @property
    def error(self) -> BaseException | None:
        """The exception that ended a background run, if any."""
        return self._error

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> Replay:
        """Run in a background thread and return at once."""
        if self._thread is not None and self._thread.is_alive():
            msg = f"Replay {self.replay_id!r} is already running; stop() it first."
            raise ReplayError(msg)

        def target() -> None:
            try:
                self.run()
            except BaseException as exc:
                self._error = exc
                logger.exception("replay %s failed", self.replay_id)

        self._thread = threading.Thread(target=target, name=f"replay-{self.replay_id}", daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> ReplayStatus | None:
        """Wait for a background run to end; return its final status."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self._error is not None:
            raise self._error
        return self.status()

    def run(self, *, timeout: float | None = None, progress: Callable[[ReplayStatus], None] | None = None
            ) -> ReplayStatus:
        """Replay in the calling thread until the file ends, ``stop()`` or ``timeout`` seconds."""
        return _ReplayRun(self, inbox=self._take_commands, on_status=self._set_status, timeout=timeout,
                          progress=progress).execute()


def replay_transactional_id(settings: Settings, replay_id: str) -> str:
    """The replay producer's ``transactional.id``: ``<consumer group prefix>-replay-<replay id>``
    (``workbench-replay-default`` by default). A restart of the same replay fences its predecessor."""
    return f"{settings.consumer_group_prefix}-replay-{replay_id}"


class _ReplayRun:
    """The state of one run of a :class:`Replay` (kept apart so the public object stays small).

    It reads the replay's public configuration; commands and status pass through the two
    callables the replay hands over (``inbox``, ``on_status``), never through its private fields.
    """

    def __init__(self, replay: Replay, *, inbox: Callable[[], list[Command]],
                 on_status: Callable[[ReplayStatus], None], timeout: float | None,
                 progress: Callable[[ReplayStatus], None] | None) -> None:
        self.replay = replay
        self.inbox = inbox
        self.on_status = on_status
        self.settings = replay.settings
        self.clock = replay.clock
        self.timeout = timeout
        self.progress = progress
        self.pacer = Pacer(replay.speedup)
        self.position_key = f"{replay.replay_id}/position".encode()
        self.status_key = f"{replay.replay_id}/status".encode()
        self.rows_checked = False  # set by _open: every row passed the per-row rules
        self.rows_sent = 0
        self.messages_sent = 0
        self.dead_letters = 0
        self.state = "starting"
        self.started = self.clock.monotonic()
        self._active_s = 0.0  # wall seconds spent running this course (rate_avg), counted once per loop turn
        self._active_mark: float | None = None
        self._course_rows = 0  # rows_sent when this course (start, seek or reset) began
        self.rate_now = 0.0
        self._rate_mark = (self.started, 0)
        self._last_status_publish = -1e9
        self.current_event_us: int | None = None
        self.next_event_us: int | None = None  # event time of the next row to send, when known
        self.notice: str | None = None
        self.applied_command_at: float | None = None  # issued_at of the last command taken (ReplayStatus)
        self.control_offset: int | None = None
        self._waiting_control: list = []  # control records read before the first row, not applied yet
        self._resume_paused = False
        self._last_commit = -1e9
        # (row, value, headers): sent in the transaction whose position passes the row.
        self._pending_dead_letters: list[tuple[int, bytes, list]] = []

    # -- setup ---------------------------------------------------------------------------------
    def _open(self) -> None:
        replay = self.replay
        # Every row passed the per-row rules at start-up: the batches need not be checked again.
        self.rows_checked = replay.check_rows()
        self.log = LogFile(replay.data)
        # the log's first and last times, past rows without one (a sort puts NULLs first or last)
        self.first_event_us = _usable(self.log.first_time_us())
        self.last_event_us = _usable(self.log.last_time_us())
        ensure_topics(self.settings)
        self.signer = PositionSigner(self.settings)
        # librdkafka's own lines (a transient "Coordinator load in progress") go to the workbench.kafka logger: the
        # replay says what failed in its own words
        self.producer = Producer(quiet_logs(
            {
                **self.settings.kafka_client_config(),
                # one per deployment (its consumer-group prefix): two deployments on a cluster fenced each
                # other's replay, restarting both in turn, under the one id workbench-replay-default
                "transactional.id": replay_transactional_id(self.settings, replay.replay_id),
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 20,
                "batch.size": 1_000_000,
                "message.max.bytes": _MESSAGE_MAX_BYTES,
                "compression.type": "lz4",
                "partitioner": "murmur2_random",  # the Java clients' partitioner: same key, same partition
                "queue.buffering.max.messages": 1_000_000,
                "transaction.timeout.ms": 60_000,
                "log_level": 4,
            }
        ))
        try:
            self.producer.init_transactions(30)
        except KafkaException as exc:
            msg = f"Could not initialise the replay's Kafka transactions at {self.settings.bootstrap_servers}: {exc}"
            raise ReplayError(msg) from exc
        # Only now: init_transactions has fenced (and so aborted) any open transaction of a killed
        # predecessor, so the committed position below is final.
        saved = self._saved_position()
        # rows this log already sent under this home, even in an earlier run or before a reset (a position
        # written before the ranges were kept: every row before it)
        self.sent_rows = (saved.sent_rows or add_sent((), 0, saved.next_row)) if saved is not None else ()
        same_run = saved is not None and replay.run_token is not None and saved.run_token == replay.run_token
        if saved is not None and (same_run or not replay.reset):
            self.next_row = saved.next_row
            if same_run:
                self.control_offset = saved.control_offset
                if saved.speedup is not None:
                    self.pacer.speedup = saved.speedup
                    replay.speedup = saved.speedup
                self._resume_paused = saved.paused  # a crash does not undo the user's pause
            logger.info("replay %s resumes at row %d (%s)", replay.replay_id, self.next_row,
                        "same run" if same_run else "saved position")
        else:
            self.next_row = 0
        self.control = Consumer(
            {
                **self.settings.kafka_client_config(),
                "group.id": f"workbench-replay-control-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "latest",
                "enable.partition.eof": True,  # read_range below: the end of what was sent before
                "log_level": 3,
            }
        )
        topic = self.settings.topic_replay_control
        deadline = time.monotonic() + 30
        if self.control_offset is None:
            # Commands sent since the replay was created apply, even those sent before it listened.
            since = TopicPartition(topic, 0, int(replay.commands_since * 1000))
            found = when_ready(lambda remaining: self.control.offsets_for_times([since], timeout=remaining),
                               deadline)[0].offset
            if found < 0:  # nothing that recent: start at the end
                found = when_ready(lambda remaining: self.control.get_watermark_offsets(
                    TopicPartition(topic, 0), timeout=remaining), deadline)[1]
            self.control_offset = found
        # The commands already there (sent before this replay listened, or while it was down) are read
        # now and applied before the first row. Left to the loop's polls, they applied once the first
        # fetch came back, after the rows that fell due meanwhile had gone out at the old speed (a pause
        # sent before the start let rows through on a loaded machine).
        end = when_ready(lambda remaining: self.control.get_watermark_offsets(
            TopicPartition(topic, 0), timeout=remaining), deadline)[1]
        if end > self.control_offset:
            with contextlib.suppress(IncompleteReadError):  # the rest comes with the loop's polls
                for message in read_range(self.control, topic, 0, self.control_offset, end, deadline):
                    self._waiting_control.append(message)
        else:
            self.control.assign([TopicPartition(topic, 0, self.control_offset)])
        # Committed before any row is sent: a restart after any failure resumes from here (with
        # the same run token), never from an older position of an earlier run.
        self._commit_batch([], self.next_row, force_status=True)

    def _event_time(self, row: int) -> int | None:
        """Arrival time of ``row``, or None past the end or where the row's time is unusable."""
        if row < 0:
            return None
        try:
            value = self.log.event_time_us(row)
        except (TypeError, ValueError, OverflowError, pa.ArrowException):
            return None
        return _usable(value)

    def _saved_position(self) -> Position | None:
        value = latest_state_value(self.settings, self.position_key.decode(), committed=True,
                                   accept=self.signer.accepts)
        saved = self.signer.decode(value) if value is not None else None
        if saved is None:
            return None
        if saved.fingerprint != self.log.fingerprint and self.log.grew_from(saved.fingerprint, saved.rows_total):
            # a folder that gained files after its last: the rows keep their indices, the replay goes on
            logger.info("replay %s: %s grew from %d to %d rows since its saved position (row %d)",
                        self.replay.replay_id, self.replay.data, saved.rows_total, self.log.num_rows, saved.next_row)
            return dataclasses.replace(saved, fingerprint=self.log.fingerprint, rows_total=self.log.num_rows)
        if saved.fingerprint != self.log.fingerprint and not self.replay.reset:
            msg = (
                f"Replay {self.replay.replay_id!r} has a saved position in another file "
                f"({saved.file}, row {saved.next_row}), not {self.replay.data}. "
                "Pass reset=True (`workbench replay --reset`; `workbench start` without --resume) to start this "
                "file from its first row, or use another replay_id."
            )
            raise ReplayError(msg)
        return saved if saved.fingerprint == self.log.fingerprint else None

    # -- commands --------------------------------------------------------------------------------
    def _drain_commands(self) -> list[Command]:
        commands = self.inbox()
        waiting, self._waiting_control = self._waiting_control, []
        for message in [*waiting, *self.control.consume(num_messages=100, timeout=0)]:
            if message.error():
                continue
            self.control_offset = message.offset() + 1
            try:
                command = Command.decode(message.value())
            except InvalidCommand as exc:
                self._reject(f"ignored control record at offset {message.offset()}: {exc}",
                             preview=message.value())
                continue
            if command.replay_id == self.replay.replay_id:
                commands.append(command)
        return commands

    def _reject(self, reason: str, preview: bytes | None = None) -> None:
        """Log a command that cannot apply and show it in the status; the replay goes on."""
        shown = "" if preview is None else f" {preview[:200]!r}"
        logger.warning("replay %s: %s%s", self.replay.replay_id, reason, shown)
        self.notice = reason
        self._last_status_publish = -1e9  # publish the notice with the next status

    def _apply(self, command: Command) -> bool:
        """Apply one command through :data:`_HANDLERS`; True when the batches restart at ``next_row``."""
        logger.info("replay %s: %s %s", self.replay.replay_id, command.command,
                    "" if command.value is None else command.value)
        self.applied_command_at = max(self.applied_command_at or 0.0, float(command.issued_at))
        if self.state == "finished" and command.command in _LIVE_ONLY:
            self._reject(f"{command.command} ignored: replay {self.replay.replay_id!r} finished at row "
                         f"{self.next_row:,} of {self.log.num_rows:,}; seek or reset to replay again")
            return False
        # Published with the next status, not up to a second later: the panel shows a click's effect
        # from the first status that follows it.
        self._last_status_publish = -1e9
        try:
            moved = _HANDLERS[command.command](self, command.value)
        except ReplayError as exc:
            self._reject(f"{command.command} {command.value!r} ignored: {exc}")
            return False
        # the notice is about the last command: one that applied replaces it (an ignored pause's notice
        # stayed in the status after a reset, a pause, a speed and a resume had applied)
        self.notice = None
        return moved

    def _on_speed(self, value: object) -> bool:
        speed = validate_speed(value)  # type: ignore[arg-type]
        self.pacer.set_speed(speed, self.clock.monotonic(), self.next_event_us)
        self.replay.speedup = self.pacer.speedup
        self._restart_rate()  # the old speed's rate held for seconds after the change
        return False

    def _on_pause(self, value: object) -> bool:
        self.pacer.pause(self.clock.monotonic(), self.next_event_us)
        self.state = "paused"
        return False

    def _on_resume(self, value: object) -> bool:
        self.pacer.resume(self.clock.monotonic())
        self.state = "running"
        return False

    def _on_seek(self, value: object) -> bool:
        target = int(_parse_time(value).timestamp() * _US)  # type: ignore[arg-type]
        return self._move_to(self.log.row_at_or_after(target))

    def _on_reset(self, value: object) -> bool:
        return self._move_to(0)

    def _on_stop(self, value: object) -> bool:
        self.state = "stopped"
        return False

    def _restart_rate(self) -> None:
        """Measure the recent rate again from now (0 until a second has passed)."""
        self.rate_now = 0.0
        self._rate_mark = (self.clock.monotonic(), self.rows_sent)

    def _move_to(self, row: int) -> bool:
        self.next_row = row
        # A new course: its average and recent rate start afresh.
        self._course_rows, self._active_s = self.rows_sent, 0.0
        self._restart_rate()
        # Dead letters of rows not yet passed belong to the old course; the rows are checked again.
        self._pending_dead_letters.clear()
        event_us = self._event_time(row)
        now = self.clock.monotonic()
        if event_us is not None:
            self.pacer.anchor(event_us, now)
            self.current_event_us = event_us
            self.next_event_us = event_us
        elif row >= self.log.num_rows and self.log.num_rows:
            # Past the end every row counts as passed: the clock shows the last row's time, not
            # the position before the seek (a paused replay would show 100% at an old time).
            self.current_event_us = self._event_time(self.log.num_rows - 1) or self.current_event_us
        if row < self.log.num_rows:
            self.state = "paused" if self.pacer.paused else "running"
        # The new position is committed at once, so a restart continues from here.
        self._commit_batch([], self.next_row, force_status=True)
        return True

    # -- reading ---------------------------------------------------------------------------------
    def _batches(self) -> Iterator[tuple[np.ndarray, pa.RecordBatch]]:
        """(file row of each row, rows cast to the Redset types) with the bad rows taken out."""
        for first_row, raw in self.log.batches(self.next_row, self.replay.batch_size, cast=False):
            end_row = first_row + raw.num_rows
            rows = np.arange(first_row, end_row)
            bad = None if self.rows_checked else find_bad_rows(raw)
            if bad is not None and bad.mask.any():
                for index, reason in sorted(bad.coded_reasons().items()):
                    self._dead_letter(raw.slice(index, 1), int(rows[index]), reason)
                keep = ~bad.mask
                rows = rows[keep]
                raw = raw.filter(pa.array(keep))
            rows, batch = self._conform(raw, rows)
            if batch.num_rows == 0:
                # Nothing to send, but the position moves past the bad rows (with their dead letters).
                self._commit_batch([], end_row)
                self.next_row = end_row
                continue
            yield rows, batch

    def _conform(self, raw: pa.RecordBatch, rows: np.ndarray) -> tuple[np.ndarray, pa.RecordBatch]:
        """Cast to the Redset types; a row the rules missed that still cannot be cast is dead-lettered.

        Only reachable without validation (e.g. text in a boolean column): one row must not fail
        its whole batch, or the replay would fail at the same batch at every restart.
        """
        try:
            return rows, conform(raw, COLUMNS).replace_schema_metadata(None)  # as LogFile's own cast
        except _ENCODE_ERRORS:
            pass
        keep = np.ones(raw.num_rows, bool)
        for index in range(raw.num_rows):
            try:
                conform(raw.slice(index, 1), COLUMNS)
            except _ENCODE_ERRORS as exc:
                keep[index] = False
                self._dead_letter(raw.slice(index, 1), int(rows[index]), f"processing_error: cannot convert row: {exc}")
        return rows[keep], conform(raw.filter(pa.array(keep)), COLUMNS).replace_schema_metadata(None)

    # -- sending ---------------------------------------------------------------------------------
    def _encode_marked(self, batch: pa.RecordBatch, rows: np.ndarray) -> list[tuple[bytes, bytes, int, list]]:
        """:meth:`_encode` of ``batch``, rows sent before (a seek or reset back) in messages of their own
        marked re-sent; runs in row order, so the messages stay in time order."""
        again = sent_mask(self.sent_rows, rows)
        if not again.any():
            return self._encode(batch, rows)
        if again.all():
            return self._encode(batch, rows, resent=True)
        cuts = [0, *(np.flatnonzero(np.diff(again.astype(np.int8))) + 1).tolist(), len(rows)]
        messages = []
        for a, b in itertools.pairwise(cuts):
            messages += self._encode(batch.slice(a, b - a), rows[a:b], resent=bool(again[a]))
        return messages

    def _encode(self, batch: pa.RecordBatch, rows: np.ndarray, *,
                resent: bool = False) -> list[tuple[bytes, bytes, int, list]]:
        """(key, value, timestamp_ms, headers) per message, in order; bad rows go to dead letters.
        ``resent``: the rows were sent before (:data:`~workbench.data.codec.RESENT_HEADER`)."""
        keys = batch.column("instance_id").to_numpy()
        times_ms = pc.cast(batch.column("arrival_timestamp"), pa.int64()).to_numpy() // 1000
        encoding = codec.get_encoding(self.replay.encoding)
        if self.replay.pack == 1:
            encode_each = encoding.encode_each or (lambda rows: [encoding.encode(rows.slice(i, 1))
                                                                 for i in range(rows.num_rows)])
            try:
                values = encode_each(batch)
            except _ENCODE_ERRORS:
                values = []
                for index in range(batch.num_rows):
                    try:
                        values.extend(encode_each(batch.slice(index, 1)))
                    except _ENCODE_ERRORS as exc:
                        values.append(None)  # type: ignore[arg-type]
                        self._dead_letter(batch.slice(index, 1), int(rows[index]),
                                          f"processing_error: cannot encode row: {exc}")
            if max(map(len, filter(None, values)), default=0) > MAX_VALUE_BYTES:
                for index, value in enumerate(values):
                    if value is not None and len(value) > MAX_VALUE_BYTES:
                        values[index] = None  # type: ignore[call-overload]
                        self._dead_letter(batch.slice(index, 1), int(rows[index]),
                                          _too_large(len(value)))
            headers = codec.message_headers(encoding.name, 1, resent=resent)
            # Python ints and one key object per instance: numpy scalars and a str() per message
            # cost more than the tuple itself.
            key_list = keys.tolist()
            key_bytes = {key: str(key).encode() for key in set(key_list)}
            return [
                (key_bytes[key], value, ts, headers)
                for key, value, ts in zip(key_list, values, times_ms.tolist(), strict=True)
                if value is not None
            ]
        # Packed: runs of up to `pack` consecutive rows of one instance, order kept per instance.
        # One take of the whole batch in instance order; every message is then a zero-copy slice
        # (a take per message cost more than encoding it).
        order = np.argsort(keys, kind="stable")
        by_instance = batch.take(pa.array(order))
        sorted_keys, sorted_ms = keys[order], times_ms[order]
        boundaries = np.flatnonzero(np.diff(sorted_keys)) + 1
        messages = []
        span_us = int(self.replay.pack_span_s * _US)
        for group in np.split(np.arange(len(order)), boundaries):
            for run in _runs(group, sorted_ms[group] * 1000, self.replay.pack, span_us):
                for first, count, value in self._fitting(by_instance, int(run[0]), len(run), encoding.encode,
                                                         lambda i: int(rows[order[i]])):
                    headers = codec.message_headers(encoding.name, count, resent=resent)
                    messages.append((str(sorted_keys[first]).encode(), value, int(sorted_ms[first]), headers))
        messages.sort(key=lambda message: message[2])
        return messages

    def _fitting(self, batch: pa.RecordBatch, first: int, count: int, encode: Callable[[pa.RecordBatch], bytes],
                 file_row: Callable[[int], int]) -> Iterator[tuple[int, int, bytes]]:
        """``(first, count, value)`` messages of ``batch``'s rows ``first..first+count-1``, in order.

        A run that does not encode or exceeds :data:`MAX_VALUE_BYTES` is split in halves, so only the
        rows at fault go to dead letters, each naming its own file row, and the others flow.
        """
        piece = batch.slice(first, count)
        try:
            value = encode(piece)
        except _ENCODE_ERRORS as exc:
            if count == 1:
                self._dead_letter(piece, file_row(first), f"processing_error: cannot encode rows: {exc}")
                return
            value = None
        if value is not None and len(value) <= MAX_VALUE_BYTES:
            yield first, count, value
        elif count == 1:
            self._dead_letter(piece, file_row(first), _too_large(len(value)))
        else:
            half = count // 2
            yield from self._fitting(batch, first, half, encode, file_row)
            yield from self._fitting(batch, first + half, count - half, encode, file_row)

    def _dead_letter(self, rows: pa.RecordBatch, row: int, reason: str) -> None:
        """Queue rows that cannot be sent for the dead-letter topic (sent with the position passing them)."""
        logger.warning("replay %s: row %d of %s sent to dead letters: %s", self.replay.replay_id, row,
                       self.replay.data, reason)
        # Every value as text: the row failed to convert to Python objects once already.
        as_text = {}
        for name in rows.schema.names:
            column = rows.column(name)
            try:
                as_text[name] = pc.cast(column, pa.string()).to_pylist()
            except (pa.ArrowException, UnicodeDecodeError):
                as_text[name] = [repr(value) for value in column.cast(pa.binary(), safe=False).to_pylist()] \
                    if _is_text(column.type) else [str(column[i]) for i in range(len(column))]
        truncated = {}  # the dead letter must fit one message; the whole value is still in the file
        for name, texts in as_text.items():
            longest = max((len(text) for text in texts if text is not None), default=0)
            if longest > _DEAD_LETTER_TEXT:
                truncated[name] = f"first {_DEAD_LETTER_TEXT:,} of {longest:,} characters"
                as_text[name] = [text if text is None else text[:_DEAD_LETTER_TEXT] for text in texts]
        letter = {"source": str(self.replay.data), "row": row, "reason": reason, "columns": as_text}
        if truncated:
            letter["truncated_columns"] = truncated
        value = orjson.dumps(letter)
        # The apps' header names (reason, app) plus where the row is: file and row instead of topic/offset.
        headers = [("reason", reason[:2000].encode()), ("app", b"replay"), ("source", b"replay"),
                   ("file", str(self.replay.data).encode()), ("row", str(row).encode()),
                   ("replay_id", self.replay.replay_id.encode())]
        self._pending_dead_letters.append((row, value, headers))

    def _produce(self, topic: str, key: bytes | None, value: bytes, timestamp: int = 0,
                 headers: list | None = None, *, partition: int | None = None) -> None:
        """Produce one message (to ``partition``, else the key's), waiting while the local queue is full."""
        where = {} if partition is None else {"partition": partition}
        while True:
            try:
                self.producer.produce(topic, key=key, value=value, timestamp=timestamp, headers=headers, **where)
                return
            except BufferError:
                self.producer.poll(0.05)

    def _position(self, next_row: int) -> bytes:
        return self.signer.encode(Position(
            replay_id=self.replay.replay_id, file=str(self.replay.data), fingerprint=self.log.fingerprint,
            next_row=next_row, rows_total=self.log.num_rows, run_token=self.replay.run_token,
            control_offset=self.control_offset,
            speedup=self.pacer.speedup, paused=self.pacer.paused, sent_rows=self.sent_rows,
        ))

    def _end_of_log_markers(self) -> list[tuple[int, bytes, list]]:
        """``(partition, value, headers)`` of the end-of-log marker for every partition of the events
        topic (:func:`~workbench.data.codec.end_of_log_message`); none for an empty log."""
        last = self.log.last_time_us()
        if last is None:
            return []
        topic = self.settings.topic_query_events
        metadata = self.producer.list_topics(topic, timeout=30)
        partitions = sorted(metadata.topics[topic].partitions)
        value, headers = codec.end_of_log_message(last)
        return [(partition, value, headers) for partition in partitions]

    def _commit_batch(self, messages: list, next_row: int, *, force_status: bool = False,
                      end_of_log: bool = False) -> None:
        """Produce ``messages``, the dead letters of rows before ``next_row`` and the new position in
        one transaction; with ``end_of_log``, also the end-of-log marker on every partition.

        An abortable error aborts and retries the whole batch; a commit that times out is resumed
        (``commit_transaction`` again: it may have reached the broker), and if that fails too the
        transaction is aborted and the batch retried. A transaction is never begun while one is open.
        """
        dead = [(value, headers) for row, value, headers in self._pending_dead_letters if row < next_row]
        markers = self._end_of_log_markers() if end_of_log else []
        first_error: str | None = None  # the cause; later attempts can fail on the producer's state after it
        for attempt in range(1, 6):
            open_txn = False
            try:
                self.producer.begin_transaction()
                open_txn = True
                produce, topic = self.producer.produce, self.settings.topic_query_events
                for key, value, timestamp, headers in messages:  # per message: no extra Python call
                    try:
                        produce(topic, key=key, value=value, timestamp=timestamp, headers=headers)
                    except BufferError:
                        self._produce(topic, key, value, timestamp, headers)
                for partition, value, headers in markers:  # after the log's last rows, in each partition
                    self._produce(topic, None, value, 0, headers, partition=partition)
                for value, headers in dead:
                    self._produce(self.settings.topic_dead_letter, None, value, 0, headers)
                self._produce(self.settings.topic_replay_state, self.position_key, self._position(next_row))
                now = self.clock.monotonic()
                if force_status or now - self._last_status_publish >= 1.0:
                    self._last_status_publish = now
                    self._produce(self.settings.topic_replay_state, self.status_key,
                                  self._snapshot(next_row).to_json())
                self._commit(attempt)
                open_txn = False
                self._committed(len(dead), next_row)
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                cause = "" if first_error is None or first_error == error.str() else f" (first: {first_error})"
                first_error = first_error or error.str()
                if error.fatal() or (not error.txn_requires_abort() and not error.retriable()):
                    msg = f"Replay {self.replay.replay_id!r} cannot write to Kafka: {error.str()}{cause}"
                    raise ReplayError(msg) from exc
                if _REFUSED_FOR_GOOD.search(error.str()):  # the same batch fails the same way every time
                    msg = (f"Replay {self.replay.replay_id!r} cannot write to Kafka: {error.str()}. The topic "
                           f"refuses the batch as it is set up (`workbench topics` names what to change)")
                    raise ReplayError(msg) from exc
                logger.warning("replay transaction failed (attempt %d): %s; retrying the batch", attempt, error.str())
                # an abort (or a commit) of an earlier attempt may still be in progress
                if (open_txn or _ABORT_PENDING in error.str() or _COMMIT_PENDING in error.str()) and self._abort():
                    self._committed(len(dead), next_row)  # a commit that had timed out finished after all
                    return
                time.sleep(min(2.0, 0.1 * 2**attempt))
        msg = f"Replay {self.replay.replay_id!r} could not commit a batch after 5 attempts: {first_error}"
        raise ReplayError(msg)

    def _committed(self, dead: int, next_row: int) -> None:
        """Book a committed batch: its dead letters sent, those of rows before ``next_row`` done."""
        self.dead_letters += dead
        self._pending_dead_letters = [item for item in self._pending_dead_letters if item[0] >= next_row]

    def _commit(self, attempt: int) -> None:
        """Commit the open transaction; a timed-out commit is resumed once with the full timeout.

        A commit still waiting after :data:`_TOPIC_CHECK_AFTER_S` looks for a topic deleted under the
        replay (its messages wait for it until they time out: a deleted replay-state topic hung the replay
        ~90 s, failed it, and its restart sent the log again from row 0): a missing topic is made again,
        and the commit goes on with the position this run holds.
        """
        timeout = self.replay.commit_timeout
        first = min(timeout, _TOPIC_CHECK_AFTER_S)
        try:
            self.producer.commit_transaction(first)
            return
        except KafkaException as exc:
            if not _resumable(exc):
                raise
            error: KafkaError = exc.args[0]
        if first < timeout:
            self._make_missing_topics()
            try:
                self.producer.commit_transaction(timeout - first)
                return
            except KafkaException as exc:
                if not _resumable(exc):
                    raise
                error = exc.args[0]
        logger.warning("replay commit did not finish within %.3g s (attempt %d): %s; resuming it",
                       timeout, attempt, error.str())
        deadline = time.monotonic() + max(timeout, 60.0)
        while True:
            try:
                self.producer.commit_transaction(max(deadline - time.monotonic(), 0.001))
                return
            except KafkaException as exc:
                # A commit whose first phase timed out leaves that phase's reply behind, and a resumed
                # call can read it for its own and then find the commit still under way ("Operation not
                # valid in state BeginCommit": a CI run's replay failed on it). The commit goes on in
                # the background: calling again resumes it.
                if time.monotonic() >= deadline or not (_resumable(exc) or _commit_under_way(exc)):
                    raise
                logger.warning("replay commit resumed while still under way (%s); resuming it again",
                               exc.args[0].str())
                time.sleep(0.05)

    def _make_missing_topics(self) -> None:
        """Create again the workbench topics that are gone (an operator deleted one under the replay)."""
        try:
            listed = set(self.producer.list_topics(timeout=5).topics)
            topics = {self.settings.topic_query_events, self.settings.topic_replay_state,
                      self.settings.topic_dead_letter}
            missing = sorted(topics - listed)
            if missing:
                ensure_topics(self.settings)
                logger.warning("replay %s: the topics %s were gone (deleted under the running replay); made them "
                               "again", self.replay.replay_id, ", ".join(missing))
        except Exception as exc:  # the commit's own outcome is what counts
            logger.warning("replay %s: cannot check its topics while a commit waits: %s", self.replay.replay_id, exc)

    def _abort(self) -> bool:
        """End the open transaction after a failure; True when it turned out committed.

        A commit that timed out may still finish: librdkafka then answers every abort at once with
        "Conflicting commit_transaction API call is already in progress", and only calling the commit
        again resumes it (its success means the batch is committed: sent again, its rows would be twice
        on the topic). An abort that times out is called again (librdkafka resumes the one in progress)
        for up to :data:`_ABORT_BUDGET_S`, a second apart, warning every 30 s: it gave up after 3 x 30 s
        below a topic's min.insync.replicas, and every retry then failed on the abort still in progress
        until the replay exited (tester A, 34th session).
        """
        deadline = time.monotonic() + _ABORT_BUDGET_S
        warned_at = -_ABORT_WARN_EVERY_S
        while True:
            try:
                self.producer.abort_transaction(30)
                return False
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
            if _COMMIT_PENDING in error.str():
                try:
                    self.producer.commit_transaction(30)
                    return True
                except KafkaException as exc:  # still pending (called again below), or now to be aborted
                    error = exc.args[0]
            if error.fatal() or not (error.retriable() or error.txn_requires_abort()) \
                    or time.monotonic() >= deadline:
                msg = f"Replay {self.replay.replay_id!r} cannot end a failed transaction: {error.str()}"
                raise ReplayError(msg)
            if time.monotonic() - warned_at >= _ABORT_WARN_EVERY_S:
                warned_at = time.monotonic()
                logger.warning("replay %s: ending the failed batch waits for Kafka (%s); the broker may refuse "
                               "writes (a broker down, or fewer in-sync replicas than min.insync.replicas)",
                               self.replay.replay_id, error.str())
            time.sleep(1.0)

    # -- status ---------------------------------------------------------------------------------
    def _count_active_time(self) -> None:
        """Add the wall time since the last call to the time spent running (not paused, not finished)."""
        now = self.clock.monotonic()
        if self._active_mark is not None and self.state == "running" and not self.pacer.paused:
            self._active_s += now - self._active_mark
        self._active_mark = now

    def _snapshot(self, next_row: int | None = None) -> ReplayStatus:
        now = self.clock.monotonic()
        next_row = self.next_row if next_row is None else next_row
        mark_time, mark_rows = self._rate_mark
        if self.state != "running" or self.pacer.paused:
            # Not sending is not a slow rate: measured again from the resume. The rate decayed toward
            # 0 over a pause instead, and the ETA from it (max speed: the rows left over the rate) read
            # years for the first seconds after Play.
            self.rate_now = 0.0
            self._rate_mark = (now, self.rows_sent)
        elif now - mark_time >= 1.0:
            instant = (self.rows_sent - mark_rows) / (now - mark_time)
            self.rate_now = instant if self.rate_now == 0 else 0.5 * self.rate_now + 0.5 * instant
            self._rate_mark = (now, self.rows_sent)
        # Over the time spent sending since the last seek or reset: a finished or paused replay's
        # average stays what it was, and an earlier pass at another speed does not blur it.
        course_rows = self.rows_sent - self._course_rows
        rate_avg = course_rows / max(self._active_s, 1e-9) if course_rows else 0.0
        last_us = self.last_event_us
        remaining_rows = self.log.num_rows - next_row
        behind_s = self.pacer.behind_us(now, self.next_event_us) / _US if self.state == "running" else 0.0
        # Behind: more than half a wall second at this speed (a tick or two of slack is normal).
        behind = self.pacer.speedup > 0 and behind_s > 0.5 * self.pacer.speedup
        rate = self.rate_now or rate_avg
        eta: float | None
        if remaining_rows <= 0:
            eta = 0.0
        elif self.pacer.paused or self.state != "running":
            eta = None
        elif self.pacer.speedup > 0 and last_us is not None and self.current_event_us is not None:
            eta = max(0.0, (last_us - self.current_event_us) / _US / self.pacer.speedup)
            if behind and rate > 0:  # the schedule cannot be kept: the measured rate decides
                eta = max(eta, remaining_rows / rate)
        else:
            eta = remaining_rows / rate if rate > 0 else None
        return ReplayStatus(
            replay_id=self.replay.replay_id, file=str(self.replay.data), state=self.state,
            speedup=self.pacer.speedup, rows_sent=self.rows_sent, rows_total=self.log.num_rows,
            next_row=next_row, event_time=_us_to_datetime(self.current_event_us),
            first_event_time=_us_to_datetime(self.first_event_us), last_event_time=_us_to_datetime(last_us),
            rate_now=self.rate_now, rate_avg=rate_avg, eta_seconds=eta, dead_letters=self.dead_letters,
            pack=self.replay.pack, encoding=self.replay.encoding, behind=behind, behind_seconds=round(behind_s, 3),
            listening=self.replay.linger and self.state == "finished", notice=self.notice,
            rows_skipped=next_row - sum(min(end, next_row) - start for start, end in self.sent_rows
                                        if start < next_row),
            applied_command_at=self.applied_command_at, messages_sent=self.messages_sent,
        )

    def _publish_status(self, force: bool = False, *, end_of_log: bool = False) -> None:
        snapshot = self._snapshot()
        self.on_status(snapshot)
        if self.progress is not None:
            self.progress(snapshot)
        now = self.clock.monotonic()
        if force or end_of_log or now - self._last_status_publish >= 1.0:
            self._commit_batch([], self.next_row, force_status=True, end_of_log=end_of_log)

    # -- the loop ------------------------------------------------------------------------------
    def execute(self) -> ReplayStatus:
        self._open()
        try:
            return self._loop()
        except BaseException:
            self.state = "failed"
            raise
        finally:
            try:
                self._publish_status(force=True)
            except Exception:
                logger.debug("could not publish the final status", exc_info=True)
            self.control.close()
            try:
                self.producer.flush(10)
            except KafkaException as exc:  # a producer left fatal (a cluster that lost quorum): the run's own
                logger.warning("replay %s: could not flush its producer on the way out: %s",  # outcome stands
                               self.replay.replay_id, exc)

    def _loop(self) -> ReplayStatus:
        replay = self.replay
        batches = self._batches()
        pending: pa.RecordBatch | None = None
        pending_rows: np.ndarray | None = None
        pending_times: np.ndarray | None = None
        exhausted = False
        deadline = None if self.timeout is None else self.started + self.timeout
        first_event = self._event_time(self.next_row)
        if first_event is not None:
            self.pacer.anchor(first_event, self.clock.monotonic())
            self.current_event_us = first_event
            self.next_event_us = first_event
        elif self.next_row > 0:  # resumed at the end of the log: its clock reads the last row's time
            self.current_event_us = self._event_time(self.next_row - 1)
        self.state = "running"
        if self._resume_paused:
            self.pacer.pause(self.clock.monotonic(), self.next_event_us)
            self.state = "paused"
        logger.info("replay %s: %s from row %d of %d at %s", replay.replay_id, replay.data, self.next_row,
                    self.log.num_rows, "max speed" if self.pacer.unpaced else f"{self.pacer.speedup:g}x")
        self._publish_status(force=True)
        while True:
            self._count_active_time()
            # Load the next rows before applying commands: a pause or speed change re-anchors at
            # the next row actually due (next_event_us), which only the loaded batch knows.
            if pending is None and not exhausted and self.state != "finished":
                try:
                    pending_rows, pending = next(batches)
                except StopIteration:
                    exhausted = True
                else:
                    pending_times = pc.cast(pending.column("arrival_timestamp"), pa.int64()).to_numpy()
                    self.next_event_us = int(pending_times[0])
                    if not self.pacer.anchored:
                        self.pacer.anchor(self.next_event_us, self.clock.monotonic())
            restart = False
            for command in self._drain_commands():
                restart = self._apply(command) or restart
            if self.state == "stopped":
                break
            if restart:
                batches = self._batches()
                pending = None
                exhausted = False
                continue
            if deadline is not None and self.clock.monotonic() >= deadline:
                self.state = "stopped"
                break
            if self.state == "finished" or self.pacer.paused:
                self._publish_status()
                self.clock.sleep(replay.tick)
                continue
            if pending is None:
                self.state = "finished"
                self.next_row = self.log.num_rows
                self.next_event_us = None
                # The apps learn that the log's last day is complete (nothing later will settle it).
                self._publish_status(force=True, end_of_log=self.settings.end_of_log_markers)
                if replay.linger:
                    logger.info("replay %s finished; listening for seek or reset", replay.replay_id)
                    continue
                break
            now = self.clock.monotonic()
            assert pending_times is not None and pending_rows is not None
            if self.pacer.unpaced:
                count = pending.num_rows
            else:
                count = int(np.searchsorted(pending_times, self.pacer.event_clock(now), side="right"))
            if count == 0:
                # Pace per batch, not per row: wait for the next row, but at least one tick since
                # the last commit, so a transaction carries every row that fell due meanwhile.
                wait = max(self.pacer.wall_time_for(int(pending_times[0])), self._last_commit + replay.tick) - now
                self._publish_status()
                # At least 1 ms: float rounding can leave a due row a hair short of the clock.
                self.clock.sleep(min(replay.tick, max(wait, 0.001)))
                continue
            chunk = pending.slice(0, count)
            next_row = int(pending_rows[count - 1]) + 1
            messages = self._encode_marked(chunk, pending_rows[:count])
            # before the commit: the position it writes says these rows were sent. Undone when it fails, as the
            # final status publish commits a position too, which must not claim rows that never went out.
            sent_before, self.sent_rows = self.sent_rows, add_sent(self.sent_rows, int(pending_rows[0]), next_row)
            try:
                self._commit_batch(messages, next_row)
            except BaseException:
                self.sent_rows = sent_before
                raise
            self._last_commit = now
            self.rows_sent += count
            self.messages_sent += len(messages)
            self.next_row = next_row
            self.current_event_us = int(pending_times[count - 1])
            if replay.observer is not None:
                replay.observer(BatchReport(int(pending_rows[0]), count, len(messages), int(pending_times[0]),
                                            int(pending_times[count - 1]), now, self.pacer.speedup))
            if count < pending.num_rows:
                pending = pending.slice(count)
                pending_times = pending_times[count:]
                pending_rows = pending_rows[count:]
                self.next_event_us = int(pending_times[0])
            else:
                pending = None  # the next batch is loaded at the top of the loop
            self._publish_status()
        logger.info("replay %s %s at row %d of %d (%d rows sent this run)", replay.replay_id, self.state,
                    self.next_row, self.log.num_rows, self.rows_sent)
        snapshot = self._snapshot()
        self.on_status(snapshot)
        return snapshot


#: Produce errors a retry of the same batch cannot cure: the topic's own settings or permissions refuse it
#: (the replay retried them 5 times, then exited on the producer's "Erroneous state" that followed).
def _usable(event_us: int | None) -> int | None:
    """``event_us`` when a replay can send it (from 1970 to :data:`_MAX_EVENT_US`), else None."""
    return event_us if event_us is not None and 0 <= event_us < _MAX_EVENT_US else None


#: Seconds a commit waits before the replay looks for a topic deleted under it (:meth:`_ReplayRun._commit`).
_TOPIC_CHECK_AFTER_S: Final = 5.0


def _resumable(exc: KafkaException) -> bool:
    """Whether a failed ``commit_transaction`` may be called again (it timed out) rather than aborted."""
    error: KafkaError = exc.args[0]
    return error.retriable() and not error.txn_requires_abort() and not error.fatal()


def _commit_under_way(exc: KafkaException) -> bool:
    """Whether ``commit_transaction`` was refused because a commit of this transaction is still under way."""
    error: KafkaError = exc.args[0]
    return (error.code() == KafkaError._STATE and not error.fatal()
            and any(state in error.str() for state in _COMMIT_UNDER_WAY))


#: librdkafka's transaction states of a commit in progress (its "Operation not valid in state X").
_COMMIT_UNDER_WAY: Final = ("in state BeginCommit", "in state CommittingTransaction")
#: How long :meth:`_ReplayRun._abort` keeps calling an abort that times out before the replay fails.
_ABORT_BUDGET_S: Final = 300.0
#: librdkafka's words for a call made while an abort, or a commit, is still in progress.
_ABORT_PENDING: Final = "abort_transaction API call is already in progress"
_COMMIT_PENDING: Final = "commit_transaction API call is already in progress"
#: Seconds between two warnings of an abort that keeps waiting.
_ABORT_WARN_EVERY_S: Final = 30.0

_REFUSED_FOR_GOOD: Final = re.compile(r"Message size too large|failed to validate record|Policy violation|"
                                      r"Topic authorization failed|Record list too large|Invalid record|"
                                      r"Invalid timestamp", re.IGNORECASE)


def _too_large(size: int) -> str:
    return (f"too_large: row too large for one Kafka message: {size:,} bytes encoded, the replay sends at most "
            f"{MAX_VALUE_BYTES:,} (producer message.max.bytes {_MESSAGE_MAX_BYTES:,})")


def _is_text(type_: pa.DataType) -> bool:
    return pa.types.is_string(type_) or pa.types.is_large_string(type_)


#: Commands that act on a running replay only; a finished one rejects them with a notice. A speed
#: change is taken: it sets the pace of the next course (seek or reset), so a replay that finished at
#: "max" can be brought back to a watchable speed before it replays again.
_LIVE_ONLY = frozenset({"pause", "resume"})

#: One handler per command (value -> whether the batches restart); extend together with COMMANDS.
_HANDLERS: dict[str, Callable[[_ReplayRun, object], bool]] = {
    "set_speed": _ReplayRun._on_speed,
    "pause": _ReplayRun._on_pause,
    "resume": _ReplayRun._on_resume,
    "seek": _ReplayRun._on_seek,
    "reset": _ReplayRun._on_reset,
    "stop": _ReplayRun._on_stop,
}
