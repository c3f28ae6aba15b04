"""The analytics window state: lateness and closing by event time, and the exactly-once rules
(offsets committed with the windows, skip below the stored offset, stale state detected)."""

from __future__ import annotations

import itertools
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


def row_template(folder: Path) -> dict:
    """One valid decoded row to copy (its log is written in ``folder``)."""
    log_batch = pq.read_table(make_log(folder / "l.parquet", rows=5)).to_batches()[0]
    return codec.decode_row(codec.encode_json(log_batch.slice(0, 1))[0])


@pytest.fixture
def template(tmp_path: Path) -> dict:
    """One valid decoded row to copy."""
    return row_template(tmp_path)


_QUERY_IDS = itertools.count(1)


def _rows(template: dict, times_ms: list[int], instance: int = 1, query_ids: list[int] | None = None,
          ) -> pa.RecordBatch:
    """Rows of new queries (each call takes fresh query ids unless given: a repeated id is a second copy of one
    event)."""
    ids = query_ids or [next(_QUERY_IDS) for _ in times_ms]
    rows = [dict(template, instance_id=instance, query_id=q, arrival_us=t * 1000) for t, q in zip(times_ms, ids,
                                                                                                  strict=True)]
    return codec.rows_to_batch(rows)


def _state(path: Path | str, strategy: str = "partition", group: str = "g", k: int = 16) -> WindowState:
    state = WindowState(WindowStatsStore(path), group, window_ms=W, grace_ms=60_000,
                        closing_strategy=strategy, clock_messages=k)  # type: ignore[arg-type]
    state.open()
    return state


def _count(state: WindowState, template: dict, times: list[int], instance: int = 1, first_offset: int = 0) -> int:
    p = state.partition("t", 0)
    offsets = np.arange(first_offset, first_offset + len(times), dtype=np.int64)
    (prep,) = state.prepare([p], _rows(template, times, instance), np.zeros(len(times), np.int64), offsets)
    closed = state.apply(prep)
    state.advance(p, int(offsets[-1]))
    return closed


def test_a_row_first_sent_after_its_window_closed_is_counted_in_it_and_a_re_sent_row_is_late(
        tmp_path: Path, template: dict) -> None:
    """A row whose window the clock closed, sent for the first time (a seek forward skipped it, a reset sent
    it): it used to be late, lost from window_stats for good. Now its window opens again, from its kept
    partial, and closes at once. Copies marked re-sent, and rows of windows counted before their partial was kept,
    are late."""
    import sqlite3

    path = tmp_path / "s.sqlite"
    state = _state(path, k=1)  # k = 1: each one-row message moves the clock
    t0 = 1_709_510_400_000  # a window start
    # window 0 gets 2 rows; a row at t0 + W + grace closes it; then a row of window 0 comes
    closed = _count(state, template, [t0 + 1, t0 + 2, t0 + W + 60_000, t0 + 3])
    assert closed == 1
    p = state.partition("t", 0)
    assert p.late == {} and p.closed[(1, t0)][0]["total_queries"] == 3
    assert state.flush().final_rows == 1
    assert _count(state, template, [t0 + 4], first_offset=4) == 1  # opened again from its partial, closed again
    state.flush()
    with WindowStatsStore(path, read_only=True) as store:
        rows = {r["window_start"].timestamp() * 1000: r["total_queries"] for r in store.read().to_pylist()}
    assert rows == {t0: 4, t0 + W: 1}  # the open window is there as a provisional row
    # a window never counted (no row in window_stats) opens as new behind the clock
    assert _count(state, template, [t0 - 3 * W], first_offset=5) == 1
    # A row marked re-sent (the replay sent it before a seek or reset back) is late when its window counted
    # its query, the window closed or open; one its window never counted (another producer's header) counts.
    def resend(offset: int, query_id: int, at_ms: int) -> None:
        row = codec.rows_to_batch([dict(template, instance_id=1, query_id=query_id, arrival_us=at_ms * 1000)])
        (prep,) = state.prepare([p], row, np.zeros(1, np.int64), np.array([offset]), resent=np.array([True]))
        state.apply(prep)
        state.advance(p, offset)

    for offset, at_ms in ((6, t0 + 5), (8, t0 + W + 1)):  # a closed window, then the open one
        resend(offset, 10**12 + offset, at_ms)
        resend(offset + 1, 10**12 + offset, at_ms)
    assert p.late == {(7, 1, t0): 1, (9, 1, t0 + W): 1}
    state.flush()
    with sqlite3.connect(path) as con:  # as a window closed before its partial was kept
        con.execute("DELETE FROM analytics_closed_windows")
    _count(state, template, [t0 + 6], first_offset=10)
    assert p.late == {(10, 1, t0): 1}
    state.flush()
    with WindowStatsStore(path, read_only=True) as store:
        assert sum(r["late_count"] for r in store.late_events().to_pylist()) == 3
        rows = {r["window_start"].timestamp() * 1000: r["total_queries"] for r in store.read().to_pylist()}
    assert rows == {t0 - 3 * W: 1, t0: 5, t0 + W: 2}

