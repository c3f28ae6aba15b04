"""Stores for several machines on a real PostgreSQL (started by tests/conftest.py's fixture).

(a) window_stats on PostgreSQL behaves as on SQLite: same rows from the same upserts, replays,
    late events keyed by source message, filters, retention archive (idempotent);
(b) the DuckLake lakehouse on a PostgreSQL catalog: insert-if-absent, window anomalies, time
    travel, maintenance, readers through the notebooks' read API, clear errors;
(c) two writer processes at once, through PostgreSQL, with overlapping keys: every row exactly once;
(d) the pipeline (replay -> scoring, analytics, anomaly sink -> stores; real Kafka, real ONNX model)
    with PostgreSQL stores and shared folders gives the same stores as on SQLite from the same log,
    and again the same after a full redelivery.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.pg_server import PostgresServer
from tests.test_window_state import _run as run_clock
from tests.test_window_state import _scenario as clock_scenario
from tests.test_window_state import row_template
from tests.test_window_stats_store import check_residuals_insert_if_absent, residual_frame, window_rows
from workbench.analysis import read
from workbench.broker import ensure_topics
from workbench.config import Settings
from workbench.ml._testing import day_slice, generated_log
from workbench.ml._train import train_table
from workbench.pipeline import run_analytics
from workbench.pipeline._window_state import WindowState
from workbench.pipeline.anomaly_sink import run_anomaly_sink
from workbench.pipeline.scoring import run_scoring
from workbench.replay import Replay
from workbench.runtime._status import anomaly_count, late_event_count
from workbench.store.exceptions import LakehouseBusyError, LakehouseNotFoundError, StoreError, StoreNotFoundError
from workbench.store.lakehouse import AnomalyLakehouse
from workbench.store.shards import read_shards
from workbench.store.window_stats import WindowStatsStore

T0 = datetime(2024, 3, 1, tzinfo=UTC)


def without(table: pa.Table, *names: str) -> list[dict[str, Any]]:
    """Rows of ``table`` without the columns that hold write times."""
    return table.drop_columns([n for n in names if n in table.column_names]).to_pylist()


def anomaly_rows(n: int, offset: int = 0) -> list[dict[str, Any]]:
    return [{"instance_id": i % 4, "query_id": 5_000_000_000 + i, "model_version": "v1",
             "arrival_timestamp": T0 + timedelta(seconds=i), "true_ms": 9000.0 + i, "pred_ms": 100.0,
             "score": 3.5, "reason": "slow", "features": {"num_joins": i % 3}} for i in range(offset, offset + n)]


# --- (a) window_stats ------------------------------------------------------------------------------
def test_window_stats_postgres_matches_sqlite(postgres_server: PostgresServer, postgres_db: str,
                                              tmp_path: Path) -> None:
    url = postgres_server.url(postgres_db)
    rows = window_rows(days=10)
    stores = {"sqlite": WindowStatsStore(tmp_path / "s.sqlite", archive_dir=tmp_path / "a-sqlite"),
              "postgres": WindowStatsStore(url, archive_dir=tmp_path / "a-pg")}
    got: dict[str, dict[str, Any]] = {}
    for name, store in stores.items():
        with store:
            store.upsert(rows)
            store.upsert(rows[:100])  # a replay: replaces itself
            mark = store.newest_write_ms()
            time.sleep(0.01)
            store.upsert([{**rows[0], "total_queries": 99}])
            written = [(i, s) for i, s, _ in store.written_since(mark)]  # what the collective step judges again
            store.record_late(5, T0, 2, source=("events", 0, 17))
            store.record_late(5, T0, 2, source=("events", 0, 17))  # the same message again
            store.record_late(5, T0, 1, source=("events", 1, 17))
            for _ in range(2):  # the analytics flush: the messages below the offset it stores fold into one row
                with store.transaction():
                    store.record_late(5, T0, 4, source=("events", 0, 30))
                    store.merge_late_sources("events", 0, 31)
            folded = (store.late_event_total(),
                      sorted(tuple(r) for r in store._fetch('SELECT topic, "partition", "offset", late_count '
                                                            "FROM late_event_sources")))
            filtered = store.read(start=T0 + timedelta(days=1), end=T0 + timedelta(days=2), instances=[2**40 + 1])
            replaced = store.read(end=T0 + timedelta(minutes=1), instances=[rows[0]["instance_id"]])
            late = without(store.late_events(), "last_seen_at")  # before archiving (which drops day 0's)
            per_day = store.completed_queries_per_day()
            archived = store.archive_older_than(3)
            again = store.archive_older_than(3)
            files = sorted(p.name for p in archived.files)
            got[name] = {
                "rows": without(store.read(), "updated_at"), "count": store.count(),
                "filtered": without(filtered, "updated_at"), "late": late, "folded": folded, "per_day": per_day,
                "newest": (store.newest_window_start(), store.newest_window_end(),
                           store.newest_window_end([2**40 + 1]), store.newest_window_end([-5])),
                "replaced": replaced["total_queries"].to_pylist(), "written": written,
                "archived": (archived.cutoff, archived.rows, files, again.rows),
                "archive": without(pa.concat_tables(pq.read_table(f) for f in archived.files), "updated_at"),
            }
    assert got["postgres"] == got["sqlite"]
    assert got["postgres"]["replaced"] == [99]
    newest = got["postgres"]["newest"]
    assert newest[2] is not None and newest[2] <= newest[1] and newest[3] is None  # one instance's, none's
    assert len(got["postgres"]["per_day"]) == 10 and sum(got["postgres"]["per_day"].values()) > 0
    first = rows[0]["window_start"]
    assert got["postgres"]["written"] == [(rows[0]["instance_id"], int(pd.Timestamp(first).timestamp() * 1000))]
    assert got["postgres"]["filtered"] and got["postgres"]["archived"][1] > 0
    assert got["postgres"]["count"] + got["postgres"]["archived"][1] == len(rows)
    assert [r["late_count"] for r in got["postgres"]["late"]] == [11]
    assert got["postgres"]["folded"] == (11, [("(merged)", -1, 0, 10), ("events", 1, 17, 1)])
    assert stores["postgres"].url == url and "postgres" in repr(stores["postgres"])


def test_window_stats_postgres_reader_errors(postgres_server: PostgresServer, postgres_db: str) -> None:
    url = postgres_server.url(postgres_db)
    with pytest.raises(StoreNotFoundError, match="No window_stats table"):
        WindowStatsStore(url, read_only=True).open()
    with WindowStatsStore(url) as writer:  # opening twice is harmless (schema made once)
        writer.upsert(window_rows(1, 2, 1))
    with WindowStatsStore(url) as writer, WindowStatsStore(url, read_only=True) as reader:
        assert reader.count() == 2 == writer.count()
        with pytest.raises(Exception, match="read-only"):
            reader.upsert(window_rows(1, 1, 1))
    wrong = f"postgresql://postgres:s3cret@127.0.0.1:{postgres_server.port}/no_such_db"
    with pytest.raises(StoreError, match="Cannot connect") as err:
        WindowStatsStore(wrong).open()
    assert "s3cret" not in str(err.value) and "***" in str(err.value)
    assert "s3cret" not in repr(WindowStatsStore(wrong))


def test_window_stats_postgres_adds_declared_columns(postgres_server: PostgresServer, postgres_db: str) -> None:
    """A table made before a column was declared gets it on the next open (a new column is one edit)."""
    import psycopg

    url = postgres_server.url(postgres_db)
    with WindowStatsStore(url) as store:
        store.upsert(window_rows(1, 2, 1))
    with psycopg.connect(url, autocommit=True) as con:  # as an earlier version made it
        con.execute("ALTER TABLE window_stats DROP COLUMN p95_exec_time_ms")
        con.execute("ALTER TABLE window_stats DROP COLUMN pace_queries, DROP COLUMN pace_log_sum")
    with WindowStatsStore(url) as store:
        rows = window_rows(1, 3, 1)
        rows[-1].update(pace_queries=60, pace_log_sum=-4_200)
        store.upsert(rows)
        table = store.read()
        assert table["p95_exec_time_ms"].to_pylist() == [12.5, 12.5, 12.5]
        # the added columns are back: rows without a pace read NULL (not judged), the other its values
        assert table["pace_queries"].to_pylist()[-1] == 60 and table["pace_log_sum"].to_pylist()[-1] == -4_200
        assert table["pace_queries"].null_count == 2


def test_window_clock_state_on_postgres_matches_sqlite(postgres_server: PostgresServer, postgres_db: str,
                                                      tmp_path: Path) -> None:
    """The analytics window clock (outliers, a gap, stragglers) in random batches with crashes: the same
    windows and late events on PostgreSQL as on SQLite, and an old state table gets the clock's column."""
    import numpy as np
    import psycopg

    url = postgres_server.url(postgres_db)
    template = row_template(tmp_path)
    messages, instances = clock_scenario(np.random.default_rng(7))
    on_sqlite = run_clock(tmp_path / "s.sqlite", template, "partition", messages, instances, None)
    assert run_clock(url, template, "partition", messages, instances, np.random.default_rng(1)) == on_sqlite
    with psycopg.connect(url, autocommit=True) as con:  # as the release before the clock made it
        con.execute("ALTER TABLE analytics_progress DROP COLUMN recent_ms")
        con.execute("ALTER TABLE analytics_progress DROP COLUMN ended_ms")
        con.execute("ALTER TABLE analytics_key_time DROP COLUMN recent_ms")
        con.execute("ALTER TABLE analytics_open_windows DROP COLUMN query_ids")
    state = WindowState(WindowStatsStore(url), "g", window_ms=600_000, grace_ms=60_000, closing_strategy="partition",
                        clock_messages=4)
    state.open()
    p = state.partition("t", 0)
    assert p.next_offset == len(messages) and p.recent == []  # what it stored before is kept
    assert p.open and p.counted == {} and p.ended_ms is None
    # the log's end closes every window up to it, stored with the counted ids of those still open
    instances_open = sorted({k[0] for k in p.open})
    state.foreign_partition([p], np.array(instances_open), np.zeros(len(instances_open), np.int64))
    end_ms = max(k[1] for k in p.open)
    state.end_of_log(p, end_ms - 1)
    state.flush()
    assert state.store.log_ends() == dict.fromkeys(instances_open, end_ms - 1)
    state.store.close()
    again = WindowState(WindowStatsStore(url), "g", window_ms=600_000, grace_ms=60_000, closing_strategy="partition",
                        clock_messages=4)
    again.open()
    assert again.partition("t", 0).ended_ms == end_ms - 1
    assert [k[1] for k in again.partition("t", 0).open] == [end_ms]
    again.store.close()


