"""When to train: finished event days handed to the training supervisor, after the shards are on disk.

Event time is the sink's watermark (:meth:`ScoringSink.watermark_us`): the newest event time
that every partition still delivering has stored (the event-time guard keeps implausible times
out), so a fast partition cannot trigger the training of a day a slower partition has not
delivered yet, and a version is a function of its training window only. Once the watermark is
``training_grace_s`` past midnight (default 10 minutes of event time), the finished day is handed
to :meth:`TrainingSupervisor.maybe_schedule` - *after* the sink flushed, so the day's shards are
on disk; not during the app's warm-up (every partition with data delivers once first). Training
runs as a subprocess on the shards and never blocks scoring.

The watermark lives in memory; after a restart, :meth:`TrainingSchedule.resumed_watermark` takes it
from durable state (the shards, once nothing is left to deliver: ``_resume``), so a restarted app
schedules exactly the trainings the uninterrupted run would have, also with no new input.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, Final

from workbench.pipeline._status import AppStatus

__all__ = ["TrainingSchedule", "day_of", "us_to_iso"]

_DAY_US: Final = 86_400_000_000


def day_of(us: int) -> dt.date:
    """The UTC day of an epoch-microsecond time."""
    return dt.date(1970, 1, 1) + dt.timedelta(days=us // _DAY_US)


def us_to_iso(us: int) -> str:
    """An epoch-microsecond time as ISO-8601 UTC text."""
    return (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)).isoformat()


class TrainingSchedule:
    """Hands finished days to ``supervisor`` (a :class:`~workbench.ml.TrainingSupervisor`) and reports it."""

    def __init__(self, supervisor: Any, status: AppStatus, grace_us: int,
                 stored_days: Callable[[], list[dt.date]] | None = None) -> None:
        self.supervisor = supervisor
        self.status = status
        self.grace_us = int(grace_us)
        #: the event days the shards hold, ascending (``shards.list_days``): the cadence's durable start
        self.stored_days = stored_days
        #: after a restart: returns ``(caught up, stored watermark)`` (see ``_resume.ResumeProbe``)
        self.resume_probe: Callable[[], tuple[bool, int | None]] | None = None

    def note_first_event(self, first_event_us: int | None) -> None:
        """Start the cadence at the day of the first event: the earliest of ``first_event_us`` (called
        before each batch is scored, and after each flush) and, once, the first day the shards hold.

        An earlier event moves the start back while no day is scheduled yet
        (:meth:`TrainingSupervisor.note_first_day`): a flush's first partition may start later than
        the next (found by the chaos test: day 4 was never trained). The shards count because this
        process may not have seen the first events: an instance killed before it first scheduled
        leaves its days stored and its offsets committed, and its successor sees later events only.
        """
        state = self.supervisor.state
        if state["days"]:
            return  # a day is scheduled: the cadence is fixed
        days = [day_of(first_event_us)] if first_event_us is not None else []
        if state["first_day"] is None and self.stored_days is not None:
            days.extend(self.stored_days()[:1])
        if days:
            self.supervisor.note_first_day(min(days))

    def cadence(self) -> Any:
        """The training cadence (:class:`~workbench.ml.selection.Cadence`) or None before the first day."""
        from workbench.ml.selection import Cadence

        return Cadence.from_state(self.supervisor.state)

    def resumed_watermark(self, watermark_us: int | None, *, quiet: bool) -> int | None:
        """The watermark to schedule from: the sink's, and after a restart, once, the stored one.

        ``quiet``: no partition delivered lately and nothing is buffered. Only then is the probe asked
        whether the backlog is empty; once it is, the stored watermark (every event is in the shards)
        counts, and the probe is dropped.
        """
        if self.resume_probe is None or not quiet:
            return watermark_us
        caught_up, stored = self.resume_probe()
        if not caught_up:
            return watermark_us
        self.resume_probe = None
        if stored is None:
            return watermark_us
        return stored if watermark_us is None else max(stored, watermark_us)

    def after_flush(self, first_event_us: int | None, watermark_us: int | None, *, warming_up: bool = False) -> None:
        """Schedule the days finished by the event-time ``watermark_us`` (the sink just wrote every row)."""
        if watermark_us is None:
            return
        self.note_first_event(first_event_us)
        if warming_up:
            return
        scheduled = self.supervisor.maybe_schedule(day_of(watermark_us - self.grace_us))
        if scheduled:
            self.status.add("trainings_scheduled", len(scheduled))
            self.publish_info()

    def poll(self) -> None:
        """Reap and retry trainings, then report."""
        self.supervisor.poll()
        self.publish_info()

    @property
    def busy(self) -> bool:
        """True while a training runs or waits, or a restart has not resumed the schedule yet."""
        days = self.supervisor.state["days"].values()
        return self.resume_probe is not None or any(e["status"] in ("running", "pending") for e in days)

    def publish_info(self) -> None:
        """Put the last days' training state into the status ``info``."""
        sup = self.supervisor
        days = sup.state["days"]
        self.status.info["training"] = {
            "running_day": next((d for d, e in days.items() if e["status"] == "running"), None),
            "pid": sup.pid,
            "days": {d: {"status": e["status"], "attempts": e["attempts"], "last_rc": e.get("last_rc")}
                     for d, e in sorted(days.items())[-7:]},
        }