def test_re_sent_rows_of_many_passes_keep_one_late_row_per_window_and_a_crash_counts_none_twice(
        tmp_path: Path, template: dict) -> None:
    """Every Reset added a late_event_sources row per re-sent message, never removed (930 k rows after 85
    passes of one log in a soak; every status read summed them all). Rows below the offset stored with them
    are folded into one per window."""
    import sqlite3

    path = tmp_path / "s.sqlite"
    state = _state(path, k=1)
    t0 = 1_709_510_400_000
    times = [t0 + 1, t0 + W + 2, t0 + 2 * W + 3]
    ids = [next(_QUERY_IDS) for _ in times]
    p = state.partition("t", 0)
    (prep,) = state.prepare([p], _rows(template, times, query_ids=ids), np.zeros(3, np.int64), np.arange(3))
    state.apply(prep)
    state.advance(p, 2)
    state.flush()
    offset = len(times)
    for _ in range(20):  # 20 passes, each re-sending every row in a message of its own
        for t, query_id in zip(times, ids, strict=True):
            (prep,) = state.prepare([p], _rows(template, [t], query_ids=[query_id]), np.zeros(1, np.int64),
                                    np.array([offset]), resent=np.array([True]))
            state.apply(prep)
            state.advance(p, offset)
            offset += 1
        state.flush()
    # after a crash the messages folded are below the stored next offset, which the sink skips (analytics.py)
    assert _state(path, k=1).partition("t", 0).next_offset == offset
    with WindowStatsStore(path, read_only=True) as store:
        late = {r["window_start"].timestamp() * 1000: r["late_count"] for r in store.late_events().to_pylist()}
        assert late == {t0 + k * W: 20 for k in range(3)} and store.late_event_total() == 60
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT count(*) FROM late_event_sources").fetchone()[0] == len(times)


def test_key_strategy_closes_by_the_instance_time_only(tmp_path: Path, template: dict) -> None:
    state = _state(tmp_path / "s.sqlite", "key", k=1)
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
    # every message is skipped: the 800 rows' and the replay's end-of-log marker on each partition
    assert again["events"] == 0 and again["skipped_counted"] == 800 + kafka_settings.partitions
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
            admin.create_topics([NewTopic(topic, 4, 1, config={"retention.ms": "-1"})])[topic].result(30)
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


def test_each_instance_is_counted_from_one_partition_and_a_second_claim_is_stale(tmp_path: Path,
                                                                                template: dict) -> None:
    """Two partitions' open windows of one instance replaced each other's row; now the first partition an
    instance comes on counts it, and a message of it on another partition is named (the app dead-letters it)."""
    path = tmp_path / "s.sqlite"
    t0 = 1_709_510_400_000
    a, b = _state(path), _state(path)  # two processes
    a0, a1 = a.partition("t", 0), a.partition("t", 1)
    b1 = b.partition("t", 1)  # b loads its partition (and the owners stored so far: none) before a claims
    # in one batch: instance 7 on partition 0 first, then on partition 1; instance 8 only on partition 1
    assert a.foreign_partition([a0, a1], np.array([7, 7, 8, 7]), np.array([0, 1, 1, 0])) == {1: 0}
    _count(a, template, [t0 + 1], instance=7)
    a.flush()  # stores the claim of 7 by partition 0 (8's partition counted nothing yet: not written)
    assert b.foreign_partition([b1], np.array([7]), np.array([0])) == {}  # b claims 7 too, in memory
    (prep,) = b.prepare([b1], _rows(template, [t0 + 2], 7), np.zeros(1, np.int64), np.zeros(1, np.int64))
    b.apply(prep)
    b.advance(b1, 0)
    with pytest.raises(SinkBackpressureError):
        b.flush()  # the claim conflicts with a's: nothing of b's is written, its state is read again
    b1 = b.partition("t", 1)
    assert b.foreign_partition([b1], np.array([7]), np.array([0])) == {0: 0}
    with WindowStatsStore(path, read_only=True) as store:
        assert [(r["instance_id"], r["total_queries"]) for r in store.read().to_pylist()] == [(7, 1)]


