"""Decoding ``redshift.query_events`` messages inside a Quix app, one message at a time.

Quix hands an app one message per call (~15k calls/s per process), so the per-message work must
be small and vectorised over the rows a message carries:

* :func:`decode_event_message` turns any event message (``encoding`` header ``json`` or
  ``arrow``) into one Arrow record batch via :func:`workbench.data.codec.decode_values`, or raises
  :class:`~workbench.data.codec.MessageDecodeError` with the reason. Use it for packed (Arrow)
  messages, where one call covers up to N rows.
* :func:`json_event_row` is the fast path for one-row JSON messages: ``orjson`` plus a check of
  the required columns and of the types of the columns it returns, ~2 us instead of ~130 us for
  building a one-row Arrow batch. It returns the row as a dict with ``arrival_ms`` added.

Topics read with these functions must use ``value_deserializer="bytes"`` (see
:func:`event_topic`), so a malformed value reaches the app instead of failing in Quix's JSON
deserializer, and can be dead-lettered (:class:`workbench.pipeline._deadletter.DeadLetters`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import orjson
import pyarrow as pa
from quixstreams import Application
from quixstreams.models import Topic

from workbench.config import Settings
from workbench.data import codec
from workbench.data.codec import MessageDecodeError
from workbench.data.schema import REDSET_SCHEMA

__all__ = ["decode_event_message", "event_topic", "json_event_row", "message_encoding"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_REQUIRED: Final = tuple(f.name for f in REDSET_SCHEMA if not f.nullable)
_INT_FIELDS: Final = tuple(f.name for f in REDSET_SCHEMA if pa.types.is_integer(f.type))
_BOOL_FIELDS: Final = tuple(f.name for f in REDSET_SCHEMA if pa.types.is_boolean(f.type))
_STR_FIELDS: Final = tuple(f.name for f in REDSET_SCHEMA if pa.types.is_string(f.type))


def event_topic(app: Application, settings: Settings) -> Topic:
    """The ``redshift.query_events`` topic as raw bytes (key as text: the instance id)."""
    return app.topic(settings.topic_query_events, value_deserializer="bytes", key_deserializer="str")


def message_encoding(headers: Sequence[tuple[str, Any]] | None) -> str:
    """The ``encoding`` header (``json`` when absent)."""
    return codec.header(headers, "encoding") or codec.ENCODING_JSON


def decode_event_message(value: bytes | None, headers: Sequence[tuple[str, Any]] | None) -> pa.RecordBatch:
    """All rows of one event message as a record batch of :data:`REDSET_SCHEMA` columns.

    Raises
    ------
    MessageDecodeError
        The value is not valid for its ``encoding`` header (the message says why).
    """
    result = codec.decode_values([value], [message_encoding(headers)])
    if result.errors:
        raise MessageDecodeError(result.errors[0][1])
    return result.batch


def _arrival_ms(text: Any) -> int:
    if not isinstance(text, str):
        msg = f"arrival_timestamp must be an ISO-8601 string. Got {type(text).__name__} {text!r} instead."
        raise MessageDecodeError(msg)
    try:
        ts = datetime.fromisoformat(text)
    except ValueError as exc:
        msg = f"arrival_timestamp is not an ISO-8601 time: {text[:60]!r}"
        raise MessageDecodeError(msg) from exc
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return (ts - _EPOCH) // _MS


_MS: Final = datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC) - _EPOCH


def json_event_row(value: bytes | None) -> dict[str, Any]:
    """One JSON event message as a validated dict, plus ``arrival_ms`` (epoch ms, UTC).

    Validates what :mod:`workbench.data.codec` would: a JSON object, the non-nullable columns
    present and non-null, integer columns integers (not floats or booleans), flag columns
    booleans, text columns strings, ``arrival_timestamp`` an ISO-8601 time (naive means UTC).

    Raises
    ------
    MessageDecodeError
        With the reason, for the dead-letter topic.
    """
    if value is None:
        raise MessageDecodeError("empty message value")
    try:
        row = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        msg = f"invalid JSON: {exc}"
        raise MessageDecodeError(msg) from exc
    if not isinstance(row, dict):
        msg = f"expected a JSON object, got {type(row).__name__}"
        raise MessageDecodeError(msg)
    missing = [name for name in _REQUIRED if row.get(name) is None]
    if missing:
        msg = f"missing columns {missing[:5]}"
        raise MessageDecodeError(msg)
    for name in _INT_FIELDS:
        v = row.get(name)
        if v is not None and (type(v) is not int or not -(2**63) <= v < 2**63):
            msg = f"mistyped value: column {name!r} must be an int64. Got {v!r}"
            raise MessageDecodeError(msg)
    for name in _BOOL_FIELDS:
        v = row.get(name)
        if v is not None and type(v) is not bool:
            msg = f"mistyped value: column {name!r} must be a boolean. Got {v!r}"
            raise MessageDecodeError(msg)
    for name in _STR_FIELDS:
        v = row.get(name)
        if v is not None and type(v) is not str:
            msg = f"mistyped value: column {name!r} must be a string. Got {v!r}"
            raise MessageDecodeError(msg)
    row["arrival_ms"] = _arrival_ms(row["arrival_timestamp"])
    return row
