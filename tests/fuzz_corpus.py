"""A seeded corpus of malformed Kafka messages, one family per way a message can be wrong.

Each family is one entry of :data:`EVENT_FAMILIES` (for ``redshift.query_events``) or
:data:`ANOMALY_FAMILIES` (for ``redshift.anomalies``): a function of a random generator and a
valid template row that returns one malformed message. The messages are written against the
wire contract in the README (headers ``schema``/``encoding``/``rows``, JSON or Arrow IPC values),
not against the package's encoder, so the corpus also checks that contract from the outside.

Every malformed event carries query ids from a range no valid event uses
(:data:`MALFORMED_QUERY_IDS`), so a test can assert that none of its rows reached a store.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson
import pyarrow as pa

from workbench.data.schema import REDSET_SCHEMA, SCHEMA_VERSION

__all__ = [
    "ANOMALY_FAMILIES",
    "EVENT_FAMILIES",
    "MALFORMED_QUERY_IDS",
    "Malformed",
    "arrow_value",
    "event_headers",
    "json_value",
]

#: Query ids of malformed rows start here; valid test events stay far below.
MALFORMED_QUERY_IDS = 8_000_000_000_000_000
_INT64_MAX = 2**63 - 1
_INT_COLUMNS = [f.name for f in REDSET_SCHEMA if pa.types.is_integer(f.type)]
_REQUIRED = [f.name for f in REDSET_SCHEMA if not f.nullable]


@dataclass
class Malformed:
    """One malformed message and what the pipeline must do with it."""

    family: str
    value: bytes | None
    key: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    #: a text the dead letter's ``reason`` header must contain (lower case), or None for any reason
    reason: str | None = None


_VALID_T0 = datetime(2024, 3, 5, tzinfo=UTC)


def valid_row(i: int, instance: int = 3) -> dict:
    """The ``i``-th of a run of valid events of one instance (nulls where the schema allows them), as a dict."""
    return {
        "instance_id": instance, "cluster_size": 4 if i % 5 else None, "user_id": 7 + i % 3, "database_id": 1,
        "query_id": 1_000 + i,
        "arrival_timestamp": _VALID_T0 + timedelta(seconds=i, microseconds=(i * 7919) % 3 * 250_000),
        "compile_duration_ms": 3, "queue_duration_ms": 0, "execution_duration_ms": 120 + i,
        "feature_fingerprint": f"fp{i % 4}" if i % 6 else None, "was_aborted": i % 7 == 0,
        "was_cached": None if i % 11 == 0 else i % 2 == 0, "cache_source_query_id": None,
        "query_type": "select", "num_permanent_tables_accessed": 2, "num_external_tables_accessed": 0,
        "num_system_tables_accessed": 0, "read_table_ids": "1,2", "write_table_ids": None,
        "mbytes_scanned": 10 * i, "mbytes_spilled": 0, "num_joins": 1, "num_scans": 2, "num_aggregations": 0,
    }


def event_headers(encoding: str | bytes, rows: int | bytes) -> list[tuple[str, bytes]]:
    """The three headers of an event message (values may be deliberately wrong)."""
    enc = encoding if isinstance(encoding, bytes) else encoding.encode()
    n = rows if isinstance(rows, bytes) else str(rows).encode()
    return [("schema", SCHEMA_VERSION.encode()), ("encoding", enc), ("rows", n)]


def _iso(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value


def json_value(row: dict) -> bytes:
    """One row as the README's JSON encoding: all 24 columns, ISO-8601 UTC times, null for nulls."""
    return orjson.dumps({name: _iso(row.get(name)) for name in REDSET_SCHEMA.names})


def arrow_value(rows: list[dict], schema: pa.Schema = REDSET_SCHEMA) -> bytes:
    """Rows as the README's Arrow encoding: an IPC stream with one record batch."""
    batch = pa.RecordBatch.from_pylist(rows, schema=schema)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue()


