"""Crash-safe file writes and process checks shared by every store and process manager."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "atomic_path",
    "pid_alive",
    "process_start_time",
    "read_pid_file",
    "remove_stale_temp_files",
    "same_process",
    "try_flock",
    "write_atomic",
    "write_pid_file",
]


@contextlib.contextmanager
def atomic_path(path: Path, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    Readers see the old file or the complete new one, never a partial write; on an exception the
    temporary file is removed and ``path`` is untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_atomic(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, optional fsync, rename)."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` runs; a zombie counts as gone (one of our own children is reaped).

    A zombie that is not our child (a daemon whose parent, often pid 1 in a container, has not
    reaped it yet) still answers ``kill(0)``, but it has ended: its pid files and locks are stale.
    """
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return not _is_zombie(pid)
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return not _is_zombie(pid)
    return done == 0


def _is_zombie(pid: int) -> bool:
    """Whether ``pid`` has ended and waits for its parent to reap it (False when unknown)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        pass
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def process_start_time(pid: int | None) -> float | None:
    """When process ``pid`` started, or None when it does not exist.

    Stored next to a pid, it tells our process from an unrelated one that got the same pid later.
    On Linux it is seconds since boot, from ``/proc/<pid>/stat``. psutil's ``create_time()`` adds
    the boot time, and (as its documentation says) moves with adjustments of the system clock
    (NTP, a VM's time sync): a value stored by one process could then differ from another
    process's reading of the same process, and a live process would look gone. psutil keeps
    its own boot-relative value private, hence the file. Elsewhere ``create_time()``.
    """
    if not pid:
        return None
    ticks = _boot_ticks(pid)
    if ticks is not None:
        return ticks / _CLOCK_TICKS
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, ValueError):
        return None
    except psutil.AccessDenied:
        return None


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: A start time above this is wall-clock (epoch) seconds, as versions before boot-relative times stored.
_EPOCH_LIKE = 1e9


def _boot_ticks(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat`` (start time in clock ticks after boot); None without it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    try:  # the command name (field 2) may hold spaces and parentheses: count from its closing one
        return int(stat[stat.rindex(b")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def same_process(pid: int | None, started: float | None) -> bool:
    """Whether ``pid`` is alive and is the process that started at ``started`` (±10 ms).

    ``started=None`` (a pid file of an older version) falls back to :func:`pid_alive`; a
    wall-clock start an older version stored is compared with psutil's, within the second a step
    of the clock can move it.
    """
    if not pid_alive(pid):
        return False
    if started is None:
        return True
    now = process_start_time(pid)
    if now is not None and now < _EPOCH_LIKE <= float(started):
        import psutil

        with contextlib.suppress(psutil.Error):
            return abs(psutil.Process(pid).create_time() - float(started)) < 1.5
        return False
    return now is not None and abs(now - float(started)) < 0.01


def write_pid_file(path: Path, pid: int) -> None:
    """Write ``"<pid> <start time>"`` atomically (see :func:`read_pid_file`)."""
    started = process_start_time(pid)
    write_atomic(path, f"{pid} {started!r}\n".encode(), fsync=False)


def read_pid_file(path: Path) -> int | None:
    """The pid in ``path`` if that very process still runs (a reused pid is not ours), else None."""
    try:
        parts = path.read_text().split()
        pid = int(parts[0])
        started = float(parts[1]) if len(parts) > 1 and parts[1] != "None" else None
    except (FileNotFoundError, ValueError, IndexError):
        return None
    return pid if same_process(pid, started) else None


def remove_stale_temp_files(root: Path, *, skip: tuple[str, ...] = ()) -> int:
    """Delete the temporary files :func:`atomic_path` leaves behind when a process is killed.

    Call it only while no process of ``root`` writes (e.g. before the workbench starts). Folders
    named in ``skip`` (relative to ``root``) are not searched. Returns the number removed.
    """
    removed = 0
    skipped = {root / name for name in skip}
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = [d for d in dirs if here / d not in skipped]
        for name in files:
            if name.startswith(".") and name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    (here / name).unlink()
                    removed += 1
    return removed


def try_flock(path: Path) -> int | None:
    """Open ``path`` (created if absent) and take an exclusive ``flock`` without blocking.

    Returns the open descriptor, which holds the lock until it is closed (the kernel also drops it
    when the process dies, ``kill -9`` included), or None when another process holds it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class FlockLease:
    """A role one process holds at a time, for as long as it runs: a held, non-blocking ``flock`` on ``path``.

    The kernel drops the lock when the holder dies (``kill -9`` included), so another process takes
    the role over at its next :meth:`try_acquire`. Subclasses record what a new holder should
    (:meth:`_acquired`). Local filesystems only (``flock`` is not shared over NFS).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the role."""
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Hold the role if no other process does (never blocks); True while this object holds it."""
        if self._fd is not None:
            return True
        fd = try_flock(self.path)
        if fd is None:
            return False
        self._acquired(fd)
        self._fd = fd
        return True

    def _acquired(self, fd: int) -> None:
        """Called once with the lock's descriptor when this object becomes the holder."""

    def release(self) -> None:
        """Give the role back (another process takes it at its next try)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
