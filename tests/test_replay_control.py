"""The replay's unhappy paths on the real broker: malformed commands, forged positions, restarts,
commit timeouts, commands sent early, a finished replay that keeps listening, pacing after a pause
while behind schedule, and files with bad rows."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer

from tests.helpers import consume_all, make_log
from tests.test_replay import FakeClock, _file_ids, _ids, _none, _wait
from workbench.broker import ensure_topics
from workbench.config import Settings
from workbench.data import codec
from workbench.data.exceptions import DataValidationError
from workbench.replay import BatchReport, Pacer, Replay, ReplayController, ReplayStatus
from workbench.replay._control import MAX_SPEEDUP, latest_state_value
from workbench.replay.exceptions import ReplayError


def _send_raw(settings: Settings, records: list[bytes | None], key: bytes = b"default") -> None:
    producer = Producer(settings.kafka_client_config())
    for value in records:
        producer.produce(settings.topic_replay_control, key=key, value=value)
    assert producer.flush(10) == 0


def _command(command: object, value: object = None, replay_id: object = "default") -> bytes:
    return orjson.dumps({"replay_id": replay_id, "command": command, "value": value, "issued_at": 1.0})


def test_malformed_commands_are_logged_with_a_reason_and_never_stop_the_replay(
        kafka_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = make_log(tmp_path / "log.parquet", rows=20_000, spacing_s=1.0)
    replay = Replay(log, settings=kafka_settings, speedup=600).start()
    bad = {
        None: "a tombstone (no value) is not a command",
        b"not json": "not JSON",
        b"[1, 2]": "a command is a JSON object, not list",
        b'{"replay_id": "default", "command": "x", "value": NaN}': "not JSON",
        _command("explode"): "unknown command 'explode'",
        _command("pause", replay_id=5): "replay_id must be a non-empty string, got 5",
        _command("seek", "yesterday"): "seek needs an ISO-8601 date-time such as",
        _command("seek", 12): "seek needs an ISO-8601 date-time string, got 12",
        _command("seek", "9999-12-31T00:00:00"): "seek needs a date-time between 1970-01-01 and 2262-04-10",
        _command("set_speed", -5): "The speedup must be between 0.01 and 1,000,000",
        _command("set_speed", "nan"): "Got 'nan' instead",
        _command("set_speed", "inf"): "Got 'inf' instead",
        _command("set_speed", 1e12): "Got 1000000000000.0 instead",
        _command("set_speed", 1e-9): "Got 1e-09 instead",
        _command("set_speed", True): "The speedup must be a number or 'max'. Got True instead",
        _command("set_speed", [600]): "Got [600] instead",
    }
    try:
        _wait(lambda: (replay.status() or _none).next_row > 0)
        with caplog.at_level(logging.WARNING, logger="workbench.replay"):
            _send_raw(kafka_settings, list(bad))
            _send_raw(kafka_settings, [_command("pause", replay_id="another-replay")])  # not ours: no effect
            _wait(lambda: "Got [600] instead" in (replay.status().notice or ""))
        warnings = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
        for reason in bad.values():
            assert reason in warnings
        status = replay.status()
        assert status.state == "running" and status.speedup == 600
        # Still steerable: a good command after the bad ones applies.
        ReplayController(kafka_settings).pause()
        _wait(lambda: replay.status().state == "paused")
    finally:
        replay.stop()
        replay.join(10)
    assert replay.error is None


def test_a_forged_position_record_cannot_move_the_resume_point(kafka_settings: Settings, tmp_path: Path) -> None:
    log = make_log(tmp_path / "log.parquet", rows=1000)
    assert Replay(log, settings=kafka_settings, speedup=0).run().next_row == 1000
    real = orjson.loads(latest_state_value(kafka_settings, "default/position", committed=True))
    forged_plain = {k: v for k, v in real.items() if k != "mac"} | {"next_row": 10}
    forged_mac = real | {"next_row": 10}  # the real MAC over other content
    producer = Producer(kafka_settings.kafka_client_config())  # not transactional
    for value in (orjson.dumps(forged_plain), orjson.dumps(forged_mac), b"garbage", None):
        producer.produce(kafka_settings.topic_replay_state, key=b"default/position", value=value)
    assert producer.flush(10) == 0
    again = Replay(log, settings=kafka_settings, speedup=0).run()
    assert again.rows_sent == 0 and again.next_row == 1000
    assert len(consume_all(kafka_settings, kafka_settings.topic_query_events, expected=1000, idle=2)) == 1000


def test_reset_with_a_run_token_resumes_its_own_run_and_resets_a_new_one(
        kafka_settings: Settings, tmp_path: Path) -> None:
    log = make_log(tmp_path / "log.parquet", rows=3000, spacing_s=1.0)
    assert Replay(log, settings=kafka_settings, speedup=0).run().next_row == 3000  # an earlier run
    clock = FakeClock()
    # A new run with --reset: position 0 is committed before any row, then it stops part-way.
    first = Replay(log, settings=kafka_settings, speedup=600, reset=True, run_token="run-b", clock=clock,
                   batch_size=500)
    status = first.run(timeout=2.0)
    assert status.state == "stopped" and 0 < status.next_row < 3000
    # The supervisor restarts it with the same arguments: it resumes, it does not reset again.
    restarted = Replay(log, settings=kafka_settings, speedup=0, reset=True, run_token="run-b").run()
    assert restarted.rows_sent == 3000 - status.next_row and restarted.next_row == 3000
    # A different run token with --reset starts from the first row.
    assert Replay(log, settings=kafka_settings, speedup=0, reset=True, run_token="run-c").run().rows_sent == 3000
    messages = consume_all(kafka_settings, kafka_settings.topic_query_events, expected=9000, idle=3)
    counts = _ids(messages)
    assert set(counts.values()) == {3}  # run a, run b (split by a restart), run c: each row once per run


def test_a_commit_that_times_out_is_resumed_and_nothing_is_lost_or_repeated(
        kafka_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = make_log(tmp_path / "log.parquet", rows=2000)
    with caplog.at_level(logging.WARNING, logger="workbench.replay"):
        status = Replay(log, settings=kafka_settings, speedup=0, batch_size=400, commit_timeout=1e-6).run()
    assert any("commit did not finish within" in r.getMessage() for r in caplog.records)  # the path ran
    assert status.state == "finished" and status.next_row == 2000
    messages = consume_all(kafka_settings, kafka_settings.topic_query_events, expected=2000, idle=3)
    assert _ids(messages) == _file_ids(log)


def test_a_commit_refused_while_it_is_still_under_way_is_resumed_and_other_refusals_are_not() -> None:
    """CI (37th session): the resumed commit of the test above read "Operation not valid in state BeginCommit"
    (the first phase's late reply), and the replay failed. Such a refusal is resumed again; others stand."""
    from confluent_kafka import KafkaError, KafkaException

    from workbench.replay._replay import _commit_under_way

    def refusal(text: str, **flags: bool) -> KafkaException:
        return KafkaException(KafkaError(KafkaError._STATE, text, **flags))

    assert _commit_under_way(refusal("Operation not valid in state BeginCommit"))
    assert _commit_under_way(refusal("Operation not valid in state CommittingTransaction"))
    assert not _commit_under_way(refusal("Operation not valid in state Ready"))
    assert not _commit_under_way(refusal("Operation not valid in state BeginCommit", fatal=True))
    assert not _commit_under_way(KafkaException(KafkaError(KafkaError._TIMED_OUT, "in state BeginCommit")))


def test_commands_sent_before_the_replay_listens_are_applied(kafka_settings: Settings, tmp_path: Path) -> None:
    log = make_log(tmp_path / "log.parquet", rows=5000, spacing_s=1.0)
    ensure_topics(kafka_settings)  # as `workbench start` does before it starts the replay
    replay = Replay(log, settings=kafka_settings, speedup=600)
    controller = ReplayController(kafka_settings)
    controller.set_speed(60)
    controller.pause()  # sent before the replay runs at all
    replay.start()
    try:
        _wait(lambda: (replay.status() or _none).state == "paused")
        assert replay.status().speedup == 60
        assert replay.status().rows_sent == 0  # read before the first row (not once the first fetch came back)
    finally:
        replay.stop()
        replay.join(10)


def test_a_finished_replay_listens_for_seek_and_reset_and_rejects_pause(
        kafka_settings: Settings, tmp_path: Path) -> None:
    log = make_log(tmp_path / "log.parquet", rows=1000, spacing_s=2.0)
    replay = Replay(log, settings=kafka_settings, speedup=0, linger=True).start()
    controller = ReplayController(kafka_settings)
    try:
        _wait(lambda: (replay.status() or _none).state == "finished")
        status = replay.status()
        assert status.listening and status.next_row == 1000
        assert status.controls == ("set_speed", "seek", "reset", "stop")
        _wait(lambda: (controller.status() or _none).state == "finished")  # other processes see it too
        replay.pause()
        _wait(lambda: "pause ignored" in (replay.status().notice or ""))
        assert replay.status().notice == ("pause ignored: replay 'default' finished at row 1,000 of 1,000; "
                                          "seek or reset to replay again")
        replay.set_speed(0)  # taken for the next course (still max here, so the test stays fast)
        # a command that applied replaces the ignored one's notice (it stayed for good: tester B, 33rd session)
        _wait(lambda: replay.status().notice is None)
        sent = time.time()
        assert (controller.status().applied_command_at or 0.0) < sent
        controller.seek("2024-03-04T00:30:00")  # row 900 (rows 2 s apart)
        _wait(lambda: replay.status().state == "finished" and replay.status().rows_sent == 1100)
        # the status says which command it follows (Workbench.wait after a seek or reset waits for it)
        _wait(lambda: (controller.status().applied_command_at or 0.0) >= sent)
        replay.reset_position()
        _wait(lambda: replay.status().state == "finished" and replay.status().rows_sent == 2100)
    finally:
        replay.stop()
        replay.join(10)
    assert replay.status().state == "stopped"
    messages = consume_all(kafka_settings, kafka_settings.topic_query_events, expected=2100, idle=3)
    counts = _ids(messages)
    assert sum(counts.values()) == 2100 and max(counts.values()) == 3


def test_a_speed_set_on_a_finished_replay_paces_the_next_course(kafka_settings: Settings, tmp_path: Path) -> None:
    # A replay that finished at max is not stuck there: the speed set after the end paces the reset.
    log = make_log(tmp_path / "log.parquet", rows=1000, spacing_s=2.0)  # 2,000 s of event time
    replay = Replay(log, settings=kafka_settings, speedup=0, linger=True).start()
    try:
        _wait(lambda: (replay.status() or _none).state == "finished")
        replay.set_speed(60)
        _wait(lambda: replay.status().speedup == 60)
        assert replay.status().state == "finished" and not replay.status().notice
        replay.reset_position()
        _wait(lambda: replay.status().state == "running" and replay.status().next_row < 1000)
        time.sleep(2.0)
        status = replay.status()
        # At 60x, 2 s of wall time is ~120 s of event time: ~60 rows, far from the 1,000 at max.
        assert status.state == "running" and status.speedup == 60 and status.next_row < 300
    finally:
        replay.stop()
        replay.join(10)


def test_a_seek_past_the_end_is_refused_by_the_controller_and_shows_the_last_rows_time_in_the_replay(
        kafka_settings: Settings, tmp_path: Path) -> None:
    """`workbench replay-control seek 2099-01-01` said "sent" and the replay skipped the rest of its log: the
    controller (CLI, ``wb.seek``, the panel) refuses it naming the span; the replay itself still takes one."""
    log = make_log(tmp_path / "log.parquet", rows=200, spacing_s=2.0)  # 00:00:00 to 00:06:38
    replay = Replay(log, settings=kafka_settings, speedup=1, linger=True).start()
    controller = ReplayController(kafka_settings)
    try:
        _wait(lambda: (controller.status() or _none).state == "running")
        with pytest.raises(ReplayError, match=r"seek not sent: 2099-01-01 00:00:00 UTC is after the log's last "
                                              r"event \(2024-03-04 00:06:38 UTC\); pick a time from 2024-03-04 "
                                              r"00:00:\d\d to 2024-03-04 00:06:38 UTC"):
            controller.seek("2099-01-01")
        controller.seek("2024-03-04T00:06:00")  # inside the span: sent
        _wait(lambda: replay.status().next_row >= 180)
        replay.pause()
        _wait(lambda: replay.status().state == "paused")
        replay.seek("2030-01-01T00:00:00")
        _wait(lambda: replay.status().next_row == 200)
        status = replay.status()
        assert status.event_time == datetime(2024, 3, 4, 0, 6, 38, tzinfo=UTC), status
    finally:
        replay.stop()
        replay.join(10)


def test_pacer_reanchors_at_the_next_unsent_row_when_behind() -> None:
    pacer = Pacer(3600)
    pacer.anchor(0, now=0.0)
    # 10 wall seconds later the schedule is at 36,000 event s, but the next unsent row is at 5,000 s.
    assert pacer.behind_us(10.0, 5_000_000_000) == 31_000_000_000
    pacer.pause(now=10.0, next_event_us=5_000_000_000)
    pacer.set_speed(600, now=20.0, next_event_us=5_000_000_000)
    pacer.resume(now=30.0)
    assert pacer.event_clock(30.0) == 5_000_000_000  # no jump to where the old schedule was
    assert pacer.event_clock(31.0) == 5_600_000_000  # the new speed from that row on
    # On time (the next row lies ahead of the schedule) the change keeps the schedule's clock.
    pacer.set_speed(60, now=31.0, next_event_us=9_000_000_000)
    assert pacer.event_clock(32.0) == 5_660_000_000


def _slope(points: list[tuple[float, float]]) -> float:
    walls = np.array([p[0] for p in points])
    events = np.array([p[1] for p in points])
    return float(np.polyfit(walls, events, 1)[0])


def test_paused_while_behind_and_resumed_slower_holds_the_new_speed_fake_clock(
        kafka_settings: Settings, tmp_path: Path) -> None:
    log = make_log(tmp_path / "log.parquet", rows=20_000, spacing_s=1.0)
    clock = FakeClock()
    reports: list[BatchReport] = []
    statuses: list = []
    replay: Replay

    def observe(report: BatchReport) -> None:
        reports.append(report)
        if replay.speedup == 3600:
            clock.now += 2.0  # a slow pipeline: 500 rows take 2 s, far behind 3600x
            if len(reports) == 4:
                replay.pause()
        if len(reports) > 40:
            replay.stop()

    def progress(status) -> None:
        statuses.append(status)
        if status.state == "paused" and replay.speedup == 3600:
            clock.now += 30.0
            replay.set_speed(600)
            replay.resume()

    replay = Replay(log, settings=kafka_settings, speedup=3600, clock=clock, observer=observe, batch_size=500)
    replay.run(progress=progress)
    behind = [s for s in statuses if s.speedup == 3600 and s.state == "running" and s.next_row > 0]
    assert behind and behind[-1].behind and behind[-1].behind_seconds > 3600
    # ETA from the measured rate (250 rows/s), not from the schedule (which says a few seconds).
    assert behind[-1].eta_seconds > (20_000 - behind[-1].next_row) / 300
    after = [r for r in reports if r.speedup == 600]
    assert len(after) > 20
    assert _slope([(r.wall_time, r.last_event_us / 1e6) for r in after]) == pytest.approx(600, rel=0.1)
    first_after = after[0]
    resumed = max(r.last_event_us for r in reports if r.speedup == 3600)
    # The first batch after the resume starts at the next unsent row, not at the old schedule.
    assert first_after.first_event_us - resumed <= 1_000_000 * 600


def test_a_command_is_in_the_published_status_one_tick_after_it_applies(kafka_settings: Settings,
                                                                        tmp_path: Path) -> None:
    # Statuses are published at most once a second; a command's effect skips that wait. Without it
    # a pause showed in the panel up to a second late (before the status read itself).
    log = make_log(tmp_path / "log.parquet", rows=2_000, spacing_s=1.0)
    clock = FakeClock()
    seen: dict[str, object] = {}
    replay: Replay

    def progress(status: ReplayStatus) -> None:
        if "paused_at" not in seen and status.state == "running" and status.rows_sent == 0:
            seen["paused_at"] = clock.now  # right at the loop's first (forced) publish
            replay.pause()
        elif ("paused_at" in seen and status.state == "paused" and "published" not in seen
              and clock.now > seen["paused_at"]):  # the publish after the one that carried the pause
            seen["published"] = ReplayStatus.from_json(latest_state_value(kafka_settings, "default/status"))
            seen["elapsed"] = clock.now - seen["paused_at"]
            replay.stop()

    replay = Replay(log, settings=kafka_settings, speedup=60, clock=clock)
    replay.run(progress=progress)
    assert seen["elapsed"] < 1.0, seen
    published = seen["published"]
    assert published.state == "paused" and published.rows_sent == 0, published


def test_a_long_pause_at_max_speed_does_not_turn_the_eta_into_years(kafka_settings: Settings,
                                                                    tmp_path: Path) -> None:
    # The recent rate decayed toward 0 over a pause, and at max speed the ETA is the rows left over
    # it: after Pause, a minute, Play, the panel read an ETA of years for the first seconds.
    log = make_log(tmp_path / "log.parquet", rows=40_000, spacing_s=1.0)
    clock = FakeClock()
    seen: dict[str, object] = {"batches": 0, "paused": 0}
    replay: Replay

    def observe(report: BatchReport) -> None:
        clock.now += 0.1  # 500 rows a tenth of a second: 5,000 rows/s
        seen["batches"] += 1
        if seen["batches"] == 30:
            replay.pause()

    def progress(status: ReplayStatus) -> None:
        if status.state == "paused":
            clock.now += 5.0
            seen["paused"] += 1
            if seen["paused"] == 30:  # 150 s paused
                replay.resume()
                seen["resumed_at"] = status.next_row
        elif "resumed_at" in seen and status.state == "running" and "eta" not in seen:
            seen["eta"], seen["rows_left"] = status.eta_seconds, status.rows_total - status.next_row
            replay.stop()

    replay = Replay(log, settings=kafka_settings, speedup="max", clock=clock, observer=observe, batch_size=500)
    replay.run(progress=progress)
    assert seen["eta"] is not None and seen["eta"] <= 2 * seen["rows_left"] / 5_000, seen


def test_after_a_speed_change_or_a_reset_the_rates_are_the_new_courses(kafka_settings: Settings,
                                                                       tmp_path: Path) -> None:
    # The panel's "rows/s now" blended the old speed's rate into the new one's for seconds, and its
    # average spanned every earlier pass at every earlier speed after a seek or a reset.
    log = make_log(tmp_path / "log.parquet", rows=40_000, spacing_s=1.0)
    clock = FakeClock()  # moves only while the pacer sleeps: exactly the scheduled rate
    seen: dict[str, object] = {"batches": 0}
    replay: Replay

    def observe(report: BatchReport) -> None:
        seen["batches"] += 1
        if seen["batches"] == 20:  # 10 s at 1,000 rows/s
            replay.set_speed(4000)
            seen["changed"] = True

    def progress(status: ReplayStatus) -> None:
        applied = seen.get("changed") and status.speedup == 4000
        if applied and "first_rate" not in seen and status.rate_now > 0:
            seen["first_rate"] = status.rate_now
            replay.reset_position()
            seen["reset_at"] = clock.now
        elif "reset_at" in seen and clock.now - seen["reset_at"] >= 3.0 and status.state == "running":
            seen["avg"] = status.rate_avg
            replay.stop()

    replay = Replay(log, settings=kafka_settings, speedup=1000, clock=clock, observer=observe, batch_size=500)
    replay.run(progress=progress)
    assert abs(seen["first_rate"] - 4000) <= 600, seen  # 2,500 blended with the old speed's
    assert abs(seen["avg"] - 4000) <= 600, seen  # about 2,000 over both courses


def test_paused_while_behind_and_resumed_slower_holds_the_new_speed_real_clock(
        kafka_settings: Settings, tmp_path: Path) -> None:
    log = make_log(tmp_path / "log.parquet", rows=600_000, spacing_s=1.0, row_group_size=20_000)
    # MAX_SPEEDUP asks for 1,000,000 rows/s: no JSON replay keeps up, so it falls behind. (At 100,000x,
    # 100,000 rows/s, a quiet machine's replay at ~72,000 rows/s finished 200,000 rows before its
    # deficit reached the half second that counts as behind.)
    replay = Replay(log, settings=kafka_settings, speedup=MAX_SPEEDUP, batch_size=2000).start()
    controller = ReplayController(kafka_settings)
    try:
        try:
            _wait(lambda: getattr(replay.status(), "behind", False), timeout=60)
        except AssertionError:
            raise AssertionError(f"the replay never fell behind {MAX_SPEEDUP:,.0f}x in 60 s; last status "
                                 f"{replay.status()!r}; its error {replay._error!r}") from None
        assert replay.status().behind_seconds > 50_000 and replay.status().next_row < 400_000
        controller.pause()
        _wait(lambda: replay.status().state == "paused")
        controller.set_speed(3000)
        controller.resume()
        _wait(lambda: replay.status().state == "running" and replay.status().speedup == 3000)
        samples = []
        import time

        end = time.monotonic() + 4.0
        while time.monotonic() < end:
            status = replay.status()
            # The snapshot's own wall time, not when this thread got to read it (a loaded machine
            # holds this thread back by more than the 10 % the slope may be off).
            samples.append((status.updated_at, status.event_time.timestamp()))
            time.sleep(0.1)
    finally:
        replay.stop()
        replay.join(10)
    assert _slope(sorted(set(samples))) == pytest.approx(3000, rel=0.1)


def _bad_log(tmp_path: Path) -> Path:
    table = pq.read_table(make_log(tmp_path / "good.parquet", rows=500, row_group_size=100))
    instance = table.column("instance_id").to_pylist()
    instance[10] = None
    duration = table.column("execution_duration_ms").to_pylist()
    duration[250] = -7
    users = [int(v) for v in table.column("user_id").to_pylist()]
    users[499] = 2**64 - 1
    fields = {f.name: f for f in table.schema}
    table = table.set_column(0, pa.field("instance_id", pa.int64()), pa.array(instance, pa.int64()))
    index = table.schema.get_field_index("execution_duration_ms")
    table = table.set_column(index, fields["execution_duration_ms"], pa.array(duration, pa.int64()))
    table = table.set_column(table.schema.get_field_index("user_id"), "user_id", pa.array(users, pa.uint64()))
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path, row_group_size=100)
    return path


