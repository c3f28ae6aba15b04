"""Counters of a running app, published as ``<state_dir>/<app>/status.json`` about once a second.

Other processes (notebooks, the CLI) read them with :func:`read_app_status`. The file is written
to a temporary name and ``os.replace``-d, so a reader never sees half a file.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from workbench._fs import write_atomic
from workbench.config import Settings
from workbench.pipeline._names import app_state_dir

__all__ = ["AppResult", "AppStatus", "read_app_status", "read_app_statuses", "status_path"]

logger = logging.getLogger(__name__)


@dataclass
class AppResult:
    """What a bounded app run did: its final counters (and info) as in its status file."""

    counters: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> int:
        return self.counters.get(name, 0)


def status_path(settings: Settings, app_name: str, instance: int = 0) -> os.PathLike[str]:
    """Where instance slot ``instance`` of app ``app_name`` publishes its status."""
    return app_state_dir(settings, app_name, instance) / "status.json"


class AppStatus:
    """Named counters plus a throttled, atomic JSON publisher.

    Parameters
    ----------
    settings : Settings
        Locates the status file.
    app_name : str
        The app's short name.
    interval : float
        Least seconds between two writes of the file (:meth:`maybe_publish`).

    Examples
    --------
    >>> status = AppStatus(settings, "analytics")  # doctest: +SKIP
    >>> status.add("events", 100); status.maybe_publish()  # doctest: +SKIP
    """

    def __init__(self, settings: Settings, app_name: str, *, interval: float = 1.0) -> None:
        from workbench.pipeline._instance import claim_instance

        self.app_name = app_name
        self._state_dir = settings.state_dir
        self.instance = claim_instance(settings.state_dir, app_name)  # this process's slot (N instances, one home)
        self.path = status_path(settings, app_name, self.instance)
        self.interval = interval
        self.counters: dict[str, int] = {}
        self.info: dict[str, Any] = {}
        self.state = "starting"
        self.started_at = time.time()
        self._last_publish = 0.0

    def add(self, name: str, amount: int = 1) -> None:
        """Increase counter ``name`` by ``amount``."""
        self.counters[name] = self.counters.get(name, 0) + amount

    def snapshot(self) -> dict[str, Any]:
        """The status as a JSON-safe dict."""
        return {"app": self.app_name, "instance": self.instance, "state": self.state, "pid": os.getpid(),
                "started_at": self.started_at,
                "updated_at": time.time(), "counters": dict(self.counters), "info": dict(self.info)}

    def maybe_publish(self) -> None:
        """Write the file if ``interval`` seconds passed since the last write (cheap otherwise)."""
        now = time.monotonic()
        if now - self._last_publish >= self.interval:
            self.publish()

    def release(self) -> None:
        """Give the instance slot back (the run ended; the status file stays for readers)."""
        from workbench.pipeline._instance import release_instance

        release_instance(self._state_dir, self.app_name)

    def publish(self, state: str | None = None) -> None:
        """Write the file now (optionally changing ``state``: running, stopped, failed)."""
        if state is not None:
            self.state = state
        self._last_publish = time.monotonic()
        try:
            # No fsync: a status file is rewritten every second and may lose the last second in a crash.
            write_atomic(Path(self.path), orjson.dumps(self.snapshot(), default=str), fsync=False)
        except OSError as exc:  # a status file must never stop the app
            logger.warning("cannot write status file path=%r error=%r", self.path, exc)


def read_app_status(settings: Settings, app_name: str) -> dict[str, Any] | None:
    """The last status app ``app_name`` published (its lowest instance slot), or None if it never
    ran under this home. :func:`read_app_statuses` gives every instance.

    ``updated_at`` (epoch seconds) tells whether the app is alive: a running app refreshes it
    about once a second while it processes messages or waits for them.
    """
    statuses = read_app_statuses(settings, app_name)
    return next(iter(statuses.values()), None)


def read_app_statuses(settings: Settings, app_name: str) -> dict[int, dict[str, Any]]:
    """The last status of every instance slot of app ``app_name``, by slot (empty if it never ran)."""
    from workbench.pipeline._instance import instance_dirs

    out: dict[int, dict[str, Any]] = {}
    for slot, folder in instance_dirs(settings.state_dir, app_name).items():
        try:
            with open(folder / "status.json", "rb") as fh:
                out[slot] = orjson.loads(fh.read())
        except FileNotFoundError:
            continue
        except (OSError, orjson.JSONDecodeError) as exc:
            logger.warning("cannot read status app=%r instance=%d error=%r", app_name, slot, exc)
    return out
