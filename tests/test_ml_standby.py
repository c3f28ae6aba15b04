"""The warm trainer (a fork server with the imports done): each training is a fresh forked process, the
imports are paid once, the next day starts without a poll, and every process dying at any moment is handled."""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import store_generated_days, wait_until
from workbench._fs import process_start_time
from workbench._lifeline import HOME_ENV, SUPERVISOR_PID_ENV, SUPERVISOR_STARTED_ENV, home_processes
from workbench.config import Settings
from workbench.ml._train import train_day
from workbench.ml.registry import ModelRegistry
from workbench.ml.supervisor import TrainingSupervisor

D0 = dt.date(2024, 3, 1)
REPO = Path(__file__).resolve().parents[1]


def _day(k: int) -> dt.date:
    return D0 + dt.timedelta(days=k)


def _settings(home: Path) -> Settings:
    return store_generated_days(Settings(home=home), days=2, start=D0)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return _settings(tmp_path / "home")


def _ready_standby(sup: TrainingSupervisor) -> int:
    """The pid of the supervisor's warm trainer once it has done its imports."""
    sup.poll()
    assert sup._standby is not None
    wait_until(lambda: sup._standby.ready, timeout=60, what="warm trainer ready")  # type: ignore[union-attr]
    return int(sup._standby.pid)  # type: ignore[arg-type]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _log(settings: Settings, day: dt.date) -> str:
    path = settings.logs_dir / f"train_{day.isoformat()}.log"
    return path.read_text() if path.is_file() else ""


def _forked_by(settings: Settings, day: dt.date) -> tuple[int, int] | None:
    """``(run pid, warm trainer pid)`` from the day's log, or None when the run started cold."""
    found = re.search(r"warm trainer forked the job pid=(\d+) trainer_pid=(\d+) ", _log(settings, day))
    return (int(found.group(1)), int(found.group(2))) if found else None


def _forked_run(settings: Settings, day: dt.date) -> tuple[int, int]:
    """:func:`_forked_by` once the forked run has said so in its log."""
    return wait_until(lambda: _forked_by(settings, day), timeout=30, poll=0.05, what="the forked run's first line")


def _kill_once_loading(settings: Settings, day: dt.date, pid: int) -> float:
    """SIGKILL the run once it has loaded its window; the wall time just before the kill."""
    wait_until(lambda: "training window loaded" in _log(settings, day), timeout=60, poll=0.05, what="training started")
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    return killed_at


def _threads(pid: int) -> list[str]:
    task = Path(f"/proc/{pid}/task")
    return sorted((task / t / "comm").read_text().strip() for t in os.listdir(task))


