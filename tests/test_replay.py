"""The replay engine on the real broker: pacing, live control, resume, packing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import consume_all, make_log
from workbench import defaults
from workbench.config import Settings
from workbench.data import codec
from workbench.replay import BatchReport, Pacer, Replay, ReplayController, ReplayError


class FakeClock:
    """Wall time that only moves when the replay sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)


def _ids(messages: list) -> Counter:
    decoded = codec.decode_values([m.value() for m in messages],
                                  [codec.header(m.headers(), "encoding") for m in messages])
    assert not decoded.errors
    batch = decoded.batch
    return Counter(zip(batch.column("instance_id").to_pylist(), batch.column("query_id").to_pylist(), strict=True))


def _file_ids(path: Path) -> Counter:
    table = pq.read_table(path, columns=["instance_id", "query_id"])
    return Counter(zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True))


def test_pacer_keeps_event_time_continuous_across_speed_changes_and_pauses() -> None:
    pacer = Pacer(600)
    pacer.anchor(0, now=0.0)
    assert pacer.event_clock(1.0) == 600_000_000
    pacer.set_speed(60, now=1.0, next_event_us=None)
    assert pacer.event_clock(1.0) == 600_000_000  # no jump at the change
    assert pacer.event_clock(2.0) == 660_000_000
    pacer.pause(now=2.0, next_event_us=None)
    assert pacer.event_clock(50.0) == 660_000_000 and not pacer.due(660_000_001, 50.0)
    pacer.resume(now=50.0)
    assert pacer.event_clock(51.0) == 720_000_000


def test_fake_clock_pacing_matches_speed_within_one_percent_including_a_speed_change(
        kafka_settings: Settings, tmp_path: Path) -> None:
    log = make_log(tmp_path / "log.parquet", rows=7200, spacing_s=1.0)  # two hours of events
    clock = FakeClock()
    reports: list[BatchReport] = []
    replay: Replay

    def observe(report: BatchReport) -> None:
        reports.append(report)
        if report.wall_time - 1000.0 >= 5.0 and replay.speedup == 600:
            replay.set_speed(1800)

    replay = Replay(log, settings=kafka_settings, speedup=600, clock=clock, observer=observe, batch_size=1000)
    status = replay.run()
    assert status.state == "finished" and status.next_row == 7200

    def speed(segment: list[BatchReport]) -> float:
        # Slope of event time over wall time across the segment's batches.
        walls = np.array([r.wall_time for r in segment])
        events = np.array([r.last_event_us for r in segment]) / 1e6
        return float(np.polyfit(walls, events, 1)[0])

    change = next(i for i, r in enumerate(reports) if r.speedup == 1800)
    before, after = reports[:change], reports[change:-1]  # the last batch ends with the file, not the clock
    assert len(before) > 20 and len(after) > 10  # paced per batch: many batches, not one per row
    assert speed(before) == pytest.approx(600, rel=0.01)
    assert speed(after) == pytest.approx(1800, rel=0.01)
    assert len(reports) < 7200 / 10
    # every row arrived exactly once
    messages = consume_all(kafka_settings, kafka_settings.topic_query_events, expected=7200)
    assert _ids(messages) == _file_ids(log)


def test_messages_are_keyed_timestamped_headed_and_never_carry_labels(kafka_settings: Settings, tmp_path: Path) -> None:
    log = make_log(tmp_path / "log.parquet", rows=300)
    Replay(log, settings=kafka_settings, speedup=0).run()
    messages = consume_all(kafka_settings, kafka_settings.topic_query_events, expected=300)
    first = sorted(messages, key=lambda m: m.timestamp()[1])[0]
    row = pq.read_table(log).slice(0, 1).to_pylist()[0]
    assert first.key() == str(row["instance_id"]).encode()
    assert first.timestamp()[1] == int(row["arrival_timestamp"].timestamp() * 1000)
    assert codec.header(first.headers(), "schema") == "redset/1"
    assert codec.header(first.headers(), "encoding") == "json"
    import orjson
    value = orjson.loads(first.value())
    assert "label_anomaly" not in value and "label_kind" not in value
    assert len(value) == 24 and value["cache_source_query_id"] is None
    assert value["arrival_timestamp"].endswith("+00:00")


