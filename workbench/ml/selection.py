"""Which model version scores an event: the one rule, written down once.

The rule (event-time selection)
    An event of UTC day ``D`` is scored by the newest version whose training window ends
    *before* ``D``; an event on or before the first version's last training day is scored by
    that first version ("the first model for the first days"). Versions are identified by
    their training window (``model.json``: ``window_days``, last day = ``training_day``); two
    versions with the same window (a manual retrain) are ordered by their sequence number.

    A person can override the rule: ``workbench models set-current V`` / ``rollback V`` *pins*
    V, and from then on every event is scored by V (the pin is recorded in the registry's
    ``history.jsonl``). ``workbench models set-current auto`` removes the pin and the rule
    above applies again. Trainings never move a pin.

When the version of a day is "ready"
    Which version a day *should* get depends on the training cadence, not on how far training
    has come: with daily training (``every_n_days=1``) day ``D`` needs the version whose
    window ends on ``D - 1``. :func:`expected_window_end` computes that day from the cadence;
    :func:`is_ready` says whether that version exists (or whether its training failed for
    good, in which case the newest older version is used: a failed day must not stop the
    stream forever). The scoring app holds events of days that are not ready, so the result
    does not depend on the replay speed.

Backpressure (:func:`may_accept`)
    Events of a day that is not ready are stored unscored and scored as soon as the day is
    ready (that keeps training fed: day ``D``'s version needs day ``D``'s events in the shards
    and the event time past ``D``). The app accepts a day only while the day ``every_n_days``
    before it is ready (and always the first ``every_n_days + 1`` days), so at most about
    ``every_n_days + 1`` days wait unscored on disk; anything later is held (Quix sink
    backpressure: the partitions pause and are re-read from the committed offset) until training
    caught up. A replay that outruns training thus slows to what training allows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Cadence", "VersionWindow", "expected_window_end", "is_ready", "may_accept", "select_version"]


@dataclass(frozen=True, order=True)
class VersionWindow:
    """A registered version and its training window (ordering = window order)."""

    end: dt.date
    seq: int
    start: dt.date
    version: str

    @classmethod
    def from_meta(cls, version: str, meta: dict[str, Any]) -> VersionWindow:
        """From a version id ``v{seq}-{day}`` and its ``model.json``."""
        seq_text, _, day_text = version[1:].partition("-")
        end = dt.date.fromisoformat(meta.get("training_day") or day_text)
        days = meta.get("window_days") or [end.isoformat()]
        return cls(end=end, seq=int(seq_text), start=dt.date.fromisoformat(min(days)), version=version)


@dataclass(frozen=True)
class Cadence:
    """The training schedule: first event day seen and ``every_n_days`` (see the supervisor).

    Day ``first_day + i`` is trained when ``i % every_n_days == every_n_days - 1``.
    ``failed_days`` are days whose training failed for good (they get no version); ``done_days``
    days whose training finished (a version was registered: if it is not readable now, deleted by
    a person or ``prune``, or damaged, none is coming either).
    """

    first_day: dt.date
    every_n_days: int = 1
    failed_days: frozenset[dt.date] = frozenset()
    done_days: frozenset[dt.date] = frozenset()

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Cadence | None:
        """From the supervisor's ``ml_training.json`` state (``None`` before the first event)."""
        if not state.get("first_day"):
            return None

        def days(status: str) -> frozenset[dt.date]:
            return frozenset(dt.date.fromisoformat(d) for d, e in state.get("days", {}).items()
                             if e.get("status") == status)

        return cls(dt.date.fromisoformat(state["first_day"]), int(state.get("every_n_days") or 1),
                   days("failed"), days("done"))

    def no_version_coming(self, end: dt.date, windows: Sequence[VersionWindow]) -> bool:
        """Whether the cadence version ending on ``end`` will never be readable: its training failed for
        good, or it finished and its version is gone (a folder deleted while the workbench ran, or a
        ``prune`` before a seek back, left the stream waiting for it for good)."""
        return end in self.failed_days or (end in self.done_days and all(w.end != end for w in windows))

    def trained(self, day: dt.date) -> bool:
        """Whether ``day`` is on the cadence (a version with this window end is due)."""
        index = (day - self.first_day).days
        return index >= 0 and index % self.every_n_days == self.every_n_days - 1