def test_the_warm_trainer_forks_each_day_and_the_reaper_starts_the_next_day_without_a_poll(settings: Settings) -> None:
    sup = TrainingSupervisor(settings, every_n_days=1, backoff_seconds=0, window_days=1)
    try:
        sup.maybe_schedule(_day(0))
        trainer = _ready_standby(sup)
        # What the fork inherits: no ONNX Runtime (its import starts a thread), no thread but the main one
        # and jemalloc's (OpenBLAS's pools stop at a fork: checked again after the first one below).
        assert "onnxruntime_pybind11_state" not in Path(f"/proc/{trainer}/maps").read_text()
        handed_at = time.time()
        assert sup.maybe_schedule(_day(2)) == [_day(0), _day(1)]  # the last call into the supervisor
        first = sup.pid
        assert first is not None and first != trainer
        assert sup.state["days"][_day(0).isoformat()]["pid"] == first
        assert psutil.Process(first).ppid() == trainer  # forked
        # Its own session: the child calls setsid() right after the fork the warm trainer already reported.
        wait_until(lambda: os.getsid(first) == first, timeout=10, what="the forked training's own session")
        wait_until(lambda: f"--day {_day(0).isoformat()}" in " ".join(psutil.Process(first).cmdline()), timeout=10,
                   what="the forked training's own command line")
        assert psutil.Process(first).environ() == psutil.Process(trainer).environ()  # where home_processes reads tags
        assert set(_threads(trainer)) <= {"python", "jemalloc_bg_thd"} and _threads(trainer).count("python") == 1
        # Nobody polls from here: the reaper thread records day 0 and has the same warm trainer fork day 1.
        wait_until(lambda: sup.status(_day(1)) == "done", timeout=120, what="day 1 trained without a poll")
        assert sup.status(_day(0)) == "done"
        assert [sup.state["days"][d.isoformat()]["last_rc"] for d in (_day(0), _day(1))] == [0, 0]
        runs = [_forked_by(settings, d) for d in (_day(0), _day(1))]
        assert runs[0] == (first, trainer) and runs[1] is not None and runs[1][1] == trainer
        assert runs[1][0] not in (first, trainer)  # a fresh process per day
        assert sup._standby.pid == trainer  # type: ignore[union-attr]  # imports paid once
        log = _log(settings, _day(0))
        since = re.search(r"trainer_since=(\S+) ", log)
        assert since is not None and dt.datetime.fromisoformat(since.group(1)).timestamp() < handed_at
        assert log.index("warm trainer forked the job") < log.index("training started") < log.index("SUCCESS")
        assert "SUCCESS" in _log(settings, _day(1))
    finally:
        sup.close()
    assert _gone(trainer)
    # The same window trained in this process gives the same model, byte for byte.
    registry = ModelRegistry(settings.models_dir)
    warm = registry.path(registry.versions()[0])
    cold_settings = _settings(settings.home.parent / "cold")
    cold = ModelRegistry(cold_settings.models_dir).path(train_day(cold_settings, _day(0), window_days=1).version)
    for name in ("mean.onnx", "quantile.onnx", "fingerprint_stats.parquet", "instance_stats.parquet",
                 "usual_group_hours.parquet"):
        assert (warm / name).read_bytes() == (cold / name).read_bytes()


def test_a_warm_trainer_killed_while_idle_falls_back_to_a_fresh_process(settings: Settings) -> None:
    sup = TrainingSupervisor(settings, every_n_days=1, backoff_seconds=0, window_days=1)
    try:
        sup.maybe_schedule(_day(0))
        standby = _ready_standby(sup)
        os.kill(standby, signal.SIGKILL)
        wait_until(lambda: _gone(standby), timeout=10)
        assert sup.maybe_schedule(_day(1)) == [_day(0)]
        assert sup.pid is not None and sup.pid != standby
        sup.wait(timeout=120)
        assert sup.status(_day(0)) == "done"
        assert sup.state["days"][_day(0).isoformat()]["attempts"] == 1
        assert _forked_by(settings, _day(0)) is None and "SUCCESS" in _log(settings, _day(0))
        assert sup._standby.pid not in (None, standby)  # type: ignore[union-attr]  # replaced at once
    finally:
        sup.close()


def _first_day_forked(settings: Settings, sup: TrainingSupervisor) -> tuple[int, int]:
    """Day 0 trained by a fork of a ready warm trainer: (the training's pid, the warm trainer's pid)."""
    sup.maybe_schedule(_day(0))
    trainer = _ready_standby(sup)
    sup.maybe_schedule(_day(1))
    run = sup.pid
    assert run is not None and _forked_run(settings, _day(0)) == (run, trainer)
    return run, trainer


def test_a_warm_trainer_killed_during_a_training_leaves_it_running_and_recorded(settings: Settings) -> None:
    sup = TrainingSupervisor(settings, every_n_days=1, backoff_seconds=0, window_days=1)
    try:
        run, trainer = _first_day_forked(settings, sup)
        os.kill(run, signal.SIGSTOP)  # held, so a fast fit is still running when its warm trainer dies
        os.kill(trainer, signal.SIGKILL)
        wait_until(lambda: _gone(trainer), timeout=10)
        assert not _gone(run)  # the training runs on without its warm trainer
        os.kill(run, signal.SIGCONT)
        sup.wait(timeout=120)  # its exit code is nobody's now: the registry says it published
        entry = sup.state["days"][_day(0).isoformat()]
        assert (entry["status"], entry["attempts"]) == ("done", 1)
        assert ModelRegistry(settings.models_dir).info(ModelRegistry(settings.models_dir).current())[
            "training_day"] == _day(0).isoformat()
        # A new warm trainer comes up at once for the next day, and forks it.
        new = _ready_standby(sup)
        assert new != trainer
        sup.maybe_schedule(_day(2))
        sup.wait(timeout=120)
        assert sup.status(_day(1)) == "done"
        forked = _forked_by(settings, _day(1))
        assert forked is not None and forked[1] == new
    finally:
        sup.close()