def test_window_residuals_postgres_insert_if_absent(postgres_server: PostgresServer, postgres_db: str) -> None:
    """The scoring app's residual windows: the same insert-if-absent as on SQLite, also in a database
    whose window_stats an earlier version made (the table is added on open)."""
    import psycopg

    url = postgres_server.url(postgres_db)
    with WindowStatsStore(url) as store:
        store.upsert(window_rows(1, 2, 1))
    with psycopg.connect(url, autocommit=True) as con:  # as an earlier version made it
        con.execute("DROP TABLE window_residuals")
    with WindowStatsStore(url) as store:
        check_residuals_insert_if_absent(store)
    with psycopg.connect(url, autocommit=True) as con:  # as the version before the tolerance count made it
        con.execute("ALTER TABLE window_residuals DROP COLUMN beyond_tolerance_queries")
    with WindowStatsStore(url) as store:
        assert store.read_residuals().column("beyond_tolerance_queries").null_count == 8
        store.insert_residuals(residual_frame(10).iloc[8:])
        assert store.read_residuals().column("beyond_tolerance_queries").to_pylist()[-2:] == [8, 9]


# --- (b) the lakehouse on a PostgreSQL catalog --------------------------------------------------------
def test_lakehouse_postgres_catalog(postgres_server: PostgresServer, postgres_db: str, tmp_path: Path) -> None:
    catalog = "postgres:" + postgres_server.conninfo(postgres_db)
    data = str(tmp_path / "shared" / "lake-data") + "/"
    settings = Settings(home=tmp_path / "home", lakehouse_catalog=catalog, lakehouse_data=data)
    with pytest.raises(LakehouseNotFoundError, match="anomaly sink"):
        read.anomalies(settings)
    reference: dict[str, Any] = {}
    for name, lake in {"sqlite": AnomalyLakehouse(tmp_path / "sqlite-lake"),
                       "postgres": AnomalyLakehouse.from_settings(settings)}.items():
        with lake:
            assert lake.write(anomaly_rows(30)) == 30
            assert lake.write(anomaly_rows(40, offset=10)) == 20  # 30 already there
            assert lake.write(anomaly_rows(40)) == 0
            first = lake.current_version()
            windows = pa.table({"instance_id": pa.array([1, 1], pa.int64()),
                                "window_start": pa.array([T0, T0], pa.timestamp("us", tz="UTC")),
                                "signal": ["queue", "queue"], "expected": [1.0, 1.0], "observed": [9.0, 9.0],
                                "score": [4.0, 4.0], "reason": ["queue spike", "queue spike"]})
            assert lake.write_window_anomalies(windows) == 1
            assert lake.write_window_anomalies(windows) == 0
            result = lake.maintain(keep_snapshots=timedelta(0), orphan_age=timedelta(0))
            reference[name] = {"rows": without(lake.read(), "inserted_at"), "count": lake.count(),
                               "windows": without(lake.read_window_anomalies(), "inserted_at"),
                               "after_maintain": result.files_after}
            assert lake.count(version=first) == 50  # time travel to before the window anomalies
    assert reference["postgres"] == reference["sqlite"]
    assert reference["postgres"]["count"] == 50
    assert list((tmp_path / "shared" / "lake-data").rglob("*.parquet"))  # the data went to the configured path
    assert not (tmp_path / "home" / "lakehouse" / "catalog.sqlite").exists()
    # readers: the notebooks' read API and a read-only handle
    frame = read.anomalies(settings, instances=[1])
    assert len(frame) == len([r for r in anomaly_rows(50) if r["instance_id"] == 1])
    assert len(read.window_anomalies(settings)) == 1
    with AnomalyLakehouse.from_settings(settings, read_only=True) as reader:
        assert reader.count() == 50
        with pytest.raises(StoreError, match="read_only"):
            reader.write(anomaly_rows(1))
    # a writer that names another data path than the catalog's is told which setting to fix
    other = settings.with_overrides(lakehouse_data=str(tmp_path / "elsewhere"))
    with pytest.raises(StoreError, match="WORKBENCH_LAKEHOUSE_DATA"):
        AnomalyLakehouse.from_settings(other).open()


