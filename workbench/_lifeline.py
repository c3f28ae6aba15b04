"""Processes the workbench starts die with it, and can be found again by their home.

Every process the supervisor starts (apps, replay) and every process those start (the training
subprocess) carries environment tags: the WORKBENCH_HOME it belongs to, its role, and the pid and
start time of its supervisor. Three mechanisms use them:

* **Parent-death signal** (Linux): a direct child of the supervisor asks the kernel, first thing
  at start, for SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``), so ``kill -9`` of the
  supervisor stops the apps and the replay at once (they commit and exit as on ``workbench stop``).
* **Watchdog** (every platform, every tagged process including the training subprocess, which
  must outlive restarts of the scoring app but not the supervisor; not the warm trainer that forks
  the trainings, which must have no thread at a fork and ends with the scoring app through its job
  pipe): a daemon thread checks once a
  second that the supervisor, identified by pid *and* start time, still runs; if not, the process
  sends itself SIGTERM, and exits hard after a grace period.
* **Discovery**: :func:`home_processes` finds live processes of a home by their tag, so
  ``workbench start`` refuses to run beside orphans and ``workbench stop`` stops them.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from workbench._fs import _is_zombie, process_start_time, same_process

__all__ = [
    "HOME_ENV",
    "ROLE_ENV",
    "bind_to_supervisor",
    "home_processes",
    "stop_processes",
    "tags",
    "unblock_stop_signals",
    "untag_parent",
]

logger = logging.getLogger(__name__)

#: The WORKBENCH_HOME a process belongs to.
HOME_ENV = "WORKBENCH_PROCESS_HOME"
#: What it is: ``supervisor``, ``app``, ``replay``, ``training``, ``kafka``.
ROLE_ENV = "WORKBENCH_PROCESS_ROLE"
#: Pid and start time of the supervisor whose death ends the process.
SUPERVISOR_PID_ENV = "WORKBENCH_SUPERVISOR_PID"
SUPERVISOR_STARTED_ENV = "WORKBENCH_SUPERVISOR_STARTED"
#: Set only for direct children: the pid that must be the parent (parent-death signal).
PARENT_PID_ENV = "WORKBENCH_PARENT_PID"

_PR_SET_PDEATHSIG = 1
WATCHDOG_INTERVAL_S = 1.0
WATCHDOG_GRACE_S = 20.0
_WATCHDOG_THREAD = "workbench-watchdog"


def tags(home: Path, role: str, *, supervisor_pid: int | None = None, direct_child: bool = False) -> dict[str, str]:
    """Environment tags for a process of ``home`` started by the supervisor ``supervisor_pid``."""
    env = {HOME_ENV: str(home), ROLE_ENV: role}
    if supervisor_pid is not None:
        env[SUPERVISOR_PID_ENV] = str(supervisor_pid)
        env[SUPERVISOR_STARTED_ENV] = repr(process_start_time(supervisor_pid))
        if direct_child:
            env[PARENT_PID_ENV] = str(os.getpid())
    return env


def untag_parent(env: dict[str, str], role: str) -> dict[str, str]:
    """A copy of ``env`` for a grandchild: same home and supervisor, its own role, no parent binding."""
    out = {k: v for k, v in env.items() if k != PARENT_PID_ENV}
    if HOME_ENV in out:
        out[ROLE_ENV] = role
    return out


def _set_parent_death_signal(signum: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def unblock_stop_signals() -> None:
    """Let SIGTERM and SIGINT reach this thread's handlers.

    A blocked signal survives fork and exec: a process started from a thread that had them blocked (a
    library spawning its helper under a mask) never ran its stop handler, so it ignored ``kill`` and its
    supervisor's stop until SIGKILL. An ignored signal is its parent's choice and is left alone.
    """
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})


def bind_to_supervisor() -> None:
    """Call first thing in a process the workbench starts: die with the parent and the supervisor.

    A no-op in a process without the tags (a user running ``workbench app`` by hand), but for the stop
    signals, which it unblocks in every process.
    """
    unblock_stop_signals()
    parent = os.environ.get(PARENT_PID_ENV)
    if parent:
        _set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != int(parent):  # the parent died before the signal was armed
            os._exit(75)
    pid, started = os.environ.get(SUPERVISOR_PID_ENV), os.environ.get(SUPERVISOR_STARTED_ENV)
    if not pid or any(t.name == _WATCHDOG_THREAD for t in threading.enumerate()):
        return  # untagged, or already bound (a forked training starts its own: the fork keeps no other thread)
    start_time = None if started in (None, "", "None") else float(started)
    thread = threading.Thread(target=_watch, args=(int(pid), start_time), name=_WATCHDOG_THREAD, daemon=True)
    thread.start()


def _watch(pid: int, started: float | None) -> None:
    while same_process(pid, started):
        time.sleep(WATCHDOG_INTERVAL_S)
    logger.warning("the supervisor (pid %d) is gone; stopping this process (pid %d)", pid, os.getpid())
    with contextlib.suppress(OSError):
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(WATCHDOG_GRACE_S)
    os._exit(75)


def home_processes(home: Path, *, roles: Iterable[str] | None = None,
                   exclude_roles: Iterable[str] = ("kafka",)) -> list:
    """Live processes tagged with ``home`` (``psutil.Process`` objects), this one excluded."""
    import psutil

    wanted = None if roles is None else set(roles)
    excluded = set(exclude_roles)
    found = []
    for proc in _iter_processes():
        try:
            env = proc.environ()
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
            continue
        if env.get(HOME_ENV) != str(home):
            continue
        role = env.get(ROLE_ENV, "")
        if (wanted is not None and role not in wanted) or role in excluded:
            continue
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


def _iter_processes() -> Iterator:
    import psutil

    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid != me:
            yield proc


def stop_processes(processes: list, *, timeout: float = 20.0) -> int:
    """SIGTERM ``processes``, SIGKILL those still alive after ``timeout``; returns how many there were."""
    import psutil

    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    alive = _wait_ended(processes, timeout)
    for proc in alive:
        logger.warning("pid %d did not stop within %.0f s; killing it", proc.pid, timeout)
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    _wait_ended(alive, 10.0)
    return len(processes)


def _wait_ended(processes: list, timeout: float) -> list:
    """Wait up to ``timeout`` s for ``processes`` to end; those still running.

    A process that exited but is not ours to reap stays a zombie until its parent reaps it (pid 1 in a
    container may never): it has ended. ``psutil.wait_procs`` alone waits the whole timeout for it, so
    `workbench stop` took 40 s per such orphan (SIGTERM wait, then SIGKILL wait).
    """
    import psutil

    deadline = time.monotonic() + timeout
    alive = list(processes)
    while alive:
        # reaps the ones that are our children; returns at once for those already gone
        _, alive = psutil.wait_procs(alive, timeout=max(0.0, min(0.2, deadline - time.monotonic())))
        alive = [proc for proc in alive if not _is_zombie(proc.pid)]
        if time.monotonic() >= deadline:
            break
    return alive