def test_a_file_with_bad_rows_is_refused_or_replayed_with_the_bad_rows_dead_lettered(
        kafka_settings: Settings, tmp_path: Path) -> None:
    path = _bad_log(tmp_path)
    with pytest.raises(DataValidationError, match=r"3 problem\(s\) in 3 row\(s\), the first at row 10, instance_id"):
        Replay(path, settings=kafka_settings, speedup=0).run()
    status = Replay(path, settings=kafka_settings, speedup=0, skip_bad_rows=True, batch_size=64).run()
    assert status.state == "finished" and status.next_row == 500 and status.dead_letters == 3
    # A second run resumes at the end: no row and no dead letter twice.
    assert Replay(path, settings=kafka_settings, speedup=0, skip_bad_rows=True).run().rows_sent == 0
    good = _file_ids(path)
    for row in (10, 250, 499):
        table = pq.read_table(path).slice(row, 1)
        del good[(table.column("instance_id")[0].as_py(), table.column("query_id")[0].as_py())]
    messages = consume_all(kafka_settings, kafka_settings.topic_query_events, expected=497, idle=3)
    assert _ids(messages) == good
    dead = consume_all(kafka_settings, kafka_settings.topic_dead_letter, expected=3, idle=3)
    reasons = {codec.header(m.headers(), "row"): codec.header(m.headers(), "reason") for m in dead}
    assert reasons == {
        "10": "null_in_required: instance_id: NULL, but every query needs a value here",
        "250": "negative_value: execution_duration_ms: -7 is negative (durations, sizes and counts are >= 0)",
        "499": "int_out_of_range: user_id: 18446744073709551615 does not fit a signed 64-bit integer "
               "(largest 9223372036854775807)",
    }
    assert all(codec.header(m.headers(), "source") == "replay" for m in dead)
    # read back, each names its file and row (they showed as "replay None[None]@None": tester B, 33rd session)
    from workbench.pipeline import read_dead_letters

    letters = read_dead_letters(kafka_settings).select(["app", "source_topic", "source_file", "source_row"])
    assert sorted(letters.to_pylist(), key=lambda r: r["source_row"]) == [
        {"app": "replay", "source_topic": None, "source_file": str(path), "source_row": row} for row in (10, 250, 499)]


