"""Small, exact test inputs and Kafka read-back helpers shared by the tests."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from confluent_kafka import Consumer, KafkaError, TopicPartition

from workbench.config import Settings
from workbench.data.schema import LABEL_SCHEMA, REDSET_SCHEMA


def make_log(path: Path, *, rows: int = 2000, instances: int = 3, start: str = "2024-03-04T00:00:00",
             spacing_s: float = 1.0, seed: int = 0, row_group_size: int = 500) -> Path:
    """A valid, sorted Redset-style log with evenly spaced arrivals (exact, not realistic)."""
    rng = np.random.default_rng(seed)
    t0 = int(datetime.fromisoformat(start).replace(tzinfo=UTC).timestamp() * 1_000_000)
    times = t0 + (np.arange(rows) * spacing_s * 1_000_000).astype(np.int64)
    instance = rng.integers(1, instances + 1, rows)
    columns = {
        "instance_id": instance,
        "cluster_size": np.where(instance % 2 == 0, 4, 0),
        "user_id": rng.integers(1, 20, rows),
        "database_id": rng.integers(1, 3, rows),
        "query_id": np.arange(rows) * 7 + 1_000_000_000_000,  # beyond int32 on purpose
        "arrival_timestamp": times,
        "compile_duration_ms": rng.integers(0, 500, rows),
        "queue_duration_ms": rng.integers(0, 50, rows),
        "execution_duration_ms": rng.integers(1, 5000, rows),
        "feature_fingerprint": [f"{x:064x}" for x in rng.integers(0, 50, rows)],
        "was_aborted": np.zeros(rows, bool),
        "was_cached": rng.random(rows) < 0.1,
        "cache_source_query_id": [None] * rows,
        "query_type": rng.choice(["select", "insert", "copy"], rows),
        "num_permanent_tables_accessed": rng.integers(0, 4, rows),
        "num_external_tables_accessed": np.zeros(rows, np.int64),
        "num_system_tables_accessed": np.zeros(rows, np.int64),
        "read_table_ids": ["1,2"] * rows,
        "write_table_ids": [None] * rows,
        "mbytes_scanned": rng.integers(0, 3000, rows),
        "mbytes_spilled": np.zeros(rows, np.int64),
        "num_joins": rng.integers(0, 3, rows),
        "num_scans": rng.integers(0, 3, rows),
        "num_aggregations": rng.integers(0, 3, rows),
    }
    arrays = []
    for field in REDSET_SCHEMA:
        values = columns[field.name]
        if field.name == "cluster_size":
            arrays.append(pa.array(values, pa.int64(), mask=np.asarray(values) == 0))
        elif field.name == "arrival_timestamp":
            arrays.append(pa.array(values, pa.int64()).cast(field.type))
        else:
            arrays.append(pa.array(values, field.type))
    labels = [pa.array(np.zeros(rows, bool)), pa.array([None] * rows, pa.string())]
    schema = pa.schema(list(REDSET_SCHEMA) + list(LABEL_SCHEMA))
    table = pa.Table.from_arrays(arrays + labels, schema=schema)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def consume_all(settings: Settings, topic: str, *, expected: int | None = None, timeout: float = 60.0,
                idle: float = 3.0, to_end: bool = False, markers: bool = False) -> list:
    """Every committed message of ``topic`` (read_committed), until ``expected`` or ``idle`` s of silence.

    ``to_end``: the writers are done, so read exactly up to the end of every partition (its last
    committed message) and stop there, instead of waiting for ``idle`` s of silence. ``markers``: keep
    the replay's end-of-log markers (:func:`workbench.data.codec.end_of_log_message`), which are not events.
    """
    consumer = Consumer({
        **settings.kafka_client_config(), "group.id": f"test-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False, "isolation.level": "read_committed",
        "enable.partition.eof": to_end,
    })
    metadata = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in metadata.partitions])
    open_partitions = set(metadata.partitions)
    messages: list = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(num_messages=10_000, timeout=0.5)
            if to_end:
                open_partitions -= {m.partition() for m in batch
                                    if m.error() and m.error().code() == KafkaError._PARTITION_EOF}
            batch = [m for m in batch if not m.error() and (markers or not _is_marker(m))]
            if batch:
                messages.extend(batch)
                last = time.monotonic()
            if to_end:
                if not open_partitions:
                    break
                continue
            if expected is not None and len(messages) >= expected and time.monotonic() - last > 0.5:
                break
            if expected is None and time.monotonic() - last > idle:
                break
    finally:
        consumer.close()
    return messages


def _is_marker(message: Any) -> bool:
    from workbench.data.codec import END_OF_LOG_HEADER

    return any(key == END_OF_LOG_HEADER for key, _ in message.headers() or ())


def wait_until(condition: Callable[[], Any], timeout: float = 30.0, poll: float = 0.2, what: str = "") -> Any:
    """Poll ``condition`` until it returns something truthy (returned), or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(poll)
    raise AssertionError(f"{what or 'condition'} not reached in {timeout} s (last value {last!r})")


