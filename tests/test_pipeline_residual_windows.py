"""The scoring app flags an instance that runs slower than the model expects (runtime residual), once.

Real components: a generated log with one instance slowed for an hour of its second day, a model
trained on the first day, the replay into a real broker, the scoring app (its maintenance thread
writes ``window_residuals`` and the lakehouse's ``window_anomalies``), then the same events
consumed again after the day's stored windows were lost (a crash between the two writes).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workbench.analysis.residual_windows import RESIDUAL_SIGNAL, TOLERANCE_SIGNAL
from workbench.broker import ensure_topics
from workbench.config import Settings
from workbench.data.generator import generate
from workbench.ml._train import train_day
from workbench.pipeline.scoring import run_scoring
from workbench.replay import Replay
from workbench.store.lakehouse import AnomalyLakehouse
from workbench.store.window_stats import WindowStatsStore

D1 = dt.date(2024, 3, 4)  # the generator's default first day
SLOW_FROM = dt.datetime(2024, 3, 5, 10, tzinfo=dt.UTC)  # day 2, for an hour: six windows


def _slowed_log(path: Path) -> int:
    """Three days of two instances; every query of the busier one twice as slow for an hour of day 2."""
    generate(path, days=3, instances=2, seed=5, rows_per_day=15_000)
    table = pq.read_table(path)
    ids, counts = np.unique(table.column("instance_id").to_numpy(), return_counts=True)
    busy = int(ids[np.argmax(counts)])
    ts = table.column("arrival_timestamp")
    when = pc.and_(pc.greater_equal(ts, pa.scalar(SLOW_FROM, ts.type)),
                   pc.less(ts, pa.scalar(SLOW_FROM + dt.timedelta(hours=1), ts.type)))
    slow = pc.and_(when, pc.equal(table.column("instance_id"), busy))
    runtime = table.column("execution_duration_ms")
    doubled = pc.cast(pc.multiply(runtime, 2), runtime.type)
    table = table.set_column(table.schema.get_field_index("execution_duration_ms"), "execution_duration_ms",
                             pc.if_else(slow, doubled, runtime))
    pq.write_table(table, path)
    return busy


def _flagged(settings: Settings, signal: str = RESIDUAL_SIGNAL) -> list[tuple[int, dt.datetime]]:
    with AnomalyLakehouse.from_settings(settings) as lake:
        rows = lake.read_window_anomalies().to_pylist()
    return [(r["instance_id"], r["window_start"]) for r in rows if r["signal"] == signal]


def test_an_instance_slowed_for_an_hour_is_flagged_on_its_runtime_residual_once(kafka_settings: Settings,
                                                                                tmp_path: Path) -> None:
    settings = kafka_settings
    ensure_topics(settings)
    log = tmp_path / "slowed.parquet"
    busy = _slowed_log(log)
    train_day(settings, D1, window_days=1, data=log)  # the slowdown is on day 2: the model never saw it
    Replay(log, settings=settings, speedup=0, pack=100).run()
    first = run_scoring(settings, idle_exit=3, timeout=120, train=False, batch_rows=8192, batch_seconds=0.5)
    slowed = [(busy, SLOW_FROM + dt.timedelta(minutes=10 * k)) for k in range(6)]
    assert _flagged(settings) == slowed  # the hour, and nothing else
    assert _flagged(settings, TOLERANCE_SIGNAL) == slowed  # every query slower: its share past the tolerance too
    assert first["window_anomalies"] == 12 and first["residual_windows"] > 3 * 100  # days 1-3, both instances
    # Day 3, the log's last, is judged too: no later event settles it, the replay's end-of-log marker does.
    with WindowStatsStore.from_settings(settings, read_only=True) as store:
        assert store.newest_residual_window().date() == dt.date(2024, 3, 6)
    with AnomalyLakehouse.from_settings(settings) as lake:
        reason = next(r["reason"] for r in lake.read_window_anomalies().to_pylist() if r["signal"] == RESIDUAL_SIGNAL)
    assert "x its expected runtime" in reason and "queries" in reason
    with WindowStatsStore.from_settings(settings, read_only=True) as store:
        stored = store.read_residuals().drop_columns(["written_at"])
    # A crash after day 2's flags were written but before its windows were stored; every event comes again.
    with sqlite3.connect(settings.sqlite_path) as con:
        con.execute("DELETE FROM window_residuals WHERE window_start >= ?",
                    (int(dt.datetime(2024, 3, 5, tzinfo=dt.UTC).timestamp() * 1000),))
    again = run_scoring(settings, idle_exit=3, timeout=120, train=False, batch_rows=8192, batch_seconds=0.5,
                        group="scoring-again")
    assert again["window_anomalies"] == 0 and _flagged(settings) == slowed  # judged again: no duplicate
    with WindowStatsStore.from_settings(settings, read_only=True) as store:
        assert store.read_residuals().drop_columns(["written_at"]).equals(stored)  # the same values


def test_a_log_cut_in_the_middle_of_a_day_has_that_day_judged_again_whole_when_the_rest_arrives(
        kafka_settings: Settings, tmp_path: Path) -> None:
    """The end-of-log marker judges a log's last day; a log cut at noon of day 2 had its day 2 judged on
    its morning for good, and the afternoon's windows (replayed next, as the following log) never were."""
    from workbench.store.shards import provisional_day

    settings = kafka_settings
    ensure_topics(settings)
    log = tmp_path / "slowed.parquet"
    _slowed_log(log)
    table = pq.read_table(log)
    cut = dt.datetime(2024, 3, 5, 12, tzinfo=dt.UTC)
    ts = table.column("arrival_timestamp")
    morning = table.filter(pc.less(ts, pa.scalar(cut, ts.type)))
    pq.write_table(morning, tmp_path / "a.parquet")
    pq.write_table(table.filter(pc.greater_equal(ts, pa.scalar(cut, ts.type))), tmp_path / "b.parquet")
    train_day(settings, D1, window_days=1, data=log)

    def day_windows(day: dt.date) -> list[dt.datetime]:
        with WindowStatsStore.from_settings(settings, read_only=True) as store:
            rows = store.read_residuals().to_pylist()
        return sorted({r["window_start"] for r in rows if r["window_start"].date() == day})

    Replay(tmp_path / "a.parquet", settings=settings, speedup=0, pack=100, replay_id="a").run()
    run_scoring(settings, idle_exit=3, timeout=120, train=False, batch_rows=8192, batch_seconds=0.5)
    d2 = dt.date(2024, 3, 5)
    assert day_windows(d2) and max(day_windows(d2)) < cut  # judged at the log's end: its morning
    assert provisional_day(settings.shards_dir) == (d2, int(morning.column("arrival_timestamp")[-1].value))
    # A flag the morning alone raised and the whole day does not (a user's hour judged on its part before the cut:
    # a tester's run kept one for good), stored as the deferred step stores its flags; and a rescoring's.
    last = morning.slice(morning.num_rows - 1).to_pylist()[0]
    stale = {"instance_id": last["instance_id"], "query_id": last["query_id"],
             "arrival_timestamp": last["arrival_timestamp"], "true_ms": 1.0, "pred_ms": 1.0, "score": 1.0,
             "reason": "group_slowdown", "features": "{}"}
    with AnomalyLakehouse.from_settings(settings) as lake:
        lake.write([{**stale, "model_version": "v0001-2024-03-04"}, {**stale, "model_version": "v0099-rescored"}])
    Replay(tmp_path / "b.parquet", settings=settings, speedup=0, pack=100, replay_id="b").run()
    run_scoring(settings, idle_exit=3, timeout=120, train=False, batch_rows=8192, batch_seconds=0.5)
    with AnomalyLakehouse.from_settings(settings) as lake:
        kept = [r["model_version"] for r in lake.read().to_pylist()
                if (r["instance_id"], r["query_id"]) == (stale["instance_id"], stale["query_id"])]
    assert kept == ["v0099-rescored"]  # the day judged whole replaced the stream version's flags, nobody else's
    afternoon = [w for w in day_windows(d2) if w >= cut]
    assert len(afternoon) == 12 * 6  # every 10-minute window of the afternoon (busy instances: never empty)
    assert day_windows(dt.date(2024, 3, 6))  # the new log's last day, judged at its end
    assert provisional_day(settings.shards_dir)[0] == dt.date(2024, 3, 6)
    with WindowStatsStore.from_settings(settings, read_only=True) as store:
        keys = [(r["instance_id"], r["window_start"]) for r in store.read_residuals().to_pylist()]
    assert len(keys) == len(set(keys))