# --- the window clock: a few messages far ahead cannot move it ---------------------------------------
T0 = 1_709_510_400_000  # a window start
HOUR = 3_600_000


def _feed(state: WindowState, template: dict, messages: list[list[int]], first_offset: int = 0,
          instances: list[int] | None = None) -> int:
    """Count ``messages`` (each a list of row times, ms) of partition t[0] in one batch; returns windows closed."""
    p = state.partition("t", 0)
    times = [t for m in messages for t in m]
    offsets = np.repeat(np.arange(first_offset, first_offset + len(messages), dtype=np.int64),
                        [len(m) for m in messages])
    within = [j for m in messages for j in range(len(m))]
    # a query per row, named by its message's offset: a message read again carries the same queries
    rows = [dict(template, instance_id=(instances[o - first_offset] if instances else 1), query_id=o * 1000 + j,
                 arrival_us=t * 1000) for t, o, j in zip(times, offsets.tolist(), within, strict=True)]
    (prep,) = state.prepare([p], codec.rows_to_batch(rows), np.zeros(len(times), np.int64), offsets)
    closed = state.apply(prep)
    state.advance(p, int(offsets[-1]))
    return closed


def _stored(path: Path) -> tuple[dict[tuple[int, int], int], int]:
    """Window counts by (instance, window start ms), and the late events recorded."""
    with WindowStatsStore(path, read_only=True) as store:
        rows = {(r["instance_id"], int(r["window_start"].timestamp() * 1000)): r["total_queries"]
                for r in store.read().to_pylist()}
        late = sum(r["late_count"] for r in store.late_events().to_pylist())
    return rows, late


def _on_time(first: int, count: int, step: int = 60_000) -> list[list[int]]:
    """One-row messages, one a minute from ``T0 + first`` minutes."""
    return [[T0 + (first + i) * step] for i in range(count)]


def test_one_event_hours_ahead_leaves_the_partition_clock_where_it_is(tmp_path: Path, template: dict) -> None:
    """The known limit of the running-maximum clock: one valid event five hours ahead closed every window
    up to it, and each on-time event after it was late. Now it is counted in its own window, the on-time
    events in theirs, and the windows close as the stream reaches them."""
    path = tmp_path / "s.sqlite"
    state = _state(path)
    _feed(state, template, _on_time(0, 30))  # minutes 0-29
    _feed(state, template, [[T0 + 5 * HOUR + 7]], first_offset=30)  # the outlier
    _feed(state, template, _on_time(30, 60), first_offset=31)  # minutes 30-89: on time
    p = state.partition("t", 0)
    assert p.late == {}
    state.flush()
    rows, late = _stored(path)
    assert late == 0
    assert rows == {**{(1, T0 + n * W): 10 for n in range(9)}, (1, T0 + 30 * W): 1}
    assert (1, T0 + 30 * W) in p.open  # the outlier's window waits for the stream
    assert (1, T0) not in p.open  # the stream's own windows closed behind it


def test_outliers_in_one_packed_message_and_k_minus_1_adjacent_messages_do_not_move_the_clock(
        tmp_path: Path, template: dict) -> None:
    path = tmp_path / "s.sqlite"
    state = _state(path, k=4)
    _feed(state, template, _on_time(0, 20))
    # one packed message of 40 rows hours ahead (more rows than k): one message, one vote
    _feed(state, template, [[T0 + 3 * HOUR + i for i in range(40)]], first_offset=20)
    _feed(state, template, _on_time(20, 10), first_offset=21)
    # k - 1 = 3 adjacent messages ahead, of several rows each, then the stream goes on
    ahead = [[T0 + 6 * HOUR + 1000 * m + i for i in range(5)] for m in range(3)]
    _feed(state, template, ahead, first_offset=31)
    _feed(state, template, _on_time(30, 25), first_offset=34)
    p = state.partition("t", 0)
    assert p.late == {}
    assert p.watermark_ms == T0 + 54 * 60_000 - 3 * 60_000  # the 4th latest on-time message
    state.flush()
    rows, late = _stored(path)
    assert late == 0
    assert rows == {**{(1, T0 + n * W): 10 for n in range(5)}, (1, T0 + 5 * W): 5,
                    (1, T0 + 18 * W): 40, (1, T0 + 36 * W): 15}


