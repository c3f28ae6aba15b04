"""The message contract of ``redshift.query_events``: how query rows travel through Kafka.

Encodings are a registry (:data:`ENCODINGS`), named by the ``encoding`` header of every message;
every message also carries the ``schema`` header (:data:`~workbench.data.schema.SCHEMA_VERSION`)
and the ``rows`` header (how many rows the value holds). Built in:

``json`` (one row per message)
    A JSON object with exactly the 24 Redset columns, ISO-8601 times *with* a zone
    (``2024-03-01T10:20:00.123456+00:00``), ``null`` for nulls.
``arrow``
    Up to N consecutive queries of one instance in one message (``workbench replay --encoding
    arrow --pack N``): an Arrow IPC stream of the 24 columns of
    :data:`~workbench.data.schema.REDSET_SCHEMA`, rows in log order.
``arrow-zstd``
    The same, with zstd-compressed IPC buffers (smaller messages, a little more CPU).

Adding an encoding is one :class:`Encoding` passed to :func:`register_encoding` (an ``encode``
from a record batch to one value, a ``decode`` from one value to a record batch) plus its tests:
the validation below applies to every encoding.

What a valid event is (one rule for every consumer)
    Exactly the 24 columns (none missing, none extra, none twice: a JSON object whose names repeat
    is refused, not read as its last copy); every value of its column's type (an int column takes
    JSON integers, not floats or booleans, within int64; an Arrow column of any type of its column's
    family, :func:`~workbench.data.schema.type_fits`, but no other type a cast would convert);
    durations, sizes and counts
    (:data:`~workbench.data.schema.NON_NEGATIVE_COLUMNS`) not negative, as the log validator
    requires; the non-nullable columns (``instance_id``, ``query_id``, ``arrival_timestamp``) not
    null; ``arrival_timestamp`` a time with a zone (JSON: no finer than a microsecond) that a
    Python ``datetime`` can hold (years
    1-9999 in UTC); the message key, when the consumer passes it, the ``instance_id`` of every row
    written as Python and our producers write it (decimal digits, no leading zeros, no sign but
    ``-``, no spaces: Kafka partitions by the key's bytes, so ``003`` would put an instance's
    events on another partition than ``3``); the ``rows`` header,
    when present, the number of rows decoded; an Arrow value may decode to at most
    :data:`MAX_DECODED_BYTES`, judged from its metadata before anything is decompressed or
    allocated. Whether an event time is *plausible* for the
    stream is the apps' event-time guard (:mod:`workbench.pipeline._eventtime`).

End of a log
    When a replay has sent every row of its log it writes, in its last transaction, one
    *end-of-log marker* to every partition: a zero-row ``arrow`` message (it decodes to no rows
    for any reader of the encoding) with the header :data:`END_OF_LOG_HEADER`, the log's last
    event time in epoch microseconds (:func:`end_of_log_message`). As a partition is ordered, the
    marker says that partition will bring no event newer than that time from this log, so a day
    the log ends in is complete even though no event of a later day arrives to settle it.
    :func:`decode_values` reports the newest marker of a batch in
    :attr:`DecodedBatch.end_of_log_us`; the marker never counts as a row nor as an error.

Consumers call :func:`decode_values` on a batch of message values (with their headers and
keys) and get one Arrow record batch back, plus the messages that could not be decoded and why.
Its JSON messages are decoded together (:mod:`workbench.data._json_fast`, msgspec and Arrow
casts); a message that path does not accept is judged on its own, so every rejection keeps its reason.
The one-row JSON path of a per-message consumer is :func:`decode_row` (a dict instead of a
one-row batch, ~50x cheaper), which applies the same checks through the same function.
A rejection is a :class:`MessageDecodeError` whose text starts with a reason code
(:data:`REASONS`), e.g. ``null_in_required: column 'query_id' ...``. Label columns are never encoded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import repeat
from typing import Any, Final, NamedTuple

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from workbench.data import _arrow_fast, _ipc_size, _json_fast
from workbench.data.schema import COLUMNS, NON_NEGATIVE_COLUMNS, REDSET_SCHEMA, SCHEMA_VERSION, type_fits
from workbench.exceptions import WorkbenchError

logger = logging.getLogger(__name__)

__all__ = [
    "ENCODINGS",
    "ENCODING_ARROW",
    "ENCODING_ARROW_ZSTD",
    "ENCODING_JSON",
    "END_OF_LOG_HEADER",
    "MAX_DECODED_BYTES",
    "REASONS",
    "RESENT_HEADER",
    "DecodedBatch",
    "Encoding",
    "MessageDecodeError",
    "UnreadableHeaders",
    "decode_key",
    "decode_row",
    "decode_value",
    "decode_values",
    "default_encoding",
    "encode_arrow",
    "encode_json",
    "end_of_log_message",
    "get_encoding",
    "header",
    "headers_of",
    "int64_bounds",
    "is_resent",
    "message_headers",
    "register_encoding",
    "rows_to_batch",
]

ENCODING_JSON: Final = "json"
ENCODING_ARROW: Final = "arrow"
ENCODING_ARROW_ZSTD: Final = "arrow-zstd"
_SCHEMA_NO_META: Final = REDSET_SCHEMA.remove_metadata()
_COLUMN_SET: Final = frozenset(COLUMNS)
_UTC_US: Final = pa.timestamp("us", tz="UTC")
_REQUIRED: Final = tuple(f.name for f in REDSET_SCHEMA if not f.nullable)
_INT_FIELDS: Final = tuple(f.name for f in REDSET_SCHEMA if pa.types.is_integer(f.type))
_BOOL_FIELDS: Final = tuple(f.name for f in REDSET_SCHEMA if pa.types.is_boolean(f.type))
_STR_FIELDS: Final = tuple(f.name for f in REDSET_SCHEMA if pa.types.is_string(f.type))
_TIME: Final = object()  # arrival_timestamp: checked by _timestamp_us
_JSON_TYPES: Final = {f.name: _TIME if pa.types.is_timestamp(f.type) else int if pa.types.is_integer(f.type)
                      else bool if pa.types.is_boolean(f.type) else str for f in REDSET_SCHEMA}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_US: Final = timedelta(microseconds=1)
#: Event times every consumer can turn into a ``datetime`` (epoch microseconds, inclusive).
TIME_MIN_US: Final = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // _US
TIME_MAX_US: Final = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - _EPOCH) // _US
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
#: The most one Arrow value may decode to (:func:`workbench.data._ipc_size.declared_bytes`: its buffers
#: decompressed, plus 8 bytes per value of every column). Checked before anything is decoded: a few KB
#: of zstd or of NULL-typed columns can declare gigabytes. Ample for any honest message: the topics take
#: 16 MB, which holds ~100,000 events uncompressed (~40 MB here) and about 5x that compressed.
MAX_DECODED_BYTES: Final = 256 * 1024 * 1024

#: Reason codes a rejection starts with (the dead-letter ``reason`` header carries code and detail).
REASONS: Final = {
    "empty_value": "the message has no value",
    "unknown_encoding": "the encoding header names no registered encoding",
    "bad_header": "a header is not UTF-8 text, not a number where one is needed, or given twice",
    "unknown_schema": "the schema header names another version of the event schema",
    "bad_key": "the key is not the decimal instance_id of the message's rows",
    "rows_mismatch": "the rows header disagrees with the rows decoded (e.g. a truncated stream)",
    "invalid_json": "the value is not JSON",
    "not_an_object": "the JSON value is not an object",
    "invalid_arrow": "the value is not a (complete) Arrow IPC stream",
    "too_large": "the Arrow value declares more decoded bytes than MAX_DECODED_BYTES (compressed or NULL-typed)",
    "invalid_value": "the encoding's decoder failed on the value in a way it does not name (a hostile payload)",
    "missing_columns": "required columns are absent",
    "extra_columns": "columns that are not Redset columns are present, or a column appears twice",
    "wrong_type": "a value is not of its column's type",
    "int_out_of_range": "an integer does not fit int64",
    "negative_value": "a duration, size or count is negative",
    "null_in_required": "a non-nullable column holds a null",
    "timestamp_out_of_range": "a time no consumer can represent",
}


class MessageDecodeError(WorkbenchError, ValueError):
    """A message is not a valid encoded query row (or batch of rows); ``reason`` is its code."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


