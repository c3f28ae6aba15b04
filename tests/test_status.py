"""Consumer lag as the workbench reports it, on the real broker with transactional producers, through
Kafka clients shared by every status call of the process."""

from __future__ import annotations

import dataclasses
import gc
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from workbench.broker import ensure_topics
from workbench.config import Settings
from workbench.runtime import _status
from workbench.runtime._status import close_status_clients, consumer_lag, topic_message_count


def _produce_in_transactions(settings: Settings, topic: str, messages: int) -> None:
    producer = Producer({**settings.kafka_client_config(), "transactional.id": f"test-{uuid.uuid4().hex[:8]}"})
    producer.init_transactions(30)
    for i in range(messages):  # one transaction each: every data message is followed by a marker
        producer.begin_transaction()
        producer.produce(topic, key=b"1", value=str(i).encode(), partition=0)
        producer.commit_transaction(30)


def _commit(settings: Settings, group: str, topic: str, offset: int) -> None:
    consumer = Consumer({**settings.kafka_client_config(), "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    finally:
        consumer.close()


def test_lag_counts_data_messages_not_transaction_markers(kafka_settings: Settings) -> None:
    ensure_topics(kafka_settings)
    topic = kafka_settings.topic_anomalies
    _produce_in_transactions(kafka_settings, topic, 3)  # offsets 0..5: data, marker, data, marker, ...
    assert consumer_lag(kafka_settings, "nobody-yet", topic) == 3
    _commit(kafka_settings, "halfway", topic, 2)  # consumed the first message and its marker
    assert consumer_lag(kafka_settings, "halfway", topic) == 2
    _commit(kafka_settings, "all-read", topic, 5)  # consumed up to the last marker, which is never delivered
    assert consumer_lag(kafka_settings, "all-read", topic) == 0


def _librdkafka_threads() -> int:
    """Threads of this process that librdkafka started (every open client has a few: rdk:main, rdk:broker...)."""
    return sum((task / "comm").read_text().startswith("rdk:") for task in Path("/proc/self/task").iterdir())


def _threads_back_to(count: int, timeout: float = 10.0) -> int:
    """librdkafka threads once they are down to ``count`` (or the last figure seen when ``timeout`` ran out)."""
    deadline = time.monotonic() + timeout
    while (now := _librdkafka_threads()) != count and time.monotonic() < deadline:
        time.sleep(0.05)
    return now


def _count_clients(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every Kafka client the status module opens; the clients themselves stay real."""
    import confluent_kafka.admin

    opened: list[str] = []
    real_consumer, real_admin_init = Consumer, confluent_kafka.admin.AdminClient.__init__

    def counted_consumer(config: dict) -> Consumer:
        opened.append(f"consumer {config.get('group.id')}")
        return real_consumer(config)

    def counted_admin_init(admin: confluent_kafka.admin.AdminClient, config: dict) -> None:
        opened.append("admin")
        real_admin_init(admin, config)

    monkeypatch.setattr(_status, "Consumer", counted_consumer)
    # the class itself stays: its __init__ finds its own name for super()
    monkeypatch.setattr(confluent_kafka.admin.AdminClient, "__init__", counted_admin_init)
    return opened


def test_status_calls_share_their_kafka_clients_and_see_new_data(kafka_settings: Settings,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Repeated lag and size queries open no new client (each cost the broker ~20-50 ms) and are never stale."""
    ensure_topics(kafka_settings)
    topic = kafka_settings.topic_anomalies
    _produce_in_transactions(kafka_settings, topic, 2)  # offsets 0..3
    _commit(kafka_settings, "done", topic, 4)
    close_status_clients(kafka_settings)
    # Clients an earlier test of this worker left in a reference cycle (a Quix producer) go now, not when
    # a collection happens to run mid-test: their threads would leave the count below `before` for good.
    gc.collect()
    before = _librdkafka_threads()
    opened = _count_clients(monkeypatch)
    for call in range(6):
        assert consumer_lag(kafka_settings, "done", topic) == 0  # reads the marker remainder (the first time)
        assert consumer_lag(kafka_settings, "nobody-yet", topic) == 2
        assert topic_message_count(kafka_settings, topic) == 2  # records: the 2 markers are no dead letters
        if call == 0:  # one client per group asked, one that reads
            first = list(opened)
            assert len(first) >= 3 and _librdkafka_threads() > before
    assert opened == first  # the same clients answered every call
    _produce_in_transactions(kafka_settings, topic, 1)  # offsets 4, 5
    assert consumer_lag(kafka_settings, "done", topic) == 1
    assert topic_message_count(kafka_settings, topic) == 3
    assert opened == first
    # An open transaction: its records count by offset until it commits (a reader cannot reach them
    # before), then as records; an aborted one's records and markers never count.
    producer = Producer({**kafka_settings.kafka_client_config(), "transactional.id": f"test-{uuid.uuid4().hex[:8]}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"1", value=b"open", partition=0)
    producer.flush(30)
    assert topic_message_count(kafka_settings, topic) == 4
    producer.abort_transaction(30)
    del producer  # its threads are not the status clients'
    gc.collect()
    assert topic_message_count(kafka_settings, topic) == 3
    assert opened == first
    close_status_clients(kafka_settings)
    assert _threads_back_to(before) == before  # closed, not left running
    assert consumer_lag(kafka_settings, "done", topic) == 1  # and opened again on the next call
    assert len(opened) > len(first)


def test_with_no_broker_the_status_fails_after_the_replay_read_without_waiting_for_every_lag_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from workbench.replay import ReplayError
    from workbench.runtime import _workbench
    from workbench.runtime._workbench import Workbench

    lag_reads: list[str] = []
    monkeypatch.setattr(_workbench, "consumer_lag", lambda *args, **kwargs: lag_reads.append(args[1]))
    monkeypatch.setattr(_workbench, "STATUS_READ_TIMEOUT_S", 2.0)
    wb = Workbench(Settings(home=tmp_path / "home", kafka_bootstrap_servers="127.0.0.1:9"))  # nothing listens
    started = time.monotonic()
    with pytest.raises(ReplayError, match="127.0.0.1:9"):
        wb.status()
    assert time.monotonic() - started < 20  # the reader's own default is 30 s
    assert lag_reads == []  # the panel learns the broker is gone before any lag read waits its timeout
    # a cluster of several: not "no Kafka broker answered ... Is the workbench running" (tester A, 34th session)
    cluster = Workbench(Settings(home=tmp_path / "home", kafka_bootstrap_servers="127.0.0.1:9,127.0.0.1:10"))
    with pytest.raises(ReplayError, match="a broker down or a leader moving") as info:
        cluster.status()
    assert "Is the workbench running" not in str(info.value)


def test_the_status_line_says_which_days_wait_for_a_model_and_which_partitions_are_paused() -> None:
    """The README points at `workbench status` for `waiting_for_model` and `paused_partitions`."""
    from workbench.runtime._status import WorkbenchStatus

    def status(apps: dict, instances: dict) -> WorkbenchStatus:
        return WorkbenchStatus(replay=None, processes={}, apps=apps, lag={}, model_version=None, model_versions=0,
                               anomalies=None, late_events=None, dead_letters=None, instances=instances)

    slots = [{"info": {"waiting_for_model": ["2024-03-06"], "paused_partitions": [3]}},
             {"info": {"waiting_for_model": ["2024-03-05", "2024-03-06"], "paused_partitions": [0]}}]
    waiting = status({"scoring": slots[0]}, {"scoring": slots})
    assert waiting.waiting_for_model == ["2024-03-05", "2024-03-06"] and waiting.paused_partitions == [0, 3]
    assert "scoring waits for a model: days 2024-03-05, 2024-03-06 (waiting_for_model); " \
           "paused partitions 0, 3 (paused_partitions)" in str(waiting)
    assert waiting.as_dict()["waiting_for_model"] == ["2024-03-05", "2024-03-06"]
    only_days = status({"scoring": {"info": {"waiting_for_model": ["2024-03-04"], "paused_partitions": []}}}, {})
    assert "scoring waits for a model: days 2024-03-04 (waiting_for_model)\n" in str(only_days) + "\n"
    assert "paused partitions" not in str(only_days) and "anomalies none yet" in str(only_days)  # not "-", "?"
    idle = status({"scoring": {"info": {"waiting_for_model": [], "paused_partitions": []}}}, {})
    assert idle.waiting_for_model == [] and "waits for a model" not in str(idle)


def test_a_previous_runs_replay_status_is_not_the_new_runs() -> None:
    """Until a new replay publishes, the state topic holds the last run's "finished": not drained, not shown."""
    from workbench.replay import ReplayStatus
    from workbench.runtime._status import WorkbenchStatus

    now = time.time()
    finished = ReplayStatus(replay_id="default", file="log.parquet", state="finished", speedup=0.0, rows_sent=100,
                            rows_total=100, next_row=100, event_time=None, first_event_time=None,
                            last_event_time=None, rate_now=0.0, rate_avg=0.0, eta_seconds=None,
                            updated_at=now - 60)

    def status(replay_process: dict) -> WorkbenchStatus:
        return WorkbenchStatus(replay=finished, processes={"replay": replay_process}, apps={},
                               lag={"scoring": 0, "analytics": 0}, model_version=None, model_versions=0,
                               anomalies=None, late_events=None, dead_letters=None)

    new_run = status({"state": "running", "started_at": now - 1})
    assert new_run.replay_is_stale and not new_run.drained  # Workbench.wait() returned at once before
    assert str(new_run).splitlines()[0] == "replay: starting (its first status is not in yet)"
    # nor in the table notebook 01 shows, nor to the API (a browser tester saw "stopped, 60,804 rows, 600x" there)
    shown = new_run.as_dict()
    assert [shown[k] for k in ("replay_state", "rows_sent", "speedup", "rate_avg")] == ["starting", 0, None, None]
    assert new_run.current_replay is None and new_run.rows_total == 100
    same_run = status({"state": "running", "started_at": now - 120})
    assert not same_run.replay_is_stale and same_run.drained
    assert same_run.as_dict()["replay_state"] == "finished" and same_run.rows_sent == 100
    slow = dataclasses.replace(finished, state="running", eta_seconds=17_277_825.0)  # 0.01x: read as a clock
    assert ", ETA 199d 23h 23m" in str(slow)
    assert str(same_run).splitlines()[0] == str(finished)
    assert "status is" not in str(same_run)  # a finished replay that does not listen has nothing to report
    # a running replay whose status is a minute old: its writes wait (tester A, 34th session: "[running] 282 rows/s
    # now, ETA 2m 42s" for 169 s below min.insync.replicas)
    stalled = WorkbenchStatus(replay=dataclasses.replace(finished, state="running"),
                              processes={"replay": {"state": "running", "started_at": now - 120}}, apps={}, lag={},
                              model_version=None, model_versions=0, anomalies=None, late_events=None,
                              dead_letters=None)
    assert "(the replay's status is 60 s old, and a running replay reports every second: its writes wait for " \
           "Kafka" in str(stalled)
    # a first run: no status on the topic yet, for 10-23 s on a loaded machine; "not started" read as "will not run"
    for state, line in (("running", "replay: starting (its first status is not in yet)"),
                        ("finished", "replay: not started"), (None, "replay: not started")):
        processes = {"replay": {"state": state, "started_at": now - 5}} if state else {}
        first = WorkbenchStatus(replay=None, processes=processes, apps={}, lag={}, model_version=None,
                                model_versions=0, anomalies=None, late_events=None, dead_letters=None)
        assert str(first).splitlines()[0] == line and not first.drained


def test_the_status_text_says_what_late_events_are() -> None:
    """After a restart with the same log every re-sent event is late: the status read "late events 3,000"
    with no word why (the panel said it)."""
    from workbench.runtime._status import WorkbenchStatus

    def status(late: int | None) -> str:
        return str(WorkbenchStatus(replay=None, processes={}, apps={}, lag={}, model_version=None, model_versions=0,
                                   anomalies=None, late_events=late, dead_letters=None))

    assert "late events 3,000" in status(3000)
    assert "late events: rows sent before and counted then, re-sent after a seek or reset back" in status(3000)
    assert "late events:" not in status(0) and "late events:" not in status(None)


def test_the_status_text_says_what_rows_a_seek_forward_skipped_mean() -> None:
    """A browser session seeked a day forward: that day's model was trained on 3,711 of its 20,656 rows and
    nothing said so."""
    from workbench.replay import ReplayStatus
    from workbench.runtime._status import WorkbenchStatus

    def text(skipped: int) -> str:
        replay = ReplayStatus(replay_id="default", file="log.parquet", state="running", speedup=600.0,
                              rows_sent=100, rows_total=1000, next_row=900, event_time=None, first_event_time=None,
                              last_event_time=None, rate_now=0.0, rate_avg=0.0, eta_seconds=None,
                              rows_skipped=skipped)
        return str(WorkbenchStatus(replay=replay, processes={}, apps={}, lag={}, model_version=None,
                                   model_versions=0, anomalies=None, late_events=None, dead_letters=None))

    assert "a seek forward skipped 800 rows, not sent yet: a reset or a seek back sends them" in text(800)
    assert "800 rows skipped by a seek forward" in text(800).splitlines()[0]
    assert "skipped" not in text(0)


def test_a_large_dead_letter_topic_is_counted_a_piece_per_status_call_and_converges(
        kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dead letter carries its whole message (up to megabytes): each status call reads a bounded piece,
    keeps what it read, and counts the offsets not read yet as records meanwhile."""
    ensure_topics(kafka_settings)
    topic = kafka_settings.topic_dead_letter
    _produce_in_transactions(kafka_settings, topic, 3)  # offsets 0..5: 3 records, 3 markers
    close_status_clients(kafka_settings)
    monkeypatch.setattr(_status, "_TALLY_CHUNK", 1)
    counts = [topic_message_count(kafka_settings, topic) for _ in range(7)]
    assert counts[0] <= 6 and counts == sorted(counts, reverse=True) and counts[-1] == 3, counts
    close_status_clients(kafka_settings)


def test_an_instance_killed_with_its_status_saying_running_is_not_counted() -> None:
    """Tester B (33rd session): after kill -9 of a supervisor with two analytics processes, a restart showed
    "instances running: analytics 2" beside one analytics process (the dead one's status file said running)."""
    import os
    import subprocess
    import sys

    from workbench.runtime._status import WorkbenchStatus

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                              check=True)
    dead_pid = int(finished.stdout)
    now = time.time()
    alive = {"state": "running", "pid": os.getpid(), "started_at": now}
    instances = {"analytics": [alive, {"state": "running", "pid": dead_pid, "started_at": now}],
                 # this pid, but a status written before this process was created: another process had the pid
                 "scoring": [{"state": "running", "pid": os.getpid(), "started_at": now - 10 * 86_400}, alive],
                 "anomaly-sink": [{"state": "stopped", "pid": os.getpid(), "started_at": now}, {"state": "running"}]}
    status = WorkbenchStatus(replay=None, processes={}, apps={}, lag={}, model_version=None, model_versions=0,
                             anomalies=None, late_events=None, dead_letters=None, instances=instances)
    assert status.running_instances == {"analytics": 1, "scoring": 1, "anomaly-sink": 1}
    # its last words are not the pipeline's now (tester A, 34th session: "waits for a model" and a
    # `train --waiting` hint for 35 s after a scoring instance's kill -9, both versions trained)
    killed = {"state": "running", "pid": dead_pid, "started_at": now,
              "info": {"waiting_for_model": ["2024-03-05"], "paused_partitions": [0, 1]}}
    ended = {"state": "finished", "pid": dead_pid, "started_at": now, "info": {"waiting_for_model": ["2024-03-07"]}}
    status = WorkbenchStatus(replay=None, processes={}, apps={}, lag={}, model_version=None, model_versions=0,
                             anomalies=None, late_events=None, dead_letters=None,
                             instances={"scoring": [killed, alive, ended]})
    assert status.waiting_for_model == ["2024-03-07"] and status.paused_partitions == []  # a clean exit's stand


def test_a_last_day_judged_without_any_residual_window_is_settled_and_no_anomaly_reads_as_none(
        tmp_path: Path) -> None:
    """A log whose last day yields no runtime-residual window (all-zero runtimes; sparse real logs) stores nothing
    for it: wait() waited its 300 s for the store, then warned, though the scoring app had judged the day; and
    Workbench.anomalies() raised "Start the anomaly sink first" while the sink ran (tester A, 33rd session)."""
    from datetime import UTC, datetime

    from workbench.replay import ReplayStatus
    from workbench.runtime import Workbench
    from workbench.runtime._status import WorkbenchStatus

    now = time.time()
    finished = ReplayStatus(replay_id="default", file="log.parquet", state="finished", speedup=0.0, rows_sent=100,
                            rows_total=100, next_row=100, event_time=None,
                            first_event_time=datetime(2024, 3, 4, tzinfo=UTC),
                            last_event_time=datetime(2024, 3, 5, 23, tzinfo=UTC), rate_now=0.0, rate_avg=0.0,
                            eta_seconds=None, updated_at=now - 60)
    wb = Workbench(Settings(home=tmp_path / "home"))

    def status(judged: str | None) -> WorkbenchStatus:
        scoring = [{"info": {"judged_through": judged, "judging_again": []}, "updated_at": now}]
        return WorkbenchStatus(replay=finished, processes={"replay": {"state": "finished", "started_at": now - 120}},
                               apps={}, lag={"scoring": 0, "analytics": 0}, model_version=None, model_versions=0,
                               anomalies=None, late_events=None, dead_letters=None, instances={"scoring": scoring})

    assert wb._unsettled(status(None)) == "the judging of 2024-03-05 (persistent runs, runtime-residual windows)"
    assert wb._unsettled(status("2024-03-04")).startswith("the judging of 2024-03-05")
    assert wb._unsettled(status("2024-03-05")) == ""
    assert wb.anomalies().empty and "query_id" in wb.anomalies().columns


def test_wait_counts_an_apps_events_across_its_restarts() -> None:
    """Tester C, 34th session: after kill -9 of the apps, wait()'s bar ended at 49 % with every store complete:
    a restarted app's counter starts from 0 again. Counted per process, so that one of two instances restarting
    does not count the other's events twice (a review of the same session: 200 -> 110 read as 310)."""
    from workbench.runtime._status import WorkbenchStatus
    from workbench.runtime._workbench import _RestartedCounters

    def status(**instances: list[tuple[int, int]]) -> WorkbenchStatus:
        slots = {name: [{"pid": pid, "started_at": 1.0, "counters": {"events": n}} for pid, n in found]
                 for name, found in instances.items()}
        return WorkbenchStatus(replay=None, processes={}, apps={name: found[0] for name, found in slots.items()},
                               lag={}, model_version=None, model_versions=0, anomalies=None, late_events=None,
                               dead_letters=None, instances=slots)

    counted = _RestartedCounters()
    assert counted.update(status(analytics=[(1, 100)], scoring=[(2, 80), (3, 120)])) == \
        {"analytics": 100, "scoring": 200}
    # scoring's pid 2 restarted as pid 4 (from 0): 80 + 5 + 120 + 10 more of pid 3, not 310
    assert counted.update(status(analytics=[(1, 150)], scoring=[(4, 5), (3, 130)])) == \
        {"analytics": 150, "scoring": 215}
    assert counted.update(status(analytics=[(5, 3)], scoring=[(4, 40), (3, 131)])) == \
        {"analytics": 153, "scoring": 251}


def test_wait_rides_out_a_status_kafka_cannot_serve_for_a_moment(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Tester A, 34th session: wait() raised when one read of the replay state met a partition whose leader had
    just moved (a cluster's periodic preferred-leader election), and the caller's script went on to stop the
    replay at row 58,727 of 60,804. It waits through such reads now, for KAFKA_HICCUP_S at most."""
    from types import SimpleNamespace

    from workbench.replay import ReplayError
    from workbench.runtime import _workbench
    from workbench.runtime._workbench import Workbench

    answers: list[object] = [ReplayError("leader moving"), ReplayError("leader moving"),
                             SimpleNamespace(replay=None, drained=True, processes={})]

    def status(self: Workbench) -> object:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(Workbench, "status", status)
    monkeypatch.setattr(Workbench, "running", property(lambda self: True))
    wb = Workbench(Settings(home=tmp_path / "home"))
    assert wb.wait(progress=False, settled=False, poll=0.01).drained and not answers
    answers[:] = [ReplayError("away for good")] * 1000
    monkeypatch.setattr(_workbench, "KAFKA_HICCUP_S", 0.05)
    with pytest.raises(ReplayError, match="away for good"):
        wb.wait(progress=False, settled=False, poll=0.01)
    monkeypatch.setattr(Workbench, "running", property(lambda self: False))
    answers[:] = [ReplayError("stopped")]
    monkeypatch.setattr(_workbench, "KAFKA_HICCUP_S", 60.0)
    with pytest.raises(ReplayError, match="stopped"):  # nothing runs that could bring it back
        wb.wait(progress=False, settled=False, poll=0.01)


def test_a_leader_that_has_not_caught_up_is_retried_not_reported() -> None:
    """`Failed to get watermark offsets: Leader high watermark is not caught up` (OFFSET_NOT_AVAILABLE) is the
    second after a partition's leadership moved: asked again, the new leader answers."""
    from confluent_kafka import KafkaError, KafkaException

    from workbench.broker import when_ready

    calls: list[float] = []

    def watermarks(remaining: float) -> tuple[int, int]:
        calls.append(remaining)
        if len(calls) < 3:
            raise KafkaException(KafkaError(KafkaError.OFFSET_NOT_AVAILABLE))
        return 0, 42

    assert when_ready(watermarks, time.monotonic() + 5) == (0, 42) and len(calls) == 3
    with pytest.raises(KafkaException):  # not a moment's error: raised at once
        when_ready(lambda _: (_ for _ in ()).throw(KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))),
                   time.monotonic() + 5)
