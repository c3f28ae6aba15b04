"""The event-time guard: an event whose time is implausible for the stream is rejected, not obeyed.

Event time drives everything time-based in the apps (window closing, training days, archive
cuts) and only moves forward, so one event dated 2035 would close every window and schedule a
decade of trainings. :class:`EventTimeGuard` is asked before an event can move anything; an event
it rejects goes to the dead-letter topic with reason ``event_time_out_of_range``.

Rules (``Settings.event_time_min`` / ``event_time_max`` / ``event_time_horizon_s``):

* absolute: ``event_time_min <= t < event_time_max`` (default years 2000 to 2100);
* relative: ``watermark - past_horizon <= t <= watermark + horizon`` (defaults 366 and 7 days),
  where the watermark is the latest event time the guard accepted. Redset's longest quiet gap on
  one instance is hours to a few days, and the guard keeps one watermark per app (all instances),
  so real gaps never trip it. Events *behind* the watermark are accepted within the past horizon
  (late events, replay resets and backward seeks are real; a log longer than a year that is reset
  re-anchors like a forward jump, below); they cannot move anything forward. An event decades
  behind the stream is as implausible as one decades ahead.

The watermark lives as long as the app process. It is deliberately not seeded from stored data:
a new log replayed into the same home may start months after the last one, and a restarted app
must accept it (every ``Workbench.start`` starts new app processes). The first events of a
process have no watermark: a batch consumer (scoring) uses the median of its first batch as the
reference, so one 2035 event among real ones is rejected; a per-message consumer (analytics)
has only the absolute bounds for its very first message. We chose that over a wall-clock bound
(``t <= now``) because synthetic logs may be dated in the future on purpose. Inside one running
process, a stream that really jumps more than the horizon ahead is rejected until the app
restarts (or the horizon is raised) - except that a jump the stream itself confirms is followed:

* :data:`REANCHOR_AFTER` (64) consecutive messages rejected only by the horizons, spanning at most
  one horizon among themselves and with no accepted message between them, move the watermark to
  the latest of them (a forward ``seek`` of the replay by more than the horizon; those 64 are in
  the dead-letter topic). Poisoned messages interleaved with real ones never form such a run.
* a batch consumer also accepts a batch whose *median* is ahead, when the batch holds at least
  :data:`MEDIAN_MIN_MESSAGES` messages: one message cannot move a median.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

import numpy as np

from workbench.config import Settings
from workbench.data.codec import MessageDecodeError

__all__ = ["MEDIAN_MIN_MESSAGES", "REANCHOR_AFTER", "REASON", "EventTimeGuard", "log_span_outside",
           "refuse_log_outside"]

REASON: Final = "event_time_out_of_range"
#: Consecutive ahead-only rejections (within one horizon of each other) that re-anchor the watermark.
REANCHOR_AFTER: Final = 64
#: Messages a batch needs before its median may serve as the reference.
MEDIAN_MIN_MESSAGES: Final = 16
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_US: Final = timedelta(microseconds=1)


def _us(value: datetime) -> int:
    return ((value if value.tzinfo else value.replace(tzinfo=UTC)) - _EPOCH) // _US


def _iso(us: int) -> str:
    try:
        return (_EPOCH + timedelta(microseconds=int(us))).isoformat()
    except OverflowError:
        return f"{us} us since epoch"


def log_span_outside(settings: Settings, first: datetime, last: datetime, log: object) -> tuple[bool, str] | None:
    """``(every event, message)`` when a log whose arrivals span ``[first, last]`` holds events the apps
    would dead-letter as out of the absolute range (``Settings.event_time_min/max``); None when it holds none.

    Asked before a replay starts: a log dated 1999 is valid Parquet, but every one of its events would
    land in the dead-letter topic, which a user should hear before the replay, not find after it.
    """
    lo, hi, first, last = (t if t.tzinfo else t.replace(tzinfo=UTC)
                           for t in (settings.event_time_min, settings.event_time_max, first, last))
    if lo <= first and last < hi:
        return None
    every = last < lo or first >= hi
    span = f"{first:%Y-%m-%d %H:%M:%S} .. {last:%Y-%m-%d %H:%M:%S} UTC"
    share = "every event" if every else "some events"
    msg = (f"Query log {str(log)!r} ({span}) has {share} outside the apps' event-time range "
           f"[{lo:%Y-%m-%d %H:%M:%S}, {hi:%Y-%m-%d %H:%M:%S}) UTC, which the apps send to the dead-letter topic "
           f"({REASON}). Widen the range with WORKBENCH_EVENT_TIME_MIN / WORKBENCH_EVENT_TIME_MAX (e.g. "
           f"WORKBENCH_EVENT_TIME_MIN={first:%Y-%m-%d}) if these dates are real.")
    return every, msg


def refuse_log_outside(settings: Settings, first: datetime, last: datetime, log: object) -> str | None:
    """:func:`log_span_outside` for a replay about to start: raise DataValidationError when every event is
    outside the range; the warning to give when some are; None when none is."""
    from workbench.data.exceptions import DataValidationError

    outside = log_span_outside(settings, first, last, log)
    if outside and outside[0]:
        raise DataValidationError(outside[1], path=str(log), column="arrival_timestamp")
    return outside[1] if outside else None


class EventTimeGuard:
    """Accepts or rejects event times (epoch microseconds) and keeps the stream's watermark."""

    def __init__(self, min_us: int, max_us: int, horizon_us: int, watermark_us: int | None = None,
                 past_horizon_us: int | None = None) -> None:
        self.min_us = int(min_us)
        self.max_us = int(max_us)
        self.horizon_us = int(horizon_us)
        self.past_horizon_us = int(past_horizon_us) if past_horizon_us is not None else None
        self.watermark_us = watermark_us
        self.rejected = 0
        self._ahead: list[int] = []  # the current run of ahead-only rejections (their latest times)

    @classmethod
    def from_settings(cls, settings: Settings, watermark_us: int | None = None) -> EventTimeGuard:
        """A guard with the bounds of ``settings``."""
        return cls(_us(settings.event_time_min), _us(settings.event_time_max),
                   int(settings.event_time_horizon_s * 1_000_000), watermark_us,
                   past_horizon_us=int(settings.event_time_past_horizon_s * 1_000_000))

    def reason(self, lo_us: int, hi_us: int, reference_us: int | None = None) -> str | None:
        """Why events spanning ``[lo_us, hi_us]`` are implausible, or None when they are fine."""
        if lo_us < self.min_us or hi_us >= self.max_us:
            return (f"{REASON}: event time {_iso(lo_us if lo_us < self.min_us else hi_us)} is outside "
                    f"[{_iso(self.min_us)}, {_iso(self.max_us)}) (Settings.event_time_min/max)")
        reference = self.watermark_us if self.watermark_us is not None else reference_us
        if reference is not None and hi_us > reference + self.horizon_us:
            return (f"{REASON}: event time {_iso(hi_us)} is more than {self.horizon_us / 86_400e6:g} days ahead of "
                    f"the stream ({_iso(reference)}; Settings.event_time_horizon_s)")
        if reference is not None and self.past_horizon_us is not None and lo_us < reference - self.past_horizon_us:
            return (f"{REASON}: event time {_iso(lo_us)} is more than {self.past_horizon_us / 86_400e6:g} days "
                    f"behind the stream ({_iso(reference)}; Settings.event_time_past_horizon_s)")
        return None

    def marker_reason(self, end_us: int) -> str | None:
        """Why an end-of-log marker saying the log ended at ``end_us`` is implausible, or None: its time is
        held to the bounds and horizons of an event's (a marker dated years ahead settled every later
        window of its partition for good). Asks only; the watermark does not move."""
        why = self.reason(end_us, end_us)
        return None if why is None else why.replace("event time", "end-of-log marker time", 1)

    def outside_bounds(self, when: datetime) -> str | None:
        """Why ``when`` is outside the absolute bounds (``event_time_min`` .. ``event_time_max``), or None;
        the horizons, which need a stream's watermark, are not asked."""
        at_us = _us(when)
        return self.reason(at_us, at_us) if at_us < self.min_us or at_us >= self.max_us else None

    def check(self, lo_us: int, hi_us: int, reference_us: int | None = None) -> None:
        """Raise MessageDecodeError (``event_time_out_of_range``) or advance the watermark to ``hi_us``."""
        why = self.reason(lo_us, hi_us, reference_us)
        if why is not None:
            if not self.ahead_only(lo_us, hi_us) or not self.note_ahead(hi_us):
                self.rejected += 1
                raise MessageDecodeError(REASON, why.split(": ", 1)[1])
            return  # the stream jumped: re-anchored on this message
        self.advance(hi_us)

    def check_many(self, lo_us: np.ndarray, hi_us: np.ndarray) -> list[str | None]:
        """:meth:`check` for many messages in order: each one's rejection reason, None where accepted.

        The common case (a watermark, no pending run of ahead rejections, every message plausible
        against the watermark as it moves) is one vectorised test; anything else runs :meth:`check`
        message by message, with the same outcome.
        """
        n = len(lo_us)
        if n == 0:
            return []
        lo_us = np.asarray(lo_us, dtype=np.int64)
        hi_us = np.asarray(hi_us, dtype=np.int64)
        if self.watermark_us is not None and not self._ahead:
            # the watermark each message is checked against: the previous one's, all accepted
            reference = np.maximum.accumulate(np.concatenate(([self.watermark_us], hi_us[:-1])))
            ok = (lo_us >= self.min_us) & (hi_us < self.max_us) & (hi_us <= reference + self.horizon_us)
            if self.past_horizon_us is not None:
                ok &= lo_us >= reference - self.past_horizon_us
            if ok.all():
                self.advance(int(hi_us.max()))
                return [None] * n
        out: list[str | None] = []
        for lo, hi in zip(lo_us.tolist(), hi_us.tolist(), strict=True):
            try:
                self.check(lo, hi)
            except MessageDecodeError as exc:
                out.append(str(exc))
            else:
                out.append(None)
        return out

    def ahead_only(self, lo_us: int, hi_us: int) -> bool:
        """True when the absolute bounds hold (so only the horizon rejected the times)."""
        return lo_us >= self.min_us and hi_us < self.max_us

    def note_ahead(self, hi_us: int) -> bool:
        """Record a message rejected only for being ahead; True when this run re-anchored the watermark."""
        self._ahead.append(int(hi_us))
        if max(self._ahead) - min(self._ahead) > self.horizon_us:
            self._ahead = [int(hi_us)]  # not one stream: start a new run here
        if len(self._ahead) < REANCHOR_AFTER:
            return False
        self.watermark_us = max(self._ahead)
        self._ahead = []
        return True

    def advance(self, hi_us: int) -> None:
        """Move the watermark forward to ``hi_us`` (never back); an accepted message ends a run of rejections."""
        self._ahead.clear()
        if self.watermark_us is None or hi_us > self.watermark_us:
            self.watermark_us = int(hi_us)

    def batch_reference(self, times_us: np.ndarray, messages: int) -> int | None:
        """The reference for a batch: the watermark, or the median of the batch's times when there is
        no watermark yet or when the median itself is ahead in a batch of enough messages."""
        if len(times_us) == 0:
            return self.watermark_us
        median = int(np.median(times_us))
        if self.watermark_us is None:
            return median
        if messages >= MEDIAN_MIN_MESSAGES and median > self.watermark_us + self.horizon_us:
            return median
        return self.watermark_us