class _Ids:
    """Fresh query ids for malformed rows."""

    def __init__(self) -> None:
        self.next = MALFORMED_QUERY_IDS

    def __call__(self) -> int:
        self.next += 1
        return self.next


_new_id = _Ids()


def _row(template: dict, **changes: object) -> dict:
    return {**template, "query_id": _new_id(), **changes}


def _key(row: dict) -> bytes:
    return str(row["instance_id"]).encode()


def _json(family: str, row: dict, reason: str | None = None, *, raw: bytes | None = None) -> Malformed:
    value = raw if raw is not None else json_value(row)
    return Malformed(family, value, _key(row), event_headers("json", 1), reason)


# -- event families ----------------------------------------------------------------------------

def _key_not_utf8(rng: random.Random, t: dict) -> Malformed:
    key = bytes([0xFF, 0xFE]) + rng.randbytes(rng.randrange(0, 6))
    return Malformed("key_not_utf8", json_value(_row(t)), key, event_headers("json", 1))


def _encoding_not_utf8(rng: random.Random, t: dict) -> Malformed:
    row = _row(t)
    return Malformed("encoding_not_utf8", json_value(row), _key(row),
                     event_headers(bytes([0xC3, 0x28]) + rng.randbytes(2), 1))


def _encoding_unknown(rng: random.Random, t: dict) -> Malformed:
    row = _row(t)
    name = rng.choice(["xml", "avro", "protobuf", "csv", "json2", "arrow-lz9"])
    return Malformed("encoding_unknown", json_value(row), _key(row), event_headers(name, 1))


def _rows_not_a_count(rng: random.Random, t: dict) -> Malformed:
    rows = [_row(t) for _ in range(rng.randrange(1, 4))]
    bad = rng.choice([b"many", b"\xff\xfe", b"-3", b"1.5", b""])
    return Malformed("rows_not_a_count", arrow_value(rows), _key(rows[0]), event_headers("arrow", bad))


def _invalid_json(rng: random.Random, t: dict) -> Malformed:
    good = json_value(_row(t))
    raw = rng.choice([good[: rng.randrange(1, len(good) - 1)], b"{not json", rng.randbytes(rng.randrange(1, 64)),
                      good.replace(b":", b"=", 1)])
    return _json("invalid_json", t, raw=raw)


def _json_not_object(rng: random.Random, t: dict) -> Malformed:
    raw = rng.choice([b"[1, 2, 3]", b"42", b'"a string"', b"null", b"true", b"[{}]"])
    return _json("json_not_object", t, raw=raw)


def _json_wrong_type(rng: random.Random, t: dict) -> Malformed:
    row = _row(t)
    column = rng.choice([*_INT_COLUMNS, "arrival_timestamp", "was_cached", "query_type"])
    row[column] = rng.choice(["slow", {"nested": 1}, [1, 2], 1.5] if column in _INT_COLUMNS
                             else [{"nested": 1}, [1, 2]])
    return _json("json_wrong_type", row)


def _json_missing_required(rng: random.Random, t: dict) -> Malformed:
    row = _row(t)
    data = {name: _iso(row.get(name)) for name in REDSET_SCHEMA.names}
    del data[rng.choice(_REQUIRED)]
    return _json("json_missing_required", row, raw=orjson.dumps(data))


def _json_null_required(rng: random.Random, t: dict) -> Malformed:
    return _json("json_null_required", _row(t, **{rng.choice(_REQUIRED): None}))


def _json_int_out_of_range(rng: random.Random, t: dict) -> Malformed:
    column = rng.choice(["query_id", "mbytes_scanned", "execution_duration_ms", "instance_id", "user_id"])
    value = rng.choice([2**63, 2**64 + 5, -(2**63) - 1, 10**30])
    row = _row(t)
    data = {name: _iso(row.get(name)) for name in REDSET_SCHEMA.names}
    data[column] = value
    # orjson refuses integers beyond 64 bits: write those digits by hand
    raw = orjson.dumps({**data, column: 0}).replace(f'"{column}":0'.encode(), f'"{column}":{value}'.encode())
    return _json("json_int_out_of_range", row, raw=raw)