def test_a_finished_replay_ends_every_partition_with_an_end_of_log_marker(kafka_settings: Settings,
                                                                          tmp_path: Path) -> None:
    """The apps learn from it that the log's last day is complete (no later event will settle it)."""
    log = make_log(tmp_path / "log.parquet", rows=600, instances=5)
    Replay(log, settings=kafka_settings, speedup=0, pack=20).run()
    messages = consume_all(kafka_settings, kafka_settings.topic_query_events, to_end=True, markers=True)
    last_us = int(pq.read_table(log).column("arrival_timestamp").to_pylist()[-1].timestamp() * 1_000_000)
    by_partition: dict[int, list] = {}
    for message in messages:
        by_partition.setdefault(message.partition(), []).append(message)
    assert len(by_partition) == kafka_settings.partitions  # a marker on every partition, with rows or not
    for partition, ordered in by_partition.items():
        decoded = codec.decode_values([m.value() for m in ordered], headers=[m.headers() for m in ordered],
                                      keys=[m.key() for m in ordered])
        assert decoded.errors == [] and decoded.end_of_log_us == last_us, partition
        assert codec.header(ordered[-1].headers(), codec.END_OF_LOG_HEADER) == str(last_us)  # after every row
    assert _ids([m for m in messages if m.key() is not None]) == _file_ids(log)


def test_without_end_of_log_markers_a_json_replay_sends_rows_only(kafka_settings: Settings, tmp_path: Path) -> None:
    """For a tool that reads the topic too and takes every message for a JSON row."""
    settings = kafka_settings.with_overrides(end_of_log_markers=False)
    log = make_log(tmp_path / "log.parquet", rows=200)
    Replay(log, settings=settings, speedup=0).run()
    messages = consume_all(settings, settings.topic_query_events, to_end=True, markers=True)
    assert len(messages) == 200 and all(codec.header(m.headers(), "encoding") == "json" for m in messages)


def test_packed_messages_carry_every_row_in_order_per_instance(kafka_settings: Settings, tmp_path: Path) -> None:
    log = make_log(tmp_path / "log.parquet", rows=3000, instances=4)
    Replay(log, settings=kafka_settings, speedup=0, pack=50).run()
    messages = consume_all(kafka_settings, kafka_settings.topic_query_events, idle=3)
    assert all(codec.header(m.headers(), "encoding") == "arrow" for m in messages)
    assert len(messages) < 3000 / 10
    assert _ids(messages) == _file_ids(log)
    for message in messages:  # one instance per message, in arrival order
        batch = codec.decode_value(message.value(), "arrow")
        assert set(batch.column("instance_id").to_pylist()) == {int(message.key())}
        times = batch.column("arrival_timestamp").to_pylist()
        assert times == sorted(times)


def test_pause_via_another_process_stops_production_and_resume_restarts_it(kafka_settings: Settings,
                                                                         tmp_path: Path) -> None:
    log = make_log(tmp_path / "log.parquet", rows=20_000, spacing_s=1.0)
    replay = Replay(log, settings=kafka_settings, speedup=600).start()
    controller = ReplayController(kafka_settings)  # the cross-process path: commands over the topic
    try:
        _wait(lambda: (replay.status() or _none).next_row > 0)
        controller.pause()
        # Within a tick once the command is fetched (well under a second on a quiet machine); waited for,
        # as a loaded machine's broker can hold a fetch or a transaction commit longer than that.
        _wait(lambda: replay.status().state == "paused")
        paused_at = replay.status().next_row
        time.sleep(1.5)
        assert replay.status().next_row == paused_at
        controller.resume()
        _wait(lambda: replay.status().next_row > paused_at)
        # status is visible from another process too
        _wait(lambda: (controller.status() or _none).next_row > 0)
    finally:
        replay.stop()
        replay.join(10)


class _None:
    next_row = 0
    state = None


_none = _None()


