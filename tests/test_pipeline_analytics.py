"""Stream analytics on the real broker: window parity with DuckDB, idempotent redelivery, dead letters, late events."""

from __future__ import annotations

import gc
import time
import uuid
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer

from tests.helpers import consume_all, make_log
from workbench.analysis.windows import partial_aggregates
from workbench.broker import ensure_topics
from workbench.config import Settings
from workbench.data import codec
from workbench.data.generator import generate
from workbench.pipeline import read_app_status, run_analytics
from workbench.pipeline.analytics import AnalyticsApp, row_partial
from workbench.replay import Replay
from workbench.store.window_stats import WindowStatsStore

_SUMS = ("total_queries", "normal_queries", "cpu_bound_queries", "io_bound_queries", "network_bound_queries",
         "queue_wlm_bound_queries", "total_spilled_mb", "total_queue_time_ms", "total_exec_time_ms",
         "cached_queries", "aborted_queries", "spilled_queries", "queued_queries", "slow_queries", "max_queue_time_ms",
         "total_compile_time_ms", "max_compile_time_ms", "long_compile_queries", "pace_queries", "pace_log_sum")

_EXPECTED_SQL = """
WITH q AS (
  SELECT instance_id,
         (epoch_us(arrival_timestamp) // 1000 // 600000) * 600000 AS window_start,
         lower(coalesce(query_type, '')) AS qt,
         coalesce(execution_duration_ms, 0)::DOUBLE AS ex, coalesce(mbytes_scanned, 0)::DOUBLE AS sc,
         coalesce(mbytes_spilled, 0) AS sp, coalesce(queue_duration_ms, 0) AS qu,
         coalesce(compile_duration_ms, 0) AS co,
         coalesce(num_joins, 0) AS j, coalesce(num_aggregations, 0) AS a, coalesce(num_scans, 0) AS s,
         coalesce(was_cached, false) AS cached, coalesce(was_aborted, false) AS aborted,
         execution_duration_ms IS NOT NULL AS ran
  FROM read_parquet($path)
), c AS (
  SELECT *, CASE WHEN sc > 0 THEN ex / (sc + 1) ELSE 0 END AS ratio FROM q
), k AS (
  SELECT *, CASE
    WHEN cached THEN 'normal'
    WHEN qt IN ('copy', 'unload') AND ex > 500 THEN 'network_bound'
    WHEN qt NOT IN ('copy', 'unload') AND (j > 1 OR a > 1) AND sc > 0 AND ratio > 20.0 AND ex > 1000 THEN 'cpu_bound'
    WHEN qt NOT IN ('copy', 'unload') AND sc >= 2000 AND ratio < 0.061 AND (sp > 0 OR s > 1) AND ex > 1000
      THEN 'io_bound'
    WHEN qu >= ex AND qu > 1000 AND ex > 0 AND (s + j + a) < 4 THEN 'queue_wlm_bound'
    ELSE 'normal' END AS cls FROM c
)
SELECT instance_id, window_start, count(*) AS total_queries,
       count(*) FILTER (cls = 'normal') AS normal_queries,
       count(*) FILTER (cls = 'cpu_bound') AS cpu_bound_queries,
       count(*) FILTER (cls = 'io_bound') AS io_bound_queries,
       count(*) FILTER (cls = 'network_bound') AS network_bound_queries,
       count(*) FILTER (cls = 'queue_wlm_bound') AS queue_wlm_bound_queries,
       sum(sp)::BIGINT AS total_spilled_mb, sum(qu)::BIGINT AS total_queue_time_ms,
       sum(ex)::BIGINT AS total_exec_time_ms,
       count(*) FILTER (cached) AS cached_queries, count(*) FILTER (aborted) AS aborted_queries,
       count(*) FILTER (sp > 0) AS spilled_queries, count(*) FILTER (qu > 1000) AS queued_queries,
       count(*) FILTER (ex > 1000) AS slow_queries,
       max(qu)::BIGINT AS max_queue_time_ms,
       sum(co)::BIGINT AS total_compile_time_ms, max(co)::BIGINT AS max_compile_time_ms,
       count(*) FILTER (co > 10000) AS long_compile_queries,
       count(*) FILTER (ran AND sc >= 100 AND NOT cached AND NOT aborted) AS pace_queries,
       coalesce(sum(round(1000 * ln(greatest(ex, 1) / sc)))
                FILTER (ran AND sc >= 100 AND NOT cached AND NOT aborted), 0)::BIGINT AS pace_log_sum
FROM k GROUP BY ALL ORDER BY instance_id, window_start
"""


