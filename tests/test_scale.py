"""N instances of each app on one WORKBENCH_HOME get exactly the stores of one instance (issue 16, item 6).

One labelled 3-day log (12 Redshift instances, 4 partitions) goes through the whole workbench twice,
on the real broker, each time into a fresh home: once with one process per app, once with two
(``Workbench.start(app_instances=2)``: two scoring, two analytics, two anomaly-sink processes in
one consumer group per app, Kafka spreading the partitions). The second run must end with the same
shards (every event once, same scores and versions), the same ``window_stats`` rows, the same
lakehouse anomalies and flagged windows (no duplicate) and the same model versions (same training inputs), trained once
per day by the one elected trainer (elected through the broker in the two-process run).

The ``scale_home`` fixture makes the settings of one run; a store backend that every machine can
write (PostgreSQL catalog and window_stats) parametrises it to run the same comparison there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.conftest import isolated_settings
from workbench.broker import ensure_topics
from workbench.config import Settings
from workbench.data.generator import generate
from workbench.ml.registry import ModelRegistry
from workbench.ml.supervisor import STATE_FILE
from workbench.pipeline import consumer_group, read_app_statuses
from workbench.replay import Replay
from workbench.runtime import Workbench
from workbench.runtime._status import consumer_lag
from workbench.store.lakehouse import AnomalyLakehouse
from workbench.store.shards import read_shards
from workbench.store.window_stats import WindowStatsStore

APPS = ("scoring", "analytics", "anomaly-sink")
ROWS_PER_DAY = 5_000


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scale-log") / "log.parquet"
    generate(path, days=3, instances=12, seed=5, rows_per_day=ROWS_PER_DAY)
    return path


@pytest.fixture
def scale_home(kafka_base: Settings, tmp_path: Path) -> Callable[[str], Settings]:
    """Settings of one run: a fresh home and topics with 4 partitions (the store backend goes here)."""
    return lambda name: isolated_settings(kafka_base, tmp_path / name, partitions=4)


def _until(check: Callable[[], bool], *, timeout: float, what: str,
           explain: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{explain()}"
        time.sleep(0.5)


def _explain(settings: Settings, wb: Workbench) -> str:
    """A stuck run's state for the failure: the status, each group's members and every log's tail."""
    from confluent_kafka.admin import AdminClient

    parts = [str(wb.status())]
    admin = AdminClient(settings.kafka_client_config())
    for app in APPS:
        group = consumer_group(settings, app)
        try:
            desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
            members = [(m.client_id, [tp.partition for tp in (m.assignment.topic_partitions if m.assignment else [])])
                       for m in desc.members]
            parts.append(f"{group}: {desc.state} {members}")
        except Exception as exc:  # a diagnostic: say what failed and go on
            parts.append(f"{group}: describe failed: {exc}")
    for path in sorted(settings.logs_dir.glob("**/*.log")):
        parts.append(f"--- {path.relative_to(settings.home)}\n{path.read_text(errors='replace')[-2500:]}")
    return "\n".join(parts)