def test_stores_survive_a_postgres_restart(postgres_server: PostgresServer, tmp_path: Path) -> None:
    """A restarted server (every session cut) costs a retry, never a row: both stores reconnect."""
    with PostgresServer() as pg:  # a private one: the session's server is not restarted under other tests
        db = pg.create_database()
        settings = Settings(home=tmp_path / "home", lakehouse_catalog="postgres:" + pg.conninfo(db),
                            lakehouse_data=str(tmp_path / "lake-data"), window_stats_url=pg.url(db))
        with AnomalyLakehouse.from_settings(settings) as lake, WindowStatsStore.from_settings(settings) as stats:
            assert lake.write(anomaly_rows(20)) == 20
            stats.upsert(window_rows(1, 3, 2))
            pg.restart()
            busy = 0
            for _ in range(5):  # what the sink does: a busy lakehouse pauses the partition, then retries
                try:
                    assert lake.write(anomaly_rows(40)) == 20
                    break
                except LakehouseBusyError:
                    busy += 1
            else:
                pytest.fail("the lakehouse never came back after the restart")
            assert stats.upsert(window_rows(2, 3, 2)) == 12  # a new session, the same rows
            assert lake.count() == 40 and stats.count() == 12
            pg.restart()
            assert stats.read().num_rows == 12  # readers reconnect too
        assert busy <= 1


