"""Property tests of the one event decoder: whatever arrives, every message is decoded or named.

Hypothesis draws batches that mix valid messages (JSON and Arrow, the README's wire format) with
arbitrary bytes, mutated valid messages, arbitrary headers and keys. For every batch
:func:`workbench.data.codec.decode_values` must return (never raise), account for each message
exactly once (decoded rows or one error with a known reason code), and decode the untouched valid
messages to exactly their rows.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz_corpus import arrow_value, event_headers, json_value
from workbench.data import codec

_T0 = datetime(2024, 3, 5, tzinfo=UTC)


def _row(i: int, instance: int) -> dict:
    return {
        "instance_id": instance, "cluster_size": 4, "user_id": 7, "database_id": 1, "query_id": 1_000 + i,
        "arrival_timestamp": _T0 + timedelta(seconds=i), "compile_duration_ms": 3, "queue_duration_ms": 0,
        "execution_duration_ms": 120 + i, "feature_fingerprint": "f" * 8, "was_aborted": False,
        "was_cached": False, "cache_source_query_id": None, "query_type": "select",
        "num_permanent_tables_accessed": 2, "num_external_tables_accessed": 0, "num_system_tables_accessed": 0,
        "read_table_ids": "1,2", "write_table_ids": None, "mbytes_scanned": 10, "mbytes_spilled": 0,
        "num_joins": 1, "num_scans": 2, "num_aggregations": 0,
    }


def _valid(i: int, instance: int, packed: int) -> tuple[bytes, list, bytes, list[dict]]:
    rows = [_row(i * 10 + j, instance) for j in range(packed)]
    if packed == 1:
        return json_value(rows[0]), event_headers("json", 1), str(instance).encode(), rows
    return arrow_value(rows), event_headers("arrow", packed), str(instance).encode(), rows


_header_value = st.one_of(st.binary(max_size=8), st.sampled_from([b"json", b"arrow", b"arrow-zstd", b"1", b"3"]))
_junk = st.tuples(
    st.one_of(st.none(), st.binary(max_size=200)),
    st.lists(st.tuples(st.sampled_from(["schema", "encoding", "rows", "other"]), _header_value), max_size=4),
    st.one_of(st.none(), st.binary(max_size=6)),
)


@st.composite
def _message(draw: st.DrawFn, i: int) -> tuple[bytes | None, list, object, object]:
    kind = draw(st.sampled_from(["valid", "junk", "mutated", "flipped_byte"]))
    instance = draw(st.integers(1, 5))
    value, headers, key, rows = _valid(i, instance, draw(st.sampled_from([1, 1, 3])))
    if kind == "valid":
        return value, headers, key, rows
    if kind == "junk":
        value, headers, key = draw(_junk)
        return value, headers, key, None
    if kind == "mutated":  # cut the value, or swap in a wrong header or key
        choice = draw(st.integers(0, 2))
        if choice == 0:  # an Arrow stream cut only at its end-of-stream marker still holds every row
            return value[: draw(st.integers(0, len(value) - 1))], headers, key, ("intact if decoded", rows)
        if choice == 1:
            names = (b"json", b"arrow", b"arrow-zstd")
            other = draw(st.binary(min_size=1, max_size=6).filter(lambda b: b not in names))
            return value, [*headers[:1], ("encoding", other)], key, None
        return value, headers, str(instance + 100).encode(), None
    position = draw(st.integers(0, len(value) - 1))
    flipped = value[:position] + bytes([value[position] ^ 0xFF]) + value[position + 1:]
    return flipped, headers, key, "maybe"


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_every_message_is_decoded_or_named(data: st.DataObject) -> None:
    messages = [data.draw(_message(i)) for i in range(data.draw(st.integers(1, 12)))]
    decoded = codec.decode_values([m[0] for m in messages], headers=[m[1] for m in messages],
                                  keys=[m[2] for m in messages])
    failed = dict(decoded.errors)
    assert len(failed) == len(decoded.errors), "a message was named twice"
    codes = {reason.split(":", 1)[0] for reason in failed.values()}
    assert codes <= set(codec.REASONS), codes
    produced = set(decoded.source_index)
    assert not produced & set(failed), "a message both decoded and failed"
    assert produced | set(failed) == set(range(len(messages))), "a message was neither decoded nor named"
    rows = decoded.batch.to_pylist()
    for position, (_, _, _, expected) in enumerate(messages):
        got = [row for row, source in zip(rows, decoded.source_index, strict=True) if source == position]
        if isinstance(expected, list):  # untouched valid messages decode to exactly their rows
            assert position not in failed, failed.get(position)
            assert got == expected
        elif expected is None:  # junk and mutations never decode to rows
            assert position in failed
        elif isinstance(expected, tuple) and position not in failed:
            assert got == expected[1]
