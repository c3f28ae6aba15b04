"""When the scoring app flushes, and what a flush waits for, without a broker.

* :class:`AnomalyPublisher` splits publishing into ``send`` (produce, no wait) and ``confirm``
  (wait for every acknowledgement, raise on a failed delivery): the sink sends a partition's
  anomalies before writing its shards and confirms once per flush, before Quix commits.
* The app's per-poll step forces a flush after a poll that came back empty while rows are
  buffered (not after one that delivered, not twice within a quarter of ``batch_seconds``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from workbench.config import Settings
from workbench.pipeline.exceptions import AnomalyContractError, PipelineError
from workbench.pipeline.scoring import _publisher
from workbench.pipeline.scoring._loop import ScoringLoop
from workbench.pipeline.scoring._publisher import AnomalyPublisher


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
