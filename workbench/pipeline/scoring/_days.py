"""The durable set of event days whose shards hold unscored rows."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Final

from workbench._fs import write_atomic

__all__ = ["UNSCORED_FILE", "UnscoredDays"]

UNSCORED_FILE: Final = "unscored_days.json"


class UnscoredDays:
    """The event days that have shards with unscored rows, persisted atomically (JSON)."""

    def __init__(self, path: os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self.days: set[str] = set()
        with contextlib.suppress(FileNotFoundError), open(self.path, "rb") as fh:
            self.days = set(json.loads(fh.read()).get("days", []))

    def add(self, days: set[str]) -> None:
        """Record ``days`` (written to disk before returning when anything is new)."""
        with self._lock:
            if days <= self.days:
                return
            self.days |= days
            self._save()

    def remove(self, days: set[str]) -> None:
        """Forget ``days`` (they are fully scored now)."""
        with self._lock:
            self.days -= days
            self._save()

    def snapshot(self) -> set[str]:
        """The days now."""
        with self._lock:
            return set(self.days)

    def _save(self) -> None:
        write_atomic(Path(self.path), json.dumps({"days": sorted(self.days)}).encode())