Headers = Sequence[tuple[str, bytes | str | None]] | None


class UnreadableHeaders(list):  # type: ignore[type-arg]
    """The headers of a message the Kafka client could not read (no headers; ``why`` says what failed).

    A header *name* that is not UTF-8 (any client can write one; the broker takes it) makes
    confluent-kafka's ``Message.headers()`` raise, and a second call on the same message returns a
    half-built list whose comparison crashes the interpreter: every app reading the topic restarted
    for good on that one message. Decoding refuses such a message as ``bad_header``, so it is
    dead-lettered like any other malformed one."""

    def __init__(self, why: str) -> None:
        super().__init__()
        self.why = why


#: Messages whose headers could not be read, kept (with the message, so its id is not reused) until
#: :data:`_UNREADABLE_KEEP` more fail: their headers are never asked for a second time.
_UNREADABLE: dict[int, tuple[Any, UnreadableHeaders]] = {}
_UNREADABLE_KEEP: Final = 1024


def headers_of(message: Any) -> Any:
    """``message.headers()`` of a confluent-kafka message, asked once: headers that cannot be read come back
    as :class:`UnreadableHeaders` (the decoder dead-letters the message) instead of an exception, and
    the same message asked again gets the same, without touching the client's half-built list."""
    known = _UNREADABLE.get(id(message))
    if known is not None and known[0] is message:
        return known[1]
    try:
        return _ASK_HEADERS(message)
    except Exception as exc:  # SystemError from the client's UnicodeDecodeError, or that error itself
        cause = exc.__cause__ or exc.__context__ or exc
        found = UnreadableHeaders(f"the Kafka client could not read the message's headers ({type(cause).__name__}: "
                                  f"{str(cause)[:200]}); a header name must be UTF-8 text")
        if len(_UNREADABLE) >= _UNREADABLE_KEEP:
            _UNREADABLE.pop(next(iter(_UNREADABLE)))
        _UNREADABLE[id(message)] = (message, found)
        return found


# Not `message.headers()`: the client returns its list *and* sets the error, and CPython's specialised call
# of a C method (a call site run often) does not check for that in a release build, so the half-built
# list came back with the error pending (raised later elsewhere). A methodcaller is called the checked way.
_ASK_HEADERS: Final = operator.methodcaller("headers")


@dataclass(frozen=True)
class Encoding:
    """One message encoding: ``encode`` rows into one value, ``decode`` one value into rows.

    ``decode`` returns a record batch of whatever columns the value holds (raising
    :class:`MessageDecodeError` when it cannot be read); :func:`decode_values` then validates it
    against the one event contract. ``max_rows`` is how many rows one value may carry (None: any).
    ``encode_each`` (optional) encodes every row into its own value, vectorised.
    """

    name: str
    encode: Callable[[pa.RecordBatch], bytes]
    decode: Callable[[bytes], pa.RecordBatch]
    max_rows: int | None = None
    encode_each: Callable[[pa.RecordBatch], list[bytes]] | None = None


ENCODINGS: dict[str, Encoding] = {}


def register_encoding(encoding: Encoding) -> None:
    """Add ``encoding`` to the registry (a name registered twice is an error)."""
    if encoding.name in ENCODINGS:
        msg = f"encoding {encoding.name!r} is already registered"
        raise ValueError(msg)
    ENCODINGS[encoding.name] = encoding


def get_encoding(name: str) -> Encoding:
    """The registered encoding ``name``; raises MessageDecodeError (``unknown_encoding``)."""
    try:
        return ENCODINGS[name]
    except KeyError:
        msg = f"unknown encoding {name[:60]!r}; expected one of {sorted(ENCODINGS)}"
        raise MessageDecodeError("unknown_encoding", msg) from None


def default_encoding(pack: int) -> str:
    """The encoding used when a caller names only a pack size: ``json`` for 1, ``arrow`` above."""
    return ENCODING_JSON if pack == 1 else ENCODING_ARROW


#: Optional header of a message whose rows the replay has sent before (a seek or reset back in time):
#: value ``1``. Stream aggregates that counted them once must not count them again.
RESENT_HEADER: Final = "resent"
_RESENT_VALUE: Final = b"1"


#: Header of an end-of-log marker (see the module docstring): the log's last event time, epoch microseconds.
END_OF_LOG_HEADER: Final = "end_of_log"


def end_of_log_message(last_event_us: int) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The ``(value, headers)`` of an end-of-log marker for a log whose last event is at ``last_event_us``."""
    if not TIME_MIN_US <= int(last_event_us) <= TIME_MAX_US:
        msg = f"end-of-log time {last_event_us} is outside the event times consumers can decode"
        raise ValueError(msg)
    headers = [*message_headers(ENCODING_ARROW, 0), (END_OF_LOG_HEADER, str(int(last_event_us)).encode())]
    return encode_arrow(_empty_batch()), headers


def _end_of_log(headers: Headers) -> int | None:
    """The end-of-log time a zero-row message's headers carry, or None; MessageDecodeError if malformed."""
    text = header(headers, END_OF_LOG_HEADER)
    if text is None:
        return None
    body = text[1:] if text.startswith("-") else text
    if not (body.isascii() and body.isdigit()) or len(body) > 19 or not TIME_MIN_US <= int(text) <= TIME_MAX_US:
        msg = f"header {END_OF_LOG_HEADER!r} must be an event time in epoch microseconds. Got {text[:40]!r}"
        raise MessageDecodeError("bad_header", msg)
    return int(text)