def _wait(condition, timeout: float = 60.0) -> None:  # generous: Kafka start-up on a loaded machine
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_an_unpaced_replay_sends_few_large_transactions(kafka_settings: Settings, tmp_path: Path) -> None:
    """At max speed a transaction carries up to REPLAY_BATCH_SIZE rows (each one costs the broker a
    produce request per partition and the coordinator's round trips)."""
    rows = defaults.REPLAY_BATCH_SIZE + 500
    log = make_log(tmp_path / "log.parquet", rows=rows, spacing_s=0.5, row_group_size=rows)
    reports: list[BatchReport] = []
    status = Replay(log, settings=kafka_settings, speedup="max", pack=100, observer=reports.append).run()
    assert status.next_row == rows
    assert [report.rows for report in reports] == [defaults.REPLAY_BATCH_SIZE, 500]
    # one query per message: the replay's memory grows per message, so a transaction holds fewer rows
    json_replay = Replay(log, settings=kafka_settings, speedup="max", pack=1, replay_id="json")
    assert json_replay.batch_size == defaults.REPLAY_BATCH_MESSAGES < defaults.REPLAY_BATCH_SIZE
    assert Replay(log, settings=kafka_settings, pack=1, batch_size=123).batch_size == 123


def test_seek_and_reset_land_on_the_right_row(kafka_settings: Settings, tmp_path: Path) -> None:
    log = make_log(tmp_path / "log.parquet", rows=5000, spacing_s=2.0)
    replay = Replay(log, settings=kafka_settings, speedup=60).start()
    try:
        _wait(lambda: (replay.status() or _none).next_row > 0)
        replay.pause()
        _wait(lambda: replay.status().state == "paused")
        replay.seek("2024-03-04T02:00:01")  # rows are 2 s apart from midnight: row 3601 is the first at/after
        _wait(lambda: replay.status().next_row == 3601)
        assert replay.status().event_time.isoformat() == "2024-03-04T02:00:02+00:00"
        replay.reset_position()
        _wait(lambda: replay.status().next_row == 0)
        replay.set_speed("max")
        replay.resume()
        _wait(lambda: replay.status().state == "finished")
    finally:
        replay.stop()
        replay.join(10)
    assert replay.status().next_row == 5000


def test_restart_resumes_at_saved_position_and_refuses_another_file(kafka_settings: Settings, tmp_path: Path) -> None:
    log = make_log(tmp_path / "log.parquet", rows=1000)
    status = Replay(log, settings=kafka_settings, speedup=0).run()
    assert status.next_row == 1000
    again = Replay(log, settings=kafka_settings, speedup=0).run()
    assert again.rows_sent == 0 and again.state == "finished"
    assert again.event_time == status.event_time == again.last_event_time  # not "-": the last row's time
    other = make_log(tmp_path / "other.parquet", rows=500, seed=1)
    with pytest.raises(ReplayError, match="saved position in another file.*--reset"):
        Replay(other, settings=kafka_settings, speedup=0).run()
    assert Replay(other, settings=kafka_settings, speedup=0, reset=True).run().rows_sent == 500


