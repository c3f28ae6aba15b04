"""The fork server loop of the warm trainer: one process, imports done once, forks a fresh process per job.

Runs inside the warm trainer (``python -m workbench.ml._train --standby FD``, see
:func:`workbench.ml._train.standby`); its client is :class:`workbench.ml._standby.WarmStandby`. Jobs
arrive as JSON lines on ``jobs_fd``; for each one the server forks a child that runs ``run_job(job)``
and exits with its return value. Replies go to ``replies_fd``, one line each: ``ready`` once,
``started PID`` per job (in job order) and ``exited PID RC`` when the child ends (``RC`` as
:attr:`subprocess.Popen.returncode`: negative for a signal). End of file on ``jobs_fd`` (the client
closed the pipe, exited or was killed) ends the server at once; running children go on.

A child is a process of its own: its own session (``workbench stop`` and a restart of the scoring app
treat it like any training process), none of the server's pipes, and only the forking thread (see
:func:`fork_job` for what that asks of the server).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["fork_job", "serve"]

Job = dict[str, Any]


def serve(run_job: Callable[[Job], int], *, jobs_fd: int, replies_fd: int) -> int:
    """Fork a child per job read from ``jobs_fd`` until end of file; report on ``replies_fd``. Returns 0.

    Single-threaded on purpose (see :func:`fork_job`): one ``select`` waits for a job or for a child's
    exit (a pidfd per child where the platform has them, else a 0.5 s tick).
    """
    children: dict[int, int | None] = {}  # pid -> pidfd (readable once the child exited)
    pending = b""
    try:
        _reply(replies_fd, "ready")
        while True:
            pidfds = [fd for fd in children.values() if fd is not None]
            timeout = 0.5 if len(pidfds) < len(children) else None
            readable, _, _ = select.select([jobs_fd, *pidfds], [], [], timeout)
            _reap(children, replies_fd)
            if jobs_fd not in readable:
                continue
            chunk = os.read(jobs_fd, 65536)
            if not chunk:
                return 0  # the client let us go, exited or was killed
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                inherited = [jobs_fd, replies_fd, *(fd for fd in children.values() if fd is not None)]
                pid = fork_job(run_job, json.loads(line), close_fds=inherited)
                children[pid] = _pidfd(pid)
                _reply(replies_fd, f"started {pid}")
    except BrokenPipeError:
        return 0  # the client is gone
    finally:
        for fd in children.values():
            if fd is not None:
                os.close(fd)


def fork_job(run_job: Callable[[Job], int], job: Job, *, close_fds: list[int]) -> int:
    """Fork a child that runs ``run_job(job)`` in a session of its own and exits with its result; its pid.

    ``close_fds``: the server's descriptors the child must not hold (the job pipe, the reply pipe: a
    child holding them would keep the client from seeing the server's end of file).

    After ``fork`` only the calling thread exists in the child, so the server must not hold a lock
    another thread could own, nor a library's thread pool the child would find half there. The
    server therefore runs no thread of its own, no OpenMP region and no ONNX Runtime session (it does
    not even import ONNX Runtime: the import starts a native thread); OpenBLAS stops its pool before
    a fork (its ``pthread_atfork`` handler) and starts it again on first use, and jemalloc (Arrow's
    allocator) locks its mutexes around the fork.
    """
    pid = os.fork()
    if pid:
        return pid
    code = 70  # EX_SOFTWARE: run_job raised
    try:
        os.setsid()
        _release(close_fds)
        code = run_job(job)
    except SystemExit as exc:  # argparse's usage error, sys.exit
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # the child must never return into the server's loop
        with contextlib.suppress(Exception):
            print(f"forked training job crashed: {exc!r}", file=sys.stderr, flush=True)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _release(fds: list[int]) -> None:
    """Close ``fds``; a standard stream among them (the job pipe is stdin) is pointed at /dev/null instead."""
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in fds:
            with contextlib.suppress(OSError):
                if fd <= 2:
                    os.dup2(null, fd)
                else:
                    os.close(fd)
    finally:
        os.close(null)


def _reap(children: dict[int, int | None], replies_fd: int) -> None:
    for pid in list(children):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            continue
        fd = children.pop(pid)
        if fd is not None:
            os.close(fd)
        _reply(replies_fd, f"exited {pid} {os.waitstatus_to_exitcode(status)}")


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux >= 5.3: the loop ticks instead
        return None


def _reply(fd: int, line: str) -> None:
    os.write(fd, f"{line}\n".encode())
