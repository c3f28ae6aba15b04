"""The warm trainer: one pre-imported process per scoring app that forks a fresh process per training.

A training started on demand (``python -m workbench.ml._train --day D``) pays 2-4 s of CPU for the
interpreter's start-up and imports (numpy, pyarrow, sklearn, skl2onnx) before it reads a row, and in
the pipeline every training is on the critical path (the next day's partitions wait for its model).
:class:`WarmStandby` keeps one process (``python -m workbench.ml._train --standby FD``, see
:func:`workbench.ml._train.standby`) that does the imports once and then serves jobs from a pipe: for
each job it forks a child (:mod:`workbench.ml._forkserver`). :meth:`WarmStandby.hand` gives it a job
and returns the child as a :class:`ForkedRun`, which the supervisor tracks like a run it spawned: its
own pid and start time, its own exit code (the warm trainer reaps it and reports the code), its own
session, the output in the day's log. The warm trainer stays for the next day.

The warm trainer never outlives its parent: the parent holds the only write end of the job pipe, so
when the parent exits or is killed (even with SIGKILL) the warm trainer reads end of file and exits.
It carries the same environment tags as a training run (role ``training``), and so do its children,
so ``workbench stop`` finds them; a forked training outlives a restart of the scoring app like any
training run. If the warm trainer dies while a training runs, the training runs on: its exit code is
then unknown and the supervisor decides the outcome from the registry, as for a run an earlier app
started.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from workbench._fs import process_start_time, same_process

__all__ = ["UNKNOWN_RC", "UNTRAINABLE_RC", "ForkedRun", "SentJob", "WarmStandby"]

logger = logging.getLogger(__name__)

#: A run's exit code when nobody could reap it (decided from the registry by the supervisor).
UNKNOWN_RC = -999
#: A run's exit code when its window's events cannot make a model (none, or too few): not retried.
UNTRAINABLE_RC = 3


class WarmStandby:
    """Keeps at most one warm trainer (a fork server with the training imports done).

    Parameters
    ----------
    command : list of str
        The warm trainer's command line without the reply descriptor
        (``[python, "-m", "workbench.ml._train", "--standby"]``).
    env : callable
        The environment of a new warm trainer (that of a training run; its children inherit it).
    log_path : Path
        Where the warm trainer's own output goes (import errors, warnings).
    respawn_delay_s : float, default=30.0
        After a warm trainer ended before it was ready (it failed to import, crashed or was killed
        while importing), wait this long before the next one, so a broken environment does not start
        a process on every call. One that ended after it was ready is replaced at once.
    fork_timeout_s : float, default=30.0
        How long :meth:`hand` (or a caller of :meth:`send`) waits for the warm trainer to say it forked the job.
    """

    def __init__(self, command: Sequence[str], env: Callable[[], dict[str, str]], log_path: Path, *,
                 respawn_delay_s: float = 30.0, fork_timeout_s: float = 30.0) -> None:
        self.command = list(command)
        self.env = env
        self.log_path = log_path
        self.respawn_delay_s = respawn_delay_s
        self.fork_timeout_s = fork_timeout_s
        self._server: _Server | None = None
        self._not_before = 0.0

    @property
    def pid(self) -> int | None:
        """Pid of the warm trainer, if one is alive."""
        server = self._server
        return server.proc.pid if server is not None and server.proc.poll() is None else None

    @property
    def ready(self) -> bool:
        """Whether a warm trainer is alive with its imports done."""
        server = self._server
        return server is not None and server.proc.poll() is None and server.ready.is_set()

    def ensure(self) -> None:
        """Start a warm trainer unless one is alive (or one died before it was ready lately: ``respawn_delay_s``)."""
        server = self._server
        if server is not None:
            if server.proc.poll() is None:
                return
            logger.warning("training standby pid=%d ended rc=%s ready=%s", server.proc.pid, server.proc.returncode,
                           server.ready.is_set())
            if not server.ready.is_set():
                self._not_before = time.monotonic() + self.respawn_delay_s
            self._drop()
        if time.monotonic() < self._not_before:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._server = _Server.start(self.command, self.env(), self.log_path)
        logger.debug("training standby started pid=%d", self._server.proc.pid)

    def hand(self, argv: Sequence[str], log_path: Path) -> ForkedRun | None:
        """Have the warm trainer fork a training; the run, or None when no warm trainer is ready.

        ``argv``: the arguments of ``python -m workbench.ml._train`` for the job; ``log_path``: the day's
        log. A warm trainer still importing is not waited for (the caller starts a fresh process).
        One call for :meth:`send`, :meth:`SentJob.wait` and :meth:`receive`.
        """
        sent = self.send(argv, log_path)
        if sent is None:
            return None
        sent.wait(self.fork_timeout_s)
        return self.receive(sent)

    def send(self, argv: Sequence[str], log_path: Path) -> SentJob | None:
        """Give a ready warm trainer a job (as :meth:`hand`) without waiting for its answer.

        None when no warm trainer is ready, or when it could not take the job (it is replaced). The
        caller waits with :meth:`SentJob.wait`, which touches nothing of this object (so a caller that
        serialises the other methods with a lock need not hold it meanwhile), then calls :meth:`receive`.
        """
        server = self._server
        if server is None or not self.ready:
            return None
        job = json.dumps({"argv": list(argv), "log": str(log_path)}).encode() + b"\n"
        try:
            assert server.proc.stdin is not None
            server.proc.stdin.write(job)
            server.proc.stdin.flush()
        except OSError:  # dead
            self._give_up(server)
            return None
        return SentJob(server)

    def receive(self, sent: SentJob) -> ForkedRun | None:
        """The run the warm trainer forked for ``sent``; None when it died first or did not answer in time.

        A warm trainer that did not answer is replaced. (A child it forked without answering would train
        the same window; the registry returns the version already published for a retried recipe.)
        """
        if sent.pid is not None:
            return sent.server.run(sent.pid)
        if sent.answered:  # its end of file: it died before forking
            if self._server is sent.server:
                self._drop()
            return None
        self._give_up(sent.server)
        return None

    def _give_up(self, server: _Server) -> None:
        logger.warning("training standby pid=%d did not fork the job; a fresh process trains", server.proc.pid)
        self._kill(server)
        if self._server is server:  # not a newer one started meanwhile
            self._drop()

    def close(self, timeout: float = 5.0) -> None:
        """Let the warm trainer go and make sure it is gone (a training it forked keeps running)."""
        server = self._server
        if server is None:
            return
        self._drop()
        with contextlib.suppress(ProcessLookupError):
            server.proc.terminate()  # its children are in sessions of their own: they do not get it
        try:
            server.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill(server)

    @staticmethod
    def _kill(server: _Server) -> None:
        with contextlib.suppress(ProcessLookupError):
            server.proc.kill()
        server.proc.wait()

    def _drop(self) -> None:
        if self._server is not None:
            self._server.close_pipe()
        self._server = None


class SentJob:
    """A job a warm trainer took (:meth:`WarmStandby.send`) whose fork it has not confirmed yet."""

    def __init__(self, server: _Server) -> None:
        self.server = server
        self.pid: int | None = None  #: the forked run's pid, once the warm trainer said it started
        self.answered = False  #: it said so, or its end of file came first (pid None)

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the warm trainer's answer (a pid, or its end)."""
        with contextlib.suppress(queue.Empty):
            self.pid = self.server.started.get(timeout=timeout)
            self.answered = True


