"""No single message can stop the pipeline: a seeded fuzz corpus through one running workbench.

More than a thousand malformed messages of every family in :mod:`tests.fuzz_corpus` are
interleaved with a day of valid events (JSON and packed Arrow) and produced into the topics
of one running workbench (scoring, analytics and anomaly sink under the supervisor, with a
model already trained). Afterwards:

* every app is still running and was never restarted;
* each malformed message is in the dead-letter topic exactly once per app that consumes it,
  with a reason (the family's own reason where the contract names one) and its source headers;
* no row of a malformed message reached any store;
* every valid event is in the shards exactly once, window_stats equals an offline DuckDB
  aggregation of the valid events, and the lakehouse holds each published anomaly exactly once.

Set ``WORKBENCH_FUZZ_SEED`` to rerun a failing seed; the seed is in every assertion message.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import time
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer

from tests.fuzz_corpus import (
    ANOMALY_FAMILIES,
    EVENT_FAMILIES,
    Malformed,
    arrow_value,
    event_headers,
    json_value,
)
from tests.helpers import consume_all
from tests.test_pipeline_analytics import expected_windows, stored_windows
from workbench.config import Settings
from workbench.data.generator import generate
from workbench.data.schema import COLUMNS
from workbench.ml._testing import day_slice
from workbench.ml._train import train_day
from workbench.runtime import Workbench
from workbench.runtime.supervisor import read_state
from workbench.store.shards import read_shards

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("WORKBENCH_FUZZ_SEED", "20261202"))
D1 = dt.date(2024, 3, 4)
D2 = D1 + dt.timedelta(days=1)
EVENT_APPS = ("scoring", "analytics")
ARROW_PACK = 25
PACK_SPAN = dt.timedelta(seconds=180)
FIRST_MALFORMED_AFTER = 200  # valid messages first, so that every partition has an event-time clock


@pytest.fixture(scope="module")
def fuzz_log(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two generated days: day 1 trains the model, day 2 is replayed among the malformed messages."""
    folder = tmp_path_factory.mktemp("fuzz-log")
    full = folder / "full.parquet"
    generate(full, days=2, instances=4, seed=11, rows_per_day=4_000)
    day2 = day_slice(pq.read_table(full), D2).select(list(COLUMNS))
    pq.write_table(day2, folder / "day2.parquet")
    return {"full": full, "day2": folder / "day2.parquet"}


def _valid_messages(day2: pa.Table, rng: random.Random) -> list[tuple[bytes, bytes, list]]:
    """Day 2 as messages: JSON for even instances, packed Arrow runs for odd ones.

    Like the replay, messages go out in the order of their first event time, and a packed run spans
    at most :data:`PACK_SPAN` of event time (the README's contract: below the analytics grace, so a
    pack never makes rows late).
    """
    timed: list[tuple[dt.datetime, int, tuple[bytes, bytes, list]]] = []
    pending: dict[int, list[dict]] = defaultdict(list)

    def flush(instance: int) -> None:
        run = pending.pop(instance, [])
        if run:
            message = (str(instance).encode(), arrow_value(run), event_headers("arrow", len(run)))
            timed.append((run[0]["arrival_timestamp"], len(timed), message))

    for row in day2.to_pylist():
        instance = row["instance_id"]
        if instance % 2 == 0:
            message = (str(instance).encode(), json_value(row), event_headers("json", 1))
            timed.append((row["arrival_timestamp"], len(timed), message))
            continue
        run = pending.get(instance)
        if run and row["arrival_timestamp"] - run[0]["arrival_timestamp"] > PACK_SPAN:
            flush(instance)
        pending[instance].append(row)
        if len(pending[instance]) >= rng.randrange(1, ARROW_PACK + 1):
            flush(instance)
    for instance in list(pending):
        flush(instance)
    return [message for _, _, message in sorted(timed, key=lambda item: item[:2])]


def _corpus(template: dict, rng: random.Random) -> tuple[list[Malformed], list[Malformed]]:
    events = [build(rng, template) for build, count in EVENT_FAMILIES.values() for _ in range(count)]
    anomalies = [build(rng, template) for build, count in ANOMALY_FAMILIES.values() for _ in range(count)]
    return events, anomalies


def _produce(settings: Settings, topic: str, items: list) -> dict[tuple[int, int], Malformed | None]:
    """Produce in order; return (partition, offset) -> the malformed message there (None for valid ones)."""
    producer = Producer({**settings.kafka_client_config(), "message.max.bytes": 16_000_000,
                         "enable.idempotence": True, "linger.ms": 5})
    placed: dict[tuple[int, int], Malformed | None] = {}
    failures: list[str] = []

    def delivered(item: Malformed | None):
        def callback(err, msg) -> None:
            if err is not None:
                failures.append(str(err))
            else:
                placed[(msg.partition(), msg.offset())] = item
        return callback

    for item in items:
        if isinstance(item, Malformed):
            producer.produce(topic, value=item.value, key=item.key, headers=item.headers,
                             on_delivery=delivered(item))
        else:
            key, value, headers = item
            producer.produce(topic, value=value, key=key, headers=headers, on_delivery=delivered(None))
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not failures, failures[:3]
    return placed