def test_a_training_killed_under_the_warm_trainer_is_a_failed_attempt_retried_with_backoff(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    sup = TrainingSupervisor(settings, every_n_days=1, backoff_seconds=1.0, window_days=1)
    try:
        sup.maybe_schedule(_day(0))
        trainer = _ready_standby(sup)
        with caplog.at_level(logging.WARNING, logger="workbench.ml.supervisor"):
            sup.maybe_schedule(_day(1))
            run = sup.pid
            assert run is not None
            killed_at = _kill_once_loading(settings, _day(0), run)  # the failure is recorded after it
            entry = sup.state["days"][_day(0).isoformat()]
            wait_until(lambda: entry["status"] == "pending", timeout=10, what="the failure recorded by the reaper")
        assert (entry["attempts"], entry["last_rc"]) == (1, -signal.SIGKILL)  # its own exit code
        # The backoff (not compared with the time now: a test thread held up for 1 s would see it passed)
        assert entry["next_attempt_at"] >= killed_at + 1.0
        assert any("training failed day=2024-03-01 attempt=1 rc=-9 retry_in_s=1" in r.message for r in caplog.records)
        wait_until(lambda: sup.poll() is None and entry["status"] == "done", timeout=120, what="the retry done")
        assert (entry["status"], entry["attempts"], entry["last_rc"]) == ("done", 2, 0)
        retried = _forked_by(settings, _day(0))  # the day's log holds both attempts: the last one counts
        log = _log(settings, _day(0))
        assert log.count("warm trainer forked the job") == 2 and log.count("SUCCESS") == 1
        assert retried is not None and retried[1] == trainer and sup._standby.pid == trainer  # type: ignore[union-attr]
    finally:
        sup.close()


def test_a_forked_training_dies_with_the_workbench_supervisor(settings: Settings, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    # A stand-in workbench supervisor: the training is bound to it by pid and start time (its watchdog,
    # which the fork does not carry: the child starts its own).
    supervisor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    monkeypatch.setenv(HOME_ENV, str(settings.home))
    monkeypatch.setenv(SUPERVISOR_PID_ENV, str(supervisor.pid))
    monkeypatch.setenv(SUPERVISOR_STARTED_ENV, repr(process_start_time(supervisor.pid)))
    sup = TrainingSupervisor(settings, every_n_days=1, backoff_seconds=0, window_days=1, max_attempts=1)
    try:
        run, trainer = _first_day_forked(settings, sup)  # its first line is logged after it bound itself
        # Held still from here while the supervisor dies: a training of this small window can finish
        # in the moment the watchdog takes to notice (CI saw it "done"). Once it goes on, its watchdog,
        # whose sleep has run out, stops it before the fit can end.
        os.kill(run, signal.SIGSTOP)
        # `workbench stop` finds both by their tags (the fork inherits the warm trainer's environment).
        assert {run, trainer} <= {p.pid for p in home_processes(settings.home, roles=["training"])}
        supervisor.kill()
        supervisor.wait()
        time.sleep(1.5)  # past the watchdog's interval
        os.kill(run, signal.SIGCONT)
        wait_until(lambda: _gone(run), timeout=15, what="the training gone with the supervisor")
        sup.wait(timeout=30)
        assert sup.status(_day(0)) == "failed" and sup.state["days"][_day(0).isoformat()]["last_rc"] == -signal.SIGTERM
    finally:
        supervisor.kill()
        sup.close()


_APP = """
import sys, time
from workbench.config import Settings
from workbench.ml.supervisor import TrainingSupervisor
import datetime as dt
sup = TrainingSupervisor(Settings(home=sys.argv[1]), every_n_days=1, backoff_seconds=0, window_days=1)
sup.maybe_schedule(dt.date(2024, 3, 1))
sup.poll()
while not sup._standby.ready:
    time.sleep(0.05)
if sys.argv[2] == "train":
    sup.maybe_schedule(dt.date(2024, 3, 2))
print(sup._standby.pid, sup.pid, flush=True)
time.sleep(120)
"""


def _app(home: Path, mode: str) -> tuple[subprocess.Popen[str], int, int | None]:
    """A stand-in scoring app in its own process: its warm trainer's pid and its running training's."""
    app = subprocess.Popen([sys.executable, "-c", _APP, str(home), mode], stdout=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    words = app.stdout.readline().split()  # type: ignore[union-attr]
    return app, int(words[0]), None if words[1] == "None" else int(words[1])


def test_a_standby_never_outlives_its_parent_killed_with_sigkill(tmp_path: Path) -> None:
    app, standby, _ = _app(tmp_path / "home", "idle")
    try:
        assert process_start_time(standby) is not None
        app.kill()
        app.wait()
        wait_until(lambda: _gone(standby), timeout=30, what="the standby gone with its parent")
    finally:
        app.kill()
        if not _gone(standby):
            os.kill(standby, signal.SIGKILL)


def test_a_training_outlives_its_app_killed_with_sigkill_and_the_restarted_app_adopts_it(settings: Settings) -> None:
    app, trainer, run = _app(settings.home, "train")
    try:
        assert run is not None and run != trainer
        wait_until(lambda: "training window loaded" in _log(settings, _day(0)), timeout=60)
        # Held still until it is adopted: a small window's fit takes a few seconds, which a test thread
        # held up on a loaded machine can miss (then there is nothing running left to adopt).
        os.kill(run, signal.SIGSTOP)
        app.kill()
        app.wait()
        wait_until(lambda: _gone(trainer), timeout=30, what="the warm trainer gone with its app")
        assert not _gone(run)
        restarted = TrainingSupervisor(settings, every_n_days=1, backoff_seconds=0, window_days=1, standby=False)
        assert restarted.poll() == _day(0).isoformat() and restarted.pid == run  # adopted: not started twice
        os.kill(run, signal.SIGCONT)
        restarted.wait(timeout=120)
        assert restarted.status(_day(0)) == "done"
        assert restarted.state["days"][_day(0).isoformat()]["attempts"] == 1
        assert _log(settings, _day(0)).count("SUCCESS") == 1
    finally:
        app.kill()
        if run is not None and not _gone(run):
            os.kill(run, signal.SIGKILL)


def test_a_warm_trainer_that_cannot_import_leaves_the_trainings_to_fresh_processes(settings: Settings) -> None:
    sup = TrainingSupervisor(settings, every_n_days=1, backoff_seconds=0, window_days=1)
    assert sup._standby is not None
    sup._standby.command = [sys.executable, "-c", "raise ImportError('sklearn is broken here')"]
    try:
        sup.maybe_schedule(_day(0))
        sup.poll()
        crashed = wait_until(lambda: sup._standby.pid, timeout=10)  # type: ignore[union-attr]
        wait_until(lambda: _gone(crashed), timeout=30)
        assert sup.maybe_schedule(_day(1)) == [_day(0)]
        sup.wait(timeout=120)
        assert sup.status(_day(0)) == "done" and _forked_by(settings, _day(0)) is None
        assert "SUCCESS" in _log(settings, _day(0))
        assert "sklearn is broken here" in (settings.logs_dir / "train_standby.log").read_text()
        assert sup._standby.pid is None  # not started again on every poll (respawn delay)
    finally:
        sup.close()


#: A warm trainer that says it is ready, takes each job (noted in the file argv[-2]) and never says it forked one.
_SILENT_TRAINER = """
import os, sys
os.write(int(sys.argv[-1]), b"ready\\n")
with open(sys.argv[-2], "ab", buffering=0) as jobs:
    for line in sys.stdin.buffer:
        jobs.write(line)
"""


def test_a_warm_trainer_that_never_answers_holds_up_no_other_supervisor_call(tmp_path: Path) -> None:
    """The start of a run waited up to fork_timeout_s (30 s) for the warm trainer's "started PID" while
    holding the supervisor's lock: a reaper thread starting the next day held up the app's every batch
    (`running`), note_first_day, maybe_schedule and poll that long."""
    settings = Settings(home=tmp_path / "home")
    sup = TrainingSupervisor(settings, every_n_days=1, backoff_seconds=0)
    jobs = tmp_path / "jobs.txt"
    assert sup._standby is not None
    sup._standby.command = [sys.executable, "-c", _SILENT_TRAINER, str(jobs)]
    sup._standby.fork_timeout_s = 600.0  # the handing thread waits until this test lets it go
    sup.python = "/bin/true"  # the fresh process it falls back to once the warm trainer is gone: exits 0
    sup._stored_days = lambda: None  # type: ignore[method-assign]  # no shards here: a run finds out (not settled at once)
    sup.maybe_schedule(_day(0))  # the cadence starts; no day finished yet
    trainer = _ready_standby(sup)
    handing = threading.Thread(target=sup.maybe_schedule, args=(_day(1),), daemon=True)  # day 0 due: handed
    handing.start()
    answers: dict[str, object] = {}

    def other_calls() -> None:
        answers["running"], answers["pid"] = sup.running, sup.pid
        sup.note_first_day(_day(0))
        answers["scheduled"] = sup.maybe_schedule(_day(1))
        answers["poll"] = sup.poll()

    try:
        wait_until(lambda: jobs.is_file() and b"--day" in jobs.read_bytes(), timeout=30, what="the job handed")
        caller = threading.Thread(target=other_calls, daemon=True)
        caller.start()
        caller.join(timeout=60)  # (600 s while the wait held the lock)
        assert not caller.is_alive(), "a supervisor call waited for the silent warm trainer"
        # A start in flight counts as running (no pid yet), and nothing else starts meanwhile.
        assert answers == {"running": True, "pid": None, "scheduled": [], "poll": _day(0).isoformat()}
        assert handing.is_alive() and sup.status(_day(0)) == "pending" and jobs.read_bytes().count(b"\n") == 1
    finally:
        os.kill(trainer, signal.SIGKILL)  # its end of file: the handing thread gives up on it
        handing.join(timeout=60)
        sup.close()
    assert not handing.is_alive()
    entry = sup.state["days"][_day(0).isoformat()]
    assert entry["status"] in ("running", "done") and entry["attempts"] == 1  # started fresh, once


def test_no_standby_without_a_poll_or_after_close(tmp_path: Path) -> None:
    sup = TrainingSupervisor(Settings(home=tmp_path))
    sup.reload()  # what an instance that follows the elected trainer calls
    assert sup._standby is not None and sup._standby.pid is None
    sup.poll()
    standby = wait_until(lambda: sup._standby.pid)  # type: ignore[union-attr]
    sup.reload()  # the lease moved elsewhere: this instance follows now
    assert _gone(standby) and sup._standby.pid is None
    sup.close()
    sup.poll()
    assert sup._standby.pid is None


def test_the_standby_imports_with_the_collector_paused_and_restores_it() -> None:
    # A fresh interpreter, so that the modules are really imported (not found in sys.modules).
    code = """
import gc, sys
import workbench.ml._train as t
t._TRAINING_MODULES = ("sklearn.ensemble", "no_such_module_here", "skl2onnx")
collections = []
gc.callbacks.append(lambda phase, info: collections.append(info["generation"]) if phase == "start" else None)
t._import_training_modules()
print(gc.isenabled(), gc.get_freeze_count() > 100_000, "sklearn.ensemble" in sys.modules,
      "skl2onnx" in sys.modules, collections)
gc.disable()
t._import_training_modules()
print(gc.isenabled())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}).stdout.split("\n")
    # Collector on again, the modules' objects frozen, a failing import does not stop the others, and
    # the only collection is the one explicit full pass after the imports.
    assert out[0] == "True True True True [2]"
    assert out[1] == "False"  # a collector the caller had paused stays paused