class _Server:
    """One warm trainer process and the thread that reads its replies."""

    def __init__(self, proc: subprocess.Popen[bytes], replies: int) -> None:
        self.proc = proc
        self.ready = threading.Event()
        self.gone = threading.Event()  # its reply pipe reached end of file
        self.started: queue.Queue[int | None] = queue.Queue()
        self._runs: dict[int, ForkedRun] = {}
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, args=(replies,), name=f"training-standby-{proc.pid}",
                                        daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, command: list[str], env: dict[str, str], log_path: Path) -> _Server:
        read_end, write_end = os.pipe()
        try:
            with open(log_path, "ab") as log:
                proc = subprocess.Popen([*command, str(write_end)], stdin=subprocess.PIPE, stdout=log,
                                        stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                        pass_fds=(write_end,))
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)  # only the warm trainer writes: its death is our end of file
        return cls(proc, read_end)

    def run(self, pid: int) -> ForkedRun:
        """The handle of the child ``pid`` this server just reported as started."""
        with self._lock:
            run = self._runs.setdefault(pid, ForkedRun(pid, self.gone))
            return run

    def close_pipe(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def _read(self, fd: int) -> None:
        with open(fd, "rb") as replies:
            for raw in replies:
                words = raw.decode().split()
                if words == ["ready"]:
                    self.ready.set()
                elif len(words) == 2 and words[0] == "started":
                    self.started.put(int(words[1]))
                elif len(words) == 3 and words[0] == "exited":
                    self.run(int(words[1])).exited(int(words[2]))
        self.gone.set()
        self.started.put(None)  # a hand() waiting for an answer gets none


class ForkedRun:
    """A training forked by the warm trainer, tracked like a :class:`subprocess.Popen` (``pid``, ``poll``, ``wait``).

    Its exit code comes from the warm trainer, which reaps it. If the warm trainer is gone first, the
    run is watched by pid and start time, and once it has ended its code is :data:`UNKNOWN_RC`.
    """

    def __init__(self, pid: int, server_gone: threading.Event) -> None:
        self.pid = pid
        self.started = process_start_time(pid)
        self.returncode: int | None = None
        self._server_gone = server_gone
        self._exited = threading.Event()

    def exited(self, rc: int) -> None:
        """The warm trainer reaped it with exit code ``rc``."""
        self.returncode = rc
        self._exited.set()

    def poll(self) -> int | None:
        """Its exit code, or None while it runs."""
        if self._exited.is_set():
            return self.returncode
        if not self._server_gone.is_set() or self._alive():
            return None
        if self._exited.is_set():  # reported just before the server's end of file
            return self.returncode
        self.returncode = UNKNOWN_RC
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait until it ended; its exit code (:data:`UNKNOWN_RC` when nobody could reap it)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (rc := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
            self._exited.wait(0.2)
        return rc

    def _alive(self) -> bool:
        # Not our child: once it ended it stays a zombie until its parent reaps it (gone to same_process).
        return same_process(self.pid, self.started)
