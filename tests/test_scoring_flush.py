"""When the scoring app flushes, and what a flush waits for, without a broker.

* :class:`AnomalyPublisher` splits publishing into ``send`` (produce, no wait) and ``confirm``
  (wait for every acknowledgement, raise on a failed delivery): the sink sends a partition's
  anomalies before writing its shards and confirms once per flush, before Quix commits.
* The app's per-poll step forces a flush after a poll that came back empty while rows are
  buffered (not after one that delivered, not twice within a quarter of ``batch_seconds``).
* After a flush, a training that ended is reaped and the next due one started *before* the
  shard compaction runs (it blocks the loop for seconds; the next model is the drain's critical path).
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import pytest

from workbench.config import Settings
from workbench.ml.supervisor import TrainingSupervisor
from workbench.pipeline.exceptions import AnomalyContractError, PipelineError
from workbench.pipeline.scoring import _publisher
from workbench.pipeline.scoring._loop import ScoringLoop
from workbench.pipeline.scoring._publisher import AnomalyPublisher
from workbench.pipeline.scoring._training import TrainingSchedule


class FakeProducer:
    """Queues produced messages; ``flush`` delivers them (or fails them) through their callbacks."""

    def __init__(self, error: str | None = None) -> None:
        self.error = error
        self.queued: list[tuple[bytes, Any]] = []
        self.delivered: list[bytes] = []
        self.flushes = 0

    def produce(self, topic: str, *, value: bytes, key: bytes, headers: Any, on_delivery: Any) -> None:
        self.queued.append((value, on_delivery))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        self.flushes += 1
        for value, on_delivery in self.queued:
            on_delivery(self.error, None)
            if self.error is None:
                self.delivered.append(value)
        self.queued.clear()
        return 0


@pytest.fixture
def publisher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AnomalyPublisher:
    def encode(message: dict[str, Any]) -> bytes:
        if message.get("bad"):
            raise AnomalyContractError("refused by the contract")
        return str(message["query_id"]).encode()

    monkeypatch.setattr(_publisher, "encode_anomaly", encode)
    monkeypatch.setattr(_publisher, "anomaly_key", lambda message: b"1")
    return AnomalyPublisher(Settings(home=tmp_path))


def test_send_does_not_wait_and_confirm_waits_once_for_everything_sent(publisher: AnomalyPublisher) -> None:
    producer = publisher._producer = FakeProducer()  # type: ignore[assignment]
    assert publisher.send([{"query_id": 1}, {"query_id": 2}]) == 2
    assert publisher.send([{"query_id": 3}, {"query_id": 4, "bad": True}]) == 1
    assert producer.flushes == 0 and len(producer.queued) == 3 and publisher.published == 0
    assert [reason for _, reason in publisher.rejected] == ["anomaly_contract: refused by the contract"]
    publisher.confirm()
    assert producer.flushes == 1 and producer.delivered == [b"1", b"2", b"3"] and publisher.published == 3
    publisher.confirm()  # nothing pending: no second wait
    assert producer.flushes == 1 and publisher.published == 3


def test_confirm_raises_when_a_delivery_failed(publisher: AnomalyPublisher) -> None:
    publisher._producer = FakeProducer(error="broker down")  # type: ignore[assignment]
    publisher.send([{"query_id": 1}])
    with pytest.raises(PipelineError, match="broker down"):
        publisher.confirm()
    assert publisher.published == 0


def test_publish_is_send_then_confirm(publisher: AnomalyPublisher) -> None:
    producer = publisher._producer = FakeProducer()  # type: ignore[assignment]
    assert publisher.publish([{"query_id": 7}]) == 1
    assert producer.flushes == 1 and producer.delivered == [b"7"] and publisher.published == 1


class FakeSink:
    def __init__(self) -> None:
        self.size_due = False
        self.buffered_rows = 0
        self.last_flush_at = 0.0
        self.delivered = False

    def take_delivered(self) -> bool:
        delivered, self.delivered = self.delivered, False
        return delivered


class Loop(ScoringLoop):
    def __init__(self, sink: FakeSink) -> None:
        self.sink = sink  # type: ignore[assignment]
        self.batch_seconds = 1.0
        self.flushes = 0
        self._force_commit = self._flush
        self._last_slow_tick = time.monotonic() + 3600  # only the flush decision runs

    def _flush(self) -> None:
        self.flushes += 1
        self.sink.last_flush_at = time.monotonic()  # type: ignore[union-attr]
        self.sink.buffered_rows = 0  # type: ignore[union-attr]


def test_an_empty_poll_flushes_the_buffered_rows_at_once() -> None:
    sink = FakeSink()
    loop = Loop(sink)
    sink.delivered, sink.buffered_rows = True, 10  # a poll delivered rows: they wait for more
    loop._tick()
    assert loop.flushes == 0
    loop._tick()  # the next poll came back empty: flush now, not at the checkpoint
    assert loop.flushes == 1
    loop._tick()  # empty again, nothing buffered
    assert loop.flushes == 1
    sink.delivered, sink.buffered_rows = True, 5
    loop._tick()
    loop._tick()  # empty, but within a quarter of batch_seconds of the last flush
    assert loop.flushes == 1
    sink.last_flush_at -= 0.25
    loop._tick()
    assert loop.flushes == 2


def test_a_full_batch_flushes_even_when_the_poll_delivered() -> None:
    sink = FakeSink()
    loop = Loop(sink)
    sink.delivered, sink.buffered_rows, sink.size_due = True, 20_000, True
    loop._tick()
    assert loop.flushes == 1


class FakeStatus:
    def __init__(self) -> None:
        self.info: dict[str, Any] = {}
        self.counters: dict[str, int] = {}

    def add(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n


class WatermarkSink:
    """Everything stored up to noon of ``day``; quiet and warmed up."""

    def __init__(self, day: dt.date) -> None:
        noon = dt.datetime.combine(day, dt.time(12), dt.UTC)
        self.first_event_us = self.max_us = self.max_event_us = int(noon.timestamp() * 1_000_000)
        self.buffered_rows = 0
        self.last_message_at = 0.0
        self.first_message_wall = 0.0

    def watermark_us(self, warmup_s: float) -> int:
        return self.max_us

    def log_ended_us(self) -> None:
        return None  # no end-of-log marker: the log goes on

    def take_days_stored(self) -> set[dt.date]:
        return set()


class RecordingMaintenance:
    """Records the training state at the moment the compaction starts."""

    def __init__(self, supervisor: TrainingSupervisor) -> None:
        self.supervisor = supervisor
        self.seen: list[dict[str, str | None]] = []

    def run(self, watermark: dt.date, *, ended_us: int | None = None) -> None:
        self.seen.append({d: self.supervisor.status(d) for d in ("2024-03-04", "2024-03-05")})

    def note_stored(self, days: set[dt.date]) -> None:
        pass


class AfterFlushLoop(ScoringLoop):
    def __init__(self, supervisor: TrainingSupervisor, sink: WatermarkSink) -> None:
        self.sink = sink  # type: ignore[assignment]
        self.election = None
        self.supervisor = supervisor
        self.schedule = TrainingSchedule(supervisor, FakeStatus(), 0)  # type: ignore[arg-type]
        self.maintenance = RecordingMaintenance(supervisor)  # type: ignore[assignment]
        self.training_grace_us = 0
        self._warmup_s = 0.0


def test_the_next_training_starts_before_the_compaction_after_a_flush(tmp_path: Path) -> None:
    # A stand-in for the training interpreter: each "training" runs until the test releases it (the
    # first, day 4, by one file; the later ones by another), so the states asserted below hold on a
    # machine of any speed.
    first, release_first, release = tmp_path / "first-ran", tmp_path / "release-first", tmp_path / "release"
    fake_python = tmp_path / "fake-python"
    wait = "i=0; while [ ! -e {} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done"  # 60 s at most
    fake_python.write_text(f"#!/bin/sh\nif [ -e {first} ]; then\n  {wait.format(release)}\n"
                           f"else\n  touch {first}\n  {wait.format(release_first)}\nfi\n")
    fake_python.chmod(0o755)
    # The main loop's own path: no reaper thread (it would reap day 4 before the flush does), no standby.
    supervisor = _without_shard_listing(TrainingSupervisor(Settings(home=tmp_path), every_n_days=1,
                                                           python=str(fake_python), standby=False,
                                                           reap_in_thread=False))
    for day in (4, 5, 6):  # day 4 is trained (running), day 5 waits for it (pending)
        supervisor.maybe_schedule(dt.date(2024, 3, day))
    assert (supervisor.status("2024-03-04"), supervisor.status("2024-03-05")) == ("running", "pending")
    release_first.touch()
    supervisor._proc.wait(10)  # type: ignore[union-attr]  # day 4's training ended; nobody reaped it yet
    loop = AfterFlushLoop(supervisor, WatermarkSink(dt.date(2024, 3, 6)))
    try:
        loop._after_flush()
        # the compaction ran with day 4 reaped and day 5 already training, not before
        assert loop.maintenance.seen == [{"2024-03-04": "done", "2024-03-05": "running"}]  # type: ignore[attr-defined]
    finally:
        release.touch()
        supervisor.wait(timeout=10)
    assert supervisor.status("2024-03-05") == "done"


def _us(day: str, hour: int) -> int:
    return int(dt.datetime.combine(dt.date.fromisoformat(day), dt.time(hour), dt.UTC).timestamp() * 1_000_000)


def _quick_supervisor(tmp_path: Path) -> TrainingSupervisor:
    fake_python = tmp_path / "fake-python"
    fake_python.write_text("#!/bin/sh\nexit 0\n")
    fake_python.chmod(0o755)
    return _without_shard_listing(TrainingSupervisor(Settings(home=tmp_path), every_n_days=1, python=str(fake_python),
                                                     standby=False, reap_in_thread=False))


def _without_shard_listing(supervisor: TrainingSupervisor) -> TrainingSupervisor:
    # These supervisors train stand-ins on a home without shards, where a due day would be settled as
    # untrainable without a run; a listing that fails leaves it to the run, as on an object store away.
    supervisor._stored_days = lambda: None  # type: ignore[method-assign]
    return supervisor


@pytest.mark.parametrize("first_seen", ["2024-03-05", None])
def test_the_cadence_starts_at_the_first_stored_day_when_this_process_saw_only_later_events(
        tmp_path: Path, first_seen: str | None) -> None:
    # A predecessor stored day 4 and was killed before it first scheduled. This process sees day 5
    # only, or nothing (its watermark then comes from the shards): day 4 must still be handed to
    # training once day 5 is finished.
    supervisor = _quick_supervisor(tmp_path)
    stored = [dt.date(2024, 3, 4), dt.date(2024, 3, 5)]
    schedule = TrainingSchedule(supervisor, FakeStatus(), 0, stored_days=lambda: stored)  # type: ignore[arg-type]
    first_us = None if first_seen is None else _us(first_seen, 1)
    schedule.after_flush(first_us, _us("2024-03-05", 12))
    assert supervisor.state["first_day"] == "2024-03-04"
    assert supervisor.status("2024-03-04") in ("pending", "running")
    supervisor.wait(timeout=10)
    assert supervisor.status("2024-03-04") == "done"


def test_a_flush_whose_first_partition_starts_later_still_trains_the_first_day(tmp_path: Path) -> None:
    # Found by the chaos test: a restarted app read a backlog; its first flush scored partition 3
    # (whose instances start on day 5) before partition 0 (day 4), and the cadence started on day 5,
    # so day 4 was never trained. Each batch notes its first event before it is scored.
    supervisor = _quick_supervisor(tmp_path)
    schedule = TrainingSchedule(supervisor, FakeStatus(), 0, stored_days=lambda: [])  # type: ignore[arg-type]
    schedule.note_first_event(_us("2024-03-05", 1))  # partition 3's batch
    schedule.note_first_event(_us("2024-03-04", 0))  # partition 0's batch, same flush
    assert (supervisor.state["first_day"], supervisor.state["last_day"]) == ("2024-03-04", "2024-03-04")
    schedule.after_flush(_us("2024-03-04", 0), _us("2024-03-05", 12))
    assert supervisor.status("2024-03-04") in ("pending", "running")
    supervisor.wait(timeout=10)
    # once a day is scheduled the cadence is fixed: an earlier (late) event does not move it
    schedule.note_first_event(_us("2024-03-01", 0))
    assert supervisor.state["first_day"] == "2024-03-04"


# --- the training watermark and paused partitions ------------------------------------------------------
class DayScorer:
    """Accepts the event days in ``accepted`` (the selection rule, decided by the test)."""

    def __init__(self) -> None:
        self.accepted: set[dt.date] = set()

    def accepts(self, day: dt.date, cadence: Any) -> bool:
        return day in self.accepted


def test_a_partition_paused_for_training_holds_the_watermark_until_it_delivers_again(tmp_path: Path) -> None:
    # Seen in a chaos run (seed 97, 8 partitions): two partitions paused at 2024-03-06, waiting for a
    # retried training; silent, they stopped holding the watermark back, the others' events scheduled
    # 2024-03-06's training, and it ran just after they resumed, before their backlog of that day was
    # stored: a version trained on 496 rows fewer than the run without kills.
    from workbench.pipeline._quix import PartitionFlow
    from workbench.pipeline.scoring._pacing import PartitionPacer
    from workbench.pipeline.scoring._sink import ScoringSink

    sink = ScoringSink(Settings(home=tmp_path / "home"), None, None, None, FakeStatus(), None)  # type: ignore[arg-type]
    paused: list[int] = []
    flow = PartitionFlow(lambda tps: paused.extend(tp.partition for tp in tps),
                         lambda tps: [paused.remove(tp.partition) for tp in tps])
    pacer = PartitionPacer(flow, "events", FakeStatus())  # type: ignore[arg-type]
    scorer = DayScorer()
    ahead, held = _us("2024-03-07", 1), _us("2024-03-06", 3)
    now = time.monotonic()
    sink.max_event_us = ahead
    sink.partition_max_us = {0: ahead, 1: held}
    sink.partition_seen = {0: now, 1: now}
    scorer.accepted = {dt.date(2024, 3, 7)}
    pacer.pace(sink, scorer, cadence=object())
    assert paused == [1]
    sink.partition_seen[1] = now - 60  # paused for a minute: silent, but its backlog waits in Kafka
    assert sink.watermark_us(active_s=2.0) == held
    scorer.accepted.add(dt.date(2024, 3, 6))  # the training it waited for is done
    pacer.pace(sink, scorer, cadence=object())
    assert paused == []
    assert sink.watermark_us(active_s=2.0) == held  # resumed: it holds the watermark until it delivers
    sink.partition_seen[1] = now - 60  # and then silent for good (caught up): no longer
    assert sink.watermark_us(active_s=2.0) == ahead


def test_a_flush_longer_than_the_silence_rule_is_not_silence_of_a_partition_that_could_not_deliver(
        tmp_path: Path) -> None:
    """A partition is caught up once silent for ``active_s`` while the app listens. Counted in wall time, a
    flush of a few seconds on a slow machine made a partition whose backlog had not come that cycle look
    caught up: it stopped holding the watermark, and a day could be trained before all of it was stored."""
    from types import SimpleNamespace

    from workbench.pipeline.scoring._sink import ScoringSink

    sink = ScoringSink(Settings(home=tmp_path / "home"), None, None, None, FakeStatus(), None)  # type: ignore[arg-type]
    sink.publisher = SimpleNamespace(confirm=lambda: None)  # type: ignore[assignment]
    ahead, behind = _us("2024-03-07", 1), _us("2024-03-06", 23)
    sink.max_event_us = ahead
    sink.partition_max_us = {0: ahead, 1: behind}
    sink.mark_seen(0)
    sink.mark_seen(1)

    def slow_write(batch: Any) -> None:  # partition 0's batch, scored and stored in 2 s
        time.sleep(2.0)
        sink.mark_seen(0)

    sink.write = slow_write  # type: ignore[method-assign]
    sink._raw[("events", 0)] = object()  # type: ignore[assignment]
    sink.flush()
    assert sink.busy_s >= 2.0
    assert sink.watermark_us(active_s=1.0) == behind  # partition 1 could not deliver during the flush
    time.sleep(1.5)  # listening, and nothing from partition 1: caught up
    assert sink.silent_s(1) >= 1.0 and sink.watermark_us(active_s=1.0) == ahead
