"""The replay: a sorted Parquet query log turned into a paced stream on ``redshift.query_events``.

Exactly-once by construction: every batch of events is produced inside one Kafka transaction
together with the replay's new position (on the compacted state topic). A replay killed at
any point resumes from the last committed position, and consumers reading committed data
(``isolation.level=read_committed``) never see a row twice nor miss one.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from workbench.broker import ensure_topics
from workbench.config import Settings, get_settings
from workbench.data import codec
from workbench.replay._control import Command, ReplayStatus, _parse_time, _validate_speed, read_state
from workbench.replay._pacing import Clock, Pacer, SystemClock
from workbench.replay._source import LogFile, validate_log
from workbench.replay.exceptions import ReplayError

__all__ = ["BatchReport", "Replay"]

logger = logging.getLogger(__name__)

_US = 1_000_000

#: What encoding a row can raise (e.g. a timestamp beyond year 9999 has no Python datetime).
_ENCODE_ERRORS = (TypeError, ValueError, OverflowError, pa.ArrowException)


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
    pack : int
        1 sends one query per JSON message; N > 1 packs up to N consecutive queries of one
        instance into one Arrow message (see :mod:`workbench.data.codec`).
    replay_id : str
        Names the replay's position, status and commands; one running replay per id.
    reset : bool
        Ignore the saved position and start from the first row.
    batch_size : int
        Most rows per transaction; also the largest catch-up burst.
    pack_span_s : float
        A packed message never spans more than this much event time. Keep it below the stream
        analytics' grace period (5 min): then no packed message can reach into a window that
        event time has already closed.
    clock : Clock, optional
        Wall clock (tests pass a fake one).
    observer : callable, optional
        Called with a :class:`BatchReport` after each committed batch.
    """

    def __init__(
        self,
        data: str | Path,
        *,
        settings: Settings | None = None,
        speedup: float | str = 600.0,
        pack: int = 1,
        replay_id: str = "default",
        reset: bool = False,
        batch_size: int = 5000,
        clock: Clock | None = None,
        observer: Callable[[BatchReport], None] | None = None,
        tick: float = 0.1,
        validate: bool = True,
        pack_span_s: float = 180.0,
    ) -> None:
        self.data = Path(data).expanduser().resolve()
        self.settings = settings or get_settings()
        self.speedup = _validate_speed(speedup)
        if not isinstance(pack, int) or pack < 1:
            msg = f"The pack parameter of Replay must be an integer >= 1. Got {pack!r} instead."
            raise ReplayError(msg)
        if batch_size < 1:
            msg = f"The batch_size parameter of Replay must be >= 1. Got {batch_size!r} instead."
            raise ReplayError(msg)
        self.pack = pack
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
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._status_lock = threading.Lock()
        self._status: ReplayStatus | None = None
        self._error: BaseException | None = None

    # -- control (thread-safe; the same commands arrive from other processes via the topic) ----
    def _command(self, name: str, value: object = None) -> None:
        self._commands.put(Command(self.replay_id, name, value))

    def set_speed(self, speedup: float | str) -> None:
        """Change the speed; takes effect within one tick without a jump in event time."""
        self._command("set_speed", _validate_speed(speedup))

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
        return _ReplayRun(self, timeout=timeout, progress=progress).execute()


