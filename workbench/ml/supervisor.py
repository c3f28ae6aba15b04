"""Non-blocking training schedule for the streaming app.

The app calls :meth:`TrainingSupervisor.maybe_schedule` with each event's (or batch's) UTC day
and :meth:`TrainingSupervisor.poll` regularly. When event time crosses into a new day, every day
that just finished is considered: day ``i`` (counted from the first day ever seen) is trained
when ``i % every_n_days == every_n_days - 1``, so ``every_n_days=2`` trains days 1, 3, 5, ...

Training runs as a process of its own (its own pid and exit code, its own session, logs in
``<logs_dir>/train_<day>.log``): forked by the warm trainer, or started as
``python -m workbench.ml._train --day D`` when none is ready; the caller never waits. A failed or killed run is
retried with exponential backoff up to ``max_attempts``; until a run succeeds the previous
version stays current (a version only becomes current at the very end of a successful run). Days
train one at a time in day order, and a day waiting for its retry holds up the later ones: version
ids (``v{sequence}-{day}``) are then the same as in a run without failures, unless a day fails for good.
A day whose window's events cannot make a model fails for good at once: no shard day in the
window (decided without a run), or a run that exits with ``UNTRAINABLE_RC`` (no event, or fewer
than the usable minimum). A due window's events are all stored, so a retry would read the same;
and every day is scheduled, days without events included, so a gap in the log, or one event dated
months before the rest, cost three runs and the retries' backoff per day while the partitions waited.

Two waits are kept off the pipeline's critical path (score a day, train it, score the next day):
the run's start-up and imports, by a warm trainer (:mod:`workbench.ml._standby`: one process with
the imports done, which forks each run) that the supervisor keeps once it trains (from its first
``poll``), so the imports are paid once per app instead of once per run; and the wait for the
caller's next ``poll``, by a reaper thread per run that records the outcome and starts the next due
day as soon as the run exits. A lock guards the state for that thread; the wait for the warm trainer to
say it forked a run (up to its ``fork_timeout_s`` when it stays silent) is outside the lock, so a
thread starting a run holds up no other call (see ``_finish_handing``).

State (first day, last day seen, every day's status, attempts, next retry time, the running
pid) is persisted atomically in ``<state_dir>/ml_training.json``, so a restart neither
retrains finished days nor forgets failed ones. A run left "running" by a previous process is
checked by pid and, once gone, counted as done if the registry has a version for its day and
as a failed attempt otherwise; so is a forked run whose warm trainer died before it (nobody could
reap it for its exit code).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench import defaults
from workbench._fs import process_start_time, same_process, write_atomic
from workbench._lifeline import untag_parent
from workbench.config import Settings
from workbench.ml._standby import UNKNOWN_RC, UNTRAINABLE_RC, ForkedRun, SentJob, WarmStandby
from workbench.ml.registry import ModelRegistry

__all__ = ["TrainingSupervisor"]

logger = logging.getLogger(__name__)

STATE_FILE = "ml_training.json"


@dataclass(frozen=True)
class _Handing:
    """A day's run handed to the warm trainer, its fork not confirmed yet; ``owner`` (a thread) waits for it."""

    day: str
    sent: SentJob
    owner: int


