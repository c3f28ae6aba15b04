"""The message contract of ``redshift.query_events``: how query rows travel through Kafka.

Two encodings, named by the ``encoding`` header of every message; both carry the
``schema`` header (:data:`~workbench.data.schema.SCHEMA_VERSION`) and the ``rows`` header:

``json`` (default)
    One query per message: a JSON object with all 24 Redset columns, ISO-8601 UTC times
    (``2024-03-01T10:20:00.123456+00:00``), ``null`` for nulls.
``arrow``
    Up to N consecutive queries of one instance in one message (``workbench replay --pack N``):
    an Arrow IPC stream holding one record batch with the 24 columns of
    :data:`~workbench.data.schema.REDSET_SCHEMA`, rows in log order.

Consumers call :func:`decode_values` on a batch of message values and get one Arrow record
batch back, plus the messages that could not be decoded and why (for the dead-letter topic).
Label columns are never encoded.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson
import pyarrow as pa
import pyarrow.json as pa_json

from workbench.data.schema import COLUMNS, REDSET_SCHEMA, SCHEMA_VERSION
from workbench.exceptions import WorkbenchError

__all__ = [
    "ENCODING_ARROW",
    "ENCODING_JSON",
    "DecodedBatch",
    "MessageDecodeError",
    "decode_value",
    "decode_values",
    "encode_arrow",
    "encode_json",
    "header",
    "message_headers",
]

ENCODING_JSON = "json"
ENCODING_ARROW = "arrow"
_ENCODINGS = (ENCODING_JSON, ENCODING_ARROW)
_SCHEMA_NO_META = REDSET_SCHEMA.remove_metadata()


class MessageDecodeError(WorkbenchError, ValueError):
    """A message value is not a valid encoded query row (or batch of rows)."""


Headers = Sequence[tuple[str, bytes | str | None]] | None


def message_headers(encoding: str, rows: int) -> list[tuple[str, bytes]]:
    """Headers every query message carries."""
    return [
        ("schema", SCHEMA_VERSION.encode()),
        ("encoding", encoding.encode()),
        ("rows", str(rows).encode()),
    ]


def header(headers: Headers, name: str) -> str | None:
    """The value of header ``name`` as text, or None."""
    for key, value in headers or ():
        if key == name:
            if value is None:
                return None
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def _project(batch: pa.RecordBatch) -> pa.RecordBatch:
    missing = [name for name in COLUMNS if name not in batch.schema.names]
    if missing:
        msg = f"cannot encode rows: missing columns {missing[:5]}"
        raise MessageDecodeError(msg)
    return batch.select(list(COLUMNS))


def encode_json(batch: pa.RecordBatch) -> list[bytes]:
    """One JSON value per row of ``batch`` (extra columns such as labels are dropped)."""
    projected = _project(batch)
    values: list[bytes] = []
    # Convert a couple of thousand rows at a time: materialising a large batch as Python dicts
    # at once costs hundreds of MB of short-lived objects.
    for start in range(0, projected.num_rows, 2048):
        values.extend(orjson.dumps(row) for row in projected.slice(start, 2048).to_pylist())
    return values


def encode_arrow(batch: pa.RecordBatch) -> bytes:
    """One Arrow IPC stream value for all rows of ``batch`` (extra columns dropped)."""
    projected = _project(batch).cast(_SCHEMA_NO_META)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, _SCHEMA_NO_META) as writer:
        writer.write_batch(projected)
    return sink.getvalue()


@dataclass(frozen=True)
class DecodedBatch:
    """Rows decoded from many messages, and the messages that failed.

    ``source_index[i]`` is the position (in the input sequence) of the message row ``i`` came
    from; ``errors`` lists ``(position, reason)`` for every message that could not be decoded.
    """

    batch: pa.RecordBatch
    source_index: list[int]
    errors: list[tuple[int, str]]


def _json_rows_to_batch(rows: list[dict]) -> pa.RecordBatch:
    arrays = []
    for field in _SCHEMA_NO_META:
        values = [row.get(field.name) for row in rows]
        if pa.types.is_timestamp(field.type):
            arrays.append(pa.array(values, pa.string()).cast(field.type))
        else:
            arrays.append(pa.array(values, field.type))
    batch = pa.RecordBatch.from_arrays(arrays, schema=_SCHEMA_NO_META)
    for field in _SCHEMA_NO_META:
        if not field.nullable and batch.column(field.name).null_count:
            msg = f"column {field.name!r} must not be null"
            raise MessageDecodeError(msg)
    return batch


def _check_json_row(row: object) -> dict:
    if not isinstance(row, dict):
        msg = f"expected a JSON object, got {type(row).__name__}"
        raise MessageDecodeError(msg)
    missing = [name for name in COLUMNS if name not in row]
    if missing:
        msg = f"missing columns {missing[:5]}" + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise MessageDecodeError(msg)
    return row


def _decode_arrow(value: bytes) -> pa.RecordBatch:
    try:
        table = pa.ipc.open_stream(value).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        msg = f"not an Arrow IPC stream: {exc}"
        raise MessageDecodeError(msg) from exc
    names = set(table.schema.names)  # builds a new list on every access
    missing = [name for name in COLUMNS if name not in names]
    if missing:
        msg = f"Arrow batch is missing columns {missing[:5]}"
        raise MessageDecodeError(msg)
    if table.schema.equals(_SCHEMA_NO_META):  # what the replay writes: nothing to convert
        return table.combine_chunks().to_batches()[0] if table.num_rows else _empty_batch()
    try:
        table = table.select(list(COLUMNS)).cast(_SCHEMA_NO_META)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        msg = f"Arrow batch has mistyped columns: {exc}"
        raise MessageDecodeError(msg) from exc
    return table.combine_chunks().to_batches()[0] if table.num_rows else _empty_batch()


def _empty_batch() -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=_SCHEMA_NO_META)


def decode_value(value: bytes | None, encoding: str | None = ENCODING_JSON) -> pa.RecordBatch:
    """Decode one message value into a record batch of Redset rows; raise MessageDecodeError."""
    result = decode_values([value], [encoding])
    if result.errors:
        raise MessageDecodeError(result.errors[0][1])
    return result.batch


def _read_json_lines(values: list[bytes]) -> pa.RecordBatch | None:
    """Vectorised decode of JSON values; None when any value needs the careful path."""
    if any(b"\n" in value for value in values):
        return None
    try:
        table = pa_json.read_json(
            io.BytesIO(b"\n".join(values)),
            parse_options=pa_json.ParseOptions(
                explicit_schema=_SCHEMA_NO_META, unexpected_field_behavior="ignore"
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != len(values):
        return None
    if any(table.column(f.name).null_count for f in _SCHEMA_NO_META if not f.nullable):
        return None
    table = table.combine_chunks()
    return table.to_batches()[0] if table.num_rows else _empty_batch()


def _decode_json_carefully(value: bytes) -> pa.RecordBatch:
    try:
        row = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        msg = f"invalid JSON: {exc}"
        raise MessageDecodeError(msg) from exc
    try:
        return _json_rows_to_batch([_check_json_row(row)])
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
        msg = f"mistyped value: {exc}"
        raise MessageDecodeError(msg) from exc


def decode_values(
    values: Sequence[bytes | None], encodings: Iterable[str | None] | None = None
) -> DecodedBatch:
    """Decode many message values (mixed encodings allowed) into one record batch.

    ``encodings`` gives each value's ``encoding`` header (None means ``json``). Malformed
    values never raise: they are reported in :attr:`DecodedBatch.errors` with the reason.
    Absent nullable JSON fields read as null; absent required ones are errors.
    """
    encodings = list(encodings) if encodings is not None else [None] * len(values)
    if len(encodings) != len(values):
        msg = f"got {len(values)} values but {len(encodings)} encodings"
        raise ValueError(msg)
    if all((e or ENCODING_JSON) == ENCODING_JSON for e in encodings) and all(
        v is not None for v in values
    ):
        fast = _read_json_lines(list(values))  # type: ignore[arg-type]
        if fast is not None:
            return DecodedBatch(fast, list(range(len(values))), [])

    pieces: list[pa.RecordBatch] = []
    source_index: list[int] = []
    errors: list[tuple[int, str]] = []
    for position, (value, encoding) in enumerate(zip(values, encodings, strict=True)):
        encoding = encoding or ENCODING_JSON
        try:
            if value is None:
                raise MessageDecodeError("empty message value")
            if encoding == ENCODING_JSON:
                batch = _decode_json_carefully(value)
            elif encoding == ENCODING_ARROW:
                batch = _decode_arrow(value)
            else:
                msg = f"unknown encoding {encoding!r}; expected one of {_ENCODINGS}"
                raise MessageDecodeError(msg)
        except MessageDecodeError as exc:
            errors.append((position, str(exc)))
            continue
        pieces.append(batch)
        source_index.extend([position] * batch.num_rows)
    if not pieces:
        return DecodedBatch(_empty_batch(), source_index, errors)
    if len(pieces) == 1:  # one message, the per-message path of the apps: nothing to combine
        return DecodedBatch(pieces[0], source_index, errors)
    combined = pa.Table.from_batches(pieces, schema=_SCHEMA_NO_META).combine_chunks()
    batch = combined.to_batches()[0] if combined.num_rows else _empty_batch()
    return DecodedBatch(batch, source_index, errors)