def expected_windows(path: Path) -> dict[tuple[int, int], tuple[int, ...]]:
    """The window sums computed independently with DuckDB SQL over the Parquet log."""
    rows = duckdb.sql(_EXPECTED_SQL.replace("$path", "'" + str(path) + "'")).fetchall()
    return {(r[0], r[1]): tuple(int(v) for v in r[2:]) for r in rows}


def stored_windows(settings: Settings) -> dict[tuple[int, int], tuple[int, ...]]:
    with WindowStatsStore(settings.sqlite_path, read_only=True) as store:
        table = store.read().to_pylist()
    out = {}
    for r in table:
        start = int(r["window_start"].timestamp() * 1000)
        assert (r["instance_id"], start) not in out
        out[(r["instance_id"], start)] = tuple(int(r[c]) for c in _SUMS)
    return out


def produce_json(producer: Producer, topic: str, rows: pa.Table, *, times: int = 1,
                 partition: int | None = None) -> None:
    """Produce ``rows`` as one-row JSON messages keyed by their instance, each ``times`` in a row (a producer
    we did not write: the caller flushes)."""
    batch = rows.combine_chunks().to_batches()[0]
    headers = codec.message_headers(codec.ENCODING_JSON, 1)
    on = {} if partition is None else {"partition": partition}
    for instance, value in zip(batch.column("instance_id").to_pylist(), codec.encode_json(batch), strict=True):
        for _ in range(times):
            producer.produce(topic, key=str(instance).encode(), value=value, headers=headers, **on)


@pytest.fixture(scope="module")
def day_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("log") / "day.parquet"
    generate(path, days=1, instances=6, seed=3, rows_per_day=20_000)
    return path


def test_row_partial_matches_vectorised(tmp_path: Path) -> None:
    log = make_log(tmp_path / "l.parquet", rows=300)
    batch = pq.read_table(log).to_batches()[0]
    for value in codec.encode_json(batch):
        row = codec.decode_row(value)
        assert row_partial(row) == partial_aggregates(codec.decode_value(value))[0]


@pytest.mark.parametrize(("pack", "options"), [(1, {}), (100, {"closing_strategy": "key"})])
def test_window_parity_with_duckdb(kafka_settings: Settings, day_log: Path, pack: int, options: dict) -> None:
    ensure_topics(kafka_settings)
    Replay(day_log, settings=kafka_settings, speedup=0, pack=pack).run()
    result = run_analytics(kafka_settings, idle_exit=4, timeout=90, commit_interval=1.0, **options)
    expected = expected_windows(day_log)
    got = stored_windows(kafka_settings)
    assert result["events"] == sum(v[0] for v in expected.values())
    assert result["late_events"] == 0 and result["dead_letters"] == 0
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    assert not missing and not extra, (missing[:5], extra[:5])
    bad = [k for k in expected if expected[k] != got[k]]
    assert not bad, [(k, expected[k], got[k]) for k in bad[:3]]
    # each instance's last window is there (written by the open-window flush)
    for instance in {k[0] for k in expected}:
        assert max(k[1] for k in expected if k[0] == instance) == max(k[1] for k in got if k[0] == instance)
    status = read_app_status(kafka_settings, "analytics")
    assert status is not None and status["state"] == "stopped"
    assert status["counters"]["events"] == result["events"]

    # (b) forced redelivery: a second app with a fresh group re-reads everything into the same SQLite file
    before = stored_windows(kafka_settings)
    again = run_analytics(kafka_settings, idle_exit=4, timeout=90, commit_interval=1.0,
                          group=f"redelivery-{uuid.uuid4().hex[:6]}", **options)
    assert again["events"] == result["events"]
    assert stored_windows(kafka_settings) == before