def free_port_pair(span: int = 2) -> int:
    """A port pair (or ``span`` consecutive free ports) below Linux's ephemeral range (32768+), so no
    client socket can hold it."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000, 2)
        ok = True
        for candidate in range(port, port + span):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", candidate))
                except OSError:
                    ok = False
        if ok:
            return port
    msg = "no free port pair found for the test broker"
    raise RuntimeError(msg)


def kill_scoring_child(settings: Settings, *args: str, events: int, timeout: float = 120.0) -> dict[str, Any]:
    """Run ``workbench app scoring *args`` as a child process and SIGKILL it once it stored ``events`` events.

    Returns the child's last status (as read before the kill). Fails if the child exits or does not
    get there within ``timeout`` s.
    """
    from workbench.pipeline import read_app_status

    env = {**os.environ, **settings.to_env()}
    child = subprocess.Popen([sys.executable, "-m", "workbench.cli", "app", "scoring", *args], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            status = read_app_status(settings, "scoring")
            if status is not None and status["counters"].get("events", 0) >= events:
                break
            assert child.poll() is None and time.monotonic() < deadline, "scoring child never got going"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=10)
    return status


def store_generated_days(settings: Settings, *, days: int, start: Any, seed: int = 3,
                         rows_per_day: int = 1500) -> Settings:
    """A generated log's days stored as the scoring app would: one unscored shard per day, partition 0,
    consecutive offsets. Returns ``settings``."""
    from workbench.data.schema import COLUMNS
    from workbench.ml._testing import day_slice, generated_log
    from workbench.store.shards import write_shard

    log = generated_log(days=days, rows_per_day=rows_per_day, seed=seed, start=start).select(list(COLUMNS))
    offset = 0
    for k in range(days):
        day = start + timedelta(days=k)
        part = day_slice(log, day)
        n = part.num_rows
        part = part.append_column("kafka_partition", pa.array([0] * n, pa.int32()))
        part = part.append_column("kafka_offset", pa.array(range(offset, offset + n), pa.int64()))
        write_shard(settings.shards_dir, day, 0, offset, part)
        offset += n
    return settings


def produce_raw(bootstrap: str, topic: str, partition: int, key: bytes | None, value: bytes | None,
                headers: list[tuple[bytes, bytes | None]]) -> int:
    """Produce one record whose header *names* are any bytes, by a hand-built Produce v3 request (record
    batch v2); returns the broker's error code (0: stored). confluent-kafka writes a bytes header name as
    its repr text and Java clients write names as UTF-8, so neither can send a name that is not UTF-8;
    any other client can, and the broker takes it."""
    import struct

    def varint(n: int) -> bytes:
        zigzag, out = (n << 1) ^ (n >> 63), bytearray()
        while True:
            byte, zigzag = zigzag & 0x7F, zigzag >> 7
            out.append(byte | 0x80 if zigzag else byte)
            if not zigzag:
                return bytes(out)

    def field(data: bytes | None) -> bytes:
        return varint(-1) if data is None else varint(len(data)) + data

    def crc32c(data: bytes) -> int:
        crc = 0xFFFFFFFF
        for byte in data:
            crc ^= byte
            for _ in range(8):
                crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        return crc ^ 0xFFFFFFFF

    body = b"\x00" + varint(0) + varint(0) + field(key) + field(value) + varint(len(headers))
    body += b"".join(field(name) + field(data) for name, data in headers)
    now_ms = int(time.time() * 1000)
    after_crc = struct.pack(">hiqqqhii", 0, 0, now_ms, now_ms, -1, -1, -1, 1) + varint(len(body)) + body
    batch = struct.pack(">ibI", -1, 2, crc32c(after_crc)) + after_crc
    records = struct.pack(">qi", 0, len(batch)) + batch
    client, name = b"tests", topic.encode()
    request = struct.pack(">hhih", 0, 3, 7, len(client)) + client + struct.pack(">hhi", -1, 1, 10_000)
    request += struct.pack(">ih", 1, len(name)) + name + struct.pack(">iii", 1, partition, len(records)) + records
    host, port = bootstrap.split(",")[0].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        size = struct.unpack(">i", sock.recv(4))[0]
        response = b""
        while len(response) < size:
            response += sock.recv(size - len(response))
    name_length = struct.unpack(">h", response[8:10])[0]  # correlation id, topic count, then the topic
    return struct.unpack(">h", response[10 + name_length + 8:10 + name_length + 10])[0]