class TrainingSupervisor:
    """Schedules, runs (as subprocesses), reaps and retries daily trainings.

    Parameters
    ----------
    settings : Settings
        Paths (models, state, logs) and ``home`` passed to the subprocess.
    every_n_days : int, default=1
        Train every N-th finished day.
    window_days : int, default=7
        Training window passed to the subprocess.
    max_rows : int, default=defaults.TRAIN_MAX_ROWS
        Row cap passed to the subprocess.
    max_attempts : int, default=3
        Attempts per day before it is marked ``failed``.
    backoff_seconds : float, default=60.0
        Delay before the first retry; doubles with each further attempt.
    python : str, optional
        Interpreter for the subprocess (default: the running one).
    clock : callable, optional
        Wall-clock seconds (``time.time``), injectable for tests.
    standby : bool, default=True
        Keep a warm trainer (see the module docstring) once :meth:`poll` is called.
    reap_in_thread : bool, default=True
        Reap each run and start the next due day from a thread, as soon as the run exits.

    Attributes
    ----------
    is_trainer : callable
        Whether this process may start trainings now; the scoring app points it at the trainer
        election, so the reaper thread (which does not wait for the app's loop) never starts a run
        after the lease moved to another instance.
    """

    def __init__(self, settings: Settings, *, every_n_days: int = defaults.TRAIN_EVERY_N_DAYS,
                 window_days: int = defaults.TRAIN_WINDOW_DAYS, max_rows: int = defaults.TRAIN_MAX_ROWS,
                 max_attempts: int = 3, backoff_seconds: float = 60.0,
                 python: str | None = None, clock: Callable[[], float] | None = None,
                 standby: bool = True, reap_in_thread: bool = True) -> None:
        if every_n_days < 1:
            msg = f"The 'every_n_days' parameter of TrainingSupervisor must be >= 1. Got {every_n_days}."
            raise ValueError(msg)
        self.settings = settings
        self.every_n_days = every_n_days
        self.window_days = window_days
        self.max_rows = max_rows
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.python = python or sys.executable
        self.clock = clock or time.time
        self.state_path = settings.state_dir / STATE_FILE
        self._proc: subprocess.Popen[bytes] | ForkedRun | None = None
        self._saved: bytes | None = None
        self.state: dict[str, Any] = self._load()
        self.is_trainer: Callable[[], bool] = lambda: True
        self.reap_in_thread = reap_in_thread
        self._lock = threading.RLock()  # the caller's thread and the reaper threads
        self._handing: _Handing | None = None
        self._handed = threading.Condition(self._lock)  # notified when a handing ends
        self._closed = False
        self._standby = (WarmStandby([self.python, "-m", "workbench.ml._train", "--standby"], self._child_env,
                                     settings.logs_dir / "train_standby.log") if standby else None)

    # --- state ------------------------------------------------------------------------------
    def _load(self) -> dict[str, Any]:
        if self.state_path.is_file():
            state = json.loads(self.state_path.read_text())
            if state.get("every_n_days") != self.every_n_days:
                logger.warning("training cadence changed previous=%s now=%d (day counting kept)",
                               state.get("every_n_days"), self.every_n_days)
                state["every_n_days"] = self.every_n_days
            return state
        return {"first_day": None, "last_day": None, "every_n_days": self.every_n_days, "days": {}}

    def reload(self) -> None:
        """Read the state file again (an instance that does not train follows the elected trainer's state).

        Also lets the warm trainer go: an instance that follows does not train.
        """
        with self._lock:
            self._wait_for_handing()
            self.state = self._load()
            self._saved = None
            if self._standby is not None:
                self._standby.close()

    def close(self) -> None:
        """The caller stops: let the warm trainer go; no more runs start from the reaper (a running one
        keeps running, and a restarted caller finds it by its pid)."""
        with self._lock:
            self._wait_for_handing()
            self._closed = True
            if self._standby is not None:
                self._standby.close()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The lock around a call that may start a run; after it, the wait for a fork (:meth:`_finish_handing`)."""
        try:
            with self._lock:
                yield
        finally:
            self._finish_handing()

    def _wait_for_handing(self) -> None:
        # Before the state is replaced (reload) or the warm trainer let go (close): the handing
        # thread records its run in this state, as it did when it held the lock throughout.
        me = threading.get_ident()
        self._handed.wait_for(lambda: self._handing is None or self._handing.owner == me)

    def _save(self) -> None:
        # poll() runs several times a second: write (and fsync) only when something changed.
        data = json.dumps(self.state, indent=2, sort_keys=True).encode()
        if data == self._saved:
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.state_path, data)
        self._saved = data

    def status(self, day: dt.date | str) -> str | None:
        """``pending``, ``running``, ``done``, ``failed`` or ``None`` (never scheduled)."""
        key = day if isinstance(day, str) else day.isoformat()
        entry = self.state["days"].get(key)
        return entry["status"] if entry else None

    @property
    def running(self) -> bool:
        """True while a training subprocess runs (or is being started)."""
        with self._lock:
            return self._handing is not None or any(e["status"] == "running" for e in self.state["days"].values())

    # --- scheduling ---------------------------------------------------------------------------
    def should_train(self, day: dt.date) -> bool:
        """Whether finished ``day`` is on the cadence (counted from the first day seen)."""
        first = self.state["first_day"]
        if first is None:
            return False
        index = (day - dt.date.fromisoformat(first)).days
        return index >= 0 and index % self.every_n_days == self.every_n_days - 1

    def note_first_day(self, day: dt.date) -> None:
        """Start the cadence at ``day``, or move its start back to ``day`` while no day was scheduled.

        The first batch a process scores need not hold the log's first event: a flush writes its
        partitions one after the other, and a partition whose instances start later can come first.
        Until a day is finished (scheduled) nothing depends on the start but which days will train,
        so an earlier first event moves it; afterwards an earlier event is a late one.
        """
        with self._locked():
            first = self.state["first_day"]
            if first is None:
                self._maybe_schedule(day)
            elif not self.state["days"] and day < dt.date.fromisoformat(first):
                logger.info("training cadence starts earlier day=%s (was %s)", day, first)
                self.state["first_day"] = day.isoformat()
                last = self.state["last_day"]
                if last is None or day < dt.date.fromisoformat(last):
                    self.state["last_day"] = day.isoformat()
                self._save()

    def maybe_schedule(self, event_day: dt.date) -> list[dt.date]:
        """Note the event day; schedule finished days on the cadence. Never blocks.

        Returns the days newly scheduled. Also starts a due job when nothing is running.
        """
        with self._locked():
            return self._maybe_schedule(event_day)

    def _maybe_schedule(self, event_day: dt.date) -> list[dt.date]:
        scheduled: list[dt.date] = []
        last = self.state["last_day"]
        if self.state["first_day"] is None:
            self.state["first_day"] = event_day.isoformat()
        if last is None:
            self.state["last_day"] = event_day.isoformat()
            self._save()
            return scheduled
        last_day = dt.date.fromisoformat(last)
        if event_day <= last_day:
            return scheduled  # same day, or a late event: nothing finished
        day = last_day
        while day < event_day:  # every finished day, including days without events
            if self.should_train(day) and day.isoformat() not in self.state["days"]:
                self.state["days"][day.isoformat()] = {"status": "pending", "attempts": 0,
                                                      "next_attempt_at": 0.0, "last_rc": None}
                scheduled.append(day)
                logger.info("training scheduled day=%s", day)
            day += dt.timedelta(days=1)
        self.state["last_day"] = event_day.isoformat()
        self._save()
        self._poll()
        self._keep_standby()
        return scheduled

    def poll(self) -> str | None:
        """Reap a finished run, start the next due one; returns the day now running (if any).

        Also keeps the warm trainer (the caller trains).
        """
        with self._locked():
            day = self._poll()
            self._keep_standby()
        return day

    def _keep_standby(self) -> None:
        if self._standby is not None and not self._closed:
            self._standby.ensure()

    def _poll(self) -> str | None:
        if self._handing is not None:
            return self._handing.day  # being started: nothing else starts meanwhile
        running = [(d, e) for d, e in self.state["days"].items() if e["status"] == "running"]
        for day, entry in running:
            rc = self._finished_rc(entry)
            if rc is None:
                return day  # still running
            self._record_result(day, entry, rc)
        self._save()
        # Days train in day order: one waiting for its retry holds up the later ones, so versions
        # register (and take their sequence numbers) in training-window order, as in a run without failures.
        pending = sorted(d for d, e in self.state["days"].items() if e["status"] == "pending")
        if not pending or self.state["days"][pending[0]]["next_attempt_at"] > self.clock():
            return None  # nothing due: no shard listing on the polls of a backoff (several a second)
        stored = self._stored_days()
        for day in pending:
            if self.state["days"][day]["next_attempt_at"] > self.clock():
                return None
            if stored is not None and not any(d in stored for d in self._window(day)):
                entry = self.state["days"][day]
                entry["last_rc"] = UNTRAINABLE_RC
                self._settle(day, entry, UNTRAINABLE_RC)  # without a run: it would read no event
                self._save()
                continue
            self._start(day)
            return day
        return None

    def _window(self, day: str) -> list[str]:
        """The days of ``day``'s training window (as the training reads them), ISO text."""
        end = dt.date.fromisoformat(day)
        return [(end - dt.timedelta(days=k)).isoformat() for k in range(self.window_days)]

    def _stored_days(self) -> set[str] | None:
        """The event days the shards hold, or None when they cannot be listed (a run then finds out)."""
        from workbench.store.shards import list_days

        try:
            return {d.isoformat() for d in list_days(self.settings.shards_dir)}
        except Exception:  # a listing that fails (an object store away) must not stop the schedule
            logger.warning("cannot list the shard days of %s: the next training runs to find out",
                           self.settings.shards_dir, exc_info=True)
            return None

    def wait(self, timeout: float = 600.0, interval: float = 0.2) -> None:
        """Poll until nothing runs or is due (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.poll() is None:
                return
            time.sleep(interval)

    @property
    def pid(self) -> int | None:
        """Pid of the running training process."""
        with self._lock:
            for entry in self.state["days"].values():
                if entry["status"] == "running":
                    return int(entry["pid"])
            return None

    # --- internals --------------------------------------------------------------------------
    def _reap(self, proc: subprocess.Popen[bytes] | ForkedRun) -> None:
        """Reaper thread of one run: once it exits, record the outcome and start the next due day."""
        proc.wait()
        with self._locked():
            if self._closed or not self.is_trainer():
                return  # the caller's next poll (if it still trains) reaps it
            self._poll()

    def _finished_rc(self, entry: dict[str, Any]) -> int | None:
        if self._proc is not None and self._proc.pid == entry["pid"]:
            rc = self._proc.poll()
            if rc is not None:
                self._proc = None
            return rc
        # A run started by an earlier process: we cannot reap it, only watch its pid (with its
        # start time, so that an unrelated process that got the pid later is not taken for it).
        if same_process(int(entry["pid"]), entry.get("pid_started")):
            return None
        return UNKNOWN_RC  # decided from the registry

    def _record_result(self, day: str, entry: dict[str, Any], rc: int) -> None:
        if rc == UNKNOWN_RC:
            # the readable versions' windows (a damaged model.json is skipped, not raised here)
            done = any(w.end.isoformat() == day for w in ModelRegistry(self.settings.models_dir).windows())
            rc = 0 if done else -1
        entry["last_rc"] = rc
        try:
            self._settle(day, entry, rc)
        finally:  # after the status: a reader without the lock never sees "running" without a pid
            entry.pop("pid", None)
            entry.pop("pid_started", None)

    def _settle(self, day: str, entry: dict[str, Any], rc: int) -> None:
        if rc == 0:
            entry["status"] = "done"
            logger.info("training finished day=%s attempts=%d", day, entry["attempts"])
            return
        if rc == UNTRAINABLE_RC:  # a due window's events are all stored: a retry would read the same
            entry["status"] = "failed"
            logger.warning("training failed for good day=%s: its window's events cannot make a model (none, or "
                           "too few); not retried", day)
            return
        if entry["attempts"] >= self.max_attempts:
            entry["status"] = "failed"
            logger.error("training failed for good day=%s attempts=%d rc=%d (previous model stays current)",
                         day, entry["attempts"], rc)
            return
        delay = self.backoff_seconds * 2 ** (entry["attempts"] - 1)
        entry["status"] = "pending"
        entry["next_attempt_at"] = self.clock() + delay
        logger.warning("training failed day=%s attempt=%d rc=%d retry_in_s=%.0f", day, entry["attempts"],
                       rc, delay)

    def command(self, day: str) -> list[str]:
        """The subprocess command line for ``day``."""
        return [self.python, "-m", "workbench.ml._train", *self.arguments(day)]

    def arguments(self, day: str) -> list[str]:
        """The arguments of ``python -m workbench.ml._train`` for ``day`` (the warm trainer gets them as a job)."""
        return ["--day", day, "--home", str(self.settings.home), "--window-days", str(self.window_days),
                "--max-rows", str(self.max_rows)]

    def _child_env(self) -> dict[str, str]:
        # Same home and supervisor tags as the app: it dies with the supervisor (watchdog), but not
        # with the app, so a restarted app finds it still running instead of training twice.
        # The app's own settings on top: ones given as arguments (a shards URL, a models folder) are
        # not in this process's environment, and the child must read and publish where the app does.
        return {**untag_parent(dict(os.environ), "training"), **self.settings.to_env(), "PYTHONUNBUFFERED": "1",
                "OMP_WAIT_POLICY": "PASSIVE"}

    def _start(self, day: str) -> None:
        self.settings.logs_dir.mkdir(parents=True, exist_ok=True)
        log_path = self._log_path(day)
        sent = self._standby.send(self.arguments(day), log_path) if self._standby is not None else None
        if sent is not None:  # its fork is waited for after the lock (_finish_handing)
            self._handing = _Handing(day, sent, threading.get_ident())
            return
        self._launch(day, None)

    def _log_path(self, day: str) -> Path:
        return self.settings.logs_dir / f"train_{day}.log"

    def _finish_handing(self) -> None:
        """Wait for the fork of the run this thread handed the warm trainer, then record it (or start it fresh).

        The wait is outside the lock: a warm trainer that stays silent holds up this thread for its
        ``fork_timeout_s``, not every other call (the app's batches read :attr:`running`). Meanwhile
        :meth:`_poll` counts the day as being started, so no other run starts and the day's entry stays
        as it was; :meth:`reload` and :meth:`close` wait for the handing to end before they replace
        the state or let the warm trainer go.
        """
        handing = self._handing
        if handing is None or handing.owner != threading.get_ident():
            return
        assert self._standby is not None
        handing.sent.wait(self._standby.fork_timeout_s)
        with self._lock:
            try:
                self._launch(handing.day, self._standby.receive(handing.sent))
            finally:
                self._handing = None
                self._handed.notify_all()

    def _launch(self, day: str, proc: ForkedRun | None) -> None:
        """Record ``proc`` (forked by the warm trainer) as ``day``'s run; without one, start a fresh process."""
        entry = self.state["days"][day]
        warm = proc is not None
        if proc is None:  # no warm trainer ready (or it died): start one as the command line does
            with open(self._log_path(day), "ab") as log:
                proc = subprocess.Popen(self.command(day), stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=self._child_env(), start_new_session=True)
        self._proc = proc
        entry["attempts"] += 1
        entry["pid"] = proc.pid  # before the status (see _record_result)
        entry["pid_started"] = process_start_time(proc.pid)
        entry["status"] = "running"
        self._save()
        logger.info("training started day=%s attempt=%d pid=%d warm=%s", day, entry["attempts"], proc.pid, warm)
        if self.reap_in_thread:
            threading.Thread(target=self._reap, args=(proc,), name=f"training-reaper-{day}", daemon=True).start()
        self._keep_standby()  # a warm trainer that died is replaced for the next run