def _group_settled(settings: Settings, group: str, members: int) -> bool:
    """Every member of ``group`` holds partitions and the group is stable."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.kafka_client_config())
    try:
        desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
    except Exception:
        return False
    holding = [m for m in desc.members if m.assignment and m.assignment.topic_partitions]
    return desc.state == ConsumerGroupState.STABLE and len(desc.members) == members == len(holding)


def _settled(settings: Settings, rows: int) -> bool:
    """Every event consumed by every app, every finished day trained, every event scored."""
    from workbench.pipeline._instance import instance_dirs
    from workbench.pipeline.scoring import UNSCORED_FILE

    topics = {"scoring": settings.topic_query_events, "analytics": settings.topic_query_events,
              "anomaly-sink": settings.topic_anomalies}
    if any(consumer_lag(settings, consumer_group(settings, app), topic) != 0 for app, topic in topics.items()):
        return False
    state_file = settings.state_dir / STATE_FILE
    days = json.loads(state_file.read_text())["days"] if state_file.exists() else {}
    if len(days) < 2 or any(e["status"] != "done" for e in days.values()):
        return False
    for folder in instance_dirs(settings.state_dir, "scoring").values():
        path = folder / UNSCORED_FILE
        if path.exists() and json.loads(path.read_text()).get("days"):
            return False
    shards = read_shards(settings.shards_dir, columns=["model_version"])
    return shards.num_rows == rows and shards.column("model_version").null_count == 0


def _run(settings: Settings, log: Path, instances: int) -> dict:
    ensure_topics(settings)
    rows = pq.read_metadata(log).num_rows
    wb = Workbench.start(settings=settings, app_instances=instances)
    try:
        # The groups settle first (N members, each holding partitions), then the log goes in at once.
        for app in APPS:
            _until(lambda app=app: _group_settled(settings, consumer_group(settings, app), instances), timeout=240,
                   what=f"{instances} members of {app}", explain=lambda: _explain(settings, wb))
        Replay(log, settings=settings, speedup=0, pack=1).run()
        _until(lambda: _settled(settings, rows), timeout=300, what="the pipeline to settle",
               explain=lambda: _explain(settings, wb))
        time.sleep(2)  # the last checkpoint's anomalies reach the sink after the events' lag is 0
        _until(lambda: consumer_lag(settings, consumer_group(settings, "anomaly-sink"), settings.topic_anomalies) == 0,
               timeout=60, what="the anomaly sink to drain")
        statuses = {app: read_app_statuses(settings, app) for app in APPS}  # while running: one trainer
        status = wb.status()
        assert status.running_instances == dict.fromkeys(APPS, instances), status.running_instances
        trainer = [s["pid"] for s in statuses["scoring"].values() if s["info"].get("trainer")]
        assert status.trainer_pid is not None and [status.trainer_pid] == trainer
        assert status.events_processed["scoring"] >= rows
    finally:
        wb.stop()  # a clean stop: analytics writes its open windows, every app commits
    return statuses


def _stores(settings: Settings) -> dict:
    shards = read_shards(settings.shards_dir, dedupe=False)
    score = pc.round(shards.column("score"), 6).to_pylist()
    rows = list(zip(shards.column("instance_id").to_pylist(), shards.column("query_id").to_pylist(),
                    shards.column("model_version").to_pylist(), score, shards.column("is_anomaly").to_pylist(),
                    strict=True))
    with WindowStatsStore.from_settings(settings, read_only=True) as store:
        windows = store.read().drop_columns(["updated_at"]).to_pylist()
    with AnomalyLakehouse.from_settings(settings, read_only=True) as lake:
        lake_rows = lake.read().select(["instance_id", "query_id", "model_version", "score"]).to_pylist()
        flagged_windows = lake.read_window_anomalies().select(["instance_id", "window_start", "signal"]).to_pylist()
    registry = ModelRegistry(settings.models_dir)
    versions = {v: registry.info(v).get("inputs_sha256") for v in registry.versions()}
    training = json.loads((settings.state_dir / STATE_FILE).read_text())["days"]
    return {
        "shard_rows": rows,
        "windows": sorted((tuple(sorted(w.items())) for w in windows), key=repr),
        "anomalies": [(r["instance_id"], r["query_id"], r["model_version"], round(r["score"], 6)) for r in lake_rows],
        "window_anomalies": [(r["instance_id"], r["window_start"], r["signal"]) for r in flagged_windows],
        "versions": versions,
        "training_attempts": {day: entry["attempts"] for day, entry in training.items()},
    }


def test_two_instances_per_app_on_one_home_give_the_stores_of_one(scale_home: Callable[[str], Settings],
                                                                 log: Path) -> None:
    one = scale_home("one")
    # the two-process run elects its trainer through the broker (what several machines use), the
    # one-process run takes the file lock: both must train the same days once
    two = scale_home("two").with_overrides(trainer_election="broker")
    # both runs at once (separate homes and topics): most of a run is waiting for processes to start
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = [pool.submit(_run, one, log, 1), pool.submit(_run, two, log, 2)]
        statuses = [run.result() for run in runs][1]
    a, b = _stores(one), _stores(two)

    # every instance ran, in its own slot, and each app's instances shared the partitions
    for app in APPS:
        assert sorted(statuses[app]) == [0, 1], (app, statuses[app].keys())
    scoring_events = [s["counters"]["events"] for s in statuses["scoring"].values()]
    assert sum(scoring_events) >= 3 * ROWS_PER_DAY * 0.9 and min(scoring_events) > 0, scoring_events
    assert sum(s["info"].get("trainer", False) for s in statuses["scoring"].values()) == 1

    # shards: every event once, the same scores and versions
    assert len(a["shard_rows"]) == len(set(a["shard_rows"])) > 3 * ROWS_PER_DAY * 0.9
    assert len(b["shard_rows"]) == len(set(b["shard_rows"]))
    assert set(b["shard_rows"]) == set(a["shard_rows"])
    # model versions: one per finished day a later day needs, from the same inputs, trained once
    assert len(a["versions"]) == 2 and b["versions"] == a["versions"]
    assert b["training_attempts"] == a["training_attempts"] and set(b["training_attempts"].values()) == {1}
    assert {v for _, _, v, _, _ in b["shard_rows"]} == set(a["versions"])
    # window_stats: the same rows
    assert len(a["windows"]) > 100 and b["windows"] == a["windows"]
    # lakehouse anomalies: the same rows, none twice
    assert a["anomalies"] and len(b["anomalies"]) == len(set(b["anomalies"]))
    assert sorted(b["anomalies"]) == sorted(a["anomalies"])
    # collective window anomalies (one analytics process runs the step over every instance's windows)
    assert len(b["window_anomalies"]) == len(set(b["window_anomalies"]))
    assert sorted(b["window_anomalies"]) == sorted(a["window_anomalies"])


# --- the pieces, without a broker --------------------------------------------------------------------
DAY_US = 86_400_000_000


def test_cluster_watermark_waits_for_every_partition_that_is_not_idle_on_a_live_instance(tmp_path: Path) -> None:
    from workbench.store.shards import cluster_watermark, record_progress, remove_heartbeat, write_heartbeat

    shards = tmp_path / "shards"
    assert cluster_watermark(shards) == (None, None)
    now = 1_000.0
    record_progress(shards, 0, first_us=5, max_us=3 * DAY_US)
    record_progress(shards, 1, first_us=7, max_us=1 * DAY_US)
    record_progress(shards, 1, first_us=9, max_us=DAY_US // 2)  # progress only widens
    write_heartbeat(shards, 0, assigned=[0], idle=[], now=now)
    write_heartbeat(shards, 1, assigned=[1, 2], idle=[], now=now)
    # partition 2 is assigned and busy but has stored nothing yet: no watermark
    assert cluster_watermark(shards, now=now) == (5, None)
    write_heartbeat(shards, 1, assigned=[1, 2], idle=[2], now=now)
    assert cluster_watermark(shards, now=now) == (5, DAY_US)  # the slowest partition holds it
    write_heartbeat(shards, 1, assigned=[1, 2], idle=[1, 2], now=now)
    assert cluster_watermark(shards, now=now) == (5, 3 * DAY_US)  # caught up: no longer holds it back
    # the instance dies (stale heartbeat) or stops: its partitions hold the watermark at their progress
    assert cluster_watermark(shards, now=now + 60, alive_s=15) == (5, DAY_US)
    remove_heartbeat(shards, 1)
    assert cluster_watermark(shards, now=now) == (5, DAY_US)
    # a partition idle for an instance that does not hold it (revoked) does not count as caught up
    write_heartbeat(shards, 0, assigned=[0], idle=[1], now=now)
    assert cluster_watermark(shards, now=now) == (5, DAY_US)


def test_the_log_ended_once_every_partition_with_events_delivered_its_end_of_log_marker(tmp_path: Path) -> None:
    """The last day of a log is complete when each partition's marker came after its last event; no
    later event settles it. A partition with no event holds nothing back; a newer event undoes it."""
    from workbench.store.shards import cluster_clock, record_progress

    shards = tmp_path / "shards"
    last = 3 * DAY_US - 1
    assert cluster_clock(shards).ended_us is None
    record_progress(shards, 0, first_us=5, max_us=last)
    record_progress(shards, 1, first_us=7, max_us=last - 60_000_000)
    record_progress(shards, 2, end_us=last)  # no event stored from partition 2: not noted
    assert cluster_clock(shards).ended_us is None
    record_progress(shards, 0, end_us=last)
    assert cluster_clock(shards).ended_us is None  # partition 1 has not said so yet
    record_progress(shards, 1, end_us=last)
    clock = cluster_clock(shards)
    assert clock.ended_us == last and clock.first_us == 5
    record_progress(shards, 1, first_us=7, max_us=last - 1)  # a resent older row: still ended
    assert cluster_clock(shards).ended_us == last
    record_progress(shards, 1, first_us=7, max_us=last + DAY_US)  # a later log begins: not ended
    assert cluster_clock(shards).ended_us is None


def test_one_trainer_lease_per_models_folder(tmp_path: Path) -> None:
    from workbench.ml.registry import TrainerLease

    first, second = TrainerLease(tmp_path), TrainerLease(tmp_path)
    assert TrainerLease.holder(tmp_path) is None
    assert first.try_acquire() and first.held
    assert not second.try_acquire() and not second.held
    assert TrainerLease.holder(tmp_path) == os.getpid()
    first.release()  # the trainer stops (or dies: the kernel drops the lock): the next one takes over
    assert second.try_acquire()
    second.release()


def test_each_process_claims_its_own_instance_slot(tmp_path: Path) -> None:
    from workbench.pipeline._instance import claim_instance, instance_dirs, release_instance

    code = ("import sys, time; from workbench.pipeline._instance import claim_instance; "
            "print(claim_instance(sys.argv[1], 'scoring'), flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "0"
        assert claim_instance(tmp_path, "scoring") == 1  # slot 0 is held by the other process
        assert claim_instance(tmp_path, "scoring") == 1  # the same slot for the life of this process
        assert claim_instance(tmp_path, "analytics") == 0  # slots are per app
    finally:
        holder.kill()
        holder.wait()
    release_instance(tmp_path, "scoring")
    assert claim_instance(tmp_path, "scoring") == 0  # the killed process's slot is free again
    release_instance(tmp_path, "scoring")
    release_instance(tmp_path, "analytics")
    (tmp_path / "scoring.1").mkdir()
    (tmp_path / "scoring").mkdir()
    assert list(instance_dirs(tmp_path, "scoring")) == [0, 1]


def test_a_new_scoring_instance_adopts_the_unscored_days_of_a_slot_nobody_holds(tmp_path: Path) -> None:
    from workbench.pipeline._instance import claim_instance, release_instance
    from workbench.pipeline.scoring import UNSCORED_FILE, UnscoredDays
    from workbench.pipeline.scoring._maintenance import adopt_unscored_days

    settings = Settings(home=tmp_path)
    gone = UnscoredDays(settings.state_dir / "scoring.2" / UNSCORED_FILE)  # a third instance, scaled away
    gone.add({"2024-03-05", "2024-03-06"})
    code = ("import sys, time; from workbench.pipeline._instance import claim_instance; "
            "print(claim_instance(sys.argv[1], 'scoring'), flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(settings.state_dir)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "0"
        busy = UnscoredDays(settings.state_dir / "scoring" / UNSCORED_FILE)  # slot 0: a live instance's
        busy.add({"2024-03-07"})
        slot = claim_instance(settings.state_dir, "scoring")
        mine = UnscoredDays(settings.state_dir / f"scoring.{slot}" / UNSCORED_FILE)
        assert adopt_unscored_days(settings, mine) == {"2024-03-05", "2024-03-06"}
        assert mine.snapshot() == {"2024-03-05", "2024-03-06"}
        assert UnscoredDays(settings.state_dir / "scoring.2" / UNSCORED_FILE).snapshot() == set()
        assert UnscoredDays(settings.state_dir / "scoring" / UNSCORED_FILE).snapshot() == {"2024-03-07"}
    finally:
        holder.kill()
        holder.wait()
        release_instance(settings.state_dir, "scoring")


def test_writers_that_open_a_fresh_lakehouse_at_once_all_get_it(tmp_path: Path) -> None:
    """N sink and analytics processes start together on a new home: each creates the tables if needed."""
    code = ("import sys; from workbench.store.lakehouse import AnomalyLakehouse; "
            "lake = AnomalyLakehouse(sys.argv[1]).open(); print(lake.count()); lake.close()")
    writers = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "lake")], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [(w.wait(timeout=120), *w.communicate()) for w in writers]
    # (the last line: DuckDB may draw a progress bar before it when the machine is slow)
    assert [(rc, out.strip().splitlines()[-1:]) for rc, out, _ in results] == [(0, ["0"])] * 4, \
        [err[-500:] for _, _, err in results]


def test_a_home_lease_has_one_holder_and_passes_on_when_it_is_released_or_its_holder_dies(tmp_path: Path) -> None:
    from workbench.pipeline._instance import HomeLease

    first, second = HomeLease(tmp_path, "collective"), HomeLease(tmp_path, "collective")
    assert first.try_acquire() and first.try_acquire()  # held: asking again keeps it
    assert not second.try_acquire() and not second.held
    first.release()
    assert second.try_acquire() and not first.try_acquire()
    second.release()
    # a holder killed with -9 never releases: the kernel drops its lock
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from workbench.pipeline._instance import HomeLease; "
        f"assert HomeLease(Path({str(tmp_path)!r}), 'collective').try_acquire(); print('held', flush=True); "
        "time.sleep(60)")], stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        assert not first.try_acquire()
    finally:
        holder.kill()
        holder.wait(10)
    assert first.try_acquire()
    first.release()


def test_one_analytics_process_of_a_home_runs_the_collective_step(tmp_path: Path) -> None:
    from workbench.pipeline.analytics import AnalyticsApp

    settings = Settings(home=tmp_path)
    apps = [AnalyticsApp(settings), AnalyticsApp(settings)]
    passes: list[int] = []
    for k, app in enumerate(apps):  # every instance's step reads the same store: one pass covers all
        app.collective.run = lambda k=k: passes.append(k) or 0  # type: ignore[method-assign]
    for _ in range(3):
        for app in apps:
            app._collective_step()
    assert passes == [0, 0, 0]
    apps[0]._cleanup()  # the runner stops (never built: no last pass): the role is free
    apps[1]._collective_step()
    assert passes == [0, 0, 0, 1]
    apps[1]._cleanup()
