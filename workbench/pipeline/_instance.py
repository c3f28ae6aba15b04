"""Instance slots: N processes of one app share a ``WORKBENCH_HOME`` without sharing local files.

Every running app process claims the lowest free slot of its app with an exclusive, non-blocking
``fcntl.flock`` on ``<state_dir>/.instances/<app>.<slot>.lock``. The lock is the claim: the kernel
drops it when the process dies (``kill -9`` included), so a restarted process gets a free slot
back and two live processes never hold the same one, however they were started (the supervisor's
``--instances N``, or ``workbench app NAME`` typed twice). Slot 0 keeps the historical folder
``<state_dir>/<app>``; slot k uses ``<state_dir>/<app>.<k>`` (Quix state, status file, unscored days).

Readers (status, notebooks) never claim a slot: they list the slot folders (:func:`instance_dirs`).
A :class:`HomeLease` is a role one process of the home holds (the same kind of lock, one name).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from workbench._fs import FlockLease, try_flock

__all__ = ["MAX_INSTANCES", "HomeLease", "claim_instance", "idle_slots", "instance_dir", "instance_dirs",
           "release_instance"]

#: Slots tried before giving up (a safety bound; any real deployment runs far fewer per machine).
MAX_INSTANCES: Final = 256

_LOCK = threading.Lock()
_CLAIMED: dict[tuple[str, str], tuple[int, int]] = {}  # (state_dir, app) -> (slot, fd) of this process


def instance_dir(state_dir: Path, app_name: str, slot: int) -> Path:
    """Folder of slot ``slot`` of app ``app_name`` (slot 0: ``<state_dir>/<app>``)."""
    return Path(state_dir) / (app_name if slot == 0 else f"{app_name}.{slot}")


def instance_dirs(state_dir: Path, app_name: str) -> dict[int, Path]:
    """Every slot folder app ``app_name`` has (had) under ``state_dir``, by slot."""
    root = Path(state_dir)
    pattern = re.compile(rf"^{re.escape(app_name)}(?:\.(\d+))?$")
    found: dict[int, Path] = {}
    if root.is_dir():
        for child in root.iterdir():
            m = pattern.match(child.name)
            if m and child.is_dir():
                found[int(m.group(1) or 0)] = child
    return dict(sorted(found.items()))


def _slot_lock(state_dir: Path, app_name: str, slot: int) -> Path:
    """The lock file whose ``flock`` is the claim on ``slot`` of ``app_name``."""
    return Path(state_dir) / ".instances" / f"{app_name}.{slot}.lock"


def claim_instance(state_dir: Path, app_name: str) -> int:
    """The slot this process holds for ``app_name`` (claimed on the first call; the same afterwards)."""
    key = (str(Path(state_dir).resolve()), app_name)
    with _LOCK:
        if key in _CLAIMED:
            return _CLAIMED[key][0]
        for slot in range(MAX_INSTANCES):
            fd = try_flock(_slot_lock(state_dir, app_name, slot))
            if fd is not None:
                _CLAIMED[key] = (slot, fd)
                return slot
    msg = (f"All {MAX_INSTANCES} instance slots of app {app_name!r} under {state_dir} are taken by running "
           "processes; stop some before starting another.")
    raise RuntimeError(msg)


def release_instance(state_dir: Path, app_name: str) -> None:
    """Give this process's slot of ``app_name`` back (the end of an in-process run)."""
    key = (str(Path(state_dir).resolve()), app_name)
    with _LOCK:
        claimed = _CLAIMED.pop(key, None)
    if claimed is not None:
        with contextlib.suppress(OSError):
            os.close(claimed[1])


class HomeLease(FlockLease):
    """A role that one process of the home holds at a time, for as long as it runs (or :meth:`release`).

    A non-blocking ``flock`` on ``<state_dir>/.instances/<name>.lease``, kept while held: the kernel
    drops it when the holder dies (``kill -9`` included), so another process takes the role over at
    its next :meth:`try_acquire`. For work every instance would otherwise repeat over shared data
    (the collective window step reads every instance's windows from the one store).
    """

    def __init__(self, state_dir: Path, name: str) -> None:
        super().__init__(Path(state_dir) / ".instances" / f"{name}.lease")


@contextlib.contextmanager
def idle_slots(state_dir: Path, app_name: str) -> Iterator[dict[int, Path]]:
    """The slot folders of ``app_name`` that no process holds now, locked while the block runs.

    A process that starts takes over what such a slot left behind (a scale-down from 3 to 2
    instances leaves slot 2's unscored days): the locks keep a process that starts meanwhile out.
    """
    mine = _CLAIMED.get((str(Path(state_dir).resolve()), app_name), (None, None))[0]
    held: dict[int, Path] = {}
    fds: list[int] = []
    try:
        for slot, folder in instance_dirs(state_dir, app_name).items():
            if slot == mine:
                continue
            fd = try_flock(_slot_lock(state_dir, app_name, slot))
            if fd is None:
                continue
            fds.append(fd)
            held[slot] = folder
        yield held
    finally:
        for fd in fds:
            os.close(fd)