def _json_bad_time(rng: random.Random, t: dict) -> Malformed:
    text = rng.choice(["yesterday", "2024-02-30T00:00:00+00:00", "", "2024-13-01T00:00:00+00:00", 12345,
                       "10000-01-01T00:00:00+00:00", "2024-03-04T25:61:00+00:00"])
    return _json("json_bad_time", _row(t, arrival_timestamp=text))


def _event_time_out_of_range(rng: random.Random, t: dict) -> Malformed:
    when = rng.choice([datetime(2035, 6, 1, tzinfo=UTC), datetime(2099, 1, 1, tzinfo=UTC),
                       datetime(1975, 1, 1, tzinfo=UTC), datetime(2001, 9, 9, tzinfo=UTC)])
    when = when.replace(microsecond=rng.randrange(0, 10**6))
    row = _row(t, arrival_timestamp=when)
    family = f"event_time_out_of_range ({when.year})"
    if rng.random() < 0.5:
        return _json(family, row, "event_time_out_of_range")
    return Malformed(family, arrow_value([row]), _key(row), event_headers("arrow", 1), "event_time_out_of_range")


def _arrow_garbage(rng: random.Random, t: dict) -> Malformed:
    return Malformed("arrow_garbage", rng.randbytes(rng.randrange(0, 300)), _key(t), event_headers("arrow", 1))


def _arrow_truncated(rng: random.Random, t: dict) -> Malformed:
    value = arrow_value([_row(t) for _ in range(3)])
    return Malformed("arrow_truncated", value[: rng.randrange(8, len(value) - 8)], _key(t),
                     event_headers("arrow", 3))


def _arrow_null_required(rng: random.Random, t: dict) -> Malformed:
    nullable = pa.schema([f.with_nullable(True) for f in REDSET_SCHEMA])
    rows = [_row(t) for _ in range(rng.randrange(1, 5))]
    rows[rng.randrange(len(rows))][rng.choice(_REQUIRED)] = None
    return Malformed("arrow_null_required", arrow_value(rows, nullable), _key(t), event_headers("arrow", len(rows)))


def _arrow_wrong_schema(rng: random.Random, t: dict) -> Malformed:
    rows = [_row(t) for _ in range(2)]
    fields = list(REDSET_SCHEMA)
    if rng.random() < 0.5:
        drop = rng.choice(range(len(fields)))
        schema = pa.schema(fields[:drop] + fields[drop + 1:])
        rows = [{k: v for k, v in r.items() if k != fields[drop].name} for r in rows]
    else:
        i = rng.choice([REDSET_SCHEMA.get_field_index(c) for c in ("mbytes_scanned", "num_joins", "queue_duration_ms")])
        fields[i] = pa.field(fields[i].name, pa.string())
        schema = pa.schema(fields)
        rows = [{**r, fields[i].name: "lots"} for r in rows]
    return Malformed("arrow_wrong_schema", arrow_value(rows, schema), _key(t), event_headers("arrow", 2))


def _arrow_int_out_of_range(rng: random.Random, t: dict) -> Malformed:
    column = rng.choice(["query_id", "mbytes_scanned", "execution_duration_ms"])
    fields = [pa.field(f.name, pa.uint64(), nullable=f.nullable) if f.name == column else f for f in REDSET_SCHEMA]
    row = _row(t, **{column: 2**63 + rng.randrange(1, 10**6)})
    return Malformed("arrow_int_out_of_range", arrow_value([row], pa.schema(fields)), _key(t),
                     event_headers("arrow", 1))


def _empty_value(rng: random.Random, t: dict) -> Malformed:
    encoding = rng.choice(["json", "arrow"])
    return Malformed("empty_value", rng.choice([None, b""]), _key(t), event_headers(encoding, 1))


