"""Replay commands and status across processes.

One documented mechanism: commands are JSON records on the control topic
(``workbench.replay_control``), keyed by replay id::

    {"replay_id": "default", "command": "set_speed", "value": 600, "issued_at": 1710000000.0}

with ``command`` one of ``set_speed`` (value: speedup, 0 = max), ``pause``, ``resume``,
``seek`` (value: ISO-8601 event time), ``reset`` and ``stop``. A running replay applies each
command within one loop tick (0.1 s). Anything else on the topic (a tombstone, bytes that are
not a JSON object, an unknown command, a speed that is negative, NaN, infinite or beyond
:data:`MAX_SPEEDUP`, a seek to something that is not a time) is logged with its reason, shown in
the status (``notice``) and ignored: no record can stop a replay. Commands sent after the replay
was created but before it listened are applied too (it reads the topic from its creation time).

The replay publishes its position and a status snapshot to the compacted state topic
(``workbench.replay_state``) under the keys ``<id>/position`` and ``<id>/status``, the position
inside the same Kafka transaction as the events it covers, signed (see :mod:`._position`) so a
record written by anyone else cannot move the resume point.
:class:`ReplayController` is the client any notebook or process uses.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Final, Literal

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from workbench._units import clock_duration
from workbench.broker import NO_SUCH_TOPIC, RANGE_READER, IncompleteReadError, quiet_logs, read_range, when_ready
from workbench.config import Settings
from workbench.replay.exceptions import ReplayError
from workbench.runtime._format import format_speed  # no Kafka or widget imports: cheap from here

__all__ = ["COMMANDS", "MAX_SPEEDUP", "MIN_SPEEDUP", "STATUS_READ_TIMEOUT_S", "Command", "InvalidCommand",
           "ReplayController", "ReplayStatus", "latest_state_value", "seek_past_end"]

logger = logging.getLogger(__name__)

COMMANDS = ("set_speed", "pause", "resume", "seek", "reset", "stop")
CommandName = Literal["set_speed", "pause", "resume", "seek", "reset", "stop"]

#: Paced speeds a replay accepts (0 means unpaced). Beyond them a speed is a typo, not a wish:
#: 1e-3x would freeze the replay for days; 1e9x is "max" with extra steps.
MIN_SPEEDUP = 0.01
MAX_SPEEDUP = 1_000_000.0

#: Event times a seek accepts: what every consumer can decode (see workbench.data.validation).
_SEEK_MIN = datetime(1970, 1, 1, tzinfo=UTC)
_SEEK_MAX = datetime(2262, 4, 10, tzinfo=UTC)

#: Seconds a status read (:meth:`ReplayController.status`: the CLI's ``replay-control status``,
#: ``Workbench.replay_status()``, ``Workbench.status()`` and the panel) waits for the state topic. A
#: healthy broker answers in well under a second, a busy one at max speed within a few; beyond this
#: the broker is down or unreachable, and the user is told so instead of waiting. Reads that decide
#: where a replay resumes (its saved position) keep :func:`latest_state_value`'s longer default.
STATUS_READ_TIMEOUT_S = 8.0
#: Errors of a read that no broker answered (refused, unreachable, or silent until the deadline).
_NO_ANSWER = (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._TIMED_OUT,
              KafkaError.REQUEST_TIMED_OUT)


class InvalidCommand(ReplayError, ValueError):
    """A control record that is not a well-formed command; the message says why."""


@dataclass(frozen=True)
class Command:
    """One control command for a replay."""

    replay_id: str
    command: str
    value: Any = None
    issued_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.command not in COMMANDS:
            msg = f"The replay command must be one of {COMMANDS}. Got {self.command!r} instead."
            raise ReplayError(msg)

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, value: bytes | None) -> Command:
        """Parse and check one control record; raise :class:`InvalidCommand` saying what is wrong."""
        if value is None:
            msg = "a tombstone (no value) is not a command"
            raise InvalidCommand(msg)
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            msg = f"not JSON ({exc})"
            raise InvalidCommand(msg) from None
        if not isinstance(data, dict):
            msg = f"a command is a JSON object, not {type(data).__name__}"
            raise InvalidCommand(msg)
        replay_id, name = data.get("replay_id"), data.get("command")
        if not isinstance(replay_id, str) or not replay_id:
            msg = f"replay_id must be a non-empty string, got {replay_id!r}"
            raise InvalidCommand(msg)
        if name not in COMMANDS:
            msg = f"unknown command {name!r} (known: {', '.join(COMMANDS)})"
            raise InvalidCommand(msg)
        issued_at = data.get("issued_at", 0)
        if isinstance(issued_at, bool) or not isinstance(issued_at, int | float) or not math.isfinite(issued_at):
            msg = f"issued_at must be a number of seconds since 1970, got {issued_at!r}"
            raise InvalidCommand(msg)
        value_ = data.get("value")
        try:
            if name == "set_speed":
                value_ = validate_speed(value_)
            elif name == "seek":
                if not isinstance(value_, str):
                    msg = f"seek needs an ISO-8601 date-time string, got {value_!r}"
                    raise InvalidCommand(msg)
                value_ = _parse_time(value_).isoformat()
        except InvalidCommand:
            raise
        except ReplayError as exc:
            raise InvalidCommand(str(exc)) from None
        return cls(replay_id, name, value_, float(issued_at))


#: An active replay publishes its status about every second; a status this much older is silent.
SILENT_AFTER_S = 30.0


@dataclass(frozen=True)
class ReplayStatus:
    """A snapshot of a replay's progress, for people and notebooks."""

    replay_id: str
    file: str
    state: str  # starting | running | paused | finished | stopped | failed
    speedup: float
    rows_sent: int
    rows_total: int
    next_row: int
    event_time: datetime | None
    first_event_time: datetime | None
    last_event_time: datetime | None
    rate_now: float  # rows/s over the last seconds (0 right after a command, until measured again)
    rate_avg: float  # rows/s over the time spent sending since the start, the last seek or reset
    eta_seconds: float | None
    dead_letters: int = 0
    pack: int = 1
    #: The message encoding (:data:`workbench.data.codec.ENCODINGS`); None from an older replay.
    encoding: str | None = None
    error: str | None = None
    updated_at: float = field(default_factory=time.time)
    #: Whether the replay sends more slowly than its speed asks, and by how much event time.
    behind: bool = False
    behind_seconds: float = 0.0
    #: A finished replay that still takes seek and reset (it runs under the workbench).
    listening: bool = False
    #: The last command the replay rejected, and why (for a UI to show).
    notice: str | None = None
    #: Rows before ``next_row`` never sent: a seek forward skipped them (a reset or seek back sends them).
    rows_skipped: int = 0
    #: ``issued_at`` of the last command the replay took (applied or refused): a status after a command.
    applied_command_at: float | None = None
    #: Event messages sent this run (``rows_sent`` of them): how many events a message of lag stands for.
    messages_sent: int = 0

    @property
    def fraction(self) -> float:
        """Share of the file replayed (0..1)."""
        return self.next_row / self.rows_total if self.rows_total else 1.0

    @property
    def active(self) -> bool:
        return self.state in ("starting", "running", "paused")

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    def silence(self, now: float | None = None) -> float | None:
        """Seconds since this status was published, when the replay should have published again since
        (an active or listening replay reports every second: see :data:`SILENT_AFTER_S`); else None.

        The status record outlives its replay: after a kill -9 of the whole workbench the last one
        still says "running" until a new replay publishes.
        """
        age = (time.time() if now is None else now) - self.updated_at
        return age if (self.active or self.listening) and age > SILENT_AFTER_S else None

    @property
    def controls(self) -> tuple[str, ...]:
        """The commands this replay can act on now (a UI disables the others)."""
        if self.state in ("running", "starting"):
            return ("set_speed", "pause", "seek", "reset", "stop")
        if self.state == "paused":
            return ("set_speed", "resume", "seek", "reset", "stop")
        if self.state == "finished" and self.listening:
            return ("set_speed", "seek", "reset", "stop")  # the speed is kept for the next course
        return ()

    @classmethod
    def from_json(cls, value: bytes) -> ReplayStatus:
        """A status as :meth:`to_json` wrote it; ReplayError (naming the field) for any other record.

        The state topic is writable by any client: a record that is not a status must not stop
        whatever reads it (``workbench status``, the panel), nor pass for one with values of other types.
        """
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            msg = f"a replay status record is not JSON ({exc})"
            raise ReplayError(msg) from None
        if not isinstance(data, dict):
            msg = f"a replay status record is a JSON object, not {type(data).__name__}"
            raise ReplayError(msg)
        known = {f.name: f for f in fields(cls)}
        data = {key: item for key, item in data.items() if key in known}  # a newer writer's extra fields
        missing = [f.name for f in known.values() if f.name not in data and f.default is MISSING
                   and f.default_factory is MISSING]
        if missing:
            msg = f"a replay status record lacks {missing[:5]}"
            raise ReplayError(msg)
        for key, item in data.items():
            kinds = _STATUS_TYPES.get(key, (object,))
            if kinds != (object,) and type(item) not in kinds:
                msg = f"field {key!r} of a replay status record must be {kinds[0].__name__}. Got {item!r:.60}"
                raise ReplayError(msg)
        for key in ("event_time", "first_event_time", "last_event_time"):
            if data.get(key):
                try:
                    data[key] = datetime.fromisoformat(data[key])
                except ValueError:
                    msg = f"field {key!r} of a replay status record is not an ISO-8601 time. Got {data[key]!r:.60}"
                    raise ReplayError(msg) from None
        return cls(**data)

    @classmethod
    def parses(cls, value: bytes) -> bool:
        """Whether ``value`` is a status record (see :meth:`from_json`)."""
        try:
            cls.from_json(value)
        except ReplayError:
            return False
        return True

    def __str__(self) -> str:
        clock = self.event_time.strftime("%Y-%m-%d %H:%M:%S") if self.event_time else "-"
        speed = format_speed(self.speedup)
        eta = f", ETA {clock_duration(self.eta_seconds)}" if self.eta_seconds is not None else ""
        if self.behind:
            eta += f", {self.behind_seconds:,.0f} s of event time behind"
        skipped = f" | {self.rows_skipped:,} rows skipped by a seek forward, not sent yet" if self.rows_skipped else ""
        return (
            f"replay {self.replay_id} [{self.state}] {clock} UTC | row {self.next_row:,} of {self.rows_total:,} "
            f"({self.fraction:.1%}) | {self.rate_now:,.0f} rows/s now, {self.rate_avg:,.0f} avg | {speed}{eta}"
            f"{skipped}"
        )