def test_kill_9_and_restart_yields_exactly_the_file(kafka_settings: Settings, tmp_path: Path) -> None:
    log = make_log(tmp_path / "log.parquet", rows=30_000, spacing_s=0.5)
    env = {
        **os.environ,
        "WORKBENCH_HOME": str(kafka_settings.home),
        "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "WORKBENCH_TOPIC_QUERY_EVENTS": kafka_settings.topic_query_events,
        "WORKBENCH_TOPIC_DEAD_LETTER": kafka_settings.topic_dead_letter,
        "WORKBENCH_TOPIC_REPLAY_CONTROL": kafka_settings.topic_replay_control,
        "WORKBENCH_TOPIC_REPLAY_STATE": kafka_settings.topic_replay_state,
    }
    # one query per message (not the packed default), so the messages count the rows
    command = [sys.executable, "-m", "workbench.cli", "replay", str(log), "--speedup", "3600",
               "--batch-size", "300", "--encoding", "json", "--quiet"]
    controller = ReplayController(kafka_settings)
    for _ in range(2):  # killed twice mid-run
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seen = (controller.status() or _none).next_row
        _wait(lambda seen=seen: (controller.status() or _none).next_row > seen + 1000, timeout=60)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    status = controller.status()
    assert 0 < status.next_row < 30_000
    finished = subprocess.run([*command[:-1], "--speedup", "max", "--quiet"], env=env, capture_output=True,
                              text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    messages = consume_all(kafka_settings, kafka_settings.topic_query_events, expected=30_000, idle=5)
    assert len(messages) == 30_000
    assert _ids(messages) == _file_ids(log)


def test_an_unsorted_file_is_refused_before_the_first_message(kafka_settings: Settings, tmp_path: Path) -> None:
    from workbench.data.exceptions import DataValidationError

    log = make_log(tmp_path / "log.parquet", rows=100)
    table = pq.read_table(log)
    shuffled = table.take(list(range(50, 100)) + list(range(50)))
    pq.write_table(shuffled, tmp_path / "unsorted.parquet")
    with pytest.raises(DataValidationError, match="row 50"):
        Replay(tmp_path / "unsorted.parquet", settings=kafka_settings, speedup=0).run()
    from confluent_kafka.admin import AdminClient

    topics = AdminClient(kafka_settings.kafka_client_config()).list_topics(timeout=10).topics
    if kafka_settings.topic_query_events in topics:
        assert consume_all(kafka_settings, kafka_settings.topic_query_events, idle=1.5) == []


def test_packed_runs_respect_size_and_event_time_span() -> None:
    from workbench.replay._replay import _runs

    indices = np.arange(10)
    times = np.array([0, 10, 20, 30, 100, 110, 120, 130, 140, 150]) * 1_000_000
    runs = _runs(indices, times, size=3, span_us=60 * 1_000_000)
    assert [r.tolist() for r in runs] == [[0, 1, 2], [3], [4, 5, 6], [7, 8, 9]]
    assert sum(len(r) for r in runs) == 10


def test_a_row_that_cannot_be_encoded_goes_to_dead_letters_and_the_rest_flows(
        kafka_settings: Settings, tmp_path: Path) -> None:
    import pyarrow as pa

    from workbench.data.exceptions import DataValidationError

    log = make_log(tmp_path / "log.parquet", rows=200)
    table = pq.read_table(log)
    # Year 10000: a valid int64 timestamp that no Python datetime (hence no JSON encoder) can hold.
    times = table.column("arrival_timestamp").cast(pa.int64()).to_pylist()
    times[100] = 253_402_300_800_000_000
    table = table.set_column(table.schema.get_field_index("arrival_timestamp"), "arrival_timestamp",
                             pa.array(times, pa.int64()).cast(pa.timestamp("us", tz="UTC")))
    pq.write_table(table, tmp_path / "bad.parquet")
    with pytest.raises(DataValidationError, match="at row 100, arrival_timestamp: .* is outside 1970-01-01"):
        Replay(tmp_path / "bad.parquet", settings=kafka_settings, speedup=0).run()
    # Without validation the row is caught by the same row rules and sent to dead letters.
    status = Replay(tmp_path / "bad.parquet", settings=kafka_settings, speedup=0, validate=False).run()
    assert status.state == "finished" and status.dead_letters == 1
    assert len(consume_all(kafka_settings, kafka_settings.topic_query_events, expected=199)) == 199
    dead = consume_all(kafka_settings, kafka_settings.topic_dead_letter, expected=1)
    assert len(dead) == 1
    assert codec.header(dead[0].headers(), "row") == "100"
    reason = codec.header(dead[0].headers(), "reason")
    assert reason.startswith("timestamp_out_of_range: arrival_timestamp: ")
    assert "is outside 1970-01-01 .. 2262-04-10" in reason
    assert str(table.column("query_id")[100].as_py()) in dead[0].value().decode()


@pytest.mark.parametrize("pack", [1, 100])
def test_a_row_too_large_for_one_message_is_dead_lettered_and_large_packs_are_split(
        kafka_settings: Settings, tmp_path: Path, pack: int) -> None:
    import orjson
    import pyarrow as pa

    from workbench.replay._replay import MAX_VALUE_BYTES

    log = make_log(tmp_path / "log.parquet", rows=400, instances=2)
    table = pq.read_table(log)
    # 40 kB of table ids per query (100 of them are 4 MB: a pack must be split), one query of 1.3 MB
    ids = [",".join(["12345"] * 6_700)] * table.num_rows
    ids[150] = ",".join(str(i) for i in range(200_000))
    table = table.set_column(table.schema.get_field_index("read_table_ids"), "read_table_ids", pa.array(ids))
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=100)
    status = Replay(tmp_path / "big.parquet", settings=kafka_settings, speedup=0, pack=pack).run()
    assert status.state == "finished" and status.dead_letters == 1
    messages = consume_all(kafka_settings, kafka_settings.topic_query_events, idle=2)
    expected = _file_ids(tmp_path / "big.parquet")
    del expected[(table.column("instance_id")[150].as_py(), table.column("query_id")[150].as_py())]
    assert _ids(messages) == expected  # every other row, once
    assert max(len(m.value()) for m in messages) <= MAX_VALUE_BYTES
    if pack > 1:
        assert all(int(codec.header(m.headers(), "rows")) < 30 for m in messages)
    dead = consume_all(kafka_settings, kafka_settings.topic_dead_letter, expected=1)
    assert len(dead) == 1 and codec.header(dead[0].headers(), "row") == "150"
    assert codec.header(dead[0].headers(), "reason").startswith("too_large: row too large for one Kafka message: ")
    letter = orjson.loads(dead[0].value())
    assert letter["columns"]["query_id"] == [str(table.column("query_id")[150].as_py())]
    assert letter["truncated_columns"] == {"read_table_ids": f"first 16,384 of {len(ids[150]):,} characters"}