def _check_marker(value: Any, encoding: str | None, rows: int | None) -> None:
    """An end-of-log marker holds no rows (MessageDecodeError otherwise: none of them may vanish)."""
    if rows not in (0, None):
        msg = f"header {END_OF_LOG_HEADER!r} marks a message without rows, but header 'rows' says {rows}"
        raise MessageDecodeError("bad_header", msg)
    held = _decode_one(value, encoding or ENCODING_ARROW, None, False, None).num_rows
    if held:
        msg = f"header {END_OF_LOG_HEADER!r} marks a message without rows, but the value holds {held}"
        raise MessageDecodeError("rows_mismatch", msg)


def message_headers(encoding: str, rows: int, *, resent: bool = False) -> list[tuple[str, bytes]]:
    """Headers every query message carries (and :data:`RESENT_HEADER` on rows sent before)."""
    headers = [
        ("schema", SCHEMA_VERSION.encode()),
        ("encoding", encoding.encode()),
        ("rows", str(rows).encode()),
    ]
    if resent:
        headers.append((RESENT_HEADER, _RESENT_VALUE))
    return headers


def is_resent(headers: Headers) -> bool:
    """Whether a message carries :data:`RESENT_HEADER` ``1``: its rows were sent before, by the same replay."""
    for key, value in headers or ():
        if key == RESENT_HEADER:
            return value == _RESENT_VALUE or (isinstance(value, str) and value == "1")
    return False


def header(headers: Headers, name: str) -> str | None:
    """The value of header ``name`` as text, or None; MessageDecodeError if it is not UTF-8."""
    for key, value in headers or ():
        if key == name:
            if value is None:
                return None
            if isinstance(value, bytes | bytearray | memoryview):
                try:
                    return bytes(value).decode()
                except UnicodeDecodeError:
                    msg = f"header {name!r} is not UTF-8 text: {bytes(value)[:40]!r}"
                    raise MessageDecodeError("bad_header", msg) from None
            return str(value)
    return None


#: Header values every producer of ours writes, decoded once (a per-message fast path; anything else
#: goes through the checked path below).
_KNOWN_ENCODINGS: Final = {ENCODING_JSON.encode(): ENCODING_JSON, ENCODING_ARROW.encode(): ENCODING_ARROW,
                           ENCODING_ARROW_ZSTD.encode(): ENCODING_ARROW_ZSTD}
_ONE_ROW: Final = b"1"


_SCHEMA_HEADER: Final = SCHEMA_VERSION.encode()
_CONTRACT_HEADERS: Final = frozenset({"schema", "encoding", "rows"})


def _meta(headers: Headers) -> tuple[str | None, int | None]:
    """The ``encoding`` and ``rows`` headers of one message, read in one pass and checked.

    A ``schema`` header, when present, must name this event schema: a message of another version
    is refused rather than read as this one. Each of the three headers may appear once (which of
    two ``encoding`` headers would be meant is a guess). A header without a value (Kafka allows a null
    one) is read as absent, whichever of the three it is.
    """
    if isinstance(headers, UnreadableHeaders):
        raise MessageDecodeError("bad_header", headers.why)
    encoding = rows = None
    seen: set[str] = set()
    for key, value in headers or ():
        if value is None:
            continue
        if key in _CONTRACT_HEADERS:
            if key in seen:
                raise MessageDecodeError("bad_header", f"header {key!r} appears more than once")
            seen.add(key)
        if key == "encoding" and type(value) is bytes and value in _KNOWN_ENCODINGS:
            encoding = _KNOWN_ENCODINGS[value]
        elif key == "rows" and value == _ONE_ROW and type(value) is bytes:
            rows = 1
        elif key == "schema":
            if value != _SCHEMA_HEADER and (text := header(((key, value),), key)) != SCHEMA_VERSION:
                msg = f"header 'schema' says {text!r:.60}; this workbench reads {SCHEMA_VERSION!r} events"
                raise MessageDecodeError("unknown_schema", msg)
        elif key == "encoding" or key == "rows":
            text = header(((key, value),), key)
            if key == "encoding":
                encoding = text
            elif text is not None:
                if not (text.isascii() and text.isdigit()) or len(text) > 12:
                    msg = f"header 'rows' must be a non-negative integer. Got {text[:40]!r}"
                    raise MessageDecodeError("bad_header", msg)
                rows = int(text)
    return encoding, rows


_KEY_CACHE: dict[bytes, int] = {}  # valid keys seen (instance ids: few), so the check runs once per key
_KEY_CACHE_MAX: Final = 65_536


def decode_key(key: bytes | str | None) -> int:
    """A message key as the instance id it must be (decimal int64 text); MessageDecodeError otherwise."""
    if type(key) is bytes:
        cached = _KEY_CACHE.get(key)
        if cached is not None:
            return cached
        value = _decode_key(key)
        if len(_KEY_CACHE) < _KEY_CACHE_MAX:
            _KEY_CACHE[key] = value
        return value
    return _decode_key(key)


def _decode_key(key: bytes | str | None) -> int:
    if key is None:
        raise MessageDecodeError("bad_key", "the message has no key; the key must be the instance_id")
    if isinstance(key, bytes | bytearray | memoryview):
        try:
            key = bytes(key).decode()
        except UnicodeDecodeError:
            msg = f"the key is not UTF-8 text: {bytes(key)[:40]!r}"
            raise MessageDecodeError("bad_key", msg) from None
    text = key
    body = text[1:] if text.startswith("-") else text  # one sign at most: "--5" is no number
    if not (body.isascii() and body.isdigit()) or len(body) > 19:
        msg = f"the key must be the decimal instance_id. Got {key[:40]!r}"
        raise MessageDecodeError("bad_key", msg)
    value = int(text)
    if not _INT64_MIN <= value <= _INT64_MAX:
        msg = f"the key {text[:40]!r} does not fit int64"
        raise MessageDecodeError("bad_key", msg)
    if text != str(value):  # Kafka partitions by the key's bytes: "003" is not on the partition of "3"
        msg = f"the key must be the decimal instance_id as written by str(): no leading zeros. Got {key[:40]!r}"
        raise MessageDecodeError("bad_key", msg)
    return value


# --- encoders --------------------------------------------------------------------------------
_COLUMN_LIST: Final = list(COLUMNS)


def _project(batch: pa.RecordBatch) -> pa.RecordBatch:
    names = batch.schema.names  # once: each access builds a new list (the replay encodes per message)
    if names == _COLUMN_LIST:
        return batch
    present = set(names)
    missing = [name for name in COLUMNS if name not in present]
    if missing:
        msg = f"cannot encode rows: missing columns {missing[:5]}"
        raise MessageDecodeError("missing_columns", msg)
    return batch.select(list(COLUMNS))


def encode_json(batch: pa.RecordBatch) -> list[bytes]:
    """One JSON value per row of ``batch`` (extra columns such as labels are dropped)."""
    projected = _project(batch)
    names = projected.schema.names
    values: list[bytes] = []
    # Convert a couple of thousand rows at a time: materialising a large batch as Python dicts
    # at once costs hundreds of MB of short-lived objects.
    for start in range(0, projected.num_rows, 2048):
        columns = [_json_column(column) for column in projected.slice(start, 2048).columns]
        values.extend(orjson.dumps(dict(zip(names, row, strict=True))) for row in zip(*columns, strict=True))
    return values