_NUMBER: Final = (float, int)
#: The JSON types of each status field, as :meth:`ReplayStatus.to_json` writes them (the first names it).
_STATUS_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "replay_id": (str,), "file": (str,), "state": (str,), "speedup": _NUMBER, "rows_sent": (int,),
    "rows_total": (int,), "next_row": (int,), "event_time": (str, type(None)), "first_event_time": (str, type(None)),
    "last_event_time": (str, type(None)), "rate_now": _NUMBER, "rate_avg": _NUMBER,
    "eta_seconds": (*_NUMBER, type(None)), "dead_letters": (int,), "pack": (int,), "encoding": (str, type(None)),
    "error": (str, type(None)), "updated_at": _NUMBER, "behind": (bool,), "behind_seconds": _NUMBER,
    "listening": (bool,), "notice": (str, type(None)), "rows_skipped": (int,),
    "applied_command_at": (*_NUMBER, type(None)), "messages_sent": (int,),
}


def seek_past_end(when: datetime, first: datetime | None, last: datetime | None) -> str | None:
    """Why a seek to ``when`` is not sent, for a log of events ``first`` .. ``last``: it lies after the last
    one (a mistyped year; the replay would jump to its end). None when it may be sent."""
    if last is None or when <= last:
        return None
    first = first or last
    return (f"seek not sent: {when:%Y-%m-%d %H:%M:%S} UTC is after the log's last event "
            f"({last:%Y-%m-%d %H:%M:%S} UTC); pick a time from {first:%Y-%m-%d %H:%M:%S} to "
            f"{last:%Y-%m-%d %H:%M:%S} UTC")  # to the second: 23:59:59 was refused under "to ... 23:59" (40th)