def test_a_real_gap_moves_the_clock_after_k_messages(tmp_path: Path, template: dict) -> None:
    """All events after a gap are ahead: k messages of them close the windows before the gap, and a
    straggler from before the gap opens its window again (it was never sent before)."""
    path = tmp_path / "s.sqlite"
    state = _state(path, k=4)
    _feed(state, template, _on_time(0, 20))  # windows 0 and 1
    after_gap = _on_time(0, 4, step=1000)
    after_gap = [[t + 2 * HOUR for t in m] for m in after_gap]
    p = state.partition("t", 0)
    _feed(state, template, after_gap[:3], first_offset=20)  # k - 1 messages: the clock stays before the gap
    assert p.watermark_ms == T0 + 19 * 60_000 and (1, T0 + W) in p.open
    assert _feed(state, template, after_gap[3:], first_offset=23) == 1  # the k-th moves it: window 1 closes
    assert p.watermark_ms == T0 + 2 * HOUR
    assert _feed(state, template, [[T0 + 19 * 60_000 + 5]], first_offset=24) == 1  # a straggler of window 1
    assert p.late == {}
    state.flush()
    rows, late = _stored(path)
    assert late == 0 and rows == {(1, T0): 10, (1, T0 + W): 11, (1, T0 + 12 * W): 4}


def test_key_strategy_one_message_ahead_leaves_its_instance_clock(tmp_path: Path, template: dict) -> None:
    path = tmp_path / "s.sqlite"
    state = _state(path, "key", k=4)
    msgs = [*_on_time(0, 15), [T0 + 4 * HOUR], *_on_time(15, 15)]
    instances = [1 if i % 3 else 2 for i in range(len(msgs))]
    instances[15] = 1  # the outlier is instance 1's
    _feed(state, template, msgs, instances=instances)
    p = state.partition("t", 0)
    assert p.late == {}
    assert p.key_time[1] < T0 + HOUR and (1, T0 + 24 * W) in p.open
    state.flush()
    reloaded = _state(path, "key", k=4).partition("t", 0)
    assert reloaded.key_time == p.key_time and reloaded.key_recent == p.key_recent
    assert all(len(r) == 3 for r in reloaded.key_recent.values())


def _brute_clock(floors: list[int], k: int) -> list[int]:
    """The rule as written: after message j, the latest time k consecutive messages up to j all reached."""
    from workbench.pipeline._window_state import NO_CLOCK

    out, clock = [], NO_CLOCK
    for j in range(len(floors)):
        if j + 1 >= k:
            clock = max(clock, min(floors[j + 1 - k:j + 1]))
        out.append(clock)
    return out


@pytest.mark.parametrize("k", [1, 2, 5, 16])
def test_message_clock_is_the_rule_whatever_the_chunks(k: int) -> None:
    from workbench.pipeline._window_state import NO_CLOCK, message_clock

    rng = np.random.default_rng(k)
    floors = (np.arange(300) * 1000 + rng.integers(0, 5000, 300)).astype(np.int64)
    floors[rng.choice(300, 30, replace=False)] += 10_000_000  # outliers, some adjacent
    want = _brute_clock(floors.tolist(), k)
    for _ in range(5):
        cuts = sorted(rng.choice(np.arange(1, 300), 12, replace=False).tolist())
        clock, recent, got = NO_CLOCK, [], []
        for a, b in zip([0, *cuts], [*cuts, 300], strict=True):
            clocks, recent = message_clock(clock, recent, floors[a:b], k)
            clock = int(clocks[-1])
            got.extend(clocks.tolist())
            assert len(recent) == min(k - 1, b)
        assert got == want