def _json_column(column: pa.Array) -> list[Any]:
    """The column's values as ``orjson`` writes them from ``to_pylist()``, timestamps as that text.

    A UTC microsecond time becomes the text orjson writes for its ``datetime``
    (``YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00``) without making the ``datetime``: that object was
    9 of the ~17 µs per row this encoding cost. Any other column, or a time column with nulls or
    outside the years 1-9999 (which a ``datetime`` cannot hold), takes ``to_pylist()`` as before.
    """
    if column.type != _UTC_US or column.null_count or not len(column):
        return column.to_pylist()
    micros = column.cast(pa.int64()).to_numpy()
    if micros.min() < TIME_MIN_US or micros.max() > TIME_MAX_US:
        return column.to_pylist()
    texts = np.datetime_as_string(micros.astype("datetime64[us]"), unit="us").tolist()
    for index in np.flatnonzero(micros % 1_000_000 == 0).tolist():  # whole seconds: no fraction
        texts[index] = texts[index][:-7]
    return [text + "+00:00" for text in texts]


def _encode_json_one(batch: pa.RecordBatch) -> bytes:
    values = encode_json(batch)
    if len(values) != 1:
        msg = f"a json message holds exactly one row; got {len(values)}"
        raise ValueError(msg)
    return values[0]


def _ipc(batch: pa.RecordBatch, compression: str | None) -> bytes:
    projected = _project(batch)
    if not projected.schema.equals(_SCHEMA_NO_META, check_metadata=True):  # a cast costs more than the write
        projected = projected.cast(_SCHEMA_NO_META)
    sink = pa.BufferOutputStream()  # same bytes as io.BytesIO, without a Python write call per buffer
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, _SCHEMA_NO_META, options=options) as writer:
        writer.write_batch(projected)
    return sink.getvalue().to_pybytes()


def encode_arrow(batch: pa.RecordBatch) -> bytes:
    """One Arrow IPC stream value for all rows of ``batch`` (extra columns dropped)."""
    return _ipc(batch, None)


# --- decoders (to a batch of whatever the value holds; validated afterwards) -----------------
#: Magic numbers of a value compressed as a whole, a natural misreading of ``arrow-zstd``.
_WHOLE_VALUE_COMPRESSION: Final = ((b"\x28\xb5\x2f\xfd", "zstd"), (b"\x1f\x8b", "gzip"),
                                   (b"\x04\x22\x4d\x18", "lz4"))


def _read_ipc(value: bytes) -> pa.RecordBatch:
    declared = _ipc_size.declared_bytes(value)
    if declared is not None and declared > MAX_DECODED_BYTES:
        msg = (f"the Arrow stream would decode to {declared:,} bytes (more than {MAX_DECODED_BYTES:,}) from "
               f"{len(value):,}; not decoded")
        raise MessageDecodeError("too_large", msg)
    source = pa.BufferReader(value)
    try:
        table = pa.ipc.open_stream(source).read_all()
    except (pa.ArrowException, OSError, ValueError) as exc:
        msg = f"not a complete Arrow IPC stream: {str(exc)[:200]}"
        for magic, name in _WHOLE_VALUE_COMPRESSION:
            if value.startswith(magic):
                msg += (f"; the value is a whole {name} stream: send the Arrow IPC stream itself ('arrow-zstd' is one "
                        "whose buffers are zstd-compressed inside it, pyarrow's IpcWriteOptions(compression='zstd'))")
        raise MessageDecodeError("invalid_arrow", msg) from exc
    end = source.tell()
    if end != len(value) and value[end:].strip(b"\0"):  # e.g. a second stream: its rows would be dropped
        msg = (f"{len(value) - end:,} bytes follow the end of the Arrow IPC stream at byte {end:,} (a message "
               "holds one stream)")
        raise MessageDecodeError("invalid_arrow", msg)
    if table.num_rows == 0:
        return pa.RecordBatch.from_pylist([], schema=table.schema)
    return table.combine_chunks().to_batches()[0]


#: A fraction of a second of more than 6 digits (Python's ``fromisoformat`` reads them and keeps 6).
_LONG_FRACTION: Final = re.compile(r"[.,]([0-9]{7,})")


def _timestamp_us(text: Any, name: str) -> int:
    if type(text) is not str:
        msg = f"column {name!r} must be an ISO-8601 time string. Got {text!r:.60}"
        raise MessageDecodeError("wrong_type", msg)
    try:
        ts = datetime.fromisoformat(text)
    except ValueError as exc:
        msg = f"column {name!r} is not an ISO-8601 time: {text[:60]!r}"
        raise MessageDecodeError("wrong_type", msg) from exc
    if ts.tzinfo is None:
        msg = f"column {name!r} must carry a zone (e.g. +00:00). Got {text[:60]!r}"
        raise MessageDecodeError("wrong_type", msg)
    fraction = _LONG_FRACTION.search(text)
    if fraction is not None and fraction.group(1)[6:].strip("0"):  # fromisoformat drops these digits
        msg = (f"column {name!r} is finer than the microseconds every event time is kept in: {text[:60]!r} "
               "(an Arrow value or a log with such a time is refused too)")
        raise MessageDecodeError("wrong_type", msg)
    try:
        return (ts - _EPOCH) // _US
    except OverflowError as exc:  # pragma: no cover - timedelta covers years 1-9999
        msg = f"column {name!r} holds a time no consumer can represent: {text[:60]!r}"
        raise MessageDecodeError("timestamp_out_of_range", msg) from exc


def _check_us(us: int, name: str, text: Any) -> int:
    if not TIME_MIN_US <= us <= TIME_MAX_US:
        msg = f"column {name!r} holds a time outside years 1-9999 in UTC: {text!r:.60}"
        raise MessageDecodeError("timestamp_out_of_range", msg)
    return us


_SIGNATURES: dict[tuple[tuple[str, ...], tuple[type, ...]], bool] = {}
_SIGNATURES_MAX: Final = 4096


def _signature_valid(names: tuple[str, ...], types: tuple[type, ...]) -> bool:
    """Whether values of these types (under these column names) are of their columns' JSON types."""
    for name, got in zip(names, types, strict=True):
        kind = _JSON_TYPES[name]
        if got is type(None):
            if name in _REQUIRED:
                return False
        elif kind is _TIME:
            continue  # checked (and explained) by _timestamp_us
        elif got is not kind:
            return False
    return True