def seek_before_start(when: datetime, first: datetime | None) -> str | None:
    """What a seek to ``when`` does when it lies before the log's ``first`` event: the replay restarts
    from its first row (said after "sent"). None when it does not."""
    if first is None or when >= first:
        return None
    return (f"{when:%Y-%m-%d %H:%M:%S} UTC is before the log's first event ({first:%Y-%m-%d %H:%M:%S} UTC), "
            "so the replay restarts from its first row")


def _parse_time(value: datetime | str) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            msg = f"seek needs an ISO-8601 date-time such as 2024-03-05T12:00:00. Got {value!r} instead."
            raise ReplayError(msg) from exc
    if not isinstance(value, datetime):
        msg = f"seek needs a date-time. Got {value!r} instead."
        raise ReplayError(msg)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        value = value.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        msg = f"seek needs a date-time between {_SEEK_MIN:%Y-%m-%d} and {_SEEK_MAX:%Y-%m-%d}. Got {value!r} instead."
        raise ReplayError(msg) from exc
    if not _SEEK_MIN <= value < _SEEK_MAX:
        msg = f"seek needs a date-time between {_SEEK_MIN:%Y-%m-%d} and {_SEEK_MAX:%Y-%m-%d}. Got {value} instead."
        raise ReplayError(msg)
    return value


