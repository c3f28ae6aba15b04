"""The analytics window state: lateness and closing by event time, and the exactly-once rules
(offsets committed with the windows, skip below the stored offset, stale state detected)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka.admin import AdminClient
from quixstreams.sinks import SinkBackpressureError

from tests.helpers import make_log
from tests.test_pipeline_analytics import stored_windows
from workbench.broker import ensure_topics
from workbench.config import Settings
from workbench.data import codec
from workbench.pipeline import run_analytics
from workbench.pipeline._window_state import WindowState
from workbench.replay import Replay
from workbench.store.window_stats import WindowStatsStore

W = 600_000


@pytest.fixture
def template(tmp_path: Path) -> dict:
    """One valid decoded row to copy."""
    log_batch = pq.read_table(make_log(tmp_path / "l.parquet", rows=5)).to_batches()[0]
    return codec.decode_row(codec.encode_json(log_batch.slice(0, 1))[0])


def _rows(template: dict, times_ms: list[int], instance: int = 1) -> pa.RecordBatch:
    rows = [dict(template, instance_id=instance, query_id=i, arrival_us=t * 1000) for i, t in enumerate(times_ms)]
    return codec.rows_to_batch(rows)


def _state(path: Path, strategy: str = "partition", group: str = "g") -> WindowState:
    state = WindowState(WindowStatsStore(path), group, window_ms=W, grace_ms=60_000,
                        closing_strategy=strategy)  # type: ignore[arg-type]
    state.open()
    return state


def _count(state: WindowState, template: dict, times: list[int], instance: int = 1, first_offset: int = 0) -> int:
    p = state.partition("t", 0)
    offsets = np.arange(first_offset, first_offset + len(times), dtype=np.int64)
    (prep,) = state.prepare([p], _rows(template, times, instance), np.zeros(len(times), np.int64), offsets)
    closed = state.apply(prep)
    state.advance(p, int(offsets[-1]))
    return closed


def test_rows_after_their_window_closed_are_late_and_counted_per_message(tmp_path: Path, template: dict) -> None:
    state = _state(tmp_path / "s.sqlite")
    t0 = 1_709_510_400_000  # a window start
    # window 0 gets 2 rows; a row at t0 + W + grace closes it; then a row of window 0 is late
    closed = _count(state, template, [t0 + 1, t0 + 2, t0 + W + 60_000, t0 + 3])
    assert closed == 1
    p = state.partition("t", 0)
    assert p.late == {(3, 1, t0): 1}
    assert p.closed[0]["total_queries"] == 2
    assert state.flush().final_rows == 1
    with WindowStatsStore(tmp_path / "s.sqlite", read_only=True) as store:
        assert sum(r["late_count"] for r in store.late_events().to_pylist()) == 1
        rows = {r["window_start"].timestamp() * 1000: r["total_queries"] for r in store.read().to_pylist()}
    assert rows == {t0: 2, t0 + W: 1}  # the open window is there as a provisional row


def test_key_strategy_closes_by_the_instance_time_only(tmp_path: Path, template: dict) -> None:
    state = _state(tmp_path / "s.sqlite", "key")
    t0 = 1_709_510_400_000
    _count(state, template, [t0 + 1], instance=1)
    assert _count(state, template, [t0 + 2 * W], instance=2, first_offset=1) == 0  # instance 1's window stays open
    assert _count(state, template, [t0 + 2 * W], instance=1, first_offset=2) == 1


def test_state_survives_a_restart_and_a_stale_state_is_refused(tmp_path: Path, template: dict) -> None:
    path = tmp_path / "s.sqlite"
    t0 = 1_709_510_400_000
    a = _state(path)
    _count(a, template, [t0 + 1, t0 + 2])
    a.flush()
    b = _state(path)  # another process (or a restart) loads what a committed
    pb = b.partition("t", 0)
    assert pb.next_offset == 2 and pb.open[(1, t0)]["total_queries"] == 2
    _count(b, template, [t0 + 3], first_offset=2)
    b.flush()
    # a still holds the partition as it left it: its next flush must not overwrite b's work
    _count(a, template, [t0 + 4], first_offset=2)
    with pytest.raises(SinkBackpressureError):
        a.flush()
    assert not a.partitions  # dropped: reloaded from SQLite when next seen
    assert a.partition("t", 0).open[(1, t0)]["total_queries"] == 3
    with WindowStatsStore(path, read_only=True) as store:
        assert [r["total_queries"] for r in store.read().to_pylist()] == [3]


def test_groups_have_their_own_state(tmp_path: Path, template: dict) -> None:
    path = tmp_path / "s.sqlite"
    a = _state(path, group="one")
    _count(a, template, [1_709_510_400_001])
    a.flush()
    assert _state(path, group="two").partition("t", 0).next_offset == 0


def test_lost_kafka_commit_does_not_count_twice(kafka_settings: Settings, tmp_path: Path) -> None:
    """A crash between the SQLite commit and the Kafka offset commit: the group's Kafka offsets are gone,
    every message is read again, and every one is skipped (the stored offsets say it was counted)."""
    ensure_topics(kafka_settings)
    log = make_log(tmp_path / "l.parquet", rows=800, instances=3, spacing_s=5)
    Replay(log, settings=kafka_settings, speedup=0, pack=1).run()
    group = f"analytics-{uuid.uuid4().hex[:6]}"
    first = run_analytics(kafka_settings, idle_exit=4, timeout=90, commit_interval=1.0, group=group)
    assert first["events"] == 800
    before = stored_windows(kafka_settings)
    admin = AdminClient(kafka_settings.kafka_client_config())
    for future in admin.delete_consumer_groups([group], request_timeout=20).values():
        future.result(20)
    again = run_analytics(kafka_settings, idle_exit=4, timeout=90, commit_interval=1.0, group=group)
    assert again["events"] == 0 and again["skipped_counted"] == 800
    assert stored_windows(kafka_settings) == before
    assert sum(v[0] for v in before.values()) == 800


def test_a_topic_created_again_is_read_from_its_start(kafka_settings: Settings, tmp_path: Path) -> None:
    """Offsets stored for a deleted topic must not hide the messages of a new topic of the same name."""
    from confluent_kafka.admin import NewTopic

    ensure_topics(kafka_settings)
    topic = kafka_settings.topic_query_events
    log = make_log(tmp_path / "l.parquet", rows=300, instances=2, spacing_s=5)
    Replay(log, settings=kafka_settings, speedup=0, pack=1).run()
    assert run_analytics(kafka_settings, idle_exit=3, timeout=90, commit_interval=1.0)["events"] == 300
    admin = AdminClient(kafka_settings.kafka_client_config())
    admin.delete_topics([topic], operation_timeout=20)[topic].result(30)
    for _ in range(60):  # deletion is asynchronous
        try:
            admin.create_topics([NewTopic(topic, 4, 1)])[topic].result(30)
            break
        except Exception:
            time.sleep(0.5)
    Replay(log, settings=kafka_settings, speedup=0, pack=1, reset=True).run()
    again = run_analytics(kafka_settings, idle_exit=3, timeout=90, commit_interval=1.0)
    assert again["events"] == 300 and again["skipped_counted"] == 0


@pytest.mark.parametrize("base", [0, 1 << 40], ids=["small ids", "large ids"])
def test_a_batch_of_two_partitions_gives_each_its_own_instances(tmp_path: Path, template: dict, base: int) -> None:
    state = _state(tmp_path / "s.sqlite")
    p0, p1 = state.partition("t", 0), state.partition("t", 1)
    t0 = 1_709_510_400_000

    def per_partition(instances: list[int], partitions: list[int]) -> list[dict[int, int]]:
        rows = [dict(template, instance_id=base + i, query_id=q, arrival_us=(t0 + q) * 1000)
                for q, i in enumerate(instances)]
        preps = state.prepare([p0, p1], codec.rows_to_batch(rows), np.array(partitions, np.int64),
                              np.arange(len(rows), dtype=np.int64))
        return [{p["instance_id"] - base: p["total_queries"] for p in prep.partials} for prep in preps]

    # every instance from one partition (the key is the instance id): routed by instance
    assert per_partition([1, 2, 3, 1, 3], [0, 0, 1, 0, 1]) == [{1: 2, 2: 1}, {3: 2}]
    # instance 5 from both partitions (e.g. the key changed): each partition counts its own rows
    assert per_partition([5, 5, 5, 6], [0, 1, 1, 0]) == [{5: 1, 6: 1}, {5: 2}]