def test_dead_letters_and_late_events(kafka_settings: Settings, tmp_path: Path) -> None:
    ensure_topics(kafka_settings)
    log = make_log(tmp_path / "l.parquet", rows=600, instances=1, spacing_s=10)
    Replay(log, settings=kafka_settings, speedup=0, pack=1).run()
    producer = Producer(kafka_settings.kafka_client_config())
    topic = kafka_settings.topic_query_events
    json_headers = codec.message_headers(codec.ENCODING_JSON, 1)
    good = orjson.loads(codec.encode_json(pq.read_table(log).to_batches()[0].slice(0, 1))[0])
    # for the first window, long closed: the first query again, a query never sent before, the first query marked
    # re-sent (as the replay marks what it sends again) and a query never sent before marked so (another producer)
    straggler = dict(good, query_id=10**9)
    never_sent = dict(good, query_id=10**9 + 1)
    resent_headers = [*json_headers, (codec.RESENT_HEADER, b"1")]
    bad_type = dict(good, execution_duration_ms="slow")
    # the late events go to the partition that holds instance 1's data
    part = consume_all(kafka_settings, topic, expected=600)[0].partition()
    producer.produce(topic, key=b"1", value=b"{not json", headers=json_headers, partition=0)
    producer.produce(topic, key=b"1", value=orjson.dumps(bad_type), headers=json_headers, partition=0)
    producer.produce(topic, key=b"1", value=b"\x00garbage", headers=codec.message_headers("arrow", 3), partition=0)
    producer.produce(topic, key=b"1", value=b"{}", headers=codec.message_headers("xml", 1), partition=0)
    for _ in range(3):
        producer.produce(topic, key=b"1", value=orjson.dumps(good), headers=json_headers, partition=part)
    producer.produce(topic, key=b"1", value=orjson.dumps(straggler), headers=json_headers, partition=part)
    producer.produce(topic, key=b"1", value=orjson.dumps(good), headers=resent_headers, partition=part)
    producer.produce(topic, key=b"1", value=orjson.dumps(never_sent), headers=resent_headers, partition=part)
    producer.flush(10)

    result = run_analytics(kafka_settings, idle_exit=4, timeout=60, commit_interval=1.0)
    assert result["dead_letters"] == 4
    # the copies are copies, the stragglers count in their window, only the re-sent copy is late
    assert result["late_events"] == 1 and result["repeated_events"] == 3, result.counters
    assert result["events"] == 600 + 6
    dead = consume_all(kafka_settings, kafka_settings.topic_dead_letter, expected=4, timeout=20)
    reasons = sorted(dict(m.headers())["reason"].decode() for m in dead)
    assert len(dead) == 4
    assert any("invalid JSON" in r for r in reasons)
    assert any("execution_duration_ms" in r for r in reasons)
    assert any("Arrow" in r for r in reasons)
    assert any("unknown encoding" in r for r in reasons)
    for m in dead:
        h = dict(m.headers())
        assert h["source_topic"].decode() == topic and h["app"] == b"analytics"
        assert int(h["source_offset"]) >= 0
    assert {m.value() for m in dead} >= {b"{not json", b"\x00garbage"}
    with WindowStatsStore(kafka_settings.sqlite_path, read_only=True) as store:
        late_rows = store.late_events().to_pylist()
        assert sum(r["late_count"] for r in late_rows) == 1
        assert store.read().to_pylist()  # the good rows landed
    assert sum(v[0] for v in stored_windows(kafka_settings).values()) == 602