def test_a_file_whose_only_bad_values_are_labels_is_refused_or_replayed_whole(kafka_settings: Settings,
                                                                             tmp_path: Path) -> None:
    """label_anomaly 'maybe' is a row problem of validate, so the replay refuses the file as it refuses any; with
    --skip-bad-rows it loses no row to it (labels are never sent) and its kind codes stop nothing."""
    table = pq.read_table(make_log(tmp_path / "good.parquet", rows=300, row_group_size=100))
    words = ["false"] * 300
    words[42] = "maybe"
    table = table.set_column(table.schema.get_field_index("label_anomaly"), "label_anomaly", pa.array(words))
    table = table.set_column(table.schema.get_field_index("label_kind"), "label_kind", pa.array([7] * 300))
    path = tmp_path / "labels.parquet"
    pq.write_table(table, path, row_group_size=100)
    with pytest.raises(DataValidationError, match=r"the first at row 42, label_anomaly: 'maybe' is neither true nor "
                                                  r"false .* The replay never sends labels"):
        Replay(path, settings=kafka_settings, speedup=0).run()
    status = Replay(path, settings=kafka_settings, speedup=0, skip_bad_rows=True, batch_size=64).run()
    assert status.state == "finished" and status.rows_sent == 300 and status.dead_letters == 0
    messages = consume_all(kafka_settings, kafka_settings.topic_query_events, expected=300, idle=3)
    assert _ids(messages) == _file_ids(path)


