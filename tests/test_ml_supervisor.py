"""Training supervisor: real subprocesses, cadence, SIGKILL mid-run, retries, persisted state."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from pathlib import Path

import pytest

from tests.helpers import store_generated_days
from workbench.config import Settings
from workbench.ml._standby import UNTRAINABLE_RC
from workbench.ml._train import train_day
from workbench.ml.registry import ModelRegistry
from workbench.ml.supervisor import TrainingSupervisor as _TrainingSupervisor

_OPENED: list[_TrainingSupervisor] = []


class TrainingSupervisor(_TrainingSupervisor):
    """The supervisor under test, closed after its test (see ``_close_supervisors``)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        _OPENED.append(self)


@pytest.fixture(autouse=True)
def _close_supervisors() -> None:
    """A test's supervisors let their trainings finish and their warm trainer go, as the scoring app
    does when it stops; left open, they outlived the test (a warm trainer per supervisor)."""
    yield
    while _OPENED:
        sup = _OPENED.pop()
        sup.wait(timeout=120)
        sup.close()

D0 = dt.date(2024, 3, 1)


def _day(k: int) -> dt.date:
    return D0 + dt.timedelta(days=k)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return store_generated_days(Settings(home=tmp_path / "home"), days=4, start=D0)


def _trained_days(settings: Settings) -> list[str]:
    reg = ModelRegistry(settings.models_dir)
    return [reg.info(v)["training_day"] for v in reg.versions()]


def _schedule_through(sup: TrainingSupervisor, days: int) -> list[dt.date]:
    """Move event time through days ``0 .. days - 1``, letting each scheduled training finish; what was scheduled."""
    scheduled = []
    for k in range(days):
        scheduled += sup.maybe_schedule(_day(k))
        sup.wait(timeout=120)
    return scheduled


def test_every_two_days_really_trains_every_two_days(settings: Settings) -> None:
    sup = TrainingSupervisor(settings, every_n_days=2, backoff_seconds=0)
    scheduled = _schedule_through(sup, 5)
    assert scheduled == [_day(1), _day(3)]
    assert _trained_days(settings) == [_day(1).isoformat(), _day(3).isoformat()]
    assert ModelRegistry(settings.models_dir).info(ModelRegistry(settings.models_dir).current())[
        "training_day"] == _day(3).isoformat()
    assert (settings.logs_dir / f"train_{_day(3).isoformat()}.log").read_text().count("SUCCESS") == 1
    # A restart keeps the schedule: nothing is retrained, day counting continues.
    again = TrainingSupervisor(settings, every_n_days=2, backoff_seconds=0)
    assert again.maybe_schedule(_day(4)) == []
    assert again.status(_day(1)) == "done" and again.status(_day(2)) is None
    assert again.maybe_schedule(_day(6)) == [_day(5)]  # index 5: on the cadence


def test_sigkill_mid_run_is_retried_and_previous_version_stays_current(settings: Settings) -> None:
    sup = TrainingSupervisor(settings, every_n_days=1, backoff_seconds=0, max_attempts=3)
    sup.maybe_schedule(_day(0))
    previous = train_day(settings, _day(0), window_days=1).version  # the model in service
    registry = ModelRegistry(settings.models_dir)
    assert sup.maybe_schedule(_day(2)) == [_day(0), _day(1)]
    pid = sup.pid
    assert pid is not None and sup.status(_day(0)) == "running"
    log = settings.logs_dir / f"train_{_day(0).isoformat()}.log"
    deadline = time.monotonic() + 60
    while "training window loaded" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)  # mid-run
    deadline = time.monotonic() + 60
    # None: the reaper thread handed the retry to the warm trainer and waits for its fork (no pid yet)
    while sup.pid in (pid, None):
        assert time.monotonic() < deadline, "the killed run was never retried"
        sup.poll()
        time.sleep(0.05)
    assert registry.current() == previous
    assert registry.versions() == [previous]
    entry = sup.state["days"][_day(0).isoformat()]
    assert entry["attempts"] == 2 and entry["status"] == "running"  # retried at once (backoff 0)
    # The state on disk says so too: a restarted app would not forget the failure.
    restarted = TrainingSupervisor(settings, every_n_days=1, backoff_seconds=0)
    assert restarted.state["days"][_day(0).isoformat()]["attempts"] == 2
    sup.wait(timeout=120)
    assert sup.status(_day(0)) == "done" and sup.status(_day(1)) == "done"
    current = registry.current()
    assert current != previous and registry.info(current)["training_day"] == _day(1).isoformat()


def test_exhausted_attempts_mark_failed_and_keep_current(settings: Settings) -> None:
    store_generated_days(settings, days=1, start=dt.date(2024, 1, 1))
    settings.models_dir.write_text("")  # a registry that cannot be made: a failure a retry may not repeat
    sup = TrainingSupervisor(settings, every_n_days=1, backoff_seconds=0, max_attempts=2)
    sup.maybe_schedule(dt.date(2024, 1, 1))
    assert sup.maybe_schedule(dt.date(2024, 1, 2)) == [dt.date(2024, 1, 1)]
    sup.wait(timeout=120)
    assert sup.status(dt.date(2024, 1, 1)) == "failed"
    assert sup.state["days"]["2024-01-01"]["attempts"] == 2
    assert sup.state["days"]["2024-01-01"]["last_rc"] not in (0, UNTRAINABLE_RC)
    settings.models_dir.unlink()
    assert ModelRegistry(settings.models_dir).current() is None