def test_window_sums_saturate_instead_of_wrapping(tmp_path: Path) -> None:
    from workbench.analysis.windows import INT64_MAX, finalize, merge

    log = make_log(tmp_path / "l.parquet", rows=4, instances=1, spacing_s=1)
    batch = pq.read_table(log).to_batches()[0]
    huge = pa.array([INT64_MAX - 1, INT64_MAX - 1, None, 5], pa.int64())
    batch = batch.set_column(batch.schema.get_field_index("mbytes_spilled"), "mbytes_spilled", huge)
    (vectorised,) = partial_aggregates(batch)
    assert vectorised["spilled_mb"] == INT64_MAX  # numpy alone would wrap to a negative total
    rows = [codec.decode_row(v) for v in codec.encode_json(batch)]
    merged = row_partial(rows[0])
    for row in rows[1:]:
        merged = merge(merged, row_partial(row))
    assert merged["spilled_mb"] == INT64_MAX  # the JSON path agrees
    assert finalize(merged)["total_spilled_mb"] == INT64_MAX
    # exact below the bound, also with nulls (no float64 round trip)
    exact = pa.array([2**60 + 1, None, 2**60 + 3, 1], pa.int64())
    batch = batch.set_column(batch.schema.get_field_index("mbytes_spilled"), "mbytes_spilled", exact)
    assert partial_aggregates(batch)[0]["spilled_mb"] == 2**61 + 5


def _librdkafka_threads() -> int:
    """Threads of this process that librdkafka started (every open client has a few: rdk:main, rdk:broker...)."""
    return sum((task / "comm").read_text().startswith("rdk:") for task in Path("/proc/self/task").iterdir())


def test_the_app_closes_its_kafka_clients_when_run_returns(kafka_settings: Settings, tmp_path: Path) -> None:
    """Consumer, producer, topic admin and dead-letter producer are closed by run(), not by the garbage collector."""
    ensure_topics(kafka_settings)
    log = make_log(tmp_path / "l.parquet", rows=50, instances=1, spacing_s=10)
    Replay(log, settings=kafka_settings, speedup=0, pack=1).run()
    producer = Producer(kafka_settings.kafka_client_config())
    producer.produce(kafka_settings.topic_query_events, key=b"0", value=b"{not json",
                     headers=codec.message_headers(codec.ENCODING_JSON, 1))
    producer.flush(10)
    del producer
    gc.collect()
    before = _librdkafka_threads()
    gc.disable()  # a client left in a reference cycle would now stay open
    try:
        app = AnalyticsApp(kafka_settings, commit_interval=1.0, group=f"close-{uuid.uuid4().hex[:6]}")
        started = time.monotonic()
        result = app.run(idle_exit=2, timeout=60)
        stopped_in = time.monotonic() - started
        deadline = time.monotonic() + 5  # a closed client's threads end within a moment, not at once
        while (after := _librdkafka_threads()) != before and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        gc.enable()
    assert result["events"] == 50 and result["dead_letters"] == 1, result.counters
    assert after == before, f"{after - before} librdkafka threads still running after run() returned"
    assert stopped_in < 20, stopped_in
    dead = consume_all(kafka_settings, kafka_settings.topic_dead_letter, expected=1, timeout=20)
    assert [m.value() for m in dead] == [b"{not json"]  # flushed before the producer closed


