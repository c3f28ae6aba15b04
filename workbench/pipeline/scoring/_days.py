"""The durable set of event days whose shards hold unscored rows."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Final

from workbench._fs import write_atomic

__all__ = ["UNSCORED_FILE", "UnscoredDays", "unscored_days"]

UNSCORED_FILE: Final = "unscored_days.json"


class UnscoredDays:
    """The event days that have shards with unscored rows, persisted atomically (JSON).

    Each day also has an in-memory mark that every :meth:`add` moves on, also for a day already
    recorded. The rescoring thread takes the marks (:meth:`marks`) before it lists a day's shards,
    and :meth:`remove` forgets only the days whose mark did not move meanwhile: unscored rows stored
    while a day was being rescored keep it recorded for the next pass.
    """

    def __init__(self, path: os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self.days: set[str] = set()
        self._marks: dict[str, int] = {}
        with contextlib.suppress(FileNotFoundError), open(self.path, "rb") as fh:
            self.days = set(json.loads(fh.read()).get("days", []))

    def add(self, days: set[str]) -> None:
        """Record ``days`` (written to disk before returning when anything is new)."""
        with self._lock:
            for day in days:
                self._marks[day] = self._marks.get(day, 0) + 1
            if days <= self.days:
                return
            self.days |= days
            self._save()

    def marks(self, days: set[str]) -> dict[str, int]:
        """The current marks of ``days`` (take them before reading the days' shards)."""
        with self._lock:
            return {day: self._marks.get(day, 0) for day in days}

    def remove(self, days: set[str] | dict[str, int]) -> set[str]:
        """Forget ``days`` (fully scored now); with marks, only those not added to since. Returns the forgotten."""
        with self._lock:
            if isinstance(days, dict):
                gone = {day for day, mark in days.items() if self._marks.get(day, 0) == mark}
            else:
                gone = set(days)
            self.days -= gone
            self._save()
            return gone

    def snapshot(self) -> set[str]:
        """The days now."""
        with self._lock:
            return set(self.days)

    def _save(self) -> None:
        write_atomic(Path(self.path), json.dumps({"days": sorted(self.days)}).encode())


def unscored_days(settings: Any) -> list[str]:
    """Event days any scoring instance of this home holds unscored rows of (read fresh from each
    instance's :data:`UNSCORED_FILE`; sorted)."""
    from workbench.pipeline._instance import instance_dirs

    days: set[str] = set()
    for folder in instance_dirs(settings.state_dir, "scoring").values():
        days |= UnscoredDays(folder / UNSCORED_FILE).snapshot()
    return sorted(days)
