"""The packed-Arrow path of decode_values gives exactly what the per-message path gives.

:func:`workbench.data.codec.decode_values` reads Arrow values in the replay's exact layout
(:mod:`workbench.data._arrow_fast`) and checks them together; ``codec._decode_values(...,
arrow_fast=False)`` judges every Arrow message on its own (the reference). For valid packed
messages, hostile ones that keep the layout (a null in a required column, a time out of range, a
wrong key or rows header), byte mutations and truncations, other layouts and mixes with JSON,
both must return the same batch, the same source positions and the same errors (code and text).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from tests.fuzz_corpus import arrow_value, event_headers, json_value, valid_row
from workbench.data import codec
from workbench.data.schema import REDSET_SCHEMA

SEED = 20251203
_SCHEMA = REDSET_SCHEMA.remove_metadata()


def _packed(first: int, rows: int, instance: int = 3, encoding: str = "arrow") -> tuple[bytes, list, bytes]:
    """A message as the replay writes it (``codec`` encoder, event schema without metadata)."""
    batch = pa.RecordBatch.from_pylist([valid_row(first + j, instance) for j in range(rows)], schema=_SCHEMA)
    value = codec.get_encoding(encoding).encode(batch)
    return value, event_headers(encoding, rows), str(instance).encode()


def _unchecked(rows: list[dict], instance_ids: list | None = None, query_ids: list | None = None) -> bytes:
    """The replay's layout with values the schema's nullability does not stop (a hostile producer)."""
    batch = pa.RecordBatch.from_pylist(rows, schema=_SCHEMA.with_metadata(None))
    arrays = [pa.array(query_ids, pa.int64()) if name == "query_id" and query_ids is not None
              else pa.array(instance_ids, pa.int64()) if name == "instance_id" and instance_ids is not None
              else batch.column(name) for name in _SCHEMA.names]
    return codec.encode_arrow(pa.RecordBatch.from_arrays(arrays, schema=_SCHEMA))


def _assert_same(values: list, headers: list | None, keys: list | None) -> codec.DecodedBatch:
    fast = codec.decode_values(values, headers=headers, keys=keys)
    exact = codec._decode_values(values, None, headers=headers, keys=keys, json_fast=True, arrow_fast=False)
    assert fast.errors == exact.errors
    assert fast.source_index == exact.source_index
    assert fast.batch.schema == exact.batch.schema
    assert fast.batch.equals(exact.batch), (fast.batch.to_pylist()[:2], exact.batch.to_pylist()[:2])
    return fast


def test_valid_packed_messages_take_the_batched_path_only(monkeypatch: pytest.MonkeyPatch) -> None:
    messages = [_packed(100 * i, 1 + i % 7, instance=1 + i % 3) for i in range(60)]
    expected = [row for i in range(60) for row in (valid_row(100 * i + j, 1 + i % 3) for j in range(1 + i % 7))]

    def per_message(*args: object, **kwargs: object) -> None:
        raise AssertionError("a valid packed message took the per-message path")

    monkeypatch.setattr(codec, "_decode_one", per_message)
    decoded = codec.decode_values([m[0] for m in messages], headers=[m[1] for m in messages],
                                  keys=[m[2] for m in messages])
    assert decoded.errors == []
    assert decoded.source_index == [i for i in range(60) for _ in range(1 + i % 7)]
    assert decoded.batch.to_pylist() == expected


def _hostile() -> list[tuple[bytes, list, bytes]]:
    """Messages in the replay's layout that the per-message path rejects (or accepts) for their values."""
    rows = [valid_row(500 + j) for j in range(3)]
    far = {**valid_row(600), "arrival_timestamp": datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)}
    return [
        (_unchecked(rows, query_ids=[1, None, 3]), event_headers("arrow", 3), b"3"),  # null in a required column
        (_unchecked(rows, instance_ids=[3, None, 3]), event_headers("arrow", 3), b"3"),
        (_unchecked([far]), event_headers("arrow", 1), b"3"),  # the latest time a datetime holds: valid
        (_packed(700, 3)[0], event_headers("arrow", 2), b"3"),  # rows header does not match
        (_packed(710, 3)[0], event_headers("arrow", 3), b"4"),  # key does not match
        (_packed(720, 3)[0], event_headers("arrow", 3), b"\xff"),  # key not text
        (_packed(730, 0)[0], event_headers("arrow", 0), b"x"),  # no rows, a bad key: rejected all the same
        (_unchecked([valid_row(740, 3), valid_row(741, 4)]), event_headers("arrow", 2), b"3"),  # two instances
        (arrow_value([valid_row(750)]), event_headers("arrow", 1), b"3"),  # another schema layout (metadata)
        (_packed(760, 4, encoding="arrow-zstd")[0], event_headers("arrow-zstd", 4), b"3"),
        (_packed(770, 2)[0] + b"\0" * 8, event_headers("arrow", 2), b"3"),  # bytes after the end marker
        (_packed(780, 2)[0][:-8], event_headers("arrow", 2), b"3"),  # no end marker
        (_packed(790, 2)[0], [("encoding", b"arrow")], b"3"),  # no rows header
        (json_value(valid_row(800)), event_headers("json", 1), b"3"),
    ]


def _mutated(rng: random.Random, value: bytes) -> bytes:
    data = bytearray(value)
    kind = rng.randrange(3)
    if kind == 0:  # flipped bytes
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == 1:  # cut
        return bytes(data[:rng.randrange(len(data))])
    start = rng.randrange(len(data))  # a stretch overwritten
    data[start:start + rng.randrange(1, 16)] = bytes(rng.randrange(256) for _ in range(16))[:len(data) - start]
    return bytes(data)