def test_messages_hours_ahead_do_not_make_a_partitions_on_time_events_late(kafka_settings: Settings,
                                                                           tmp_path: Path) -> None:
    """A reviewer's valid messages dated hours ahead (one row, and a packed Arrow message of 50 rows) in the
    middle of a partition: every event lands in its own window and none is late (before the window clock,
    the on-time events after them all were)."""
    from datetime import timedelta

    import pyarrow.compute as pc

    ensure_topics(kafka_settings)
    log = pq.read_table(make_log(tmp_path / "l.parquet", rows=600, instances=1, spacing_s=10))

    def ahead(rows: pa.Table, hours: int, first_id: int) -> pa.Table:
        shifted = pc.add(rows["arrival_timestamp"], pa.scalar(timedelta(hours=hours)))
        rows = rows.set_column(rows.schema.get_field_index("arrival_timestamp"), "arrival_timestamp", shifted)
        ids = pa.array(range(first_id, first_id + rows.num_rows), rows.schema.field("query_id").type)
        return rows.set_column(rows.schema.get_field_index("query_id"), "query_id", ids).cast(log.schema)

    one, packed = ahead(log.slice(0, 1), 5, 10_000), ahead(log.slice(0, 50), 6, 20_000)
    producer = Producer(kafka_settings.kafka_client_config())
    topic = kafka_settings.topic_query_events
    produce_json(producer, topic, log.slice(0, 300), partition=0)
    produce_json(producer, topic, one, partition=0)
    producer.produce(topic, key=b"1", value=codec.encode_arrow(packed.combine_chunks().to_batches()[0]),
                     headers=codec.message_headers(codec.ENCODING_ARROW, 50), partition=0)
    produce_json(producer, topic, log.slice(300), partition=0)
    producer.flush(20)

    result = run_analytics(kafka_settings, idle_exit=4, timeout=90, commit_interval=1.0)
    assert result["late_events"] == 0 and result["dead_letters"] == 0, result.counters
    assert result["events"] == 651
    everything = tmp_path / "all.parquet"
    pq.write_table(pa.concat_tables([log, one, packed]), everything)
    assert stored_windows(kafka_settings) == expected_windows(everything)


def test_a_log_replayed_again_counts_no_query_twice_even_in_windows_still_open(
        kafka_settings: Settings, tmp_path: Path) -> None:
    """A reset after the end re-sent the last windows' queries while those windows were still open (nothing
    later had closed them): they were counted twice (a browser session saw 155,249 queries in a log of 154,002)."""
    ensure_topics(kafka_settings)
    log = make_log(tmp_path / "l.parquet", rows=3_000, instances=3, spacing_s=1.0)
    Replay(log, settings=kafka_settings, speedup=0).run()
    first = run_analytics(kafka_settings, idle_exit=4, timeout=60, commit_interval=1.0)
    assert first["events"] == 3_000 and not first["late_events"]
    windows = stored_windows(kafka_settings)
    assert sum(v[0] for v in windows.values()) == 3_000
    Replay(log, settings=kafka_settings, speedup=0, reset=True).run()  # every row again, marked re-sent
    again = run_analytics(kafka_settings, idle_exit=4, timeout=60, commit_interval=1.0)
    assert again["events"] == 3_000 and again["late_events"] == 3_000, again.counters
    assert stored_windows(kafka_settings) == windows


def test_second_copies_of_events_are_counted_once_also_after_a_restart(kafka_settings: Settings,
                                                                       tmp_path: Path) -> None:
    """Messages we did not send: a producer that retries without idempotence sends some events twice (one-row
    JSON, and a packed Arrow message repeating 50 rows already sent one by one), and after the app stopped the
    last rows come once more. Every window holds each query once; the copies are counted as repeated."""
    ensure_topics(kafka_settings)
    path = make_log(tmp_path / "l.parquet", rows=600, instances=1, spacing_s=10)
    log = pq.read_table(path).combine_chunks()
    producer = Producer(kafka_settings.kafka_client_config())
    topic = kafka_settings.topic_query_events
    produce_json(producer, topic, log.slice(0, 200), times=2, partition=0)  # each sent twice in a row
    produce_json(producer, topic, log.slice(200, 150), partition=0)
    producer.produce(topic, key=b"1", value=codec.encode_arrow(log.slice(300, 50).to_batches()[0]),
                     headers=codec.message_headers(codec.ENCODING_ARROW, 50), partition=0)
    produce_json(producer, topic, log.slice(350), partition=0)
    producer.flush(20)
    first = run_analytics(kafka_settings, idle_exit=4, timeout=90, commit_interval=1.0)
    assert first["late_events"] == 0 and first["dead_letters"] == 0, first.counters
    assert first["events"] == 850 and first["repeated_events"] == 250, first.counters
    expected = expected_windows(path)
    assert stored_windows(kafka_settings) == expected

    # the last 5 minutes again: their windows are still open, held by the restart
    produce_json(producer, topic, log.slice(570), partition=0)
    producer.flush(20)
    again = run_analytics(kafka_settings, idle_exit=4, timeout=90, commit_interval=1.0)
    assert again["repeated_events"] == 30 and again["late_events"] == 0, again.counters
    assert stored_windows(kafka_settings) == expected


