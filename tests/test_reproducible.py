"""Same log, same results at any replay speed (issue 15), on the real broker, apps and trainings.

One labelled 3-day log is replayed twice into fresh homes: once unpaced with the scoring app
killed with SIGKILL (mid-stream or after it consumed everything) and restarted, once paced (the
replay runs while the app scores).
Both must end with the same shard contents and the same lakehouse anomalies, down to
``(instance_id, query_id, model_version, round(score, 6))``, and with one model version per
finished day (the event-time selection of :mod:`workbench.ml.selection`).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.conftest import isolated_settings
from tests.helpers import kill_scoring_child
from workbench.broker import ensure_topics
from workbench.config import Settings
from workbench.data.generator import generate
from workbench.ml.registry import ModelRegistry
from workbench.pipeline.anomaly_sink import run_anomaly_sink
from workbench.pipeline.scoring import run_scoring
from workbench.replay import Replay
from workbench.store.lakehouse import AnomalyLakehouse
from workbench.store.shards import read_shards

D1 = dt.date(2024, 3, 4)  # the generator's default first day


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("repro-log") / "log.parquet"
    generate(path, days=3, instances=4, seed=21, rows_per_day=6_000)
    return path


def _outcome(settings: Settings) -> tuple[set[tuple], set[tuple], list[str]]:
    shards = read_shards(settings.shards_dir)
    score = pc.round(shards.column("score"), 6).to_pylist()
    rows = zip(shards.column("instance_id").to_pylist(), shards.column("query_id").to_pylist(),
               shards.column("model_version").to_pylist(), score, shards.column("is_anomaly").to_pylist(),
               strict=True)
    with AnomalyLakehouse.from_settings(settings, read_only=True) as lake:
        lake_rows = lake.read().select(["instance_id", "query_id", "model_version", "score"]).to_pylist()
    anomalies = {(r["instance_id"], r["query_id"], r["model_version"], round(r["score"], 6)) for r in lake_rows}
    return set(rows), anomalies, ModelRegistry(settings.models_dir).versions()


def _unpaced_with_kill(settings: Settings, log: Path) -> dict:
    # The whole log is in Kafka before the scoring child starts, so the kill can land anywhere: mid-stream,
    # or after the child consumed everything (then the restarted app resumes training from the shards).
    Replay(log, settings=settings, speedup=0, pack=1).run()
    kill_scoring_child(settings, "--batch-rows", "1024", "--batch-seconds", "0.3", "--timeout", "300", events=5000)
    # idle_exit > session.timeout.ms: the killed member must time out before partitions are reassigned
    return run_scoring(settings, idle_exit=9, timeout=400, batch_rows=4096, batch_seconds=0.5,
                       training_backoff_s=1)


def _paced(settings: Settings, log: Path) -> dict:
    replay = threading.Thread(target=lambda: Replay(log, settings=settings, speedup=20_000, pack=1).run(),
                              daemon=True)
    replay.start()
    result = run_scoring(settings, idle_exit=9, timeout=400, batch_rows=2048, batch_seconds=0.5,
                         training_backoff_s=1)
    replay.join(timeout=60)
    return result


def test_same_log_same_results_unpaced_with_a_kill_and_paced(kafka_base: Settings, tmp_path: Path,
                                                              log: Path) -> None:
    outcomes, results = [], []
    for name, run in (("unpaced", _unpaced_with_kill), ("paced", _paced)):
        settings = isolated_settings(kafka_base, tmp_path / name)
        ensure_topics(settings)
        results.append(run(settings, log))
        run_anomaly_sink(settings, idle_exit=3, timeout=120)
        outcomes.append(_outcome(settings))
    (shards_a, lake_a, versions_a), (shards_b, lake_b, versions_b) = outcomes
    # one version per finished day that a later day needs (days 1 and 2 of 3)
    assert versions_a == versions_b == [f"v0001-{D1}", f"v0002-{D1 + dt.timedelta(days=1)}"]
    assert {v for _, _, v, _, _ in shards_a} == set(versions_a)  # every version scored its day
    assert len(shards_a) == len(shards_b) > 17_000
    assert shards_a == shards_b
    assert lake_a and lake_a == lake_b
    assert {v for _, _, v, _ in lake_a} == set(versions_a)
    # the restarted unpaced app may find everything already scored by the killed child (then it only
    # resumes training); the paced run must score what the replay sends while it runs
    assert results[1]["events"] >= 1
    # whether these runs pause a partition depends on how fast training is (the killed child's
    # training may finish on its own): the pause itself is tested below, where it must happen


def test_partitions_ahead_of_training_pause_and_nothing_is_lost(kafka_base: Settings, tmp_path: Path,
                                                                log: Path) -> None:
    """The whole log is in Kafka before scoring starts: every partition reaches day 3 long before
    day 1's version exists (training starts only after the warm-up), so it must pause, resume once
    the version is there, and every event ends up scored by its day's version."""
    settings = isolated_settings(kafka_base, tmp_path / "ahead")
    ensure_topics(settings)
    Replay(log, settings=settings, speedup=0, pack=1).run()
    result = run_scoring(settings, idle_exit=9, timeout=400, batch_rows=4096, batch_seconds=0.5,
                         training_backoff_s=1)
    assert result["partition_pauses"] > 0, result.counters
    assert result.info["paused_partitions"] == [] and result.info["waiting_for_model"] == []
    shards = read_shards(settings.shards_dir)
    assert shards.num_rows == result["events"] > 17_000
    assert shards.column("model_version").null_count == 0
    assert result["scored"] + result["rescored"] == result["events"]
    assert ModelRegistry(settings.models_dir).versions() == [f"v0001-{D1}", f"v0002-{D1 + dt.timedelta(days=1)}"]