def test_a_log_written_a_row_per_row_group_is_read_in_full_batches(tmp_path: Path) -> None:
    """A streaming writer's file (a few rows per row group) gives the same rows in batches, from any row."""
    import pyarrow as pa

    from workbench.replay._source import LogFile

    table = pq.read_table(make_log(tmp_path / "log.parquet", rows=3000, row_group_size=3000))
    tiny = tmp_path / "tiny.parquet"
    with pq.ParquetWriter(tiny, table.schema) as writer:  # 1000 rows in one group, then a row per group
        writer.write_table(table.slice(0, 1000))
        writer.write_table(table.slice(1000), row_group_size=1)
    log = LogFile(tiny)
    for start in (0, 999, 1000, 2345):
        batches = list(log.batches(start, batch_size=512))
        assert [first for first, _ in batches] == [start + sum(b.num_rows for _, b in batches[:i])
                                                   for i in range(len(batches))]
        assert pa.Table.from_batches([b for _, b in batches]).equals(table.slice(start).select(
            batches[0][1].schema.names))
        assert len(batches) <= -(-(1000 - min(start, 1000)) // 512) + -(-(3000 - max(start, 1000)) // 512) + 1


def test_replay_command_names_a_bad_file_before_waiting_for_the_broker(tmp_path: Path) -> None:
    """With no broker up, `workbench replay BAD` waited out the 90 s start-up deadline, then spoke of Kafka
    (for a bad row, until the rows were checked before the broker too)."""
    not_parquet = tmp_path / "notes.parquet"
    not_parquet.write_text("not parquet")
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"query_id": [1]}), plain)
    table = pq.read_table(make_log(tmp_path / "log.parquet", rows=300))
    durations = table.column("execution_duration_ms").to_pylist()
    durations[7] = -1
    bad_row = tmp_path / "bad_row.parquet"  # its columns are fine: only the check of every row finds it
    pq.write_table(table.set_column(table.schema.get_field_index("execution_duration_ms"), "execution_duration_ms",
                                    pa.array(durations, table.schema.field("execution_duration_ms").type)), bad_row)
    env = {**os.environ, "WORKBENCH_HOME": str(tmp_path / "home"), "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    for log, said in ((tmp_path / "absent.parquet", "does not exist"), (not_parquet, "not a readable Parquet"),
                      (plain, "lacks 23 of the 24 required Redset"), (bad_row, "row 7, execution_duration_ms")):
        done = subprocess.run([sys.executable, "-m", "workbench.cli", "replay", str(log)], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and said in done.stderr and str(log.name) in done.stderr, done.stderr
        assert "Kafka" not in done.stderr, done.stderr


def test_a_refused_log_shows_no_progress_bar_before_its_error(kafka_settings: Settings, tmp_path: Path) -> None:
    """`workbench replay` drew an empty "0.00rows" bar, then refused the file (its rows are checked once
    the broker answers): the bar now appears with the replay's first progress, and a good log shows it."""
    log = make_log(tmp_path / "log.parquet", rows=300)
    table = pq.read_table(log)
    bad = tmp_path / "bad.parquet"
    durations = table.column("execution_duration_ms").to_pylist()
    durations[7] = -1
    pq.write_table(table.set_column(table.schema.get_field_index("execution_duration_ms"), "execution_duration_ms",
                                    pa.array(durations, table.schema.field("execution_duration_ms").type)), bad)
    env = {**os.environ, **kafka_settings.to_env()}
    refused = subprocess.run([sys.executable, "-m", "workbench.cli", "replay", str(bad), "--speedup", "0"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "row 7, execution_duration_ms" in refused.stderr, refused.stderr
    assert "rows [" not in refused.stderr and "rows/s" not in refused.stderr, refused.stderr
    done = subprocess.run([sys.executable, "-m", "workbench.cli", "replay", str(log), "--speedup", "0"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "300/300" in done.stderr, done.stderr


def test_a_foreground_replay_stopped_by_ctrl_c_exits_130(kafka_settings: Settings, tmp_path: Path) -> None:
    """It saved its position and said 0, as if the log had been replayed to its end."""
    log = make_log(tmp_path / "log.parquet", rows=20_000, spacing_s=1.0)
    env = {**os.environ, "WORKBENCH_HOME": str(kafka_settings.home),
           "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
           **{f"WORKBENCH_TOPIC_{name.upper()}": getattr(kafka_settings, f"topic_{name}")
              for name in ("query_events", "dead_letter", "replay_control", "replay_state")}}
    process = subprocess.Popen([sys.executable, "-m", "workbench.cli", "replay", str(log), "--speedup", "60",
                                "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    controller = ReplayController(kafka_settings)
    _wait(lambda: (controller.status() or _none).state == "running", timeout=60)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "[stopped]" in out or "stopped" in out


def _after_the_first_batch(change: Callable[[], None]) -> Callable[[BatchReport], None]:
    """A replay observer that changes the cluster under the replay once its first batch went through."""
    def observe(report: BatchReport) -> None:
        if report.first_row == 0:
            change()
            time.sleep(1.0)

    return observe


def test_a_topic_that_refuses_the_replays_batches_mid_run_is_named_not_retried(kafka_settings: Settings,
                                                                               tmp_path: Path) -> None:
    """A topic whose max.message.bytes was lowered under a running replay: it retried the batch 5 times and
    exited on "Local: Erroneous state", the producer's state after the first failure, which named nothing."""
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

    from workbench.broker import ensure_topics

    settings = kafka_settings
    ensure_topics(settings)
    log = make_log(tmp_path / "log.parquet", rows=400, spacing_s=60.0)
    admin = AdminClient(settings.kafka_client_config())

    def lower_the_limit() -> None:
        resource = ConfigResource("topic", settings.topic_query_events, incremental_configs=[
            ConfigEntry("max.message.bytes", "1000", incremental_operation=AlterConfigOpType.SET)])
        admin.incremental_alter_configs([resource])[resource].result(30)

    started = time.monotonic()
    with pytest.raises(ReplayError, match=r"cannot write to Kafka: .*Message size too large.*The topic refuses"):
        Replay(log, settings=settings, speedup=3000, pack=100, observer=_after_the_first_batch(lower_the_limit)).run()
    assert time.monotonic() - started < 60  # not five rounds of retries with back-off


def test_a_replay_state_topic_deleted_mid_run_is_made_again_and_the_replay_goes_on_from_its_row(
        kafka_settings: Settings, tmp_path: Path) -> None:
    """Tester A (32nd session, F7): the replay-state topic deleted under a running replay hung it ~90 s, then
    it died with a traceback and its restart, finding no saved position, sent the log again from row 0."""
    from confluent_kafka.admin import AdminClient

    from workbench.broker import ensure_topics

    settings = kafka_settings
    ensure_topics(settings)
    log = make_log(tmp_path / "log.parquet", rows=400, spacing_s=60.0)
    admin = AdminClient(settings.kafka_client_config())

    def delete_the_state_topic() -> None:
        for future in admin.delete_topics([settings.topic_replay_state], operation_timeout=30).values():
            future.result(30)

    started = time.monotonic()
    observer = _after_the_first_batch(delete_the_state_topic)
    status = Replay(log, settings=settings, speedup=3000, pack=1, observer=observer).run()
    took = time.monotonic() - started
    assert status.state == "finished" and status.rows_sent == 400, status
    assert len(consume_all(settings, settings.topic_query_events, to_end=True)) == 400  # each row once
    again = Replay(log, settings=settings, speedup=0, pack=1).run()  # the position was saved again: nothing to send
    assert again.rows_sent == 0, again
    assert took < 60, took


def test_a_log_dated_in_the_future_is_replayed_whole(kafka_settings: Settings, tmp_path: Path) -> None:
    """A log dated a year past the machine's clock (synthetic data, or local times read as UTC): the broker
    refused every batch ("Invalid timestamp") and the replay restarted for good (tester A, 33rd session)."""
    import datetime as dt

    start = (dt.datetime.now(dt.UTC) + dt.timedelta(days=400)).strftime("%Y-%m-%dT00:00:00")
    log = make_log(tmp_path / "future.parquet", rows=300, spacing_s=60.0, start=start)
    status = Replay(log, settings=kafka_settings, speedup=0, pack=1).run(timeout=120)
    assert status.state == "finished" and status.rows_sent == 300, status
    assert len(consume_all(kafka_settings, kafka_settings.topic_query_events, to_end=True)) == 300


def test_two_deployments_on_one_cluster_do_not_fence_each_others_replay(kafka_settings: Settings,
                                                                          tmp_path: Path) -> None:
    """Tester A, 34th session: two deployments with their own topics and consumer-group prefix (as the README
    says) fenced each other's replay under the one transactional id workbench-replay-default, in turn."""
    import threading

    from tests.conftest import isolated_settings
    from workbench.replay._replay import replay_transactional_id

    other = isolated_settings(kafka_settings, tmp_path / "other")
    assert replay_transactional_id(kafka_settings, "default") != replay_transactional_id(other, "default")
    assert replay_transactional_id(Settings(home=tmp_path / "x"), "default") == "workbench-replay-default"
    log = make_log(tmp_path / "log.parquet", rows=3000, spacing_s=1.0)
    results: dict[str, object] = {}

    def run(name: str, settings: Settings) -> None:
        try:  # 3,000 s of log at 1,000x: both run for seconds, side by side
            results[name] = Replay(log, settings=settings, speedup=1000, batch_size=100, pack=1).run()
        except Exception as exc:  # the fenced one failed here
            results[name] = exc

    threads = [threading.Thread(target=run, args=(name, s)) for name, s in (("a", kafka_settings), ("b", other))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert all(getattr(results.get(n), "state", None) == "finished" for n in "ab"), results
    for settings in (kafka_settings, other):
        assert len(consume_all(settings, settings.topic_query_events, expected=3000, idle=3)) == 3000


def test_ending_a_failed_transaction_resumes_a_pending_commit_and_waits_between_aborts(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A commit that timed out may finish in the background: librdkafka then refuses every abort at once
    ("Conflicting commit_transaction API call is already in progress"), and the abort loop spun at full CPU with a
    warning per call (a review of the 34th session: 129,912 lines in 2 s). The commit is resumed instead, and
    its success means the batch is committed (sent again, its rows would be twice on the topic)."""
    from types import SimpleNamespace

    from confluent_kafka import KafkaError, KafkaException

    from workbench.replay import _replay

    def failure(code: int, reason: str, **flags: bool) -> KafkaException:
        return KafkaException(KafkaError(code, reason, **flags))

    class Producer:
        def __init__(self, aborts: list, commits: list) -> None:
            self.aborts, self.commits, self.calls = aborts, commits, []

        def abort_transaction(self, timeout: float) -> None:
            self.calls.append("abort")
            if self.aborts:
                raise self.aborts.pop(0)

        def commit_transaction(self, timeout: float) -> None:
            self.calls.append("commit")
            if self.commits:
                raise self.commits.pop(0)

    sleeps: list[float] = []
    monkeypatch.setattr(_replay.time, "sleep", sleeps.append)
    run = _replay._ReplayRun.__new__(_replay._ReplayRun)
    run.replay = SimpleNamespace(replay_id="default")
    pending = failure(KafkaError._CONFLICT, "Conflicting commit_transaction API call is already in progress",
                      retriable=True)
    run.producer = Producer([pending], [])
    assert run._abort() is True and run.producer.calls == ["abort", "commit"]  # committed after all
    timed_out = failure(KafkaError._TIMED_OUT, "Timed out waiting for operation to finish", retriable=True)
    run.producer = Producer([timed_out, timed_out, timed_out], [])
    assert run._abort() is False and run.producer.calls == ["abort"] * 4
    assert sleeps == [1.0, 1.0, 1.0] and caplog.text.count("ending the failed batch waits for Kafka") == 1
    run.producer = Producer([failure(KafkaError._FENCED, "fenced", fatal=True)], [])
    with pytest.raises(ReplayError, match="cannot end a failed transaction: fenced"):
        run._abort()