def test_kill_9_of_a_paused_run_restarted_with_the_same_arguments_stays_paused_and_loses_nothing(
        kafka_settings: Settings, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    log = make_log(tmp_path / "log.parquet", rows=20_000, spacing_s=1.0)
    assert Replay(log, settings=kafka_settings, speedup=0, replay_id="default").run().next_row == 20_000  # older run
    env = {**os.environ, "WORKBENCH_HOME": str(kafka_settings.home),
           "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
           **{f"WORKBENCH_TOPIC_{name.upper()}": getattr(kafka_settings, f"topic_{name}")
              for name in ("query_events", "dead_letter", "replay_control", "replay_state")}}
    # What the supervisor runs, first start and restarts alike.
    command = [sys.executable, "-m", "workbench.cli", "replay", str(log), "--speedup", "600", "--batch-size", "500",
               "--quiet", "--reset", "--run-token", "run-7", "--linger"]
    controller = ReplayController(kafka_settings)
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: (controller.status() or _none).state == "running"
              and 1000 < controller.status().next_row < 19_000, timeout=60)
        controller.pause()
        _wait(lambda: controller.status().state == "paused")
        paused_at = controller.status().next_row
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # The restart resumes its own run (no reset to row 0), still paused, without replaying the pause.
        _wait(lambda: controller.status().updated_at > 0 and controller.status().rows_sent == 0
              and controller.status().state == "paused", timeout=60)
        assert controller.status().next_row == paused_at
        controller.set_speed("max")
        controller.resume()
        _wait(lambda: controller.status().state == "finished", timeout=120)
        controller.stop()
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    messages = consume_all(kafka_settings, kafka_settings.topic_query_events, expected=40_000, idle=5)
    assert set(_ids(messages).values()) == {2}  # the older run and this one: each row exactly once per run


