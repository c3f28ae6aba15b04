"""The Workbench runtime end to end on the real broker: start, steer, watch, supervise, stop."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tests.helpers import make_log, wait_until
from workbench._lifeline import home_processes
from workbench.config import Settings
from workbench.runtime import Workbench, WorkbenchStateError

pytestmark = pytest.mark.slow




def test_start_steer_watch_and_stop_from_the_python_api(kafka_settings: Settings, tmp_path: Path) -> None:
    log = make_log(tmp_path / "log.parquet", rows=40_000, spacing_s=1.0)  # ~11 hours of events
    wb = Workbench.start(data=log, speedup=600, settings=kafka_settings, apps=("analytics",))
    try:
        with pytest.raises(WorkbenchStateError, match="already runs"):
            Workbench.start(data=log, settings=kafka_settings, apps=("analytics",))
        # another process would attach with only WORKBENCH_HOME: the rest comes from the running one
        other = Workbench.attach(Settings(home=kafka_settings.home))
        assert other.settings.bootstrap_servers == kafka_settings.bootstrap_servers

        # the replay process's start-up: interpreter, imports, the file's validation, Kafka transactions
        status = wait_until(lambda: (s := wb.status()).replay and s.rows_sent > 0 and s, timeout=180)
        assert status.speedup == 600 and status.replay_state == "running"
        assert status.processes["analytics"]["state"] == "running"

        other.set_speed(3600)
        wait_until(lambda: wb.status().speedup == 3600, timeout=60)

        wb.pause()
        paused = wait_until(lambda: (s := wb.status()).replay_state == "paused" and s, timeout=60)
        time.sleep(2.0)
        assert wb.status().rows_sent == paused.rows_sent

        wb.seek("2024-03-04T05:00:00")  # rows are 1 s apart from midnight: row 18000
        wait_until(lambda: wb.status().rows_sent == 18_000, timeout=60)
        assert wb.status().event_time.isoformat() == "2024-03-04T05:00:00+00:00"

        wb.resume()
        wait_until(lambda: wb.status().rows_sent > 18_000, timeout=60)

        # a supervised app that dies is restarted
        pid = wb.status().processes["analytics"]["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: (p := wb.status().processes["analytics"])["restarts"] == 1 and p["state"] == "running",
                   timeout=60)

        wb.set_speed("max")
        done = wait_until(lambda: (s := wb.status()).drained and s, timeout=300, poll=1.0)
        assert done.rows_sent == done.rows_total == 40_000
        assert done.lag == {"analytics": 0}
        assert done.late_events == 0 or done.late_events is None
        windows = wb.window_stats()
        assert int(windows["total_queries"].sum()) >= 40_000 - 18_000  # the seek skipped rows 0..17999
    finally:
        wb.stop()
    assert not wb.running
    state = wb.status().processes
    assert all(p["state"] in ("stopped", "finished") for p in state.values()), state
    with pytest.raises(WorkbenchStateError, match="No workbench runs"):
        Workbench.attach(kafka_settings)


def test_two_starts_at_the_same_moment_run_one_workbench(kafka_settings: Settings) -> None:
    """Both would pass the "one already runs" checks before either supervisor is up: the second is
    refused (start lock), so one home never has two supervisors, two sets of apps and two replays."""
    env = {**os.environ, **kafka_settings.to_env()}
    starts = [subprocess.Popen([sys.executable, "-m", "workbench.cli", "start", "--app-instances", "1"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(start.wait(timeout=180), start.stderr.read()) for start in starts]
    try:
        assert sorted(code for code, _ in results) == [0, 2], results
        refused = next(err for code, err in results if code == 2)
        assert "in progress" in refused or "already runs" in refused, refused
        assert "Traceback" not in refused
        assert len(home_processes(kafka_settings.home, roles=("supervisor",))) == 1
    finally:
        for start in starts:
            start.stdout.close()
            start.stderr.close()
        Workbench.stop_orphans(kafka_settings)


def test_the_status_shows_why_a_supervised_process_keeps_exiting(kafka_settings: Settings) -> None:
    """An app that exits with an explained error (here: a PostgreSQL catalog that does not answer) is
    restarted with backoff as before; the status says why, not only "backoff (N restarts)"."""
    from tests.helpers import free_port_pair

    settings = kafka_settings.with_overrides(
        lakehouse_catalog=f"postgres:host=127.0.0.1 port={free_port_pair()} dbname=lake")
    wb = Workbench.start(settings=settings, apps=("anomaly-sink",))
    try:
        failing = wait_until(lambda: (p := wb.status().processes["anomaly-sink"]).get("error") and p, timeout=180)
        assert failing["state"] in ("backoff", "failed")
        assert failing["error"].startswith("The lakehouse catalog (WORKBENCH_LAKEHOUSE_CATALOG) does not answer")
        assert "anomaly-sink exited: The lakehouse catalog" in str(wb.status())
    finally:
        wb.stop()


def test_bad_start_options_are_refused_before_anything_starts(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """The replay and the apps would refuse them too, but only after "started", restarted in a loop."""
    from workbench.exceptions import WorkbenchError

    log = make_log(tmp_path / "log.parquet", rows=100)
    settings = Settings(home=tmp_path / "home", kafka_bootstrap_servers="127.0.0.1:1")  # never reached
    began = time.monotonic()
    for options, message in (({"speedup": "fast"}, "speedup must be a number or 'max'. Got 'fast'"),
                             ({"pack": 0}, r"pack \(queries per Kafka message\) must be an integer >= 1"),
                             ({"encoding": "arrow_zstd"},
                              r"encoding must be one of \['arrow', 'arrow-zstd', 'json'\]. Got 'arrow_zstd'"),
                             ({"retrain_every_days": 0}, r"retrain_every_days \(--every-n-days\) must be >= 1"),
                             ({"app_instances": 0}, "1 to 64 processes"),
                             ({"app_instances": {"scorer": 2}}, "names apps that are not started: \\['scorer'\\]"),
                             ({"data": tmp_path / "missing.parquet"}, "missing.parquet")):
        with pytest.raises(WorkbenchError, match=message):
            Workbench.start(**{"data": log, **options}, settings=settings)
    assert time.monotonic() - began < 30  # no broker wait (it would take 90 s)
    assert home_processes(settings.home) == []
    assert not settings.home.exists()  # a refused start leaves no (empty) home behind
    # more processes than partitions are allowed (standbys), and said (tester B, 33rd session)
    with caplog.at_level("WARNING"), pytest.raises(WorkbenchError, match="speedup must be"):
        Workbench.start(data=log, settings=settings, app_instances={"scoring": settings.partitions + 2}, speedup="fast")
    assert (f"more processes than the {settings.partitions} partitions (WORKBENCH_PARTITIONS) for scoring "
            f"({settings.partitions + 2})") in caplog.text


def test_a_log_of_less_than_a_day_is_scored_once_its_waiting_day_is_trained(
        kafka_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A day trains when the stream passes its end: a log of a few hours left every event unscored,
    silently, for good (the demo with --days 1 reported 0 scored events and no model)."""
    log = make_log(tmp_path / "hours.parquet", rows=3000, spacing_s=5.0)  # 04:10 of one day
    wb = Workbench.start(data=log, speedup="max", settings=kafka_settings)
    try:
        status = wb.wait(timeout=240, progress=False)
        status = wait_until(lambda: (s := wb.status()).drained and s.waiting_for_model and s, timeout=60)
        assert status.waiting_for_model == ["2024-03-04"] and status.model_version is None
        assert "`workbench train --waiting` (Workbench.train_waiting_days()) trains them" in str(status), str(status)
        # the CLI's way (`workbench train --day` is refused while the workbench runs: tester B, 33rd session)
        from workbench.ml._cli import _train_waiting

        assert _train_waiting(kafka_settings) == 0
        versions = [meta["version"] for meta in wb.models()]
        assert len(versions) == 1 and versions[0].endswith("-2024-03-04")
        assert capsys.readouterr().out.startswith(f"trained {versions[0]}: the scoring app scores")
        settled = wait_until(lambda: not (s := wb.status()).waiting_for_model and s.drained and s, timeout=120)

        def stored() -> tuple[int, set[str | None]]:
            shards = wb.shards(columns=["query_id", "model_version"])
            return shards.num_rows, set(shards.column("model_version").to_pylist())

        # the stored events are scored in the background once their version exists: each once, by it
        wait_until(lambda: stored() == (3000, set(versions)), timeout=120, what="every stored event scored once")
        assert "train --day" not in str(settled)
        assert wb.train_waiting_days() == []  # nothing waits: nothing more to train
    finally:
        wb.stop()


