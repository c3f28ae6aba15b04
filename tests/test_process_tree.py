"""Processes that die together, pids that are never mistaken, files that stay private and bounded."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import wait_until
from workbench import _lifeline
from workbench._fs import (
    pid_alive,
    process_start_time,
    read_pid_file,
    remove_stale_temp_files,
    same_process,
    write_pid_file,
)
from workbench.config import Settings
from workbench.runtime import Workbench, WorkbenchStateError
from workbench.runtime.supervisor import run_dir, write_json_atomic

SLEEPER = "from workbench._lifeline import bind_to_supervisor; bind_to_supervisor(); import time; time.sleep(120)"




def _gone(proc: subprocess.Popen) -> bool:
    return proc.poll() is not None


def _tagged_sleeper(home: Path, role: str, **tag_args) -> subprocess.Popen:
    env = {**os.environ, **_lifeline.tags(home, role, **tag_args)}
    return subprocess.Popen([sys.executable, "-c", SLEEPER], env=env)


def test_a_zombie_that_is_not_our_child_counts_as_gone() -> None:
    # A killed daemon stays a zombie until its parent (pid 1 in a container) reaps it: it has ended.
    parent_code = ("import os, subprocess, sys, time\n"
                   "child = subprocess.Popen([sys.executable, '-c', 'pass'])\n"
                   "print(child.pid, flush=True)\n"
                   "time.sleep(120)\n")  # never reaps its child
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    try:
        zombie = int(parent.stdout.readline())  # type: ignore[union-attr]
        started = process_start_time(zombie)
        wait_until(lambda: _is_zombie(zombie), timeout=15)
        assert not pid_alive(zombie) and not same_process(zombie, started)
        assert pid_alive(parent.pid) and same_process(parent.pid, process_start_time(parent.pid))
    finally:
        parent.kill()
        parent.wait()


def test_a_grandchild_dies_with_the_supervisor_through_the_watchdog(tmp_path: Path) -> None:
    # A stand-in supervisor; the "training subprocess" is bound to it by pid and start time only.
    supervisor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    trainer = _tagged_sleeper(tmp_path, "training", supervisor_pid=supervisor.pid)
    try:
        time.sleep(1.5)
        assert not _gone(trainer)  # alive while its supervisor is
        supervisor.kill()
        supervisor.wait()
        wait_until(lambda: _gone(trainer), timeout=30)
    finally:
        trainer.kill()
        supervisor.kill()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
def test_a_direct_child_gets_the_parent_death_signal(tmp_path: Path) -> None:
    parent_code = (
        "import os, subprocess, sys, time\n"
        f"env = {{**os.environ, {_lifeline.PARENT_PID_ENV!r}: str(os.getpid()), {_lifeline.HOME_ENV!r}: sys.argv[1]}}\n"
        f"child = subprocess.Popen([sys.executable, '-c', {SLEEPER!r}], env=env)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())  # type: ignore[union-attr]
    try:
        time.sleep(1.0)
        assert process_start_time(child_pid) is not None
        parent.kill()
        parent.wait()
        wait_until(lambda: process_start_time(child_pid) is None or _is_zombie(child_pid), timeout=30)
    finally:
        with _suppress():
            os.kill(child_pid, signal.SIGKILL)


def test_a_started_process_hears_sigterm_even_when_its_parent_had_it_blocked() -> None:
    """A blocked signal survives fork and exec: an app started from a thread that had SIGTERM blocked never ran
    its stop handler, so its supervisor's stop waited out the grace period and killed it."""
    code = ("import signal, sys, time\n"
            "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # as inherited\n"
            "from workbench._lifeline import bind_to_supervisor\n"
            "signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))  # an app's clean stop\n"
            "bind_to_supervisor()\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        assert proc.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 7
    finally:
        proc.kill()


def _is_zombie(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _suppress():
    import contextlib

    return contextlib.suppress(ProcessLookupError)


def test_start_refuses_beside_orphans_and_stop_finds_them(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", kafka_port=29990)
    orphan = _tagged_sleeper(settings.home, "app")
    other_home = _tagged_sleeper(tmp_path / "elsewhere", "app")
    try:
        wait_until(lambda: _lifeline.home_processes(settings.home), timeout=10)
        with pytest.raises(WorkbenchStateError, match="earlier workbench still run"):
            Workbench.start(settings=settings, apps=("analytics",))
        result = subprocess.run([sys.executable, "-m", "workbench.cli", "--home", str(settings.home), "stop"],
                                capture_output=True, text=True, timeout=60, check=True)
        assert "stopped 1 orphaned process" in result.stdout
        wait_until(lambda: _gone(orphan), timeout=10)
        assert not _gone(other_home)  # another home's process is not touched
    finally:
        orphan.kill()
        other_home.kill()


def test_a_reused_pid_is_never_taken_for_the_supervisor(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    run_dir(settings.home).mkdir(parents=True)
    # A stale state whose supervisor pid now belongs to an unrelated process: this test.
    write_json_atomic(run_dir(settings.home) / "state.json", {
        "supervisor_pid": os.getpid(), "supervisor_started": 1.0, "state": "running", "processes": {}})
    with pytest.raises(WorkbenchStateError, match="No workbench runs"):
        Workbench.attach(settings)
    Workbench(settings).stop(kafka=False)  # must not signal this process
    assert not Workbench(settings).running


def test_pid_files_carry_the_start_time(tmp_path: Path) -> None:
    path = tmp_path / "x.pid"
    write_pid_file(path, os.getpid())
    assert read_pid_file(path) == os.getpid()
    path.write_text(f"{os.getpid()} 12.5\n")  # same pid, another start time: a reused pid
    assert read_pid_file(path) is None


def test_a_step_of_the_wall_clock_does_not_make_a_live_process_look_gone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    path = tmp_path / "x.pid"
    write_pid_file(path, os.getpid())
    before = psutil.Process().create_time()
    # The wall clock is stepped by a second (NTP, a VM's time sync): the boot time psutil adds to a
    # process's start moves with it, in every process that reads it from then on.
    wall_clock_start = psutil.Process.create_time
    monkeypatch.setattr(psutil.Process, "create_time", lambda self: wall_clock_start(self) + 1.0)
    assert read_pid_file(path) == os.getpid()  # before: the live broker's pid file was taken as stale
    # a pid file an earlier version wrote (wall-clock start) still names the live process
    path.write_text(f"{os.getpid()} {before!r}\n")
    assert read_pid_file(path) == os.getpid()
    path.write_text(f"{os.getpid()} {before - 60.0!r}\n")  # a minute off: another process
    assert read_pid_file(path) is None


def test_stale_temp_files_are_removed_but_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / ".ml_training.json.abc123.tmp").write_text("{")
    (tmp_path / "state" / "ml_training.json").write_text("{}")
    (tmp_path / "kafka").mkdir()
    (tmp_path / "kafka" / ".keep.x.tmp").write_text("")
    assert remove_stale_temp_files(tmp_path, skip=("kafka",)) == 1
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["ml_training.json"]
    assert (tmp_path / "kafka" / ".keep.x.tmp").exists()


def test_training_state_is_written_only_on_change(tmp_path: Path) -> None:
    from workbench.ml.supervisor import TrainingSupervisor

    settings = Settings(home=tmp_path)
    trainer = TrainingSupervisor(settings)
    import datetime as dt

    try:
        trainer.maybe_schedule(dt.date(2024, 3, 1))
        path = settings.state_dir / "ml_training.json"
        before = path.stat().st_mtime_ns
        time.sleep(0.05)
        for _ in range(20):
            trainer.poll()
        assert path.stat().st_mtime_ns == before
    finally:
        trainer.close()  # its warm trainer goes, as when the scoring app stops


def test_supervised_output_rotates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from workbench import defaults
    from workbench.runtime import supervisor

    monkeypatch.setattr(defaults, "LOG_MAX_BYTES", 2000)
    out = supervisor._RotatingOutput(tmp_path / "app.log")
    for i in range(500):
        out.line(f"line {i:04d} " + "x" * 40)
    out.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["app.log", *[f"app.log.{i}" for i in range(1, defaults.LOG_BACKUPS + 1)]]
    assert all(p.stat().st_size <= 2100 for p in tmp_path.iterdir())
    assert "line 0499" in (tmp_path / "app.log").read_text()


def test_demo_never_deletes_a_folder_it_did_not_create(tmp_path: Path) -> None:
    from workbench.runtime._demo import DEMO_MARKER, _fresh_demo_home

    settings = Settings(home=tmp_path, kafka_port=29992)
    precious = tmp_path / "demo" / "thesis.tex"
    precious.parent.mkdir()
    precious.write_text("years of work")
    with pytest.raises(WorkbenchStateError, match="not created by `workbench demo`"):
        _fresh_demo_home(settings)
    assert precious.read_text() == "years of work"
    precious.unlink()
    (tmp_path / "demo").rmdir()
    demo = _fresh_demo_home(settings)
    assert (demo.home / DEMO_MARKER).is_file()
    (demo.home / "leftover").write_text("from the last demo")
    _fresh_demo_home(settings)  # its own folder: cleared
    assert not (demo.home / "leftover").exists() and (demo.home / DEMO_MARKER).is_file()


def test_spec_names_the_sasl_password_but_never_holds_it(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, kafka_bootstrap_servers="broker:9093", kafka_security_protocol="SASL_SSL",
                        kafka_sasl_mechanism="PLAIN", kafka_sasl_username="u", kafka_sasl_password="s3cret-pw")
    env = settings.to_env(include_secrets=False)
    assert "KAFKA_SASL_PASSWORD" not in env and "s3cret-pw" not in json.dumps(env)
    assert settings.secret_env_names() == ["KAFKA_SASL_PASSWORD"]
    assert settings.to_env()["KAFKA_SASL_PASSWORD"] == "s3cret-pw"  # children get it through the environment


@pytest.mark.slow
def test_killing_the_supervisor_takes_its_apps_and_files_are_private(kafka_settings: Settings) -> None:
    wb = Workbench.start(settings=kafka_settings, apps=("analytics",))
    try:
        state = wait_until(lambda: (s := wb.status()).processes["analytics"]["state"] == "running" and s, timeout=60)
        app_pid = state.processes["analytics"]["pid"]
        supervisor_pid = json.loads((run_dir(kafka_settings.home) / "state.json").read_text())["supervisor_pid"]
        spec = (run_dir(kafka_settings.home) / "spec.json").read_text()
        assert "processes" in spec and "argv" not in spec  # a typed spec, not command lines
        os.kill(supervisor_pid, signal.SIGKILL)
        wait_until(lambda: process_start_time(app_pid) is None or _is_zombie(app_pid), timeout=30)
        # The kernel signals the apps (PR_SET_PDEATHSIG) while the supervisor is still exiting, before it
        # turns into a zombie: an app can be gone a moment before its supervisor's pid stops answering.
        wait_until(lambda: not wb.running, timeout=30)
        assert _lifeline.home_processes(kafka_settings.home) == []
        for path in (kafka_settings.home / "run" / "spec.json", kafka_settings.logs_dir / "analytics.log",
                     kafka_settings.logs_dir / "supervisor.log"):
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
        # and a new workbench starts on the same home (no orphans left)
        wb = Workbench.start(settings=kafka_settings, apps=("analytics",))
        wait_until(lambda: wb.status().processes["analytics"]["state"] == "running", timeout=60)
    finally:
        wb.stop()


def test_lakehouse_maintenance_deletes_orphaned_files(tmp_path: Path) -> None:
    """A Parquet file a killed writer left behind (no snapshot knows it) goes; live data stays."""
    from datetime import timedelta

    from tests.test_lakehouse import batch
    from workbench.store.lakehouse import AnomalyLakehouse

    with AnomalyLakehouse(tmp_path / "lake") as lake:
        lake.write(batch(0, 100))
        live = sorted((tmp_path / "lake" / "data").rglob("*.parquet"))
        orphan = live[0].with_name("ducklake-killed-mid-commit.parquet")
        orphan.write_bytes(live[0].read_bytes())
        old = time.time() - 3600
        os.utime(orphan, (old, old))
        result = lake.maintain(orphan_age=timedelta(minutes=10))
        assert result.orphans_deleted == 1 and not orphan.exists()
        assert lake.count() == 100


def test_status_shows_disk_use_per_store(tmp_path: Path) -> None:
    from workbench.runtime._status import WorkbenchStatus, disk_usage

    settings = Settings(home=tmp_path)
    settings.shards_dir.mkdir(parents=True)
    (settings.shards_dir / "x.arrow").write_bytes(b"0" * 100_000)
    settings.sqlite_path.write_bytes(b"0" * 50_000)
    disk = disk_usage(settings)
    assert disk["shards"] >= 100_000 and disk["window_stats"] >= 50_000 and disk["lakehouse"] == 0
    status = WorkbenchStatus(replay=None, processes={}, apps={}, lag={}, model_version=None, model_versions=0,
                             anomalies=None, late_events=None, dead_letters=None, disk=disk)
    assert "disk: kafka 0 B, shards 100.0 KB, models 0 B" in str(status), str(status)
    # stores kept elsewhere are not local disk: "window_stats 0 B" beside thousands of windows read as empty
    shared = tmp_path / "shared-lake"
    (shared / "main").mkdir(parents=True)
    (shared / "main" / "a.parquet").write_bytes(b"0" * 30_000)
    elsewhere = settings.with_overrides(window_stats_url="postgresql://wb@db.internal/stats",
                                        lakehouse_catalog="postgres:dbname=lake host=db.internal",
                                        lakehouse_data=str(shared), kafka_bootstrap_servers="kafka.internal:9092")
    disk = disk_usage(elsewhere)
    assert "window_stats" not in disk and "kafka" not in disk and disk["lakehouse"] >= 30_000
    assert "lakehouse" not in disk_usage(elsewhere.with_overrides(lakehouse_data="s3://bucket/lake/"))


def test_status_says_when_a_person_pinned_the_model() -> None:
    """A pin was visible only in `models history`: the status read `model: v0001-... (3 versions)` either way."""
    from workbench.runtime._status import WorkbenchStatus

    common = dict(replay=None, processes={}, apps={}, lag={}, model_version="v0001-2024-03-04", model_versions=3,
                  anomalies=None, late_events=None, dead_letters=None)
    assert "model: v0001-2024-03-04 (3 versions) |" in str(WorkbenchStatus(**common))
    pinned = WorkbenchStatus(**common, model_pinned="v0001-2024-03-04")
    assert "model: v0001-2024-03-04 (3 versions; pinned: scores every event) |" in str(pinned)
    assert pinned.as_dict()["model_pinned"] == "v0001-2024-03-04"
    # CURRENT naming a version deleted since read like a model in use: `model: v0001-... (0 versions)`
    deleted = WorkbenchStatus(**{**common, "model_versions": 0}, model_deleted=True)
    assert "model: v0001-2024-03-04 [deleted from the registry] (0 versions) |" in str(deleted)
    scoring = {"info": {"unreadable_versions": ["v0002-2024-03-05"]}}
    damaged = WorkbenchStatus(**{**common, "apps": {"scoring": scoring}})
    assert "model versions skipped as unreadable: v0002-2024-03-05 (damaged" in str(damaged)


@pytest.mark.slow
def test_workbench_stop_also_stops_the_training_subprocess(kafka_settings: Settings) -> None:
    wb = Workbench.start(settings=kafka_settings, apps=("analytics",))
    trainer = None
    try:
        wait_until(lambda: wb.status().processes["analytics"]["state"] == "running", timeout=60)
        supervisor_pid = json.loads((run_dir(kafka_settings.home) / "state.json").read_text())["supervisor_pid"]
        # What the scoring app starts: tagged with the home and the supervisor, not bound to its parent.
        trainer = _tagged_sleeper(kafka_settings.home, "training", supervisor_pid=supervisor_pid)
        time.sleep(1.0)
        assert not _gone(trainer)
    finally:
        wb.stop()
    assert trainer is not None
    wait_until(lambda: _gone(trainer), timeout=30)


def test_status_late_events_come_from_the_store_and_survive_app_restarts(tmp_path: Path) -> None:
    from workbench.runtime._status import late_event_count
    from workbench.store.window_stats import WindowStatsStore

    settings = Settings(home=tmp_path)
    assert late_event_count(settings) is None  # no store yet
    with WindowStatsStore.from_settings(settings) as store:
        store.record_late(1, 0, 3, source=("events", 0, 10))
        store.record_late(1, 0, 3, source=("events", 0, 10))  # re-processed after a restart
        store.record_late(2, 600_000, 1, source=("events", 1, 4))
    assert late_event_count(settings) == 4