class _ReplayRun:
    """The state of one run of a :class:`Replay` (kept apart so the public object stays small)."""

    def __init__(self, replay: Replay, *, timeout: float | None,
                 progress: Callable[[ReplayStatus], None] | None) -> None:
        self.replay = replay
        self.settings = replay.settings
        self.clock = replay.clock
        self.timeout = timeout
        self.progress = progress
        self.pacer = Pacer(replay.speedup)
        self.position_key = f"{replay.replay_id}/position".encode()
        self.status_key = f"{replay.replay_id}/status".encode()
        self.rows_sent = 0
        self.dead_letters = 0
        self.state = "starting"
        self.started = self.clock.monotonic()
        self.rate_now = 0.0
        self._rate_mark = (self.started, 0)
        self._last_status_publish = -1e9
        self.current_event_us: int | None = None
        self._last_commit = -1e9
        self._pending_dead_letters: list[tuple[bytes, list]] = []

    # -- setup ---------------------------------------------------------------------------------
    def _open(self) -> None:
        replay = self.replay
        if replay.validate:
            validate_log(replay.data)
        self.log = LogFile(replay.data)
        self.first_event_us = self.log.first_time_us()
        self.last_event_us = self.log.last_time_us()
        ensure_topics(self.settings)
        self.producer = Producer(
            {
                **self.settings.kafka_client_config(),
                "transactional.id": f"workbench-replay-{replay.replay_id}",
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 20,
                "batch.size": 1_000_000,
                "compression.type": "lz4",
                "partitioner": "murmur2_random",  # the Java clients' partitioner: same key, same partition
                "queue.buffering.max.messages": 1_000_000,
                "transaction.timeout.ms": 60_000,
                "log_level": 4,
            }
        )
        try:
            self.producer.init_transactions(30)
        except KafkaException as exc:
            msg = f"Could not initialise the replay's Kafka transactions at {self.settings.bootstrap_servers}: {exc}"
            raise ReplayError(msg) from exc
        # Only now: init_transactions has fenced (and so aborted) any open transaction of a killed
        # predecessor, so the committed position below is final.
        self.next_row = 0 if replay.reset else self._saved_position()
        self.control = Consumer(
            {
                **self.settings.kafka_client_config(),
                "group.id": f"workbench-replay-control-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "latest",
                "log_level": 3,
            }
        )
        control_partition = TopicPartition(self.settings.topic_replay_control, 0)
        _, high = self.control.get_watermark_offsets(control_partition, timeout=10)
        # Only commands issued from now on apply; old ones in the topic are history.
        self.control.assign([TopicPartition(self.settings.topic_replay_control, 0, high)])

    def _saved_position(self) -> int:
        value = read_state(self.settings, self.position_key.decode(), committed=True)
        if value is None:
            return 0
        saved = orjson.loads(value)
        if saved.get("fingerprint") != self.log.fingerprint:
            msg = (
                f"Replay {self.replay.replay_id!r} has a saved position in another file "
                f"({saved.get('file')}, row {saved.get('next_row')}), not {self.replay.data}. "
                "Pass reset=True (CLI: --reset) to start this file from its first row, or use another replay_id."
            )
            raise ReplayError(msg)
        return int(saved["next_row"])

    # -- commands --------------------------------------------------------------------------------
    def _drain_commands(self) -> list[Command]:
        commands: list[Command] = []
        while True:
            try:
                commands.append(self.replay._commands.get_nowait())
            except queue.Empty:
                break
        for message in self.control.consume(num_messages=100, timeout=0):
            if message.error():
                continue
            try:
                command = Command.decode(message.value())
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning("ignoring malformed replay command %r: %s", message.value()[:200], exc)
                continue
            if command.replay_id == self.replay.replay_id:
                commands.append(command)
        return commands

    def _apply(self, command: Command) -> bool:
        """Apply one command; True when the iterator must restart at ``self.next_row``."""
        now = self.clock.monotonic()
        logger.info("replay %s: %s %s", self.replay.replay_id, command.command, command.value or "")
        if command.command == "set_speed":
            self.pacer.set_speed(_validate_speed(command.value), now, self.current_event_us)
            self.replay.speedup = self.pacer.speedup
        elif command.command == "pause":
            self.pacer.pause(now, self.current_event_us)
            self.state = "paused"
        elif command.command == "resume":
            self.pacer.resume(now)
            self.state = "running"
        elif command.command in ("seek", "reset"):
            if command.command == "reset":
                self.next_row = 0
            else:
                target = int(_parse_time(command.value).timestamp() * _US)
                self.next_row = self.log.row_at_or_after(target)
            event_us = self.log.event_time_us(self.next_row)
            if event_us is not None:
                paused = self.pacer.paused
                self.pacer.anchor(event_us, now)
                self.current_event_us = event_us
                if paused:
                    self.state = "paused"
            # The new position is committed at once, so a restart continues from here.
            self._commit_batch([], self.next_row, force_status=True)
            return True
        elif command.command == "stop":
            self.state = "stopped"
        return False

    # -- sending ---------------------------------------------------------------------------------
    def _encode(self, batch: pa.RecordBatch, first_row: int) -> list[tuple[bytes, bytes, int, list]]:
        """(key, value, timestamp_ms, headers) per message, in order; bad rows go to dead letters."""
        keys = batch.column("instance_id").to_numpy()
        times_ms = pc.cast(batch.column("arrival_timestamp"), pa.int64()).to_numpy() // 1000
        if self.replay.pack == 1:
            try:
                values = codec.encode_json(batch)
            except _ENCODE_ERRORS:
                values = []
                for index in range(batch.num_rows):
                    try:
                        values.extend(codec.encode_json(batch.slice(index, 1)))
                    except _ENCODE_ERRORS as exc:
                        values.append(None)  # type: ignore[arg-type]
                        self._dead_letter(batch.slice(index, 1), first_row + index, f"cannot encode row: {exc}")
            headers = codec.message_headers(codec.ENCODING_JSON, 1)
            return [
                (str(key).encode(), value, int(ts), headers)
                for key, value, ts in zip(keys, values, times_ms, strict=True)
                if value is not None
            ]
        # Packed: runs of up to `pack` consecutive rows of one instance, order kept per instance.
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        boundaries = np.flatnonzero(np.diff(sorted_keys)) + 1
        messages = []
        span_us = int(self.replay.pack_span_s * _US)
        for group in np.split(order, boundaries):
            for indices in _runs(group, times_ms[group] * 1000, self.replay.pack, span_us):
                piece = batch.take(pa.array(indices))
                try:
                    value = codec.encode_arrow(piece)
                except _ENCODE_ERRORS as exc:
                    self._dead_letter(piece, first_row + int(indices[0]), f"cannot encode rows: {exc}")
                    continue
                headers = codec.message_headers(codec.ENCODING_ARROW, len(indices))
                messages.append((str(keys[indices[0]]).encode(), value, int(times_ms[indices[0]]), headers))
        messages.sort(key=lambda message: message[2])
        return messages

    def _dead_letter(self, rows: pa.RecordBatch, row: int, reason: str) -> None:
        """Queue rows that cannot be encoded for the dead-letter topic (sent in the next transaction)."""
        self.dead_letters += 1
        logger.warning("replay %s: row %d of %s sent to dead letters: %s", self.replay.replay_id, row,
                       self.replay.data, reason)
        # Every value as text: the row failed to convert to Python objects once already.
        as_text = {name: pc.cast(rows.column(name), pa.string()).to_pylist() for name in rows.schema.names}
        value = orjson.dumps({"source": str(self.replay.data), "row": row, "reason": reason, "columns": as_text})
        headers = [("reason", reason.encode()), ("source", b"replay"), ("file", str(self.replay.data).encode()),
                   ("row", str(row).encode())]
        self._pending_dead_letters.append((value, headers))

    def _produce(self, topic: str, key: bytes | None, value: bytes, timestamp: int = 0,
                 headers: list | None = None) -> None:
        while True:
            try:
                self.producer.produce(topic, key=key, value=value, timestamp=timestamp, headers=headers)
                return
            except BufferError:
                self.producer.poll(0.05)

    def _commit_batch(self, messages: list, next_row: int, *, force_status: bool = False) -> None:
        """Produce ``messages`` and the new position in one transaction (retrying abortable errors)."""
        for attempt in range(1, 6):
            try:
                self.producer.begin_transaction()
                for key, value, timestamp, headers in messages:
                    self._produce(self.settings.topic_query_events, key, value, timestamp, headers)
                for value, headers in self._pending_dead_letters:
                    self._produce(self.settings.topic_dead_letter, None, value, 0, headers)
                position = {
                    "replay_id": self.replay.replay_id, "file": str(self.replay.data),
                    "fingerprint": self.log.fingerprint, "next_row": next_row, "rows_total": self.log.num_rows,
                }
                self._produce(self.settings.topic_replay_state, self.position_key, orjson.dumps(position))
                now = self.clock.monotonic()
                if force_status or now - self._last_status_publish >= 1.0:
                    self._last_status_publish = now
                    self._produce(self.settings.topic_replay_state, self.status_key,
                                  self._snapshot(next_row).to_json())
                self.producer.commit_transaction(60)
                self._pending_dead_letters.clear()
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.fatal() or (not error.txn_requires_abort() and not error.retriable()):
                    msg = f"Replay {self.replay.replay_id!r} cannot write to Kafka: {error.str()}"
                    raise ReplayError(msg) from exc
                logger.warning("replay transaction failed (attempt %d): %s; retrying", attempt, error.str())
                if error.txn_requires_abort():
                    self.producer.abort_transaction(30)
                time.sleep(min(2.0, 0.1 * 2**attempt))
        msg = f"Replay {self.replay.replay_id!r} could not commit a batch after 5 attempts."
        raise ReplayError(msg)

    # -- status ---------------------------------------------------------------------------------
    def _snapshot(self, next_row: int | None = None) -> ReplayStatus:
        now = self.clock.monotonic()
        next_row = self.next_row if next_row is None else next_row
        mark_time, mark_rows = self._rate_mark
        if now - mark_time >= 1.0:
            instant = (self.rows_sent - mark_rows) / (now - mark_time)
            self.rate_now = instant if self.rate_now == 0 else 0.5 * self.rate_now + 0.5 * instant
            self._rate_mark = (now, self.rows_sent)
        elapsed = max(now - self.started, 1e-9)
        rate_avg = self.rows_sent / elapsed
        last_us = self.last_event_us
        remaining_rows = self.log.num_rows - next_row
        eta: float | None
        if remaining_rows <= 0:
            eta = 0.0
        elif self.pacer.paused:
            eta = None
        elif self.pacer.speedup > 0 and last_us is not None and self.current_event_us is not None:
            eta = max(0.0, (last_us - self.current_event_us) / _US / self.pacer.speedup)
        else:
            rate = self.rate_now or rate_avg
            eta = remaining_rows / rate if rate > 0 else None
        return ReplayStatus(
            replay_id=self.replay.replay_id, file=str(self.replay.data), state=self.state,
            speedup=self.pacer.speedup, rows_sent=self.rows_sent, rows_total=self.log.num_rows,
            next_row=next_row, event_time=_us_to_datetime(self.current_event_us),
            first_event_time=_us_to_datetime(self.first_event_us), last_event_time=_us_to_datetime(last_us),
            rate_now=self.rate_now, rate_avg=rate_avg, eta_seconds=eta, dead_letters=self.dead_letters,
            pack=self.replay.pack,
        )

    def _publish_status(self, force: bool = False) -> None:
        snapshot = self._snapshot()
        with self.replay._status_lock:
            self.replay._status = snapshot
        if self.progress is not None:
            self.progress(snapshot)
        now = self.clock.monotonic()
        if force or now - self._last_status_publish >= 1.0:
            self._commit_batch([], self.next_row, force_status=True)

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
            self.producer.flush(10)

    def _loop(self) -> ReplayStatus:
        replay = self.replay
        batches = self.log.batches(self.next_row, replay.batch_size)
        pending: pa.RecordBatch | None = None
        pending_first_row = self.next_row
        pending_times: np.ndarray | None = None
        deadline = None if self.timeout is None else self.started + self.timeout
        first_event = self.log.event_time_us(self.next_row)
        if first_event is not None:
            self.pacer.anchor(first_event, self.clock.monotonic())
            self.current_event_us = first_event
        self.state = "running"
        logger.info("replay %s: %s from row %d of %d at %s", replay.replay_id, replay.data, self.next_row,
                    self.log.num_rows, "max speed" if self.pacer.unpaced else f"{self.pacer.speedup:g}x")
        self._publish_status(force=True)
        while True:
            restart = False
            for command in self._drain_commands():
                restart = self._apply(command) or restart
            if self.state == "stopped":
                break
            if restart:
                batches = self.log.batches(self.next_row, replay.batch_size)
                pending = None
            if deadline is not None and self.clock.monotonic() >= deadline:
                self.state = "stopped"
                break
            if self.pacer.paused:
                self._publish_status()
                self.clock.sleep(replay.tick)
                continue
            if pending is None:
                try:
                    pending_first_row, pending = next(batches)
                except StopIteration:
                    self.state = "finished"
                    break
                pending_times = pc.cast(pending.column("arrival_timestamp"), pa.int64()).to_numpy()
            now = self.clock.monotonic()
            assert pending_times is not None
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
            messages = self._encode(chunk, pending_first_row)
            next_row = pending_first_row + count
            self._commit_batch(messages, next_row)
            self._last_commit = now
            self.rows_sent += count
            self.next_row = next_row
            self.current_event_us = int(pending_times[count - 1])
            if replay.observer is not None:
                replay.observer(BatchReport(pending_first_row, count, len(messages), int(pending_times[0]),
                                            int(pending_times[count - 1]), now, self.pacer.speedup))
            if count < pending.num_rows:
                pending = pending.slice(count)
                pending_times = pending_times[count:]
                pending_first_row = next_row
            else:
                pending = None
            self._publish_status()
        logger.info("replay %s %s at row %d of %d (%d rows sent this run)", replay.replay_id, self.state,
                    self.next_row, self.log.num_rows, self.rows_sent)
        snapshot = self._snapshot()
        with replay._status_lock:
            replay._status = snapshot
        return snapshot