@pytest.fixture
def s3_bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any]]:
    """A local S3-compatible server (moto) with one bucket; the AWS variables point at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="test-key", aws_secret_access_key="test-secret")
    client.create_bucket(Bucket="workbench")
    try:
        yield "s3://workbench/lake/", client
    finally:
        server.stop()


def test_lakehouse_data_on_an_object_store(postgres_server: PostgresServer, postgres_db: str, tmp_path: Path,
                                           s3_bucket: tuple[str, Any]) -> None:
    """PostgreSQL catalog + Parquet files in an S3 bucket: nothing of the lakehouse on a local disk."""
    url, client = s3_bucket
    settings = Settings(home=tmp_path / "home", lakehouse_catalog="postgres:" + postgres_server.conninfo(postgres_db),
                        lakehouse_data=url)
    with AnomalyLakehouse.from_settings(settings) as lake:
        assert lake.write(anomaly_rows(30)) == 30
        assert lake.write(anomaly_rows(40, offset=10)) == 20  # ids 10..29 are there already
        for batch in range(5):  # small files, merged by the maintenance
            lake.write(anomaly_rows(10, offset=50 + 10 * batch))
        result = lake.maintain(keep_snapshots=timedelta(0), orphan_age=timedelta(0))
        assert lake.count() == 100 and result.files_after <= result.files_before
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="workbench").get("Contents", [])]
    assert keys and all(k.startswith("lake/") and k.endswith(".parquet") for k in keys)
    assert not (tmp_path / "home" / "lakehouse").exists()
    frame = read.anomalies(settings)  # the notebooks read from the bucket too
    assert len(frame) == 100 and frame["query_id"].is_unique


def test_settings_validate_store_locations(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="WORKBENCH_LAKEHOUSE_CATALOG"):
        Settings(home=tmp_path, lakehouse_catalog="mysql:db")
    with pytest.raises(ValueError, match="WORKBENCH_WINDOW_STATS_URL"):
        Settings(home=tmp_path, window_stats_url="sqlite:///x")
    shared = Settings(home=tmp_path / "h", window_stats_url="postgresql://u@db/x", shards_dir_override=tmp_path / "s",
                      models_dir_override=tmp_path / "m", archive_dir_override=tmp_path / "a")
    assert shared.window_stats_location == "postgresql://u@db/x"
    assert (shared.shards_dir, shared.models_dir, shared.archive_dir) == (tmp_path / "s", tmp_path / "m",
                                                                          tmp_path / "a")
    env = shared.to_env()
    assert env["WORKBENCH_WINDOW_STATS_URL"] == "postgresql://u@db/x"
    assert env["WORKBENCH_SHARDS_DIR"] == str(tmp_path / "s")
    assert Settings.from_env(env) == shared  # a child process resolves the same stores
    plain = Settings(home=tmp_path / "h")
    assert plain.window_stats_location == plain.sqlite_path
    assert plain.lakehouse_data_path == str(plain.lakehouse_dir / "data") + "/"


# --- (c) two writers at once ------------------------------------------------------------------------
_WRITER = textwrap.dedent("""
    import sys
    from datetime import UTC, datetime, timedelta
    from workbench.config import Settings
    from workbench.store.lakehouse import AnomalyLakehouse
    from workbench.store.window_stats import WindowStatsStore

    settings = Settings.from_env(dict(zip(sys.argv[1::2], sys.argv[2::2])))
    t0 = datetime(2024, 3, 1, tzinfo=UTC)
    inserted = 0
    with AnomalyLakehouse.from_settings(settings) as lake, WindowStatsStore.from_settings(settings) as stats:
        for batch in range(12):
            ids = range(batch * 10, batch * 10 + 25)  # overlaps the previous batch and the other writer's
            inserted += lake.write([{"instance_id": i % 3, "query_id": i, "model_version": "v1",
                                     "arrival_timestamp": t0 + timedelta(seconds=i)} for i in ids])
            stats.upsert([{"instance_id": i % 3, "window_start": t0 + timedelta(minutes=10 * i),
                           "window_end": t0 + timedelta(minutes=10 * i + 10), "total_queries": i} for i in ids])
    print(inserted)
