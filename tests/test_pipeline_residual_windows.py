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

from workbench.analysis.residual_windows import RESIDUAL_SIGNAL
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


def _flagged(settings: Settings) -> list[tuple[int, dt.datetime]]:
    with AnomalyLakehouse.from_settings(settings) as lake:
        rows = lake.read_window_anomalies().to_pylist()
    return [(r["instance_id"], r["window_start"]) for r in rows if r["signal"] == RESIDUAL_SIGNAL]


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
    assert first["window_anomalies"] == 6 and first["residual_windows"] > 3 * 100  # days 1-3, both instances
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
