"""The message contract: both encodings round-trip, bad messages are reported, never raised."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pyarrow as pa
import pytest

from tests.fuzz_corpus import valid_row
from workbench.data import codec
from workbench.data.schema import COLUMNS, REDSET_SCHEMA
from workbench.data.validation import NON_NEGATIVE_COLUMNS


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


def _plain_json(batch: pa.RecordBatch) -> list[bytes]:
    """The encoding's definition: orjson of each row's Python values."""
    return [orjson.dumps(row) for row in batch.select(list(COLUMNS)).to_pylist()]


@pytest.mark.parametrize("times", [
    [datetime(2024, 3, 4, 12, 0, 0, 123456, tzinfo=UTC), datetime(2024, 3, 4, 12, 0, 1, tzinfo=UTC)],
    [datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)],
    [datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC), datetime(999, 5, 5, 1, 2, 3, 4, tzinfo=UTC)],
    [datetime(2024, 3, 4, tzinfo=UTC), None],
])
def test_json_encoding_writes_times_exactly_as_orjson_writes_their_datetimes(times: list) -> None:
    rows = [dict(valid_row(i), arrival_timestamp=t) for i, t in enumerate(times)]
    batch = pa.RecordBatch.from_pylist(rows, schema=REDSET_SCHEMA.remove_metadata())
    assert codec.encode_json(batch) == _plain_json(batch)
    # a time column of another type (here naive) is written as its Python values, as before
    naive = batch.set_column(5, "arrival_timestamp", batch.column(5).cast(pa.timestamp("us")))
    assert codec.encode_json(naive) == _plain_json(naive)


def test_json_encoding_equals_the_plain_encoding_on_many_rows() -> None:
    rows = [valid_row(i, instance=i % 5) for i in range(5000)]
    batch = pa.RecordBatch.from_pylist(rows, schema=REDSET_SCHEMA.remove_metadata())
    assert codec.encode_json(batch) == _plain_json(batch)


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
    assert reasons[1].startswith("invalid_json:")
    assert reasons[2].startswith("wrong_type:") and "many" in reasons[2]
    assert reasons[3].startswith("missing_columns:") and "query_id" in reasons[3]
    assert reasons[4].startswith("invalid_arrow:") and "Arrow" in reasons[4]
    assert reasons[5].startswith("empty_value:")


def test_unknown_encoding_and_header_helpers() -> None:
    decoded = codec.decode_values([b"{}"], ["avro"])
    assert decoded.errors[0][1].startswith("unknown_encoding: unknown encoding 'avro'")
    headers = codec.message_headers(codec.ENCODING_ARROW, 3)
    assert codec.header(headers, "schema") == "redset/1"
    assert codec.header(headers, "rows") == "3"
    assert codec.header(None, "encoding") is None
    with pytest.raises(codec.MessageDecodeError, match="invalid JSON") as info:
        codec.decode_value(b"[", "json")
    assert info.value.reason == "invalid_json"



def test_a_contract_header_without_a_value_is_read_as_absent_whichever_it_is() -> None:
    """Kafka allows a header with a null value; ``rows`` and ``encoding`` read it as absent, while ``schema``
    refused the message with "header 'schema' says None" (a tester's finding: three readings of one thing)."""
    value = _json()
    for name in ("schema", "encoding", "rows"):
        headers = [(k, None if k == name else v) for k, v in codec.message_headers("json", 1)]
        decoded = codec.decode_values([value], headers=[headers], keys=[b"7"])
        assert decoded.errors == [] and decoded.batch.num_rows == 1, name
    arrow = codec.encode_arrow(_batch(3))
    headers = [("schema", b"redset/1"), ("encoding", None)]
    (error,) = codec.decode_values([arrow], headers=[headers], keys=[b"7"]).errors
    assert error[1].startswith("invalid_json:") and "name its encoding in the 'encoding' header" in error[1]

def _json(**changes: object) -> bytes:
    row = orjson.loads(codec.encode_json(_batch(1))[0])
    for name, value in changes.items():
        if value is _DROP:
            del row[name]
        else:
            row[name] = value
    return orjson.dumps(row)


_DROP = object()


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _arrow_with(**columns: pa.Array) -> bytes:
    table = pa.Table.from_batches([_batch(3)]).replace_schema_metadata(None)
    for name, array in columns.items():
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), pa.field(name, array.type), array)
        else:
            table = table.append_column(name, array)
    return _ipc(table)


