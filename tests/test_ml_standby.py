"""The warm standby trainer and the reaper thread: trainings start without import time and without a poll."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import store_generated_days, wait_until
from workbench._fs import process_start_time
from workbench.config import Settings
from workbench.ml._train import train_day
from workbench.ml.registry import ModelRegistry
from workbench.ml.supervisor import TrainingSupervisor

D0 = dt.date(2024, 3, 1)


def _day(k: int) -> dt.date:
    return D0 + dt.timedelta(days=k)


def _settings(home: Path) -> Settings:
    return store_generated_days(Settings(home=home), days=2, start=D0)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return _settings(tmp_path / "home")


def _ready_standby(settings: Settings, sup: TrainingSupervisor) -> int:
    """The pid of the supervisor's standby once it has done its imports (it says so in its own log)."""
    sup.poll()
    pid = wait_until(lambda: sup._standby.pid, timeout=10, what="a standby")  # type: ignore[union-attr]
    log = settings.logs_dir / "train_standby.log"
    wait_until(lambda: log.is_file() and f"ready pid={pid} " in log.read_text(), timeout=60, what="standby ready")
    return int(pid)


def _gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_ready_standby_trains_and_the_reaper_starts_the_next_day_without_a_poll(settings: Settings) -> None:
    sup = TrainingSupervisor(settings, every_n_days=1, backoff_seconds=0, window_days=1)
    try:
        sup.maybe_schedule(_day(0))
        standby = _ready_standby(settings, sup)
        handed_at = time.time()
        assert sup.maybe_schedule(_day(2)) == [_day(0), _day(1)]  # the last call into the supervisor
        assert sup.pid == standby and sup.state["days"][_day(0).isoformat()]["pid"] == standby
        # Nobody polls from here: the reaper thread records day 0 and starts day 1.
        wait_until(lambda: sup.status(_day(1)) == "done", timeout=120, what="day 1 trained without a poll")
        assert sup.status(_day(0)) == "done"
        log = (settings.logs_dir / f"train_{_day(0).isoformat()}.log").read_text()
        took = re.search(r"warm standby took the job pid=(\d+) standby_since=(\S+) ", log)
        assert took is not None, log
        assert int(took.group(1)) == standby
        assert dt.datetime.fromisoformat(took.group(2)).timestamp() < handed_at  # imports paid before the job
        assert log.index("warm standby took the job") < log.index("training started") < log.index("SUCCESS")
        assert "SUCCESS" in (settings.logs_dir / f"train_{_day(1).isoformat()}.log").read_text()
    finally:
        sup.close()
    # The same window trained in this process gives the same model, byte for byte.
    registry = ModelRegistry(settings.models_dir)
    warm = registry.path(registry.versions()[0])
    cold_settings = _settings(settings.home.parent / "cold")
    cold = ModelRegistry(cold_settings.models_dir).path(train_day(cold_settings, _day(0), window_days=1).version)
    for name in ("mean.onnx", "quantile.onnx"):
        assert (warm / name).read_bytes() == (cold / name).read_bytes()


def test_a_standby_killed_while_idle_falls_back_to_a_fresh_process(settings: Settings) -> None:
    sup = TrainingSupervisor(settings, every_n_days=1, backoff_seconds=0, window_days=1)
    try:
        sup.maybe_schedule(_day(0))
        sup.poll()
        standby = wait_until(lambda: sup._standby.pid, timeout=10)  # type: ignore[union-attr]
        os.kill(standby, signal.SIGKILL)
        wait_until(lambda: _gone(standby), timeout=10)
        assert sup.maybe_schedule(_day(1)) == [_day(0)]
        assert sup.pid is not None and sup.pid != standby
        sup.wait(timeout=120)
        assert sup.status(_day(0)) == "done"
        assert sup.state["days"][_day(0).isoformat()]["attempts"] == 1
        log = (settings.logs_dir / f"train_{_day(0).isoformat()}.log").read_text()
        assert "warm standby took the job" not in log and "SUCCESS" in log
    finally:
        sup.close()


def test_a_standby_never_outlives_its_parent_killed_with_sigkill(tmp_path: Path) -> None:
    code = ("import sys\nfrom workbench.config import Settings\n"
            "from workbench.ml.supervisor import TrainingSupervisor\n"
            "sup = TrainingSupervisor(Settings(home=sys.argv[1]))\nsup.poll()\n"
            "print(sup._standby.pid, flush=True)\nimport time\ntime.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "home")], stdout=subprocess.PIPE, text=True)
    standby = None
    try:
        standby = int(parent.stdout.readline())  # type: ignore[union-attr]
        assert process_start_time(standby) is not None
        parent.kill()
        parent.wait()
        wait_until(lambda: _gone(standby), timeout=30, what="the standby gone with its parent")
    finally:
        parent.kill()
        if standby is not None and not _gone(standby):
            os.kill(standby, signal.SIGKILL)


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