def _oversized(rng: random.Random, t: dict) -> Malformed:
    # above librdkafka's default 1 MB producer limit, below the topic's own limit
    return Malformed("oversized", rng.randbytes(2 * 1024 * 1024 + rng.randrange(0, 1024)), _key(t),
                     event_headers("json", 1))


def _schema_unknown(rng: random.Random, t: dict) -> Malformed:
    """Another version of the event schema must not be read as this one, whatever its body holds."""
    row = _row(t)
    other = rng.choice([b"redset/2", b"redset/0", b"anomaly-v1", b"", b"REDSET/1", b"redset/1 "])
    headers = [("schema", other), *event_headers("json", 1)[1:]]
    return Malformed("schema_unknown", json_value(row), _key(row), headers, "unknown_schema")


def _header_twice(rng: random.Random, t: dict) -> Malformed:
    rows = [_row(t) for _ in range(2)]
    name, values = rng.choice([("encoding", (b"json", b"arrow")), ("encoding", (b"arrow", b"arrow")),
                               ("rows", (b"2", b"1")), ("schema", (SCHEMA_VERSION.encode(),) * 2)])
    once = dict(event_headers("arrow", 2)) | {name: values[0]}
    headers = [*once.items(), (name, values[1])]
    return Malformed("header_twice", arrow_value(rows), _key(t), headers, "bad_header")


def _extra_columns(rng: random.Random, t: dict) -> Malformed:
    """A column beyond the 24: the generator's labels, an unknown field, a column twice."""
    row = _row(t)
    extra = rng.choice([{"label_anomaly": True, "label_kind": "slow_fingerprint"}, {"note": "x"}, {"Query_ID": 1}])
    if rng.random() < 0.5:
        data = {name: _iso(row.get(name)) for name in REDSET_SCHEMA.names} | extra
        return _json("extra_columns", row, "extra_columns", raw=orjson.dumps(data))
    batch = pa.RecordBatch.from_pylist([row], schema=REDSET_SCHEMA)
    for name, value in extra.items():
        batch = batch.append_column(name, pa.array([value]))
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return Malformed("extra_columns", sink.getvalue(), _key(row), event_headers("arrow", 1), "extra_columns")


def _key_mismatch(rng: random.Random, t: dict) -> Malformed:
    """The key must be the instance id of every row: another id, none, or rows of two instances."""
    row = _row(t)
    choice = rng.randrange(3)
    if choice == 0:
        return Malformed("key_mismatch", json_value(row), str(row["instance_id"] + 1000).encode(),
                         event_headers("json", 1), "bad_key")
    if choice == 1:
        return Malformed("key_mismatch", json_value(row), None, event_headers("json", 1), "bad_key")
    rows = [row, _row(t, instance_id=t["instance_id"] + 1000)]
    return Malformed("key_mismatch", arrow_value(rows), _key(row), event_headers("arrow", 2), "bad_key")


def _encoding_mismatch(rng: random.Random, t: dict) -> Malformed:
    """A header that names one encoding over a body of another."""
    row = _row(t)
    if rng.random() < 0.5:
        return Malformed("encoding_mismatch", arrow_value([row]), _key(row), event_headers("json", 1), "invalid_json")
    headers = event_headers(rng.choice(["arrow", "arrow-zstd"]), 1)
    return Malformed("encoding_mismatch", json_value(row), _key(row), headers, "invalid_arrow")


def _json_name_twice(rng: random.Random, t: dict) -> Malformed:
    """A name given twice: JSON readers keep the last copy, so the first would pass unseen."""
    row = _row(t)
    column = rng.choice(["execution_duration_ms", "query_id", "instance_id", "was_aborted", "arrival_timestamp"])
    second = rng.choice([json_value(row)[1:-1].split(b",", 1)[0], orjson.dumps({column: _iso(row[column])})[1:-1]])
    raw = json_value(row)[:-1] + b"," + second + b"}"
    return _json("json_name_twice", row, "appears twice", raw=raw)


