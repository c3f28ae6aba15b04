"""One warm standby trainer: a training process started ahead of time, its imports done, waiting for a job.

A training started on demand (``python -m workbench.ml._train --day D``) pays 1-5 s of interpreter
start-up and imports (numpy, pyarrow, sklearn, skl2onnx, onnxruntime) before it reads a row, and in
the pipeline every training is on the critical path (the next day's partitions wait for its model).
:class:`WarmStandby` keeps one process (``python -m workbench.ml._train --standby``, see
:func:`workbench.ml._train.standby`) that does the imports in advance and then blocks reading its job
from a pipe. :meth:`WarmStandby.hand` gives it the job: the standby becomes the training run, with
the output in the day's log, and the supervisor tracks it exactly like a run it spawned.

The standby never outlives its parent: the parent holds the only write end of the job pipe, so when
the parent exits or is killed (even with SIGKILL) the standby reads end of file and exits. It runs in
a session of its own and carries the same environment tags as a training run (role ``training``), so
``workbench stop`` finds it, and a standby that took a job outlives a restart of the scoring app like
any training run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["WarmStandby"]

logger = logging.getLogger(__name__)


class WarmStandby:
    """Keeps at most one pre-started training process.

    Parameters
    ----------
    command : list of str
        The standby's command line (``[python, "-m", "workbench.ml._train", "--standby"]``).
    env : callable
        The environment of a new standby (that of a training run).
    log_path : Path
        Where a standby's output goes before it has a job (import errors, warnings).
    respawn_delay_s : float, default=30.0
        After a standby ended without a job (it crashed or was killed), wait this long before the next
        one, so a broken environment does not start a process on every call.
    """

    def __init__(self, command: Sequence[str], env: Callable[[], dict[str, str]], log_path: Path, *,
                 respawn_delay_s: float = 30.0) -> None:
        self.command = list(command)
        self.env = env
        self.log_path = log_path
        self.respawn_delay_s = respawn_delay_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._not_before = 0.0

    @property
    def pid(self) -> int | None:
        """Pid of the waiting standby, if one is alive."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def ensure(self) -> None:
        """Start a standby unless one is alive (or one died lately: see ``respawn_delay_s``)."""
        if self._proc is not None:
            if self._proc.poll() is None:
                return
            logger.warning("training standby pid=%d ended without a job rc=%s", self._proc.pid, self._proc.returncode)
            self._drop()
            self._not_before = time.monotonic() + self.respawn_delay_s
        if time.monotonic() < self._not_before:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                          env=self.env(), start_new_session=True)
        logger.debug("training standby started pid=%d", self._proc.pid)

    def hand(self, argv: Sequence[str], log_path: Path) -> subprocess.Popen[bytes] | None:
        """Give the standby a training job; returns it as the running process, or None when none is alive.

        ``argv``: the arguments of ``python -m workbench.ml._train`` for the job; ``log_path``: the day's log.
        """
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            if proc is not None:
                self._close_pipe(proc)
            return None
        job = json.dumps({"argv": list(argv), "log": str(log_path)}).encode() + b"\n"
        try:
            assert proc.stdin is not None
            proc.stdin.write(job)
            proc.stdin.flush()
        except OSError:  # it died since the check: the caller starts a fresh process
            self._close_pipe(proc)
            return None
        self._close_pipe(proc)
        return proc

    def close(self, timeout: float = 5.0) -> None:
        """Let the waiting standby go (it exits on end of file) and make sure it is gone."""
        proc = self._proc
        if proc is None:
            return
        self._drop()
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()  # it has no job: nothing to lose, and it may still be importing
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _drop(self) -> None:
        if self._proc is not None:
            self._close_pipe(self._proc)
        self._proc = None

    @staticmethod
    def _close_pipe(proc: subprocess.Popen[bytes]) -> None:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
