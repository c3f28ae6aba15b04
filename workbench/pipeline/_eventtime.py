"""The event-time guard: an event whose time is implausible for the stream is rejected, not obeyed.

Event time drives everything time-based in the apps (window closing, training days, archive
cuts) and only moves forward, so one event dated 2035 would close every window and schedule a
decade of trainings. :class:`EventTimeGuard` is asked before an event can move anything; an event
it rejects goes to the dead-letter topic with reason ``event_time_out_of_range``.

Rules (``Settings.event_time_min`` / ``event_time_max`` / ``event_time_horizon_s``):

* absolute: ``event_time_min <= t < event_time_max`` (default years 2000 to 2100);
* relative: ``t <= watermark + horizon`` (default 7 days), where the watermark is the latest event
  time the guard accepted. Redset's longest quiet gap on one instance is hours to a few days, and
  the guard keeps one watermark per app (all instances), so real gaps never trip it. Events
  *behind* the watermark are accepted (late events and replay resets are real); they cannot move
  anything forward.

The watermark lives as long as the app process. It is deliberately not seeded from stored data:
a new log replayed into the same home may start months after the last one, and a restarted app
must accept it (every ``Workbench.start`` starts new app processes). The first events of a
process have no watermark: a batch consumer (scoring) uses the median of its first batch as the
reference, so one 2035 event among real ones is rejected; a per-message consumer (analytics)
has only the absolute bounds for its very first message. We chose that over a wall-clock bound
(``t <= now``) because synthetic logs may be dated in the future on purpose. Inside one running
process, a stream that really jumps more than the horizon ahead is rejected until the app
restarts (or the horizon is raised): the guard cannot tell such a jump from a poisoned message.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

import numpy as np

from workbench.config import Settings
from workbench.data.codec import MessageDecodeError

__all__ = ["REASON", "EventTimeGuard"]

REASON: Final = "event_time_out_of_range"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_US: Final = timedelta(microseconds=1)


def _us(value: datetime) -> int:
    return ((value if value.tzinfo else value.replace(tzinfo=UTC)) - _EPOCH) // _US


def _iso(us: int) -> str:
    try:
        return (_EPOCH + timedelta(microseconds=int(us))).isoformat()
    except OverflowError:
        return f"{us} us since epoch"


class EventTimeGuard:
    """Accepts or rejects event times (epoch microseconds) and keeps the stream's watermark."""

    def __init__(self, min_us: int, max_us: int, horizon_us: int, watermark_us: int | None = None) -> None:
        self.min_us = int(min_us)
        self.max_us = int(max_us)
        self.horizon_us = int(horizon_us)
        self.watermark_us = watermark_us
        self.rejected = 0

    @classmethod
    def from_settings(cls, settings: Settings, watermark_us: int | None = None) -> EventTimeGuard:
        """A guard with the bounds of ``settings``."""
        return cls(_us(settings.event_time_min), _us(settings.event_time_max),
                   int(settings.event_time_horizon_s * 1_000_000), watermark_us)

    def reason(self, lo_us: int, hi_us: int, reference_us: int | None = None) -> str | None:
        """Why events spanning ``[lo_us, hi_us]`` are implausible, or None when they are fine."""
        if lo_us < self.min_us or hi_us >= self.max_us:
            return (f"{REASON}: event time {_iso(lo_us if lo_us < self.min_us else hi_us)} is outside "
                    f"[{_iso(self.min_us)}, {_iso(self.max_us)}) (Settings.event_time_min/max)")
        reference = self.watermark_us if self.watermark_us is not None else reference_us
        if reference is not None and hi_us > reference + self.horizon_us:
            return (f"{REASON}: event time {_iso(hi_us)} is more than {self.horizon_us / 86_400e6:g} days ahead of "
                    f"the stream ({_iso(reference)}; Settings.event_time_horizon_s)")
        return None

    def check(self, lo_us: int, hi_us: int, reference_us: int | None = None) -> None:
        """Raise MessageDecodeError (``event_time_out_of_range``) or advance the watermark to ``hi_us``."""
        why = self.reason(lo_us, hi_us, reference_us)
        if why is not None:
            self.rejected += 1
            raise MessageDecodeError(REASON, why.split(": ", 1)[1])
        self.advance(hi_us)

    def advance(self, hi_us: int) -> None:
        """Move the watermark forward to ``hi_us`` (never back)."""
        if self.watermark_us is None or hi_us > self.watermark_us:
            self.watermark_us = int(hi_us)

    def batch_reference(self, times_us: np.ndarray) -> int | None:
        """The reference for a batch when there is no watermark yet: the median of its times."""
        if self.watermark_us is not None or len(times_us) == 0:
            return None
        return int(np.median(times_us))