def _null_required_exact_schema() -> bytes:
    # A hostile producer: the schema says non-nullable, the validity bitmap holds a null.
    batch = _batch(3).cast(REDSET_SCHEMA.remove_metadata())
    qid = pa.array([1, None, 3], pa.int64())
    arrays = [qid if name == "query_id" else batch.column(name) for name in batch.schema.names]
    return _ipc(pa.Table.from_batches([pa.RecordBatch.from_arrays(arrays, schema=batch.schema)]))


REJECTED = {
    # family: (value, headers, key, expected reason code)
    "invalid json": (b"{not json", codec.message_headers("json", 1), b"7", "invalid_json"),
    "json array": (b"[1, 2]", codec.message_headers("json", 1), b"7", "not_an_object"),
    "missing key": (_json(cluster_size=_DROP), codec.message_headers("json", 1), b"7", "missing_columns"),
    "extra key": (_json(label_anomaly=True), codec.message_headers("json", 1), b"7", "extra_columns"),
    "null required json": (_json(query_id=None), codec.message_headers("json", 1), b"7", "null_in_required"),
    "float for int": (_json(num_joins=1.5), codec.message_headers("json", 1), b"7", "wrong_type"),
    "bool for int": (_json(num_joins=True), codec.message_headers("json", 1), b"7", "wrong_type"),
    "int above int64": (_json(mbytes_scanned=2**63), codec.message_headers("json", 1), b"7", "int_out_of_range"),
    "naive time": (_json(arrival_timestamp="2024-03-04T12:00:00"), codec.message_headers("json", 1), b"7",
                   "wrong_type"),
    "not a time": (_json(arrival_timestamp="yesterday"), codec.message_headers("json", 1), b"7", "wrong_type"),
    "unrepresentable time": (_json(arrival_timestamp="9999-12-31T23:00:00-05:00"), codec.message_headers("json", 1),
                             b"7", "timestamp_out_of_range"),
    "non-utf8 key": (_json(), codec.message_headers("json", 1), b"\xff\xfe", "bad_key"),
    "wrong key": (_json(), codec.message_headers("json", 1), b"8", "bad_key"),
    "non-utf8 encoding header": (_json(), [("encoding", b"\xff")], b"7", "bad_header"),
    "non-numeric rows header": (_json(), [("encoding", b"json"), ("rows", b"three")], b"7", "bad_header"),
    "unknown encoding": (_json(), codec.message_headers("avro", 1), b"7", "unknown_encoding"),
    "another schema version": (_json(), [("schema", b"redset/2"), *codec.message_headers("json", 1)[1:]], b"7",
                               "unknown_schema"),
    "encoding header twice": (_json(), [*codec.message_headers("json", 1), ("encoding", b"arrow")], b"7",
                              "bad_header"),
    "empty value": (b"", codec.message_headers("json", 1), b"7", "empty_value"),
    "empty arrow value": (b"", codec.message_headers("arrow", 3), b"7", "empty_value"),  # was invalid_arrow
    # no header names the encoding: read as json (the default for other tools), and told what it looks like
    "arrow without an encoding header": (codec.encode_arrow(_batch(3)), [], b"7", "invalid_json"),
    "arrow tombstone": (None, codec.message_headers("arrow-zstd", 3), b"7", "empty_value"),
    "truncated arrow": (codec.encode_arrow(_batch(3))[:-200], codec.message_headers("arrow", 3), b"7",
                        "invalid_arrow"),
    "arrow cut at a batch boundary": (codec.encode_arrow(_batch(0)), codec.message_headers("arrow", 3), b"7",
                                      "rows_mismatch"),
    "null required nullable schema": (_arrow_with(query_id=pa.array([1, None, 3], pa.int64())),
                                      codec.message_headers("arrow", 3), b"7", "null_in_required"),
    "null required exact schema": (_null_required_exact_schema(), codec.message_headers("arrow", 3), b"7",
                                   "null_in_required"),
    "uint64 above int64": (_arrow_with(mbytes_scanned=pa.array([1, 2**64 - 1, 3], pa.uint64())),
                           codec.message_headers("arrow", 3), b"7", "int_out_of_range"),
    "arrow year 10000": (_arrow_with(arrival_timestamp=pa.array([0, 253402300800 * 10**6, 0],
                                                                pa.timestamp("us", "UTC"))),
                         codec.message_headers("arrow", 3), b"7", "timestamp_out_of_range"),
    "arrow wrong type": (_arrow_with(num_joins=pa.array(["a", "b", "c"])), codec.message_headers("arrow", 3), b"7",
                         "wrong_type"),
    "arrow extra column": (_arrow_with(label_anomaly=pa.array([True, False, True])), codec.message_headers("arrow", 3),
                           b"7", "extra_columns"),
    "arrow missing column": (_ipc(pa.Table.from_batches([_batch(3)]).drop_columns(["user_id"])),
                             codec.message_headers("arrow", 3), b"7", "missing_columns"),
    # A JSON reader keeps the last copy of a name: the first one would pass unseen.
    "a name twice": (_json(execution_duration_ms=5)[:-1] + b',"execution_duration_ms":-5}',
                     codec.message_headers("json", 1), b"7", "extra_columns"),
    "a name twice, same value": (_json()[:-1] + b',"instance_id":7}', codec.message_headers("json", 1), b"7",
                                 "extra_columns"),
    "a name twice, spaced": (_json()[:-1] + b', "query_id" :\t5}', codec.message_headers("json", 1), b"7",
                             "extra_columns"),
    "negative execution time": (_json(execution_duration_ms=-120), codec.message_headers("json", 1), b"7",
                                "negative_value"),
    "negative queue time": (_json(queue_duration_ms=-1), codec.message_headers("json", 1), b"7", "negative_value"),
    "arrow negative compile time": (_arrow_with(compile_duration_ms=pa.array([1, -2, 3], pa.int64())),
                                    codec.message_headers("arrow", 3), b"7", "negative_value"),
    "key with leading zeros": (_json(), codec.message_headers("json", 1), b"007", "bad_key"),
    "key with a space": (_json(), codec.message_headers("json", 1), b" 7", "bad_key"),
    # Another Arrow writer's types: a cast would take 2 as true, "12" as 12, 1.0 as 1 and an int as a time
    # (in which unit?), all of which JSON refuses; only the column's own type family is read.
    "arrow int for bool": (_arrow_with(was_cached=pa.array([2, 0, 1], pa.int64())), codec.message_headers("arrow", 3),
                           b"7", "wrong_type"),
    "arrow text for bool": (_arrow_with(was_cached=pa.array(["true", "false", "1"])),
                            codec.message_headers("arrow", 3), b"7", "wrong_type"),
    "arrow text for int": (_arrow_with(num_joins=pa.array(["1", "2", "3"])), codec.message_headers("arrow", 3), b"7",
                           "wrong_type"),
    "arrow bool for int": (_arrow_with(num_joins=pa.array([True, False, True])), codec.message_headers("arrow", 3),
                           b"7", "wrong_type"),
    "arrow float for int": (_arrow_with(num_joins=pa.array([1.0, 2.0, 3.0])), codec.message_headers("arrow", 3),
                            b"7", "wrong_type"),
    "arrow int for text": (_arrow_with(query_type=pa.array([1, 2, 3])), codec.message_headers("arrow", 3), b"7",
                           "wrong_type"),
    "arrow int for time": (_arrow_with(arrival_timestamp=pa.array([1709553600000] * 3, pa.int64())),
                           codec.message_headers("arrow", 3), b"7", "wrong_type"),
    "arrow date for time": (_arrow_with(arrival_timestamp=pa.array([datetime(2024, 3, 4).date()] * 3)),
                            codec.message_headers("arrow", 3), b"7", "wrong_type"),
    "arrow duration for int": (_arrow_with(compile_duration_ms=pa.array([1, 2, 3], pa.duration("s"))),
                               codec.message_headers("arrow", 3), b"7", "wrong_type"),
    # datetime.fromisoformat reads nine digits and keeps six: the time would be changed, not refused
    "json time in nanoseconds": (_json(arrival_timestamp="2024-03-04T12:00:00.123456789+00:00"),
                                 codec.message_headers("json", 1), b"7", "wrong_type"),
}