def test_restart_after_everything_was_consumed_trains_and_scores_without_new_input(
        kafka_base: Settings, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The late-restart gap: a scoring app killed after it consumed (and committed) every event, but
    before it scheduled the training those events finish, is restarted with no further input. It must
    schedule exactly the training the uninterrupted run does (from the shards: the watermark was only
    in memory), score every waiting row with its event-time version, and end with the same shards and
    lakehouse as the uninterrupted run."""
    log = tmp_path_factory.mktemp("late-log") / "log.parquet"
    generate(log, days=2, instances=4, seed=22, rows_per_day=5_000)  # days 1-2 are stored without any model
    total = pq.read_metadata(log).num_rows
    outcomes = []
    for name in ("killed", "uninterrupted"):
        settings = isolated_settings(kafka_base, tmp_path / name)
        ensure_topics(settings)
        Replay(log, settings=settings, speedup=0, pack=1).run()
        if name == "killed":
            # --batch-seconds 15: a 60 s warm-up (4 x batch_seconds) before the first training is scheduled,
            # far longer than consuming this log takes: the kill lands after everything was consumed and
            # committed but before any training was scheduled
            kill_scoring_child(settings, "--batch-rows", "1024", "--batch-seconds", "15", "--timeout", "300",
                               events=total)
            state = json.loads((settings.state_dir / "ml_training.json").read_text())
            assert state["first_day"] == D1.isoformat() and state["days"] == {}, state
            stored = read_shards(settings.shards_dir)
            assert stored.num_rows == total and stored.column("model_version").null_count == total
            assert ModelRegistry(settings.models_dir).versions() == []
        result = run_scoring(settings, idle_exit=9, timeout=400, batch_rows=1024, batch_seconds=0.5,
                             training_backoff_s=1)
        if name == "killed":
            assert result["events"] == 0  # nothing new arrived: it resumed from durable state only
            assert result["rescored"] == total and result["trainings_scheduled"] == 1
        run_anomaly_sink(settings, idle_exit=3, timeout=120)
        outcomes.append(_outcome(settings))
    (shards_a, lake_a, versions_a), (shards_b, lake_b, versions_b) = outcomes
    assert versions_a == versions_b == [f"v0001-{D1}"]  # day 2 is not finished: the log ends in it
    assert len(shards_a) == total and {v for _, _, v, _, _ in shards_a} == {f"v0001-{D1}"}
    assert shards_a == shards_b
    assert lake_a and lake_a == lake_b
