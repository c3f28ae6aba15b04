"""Event-time pacing: maps wall time to how far into the log the replay may have sent.

The pacer keeps one anchor (an event time and the wall time it corresponds to) and a speed.
Everything is computed from the anchor, so steady state never accumulates drift; a speed
change, pause or seek re-anchors so the clock never jumps forward. When the replay is behind
schedule (the broker or the encoder cannot keep up), the re-anchor is at the next row actually
due to be sent, not where the schedule says the replay should be: otherwise the backlog would go
out unpaced after a pause or a speed change, and the new speed would not hold.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "Pacer", "SystemClock"]

_US = 1_000_000


class Clock(Protocol):
    """Wall time for the replay; tests substitute a fake one."""

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real monotonic clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class Pacer:
    """How much event time may have been replayed by a given wall time.

    Parameters
    ----------
    speedup : float
        Event seconds per wall second (600: one hour of log in six seconds). 0 means unpaced.
    """

    def __init__(self, speedup: float) -> None:
        self.speedup = float(speedup)
        self._event_anchor_us: int | None = None
        self._wall_anchor = 0.0
        self._paused_at_us: int | None = None

    @property
    def unpaced(self) -> bool:
        return self.speedup <= 0

    @property
    def paused(self) -> bool:
        return self._paused_at_us is not None

    @property
    def anchored(self) -> bool:
        return self._event_anchor_us is not None

    def anchor(self, event_us: int, now: float) -> None:
        """Declare that event time ``event_us`` is being replayed at wall time ``now``."""
        self._event_anchor_us = int(event_us)
        self._wall_anchor = now
        if self._paused_at_us is not None:
            self._paused_at_us = int(event_us)

    def event_clock(self, now: float) -> int | None:
        """Event time (µs) the replay should have reached at ``now``; None before anchoring."""
        if self._event_anchor_us is None:
            return None
        if self._paused_at_us is not None:
            return self._paused_at_us
        if self.unpaced:
            return None
        return self._event_anchor_us + int((now - self._wall_anchor) * self.speedup * _US)

    def due(self, event_us: int, now: float) -> bool:
        """Whether a row with event time ``event_us`` may be sent at ``now``."""
        if self._paused_at_us is not None:
            return False
        if self.unpaced or self._event_anchor_us is None:
            return True
        return event_us <= self.event_clock(now)  # type: ignore[operator]

    def wall_time_for(self, event_us: int) -> float:
        """Wall time at which ``event_us`` becomes due (``now``-comparable)."""
        if self.unpaced or self._event_anchor_us is None:
            return self._wall_anchor
        return self._wall_anchor + (event_us - self._event_anchor_us) / (self.speedup * _US)

    def behind_us(self, now: float, next_event_us: int | None) -> int:
        """How much event time the schedule is ahead of the next unsent row (0 when on time)."""
        reached = self.event_clock(now)
        if reached is None or next_event_us is None or self.paused:
            return 0
        return max(0, reached - next_event_us)

    def _reached(self, now: float, next_event_us: int | None) -> int | None:
        """Where to re-anchor: the schedule's event time, or the next unsent row if that is earlier."""
        reached = self.event_clock(now)
        if reached is None:
            return next_event_us
        if next_event_us is not None and next_event_us < reached:
            return next_event_us
        return reached

    def set_speed(self, speedup: float, now: float, next_event_us: int | None) -> None:
        """Change speed from now on: re-anchor where the replay really is (see :meth:`_reached`)."""
        reached = self._reached(now, next_event_us)
        self.speedup = float(speedup)
        if reached is not None:
            self._event_anchor_us = reached
            self._wall_anchor = now
            if self._paused_at_us is not None:
                self._paused_at_us = reached

    def pause(self, now: float, next_event_us: int | None) -> None:
        """Freeze the event clock at the next row to send (or the schedule, when on time)."""
        if self._paused_at_us is None:
            reached = self._reached(now, next_event_us)
            self._paused_at_us = reached if reached is not None else 0

    def resume(self, now: float) -> None:
        """Continue from the frozen event time."""
        if self._paused_at_us is not None:
            frozen = self._paused_at_us
            self._paused_at_us = None
            self.anchor(frozen, now)