def _latest_value(consumer: Consumer, topic: str, start: int, end: int, wanted: bytes,
                  deadline: float, accept: Callable[[bytes], bool] | None) -> bytes | None:
    """Latest value of ``wanted`` in offsets [start, end) of the state partition that ``accept`` takes."""
    latest: bytes | None = None
    for message in read_range(consumer, topic, 0, start, end, deadline):
        if message.key() != wanted or message.value() is None:
            continue
        if accept is not None and not accept(message.value()):
            logger.warning("ignoring the record under %r at offset %d of %s: not written by a replay of this "
                           "workbench", wanted.decode(errors="replace"), message.offset(), topic)
            continue
        latest = message.value()
    return latest


def _partition_leader(consumer: Consumer, topic: str) -> str | None:
    """"broker N" (or "none elected") leading partition 0 of ``topic`` when the cluster answers metadata
    within 2 s, else None (no broker answers)."""
    try:
        meta = consumer.list_topics(topic, timeout=2.0)
    except KafkaException:
        return None
    if not meta.brokers:
        return None
    partition = (meta.topics.get(topic).partitions or {}).get(0) if meta.topics.get(topic) else None
    if partition is None or partition.leader < 0:
        return "none elected"
    return f"broker {partition.leader}"


def latest_state_value(settings: Settings, key: str, *, committed: bool = False, timeout: float = 30.0,
               accept: Callable[[bytes], bool] | None = None) -> bytes | None:
    """The latest value under ``key`` in the replay state topic, or None if it has none.

    ``committed=True`` reads only records of committed transactions (positions, which decide
    where a replay resumes); its end is then the last stable offset, which the watermark query
    reports under that isolation level. Status snapshots don't need that and are read without it.
    ``accept`` (optional) skips records it returns False for (forged positions), so the latest
    accepted one is returned.

    Raises
    ------
    ReplayError
        If the topic cannot be read to its end within ``timeout`` seconds: an unknown answer
        must never pass for "no saved position".
    """
    consumer = Consumer(quiet_logs(
        {
            **settings.kafka_client_config(),
            "group.id": f"workbench-state-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed" if committed else "read_uncommitted",
            "auto.offset.reset": "earliest",
            **RANGE_READER,
            "log_level": 3,
        }
    ))
    wanted = key.encode()
    topic = settings.topic_replay_state
    deadline = time.monotonic() + timeout
    try:
        try:
            low, high = when_ready(
                lambda remaining: consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=remaining),
                deadline)
        except KafkaException as exc:
            code = exc.args[0].code() if exc.args else None
            if code in NO_SUCH_TOPIC:
                return None
            if code in _NO_ANSWER:
                from workbench.broker import raise_if_login_refused

                raise_if_login_refused(settings)  # a refused password reads as no answer here
                leader = _partition_leader(consumer, topic)
                if leader is not None:  # the cluster answers: one broker, or one partition's leadership, is away
                    msg = (f"Could not read the replay state topic {topic!r} at {settings.bootstrap_servers}: the "
                           f"cluster answers, but partition 0's leader ({leader}) did not within {timeout:g} s "
                           f"({exc.args[0].str() if exc.args else exc}): a broker down or its leadership moving; Kafka "
                           "elects another leader within seconds")
                    raise ReplayError(msg) from None
                if "," in settings.bootstrap_servers:  # a cluster: one broker away is the likelier story
                    msg = (f"Could not read the replay state topic {topic!r} at {settings.bootstrap_servers}: no "
                           f"answer within {timeout:g} s (a broker down or a leader moving, which Kafka settles "
                           "within seconds, or the cluster unreachable)")
                    raise ReplayError(msg) from None
                msg = (f"Could not read the replay state topic {topic!r} at {settings.bootstrap_servers}: no Kafka "
                       f"broker answered within {timeout:g} s (down or unreachable). Is the workbench running "
                       "(`workbench status`)? KAFKA_BOOTSTRAP_SERVERS or WORKBENCH_KAFKA_PORT say where its broker is.")
                raise ReplayError(msg) from None
            msg = f"Could not read the replay state topic {topic!r} at {settings.bootstrap_servers}: {exc}"
            raise ReplayError(msg) from exc
        if high <= low:
            return None
        # The newest records almost always hold the key (a running replay writes it every
        # second): read the tail first, the whole compacted topic only when that misses.
        try:
            tail_start = max(low, high - 64)
            latest = _latest_value(consumer, topic, tail_start, high, wanted, deadline, accept)
            if latest is None and tail_start > low:
                latest = _latest_value(consumer, topic, low, high, wanted, deadline, accept)
        except IncompleteReadError:
            msg = (f"Could not read {key!r} from the replay state topic {topic!r} at "
                   f"{settings.bootstrap_servers} within {timeout:g} s (offsets {low}..{high}); is the broker "
                   "overloaded or unreachable?")
            raise ReplayError(msg) from None
        return latest
    finally:
        consumer.close()