""")


def test_two_writers_exactly_once(postgres_server: PostgresServer, postgres_db: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", lakehouse_catalog="postgres:" + postgres_server.conninfo(postgres_db),
                        lakehouse_data=str(tmp_path / "lake-data"), window_stats_url=postgres_server.url(postgres_db))
    env = settings.to_env()
    args = [x for kv in env.items() for x in kv]
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in writers]
    for w, (_out, err) in zip(writers, outputs, strict=True):
        assert w.returncode == 0, err[-2000:]
    keys = 11 * 10 + 25  # ids 0..134
    assert sum(int(out) for out, _ in outputs) == keys  # together they inserted each row once
    with AnomalyLakehouse.from_settings(settings, read_only=True) as lake:
        table = lake.read()
    assert table.num_rows == keys
    assert len(set(zip(table["instance_id"].to_pylist(), table["query_id"].to_pylist(), strict=True))) == keys
    with WindowStatsStore.from_settings(settings, read_only=True) as stats:
        assert stats.count() == keys
        assert stats.read()["total_queries"].to_pylist() == list(range(keys))
    # what the status panel and the notebooks read, through the same settings
    assert anomaly_count(settings) == keys and late_event_count(settings) == 0
    assert len(read.window_stats(settings)) == keys and len(read.anomalies(settings)) == keys


_HOLDER = textwrap.dedent("""
    import sys, time
    from workbench.store.lakehouse import AnomalyLakehouse

    lake = AnomalyLakehouse(sys.argv[1], catalog=sys.argv[2], data_path=sys.argv[3]).open()
    with lake._exclusive():  # a writer stuck inside its write turn
        print("holding", flush=True)
        time.sleep(600)
