"""The ``redshift.anomalies`` message contract, in one place.

One JSON object per message, key = the instance id as text, header ``schema`` =
:data:`ANOMALY_CONTRACT_VERSION`. Fields (:data:`ANOMALY_FIELDS`; ``?`` = may be null/absent):

``instance_id`` int, ``query_id`` int, ``model_version`` str, ``arrival_timestamp`` ISO-8601 UTC str,
``user_id`` int?, ``database_id`` int?, ``query_type`` str?, ``cluster_size`` int?,
``execution_duration_ms`` number (actual), ``queue_duration_ms`` number?, ``compile_duration_ms``
number?, ``pred_mean_ms`` number, ``pred_q_ms`` number?, ``expected_ms`` number?, ``score`` number?,
``threshold`` number?, ``reason`` str?, ``features`` object?, and the alert's evidence:
``evidence_signal`` str? (exec, queue, scan, spill), ``evidence_unit`` str? (ms, MB),
``expected_value``, ``observed_value``, ``excess_value`` number?, ``reference`` str? (what the
expectation was built from).

:func:`anomaly_row` maps a message to a row of :data:`workbench.store.lakehouse.ANOMALY_SCHEMA`
(``true_ms`` = actual, ``pred_ms`` = ``pred_mean_ms``, ``excess_ms`` = true - pred, ``under_ratio``
= true / max(pred, 1), like :func:`workbench.store.lakehouse.from_scored`; queue, compile and
threshold and the evidence fields go into ``features``, which have no column of their own).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import orjson
import pyarrow as pa

from workbench.pipeline.exceptions import AnomalyContractError
from workbench.store.lakehouse import ANOMALY_SCHEMA

__all__ = [
    "ANOMALY_CONTRACT_VERSION",
    "ANOMALY_FIELDS",
    "anomaly_headers",
    "anomaly_key",
    "anomaly_row",
    "decode_anomalies",
    "encode_anomaly",
]

ANOMALY_CONTRACT_VERSION: Final = "anomaly-v1"
_INT, _NUM, _STR, _OBJ = "int", "number", "str", "object"
#: field -> (type, required)
ANOMALY_FIELDS: Final[dict[str, tuple[str, bool]]] = {
    "instance_id": (_INT, True), "query_id": (_INT, True), "model_version": (_STR, True),
    "arrival_timestamp": (_STR, True), "user_id": (_INT, False), "database_id": (_INT, False),
    "query_type": (_STR, False), "cluster_size": (_INT, False), "execution_duration_ms": (_NUM, True),
    "queue_duration_ms": (_NUM, False), "compile_duration_ms": (_NUM, False), "pred_mean_ms": (_NUM, True),
    "pred_q_ms": (_NUM, False), "expected_ms": (_NUM, False), "score": (_NUM, False), "threshold": (_NUM, False),
    "reason": (_STR, False), "features": (_OBJ, False),
    # Evidence of the deciding signal (workbench.ml.scorer.EXTRA_FIELDS); stored inside ``features``.
    "evidence_signal": (_STR, False), "evidence_unit": (_STR, False), "expected_value": (_NUM, False),
    "observed_value": (_NUM, False), "excess_value": (_NUM, False), "reference": (_STR, False),
}
_EVIDENCE: Final = ("evidence_signal", "evidence_unit", "expected_value", "observed_value", "excess_value", "reference")
_CHECK: Final = {
    _INT: lambda v: type(v) is int,
    _NUM: lambda v: type(v) in (int, float),
    _STR: lambda v: type(v) is str,
    _OBJ: lambda v: isinstance(v, dict),
}
_ROW_SCHEMA: Final = pa.schema([f.with_nullable(True) for f in ANOMALY_SCHEMA if f.name != "inserted_at"])


def _check(message: Mapping[str, Any]) -> None:
    if not isinstance(message, Mapping):
        msg = f"an anomaly message must be a JSON object. Got {type(message).__name__} instead."
        raise AnomalyContractError(msg)
    missing = [k for k, (_, req) in ANOMALY_FIELDS.items() if req and message.get(k) is None]
    if missing:
        msg = f"anomaly message lacks required fields {missing[:5]}; see workbench.pipeline.contracts."
        raise AnomalyContractError(msg)
    for name, (kind, _) in ANOMALY_FIELDS.items():
        v = message.get(name)
        if v is not None and not _CHECK[kind](v):
            msg = f"anomaly field {name!r} must be of type {kind}. Got {v!r} instead."
            raise AnomalyContractError(msg)


def _parse_time(text: str) -> datetime:
    try:
        ts = datetime.fromisoformat(text)
    except ValueError as exc:
        msg = f"anomaly field 'arrival_timestamp' must be an ISO-8601 time. Got {text[:60]!r} instead."
        raise AnomalyContractError(msg) from exc
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def encode_anomaly(message: Mapping[str, Any]) -> bytes:
    """Validate and serialise one anomaly message (datetimes become ISO text)."""
    data = dict(message)
    ts = data.get("arrival_timestamp")
    if isinstance(ts, datetime):
        data["arrival_timestamp"] = (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).isoformat()
    _check(data)
    return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)


def anomaly_key(message: Mapping[str, Any]) -> bytes:
    """The message key: the instance id as text."""
    return str(int(message["instance_id"])).encode()


def anomaly_headers() -> list[tuple[str, bytes]]:
    """Headers of every anomaly message."""
    return [("schema", ANOMALY_CONTRACT_VERSION.encode())]


def anomaly_row(value: bytes | Mapping[str, Any] | None) -> dict[str, Any]:
    """One anomaly message (bytes or parsed) as a lakehouse row; raises AnomalyContractError."""
    if value is None:
        raise AnomalyContractError("empty anomaly message value")
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            message = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            msg = f"invalid JSON: {exc}"
            raise AnomalyContractError(msg) from exc
    else:
        message = value
    _check(message)
    true = float(message["execution_duration_ms"])
    pred = float(message["pred_mean_ms"])
    features = dict(message.get("features") or {})
    for extra in ("queue_duration_ms", "compile_duration_ms", "threshold", *_EVIDENCE):
        if message.get(extra) is not None:
            features.setdefault(extra, message[extra])
    return {
        "instance_id": message["instance_id"], "query_id": message["query_id"],
        "model_version": message["model_version"], "arrival_timestamp": _parse_time(message["arrival_timestamp"]),
        "user_id": message.get("user_id"), "database_id": message.get("database_id"),
        "query_type": message.get("query_type"), "cluster_size": message.get("cluster_size"),
        "true_ms": true, "pred_ms": pred, "pred_mean_ms": pred,
        "pred_q_ms": None if message.get("pred_q_ms") is None else float(message["pred_q_ms"]),
        "excess_ms": true - pred, "under_ratio": true / max(pred, 1.0),
        "expected_ms": None if message.get("expected_ms") is None else float(message["expected_ms"]),
        "score": None if message.get("score") is None else float(message["score"]),
        "reason": message.get("reason"), "features": orjson.dumps(features).decode(),
    }


def decode_anomalies(values: Sequence[bytes | None]) -> tuple[pa.Table, list[tuple[int, str]]]:
    """Many anomaly messages as one table of lakehouse rows, plus ``(position, reason)`` errors."""
    rows, errors = [], []
    for i, value in enumerate(values):
        try:
            rows.append(anomaly_row(value))
        except AnomalyContractError as exc:
            errors.append((i, str(exc)))
    try:
        table = pa.Table.from_pylist(rows, schema=_ROW_SCHEMA)
    except (pa.ArrowInvalid, OverflowError) as exc:
        msg = f"anomaly rows do not fit ANOMALY_SCHEMA: {exc}"
        raise AnomalyContractError(msg) from exc
    return table, errors