def _scenario(rng: np.random.Generator) -> tuple[list[list[int]], list[int]]:
    """Messages of one partition (row times) with outliers alone, packed and adjacent, a gap and stragglers."""
    messages, instances, minute = [], [], 0
    for i in range(400):
        roll = rng.random()
        if roll < 0.04:
            msg = [T0 + minute * 60_000 + int(rng.integers(1, 6)) * HOUR + j for j in range(int(rng.integers(1, 30)))]
        elif roll < 0.06:
            msg = [T0 + max(0, minute - 30) * 60_000 + j for j in range(3)]  # stragglers: some late
        else:
            msg = [T0 + minute * 60_000 + j * 1000 for j in range(int(rng.integers(1, 4)))]
        if i == 250:
            minute += 180  # a real gap
        minute += 1
        messages.append(msg)
        instances.append(int(rng.integers(1, 4)))
    return messages, instances


def _run(path: Path, template: dict, strategy: str, messages: list[list[int]], instances: list[int],
         rng: np.random.Generator | None) -> tuple[dict, int, list]:
    """Count every message; with ``rng``, in random batches with flushes and crashes (state dropped unflushed,
    the messages after the stored offset read again)."""
    state = _state(path, strategy, k=4)
    if rng is None:
        _feed(state, template, messages, instances=instances)
    else:
        while (offset := state.partition("t", 0).next_offset) < len(messages):
            end = min(len(messages), offset + int(rng.integers(1, 40)))
            _feed(state, template, messages[offset:end], first_offset=offset, instances=instances[offset:end])
            action = rng.random()
            if action < 0.5:
                state.flush()
            elif action < 0.7:  # kill -9: what was not flushed is gone
                state = _state(path, strategy, k=4)
    state.flush()
    rows, late = _stored(path)
    with WindowStatsStore(path, read_only=True) as store:
        sources = sorted((r["instance_id"], r["late_count"]) for r in store.late_events().to_pylist())
    return rows, late, sources


@pytest.mark.parametrize("strategy", ["partition", "key"])
def test_the_clock_is_the_same_at_any_batch_boundaries_and_after_crashes(tmp_path: Path, template: dict,
                                                                          strategy: str) -> None:
    messages, instances = _scenario(np.random.default_rng(7))
    whole = _run(tmp_path / "whole.sqlite", template, strategy, messages, instances, None)
    assert sum(whole[0].values()) == sum(map(len, messages))  # every row counted once, the stragglers too
    assert whole[1] == 0
    for seed in range(3):
        again = _run(tmp_path / f"run{seed}.sqlite", template, strategy, messages, instances,
                     np.random.default_rng(seed))
        assert again == whole


def test_a_state_stored_before_the_clock_kept_its_messages_is_upgraded(tmp_path: Path, template: dict) -> None:
    import sqlite3

    path = tmp_path / "s.sqlite"
    con = sqlite3.connect(path)  # the tables as the first release made them
    con.executescript(
        "CREATE TABLE analytics_progress (consumer_group TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER "
        "NOT NULL, next_offset INTEGER NOT NULL, watermark_ms INTEGER, PRIMARY KEY (consumer_group, topic, "
        "partition)) WITHOUT ROWID;"
        "CREATE TABLE analytics_key_time (consumer_group TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER "
        "NOT NULL, instance_id INTEGER NOT NULL, latest_ms INTEGER NOT NULL, PRIMARY KEY (consumer_group, topic, "
        f"partition, instance_id)) WITHOUT ROWID; INSERT INTO analytics_progress VALUES ('g', 't', 0, 5, {T0 + W});"
        f"INSERT INTO analytics_key_time VALUES ('g', 't', 0, 1, {T0 + W});")
    con.commit()
    con.close()
    state = _state(path, k=4)
    p = state.partition("t", 0)
    assert (p.next_offset, p.watermark_ms, p.recent) == (5, T0 + W, [])
    _feed(state, template, [[T0 + W + 1]], first_offset=5)
    state.flush()
    assert _state(path, k=4).partition("t", 0).recent == [T0 + W + 1]
    key = _state(path, "key", k=4).partition("t", 0)
    assert key.key_time == {1: T0 + W} and key.key_recent == {1: []}