def _explain_invalid(row: dict[str, Any]) -> None:
    """Raise the MessageDecodeError that names the first bad value of ``row``."""
    for name in _REQUIRED:
        if row[name] is None:
            raise MessageDecodeError("null_in_required", f"column {name!r} must not be null")
    for name, v in row.items():
        if v is None:
            continue
        kind = _JSON_TYPES[name]
        if type(v) is not kind and kind is not _TIME:
            label = {int: "an integer", bool: "a boolean", str: "a string"}[kind]
            raise MessageDecodeError("wrong_type", f"column {name!r} must be {label}. Got {v!r:.60}")
    msg = "a value is not of its column's type"  # pragma: no cover - _signature_valid and this loop agree
    raise MessageDecodeError("wrong_type", msg)


def _first_repeated_name(value: bytes) -> str | None:
    """The first top-level name that ``value`` (a JSON object) holds twice, or None."""
    seen: set[str] = set()
    try:
        pairs = json.loads(value, object_pairs_hook=lambda pairs: pairs)
    except (ValueError, RecursionError):  # orjson read it: the checks after this one name what is wrong
        return None
    for name, _ in pairs:
        if name in seen:
            return name
        seen.add(name)
    return None


def _check_unique_names(value: bytes, row: dict[str, Any]) -> None:
    """Raise if ``value``'s object repeats a name (``row``, its dict, kept only the last copy).

    Without a backslash every raw ``:`` is a name's separator or a character of a name or string,
    so a message holds at least as many colons as names plus those of its time; exactly that many
    (24 + 3 in a valid message of our producers) only if no name repeats. Only the others are
    parsed again.
    """
    if b"\\" not in value:
        text = row.get("arrival_timestamp")
        if value.count(b":") == len(row) + (text.count(":") if type(text) is str else 0):
            return
    name = _first_repeated_name(value)
    if name is not None:
        msg = f"column {name[:40]!r} appears twice (a JSON object's names must be unique)"
        raise MessageDecodeError("extra_columns", msg)


_NON_NEGATIVE_VALUES: Final = operator.itemgetter(*NON_NEGATIVE_COLUMNS)


def _check_non_negative(row: dict[str, Any]) -> None:
    # The types hold (ints or None): the min of the non-zero, non-null values tells in C.
    if min(filter(None, _NON_NEGATIVE_VALUES(row)), default=0) < 0:
        for name in NON_NEGATIVE_COLUMNS:
            v = row[name]
            if v is not None and v < 0:
                raise MessageDecodeError("negative_value", _negative_detail(name, v))


def _negative_detail(name: str, value: Any) -> str:
    return f"column {name!r} must not be negative (durations, sizes and counts are >= 0). Got {value}"


#: How an Arrow IPC stream (so an ``arrow`` or ``arrow-zstd`` value) begins.
_IPC_CONTINUATION: Final = b"\xff\xff\xff\xff"


def _json_row(value: bytes, check_range: bool = True) -> dict[str, Any]:
    """One JSON value validated against the contract; adds ``arrival_us`` (epoch microseconds).

    ``check_range=False`` leaves out the int64 range check for a caller that converts the row to
    int64 Arrow columns anyway (a value out of range fails there, and :func:`_check_int_range` names it).
    """
    try:
        row = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        msg = f"invalid JSON: {exc}"
        if value.startswith(_IPC_CONTINUATION):  # an Arrow message without (or with a wrong) encoding header
            msg += "; the value looks like an Arrow IPC stream: name its encoding in the 'encoding' header (arrow)"
        raise MessageDecodeError("invalid_json", msg) from exc
    if type(row) is not dict:
        msg = f"expected a JSON object, got {type(row).__name__}"
        raise MessageDecodeError("not_an_object", msg)
    _check_unique_names(value, row)
    # The column names (in their order) and the types of the values are one of a few signatures
    # (which columns are null): each signature is judged once and remembered, so a valid row costs
    # two tuples and a dict lookup instead of 24 checks. An invalid one is explained by the full check.
    signature = (tuple(row), tuple(map(type, row.values())))
    if _SIGNATURES.get(signature) is not True:
        if len(row) != len(COLUMNS) or row.keys() != _COLUMN_SET:
            missing = [name for name in COLUMNS if name not in row]
            if missing:
                more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
                raise MessageDecodeError("missing_columns", f"missing columns {missing[:5]}{more}")
            extra = sorted(str(k)[:40] for k in row if k not in _COLUMN_SET)
            raise MessageDecodeError("extra_columns", f"unknown columns {extra[:5]}")
        if not _signature_valid(*signature):
            _explain_invalid(row)
        if len(_SIGNATURES) < _SIGNATURES_MAX:
            _SIGNATURES[signature] = True
    _check_non_negative(row)
    if check_range:
        _check_int_range(row)
    text = row["arrival_timestamp"]
    row["arrival_us"] = _check_us(_timestamp_us(text, "arrival_timestamp"), "arrival_timestamp", text)
    return row


def _check_int_range(row: dict[str, Any]) -> None:
    # orjson reads integers up to 2**64 - 1 as int (beyond: float, a wrong type), so only too-large
    # ones can be out of range; the max of the non-null ints (all ints once the types hold) tells in C.
    if max(filter(None, map(row.__getitem__, _INT_FIELDS)), default=0) > _INT64_MAX:
        for name in _INT_FIELDS:
            v = row[name]
            if v is not None and not _INT64_MIN <= v <= _INT64_MAX:
                raise MessageDecodeError("int_out_of_range", f"column {name!r} does not fit int64: {v}")


_ROW_KEYS: Final = tuple((operator.itemgetter("arrival_us" if f.name == "arrival_timestamp" else f.name), f.type)
                         for f in _SCHEMA_NO_META)


def _json_rows_to_batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    # Validated rows only: the conversion then cannot fail. The time goes in as epoch microseconds.
    # Column by column (a list per column, converted in C): ~5x cheaper than RecordBatch.from_pylist.
    arrays = [pa.array(list(map(get, rows)), type=typ) for get, typ in _ROW_KEYS]
    return pa.RecordBatch.from_arrays(arrays, schema=_SCHEMA_NO_META)


def rows_to_batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    """Rows returned by :func:`decode_row` as one record batch of the event schema (no copy of checks)."""
    return _json_rows_to_batch(rows) if rows else _empty_batch()


def _decode_json(value: bytes) -> pa.RecordBatch:
    return _json_rows_to_batch([_json_row(value)])


def _cast_error(name: str, exc: Exception) -> MessageDecodeError:
    text = str(exc)
    if "out of bounds" in text or "not in range" in text or "overflow" in text.lower():
        return MessageDecodeError("int_out_of_range" if name != "arrival_timestamp" else "timestamp_out_of_range",
                                  f"column {name!r}: {text[:200]}")
    return MessageDecodeError("wrong_type", f"column {name!r}: {text[:200]}")


#: What an Arrow column of each event type may be (:func:`~workbench.data.schema.type_fits`), for reasons.
_FAMILY_TEXT: Final = {"int64": "of an integer type (int64 or narrower, or unsigned)",
                       "string": "of a string type (string, large_string, string_view or a dictionary of them)",
                       "bool": "of type bool", "timestamp[us, tz=UTC]": "a timestamp with a zone (any unit)"}