def test_the_end_of_the_log_closes_every_window_so_the_collective_step_judges_the_last_ones(
        kafka_settings: Settings, tmp_path: Path) -> None:
    """After a replay each instance's last windows stayed open and within the settle time of the newest, so
    the stream never judged the last quarter of an hour of a log. The replay's end-of-log marker closes them."""
    from workbench.analysis.collective import CollectiveStep

    ensure_topics(kafka_settings)
    log = make_log(tmp_path / "l.parquet", rows=3_000, instances=3, spacing_s=1.0)
    Replay(log, settings=kafka_settings, speedup=0).run()
    result = run_analytics(kafka_settings, idle_exit=4, timeout=60, commit_interval=1.0)
    assert result["events"] == 3_000 and not result["late_events"], result.counters
    assert stored_windows(kafka_settings) == expected_windows(log)
    last_ms = pq.read_table(log, columns=["arrival_timestamp"]).column(0).cast(pa.int64()).to_numpy().max() // 1000
    with WindowStatsStore(kafka_settings.sqlite_path, read_only=True) as store:
        assert store.earliest_open_windows() == {}
        assert store.log_ends() == dict.fromkeys({k[0] for k in expected_windows(log)}, int(last_ms))
    step = CollectiveStep(kafka_settings)
    step.run()
    newest = {}
    for instance, start in stored_windows(kafka_settings):
        newest[instance] = max(newest.get(instance, start), start)
    assert step.cursor_ms == newest  # every window judged, the last ones too


def test_rows_a_seek_forward_skipped_count_in_their_windows_when_they_come_later(kafka_settings: Settings,
                                                                                  tmp_path: Path) -> None:
    """A browser session seeked a day forward and then pressed Reset: the skipped rows, sent for the first
    time after the clock had closed their windows, were late, and window_stats lacked 22 k of 60 k queries.
    Here a producer sends a log with a span left out, then (after the app stopped, the windows closed and
    stored) the span: every window ends as the log's, nothing late."""
    ensure_topics(kafka_settings)
    path = make_log(tmp_path / "l.parquet", rows=600, instances=2, spacing_s=10)
    log = pq.read_table(path).combine_chunks()
    producer = Producer(kafka_settings.kafka_client_config())
    topic = kafka_settings.topic_query_events
    produce_json(producer, topic, log.slice(0, 200))
    produce_json(producer, topic, log.slice(400))  # the seek forward: 200 rows (33 minutes) skipped
    producer.flush(20)
    first = run_analytics(kafka_settings, idle_exit=4, timeout=90, commit_interval=1.0)
    assert first["events"] == 400 and first["late_events"] == 0, first.counters
    # the reset: the skipped rows come, their windows closed long ago
    produce_json(producer, topic, log.slice(200, 200))
    producer.flush(20)
    again = run_analytics(kafka_settings, idle_exit=4, timeout=90, commit_interval=1.0)
    assert again["events"] == 200 and again["late_events"] == 0, again.counters
    assert stored_windows(kafka_settings) == expected_windows(path)