def test_first_copies_agrees_with_a_set_per_window() -> None:
    """Random windows, ids with many repeats and earlier ids: the mask keeps exactly each query's first copy
    in row order, and the ids after are each window's sorted union."""
    from workbench.pipeline._window_state import first_copies

    rng = np.random.default_rng(5)
    for _ in range(200):
        n = int(rng.integers(0, 60))
        part, inst, start = (rng.integers(0, 2, n), rng.integers(0, 3, n), rng.integers(0, 2, n) * W)
        ids = rng.integers(-5, 15, n)
        before = {(j, i, s): np.unique(rng.integers(-5, 15, int(rng.integers(0, 6))))
                  for j in range(2) for i in range(3) for s in (0, W) if rng.random() < 0.5}
        keep, after = first_copies((part, inst, start), ids, before.get)
        seen = {k: set(v.tolist()) for k, v in before.items()}
        want = []
        for row in zip(part.tolist(), inst.tolist(), start.tolist(), ids.tolist(), strict=True):
            window = seen.setdefault(row[:3], set())
            want.append(row[3] not in window)
            window.add(row[3])
        assert keep.tolist() == want
        present = set(zip(part.tolist(), inst.tolist(), start.tolist(), strict=True))
        assert set(after) == present
        assert all(after[k].tolist() == sorted(seen[k]) for k in present)


def _copies(template: dict, query_ids: list[int], times: list[int], instance: int = 1) -> pa.RecordBatch:
    return codec.rows_to_batch([dict(template, instance_id=instance, query_id=q, arrival_us=t * 1000)
                                for q, t in zip(query_ids, times, strict=True)])


def _count_copies(state: WindowState, template: dict, query_ids: list[int], times: list[int],
                  first_offset: int) -> int:
    """Count one-row messages of the given queries; returns how many were repeats."""
    p = state.partition("t", 0)
    offsets = np.arange(first_offset, first_offset + len(times), dtype=np.int64)
    (prep,) = state.prepare([p], _copies(template, query_ids, times), np.zeros(len(times), np.int64), offsets)
    state.apply(prep)
    state.advance(p, int(offsets[-1]))
    return prep.repeats


def test_a_second_copy_of_a_query_counts_once_in_a_batch_across_batches_and_after_a_restart(
        tmp_path: Path, template: dict) -> None:
    """query_id is unique per instance: a copy of a counted query (a producer's retry, a message sent twice)
    is not counted again, whether it comes in the same batch, a later one, or after the app restarted."""
    path = tmp_path / "s.sqlite"
    state = _state(path)
    minute = 60_000
    assert _count_copies(state, template, [1, 2, 1, 3, 2], [T0, T0 + minute, T0, T0 + 2 * minute, T0 + minute],
                         first_offset=0) == 2
    assert _count_copies(state, template, [3, 4], [T0 + 2 * minute, T0 + 3 * minute], first_offset=5) == 1
    # the same id in another window, or of another instance, is another query
    p = state.partition("t", 0)
    (prep,) = state.prepare([p], _copies(template, [1], [T0 + W], instance=2), np.zeros(1, np.int64),
                            np.array([7], np.int64))
    assert prep.repeats == 0
    state.apply(prep)
    state.advance(p, 7)
    state.flush()
    restarted = _state(path)
    assert restarted.partition("t", 0).counted[(1, T0)].tolist() == [1, 2, 3, 4]
    assert _count_copies(restarted, template, [4, 5, 1], [T0 + 3 * minute, T0 + 4 * minute, T0], first_offset=8) == 2
    restarted.flush()
    rows, late = _stored(path)
    assert rows == {(1, T0): 5, (2, T0 + W): 1} and late == 0
    # once the window closed, its ids are kept with its partial: a copy that comes later is still a copy
    _feed(restarted, template, _on_time(40, 16), first_offset=11)
    assert (1, T0) not in restarted.partition("t", 0).counted
    restarted.flush()
    assert _count_copies(restarted, template, [2, 6], [T0 + minute, T0 + 5 * minute], first_offset=27) == 1
    assert restarted.partition("t", 0).late == {}
    restarted.flush()
    assert _stored(path)[0][(1, T0)] == 6
    import sqlite3

    with sqlite3.connect(path) as con:
        (left,) = con.execute("SELECT count(*) FROM analytics_open_windows WHERE instance_id = 1 AND "
                              "window_start_ms = ?", (T0,)).fetchone()
    assert left == 0