def test_without_validation_a_row_that_cannot_be_converted_is_dead_lettered_not_fatal(
        kafka_settings: Settings, tmp_path: Path) -> None:
    table = pq.read_table(make_log(tmp_path / "good.parquet", rows=300))
    text = ["true" if v else "false" for v in table.column("was_cached").to_pylist()]
    text[7] = "yes"  # no boolean
    table = table.set_column(table.schema.get_field_index("was_cached"), "was_cached", pa.array(text))
    path = tmp_path / "text_bool.parquet"
    pq.write_table(table, path)
    with pytest.raises(DataValidationError, match="Column 'was_cached' .* must be boolean"):
        Replay(path, settings=kafka_settings, speedup=0).run()
    status = Replay(path, settings=kafka_settings, speedup=0, validate=False).run()
    assert status.state == "finished" and status.next_row == 300 and status.dead_letters == 1
    assert len(consume_all(kafka_settings, kafka_settings.topic_query_events, expected=299, idle=2)) == 299
    dead = consume_all(kafka_settings, kafka_settings.topic_dead_letter, expected=1, idle=2)
    assert [codec.header(m.headers(), "row") for m in dead] == ["7"]
    assert codec.header(dead[0].headers(), "reason").startswith("processing_error: cannot convert row: ")
    assert codec.header(dead[0].headers(), "app") == "replay"