#: What the reason of a rejection names (the field and, where it helps, the value).
NAMED = {
    "a name twice": "column 'execution_duration_ms' appears twice",
    "a name twice, same value": "column 'instance_id' appears twice",
    "a name twice, spaced": "column 'query_id' appears twice",
    "negative execution time": "column 'execution_duration_ms' must not be negative",
    "negative queue time": "column 'queue_duration_ms' must not be negative",
    "arrow negative compile time": "column 'compile_duration_ms' must not be negative",
    "key with leading zeros": "Got '007'",
    "key with a space": "Got ' 7'",
    "arrow int for bool": "column 'was_cached' must be of type bool. Got int64",
    "arrow int for time": "column 'arrival_timestamp' must be a timestamp with a zone (any unit). Got int64",
    "arrow text for int": "column 'num_joins' must be of an integer type",
    "json time in nanoseconds": "finer than the microseconds",
    "arrow without an encoding header": "looks like an Arrow IPC stream: name its encoding in the 'encoding' header",
}


@pytest.mark.parametrize("family", sorted(NAMED))
def test_a_name_twice_a_negative_duration_and_a_key_with_leading_zeros_are_named(family: str) -> None:
    value, headers, key, _ = REJECTED[family]
    for fast in (True, False):
        decoded = codec._decode_values([value], None, headers=[headers], keys=[key], json_fast=fast)
        assert decoded.batch.num_rows == 0 and NAMED[family] in decoded.errors[0][1], (fast, decoded.errors)