def _conform(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A decoded batch with exactly the event schema, or MessageDecodeError (any encoding)."""
    schema = batch.schema
    if not schema.equals(_SCHEMA_NO_META):
        names = schema.names
        if len(names) != len(set(names)):
            twice = next(n for i, n in enumerate(names) if n in names[:i])
            raise MessageDecodeError("extra_columns", f"column {str(twice)[:40]!r} appears twice")
        missing = [n for n in COLUMNS if n not in names]
        if missing:
            raise MessageDecodeError("missing_columns", f"missing columns {missing[:5]}")
        extra = [n for n in names if n not in _COLUMN_SET]
        if extra:
            raise MessageDecodeError("extra_columns", f"unknown columns {[str(n)[:40] for n in extra[:5]]}")
        arrays = []
        for field in _SCHEMA_NO_META:
            column = batch.column(field.name)
            if column.type != field.type:
                if not (pa.types.is_null(column.type) or type_fits(field.name, column.type, stored=False)):
                    # a cast would convert too much: 2 or "yes" to true, 1.5 to "1.5", an int to a time
                    msg = (f"column {field.name!r} must be {_FAMILY_TEXT.get(str(field.type), field.type)}. "
                           f"Got {column.type}")
                    raise MessageDecodeError("wrong_type", msg)
                if pa.types.is_timestamp(field.type) and pa.types.is_timestamp(column.type) and column.type.tz is None:
                    raise MessageDecodeError("wrong_type", "column 'arrival_timestamp' must carry a zone (UTC)")
                try:
                    column = pc.cast(column, field.type, safe=True)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OverflowError) as exc:
                    raise _cast_error(field.name, exc) from exc
            arrays.append(column)
        batch = pa.RecordBatch.from_arrays(arrays, schema=_SCHEMA_NO_META)
    _check_values(batch)
    return batch


def _check_values(batch: pa.RecordBatch) -> None:
    """What a batch of the event schema must hold: no null in a required column, times in range."""
    for name in _REQUIRED:
        if batch.column(name).null_count:
            raise MessageDecodeError("null_in_required", f"column {name!r} must not be null")
    if batch.num_rows:
        lo, hi = int64_bounds(batch.column("arrival_timestamp"))
        if lo < TIME_MIN_US or hi > TIME_MAX_US:
            _check_us(lo, "arrival_timestamp", lo)
            _check_us(hi, "arrival_timestamp", hi)
        for name in NON_NEGATIVE_COLUMNS:
            lowest = pc.min(batch.column(name)).as_py()
            if lowest is not None and lowest < 0:
                raise MessageDecodeError("negative_value", _negative_detail(name, lowest))


register_encoding(Encoding(ENCODING_JSON, _encode_json_one, _decode_json, max_rows=1, encode_each=encode_json))
register_encoding(Encoding(ENCODING_ARROW, encode_arrow, _read_ipc))
register_encoding(Encoding(ENCODING_ARROW_ZSTD, lambda batch: _ipc(batch, "zstd"), _read_ipc))


# --- the one decode function -----------------------------------------------------------------
@dataclass(frozen=True)
class DecodedBatch:
    """Rows decoded from many messages, and the messages that failed.

    ``source_index[i]`` is the position (in the input sequence) of the message row ``i`` came
    from; ``errors`` lists ``(position, reason)`` for every message that could not be decoded
    (``reason`` starts with a code of :data:`REASONS`).
    """

    batch: pa.RecordBatch
    source_index: list[int]
    errors: list[tuple[int, str]]
    #: The newest end-of-log marker among the messages (:func:`end_of_log_message`), or None.
    end_of_log_us: int | None = None
    #: ``(position, end-of-log time µs)`` of every end-of-log marker among the messages, in order.
    end_of_log_markers: tuple[tuple[int, int], ...] = ()


def _empty_batch() -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=_SCHEMA_NO_META)


def int64_bounds(array: pa.Array) -> tuple[int, int]:
    """Min and max of a null-free int64 or timestamp array (numpy on the data buffer: no kernel call)."""
    values = np.frombuffer(array.buffers()[1], dtype=np.int64, count=len(array), offset=array.offset * 8)
    return int(values.min()), int(values.max())


def _check_key(batch: pa.RecordBatch, key: Any) -> None:
    expected = decode_key(key)
    if batch.num_rows:
        lo, hi = int64_bounds(batch.column("instance_id"))
        if lo != expected or hi != expected:
            msg = (f"message key {expected} does not match the rows' instance_id {sorted({lo, hi})}; "
                   "the key must be the instance id")
            raise MessageDecodeError("bad_key", msg)


def _decode_one(value: bytes | None, encoding: str, rows: int | None, check_key: bool, key: Any) -> pa.RecordBatch:
    enc = get_encoding(encoding)
    if not value:  # None (a tombstone) or no bytes: no rows in any encoding, whatever the headers say
        raise MessageDecodeError("empty_value", "empty message value")
    try:
        decoded = enc.decode(bytes(value))
        if enc.name != ENCODING_JSON:
            # IPC readers trust the buffers; a flipped byte in an offsets buffer would only fail
            # later, in whichever step touches it (a combine of the whole batch of messages).
            decoded.validate(full=True)
        batch = _conform(decoded)
    except MessageDecodeError:
        raise
    except Exception as exc:  # e.g. pyarrow's UnicodeDecodeError on a corrupted schema: still one bad message
        detail = f"{enc.name} decoder: {type(exc).__name__}: {str(exc)[:160]}"
        raise MessageDecodeError("invalid_value", detail) from exc
    if enc.max_rows is not None and batch.num_rows > enc.max_rows:
        raise MessageDecodeError("rows_mismatch", f"{enc.name} carries at most {enc.max_rows} row(s) per message")
    if rows is not None and rows != batch.num_rows:
        msg = f"header 'rows' says {rows} but the value holds {batch.num_rows} (truncated or mislabelled)"
        raise MessageDecodeError("rows_mismatch", msg)
    if check_key:
        _check_key(batch, key)
    return batch


def decode_values(
    values: Sequence[bytes | None],
    encodings: Iterable[str | None] | None = None,
    *,
    headers: Sequence[Headers] | None = None,
    keys: Sequence[Any] | None = None,
) -> DecodedBatch:
    """Decode many message values (mixed encodings allowed) into one validated record batch.

    Parameters
    ----------
    values : sequence of bytes
        Message values.
    encodings : iterable of str, optional
        Each value's encoding (None means ``json``); ignored where ``headers`` name one.
    headers : sequence of header lists, optional
        Each message's headers: ``encoding`` and ``rows`` are read (and checked) from them.
    keys : sequence, optional
        Each message's key; when given, it must be the instance id of all the message's rows.

    Malformed values never raise: they are reported in :attr:`DecodedBatch.errors` with the reason.
    JSON messages are decoded together (:mod:`workbench.data._json_fast`); those that path does
    not accept are judged one by one, so the result is the same as message by message.
    """
    encodings = list(encodings) if encodings is not None else None  # read twice if the fast path fails
    try:
        return _decode_values(values, encodings, headers=headers, keys=keys, json_fast=True)
    except MessageDecodeError:
        raise
    except Exception:  # a fault of ours that a message trips: it must not stop the app (nor lose the others)
        logger.exception("decoding %d messages failed unexpectedly; decoding them one by one", len(values))
        return _decode_one_by_one(values, encodings, headers, keys)


def _decode_one_by_one(values: Sequence[bytes | None], encodings: Iterable[str | None] | None,
                       headers: Sequence[Headers] | None, keys: Sequence[Any] | None) -> DecodedBatch:
    """:func:`decode_values` message by message; a message the decoder fails on unexpectedly is refused."""
    encodings = list(encodings) if encodings is not None else [None] * len(values)
    pieces: list[tuple[pa.RecordBatch, list[int]]] = []
    errors: list[tuple[int, str]] = []
    markers: list[tuple[int, int]] = []
    for position, value in enumerate(values):
        try:
            one = _decode_values([value], [encodings[position]],
                                 headers=None if headers is None else [headers[position]],
                                 keys=None if keys is None else [keys[position]], json_fast=False, arrow_fast=False)
        except Exception as exc:
            detail = f"{type(exc).__name__}: {str(exc)[:160]}"
            errors.append((position, f"invalid_value: the decoder failed on it: {detail}"))
            continue
        errors.extend((position, reason) for _, reason in one.errors)
        if one.batch.num_rows:
            pieces.append((one.batch, [position] * one.batch.num_rows))
        if one.end_of_log_us is not None:
            markers.append((position, one.end_of_log_us))
    return _with_markers(_combine(pieces, errors), markers)


def _with_markers(decoded: DecodedBatch, markers: list[tuple[int, int]]) -> DecodedBatch:
    if not markers:
        return decoded
    return dataclasses.replace(decoded, end_of_log_us=max(end for _, end in markers),
                               end_of_log_markers=tuple(markers))


def _decode_values(
    values: Sequence[bytes | None],
    encodings: Iterable[str | None] | None,
    *,
    headers: Sequence[Headers] | None,
    keys: Sequence[Any] | None,
    json_fast: bool,
    arrow_fast: bool = True,
) -> DecodedBatch:
    """:func:`decode_values`; ``json_fast=False`` / ``arrow_fast=False`` judge every JSON / Arrow message
    on the exact per-message path (the reference)."""
    encodings = list(encodings) if encodings is not None else [None] * len(values)
    if len(encodings) != len(values) or (headers is not None and len(headers) != len(values)) or (
            keys is not None and len(keys) != len(values)):
        msg = f"got {len(values)} values but {len(encodings)} encodings / headers / keys"
        raise ValueError(msg)
    pieces: list[tuple[pa.RecordBatch, list[int]]] = []  # (rows, the position of each row's message)
    errors: list[tuple[int, str]] = []
    json_pos: list[int] = []  # positions of the one-row JSON messages, decoded together below
    json_rows: list[int | None] = []  # their rows headers
    canonical: list[_Canonical] = []  # Arrow messages read by _arrow_fast: checked together below
    check_key = keys is not None
    markers: list[tuple[int, int]] = []
    messages: Iterable[tuple[int, tuple[Any, Any, Any, Any]]] = enumerate(zip(
        values, headers if headers is not None else encodings, keys if keys is not None else encodings,
        encodings, strict=True))
    if headers is not None and all(map(operator.eq, repeat(_JSON_HEADERS), headers)):  # as our producers send
        json_pos, json_rows, messages = list(range(len(values))), [1] * len(values), ()
    for position, (value, hdrs, key, fallback) in messages:
        if headers is None:
            hdrs = None
        if not check_key:
            key = None
        try:
            name, rows = (ENCODING_JSON, 1) if hdrs == _JSON_HEADERS else _meta(hdrs)
            if (end := _end_of_log(hdrs)) is not None:
                _check_marker(value, name, rows)  # a marker, not a row: it must hold none
                markers.append((position, end))
                continue
            name = name or fallback or ENCODING_JSON
            if name == ENCODING_JSON:
                json_pos.append(position)
                json_rows.append(rows)
                continue
            if arrow_fast and get_encoding(name).decode is _read_ipc:
                batch = _arrow_fast.read_canonical(value, MAX_DECODED_BYTES)
                if batch is not None and (rows is None or rows == batch.num_rows) and _fully_valid(batch):
                    canonical.append(_Canonical(position, batch, value, name, rows, key))
                    continue
            batch = _decode_one(value, name, rows, check_key, key)
        except MessageDecodeError as exc:
            errors.append((position, str(exc)))
            continue
        pieces.append((batch, [position] * batch.num_rows))
    if canonical:
        pieces.extend(_canonical_pieces(canonical, check_key, errors))
    if json_pos:
        pieces[:0] = _decode_json_messages(values, keys, json_pos, json_rows, errors, json_fast)
    errors.sort()  # the exact path's order: by message
    decoded = _combine(pieces, errors)
    return _with_markers(decoded, markers)


def _fully_valid(batch: pa.RecordBatch) -> bool:
    """Whether ``batch`` passes Arrow's full validation (the per-message path names a failure)."""
    try:
        batch.validate(full=True)
    except Exception:  # any failure: the per-message path judges the message
        return False
    return True


class _Canonical(NamedTuple):
    """One Arrow message :mod:`workbench.data._arrow_fast` read, with what the per-message path needs."""

    position: int
    batch: pa.RecordBatch
    value: Any
    encoding: str
    rows: int | None
    key: Any


def _canonical_pieces(canonical: list[_Canonical], check_key: bool,
                      errors: list[tuple[int, str]]) -> list[tuple[pa.RecordBatch, list[int]]]:
    """The rows of the Arrow messages :mod:`workbench.data._arrow_fast` read, as one piece.

    Their batches have the event schema and passed full validation; what the per-message path
    checks on the values (no null in a required column, times in range, the key every row's
    instance id) is checked here on all rows at once. If anything fails, every one of these
    messages is judged on the per-message path, which names the fault (rejections go to ``errors``).
    """
    batch = pa.concat_batches([m.batch for m in canonical])
    counts = np.fromiter((m.batch.num_rows for m in canonical), dtype=np.int64, count=len(canonical))
    try:
        _check_values(batch)
        ok = True
    except MessageDecodeError:
        ok = False
    if ok and check_key:  # every key is decoded, as on the per-message path (a 0-row message's too)
        try:
            expected = np.fromiter(map(decode_key, (m.key for m in canonical)), dtype=np.int64, count=len(canonical))
        except MessageDecodeError:
            ok = False
        else:
            ids = np.frombuffer(batch.column("instance_id").buffers()[1], dtype=np.int64, count=batch.num_rows,
                                offset=batch.column("instance_id").offset * 8)
            ok = bool((ids == np.repeat(expected, counts)).all())
    if ok:
        positions = np.fromiter((m.position for m in canonical), dtype=np.int64, count=len(canonical))
        return [(batch, np.repeat(positions, counts).tolist())]
    pieces = []
    for m in canonical:
        try:
            exact = _decode_one(m.value, m.encoding, m.rows, check_key, m.key)
        except MessageDecodeError as exc:
            errors.append((m.position, str(exc)))
            continue
        pieces.append((exact, [m.position] * exact.num_rows))
    return pieces


#: The headers of a one-row JSON message as every producer of ours writes them.
_JSON_HEADERS: Final = message_headers(ENCODING_JSON, 1)
#: ``rows`` header values of a message the JSON fast path may take (others: the exact path names them).
_FAST_ROWS: Final = frozenset({None, 1})


def _instance_ids(keys: Sequence[Any]) -> tuple[list[int], list[int]]:
    """The instance ids the keys name, and the indices of the keys that name one (the others: the exact path)."""
    ids = list(map(_KEY_CACHE.get, keys)) if all(map(bytes.__instancecheck__, keys)) else [None]
    if None not in ids:  # every key seen before: a dict lookup each
        return ids, list(range(len(keys)))
    ids, ok = [], []
    for i, key in enumerate(keys):
        try:
            ids.append(decode_key(key))
        except Exception:  # whatever the key is, the exact path names the message's first fault
            continue
        ok.append(i)
    return ids, ok


def _decode_json_messages(values: Sequence[Any], keys: Sequence[Any] | None, json_pos: list[int],
                          json_rows: list[int | None], errors: list[tuple[int, str]],
                          fast: bool) -> list[tuple[pa.RecordBatch, list[int]]]:
    """The rows of the one-row JSON messages at ``json_pos``; their rejections go to ``errors``.

    ``fast``: first the vectorised path (:mod:`workbench.data._json_fast`), then the exact path
    for the messages it hands back; otherwise the exact path for all (the reference).
    """
    pieces: list[tuple[pa.RecordBatch, list[int]]] = []
    exact = json_pos
    if fast:
        candidates = json_pos
        if not (all(map(_FAST_ROWS.__contains__, json_rows))
                and all(type(values[p]) is bytes for p in candidates)):
            candidates = [p for p, rows in zip(json_pos, json_rows, strict=True)
                          if rows in _FAST_ROWS and type(values[p]) is bytes]
        every = len(candidates) == len(values)  # all messages (the usual batch): no copies
        instance_ids = None
        if keys is not None:
            ids, keyed = _instance_ids(keys if every else [keys[p] for p in candidates])
            if len(keyed) < len(candidates):
                candidates, every = [candidates[i] for i in keyed], False
            instance_ids = np.array(ids, dtype=np.int64)
        batch, accepted, rest = _json_fast.decode_json_batch(
            values if every else [values[p] for p in candidates], instance_ids,
            time_min_us=TIME_MIN_US, time_max_us=TIME_MAX_US)
        if batch is not None:
            pieces.append((batch, [candidates[i] for i in accepted] if rest else candidates))
        if len(candidates) < len(json_pos) or rest:
            taken = {candidates[i] for i in accepted}
            exact = [p for p in json_pos if p not in taken]
        else:
            exact = []
    rows_header = dict(zip(json_pos, json_rows, strict=True)) if exact else {}
    rows: list[dict[str, Any]] = []
    positions: list[int] = []
    for position in exact:
        key = keys[position] if keys is not None else None
        try:
            rows.append(_decode_row(values[position], rows_header[position], key, keys is not None,
                                    check_range=False))
        except MessageDecodeError as exc:
            errors.append((position, str(exc)))
            continue
        positions.append(position)
    if rows:
        try:
            pieces.append((_json_rows_to_batch(rows), positions))
        except (OverflowError, pa.ArrowInvalid):  # an integer beyond int64: find which rows hold one
            kept, kept_pos = [], []
            for row, position in zip(rows, positions, strict=True):
                try:
                    _check_int_range(row)
                except MessageDecodeError as exc:
                    errors.append((position, str(exc)))
                    continue
                kept.append(row)
                kept_pos.append(position)
            if kept:
                pieces.append((_json_rows_to_batch(kept), kept_pos))
    return pieces


def _combine(pieces: list[tuple[pa.RecordBatch, list[int]]], errors: list[tuple[int, str]]) -> DecodedBatch:
    """One batch of all pieces' rows in message order (a message's rows keep their order)."""
    if not pieces:
        return DecodedBatch(_empty_batch(), [], errors)
    if len(pieces) == 1:  # one message or all JSON: nothing to combine
        batch, source_index = pieces[0]
        return DecodedBatch(batch, source_index, errors)
    source_index = [p for _, positions in pieces for p in positions]
    combined = pa.Table.from_batches([b for b, _ in pieces], schema=_SCHEMA_NO_META).combine_chunks()
    batch = combined.to_batches()[0] if combined.num_rows else _empty_batch()
    order = np.argsort(np.asarray(source_index, dtype=np.int64), kind="stable")
    if len(order) and (np.diff(order) != 1).any():
        batch = batch.take(pa.array(order))
        source_index = [source_index[i] for i in order.tolist()]
    return DecodedBatch(batch, source_index, errors)


def decode_row(value: bytes | None, headers: Headers = None, *, key: Any = None,
               check_key: bool = False) -> dict[str, Any]:
    """One one-row JSON message as a validated dict (plus ``arrival_us``); MessageDecodeError otherwise.

    Applies exactly the checks :func:`decode_values` applies to a ``json`` message (it is the
    function that does them), without building a one-row Arrow batch.
    """
    name, rows = _meta(headers)
    if name is not None and name != ENCODING_JSON:
        get_encoding(name)
        msg = f"decode_row reads json messages only; got encoding {name!r}"
        raise MessageDecodeError("unknown_encoding", msg)
    return _decode_row(value, rows, key, check_key)


def _decode_row(value: bytes | None, rows: int | None, key: Any, check_key: bool,
                check_range: bool = True) -> dict[str, Any]:
    if rows is not None and rows != 1:
        raise MessageDecodeError("rows_mismatch", f"header 'rows' says {rows} but a json message holds 1")
    if not value:
        raise MessageDecodeError("empty_value", "empty message value")
    row = _json_row(value if type(value) is bytes else bytes(value), check_range)
    if check_key and decode_key(key) != row["instance_id"]:
        msg = (f"message key {key!r:.40} does not match the row's instance_id {row['instance_id']}; "
               "the key must be the instance id")
        raise MessageDecodeError("bad_key", msg)
    return row


def decode_value(value: bytes | None, encoding: str | None = ENCODING_JSON) -> pa.RecordBatch:
    """Decode one message value into a record batch of Redset rows; raise MessageDecodeError."""
    result = decode_values([value], [encoding])
    if result.errors:
        reason = result.errors[0][1]
        code, _, detail = reason.partition(": ")
        raise MessageDecodeError(code, detail)
    return result.batch