def test_wait_returns_once_every_result_has_landed_not_at_drained(kafka_settings: Settings, tmp_path: Path) -> None:
    """wait() returned as soon as every app had consumed its input: the scoring app then still judged the
    log's last day (persistent runs, runtime-residual windows) and sent anomalies of rows it scored late,
    so a notebook that read the anomalies right after wait() was a few seconds short of the final figures
    (the anomaly sink's lag went 0 -> 136 -> 0 after 'drained')."""
    from workbench.analysis.read import judged_through
    from workbench.data.generator import generate
    from workbench.runtime._status import anomaly_count

    # Two days: the first day's model trains while the second replays at max speed, so the pipeline
    # drains with the second day's events stored unscored and the training still running.
    log = tmp_path / "days.parquet"
    generate(log, days=2, instances=4, rows_per_day=20_000, seed=1)
    wb = Workbench.start(data=log, speedup="max", settings=kafka_settings)
    try:
        status = wb.wait(timeout=400, progress=False)
        assert status.drained and wb.settled(status), wb._unsettled(status)
        last_day = status.replay.last_event_time.date()
        assert judged_through(kafka_settings, last_day)  # the last day, settled by the end-of-log marker
        assert status.model_version is not None and not status.waiting_for_model
        shards = wb.shards(columns=["arrival_timestamp", "model_version"])
        days = pc.strftime(shards.column("arrival_timestamp"), "%Y-%m-%d")
        later = pc.not_equal(days, str(status.replay.first_event_time.date()))
        assert shards.filter(later).column("model_version").null_count == 0  # the second day: all scored
        # the analytics app's collective step has read every window written (it ran every 30 s, so the
        # last flagged windows landed up to 30 s after wait(): a browser tester saw 9 land 11 s later)
        info = wb.status().instances["analytics"][0]["info"]
        assert info["collective_checked_at"] >= info["windows_written_at"], info
        final, windows = anomaly_count(kafka_settings), len(wb.window_anomalies())
        assert status.anomalies == final  # the status wait() returns has the final figures, not 5 s old ones
        time.sleep(31)  # past the collective step's regular pass
        assert anomaly_count(kafka_settings) == final and wb.status().lag["anomaly-sink"] == 0
        assert len(wb.window_anomalies()) == windows

        # A Reset sends every row again: wait() said settled while the deferred step still judged the days
        # again (84 s in a soak), and each pass left a whole copy of the log in the shards for good.
        from workbench.store.shards import read_shards
        from workbench.store.window_stats import WindowStatsStore

        def stored_residuals() -> pa.Table:
            with WindowStatsStore.from_settings(kafka_settings, read_only=True) as store:
                return store.read_residuals()

        residuals = stored_residuals()
        assert residuals.num_rows
        wb.reset()
        status = wb.wait(timeout=400, progress=False)
        assert wb.settled(status), wb._unsettled(status)
        assert all(not (e.get("info") or {}).get("judging_again") for e in status.instances["scoring"])
        assert status.late_events and status.anomalies == final and len(wb.window_anomalies()) == windows
        assert stored_residuals().equals(residuals)
        shards = kafka_settings.shards_dir  # a copy per pass until the days sent again are quiet and compacted
        wait_until(lambda: read_shards(shards, dedupe=False).num_rows == read_shards(shards).num_rows, timeout=90)
    finally:
        wb.stop()