def select_version(day: dt.date, windows: Iterable[VersionWindow], *, pinned: str | None = None) -> str | None:
    """The version that scores events of ``day`` (``None`` while no version exists)."""
    if pinned is not None:
        return pinned
    ordered = sorted(windows)
    if not ordered:
        return None
    before = [w for w in ordered if w.end < day]
    return (before[-1] if before else ordered[0]).version


def expected_window_end(day: dt.date, cadence: Cadence) -> dt.date:
    """Last training day of the version that ``day`` should be scored with, from the cadence."""
    first_trained = cadence.first_day + dt.timedelta(days=cadence.every_n_days - 1)
    if day <= first_trained:
        return first_trained
    index = (day - dt.timedelta(days=1) - cadence.first_day).days  # newest cadence day < day
    return cadence.first_day + dt.timedelta(days=index - (index + 1) % cadence.every_n_days)


def is_ready(day: dt.date, windows: Sequence[VersionWindow], cadence: Cadence | None, *,
             pinned: str | None = None) -> bool:
    """Whether events of ``day`` can be scored now with the version the rule gives them for good.

    True when a pin is set; or when the version :func:`select_version` picks now is at least as
    new as the one the cadence promises (:func:`expected_window_end`), skipping cadence days
    whose training failed for good or whose version is gone (:meth:`Cadence.no_version_coming`);
    or, for the days up to the first cadence day, when a version from before them exists or the
    first cadence version does (or will never be). Without a cadence (no training scheduled:
    ``train=False``) any existing version is final.
    """
    if pinned is not None:
        return True
    if not windows:
        return False
    if cadence is None:
        return True
    step = dt.timedelta(days=cadence.every_n_days)
    first_trained = cadence.first_day + step - dt.timedelta(days=1)
    before = [w.end for w in windows if w.end < day]
    if day <= first_trained:  # no cadence version can be trained on data before this day
        # Not any version: a later cadence version can be registered first (the first day's
        # training killed and retried after a backoff), and the rule gives these days the first
        # cadence version once it exists, so scoring them with the later one would not be final.
        return (bool(before) or any(w.end <= first_trained for w in windows)
                or cadence.no_version_coming(first_trained, windows))
    newest = max(before, default=None)
    end = expected_window_end(day, cadence)
    while newest is None or newest < end:
        if not cadence.no_version_coming(end, windows):
            return False
        end -= step  # that training failed for good: the previous cadence version is final
        if end < first_trained:
            return True  # nothing was trained before: the first version scores
    return True


def _no_version_coming(day: dt.date, cadence: Cadence, windows: Sequence[VersionWindow]) -> bool:
    """Whether every cadence training up to the one ``day`` waits for failed for good (or its version
    is gone): no version can come for ``day`` before a later day trains."""
    step = dt.timedelta(days=cadence.every_n_days)
    first_trained = cadence.first_day + step - dt.timedelta(days=1)
    end = expected_window_end(day, cadence)
    while end >= first_trained:
        if not cadence.no_version_coming(end, windows):
            return False
        end -= step
    return True


def may_accept(day: dt.date, windows: Sequence[VersionWindow], cadence: Cadence | None, *,
               pinned: str | None = None) -> bool:
    """Whether the app may store events of ``day`` now (else it holds them: backpressure).

    Also when the day before it (by the cadence) can never get a version because every training up
    to its own failed for good (e.g. a first day of fewer usable rows than a model needs, after a seek
    skipped most of it): the next version needs the later days' events stored, and holding them
    waited for good (the partitions stayed paused, and ``wait()`` with them).
    """
    if pinned is not None or cadence is None:
        return True
    if day <= cadence.first_day + dt.timedelta(days=cadence.every_n_days):
        return True
    previous = day - dt.timedelta(days=cadence.every_n_days)
    return is_ready(previous, windows, cadence) or (not windows and _no_version_coming(previous, cadence, windows))
