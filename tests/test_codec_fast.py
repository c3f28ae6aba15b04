"""The JSON fast path of decode_values gives exactly what the per-message path gives.

:func:`workbench.data.codec.decode_values` decodes one-row JSON messages together
(:mod:`workbench.data._json_fast`) and hands what that path does not accept to the exact
per-message path. ``codec._decode_values(..., json_fast=False)`` is the exact path alone (the
reference). For the fuzz corpus interleaved with valid events, hand-written edge cases and
hypothesis-drawn rows and byte mutations, both must return the same batch (values and types),
the same source positions and the same errors (reason code and detail text).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz_corpus import EVENT_FAMILIES, arrow_value, event_headers, json_value, valid_row
from workbench.data import codec
from workbench.data.schema import COLUMNS, REDSET_SCHEMA

SEED = 20240305


def _valid_json(i: int, instance: int = 3) -> tuple[bytes, list, bytes]:
    return json_value(valid_row(i, instance)), event_headers("json", 1), str(instance).encode()


def _assert_same(values: list, headers: list | None = None, keys: list | None = None,
                 encodings: list | None = None) -> codec.DecodedBatch:
    fast = codec.decode_values(values, encodings, headers=headers, keys=keys)
    exact = codec._decode_values(values, encodings, headers=headers, keys=keys, json_fast=False)
    assert fast.errors == exact.errors
    assert fast.source_index == exact.source_index
    assert fast.batch.schema == exact.batch.schema
    assert fast.batch.equals(exact.batch), (fast.batch.to_pylist()[:2], exact.batch.to_pylist()[:2])
    return fast


def test_valid_canonical_events_take_the_fast_path_only(monkeypatch: pytest.MonkeyPatch) -> None:
    messages = [_valid_json(i, instance=1 + i % 3) for i in range(300)]
    def exact_path(*args: object, **kwargs: object) -> None:
        raise AssertionError("a valid canonical event took the per-message path")

    monkeypatch.setattr(codec, "_decode_row", exact_path)
    decoded = codec.decode_values([m[0] for m in messages], headers=[m[1] for m in messages],
                                  keys=[m[2] for m in messages])
    assert decoded.errors == [] and decoded.source_index == list(range(300))
    expected = [{**valid_row(i, 1 + i % 3)} for i in range(300)]
    assert decoded.batch.to_pylist() == expected


def test_fast_and_exact_paths_agree_on_the_fuzz_corpus() -> None:
    rng = random.Random(SEED)
    template = valid_row(0)
    bad = [build(rng, template) for build, count in EVENT_FAMILIES.values() for _ in range(count)]
    assert len(bad) >= 1_000
    stream: list[tuple[bytes | None, list, bytes | None]] = []
    for i in range(2_000):
        if i % 9 == 4:
            rows = [valid_row(i * 10 + j, instance=2) for j in range(rng.randrange(1, 4))]
            stream.append((arrow_value(rows), event_headers("arrow", len(rows)), b"2"))
        else:
            stream.append(_valid_json(i, instance=1 + i % 3))
    for item in bad:
        stream.insert(rng.randrange(len(stream) + 1), (item.value, item.headers, item.key))
    rejected = 0
    for start in range(0, len(stream), 500):  # batches as large as the apps' ones
        chunk = stream[start:start + 500]
        values, headers, keys = ([m[i] for m in chunk] for i in range(3))
        rejected += len(_assert_same(values, headers, keys).errors)
        _assert_same(values, headers)  # no keys given: none checked
    assert rejected >= len(bad) - 100  # almost every corpus message is rejected (a few are valid elsewhere)


def _variant(i: int, **changes: object) -> bytes:
    data = orjson.loads(json_value(valid_row(i)))
    data.update(changes)
    return orjson.dumps(data)


def _raw(i: int, old: bytes, new: bytes) -> bytes:
    value = json_value(valid_row(i))
    assert old in value
    return value.replace(old, new, 1)


EDGE_CASES = [
    # times: other ISO forms are valid on the exact path; impossible dates and years are not
    _variant(1, arrival_timestamp="2024-03-05T10:00:00Z"),
    _variant(2, arrival_timestamp="2024-03-05T10:00:00.5+00:00"),
    _variant(3, arrival_timestamp="2024-03-05T10:00:00.123+01:30"),
    _variant(4, arrival_timestamp="2024-03-05 10:00:00+00:00"),
    _variant(5, arrival_timestamp="2024-03-05T10:00:00"),
    _variant(6, arrival_timestamp="2024-02-30T10:00:00+00:00"),
    _variant(7, arrival_timestamp="2023-02-29T10:00:00.000001+00:00"),
    _variant(8, arrival_timestamp="2024-02-29T23:59:59.999999+00:00"),
    _variant(9, arrival_timestamp="0000-01-01T00:00:00+00:00"),
    _variant(10, arrival_timestamp="0001-01-01T00:00:00+00:00"),
    _variant(11, arrival_timestamp="9999-12-31T23:59:59.999999+00:00"),
    _variant(12, arrival_timestamp="9999-12-31T23:59:59-00:01"),
    _variant(13, arrival_timestamp="2024-03-05T24:00:00+00:00"),
    _variant(14, arrival_timestamp="2024-03-05T10:00:60+00:00"),
    _variant(15, arrival_timestamp="2024-03-05T10:00:00+00:00\n"),
    _variant(16, arrival_timestamp="\uff12\uff10\uff12\uff14-03-05T10:00:00+00:00"),  # full-width digits
    _variant(17, arrival_timestamp=None),
    # integers at and beyond the int64 bounds, floats and booleans for integers
    _variant(18, mbytes_scanned=2**63 - 1, user_id=-(2**63)),
    _raw(19, b'"mbytes_scanned":190', b'"mbytes_scanned":9223372036854775808'),
    _raw(20, b'"mbytes_scanned":200', b'"mbytes_scanned":-9223372036854775809'),
    _raw(21, b'"mbytes_scanned":210', b'"mbytes_scanned":18446744073709551616'),
    _raw(22, b'"mbytes_scanned":220', b'"mbytes_scanned":220.0'),
    _raw(23, b'"mbytes_scanned":230', b'"mbytes_scanned":2.3e2'),
    _raw(24, b'"mbytes_scanned":240', b'"mbytes_scanned":-0'),
    _variant(25, num_joins=True),
    _variant(26, was_cached=1),
    _raw(27, b'"mbytes_scanned":270', b'"mbytes_scanned":NaN'),
    _raw(28, b'"mbytes_scanned":280', b'"mbytes_scanned":Infinity'),
    # names: duplicated (the last wins), escaped, unknown, missing
    _raw(29, b'"num_joins":1', b'"num_joins":"x","num_joins":1'),
    _raw(30, b'"num_joins":1', b'"num_joins":1,"num_joins":"x"'),
    _raw(31, b'"num_joins":1', b'"num_joins":1,"num_joins":5'),
    _raw(32, b'"num_joins":1', b'"num\\u005fjoins":1'),
    _raw(33, b'"num_joins":1,', b""),
    _variant(34, label_anomaly=True),
    # strings: escapes, non-ASCII, invalid UTF-8, lone surrogates, control characters
    _variant(35, query_type="sél\u00e9ct \U0001f600 \\ \" / \x00"),
    _raw(36, b'"select"', b'"sel\\u00e9\\ud83d\\ude00"'),
    _raw(37, b'"select"', b'"sel\xff"'),
    _raw(38, b'"select"', b'"sel\\ud800"'),
    _raw(39, b'"select"', b'"sel\xed\xa0\x80"'),
    _raw(40, b'"select"', b'"sel\tx"'),
    _variant(41, query_type=""),
    # whitespace, byte order mark, trailing content
    b" \n\t" + _variant(42) + b"\r\n ",
    b"\xef\xbb\xbf" + _variant(43),
    _variant(44) + b"{}",
    _variant(45) + b"\x00",
    _variant(46).replace(b",", b" , "),
]


def test_fast_and_exact_paths_agree_on_edge_cases() -> None:
    valid = [_valid_json(100 + i) for i in range(5)]
    values = [valid[0][0], *EDGE_CASES, valid[1][0]]
    decoded = _assert_same(values, [event_headers("json", 1)] * len(values), [b"3"] * len(values))
    assert len(decoded.errors) >= 20 and decoded.batch.num_rows >= 15
    # one at a time too: a batch of one bad message, next to nothing else
    for value in EDGE_CASES:
        _assert_same([value], [event_headers("json", 1)], [b"3"])


def test_fast_and_exact_paths_agree_on_keys_headers_and_value_types() -> None:
    value = _valid_json(1)[0]
    values = [value, value, value, value, value, bytearray(value), memoryview(value), value, value, value, value]
    keys = [b"3", b"4", "3", " 3", None, b"3", b"3", b"\xff", b"99999999999999999999", b"3", b"3"]
    headers = [event_headers("json", 1), event_headers("json", 1), event_headers("json", 1),
               event_headers("json", 1), event_headers("json", 1), event_headers("json", 1), event_headers("json", 1),
               event_headers("json", 1), event_headers("json", 1), [("encoding", b"json"), ("rows", b"2")],
               tuple(event_headers("json", 1))]
    _assert_same(values, headers, keys)
    _assert_same(values, None, keys)  # headers absent: encodings (None = json) and no rows header
    _assert_same(values, [(), None, [], *headers[3:]], keys)
    _assert_same(values, None, None, ["json", None, "json", "arrow", *["json"] * 7])


def _json_text(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value


_times = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                 timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5)), timezone(timedelta(minutes=90))])),
    st.datetimes(), st.text(max_size=40))
_ints = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**70), 2**70), st.none(), st.booleans(),
                  st.floats(allow_nan=False, allow_infinity=False))


@st.composite
def _drawn_value(draw: st.DrawFn) -> bytes:
    row = {k: _json_text(v) for k, v in valid_row(draw(st.integers(0, 50))).items()}
    for name in draw(st.lists(st.sampled_from(COLUMNS), max_size=3, unique=True)):
        kind = REDSET_SCHEMA.field(name).type
        if name == "arrival_timestamp":
            row[name] = _json_text(draw(_times))
        elif str(kind) == "int64":
            row[name] = draw(_ints)
        elif str(kind) == "bool":
            row[name] = draw(st.one_of(st.booleans(), st.none(), st.integers(0, 1)))
        else:
            row[name] = draw(st.one_of(st.text(max_size=20), st.none(), st.integers(0, 3)))
    text = orjson.dumps({k: (0 if isinstance(v, int) and not -(2**63) <= v < 2**64 else v) for k, v in row.items()})
    for name, v in row.items():  # orjson refuses integers beyond 64 bits: write those digits by hand
        if isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**64:
            text = text.replace(f'"{name}":0'.encode(), f'"{name}":{v}'.encode(), 1)
    if draw(st.booleans()):  # and maybe a few flipped, cut or inserted bytes
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(text)))
            op = draw(st.sampled_from(["flip", "cut", "insert"]))
            if op == "flip" and at < len(text):
                text = text[:at] + bytes([text[at] ^ draw(st.integers(1, 255))]) + text[at + 1:]
            elif op == "cut":
                text = text[:at] + text[at + draw(st.integers(1, 8)):]
            else:
                text = text[:at] + draw(st.binary(min_size=1, max_size=4)) + text[at:]
    return text


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_drawn_value(), min_size=1, max_size=8), st.lists(st.sampled_from([b"3", b"4", None]), min_size=8,
                                                                   max_size=8))
def test_fast_and_exact_paths_agree_on_drawn_rows(values: list[bytes], keys: list) -> None:
    values = [*values, _valid_json(1)[0]]
    _assert_same(values, [event_headers("json", 1)] * len(values), [*keys[: len(values) - 1], b"3"])