def test_the_replay_notebooks_start_mode_run_again_connects_to_the_running_workbench(
        kafka_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Run All of 01_replay_control with mode="start" a second time raised WorkbenchStateError ("already
    runs") as a traceback in the first cell; it connects instead, and the workbench the kernel started
    stays the notebook's to stop."""
    from workbench.reports.notebook import open_workbench
    from workbench.runtime.supervisor import read_state

    log = make_log(tmp_path / "log.parquet", rows=2_000, spacing_s=1.0)
    wb, started = open_workbench("start", kafka_settings, data=str(log), speedup=600)
    try:
        assert started and wb.running
        said = capsys.readouterr().out  # in words (the setup cell printed the repr), naming the home and the log
        assert f"Started the workbench under {kafka_settings.home}: running" in said and str(log) in said
        assert "fresh" not in said and "Workbench(" not in said
        supervisor = read_state(kafka_settings.home)["supervisor_pid"]
        again, started_again = open_workbench("start", kafka_settings, data=str(log), speedup=600)
        assert again is not None and again.running and started_again
        assert "already runs under" in capsys.readouterr().out
        assert read_state(kafka_settings.home)["supervisor_pid"] == supervisor  # nothing second started
    finally:
        wb.stop()



def test_two_notebooks_starting_in_the_same_second_share_one_workbench(kafka_settings: Settings,
                                                                       tmp_path: Path) -> None:
    """Two copies of 01 with mode="start", Run All within a second: the second got WorkbenchStateError
    ("already runs") and every later cell "not run" (a browser tester's finding). It connects instead."""
    import threading

    from workbench.reports.notebook import open_workbench
    from workbench.runtime.supervisor import read_state

    log = make_log(tmp_path / "log.parquet", rows=2_000, spacing_s=1.0)
    results: list[Any] = []
    go = threading.Barrier(2)

    def run_all() -> None:
        go.wait()
        try:
            results.append(open_workbench("start", kafka_settings, data=str(log), speedup=600))
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=run_all) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    try:
        assert all(isinstance(r, tuple) for r in results) and len(results) == 2, results
        assert sorted(started for _, started in results) == [False, True]  # one started it, one connected
        assert all(wb.running for wb, _ in results)
        assert len({read_state(kafka_settings.home)["supervisor_pid"]}) == 1
    finally:
        for result in results:
            if isinstance(result, tuple) and result[1]:
                result[0].stop()


def test_start_refuses_a_log_with_a_bad_row_unless_asked_to_dead_letter_it(kafka_settings: Settings,
                                                                           tmp_path: Path) -> None:
    """`Workbench.start` / `workbench start` had no way to do what the refusal told to do (--skip-bad-rows,
    a `workbench replay` option): one negative duration in a file of another tool kept the workbench from
    starting at all."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.helpers import consume_all
    from workbench.data import DataValidationError

    log = make_log(tmp_path / "log.parquet", rows=300)
    table = pq.read_table(log)
    durations = table.column("execution_duration_ms").to_pylist()
    durations[5] = -5
    table = table.set_column(table.schema.get_field_index("execution_duration_ms"), "execution_duration_ms",
                             pa.array(durations, pa.int64()))
    pq.write_table(table, log)
    with pytest.raises(DataValidationError, match=r"row 5, execution_duration_ms: -5 is negative.*skip_bad_rows=True"):
        Workbench.start(data=log, speedup="max", settings=kafka_settings, apps=("analytics",))
    wb = Workbench.start(data=log, speedup="max", settings=kafka_settings, apps=("analytics",), skip_bad_rows=True)
    try:
        done = wait_until(lambda: (s := wb.status()).drained and s, timeout=240, poll=1.0, what="drained")
        assert done.rows_sent == 300 and done.replay.dead_letters == 1  # every row passed: one as a dead letter
        assert int(wb.window_stats()["total_queries"].sum()) == 299
    finally:
        wb.stop(kafka=False)
    dead = consume_all(kafka_settings, kafka_settings.topic_dead_letter, expected=1, timeout=60)
    assert [dict(m.headers())["reason"].decode() for m in dead] == [
        "negative_value: execution_duration_ms: -5 is negative (durations, sizes and counts are >= 0)"]


def test_a_start_interrupted_after_the_supervisor_launched_leaves_nothing_running(
        kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C about 3.5 s into `workbench start` said "interrupted" and left the whole workbench running."""
    from workbench.runtime import _workbench

    real_read_state = _workbench.read_state
    reads = {"n": 0}

    def interrupted_while_waiting(home: Path) -> dict | None:
        reads["n"] += 1
        if reads["n"] == 3:  # the start's checks read it once; the wait for the supervisor then
            time.sleep(1.0)  # (the supervisor starts its processes meanwhile)
            raise KeyboardInterrupt
        return real_read_state(home)

    monkeypatch.setattr(_workbench, "read_state", interrupted_while_waiting)
    with pytest.raises(KeyboardInterrupt):
        Workbench.start(settings=kafka_settings, apps=("anomaly-sink",))
    monkeypatch.setattr(_workbench, "read_state", real_read_state)
    assert reads["n"] >= 3
    assert wait_until(lambda: not home_processes(kafka_settings.home), timeout=30)
    with pytest.raises(WorkbenchStateError, match="No workbench runs"):
        Workbench.attach(kafka_settings)


def test_stop_and_status_name_the_homes_kafka_left_running_and_stop_stops_a_killed_workbenchs(
        tmp_path: Path, kafka_base: Settings, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """After a killed supervisor (or a start killed while its broker booted) `status` and `stop` said
    "No workbench runs" while the home's 1 GB broker ran on; `stop` never stopped it."""
    from tests.helpers import free_port_pair
    from workbench.broker import LocalKafka
    from workbench.cli import main
    from workbench.runtime._workbench import broker_to_stop
    from workbench.runtime.supervisor import RunSpec, run_dir, write_json_atomic

    settings = Settings(home=tmp_path / "home", kafka_port=free_port_pair(), kafka_heap="512m",
                        cache_dir=kafka_base.cache_dir)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("WORKBENCH_KAFKA_PORT", str(settings.kafka_port))
    broker = LocalKafka(settings)
    broker.start(timeout=120)
    try:
        pid = broker.pid()
        home = ["--home", str(settings.home)]
        assert main([*home, "status"]) == 2
        err = capsys.readouterr().err
        assert (f"Its local Kafka still runs (pid {pid}): `workbench stop --kafka` stops it (it was started by "
                "hand)") in err
        assert main([*home, "stop"]) == 0 and broker.pid() == pid  # started by hand: left to its owner
        assert "No workbench runs" in capsys.readouterr().out
        assert not broker_to_stop(settings)  # a workbench starting beside it leaves it to its owner too
        run_dir(settings.home).mkdir(parents=True, exist_ok=True)
        spec = RunSpec(processes=[], env={}, started_kafka=True)  # a workbench's start started it
        write_json_atomic(run_dir(settings.home) / "spec.json", spec.to_json())
        # a workbench started again after its supervisor was killed takes the broker over: its stop stops it
        # (the restart had named it "started by hand" and left it running for good)
        assert broker_to_stop(settings)
        assert main([*home, "stop"]) == 0
        out = capsys.readouterr().out
        assert (f"stopped the local Kafka of {settings.home} (pid {pid}), which a workbench that no longer runs "
                "had started") in out
        assert broker.pid() is None
    finally:
        broker.stop()


def test_stop_waits_for_a_start_in_progress(tmp_path: Path) -> None:
    """`stop` 2.5 s into a start said "No workbench runs" and the workbench came up a second later."""
    from workbench._fs import try_flock
    from workbench.runtime._workbench import wait_for_start
    from workbench.runtime.supervisor import run_dir

    home = tmp_path / "home"
    assert wait_for_start(home, timeout=0.1)  # never started: nothing to wait for
    run_dir(home).mkdir(parents=True)
    lock = try_flock(run_dir(home) / "start.lock")
    told: list[str] = []
    assert not wait_for_start(home, timeout=0.5, on_wait=lambda: told.append("waiting"))
    assert told == ["waiting"]
    # `workbench status` during the start read "No workbench runs ... Start one with `workbench start`"
    with pytest.raises(WorkbenchStateError, match=r"A workbench is being started under .*ask again in a few"):
        Workbench.attach(Settings(home=home))
    os.close(lock)
    assert wait_for_start(home, timeout=0.5)
    with pytest.raises(WorkbenchStateError, match=r"No workbench runs under") as info:
        Workbench.attach(Settings(home=home))
    assert "fresh start" not in str(info.value)
    from workbench.runtime._home import CLEARING_MARK

    (home / CLEARING_MARK).write_text("2026-12-06 06:00:00 UTC\n")
    with pytest.raises(WorkbenchStateError, match=r"No workbench runs .*`workbench start --fresh` finishes clearing"):
        Workbench.attach(Settings(home=home))


# The command is started through a tiny launcher that sets the signal state it inherits, so the test does not
# depend on what the test process's other tests left in its own (a blocked mask and an ignored signal survive exec).
_LAUNCH_WITH_SIGTERM = """
import os, signal, sys
signal.signal(signal.SIGTERM, signal.SIG_DFL)
signal.pthread_sigmask(signal.SIG_BLOCK if sys.argv[1] == "blocked" else signal.SIG_UNBLOCK, {signal.SIGTERM})
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def _signal_state(pid: int) -> str:
    """The signal lines of ``/proc/<pid>/status`` for the process and each of its threads, with their states."""
    lines = []
    for status in [Path(f"/proc/{pid}/status"), *sorted(Path(f"/proc/{pid}/task").glob("*/status"))]:
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError as exc:
            lines.append(f"{status}: {exc}")
            continue
        lines.append(f"{status}: " + " ".join(f"{k}={fields.get(k, '').strip()}" for k in (
            "Name", "State", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")))
    return "\n".join(lines)


@pytest.mark.parametrize("inherited", ["default", "blocked"])
def test_sigterm_undoes_a_command_as_ctrl_c_does(tmp_path: Path, inherited: str) -> None:
    """`kill` (SIGTERM: timeout, a CI cancel, systemd) left `generate`'s partial file behind, and `start`'s
    broker and `demo`'s whole workbench running; it now takes the Ctrl-C path. A command started with SIGTERM
    blocked (a mask its parent's thread had when it spawned us) finished its work, deaf to `kill`, and exited 0.
    So did one whose signal came while `str.join` ran over a NumPy array in the generator, which lost the
    exception the handler raised (1 run in 8 with the signal at a random moment)."""
    out = tmp_path / "big.parquet"
    # a command as a user starts it: not the test process's environment, session or standard input
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "WORKBENCH_HOME": str(tmp_path / "home"), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # a year of log: minutes of work, so the signal lands in the middle of it however late the test looks
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCH_WITH_SIGTERM, inherited, "-m", "workbench.cli", "generate",
                             "--days", "365", "--instances", "16", "--out", str(out)],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert wait_until(lambda: any(tmp_path.glob("*.partial*")) or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, f"generate ended before it was signalled: {proc.communicate()[1]}"
        state = _signal_state(proc.pid)
        sigterm = 1 << (signal.SIGTERM - 1)
        fields = dict(line.split("=", 1) for line in state.splitlines()[0].split(" ")[1:] if "=" in line)
        assert int(fields["SigCgt"], 16) & sigterm and not int(fields["SigBlk"], 16) & sigterm, state
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            # seen twice in CI, never alone: say what the process's signal state was, for the next look
            pytest.fail(f"SIGTERM not acted on in 60 s:\n{_signal_state(proc.pid)}")
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 143, err
    assert "workbench: terminated" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob("*.partial*"))


def test_another_log_into_a_used_home_is_refused_and_the_same_log_is_not(kafka_settings: Settings,
                                                                         tmp_path: Path) -> None:
    """A second log of the same days, started on a used home, was mixed in without a word: scored by the
    first log's model and 74 % of its events dropped as late against the first log's closed windows."""
    first = make_log(tmp_path / "a.parquet", rows=3000, spacing_s=5.0)
    other = make_log(tmp_path / "b.parquet", rows=2000, spacing_s=5.0, seed=1)
    wb = Workbench.start(data=first, speedup="max", settings=kafka_settings, apps=("analytics",))
    try:
        assert wait_until(lambda: kafka_settings.sqlite_path.exists(), timeout=120)
    finally:
        wb.stop()
    with pytest.raises(WorkbenchStateError, match=r"holds the results of another log: .*a\.parquet \(3,000 rows, "
                                                  r".*not .*b\.parquet \(2,000 rows.*workbench start --fresh"):
        Workbench.start(data=other, speedup="max", settings=kafka_settings, apps=("analytics",))
    assert not home_processes(kafka_settings.home)  # refused before anything started
    Workbench.start(data=first, speedup="max", settings=kafka_settings, apps=("analytics",)).stop()  # the same log
    # a byte-identical copy is the same log too (tester B, 32nd session: refused, "another log" shown identical)
    copy = tmp_path / "copy.parquet"
    copy.write_bytes(first.read_bytes())
    Workbench.start(data=copy, speedup="max", settings=kafka_settings, apps=("analytics",)).stop()
    with pytest.raises(WorkbenchStateError, match=r"KAFKA_BOOTSTRAP_SERVERS \(an external cluster keeps its topics"):
        Workbench.start(data=other, settings=kafka_settings, apps=("analytics",), fresh=True)


def test_a_folder_that_gained_a_day_goes_on_in_its_home_and_counts_every_query_once(kafka_settings: Settings,
                                                                                     tmp_path: Path) -> None:
    """A daily export (tester A, 33rd session): the folder gains the next day's file; a start on the same home
    went on only with --fresh and a full replay ("holds the results of another log"). Now it goes on: the
    default start replays the old rows again (counted once) and the new ones; no row is counted twice."""
    import pyarrow.parquet as pq

    from workbench.data import prepare

    make_log(tmp_path / "log.parquet", rows=3000, spacing_s=100.0)
    days = tmp_path / "days"
    prepare(tmp_path / "log.parquet", days, split="day", row_group_size=500, temp_dir=tmp_path / "tmp")
    last = sorted(days.glob("*.parquet"))[-1]
    held_back = tmp_path / last.name
    last.rename(held_back)
    wb = Workbench.start(data=days, speedup="max", settings=kafka_settings, apps=("analytics",))
    try:
        first = wait_until(lambda: (s := wb.status()).drained and s, timeout=240, poll=1.0, what="drained")
        assert first.rows_total < 3000
        assert int(wb.window_stats()["total_queries"].sum()) == first.rows_total
    finally:
        wb.stop(kafka=False)
    held_back.rename(last)
    wb = Workbench.start(data=days, speedup="max", settings=kafka_settings, apps=("analytics",))
    try:
        done = wait_until(lambda: (s := wb.status()).drained and s.rows_total == 3000 and s, timeout=240, poll=1.0,
                          what="drained")
        assert done.rows_sent == 3000
        assert int(wb.window_stats()["total_queries"].sum()) == 3000
    finally:
        wb.stop(kafka=False)
    first_day = sorted(days.glob("*.parquet"))[0]  # an earlier day rewritten is no growth: refused
    pq.write_table(pq.read_table(first_day), first_day, row_group_size=77)
    with pytest.raises(WorkbenchStateError, match="has changed since"):
        Workbench.start(data=days, speedup="max", settings=kafka_settings, apps=("analytics",))


def test_a_log_is_told_by_its_content_and_an_older_record_by_its_path(tmp_path: Path) -> None:
    """A copy or a moved file of the log is the same log; the same path rewritten with other values is not, even
    with the same rows and times; a record from before the fingerprint compares paths."""
    from workbench.runtime._home import _same_log
    from workbench.runtime._home import log_identity as _identity

    log = make_log(tmp_path / "a.parquet", rows=300, spacing_s=5.0)
    summary = SimpleNamespace(rows=300, first_arrival=dt.datetime(2024, 3, 4, tzinfo=dt.UTC),
                              last_arrival=dt.datetime(2024, 3, 5, tzinfo=dt.UTC))
    held = _identity(log, summary)
    moved = tmp_path / "moved.parquet"
    moved.write_bytes(log.read_bytes())
    assert _same_log(held, _identity(moved, summary))
    rewritten = make_log(tmp_path / "b.parquet", rows=300, spacing_s=5.0, seed=7)
    assert not _same_log({**held, "path": str(rewritten)}, _identity(rewritten, summary))
    older = {key: value for key, value in held.items() if key != "fingerprint"}
    assert _same_log(older, _identity(log, summary)) and not _same_log(older, _identity(moved, summary))
    # refused as the same name twice ("another log: X ..., not X ..."): it says the file changed (tester A, 33rd)
    from workbench.runtime._home import check_log, record_log

    settings = Settings(home=tmp_path / "home")
    (settings.shards_dir / "2024-03-04").mkdir(parents=True)
    (settings.shards_dir / "2024-03-04" / "p0.arrow").write_bytes(b"x")  # the home holds results
    record_log(settings, log, summary)
    log.write_bytes(rewritten.read_bytes())  # re-exported in place: same rows and times, other values
    with pytest.raises(WorkbenchStateError, match=r"holds the results of .*a\.parquet as it was \(300 rows, .*the "
                                                  r"log there has changed since \(now 300 rows, .*other content\)"):
        check_log(settings, log, summary)


def test_a_fresh_start_clears_the_homes_results_and_keeps_its_inputs_logs_and_reports(tmp_path: Path) -> None:
    from workbench.runtime._home import clear_results

    settings = Settings(home=tmp_path / "home")
    assert settings.manages_kafka
    home = settings.home
    kept = [home / "data" / "log.parquet", home / "logs" / "scoring.log", home / "reports" / "r.html",
            home / "kafka" / "server.properties"]
    cleared = [home / "shards" / "2024-03-04" / "p0.arrow", home / "stream_stats.sqlite",
               home / "stream_stats.sqlite-wal", home / "lakehouse" / "catalog.sqlite", home / "models" / "v1" / "m",
               home / "state" / "log.json", home / "kafka" / "data" / "meta.properties"]
    for path in kept + cleared:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    clear_results(settings)
    assert all(path.exists() for path in kept)
    assert not any(path.exists() for path in cleared)
    shared = settings.with_overrides(window_stats_url="postgresql://db/stats")
    with pytest.raises(WorkbenchStateError, match="WORKBENCH_WINDOW_STATS_URL point"):
        clear_results(shared)


def test_a_fresh_start_killed_while_clearing_makes_the_next_plain_start_refuse(tmp_path: Path) -> None:
    """kill -9 of `start --fresh` right after the lakehouse went left the broker's data and the state: a plain
    start of the same log was taken, and counted 0 of 1,333 windows, for good."""
    from workbench.runtime._home import CLEARING_MARK, clear_results

    settings = Settings(home=tmp_path / "home")
    home = settings.home
    for path in (settings.sqlite_path, settings.lakehouse_dir / "catalog.sqlite", settings.state_dir / "log.json",
                 settings.kafka_dir / "data" / "meta.properties", settings.shards_dir / "2024-03-04" / "p0.arrow"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    killed = ("import os, shutil, sys\n"
              "from workbench.config import Settings\n"
              "from workbench.runtime import _home\n"
              "settings = Settings(home=sys.argv[1])\n"
              "real = shutil.rmtree\n"
              "def rmtree(path, *a, **k):\n"
              "    real(path, *a, **k)\n"
              "    if path == settings.lakehouse_dir:\n"
              "        os._exit(9)  # as kill -9 there\n"
              "_home.shutil.rmtree = rmtree\n"
              "_home.clear_results(settings)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    assert subprocess.run([sys.executable, "-c", killed, str(home)], env=env, timeout=60).returncode == 9
    assert (home / CLEARING_MARK).exists() and (settings.kafka_dir / "data").exists()
    log = make_log(tmp_path / "log.parquet", rows=200)
    with pytest.raises(WorkbenchStateError, match=r"A fresh start of .* was stopped while it cleared the home's "
                                                  r"results \(begun .*UTC\).*`workbench start --fresh` again"):
        Workbench.start(data=log, settings=settings, apps=("analytics",))
    assert not home_processes(home)  # refused before anything started
    clear_results(settings)  # what `start --fresh` does first
    assert not (home / CLEARING_MARK).exists() and not (settings.kafka_dir / "data").exists()
    assert not settings.state_dir.exists() and not settings.shards_dir.exists()


def test_the_homes_own_records_are_owner_only_under_any_umask_of_the_caller(tmp_path: Path) -> None:
    """The Python API sets no umask: under the caller's 000 the log record came out 0666."""
    from types import SimpleNamespace

    import pandas as pd

    from workbench.runtime._home import CLEARING_MARK, clear_results, record_log

    settings = Settings(home=tmp_path / "home")
    summary = SimpleNamespace(rows=1, first_arrival=pd.Timestamp("2024-03-04", tz="UTC"),
                              last_arrival=pd.Timestamp("2024-03-05", tz="UTC"))
    marks = []
    real_rmtree = shutil.rmtree

    def rmtree(path: Path, *args: Any, **kwargs: Any) -> None:  # the mark, looked at while it stands
        marks.append((settings.home / CLEARING_MARK).stat().st_mode)
        real_rmtree(path, *args, **kwargs)

    old = os.umask(0)
    try:
        record_log(settings, tmp_path / "log.parquet", summary)
        settings.shards_dir.mkdir(parents=True)
        with mock.patch("workbench.runtime._home.shutil.rmtree", rmtree):
            clear_results(settings)
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        record_log(settings, tmp_path / "log.parquet", summary)
    finally:
        os.umask(old)
    assert (settings.state_dir / "log.json").stat().st_mode & 0o077 == 0
    assert marks and all(mode & 0o077 == 0 for mode in marks)


def test_replay_control_and_train_follow_the_workbench_running_under_the_home(
        kafka_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """With a stale WORKBENCH_KAFKA_PORT, `replay-control` read and paused another home's replay while
    `status` showed this one's; `train` during a replay published a version from part of a day."""
    from workbench.cli import main

    log = make_log(tmp_path / "log.parquet", rows=40_000, spacing_s=1.0)
    wb = Workbench.start(data=log, speedup=60, settings=kafka_settings, apps=("analytics",))
    try:
        assert wait_until(lambda: (s := wb.status()).replay and s.rows_sent > 0, timeout=180)
        monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")  # stale: nothing listens there
        home = ["--home", str(kafka_settings.home)]
        assert main([*home, "replay-control", "pause"]) == 0
        assert "sent pause to replay 'default'" in capsys.readouterr().out
        assert wait_until(lambda: wb.status().replay_state == "paused", timeout=60)
        assert main([*home, "train", "--day", "2024-03-04"]) == 2
        assert f"a workbench runs under {kafka_settings.home}, and its scoring app trains" in capsys.readouterr().err
    finally:
        wb.stop()


def test_status_with_the_broker_silent_says_so_and_what_runs_not_to_run_status(tmp_path: Path) -> None:
    """With the broker just killed, `workbench status` printed librdkafka's raw ERROR lines and then
    "Is the workbench running (`workbench status`)?" to the user of `workbench status`."""
    from workbench.runtime._cli import _broker_silent
    from workbench.runtime.supervisor import run_dir, write_json_atomic

    settings = Settings(home=tmp_path / "home")
    run_dir(settings.home).mkdir(parents=True)
    write_json_atomic(run_dir(settings.home) / "state.json", {"processes": {
        "scoring": {"state": "running"}, "replay": {"state": "backoff"}}})
    line = _broker_silent(Workbench(settings))
    assert line == (f"workbench: the workbench under {settings.home} runs (processes: replay backoff, scoring "
                    f"running), but its Kafka broker at {settings.bootstrap_servers} does not answer (the "
                    "supervisor restarts the managed broker when it dies: try again in a few seconds)")
    assert "`workbench status`" not in line
    # A broker that dies at each start (its disk full): "try again in a few seconds" never came true
    write_json_atomic(run_dir(settings.home) / "state.json", {
        "processes": {"scoring": {"state": "running"}},
        "broker": {"restart_failures": 12, "error": "Kafka exited during start-up with code 1",
                   "data_dir": "/x/kafka/data", "free_bytes": 0}})
    line = _broker_silent(Workbench(settings))
    assert line.endswith("does not answer: the supervisor failed to start it again 12 time(s), last: Kafka exited "
                         "during start-up with code 1; its data folder /x/kafka/data has 0 B free (see "
                         "logs/kafka.log in the home; it retries)"), line


def test_stop_on_a_home_stops_the_workbench_a_killed_demo_left_in_it(
        kafka_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A demo runs under <home>/demo: killed, it left a whole workbench that `stop` on the home did not see."""
    from workbench.cli import main
    from workbench.runtime._demo import DEMO_MARKER

    home = tmp_path / "home"
    demo = kafka_settings.with_overrides(home=home / "demo")
    (home / "demo").mkdir(parents=True)
    (home / "demo" / DEMO_MARKER).write_text("demo")
    Workbench.start(settings=demo, apps=("anomaly-sink",))  # as the killed demo left it
    assert home_processes(demo.home)
    assert main(["--home", str(home), "stop"]) == 0
    assert f"stopped the workbench a `workbench demo` left running under {home / 'demo'}" in capsys.readouterr().out
    assert wait_until(lambda: not home_processes(demo.home), timeout=30)


def test_wait_stops_waiting_for_a_drain_that_cannot_come_and_says_why() -> None:
    """A first day too small to train held the scoring app's partitions for good, and ``wait()`` blocked
    a notebook's kernel until it was interrupted (11 minutes); a paused replay holds it as long."""
    from workbench.replay import ReplayStatus
    from workbench.runtime._status import WorkbenchStatus
    from workbench.runtime._workbench import PAUSED_STALL_S, STALL_S, _Stall

    now = [0.0]
    stall = _Stall(clock=lambda: now[0])

    def status(state: str, next_row: int, lag: int, events: int, paused: tuple[int, ...] = (),
               training: str = "") -> WorkbenchStatus:
        replay = ReplayStatus(replay_id="default", file="log.parquet", state=state, speedup=1200.0, rows_sent=next_row,
                              rows_total=1000, next_row=next_row, event_time=None, first_event_time=None,
                              last_event_time=None, rate_now=0.0, rate_avg=0.0, eta_seconds=None)
        scoring = {"counters": {"events": events},
                   "info": {"paused_partitions": list(paused), "waiting_for_model": ["2024-03-05"] if paused else [],
                            "training": {"days": {"2024-03-04": {"status": "failed"},
                                                  **({training: {"status": "running", "attempts": 1}}
                                                     if training else {})}}}}
        return WorkbenchStatus(replay=replay, processes={}, apps={"scoring": scoring}, lag={"scoring": lag},
                               model_version=None, model_versions=0, anomalies=0, late_events=0, dead_letters=0)

    # a running replay is never a stall, however long nothing moves
    assert stall.check(status("running", 500, 9_499, 100)) == ""
    now[0] += 10 * STALL_S
    assert stall.check(status("running", 500, 9_499, 100)) == ""
    # finished, held partitions, nothing moves: waited for, then named
    assert stall.check(status("finished", 1000, 9_499, 100, (0, 1))) == ""
    now[0] += STALL_S - 1
    assert stall.check(status("finished", 1000, 9_499, 100, (0, 1))) == ""
    now[0] += 2
    why = stall.check(status("finished", 1000, 9_499, 100, (0, 1)))
    assert "scoring 9,499" in why and "partitions 0, 1" in why and "2024-03-05" in why and "2024-03-04" in why
    # progress (an event processed) starts the clock again, and a training that runs or waits holds it
    assert stall.check(status("finished", 1000, 9_000, 600, (0, 1))) == ""
    now[0] += STALL_S + 1
    assert stall.check(status("finished", 1000, 9_000, 600, (0, 1), "2024-03-05")) == ""
    now[0] += 3 * STALL_S  # a long training
    assert stall.check(status("finished", 1000, 9_000, 600, (0, 1), "2024-03-05")) == ""
    # a paused replay whose rows are all consumed: named after a few seconds
    assert stall.check(status("paused", 700, 0, 700)) == ""
    now[0] += PAUSED_STALL_S
    assert "paused" in stall.check(status("paused", 700, 0, 700))


def test_wait_waits_for_the_replay_to_take_this_objects_last_command_and_not_for_a_refused_one() -> None:
    """`reset(); wait()` returned at once on the old pass's finished status; a refused seek must not hold wait()."""
    from types import SimpleNamespace

    from workbench.replay.exceptions import ReplayError

    class Controller:
        def reset(self) -> None:
            pass

        def seek(self, _when: str) -> None:
            raise ReplayError("seek not sent: after the log's last event")

    wb = Workbench.__new__(Workbench)
    wb._controller = Controller()
    wb._sent_command_at = None

    def status(applied: float | None) -> Any:
        return SimpleNamespace(replay=SimpleNamespace(applied_command_at=applied))

    with pytest.raises(ReplayError):
        wb.seek("2099-01-01")
    assert wb._sent_command_at is None and not wb._before_last_command(status(None))
    wb.reset()
    sent = wb._sent_command_at
    assert sent is not None
    assert wb._before_last_command(status(None)) and wb._before_last_command(status(sent - 1.0))
    assert not wb._before_last_command(status(sent + 0.001))  # the replay took it (its issued_at is later)


def test_no_workbench_here_names_a_demo_running_under_the_home(tmp_path: Path) -> None:
    """`workbench status` said only "No workbench runs" while a killed demo's workbench ran under <home>/demo,
    which `workbench stop` finds (tester B, 33rd session)."""
    from workbench._fs import process_start_time
    from workbench.runtime.supervisor import run_dir, write_json_atomic

    settings = Settings(home=tmp_path / "home")
    with pytest.raises(WorkbenchStateError) as plain:
        Workbench.attach(settings)
    assert "workbench demo` runs under" not in str(plain.value)
    demo = settings.home / "demo"
    run_dir(demo).mkdir(parents=True)
    # this test's process stands in for the demo's supervisor: alive, with its own start time
    write_json_atomic(run_dir(demo) / "state.json", {"state": "running", "supervisor_pid": os.getpid(),
                                                     "supervisor_started": process_start_time(os.getpid())})
    with pytest.raises(WorkbenchStateError, match=r"A `workbench demo` runs under .*/home/demo \(its own home\): "
                                                  r"`workbench --home .*/home/demo status` shows it"):
        Workbench.attach(settings)


def test_the_wait_bar_ends_on_the_status_wait_returns() -> None:
    """A browser tester (40th session): the bar read 'anomalies 493' above a returned status of 511, or 'waiting for
    the judging again' after wait() had returned."""
    import io
    from types import SimpleNamespace

    from tqdm import tqdm

    from workbench.runtime._workbench import _show_progress

    out = io.StringIO()
    bar = tqdm(total=100, file=out)
    replay = SimpleNamespace(fraction=1.0)
    status = SimpleNamespace(replay=replay, event_time=dt.datetime(2024, 3, 6, 23, 59), model_version="v0002",
                             anomalies=511)
    bar.set_postfix_str("drained; waiting for the judging again of 2024-03-06")
    _show_progress(bar, status, "settled")  # type: ignore[arg-type]
    bar.close()
    assert bar.postfix == "replayed 100% to 2024-03-06 23:59 UTC, model v0002, anomalies 511; settled"
    assert out.getvalue().rstrip().endswith("anomalies 511; settled]")


def test_steering_from_code_waits_for_a_replay_that_takes_commands_a_finished_one_too() -> None:
    """A browser tester (40th session): notebook 01's steering example refused a finished replay ('finished after
    up to 60 s', in 2 s), which the panel and the README say still takes a seek or a reset."""
    from types import SimpleNamespace

    from workbench.exceptions import ConfigurationError
    from workbench.reports.notebook import wait_for_replay

    def workbench(*states: str) -> SimpleNamespace:
        snapshots = iter(SimpleNamespace(replay=SimpleNamespace(state=s), replay_is_stale=False) for s in states)
        return SimpleNamespace(status=lambda: next(snapshots))

    assert wait_for_replay(workbench("finished"), poll=0.01).state == "finished"
    assert wait_for_replay(workbench("starting", "paused"), poll=0.01).state == "paused"
    with pytest.raises(ConfigurationError, match=r"state: stopped, after 0 s\); nothing was sent. Start it again"):
        wait_for_replay(workbench("stopped"), poll=0.01)