def test_a_command_no_broker_takes_says_why_and_is_not_delivered_later(kafka_settings: Settings,
                                                                      capfd: pytest.CaptureFixture[str],
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    import socket

    from workbench.replay import ReplayError

    caplog.set_level(logging.DEBUG, logger="workbench.kafka.client")
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    nowhere = kafka_settings.with_overrides(kafka_bootstrap_servers=f"127.0.0.1:{port}")
    with pytest.raises(ReplayError, match=rf"'pause' command .*: not delivered in 10 s: no Kafka broker answered "
                                          rf"at 127.0.0.1:{port}, or .*Is the workbench running"):
        ReplayController(nowhere, "default").pause()
    with pytest.raises(ReplayError, match=rf"Could not read the replay state topic .* at 127.0.0.1:{port}"):
        latest_state_value(nowhere, "status/default", timeout=2.0)
    # the errors say it once; librdkafka's raw "%3|...|FAIL|" lines stay off stderr, at debug level in a logger
    assert "|FAIL|" not in capfd.readouterr().err
    assert any("Connection refused" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)
    # the broker answers but has no control topic: the same error; and once the topic exists, the
    # failed command does not arrive after all (the user was told it failed)
    missing = kafka_settings.with_overrides(topic_replay_control=f"{kafka_settings.topic_replay_control}.late")
    controller = ReplayController(missing, "default")
    with pytest.raises(ReplayError, match="'resume' command .* or it lacks the topic"):
        controller.resume()
    ensure_topics(missing)
    assert controller._producer is not None and controller._producer.flush(10) == 0
    assert consume_all(missing, missing.topic_replay_control, timeout=10) == []


def test_a_status_its_replay_stopped_publishing_says_so() -> None:
    # After a kill -9 of the whole workbench the state topic still holds "running": its age tells.
    running = ReplayStatus(replay_id="default", file="log.parquet", state="running", speedup=60.0, rows_sent=10,
                           rows_total=100, next_row=10, event_time=None, first_event_time=None,
                           last_event_time=None, rate_now=5.0, rate_avg=5.0, eta_seconds=18.0, updated_at=1000.0)
    assert running.silence(now=1005.0) is None  # published a moment ago
    assert running.silence(now=1100.0) == 100.0
    listening = replace(running, state="finished", listening=True)
    assert listening.silence(now=1100.0) == 100.0  # a listening replay reports every second too
    for done in (replace(running, state="finished"), replace(running, state="stopped")):
        assert done.silence(now=1100.0) is None  # nothing more was to come


def test_the_status_line_reads_speeds_as_the_panel_does() -> None:
    # `replay-control status` printed a 1,000,000x replay as "1e+06x"; it now uses format_speed.
    status = ReplayStatus(replay_id="default", file="log.parquet", state="running", speedup=600.0, rows_sent=10,
                          rows_total=100, next_row=10, event_time=None, first_event_time=None,
                          last_event_time=None, rate_now=5.0, rate_avg=5.0, eta_seconds=None)
    speeds = {MAX_SPEEDUP: "1,000,000x", 12345.6: "12,346x", 3600.0: "3,600x", 0.5: "0.5x", 0.0: "max"}
    for speedup, text in speeds.items():
        assert str(replace(status, speedup=speedup)).endswith(f" avg | {text}"), speedup


def test_status_of_a_fresh_start_is_not_the_dead_runs(kafka_settings: Settings) -> None:
    """After a kill -9 of everything and a fresh start, the state topic still holds the dead run's
    "running" until the new replay reports: `replay-control status` must not show it as the new run's."""
    import os
    import subprocess
    import sys

    from workbench._fs import process_start_time
    from workbench.runtime.supervisor import RunSpec, run_dir, write_json_atomic

    ensure_topics(kafka_settings)
    now = time.time()
    dead = ReplayStatus(replay_id="default", file="old.parquet", state="running", speedup=600.0, rows_sent=15_825,
                        rows_total=100_000, next_row=15_825, event_time=None, first_event_time=None,
                        last_event_time=None, rate_now=5.0, rate_avg=5.0, eta_seconds=18.0, updated_at=now - 100)
    producer = Producer(kafka_settings.kafka_client_config())
    producer.produce(kafka_settings.topic_replay_state, key=b"default/status", value=dead.to_json())
    assert producer.flush(10) == 0
    del producer  # no reconnecting client left once the session broker stops
    run = run_dir(kafka_settings.home)
    run.mkdir(parents=True)
    write_json_atomic(run / "spec.json", RunSpec(processes=[], env={}, replay_id="default").to_json())
    env = {**os.environ, **kafka_settings.to_env(), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def status_with_replay_started(at: float) -> str:
        # a live supervisor (this process stands in for it) whose replay process started at `at`
        write_json_atomic(run / "state.json", {
            "supervisor_pid": os.getpid(), "supervisor_started": process_start_time(os.getpid()), "state": "running",
            "processes": {"replay": {"state": "running", "started_at": at}}})
        done = subprocess.run([sys.executable, "-m", "workbench.cli", "replay-control", "status"], env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    fresh = status_with_replay_started(now - 5)
    assert re.fullmatch(r"replay 'default': starting \(its process started \d+ s ago and has not reported yet\)\. "
                        rf"The last status, from before it started: {re.escape(str(dead))}\n", fresh), fresh
    assert status_with_replay_started(now - 200).startswith(str(dead))  # its own replay's status: shown as it is


def test_a_status_asked_for_with_no_broker_answers_in_one_line_within_the_status_deadline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`replay-control status` and `Workbench.replay_status()` waited the position reader's 30 s with the
    broker down; a status read waits STATUS_READ_TIMEOUT_S and says the broker did not answer."""
    import socket

    from workbench.cli import main
    from workbench.replay import STATUS_READ_TIMEOUT_S, ReplayError
    from workbench.runtime import Workbench

    assert STATUS_READ_TIMEOUT_S <= 10  # "a few seconds", not the 30 s of a position read
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{port}")
    no_answer = (rf"Could not read the replay state topic 'workbench\.replay_state' at 127\.0\.0\.1:{port}: no Kafka "
                 rf"broker answered within {STATUS_READ_TIMEOUT_S:g} s \(down or unreachable\)\. Is the workbench "
                 r"running \(`workbench status`\)\? KAFKA_BOOTSTRAP_SERVERS or WORKBENCH_KAFKA_PORT say where its "
                 r"broker is\.")
    started = time.monotonic()
    assert main(["replay-control", "status"]) == 2
    assert time.monotonic() - started < 20  # generous for a busy machine; was 30 s
    out, err = capsys.readouterr()
    assert out == ""
    assert re.fullmatch(rf"workbench: error: {no_answer}\n", err), err
    wb = Workbench(Settings(home=tmp_path / "home", kafka_bootstrap_servers=f"127.0.0.1:{port}"))
    started = time.monotonic()
    with pytest.raises(ReplayError, match=no_answer):
        wb.replay_status()
    assert time.monotonic() - started < 20


def test_a_status_record_that_is_not_a_status_is_passed_over(kafka_settings: Settings,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Any client can write the state topic: a record under ``<id>/status`` that is not a status (before:
    `workbench status`, `replay-control status` and the panel's refresh stopped with a traceback, or took
    text for numbers) is skipped for the status before it, with a warning."""
    ensure_topics(kafka_settings)
    controller = ReplayController(kafka_settings)
    hostile = [b"garbage", b"[1]", b'{"state": 5}', b"",
               replace(_status(), next_row=3).to_json().replace(b'"next_row":3', b'"next_row":"3"'),
               replace(_status(), rows_sent=1).to_json().replace(b'"rows_sent":1', b'"rows_sent":true'),
               _status().to_json().replace(b'"event_time":null', b'"event_time":"yesterday"')]
    producer = Producer(kafka_settings.kafka_client_config())
    for value in hostile:
        producer.produce(kafka_settings.topic_replay_state, key=b"default/status", value=value)
    assert producer.flush(10) == 0
    assert controller.status() is None  # none of them is a status: as if the replay never ran
    good = replace(_status(), state="finished", next_row=7, rows_total=7)
    for value in [good.to_json(), *hostile]:
        producer.produce(kafka_settings.topic_replay_state, key=b"default/status", value=value)
    assert producer.flush(10) == 0
    with caplog.at_level(logging.WARNING, logger="workbench.replay"):
        assert controller.status() == good
    assert "ignoring the record under 'default/status'" in caplog.text
    for value in hostile:
        with pytest.raises(ReplayError, match="a replay status record|field '"):
            ReplayStatus.from_json(value)


def _status() -> ReplayStatus:
    return ReplayStatus(replay_id="default", file="log.parquet", state="running", speedup=600.0, rows_sent=0,
                        rows_total=10, next_row=0, event_time=None, first_event_time=None, last_event_time=None,
                        rate_now=0.0, rate_avg=0.0, eta_seconds=None, updated_at=1.0)


def test_every_row_is_sent_unmarked_once_and_marked_resent_after_seeks_and_resets(
        kafka_settings: Settings, tmp_path: Path) -> None:
    """Rows sent again (a seek or reset back) carry the ``resent`` header; rows a forward seek skipped were
    never sent, so they go out unmarked when a later seek back reaches them."""
    log = make_log(tmp_path / "log.parquet", rows=1000, spacing_s=2.0)
    replay = Replay(log, settings=kafka_settings, speedup=1, linger=True).start()
    controller = ReplayController(kafka_settings)
    try:
        _wait(lambda: replay.status() is not None and replay.status().rows_sent >= 1)
        controller.seek("2024-03-04T00:30:00")  # row 900: rows 1..899 are skipped, not sent
        replay.set_speed(0)
        _wait(lambda: (replay.status() or _none).state == "finished")
        skipped_once = replay.status().rows_sent
        assert skipped_once < 200
        # the status says how many rows the seek skipped (a day trained meanwhile did not see them)
        assert replay.status().rows_skipped == 1000 - skipped_once
        assert f"{1000 - skipped_once:,} rows skipped by a seek forward, not sent yet" in str(replay.status())
        replay.reset_position()
        _wait(lambda: replay.status().state == "finished" and replay.status().rows_sent == skipped_once + 1000)
        assert replay.status().rows_skipped == 0 and "skipped" not in str(replay.status())
    finally:
        replay.stop()
        replay.join(10)
    messages = consume_all(kafka_settings, kafka_settings.topic_query_events, expected=skipped_once + 1000, idle=3)
    fresh = [m for m in messages if not codec.is_resent(m.headers())]
    resent = [m for m in messages if codec.is_resent(m.headers())]
    assert sorted(_ids(fresh)) == sorted(_ids(messages)) and set(_ids(fresh).values()) == {1}
    assert sum(_ids(fresh).values()) == 1000 and sum(_ids(resent).values()) == skipped_once


def test_a_finished_replays_average_rate_stays_what_it_was(kafka_settings: Settings, tmp_path: Path) -> None:
    """The panel's "finished: N rows/s on average" fell minute after minute while nothing ran."""
    log = make_log(tmp_path / "log.parquet", rows=2000, spacing_s=1.0)
    replay = Replay(log, settings=kafka_settings, speedup=0, linger=True).start()
    try:
        _wait(lambda: (replay.status() or _none).state == "finished")
        finished = replay.status().rate_avg
        time.sleep(2.5)
        assert finished > 0 and replay.status().rate_avg == finished
    finally:
        replay.stop()
        replay.join(10)



def test_replay_control_warns_of_an_unknown_replay_refuses_stray_values_and_explains_an_early_seek(
        kafka_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`--replay-id nope speed 60` said "sent" of a replay that never ran, `pause extra` dropped the
    value without a word, and `seek 1999-01-01` only said "sent"."""
    from workbench.cli import main

    log = make_log(tmp_path / "log.parquet", rows=50, spacing_s=60.0)
    Replay(log, settings=kafka_settings, speedup=0).run()
    for name, value in kafka_settings.to_env().items():
        monkeypatch.setenv(name, value)
    assert main(["replay-control", "pause", "extra"]) == 2
    assert "pause takes no value. Got 'extra'." in capsys.readouterr().err
    assert main(["replay-control", "seek"]) == 2
    assert "seek needs a value" in capsys.readouterr().err
    assert main(["replay-control", "--replay-id", "nope", "speed", "60"]) == 0
    out, err = capsys.readouterr()
    assert "warning: no replay named 'nope' has reported" in err and "sent speed to replay 'nope'" in out
    assert main(["replay-control", "seek", "1999-01-01"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "1999-01-01 00:00:00 UTC is before the log's first event" in out
    assert "restarts from its first row" in out
    # a rejected command's notice: shown by the panel, and now by the terminal's status too
    status = ReplayController(kafka_settings).status()
    producer = Producer(kafka_settings.kafka_client_config())
    noticed = replace(status, notice="pause ignored: replay 'default' finished at row 50 of 50")
    producer.produce(kafka_settings.topic_replay_state, key=b"default/status", value=noticed.to_json())
    assert producer.flush(10) == 0
    assert main(["replay-control", "status"]) == 0
    assert "last command ignored: pause ignored: replay 'default' finished" in capsys.readouterr().out


@pytest.mark.parametrize("nulls", ["last", "first"])
def test_rows_without_an_arrival_time_at_either_end_are_dead_lettered_and_the_rest_replays(
        kafka_settings: Settings, tmp_path: Path, nulls: str) -> None:
    """A sort puts rows without an arrival time last (DuckDB) or first (Spark): the replay read the edge rows'
    times for the order check and crashed with a TypeError under --skip-bad-rows, restarting for good, and a
    seek in such a file did too (tester A, 33rd session)."""
    from workbench.replay._source import LogFile

    table = pq.read_table(make_log(tmp_path / "good.parquet", rows=300, row_group_size=100))
    times = table.column("arrival_timestamp")
    gone = [0, 1] if nulls == "first" else [298, 299]
    kept = [i for i in range(300) if i not in gone]
    nulled = pa.array([None if i in gone else times[i].as_py() for i in range(300)], times.type)
    table = table.set_column(table.schema.get_field_index("arrival_timestamp"), "arrival_timestamp", nulled)
    folder = tmp_path / "days"
    folder.mkdir()
    pq.write_table(table, folder / "part-0.parquet", row_group_size=100)  # a folder: its order check read the edges
    log = LogFile(folder)
    assert (log.first_time_us(), log.last_time_us()) == (int(times[kept[0]].value), int(times[kept[-1]].value))
    assert log.row_at_or_after(int(times[150].value)) == 150
    status = Replay(folder, settings=kafka_settings, speedup=0, skip_bad_rows=True).run(timeout=120)
    assert status.state == "finished" and status.dead_letters == 2, status
    assert len(consume_all(kafka_settings, kafka_settings.topic_query_events, to_end=True)) == 298