def test_both_paths_agree_on_hostile_mutated_and_mixed_messages() -> None:
    rng = random.Random(SEED)
    valid = [_packed(10 * i, 1 + i % 9, instance=3) for i in range(80)]
    stream = list(valid)
    for message in _hostile():
        stream.insert(rng.randrange(len(stream) + 1), message)
    mutated = [(_mutated(rng, value), headers, key) for value, headers, key in rng.choices(valid, k=300)]
    rejected = 0
    for start in range(0, len(mutated), 30):  # each chunk: valid messages with some mutated ones among them
        chunk = stream[start // 3:start // 3 + 20] + mutated[start:start + 30]
        rng.shuffle(chunk)
        values, headers, keys = ([m[i] for m in chunk] for i in range(3))
        rejected += len(_assert_same(values, headers, keys).errors)
        _assert_same(values, headers, None)  # no keys given: none checked
    assert rejected >= 100  # most mutations are rejected, each with the per-message path's reason
    values, headers, keys = ([m[i] for m in stream] for i in range(3))
    decoded = _assert_same(values, headers, keys)
    codes = sorted(reason.split(":")[0] for _, reason in decoded.errors)  # the hostile messages that are invalid
    assert codes == ["bad_key"] * 4 + ["null_in_required"] * 2 + ["rows_mismatch"]
    for message in _hostile():  # each on its own, and next to valid messages only
        _assert_same([message[0]], [message[1]], [message[2]])
        _assert_same([valid[0][0], message[0], valid[1][0]], [valid[0][1], message[1], valid[1][1]],
                     [valid[0][2], message[2], valid[1][2]])


def _zero_rows(rows: int) -> pa.RecordBatch:
    """``rows`` events of zeros and empty strings: what zstd shrinks ~27,000 times (a compression bomb)."""
    arrays = []
    for field in _SCHEMA:
        if pa.types.is_string(field.type):
            offsets = pa.py_buffer(bytes(4 * (rows + 1)))
            arrays.append(pa.Array.from_buffers(pa.string(), rows, [None, offsets, pa.py_buffer(b"")]))
        else:
            arrays.append(pa.array(np.zeros(rows, np.int64)).cast(field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=_SCHEMA)


def _null_columns(rows: int) -> bytes:
    """Every column of Arrow's null type, ``rows`` long: no buffer at all, so ~2 KB whatever ``rows`` is."""
    batch = pa.RecordBatch.from_arrays([pa.nulls(rows)] * len(_SCHEMA), names=_SCHEMA.names)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def test_a_message_that_declares_more_than_it_may_decode_to_is_refused_before_decoding(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A few KB of Arrow can declare gigabytes: zstd of zeros (~27,000:1), or NULL-typed columns with a length and
    no buffer, which the conversion to the event schema allocates (1,840 bytes declared 10^8 rows of 24 columns:
    9 s and 4 GB, more without a memory limit). Refused from the metadata, on both paths, before any allocation."""
    nulls = _null_columns(10_000_000)  # 1.9 GB once converted: before, it was converted (~2 GB, seconds)
    assert len(nulls) < 4096
    decoded = _assert_same([nulls], [event_headers("arrow", 10_000_000)], [b"0"])
    assert decoded.batch.num_rows == 0
    assert decoded.errors == [(0, f"too_large: the Arrow stream would decode to 1,920,000,000 bytes (more than "
                                  f"{codec.MAX_DECODED_BYTES:,}) from {len(nulls):,}; not decoded")]
    # a compressed one in the replay's exact layout (the batched path), under a lower limit to keep the test small
    bomb = codec.get_encoding("arrow-zstd").encode(_zero_rows(20_000))
    assert len(bomb) < 4096
    valid = _packed(0, 5, instance=0, encoding="arrow-zstd")
    values, headers, keys = [valid[0], bomb, valid[0]], [valid[1], event_headers("arrow-zstd", 20_000), valid[1]], \
        [b"0"] * 3
    assert codec.decode_values(values, headers=headers, keys=keys).batch.num_rows == 20_010  # within the limit
    monkeypatch.setattr(codec, "MAX_DECODED_BYTES", 1_000_000)
    decoded = _assert_same(values, headers, keys)
    assert decoded.batch.num_rows == 10 and decoded.source_index == [0] * 5 + [2] * 5
    [(position, reason)] = decoded.errors
    assert position == 1 and reason.startswith("too_large: the Arrow stream would decode to 7,045,016 bytes (more "
                                               "than 1,000,000) from ")


def test_bytes_after_the_stream_are_refused_not_dropped() -> None:
    """A message is one IPC stream: a second stream after the first (its rows were dropped without a word when
    no rows header counted them) or trailing bytes are refused, on both paths."""
    value, headers, key = _packed(0, 3)
    bare = [("schema", headers[0][1]), ("encoding", b"arrow")]  # no rows header: nothing counts the rows
    for extra, tail in ((value, f"{len(value):,} bytes follow"), (b"xyz", "3 bytes follow")):
        decoded = _assert_same([value + extra, value], [bare, headers], [key, key])
        assert decoded.batch.num_rows == 3 and decoded.source_index == [1, 1, 1]
        [(position, reason)] = decoded.errors
        assert position == 0
        assert reason == (f"invalid_arrow: {tail} the end of the Arrow IPC stream at byte {len(value):,} "
                          "(a message holds one stream)")
    no_end = value[:-8]  # the end-of-stream marker is optional, and zero padding after it holds nothing
    assert _assert_same([no_end, value + bytes(8)], [bare, bare], [key, key]).batch.num_rows == 6