def test_every_column_the_log_validator_keeps_non_negative_is_refused_negative_in_a_message() -> None:
    for name in NON_NEGATIVE_COLUMNS:  # one list: the validator's rule is the contract's
        for value in (_json(**{name: -1}), codec.encode_arrow(_batch(1).set_column(
                COLUMNS.index(name), name, pa.array([-1], pa.int64())))):
            enc = "json" if value.startswith(b"{") else "arrow"
            decoded = codec.decode_values([value], headers=[codec.message_headers(enc, 1)], keys=[b"7"])
            assert decoded.errors == [(0, f"negative_value: column {name!r} must not be negative (durations, "
                                          f"sizes and counts are >= 0). Got -1")], (name, enc)
        zero = codec.decode_values([_json(**{name: 0})], headers=[codec.message_headers("json", 1)], keys=[b"7"])
        assert zero.errors == [] and zero.batch.column(name).to_pylist() == [0]


@pytest.mark.parametrize("family", sorted(REJECTED))
def test_every_malformed_family_is_rejected_with_its_reason(family: str) -> None:
    value, headers, key, reason = REJECTED[family]
    decoded = codec.decode_values([value, codec.encode_json(_batch(1))[0]], headers=[headers, None], keys=[key, b"7"])
    assert [p for p, _ in decoded.errors] == [0], decoded.errors
    assert decoded.errors[0][1].startswith(f"{reason}: "), decoded.errors
    assert decoded.batch.num_rows == 1 and decoded.source_index == [1]  # the valid one still decodes
    if (codec.header(headers, "encoding") if reason != "bad_header" else "json") == "json":
        with pytest.raises(codec.MessageDecodeError) as info:  # the one-row path agrees
            codec.decode_row(value, headers, key=key, check_key=True)
        assert info.value.reason == reason