def test_a_day_judged_before_rows_a_seek_skipped_came_is_judged_again_with_them(kafka_settings: Settings,
                                                                               tmp_path: Path) -> None:
    """A seek forward skipped day 2's middle; the stream settled day 2 and judged its windows without those
    rows; a reset then sent them, and nothing judged day 2 again (a tester's run kept 760 of 1,269 residual
    windows for good)."""
    settings = kafka_settings
    ensure_topics(settings)
    log = tmp_path / "slowed.parquet"
    busy = _slowed_log(log)
    table = pq.read_table(log)
    ts = table.column("arrival_timestamp")
    skipped = pc.and_(pc.greater_equal(ts, pa.scalar(dt.datetime(2024, 3, 5, 9, tzinfo=dt.UTC), ts.type)),
                      pc.less(ts, pa.scalar(dt.datetime(2024, 3, 5, 20, tzinfo=dt.UTC), ts.type)))
    pq.write_table(table.filter(pc.invert(skipped)), tmp_path / "seeked.parquet")
    pq.write_table(table.filter(skipped), tmp_path / "skipped.parquet")
    train_day(settings, D1, window_days=1, data=log)

    def day2_windows() -> set[dt.datetime]:
        with WindowStatsStore.from_settings(settings, read_only=True) as store:
            rows = store.read_residuals().to_pylist()
        return {r["window_start"] for r in rows if r["window_start"].date() == dt.date(2024, 3, 5)}

    Replay(tmp_path / "seeked.parquet", settings=settings, speedup=0, pack=100, replay_id="a").run()
    run_scoring(settings, idle_exit=3, timeout=120, train=False, batch_rows=8192, batch_seconds=0.5)
    before = day2_windows()
    assert before and not any(dt.time(9) <= w.time() < dt.time(20) for w in before)
    assert _flagged(settings) == []  # the slowed hour was skipped
    Replay(tmp_path / "skipped.parquet", settings=settings, speedup=0, pack=100, replay_id="b").run()
    result = run_scoring(settings, idle_exit=3, timeout=120, train=False, batch_rows=8192, batch_seconds=0.5)
    after = day2_windows()
    assert before < after and len([w for w in after if dt.time(9) <= w.time() < dt.time(20)]) >= 11 * 6
    slowed = [(busy, SLOW_FROM + dt.timedelta(minutes=10 * k)) for k in range(6)]
    assert _flagged(settings) == slowed and result["window_anomalies"] >= 6  # judged with the rows that came
