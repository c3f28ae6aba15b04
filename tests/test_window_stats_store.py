"""SQLite window_stats store: upsert idempotency, reads, late events, retention archive."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workbench.analysis.windows import finalize, merge_all, partial_aggregates
from workbench.data.schema import REDSET_SCHEMA
from workbench.store.exceptions import RowValidationError, StoreClosedError, StoreError
from workbench.store.window_stats import ADDED_COLUMNS, WINDOW_STATS_COLUMNS, WindowStatsStore

T0 = datetime(2024, 3, 1, tzinfo=UTC)


def window_rows(days: int = 10, per_day: int = 6, instances: int = 3) -> list[dict[str, Any]]:
    rows = []
    for d in range(days):
        for w in range(per_day):
            start = T0 + timedelta(days=d, minutes=10 * w)
            for i in range(instances):
                rows.append({"instance_id": 2**40 + i, "window_start": start,
                             "window_end": start + timedelta(minutes=10), "cluster_size": 4,
                             "total_queries": 10 + d, "normal_queries": 10 + d, "total_spilled_mb": 2**40,
                             "p95_exec_time_ms": 12.5})
    return rows


def test_upsert_twice_is_idempotent(tmp_path: Path) -> None:
    rows = window_rows()
    with WindowStatsStore(tmp_path / "s.sqlite") as store:
        store.upsert(rows)
        first = store.read()
        store.upsert(rows)
        second = store.read()
        assert store.count() == len(rows)
    assert first.drop_columns(["updated_at"]).equals(second.drop_columns(["updated_at"]))
    assert first.column("total_spilled_mb")[0].as_py() == 2**40  # 64-bit exact


def test_upsert_replaces_values(tmp_path: Path) -> None:
    row = window_rows(1, 1, 1)[0]
    with WindowStatsStore(tmp_path / "s.sqlite") as store:
        store.upsert([row])
        store.upsert([{**row, "total_queries": 99}])
        assert store.read().column("total_queries").to_pylist() == [99]


def test_from_finalize_and_filters(tmp_path: Path) -> None:
    batch = pa.RecordBatch.from_pylist(
        [{"instance_id": 7, "cluster_size": 2, "arrival_timestamp": T0 + timedelta(minutes=m),
          "execution_duration_ms": 100, "query_type": "select", "was_cached": False, "mbytes_scanned": 1,
          "mbytes_spilled": 0, "queue_duration_ms": 0, "num_joins": 0, "num_scans": 1,
          "num_aggregations": 0} for m in range(60)],
        schema=pa.schema([REDSET_SCHEMA.field(n).with_nullable(True) for n in (
            "instance_id", "cluster_size", "arrival_timestamp", "execution_duration_ms", "query_type",
            "was_cached", "mbytes_scanned", "mbytes_spilled", "queue_duration_ms", "num_joins", "num_scans",
            "num_aggregations")]))
    out = [finalize(p) for p in merge_all(partial_aggregates(batch))]
    with WindowStatsStore(tmp_path / "s.sqlite") as store:
        assert store.upsert(out) == 6
        t = store.read(start=T0 + timedelta(minutes=10), end=T0 + timedelta(minutes=30), instances=[7])
        assert t.num_rows == 2
        assert t.schema.field("window_start").type.tz == "UTC"
        assert store.read(instances=[8]).num_rows == 0
        assert store.newest_window_start() == T0 + timedelta(minutes=50)


def test_naive_datetime_rejected(tmp_path: Path) -> None:
    row = window_rows(1, 1, 1)[0]
    with WindowStatsStore(tmp_path / "s.sqlite") as store, pytest.raises(RowValidationError, match="naive"):
        store.upsert([{**row, "window_start": datetime(2024, 3, 1)}])
    with WindowStatsStore(tmp_path / "s.sqlite") as store, pytest.raises(RowValidationError, match="lacks"):
        store.upsert([{"instance_id": 1}])


def test_closed_store_explains() -> None:
    with pytest.raises(StoreClosedError, match="open"):
        WindowStatsStore("/nonexistent/x.sqlite").count()


def test_an_unreachable_postgres_names_its_setting() -> None:
    import socket

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"postgresql://stats:s3cret@127.0.0.1:{port}/stats"
    with pytest.raises(StoreError) as err:
        WindowStatsStore(url).open()
    message = str(err.value)
    assert message.startswith("The window stats database (WORKBENCH_WINDOW_STATS_URL) does not answer. "
                              f"Cannot connect to PostgreSQL at postgresql://stats:***@127.0.0.1:{port}/stats"), message
    assert "s3cret" not in message


def test_pragmas_and_late_events(tmp_path: Path) -> None:
    with WindowStatsStore(tmp_path / "s.sqlite") as store:
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        store.record_late(5, T0, 2)
        store.record_late(5, T0, 3)
        late = store.late_events()
        assert late.column("late_count").to_pylist() == [5]


def test_archive_idempotent_and_crash_safe(tmp_path: Path) -> None:
    rows = window_rows(days=10)
    archive = tmp_path / "archive"
    with WindowStatsStore(tmp_path / "s.sqlite", archive_dir=archive) as store:
        store.upsert(rows)
        total = store.count()
        result = store.archive_older_than(3)
        # newest window starts on day 9 at 00:50 -> cutoff day 6 00:50
        assert result.cutoff == T0 + timedelta(days=6, minutes=50)
        assert result.rows > 0
        assert store.count() + result.rows == total
        again = store.archive_older_than(3)
        assert again.rows == 0 and again.files == ()
        archived = sum(pq.read_table(f).num_rows for f in archive.glob("*.parquet"))
        assert archived == result.rows
        # Simulate a crash after writing Parquet but before deleting: put the rows back, archive again.
        store.upsert([r for r in rows if r["window_start"] < result.cutoff])
        store.archive_older_than(3)
        archived_after = sum(pq.read_table(f).num_rows for f in archive.glob("*.parquet"))
        assert archived_after == result.rows
        assert sorted(p.name for p in archive.iterdir())[0] == "window_stats_2024-03-01.parquet"
        assert not list(archive.glob("*.tmp-*"))


def test_archive_prunes_the_partials_the_analytics_app_keeps_of_closed_windows(tmp_path: Path) -> None:
    """The kept partials of closed windows (a row never sent before reopens its window) follow the archive:
    a window archived is never reopened, and the table does not grow without bound."""
    from workbench.pipeline._window_state import WindowState

    path = tmp_path / "s.sqlite"
    with WindowStatsStore(path, archive_dir=tmp_path / "archive") as store:
        store.upsert(window_rows(days=10))
        WindowState(store, "g", window_ms=600_000, grace_ms=60_000, closing_strategy="partition").open()
        starts = [int((T0 + timedelta(days=d)).timestamp() * 1000) for d in range(10)]
        with store.transaction() as db:
            db.executemany("INSERT INTO analytics_closed_windows (consumer_group, topic, partition, instance_id, "
                           "window_start_ms, partial) VALUES ('g', 't', 0, 1, ?, '{}')", [(s,) for s in starts])
        cutoff = store.archive_older_than(3).cutoff
        with store.transaction() as db:
            kept = sorted(r[0] for r in db.execute("SELECT window_start_ms FROM analytics_closed_windows"))
    assert kept == [s for s in starts if s >= int(cutoff.timestamp() * 1000)] and 0 < len(kept) < 10


def test_many_upsert_batches_keep_one_row_per_key(tmp_path: Path) -> None:
    # Speed lives in benchmarks/; here: 20 batches in a row, then the same rows again, no duplicates.
    rows = window_rows(days=50, per_day=144, instances=3)[:20_000]
    with WindowStatsStore(tmp_path / "s.sqlite") as store:
        for i in range(0, len(rows), 1000):
            store.upsert(rows[i:i + 1000])
        store.upsert(rows[:5000])
        assert store.count() == len({(r["instance_id"], r["window_start"]) for r in rows})


def test_late_counts_are_keyed_by_source_message(tmp_path: Path) -> None:
    """A late message re-processed after a crash replaces its count instead of adding it again."""
    with WindowStatsStore(tmp_path / "stats.sqlite") as store:
        store.record_late(5, T0, 2, source=("events", 0, 17))
        store.record_late(5, T0, 2, source=("events", 0, 17))  # the same message again (at-least-once)
        store.record_late(5, T0, 1, source=("events", 1, 17))  # another message, same window
        late = store.late_events().to_pylist()
    assert [(r["instance_id"], r["late_count"]) for r in late] == [(5, 3)]


def _old_database(path: Path) -> None:
    """A window_stats database as the first release wrote it (without ADDED_COLUMNS), with one row."""
    import sqlite3

    kept = [c for c in WINDOW_STATS_COLUMNS if c not in ADDED_COLUMNS]
    con = sqlite3.connect(path)
    con.execute(f"CREATE TABLE window_stats ({', '.join(kept)}, PRIMARY KEY (instance_id, window_start))")
    values = {"instance_id": 1, "window_start": 0, "window_end": 600_000, "total_queries": 5, "normal_queries": 5,
              "cpu_bound_queries": 0, "io_bound_queries": 0, "network_bound_queries": 0,
              "queue_wlm_bound_queries": 0, "total_spilled_mb": 0, "total_queue_time_ms": 0,
              "total_exec_time_ms": 10, "anomalies": 0, "updated_at": 1}
    con.execute(f"INSERT INTO window_stats ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                tuple(values.values()))
    con.commit()
    con.close()


def test_old_database_is_migrated_once_and_keeps_its_rows(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    _old_database(path)
    with WindowStatsStore(path, read_only=True) as store:  # unmigrated: missing columns read as nulls
        (old,) = store.read().to_pylist()
        assert old["total_queries"] == 5 and all(old[c] is None for c in ADDED_COLUMNS)
    for _ in range(2):  # the second open adds nothing (idempotent)
        with WindowStatsStore(path) as store:
            (row,) = store.read().to_pylist()
            assert row["total_queries"] == 5 and all(row[c] is None for c in ADDED_COLUMNS)
    con = sqlite3.connect(path)
    columns = [r[1] for r in con.execute("PRAGMA table_info(window_stats)")]
    con.close()
    assert sorted(columns) == sorted(WINDOW_STATS_COLUMNS) and len(columns) == len(set(columns))
    rows = window_rows(days=1, per_day=1, instances=1)
    rows[0].update(cached_queries=3, aborted_queries=1, spilled_queries=2, queued_queries=4, slow_queries=5,
                   max_queue_time_ms=9, total_compile_time_ms=700, max_compile_time_ms=300,
                   long_compile_queries=6, pace_queries=7, pace_log_sum=-1234)
    with WindowStatsStore(path) as store:
        store.upsert(rows)
        new = [r for r in store.read().to_pylist() if r["instance_id"] == 2**40]
    assert [new[0][c] for c in ADDED_COLUMNS] == [3, 1, 2, 4, 5, 9, 700, 300, 6, 7, -1234]


def residual_frame(n: int = 6, median: float = 0.1):
    """Residual windows of two instances (the frame the scoring app stores)."""
    import pandas as pd

    return pd.DataFrame({"instance_id": [i % 2 for i in range(n)],
                         "window_start": [T0 + timedelta(minutes=10 * (i // 2)) for i in range(n)],
                         "residual_queries": [20 + i for i in range(n)],
                         "median_log_residual": [median + i / 100 for i in range(n - 1)] + [None],
                         "beyond_tolerance_queries": [i for i in range(n)]})


def check_residuals_insert_if_absent(store: WindowStatsStore) -> None:
    """Shared by the SQLite and PostgreSQL tests: a window written again keeps its first row."""
    assert store.read_residuals().num_rows == 0 and store.newest_residual_window() is None
    assert store.insert_residuals(residual_frame()) == 6
    first = store.read_residuals().drop_columns(["written_at"]).to_pylist()
    again = residual_frame(median=5.0)  # the same keys, other values (never happens: shows who wins)
    more = residual_frame(8).iloc[6:]
    import pandas as pd

    assert store.insert_residuals(pd.concat([again, more])) == 2
    rows = store.read_residuals().drop_columns(["written_at"]).to_pylist()
    assert len(rows) == 8 and [r for r in rows if r["median_log_residual"] != 5.0] == rows
    assert [r for r in rows if (r["instance_id"], r["window_start"]) in
            {(f["instance_id"], f["window_start"]) for f in first}] == first
    assert rows[5]["median_log_residual"] is None or rows[5]["residual_queries"] == 25
    assert sorted(r["beyond_tolerance_queries"] for r in rows) == list(range(8))
    assert store.newest_residual_window() == T0 + timedelta(minutes=30)
    assert store.read_residuals(start=T0 + timedelta(minutes=10), instances=[1]).column(
        "instance_id").to_pylist() == [1, 1, 1]


def test_an_earlier_residual_table_gains_the_tolerance_count_and_keeps_its_rows(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    with WindowStatsStore(path) as store:
        store.insert_residuals(residual_frame(2).drop(columns="beyond_tolerance_queries"))  # stored as NULL
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE window_residuals DROP COLUMN beyond_tolerance_queries")  # as an earlier version made it
    con.close()
    with WindowStatsStore(path, read_only=True) as reader:  # unmigrated: the missing column reads as null
        assert reader.read_residuals().column("beyond_tolerance_queries").to_pylist() == [None, None]
    for _ in range(2):  # the second open adds nothing
        with WindowStatsStore(path) as store:
            assert store.read_residuals().column("residual_queries").to_pylist() == [20, 21]
    with WindowStatsStore(path) as store:
        store.insert_residuals(residual_frame(4))
        assert store.read_residuals().column("beyond_tolerance_queries").to_pylist() == [None, None, 2, 3]


def test_residual_windows_are_insert_if_absent(tmp_path: Path) -> None:
    with WindowStatsStore(tmp_path / "s.sqlite", archive_dir=tmp_path / "a") as store:
        check_residuals_insert_if_absent(store)
        store.upsert(window_rows(days=10))
        store.insert_residuals(residual_frame().assign(window_start=T0 + timedelta(days=9, minutes=50)))
        store.archive_older_than(3)  # the residuals of archived windows go with them
        assert store.read_residuals().column("window_start").to_pylist() == [T0 + timedelta(days=9, minutes=50)] * 2
    with WindowStatsStore(tmp_path / "s.sqlite", read_only=True) as reader:
        assert reader.read_residuals().num_rows == 2


def test_the_write_ahead_log_is_emptied_once_large_without_waiting_for_readers(tmp_path: Path) -> None:
    """A soak with a status read every second let the WAL grow without end (2 -> 105 MB in 50 minutes)."""
    import sqlite3
    import time

    path = tmp_path / "s.sqlite"
    wal = tmp_path / "s.sqlite-wal"
    rows = window_rows(days=10, per_day=144, instances=3)
    with WindowStatsStore(path) as store:
        store.WAL_LIMIT_BYTES = 100_000
        reader = sqlite3.connect(path, isolation_level=None)
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM window_stats").fetchone() == (0,)  # holds its snapshot
        began = time.monotonic()
        for i in range(0, len(rows), 500):
            store.upsert(rows[i:i + 500])
        # each of the 9 writes would have waited the 10 s busy timeout for the reader
        assert time.monotonic() - began < 30
        assert wal.stat().st_size > store.WAL_LIMIT_BYTES
        reader.execute("COMMIT")
        reader.close()
        store._wal_tried_at = time.monotonic()
        store.upsert(rows[:1])  # tried at most every 10 s
        assert wal.stat().st_size > store.WAL_LIMIT_BYTES
        store._wal_tried_at = float("-inf")
        store.upsert(rows[:1])
        assert wal.stat().st_size == 0
        assert store.count() == len(rows)