def _negative_value(rng: random.Random, t: dict) -> Malformed:
    """A negative duration, size or count (what the log validator refuses too)."""
    column = rng.choice(["execution_duration_ms", "queue_duration_ms", "compile_duration_ms", "mbytes_scanned",
                         "num_joins", "cluster_size"])
    row = _row(t, **{column: -rng.randrange(1, 10**6)})
    if rng.random() < 0.5:
        return _json("negative_value", row, f"negative_value: column '{column}'")
    return Malformed("negative_value", arrow_value([_row(t), row]), _key(row), event_headers("arrow", 2),
                     f"negative_value: column '{column}'")


def _key_not_canonical(rng: random.Random, t: dict) -> Malformed:
    """The instance id spelled otherwise than the producer writes it: another partition's key."""
    row = _row(t)
    key = rng.choice(["00{}", "0{}", " {}", "{} ", "+{}", "--{}", "-0{}"]).format(row["instance_id"]).encode()
    return Malformed("key_not_canonical", json_value(row), key, event_headers("json", 1), "bad_key")


_BOMBS: list[bytes] = []


def _bombs() -> list[bytes]:
    """Two Arrow values of a few KB that declare hundreds of MB decoded (built once: the zeros take a second)."""
    if not _BOMBS:
        schema = REDSET_SCHEMA.remove_metadata()
        rows = 1_000_000  # zstd of zeros: ~9 KB for 350 MB declared
        empty_text = [None, pa.py_buffer(bytes(4 * (rows + 1))), pa.py_buffer(b"")]
        arrays = [pa.Array.from_buffers(pa.string(), rows, empty_text) if pa.types.is_string(f.type)
                  else pa.nulls(rows, pa.int64()).fill_null(0).cast(f.type) for f in schema]
        zeros = pa.RecordBatch.from_arrays(arrays, schema=schema)
        nulls = pa.RecordBatch.from_arrays([pa.nulls(10 * rows)] * len(schema), names=schema.names)
        for batch, compression in ((zeros, "zstd"), (nulls, None)):
            sink = io.BytesIO()
            with pa.ipc.new_stream(sink, batch.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as w:
                w.write_batch(batch)
            _BOMBS.append(sink.getvalue())
    return _BOMBS


def _arrow_bomb(rng: random.Random, t: dict) -> Malformed:
    """Compressed zeros, or NULL-typed columns with a length and no buffer: tiny messages that would decode to
    hundreds of MB (before, the apps decoded them: 1.8 KB of NULL columns took 4 GB and seconds)."""
    value = rng.choice(_bombs())
    return Malformed("arrow_bomb", value, _key(t), event_headers(rng.choice(["arrow", "arrow-zstd"]), 1), "too_large")


#: family name -> (builder, messages per corpus)
EVENT_FAMILIES: dict[str, tuple[Callable[[random.Random, dict], Malformed], int]] = {
    "key_not_utf8": (_key_not_utf8, 60),
    "encoding_not_utf8": (_encoding_not_utf8, 50),
    "encoding_unknown": (_encoding_unknown, 50),
    "rows_not_a_count": (_rows_not_a_count, 50),
    "invalid_json": (_invalid_json, 80),
    "json_not_object": (_json_not_object, 50),
    "json_wrong_type": (_json_wrong_type, 80),
    "json_missing_required": (_json_missing_required, 60),
    "json_null_required": (_json_null_required, 60),
    "json_int_out_of_range": (_json_int_out_of_range, 60),
    "json_bad_time": (_json_bad_time, 60),
    "event_time_out_of_range": (_event_time_out_of_range, 60),
    "arrow_garbage": (_arrow_garbage, 50),
    "arrow_truncated": (_arrow_truncated, 50),
    "arrow_null_required": (_arrow_null_required, 60),
    "arrow_wrong_schema": (_arrow_wrong_schema, 50),
    "arrow_int_out_of_range": (_arrow_int_out_of_range, 40),
    "empty_value": (_empty_value, 30),
    "oversized": (_oversized, 3),
    "schema_unknown": (_schema_unknown, 30),
    "header_twice": (_header_twice, 30),
    "extra_columns": (_extra_columns, 40),
    "key_mismatch": (_key_mismatch, 40),
    "encoding_mismatch": (_encoding_mismatch, 30),
    "json_name_twice": (_json_name_twice, 30),
    "negative_value": (_negative_value, 30),
    "key_not_canonical": (_key_not_canonical, 30),
    "arrow_bomb": (_arrow_bomb, 6),
}


# -- anomaly families (for the anomaly sink) -------------------------------------------------------

def _anomaly(t: dict, **changes: object) -> dict:
    message = {
        "instance_id": t["instance_id"], "query_id": _new_id(), "model_version": "v9999-fuzz",
        "arrival_timestamp": _iso(t["arrival_timestamp"]), "execution_duration_ms": 1000,
        "pred_mean_ms": 10.0, "score": 9.0, "reason": "slow_execution",
    }
    message.update(changes)
    return message


def _anomaly_message(family: str, raw: bytes, key: bytes = b"1") -> Malformed:
    return Malformed(family, raw, key, [("schema", b"anomaly-v1")])


def _anomaly_int_overflow(rng: random.Random, t: dict) -> Malformed:
    column = rng.choice(["query_id", "instance_id", "user_id"])
    raw = orjson.dumps(_anomaly(t, **{column: 0})).replace(f'"{column}":0'.encode(),
                                                          f'"{column}":{2**63 + rng.randrange(1, 99)}'.encode())
    return _anomaly_message("anomaly_int_overflow", raw)


def _anomaly_time_overflow(rng: random.Random, t: dict) -> Malformed:
    text = rng.choice(["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "not a time", "+275760-09-13"])
    return _anomaly_message("anomaly_time_overflow", orjson.dumps(_anomaly(t, arrival_timestamp=text)))


def _anomaly_invalid(rng: random.Random, t: dict) -> Malformed:
    raw = rng.choice([b"{", b"[]", b"17", rng.randbytes(rng.randrange(1, 40)),
                      orjson.dumps({k: v for k, v in _anomaly(t).items() if k != rng.choice(
                          ["instance_id", "query_id", "model_version", "arrival_timestamp", "pred_mean_ms"])}),
                      orjson.dumps(_anomaly(t, execution_duration_ms="long")),
                      orjson.dumps(_anomaly(t, score=float("inf")) | {"score": None}).replace(b'"score":null',
                                                                                              b'"score":1e999')])
    return _anomaly_message("anomaly_invalid", raw)


def _anomaly_key_not_utf8(rng: random.Random, t: dict) -> Malformed:
    return _anomaly_message("anomaly_key_not_utf8", orjson.dumps(_anomaly(t)), bytes([0xFF]) + rng.randbytes(3))


def _anomaly_nul_model_version(rng: random.Random, t: dict) -> Malformed:
    """A NUL in the text the lakehouse keys rows by (before: it broke DuckLake's SQL and stopped the sink)."""
    version = rng.choice(["v1\x00", "\x00", "v0001-2024-03-04\x00x"])
    return _anomaly_message("anomaly_nul_model_version", orjson.dumps(_anomaly(t, model_version=version)),
                            str(t["instance_id"]).encode())


ANOMALY_FAMILIES: dict[str, tuple[Callable[[random.Random, dict], Malformed], int]] = {
    "anomaly_int_overflow": (_anomaly_int_overflow, 50),
    "anomaly_time_overflow": (_anomaly_time_overflow, 50),
    "anomaly_invalid": (_anomaly_invalid, 60),
    "anomaly_key_not_utf8": (_anomaly_key_not_utf8, 40),
    "anomaly_nul_model_version": (_anomaly_nul_model_version, 10),
}