@pytest.mark.parametrize("name", sorted(codec.ENCODINGS))
def test_every_registered_encoding_round_trips(name: str) -> None:
    encoding = codec.get_encoding(name)
    batch = _batch(1 if encoding.max_rows == 1 else 5)
    value = encoding.encode(batch)
    decoded = codec.decode_values([value], headers=[codec.message_headers(name, batch.num_rows)], keys=[b"7"])
    assert decoded.errors == []
    assert decoded.batch.to_pylist() == batch.to_pylist()


def test_an_end_of_log_marker_is_reported_never_a_row_nor_an_error() -> None:
    end = int(datetime(2024, 3, 7, 23, 59, 59, 123456, tzinfo=UTC).timestamp() * 1_000_000)
    value, headers = codec.end_of_log_message(end)
    rows = codec.encode_arrow(_batch(3))
    decoded = codec.decode_values([rows, value, value], headers=[codec.message_headers("arrow", 3), headers, headers],
                                  keys=[b"7", None, None])
    assert decoded.errors == [] and decoded.source_index == [0, 0, 0] and decoded.end_of_log_us == end
    assert codec.decode_values([rows], headers=[codec.message_headers("arrow", 3)], keys=[b"7"]).end_of_log_us is None
    # any reader of the arrow encoding reads the marker as no rows
    assert codec.decode_value(value, "arrow").num_rows == 0
    for bad in (b"soon", b"-", b"99999999999999999999", b"1e9"):
        marked = [*headers[:-1], (codec.END_OF_LOG_HEADER, bad)]
        errors = codec.decode_values([value], headers=[marked], keys=[None]).errors
        assert errors and errors[0][1].startswith("bad_header: header 'end_of_log' must be an event time"), bad
    with pytest.raises(ValueError, match="outside the event times"):
        codec.end_of_log_message(2**62)


def test_a_marker_that_holds_rows_or_a_row_message_with_a_marker_header_is_refused_not_dropped() -> None:
    end = int(datetime(2024, 3, 7, tzinfo=UTC).timestamp() * 1_000_000)
    _, marker = codec.end_of_log_message(end)
    rows = codec.encode_arrow(_batch(2))
    row_headers = [*codec.message_headers("json", 1), (codec.END_OF_LOG_HEADER, str(end).encode())]
    unsized = [h for h in marker if h[0] != "rows"]
    decoded = codec.decode_values([rows, codec.encode_json(_batch(1))[0], rows],
                                  headers=[marker, row_headers, unsized], keys=[b"7", b"7", b"7"])
    assert decoded.batch.num_rows == 0 and decoded.end_of_log_us is None
    assert [(i, r.split(":")[0]) for i, r in decoded.errors] == [(0, "rows_mismatch"), (1, "bad_header"),
                                                                 (2, "rows_mismatch")]
    assert "marks a message without rows" in decoded.errors[0][1]
    # a malformed end_of_log header on a row message is refused as well
    bad = [*codec.message_headers("json", 1), (codec.END_OF_LOG_HEADER, b"abc")]
    assert codec.decode_values([codec.encode_json(_batch(1))[0]], headers=[bad], keys=[b"7"]).errors[0][1].startswith(
        "bad_header")


@pytest.mark.parametrize("key", [b"--7", b"-", b"", b"+7", b"7-", b"-0", "--7", "\u0667"])
def test_keys_that_are_no_decimal_integer_are_refused_on_every_path(key: bytes | str) -> None:
    with pytest.raises(codec.MessageDecodeError, match="bad_key"):
        codec.decode_key(key)
    for value, headers in ((codec.encode_json(_batch(1))[0], codec.message_headers("json", 1)),
                           (codec.encode_arrow(_batch(2)), codec.message_headers("arrow", 2))):
        decoded = codec.decode_values([value], headers=[headers], keys=[key])
        assert decoded.batch.num_rows == 0 and decoded.errors[0][1].startswith("bad_key"), key