""")


def test_writer_killed_in_its_turn_frees_the_others(postgres_server: PostgresServer, postgres_db: str,
                                                     tmp_path: Path) -> None:
    """kill -9 of a writer holding the writers' lock: its session dies, the lock with it, the others go on."""
    catalog, data = "postgres:" + postgres_server.conninfo(postgres_db), str(tmp_path / "lake-data")
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path / "lake"), catalog, data],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding", holder.stderr
        holder.kill()  # SIGKILL: no cleanup runs in the holder
        holder.wait(timeout=30)
        with AnomalyLakehouse(tmp_path / "lake", catalog=catalog, data_path=data) as lake:
            assert lake.write(anomaly_rows(10)) == 10
            assert lake.count() == 10
    finally:
        if holder.poll() is None:
            holder.kill()


# --- (d) the pipeline on PostgreSQL and on SQLite ----------------------------------------------------
def _stores(settings: Settings) -> dict[str, Any]:
    with WindowStatsStore.from_settings(settings, read_only=True) as stats:
        windows = without(stats.read(), "updated_at")
        late = without(stats.late_events(), "last_seen_at")
    with AnomalyLakehouse.from_settings(settings, read_only=True) as lake:
        anomalies = without(lake.read(), "inserted_at")
        flagged = without(lake.read_window_anomalies(), "inserted_at")
    return {"windows": windows, "late": late, "anomalies": anomalies, "window_anomalies": flagged}