def test_a_dead_lettered_message_counts_none_of_its_rows_whatever_else_is_in_its_batch(
        kafka_settings: Settings, tmp_path: Path) -> None:
    """A message of no rows beside one of two made the batch look like one row per message: the guard then
    judged the two rows one by one, dead-lettered the message and still counted its on-time row."""
    ensure_topics(kafka_settings)
    log = make_log(tmp_path / "l.parquet", rows=600, instances=1, spacing_s=10)
    Replay(log, settings=kafka_settings, speedup=0, pack=1).run()
    part = consume_all(kafka_settings, kafka_settings.topic_query_events, expected=600)[0].partition()
    table = pq.read_table(log)
    rows = table.slice(598, 2).to_pylist()  # the last window: still open, so a counted row would show
    rows[0] |= {"query_id": 9_100_000_001}
    rows[1] |= {"query_id": 9_100_000_002, "arrival_timestamp": rows[1]["arrival_timestamp"].replace(year=2035)}
    two = pa.Table.from_pylist(rows, schema=table.schema).to_batches()[0]
    producer = Producer(kafka_settings.kafka_client_config())
    topic = kafka_settings.topic_query_events
    producer.produce(topic, key=b"1", value=codec.encode_arrow(two.slice(0, 0)),
                     headers=codec.message_headers(codec.ENCODING_ARROW, 0), partition=part)
    producer.produce(topic, key=b"1", value=codec.encode_arrow(two),
                     headers=codec.message_headers(codec.ENCODING_ARROW, 2), partition=part)
    producer.flush(10)
    result = run_analytics(kafka_settings, idle_exit=4, timeout=60, commit_interval=1.0)
    assert result["dead_letters"] == 1, result.counters
    assert sum(v[0] for v in stored_windows(kafka_settings).values()) == 600


def test_a_valid_event_on_another_partition_is_dead_lettered_not_counted_over_its_windows(
        kafka_settings: Settings, tmp_path: Path) -> None:
    """A producer with another partitioner (librdkafka's default) put a valid event of an instance on another
    partition than the replay's: that partition's window row replaced the instance's (64 queries became 1)."""
    ensure_topics(kafka_settings)
    assert kafka_settings.partitions >= 2
    log = make_log(tmp_path / "l.parquet", rows=600, instances=1, spacing_s=10)
    Replay(log, settings=kafka_settings, speedup=0, pack=1).run()
    home = consume_all(kafka_settings, kafka_settings.topic_query_events, expected=600)[0].partition()
    # The instance's events counted first: which partition the app reads first is up to the broker's
    # fetches, so a stray event already waiting on partition 0 was sometimes read before the home's.
    first = run_analytics(kafka_settings, idle_exit=4, timeout=60, commit_interval=1.0)
    assert first["events"] == 600 and first["dead_letters"] == 0, first.counters
    last = pq.read_table(log).slice(599, 1).to_pylist()[0] | {"query_id": 9_300_000_001}
    producer = Producer(kafka_settings.kafka_client_config())
    other = (home + 1) % kafka_settings.partitions
    value = codec.encode_json(pa.Table.from_pylist([last], schema=pq.read_schema(log)).to_batches()[0])[0]
    producer.produce(kafka_settings.topic_query_events, key=b"1", partition=other, value=value,
                     headers=codec.message_headers(codec.ENCODING_JSON, 1))
    producer.flush(10)
    result = run_analytics(kafka_settings, idle_exit=4, timeout=60, commit_interval=1.0)
    assert result["dead_letters"] == 1 and result["events"] == 0, result.counters
    assert sum(v[0] for v in stored_windows(kafka_settings).values()) == 600
    dead = consume_all(kafka_settings, kafka_settings.topic_dead_letter, expected=1, timeout=20)
    reason = dict(dead[0].headers())["reason"].decode()
    assert reason.startswith(f"wrong_partition: instance 1's windows are counted from partition {home} of "), reason
    assert f"this event came on partition {other}" in reason