def _until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"seed {SEED}: {what} not reached within {timeout:.0f} s")


def _header(message, name: str) -> bytes | None:
    return dict(message.headers() or []).get(name)


def test_malformed_messages_never_stop_the_pipeline(kafka_settings: Settings, fuzz_log: dict[str, Path],
                                                     tmp_path: Path) -> None:
    settings = kafka_settings
    rng = random.Random(SEED)
    day2 = pq.read_table(fuzz_log["day2"])
    train_day(settings, D1, window_days=1, data=fuzz_log["full"])  # a model exists before the first event

    valid = _valid_messages(day2, rng)
    template = day2.slice(0, 1).to_pylist()[0]
    bad_events, bad_anomalies = _corpus(template, rng)
    assert len(bad_events) + len(bad_anomalies) >= 1_000
    stream = list(valid)
    for item in bad_events:  # random positions, never before the first valid messages
        stream.insert(rng.randrange(FIRST_MALFORMED_AFTER, len(stream) + 1), item)

    wb = Workbench.start(settings=settings, retrain_every_days=30)
    try:
        events_at = _produce(settings, settings.topic_query_events, stream)
        anomalies_at = _produce(settings, settings.topic_anomalies, bad_anomalies)

        last: dict = {}

        def drained() -> bool:
            status = last["status"] = wb.status()
            return (bool(status.lag) and all(v == 0 for v in status.lag.values())
                    and min(status.events_processed.values(), default=0) >= day2.num_rows)

        try:
            _until(drained, timeout=240, what="a drained pipeline")
            time.sleep(3)  # the last checkpoint's anomalies reach the sink after the events' lag is 0
            _until(drained, timeout=60, what="a drained anomaly sink")
        except AssertionError as exc:
            status = last.get("status")
            detail = {"lag": status.lag, "processed": status.events_processed,
                      "restarts": {k: v.get("restarts") for k, v in status.processes.items()}} if status else None
            raise AssertionError(f"{exc}; last status {detail}") from None
        processes = read_state(settings.home)["processes"]
    finally:
        wb.stop()

    # (1) nothing was restarted
    for app, info in processes.items():
        assert info["restarts"] == 0 and info["state"] == "running", (SEED, app, info)

    # (2) each malformed message dead-lettered exactly once per consuming app, with a reason
    dead = consume_all(settings, settings.topic_dead_letter, timeout=60, to_end=True)  # the apps stopped
    seen: Counter = Counter()
    for message in dead:
        app = (_header(message, "app") or b"").decode()
        source = (_header(message, "source_topic") or b"").decode()
        position = (int(_header(message, "source_partition")), int(_header(message, "source_offset")))
        seen[(app, source, position)] += 1
        placed = (events_at if source == settings.topic_query_events else anomalies_at).get(position)
        assert placed is not None, (SEED, "a valid message was dead-lettered", app, position,
                                    _header(message, "reason"))
        reason = (_header(message, "reason") or b"").decode(errors="replace")
        assert reason.strip(), (SEED, placed.family, "no reason")
        if placed.reason:
            assert placed.reason in reason.lower(), (SEED, placed.family, reason)
    expected = Counter()
    for position, item in events_at.items():
        if item is not None:
            for app in EVENT_APPS:
                expected[(app, settings.topic_query_events, position)] += 1
    for position in anomalies_at:
        expected[("anomaly-sink", settings.topic_anomalies, position)] += 1
    missing = [(k, (events_at if k[1] == settings.topic_query_events else anomalies_at)[k[2]])
               for k in expected if seen[k] == 0]
    twice = [k for k, n in seen.items() if n > 1]
    assert not missing, (SEED, len(missing), sorted(Counter((k[0], m.family) for k, m in missing).items()))
    assert not twice, (SEED, twice[:5])

    # (3) every valid event exactly once in the shards, and no malformed row anywhere
    shards = read_shards(settings.shards_dir, columns=["instance_id", "query_id"])
    keys = Counter(zip(shards.column("instance_id").to_pylist(), shards.column("query_id").to_pylist(),
                       strict=True))
    want = Counter(zip(day2.column("instance_id").to_pylist(), day2.column("query_id").to_pylist(), strict=True))
    assert keys == want, (SEED, sum((keys - want).values()), sum((want - keys).values()))

    # (4) window_stats equals an offline DuckDB aggregation of the valid events
    assert stored_windows(settings) == expected_windows(fuzz_log["day2"]), SEED

    # (5) the lakehouse holds each anomaly the scoring app published exactly once, nothing malformed
    published = consume_all(settings, settings.topic_anomalies, timeout=30, to_end=True)
    good = set()
    for message in published:
        if (message.partition(), message.offset()) not in anomalies_at:
            value = orjson.loads(message.value())
            good.add((value["instance_id"], value["query_id"], value["model_version"]))
    assert good, (SEED, "the model flagged nothing: the lakehouse check would be empty")
    frame = wb.anomalies()
    lake = list(zip(frame["instance_id"], frame["query_id"], frame["model_version"], strict=True))
    assert len(lake) == len(set(lake)), (SEED, "duplicate rows in the lakehouse")
    assert {(int(i), int(q), v) for i, q, v in lake} == good, (SEED, len(lake), len(good))
