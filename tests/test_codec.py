"""The message contract: both encodings round-trip, bad messages are reported, never raised."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pyarrow as pa
import pytest

from workbench.data import codec
from workbench.data.schema import COLUMNS, REDSET_SCHEMA


def _batch(rows: int = 5) -> pa.RecordBatch:
    data = []
    for i in range(rows):
        row = {name: None for name in COLUMNS}
        row.update(instance_id=7, query_id=2**40 + i, query_type="select", num_joins=i, was_cached=i % 2 == 0,
                   arrival_timestamp=datetime(2024, 3, 4, 12, 0, i, 123456, tzinfo=UTC), read_table_ids="1,2")
        data.append(row)
    return pa.RecordBatch.from_pylist(data, schema=REDSET_SCHEMA)


def test_json_round_trip_keeps_values_nulls_and_microseconds() -> None:
    batch = _batch()
    values = codec.encode_json(batch)
    first = orjson.loads(values[0])
    assert list(first) == list(COLUMNS)
    assert first["arrival_timestamp"] == "2024-03-04T12:00:00.123456+00:00"
    assert first["cluster_size"] is None
    decoded = codec.decode_values(values)
    assert decoded.errors == [] and decoded.source_index == [0, 1, 2, 3, 4]
    assert decoded.batch.to_pylist() == batch.cast(REDSET_SCHEMA.remove_metadata()).to_pylist()


def test_arrow_round_trip_and_label_columns_are_dropped() -> None:
    batch = _batch()
    labelled = batch.append_column("label_anomaly", pa.array([True] * 5)).append_column(
        "label_kind", pa.array(["x"] * 5))
    value = codec.encode_arrow(labelled)
    decoded = codec.decode_value(value, codec.ENCODING_ARROW)
    assert decoded.schema.names == list(COLUMNS)
    assert decoded.to_pylist() == batch.to_pylist()
    assert "label_anomaly" not in orjson.loads(codec.encode_json(labelled)[0])


def test_bad_messages_are_reported_with_their_position_and_reason() -> None:
    good = codec.encode_json(_batch(2))
    mistyped = orjson.loads(good[0])
    mistyped["num_joins"] = "many"
    missing = orjson.loads(good[0])
    del missing["query_id"]
    values = [good[0], b"{not json", orjson.dumps(mistyped), orjson.dumps(missing), b"\x00\x01", None, good[1]]
    encodings = ["json", "json", "json", "json", "arrow", "json", "json"]
    decoded = codec.decode_values(values, encodings)
    assert decoded.batch.num_rows == 2 and decoded.source_index == [0, 6]
    reasons = dict(decoded.errors)
    assert set(reasons) == {1, 2, 3, 4, 5}
    assert "invalid JSON" in reasons[1]
    assert "mistyped" in reasons[2] and "many" in reasons[2]
    assert "query_id" in reasons[3]
    assert "Arrow" in reasons[4]
    assert "empty" in reasons[5]


def test_unknown_encoding_and_header_helpers() -> None:
    decoded = codec.decode_values([b"{}"], ["avro"])
    assert "unknown encoding 'avro'" in decoded.errors[0][1]
    headers = codec.message_headers(codec.ENCODING_ARROW, 3)
    assert codec.header(headers, "schema") == "redset/1"
    assert codec.header(headers, "rows") == "3"
    assert codec.header(None, "encoding") is None
    with pytest.raises(codec.MessageDecodeError, match="invalid JSON"):
        codec.decode_value(b"[", "json")