class ReplayController:
    """Steer a replay that runs in any process, and read its status.

    Examples
    --------
    >>> ctl = ReplayController(settings, "default")  # doctest: +SKIP
    >>> ctl.set_speed(3600); ctl.pause(); ctl.seek("2024-03-05T12:00"); ctl.resume()  # doctest: +SKIP
    """

    def __init__(self, settings: Settings, replay_id: str = "default") -> None:
        self.settings = settings
        self.replay_id = replay_id
        self._producer: Producer | None = None

    def _send(self, command: str, value: Any = None) -> None:
        if self._producer is None:
            self._producer = Producer(quiet_logs({**self.settings.kafka_client_config(), "linger.ms": 0,
                                                   "log_level": 3}))
        cmd = Command(self.replay_id, command, value)
        failed: list[str] = []
        self._producer.produce(self.settings.topic_replay_control, key=self.replay_id.encode(), value=cmd.encode(),
                               on_delivery=lambda error, _message: error is None or failed.append(error.str()))
        if self._producer.flush(10) != 0 or failed:
            self._producer.purge()  # a command the user was told failed must not arrive later
            why = failed[0] if failed else (f"not delivered in 10 s: no Kafka broker answered at "
                                            f"{self.settings.bootstrap_servers}, or it lacks the topic "
                                            "(`workbench topics` creates it)")
            msg = (f"Could not deliver the {command!r} command to {self.settings.topic_replay_control}: {why}. "
                   "Is the workbench running (`workbench status`)? KAFKA_BOOTSTRAP_SERVERS or WORKBENCH_KAFKA_PORT "
                   "say where its broker is.")
            raise ReplayError(msg)

    def set_speed(self, speedup: float) -> None:
        """Event seconds per wall second; 0 (or ``"max"``) sends as fast as the broker takes."""
        self._send("set_speed", validate_speed(speedup))

    def pause(self) -> None:
        self._send("pause")

    def resume(self) -> None:
        self._send("resume")

    def seek(self, event_time: datetime | str) -> None:
        """Continue from the first row at or after ``event_time`` (UTC if no zone is given).

        Raises :class:`ReplayError` for a time after the log's last event (from the replay's status): the
        replay would jump to its end, skipping the rest of the log after "sent" (a mistyped year).
        """
        when = _parse_time(event_time)
        status = self.status()
        refused = seek_past_end(when, status.first_event_time, status.last_event_time) if status else None
        if refused:
            raise ReplayError(refused)
        self._send("seek", when.isoformat())

    def reset(self) -> None:
        """Start over from the first row."""
        self._send("reset")

    def stop(self) -> None:
        self._send("stop")

    def status(self, timeout: float = STATUS_READ_TIMEOUT_S) -> ReplayStatus | None:
        """The replay's latest published status, or None if it never ran.

        Raises :class:`ReplayError` when the state topic cannot be read within ``timeout`` seconds
        (the broker is down or unreachable): an answer within seconds, not a wait.
        """
        # a record that is not a status (any client can write the topic) is passed over for the one before
        value = latest_state_value(self.settings, f"{self.replay_id}/status", timeout=timeout,
                                   accept=ReplayStatus.parses)
        return ReplayStatus.from_json(value) if value else None


def validate_speed(speedup: float | str) -> float:
    """A checked speed: 0 for unpaced ("max", "0"), else a finite number in [MIN_SPEEDUP, MAX_SPEEDUP]."""
    given = speedup
    if isinstance(speedup, str):
        if speedup.strip().lower() in ("max", "0"):
            return 0.0
        try:
            speedup = float(speedup.strip().rstrip("xX"))
        except ValueError as exc:
            msg = f"The speedup must be a number or 'max'. Got {speedup!r} instead."
            raise ReplayError(msg) from exc
    if isinstance(speedup, bool) or not isinstance(speedup, int | float):
        msg = f"The speedup must be a number or 'max'. Got {speedup!r} instead."
        raise ReplayError(msg)
    if speedup == 0:
        return 0.0
    if not math.isfinite(speedup) or not MIN_SPEEDUP <= speedup <= MAX_SPEEDUP:
        msg = (f"The speedup must be between {MIN_SPEEDUP:g} and {MAX_SPEEDUP:,.0f} event seconds per wall second, "
               f"or 0/'max' for as fast as possible. Got {given!r} instead.")
        raise ReplayError(msg)
    return float(speedup)