def test_pipeline_on_postgres_matches_sqlite(kafka_settings: Settings, postgres_server: PostgresServer,
                                             postgres_db: str, tmp_path: Path) -> None:
    ensure_topics(kafka_settings)
    log = generated_log(days=2, rows_per_day=3_000, instances=4, seed=11, anomaly_rate=0.03,
                        start=date(2024, 3, 4))
    shared = tmp_path / "shared"  # what several machines would mount
    train_table(shared / "models", day_slice(log, date(2024, 3, 4)), date(2024, 3, 4), window_days=1)
    pq.write_table(log, tmp_path / "log.parquet")
    Replay(tmp_path / "log.parquet", settings=kafka_settings, speedup=0, pack=1).run()

    on_sqlite = kafka_settings.with_overrides(models_dir_override=shared / "models")
    on_pg = kafka_settings.with_overrides(
        home=tmp_path / "pg-home", lakehouse_catalog="postgres:" + postgres_server.conninfo(postgres_db),
        lakehouse_data=str(shared / "lake-data"), window_stats_url=postgres_server.url(postgres_db),
        shards_dir_override=shared / "shards", models_dir_override=shared / "models")
    options = {"idle_exit": 3, "timeout": 180, "commit_interval": 1.0}  # Quix counts idle from the assignment
    counts = {}
    for name, settings in {"sqlite": on_sqlite, "postgres": on_pg}.items():
        group = f"{name}-{uuid.uuid4().hex[:6]}"  # both runs read the same topics from the start
        scoring = run_scoring(settings, group=f"m-{group}", train=False, idle_exit=4, timeout=180)
        analytics = run_analytics(settings, group=f"a-{group}", **options)
        # the sink of the PostgreSQL run reads the anomalies of both scoring runs: every one twice
        sink = run_anomaly_sink(settings, group=f"s-{group}", **options)
        counts[name] = (scoring["events"], analytics["events"], sink["sink_rows"])
    assert counts["postgres"] == counts["sqlite"] == (log.num_rows, log.num_rows, counts["sqlite"][2])
    sqlite, postgres = _stores(on_sqlite), _stores(on_pg)
    assert len(postgres["windows"]) > 100 and len(postgres["anomalies"]) > 10
    for store in ("windows", "late", "anomalies", "window_anomalies"):
        assert postgres[store] == sqlite[store], store
    assert sum(r["total_queries"] for r in postgres["windows"]) == log.num_rows
    assert not (on_pg.home / "stream_stats.sqlite").exists() and not (on_pg.home / "shards").exists()
    order = [("kafka_partition", "ascending"), ("kafka_offset", "ascending")]
    assert read_shards(on_pg.shards_dir).sort_by(order).equals(read_shards(on_sqlite.shards_dir).sort_by(order))

    # a full redelivery (fresh groups re-read everything) changes nothing
    again = run_analytics(on_pg, group=f"again-{uuid.uuid4().hex[:6]}", **options)
    sink = run_anomaly_sink(on_pg, group=f"again-{uuid.uuid4().hex[:6]}", **options)
    assert again["events"] == log.num_rows and sink["sink_rows"] == 0
    assert _stores(on_pg) == postgres
    # the notebooks' read API sees the same on both
    end = read.data_end(on_pg)
    assert end == read.data_end(on_sqlite) and end is not None
    assert read.metrics(on_pg, "24h", end=end) == read.metrics(on_sqlite, "24h", end=end)
    assert read.class_shares(on_pg).equals(read.class_shares(on_sqlite))
    frames = [read.anomalies(s).drop(columns="inserted_at") for s in (on_pg, on_sqlite)]
    assert frames[0].equals(frames[1])