def test_open_windows_stored_before_their_ids_were_kept_are_upgraded(tmp_path: Path, template: dict) -> None:
    import sqlite3

    path = tmp_path / "s.sqlite"
    _state(path)  # the other tables as they are now
    con = sqlite3.connect(path)
    con.executescript(
        "DROP TABLE analytics_open_windows; CREATE TABLE analytics_open_windows (consumer_group TEXT NOT NULL, "
        "topic TEXT NOT NULL, partition INTEGER NOT NULL, instance_id INTEGER NOT NULL, window_start_ms INTEGER "
        "NOT NULL, partial TEXT NOT NULL, PRIMARY KEY (consumer_group, topic, partition, instance_id, "
        "window_start_ms)) WITHOUT ROWID;")
    con.commit()
    con.close()
    state = _state(path)
    p = state.partition("t", 0)
    assert p.counted == {}
    assert _count_copies(state, template, [9, 9], [T0, T0], first_offset=0) == 1
    state.flush()
    assert _state(path).partition("t", 0).counted[(1, T0)].tolist() == [9]


@pytest.mark.parametrize("strategy", ["partition", "key"])
def test_the_end_of_the_log_closes_its_last_windows_and_keeps_rows_dated_ahead_open(
        tmp_path: Path, template: dict, strategy: str) -> None:
    """Each instance's last windows stayed open after a replay (nothing later closed them), so the
    collective step never judged them. The end-of-log marker closes every window up to the log's end; a
    row for one of them later is late; a window after the end (rows dated ahead) stays open."""
    path = tmp_path / "s.sqlite"
    state = _state(path, strategy, k=4)
    _feed(state, template, _on_time(0, 25), instances=[1 + i % 2 for i in range(25)])  # windows 0-2, two instances
    _feed(state, template, [[T0 + 5 * HOUR]], first_offset=25, instances=[1])  # one row hours ahead
    p = state.partition("t", 0)
    assert {k[1] for k in p.open} >= {T0 + 2 * W, T0 + 30 * W}
    end_ms = T0 + 24 * 60_000
    ending = len([k for k in p.open if k[1] <= end_ms])
    assert ending >= 2 and state.end_of_log(p, end_ms) == ending
    assert sorted(p.open) == [(1, T0 + 30 * W)] and p.ended_ms == end_ms
    # after the end, for window 2: a row never sent before opens it again, a copy of it re-sent is late
    assert _feed(state, template, [[T0 + 23 * 60_000]], first_offset=26, instances=[2]) == 1
    (prep,) = state.prepare([p], _rows(template, [T0 + 23 * 60_000], 2, query_ids=[26 * 1000]),
                            np.zeros(1, np.int64), np.array([27]), resent=np.array([True]))
    state.apply(prep)
    state.advance(p, 27)
    assert p.late == {(27, 2, T0 + 2 * W): 1}
    state.foreign_partition([p], np.array([1, 2]), np.array([0, 0]))  # the app claims each instance's partition
    state.flush()
    rows, late = _stored(path)
    assert late == 1 and sum(rows.values()) == 27
    reloaded = _state(path, strategy, k=4).partition("t", 0)
    assert reloaded.ended_ms == end_ms and sorted(reloaded.open) == [(1, T0 + 30 * W)]
    with WindowStatsStore(path, read_only=True) as store:
        assert store.log_ends() == {1: end_ms, 2: end_ms}
        assert store.earliest_open_windows() == {1: T0 + 30 * W}


def test_counted_ids_are_stored_compactly_and_read_back_exactly() -> None:
    """A JSON list took ~10 bytes an id: on the demo log the kept ids made the state 10x window_stats."""
    from workbench.pipeline._window_state import _ids_of, _ids_text

    rng = np.random.default_rng(3)
    cases = [np.array([], np.int64), np.array([7]), np.array([-(2**63), -5, 0, 9, 2**63 - 1]),
             np.sort(rng.integers(-(2**62), 2**62, 500)), np.arange(10**9, 10**9 + 3000, dtype=np.int64)]
    for ids in cases:
        assert _ids_of(_ids_text(ids)).tolist() == ids.tolist()
    assert len(_ids_text(cases[-1])) < 300  # consecutive ids: a few hundred bytes for 3,000
    assert _ids_of("[3, 5, 8]").tolist() == [3, 5, 8] and _ids_of(None) is None  # as first written; none kept