def test_a_window_without_events_fails_at_once_without_retries(settings: Settings) -> None:
    """Every day is scheduled, days without events too: one event dated 200 days before the stream (or a gap in
    the log) scheduled 200 empty windows, each run 3 times with the retries' backoff while the partitions waited
    (measured: 600 runs, a 1,500-event drain from 20 s to 212 s). Nothing can fill a window once it is due, nor
    bring one of a few events to the minimum."""
    sup = TrainingSupervisor(settings, every_n_days=1, backoff_seconds=3600, max_attempts=3)
    sup.maybe_schedule(dt.date(2024, 1, 1))  # no shards anywhere near these windows
    assert sup.maybe_schedule(dt.date(2024, 1, 4)) == [dt.date(2024, 1, d) for d in (1, 2, 3)]
    sup.wait(timeout=120)  # a retry would wait the hour of backoff
    for day in ("2024-01-01", "2024-01-02", "2024-01-03"):
        entry = sup.state["days"][day]
        assert (entry["status"], entry["attempts"], entry["last_rc"]) == ("failed", 0, UNTRAINABLE_RC)
    assert not list(settings.logs_dir.glob("train_2024-01-0*.log"))  # not even one run: the shards said so
    assert ModelRegistry(settings.models_dir).current() is None
    # a run that finds its window empty after all (the listing raced a deletion) is not retried either
    sup._stored_days = lambda: None  # type: ignore[method-assign]
    assert sup.maybe_schedule(dt.date(2024, 1, 5)) == [dt.date(2024, 1, 4)]
    sup.wait(timeout=120)
    entry = sup.state["days"]["2024-01-04"]
    assert (entry["status"], entry["attempts"], entry["last_rc"]) == ("failed", 1, UNTRAINABLE_RC)
    log = (settings.logs_dir / "train_2024-01-04.log").read_text()
    assert "No events for the training window ending 2024-01-04" in log
    # a window of a few events (the lone old one, in the windows of the days after it): one run, not three
    store_generated_days(settings, days=1, start=dt.date(2024, 1, 6), rows_per_day=40)
    sup.maybe_schedule(dt.date(2024, 1, 8))
    sup.wait(timeout=120)
    entry = sup.state["days"]["2024-01-06"]
    assert (entry["status"], entry["attempts"], entry["last_rc"]) == ("failed", 1, UNTRAINABLE_RC)
    assert "needs at least 500 usable rows" in (settings.logs_dir / "train_2024-01-06.log").read_text()


def test_the_training_child_uses_settings_given_as_arguments_not_only_the_environment(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # shards and models outside the home, given to the app as arguments (not in os.environ)
    monkeypatch.delenv("WORKBENCH_SHARDS_DIR", raising=False)
    monkeypatch.delenv("WORKBENCH_MODELS_DIR", raising=False)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.rename(settings.shards_dir, shared / "shards")
    moved = settings.with_overrides(shards_dir_override=shared / "shards", models_dir_override=shared / "models")
    sup = TrainingSupervisor(moved, every_n_days=1, backoff_seconds=0)
    assert _schedule_through(sup, 3) == [_day(0), _day(1)]
    assert _trained_days(moved) == [_day(0).isoformat(), _day(1).isoformat()]
    assert not settings.models_dir.exists()  # nothing published in the home's default folder


def test_a_later_day_waits_for_an_earlier_day_retrying_so_versions_register_in_day_order(
        settings: Settings) -> None:
    # A killed training retries after its backoff. Had the next day trained meanwhile, it would have
    # registered first (v0001-<day 1>, v0002-<day 0>): the same models under other version ids than an
    # uninterrupted run's, in every shard and anomaly they scored (seen in chaos runs).
    now = [1_000.0]
    sup = TrainingSupervisor(settings, every_n_days=1, backoff_seconds=60, clock=lambda: now[0], standby=False)
    sup.maybe_schedule(_day(0))
    assert sup.maybe_schedule(_day(2)) == [_day(0), _day(1)]
    pid = sup.pid
    assert pid is not None and sup.status(_day(0)) == "running"
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while sup.status(_day(0)) == "running":
        assert time.monotonic() < deadline, "the killed run was never reaped"
        sup.poll()
        time.sleep(0.05)
    assert sup.state["days"][_day(0).isoformat()]["attempts"] == 1
    for _ in range(5):  # neither the reaper nor the app's polls start day 1 while day 0 waits
        assert sup.poll() is None
        time.sleep(0.05)
    assert sup.status(_day(0)) == "pending" and sup.status(_day(1)) == "pending"
    now[0] += 61  # day 0's retry is due
    sup.wait(timeout=180)
    assert sup.status(_day(0)) == "done" and sup.status(_day(1)) == "done"
    assert ModelRegistry(settings.models_dir).versions() == [f"v0001-{_day(0)}", f"v0002-{_day(1)}"]