def test_a_fault_in_the_batch_path_falls_back_to_one_message_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """No message may stop a consumer: a fault of the fast path costs speed, never rows."""
    def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("a bug of the fast path")

    monkeypatch.setattr(codec._json_fast, "decode_json_batch", broken)
    values = [*codec.encode_json(_batch(3)), b"{not json"]
    decoded = codec.decode_values(values, headers=[codec.message_headers("json", 1)] * 4, keys=[b"7"] * 4)
    assert decoded.batch.num_rows == 3 and decoded.source_index == [0, 1, 2]
    assert [(i, r.split(":")[0]) for i, r in decoded.errors] == [(3, "invalid_json")]


def test_mixed_encodings_keep_message_order() -> None:
    arrow = codec.encode_arrow(_batch(2))
    js = codec.encode_json(_batch(1))[0]
    decoded = codec.decode_values([arrow, js, arrow], ["arrow", "json", "arrow"])
    assert decoded.source_index == [0, 0, 1, 2, 2]
    assert decoded.batch.num_rows == 5


def test_json_row_and_batch_paths_agree_on_valid_rows() -> None:
    for value in codec.encode_json(_batch(4)):
        row = codec.decode_row(value)
        batch = codec.decode_value(value)
        assert {k: v for k, v in row.items() if k not in ("arrival_timestamp", "arrival_us")} == {
            k: v for k, v in batch.to_pylist()[0].items() if k != "arrival_timestamp"}
        assert row["arrival_us"] == batch.column("arrival_timestamp").cast(pa.int64())[0].as_py()


def test_arrow_columns_of_the_types_family_from_other_writers_decode_to_the_same_rows() -> None:
    """Narrower or unsigned ints, dictionary / large / view strings, times in another unit or zone and a
    NULL-typed nullable column hold the same values: read as the event schema, not refused."""
    expected = codec.decode_value(codec.encode_arrow(_batch(3)), codec.ENCODING_ARROW).to_pylist()
    times = _batch(3).column("arrival_timestamp")
    variants = {
        "int32": {"num_joins": pa.array([0, 1, 2], pa.int32())},
        "uint16": {"num_joins": pa.array([0, 1, 2], pa.uint16())},
        "dictionary": {"query_type": pa.array(["select"] * 3).dictionary_encode()},
        "large_string": {"read_table_ids": pa.array(["1,2"] * 3, pa.large_string())},
        "string_view": {"read_table_ids": pa.array(["1,2"] * 3, pa.string_view())},
        "ns in New York": {"arrival_timestamp": times.cast(pa.timestamp("ns", "UTC")).cast(
            pa.timestamp("ns", "America/New_York"))},
        "null type": {"user_id": pa.nulls(3)},
    }
    for name, columns in variants.items():
        decoded = codec.decode_values([_arrow_with(**columns)], headers=[codec.message_headers("arrow", 3)],
                                      keys=[b"7"])
        assert decoded.errors == [] and decoded.batch.to_pylist() == expected, name


def test_an_arrow_stream_compressed_as_a_whole_is_told_how_arrow_zstd_is_meant() -> None:
    """A whole-value zstd frame is a natural misreading of 'arrow-zstd'; its reason only said "negative
    continuation token"."""
    import gzip

    stream = codec.encode_arrow(_batch(3))
    for packed, name in ((pa.Codec("zstd").compress(stream, asbytes=True), "zstd"), (gzip.compress(stream), "gzip")):
        (error,) = codec.decode_values([packed], headers=[codec.message_headers("arrow-zstd", 3)], keys=[b"7"]).errors
        assert error[1].startswith("invalid_arrow: not a complete Arrow IPC stream"), error
        assert f"the value is a whole {name} stream" in error[1] and "IpcWriteOptions(compression='zstd')" in error[1]
    (error,) = codec.decode_values([b"\x00garbage"], headers=[codec.message_headers("arrow", 3)], keys=[b"7"]).errors
    assert "whole" not in error[1]
